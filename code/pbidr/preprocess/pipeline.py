"""``pbidr preprocess``: a raw textured mesh -> an IDR-format scan directory.

Writes ``image/NNN.png``, ``mask/NNN.png``, ``cameras.npz`` (world_mat_i = K[R|t] in world units,
scale_mat_i = normalised -> world), the coarse mesh (``mesh.obj`` + texture), ``views.png`` and
``meta.json``. The scan appears atomically: a failed run leaves an earlier scan untouched.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pbidr.version import __version__
from pbidr.detail.atlas import textured_from_vertex_colours
from pbidr.geometry.cameras import DEFAULT_MARGIN, Rig, bounding_sphere, cameras_npz_arrays, scale_matrix
from pbidr.io.load import find_mesh_in_dir, load_mesh
from pbidr.io.mesh import TexturedMesh
from pbidr.io.obj import write_obj
from pbidr.errors import PbidrError
from pbidr.preprocess.render import make_renderer
from pbidr.preprocess.units import MM_PER_UNIT, face_height, units_warning
from pbidr.utils.atomic import file_sha256, save_npz, write_json
from pbidr.utils.outputs import check_output, stage_output
from pbidr.utils.images import contact_sheet, write_png
from pbidr.utils.progress import progress_bar

SCAN_MESH = "mesh.obj"


@dataclass
class _Input:
    """The mesh as loaded and checked; ``warnings`` grows as later steps notice more, and all of them
    go to meta.json."""

    path: Path
    mesh: TexturedMesh
    warnings: list[str]
    face_height: float  # along rig.up, in the mesh's units


@dataclass
class _Normalisation:
    """The object's bounding sphere x ``margin``, which ``scale_mat`` maps the unit sphere onto."""

    center: np.ndarray
    radius: float
    margin: float
    scale_mat: np.ndarray

    def meta(self) -> dict:
        return {
            "center": self.center.tolist(),
            "radius": self.radius,
            "margin": self.margin,
            "scale_mat": self.scale_mat.tolist(),
            "note": "scale_mat maps the normalised unit sphere onto the object's bounding sphere x margin",
        }


@dataclass
class _Views:
    """What rendering the views left for the contact sheet and meta.json."""

    thumbs: list[np.ndarray]
    coverage: list[float]
    render_s: float
    write_s: float


def _load_checked(raw: str | Path, output: str | Path, rig: Rig, overwrite: bool, units: str | None) -> _Input:
    """Every argument checked, then the mesh, its load warnings (printed now) and its face height."""
    if units is not None and units not in MM_PER_UNIT:
        raise PbidrError(f"--units {units}: expected one of {', '.join(MM_PER_UNIT)}")
    rig.validate()
    check_output(output, "preprocess", overwrite)
    mesh_path = find_mesh_in_dir(raw)
    mesh = load_mesh(mesh_path)
    warnings = list(mesh.load_warnings)
    height = face_height(mesh.vertices, rig.up)
    if units is None and (note := units_warning(height)):
        warnings.append(note)
    for w in warnings:
        print(f"pbidr preprocess: warning: {w}", file=sys.stderr)
    return _Input(path=mesh_path, mesh=mesh, warnings=warnings, face_height=height)


def _normalisation(mesh: TexturedMesh, margin: float) -> _Normalisation:
    center, radius = bounding_sphere(mesh.vertices)
    return _Normalisation(center=center, radius=radius, margin=margin, scale_mat=scale_matrix(center, radius, margin))


def _render_views(tmp: Path, backend, cameras: list, progress: bool) -> _Views:
    """image/NNN.png and mask/NNN.png of every camera, numbered from 001."""
    (tmp / "image").mkdir()
    (tmp / "mask").mkdir()
    views = _Views(thumbs=[], coverage=[], render_s=0.0, write_s=0.0)
    bar = progress_bar(total=len(cameras), desc="render", unit="view", disable=not progress)
    for i, cam in enumerate(cameras):
        t1 = time.perf_counter()
        view = backend.render(cam)
        t2 = time.perf_counter()
        write_png(tmp / "image" / f"{i + 1:03d}.png", view.rgb)
        write_png(tmp / "mask" / f"{i + 1:03d}.png", view.mask.astype(np.uint8) * 255)
        views.render_s += t2 - t1
        views.write_s += time.perf_counter() - t2
        views.thumbs.append(view.rgb[::4, ::4] if cam.width >= 512 else view.rgb)
        views.coverage.append(float(view.mask.mean()))
        bar.update(1)
    bar.close()
    return views


def _write_scan_mesh(tmp: Path, mesh: TexturedMesh, warnings: list[str]) -> TexturedMesh:
    """The scan's mesh.obj: the input mesh, or for a vertex-coloured mesh without UVs one with an xatlas
    chart and its colours baked into a texture (the detail is a map on the UV chart; the views were
    rendered from the colours themselves)."""
    if not mesh.has_texture and mesh.uv is None and mesh.vertex_colors is not None:
        mesh = textured_from_vertex_colours(mesh)
        warnings.append("the mesh has no texture coordinates: the scan's mesh.obj has an xatlas chart and "
                        "its vertex colours baked into a 1024^2 texture")
    write_obj(tmp / SCAN_MESH, mesh)
    return mesh


def _write_views_sheet(tmp: Path, thumbs: list[np.ndarray], rig: Rig) -> None:
    """views.png: every view's thumbnail, labelled with its number, yaw and pitch."""
    per_row = int(np.ceil(np.sqrt(len(thumbs) * 1.5)))
    rows = [thumbs[i : i + per_row] for i in range(0, len(thumbs), per_row)]
    angles = rig.angles()
    labels = [[f"{i + j + 1:03d} y{angles[i + j][0]:+.0f} p{angles[i + j][1]:+.0f}" for j in range(len(r))]
              for i, r in zip(range(0, len(thumbs), per_row), rows)]
    write_png(tmp / "views.png", contact_sheet(rows, labels, cell=min(256, thumbs[0].shape[0])))


def _mesh_meta(tmp: Path, mesh: TexturedMesh) -> dict:
    """meta.json's record of the scan's mesh.obj (as written, so its hash is the file's)."""
    return {
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "textured": bool(mesh.has_texture),
        "vertex_colors": mesh.vertex_colors is not None,
        "texture_size": list(mesh.texture.shape[:2]) if mesh.texture is not None else None,
        "file": SCAN_MESH,
        "sha256": file_sha256(tmp / SCAN_MESH),
    }


def _scan_meta(tmp: Path, source: _Input, scan_mesh: TexturedMesh, frame: _Normalisation, rig: Rig, cameras: list,
               renderer_name: str, units: str | None, views: _Views, timings: dict) -> dict:
    """meta.json: where the scan came from, its frame, rig, units, renderer, warnings and timings."""
    return {
        "pbidr_version": __version__,
        "input": str(Path(source.path).resolve()),
        "mesh": _mesh_meta(tmp, scan_mesh),
        "normalisation": frame.meta(),
        "rig": dataclasses.asdict(rig) | {"angles_yaw_pitch_deg": rig.angles()},
        "units": {"unit": units or "mm", "declared": units is not None, "face_height": source.face_height,
                  "mm_per_unit": MM_PER_UNIT[units or "mm"]},
        "n_views": len(cameras),
        "image_size": [cameras[0].height, cameras[0].width],
        "renderer": renderer_name,
        "warnings": source.warnings,
        "mask_coverage": views.coverage,
        "timings": timings,
    }


def preprocess(
    raw: str | Path,
    output: str | Path,
    rig: Rig = Rig(),
    renderer: str = "embree",
    margin: float = DEFAULT_MARGIN,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    units: str | None = None,
) -> dict:
    """Render ``rig``'s views of the mesh found at ``raw`` into the scan directory ``output``.

    ``units`` (mm, cm or m) is the mesh's length unit, recorded in meta.json; None assumes millimetres
    and warns when the face is not 100-300 units tall. An existing scan is replaced only with
    ``overwrite``; any other non-empty folder is refused."""
    t0 = time.perf_counter()
    source = _load_checked(raw, output, rig, overwrite, units)
    timings = {"load_s": time.perf_counter() - t0}

    frame = _normalisation(source.mesh, margin)
    cameras = rig.cameras()
    backend = make_renderer(renderer, source.mesh, frame.scale_mat, device=device)

    with stage_output(Path(output), "preprocess", overwrite) as tmp:
        views = _render_views(tmp, backend, cameras, progress)
        save_npz(tmp / "cameras.npz", **cameras_npz_arrays(cameras, frame.scale_mat))
        scan_mesh = _write_scan_mesh(tmp, source.mesh, source.warnings)
        _write_views_sheet(tmp, views.thumbs, rig)
        timings.update(render_s=views.render_s, write_s=views.write_s, total_s=time.perf_counter() - t0)
        meta = _scan_meta(tmp, source, scan_mesh, frame, rig, cameras, backend.name, units, views, timings)
        write_json(tmp / "meta.json", meta)
    return meta
