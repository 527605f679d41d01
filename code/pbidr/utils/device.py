"""The one place that turns ``--device auto|cpu|cuda[:N]`` into a torch device."""

from __future__ import annotations

import torch

from pbidr.errors import PbidrError


def pick_device(name: str = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PbidrError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise PbidrError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
