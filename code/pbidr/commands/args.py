"""Argument types shared by every subcommand's parser: a bad value fails while the command line is
parsed, with one line naming the flag, before any file is read or any work starts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``pbidr train: error: argument --iters: ...``)
    instead of the usage block plus the error: the same shape as every other pbidr error."""

    def error(self, message: str):  # noqa: D401 -- argparse's hook
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def nonneg_int(text: str) -> int:
    value = _number(text, int, "a whole number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    return _number(text, float, "a number")


def positive_float(text: str) -> float:
    value = _number(text, float, "a number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text, float, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _number_list(text: str, item, what: str, allow_empty: bool = False) -> list:
    """Comma-separated values, each read by ``item`` (one of the number types above)."""
    parts = [p.strip() for p in text.split(",")]
    if parts == [""] and allow_empty:
        return []
    try:
        return [item(p) for p in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def nonneg_int_list(text: str) -> list[int]:
    """Whole numbers >= 0 like ``0,1,2`` (seeds); at least one."""
    return _number_list(text, nonneg_int, "comma-separated whole numbers >= 0 like 0,1,2")


def positive_int_list(text: str) -> list[int]:
    """Whole numbers >= 1 like ``300,600`` (step counts); empty for none."""
    return _number_list(text, positive_int, "comma-separated whole numbers >= 1 like 300,600", allow_empty=True)


def positive_float_list(text: str) -> list[float]:
    """Numbers > 0 like ``1,0.5``; at least one."""
    return _number_list(text, positive_float, "comma-separated numbers > 0 like 1,0.5")


def output_file(text: str) -> str:
    """A file the command writes: refused when a folder stands at that path."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    return text


def work_folder(text: str) -> str:
    """A folder the command works in (made when missing): refused when a file stands at that path."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return text


def views_arg(text: str) -> str:
    """``default``, ``all`` or 1-based view numbers like ``1,9,17`` (checked against the scan later)."""
    if text.strip().lower() in ("all", "default"):
        return text
    parts = text.replace(" ", "").split(",")
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected 'default', 'all' or 1-based view numbers like 1,9,17, got {text!r}")
    return text


def checkpoint_arg(text: str) -> str:
    """``latest`` or a step number."""
    if text != "latest" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 'latest' or a step number, got {text!r}")
    return text


def add_device_arg(p: argparse.ArgumentParser, note: str = "", default: str = "auto") -> None:
    p.add_argument("--device", default=default, help="auto (CUDA when available), cpu, cuda, cuda:N" + note)


def add_overwrite_arg(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace the output when it is a previous `pbidr {stage}` output (atomically); "
                        "a folder holding anything else is never replaced")
