"""What every benchmark verb shares: the machine it ran on, this machine's fp32 matmul rate (the one
probe; every FLOP rate of the benchmarks is read against it), the machine line of the reports, the
reports' writing and their number cells.

torch is imported inside the functions: the verb modules import this one to build their parsers."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from pbidr.evaluation.metrics import json_safe
from pbidr.utils.device import matmul_rate  # noqa: F401  (the verbs import it from here)
from pbidr.utils.atomic import write_json, write_text


def machine_info(device=None) -> dict:
    """CPU model, cores, torch version and threads, the CUDA device's name (None without CUDA) and,
    given one, the ``device`` the benchmark ran on."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = None if device is None else torch.device(device)
    cuda_index = (device.index or 0) if device is not None and device.type == "cuda" else 0
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(cuda_index) if torch.cuda.is_available() else None}
    if device is not None:
        info["device"] = str(device)
    return info


def check_conf(conf: str, sets: list[str], iters: int | None = None):
    """The RunConfig that ``--conf``, the ``--set`` items and ``--iters`` give, loaded and checked before a
    verb starts any work; errors name the flag, the item or the file (a key set both by --iters and by
    --set is an error, as in pbidr train)."""
    from pbidr.commands.conf import train_overrides
    from pbidr.training.conf import load_conf, resolve_conf

    path = resolve_conf(conf, None)
    overrides, labels = train_overrides(argparse.Namespace(set=sets, iters=iters))
    return load_conf(path, overrides, labels)


def machine_line(machine: dict, date: str) -> str:
    """``Machine: CPU, N cores, torch V[, GPU]; fp32 matmul R GFLOP/s [on DEVICE] (measured in the same
    run). Date: D``; the device is named when it is not the CPU (the rate is then the GPU's)."""
    device = machine.get("device", "cpu")
    return (f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}"
            + (f", {machine['cuda']}" if machine.get("cuda") else "")
            + f"; fp32 matmul {machine['matmul_gflop_s']:.0f} GFLOP/s" + (f" on {device}" if device != "cpu" else "")
            + f" (measured in the same run). Date: {date}")


def write_report(json_path: str | Path, report: dict, md_path: str | Path | None = None, markdown: str = "") -> None:
    """The report as JSON (non-finite numbers as strings, so the file stays JSON) and, given ``md_path``,
    its markdown tables; each written atomically, so a killed benchmark keeps its previous report."""
    write_json(json_path, json_safe(report))
    if md_path is not None:
        write_text(md_path, markdown)


def cell(x, spec: str = ".1f") -> str:
    """A table cell: ``x`` formatted as a number, or as it is when it is none (None, "nan", a note)."""
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)
