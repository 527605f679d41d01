"""Meshes made ready for the page: one vertex per (position, UV) corner as glTF wants, decimated over
a face budget, moved into a display frame shared by a subject's meshes, coloured by displacement, and
written as GLB. numpy and trimesh only (fast_simplification for the decimation): no viewer here.

The display frame puts the face at the origin, looking toward +z with +y up (from the scan's rig), and
scales it to a radius of about 1, the size the viewer's camera controls are made for. A subject's
meshes share it, so the coarse, detailed and true meshes line up.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np

from pbidr.errors import PbidrError
from pbidr.evaluation.export import split_at_seams
from pbidr.io.load import load_mesh
from pbidr.view.sources import MeshSource

# Software-rendered WebGL and a laptop's browser both stay interactive up to about a million triangles.
MAX_FACES = 1_000_000
SURFACES = ("textured", "clay", "displacement")
CLAY_RGB = (0.78, 0.76, 0.74)
# ColorBrewer's RdBu (reversed): blue inward (negative, along -normal), red outward; white is 0.
DIVERGING = np.array([[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247], [253, 219, 199],
                      [239, 138, 98], [178, 24, 43]], dtype=np.float64)


@dataclass
class DisplayMesh:
    """A mesh ready for the page, per vertex (UV seams split): ``vertices`` (N, 3) and ``normals``
    (N, 3) in the file's world frame, ``faces`` (F, 3), ``uv`` (N, 2) with ``texture`` (H, W, 3), or
    ``colors`` (N, 3) uint8, ``displacement_mm`` (N,) along the coarse normal. ``file_faces``: the
    triangles in the file (more than ``len(faces)`` when decimated)."""

    key: str
    label: str
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    colors: np.ndarray | None = None
    displacement_mm: np.ndarray | None = None
    file_faces: int = 0

    @property
    def decimated(self) -> bool:
        return len(self.faces) < self.file_faces

    def note(self) -> str | None:
        """The page's line when the mesh is shown decimated."""
        if not self.decimated:
            return None
        return f"{self.label}: {self.file_faces:,} triangles, shown decimated to {len(self.faces):,}"


def load_display_mesh(src: MeshSource, max_faces: int = MAX_FACES) -> DisplayMesh:
    """Load ``src`` (one-line errors from the loader) with its displacement, per vertex, decimated to
    ``max_faces`` triangles when it has more."""
    mesh = load_mesh(src.path)
    displacement = _displacement(src, len(mesh.vertices))
    normals = mesh.vertex_normals()
    vertex_index, uv_index, faces = (split_at_seams(mesh) if mesh.uv is not None and mesh.face_uv is not None
                                     else (np.arange(len(mesh.vertices)), None, np.asarray(mesh.faces)))
    shown = DisplayMesh(
        key=src.key, label=src.label, vertices=mesh.vertices[vertex_index], faces=faces, normals=normals[vertex_index],
        uv=mesh.uv[uv_index] if uv_index is not None else None,
        texture=mesh.texture if uv_index is not None else None,
        colors=mesh.vertex_colors[vertex_index] if mesh.vertex_colors is not None else None,
        displacement_mm=displacement[vertex_index] if displacement is not None else None, file_faces=len(faces))
    return decimate(shown, max_faces) if len(faces) > max_faces else shown


def _displacement(src: MeshSource, n_vertices: int) -> np.ndarray | None:
    """The mesh's per-vertex displacement in mm, or None when it has none."""
    if src.displacement is None or not src.displacement.is_file():
        return None
    try:
        d = np.load(src.displacement)
    except (OSError, ValueError) as exc:
        raise PbidrError(f"{src.displacement}: unreadable ({exc.__class__.__name__})") from None
    if d.shape != (n_vertices,):
        raise PbidrError(f"{src.displacement}: {d.shape} values for the {n_vertices} vertices of {src.path.name}")
    return d.astype(np.float64) * src.displacement_mm


def decimate(m: DisplayMesh, max_faces: int) -> DisplayMesh:
    """Quadric edge-collapse decimation (fast_simplification) to ``max_faces`` triangles; the UV
    seams' borders are kept, and every attribute of a merged vertex is the mean of its originals."""
    try:
        import fast_simplification
    except ImportError:
        raise PbidrError(f"{m.label}: {len(m.faces):,} triangles need decimating for display, which needs "
                         "fast_simplification: pip install -e .[view]") from None
    _, _, collapses = fast_simplification.simplify(m.vertices, m.faces, target_count=max_faces,
                                                   return_collapses=True, preserve_border=True)
    vertices, faces, mapping = fast_simplification.replay_simplification(m.vertices, m.faces, collapses)
    n = len(vertices)

    def mean(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        flat = values.reshape(len(values), -1).astype(np.float64)
        sums = np.zeros((n, flat.shape[1]))
        np.add.at(sums, mapping, flat)
        counts = np.bincount(mapping, minlength=n).astype(np.float64)[:, None]
        return (sums / np.maximum(counts, 1.0)).reshape((n, *values.shape[1:]))

    colors = mean(m.colors)
    return replace(m, vertices=np.asarray(vertices, dtype=np.float64), faces=np.asarray(faces, dtype=np.int64),
                   normals=_unit(mean(m.normals)), uv=mean(m.uv), displacement_mm=mean(m.displacement_mm),
                   colors=None if colors is None else np.round(colors).astype(np.uint8))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)


# ------------------------------------------------------------------------------------------------
# The display frame


@dataclass(frozen=True)
class DisplayFrame:
    """World -> display: ``(p - centre) @ rotation.T / radius``; rows of ``rotation`` are the face's
    right, up and front directions."""

    centre: np.ndarray
    rotation: np.ndarray
    radius: float

    def apply(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.centre) @ self.rotation.T / self.radius

    def turn(self, directions: np.ndarray) -> np.ndarray:
        return np.asarray(directions, dtype=np.float64) @ self.rotation.T


def display_frame(vertices: np.ndarray, front, up) -> DisplayFrame:
    """The frame of a subject, from its first mesh's bounding box and the face's front and up."""
    f = np.asarray(front, dtype=np.float64)
    f = f / np.linalg.norm(f)
    u = np.asarray(up, dtype=np.float64)
    u = u - f * (u @ f)  # up made perpendicular to front, as the view rig does
    u = u / np.linalg.norm(u)
    right = np.cross(u, f)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    radius = float(np.linalg.norm(hi - lo) / 2) or 1.0
    return DisplayFrame(centre=(lo + hi) / 2, rotation=np.stack([right, u, f]), radius=radius)


# ------------------------------------------------------------------------------------------------
# Colours and GLB


def displacement_span(meshes: list[DisplayMesh]) -> float:
    """One colour scale (mm) for a subject's meshes, so that they compare: the 99th percentile of |d|."""
    values = [np.abs(m.displacement_mm) for m in meshes if m.displacement_mm is not None and len(m.displacement_mm)]
    span = float(np.percentile(np.concatenate(values), 99)) if values else 0.0
    return span if span > 0 else 1.0


def diverging_colours(d_mm: np.ndarray, span_mm: float) -> np.ndarray:
    """(N,) displacements -> (N, 3) uint8 on the DIVERGING scale, -span .. +span (clipped)."""
    t = np.clip(0.5 + 0.5 * np.asarray(d_mm, dtype=np.float64) / span_mm, 0.0, 1.0) * (len(DIVERGING) - 1)
    stops = np.arange(len(DIVERGING))
    rgb = np.stack([np.interp(t, stops, DIVERGING[:, c]) for c in range(3)], axis=1)
    return np.round(rgb).astype(np.uint8)


def colour_bar_html(span_mm: float) -> str:
    """The displacement colour scale with its ends and middle in mm (for the page's panel)."""
    stops = ", ".join(f"rgb({r:.0f},{g:.0f},{b:.0f})" for r, g, b in DIVERGING)
    return (f'<div style="font-size:0.8em;padding:0 0.5em"><div>displacement along the coarse normal (mm)</div>'
            f'<div style="height:12px;border-radius:3px;background:linear-gradient(to right, {stops})"></div>'
            f'<div style="display:flex;justify-content:space-between"><span>{-span_mm:+.3g}</span>'
            f'<span>0</span><span>{span_mm:+.3g}</span></div></div>')


def glb_bytes(m: DisplayMesh, frame: DisplayFrame, surface: str, span_mm: float) -> bytes:
    """The mesh in the display frame as a GLB: ``textured`` (its texture, or vertex colours), ``clay``
    (one matte grey) or ``displacement`` (vertex colours on the diverging scale). Matte (metallic 0,
    roughness 1), so the raking light's shading is the relief's alone."""
    import trimesh
    from trimesh.visual.material import PBRMaterial

    tm = trimesh.Trimesh(frame.apply(m.vertices), m.faces, vertex_normals=frame.turn(m.normals), process=False)
    matte = {"metallicFactor": 0.0, "roughnessFactor": 1.0}
    if surface == "textured" and m.texture is not None and m.uv is not None:
        from PIL import Image

        tm.visual = trimesh.visual.TextureVisuals(uv=m.uv, material=PBRMaterial(
            baseColorTexture=Image.fromarray(m.texture), **matte))
    elif surface in ("textured", "displacement") and (m.colors is not None or surface == "displacement"):
        colours = m.colors if surface == "textured" else diverging_colours(_or_zero(m), span_mm)
        tm.visual = trimesh.visual.ColorVisuals(tm, vertex_colors=colours)
        tm.visual.material = PBRMaterial(baseColorFactor=[255, 255, 255, 255], **matte)  # type: ignore[attr-defined]
    else:
        grey = [round(255 * c) for c in CLAY_RGB] + [255]
        tm.visual = trimesh.visual.TextureVisuals(material=PBRMaterial(baseColorFactor=grey, **matte))
    out = io.BytesIO()
    tm.export(out, file_type="glb", include_normals=True)
    return out.getvalue()


def _or_zero(m: DisplayMesh) -> np.ndarray:
    """The displacement, or zeros for a mesh that has none (the coarse mesh is its own reference)."""
    return m.displacement_mm if m.displacement_mm is not None else np.zeros(len(m.vertices))
