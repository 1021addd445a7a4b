"""Matrix cells on Dask distributed: a LocalCluster by default, or an existing scheduler.

Each cell boots VMs, so each asks for one unit of the workers' `vm` resource: a worker
started with `--resources vm=N` runs at most N cells at once. The local cluster has one
single-threaded worker process per VM this machine can run at once (one per core, since TCG
keeps a core busy, and one per VM_MEMORY). A cell that dies with its worker, or raises, is a
cell the rig could not run, named with the error; the other cells still report.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from rig.errors import RigError
from rig.jobs.matrix import Cell, MatrixOptions, QemuChoice, cell_name, run_cell
from rig.jobs.verdict import KernelResult

logger = logging.getLogger(__name__)

VM_RESOURCE = "vm"
VM_MEMORY = 2 << 30  # the guest's 1 GiB, QEMU, the device model and the worker itself
CONNECT_TIMEOUT = "20s"


def local_workers(cells: int, cpus: int | None = None, memory: int | None = None) -> int:
    """How many VMs this machine runs at once, and so how many local workers to start."""
    cpus = cpus or os.cpu_count() or 1
    memory = memory or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cells, cpus, memory // VM_MEMORY))


def _cell_on_worker(
    kernel: str, qemu: QemuChoice, opts: MatrixOptions, show_progress: bool
) -> Cell:
    """run_cell in a worker process: the rig's progress on its stderr, named by the cell."""
    if show_progress:
        # A worker process runs cells one after another: each replaces the last one's name.
        handler = logging.StreamHandler(sys.stderr)
        name = cell_name(kernel, qemu.label)
        handler.setFormatter(logging.Formatter(f"rig [{name}]: %(message)s"))
        rig_log = logging.getLogger("rig")
        rig_log.handlers[:] = [handler]
        rig_log.setLevel(logging.INFO)
        rig_log.propagate = False
    return run_cell(kernel, opts, qemu)


def run_cells(
    opts: MatrixOptions, scheduler: str | None = None, workers: int | None = None
) -> list[Cell]:
    """Every cell of `opts` on Dask, in the order given."""
    # distributed's constructors are untyped (no-untyped-call below); imported here so that
    # the rest of the CLI starts without it.
    from dask.distributed import Client, LocalCluster

    cluster: Any = None
    try:
        if scheduler:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)  # type: ignore[no-untyped-call]
        else:
            n = workers or local_workers(len(opts.cells()))
            logger.info(f"a local Dask cluster of {n} worker(s), {VM_RESOURCE}=1 each")
            cluster = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                resources={VM_RESOURCE: 1},
                # Loopback only; no dashboard, and the scheduler's HTTP routes on a free
                # port rather than 8787, which another cluster may hold.
                host="127.0.0.1",
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as e:
        where = scheduler or "a local cluster"
        raise RigError(f"Dask: cannot reach {where}: {e}") from e
    show = logging.getLogger("rig").isEnabledFor(logging.INFO)
    try:
        futures = [
            client.submit(_cell_on_worker, k, q, opts, show, resources={VM_RESOURCE: 1}, pure=False)
            for k, q in opts.cells()
        ]
        return [_gather(k, f, q) for (k, q), f in zip(opts.cells(), futures, strict=True)]
    finally:
        client.close()  # type: ignore[no-untyped-call]
        if cluster is not None:
            cluster.close()


def _gather(kernel: str, future: Any, qemu: QemuChoice | None = None) -> Cell:
    try:
        cell: Cell = future.result()
        return cell
    except Exception as e:  # the worker died or run_cell raised: this cell, not the matrix
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        label = qemu.label if qemu is not None else ""
        result = KernelResult(cell_name(kernel, label), kernel)
        return Cell(kernel, result, qemu=label).could_not_run(f"on Dask: {error}")
