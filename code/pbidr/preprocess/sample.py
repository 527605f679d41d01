"""The built-in sample: a procedural face whose fine detail is known exactly.

A coarse textured face mesh is what users bring; the method recovers the fine geometry implied by
the texture's shading. This module makes such an input with a ground truth:

* ``coarse_surface(u, v)`` is a smooth face over the unit square of texture coordinates: an
  ellipsoidal shell plus Gaussian features (forehead, brow ridge, eye sockets, nose, cheeks, lips,
  chin). The coarse mesh samples it on a vertex grid whose UVs are the grid parameter (no seams).
* ``displacement_uv(u, v, seed)`` is the fine detail in millimetres along the coarse normal:
  forehead wrinkles, crow's feet, nasolabial folds and fine bumps, zero near the border.
* The texture is albedo x Lambertian shading of the *detailed* surface, evaluated per texel, so the
  wrinkles appear in the shading although the coarse mesh does not have them. Freckles are marks
  in the albedo only; a method that turns them into geometry is wrong there.

Frame: millimetres, the face looks toward +z with +y up (the 3DMM convention). Parameter space:
``u`` runs left to right (+x), ``v`` bottom to top (+y); images follow the OBJ convention, so image
row 0 is ``v = 1``. Features are placed in *face-plane coordinates* ``px = (u - 0.5) * 150`` and
``py = (v - 0.5) * 200`` (mm, close to arc length near the centre of the face).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pbidr.io.mesh import TexturedMesh
from pbidr.io.obj import write_obj
from pbidr.utils.atomic import save_npy, write_json
from pbidr.utils.outputs import check_output, stage_output

FACE_WIDTH_MM = 150.0
FACE_HEIGHT_MM = 200.0
DEFAULT_GRID = (180, 230)  # vertices along u (width) and v (height): 81,982 triangles
DEFAULT_TEXTURE_SIZE = 1024
N_FRECKLES = 300

# Light direction (unit, toward the light): in front of the face, above it and to the viewer's left.
LIGHT_DIRECTION = tuple(float(c) for c in np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82]))
AMBIENT = 0.35
DIFFUSE = 0.65

# Ellipsoidal shell: azimuth theta = (2u - 1) * THETA_MAX, elevation phi = (2v - 1) * PHI_MAX.
_THETA_MAX = 1.25
_PHI_MAX = 0.85
_A = 0.5 * FACE_WIDTH_MM / np.sin(_THETA_MAX)  # half-axis along x
_C = 0.5 * FACE_HEIGHT_MM / np.sin(_PHI_MAX)  # half-axis along y
_B = 95.0  # half-axis along z (depth)

# Displacement amplitudes (mm) and wavelengths (mm); recorded in sample.json.
FOREHEAD_AMPLITUDE = 0.55
FOREHEAD_WAVELENGTH = 10.0
CROWS_FEET_AMPLITUDE = 0.35
CROWS_FEET_LINES = 24  # angular frequency: lines per full turn around the eye corner
NASOLABIAL_DEPTH = 1.5
NASOLABIAL_WIDTH = 2.4
BUMPS_RMS = 0.025
BUMPS_WAVELENGTH = (2.0, 3.0)
_N_BUMP_WAVES = 32


# ----------------------------------------------------------------------------- geometry

def face_plane(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-plane coordinates (mm) of texture coordinates: ``px`` right, ``py`` up, 0 at the centre."""
    return (np.asarray(u, dtype=np.float64) - 0.5) * FACE_WIDTH_MM, (np.asarray(v, dtype=np.float64) - 0.5) * FACE_HEIGHT_MM


def _gauss(px, py, cx, cy, sx, sy):
    return np.exp(-0.5 * (((px - cx) / sx) ** 2 + ((py - cy) / sy) ** 2))


def _pair(px, py, cx, cy, sx, sy):
    """A Gaussian and its mirror image across px = 0 (summed, so the field stays smooth at px = 0)."""
    return _gauss(px, py, cx, cy, sx, sy) + _gauss(px, py, -cx, cy, sx, sy)


def _feature_height(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Facial features (mm, along the shell's outward normal) in face-plane coordinates."""
    h = 4.0 * _gauss(px, py, 0, 55, 45, 25)  # forehead
    h += 5.0 * _pair(px, py, 30, 24, 18, 5)  # brow ridge
    h -= 11.0 * _pair(px, py, 31, 11, 13, 8)  # eye sockets
    h += 3.5 * _pair(px, py, 31, 10, 8, 5)  # closed eyelids over the eyeballs
    h += 10.0 * _gauss(px, py, 0, 4, 6, 18)  # nose bridge
    h += 4.0 * _gauss(px, py, 0, 12, 5, 10)
    h += 16.0 * _gauss(px, py, 0, -20, 8, 8)  # nose tip
    h += 6.0 * _pair(px, py, 12, -24, 6, 5)  # nose wings
    h += 6.0 * _pair(px, py, 38, -18, 16, 14)  # cheeks
    h += 5.0 * _gauss(px, py, 0, -45, 17, 4)  # upper lip
    h += 5.0 * _gauss(px, py, 0, -56, 15, 5)  # lower lip
    h -= 2.5 * _gauss(px, py, 0, -50, 20, 2.2)  # mouth line
    h -= 4.0 * _gauss(px, py, 0, -66, 14, 4)  # groove above the chin
    h += 8.0 * _gauss(px, py, 0, -80, 20, 10)  # chin
    return h


def _shell(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 3) and unit outward normals (N, 3) of the ellipsoidal shell."""
    theta = (2.0 * np.asarray(u, dtype=np.float64) - 1.0) * _THETA_MAX
    phi = (2.0 * np.asarray(v, dtype=np.float64) - 1.0) * _PHI_MAX
    cp = np.cos(phi)
    p = np.stack([_A * np.sin(theta) * cp, _C * np.sin(phi), _B * np.cos(theta) * cp], axis=-1)
    n = p / np.array([_A * _A, _C * _C, _B * _B])
    return p, n / np.linalg.norm(n, axis=-1, keepdims=True)


def coarse_surface(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The coarse face (N, 3) in mm at texture coordinates ``u``, ``v`` (N,) in [0, 1]."""
    p, n = _shell(u, v)
    px, py = face_plane(u, v)
    return p + _feature_height(px, py)[..., None] * n


def coarse_normal(u: np.ndarray, v: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Unit outward normals (N, 3) of ``coarse_surface`` (central differences in u and v)."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    du = coarse_surface(u + eps, v) - coarse_surface(u - eps, v)
    dv = coarse_surface(u, v + eps) - coarse_surface(u, v - eps)
    n = np.cross(du, dv)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def detail_window(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """1 on the inner face, falling smoothly to 0 before the mesh border."""
    r = np.sqrt((px / 68.0) ** 2 + ((py - 2.0) / 96.0) ** 2)
    return 1.0 - _smoothstep(0.88, 1.0, r)


def face_region(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Boolean inner-face region used for scoring: forehead to chin, clear of the border band."""
    return (px / 62.0) ** 2 + ((py - 2.0) / 90.0) ** 2 < 1.0


def _bump_waves(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wave vectors (K, 2) in rad/mm, phases (K,) and amplitude of the fine-bump noise."""
    rng = np.random.default_rng([seed, 1])
    angle = rng.uniform(0.0, np.pi, _N_BUMP_WAVES)
    wavelength = rng.uniform(*BUMPS_WAVELENGTH, _N_BUMP_WAVES)
    phase = rng.uniform(0.0, 2.0 * np.pi, _N_BUMP_WAVES)
    k = (2.0 * np.pi / wavelength)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return k, phase, BUMPS_RMS / np.sqrt(_N_BUMP_WAVES / 2.0)


def displacement_uv(u: np.ndarray, v: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fine detail (mm) along the coarse outward normal at texture coordinates ``u``, ``v``.

    A smooth function of (u, v): the same field gives the ground-truth mesh and the texture's
    shading. ``seed`` varies only the fine bumps.
    """
    px, py = face_plane(u, v)
    # Forehead: horizontal sinusoid, the lines curving up toward the temples.
    forehead = np.exp(-(((py - 62.0) / 14.0) ** 4) - (px / 40.0) ** 4)
    d = FOREHEAD_AMPLITUDE * forehead * np.sin(2.0 * np.pi * (py - 0.005 * px * px) / FOREHEAD_WAVELENGTH)
    # Crow's feet: lines fanning out from each outer eye corner. The angular frequency is an integer,
    # so cos(k * angle) is continuous across atan2's branch cut.
    for side in (1.0, -1.0):
        dx = side * px - 50.0
        dy = py - 11.0
        r = np.hypot(dx, dy)
        ang = np.arctan2(dy, dx)
        env = np.exp(-0.5 * ((r - 11.0) / 5.0) ** 2) * _sigmoid(dx / 2.0) * np.exp(-0.5 * (ang / 0.8) ** 2)
        d += CROWS_FEET_AMPLITUDE * env * np.cos(CROWS_FEET_LINES * ang)
    # Nasolabial folds: a groove from each nose wing down to the mouth corner.
    for side in (1.0, -1.0):
        centre = 17.0 + 0.406 * (-24.0 - py)
        dist = side * px - centre
        env = np.exp(-(((py + 40.0) / 17.0) ** 4))
        d -= NASOLABIAL_DEPTH * env * np.exp(-0.5 * (dist / NASOLABIAL_WIDTH) ** 2)
    # Fine bumps: a sum of random plane waves (smooth, defined everywhere).
    k, phase, amp = _bump_waves(seed)
    shape = px.shape
    pxf, pyf = px.reshape(-1), py.reshape(-1)
    bumps = np.zeros(pxf.shape)
    for i in range(len(phase)):  # K waves, each vectorised over all points
        bumps += np.cos(k[i, 0] * pxf + k[i, 1] * pyf + phase[i])
    d += amp * bumps.reshape(shape)
    return d * detail_window(px, py)


def grid_faces(nu: int, nv: int) -> np.ndarray:
    """Triangles (2 (nu-1)(nv-1), 3) of a vertex grid indexed ``iv * nu + iu``, counter-clockwise
    seen from the front (u right, v up), so normals point out of the face."""
    iu, iv = np.meshgrid(np.arange(nu - 1), np.arange(nv - 1))
    a = (iv * nu + iu).reshape(-1)
    b, c, d = a + 1, a + nu + 1, a + nu
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int64)


def texel_uv(texture_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of texel centres, each (T, T) in image layout (row 0 is v = 1, the OBJ convention)."""
    t = (np.arange(texture_size) + 0.5) / texture_size
    return np.meshgrid(t, 1.0 - t)


def _grid_normals(p: np.ndarray) -> np.ndarray:
    """Unit normals of a surface sampled on an image-layout grid (T, T, 3): d/du x d/dv, where
    columns run along +u and rows along -v."""
    n = np.cross(np.gradient(p, axis=1), -np.gradient(p, axis=0))
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- texture

@dataclass
class TexelFields:
    """Everything the texture is made of, per texel, in image layout (T, T[, 3])."""

    u: np.ndarray
    v: np.ndarray
    displacement: np.ndarray  # mm
    detailed_normal: np.ndarray  # unit, world frame
    shading: np.ndarray  # AMBIENT + DIFFUSE * max(0, n.l)
    albedo: np.ndarray  # float RGB in [0, 1]
    marks: np.ndarray  # bool, the freckles
    region: np.ndarray  # bool, the inner-face scoring region
    n_freckles: int


def _albedo(px: np.ndarray, py: np.ndarray, seed: int) -> np.ndarray:
    """Skin albedo (T, T, 3) without freckles: tone, blush, lips, eyebrows, lash lines."""
    skin = np.array([0.80, 0.60, 0.49])
    rng = np.random.default_rng([seed, 2])
    angle = rng.uniform(0.0, 2.0 * np.pi, 8)
    wavelength = rng.uniform(30.0, 90.0, 8)
    phase = rng.uniform(0.0, 2.0 * np.pi, 8)
    tone = np.zeros(px.shape)
    for a, w, ph in zip(angle, wavelength, phase):  # 8 waves over the whole image
        tone += np.cos(2.0 * np.pi / w * (np.cos(a) * px + np.sin(a) * py) + ph)
    albedo = skin * (1.0 + 0.03 * tone)[..., None]
    blush = 0.8 * _pair(px, py, 38, -18, 15, 12)
    albedo += blush[..., None] * np.array([0.05, -0.03, -0.02])

    def blend(a, colour, weight):
        return a * (1.0 - weight[..., None]) + np.asarray(colour) * weight[..., None]

    lips = _sigmoid(
        (1.0 - (px / 17.0) ** 2 - ((py + 50.5) / 8.5) ** 2) / 0.12
    ) * (1.0 - 0.6 * _gauss(px, py, 0, -50, 30, 0.8))
    albedo = blend(albedo, [0.66, 0.33, 0.33], 0.85 * lips)
    for side in (1.0, -1.0):
        x = side * px - 31.0
        brow = _sigmoid((3.2 - np.abs(py - (29.0 - 0.012 * x * x))) / 0.6) * _sigmoid((17.0 - np.abs(x)) / 2.0)
        albedo = blend(albedo, [0.30, 0.20, 0.15], 0.85 * brow)
        lash = _sigmoid((0.7 - np.abs(py - (10.0 - 0.02 * x * x))) / 0.25) * _sigmoid((11.0 - np.abs(x)) / 1.0)
        albedo = blend(albedo, [0.18, 0.12, 0.10], 0.9 * lash)
    return albedo


def _freckles(texture_size: int, seed: int, n: int = N_FRECKLES) -> np.ndarray:
    """Freckle strength (T, T) in [0, 1]: n small soft discs on the cheeks and nose, splatted in
    small windows (no per-texel loop over freckles)."""
    rng = np.random.default_rng([seed, 3])
    # Mixture: left cheek, right cheek, nose.
    centres = np.array([[-36.0, -12.0], [36.0, -12.0], [0.0, -6.0]])
    spreads = np.array([[12.0, 9.0], [12.0, 9.0], [7.0, 9.0]])
    # Draw spare candidates and keep the first n that land on the cheeks/nose (clear of the eyes,
    # the mouth and the sides of the face), so the count is exact and the draw deterministic.
    comp = rng.choice(3, size=8 * n, p=[0.38, 0.38, 0.24])
    pos = centres[comp] + spreads[comp] * rng.standard_normal((8 * n, 2))
    keep = (np.abs(pos[:, 0]) < 55.0) & (pos[:, 1] < 4.0) & (pos[:, 1] > -34.0)
    pos = pos[keep][:n]
    if len(pos) < n:  # practically impossible (8x candidates); fail loudly rather than silently
        raise RuntimeError(f"freckle sampling kept {len(pos)} of {n}")
    radius = rng.uniform(0.5, 1.3, n)
    strength = rng.uniform(0.6, 1.0, n)

    t = texture_size
    col = pos[:, 0] / FACE_WIDTH_MM * t + 0.5 * t - 0.5
    row = 0.5 * t - 0.5 - pos[:, 1] / FACE_HEIGHT_MM * t
    half = int(np.ceil(1.3 * t / min(FACE_WIDTH_MM, FACE_HEIGHT_MM))) + 2
    off = np.arange(-half, half + 1)
    rr = np.round(row).astype(np.int64)[:, None, None] + off[None, :, None]
    cc = np.round(col).astype(np.int64)[:, None, None] + off[None, None, :]
    rr, cc = np.broadcast_arrays(rr, cc)
    px = ((cc + 0.5) / t - 0.5) * FACE_WIDTH_MM
    py = (0.5 - (rr + 0.5) / t) * FACE_HEIGHT_MM
    dist = np.hypot(px - pos[:, 0, None, None], py - pos[:, 1, None, None]) / radius[:, None, None]
    value = _smoothstep(0.0, 0.4, 1.0 - dist) * strength[:, None, None]
    ok = (rr >= 0) & (rr < t) & (cc >= 0) & (cc < t) & (value > 0)
    out = np.zeros((t, t))
    np.maximum.at(out, (rr[ok], cc[ok]), value[ok])
    return out


def texel_fields(texture_size: int = DEFAULT_TEXTURE_SIZE, seed: int = 0) -> TexelFields:
    """Albedo, detailed normals and shading at every texel (the dense evaluation behind mesh.png)."""
    u, v = texel_uv(texture_size)
    px, py = face_plane(u, v)
    coarse = coarse_surface(u, v)
    normal = _grid_normals(coarse)
    disp = displacement_uv(u, v, seed)
    detailed_normal = _grid_normals(coarse + disp[..., None] * normal)
    ndotl = detailed_normal @ np.asarray(LIGHT_DIRECTION)
    shading = AMBIENT + DIFFUSE * np.maximum(ndotl, 0.0)
    freckle = _freckles(texture_size, seed)
    albedo = _albedo(px, py, seed) * (1.0 - freckle[..., None] * np.array([0.30, 0.40, 0.48]))
    return TexelFields(
        u=u,
        v=v,
        displacement=disp,
        detailed_normal=detailed_normal,
        shading=shading,
        albedo=np.clip(albedo, 0.0, 1.0),
        marks=freckle > 0.2,
        region=face_region(px, py),
        n_freckles=N_FRECKLES,
    )


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- the sample folder

@dataclass
class SampleInfo:
    """Where the sample went and what it holds. ``files`` maps a role to its path."""

    output_dir: Path
    seed: int
    grid: tuple[int, int]
    texture_size: int
    n_vertices: int
    n_faces: int
    n_freckles: int
    displacement_range_mm: tuple[float, float]
    bounding_box_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)


_FILES = {
    "mesh": ("mesh.obj", "coarse textured input mesh (mm, face toward +z, +y up); with mesh.mtl and mesh.png"),
    "texture": ("mesh.png", "texture: albedo x Lambertian shading of the detailed surface"),
    "gt_detailed": ("gt_detailed.obj", "ground-truth detailed mesh: mesh.obj's vertices moved by gt_displacement along the coarse vertex normals (same faces and UVs)"),
    "gt_displacement": ("gt_displacement.npy", "per-vertex displacement (V,) float64, mm along the coarse vertex normal"),
    "gt_displacement_uv": ("gt_displacement_uv.npy", "displacement (T, T) float32 in mm in the texture's layout (row 0 is v = 1)"),
    "albedo": ("albedo.png", "albedo alone, in the texture's layout"),
    "albedo_marks_uv": ("albedo_marks_uv.png", "8-bit mask, 255 on freckles: marks in the albedo only, not geometry"),
    "face_region_uv": ("face_region_uv.png", "8-bit mask, 255 on the inner face region used for scoring"),
    "info": ("sample.json", "this description"),
}


@dataclass
class _Sample:
    """The sample before it is written: the coarse textured mesh, the ground truth (the detailed mesh
    and its per-vertex displacement) and the per-texel fields behind the texture."""

    mesh: TexturedMesh
    detailed: TexturedMesh
    displacement: np.ndarray  # (V,) mm along the coarse vertex normals
    fields: TexelFields
    bounding_box_mm: tuple[tuple[float, float, float], tuple[float, float, float]]


def _checked_grid(grid: tuple[int, int] | None, texture_size: int) -> tuple[int, int]:
    nu, nv = grid if grid is not None else DEFAULT_GRID
    if nu < 2 or nv < 2 or texture_size < 8:
        raise ValueError(f"sample grid {nu}x{nv} / texture size {texture_size} too small")
    return nu, nv


def _build_sample(nu: int, nv: int, texture_size: int, seed: int) -> _Sample:
    """The coarse mesh on an (nu, nv) vertex grid whose UVs are the grid parameter, textured with the
    detailed surface's shading, and the truth: its vertices moved along the mesh's vertex normals."""
    gu, gv = np.meshgrid(np.linspace(0.0, 1.0, nu), np.linspace(0.0, 1.0, nv))
    uv = np.stack([gu.reshape(-1), gv.reshape(-1)], axis=1)
    vertices = coarse_surface(uv[:, 0], uv[:, 1])
    faces = grid_faces(nu, nv)

    fields = texel_fields(texture_size, seed)
    texture = _to_uint8(fields.albedo * fields.shading[..., None])
    mesh = TexturedMesh(vertices, faces, uv=uv, face_uv=faces, texture=texture)

    disp = displacement_uv(uv[:, 0], uv[:, 1], seed)
    detailed = mesh.with_vertices(vertices + disp[:, None] * mesh.vertex_normals())
    bbox = (tuple(float(x) for x in vertices.min(0)), tuple(float(x) for x in vertices.max(0)))
    return _Sample(mesh=mesh, detailed=detailed, displacement=disp, fields=fields, bounding_box_mm=bbox)


def _write_sample_files(tmp: Path, sample: _Sample) -> None:
    """The meshes, the truth's displacement and the UV images (everything but sample.json)."""
    write_obj(tmp / "mesh.obj", sample.mesh)
    write_obj(tmp / "gt_detailed.obj", sample.detailed, texture_name="mesh.png", write_texture=False)
    save_npy(tmp / "gt_displacement.npy", sample.displacement)
    save_npy(tmp / "gt_displacement_uv.npy", sample.fields.displacement.astype(np.float32))
    Image.fromarray(_to_uint8(sample.fields.albedo)).save(tmp / "albedo.png")
    Image.fromarray(sample.fields.marks.astype(np.uint8) * 255).save(tmp / "albedo_marks_uv.png")
    Image.fromarray(sample.fields.region.astype(np.uint8) * 255).save(tmp / "face_region_uv.png")


def _sample_json(seed: int, grid: tuple[int, int], texture_size: int, sample: _Sample) -> dict:
    """sample.json: how the sample was made, its sizes and the truth's parameters."""
    nu, nv = grid
    disp = sample.displacement
    return {
        "generator": "pbidr.preprocess.sample.make_sample",
        "seed": int(seed),
        "units": "mm",
        "front": [0.0, 0.0, 1.0],
        "up": [0.0, 1.0, 0.0],
        "grid": [nu, nv],
        "texture_size": texture_size,
        "n_vertices": len(sample.mesh.vertices),
        "n_faces": len(sample.mesh.faces),
        "n_freckles": sample.fields.n_freckles,
        "bounding_box_mm": sample.bounding_box_mm,
        "uv_convention": "OBJ: v = 0 is the bottom row of every *_uv image and of mesh.png",
        "face_plane_mm": "px = (u - 0.5) * 150, py = (v - 0.5) * 200",
        "light_direction": list(LIGHT_DIRECTION),
        "shading": f"{AMBIENT} + {DIFFUSE} * max(0, n.l), n the detailed surface's normal per texel",
        "displacement": {
            "function": "pbidr.preprocess.sample.displacement_uv(u, v, seed)",
            "coarse_surface": "pbidr.preprocess.sample.coarse_surface(u, v)",
            "forehead_wrinkles": {"amplitude_mm": FOREHEAD_AMPLITUDE, "wavelength_mm": FOREHEAD_WAVELENGTH},
            "crows_feet": {"amplitude_mm": CROWS_FEET_AMPLITUDE, "lines_per_turn": CROWS_FEET_LINES},
            "nasolabial_folds": {"depth_mm": NASOLABIAL_DEPTH, "width_sigma_mm": NASOLABIAL_WIDTH},
            "fine_bumps": {"rms_mm": BUMPS_RMS, "wavelength_mm": list(BUMPS_WAVELENGTH)},
            "range_mm": [float(disp.min()), float(disp.max())],
        },
        "files": {name: desc for name, desc in _FILES.values()},
    }


def _sample_info(output_dir: Path, seed: int, grid: tuple[int, int], texture_size: int, sample: _Sample,
                 start: float) -> SampleInfo:
    files = {role: output_dir / name for role, (name, _) in _FILES.items()}
    files["mtl"] = output_dir / "mesh.mtl"
    return SampleInfo(
        output_dir=output_dir,
        seed=int(seed),
        grid=grid,
        texture_size=texture_size,
        n_vertices=len(sample.mesh.vertices),
        n_faces=len(sample.mesh.faces),
        n_freckles=sample.fields.n_freckles,
        displacement_range_mm=(float(sample.displacement.min()), float(sample.displacement.max())),
        bounding_box_mm=sample.bounding_box_mm,
        seconds=time.perf_counter() - start,
        files=files,
    )


def make_sample(
    output_dir: str | Path,
    seed: int = 0,
    grid: tuple[int, int] | None = None,
    texture_size: int = DEFAULT_TEXTURE_SIZE,
    overwrite: bool = False,
) -> SampleInfo:
    """Write the procedural face sample into ``output_dir`` (replaced atomically, as a whole).

    ``grid`` is (vertices along u, vertices along v), default ``DEFAULT_GRID``; the same seed gives
    byte-identical files. An existing sample folder is replaced only with ``overwrite``
    (``pbidr.utils.outputs``); any other non-empty folder is refused.
    """
    start = time.perf_counter()
    nu, nv = _checked_grid(grid, texture_size)
    output_dir = Path(output_dir)
    check_output(output_dir, "sample", overwrite)

    sample = _build_sample(nu, nv, texture_size, seed)
    with stage_output(output_dir, "sample", overwrite, seed=int(seed)) as tmp:
        _write_sample_files(tmp, sample)
        write_json(tmp / "sample.json", _sample_json(seed, (nu, nv), texture_size, sample))
    return _sample_info(output_dir, seed, (nu, nv), texture_size, sample, start)
