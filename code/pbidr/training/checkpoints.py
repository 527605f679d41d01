"""Checkpoint and run-directory I/O, shared by train, eval, batch and the benchmarks.

A run directory (layout in :mod:`pbidr.training.trainer`) keeps its checkpoints in ``checkpoints/``:
``latest.pt`` and ``step_NNNNNNN.pt``, each written atomically (temp file + rename) with a
``.sha256`` beside it. They load on the CPU; a checkpoint that is missing, fails its checksum or
is not a pbidr checkpoint raises a one-line PbidrError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pbidr.errors import PbidrError
from pbidr.model.pbidr_model import PBIDRModel
from pbidr.training.conf import RunConfig, parse_conf
from pbidr.utils.atomic import atomic_path, file_sha256, write_text
from pbidr.utils.outputs import output_stage

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
CHECKSUM_SUFFIX = ".sha256"


# ------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_path(exp_dir: Path, which: str | int = "latest") -> Path:
    ckpt_dir = Path(exp_dir) / CHECKPOINT_DIR
    if which in ("latest", None):
        return ckpt_dir / LATEST
    return ckpt_dir / f"step_{int(which):07d}.pt"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save under a temporary name, its SHA-256 beside it, then rename into place."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        write_text(checksum_path(path), file_sha256(tmp) + "\n")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU; one-line error when it is missing or corrupt (the checksum
    beside it, when there is one, must match)."""
    path = Path(path)
    if not path.is_file():
        raise PbidrError(f"{path}: checkpoint not found")
    sidecar = checksum_path(path)
    if sidecar.is_file():
        want = sidecar.read_text().strip()
        if want and file_sha256(path) != want:
            raise PbidrError(f"{path}: corrupt checkpoint (its SHA-256 differs from {sidecar.name})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise PbidrError(f"{path}: corrupt or unreadable checkpoint ({exc.__class__.__name__})") from None
    for key in ("step", "model", "conf"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise PbidrError(f"{path}: not a pbidr checkpoint (no '{key}')")
    return ckpt


def latest_good_checkpoint(exp_dir: Path, warn=None) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint of the run that loads: latest.pt, else the numbered ones, newest first
    (each skipped one is reported through ``warn``). None when the run has no checkpoint at all."""
    ckpt_dir = Path(exp_dir) / CHECKPOINT_DIR
    candidates = [p for p in [ckpt_dir / LATEST, *sorted(ckpt_dir.glob("step_*.pt"), reverse=True)] if p.is_file()]
    errors = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
        except PbidrError as err:
            errors.append(str(err))
            continue
        for e in errors:
            if warn is not None:
                warn(f"{e}; using {path.name} (step {int(ckpt['step'])}) instead")
        return ckpt, path
    if errors:
        raise PbidrError(errors[0] + ("; no earlier checkpoint is readable either" if len(errors) > 1 else ""))
    return None


def model_from_checkpoint(ckpt: dict[str, Any], path: Path) -> tuple[PBIDRModel, RunConfig]:
    conf = parse_conf(ckpt["conf"], str(path))
    model = PBIDRModel(conf.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise PbidrError(f"{path}: checkpoint does not match its conf's network shapes "
                         f"({str(exc).splitlines()[0]})") from None
    return model, conf


# ------------------------------------------------------------------------------------------------
# Run directories


def is_run_dir(exp_dir: Path) -> bool:
    return ((exp_dir / "run.conf").exists() or (exp_dir / CHECKPOINT_DIR).exists()
            or (exp_dir.is_dir() and output_stage(exp_dir) == "train"))


@dataclass
class LoadedRun:
    exp_dir: Path
    checkpoint: Path
    step: int
    model: "torch.nn.Module"
    conf: RunConfig
    scan_dir: Path


def available_steps(exp_dir: Path) -> list[int]:
    steps = []
    for p in (Path(exp_dir) / CHECKPOINT_DIR).glob("step_*.pt"):
        try:
            steps.append(int(p.stem.split("_", 1)[1]))
        except ValueError:
            continue
    return sorted(steps)


def resolve_checkpoint(exp_dir: Path, which: str | int = "latest") -> Path:
    """The checkpoint file for ``which`` (``latest`` or a step); one-line errors naming what exists."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise PbidrError(f"{exp_dir}: run directory not found")
    which = str(which).strip().lower() if which is not None else "latest"
    if which != "latest":
        try:
            step = int(which)
        except ValueError:
            raise PbidrError(f"--checkpoint {which}: expected 'latest' or a step number") from None
        path = checkpoint_path(exp_dir, step)
        if not path.is_file():
            steps = available_steps(exp_dir)
            have = ", ".join(str(s) for s in steps) if steps else "none"
            raise PbidrError(f"{path}: checkpoint of step {step} not found (available steps: {have}; or 'latest')")
        return path
    path = checkpoint_path(exp_dir)
    if not path.is_file():
        steps = available_steps(exp_dir)
        if steps:
            raise PbidrError(f"{path}: not found; numbered checkpoints exist (steps "
                             f"{', '.join(map(str, steps))}): pass --checkpoint STEP")
        where = exp_dir / CHECKPOINT_DIR
        raise PbidrError(f"{where}: no checkpoint in the run (train it first: pbidr train --exp-dir {exp_dir})")
    return path


def load_run(exp_dir: str | Path, checkpoint: str | int = "latest", scan_dir: str | Path | None = None) -> LoadedRun:
    """The model of one checkpoint (on the CPU) with its conf, and the run's scan directory."""
    exp_dir = Path(exp_dir)
    path = resolve_checkpoint(exp_dir, checkpoint)
    if scan_dir is None:
        info_path = exp_dir / "run.json"
        try:
            info = json.loads(info_path.read_text())
            scan_dir = info["scan_dir"]
        except FileNotFoundError:
            raise PbidrError(f"{info_path}: missing, so the run's scan directory is unknown (pass --data)") from None
        except (ValueError, KeyError, TypeError):
            raise PbidrError(f"{info_path}: unreadable or has no 'scan_dir' (pass --data)") from None
        scan_dir = Path(scan_dir)
        if not scan_dir.is_dir():
            raise PbidrError(f"{scan_dir}: the run's scan directory (from {info_path}) is missing "
                             "(re-run preprocess, or pass --data)")
    scan_dir = Path(scan_dir)
    if not scan_dir.is_dir():
        raise PbidrError(f"{scan_dir}: scan directory not found")
    ckpt = load_checkpoint(path)
    model, conf = model_from_checkpoint(ckpt, path)
    return LoadedRun(exp_dir=exp_dir, checkpoint=path, step=int(ckpt["step"]), model=model, conf=conf,
                     scan_dir=scan_dir)
