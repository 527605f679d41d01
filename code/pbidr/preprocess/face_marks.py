"""Marks in the procedural face's albedo, by kind: never geometry, so a method that turns them into relief
is wrong there, and ``pbidr score`` measures how much of each kind leaked (one mask per kind).

Kinds (:class:`pbidr.preprocess.conditions.Marks`) and why each is there:

* ``melanin``: brown freckles; colour and intensity change together (the classic sample's only marks).
* ``hemoglobin``: red blotches, 2-5 mm, soft: mostly a change of colour.
* ``grey``: grey freckles; darker with no colour change, which no chromaticity can explain.
* ``moles``: 1-3 mm, dark, nearly colourless.
* ``hair``: thin dark strokes over the brows and hanging from the lash lines.
* ``stubble``: small dark dots on the chin, jaw and upper lip.

Each kind is a strength map (T, T) in [0, 1] in the texture's layout; the albedo is multiplied by
``1 - strength * tint`` (per channel); the kind's mask is ``strength > mask_level(kind)``.
"""

from __future__ import annotations

import numpy as np

from pbidr.preprocess.conditions import Marks
from pbidr.preprocess.face_model import FACE_HEIGHT_MM, FACE_WIDTH_MM, _inside_face, _smoothstep

MARK_KINDS = ("melanin", "hemoglobin", "grey", "moles", "hair", "stubble")
# albedo multiplier 1 - strength * tint, per channel (RGB)
MARK_TINT = {
    "melanin": (0.30, 0.40, 0.48),
    "hemoglobin": (0.02, 0.22, 0.16),
    "grey": (0.45, 0.45, 0.45),
    "moles": (0.70, 0.72, 0.73),
    "hair": (0.72, 0.72, 0.72),
    "stubble": (0.55, 0.55, 0.55),
}
MASK_LEVEL = 0.2
THIN_MASK_LEVEL = 0.05  # hairs and stubble: thinner than a texel at 512-1024, so drawn faint
_SALT = {"melanin": 3, "grey": 4, "moles": 8, "hemoglobin": 9, "hair": 10, "stubble": 11}


def _windows(t: int, pos: np.ndarray, reach_mm: float):
    """Texel rows, columns (n, k, k) and their face-plane centres around each point of ``pos`` (n, 2) mm,
    ``reach_mm`` around it (plus two texels)."""
    col = pos[:, 0] / FACE_WIDTH_MM * t + 0.5 * t - 0.5
    row = 0.5 * t - 0.5 - pos[:, 1] / FACE_HEIGHT_MM * t
    half = int(np.ceil(reach_mm * t / min(FACE_WIDTH_MM, FACE_HEIGHT_MM))) + 2
    off = np.arange(-half, half + 1)
    rr = np.round(row).astype(np.int64)[:, None, None] + off[None, :, None]
    cc = np.round(col).astype(np.int64)[:, None, None] + off[None, None, :]
    rr, cc = np.broadcast_arrays(rr, cc)
    px = ((cc + 0.5) / t - 0.5) * FACE_WIDTH_MM
    py = (0.5 - (rr + 0.5) / t) * FACE_HEIGHT_MM
    return rr, cc, px, py


def _composite(t: int, rr: np.ndarray, cc: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The strongest value per texel (T, T) of splats at (rr, cc)."""
    ok = (rr >= 0) & (rr < t) & (cc >= 0) & (cc < t) & (value > 0)
    out = np.zeros((t, t))
    np.maximum.at(out, (rr[ok], cc[ok]), value[ok])
    return out


def _discs(t: int, pos: np.ndarray, radius: np.ndarray, strength: np.ndarray, reach_mm: float,
           soft: bool = False, subtexel: bool = True) -> np.ndarray:
    """Discs of ``radius`` (n,) mm at ``pos`` (n, 2): a hard edge (smoothstep over the outer 40 %) or,
    ``soft``, a Gaussian of sigma radius / 2. ``subtexel``: a disc smaller than a texel is drawn a texel
    wide and proportionally fainter (the same darkness in all), so small marks do not vanish between
    texel centres (off for the classic freckles, which stay as they were)."""
    if subtexel:
        least = 0.6 * FACE_WIDTH_MM / t
        wide = np.maximum(radius, least)
        strength, radius = strength * (radius / wide) ** 2, wide
        reach_mm = max(reach_mm, float(radius.max()))
    rr, cc, px, py = _windows(t, pos, reach_mm)
    dist = np.hypot(px - pos[:, 0, None, None], py - pos[:, 1, None, None]) / radius[:, None, None]
    profile = np.exp(-2.0 * dist**2) * (dist < 2.0) if soft else _smoothstep(0.0, 0.4, 1.0 - dist)
    return _composite(t, rr, cc, profile * strength[:, None, None])


def _cheeks_and_nose(rng: np.random.Generator, n: int) -> np.ndarray:
    """n freckle positions (n, 2) mm: a mixture over the cheeks and the nose, clear of the eyes, the mouth
    and the sides of the face. Spare candidates are drawn and the first n kept, so the count is exact."""
    centres = np.array([[-36.0, -12.0], [36.0, -12.0], [0.0, -6.0]])
    spreads = np.array([[12.0, 9.0], [12.0, 9.0], [7.0, 9.0]])
    comp = rng.choice(3, size=8 * n, p=[0.38, 0.38, 0.24])
    pos = centres[comp] + spreads[comp] * rng.standard_normal((8 * n, 2))
    keep = (np.abs(pos[:, 0]) < 55.0) & (pos[:, 1] < 4.0) & (pos[:, 1] > -34.0)
    pos = pos[keep][:n]
    if len(pos) < n:  # practically impossible (8x candidates); fail loudly rather than silently
        raise RuntimeError(f"freckle sampling kept {len(pos)} of {n}")
    return pos


def freckles(texture_size: int, seed: int, n: int, salt: int = _SALT["melanin"]) -> np.ndarray:
    """Freckle strength (T, T) in [0, 1]: n small discs (0.5-1.3 mm) on the cheeks and nose."""
    rng = np.random.default_rng([seed, salt])
    pos = _cheeks_and_nose(rng, n)
    radius = rng.uniform(0.5, 1.3, n)
    strength = rng.uniform(0.6, 1.0, n)
    return _discs(texture_size, pos, radius, strength, 1.3, subtexel=salt != _SALT["melanin"])


def moles(texture_size: int, seed: int, n: int) -> np.ndarray:
    """n moles anywhere on the face: discs 0.6-1.5 mm in radius, strength 0.75-0.95."""
    rng = np.random.default_rng([seed, _SALT["moles"]])
    pos = _inside_face(rng, n, 50.0, 75.0)
    radius = rng.uniform(0.6, 1.5, n)
    return _discs(texture_size, pos, radius, rng.uniform(0.75, 0.95, n), 1.5)


def blotches(texture_size: int, seed: int, n: int) -> np.ndarray:
    """n red blotches: soft discs 2-5 mm in radius, strength 0.4-0.9, anywhere on the face."""
    rng = np.random.default_rng([seed, _SALT["hemoglobin"]])
    pos = _inside_face(rng, n, 50.0, 75.0)
    radius = rng.uniform(2.0, 5.0, n)
    return _discs(texture_size, pos, radius, rng.uniform(0.4, 0.9, n), 10.0, soft=True)


def stubble(texture_size: int, seed: int, n: int) -> np.ndarray:
    """n stubble dots (radius 0.12-0.25 mm, strength 0.5-0.9) below the nose: jaw, chin, upper lip,
    clear of the lips."""
    rng = np.random.default_rng([seed, _SALT["stubble"]])
    cand = np.stack([rng.uniform(-60.0, 60.0, 6 * n), rng.uniform(-95.0, -32.0, 6 * n)], axis=1)
    lips = (cand[:, 0] / 19.0) ** 2 + ((cand[:, 1] + 50.5) / 10.0) ** 2 < 1.0
    on_face = (cand[:, 0] / 68.0) ** 2 + ((cand[:, 1] - 2.0) / 96.0) ** 2 < 0.85
    pos = cand[~lips & on_face][:n]
    radius = rng.uniform(0.12, 0.25, len(pos))
    return _discs(texture_size, pos, radius, rng.uniform(0.5, 0.9, len(pos)), 0.25)


def _strokes(t: int, start: np.ndarray, angle: np.ndarray, length: np.ndarray, half_width: np.ndarray,
             strength: np.ndarray) -> np.ndarray:
    """Thin strokes (n) from ``start`` (n, 2) mm in direction ``angle`` (rad), anti-aliased: a stroke
    thinner than a texel is drawn one texel wide and proportionally fainter (the same darkness in all)."""
    texel = FACE_WIDTH_MM / t
    width = np.maximum(half_width, 0.5 * texel)
    strength = strength * half_width / width
    d = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    mid = start + 0.5 * length[:, None] * d
    rr, cc, px, py = _windows(t, mid, float(0.5 * length.max() + width.max()))
    x, y = px - start[:, 0, None, None], py - start[:, 1, None, None]
    along = np.clip(x * d[:, 0, None, None] + y * d[:, 1, None, None], 0.0, length[:, None, None])
    dist = np.hypot(x - along * d[:, 0, None, None], y - along * d[:, 1, None, None])
    cover = np.clip((width[:, None, None] + 0.5 * texel - dist) / texel, 0.0, 1.0)
    return _composite(t, rr, cc, cover * strength[:, None, None])


def hairs(texture_size: int, seed: int, n: int) -> np.ndarray:
    """n dark hairs: seven in ten on the brows (3-7 mm, growing outward and a little up), the rest
    hanging from the lash lines (2-5 mm); 0.06-0.12 mm half-width."""
    rng = np.random.default_rng([seed, _SALT["hair"]])
    n_brow = int(round(0.7 * n))
    side = np.where(rng.uniform(0.0, 1.0, n) < 0.5, -1.0, 1.0)
    x = np.where(np.arange(n) < n_brow, rng.uniform(-16.0, 16.0, n), rng.uniform(-10.0, 10.0, n))
    brow_y = 29.0 - 0.012 * x * x + rng.uniform(-2.5, 2.5, n)
    lash_y = 10.0 - 0.02 * x * x
    start = np.stack([side * (x + 31.0), np.where(np.arange(n) < n_brow, brow_y, lash_y)], axis=1)
    brow_angle = rng.uniform(0.0, 0.6, n)  # outward (away from the nose) and up
    lash_angle = -0.5 * np.pi + rng.uniform(-0.45, 0.45, n)
    angle = np.where(np.arange(n) < n_brow, brow_angle, lash_angle)
    angle = np.where(side > 0, angle, np.pi - angle)  # mirrored on the face's other side
    length = np.where(np.arange(n) < n_brow, rng.uniform(3.0, 7.0, n), rng.uniform(2.0, 5.0, n))
    return _strokes(texture_size, start, angle, length, rng.uniform(0.06, 0.12, n), rng.uniform(0.6, 0.9, n))


def mask_level(kind: str) -> float:
    """The strength above which a texel is in a kind's mask."""
    return THIN_MASK_LEVEL if kind in ("hair", "stubble") else MASK_LEVEL


def mark_layers(texture_size: int, seed: int, marks: Marks) -> dict[str, np.ndarray]:
    """The strength map (T, T) of every kind ``marks`` asks for (kinds with count 0 are left out)."""
    makers = {
        "melanin": lambda n: freckles(texture_size, seed, n),
        "hemoglobin": lambda n: blotches(texture_size, seed, n),
        "grey": lambda n: freckles(texture_size, seed, n, salt=_SALT["grey"]),
        "moles": lambda n: moles(texture_size, seed, n),
        "hair": lambda n: hairs(texture_size, seed, n),
        "stubble": lambda n: stubble(texture_size, seed, n),
    }
    return {kind: makers[kind](getattr(marks, kind)) for kind in MARK_KINDS if getattr(marks, kind) > 0}


def apply_marks(albedo: np.ndarray, layers: dict[str, np.ndarray]) -> np.ndarray:
    """The albedo (T, T, 3) under every mark layer: multiplied by ``1 - strength * tint``."""
    for kind, strength in layers.items():
        albedo = albedo * (1.0 - strength[..., None] * np.array(MARK_TINT[kind]))
    return albedo
