"""rig.cli.COMMANDS names every subcommand by the module that registers it: `rig X` imports
only X's module, so a command missing from the table, or listed under the wrong module, would
be unknown when asked for by name."""

from __future__ import annotations

import argparse

from rig.cli import COMMANDS, _command, build_parser


def commands(parser: argparse.ArgumentParser) -> set[str]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_table_names_every_command_the_modules_register() -> None:
    assert commands(build_parser()) == set(COMMANDS)


def test_each_command_parses_with_only_its_module() -> None:
    for name, module in COMMANDS.items():
        alone = commands(build_parser(name))
        assert name in alone
        assert alone == {n for n, m in COMMANDS.items() if m == module}


def test_the_command_is_the_first_word_after_the_global_options() -> None:
    assert _command(["-q", "replay", "--out", "x"]) == "replay"
    assert _command(["--help"]) is None and _command([]) is None
