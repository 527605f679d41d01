"""One fit of ``pbidr bench texel`` and its scores, in a worker process of its own: the texel fit of a
conf's energy on one built-in sample (from zero or from the truth, with one lever changed, or with the
sample's true light / albedo) on the job's device, scored at the coarse topology and at the dense mesh
with their ceilings, and the fitted map against the true one band by band."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from pbidr.detail.chart import build_chart, texture_colours
from pbidr.detail.fit import Light, fit_detail, seam_pairs
from pbidr.detail.solver import fit_config
from pbidr.evaluation.displacement import subdivide_to_spacing
from pbidr.evaluation.run_eval import map_texel_spacing
from pbidr.evaluation.score import albedo_leak, ceiling_vertices, recovered_fraction, sample_reference, score_vertices
from pbidr.evaluation.uv_maps import sample_uv_map
from pbidr.io.load import load_mesh
from pbidr.preprocess import sample as face_sample
from pbidr.training.conf import load_conf

BAND_EDGES_MM = (0.0, 0.6, 1.5, 4.0, 12.0, math.inf)  # Gaussian sigmas (mm) between the bands


def run_one(job: dict) -> dict:
    """The pool's entry: ``job`` (made by pbidr.bench.texel) fitted and scored with its own threads; on
    the job's device."""
    torch.set_num_threads(job["threads"])
    return fit_and_score(job)


def fit_and_score(job: dict) -> dict:
    folder = Path(job["sample"])
    conf = load_conf(job["conf"])
    fit = fit_config(conf.loss.texel, conf.model.displacement_map, conf.train.learning_rate, conf.train.iters)
    cfg = replace(fit, log_every=10**9, **job["lever"])
    res = conf.model.displacement_map.resolution
    mesh = load_mesh(folder / "mesh.obj")
    chart = build_chart(mesh, (res, res))
    gt = np.load(folder / "gt_displacement_uv.npy")  # the true map, at the texture's size
    init = at_resolution(gt, res) if job["oracle"] else None
    light, albedo = _true_parts(job, folder, res)
    t0 = time.perf_counter()
    fit = fit_detail(chart, texture_colours(mesh, chart.size), cfg, device=job["device"], init_displacement=init,
                     seams=seam_pairs(chart, mesh), light=light, albedo=albedo)
    seconds = time.perf_counter() - t0
    out = {"seed": job["seed"], "lever": job["lever_name"], "oracle": job["oracle"], "fit_s": seconds,
           "steps": cfg.steps, "resolution": res}
    out.update(_scores(mesh, fit.displacement, folder, res))
    out["bands"] = displacement_bands(fit.displacement, gt, folder)
    return out


def _true_parts(job: dict, folder: Path, res: int) -> tuple[Light | None, np.ndarray | None]:
    """The sample's true light and albedo (res, res, 3) where the job puts them in place of the fitted
    ones (the diagnostics); None otherwise."""
    light = albedo = None
    if job.get("true_light"):
        direction = np.asarray(json.loads((folder / "sample.json").read_text())["light_direction"])
        light = Light("lambert", 1, np.array([face_sample.AMBIENT, *(face_sample.DIFFUSE * direction)]))
    if job.get("true_albedo"):
        albedo = np.asarray(Image.open(folder / "albedo.png").convert("RGB")).astype(np.float64) / 255.0
        albedo = at_resolution(albedo, res)
    return light, albedo


def _scores(mesh, displacement: np.ndarray, folder: Path, res: int) -> dict:
    """The coarse mesh and its subdivision to about a texel, each displaced by the fitted map along its
    normals and scored against the truth, with the ceiling at its density."""
    truth, coarse_errors = sample_reference(folder)
    dense, dense_n, levels = subdivide_to_spacing(mesh, map_texel_spacing(mesh, res))
    out = score_map(mesh, dense, dense_n, displacement, truth, coarse_errors["mean"])
    out["dense"]["subdivisions"] = levels
    return out


def ceilings(mesh, dense, truth, coarse_ref: float) -> dict[str, float]:
    """The normal-error ratio of the truth at the coarse and at the dense mesh's own vertices."""
    return {name: float(score_vertices(ceiling_vertices(m.vertices, truth), m.faces, truth).normal_error_deg.mean()
                        / coarse_ref) for name, m in (("coarse", mesh), ("dense", dense))}


def score_map(mesh, dense, dense_normals: np.ndarray, displacement: np.ndarray, truth, coarse_ref: float,
              ceiling: dict[str, float] | None = None) -> dict:
    """A displacement map (res, res) read at the coarse and the dense mesh's vertices, each moved along its
    normals and scored: ratio, ceiling (computed unless given), recovered fraction, correlation, RMS of
    the map, of the truth and of the error, and the leak (every mark; per kind as ``leak_by_kind``)."""
    ceiling = ceiling or ceilings(mesh, dense, truth, coarse_ref)
    out = {}
    for name, m, normals in (("coarse", mesh, mesh.vertex_normals()), ("dense", dense, dense_normals)):
        vuv = np.zeros((len(m.vertices), 2))
        vuv[m.faces.reshape(-1)] = m.uv[m.face_uv.reshape(-1)]
        d = sample_uv_map(displacement, vuv)
        s = score_vertices(m.vertices + d[:, None] * normals, m.faces, truth)
        ratio = float(s.normal_error_deg.mean() / coarse_ref)
        out[name] = {"ratio": ratio, "ceiling": ceiling[name], "recovered": recovered_fraction(ratio, ceiling[name]),
                     "correlation": _correlation(s.displacement, s.true_displacement),
                     "rms_mm": float(np.sqrt(np.mean(s.displacement**2))),
                     "true_rms_mm": float(np.sqrt(np.mean(s.true_displacement**2))),
                     "error_rms_mm": float(np.sqrt(np.mean((s.displacement - s.true_displacement) ** 2))),
                     "leak": float(albedo_leak(s, truth)[0]),
                     "leak_by_kind": {k: float(albedo_leak(s, truth, k)[0]) for k in truth.kinds},
                     "vertices": int(len(m.vertices))}
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.0 if a.std() < 1e-9 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1])


def at_resolution(image: np.ndarray, res: int) -> np.ndarray:
    """A texture-layout array (H, W[, C]) area-averaged onto the res x res chart grid (the true map and
    albedo, from the texture's size); unchanged when it is that size already."""
    if image.shape[:2] == (res, res):
        return image
    return cv2.resize(image, (res, res), interpolation=cv2.INTER_AREA)


def displacement_bands(d: np.ndarray, truth: np.ndarray, folder: Path) -> list[dict]:
    """The fitted map D (res, res) against the sample's true one ``truth`` (its gt_displacement_uv),
    band by band (differences of Gaussian blurs at BAND_EDGES_MM, in the sample's face-plane
    millimetres), inside its scoring region: the RMS of each, the regression slope of fit on truth
    (1 = full amplitude) and the correlation. Shows which scales the fit recovers and which it cannot
    see."""
    h, w = d.shape
    gt = at_resolution(truth.astype(np.float64), h)
    region = np.asarray(Image.open(folder / "face_region_uv.png").convert("L").resize((w, h))) > 127
    sx, sy = w / face_sample.FACE_WIDTH_MM, h / face_sample.FACE_HEIGHT_MM  # texels per mm

    def blur(x: np.ndarray, sigma_mm: float) -> np.ndarray:
        if sigma_mm == 0.0:
            return x
        if math.isinf(sigma_mm):
            return np.zeros_like(x)
        return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma_mm * sx, sigmaY=sigma_mm * sy)

    out = []
    fit = d.astype(np.float64)
    for lo, hi in zip(BAND_EDGES_MM[:-1], BAND_EDGES_MM[1:]):
        t = (blur(gt, lo) - blur(gt, hi))[region]
        f = (blur(fit, lo) - blur(fit, hi))[region]
        out.append({"sigma_mm": [lo, hi], "true_rms": float(t.std()), "fit_rms": float(f.std()),
                    "slope": float((t * f).sum() / max((t * t).sum(), 1e-30)),
                    "correlation": float(np.corrcoef(t, f)[0, 1])})
    return out
