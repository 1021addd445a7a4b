"""Patch series: discovery and order, mbox splitting, the files and hunks a patch touches,
and applying with a failure that names the patch and the hunk."""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.provision.patchseries import (
    PatchError,
    apply_series,
    explain_failure,
    load_series,
    parse_changes,
    split_mbox,
)
from tests.unit.kbuild_helpers import make_patch

ORIGINAL = "".join(f"line {i}\n" for i in range(1, 41))
EXAMPLES = Path(__file__).resolve().parents[2] / "guest" / "patches"


def mail(n: int, subject: str, body: str) -> str:
    return (
        f"From {n:040x} Mon Sep 17 00:00:00 2001\nFrom: A <a@example.org>\n"
        f"Subject: [PATCH {n}/3] {subject}\n\nwhy\n---\n{body}"
    )


def test_directory_patches_apply_in_sorted_name_order(tmp_path: Path) -> None:
    for name in ("0002-b.patch", "0010-c.diff", "0001-a.patch", "notes.txt", "series.bak"):
        (tmp_path / name).write_text(make_patch("f.c", ORIGINAL, ORIGINAL.replace("2", "x")))
    series = load_series(tmp_path)
    assert [p.name for p in series.patches] == ["0001-a.patch", "0002-b.patch", "0010-c.diff"]


def test_series_file_sets_order_and_strip_level(tmp_path: Path) -> None:
    (tmp_path / "two.patch").write_text(make_patch("f.c", ORIGINAL, ORIGINAL + "x\n"))
    (tmp_path / "one.patch").write_text(make_patch("f.c", ORIGINAL, "y\n" + ORIGINAL))
    (tmp_path / "series").write_text("# quilt\ntwo.patch\n\none.patch -p1  # first? no\n")
    series = load_series(tmp_path)
    assert [(p.name, p.strip) for p in series.patches] == [("two.patch", 1), ("one.patch", 1)]
    assert load_series(tmp_path / "series").patches == series.patches


def test_series_file_naming_a_missing_patch_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "series").write_text("gone.patch\n")
    with pytest.raises(PatchError, match=r"series:1: patch gone.patch does not exist"):
        load_series(tmp_path)


def test_empty_directory_is_an_empty_series(tmp_path: Path) -> None:
    series = load_series(tmp_path)
    assert series.patches == () and series.touched() == set()


def test_cover_letter_without_a_diff_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "0000-cover-letter.patch").write_text(mail(0, "cover", "*** BLURB ***\n"))
    (tmp_path / "0001-a.patch").write_text(
        mail(1, "a", make_patch("f.c", ORIGINAL, ORIGINAL + "z\n"))
    )
    series = load_series(tmp_path)
    assert [p.name for p in series.patches] == ["0001-a.patch"]
    assert series.skipped == ("0000-cover-letter.patch",)
    assert series.patches[0].subject == "a"


def test_mbox_splits_into_one_patch_per_mail(tmp_path: Path) -> None:
    mbox = tmp_path / "series.mbox"
    mbox.write_text(
        mail(1, "first", make_patch("a.c", ORIGINAL, ORIGINAL + "1\n"))
        + mail(2, "second", make_patch("b.c", ORIGINAL, ORIGINAL + "2\n"))
    )
    series = load_series(mbox)
    assert [(p.name, p.subject) for p in series.patches] == [
        ("series.mbox #1", "first"),
        ("series.mbox #2", "second"),
    ]
    assert series.touched() == {"a.c", "b.c"}


def test_split_mbox_keeps_plain_diffs_whole() -> None:
    diff = make_patch("a.c", ORIGINAL, ORIGINAL + "1\n").encode()
    assert split_mbox(diff) == [diff]


def test_series_digest_follows_contents_and_order_not_names(tmp_path: Path) -> None:
    a, b = (make_patch("f.c", ORIGINAL, ORIGINAL + f"{n}\n") for n in (1, 2))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "1.patch").write_text(a)
    (tmp_path / "x" / "2.patch").write_text(b)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "a.patch").write_text(a)
    (tmp_path / "y" / "b.patch").write_text(b)
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "1.patch").write_text(b)
    (tmp_path / "z" / "2.patch").write_text(a)
    x, y, z = (load_series(tmp_path / d).digest for d in "xyz")
    assert x == y != z


def test_parse_changes_git_rename_new_delete_and_hunks() -> None:
    text = """\
diff --git a/old.c b/new.c
similarity index 90%
rename from old.c
rename to new.c
--- a/old.c
+++ b/new.c
@@ -3,2 +3,2 @@ int f(void)
-a
+b
 c
@@ -20 +20 @@
--- not a header: a removed line that starts with two dashes
+++ nor this one
diff --git a/gone.c b/gone.c
deleted file mode 100644
--- a/gone.c
+++ /dev/null
@@ -1 +0,0 @@
-x
diff --git a/fresh.c b/fresh.c
new file mode 100644
--- /dev/null
+++ b/fresh.c
@@ -0,0 +1 @@
+y
"""
    changes = parse_changes(text)
    assert [(c.old, c.new) for c in changes] == [
        ("old.c", "new.c"),
        ("gone.c", None),
        (None, "fresh.c"),
    ]
    assert [(h.number, h.old_start) for h in changes[0].hunks] == [(1, 3), (2, 20)]


def test_parse_changes_plain_diff_with_strip_level() -> None:
    text = "--- x/src/a.c\t2024-01-01\n+++ y/src/a.c\t2024-01-02\n@@ -1 +1 @@\n-a\n+b\n"
    assert [(c.old, c.new) for c in parse_changes(text, strip=1)] == [("src/a.c", "src/a.c")]
    assert [(c.old, c.new) for c in parse_changes(text, strip=0)] == [("x/src/a.c", "y/src/a.c")]


def test_failure_names_patch_and_hunk(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.c").write_text(ORIGINAL)
    good = make_patch("f.c", ORIGINAL, ORIGINAL.replace("line 3\n", "line three\n"))
    # Its second hunk expects text the tree does not have.
    drifted = ORIGINAL.replace("line 30\n", "line thirty\n")
    bad = make_patch(
        "f.c",
        drifted,
        drifted.replace("line 10\n", "line 10!\n").replace("line 31\n", "line 31!\n"),
    )
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "0001-good.patch").write_text(good)
    (tmp_path / "p" / "0002-bad.patch").write_text(bad)
    log = tmp_path / "log"
    with pytest.raises(PatchError) as e:
        apply_series(load_series(tmp_path / "p"), tree, log)
    message = str(e.value)
    assert "patch 2/2 0002-bad.patch does not apply: hunk #2 of f.c (@@ -28," in message
    assert str(log) in message
    assert "line three" in (tree / "f.c").read_text(), "patch 1 stays applied"
    assert "0002-bad.patch" in log.read_text()


def test_missing_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "only.patch").write_text(make_patch("nowhere.c", ORIGINAL, ORIGINAL + "x\n"))
    with pytest.raises(PatchError, match=r"nowhere\.c does not exist in the source"):
        apply_series(load_series(tmp_path / "only.patch"), tmp_path / "t", tmp_path / "log")


def test_explain_failure_falls_back_to_gits_words() -> None:
    series_patch = load_series(EXAMPLES / "example-noop").patches[0]
    assert explain_failure(series_patch, "error: something new\n") == "something new"


def test_example_patches_touch_crdump_only() -> None:
    for name in ("example-break-crdump", "example-noop"):
        series = load_series(EXAMPLES / name)
        assert len(series.patches) == 1
        assert series.touched() == {"drivers/net/ethernet/mellanox/mlx4/crdump.c"}


def test_example_patch_applies_to_its_own_preimage(tmp_path: Path) -> None:
    """The break-crdump example against a file holding just its hunk's context: the hunk
    header's line numbers are honoured with an offset, as git apply does."""
    patch = load_series(EXAMPLES / "example-break-crdump").patches[0]
    text = patch.text.decode()
    body = text.split("@@", 2)[2].split("\n", 1)[1].split("\n-- \n", 1)[0]
    pre = "".join(ln[1:] + "\n" for ln in body.splitlines() if ln[:1] in (" ", "-"))
    tree = tmp_path / "t" / "drivers" / "net" / "ethernet" / "mellanox" / "mlx4"
    tree.mkdir(parents=True)
    (tree / "crdump.c").write_text(pre)
    apply_series(load_series(EXAMPLES / "example-break-crdump"), tmp_path / "t", tmp_path / "log")
    assert "health_buffer_addrs + 4;" in (tree / "crdump.c").read_text()
