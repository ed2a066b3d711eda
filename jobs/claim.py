"""One submission per cell at a time: an exclusive claim on ``outputs/<experiment>/<cell>/claim.lock``.

``hirl submit`` takes the claim of every cell it submits before it creates any run and keeps it until it
exits: on the local backend that is the whole run of the chain, on a queueing backend (SLURM) the
creation of the runs and the queueing. The claim is ``fcntl.flock`` on an open file, so the kernel
drops it when its holders are gone, whatever way they ended: nothing stale is ever left to clean up.
The local backend hands the open file to each stage's watcher (``held_fds``), so a stage that
outlives a killed submitter keeps its cell claimed until it ends. The file says who holds it (pid,
host, time, first stage run), which the refused submission prints. On a cluster the outputs folder is
the shared filesystem every submitter already needs; flock there (NFSv4, Lustre, GPFS with locking
on) excludes submitters on other hosts too.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import SpecError

LOCK_NAME = "claim.lock"
_held: dict[str, int] = {}  # lock path -> open fd, for this process's lifetime


class CellBusy(SpecError):
    """Another submission holds the cell; the message is one line saying who and where."""


def claim_path(cell) -> Path:
    return Path(cell.root, "outputs", cell.experiment, cell.cell_id, LOCK_NAME)


def _holder(fd) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536) or b"{}")
    except (OSError, ValueError):
        return {}


def _write(fd, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)


def claim(cells, backend_name: str) -> None:
    """Claim every cell or none: a held one raises CellBusy naming its holder, after the others are
    released again."""
    taken = []
    try:
        for cell in cells:
            path = claim_path(cell)
            if str(path) in _held:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder(fd)
                os.close(fd)
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["since"])) if "since" in who else "?"
                run = f", run {who['run']}" if who.get("run") else ""
                raise CellBusy(f"cell {cell.cell_id[:8]} of {cell.experiment} is already running: submitted by pid "
                               f"{who.get('pid', '?')} on {who.get('host', '?')} at {since} ({who.get('backend', '?')}"
                               f"{run}); see `hirl status {cell.experiment}`, or `hirl cancel` it") from None
            _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                        "backend": backend_name})
            _held[str(path)] = fd
            taken.append(str(path))
    except BaseException:
        for path in taken:
            release_path(path)
        raise


def note_run(cell, run_id: str) -> None:
    """Add the run a refused submission should name to the claim (once the runs exist)."""
    fd = _held.get(str(claim_path(cell)))
    if fd is not None:
        _write(fd, {**_holder(fd), "run": run_id})


def release_path(path: str) -> None:
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)  # a watcher that inherited the file keeps the claim until it ends


def release_all() -> None:
    for path in list(_held):
        release_path(path)


def held_fds() -> tuple:
    return tuple(_held.values())
