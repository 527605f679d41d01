"""A face texture made by a real path tracer: Blender Cycles bakes the shading of a detailed mesh
into its UV layout, so a test face's texture is no longer our own image model (albedo x Lambert).

What the bake holds, per texel, in the albedo's linear units (no sRGB, Filmic or AgX transform: a
float bake buffer and Non-Color images): albedo x irradiance from a key and a fill disk light and a
sky, with cast shadows, occlusion and interreflection (up to 3 diffuse bounces), plus the glossy
lobe of a dielectric skin (Principled BSDF, IOR 1.4), optionally subsurface scattering.

Units of light. A strength is the value that a white Lambertian surface facing that light alone,
at the mesh's bounding-box centre, bakes to (measured: within 0.1%, see test_cycles.py). The sky
has radiance ``sky_strength * (1 + sky_gradient * d_y)`` in direction d; a white surface open to a
uniform sky bakes to sky_strength. Lights are disks of ``*_size_mm`` at ``*_distance_mm`` from the
centre along their direction (the size sets the penumbra; the distance gives a real falloff over
the face's depth).

Exposure. The raw bake is multiplied by ``exposure`` and clipped to [0, 1], as a photograph
saturates. By default the exposure is chosen per bake from the shading, raw / albedo (channel sums,
the albedo resampled to the bake's grid): its 95th percentile over the baked texels is set to 1, so
the best-lit 5% of the skin shows at or a little above its albedo (skin of albedo 0.8 at 0.8-0.9),
as in sample.py's Lambert texture whose shading peaks at 1, and only glossy highlights on bright
skin clip. A fixed exposure (e.g. 1.0: the raw units) keeps several bakes comparable.
``CyclesBake`` returns the exposure used and the fraction of texels clipped.

Glossy view direction. Cycles' Combined bake looks at each texel along its smooth normal by default
(measured: the highlight sits where the normal points at the light). We bake with view_from =
ACTIVE_CAMERA and an orthographic camera looking down -z, so the glossy term is as a frontal camera
(+z) sees it, as in a texture made from a frontal photo (measured on a glossy dome: the highlight
sits where the normal is the half vector of +z and the light). Cycles keeps that view direction at
least 0.2 (cosine) above the smooth normal, so texels turned more than ~78 degrees from +z see the
highlight from a direction nudged toward their normal, and back-facing texels from their normal.

Empty texels (no triangle's UV covers the texel centre) get the value of the nearest baked texel
(a full nearest-neighbour fill, so bilinear lookups at chart edges do not pull in black);
``CyclesBake.covered`` says which texels were baked.

Blender runs in a subprocess (``cycles_client.py``): bpy bundles libraries that must not share a
process with torch. Arrays travel through temporary files.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

from pbidr.errors import PbidrError

CLIENT = Path(__file__).with_name("cycles_client.py")
INSTALL_HINT = "pip install --no-deps -r requirements-blender.txt (bpy 5.0.1, Python 3.11)"
DEFAULT_SAMPLES = 64
EXPOSURE_PERCENTILE = 95.0


def _unit(direction) -> tuple[float, float, float]:
    d = np.asarray(direction, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(d)) if d.shape == (3,) and np.all(np.isfinite(d)) else 0.0
    if norm < 1e-9:
        raise PbidrError(f"light direction {direction!r}: need a non-zero 3-vector")
    return tuple(float(c) for c in d / norm)


@dataclass(frozen=True)
class CyclesLighting:
    """Key and fill disk lights and a sky. Directions: toward the light, world frame (mm, the face
    looks +z, +y up; normalised here). Strengths in the bake's units (see the module doc); a
    strength of 0 leaves that light out. The default is a studio key at the upper right (viewer's
    right, +x), a soft fill at the left and a dim uniform sky."""

    key_direction: tuple[float, float, float] = (0.45, 0.45, 0.77)
    key_strength: float = 0.75
    key_size_mm: float = 300.0
    fill_direction: tuple[float, float, float] = (-0.7, 0.05, 0.7)
    fill_strength: float = 0.2
    fill_size_mm: float = 800.0
    sky_strength: float = 0.2
    sky_gradient: float = 0.0
    key_distance_mm: float = 1000.0
    fill_distance_mm: float = 1000.0

    def __post_init__(self):
        object.__setattr__(self, "key_direction", _unit(self.key_direction))
        object.__setattr__(self, "fill_direction", _unit(self.fill_direction))
        for name in ("key_strength", "fill_strength", "sky_strength"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0.0:
                raise PbidrError(f"CyclesLighting.{name} = {getattr(self, name)}: must be >= 0")
        for name in ("key_size_mm", "fill_size_mm", "key_distance_mm", "fill_distance_mm"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0.0:
                raise PbidrError(f"CyclesLighting.{name} = {getattr(self, name)}: must be > 0")
        if not -1.0 <= self.sky_gradient <= 1.0:
            raise PbidrError(f"CyclesLighting.sky_gradient = {self.sky_gradient}: must be in [-1, 1]")


@dataclass(frozen=True)
class CyclesSkin:
    """Principled BSDF skin. ``roughness`` in [0, 1] (GGX, Blender's convention); ``specular`` scales
    the Fresnel reflectance of a dielectric of IOR 1.4 (1: F0 = 2.8%, plausible skin; 0: matte; up
    to 2 for oily skin); ``subsurface`` in [0, 1] weighs random-walk subsurface scattering with
    skin's mean free paths (3.67, 1.37, 0.68) mm in R, G, B (off by default: about 5x slower, and on
    an open shell such as a face mask the walks that leave through the missing back lose light,
    about 10% on a flat sheet; red light then bleeds about 1 mm into shadows)."""

    roughness: float = 0.4
    specular: float = 1.0
    subsurface: float = 0.0

    def __post_init__(self):
        for name, lo, hi in (("roughness", 0.0, 1.0), ("specular", 0.0, 2.0), ("subsurface", 0.0, 1.0)):
            value = getattr(self, name)
            if not (np.isfinite(value) and lo <= value <= hi):
                raise PbidrError(f"CyclesSkin.{name} = {value}: must be in [{lo}, {hi}]")


@dataclass
class CyclesBake:
    """One baked texture (H, W, 3) float32 in [0, 1] (raw x exposure, clipped, empty texels filled);
    ``raw`` (H, W, 3) float32, the bake in the lights' units before exposure and clipping (0 where
    not covered); the texels the bake covered (H, W) bool; the exposure applied; the fraction of
    covered texels that clipped in some channel; timings (Blender's setup, this bake, the whole
    subprocess) and Blender's version."""

    texture: np.ndarray
    raw: np.ndarray
    covered: np.ndarray
    exposure: float
    clipped_fraction: float
    seconds: dict = field(default_factory=dict)
    blender_version: str = ""


@dataclass
class _MeshInput:
    vertices: np.ndarray  # (V, 3) float64, mm
    faces: np.ndarray  # (F, 3) int64
    corner_uv: np.ndarray  # (F, 3, 2) float64, OBJ convention
    albedo: np.ndarray  # (H, W, 3) float32 in [0, 1]
    bump_mm: np.ndarray | None  # (H', W') float32, mm along the normal


def path_traced_texture(vertices, faces, uv, face_uv, albedo, size, lighting: CyclesLighting,
                        skin: CyclesSkin, samples: int = DEFAULT_SAMPLES, seed: int = 0, bump_mm=None,
                        threads: int | None = None, exposure: float | None = None) -> np.ndarray:
    """The texture (H, W, 3) float32 of a detailed mesh baked by Cycles (see the module doc).

    vertices (V, 3) mm; faces (F, 3); uv (T, 2) and face_uv (F, 3), OBJ convention (v = 0 is the
    image bottom); albedo (H', W', 3) in [0, 1] in the UV layout; size: int or (H, W) of the bake;
    bump_mm (H'', W''): a displacement in mm along the normal, applied as a bump on the shading
    normal only (detail finer than the mesh resolves); threads: default all cores.
    """
    return bake_textures(vertices, faces, uv, face_uv, albedo, size, [(lighting, skin)], samples=samples,
                         seed=seed, bump_mm=bump_mm, threads=threads, exposure=exposure)[0].texture


def bake_textures(vertices, faces, uv, face_uv, albedo, size,
                  conditions: Sequence[tuple[CyclesLighting, CyclesSkin]], samples: int = DEFAULT_SAMPLES,
                  seed: int = 0, bump_mm=None, threads: int | None = None,
                  exposure: float | None = None) -> list[CyclesBake]:
    """Several (lighting, skin) conditions of one mesh in one Blender process (the scene is built
    once); arguments as ``path_traced_texture``. Returns one ``CyclesBake`` per condition."""
    mesh = _checked_mesh(vertices, faces, uv, face_uv, albedo, bump_mm)
    h, w = _checked_size(size)
    if int(samples) < 1:
        raise PbidrError(f"samples = {samples}: must be >= 1")
    if not 0 <= int(seed) < 2**31:
        raise PbidrError(f"seed = {seed}: must be in [0, 2^31)")  # Cycles' seed is a non-negative int
    if exposure is not None and not (np.isfinite(exposure) and exposure > 0.0):
        raise PbidrError(f"exposure = {exposure}: must be > 0 (or None for automatic)")
    if not conditions:
        raise PbidrError("bake_textures: no (lighting, skin) condition given")
    job = {"size": [h, w], "samples": int(samples), "seed": int(seed), "threads": _threads(threads),
           "conditions": [{"lighting": dataclasses.asdict(light), "skin": dataclasses.asdict(sk)}
                          for light, sk in conditions]}
    raw, info = _run_blender(mesh, job)
    albedo_on_grid = _resampled(mesh.albedo, h, w)
    bakes = []
    for r, bake_s in zip(raw, info["times"]["bake_s"]):
        seconds = {"setup_s": info["times"]["setup_s"], "bake_s": bake_s, "process_s": info["process_s"]}
        bakes.append(_finish(r, albedo_on_grid, exposure, seconds, info["version"]))
    return bakes


def _checked_mesh(vertices, faces, uv, face_uv, albedo, bump_mm) -> _MeshInput:
    """Shapes, ranges and finiteness, each failure one line naming the array."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    uv = np.asarray(uv, dtype=np.float64)
    face_uv = np.asarray(face_uv)
    albedo = np.asarray(albedo, dtype=np.float32)
    checks = [
        (vertices.ndim == 2 and vertices.shape[1] == 3, f"vertices {vertices.shape}: need (V, 3)"),
        (faces.ndim == 2 and faces.shape[1] == 3 and len(faces) >= 1, f"faces {faces.shape}: need (F, 3)"),
        (uv.ndim == 2 and uv.shape[1] == 2, f"uv {uv.shape}: need (T, 2)"),
        (face_uv.shape == faces.shape, f"face_uv {face_uv.shape}: need the shape of faces {faces.shape}"),
        (albedo.ndim == 3 and albedo.shape[2] == 3, f"albedo {albedo.shape}: need (H, W, 3)"),
    ]
    for ok, message in checks:
        if not ok:
            raise PbidrError(message)
    if faces.min() < 0 or faces.max() >= len(vertices) or face_uv.min() < 0 or face_uv.max() >= len(uv):
        raise PbidrError("faces / face_uv: an index is out of range")
    for name, array in (("vertices", vertices), ("uv", uv), ("albedo", albedo)):
        if not np.all(np.isfinite(array)):
            raise PbidrError(f"{name}: holds NaN or infinite values")
    if albedo.min() < 0.0 or albedo.max() > 1.0:
        raise PbidrError(f"albedo: values in [{albedo.min():.3g}, {albedo.max():.3g}], need [0, 1]")
    bump = None
    if bump_mm is not None:
        bump = np.asarray(bump_mm, dtype=np.float32)
        if bump.ndim != 2 or not np.all(np.isfinite(bump)):
            raise PbidrError(f"bump_mm {bump.shape}: need a finite (H, W) map in mm")
    return _MeshInput(vertices, faces.astype(np.int64), uv[face_uv], albedo, bump)


def _checked_size(size) -> tuple[int, int]:
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise PbidrError(f"size {size!r}: need a positive int or (H, W)")
    return int(h), int(w)


def _resampled(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """``image`` (H', W', C) on an (h, w) grid: area average when shrinking, bilinear otherwise."""
    if image.shape[:2] == (h, w):
        return image
    shrink = h < image.shape[0] or w < image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _threads(threads: int | None) -> int:
    if threads is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if int(threads) < 1:
        raise PbidrError(f"threads = {threads}: must be >= 1")
    return int(threads)


def _run_blender(mesh: _MeshInput, job: dict) -> tuple[np.ndarray, dict]:
    """Run cycles_client.py on the mesh and job; the raw bakes (N, H, W, 4) and the client's info."""
    if importlib.util.find_spec("bpy") is None:  # find_spec: importing bpy here is what we avoid
        raise PbidrError(f"Cycles bake needs Blender's Python module (bpy), not installed: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="pbidr-cycles-") as tmp:
        inputs, outputs = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        extra = {} if mesh.bump_mm is None else {"bump": mesh.bump_mm}
        np.savez(inputs, vertices=mesh.vertices, faces=mesh.faces, corner_uv=mesh.corner_uv,
                 albedo=mesh.albedo, job=json.dumps(job), **extra)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(CLIENT), str(inputs), str(outputs)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0 or not outputs.is_file():
            tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-4:])
            raise PbidrError(f"Blender's Cycles bake failed (exit code {proc.returncode}): "
                             f"{tail or 'no stderr'}")
        with np.load(outputs) as result:
            raw, info = result["bakes"], json.loads(str(result["info"]))
    info["process_s"] = time.perf_counter() - t0
    return raw, info


def fill_empty_texels(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """``image`` (H, W, C) with every texel outside ``covered`` set to its nearest covered texel."""
    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


def auto_exposure(raw: np.ndarray, albedo: np.ndarray, covered: np.ndarray) -> float:
    """The scale that puts the 95th percentile of the shading raw / albedo (channel sums) of the
    covered texels at 1; texels of near-black albedo, whose ratio is noise, do not count."""
    raw_sum, albedo_sum = raw.sum(axis=2), albedo.sum(axis=2)
    usable = covered & (albedo_sum > 0.05)
    if not usable.any():
        return 1.0
    level = float(np.percentile(raw_sum[usable] / albedo_sum[usable], EXPOSURE_PERCENTILE))
    return 1.0 / level if level > 0.0 else 1.0


def _finish(raw: np.ndarray, albedo: np.ndarray, exposure: float | None, seconds: dict,
            version: str) -> CyclesBake:
    """Raw RGBA bake (H, W, 4) and the albedo on its grid -> the exposed, clipped, filled texture."""
    covered = raw[..., 3] > 0.5  # the target was cleared to alpha 0; Cycles writes alpha 1 where it bakes
    rgb = np.maximum(raw[..., :3], 0.0)
    scale = auto_exposure(rgb, albedo, covered) if exposure is None else float(exposure)
    exposed = rgb * scale
    clipped = float((exposed[covered] > 1.0).any(axis=1).mean()) if covered.any() else 0.0
    texture = fill_empty_texels(np.clip(exposed, 0.0, 1.0), covered).astype(np.float32)
    raw_rgb = np.where(covered[..., None], rgb, 0.0).astype(np.float32)
    return CyclesBake(texture=texture, raw=raw_rgb, covered=covered, exposure=scale, clipped_fraction=clipped,
                      seconds=seconds, blender_version=version)
