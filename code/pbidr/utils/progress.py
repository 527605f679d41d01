"""Progress for long stages: a tqdm bar on a terminal, plain log lines everywhere else.

With stderr not a terminal (CI, ``nohup``, a cluster job) a bar would write one carriage-return
update per step, i.e. a log that is a single multi-megabyte line. There, ``progress_bar`` returns
``PlainProgress``, which prints one ordinary line every ``every_steps`` steps or ``every_seconds``
seconds (whichever comes first) and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class PlainProgress:
    """The part of tqdm's interface the stages use (update, set_postfix_str, close)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it", disable: bool = False,
                 every_steps: int | None = None, every_seconds: float = 30.0, file: TextIO | None = None):
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self.disable = disable
        self.every_steps = every_steps if every_steps else max(1, self.total // 20)
        self.every_seconds = every_seconds
        self.file = file
        self.postfix = ""
        self._start_n = self.n
        self._t0 = self._last_t = time.perf_counter()
        self._last_n = self.n
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.n - self._last_n >= self.every_steps or now - self._last_t >= self.every_seconds:
            self._emit(now)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def _emit(self, now: float) -> None:
        self._last_n, self._last_t = self.n, now
        if self.disable:
            return
        elapsed = now - self._t0
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.n / self.total if self.total else 100.0
        line = (f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%), {_fmt_seconds(elapsed)} elapsed, "
                f"eta {_fmt_seconds(eta) if eta == eta else '?'}, {rate:.2f} {self.unit}/s")
        if self.postfix:
            line += f", {self.postfix}"
        f = self.file or sys.stderr
        print(line, file=f, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last_n:
                self._emit(time.perf_counter())


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "it", disable: bool = False,
                 every_steps: int | None = None, every_seconds: float = 30.0, file: TextIO | None = None):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else ``PlainProgress``."""
    stream = file or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    file=stream)
    return PlainProgress(total, initial, desc, unit, disable, every_steps, every_seconds, file)
