"""Progress for long work: a tqdm bar on a terminal, plain lines in logs (CI, SLURM job output)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


class _Lines:
    """One line per ~10 % (or per ``every`` seconds), with the rate and time left."""

    def __init__(self, *, total: int, desc: str, unit: str, stream, every: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.stream, self.every = total, desc, unit, stream, every
        self.n, self.t0, self.last, self.postfix = 0, time.perf_counter(), time.perf_counter(), ""
        self.next_step = max(1, total // 10)
        self.next_n = self.next_step

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.n >= self.total or self.n >= self.next_n or now - self.last >= self.every:
            self.next_n = self.n + self.next_step
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        extra = f", {self.postfix}" if self.postfix else ""
        eta = f", ~{_clock(left)} left" if self.n < self.total and left == left else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f} %) "
              f"in {_clock(elapsed)}{eta}{extra}", file=self.stream, flush=True)  # fmt: skip


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d} h"


@contextmanager
def progress_bar(*, total: int, desc: str, unit: str = "item", enabled: bool = True, stream=None) -> Iterator:
    """A progress reporter with ``update(n)`` and ``set_postfix_str(text)``.

    A tqdm bar when ``stream`` (default stderr) is a terminal, plain progress
    lines otherwise, nothing when ``enabled`` is false.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled or total <= 0:
        yield _Null()
        return
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True) as bar:
            yield bar
        return
    yield _Lines(total=total, desc=desc, unit=unit, stream=stream)
