"""The procedural face's analytic geometry and albedo: what ``pbidr sample`` renders and ``pbidr score``
knows exactly.

* ``coarse_surface(u, v)`` is a smooth face over the unit square of texture coordinates: an
  ellipsoidal shell plus Gaussian features (forehead, brow ridge, eye sockets, nose, cheeks, lips,
  chin). The coarse mesh samples it on a vertex grid whose UVs are the grid parameter (no seams).
* ``displacement_uv(u, v, seed, detail)`` is the fine detail in millimetres along the coarse normal, by
  kind (:class:`pbidr.preprocess.conditions.Detail`): forehead wrinkles, crow's feet, nasolabial folds and
  fine bumps (the classic sample), and on request pores, wrinkle patches of several spacings and
  orientations, and broad folds; zero near the border.
* ``misfit_uv`` is a smooth error of the coarse mesh (a 3DMM fit is never exact): the mesh a user gets
  is the true coarse surface moved by it along the normal.
* :class:`Face` ties one ``(conditions, seed)`` together: the surface the texture was shaded on, the
  mesh the method is given, and the truth it is scored against (the given mesh plus the detail: the
  misfit is not detail, and a method must not turn it into relief).

Frame: millimetres, the face looks toward +z with +y up (the 3DMM convention). Parameter space:
``u`` runs left to right (+x), ``v`` bottom to top (+y); images follow the OBJ convention, so image
row 0 is ``v = 1``. Features are placed in *face-plane coordinates* ``px = (u - 0.5) * 150`` and
``py = (v - 0.5) * 200`` (mm, close to arc length near the centre of the face).
"""

from __future__ import annotations

import numpy as np

from pbidr.preprocess.conditions import CLASSIC_LIGHT, Detail, FaceConditions

FACE_WIDTH_MM = 150.0
FACE_HEIGHT_MM = 200.0
DEFAULT_GRID = (180, 230)  # vertices along u (width) and v (height): 81,982 triangles
DEFAULT_TEXTURE_SIZE = 1024
N_FRECKLES = 300

# The classic sample's light (unit, toward the light): in front of the face, above it and to the viewer's left.
LIGHT_DIRECTION = CLASSIC_LIGHT
AMBIENT = 0.35
DIFFUSE = 0.65

# Ellipsoidal shell: azimuth theta = (2u - 1) * THETA_MAX, elevation phi = (2v - 1) * PHI_MAX.
_THETA_MAX = 1.25
_PHI_MAX = 0.85
_A = 0.5 * FACE_WIDTH_MM / np.sin(_THETA_MAX)  # half-axis along x
_C = 0.5 * FACE_HEIGHT_MM / np.sin(_PHI_MAX)  # half-axis along y
_B = 95.0  # half-axis along z (depth)

# Displacement amplitudes (mm) and wavelengths (mm); recorded in sample.json.
FOREHEAD_AMPLITUDE = Detail.forehead
FOREHEAD_WAVELENGTH = 10.0
CROWS_FEET_AMPLITUDE = Detail.crows_feet
CROWS_FEET_LINES = 24  # angular frequency: lines per full turn around the eye corner
NASOLABIAL_DEPTH = Detail.nasolabial
NASOLABIAL_WIDTH = 2.4
BUMPS_RMS = Detail.bumps
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


def _bump_waves(seed: int, rms: float = BUMPS_RMS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wave vectors (K, 2) in rad/mm, phases (K,) and amplitude of the fine-bump noise."""
    rng = np.random.default_rng([seed, 1])
    angle = rng.uniform(0.0, np.pi, _N_BUMP_WAVES)
    wavelength = rng.uniform(*BUMPS_WAVELENGTH, _N_BUMP_WAVES)
    phase = rng.uniform(0.0, 2.0 * np.pi, _N_BUMP_WAVES)
    k = (2.0 * np.pi / wavelength)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return k, phase, rms / np.sqrt(_N_BUMP_WAVES / 2.0)


def _classic_detail(px: np.ndarray, py: np.ndarray, seed: int, detail: Detail) -> np.ndarray:
    """The classic sample's detail (mm), before the border window: forehead wrinkles, crow's feet,
    nasolabial folds and fine bumps."""
    # Forehead: horizontal sinusoid, the lines curving up toward the temples.
    forehead = np.exp(-(((py - 62.0) / 14.0) ** 4) - (px / 40.0) ** 4)
    d = detail.forehead * forehead * np.sin(2.0 * np.pi * (py - 0.005 * px * px) / FOREHEAD_WAVELENGTH)
    # Crow's feet: lines fanning out from each outer eye corner. The angular frequency is an integer,
    # so cos(k * angle) is continuous across atan2's branch cut.
    for side in (1.0, -1.0):
        dx = side * px - 50.0
        dy = py - 11.0
        r = np.hypot(dx, dy)
        ang = np.arctan2(dy, dx)
        env = np.exp(-0.5 * ((r - 11.0) / 5.0) ** 2) * _sigmoid(dx / 2.0) * np.exp(-0.5 * (ang / 0.8) ** 2)
        d += detail.crows_feet * env * np.cos(CROWS_FEET_LINES * ang)
    # Nasolabial folds: a groove from each nose wing down to the mouth corner.
    for side in (1.0, -1.0):
        centre = 17.0 + 0.406 * (-24.0 - py)
        dist = side * px - centre
        env = np.exp(-(((py + 40.0) / 17.0) ** 4))
        d -= detail.nasolabial * env * np.exp(-0.5 * (dist / NASOLABIAL_WIDTH) ** 2)
    # Fine bumps: a sum of random plane waves (smooth, defined everywhere).
    k, phase, amp = _bump_waves(seed, detail.bumps)
    shape = px.shape
    pxf, pyf = px.reshape(-1), py.reshape(-1)
    bumps = np.zeros(pxf.shape)
    for i in range(len(phase)):  # K waves, each vectorised over all points
        bumps += np.cos(k[i, 0] * pxf + k[i, 1] * pyf + phase[i])
    d += amp * bumps.reshape(shape)
    return d


def displacement_uv(u: np.ndarray, v: np.ndarray, seed: int = 0, detail: Detail | None = None) -> np.ndarray:
    """Fine detail (mm) along the coarse outward normal at texture coordinates ``u``, ``v``.

    A smooth function of (u, v): the same field gives the ground-truth mesh and the texture's
    shading. ``seed`` draws the fine bumps, the pores, the wrinkle patches and the folds; ``detail``
    (default: the classic sample's) says which kinds and how strong.
    """
    detail = Detail() if detail is None else detail
    px, py = face_plane(u, v)
    d = _classic_detail(px, py, seed, detail)
    if detail.pores > 0:
        d += detail.pores * pores(px, py, seed)
    if detail.wrinkles > 0:
        d += wrinkle_patches(px, py, seed, detail.wrinkles)
    if detail.folds > 0:
        d += broad_folds(px, py, seed, detail.folds)
    return d * detail_window(px, py)


# ----------------------------------------------------------------------------- more detail kinds

PORE_CELL_MM = 1.6  # one pore per cell at most: a pore reaches at most 1.45 mm from its cell's corner
PORE_DIAMETER_MM = (0.5, 1.5)


def cell_random(ix: np.ndarray, iy: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per integer cell (ix, iy), the same wherever it is asked for: a hash
    (SplitMix64's finaliser) of the cell, the seed and ``salt``, so cellular detail needs no table."""
    with np.errstate(over="ignore"):
        x = (np.asarray(ix, np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.asarray(iy, np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ np.uint64((seed * 1000003 + salt * 7919) & 0xFFFFFFFFFFFF) * np.uint64(0x165667B19E3779F9))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def pores(px: np.ndarray, py: np.ndarray, seed: int) -> np.ndarray:
    """Unit-depth pores (mm per mm of depth) at face-plane points: at most one per 1.6 mm cell (80 % of
    cells), 0.5-1.5 mm across (Gaussian profile, sigma a quarter of the diameter), three in four pits and
    one in four bumps, depth 0.5-1 x. Evaluated from the 3 x 3 cells around each point."""
    cx0 = np.floor(px / PORE_CELL_MM).astype(np.int64)
    cy0 = np.floor(py / PORE_CELL_MM).astype(np.int64)
    out = np.zeros(np.shape(px))
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            cx, cy = cx0 + dx, cy0 + dy
            present = cell_random(cx, cy, seed, 11) < 0.8
            ox = (cx + 0.2 + 0.6 * cell_random(cx, cy, seed, 12)) * PORE_CELL_MM
            oy = (cy + 0.2 + 0.6 * cell_random(cx, cy, seed, 13)) * PORE_CELL_MM
            lo, hi = PORE_DIAMETER_MM
            sigma = 0.25 * (lo + (hi - lo) * cell_random(cx, cy, seed, 14))
            sign = np.where(cell_random(cx, cy, seed, 15) < 0.75, -1.0, 1.0)
            depth = 0.5 + 0.5 * cell_random(cx, cy, seed, 16)
            r2 = ((px - ox) ** 2 + (py - oy) ** 2) / sigma**2
            out += np.where(present & (r2 < 9.0), sign * depth * np.exp(-0.5 * r2), 0.0)
    return out


def _inside_face(rng: np.random.Generator, n: int, rx: float = 52.0, ry: float = 78.0) -> np.ndarray:
    """n points (n, 2) uniform in the face-plane ellipse of half-axes rx, ry around (0, 2) mm."""
    r = np.sqrt(rng.uniform(0.0, 1.0, n))
    t = rng.uniform(0.0, 2.0 * np.pi, n)
    return np.stack([rx * r * np.cos(t), 2.0 + ry * r * np.sin(t)], axis=1)


def wrinkle_parameters(seed: int, n: int) -> dict[str, np.ndarray]:
    """n wrinkle patches: centre (mm), orientation of the lines, spacing 2-8 mm, amplitude 0.08-0.25 mm,
    envelope half-lengths along / across the lines, phase."""
    rng = np.random.default_rng([seed, 5])
    return {"centre": _inside_face(rng, n), "angle": rng.uniform(0.0, np.pi, n),
            "spacing": rng.uniform(2.0, 8.0, n), "amplitude": rng.uniform(0.08, 0.25, n),
            "along": rng.uniform(8.0, 18.0, n), "across": rng.uniform(5.0, 10.0, n),
            "phase": rng.uniform(0.0, 2.0 * np.pi, n)}


def _patch_frame(px: np.ndarray, py: np.ndarray, centre: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The coordinates (mm) of the points along and across a patch's direction ``angle``, from its centre."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = px - centre[0], py - centre[1]
    return c * x + s * y, -s * x + c * y


def wrinkle_patches(px: np.ndarray, py: np.ndarray, seed: int, n: int) -> np.ndarray:
    """Sum of n patches of parallel wrinkles (mm): a sinusoid across the lines under a Gaussian envelope."""
    p = wrinkle_parameters(seed, n)
    out = np.zeros(np.shape(px))
    for i in range(n):
        along, across = _patch_frame(px, py, p["centre"][i], p["angle"][i])
        env = np.exp(-0.5 * ((along / p["along"][i]) ** 2 + (across / p["across"][i]) ** 2))
        out += p["amplitude"][i] * env * np.sin(2.0 * np.pi * across / p["spacing"][i] + p["phase"][i])
    return out


def fold_parameters(seed: int, n: int) -> dict[str, np.ndarray]:
    """n broad folds: centre (mm), direction, width sigma 2.5-7.5 mm (5-15 mm across), depth 0.4-1.2 mm
    (seven in ten are grooves), half-length 12-25 mm, curvature."""
    rng = np.random.default_rng([seed, 6])
    return {"centre": _inside_face(rng, n, 45.0, 70.0), "angle": rng.uniform(0.0, np.pi, n),
            "sigma": rng.uniform(2.5, 7.5, n),
            "depth": rng.uniform(0.4, 1.2, n) * np.where(rng.uniform(0.0, 1.0, n) < 0.7, -1.0, 1.0),
            "length": rng.uniform(12.0, 25.0, n), "curvature": rng.uniform(-0.01, 0.01, n)}


def broad_folds(px: np.ndarray, py: np.ndarray, seed: int, n: int) -> np.ndarray:
    """Sum of n broad, gently curved folds (mm): a Gaussian cross-section along a parabola."""
    p = fold_parameters(seed, n)
    out = np.zeros(np.shape(px))
    for i in range(n):
        along, across = _patch_frame(px, py, p["centre"][i], p["angle"][i])
        across = across - p["curvature"][i] * along**2
        out += p["depth"][i] * np.exp(-0.5 * (across / p["sigma"][i]) ** 2 - 0.5 * (along / p["length"][i]) ** 2)
    return out


def misfit_uv(u: np.ndarray, v: np.ndarray, seed: int, amplitude_mm: float) -> np.ndarray:
    """The coarse mesh's error (mm along the normal): six broad Gaussian blobs (sigma 20-45 mm) of random
    sign, scaled so that the largest |error| on the face is ``amplitude_mm``."""
    if amplitude_mm <= 0:
        return np.zeros(np.shape(u))
    rng = np.random.default_rng([seed, 7])
    centre = np.stack([rng.uniform(-60.0, 60.0, 6), rng.uniform(-80.0, 80.0, 6)], axis=1)
    sigma = rng.uniform(20.0, 45.0, 6)
    weight = rng.uniform(0.5, 1.0, 6) * np.where(rng.uniform(0.0, 1.0, 6) < 0.5, -1.0, 1.0)

    def blobs(px, py):
        return sum(w * np.exp(-0.5 * ((px - c[0]) ** 2 + (py - c[1]) ** 2) / s**2)
                   for c, s, w in zip(centre, sigma, weight))

    gu, gv = np.meshgrid(np.linspace(0.0, 1.0, 65), np.linspace(0.0, 1.0, 65))
    scale = amplitude_mm / max(float(np.abs(blobs(*face_plane(gu, gv))).max()), 1e-12)
    return scale * blobs(*face_plane(u, v))


# ----------------------------------------------------------------------------- one face


class Face:
    """One procedural face, ``(conditions, seed)``: the surface its texture was shaded on, the coarse mesh
    a user is given (the true coarse surface moved by the misfit) and the truth a method is scored against
    (that mesh plus the detail along its normal)."""

    def __init__(self, conditions: FaceConditions | None = None, seed: int = 0):
        self.conditions = FaceConditions() if conditions is None else conditions
        self.seed = int(seed)

    def displacement(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The true detail (mm) at (u, v)."""
        return displacement_uv(u, v, self.seed, self.conditions.detail)

    def misfit(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return misfit_uv(u, v, self.seed, self.conditions.misfit_mm)

    def coarse_surface(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The coarse surface a user is given (N, 3): the true one, off by the misfit."""
        if self.conditions.misfit_mm <= 0:
            return coarse_surface(u, v)
        return coarse_surface(u, v) + self.misfit(u, v)[..., None] * coarse_normal(u, v)

    def coarse_normal(self, u: np.ndarray, v: np.ndarray, eps: float = 1e-5) -> np.ndarray:
        """Unit outward normals (N, 3) of :meth:`coarse_surface` (central differences in u and v)."""
        if self.conditions.misfit_mm <= 0:
            return coarse_normal(u, v, eps)
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        n = np.cross(self.coarse_surface(u + eps, v) - self.coarse_surface(u - eps, v),
                     self.coarse_surface(u, v + eps) - self.coarse_surface(u, v - eps))
        return n / np.linalg.norm(n, axis=-1, keepdims=True)


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



# ----------------------------------------------------------------------------- albedo

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

