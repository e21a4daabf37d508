"""Executors: where a sweep's shards of cells run. One small protocol, three implementations.

- :class:`InlineExecutor`: this process (one worker on one device).
- :class:`LocalExecutor`: one worker process per device: ``CUDA_VISIBLE_DEVICES`` pinned per
  worker on a GPU box, or N processes on a CPU (each with its share of the cores).
- :class:`SubmititExecutor`: Slurm job arrays through submitit (an optional extra), one array
  task per shard; ``cluster="local"`` runs the same path as local processes, as the tests do.

Data-parallel evaluation of one configuration under ``torchrun`` / ``accelerate launch`` is not
an executor: every rank runs the sweep itself (:func:`vtsched.core.tools.sweep.run_sweep` sees the
launcher's environment) and answers its shard of the samples.

Every worker appends its rows to the results file itself (:func:`~.results.append_row`); the
coordinator follows that file for the progress bar, so all executors report progress alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vtsched.core.errors import InputError, VtschedError
from vtsched.core.tools.sweep.cells import Cell

__all__ = [
    "EXECUTORS",
    "Executor",
    "InlineExecutor",
    "Job",
    "LocalExecutor",
    "SubmititExecutor",
    "make_executor",
    "run_shard",
]

EXECUTORS = ("local", "submitit")


@dataclass(frozen=True)
class Job:
    """What every worker needs besides its cells."""

    results: str
    folder: str  # logs, shard files, submitit's folder
    device: str = "cpu"
    batch_size: int = 16
    dtype: str | None = None
    no_plugins: bool = False
    threads: int | None = None  # torch threads per worker (CPU)


class Executor(Protocol):
    """Runs shards of cells to completion; ``poll`` is called often while they run (progress)."""

    name: str

    def run(self, shards: Sequence[Sequence[Cell]], job: Job, poll: Callable[[], None]) -> None:
        """Run every shard; raise :class:`VtschedError` with one line if a worker died."""
        ...


def run_shard(payload: dict[str, Any]) -> int:
    """A worker: run one shard's cells (``{"cells": [...], "job": {...}}``); the rows written."""
    from vtsched.core.tools.sweep.run import run_cells

    job = Job(**payload["job"])
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    cells = [Cell.from_dict(c) for c in payload["cells"]]
    return run_cells(cells, job.results, device=job.device, batch_size=job.batch_size, dtype=job.dtype,
                     no_plugins=job.no_plugins)


@dataclass
class InlineExecutor:
    """This process: the model loads once here and the cells run one after another."""

    name: str = "inline"

    def run(self, shards: Sequence[Sequence[Cell]], job: Job, poll: Callable[[], None]) -> None:
        from vtsched.core.tools.sweep.run import run_cells

        cells = [c for shard in shards for c in shard]
        run_cells(cells, job.results, device=job.device, batch_size=job.batch_size, dtype=job.dtype,
                  no_plugins=job.no_plugins, on_row=lambda _row: poll())


def _cpu_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@dataclass
class LocalExecutor:
    """One worker process per device (``devices`` such as ``["cuda:0", "cuda:1"]``), or ``workers``
    processes on the CPU. A GPU worker sees only its own device (``CUDA_VISIBLE_DEVICES``)."""

    devices: Sequence[str] = ("cpu",)
    name: str = "local"
    poll_s: float = 0.5
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, shards: Sequence[Sequence[Cell]], job: Job, poll: Callable[[], None]) -> None:
        folder = Path(job.folder)
        folder.mkdir(parents=True, exist_ok=True)
        logs = []
        try:
            for i, shard in enumerate(shards):
                device = self.devices[i % len(self.devices)]
                env = dict(os.environ)
                if device.startswith("cuda"):
                    env["CUDA_VISIBLE_DEVICES"] = device.partition(":")[2] or "0"
                    worker_job = Job(**{**asdict(job), "device": "cuda:0"})
                else:
                    threads = job.threads or _cpu_threads(len(shards))
                    env["OMP_NUM_THREADS"] = str(threads)
                    worker_job = Job(**{**asdict(job), "device": device, "threads": threads})
                shard_file = folder / f"shard-{i}.json"
                shard_file.write_text(json.dumps({"cells": [c.to_dict() for c in shard], "job": asdict(worker_job)}))
                log = folder / f"worker-{i}.log"
                logs.append(log)
                with log.open("wb") as handle:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-m", "vtsched.core.tools.sweep.launch", str(shard_file)],
                        stdout=handle, stderr=subprocess.STDOUT, env=env))
            while any(p.poll() is None for p in self.procs):
                time.sleep(self.poll_s)
                poll()
            poll()
            for i, p in enumerate(self.procs):
                if p.returncode != 0:
                    raise VtschedError(f"worker {i} exited with status {p.returncode}: {_last_line(logs[i])} "
                                       f"(log: {logs[i]}); finished cells are kept, run again to resume")
        finally:
            self.cancel()

    def cancel(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:300] if lines else "no output"


@dataclass
class SubmititExecutor:
    """Slurm job arrays through submitit: one array task per shard, each a worker on one GPU.

    ``cluster`` is submitit's: ``None`` picks Slurm where ``srun`` exists, ``"local"`` runs the array
    as local processes. ``parameters`` are the ``[slurm]`` table of the config (``partition``,
    ``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``array_parallelism``, ...).
    """

    cluster: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    name: str = "submitit"
    poll_s: float = 1.0

    def run(self, shards: Sequence[Sequence[Cell]], job: Job, poll: Callable[[], None]) -> None:
        try:
            import submitit
        except ImportError:
            raise InputError("the submitit executor needs submitit: pip install submitit "
                             "(or vtsched[slurm]; Python >= 3.11)") from None
        executor = submitit.AutoExecutor(folder=str(Path(job.folder) / "submitit"), cluster=self.cluster)
        params = dict(self.parameters)
        gpu = job.device.startswith("cuda")
        slurm_keys = {"partition", "account", "qos", "constraint", "array_parallelism"}
        update: dict[str, Any] = {"timeout_min": int(params.pop("timeout_min", 24 * 60)),
                                  "gpus_per_node": int(params.pop("gpus_per_node", 1 if gpu else 0)),
                                  "name": "vtsched-sweep"}
        for key in ("cpus_per_task", "mem_gb"):
            if key in params:
                update[key] = params.pop(key)
        for key in slurm_keys & set(params):
            update[f"slurm_{key}"] = params.pop(key)
        executor.update_parameters(**update)
        worker_job = Job(**{**asdict(job), "device": "cuda:0" if gpu else job.device,
                            "threads": job.threads or (None if gpu or self.cluster != "local" else _cpu_threads(len(shards)))})
        payloads = [{"cells": [c.to_dict() for c in shard], "job": asdict(worker_job)} for shard in shards]
        jobs = executor.map_array(run_shard, payloads)
        try:
            while not all(j.done() for j in jobs):
                time.sleep(self.poll_s)
                poll()
        except BaseException:
            for j in jobs:
                j.cancel(check=False)
            raise
        poll()
        for i, j in enumerate(jobs):
            if j.state not in ("DONE", "COMPLETED", "FINISHED"):
                try:
                    j.result()
                except Exception as exc:  # submitit wraps the worker's traceback
                    last = [line for line in str(exc).splitlines() if line.strip()]
                    raise VtschedError(f"array task {i} ({j.job_id}) failed: {last[-1] if last else exc}; "
                                       f"logs in {Path(job.folder) / 'submitit'}; run again to resume") from None


def make_executor(name: str, *, workers: int = 1, devices: Sequence[str] | None = None,
                  slurm: dict[str, Any] | None = None, cluster: str | None = None) -> Any:
    """``local`` (inline for one CPU worker, else a process per device) or ``submitit``."""
    if name == "local":
        if devices:
            return LocalExecutor(devices=list(devices))
        if workers <= 1:
            return InlineExecutor()
        return LocalExecutor(devices=["cpu"] * workers)
    if name == "submitit":
        return SubmititExecutor(cluster=cluster, parameters=dict(slurm or {}))
    raise InputError(f"unknown executor {name!r}; executors: {', '.join(EXECUTORS)}")


def _die_with_parent() -> None:
    """On Linux, end this worker when the sweep that started it dies (even by SIGKILL), so a resumed
    sweep never runs beside orphaned workers."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vtsched.core.tools.sweep.launch SHARD.json``: what a local worker process runs."""
    args = list(sys.argv[1:] if argv is None else argv)
    _die_with_parent()
    payload = json.loads(Path(args[0]).read_text())
    try:
        run_shard(payload)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover - a worker process
    sys.exit(main())
