"""``pbidr eval``: a trained run -> detailed meshes, marching cubes, UV maps, renders and metrics.

Writes ``EXP_DIR/eval/`` as a whole (built in a staging folder and renamed into place, so a failed
eval leaves an earlier one intact)::

    detailed.obj (+ .mtl)             the scan's coarse mesh, every vertex moved by -sdf * normal
    detailed_subdivided.obj (+ .mtl)  the same on one midpoint subdivision of the coarse mesh
    texture.png                       the coarse mesh's texture, shared by both OBJs
    displacement.npy                  (V,) signed displacement of detailed.obj's vertices (world units)
    displacement_subdivided.npy       the same for detailed_subdivided.obj
    sdf_mc.ply                        marching cubes of the SDF in a narrow band around the coarse mesh
    displacement.exr                  float32 displacement in mm in the coarse UV layout, mid-level 0
    displacement_uv.png               16-bit, d_mm = (png / 65535 - 0.5) * 8 (Blender: mid-level 0.5, strength 8 mm)
    normal_tangent_uv.png             the detailed normals in the coarse mesh's MikkTSpace frame, 8-bit
    normal_object_uv.png              object-space (world) normals of the detailed mesh, (n + 1) / 2, 8-bit
    detailed.glb                      detailed_subdivided in metres, base colour + tangent-space normal map
    detailed.ply                      detailed_subdivided with per-vertex UVs and colours (TextureFile texture.png)
    albedo_uv.png, shading_uv.png, specular_uv.png, rgb_uv.png    (detail mode) PBIDR's image model in the
                                      coarse UV layout, part by part: the albedo, the grey diffuse shading and
                                      the grey glossy lobe of the detailed normals under the fitted light, and
                                      albedo x shading + specular (metrics.json: image_model, the light)
    compare.png                       coarse vs detailed, clay-shaded from the frontal camera (always)
    renders/NNN_{rgb,diffuse,specular,albedo,normal}.png   (unless --no-rendering; --views: the frontal
                                      view and the extreme yaws by default; --renderer mesh: Embree on
                                      detailed_subdivided + the shading networks, or sdf: sphere tracing)
    contact_sheet.png                 per view: input, rgb, diffuse, specular, albedo, normal
    metrics.json                      PSNR, displacement statistics, marching-cubes stats, timings

Every mesh is in the world frame (the input mesh's frame and units). The network's SDF lives in the
normalised frame; ``scale_mat`` (normalised -> world) is a uniform scale s plus a shift, so a world
SDF is the network's times s. The geometric parts take any SDF callable and a ``scale_mat`` (see
:func:`world_sdf`, :func:`detail_meshes`, :func:`level_set_world`), so they are tested on an exact
sphere.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pbidr.errors import PbidrError
from pbidr.evaluation.metrics import json_safe, masked_psnr
from pbidr.training.checkpoints import LoadedRun, load_run
from pbidr.training.conf import RunConfig, conf_to_text
from pbidr.utils.atomic import save_npy, write_json
from pbidr.utils.outputs import check_output, stage_output

# scipy, skimage and cv2 are imported where they are used, so that `pbidr --help` (whose eval parser,
# pbidr.commands.eval, imports this module for its defaults) stays quick; torch comes in with the
# checkpoint module (pbidr.training.checkpoints), and with it the conf, atomic-write and output modules;
# pbidr.evaluation.metrics needs only numpy.
if TYPE_CHECKING:
    import torch

    from pbidr.datasets.scan import ScanData
    from pbidr.evaluation.marching_cubes import LevelSet
    from pbidr.geometry.cameras import Camera
    from pbidr.io.mesh import TexturedMesh
    from pbidr.model.pbidr_model import PBIDRModel

SdfFn = Callable[["torch.Tensor"], "torch.Tensor"]

EVAL_DIR = "eval"
TEXTURE_NAME = "texture.png"
DEFAULT_BAND = 3.0  # world units (mm for faces): how far the detailed surface may be from the coarse mesh
DEFAULT_CHUNK = 1 << 16
RENDERERS = ("mesh", "sdf")  # decomposition renders: Embree on the detailed mesh, or sphere-traced SDF
COMPARE_PANEL = 768  # pixels: compare.png panel height
SHEET_CELL = 384  # pixels: largest contact-sheet cell
SHEET_MIN_CELL = 256  # pixels: smallest contact-sheet cell
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


# ------------------------------------------------------------------------------------------------
# Geometry from an SDF callable (normalised frame) and scale_mat


def _uniform_scale(scale_mat: np.ndarray) -> float:
    scale_mat = np.asarray(scale_mat, dtype=np.float64)
    s = float(scale_mat[0, 0])
    if not (s > 0 and np.allclose(np.diag(scale_mat)[:3], s, rtol=1e-6)
            and np.allclose(scale_mat[:3, :3] - np.diag(np.diag(scale_mat)[:3]), 0.0)):
        raise PbidrError(f"scale_mat {scale_mat[:3, :3].tolist()} is not a uniform scale; world distances "
                         "cannot be read off the normalised SDF")
    return s


def world_sdf(sdf: SdfFn, scale_mat: np.ndarray, device: torch.device | str = "cpu",
              chunk: int = DEFAULT_CHUNK) -> Callable[[np.ndarray], np.ndarray]:
    """World points (N, 3) -> signed distance (N,) in world units, from ``sdf`` ((N, 3) tensor ->
    (N,) tensor in the normalised frame), queried ``chunk`` points at a time on ``device``."""
    import torch

    from pbidr.geometry.cameras import to_normalised

    s = _uniform_scale(scale_mat)
    device = torch.device(device)
    chunk = max(1, int(chunk))

    def f(points: np.ndarray) -> np.ndarray:
        pts = to_normalised(np.asarray(points, dtype=np.float64).reshape(-1, 3), scale_mat)
        out = np.empty(len(pts), dtype=np.float64)
        with torch.no_grad():
            for a in range(0, len(pts), chunk):
                x = torch.as_tensor(pts[a:a + chunk], dtype=torch.float32, device=device)
                out[a:a + chunk] = sdf(x).detach().reshape(-1).double().cpu().numpy()
        return out * s

    return f


@dataclass
class DetailMeshes:
    """The coarse mesh displaced onto the SDF's zero level set (world frame).

    detailed: same topology/UVs as the coarse mesh; displacement (V,) world units along its normals.
    detailed_subdivided: the same on the coarse mesh midpoint-subdivided ``levels`` times (until its
    edges are about ``spacing``: a texel of the displacement map); displacement_subdivided (V',)."""

    detailed: TexturedMesh
    displacement: np.ndarray
    detailed_subdivided: TexturedMesh
    displacement_subdivided: np.ndarray
    levels: int = 1


def detail_meshes(coarse: TexturedMesh, sdf_world: Callable[[np.ndarray], np.ndarray],
                  spacing: float | None = None, max_levels: int = 3) -> DetailMeshes:
    """Displace ``coarse`` (world frame) and its dense subdivision by ``-sdf_world * normal``.

    The dense mesh is subdivided until its median edge is at most ``spacing`` world units (once when
    None); its normals are the coarse mesh's smooth normals carried through the subdivision."""
    from pbidr.evaluation.displacement import displace_along_normals, subdivide_to_spacing

    dense, normals, levels = subdivide_to_spacing(coarse, spacing if spacing is not None else math.inf,
                                                  max_levels=max_levels if spacing is not None else 1)
    # The subdivision keeps the coarse vertices first and unmoved: one SDF query over its vertices
    # serves both meshes.
    sdf_dense = np.asarray(sdf_world(dense.vertices), dtype=np.float64).reshape(-1)
    n = len(coarse.vertices)
    if len(sdf_dense) != len(dense.vertices):
        raise PbidrError(f"displacement: sdf returned {len(sdf_dense)} values for {len(dense.vertices)} vertices")
    detailed, disp = displace_along_normals(coarse, lambda _: sdf_dense[:n])
    detailed_sub, disp_sub = displace_along_normals(dense, lambda _: sdf_dense, normals)
    return DetailMeshes(detailed, disp, detailed_sub, disp_sub, levels)


def map_texel_spacing(coarse: TexturedMesh, resolution: int) -> float:
    """World size of one texel of a ``resolution``-square map on ``coarse``'s UV chart (median over
    the edges: world edge length / UV edge length / resolution)."""
    a, b = coarse.faces, np.roll(coarse.faces, -1, axis=1)
    world = np.linalg.norm(coarse.vertices[a] - coarse.vertices[b], axis=-1)
    ua, ub = coarse.face_uv, np.roll(coarse.face_uv, -1, axis=1)
    uvl = np.linalg.norm(coarse.uv[ua] - coarse.uv[ub], axis=-1)
    ok = uvl > 1e-12
    return float(np.median(world[ok] / uvl[ok])) / max(1, int(resolution))


def level_set_world(sdf: SdfFn, coarse: TexturedMesh, scale_mat: np.ndarray, resolution: int = 512,
                    band: float = DEFAULT_BAND, device: torch.device | str = "cpu", chunk: int = DEFAULT_CHUNK,
                    lipschitz: float | None = 1.5, progress: bool = False, guide_spacing: float = 0.5,
                    off_surface_tolerance: float | None = None) -> LevelSet:
    """Marching cubes of ``sdf`` (normalised frame) within ``band`` (world units) of ``coarse`` (world
    frame), on ``resolution`` cells along the longest side of the coarse mesh's bounding box padded by
    the band. ``guide_spacing``: spacing of the coarse-mesh samples the band is measured from, as a
    fraction of the band. Returns the level set in the world frame; ``stats`` gains world-unit entries
    and the process's peak memory (ru_maxrss) before and after."""
    from pbidr.evaluation.marching_cubes import LevelSet, border_points, extract_level_set, guide_points_from_mesh
    from pbidr.geometry.cameras import to_normalised, to_world

    s = _uniform_scale(scale_mat)
    if not band > 0:
        raise PbidrError(f"--band {band} must be positive")
    verts_n = to_normalised(np.asarray(coarse.vertices, dtype=np.float64), scale_mat)
    band_n = band / s
    # Distance to a guide point over-estimates distance to the mesh by up to half their spacing, so
    # the band handed on is widened by that much: every point within ``band`` of the mesh is covered.
    # Sparse guides keep the k-d tree queries cheap (they cost more than the SDF for small networks).
    spacing = band_n * guide_spacing
    guide = guide_points_from_mesh(verts_n, coarse.faces, spacing=spacing)
    lo, hi = verts_n.min(axis=0) - band_n, verts_n.max(axis=0) + band_n
    near = radius = None
    if off_surface_tolerance is not None:
        # The sign flip without a zero happens where the closest coarse point is on the open border. A
        # marching-cubes vertex lies on a cell edge with a node in the band handed on below (plus a cell
        # diagonal), so such a vertex is that close to the border, plus a cell for the edge and half a
        # cell for the border samples' spacing: only those vertices need the check's SDF query.
        from pbidr.evaluation.marching_cubes import make_grid

        voxel = make_grid(resolution, (lo, hi)).voxel
        near = border_points(verts_n, coarse.faces, spacing=voxel)
        radius = band_n + spacing / 2.0 + (math.sqrt(3.0) + 1.5) * voxel + 1e-9
    rss_before = peak_rss_mb()
    ls = extract_level_set(sdf, resolution=resolution, bounds=(lo, hi), guide_points=guide,
                           band=band_n + spacing / 2.0, chunk=chunk, device=device, lipschitz=lipschitz,
                           progress=progress, off_surface_tolerance=off_surface_tolerance,
                           off_surface_near=near, off_surface_radius=radius)
    stats = dict(ls.stats)
    stats.update({
        "resolution": int(resolution), "band": float(band), "band_normalised": band_n,
        "lipschitz": lipschitz, "n_guide_points": int(len(guide)),
        "voxel_size_world": float(stats["voxel_size"]) * s,
        "evals_over_dense": stats["n_sdf_evals"] / max(stats["dense_evals"], 1),
        "n_vertices": int(len(ls.vertices)), "n_faces": int(len(ls.faces)),
        "peak_rss_mb_before": rss_before, "peak_rss_mb_after": peak_rss_mb(),
    })
    return LevelSet(vertices=to_world(ls.vertices, scale_mat), faces=ls.faces, stats=stats)


def prepare_model(model, coarse: TexturedMesh, scale_mat: np.ndarray, step: int) -> None:
    """Give a loaded model what its checkpoint does not hold: the coarse mesh (world frame, moved to
    the normalised one) for the coarse-residual SDF, and the step-driven schedules at ``step``."""
    from pbidr.geometry.cameras import to_normalised

    model.attach_coarse_mesh(to_normalised(coarse.vertices, scale_mat), coarse.faces, coarse.vertex_normals(),
                             uv=coarse.uv, face_uv=coarse.face_uv, scale=_uniform_scale(scale_mat))
    model.set_step(step)


def band_for_displacement(displacement: np.ndarray, minimum: float, voxel: float, margin: float = 1.25) -> float:
    """Marching-cubes band (world units) that holds the SDF surface measured at the coarse vertices:
    ``margin`` x the largest |displacement| plus two voxels (a crossing cell's corners lie up to a
    cell diagonal from the surface), and never less than ``minimum``."""
    d = np.asarray(displacement, dtype=np.float64)
    largest = float(np.max(np.abs(d[np.isfinite(d)]))) if np.isfinite(d).any() else 0.0
    return max(float(minimum), margin * largest + 2.0 * float(voxel))


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB); ru_maxrss is KB on Linux, bytes on macOS."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def displacement_stats(d: np.ndarray) -> dict[str, Any]:
    """Summary of a signed displacement (world units): mean, std, min, max, mean |d|, percentiles."""
    d = np.asarray(d, dtype=np.float64)
    return {"n": int(len(d)), "mean": float(d.mean()), "std": float(d.std()), "min": float(d.min()),
            "max": float(d.max()), "mean_abs": float(np.abs(d).mean()),
            "percentiles": {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(d, PERCENTILES))}}


# ------------------------------------------------------------------------------------------------
# Pictures


def framing_camera(camera: Camera, points: np.ndarray, height: int = COMPARE_PANEL, pad: float = 0.04) -> Camera:
    """``camera`` zoomed and cropped so that ``points`` (N, 3, its frame) fill an image ``height``
    pixels tall (plus ``pad`` of the extent on each side); the width follows the points' aspect."""
    from pbidr.geometry.cameras import Camera

    pix, depth = camera.project(np.asarray(points, dtype=np.float64))
    pix = pix[depth > 0]
    if len(pix) == 0:
        return camera
    x0, y0 = pix.min(axis=0)
    x1, y1 = pix.max(axis=0)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    x0, x1, y0, y1 = x0 - pad * w, x1 + pad * w, y0 - pad * h, y1 + pad * h
    scale = height / (y1 - y0)
    width = max(8, int(round((x1 - x0) * scale)))
    K = camera.K.copy()
    K[0, 0] *= scale
    K[1, 1] *= scale
    # Continuous image coordinates: the crop's left edge x0 becomes the new image's edge at -0.5.
    K[0, 2] = (K[0, 2] - x0) * scale - 0.5
    K[1, 2] = (K[1, 2] - y0) * scale - 0.5
    return Camera(K=K, R=camera.R, t=camera.t, width=width, height=int(height))


def compare_image(coarse_n: TexturedMesh, detailed_n: TexturedMesh, camera: Camera,
                  height: int = COMPARE_PANEL, truth_n: TexturedMesh | None = None) -> np.ndarray:
    """Clay renders of the coarse and the detailed mesh (normalised frame) side by side, each under a
    title bar (uint8 RGB); a third panel shows ``truth_n`` (the built-in sample's true detailed mesh)."""
    from pbidr.evaluation.shaded import render_shaded, side_by_side

    cam = framing_camera(camera, coarse_n.vertices, height)
    meshes = [(coarse_n, "coarse (input mesh)"), (detailed_n, "detailed (SDF displacement)")]
    if truth_n is not None:
        meshes.append((truth_n, "ground truth (built-in sample)"))
    return side_by_side([_title_bar(render_shaded(m.vertices, m.faces, cam), title) for m, title in meshes])


def sample_source(scan_dir: Path) -> Path | None:
    """The built-in sample folder a scan was made from (its meta.json's input, next to a sample.json
    written by ``pbidr sample`` and a gt_detailed.obj), else None."""
    from pbidr.evaluation.score import SAMPLE_GENERATOR

    try:
        source = Path(json.loads((scan_dir / "meta.json").read_text())["input"])
        folder = source if source.is_dir() else source.parent
        info = json.loads((folder / "sample.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("generator") != SAMPLE_GENERATOR or not (folder / "gt_detailed.obj").is_file():
        return None
    return folder


def _title_bar(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with a dark bar above it holding ``text`` (a label drawn over a white render is unreadable)."""
    import cv2

    h, w = image.shape[:2]
    bar_h = max(24, h // 20)
    scale = bar_h / 40.0
    bar = np.full((bar_h, w, 3), 48, np.uint8)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    org = (max(4, (w - tw) // 2), (bar_h + th) // 2)
    cv2.putText(bar, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, round(2 * scale)), cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def frontal_view(scan_dir: Path, n_views: int) -> int:
    """0-based index of the scan's frontal view: yaw = pitch = 0 in meta.json's rig, else the middle."""
    try:
        angles = json.loads((scan_dir / "meta.json").read_text())["rig"]["angles_yaw_pitch_deg"]
        if len(angles) == n_views:
            return int(np.argmin([a[0] ** 2 + a[1] ** 2 for a in angles]))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass  # a scan without a rig description (e.g. real captures): fall back below
    return n_views // 2


# ------------------------------------------------------------------------------------------------
# Views


def default_views(scan_dir: Path, n_views: int) -> list[int]:
    """0-based views a user looks at: the frontal view and the two extreme yaws of meta.json's rig (the
    sweep's ends, where the detail is seen at grazing angles); without a rig, the first, middle and
    last view. Three 1024^2 renders say what seventeen do, at a sixth of the time."""
    front = frontal_view(scan_dir, n_views)
    picked = {front, 0, n_views - 1}
    try:
        angles = json.loads((scan_dir / "meta.json").read_text())["rig"]["angles_yaw_pitch_deg"]
        if len(angles) == n_views:
            yaws = [float(a[0]) for a in angles]
            picked = {front, int(np.argmin(yaws)), int(np.argmax(yaws))}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass  # no rig description (real captures): the first, middle and last views above
    return sorted(picked)


def parse_views(views: str | list[int] | None, n_views: int, scan_dir: Path | None = None) -> list[int]:
    """``default`` (or None), ``all`` or ``"1,3,5"`` (1-based, as the image names) -> sorted 0-based
    indices. ``default`` is :func:`default_views` of ``scan_dir``."""
    if views is None or (isinstance(views, str) and views.strip().lower() in ("", "default")):
        if scan_dir is None:
            return sorted({0, n_views // 2, n_views - 1})
        return default_views(Path(scan_dir), n_views)
    if isinstance(views, str) and views.strip().lower() == "all":
        return list(range(n_views))
    if isinstance(views, str):
        try:
            picked = [int(v) for v in views.replace(" ", "").split(",") if v]
        except ValueError:
            raise PbidrError(f"--views {views}: expected 'default', 'all' or 1-based numbers like 1,3,5") from None
    else:
        picked = [int(v) for v in views]
    bad = [v for v in picked if not 1 <= v <= n_views]
    if bad or not picked:
        raise PbidrError(f"--views {views}: the scan has views 1..{n_views}")
    return sorted({v - 1 for v in picked})


# ------------------------------------------------------------------------------------------------
# The whole eval: its options, the stages in order, and what each returns


@dataclass
class EvalOptions:
    """What one eval is asked for: :func:`evaluate`'s keyword arguments (their defaults and meaning are
    there), which every stage reads. ``device`` is a torch.device once :func:`_checked_options` ran."""

    checkpoint: str | int
    mc_resolution: int
    views: str | list[int] | None
    device: torch.device | str
    chunk: int
    eval_rendering: bool
    progress: bool
    band: float | None
    render_chunk: int | None
    scan_dir: str | Path | None
    lipschitz: float | None
    overwrite: bool
    renderer: str


@dataclass
class StageReport:
    """What one stage adds to metrics.json: its entries (in the file's order), notes and timings."""

    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalInputs:
    """The load stage's result: the checkpoint's model on the device (``sdf`` its normalised-frame SDF),
    the scan's loaded views (``load_idx``, 0-based; ``cam_of`` view -> camera) and the starting band."""

    run: LoadedRun
    model: PBIDRModel
    sdf: SdfFn
    data: ScanData
    eval_views: list[int]
    train_views: list[int]
    load_idx: list[int]
    front: int
    cam_of: dict[int, Camera]
    band: float
    report: StageReport

    @property
    def coarse(self) -> TexturedMesh:
        return self.data.mesh

    @property
    def scale_mat(self) -> np.ndarray:
        return self.data.scale_mat


@dataclass
class DetailStage:
    """The displaced-meshes stage's result, and the marching-cubes band sized from it (world units)."""

    detail: DetailMeshes
    band: float
    report: StageReport


@dataclass
class CompareStage:
    """The compare stage's result: detailed_subdivided in the normalised frame (the renders use it) and
    the built-in sample folder the scan came from (None for other scans)."""

    detailed_n: TexturedMesh
    sample: Path | None
    report: StageReport


def evaluate(
    exp_dir: str | Path,
    checkpoint: str | int = "latest",
    mc_resolution: int = 512,
    views: str | list[int] | None = "default",
    device: torch.device | str = "auto",
    chunk: int = DEFAULT_CHUNK,
    eval_rendering: bool = True,
    progress: bool = True,
    band: float | None = None,
    render_chunk: int | None = None,
    scan_dir: str | Path | None = None,
    lipschitz: float | None = 1.5,
    overwrite: bool = False,
    renderer: str = "mesh",
) -> dict:
    """Evaluate one checkpoint of the run in ``exp_dir`` into ``exp_dir/eval`` (replaced as a whole).

    ``chunk``: points per SDF query (displacement, marching cubes); ``render_chunk``: rays per render
    chunk (default the conf's train.render_chunk). ``band``: marching-cubes band around the coarse
    mesh in world units (default 3, at most 2.5% of the normalising radius). ``views``: ``default``
    (the frontal view and the two extreme yaws, :func:`default_views`), ``all`` or 1-based view numbers.
    ``renderer``: ``mesh`` (Embree hits on detailed_subdivided + the model's shading,
    pbidr.evaluation.render_explicit) or ``sdf`` (sphere tracing the SDF per pixel, the paper's). ``scan_dir`` overrides the run's. An earlier ``eval/`` is replaced only with
    ``overwrite`` (``pbidr.utils.outputs``). Returns the metrics written to metrics.json.
    """
    import torch
    from torch.nn.utils import parametrize

    t_start = time.perf_counter()
    opts = _checked_options(EvalOptions(
        checkpoint=checkpoint, mc_resolution=mc_resolution, views=views, device=device, chunk=chunk,
        eval_rendering=eval_rendering, progress=progress, band=band, render_chunk=render_chunk, scan_dir=scan_dir,
        lipschitz=lipschitz, overwrite=overwrite, renderer=renderer))
    inputs = _load_stage(exp_dir, opts)
    run = inputs.run
    with stage_output(run.exp_dir / EVAL_DIR, "eval", opts.overwrite, flag="--exp-dir", step=run.step) as out, \
            torch.no_grad(), parametrize.cached():
        detail = _detail_meshes_stage(inputs, opts, out)
        reports = [inputs.report, detail.report, _marching_cubes_stage(inputs, opts, detail.band, out),
                   _maps_stage(inputs, opts, detail.detail, out)]
        compare = _compare_stage(inputs, opts, detail.detail, out)
        reports += [compare.report, _score_stage(opts, compare.sample, out),
                    _render_stage(inputs, opts, compare.detailed_n, out)]
        metrics = _write_outputs(out, reports, detail.band, run.conf, opts.device, t_start)
    return metrics


def _checked_options(opts: EvalOptions) -> EvalOptions:
    """``opts`` with its device picked (``auto``: pbidr.utils.device); refuses an unusable resolution,
    chunk or renderer."""
    import torch

    from pbidr.utils.device import pick_device

    device = pick_device(opts.device) if isinstance(opts.device, str) else torch.device(opts.device)
    if int(opts.mc_resolution) != opts.mc_resolution or opts.mc_resolution < 8:
        raise PbidrError(f"--mc-resolution {opts.mc_resolution}: must be an integer of at least 8")
    if opts.chunk < 1:
        raise PbidrError(f"--chunk {opts.chunk}: must be positive")
    if opts.renderer not in RENDERERS:
        raise PbidrError(f"--renderer {opts.renderer}: expected one of {', '.join(RENDERERS)}")
    return replace(opts, device=device)


def _load_stage(exp_dir: str | Path, opts: EvalOptions) -> EvalInputs:
    """Stage 0: the checkpoint's model on the device, given the coarse mesh and its step; the views
    eval renders plus the frontal one, loaded; the default band (world units) unless --band."""
    from pbidr.datasets.scan import load_scan

    t0 = time.perf_counter()
    check_output(Path(exp_dir) / EVAL_DIR, "eval", opts.overwrite, flag="--exp-dir")
    run = load_run(exp_dir, opts.checkpoint, opts.scan_dir)
    model = run.model.to(opts.device).eval()
    conf = run.conf
    img_res = conf.dataset.img_res
    n_images = len(list((run.scan_dir / "image").glob("*.png")))
    if n_images == 0:
        raise PbidrError(f"{run.scan_dir / 'image'}: no images (*.png)")
    eval_views = parse_views(opts.views, n_images, run.scan_dir) if opts.eval_rendering else []
    front = frontal_view(run.scan_dir, n_images)
    load_idx = sorted(set(eval_views) | {front})
    data = load_scan(run.scan_dir, tuple(img_res) if img_res else None, load_idx)
    cam_of = {v: data.cameras[k] for k, v in enumerate(load_idx)}
    scale_mat, coarse = data.scale_mat, data.mesh
    s = _uniform_scale(scale_mat)
    prepare_model(model, coarse, scale_mat, run.step)
    band = opts.band
    if band is None:
        band = min(DEFAULT_BAND, 0.025 * s)
    train_views = conf.dataset.views or list(range(n_images))
    report = StageReport(timings={"load_s": time.perf_counter() - t0})
    _stage_done("load", report.timings["load_s"], opts.progress)

    report.metrics = {
        "exp_dir": str(run.exp_dir.resolve()), "checkpoint": str(run.checkpoint), "step": run.step,
        "scan_dir": str(run.scan_dir.resolve()), "device": str(opts.device), "units": "world (the input mesh's units)",
        "scale": s, "coarse_mesh": {"vertices": int(len(coarse.vertices)), "faces": int(len(coarse.faces)),
                                    "uvs": int(len(coarse.uv)) if coarse.uv is not None else 0},
    }
    return EvalInputs(run=run, model=model, sdf=model.sdf_network.sdf, data=data, eval_views=eval_views,
                      train_views=train_views, load_idx=load_idx, front=front, cam_of=cam_of, band=band,
                      report=report)


def _detail_meshes_stage(inputs: EvalInputs, opts: EvalOptions, out: Path) -> DetailStage:
    """Stage 1: the coarse mesh and its subdivision displaced onto the SDF (detailed*.obj,
    displacement*.npy); without --band, the band is sized from what the SDF does at their vertices."""
    from pbidr.io.obj import write_obj

    t0 = time.perf_counter()
    coarse, band = inputs.coarse, inputs.band
    spacing = None
    if getattr(inputs.model, "parameterisation", None) == "displacement_map" and coarse.uv is not None:
        spacing = map_texel_spacing(coarse, inputs.run.conf.model.displacement_map.resolution)
    detail = detail_meshes(coarse, world_sdf(inputs.sdf, inputs.scale_mat, opts.device, opts.chunk), spacing=spacing)
    write_obj(out / "detailed.obj", detail.detailed, texture_name=TEXTURE_NAME)
    write_obj(out / "detailed_subdivided.obj", detail.detailed_subdivided, texture_name=TEXTURE_NAME,
              write_texture=False)
    save_npy(out / "displacement.npy", detail.displacement.astype(np.float32))
    save_npy(out / "displacement_subdivided.npy", detail.displacement_subdivided.astype(np.float32))
    if opts.band is None:  # size the band from what the SDF actually does at the coarse vertices
        extent = float(np.max(np.ptp(np.asarray(coarse.vertices, dtype=np.float64), axis=0)))
        band = band_for_displacement(np.concatenate([detail.displacement, detail.displacement_subdivided]),
                                     band, extent / opts.mc_resolution)
    outside = float(np.mean(np.abs(detail.displacement) > band))
    report = StageReport(metrics={
        "dense_mesh": {"file": "detailed_subdivided.obj", "subdivisions": detail.levels,
                       "texel_spacing": spacing, "vertices": int(len(detail.detailed_subdivided.vertices)),
                       "faces": int(len(detail.detailed_subdivided.faces))},
        "displacement": {"detailed": displacement_stats(detail.displacement),
                         "detailed_subdivided": displacement_stats(detail.displacement_subdivided),
                         "fraction_outside_band": outside}})
    if outside > 0.01:
        report.notes.append(f"{outside:.1%} of the coarse vertices are farther than the band ({band:g}) from the "
                            "SDF surface: sdf_mc.ply has holes there (raise --band, or train longer)")
    report.timings["displacement_s"] = time.perf_counter() - t0
    _stage_done("displaced meshes", report.timings["displacement_s"], opts.progress)
    return DetailStage(detail=detail, band=band, report=report)


def _marching_cubes_stage(inputs: EvalInputs, opts: EvalOptions, band: float, out: Path) -> StageReport:
    """Stage 2: sdf_mc.ply, marching cubes in ``band`` (world units) around the coarse mesh; no surface
    in the band is a note, not an error (the other outputs still stand)."""
    from pbidr.io.obj import write_ply

    t0 = time.perf_counter()
    report = StageReport()
    try:
        # The coarse-residual SDF changes sign beyond an open border without crossing zero.
        tolerance = inputs.model.sdf_network.off_surface_tolerance
        ls = level_set_world(inputs.sdf, inputs.coarse, inputs.scale_mat, opts.mc_resolution, band, opts.device,
                             opts.chunk, opts.lipschitz, opts.progress, off_surface_tolerance=tolerance)
        write_ply(out / "sdf_mc.ply", ls.vertices, ls.faces)
        report.metrics["marching_cubes"] = ls.stats
    except PbidrError as err:  # no surface in the band: the other outputs still stand
        report.metrics["marching_cubes"] = {"error": str(err), "resolution": int(opts.mc_resolution), "band": band}
        report.notes.append(f"sdf_mc.ply not written: {err}")
    report.timings["marching_cubes_s"] = time.perf_counter() - t0
    _stage_done("marching cubes", report.timings["marching_cubes_s"], opts.progress)
    return report


def _maps_stage(inputs: EvalInputs, opts: EvalOptions, detail: DetailMeshes, out: Path) -> StageReport:
    """Stage 3: UV maps and artists' outputs in the coarse layout (pbidr.evaluation.export): GLB with a
    tangent-space normal map, displacement in mm (EXR, fixed mid-level 16-bit PNG), textured PLY; in the
    detail mode also PBIDR's image model part by part (albedo, diffuse shading, specular; detail.maps)."""
    t0 = time.perf_counter()
    report = StageReport()
    coarse = inputs.coarse
    if coarse.uv is not None and coarse.face_uv is not None:
        from pbidr.evaluation.export import export_artist_outputs, scan_frame

        frame = scan_frame(inputs.run.scan_dir)  # units and the face's front/up, from the scan's meta.json
        report.metrics["uv_maps"] = export_artist_outputs(
            out, coarse, detail.detailed_subdivided, detail.displacement_subdivided, units_to_mm=frame.units_to_mm,
            displacement_mesh=detail.detailed_subdivided, texture_name=TEXTURE_NAME, front=frame.front, up=frame.up)
        report.metrics["uv_maps"]["units_source"] = frame.units_source
        report.notes.extend(report.metrics["uv_maps"].pop("notes"))
        if getattr(inputs.model, "parameterisation", None) == "displacement_map":  # PBIDR's parts, separately
            from pbidr.detail.maps import write_image_model_maps

            report.metrics["image_model"] = write_image_model_maps(out, inputs.model.sdf_network, coarse,
                                                                   coarse.texture)
    else:
        report.metrics["uv_maps"] = {"skipped": "the coarse mesh has no texture coordinates"}
        report.notes.append("detailed.glb, displacement maps and normal maps skipped: the coarse mesh has no UVs")
    report.timings["uv_maps_s"] = time.perf_counter() - t0
    _stage_done("UV maps and exports", report.timings["uv_maps_s"], opts.progress)
    return report


def _compare_stage(inputs: EvalInputs, opts: EvalOptions, detail: DetailMeshes, out: Path) -> CompareStage:
    """Stage 4: compare.png, coarse vs detailed from the frontal camera (no network: always written),
    with the built-in sample's true mesh as a third panel when the scan came from one."""
    from pbidr.geometry.cameras import to_normalised
    from pbidr.utils.images import write_png

    t0 = time.perf_counter()
    coarse, scale_mat = inputs.coarse, inputs.scale_mat
    coarse_n = coarse.with_vertices(to_normalised(coarse.vertices, scale_mat))
    detailed_n = detail.detailed_subdivided.with_vertices(
        to_normalised(detail.detailed_subdivided.vertices, scale_mat))
    sample = sample_source(inputs.run.scan_dir)
    truth_n = None
    if sample is not None:
        from pbidr.io.load import load_mesh

        truth = load_mesh(sample / "gt_detailed.obj")
        truth_n = truth.with_vertices(to_normalised(truth.vertices, scale_mat))
    write_png(out / "compare.png", compare_image(coarse_n, detailed_n, inputs.cam_of[inputs.front], truth_n=truth_n))
    report = StageReport(metrics={"compare": {"view": inputs.front + 1, "panel_height": COMPARE_PANEL,
                                              "ground_truth_panel": sample is not None}})
    report.timings["compare_s"] = time.perf_counter() - t0
    _stage_done("compare.png", report.timings["compare_s"], opts.progress)
    return CompareStage(detailed_n=detailed_n, sample=sample, report=report)


def _score_stage(opts: EvalOptions, sample: Path | None, out: Path) -> StageReport:
    """Stage 5: the built-in sample knows its true detail, so both detailed meshes are scored against
    it (pbidr.evaluation.score); nothing for other scans."""
    report = StageReport()
    if sample is None:
        return report
    from pbidr.evaluation.score import score_mesh

    t0 = time.perf_counter()
    report.metrics["score"] = score_mesh(out / "detailed.obj", sample)
    report.metrics["score"]["mesh"] = "detailed.obj"
    report.metrics["score_dense"] = score_mesh(out / "detailed_subdivided.obj", sample)
    report.metrics["score_dense"]["mesh"] = "detailed_subdivided.obj"
    report.timings["score_s"] = time.perf_counter() - t0
    _stage_done("score", report.timings["score_s"], opts.progress)
    return report


def _render_stage(inputs: EvalInputs, opts: EvalOptions, detailed_n: TexturedMesh, out: Path) -> StageReport:
    """Stage 6: renders, decomposition and PSNR of the eval views (:func:`_render_views`), unless
    --no-rendering."""
    if not opts.eval_rendering:
        return StageReport(metrics={"rendering": {"skipped": "--no-rendering"}})
    t0 = time.perf_counter()
    rendering = _render_views(inputs.model, inputs.data, inputs.load_idx, inputs.eval_views, inputs.train_views,
                              opts.device, opts.render_chunk or inputs.run.conf.train.render_chunk, out,
                              opts.progress, renderer=opts.renderer, detailed_n=detailed_n)
    report = StageReport(metrics={"rendering": rendering}, timings={"rendering_s": time.perf_counter() - t0})
    _stage_done("renders", report.timings["rendering_s"], opts.progress)
    return report


def _write_outputs(out: Path, reports: list[StageReport], band: float, conf: RunConfig, device: torch.device,
                   t_start: float) -> dict:
    """metrics.json: every stage's entries in stage order, then the band (world units), the timings
    (with the total since ``t_start``), peak memory, the notes and the conf. Returns the metrics."""
    import torch

    metrics: dict[str, Any] = {}
    notes: list[str] = []
    timings: dict[str, float] = {}
    for report in reports:
        metrics.update(report.metrics)
        notes.extend(report.notes)
        timings.update(report.timings)
    timings["total_s"] = time.perf_counter() - t_start
    metrics.update({"band": band, "timings": timings, "peak_rss_mb": peak_rss_mb(), "notes": notes,
                    "conf": conf_to_text(conf)})
    if device.type == "cuda":
        metrics["cuda_max_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    write_json(out / "metrics.json", json_safe(metrics))
    return metrics


def _stage_done(stage: str, seconds: float, progress: bool) -> None:
    """One plain stderr line per finished stage (terminal or not), so a log shows where the time goes."""
    from pbidr.utils.progress import progress_note

    progress_note(f"eval: {stage} done in {seconds:.1f} s", progress)


def _render_views(model, data, load_idx, eval_views, train_views, device, render_chunk, out, progress,
                  renderer: str = "mesh", detailed_n: TexturedMesh | None = None) -> dict:
    """Renders, contact sheet and PSNR of ``eval_views``. ``renderer`` ``mesh``: Embree hits on
    ``detailed_n`` (detailed_subdivided in the normalised frame) shaded by the model; ``sdf``: the
    model's sphere tracer per pixel (render_camera)."""
    from pbidr.utils.images import contact_sheet, write_png
    from pbidr.utils.progress import progress_bar

    render = _view_renderer(model, data, device, render_chunk, renderer, detailed_n)
    rows, labels, per_view = [], [], []
    # Plain lines when stderr is not a terminal (pbidr.utils.progress); one line per view: a view takes
    # seconds, and a log should show each one's PSNR.
    bar = progress_bar(len(eval_views), desc=f"eval: render ({renderer})", unit="view", disable=not progress,
                       every_steps=1)
    for v in eval_views:
        k = load_idx.index(v)
        view = render(data.cameras[k])
        gt, mask = data.images[k], data.masks[k]
        name = f"{v + 1:03d}"
        for part, img in view.images().items():
            write_png(out / "renders" / f"{name}_{part}.png", (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        psnr = masked_psnr(view.rgb, gt, mask) if mask.any() else math.nan
        union = np.logical_or(view.hit, mask).sum()
        iou = float(np.logical_and(view.hit, mask).sum() / union) if union else math.nan
        per_view.append({"view": v + 1, "psnr": psnr, "silhouette_iou": iou, "train_view": v in train_views,
                         "n_sdf_evals": view.n_sdf_evals})
        bar.set_postfix_str(f"view {name} PSNR {psnr:.2f} dB")
        rows.append([gt, *view.images().values()])
        labels.append([f"{name} input", f"rgb {psnr:.2f} dB", "diffuse", "specular", "albedo", "normal"])
        bar.update(1)
    bar.close()
    cell = int(np.clip(data.hw[0], SHEET_MIN_CELL, SHEET_CELL))  # tiny renders are enlarged so labels read
    write_png(out / "contact_sheet.png", contact_sheet(rows, labels, cell=cell))
    finite = [p["psnr"] for p in per_view if math.isfinite(p["psnr"])]
    return {"renderer": renderer, "image_size": list(data.hw), "views": per_view,
            "psnr_mean": float(np.mean(finite)) if finite else math.nan,
            "psnr_mean_train_views": _mean([p["psnr"] for p in per_view if p["train_view"]]),
            "psnr_mean_held_out_views": _mean([p["psnr"] for p in per_view if not p["train_view"]])}


def _view_renderer(model, data, device, render_chunk, renderer: str, detailed_n: TexturedMesh | None):
    """Camera -> rendered view (its images, hit mask and SDF evaluations), by ``renderer`` (see
    :func:`_render_views`)."""
    if renderer == "mesh":
        from pbidr.evaluation.render_explicit import PBIDRShading, render_mesh_view, subdivided_coarse_normals
        from pbidr.geometry.raycast import MeshRayCaster

        if detailed_n is None:
            raise PbidrError("--renderer mesh needs the detailed mesh (internal: detailed_n not given)")
        if model.parameterisation == "displacement_map":  # the texel fit's own image model
            from pbidr.detail.shading import MapShading

            shade = MapShading(model.sdf_network, detailed_n.uv, detailed_n.face_uv)
        else:
            coarse_normals = None
            if model.diffuse_normal == "coarse":  # the diffuse term shades on the coarse normal
                coarse_normals = subdivided_coarse_normals(data.mesh.vertex_normals(), data.mesh.faces,
                                                           detailed_n.faces)
            shade = PBIDRShading(model, device, coarse_normals).bind(detailed_n.faces)
        caster = MeshRayCaster(detailed_n.vertices, detailed_n.faces)  # one Embree scene for every view
        normals = detailed_n.vertex_normals()

        def render(camera):
            return render_mesh_view(detailed_n.vertices, detailed_n.faces, camera, shade, render_chunk,
                                    caster=caster, vertex_normals=normals)
    else:
        from pbidr.datasets.scan import CoarseMesh
        from pbidr.model.render import render_camera

        coarse = CoarseMesh(data.mesh, data.scale_mat)

        def render(camera):
            return render_camera(model, coarse, camera, device, render_chunk)

    return render


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else None
