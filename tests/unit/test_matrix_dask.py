"""Matrix cells on a real Dask LocalCluster with two worker processes: each cell runs in a
worker, one per worker at a time (the `vm` resource), and the result is the serial one.

The cells are kernels the rig cannot have (missing directories), so no VM boots: what is
under test is the distribution, not the kernel."""

from __future__ import annotations

import os
from pathlib import Path

from rig.jobs.cluster import local_workers, run_cells
from rig.jobs.matrix import MatrixOptions, parse_qemus, run_matrix, table


def test_two_workers_give_the_serial_table(tmp_path: Path) -> None:
    kernels = tuple(str(tmp_path / f"missing-{i}") for i in range(4))
    serial = run_matrix(MatrixOptions(kernels, tmp_path / "serial"))
    opts = MatrixOptions(kernels, tmp_path / "dask")
    dask = run_matrix(opts, lambda o: run_cells(o, workers=2))
    assert table(dask) == table(serial)
    assert dask.exit_status == serial.exit_status == 2
    assert [c.kernel for c in dask.cells] == list(kernels)  # the order given, whoever ran it
    pids = {c.host.rpartition(":")[2] for c in dask.cells}
    assert str(os.getpid()) not in pids and len(pids) == 2, pids
    assert (tmp_path / "dask" / "matrix.ktap").is_file()


def test_the_qemu_axis_on_two_workers_gives_the_serial_table(tmp_path: Path) -> None:
    kernels = tuple(str(tmp_path / f"missing-{i}") for i in range(2))
    qemus = parse_qemus("10.2.2,11.1.3")
    serial = run_matrix(MatrixOptions(kernels, tmp_path / "serial", qemus=qemus))
    opts = MatrixOptions(kernels, tmp_path / "dask", qemus=qemus)
    dask = run_matrix(opts, lambda o: run_cells(o, workers=2))
    assert table(dask) == table(serial)
    assert [(c.kernel, c.qemu) for c in dask.cells] == [
        (k, q) for k in kernels for q in ("10.2.2", "11.1.3")
    ]


def test_local_size_follows_cores_memory_and_cells() -> None:
    gib = 1 << 30
    assert local_workers(cells=5, cpus=2, memory=24 * gib) == 2
    assert local_workers(cells=5, cpus=16, memory=7 * gib) == 3  # 2 GiB a VM
    assert local_workers(cells=1, cpus=16, memory=64 * gib) == 1
    assert local_workers(cells=3, cpus=1, memory=1 * gib) == 1  # never none


def test_a_cell_that_raises_on_its_worker_is_named_not_fatal() -> None:
    from dask.distributed import Client, LocalCluster

    from rig.jobs.cluster import _gather

    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        cell = _gather("deb:sid", client.submit(int, "not a number"))
    assert cell.kernel == "deb:sid"
    assert cell.error.startswith("on Dask: ValueError: invalid literal")
    assert {o.status for o in cell.result.outcomes.values()} == {"error"}
