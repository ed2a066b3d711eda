"""Progress of a long loop: a live tqdm bar on a terminal, a few plain lines anywhere else.

Off a terminal (a stage's `log.txt`, SLURM's output file, a pipe) tqdm's carriage-return frames pile up
into one endless line. There a line is written only once at least `min_fraction` of the loop and
`min_interval_s` seconds have passed since the previous one, or `max_interval_s` whatever the fraction,
so that a loop lasting hours still shows it is alive. Nothing is written at the loop's end: the caller
writes its own summary line (the engine: one per epoch).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator

from tqdm import tqdm


def duration(seconds: float) -> str:
    """`10s`, `2m10s`, `1h02m`: as short as a log line wants."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """`update(n, **fields)` after each step; the fields (already formatted) follow the count."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, file=None, prefix: str = "",
                 min_fraction: float = 0.1, min_interval_s: float = 30.0, max_interval_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.prefix, self.enabled = int(total), desc, prefix, enabled
        self.file = file if file is not None else sys.stdout
        self.min_fraction, self.min_interval_s, self.max_interval_s = min_fraction, min_interval_s, max_interval_s
        self.clock = clock
        self.done = 0
        self._last_done, self._last_time = 0, clock()
        self._bar = None
        if enabled and _is_terminal(self.file):
            # leave=False: the finished bar gives way to the caller's summary line
            self._bar = tqdm(total=self.total, desc=prefix + desc, file=self.file, mininterval=1.0,
                             dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **fields: str) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            if fields:
                self._bar.set_postfix_str("  ".join(f"{k} {v}" for k, v in fields.items()), refresh=False)
            self._bar.update(n)
            return
        if self.done >= self.total:
            return
        now = self.clock()
        waited = now - self._last_time
        fraction = (self.done - self._last_done) / max(1, self.total)
        if (fraction >= self.min_fraction and waited >= self.min_interval_s) or waited >= self.max_interval_s:
            self._last_done, self._last_time = self.done, now
            line = f"{self.prefix}{self.desc}  {100 * self.done // max(1, self.total)}% {self.done}/{self.total}"
            print("  ".join([line, *(f"{k} {v}" for k, v in fields.items())]), file=self.file, flush=True)

    def wrap(self, iterable: Iterable) -> Iterator:
        """The items of `iterable`, counting one step after each."""
        try:
            for item in iterable:
                yield item
                self.update()
        finally:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
