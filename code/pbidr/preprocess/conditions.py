"""The conditions of a procedural face: its light, glossy lobe, marks by kind, detail by kind, texture
size, coarse-mesh misfit and renderer; named presets give the benchmark matrix its conditions.

A face is ``(conditions, seed)``: the conditions say *what kinds* of light, marks and detail it has and
how strong; the seed draws *where* (freckle and pore positions, wrinkle patches, folds, misfit blobs).
``pbidr sample --preset NAME --set KEY=VALUE`` picks them; ``pbidr sample --list`` prints every knob
with its doc and every preset. The defaults are the classic sample (the project's first generator), which
stays byte-identical.

Directions are given as two angles, as a photographer would: ``angle_deg`` between the light and the
face's front (+z; 0 frontal, 60 grazing) and ``azimuth_deg`` in the image plane (0 from the viewer's
right, +x; 90 from above, +y; 180 from the left).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from pbidr.errors import PbidrError

# The classic sample's light: in front of the face, above it and to the viewer's left (34.8 degrees
# from the front, azimuth 127.9 degrees).
CLASSIC_LIGHT = tuple(float(c) for c in np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82]))
RENDERERS = ("analytic", "cycles")


def direction(angle_deg: float, azimuth_deg: float) -> tuple[float, float, float]:
    """Unit vector toward a light ``angle_deg`` from the front (+z), at ``azimuth_deg`` in the image plane."""
    a, z = math.radians(angle_deg), math.radians(azimuth_deg)
    return (math.sin(a) * math.cos(z), math.sin(a) * math.sin(z), math.cos(a))


def angles(d) -> tuple[float, float]:
    """(angle_deg, azimuth_deg) of a unit direction: the inverse of :func:`direction`."""
    d = np.asarray(d, dtype=np.float64)
    return float(np.degrees(np.arccos(np.clip(d[2], -1, 1)))), float(np.degrees(np.arctan2(d[1], d[0])) % 360.0)


def _knob(default, doc: str, lo: float | None = None, hi: float | None = None, choices: tuple | None = None):
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi, "choices": choices})


@dataclass(frozen=True)
class Lighting:
    """The light the texture was made under (the method never sees it; the benchmark's diagnostics may)."""

    angle_deg: float = _knob(-1.0, "key light's angle from the face's front (0 frontal .. 60 grazing; "
                                   "-1: the classic sample's light, 34.8 deg upper left)", -1.0, 89.0)
    azimuth_deg: float = _knob(0.0, "key light's azimuth in the image plane (0 right, 90 above, 180 left)",
                               -360.0, 360.0)
    ambient: float = _knob(0.35, "uniform ambient light (cycles: a sky, which creases occlude)", 0.0, 2.0)
    diffuse: float = _knob(0.65, "key light's strength (Lambert)", 0.0, 2.0)
    fill: float = _knob(0.0, "a second, soft diffuse light's strength (0: none)", 0.0, 2.0)
    fill_angle_deg: float = _knob(40.0, "the fill light's angle from the front", 0.0, 89.0)
    fill_azimuth_deg: float = _knob(-1.0, "the fill light's azimuth (-1: opposite the key)", -1.0, 360.0)
    specular: float = _knob(0.0, "grey Blinn-Phong lobe's strength (glossy skin; 0: matte)", 0.0, 2.0)
    exponent: float = _knob(20.0, "the lobe's exponent (larger: a smaller, sharper highlight)", 1.0, 1000.0)
    key_size_mm: float = _knob(300.0, "cycles: the key's area-light size at 1 m (its penumbra)", 1.0, 2000.0)

    @property
    def key_direction(self) -> tuple[float, float, float]:
        return CLASSIC_LIGHT if self.angle_deg < 0 else direction(self.angle_deg, self.azimuth_deg)

    @property
    def fill_direction(self) -> tuple[float, float, float]:
        az = self.fill_azimuth_deg
        if az < 0:
            az = angles(self.key_direction)[1] + 180.0
        return direction(self.fill_angle_deg, az)


@dataclass(frozen=True)
class Marks:
    """Marks in the albedo only (never geometry), by kind; each kind gets its own mask."""

    melanin: int = _knob(300, "brown freckles (colour and intensity change together)", 0, 5000)
    hemoglobin: int = _knob(0, "red blotches, 2-5 mm (redness)", 0, 500)
    grey: int = _knob(0, "grey freckles: darker, no colour change", 0, 5000)
    moles: int = _knob(0, "moles: 1-3 mm, dark, nearly colourless", 0, 200)
    hair: int = _knob(0, "dark grey hairs over the brows and along the lash lines (count)", 0, 2000)
    stubble: int = _knob(0, "dark stubble dots on the chin, jaw and upper lip (count)", 0, 20000)


@dataclass(frozen=True)
class Detail:
    """The true relief (mm along the coarse normal), by kind."""

    forehead: float = _knob(0.55, "forehead wrinkles' amplitude (10 mm spacing)", 0.0, 3.0)
    crows_feet: float = _knob(0.35, "crow's feet's amplitude", 0.0, 3.0)
    nasolabial: float = _knob(1.5, "nasolabial folds' depth", 0.0, 5.0)
    bumps: float = _knob(0.025, "fine bumps' RMS (2-3 mm waves)", 0.0, 1.0)
    pores: float = _knob(0.0, "pores' depth (0.5-1.5 mm across, mostly pits; 0: none)", 0.0, 0.5)
    wrinkles: int = _knob(0, "extra wrinkle patches (2-8 mm spacing, any orientation)", 0, 40)
    folds: int = _knob(0, "broad folds (5-15 mm wide, 0.4-1.2 mm deep)", 0, 20)


@dataclass(frozen=True)
class FaceConditions:
    """Everything about a procedural face but its seed."""

    lighting: Lighting = field(default_factory=Lighting)
    marks: Marks = field(default_factory=Marks)
    detail: Detail = field(default_factory=Detail)
    texture_size: int = _knob(1024, "texture side (texels; 512-2048 for the matrix)", 8, 8192)
    misfit_mm: float = _knob(0.0, "the coarse mesh is off the truth by a smooth field of up to this (mm)", 0.0, 5.0)
    renderer: str = _knob("analytic", "analytic (albedo x Lambert + lobe, per texel) or cycles (Blender path "
                                      "tracer: area lights, shadows, interreflection)", choices=RENDERERS)
    cycles_samples: int = _knob(32, "cycles: samples per texel (32: about 1.4 % noise)", 1, 4096)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict | None) -> "FaceConditions":
        """The conditions a sample.json recorded (missing keys: the defaults, so older samples still load)."""
        return apply_settings(FaceConditions(), _flatten(data or {}))


BLOCKS = {"lighting": Lighting, "marks": Marks, "detail": Detail}
ALIASES = {"light": "lighting", "mark": "marks"}

# Presets: the conditions of the benchmark matrix. Each is a set of knobs over the defaults; a seed draws
# the rest. The names say what each condition tests.
PRESETS: dict[str, dict[str, object]] = {
    "classic": {},
    "frontal": {"lighting.angle_deg": 12.0, "lighting.azimuth_deg": 70.0},
    "grazing": {"lighting.angle_deg": 60.0, "lighting.azimuth_deg": 10.0},
    "below": {"lighting.angle_deg": 45.0, "lighting.azimuth_deg": 250.0},
    "glossy": {"lighting.angle_deg": 40.0, "lighting.azimuth_deg": 45.0, "lighting.specular": 0.25,
               "lighting.exponent": 16.0},
    "glossy-sharp": {"lighting.specular": 0.5, "lighting.exponent": 80.0},
    "soft-fill": {"lighting.angle_deg": 45.0, "lighting.azimuth_deg": 30.0, "lighting.ambient": 0.45,
                  "lighting.diffuse": 0.5, "lighting.fill": 0.3},
    "grey-marks": {"marks.grey": 300, "marks.moles": 8},
    "hair": {"marks.hair": 600, "marks.stubble": 3000},
    "red-marks": {"marks.hemoglobin": 40},
    "pores": {"detail.pores": 0.06},
    "wrinkles": {"detail.wrinkles": 8},
    "folds": {"detail.folds": 5},
    "misfit": {"misfit_mm": 2.0},
    "texture-512": {"texture_size": 512},
    "texture-2048": {"texture_size": 2048},
    # the first face of issue 24: another generator, as a new user would make one
    "new-user": {"lighting.angle_deg": 45.0, "lighting.azimuth_deg": 40.0, "lighting.specular": 0.3,
                 "lighting.exponent": 20.0, "marks.melanin": 0, "marks.grey": 300},
    "frontal-glossy-grey": {"lighting.angle_deg": 12.0, "lighting.azimuth_deg": 70.0, "lighting.specular": 0.3,
                            "lighting.exponent": 20.0, "marks.melanin": 0, "marks.grey": 300},
    "everything": {"lighting.angle_deg": 35.0, "lighting.azimuth_deg": 30.0, "lighting.specular": 0.2,
                   "lighting.exponent": 30.0, "lighting.fill": 0.15, "marks.grey": 150, "marks.moles": 6,
                   "marks.hair": 400, "marks.hemoglobin": 20, "detail.pores": 0.05, "detail.wrinkles": 5,
                   "detail.folds": 3, "misfit_mm": 1.5},
    # path traced (Blender Cycles): soft key + fill + sky, shadows, interreflection, glossy skin; brown
    # freckles, moles, hair-streaked brows, pores
    "cycles": {"renderer": "cycles", "lighting.angle_deg": 40.0, "lighting.azimuth_deg": 35.0,
               "lighting.ambient": 0.25, "lighting.fill": 0.25, "lighting.specular": 0.35, "lighting.exponent": 60.0,
               "marks.moles": 6, "marks.hair": 500, "detail.pores": 0.05},
    "cycles-misfit": {"renderer": "cycles", "lighting.angle_deg": 40.0, "lighting.azimuth_deg": 35.0,
                      "lighting.ambient": 0.25, "lighting.fill": 0.25, "lighting.specular": 0.35,
                      "lighting.exponent": 60.0, "marks.moles": 6, "marks.hair": 500, "detail.pores": 0.05,
                      "misfit_mm": 1.5},
}


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _coerce(key: str, f, value):
    """``value`` (a string from the command line, or a JSON value) as field ``f``'s type, range-checked."""
    kind = type(f.default)
    try:
        if kind is bool:
            v = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        elif kind is int:
            v = int(float(value)) if float(value) == int(float(value)) else None
            if v is None:
                raise ValueError
        elif kind is float:
            v = float(value)
            if not math.isfinite(v):
                raise ValueError
        else:
            v = str(value)
    except (TypeError, ValueError):
        what = {int: "an integer", float: "a finite number", bool: "true or false"}.get(kind, "a string")
        raise PbidrError(f"{key}={value!r}: expected {what}") from None
    meta = f.metadata
    if meta.get("choices") and v not in meta["choices"]:
        raise PbidrError(f"{key}={v!r}: must be one of {', '.join(meta['choices'])}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if meta.get("lo") is not None and v < meta["lo"] or meta.get("hi") is not None and v > meta["hi"]:
            raise PbidrError(f"{key}={v}: out of range [{meta['lo']:g}, {meta['hi']:g}]")
    return v


def _field(cls, name: str, key: str):
    for f in fields(cls):
        if f.name == name and "doc" in f.metadata:
            return f
    names = [f.name for f in fields(cls) if "doc" in f.metadata]
    near = [n for n in names if n.startswith(name[:3])] or names
    raise PbidrError(f"{key}: no such condition (did you mean {', '.join(near[:4])}? see `pbidr sample --list`)")


def apply_settings(cond: FaceConditions, settings: dict[str, object]) -> FaceConditions:
    """``cond`` with the dotted ``settings`` (``lighting.angle_deg``: 60, ``texture_size``: 512, ...) applied."""
    blocks = {name: getattr(cond, name) for name in BLOCKS}
    top = {}
    for key, value in settings.items():
        head, _, rest = key.partition(".")
        head = ALIASES.get(head, head)
        if rest:
            if head not in BLOCKS:
                raise PbidrError(f"{key}: no such condition block (lighting, marks, detail)")
            f = _field(BLOCKS[head], rest, key)
            blocks[head] = replace(blocks[head], **{rest: _coerce(key, f, value)})
        else:
            top[head] = _coerce(key, _field(FaceConditions, head, key), value)
    return replace(cond, **blocks, **top)


def parse_settings(items: list[str]) -> dict[str, str]:
    """``["lighting.angle_deg=60", ...]`` -> {key: value}; one-line errors for malformed items."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PbidrError(f"--set {item!r}: expected KEY=VALUE (e.g. lighting.angle_deg=60)")
        out[key.strip()] = value.strip()
    return out


def conditions_for(preset: str = "classic", settings: dict[str, object] | None = None,
                   texture_size: int | None = None) -> FaceConditions:
    """The conditions of ``preset`` with ``settings`` on top (and ``texture_size`` when given)."""
    if preset not in PRESETS:
        raise PbidrError(f"--preset {preset!r}: unknown (one of {', '.join(PRESETS)})")
    cond = apply_settings(FaceConditions(), PRESETS[preset])
    if settings:
        cond = apply_settings(cond, settings)
    if texture_size is not None:
        cond = apply_settings(cond, {"texture_size": texture_size})
    return cond


def describe() -> str:
    """Every knob with its default and doc, then every preset: ``pbidr sample --list``."""
    lines = ["Condition knobs (pbidr sample --set KEY=VALUE):"]
    for prefix, cls in (("", FaceConditions), *((f"{n}.", c) for n, c in BLOCKS.items())):
        for f in fields(cls):
            if "doc" in f.metadata:
                lines.append(f"  {prefix}{f.name} = {f.default!r}: {f.metadata['doc']}")
    lines.append("Presets (pbidr sample --preset NAME):")
    for name, knobs in PRESETS.items():
        body = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "the classic sample (defaults)"
        lines.append(f"  {name}: {body}")
    return "\n".join(lines)
