"""Score a recovered mesh against the built-in sample's known detailed surface.

``pbidr score --mesh MESH --sample SAMPLE_DIR`` compares any mesh in the sample's world frame (mm)
with the ground truth that ``pbidr.preprocess.sample`` knows analytically. Nothing relies on the
mesh sharing the coarse mesh's topology: ``detailed.obj``, a subdivided mesh or a marching-cubes
``sdf_mc.ply`` (with surface behind the face) are all scored the same way.

Correspondence. Every vertex P of MESH is projected onto the sample's coarse mesh (``mesh.obj``):
its closest point Q (exact point-triangle distance over the 8 triangles whose centroids are
nearest) gives the texture coordinates (u, v) (the coarse mesh's UVs interpolated at Q), the coarse
normal n_c (its area-weighted vertex normals interpolated at Q) and the signed displacement
``d = sign((P - Q) . n_c) |P - Q|`` in mm.

Scored vertices. Those whose (u, v) lies in the sample's inner-face region and whose distance to
the coarse mesh is under ``MAX_DISTANCE_MM`` (5 mm; drops marching-cubes surface behind the face).
The region is ``pbidr.preprocess.sample.face_region``: the ellipse
``(px / 62)^2 + ((py - 2) / 90)^2 < 1`` in face-plane mm (``px = (u - 0.5) 150``,
``py = (v - 0.5) 200``), evaluated exactly at (u, v); ``face_region_uv.png`` is its rasterisation.
Vertices in no triangle are skipped. Every mean is over scored vertices (unweighted).

Metrics.

* ``normal_error_deg``: angle between MESH's area-weighted vertex normal and the true detailed
  surface's normal at (u, v); mean and median in degrees. The true surface is
  ``S(u, v) = C(u, v) + D(u, v) N(u, v)``, with ``Face(conditions, seed)`` from sample.json
  (``pbidr.preprocess.face_model``): C its ``coarse_surface`` (the mesh the method was given, off the
  surface the texture was shaded on by the sample's misfit, if any: the misfit is not detail and is
  not asked for), N that surface's normal and D its ``displacement``; the normal ``S_u x S_v`` comes from central differences with step 1e-5 in (u, v)
  (about 2 micrometres). MESH's normals are flipped as a whole when they mostly point into the face
  (marching cubes may wind the other way); single flipped normals still count as errors.
* ``coarse_normal_error_deg``: the same for the sample's coarse ``mesh.obj``, scored the same way;
  ``normal_error_ratio = mean(MESH) / mean(coarse)``: 1 for the coarse mesh, < 1 is better.
* ``displacement_correlation``: Pearson correlation of d with the true displacement
  D(u, v). When d has (numerically) zero variance, std < 1e-6 mm, as for
  the coarse mesh itself, it is defined as 0: the mesh predicts nothing.
  ``displacement_rms_mm``: RMS of ``d - D``.
* ``albedo_leak``: how much of MESH's error follows the freckles, which are marks in the albedo only
  and must not become geometry. Take the residual ``r = d - D(u, v)`` and its
  high-pass ``r_hp = r - G(r)``, G the Gaussian-weighted local mean (sigma ``LEAK_SIGMA_MM`` = 3 mm
  in the face plane) over the scored vertices, so smooth errors (an offset, a missed fold's broad
  part) do not count. Freckle vertices: (u, v) on a freckle texel of ``albedo_marks_uv.png``
  (nearest texel). Control vertices: (u, v) in the ring 1 to 4 mm (face-plane distance) around the
  freckles: the same cheeks and nose, clear of any mark. Each freckle vertex is compared with the
  control vertices around it, ``c = G_control(|r_hp|)`` (the same 3 mm Gaussian, control vertices
  only), and ``albedo_leak = sum |r_hp| / sum c`` over the freckle vertices that have control
  vertices within 12 mm (all of them in practice). About 1 when the error ignores the freckles
  (the coarse mesh, the true detailed mesh; an exact mesh's tiny residual may give less), much
  larger when the surface dents or bumps where the albedo is dark. NaN (written "nan") when no
  freckle vertex is scored. ``albedo_leak_vertices`` counts the freckle and control vertices.
  The marks are every kind in ``albedo_marks_uv.png``; ``albedo_leak_by_kind`` gives the same per
  kind (``marks_KIND_uv.png``; control ring: 1-4 mm from that kind and at least 1 mm from any mark).

``seconds`` is the wall time of the call. The coarse mesh's numbers are cached per sample folder
within a process.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pbidr.errors import PbidrError
from pbidr.evaluation.metrics import json_safe
from pbidr.geometry.coarse_distance import closest_point_barycentric
from pbidr.io.load import load_mesh
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess import sample as face_sample

# scipy and trimesh are imported where they are used: the CLI builds this module's parser, and
# `pbidr --help` should not pay for them.

MAX_DISTANCE_MM = 5.0
NORMAL_STEP_UV = 1e-5
ZERO_VARIANCE_MM = 1e-6
LEAK_SIGMA_MM = 3.0
LEAK_GRID_MM = 0.5
CONTROL_RING_MM = (1.0, 4.0)
NEAREST_TRIANGLES = 8
_CHUNK = 32768
REGION = ("face_region: (px/62)^2 + ((py-2)/90)^2 < 1 in face-plane mm at the vertex's (u, v) on the coarse mesh "
          f"(face_region_uv.png), and |distance to the coarse mesh| < {MAX_DISTANCE_MM:g} mm")
SAMPLE_GENERATOR = "pbidr.preprocess.sample.make_sample"


# ----------------------------------------------------------------------------- inputs

def load_geometry(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangles (F, 3) int64 of an OBJ / PLY / GLB / GLTF, file topology kept.

    Geometry only: an untextured marching-cubes PLY, or an OBJ whose material or texture is not
    beside it, still scores. OBJ vertices are not split at UV seams (``merge_tex``).
    """
    from pbidr.io.load import load_trimesh_parts

    path = Path(path)
    if not path.is_file():
        raise PbidrError(f"{path}: mesh file not found")
    parts = load_trimesh_parts(path, merge_tex=True, merge_norm=True, skip_materials=True)
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])[:-1]
    vertices = np.concatenate([np.asarray(p.vertices, dtype=np.float64) for p in parts])
    faces = np.concatenate([np.asarray(p.faces, dtype=np.int64) + o for p, o in zip(parts, offsets)])
    if not np.isfinite(vertices).all():
        raise PbidrError(f"{path}: vertices have NaN or infinite coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise PbidrError(f"{path}: faces refer to vertices the file does not have ({len(vertices)} vertices)")
    return vertices, faces


@dataclass
class SampleTruth:
    """What scoring needs from a sample folder: the coarse mesh (with UVs and normals), the analytic
    face (its conditions and seed), the mark mask (H, W) bool (every kind) and the control ring around
    it (H, W) bool, and the same pair per mark kind (``kinds``)."""

    folder: Path
    seed: int
    coarse: TexturedMesh
    coarse_normals: np.ndarray
    marks: np.ndarray
    control: np.ndarray
    face: face_sample.Face = None
    kinds: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self):
        if self.face is None:
            self.face = face_sample.Face(seed=self.seed)


def load_sample(sample_dir: str | Path) -> SampleTruth:
    """Read ``sample.json``, ``mesh.obj`` and the mark masks (``albedo_marks_uv.png``, ``marks_KIND_uv.png``)
    of a ``pbidr sample`` folder."""
    folder = Path(sample_dir)
    info_path = folder / "sample.json"
    if not info_path.is_file():
        raise PbidrError(f"{info_path}: not found; {folder} is not a sample folder (make one with 'pbidr sample')")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise PbidrError(f"{info_path}: unreadable ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(info, dict) or info.get("generator") != SAMPLE_GENERATOR or not isinstance(info.get("seed"), int):
        raise PbidrError(f"{info_path}: not written by {SAMPLE_GENERATOR} (needs 'generator' and an integer 'seed')")
    coarse = load_mesh(folder / "mesh.obj")
    if coarse.uv is None or coarse.face_uv is None:
        raise PbidrError(f"{folder / 'mesh.obj'}: the coarse mesh has no texture coordinates")
    marks = _read_mask(folder / "albedo_marks_uv.png", "mark mask")
    try:
        conditions = face_sample.FaceConditions.from_dict(info.get("conditions"))
    except PbidrError as exc:
        raise PbidrError(f"{info_path}: conditions: {exc}") from None
    to_any = _distance_mm(marks)
    kinds = {}
    for kind in face_sample.MARK_KINDS:
        path = folder / face_sample.MARK_FILE.format(kind)
        if getattr(conditions.marks, kind) > 0 and path.is_file():
            mask = _read_mask(path, f"{kind} mark mask")
            kinds[kind] = (mask, _control_ring(_distance_mm(mask), to_any))
    return SampleTruth(folder, int(info["seed"]), coarse, coarse.vertex_normals(), marks,
                       _control_ring(to_any, to_any), face_sample.Face(conditions, int(info["seed"])), kinds)


def _read_mask(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise PbidrError(f"{path}: {what} not found")
    try:
        return np.asarray(Image.open(path).convert("L")) > 127
    except OSError as exc:
        raise PbidrError(f"{path}: unreadable image ({exc})") from None


def _distance_mm(mask: np.ndarray) -> np.ndarray:
    """Distance (face-plane mm) of every texel to the nearest texel of ``mask`` (inf when it is empty)."""
    from scipy import ndimage

    h, w = mask.shape
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=(face_sample.FACE_HEIGHT_MM / h, face_sample.FACE_WIDTH_MM / w))


def _control_ring(to_kind: np.ndarray, to_any: np.ndarray) -> np.ndarray:
    """Control texels of a mark kind: 1 to 4 mm from its marks and at least 1 mm from any mark."""
    return (to_kind >= CONTROL_RING_MM[0]) & (to_kind <= CONTROL_RING_MM[1]) & (to_any >= CONTROL_RING_MM[0])


# ----------------------------------------------------------------------------- closest points

@dataclass
class Projection:
    """Closest points of N query points on a triangle mesh: ``face`` (N,), ``bary`` (N, 3),
    ``point`` (N, 3)."""

    face: np.ndarray
    bary: np.ndarray
    point: np.ndarray


def project_to_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, max_distance: float = math.inf,
                    k: int = NEAREST_TRIANGLES, chunk: int = _CHUNK) -> Projection:
    """Closest point on the mesh (vertices (V, 3), faces (F, 3)) of every point (N, 3).

    Exact point-triangle distance over the ``k`` triangles whose centroids are nearest: exact for
    points near a mesh whose triangles are of similar size (the case here: the coarse mesh and
    points within a few mm of it); farther points may get a slightly farther triangle. Points
    certainly farther than ``max_distance`` from the mesh are skipped (face -1, NaN point), which
    makes far-away surface cheap.
    """
    from scipy.spatial import cKDTree

    tri = vertices[faces]
    centroids = tri.mean(axis=1)
    k = int(min(k, len(faces)))
    tree = cKDTree(centroids)
    # No triangle point is farther from its centroid than ``reach``.
    reach = float(np.linalg.norm(tri - centroids[:, None], axis=2).max())

    def nearest(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        p = points[sl]
        face = np.full(len(p), -1, dtype=np.int64)
        bary = np.full((len(p), 3), np.nan)
        if math.isfinite(max_distance):
            gap, _ = tree.query(p, k=1, distance_upper_bound=max_distance + reach)
            near = np.flatnonzero(np.isfinite(gap))
        else:
            near = np.arange(len(p))
        if not len(near):
            return face, bary
        p = p[near]
        _, cand = tree.query(p, k=k)
        cand = cand.reshape(len(p), k)
        pk = np.repeat(p, k, axis=0)
        t = tri[cand.reshape(-1)]
        bk = closest_point_barycentric(pk, t[:, 0], t[:, 1], t[:, 2])
        q = np.einsum("ij,ijk->ik", bk, t)
        best = ((pk - q) ** 2).sum(axis=1).reshape(len(p), k).argmin(axis=1)
        rows = np.arange(len(p))
        face[near] = cand[rows, best]
        bary[near] = bk.reshape(len(p), k, 3)[rows, best]
        return face, bary

    parts = _map_chunks(nearest, len(points), chunk)
    face = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    bary = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 3))
    point = np.einsum("ij,ijk->ik", bary, tri[face])  # NaN where skipped (face -1 reads any triangle)
    return Projection(face, bary, point)


def _map_chunks(fn, n: int, chunk: int) -> list:
    """``[fn(slice) for each chunk of range(n)]``, on a thread per core: NumPy releases the GIL in
    the array work, so the chunks run in parallel."""
    slices = [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    workers = min(len(slices), _cores())
    if workers <= 1:
        return [fn(sl) for sl in slices]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, slices))


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- the true surface

def detailed_surface(u: np.ndarray, v: np.ndarray, face: face_sample.Face) -> np.ndarray:
    """The sample's true detailed surface (N, 3) in mm at texture coordinates (u, v) (N,): the given coarse
    surface plus the detail along its normal."""
    return face.coarse_surface(u, v) + face.displacement(u, v)[:, None] * face.coarse_normal(u, v)


# Offsets (in steps) of the 13-point stencil of detailed_normal: the centre, the four points where
# the detailed surface is differenced, and the points the coarse normal there needs.
_STENCIL = np.array([(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2),
                     (1, 1), (1, -1), (-1, 1), (-1, -1)], dtype=np.float64)


def detailed_normal(u: np.ndarray, v: np.ndarray, face: face_sample.Face, step: float = NORMAL_STEP_UV) -> np.ndarray:
    """Unit outward normals (N, 3) of ``detailed_surface`` at (u, v) (N,): ``S_u x S_v`` by central
    differences of step ``step`` in u and v.

    ``S = C + D N`` is needed at (u +- step, v) and (u, v +- step); the coarse normal N there is
    ``sample.coarse_normal``'s central differences with the same step, so the coarse surface C is
    evaluated once on a 13-point stencil (instead of 20 times) and D at four points.
    """
    n = len(u)
    su = (u[None, :] + step * _STENCIL[:, :1]).reshape(-1)
    sv = (v[None, :] + step * _STENCIL[:, 1:]).reshape(-1)
    c = face.coarse_surface(su, sv).reshape(len(_STENCIL), n, 3)
    d = face.displacement(su[n:5 * n], sv[n:5 * n]).reshape(4, n, 1)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    normal = unit(np.stack([
        np.cross(c[5] - c[0], c[9] - c[10]),  # at (u + h, v)
        np.cross(c[0] - c[6], c[11] - c[12]),  # at (u - h, v)
        np.cross(c[9] - c[11], c[7] - c[0]),  # at (u, v + h)
        np.cross(c[10] - c[12], c[0] - c[8]),  # at (u, v - h)
    ]))
    s = c[1:5] + d * normal
    return unit(np.cross(s[0] - s[1], s[2] - s[3]))


# ----------------------------------------------------------------------------- scoring

@dataclass
class VertexScores:
    """Per scored vertex (M = number scored): (u, v) (M, 2), signed displacement d (M,) and the true
    one (M,) in mm, normal error (M,) in degrees."""

    uv: np.ndarray
    displacement: np.ndarray
    true_displacement: np.ndarray
    normal_error_deg: np.ndarray


def score_vertices(vertices: np.ndarray, faces: np.ndarray, truth: SampleTruth) -> VertexScores:
    """Project, select (region, distance) and compare one mesh's vertices (V, 3) with the truth."""
    normals = TexturedMesh(vertices=vertices, faces=faces).vertex_normals()
    used = np.flatnonzero(np.linalg.norm(normals, axis=1) > 0.5)  # vertices in no (non-degenerate) triangle have none
    points = vertices[used]
    coarse = truth.coarse
    proj = project_to_mesh(points, coarse.vertices, coarse.faces, max_distance=MAX_DISTANCE_MM)
    uv = np.einsum("ij,ijk->ik", proj.bary, coarse.uv[coarse.face_uv[proj.face]])
    offset = points - proj.point
    distance = np.linalg.norm(offset, axis=1)
    px, py = face_sample.face_plane(uv[:, 0], uv[:, 1])
    with np.errstate(invalid="ignore"):  # NaN for skipped far points: never kept
        keep = face_sample.face_region(px, py) & (distance < MAX_DISTANCE_MM)

    uv, offset, distance = uv[keep], offset[keep], distance[keep]
    face, bary = proj.face[keep], proj.bary[keep]
    n_coarse = np.einsum("ij,ijk->ik", bary, truth.coarse_normals[coarse.faces[face]])
    signed = np.where(np.einsum("ij,ij->i", offset, n_coarse) < 0, -distance, distance)
    mesh_normals = normals[used[keep]]
    if np.einsum("ij,ij->", mesh_normals, n_coarse) < 0:  # wound inward as a whole (e.g. marching cubes)
        mesh_normals = -mesh_normals

    def truth_at(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        u, v = uv[sl, 0], uv[sl, 1]
        return detailed_normal(u, v, truth.face), truth.face.displacement(u, v)

    parts = _map_chunks(truth_at, len(uv), _CHUNK // 4)
    true_normals = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 3))
    true_displacement = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    cos = np.einsum("ij,ij->i", mesh_normals, true_normals)
    sin = np.linalg.norm(np.cross(mesh_normals, true_normals), axis=1)
    return VertexScores(uv=uv, displacement=signed, true_displacement=true_displacement,
                        normal_error_deg=np.degrees(np.arctan2(sin, cos)))


def _pixel(mask: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup (OBJ convention: row 0 is v = 1) of a (H, W) mask at uv (N, 2)."""
    h, w = mask.shape
    col = np.clip(np.floor(uv[:, 0] * w), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor((1.0 - uv[:, 1]) * h), 0, h - 1).astype(np.int64)
    return mask[row, col]


def local_mean(px: np.ndarray, py: np.ndarray, values: np.ndarray, weights: np.ndarray,
               sigma_mm: float = LEAK_SIGMA_MM, cell_mm: float = LEAK_GRID_MM) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted local mean of ``values`` (N,) with ``weights`` (N,) around every point
    (px, py) (N,) in mm, and the total weight there (0 where no weighted point lies within 4 sigma).

    Normalised convolution on a grid of ``cell_mm`` cells, so any point density or topology works.
    """
    from scipy import ndimage

    x0, y0 = px.min(), py.min()
    ix = np.floor((px - x0) / cell_mm).astype(np.int64)
    iy = np.floor((py - y0) / cell_mm).astype(np.int64)
    shape = (int(iy.max()) + 1, int(ix.max()) + 1)
    flat = iy * shape[1] + ix
    sigma = sigma_mm / cell_mm
    coords = np.stack([(py - y0) / cell_mm - 0.5, (px - x0) / cell_mm - 0.5])  # cell centres at +0.5

    def smooth_at_points(w: np.ndarray) -> np.ndarray:
        grid = np.bincount(flat, weights=w, minlength=shape[0] * shape[1]).reshape(shape)
        grid = ndimage.gaussian_filter(grid, sigma, mode="constant")
        return ndimage.map_coordinates(grid, coords, order=1, mode="nearest")

    total = smooth_at_points(weights)
    mean = smooth_at_points(values * weights) / np.where(total > 1e-12, total, np.inf)
    return mean, np.where(total > 1e-12, total, 0.0)


def albedo_leak(scores: VertexScores, truth: SampleTruth, kind: str | None = None) -> tuple[float, int, int]:
    """(leak, mark vertices compared, control vertices): see the module docstring. ``kind``: one mark
    kind's marks and control ring (default: every mark)."""
    if len(scores.uv) == 0:
        return math.nan, 0, 0
    px, py = face_sample.face_plane(scores.uv[:, 0], scores.uv[:, 1])
    residual = scores.displacement - scores.true_displacement
    smooth, _ = local_mean(px, py, residual, np.ones_like(residual))
    high = np.abs(residual - smooth)
    marks, ring = (truth.marks, truth.control) if kind is None else truth.kinds[kind]
    freckle = _pixel(marks, scores.uv)
    control = _pixel(ring, scores.uv)
    around, weight = local_mean(px, py, high, control.astype(np.float64))
    compared = freckle & (weight > 0)
    if not compared.any():
        return math.nan, 0, int(control.sum())
    num, den = float(high[compared].sum()), float(around[compared].sum())
    leak = num / den if den > 0 else (math.inf if num > 0 else math.nan)
    return leak, int(compared.sum()), int(control.sum())


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0 when ``a`` is constant to ZERO_VARIANCE_MM (it predicts nothing)."""
    if len(a) < 2 or a.std() < ZERO_VARIANCE_MM or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _errors(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"mean": math.nan, "median": math.nan}
    return {"mean": float(x.mean()), "median": float(np.median(x))}


@functools.lru_cache(maxsize=4)
def _reference(folder: str, stamp: tuple) -> tuple[SampleTruth, dict]:
    """The sample's truth and the coarse mesh's normal errors; cached per folder and file times
    (``stamp``), since every mesh scored against a sample needs the same coarse numbers."""
    truth = load_sample(folder)
    coarse = score_vertices(truth.coarse.vertices, truth.coarse.faces, truth)
    return truth, _errors(coarse.normal_error_deg)


def _stamp(folder: Path) -> tuple:
    names = ("sample.json", "mesh.obj", "albedo_marks_uv.png")
    return tuple((folder / n).stat().st_mtime_ns if (folder / n).exists() else None for n in names)


def sample_reference(sample_dir: str | Path) -> tuple[SampleTruth, dict]:
    """A sample folder's truth and the coarse mesh's normal errors (mean, median; cached per folder)."""
    folder = Path(sample_dir)
    return _reference(str(folder.resolve()), _stamp(folder))


def ceiling_vertices(vertices: np.ndarray, truth: SampleTruth) -> np.ndarray:
    """The truth at a mesh's own vertices: each vertex replaced by its closest coarse point Q plus the
    true displacement at Q's (u, v) along the coarse normal there. Vertices farther than
    MAX_DISTANCE_MM from the coarse mesh stay where they are. Scoring the result gives the best any
    mesh with these vertices (its density and topology) can score: the ceiling."""
    coarse = truth.coarse
    proj = project_to_mesh(vertices, coarse.vertices, coarse.faces, max_distance=MAX_DISTANCE_MM)
    ok = proj.face >= 0
    out = np.array(vertices, dtype=np.float64, copy=True)
    face, bary = proj.face[ok], proj.bary[ok]
    uv = np.einsum("ij,ijk->ik", bary, coarse.uv[coarse.face_uv[face]])
    n = np.einsum("ij,ijk->ik", bary, truth.coarse_normals[coarse.faces[face]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    d = truth.face.displacement(uv[:, 0], uv[:, 1])
    out[ok] = proj.point[ok] + d[:, None] * n
    return out


def recovered_fraction(ratio: float, ceiling: float) -> float:
    """(1 - ratio) / (1 - ceiling): the share of the error that the mesh's density allows to remove
    which it removed (1 = as good as the truth at its vertices, 0 = the coarse mesh)."""
    return (1.0 - ratio) / (1.0 - ceiling) if ceiling < 1.0 else math.nan


def score_mesh(mesh_path: str | Path, sample_dir: str | Path, ceiling: bool = True) -> dict:
    """Score the mesh at ``mesh_path`` (world frame, mm) against the sample in ``sample_dir``.

    Returns the JSON-ready dict described in the module docstring (non-finite numbers as strings).
    """
    start = time.perf_counter()
    mesh_path = Path(mesh_path)
    folder = Path(sample_dir)
    if not mesh_path.is_file():
        raise PbidrError(f"{mesh_path}: mesh file not found")
    if not (folder / "sample.json").is_file():
        raise PbidrError(f"{folder / 'sample.json'}: not found; {folder} is not a sample folder (make one with 'pbidr sample')")
    truth, coarse_errors = sample_reference(folder)
    vertices, faces = load_geometry(mesh_path)
    scores = score_vertices(vertices, faces, truth)
    if len(scores.uv) == 0:
        raise PbidrError(f"{mesh_path}: no vertex lies within {MAX_DISTANCE_MM:g} mm of the sample's face region "
                         f"(is the mesh in the sample's world frame, in mm?)")
    errors = _errors(scores.normal_error_deg)
    residual = scores.displacement - scores.true_displacement
    extra = {}
    if ceiling:  # the truth at the same vertices, scored the same way
        best = score_vertices(ceiling_vertices(vertices, truth), faces, truth)
        ceiling_ratio = float(best.normal_error_deg.mean() / coarse_errors["mean"])
        ratio = errors["mean"] / coarse_errors["mean"]
        extra = {"ceiling_ratio": ceiling_ratio, "recovered_fraction": recovered_fraction(ratio, ceiling_ratio)}
    leak, n_freckle, n_control = albedo_leak(scores, truth)
    result = {
        "mesh": str(mesh_path),
        "sample": str(folder),
        "region": REGION,
        "n_vertices": int(len(scores.uv)),
        "normal_error_deg": errors,
        "coarse_normal_error_deg": coarse_errors,
        "normal_error_ratio": errors["mean"] / coarse_errors["mean"],
        **extra,
        "displacement_correlation": _correlation(scores.displacement, scores.true_displacement),
        "displacement_rms_mm": float(np.sqrt(np.mean(residual**2))),
        "albedo_leak": leak,
        "albedo_leak_vertices": {"freckle": n_freckle, "control": n_control},
        "albedo_leak_by_kind": {k: albedo_leak(scores, truth, k)[0] for k in truth.kinds},
        "seconds": time.perf_counter() - start,
    }
    return json_safe(result)
