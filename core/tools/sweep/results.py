"""The results file of a sweep: JSON lines appended as cells finish, through one path that cannot interleave.

Every row is one line, written with a single ``write`` under an exclusive ``fcntl.flock`` on the
results file, then flushed and ``fsync``-ed before the lock is released: worker processes on one
machine (or on the nodes of a cluster sharing the file system) append whole lines only, and a
line that is on disk stays there. A line cut short by a crash mid-write (a machine losing power)
is the cell that did not finish: it is dropped on the next append and the cell runs again.

A second lock file (``RESULTS.lock``) is held by the process that coordinates a sweep for as long
as it runs, so two sweeps writing the same results file at once are refused, not interleaved. The
kernel releases it when that process dies, so a crashed sweep never leaves a stale lock.

Rows carry ``format``; a file written by a vtsched with another row format is refused with one
line rather than mixed with new rows.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtsched.core.errors import InputError

__all__ = ["FORMAT", "ResultsFile", "SweepLock", "append_row", "drop_torn_tail", "read_rows"]

FORMAT = 1  # the row format; bump when a row's meaning changes


def append_row(path: str | os.PathLike[str], row: dict[str, Any]) -> bool:
    """Append ``row`` as one JSON line; whole lines only, whoever else appends at the same time.

    A row for a cell that already has an ``ok`` row is not written (``False``): two workers that
    ran the same cell (a sweep resumed while an orphaned Slurm task still ran) leave one row.
    """
    line = (json.dumps(row, sort_keys=True, default=str, allow_nan=True) + "\n").encode("utf-8")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        end = os.lseek(fd, 0, os.SEEK_END)
        if end > 0:  # a line cut short by a crash: drop it (its cell runs again)
            os.lseek(fd, end - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":
                os.ftruncate(fd, _last_newline(fd, end))
                end = os.lseek(fd, 0, os.SEEK_END)
        if _has_ok_row(fd, end, str(row.get("hash", ""))):
            return False
        os.lseek(fd, end, os.SEEK_SET)
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return True


def drop_torn_tail(path: str | os.PathLike[str]) -> int:
    """Drop a last line cut short by a crash mid-write (its cell runs again); the bytes dropped.

    A sweep calls this under its lock before it reads what is done, so the rows it follows as cells
    finish start at a line boundary.
    """
    p = Path(path)
    if not p.exists():
        return 0
    fd = os.open(p, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        end = os.lseek(fd, 0, os.SEEK_END)
        if end == 0:
            return 0
        os.lseek(fd, end - 1, os.SEEK_SET)
        if os.read(fd, 1) == b"\n":
            return 0
        keep = _last_newline(fd, end)
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return end - keep
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _has_ok_row(fd: int, end: int, cell: str) -> bool:
    """Whether the first ``end`` bytes hold an ``ok`` row of ``cell`` (read under the writer's lock)."""
    if not cell or end == 0:
        return False
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, end)
    needle = f'"hash": "{cell}"'.encode()
    return any(needle in line and b'"status": "ok"' in line for line in data.splitlines())


def _last_newline(fd: int, end: int) -> int:
    """Offset just after the last newline before ``end`` (0 if none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - 65536)
        os.lseek(fd, start, os.SEEK_SET)
        chunk = os.read(fd, pos - start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        pos = start
    return 0


def read_rows(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete rows from byte ``offset`` on, and the offset after the last complete line."""
    p = Path(path)
    if not p.exists():
        return [], 0
    with p.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1  # an unfinished last line is not a row yet
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if not isinstance(row, dict):
            before = 0  # line numbers count from the file's start
            if offset:
                with p.open("rb") as handle:
                    before = handle.read(offset).count(b"\n")
            raise InputError(_bad_line(p, before + number, bool(rows) or before > 0))
        rows.append(row)
    return rows, offset + end


def _bad_line(path: Path, number: int, after_rows: bool) -> str:
    """The refusal of a line that is not a row: damage to fix in place after good rows, else a wrong file."""
    if after_rows:
        return (f"{path}: line {number} is not a sweep result row (not a JSON object): the file is damaged there; "
                f"delete line {number} (the other rows are kept, and its cell runs again) and run the sweep again")
    return (f"{path}: line {number} is not a sweep result row (not a JSON object); if this is a sweep results file, "
            f"delete line {number} and run again, else give the sweep another results path")


@dataclass
class ResultsFile:
    """What a results file says: the last row per cell hash, after checking every row's format."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ResultsFile:
        rows, _ = read_rows(path)
        for number, row in enumerate(rows, 1):
            check_format(Path(path), row, number)
        return cls(Path(path), rows)

    def latest(self) -> dict[str, dict[str, Any]]:
        """hash -> its last row (a retried cell's success replaces its failure)."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            if row.get("status") == "ok" or out.get(row.get("hash", ""), {}).get("status") != "ok":
                out[str(row.get("hash"))] = row
        return out

    def finished(self) -> set[str]:
        return {h for h, r in self.latest().items() if r.get("status") == "ok"}

    def failed(self) -> set[str]:
        return {h for h, r in self.latest().items() if r.get("status") == "failed"}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)


def check_format(path: Path, row: dict[str, Any], number: int) -> None:
    fmt = row.get("format")
    if fmt != FORMAT or "hash" not in row:
        who = f"vtsched {row.get('vtsched', '?')}" if "vtsched" in row else "something else"
        raise InputError(
            f"{path}: line {number} was written by {who} (row format {fmt!r}; this vtsched writes format {FORMAT}); "
            "use another results path, or move the old file away"
        )


class SweepLock:
    """Held by the process coordinating a sweep: a second sweep on the same results file is refused."""

    def __init__(self, results: str | os.PathLike[str]) -> None:
        self.path = Path(f"{results}.lock")
        self._fd: int | None = None

    def acquire(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            results = self.path.name[: -len(".lock")]
            raise InputError(f"another sweep ({holder}) is writing {results}; wait for it to finish, "
                             "or give this one another results file") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
