"""The built-in sample: a procedural face whose fine detail is known exactly, under chosen conditions.

A coarse textured face mesh is what users bring; the method recovers the fine geometry implied by
the texture's shading. This module makes such an input with a ground truth. The face's geometry, its
detail by kind and its albedo are analytic (:mod:`pbidr.preprocess.face_model`), its marks by kind are
splatted per texel (:mod:`pbidr.preprocess.face_marks`), and the conditions (light, glossy lobe, marks,
detail, texture size, coarse misfit, renderer) come from :mod:`pbidr.preprocess.conditions`: named
presets, each knob documented, a seed drawing the rest.

The texture is albedo x shading of the *detailed* surface per texel, plus a grey glossy lobe when asked
(``renderer = analytic``), or what Blender's Cycles path tracer bakes of the detailed surface under area
lights and a sky (``renderer = cycles``), so the wrinkles appear in the shading although the coarse mesh
does not have them. Marks are in the albedo only; a method that turns them into geometry is wrong there.
Everything the method must not see is written beside the mesh as its truth: the detailed mesh and
displacements, the albedo, one mask per mark kind and (sample.json) the light and every condition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pbidr.io.mesh import TexturedMesh
from pbidr.io.obj import write_obj
from pbidr.preprocess.conditions import FaceConditions, Lighting, angles, apply_settings, conditions_for
from pbidr.preprocess.face_marks import MARK_KINDS
from pbidr.preprocess.face_model import (
    AMBIENT, BUMPS_WAVELENGTH, CROWS_FEET_LINES, DEFAULT_GRID, DEFAULT_TEXTURE_SIZE, DIFFUSE, FACE_HEIGHT_MM,
    FACE_WIDTH_MM, FOREHEAD_WAVELENGTH,
    LIGHT_DIRECTION, N_FRECKLES, NASOLABIAL_WIDTH, Face, coarse_normal, coarse_surface,
    displacement_uv, face_plane, face_region, grid_faces, texel_uv,
)
from pbidr.preprocess.face_texture import TexelFields, shade, texel_fields
from pbidr.utils.atomic import save_npy, write_json
from pbidr.utils.outputs import check_output, stage_output

__all__ = [  # the sample's geometry, re-exported: scoring, tests and benchmarks read it from here
    "AMBIENT", "DIFFUSE", "LIGHT_DIRECTION", "DEFAULT_GRID", "DEFAULT_TEXTURE_SIZE", "FACE_WIDTH_MM",
    "FACE_HEIGHT_MM", "N_FRECKLES", "Face", "FaceConditions", "coarse_normal", "coarse_surface", "displacement_uv",
    "face_plane", "face_region", "grid_faces", "texel_uv", "make_sample", "texel_fields", "shade", "TexelFields",
    "SampleInfo",
]


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
    "texture": ("mesh.png", "texture: albedo x shading of the detailed surface (+ a grey glossy lobe), or a Cycles "
                            "bake of it (sample.json: conditions.renderer)"),
    "gt_detailed": ("gt_detailed.obj", "ground-truth detailed mesh: mesh.obj's vertices moved by gt_displacement along the coarse vertex normals (same faces and UVs)"),
    "gt_displacement": ("gt_displacement.npy", "per-vertex displacement (V,) float64, mm along the coarse vertex normal"),
    "gt_displacement_uv": ("gt_displacement_uv.npy", "displacement (T, T) float32 in mm in the texture's layout (row 0 is v = 1)"),
    "albedo": ("albedo.png", "albedo alone, in the texture's layout"),
    "albedo_marks_uv": ("albedo_marks_uv.png", "8-bit mask, 255 on any mark (every kind): marks in the albedo only, not geometry"),
    "face_region_uv": ("face_region_uv.png", "8-bit mask, 255 on the inner face region used for scoring"),
    "info": ("sample.json", "this description"),
}
MARK_FILE = "marks_{}_uv.png"  # one mask per mark kind present


@dataclass
class _Sample:
    """The sample before it is written: the coarse textured mesh, the ground truth (the detailed mesh
    and its per-vertex displacement) and the per-texel fields behind the texture."""

    mesh: TexturedMesh
    detailed: TexturedMesh
    displacement: np.ndarray  # (V,) mm along the coarse vertex normals
    fields: TexelFields
    bounding_box_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    conditions: FaceConditions
    preset: str


def _checked_grid(grid: tuple[int, int] | None, texture_size: int) -> tuple[int, int]:
    nu, nv = grid if grid is not None else DEFAULT_GRID
    if nu < 2 or nv < 2 or texture_size < 8:
        raise ValueError(f"sample grid {nu}x{nv} / texture size {texture_size} too small")
    return nu, nv


def _texture(fields: TexelFields, face: Face) -> np.ndarray:
    """The texture (T, T, 3) uint8 of the conditions' renderer."""
    if face.conditions.renderer == "cycles":
        from pbidr.preprocess.cycles_face import cycles_texture

        return _to_uint8(cycles_texture(fields, face))
    return _to_uint8(fields.texture())


def _build_sample(nu: int, nv: int, seed: int, conditions: FaceConditions, preset: str) -> _Sample:
    """The coarse mesh on an (nu, nv) vertex grid whose UVs are the grid parameter (off the true surface
    by the misfit), textured with the true detailed surface's shading, and the truth: its vertices moved
    along the mesh's vertex normals by the detail."""
    face = Face(conditions, seed)
    gu, gv = np.meshgrid(np.linspace(0.0, 1.0, nu), np.linspace(0.0, 1.0, nv))
    uv = np.stack([gu.reshape(-1), gv.reshape(-1)], axis=1)
    vertices = face.coarse_surface(uv[:, 0], uv[:, 1])
    faces = grid_faces(nu, nv)

    fields = texel_fields(conditions.texture_size, seed, conditions)
    mesh = TexturedMesh(vertices, faces, uv=uv, face_uv=faces, texture=_texture(fields, face))

    disp = face.displacement(uv[:, 0], uv[:, 1])
    detailed = mesh.with_vertices(vertices + disp[:, None] * mesh.vertex_normals())
    bbox = (tuple(float(x) for x in vertices.min(0)), tuple(float(x) for x in vertices.max(0)))
    return _Sample(mesh=mesh, detailed=detailed, displacement=disp, fields=fields, bounding_box_mm=bbox,
                   conditions=conditions, preset=preset)


def _write_sample_files(tmp: Path, sample: _Sample) -> None:
    """The meshes, the truth's displacement and the UV images (everything but sample.json)."""
    write_obj(tmp / "mesh.obj", sample.mesh)
    write_obj(tmp / "gt_detailed.obj", sample.detailed, texture_name="mesh.png", write_texture=False)
    save_npy(tmp / "gt_displacement.npy", sample.displacement)
    save_npy(tmp / "gt_displacement_uv.npy", sample.fields.displacement.astype(np.float32))
    Image.fromarray(_to_uint8(sample.fields.albedo)).save(tmp / "albedo.png")
    Image.fromarray(sample.fields.marks.astype(np.uint8) * 255).save(tmp / "albedo_marks_uv.png")
    for kind, mask in sample.fields.mark_masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / MARK_FILE.format(kind))
    Image.fromarray(sample.fields.region.astype(np.uint8) * 255).save(tmp / "face_region_uv.png")


def _light_json(lighting: Lighting) -> dict:
    key = lighting.key_direction
    out = {"key_direction": list(key), "key_angle_deg": angles(key)[0], "key_azimuth_deg": angles(key)[1],
           "ambient": lighting.ambient, "diffuse": lighting.diffuse}
    if lighting.fill > 0:
        out.update(fill=lighting.fill, fill_direction=list(lighting.fill_direction))
    if lighting.specular > 0:
        out.update(specular=lighting.specular, exponent=lighting.exponent,
                   lobe="specular * max(0, n.h)^exponent, h = normalise(key + (0, 0, 1)), where n.key > 0")
    return out


def _sample_json(seed: int, grid: tuple[int, int], sample: _Sample) -> dict:
    """sample.json: how the sample was made, its conditions, its sizes and the truth's parameters."""
    nu, nv = grid
    disp = sample.displacement
    cond = sample.conditions
    files = {name: desc for name, desc in _FILES.values()}
    files.update({MARK_FILE.format(k): f"8-bit mask, 255 on the {k} marks" for k in sample.fields.mark_masks})
    return {
        "generator": "pbidr.preprocess.sample.make_sample",
        "seed": int(seed),
        "preset": sample.preset,
        "conditions": cond.to_dict(),
        "units": "mm",
        "front": [0.0, 0.0, 1.0],
        "up": [0.0, 1.0, 0.0],
        "grid": [nu, nv],
        "texture_size": cond.texture_size,
        "n_vertices": len(sample.mesh.vertices),
        "n_faces": len(sample.mesh.faces),
        "n_freckles": sample.fields.n_freckles,
        "marks": {k: getattr(cond.marks, k) for k in MARK_KINDS if getattr(cond.marks, k) > 0},
        "bounding_box_mm": sample.bounding_box_mm,
        "uv_convention": "OBJ: v = 0 is the bottom row of every *_uv image and of mesh.png",
        "face_plane_mm": "px = (u - 0.5) * 150, py = (v - 0.5) * 200",
        "light_direction": list(cond.lighting.key_direction),
        "lighting": _light_json(cond.lighting),
        "shading": f"{cond.lighting.ambient} + {cond.lighting.diffuse} * max(0, n.l), n the detailed surface's "
                   "normal per texel" + (" (+ fill, + lobe: see lighting)" if cond.lighting.fill > 0
                                          or cond.lighting.specular > 0 else ""),
        "displacement": {
            "function": "pbidr.preprocess.face_model.Face(conditions, seed).displacement(u, v)",
            "coarse_surface": "pbidr.preprocess.face_model.Face(conditions, seed).coarse_surface(u, v) (the given "
                              "mesh: the true coarse surface plus misfit_mm's field)",
            "forehead_wrinkles": {"amplitude_mm": cond.detail.forehead, "wavelength_mm": FOREHEAD_WAVELENGTH},
            "crows_feet": {"amplitude_mm": cond.detail.crows_feet, "lines_per_turn": CROWS_FEET_LINES},
            "nasolabial_folds": {"depth_mm": cond.detail.nasolabial, "width_sigma_mm": NASOLABIAL_WIDTH},
            "fine_bumps": {"rms_mm": cond.detail.bumps, "wavelength_mm": list(BUMPS_WAVELENGTH)},
            "range_mm": [float(disp.min()), float(disp.max())],
        },
        "files": files,
    }


def _sample_info(output_dir: Path, seed: int, grid: tuple[int, int], sample: _Sample,
                 start: float) -> SampleInfo:
    files = {role: output_dir / name for role, (name, _) in _FILES.items()}
    files["mtl"] = output_dir / "mesh.mtl"
    files.update({f"marks_{k}": output_dir / MARK_FILE.format(k) for k in sample.fields.mark_masks})
    return SampleInfo(
        output_dir=output_dir,
        seed=int(seed),
        grid=grid,
        texture_size=sample.conditions.texture_size,
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
    texture_size: int | None = None,
    overwrite: bool = False,
    conditions: FaceConditions | None = None,
    preset: str = "classic",
) -> SampleInfo:
    """Write the procedural face sample into ``output_dir`` (replaced atomically, as a whole).

    ``grid`` is (vertices along u, vertices along v), default ``DEFAULT_GRID``; ``conditions`` default to
    the ``preset``'s (:mod:`pbidr.preprocess.conditions`; ``classic``: the first sample), ``texture_size``
    (when given) overrides theirs. The same conditions and seed give byte-identical files. An existing
    sample folder is replaced only with ``overwrite`` (``pbidr.utils.outputs``); any other non-empty
    folder is refused.
    """
    start = time.perf_counter()
    cond = conditions_for(preset) if conditions is None else conditions
    if texture_size is not None:
        cond = apply_settings(cond, {"texture_size": texture_size})
    nu, nv = _checked_grid(grid, cond.texture_size)
    output_dir = Path(output_dir)
    check_output(output_dir, "sample", overwrite)

    sample = _build_sample(nu, nv, seed, cond, preset)
    with stage_output(output_dir, "sample", overwrite, seed=int(seed)) as tmp:
        _write_sample_files(tmp, sample)
        write_json(tmp / "sample.json", _sample_json(seed, (nu, nv), sample))
    return _sample_info(output_dir, seed, (nu, nv), sample, start)
