"""The one place that turns ``--device auto|cpu|cuda[:N]`` into a torch device; and the machine's fp32
matmul rate on a device, the speed reference that every timing is given with."""

from __future__ import annotations

import re
import time

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


def matmul_rate(n: int = 2048, repeat: int = 10, device="cpu") -> float:
    """This machine's fp32 matmul rate on ``device`` in FLOP/s (square n x n, best of ``repeat``)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":  # the kernel runs asynchronously: wait for it before reading the clock
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best
