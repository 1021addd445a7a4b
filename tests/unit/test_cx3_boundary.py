"""The device boundary: the rig's side of cx3 loads nothing of the model, and the op table
agrees with the model's knobs."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cx3
from cx3 import ops
from cx3.faults import Faults
from cx3.server import HANDLERS

#: What the rig may load of cx3: the client, the op table (and the opcode names it checks
#: knob values against), the wire format, the BAR0 layout.
CLIENT_SIDE = {"cx3", "cx3.client", "cx3.layout", "cx3.opcodes", "cx3.ops", "cx3.wire"}
REQUIRED_PARAM = object()


def loaded_by(statement: str) -> set[str]:
    """The cx3 and vfio_user modules a fresh interpreter holds after `statement`."""
    src = str(Path(cx3.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    code = (
        f"import json, sys; {statement}; print(json.dumps(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('cx3', 'vfio_user'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    modules: list[str] = json.loads(out)
    return set(modules)


@pytest.mark.parametrize(
    "statement", ["import cx3.client", "import cx3.layout", "import cx3.ops", "import cx3.wire"]
)
def test_client_side_loads_no_model_module(statement: str) -> None:
    model = loaded_by(statement) - CLIENT_SIDE
    assert not model, f"`{statement}` loads the device model: {sorted(model)}"


def test_importing_the_package_loads_nothing_else() -> None:
    assert loaded_by("import cx3") == {"cx3"}


def test_every_op_has_a_handler_and_every_knob_a_faults_method() -> None:
    plain = {op.name for op in ops.OPS if not op.knob}
    assert plain == set(HANDLERS)
    for op in ops.KNOBS:
        method = getattr(Faults, op.name)
        params = list(inspect.signature(method).parameters.values())[1:]  # after self
        assert [p.name for p in params] == [a.name for a in op.args], op.name
        for param, arg in zip(params, op.args, strict=True):
            default = REQUIRED_PARAM if param.default is inspect.Parameter.empty else param.default
            want = REQUIRED_PARAM if arg.required else arg.default
            assert default == want, f"{op.name}({arg.name}): model {default!r}, table {want!r}"


def test_op_names_are_unique_and_cli_friendly() -> None:
    names = [op.name for op in ops.OPS]
    assert len(names) == len(set(names)) and ops.BY_NAME.keys() == set(names)
    assert [op.cli_name for op in ops.KNOBS] == [
        "catas",
        "cmd-timeout",
        "closing-cmd",
        "advertise-health",
        "link",
        "clear",
    ]
    assert all(op.help and "\n" not in op.help for op in ops.OPS)
