"""Argument types shared by every subcommand's parser: a bad value fails while the command line is
parsed, with one line naming the flag, before any file is read or any work starts."""

from __future__ import annotations

import argparse
import math


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


def add_device_arg(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N" + note)


def add_overwrite_arg(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace the output when it is a previous `pbidr {stage}` output (atomically); "
                        "a folder holding anything else is never replaced")
