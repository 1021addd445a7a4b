"""The ConnectX-3 address list comes out of mstflint's .deb: built here with dpkg-deb, the
same tool that unpacks the one apt downloads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rig.errors import ProvisionError
from rig.formats.mstdump import parse_address_csv
from rig.provision.mstflint import CSV_IN_PACKAGE, extract_csv

CSV = "#Addr, Size, Enable addr\n0x001000,2,\n0x0f0014,1,\n"


def build_deb(tmp_path: Path, files: dict[Path, str]) -> Path:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: mstflint\nVersion: 4.21.0+1-1\nArchitecture: amd64\n"
        "Maintainer: test <t@example.org>\nDescription: test\n"
    )
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    deb = tmp_path / "mstflint_4.21.0+1-1_amd64.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zgzip", root, deb], check=True, capture_output=True)
    return deb


def test_the_csv_is_kept_and_the_rest_dropped(tmp_path: Path) -> None:
    deb = build_deb(tmp_path, {CSV_IN_PACKAGE: CSV, Path("usr/bin/mstregdump"): "#!/bin/sh\n"})
    dest = tmp_path / "entry"
    dest.mkdir()
    csv = extract_csv(deb, dest, tmp_path / "log")
    assert csv == dest / "ConnectX3.csv" and sorted(p.name for p in dest.iterdir()) == [
        "ConnectX3.csv"
    ]
    assert parse_address_csv(csv.read_text(), str(csv)) == (0x1000, 0x1004, 0xF0014)


def test_a_package_without_the_csv_is_a_provision_error(tmp_path: Path) -> None:
    deb = build_deb(tmp_path, {Path("usr/bin/mstregdump"): "#!/bin/sh\n"})
    dest = tmp_path / "entry"
    dest.mkdir()
    with pytest.raises(ProvisionError, match=r"holds no /usr/share/mstflint/ConnectX3\.csv"):
        extract_csv(deb, dest, tmp_path / "log")
