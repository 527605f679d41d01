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

from pbidr import __version__
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
class _Views:
    """What rendering the views left for the contact sheet and meta.json."""

    thumbs: list[np.ndarray]
    coverage: list[float]
    render_s: float
    write_s: float


def _load_checked(raw: str | Path, output: str | Path, rig: Rig, overwrite: bool, units: str | None
                  ) -> tuple[Path, TexturedMesh, list[str], float]:
    """Every argument checked, then the mesh: its path, the mesh, the load warnings (printed now) and the
    face's height along ``rig.up``."""
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
    return mesh_path, mesh, warnings, height


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
    mesh_path, mesh, warnings, height = _load_checked(raw, output, rig, overwrite, units)
    timings = {"load_s": time.perf_counter() - t0}

    center, radius = bounding_sphere(mesh.vertices)
    scale_mat = scale_matrix(center, radius, margin)
    cameras = rig.cameras()
    backend = make_renderer(renderer, mesh, scale_mat, device=device)

    with stage_output(Path(output), "preprocess", overwrite) as tmp:
        views = _render_views(tmp, backend, cameras, progress)
        save_npz(tmp / "cameras.npz", **cameras_npz_arrays(cameras, scale_mat))
        mesh = _write_scan_mesh(tmp, mesh, warnings)
        _write_views_sheet(tmp, views.thumbs, rig)
        timings.update(render_s=views.render_s, write_s=views.write_s, total_s=time.perf_counter() - t0)
        meta = {
            "pbidr_version": __version__,
            "input": str(Path(mesh_path).resolve()),
            "mesh": {
                "vertices": int(len(mesh.vertices)),
                "faces": int(len(mesh.faces)),
                "textured": bool(mesh.has_texture),
                "vertex_colors": mesh.vertex_colors is not None,
                "texture_size": list(mesh.texture.shape[:2]) if mesh.texture is not None else None,
                "file": SCAN_MESH,
                "sha256": file_sha256(tmp / SCAN_MESH),
            },
            "normalisation": {
                "center": center.tolist(),
                "radius": radius,
                "margin": margin,
                "scale_mat": scale_mat.tolist(),
                "note": "scale_mat maps the normalised unit sphere onto the object's bounding sphere x margin",
            },
            "rig": dataclasses.asdict(rig) | {"angles_yaw_pitch_deg": rig.angles()},
            "units": {"unit": units or "mm", "declared": units is not None, "face_height": height,
                      "mm_per_unit": MM_PER_UNIT[units or "mm"]},
            "n_views": len(cameras),
            "image_size": [cameras[0].height, cameras[0].width],
            "renderer": backend.name,
            "warnings": warnings,
            "mask_coverage": views.coverage,
            "timings": timings,
        }
        write_json(tmp / "meta.json", meta)
    return meta
