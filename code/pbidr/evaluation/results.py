"""A finished eval read back: where it is, its metrics as typed values, and what the checkpoint holds
besides (the fitted light, the albedo at every texel). The Python API (:mod:`pbidr.api`) and the
viewer (:mod:`pbidr.view`) read runs through this one module.

A finished eval is ``RUN/eval/`` holding ``metrics.json`` (``pbidr eval``); the folders that lead to
one are the run (``RUN``), and a folder holding the run as ``run/`` (what ``pbidr.recover`` writes,
and each subject of ``pbidr batch``: ``scan/``, ``run/``, ``run/eval/``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbidr.errors import PbidrError
from pbidr.evaluation.run_eval import EVAL_DIR

RUN_DIR = "run"
METRICS = "metrics.json"


def is_eval_dir(path: Path) -> bool:
    return (path / METRICS).is_file() and (path / "detailed.obj").is_file()


def find_eval_dir(path: str | Path) -> Path:
    """The finished eval that ``path`` names: an eval folder, a run folder, or a folder holding the run
    as ``run/``. One-line error naming the path and what is missing."""
    path = Path(path)
    if not path.exists():
        raise PbidrError(f"{path}: no such folder")
    if not path.is_dir():
        raise PbidrError(f"{path}: not a folder (expected a run, its eval folder, or a folder holding run/)")
    for candidate in (path, path / EVAL_DIR, path / RUN_DIR / EVAL_DIR):
        if is_eval_dir(candidate):
            return candidate
    for run in (path, path / RUN_DIR):
        if (run / "run.conf").is_file() or (run / "checkpoints").is_dir():
            raise PbidrError(f"{run / EVAL_DIR}: the run has no finished eval (run `pbidr eval -i {run}`)")
    raise PbidrError(f"{path}: not a run, an eval folder or a folder holding run/ (no {METRICS} with detailed.obj)")


def read_metrics(eval_dir: Path) -> dict[str, Any]:
    """An eval's metrics.json; one-line error when it is unreadable or not an eval's."""
    path = Path(eval_dir) / METRICS
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise PbidrError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    except ValueError as exc:
        raise PbidrError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("displacement"), dict) or "step" not in data:
        raise PbidrError(f"{path}: not the metrics of a `pbidr eval` (no 'step' or 'displacement')")
    return data


def _number(x: Any) -> float:
    """A metrics.json number (NaN is written as the string "nan") as a float."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class Score:
    """A mesh scored against a sample's known detail (``pbidr score``; its JSON in ``all``).

    ``normal_error_ratio``: mean normal error against the true surface over the coarse mesh's (< 1
    beats the coarse mesh); ``ceiling_ratio``: the same for the truth sampled at this mesh's vertices
    (the best a mesh of its density can do); ``recovered_fraction`` = (1 - ratio) / (1 - ceiling);
    ``displacement_correlation`` and ``displacement_rms_mm`` against the true displacement;
    ``albedo_leak``: how much of the albedo marks (freckles) went into the geometry."""

    normal_error_ratio: float
    ceiling_ratio: float
    recovered_fraction: float
    displacement_correlation: float
    displacement_rms_mm: float
    albedo_leak: float
    mesh: str
    all: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Score":
        names = ("normal_error_ratio", "ceiling_ratio", "recovered_fraction", "displacement_correlation",
                 "displacement_rms_mm", "albedo_leak")
        return cls(**{k: _number(data.get(k)) for k in names}, mesh=str(data.get("mesh", "")), all=data)


@dataclass(frozen=True)
class EvalMetrics:
    """What an eval measured, in millimetres where it is a length (its metrics.json in ``all``).

    ``displacement_*_mm``: the dense detailed mesh's displacement along the coarse normals;
    ``psnr_db``: masked PSNR of the renders (None with --no-rendering); ``score`` / ``score_dense``:
    detailed.obj / detailed_subdivided.obj against the sample's truth (None without one)."""

    step: int
    psnr_db: float | None
    displacement_min_mm: float
    displacement_max_mm: float
    displacement_std_mm: float
    mm_per_unit: float
    score: Score | None
    score_dense: Score | None
    all: dict[str, Any] = field(repr=False, compare=False)

    @property
    def recovered_fraction(self) -> float | None:
        """The recovered fraction of detailed.obj (the coarse topology), None without a truth."""
        return self.score.recovered_fraction if self.score is not None else None


def mm_per_unit(metrics: dict[str, Any]) -> float:
    """Millimetres per world unit of an eval: the scan's record, else what the eval's maps used."""
    from pbidr.preprocess.units import scan_units

    scan = Path(str(metrics.get("scan_dir", "")))
    if (scan / "meta.json").is_file():
        return scan_units(scan)[1]
    return _number((metrics.get("uv_maps") or {}).get("units_to_mm", 1.0))


def eval_metrics(metrics: dict[str, Any]) -> EvalMetrics:
    """The typed view of an eval's metrics.json."""
    mm = mm_per_unit(metrics)
    disp = (metrics["displacement"].get("detailed_subdivided") or metrics["displacement"].get("detailed") or {})
    psnr = (metrics.get("rendering") or {}).get("psnr_mean")
    scores = {k: Score.from_json(metrics[k]) if isinstance(metrics.get(k), dict) else None
              for k in ("score", "score_dense")}
    return EvalMetrics(step=int(metrics["step"]), psnr_db=None if psnr is None else _number(psnr),
                       displacement_min_mm=_number(disp.get("min")) * mm,
                       displacement_max_mm=_number(disp.get("max")) * mm,
                       displacement_std_mm=_number(disp.get("std")) * mm, mm_per_unit=mm,
                       score=scores["score"], score_dense=scores["score_dense"], all=metrics)


# ------------------------------------------------------------------------------------------------
# What the checkpoint holds


@dataclass(frozen=True)
class FittedLight:
    """The light the detail mode fitted on the coarse shape and froze (grey). ``lambert``: shading =
    ``ambient`` + ``diffuse`` x max(0, n . ``direction``), ``direction`` a unit vector toward the light
    in the world frame; ``poly``: a polynomial (spherical harmonics) of degree ``order`` in the normal,
    ``coeffs`` its coefficients (no single direction)."""

    model: str
    coeffs: tuple[float, ...]
    ambient: float | None = None
    diffuse: float | None = None
    direction: tuple[float, float, float] | None = None
    order: int | None = None


def eval_checkpoint(eval_dir: Path, metrics: dict[str, Any]) -> Path:
    """The checkpoint an eval was made from: its step's numbered file, else the run's latest."""
    from pbidr.training.checkpoints import checkpoint_path

    run = Path(eval_dir).parent
    numbered = checkpoint_path(run, int(metrics["step"]))
    return numbered if numbered.is_file() else checkpoint_path(run)


def fitted_light(model) -> FittedLight | None:
    """The fitted light of a loaded model (detail mode), None for the ray modes (their shading is
    networks, with no explicit light)."""
    if model.parameterisation != "displacement_map":
        return None
    d = model.sdf_network.light().describe()
    direction = tuple(float(x) for x in d["direction"]) if "direction" in d else None
    return FittedLight(model=d["model"], coeffs=tuple(d["coeffs"]), ambient=d.get("ambient"),
                       diffuse=d.get("diffuse"), direction=direction, order=d.get("order"))


def albedo_at_texels(model, step: int, eval_dir: Path, size: tuple[int, int], scan_dir: Path | None) -> np.ndarray:
    """The model's albedo (H, W, 3) float32 in [0, 1] at every texel centre of a ``size`` UV map (the
    coarse texture's layout: row 0 is v = 1), 0 outside the UV chart. The detail mode reads its albedo
    map; the ray modes ask the albedo network at the texel's point on detailed.obj."""
    import torch

    from pbidr.evaluation.uv_maps import locate_uv, texel_uv

    uv = texel_uv(size)
    with torch.no_grad():
        if model.parameterisation == "displacement_map":
            field_ = model.sdf_network
            albedo = field_.sample_map(field_.albedo, torch.as_tensor(uv, dtype=torch.float32)).numpy()
            return np.clip(albedo, 0.0, 1.0).reshape(*size, 3).astype(np.float32)
        from pbidr.datasets.scan import load_scan
        from pbidr.evaluation.run_eval import prepare_model
        from pbidr.geometry.cameras import to_normalised
        from pbidr.io.load import load_mesh

        if scan_dir is None or not Path(scan_dir).is_dir():
            raise PbidrError(f"{scan_dir}: the run's scan folder is missing; the albedo network needs its coarse mesh")
        data = load_scan(scan_dir, None, [0])
        prepare_model(model, data.mesh, data.scale_mat, step)  # the step sets the encodings' bandwidth
        detailed = load_mesh(Path(eval_dir) / "detailed.obj")
        face, bary, hit = locate_uv(detailed, uv, snap=0.5 / max(size))
        points = np.einsum("nk,nkc->nc", bary[hit], detailed.vertices[detailed.faces[face[hit]]])
        x = torch.as_tensor(to_normalised(points, data.scale_mat), dtype=torch.float32)
        features = model.sdf_network(x)[:, 1:] if model.conf.feature_vector_size > 0 else x.new_zeros(len(x), 0)
        out = np.zeros((len(uv), 3), dtype=np.float32)
        out[hit] = np.clip(model.albedo_at(x, features).numpy(), 0.0, 1.0)
        return out.reshape(*size, 3)
