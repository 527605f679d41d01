"""The one place that turns ``--device auto|cpu|cuda[:N]`` into a torch device."""

from __future__ import annotations

import re

import torch

from pbidr.errors import PbidrError


def pick_device(name: str = "auto") -> torch.device:
    """The device ``name`` asks for; an error names the flag when that device is not on this machine."""
    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise PbidrError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise PbidrError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise PbidrError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(text)
