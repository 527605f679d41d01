"""Progress for long stages: a tqdm bar on a terminal, plain log lines everywhere else.

With stderr not a terminal (CI, ``nohup``, a cluster job) a bar would write one carriage-return
update per step, i.e. a log that is a single multi-megabyte line. There, ``progress_bar`` returns
``PlainProgress``, which prints one ordinary line every ``every_steps`` steps or ``every_seconds``
seconds (whichever comes first) and one at the end.

Inside ``report_progress_to(callback, stage)`` (the Python API's ``progress=`` callable), every bar
and stage note goes to the callback as a :class:`ProgressEvent` instead, and nothing is printed.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

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


@dataclass(frozen=True)
class ProgressEvent:
    """One report of a long stage: ``stage`` (preprocess, train, eval), ``task`` (what runs: train,
    render, ``eval: render (mesh)``, ...), ``done`` of ``total`` units, and ``note`` (the bar's
    status text, or a finished step such as ``eval: score done in 2.3 s``; then done = total = 0)."""

    stage: str
    task: str
    done: int
    total: int
    note: str = ""


# (callback, stage) while report_progress_to is active; a context variable, so a thread of its own
# (a notebook's background run) keeps its own callback.
_SINK: contextvars.ContextVar[tuple[Callable[[ProgressEvent], None], str] | None] = contextvars.ContextVar(
    "pbidr_progress_sink", default=None)


@contextlib.contextmanager
def report_progress_to(callback: Callable[[ProgressEvent], None], stage: str) -> Iterator[None]:
    """Send every bar and note of the code run inside to ``callback``, labelled ``stage``."""
    token = _SINK.set((callback, stage))
    try:
        yield
    finally:
        _SINK.reset(token)


class CallbackProgress:
    """tqdm's interface (update, set_postfix_str, close), reporting each update to a callback."""

    def __init__(self, callback: Callable[[ProgressEvent], None], stage: str, task: str, total: int, initial: int = 0):
        self.callback, self.stage, self.task = callback, stage, task
        self.total, self.n, self.postfix = int(total), int(initial), ""

    def update(self, n: int = 1) -> None:
        self.n += n
        self.callback(ProgressEvent(self.stage, self.task, self.n, self.total, self.postfix))

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        return None


def progress_note(text: str, enabled: bool = True) -> None:
    """A one-line note of a finished step: to the callback when one is set, else to stderr."""
    if not enabled:
        return
    sink = _SINK.get()
    if sink is not None:
        callback, stage = sink
        callback(ProgressEvent(stage, text.split(":", 1)[0], 0, 0, text))
    else:
        print(text, file=sys.stderr, flush=True)


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "it", disable: bool = False,
                 every_steps: int | None = None, every_seconds: float = 30.0, file: TextIO | None = None):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else ``PlainProgress``; inside
    :func:`report_progress_to`, a :class:`CallbackProgress`."""
    sink = _SINK.get()
    if sink is not None and not disable:
        return CallbackProgress(sink[0], sink[1], desc, total, initial)
    stream = file or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    file=stream)
    return PlainProgress(total, initial, desc, unit, disable, every_steps, every_seconds, file)
