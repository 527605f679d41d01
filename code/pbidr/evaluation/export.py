"""Artists' outputs of an eval: a GLB with a tangent-space normal map, displacement in millimetres
(float EXR and 16-bit PNG with a fixed mid-level), object- and tangent-space normal maps, a textured PLY.

Every function takes plain data (meshes in the world frame, arrays), so it is tested without a
trained model. What is written, and the conventions (README "Use the maps in Blender"):

``displacement.exr``
    float32, one channel ``Y``, **millimetres** along the coarse mesh's vertex normals, mid-level 0,
    in the coarse UV layout (OBJ convention: row 0 is v = 1).
``displacement_uv.png``
    16-bit grey, ``d_mm = (png / 65535 - 0.5) * DISPLACEMENT_STRENGTH_MM``: mid-level 0.5, a fixed
    strength of 8 mm (so +-4 mm, steps of 0.00012 mm). Blender's Displace modifier with
    ``mid_level = 0.5``, ``strength = 8 / units_to_mm`` (mesh units; 8 for a mesh in mm), UV
    coordinates and a Non-Color image gives the detailed mesh back. Texels beyond +-4 mm are clipped
    and the clipped fraction is reported.
``normal_tangent_uv.png``
    8-bit, ``rgb = (c + 1) / 2``: the detailed surface's normal in the coarse mesh's MikkTSpace frame
    (x along the tangent, y along ``sign * cross(n, t)``, z along the normal; +Y "OpenGL" green,
    as Blender and glTF expect), for the coarse mesh. Flat (128, 128, 255) where there is no detail
    and outside the chart.
``normal_object_uv.png``
    8-bit, ``rgb = (n + 1) / 2``: the detailed mesh's normals in the world frame; black outside the chart.
``detailed.glb``
    glTF 2.0 binary: the dense detailed mesh in **metres** (glTF's unit, so Blender imports it at its
    true size), turned so that the face's up is +Y and its front +Z (glTF's convention; no turn for
    the default face frame), base-colour texture and ``normalTexture`` =
    the tangent-space map. Its ``NORMAL`` and ``TANGENT`` (vec4, w = handedness) are the coarse
    surface's frame at each vertex, the frame the map was baked in: a viewer's shading normal
    ``TBN * map`` is then the detailed normal at texel resolution, where the dense mesh's own normals
    would count the detail twice.
``detailed.ply``
    binary PLY of the dense detailed mesh in world units, split at UV seams, with per-vertex texture
    coordinates (``s``, ``t``; MeshLab shows the texture named in its ``TextureFile`` comment) and
    per-vertex colours sampled from the texture (Blender shows those).

MikkTSpace: no maintained MikkTSpace package installs on Python 3.11 (pymikktspace 0.3.0, 2021,
fails to build), so :func:`mikktspace_tangents` implements its rules in numpy (per-face UV
gradient, projected on each corner's normal, weighted by the corner angle, summed over the corners
of a vertex that share its UV and orientation); the Blender test checks it against Blender's own.
EXR: the ``openexr`` package (the OpenEXR project's own Python bindings).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbidr.errors import PbidrError
from pbidr.evaluation.uv_maps import dilate_uv_map, locate_uv, rasterize_uv, sample_uv_map, texel_uv
from pbidr.io.mesh import TexturedMesh
from pbidr.io.obj import write_ply
from pbidr.utils.atomic import atomic_path
from pbidr.utils.images import write_png

DISPLACEMENT_MID_LEVEL = 0.5
DISPLACEMENT_STRENGTH_MM = 8.0  # the PNG spans +-4 mm: facial detail (wrinkles, folds) stays well inside
UNITS_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
UV_SNAP = 1e-4  # UV units: a dense vertex this close to the coarse chart's border takes the border's frame
FLAT_TANGENT_RGB = (128, 128, 255)  # (0, 0, 1) in tangent space: "no detail"
FILES = ("detailed.glb", "detailed.ply", "displacement.exr", "displacement_uv.png", "normal_tangent_uv.png",
         "normal_object_uv.png")


# ------------------------------------------------------------------------------------------------
# Tangent frames


def mikktspace_tangents(mesh: TexturedMesh, normals: np.ndarray | None = None) -> np.ndarray:
    """MikkTSpace tangents per face corner (F, 3, 4): xyz unit, perpendicular to the corner's vertex
    normal, w = +1 or -1 the handedness (bitangent = w * cross(n, t) points toward increasing v).

    ``normals`` (V, 3): the vertex normals the tangents are built against (default the mesh's
    area-weighted ones, the normals the displacement follows). UVs in the OBJ convention (v up), the
    convention Blender computes them in. A face with no UV area gets no say in its corners' sums; a
    corner left with none gets an edge of its face made perpendicular to the normal.
    """
    if mesh.uv is None or mesh.face_uv is None:
        raise PbidrError("tangents: the mesh has no texture coordinates")
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    n = mesh.vertex_normals() if normals is None else np.asarray(normals, dtype=np.float64)
    p = v[f]  # (F, 3, 3)
    t = np.asarray(mesh.uv, dtype=np.float64)[mesh.face_uv]  # (F, 3, 2)
    d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    s1, s2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    area_uv = s1[:, 0] * s2[:, 1] - s1[:, 1] * s2[:, 0]  # twice the signed UV area
    orient = np.where(area_uv > 0, 1.0, -1.0)
    # dP/du up to the positive factor 1 / |area|: the orientation sign makes it point along +u.
    dpdu = (s2[:, 1, None] * d1 - s1[:, 1, None] * d2) * orient[:, None]
    geo_area = np.linalg.norm(np.cross(d1, d2), axis=1)
    usable = (np.abs(area_uv) > 1e-20) & (geo_area > 1e-20) & (np.linalg.norm(dpdu, axis=1) > 1e-30)

    nc = n[f]  # (F, 3, 3) normal at each corner
    tc = dpdu[:, None, :] - np.sum(dpdu[:, None, :] * nc, axis=2, keepdims=True) * nc
    tc = tc / np.maximum(np.linalg.norm(tc, axis=2, keepdims=True), 1e-30)
    # Corner angle, measured between the two edges projected on the corner's tangent plane (as MikkTSpace).
    prev = p[:, [2, 0, 1]] - p
    nxt = p[:, [1, 2, 0]] - p
    prev = prev - np.sum(prev * nc, axis=2, keepdims=True) * nc
    nxt = nxt - np.sum(nxt * nc, axis=2, keepdims=True) * nc
    prev /= np.maximum(np.linalg.norm(prev, axis=2, keepdims=True), 1e-30)
    nxt /= np.maximum(np.linalg.norm(nxt, axis=2, keepdims=True), 1e-30)
    angle = np.arccos(np.clip(np.sum(prev * nxt, axis=2), -1.0, 1.0)) * usable[:, None]

    # Corners that share a vertex, a UV and an orientation form one MikkTSpace group (one tangent).
    key = np.stack([f, np.asarray(mesh.face_uv, dtype=np.int64), np.broadcast_to((orient > 0)[:, None], f.shape)],
                   axis=2).reshape(-1, 3)
    _, group = unique_rows(key)
    acc = np.zeros((group.max() + 1, 3))
    np.add.at(acc, group, (angle[..., None] * tc).reshape(-1, 3))
    tan = acc[group].reshape(-1, 3)
    ncr = nc.reshape(-1, 3)
    tan = tan - np.sum(tan * ncr, axis=1, keepdims=True) * ncr
    length = np.linalg.norm(tan, axis=1)
    lonely = length < 1e-12
    if lonely.any():  # degenerate UVs all round: any direction in the tangent plane
        edge = np.repeat(d1, 3, axis=0)[lonely]
        edge = edge - np.sum(edge * ncr[lonely], axis=1, keepdims=True) * ncr[lonely]
        tan[lonely] = edge
        length = np.linalg.norm(tan, axis=1)
    tan = tan / np.maximum(length, 1e-30)[:, None]
    w = np.repeat(orient, 3)[:, None]
    return np.concatenate([tan, w], axis=1).reshape(len(f), 3, 4)


def unique_rows(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a non-negative int64 array (N, K) and each row's index among them (N,);
    the rows become one integer first (np.unique over axis 0 is several times slower)."""
    key = np.asarray(key, dtype=np.int64)
    dims = tuple(int(x) + 1 for x in key.max(axis=0)) if len(key) else (1,) * key.shape[1]
    flat = np.ravel_multi_index(tuple(key.T), dims)
    values, inverse = np.unique(flat, return_inverse=True)
    return np.stack(np.unravel_index(values, dims), axis=1), inverse.reshape(-1)


@dataclass
class TangentFrame:
    """A mesh's shading frame at points of its UV chart: normal (N, 3) unit, tangent (N, 3) (the
    interpolated MikkTSpace tangent, not renormalised, as a renderer's pixel shader sees it), sign
    (N,) +-1, and hit (N,) bool (inside the chart)."""

    normal: np.ndarray
    tangent: np.ndarray
    sign: np.ndarray
    hit: np.ndarray


def tangent_frame_at(mesh: TexturedMesh, uv: np.ndarray, tangents: np.ndarray | None = None,
                     snap: float = 0.0, hits: tuple | None = None) -> TangentFrame:
    """The shading frame of ``mesh`` at UV points (N, 2), from its vertex normals and per-corner
    ``tangents`` (F, 3, 4; default :func:`mikktspace_tangents`); ``snap`` as in ``locate_uv``, whose
    result for these points ``hits`` may already be."""

    if tangents is None:
        tangents = mikktspace_tangents(mesh)
    face, bary, hit = hits if hits is not None else locate_uv(mesh, uv, snap)
    face = np.maximum(face, 0)
    normal = np.einsum("nk,nkc->nc", bary, mesh.vertex_normals()[mesh.faces[face]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-30)
    tangent = np.einsum("nk,nkc->nc", bary, tangents[face, :, :3])
    return TangentFrame(normal=normal, tangent=tangent, sign=tangents[face, 0, 3], hit=hit)


def to_tangent_space(frame: TangentFrame, normals: np.ndarray) -> np.ndarray:
    """World ``normals`` (N, 3) as unit tangent-space vectors (N, 3): the inverse of the decode
    ``normalize(x t + y b + z n)`` with ``b = sign * cross(n, t)`` that Blender's Normal Map node and
    glTF viewers apply, so a map baked here shades back to ``normals``."""
    n, t = frame.normal, frame.tangent
    b = frame.sign[:, None] * np.cross(n, t)
    x = np.asarray(normals, dtype=np.float64)
    # Cramer's rule for [t b n] c = x, all texels at once (a batched solve is several times slower).
    bn, nt, tb = np.cross(b, n), np.cross(n, t), np.cross(t, b)
    det = np.einsum("ij,ij->i", t, bn)
    c = np.stack([np.einsum("ij,ij->i", x, bn), np.einsum("ij,ij->i", x, nt), np.einsum("ij,ij->i", x, tb)], axis=1)
    ok = np.abs(det) > 1e-12
    c = np.where(ok[:, None], c / np.where(ok, det, 1.0)[:, None], [0.0, 0.0, 1.0])
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-30)


# ------------------------------------------------------------------------------------------------
# Maps


def tangent_normal_map(coarse: TexturedMesh, detailed: TexturedMesh, size: tuple[int, int],
                       tangents: np.ndarray | None = None, dilate: int = 4, coarse_hits: tuple | None = None,
                       detailed_hits: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The detailed mesh's normals in the coarse mesh's tangent frame, in the coarse UV layout:
    (H, W, 3) unit vectors and coverage (H, W) bool. ``detailed``'s UVs must lie in the coarse chart
    (it is the coarse mesh displaced, or a subdivision of it); each texel reads the detailed normal
    at the same UV, which is where a bake's ray along the coarse normal lands. Outside the chart
    (and beyond ``dilate`` pixels of it) the map is flat (0, 0, 1). ``*_hits``: each mesh's
    ``locate_uv`` of the texel centres, when the caller has them."""

    h, w = int(size[0]), int(size[1])
    frame = tangent_frame_at(coarse, texel_uv((h, w)), tangents, hits=coarse_hits)
    detail_n, _ = rasterize_uv(detailed, detailed.vertex_normals(), (h, w), dilate=1, hits=detailed_hits)
    coverage = frame.hit.reshape(h, w) & (np.linalg.norm(detail_n, axis=2) > 1e-6)
    c = np.tile(np.array([0.0, 0.0, 1.0]), (h * w, 1))
    inside = coverage.reshape(-1)
    sub = TangentFrame(frame.normal[inside], frame.tangent[inside], frame.sign[inside], frame.hit[inside])
    c[inside] = to_tangent_space(sub, detail_n.reshape(-1, 3)[inside].astype(np.float64))
    c = dilate_uv_map(c.reshape(h, w, 3), coverage, dilate)
    return c, coverage


def encode_normal_rgb(vectors: np.ndarray, background: np.ndarray | None = None,
                      background_rgb: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Unit vectors (H, W, 3) -> 8-bit RGB ``(v + 1) / 2``; where ``background`` (H, W) is True, ``background_rgb``."""
    rgb = np.round((np.clip(vectors, -1.0, 1.0) + 1.0) / 2.0 * 255.0).astype(np.uint8)
    if background is not None:
        rgb[background] = background_rgb
    return rgb


def decode_normal_rgb(rgb: np.ndarray) -> np.ndarray:
    """8-bit RGB (H, W, 3) -> vectors in [-1, 1] (not renormalised)."""
    return np.asarray(rgb, dtype=np.float64) / 255.0 * 2.0 - 1.0


def encode_displacement_png(d_mm: np.ndarray, strength_mm: float = DISPLACEMENT_STRENGTH_MM,
                            mid_level: float = DISPLACEMENT_MID_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (H, W) in mm -> uint16 ``round((mid_level + d / strength) * 65535)``, and the
    (H, W) bool mask of texels clipped to the range (non-finite ones are written as the mid-level)."""
    d = np.asarray(d_mm, dtype=np.float64)
    if not strength_mm > 0:
        raise PbidrError(f"displacement PNG: strength {strength_mm} mm must be positive")
    finite = np.isfinite(d)
    level = np.where(finite, mid_level + np.where(finite, d, 0.0) / strength_mm, mid_level)
    clipped = (level < 0.0) | (level > 1.0)
    return np.round(np.clip(level, 0.0, 1.0) * 65535.0).astype(np.uint16), clipped


def decode_displacement_png(png: np.ndarray, strength_mm: float = DISPLACEMENT_STRENGTH_MM,
                            mid_level: float = DISPLACEMENT_MID_LEVEL) -> np.ndarray:
    """uint16 map -> displacement in mm: ``(png / 65535 - mid_level) * strength``, what Blender's
    Displace modifier computes from a Non-Color image."""
    return (np.asarray(png, dtype=np.float64) / 65535.0 - mid_level) * strength_mm


def write_png16_grey(path: str | Path, q: np.ndarray) -> Path:
    """Write a uint16 (H, W) map as a 16-bit grey PNG, atomically."""
    import cv2

    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(q, dtype=np.uint16)):
            raise PbidrError(f"{path}: could not write the 16-bit PNG")
    return path


def read_png16_grey(path: str | Path) -> np.ndarray:
    """A 16-bit grey PNG as uint16 (H, W); one-line error when it is missing or not one."""
    import cv2

    path = Path(path)
    q = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if q is None or q.dtype != np.uint16 or q.ndim != 2:
        raise PbidrError(f"{path}: missing or not a 16-bit grey PNG")
    return q


def _openexr():
    try:
        import OpenEXR
    except ImportError as exc:  # a core dependency (requirements.txt): say how to get it
        raise PbidrError(f"the openexr package is not installed ({exc}); run: pip install openexr") from None
    return OpenEXR


def write_exr(path: str | Path, image: np.ndarray) -> Path:
    """Write a float map (H, W) as a float32 single-channel (``Y``) EXR, ZIP-compressed, atomically."""
    OpenEXR = _openexr()
    path = Path(path)
    img = np.ascontiguousarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise PbidrError(f"{path}: an EXR map needs an (H, W) array, got {img.shape}")
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with atomic_path(path) as tmp:
        try:
            with OpenEXR.File(header, {"Y": img}) as exr:
                exr.write(str(tmp))
        except Exception as exc:  # the bindings raise bare RuntimeErrors: name the file
            raise PbidrError(f"{path}: could not write the EXR ({exc})") from None
    return path


def read_exr(path: str | Path, channel: str = "Y") -> np.ndarray:
    """One channel of an EXR as float32 (H, W); one-line error when it is missing or unreadable."""
    OpenEXR = _openexr()
    path = Path(path)
    if not path.is_file():
        raise PbidrError(f"{path}: no such EXR file")
    try:
        with OpenEXR.File(str(path)) as exr:
            channels = exr.channels()
            if channel not in channels:
                raise PbidrError(f"{path}: no channel {channel!r} (has {sorted(channels)})")
            return np.array(channels[channel].pixels, dtype=np.float32)
    except PbidrError:
        raise
    except Exception as exc:
        raise PbidrError(f"{path}: not a readable EXR ({exc})") from None


# ------------------------------------------------------------------------------------------------
# Meshes: GLB and PLY


def split_at_seams(mesh: TexturedMesh, extra_key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (position index, UV index[, extra_key per corner]) corner, as glTF
    and PLY need: returns vertex index (N,), UV index (N,) of each new vertex and faces (F, 3)."""
    f = np.asarray(mesh.faces, dtype=np.int64)
    cols = [f.reshape(-1), np.asarray(mesh.face_uv, dtype=np.int64).reshape(-1)]
    if extra_key is not None:
        cols.append(np.asarray(extra_key, dtype=np.int64).reshape(-1))
    key = np.stack(cols, axis=1)
    unique, inverse = unique_rows(key)
    return unique[:, 0], unique[:, 1], inverse.reshape(f.shape)


def _any_perpendicular(n: np.ndarray) -> np.ndarray:
    """Unit vectors (N, 3) perpendicular to ``n`` (N, 3): a tangent where no frame is known."""
    axis = np.where(np.abs(n[:, [0]]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    t = np.cross(n, axis)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-30)


def _png_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise PbidrError("GLB: could not encode a texture as PNG")
    return buf.tobytes()


# glTF's numeric codes: accessor component types and buffer-view targets.
_GL_FLOAT, _GL_UNSIGNED_INT = 5126, 5125
_GL_ARRAY_BUFFER, _GL_ELEMENT_ARRAY_BUFFER = 34962, 34963


@dataclass
class _GlbBuffer:
    """The single binary buffer of a GLB as it is filled: its parts in order, with the glTF buffer
    views and accessors that point into it."""

    blobs: list[bytes] = field(default_factory=list)
    views: list[dict] = field(default_factory=list)
    accessors: list[dict] = field(default_factory=list)

    def add_view(self, data: bytes, target: int | None) -> int:
        """Append ``data`` as a buffer view; its index."""
        offset = sum(len(b) for b in self.blobs)
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        self.blobs.append(data + b"\0" * (-len(data) % 4))  # every view starts 4-byte aligned
        return len(self.views) - 1

    def add_accessor(self, array: np.ndarray, kind: str, component: int, target: int, bounds: bool = False) -> int:
        """Append ``array`` (N, ...) as a view and an accessor of ``kind`` (VEC3, SCALAR, ...); its index."""
        view = self.add_view(np.ascontiguousarray(array).tobytes(), target)
        acc = {"bufferView": view, "componentType": component, "count": int(len(array)), "type": kind}
        if bounds:
            acc["min"] = [float(x) for x in array.min(axis=0)]
            acc["max"] = [float(x) for x in array.max(axis=0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def binary(self) -> bytes:
        return b"".join(self.blobs)


def _vertex_attributes(buffer: _GlbBuffer, positions: np.ndarray, normals: np.ndarray, tangents: np.ndarray,
                       uv: np.ndarray) -> dict[str, int]:
    """The primitive's attribute accessors, float32; ``uv`` flipped from the OBJ convention to glTF's
    top-left origin."""
    return {
        "POSITION": buffer.add_accessor(positions.astype("<f4"), "VEC3", _GL_FLOAT, _GL_ARRAY_BUFFER, bounds=True),
        "NORMAL": buffer.add_accessor(normals.astype("<f4"), "VEC3", _GL_FLOAT, _GL_ARRAY_BUFFER),
        "TANGENT": buffer.add_accessor(tangents.astype("<f4"), "VEC4", _GL_FLOAT, _GL_ARRAY_BUFFER),
        "TEXCOORD_0": buffer.add_accessor(np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype("<f4"), "VEC2",
                                          _GL_FLOAT, _GL_ARRAY_BUFFER),
    }


def _textured_material(buffer: _GlbBuffer, name: str, base_color_png: bytes | None,
                       normal_png: bytes | None) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """The matte, double-sided material with the given PNGs embedded as its base-colour and normal
    textures; returns the material, the images and the textures."""
    material: dict[str, Any] = {"name": f"{name}_material", "doubleSided": True,
                                "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 0.6}}
    images, textures = [], []
    for role, png in (("baseColor", base_color_png), ("normal", normal_png)):
        if png is None:
            continue
        images.append({"bufferView": buffer.add_view(png, None), "mimeType": "image/png", "name": f"{name}_{role}"})
        textures.append({"source": len(images) - 1, "sampler": 0})
        if role == "baseColor":
            material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": len(textures) - 1, "texCoord": 0}
        else:
            material["normalTexture"] = {"index": len(textures) - 1, "texCoord": 0, "scale": 1.0}
    return material, images, textures


def glb_document(positions: np.ndarray, normals: np.ndarray, tangents: np.ndarray, uv: np.ndarray,
                 faces: np.ndarray, base_color_png: bytes | None, normal_png: bytes | None,
                 name: str = "detailed") -> tuple[dict, bytes]:
    """glTF 2.0 JSON and binary buffer of one triangle primitive. ``uv`` in the OBJ convention
    (flipped to glTF's top-left origin here); tangents (N, 4). The material is matte (metallic 0)
    and double-sided (a face scan is an open surface)."""
    buffer = _GlbBuffer()
    attributes = _vertex_attributes(buffer, positions, normals, tangents, uv)
    indices = buffer.add_accessor(faces.reshape(-1).astype("<u4"), "SCALAR", _GL_UNSIGNED_INT, _GL_ELEMENT_ARRAY_BUFFER)
    material, images, textures = _textured_material(buffer, name, base_color_png, normal_png)
    binary = buffer.binary()
    doc: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "pbidr (pbidr.evaluation.export)"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": indices, "material": 0,
                                                  "mode": 4}]}],
        "materials": [material], "accessors": buffer.accessors, "bufferViews": buffer.views,
        "buffers": [{"byteLength": len(binary)}],
    }
    if textures:
        # Linear filtering with mipmaps; clamp, since the UV chart does not tile.
        doc.update({"images": images, "textures": textures,
                    "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]})
    return doc, binary


def write_glb(path: str | Path, doc: dict, binary: bytes) -> Path:
    """The GLB container (12-byte header, JSON chunk padded with spaces, BIN chunk padded with zeros)."""
    path = Path(path)
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary = binary + b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<4sII", b"glTF", 2, total))
            fh.write(struct.pack("<I4s", len(text), b"JSON") + text)
            fh.write(struct.pack("<I4s", len(binary), b"BIN\0") + binary)
    return path


def read_glb(path: str | Path) -> tuple[dict, bytes]:
    """A GLB's JSON document and binary chunk; one-line error when it is not a GLB."""
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    if len(data) < 20 or data[:4] != b"glTF":
        raise PbidrError(f"{path}: missing or not a GLB file")
    _, version, total = struct.unpack_from("<4sII", data, 0)
    json_len, json_kind = struct.unpack_from("<I4s", data, 12)
    if version != 2 or total != len(data) or json_kind != b"JSON":
        raise PbidrError(f"{path}: not a well-formed glTF 2.0 binary (version {version}, {total} of {len(data)} bytes)")
    doc = json.loads(data[20:20 + json_len])
    rest = 20 + json_len
    binary = b""
    if rest + 8 <= len(data):
        bin_len, bin_kind = struct.unpack_from("<I4s", data, rest)
        if bin_kind == b"BIN\0":
            binary = data[rest + 8:rest + 8 + bin_len]
    return doc, binary


def glb_accessor(doc: dict, binary: bytes, index: int) -> np.ndarray:
    """The data of accessor ``index`` of a GLB written by :func:`write_glb` (float32 or uint32)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    dtype = {5126: "<f4", 5125: "<u4"}[acc["componentType"]]
    raw = binary[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
    return np.frombuffer(raw, dtype=dtype, count=acc["count"] * width).reshape(acc["count"], width)


def write_textured_ply(path: str | Path, mesh: TexturedMesh, texture_name: str) -> dict[str, Any]:
    """Binary PLY of ``mesh`` split at UV seams: per-vertex ``s``/``t`` (OBJ convention) and colours
    read bilinearly from its texture, and a ``TextureFile`` comment naming ``texture_name``."""

    vid, tid, faces = split_at_seams(mesh)
    uv = np.asarray(mesh.uv, dtype=np.float64)[tid]
    colors = None
    if mesh.texture is not None:
        colors = np.clip(np.round(sample_uv_map(mesh.texture[..., :3], uv)), 0, 255).astype(np.uint8)
    write_ply(path, mesh.vertices[vid], faces, colors, uv=uv, comments=[f"TextureFile {texture_name}"])
    return {"vertices": int(len(vid)), "faces": int(len(faces)), "units": "world (mesh units)",
            "texture": texture_name, "vertex_colors": colors is not None, "uv": "per-vertex s, t (v up)"}


# ------------------------------------------------------------------------------------------------
# All of them


def units_to_mm(units: str | None) -> float:
    """mm per world unit for a unit name (mm, cm, m); None means the face convention, mm."""
    if units is None:
        return 1.0
    if units not in UNITS_TO_MM:
        raise PbidrError(f"units {units!r}: must be one of {', '.join(UNITS_TO_MM)}")
    return UNITS_TO_MM[units]


@dataclass
class ScanFrame:
    """What the exports need to know about a scan's world frame: mm per world unit (and where that
    came from), and the face's front and up directions (the view rig's)."""

    units_to_mm: float = 1.0
    units_source: str = "assumed mm"
    front: tuple[float, float, float] = (0.0, 0.0, 1.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)


def scan_frame(scan_dir: str | Path) -> ScanFrame:
    """A scan's :class:`ScanFrame` from its meta.json: ``units`` (mm, cm or m, as recorded by
    ``pbidr preprocess --units``) and the rig's ``front``/``up``. A scan without a units record is
    taken to be in mm, the convention of face meshes (3DMM, the built-in sample)."""
    try:
        meta = json.loads((Path(scan_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    units = meta.get("units")
    if isinstance(units, dict):  # pbidr preprocess writes {"unit": "cm", "declared": true, ...}
        units = units.get("unit", units.get("name")) if units.get("declared", True) else None
    frame = ScanFrame()
    if units is None:
        frame.units_source = "assumed mm (the scan's meta.json declares no units)"
    else:
        frame.units_to_mm, frame.units_source = units_to_mm(str(units)), f"the scan's meta.json: {units}"
    rig = meta.get("rig") if isinstance(meta.get("rig"), dict) else {}
    for key in ("front", "up"):
        value = rig.get(key)
        if isinstance(value, (list, tuple)) and len(value) == 3:
            setattr(frame, key, tuple(float(x) for x in value))
    return frame


def gltf_rotation(front=(0.0, 0.0, 1.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Rotation (3, 3) from the world frame to glTF's: the face's ``up`` to +Y and ``front`` to +Z
    (glTF: +Y up, the asset faces +Z, +X = up x front). Identity for the default face convention."""
    f = np.asarray(front, dtype=np.float64)
    u = np.asarray(up, dtype=np.float64)
    f = f / max(np.linalg.norm(f), 1e-30)
    u = u - np.dot(u, f) * f  # the rig makes up perpendicular to front the same way
    if np.linalg.norm(u) < 1e-9:
        raise PbidrError(f"glTF frame: up {tuple(up)} is parallel to front {tuple(front)}")
    u /= np.linalg.norm(u)
    return np.stack([np.cross(u, f), u, f])


@dataclass
class _TexelHits:
    """Every texel's triangle on each mesh, found by one ray cast per mesh and shared by its maps."""

    detailed: Any
    displacement: Any
    coarse: Any


def _check_export_inputs(coarse: TexturedMesh, detailed: TexturedMesh, displacement_mesh: TexturedMesh,
                         units_to_mm: float) -> None:
    for mesh, role in ((coarse, "coarse"), (detailed, "detailed"), (displacement_mesh, "displacement")):
        if mesh.uv is None or mesh.face_uv is None:
            raise PbidrError(f"artists' outputs: the {role} mesh has no texture coordinates")
    if not (units_to_mm > 0 and np.isfinite(units_to_mm)):
        raise PbidrError(f"artists' outputs: units_to_mm {units_to_mm} must be positive")


def _locate_texels(coarse: TexturedMesh, detailed: TexturedMesh, displacement_mesh: TexturedMesh,
                   size: tuple[int, int]) -> _TexelHits:
    texels = texel_uv(size)
    detailed_hits = locate_uv(detailed, texels)
    disp_hits = detailed_hits if displacement_mesh is detailed else locate_uv(displacement_mesh, texels)
    coarse_hits = disp_hits if displacement_mesh is coarse else locate_uv(coarse, texels)
    return _TexelHits(detailed=detailed_hits, displacement=disp_hits, coarse=coarse_hits)


def _write_displacement_maps(out_dir: Path, displacement_mesh: TexturedMesh, displacement: np.ndarray,
                             units_to_mm: float, size: tuple[int, int], hits: _TexelHits,
                             notes: list[str]) -> dict[str, Any]:
    """Displacement in mm: EXR (float, mid-level 0) and 16-bit PNG (mid-level 0.5, fixed strength); their
    metadata (``displacement_exr``, ``displacement_uv``)."""
    h, w = size
    d_map, d_cov = rasterize_uv(displacement_mesh, np.asarray(displacement, dtype=np.float64) * units_to_mm, size,
                                hits=hits.displacement)
    d_mm = d_map[..., 0]
    write_exr(out_dir / "displacement.exr", d_mm)
    q, clipped = encode_displacement_png(d_mm)
    write_png16_grey(out_dir / "displacement_uv.png", q)
    clipped_fraction = float(clipped[d_cov].mean()) if d_cov.any() else 0.0
    if clipped_fraction > 0:
        notes.append(f"displacement_uv.png: {clipped_fraction:.2%} of the chart's texels lie beyond "
                     f"+-{DISPLACEMENT_STRENGTH_MM / 2:g} mm and are clipped there (displacement.exr is not)")
    strength = DISPLACEMENT_STRENGTH_MM / units_to_mm
    lo_world = -DISPLACEMENT_MID_LEVEL * strength
    return {
        "displacement_exr": {"units": "mm", "mid_level": 0.0, "channel": "Y", "dtype": "float32",
                             "source": "per-vertex displacement, linear over the UV triangles"},
        # lo/hi/scale/offset decode in world units, as the earlier min-max map did (readers of metrics.json).
        "displacement_uv": {"mid_level": DISPLACEMENT_MID_LEVEL, "strength_mm": DISPLACEMENT_STRENGTH_MM,
                            "decode": f"d_mm = (png / 65535 - {DISPLACEMENT_MID_LEVEL}) * {DISPLACEMENT_STRENGTH_MM:g}",
                            "lo": lo_world, "hi": lo_world + strength, "scale": strength / 65535.0,
                            "offset": lo_world, "units": "world (mesh units) for lo/hi/scale/offset",
                            "size": [h, w], "coverage": float(d_cov.mean()), "clipped_fraction": clipped_fraction,
                            "range_mm": [float(d_mm[d_cov].min()), float(d_mm[d_cov].max())] if d_cov.any() else None,
                            "blender_displace": {"texture_coords": "UV", "direction": "NORMAL",
                                                 "mid_level": DISPLACEMENT_MID_LEVEL, "strength": strength,
                                                 "image_colorspace": "Non-Color", "extension": "EXTEND",
                                                 "use_interpolation": True, "on": "the coarse mesh (mesh.obj)"}},
    }


def _write_normal_maps(out_dir: Path, coarse: TexturedMesh, detailed: TexturedMesh, size: tuple[int, int],
                       tangents: np.ndarray, hits: _TexelHits) -> tuple[np.ndarray, dict[str, Any]]:
    """Normal maps: tangent space (for the coarse mesh) and object space (the detailed normals). Returns the
    tangent-space map's RGB (the GLB embeds it) and the maps' metadata."""
    tmap, t_cov = tangent_normal_map(coarse, detailed, size, tangents, coarse_hits=hits.coarse,
                                     detailed_hits=hits.detailed)
    normal_rgb = encode_normal_rgb(tmap)  # outside the chart tmap is (0, 0, 1): FLAT_TANGENT_RGB
    write_png(out_dir / "normal_tangent_uv.png", normal_rgb)
    omap, _ = rasterize_uv(detailed, detailed.vertex_normals(), size, hits=hits.detailed)
    norm = np.linalg.norm(omap, axis=2, keepdims=True)
    write_png(out_dir / "normal_object_uv.png",
              encode_normal_rgb(omap / np.maximum(norm, 1e-12), norm[..., 0] < 1e-6))
    return normal_rgb, {
        "normal_tangent_uv": {"encoding": "rgb = (c + 1) / 2 * 255, c in the coarse mesh's MikkTSpace frame "
                                          "(x tangent, y sign * cross(n, t), z normal; +Y green)",
                              "for": "the coarse mesh", "coverage": float(t_cov.mean())},
        "normal_object_uv": {"encoding": "rgb = (n + 1) / 2 * 255, world-frame normals of the detailed mesh; "
                                         "black = no UV"},
    }


def _write_detailed_glb(out_dir: Path, coarse: TexturedMesh, detailed: TexturedMesh, tangents: np.ndarray,
                        normal_rgb: np.ndarray, units_to_mm: float, front, up, notes: list[str]) -> dict[str, Any]:
    """GLB: dense positions in metres; NORMAL/TANGENT the coarse frame the normal map was baked in."""
    frame_corner = tangent_frame_at(coarse, np.asarray(detailed.uv, dtype=np.float64)[detailed.face_uv].reshape(-1, 2),
                                    tangents, snap=UV_SNAP)
    sign_key = (frame_corner.sign > 0).astype(np.int64).reshape(-1, 3)
    vid, tid, gfaces = split_at_seams(detailed, sign_key)
    first = np.zeros(len(vid), dtype=np.int64)
    first[gfaces.reshape(-1)] = np.arange(gfaces.size)  # one corner of each GLB vertex
    outside = ~frame_corner.hit[first]
    if outside.any():
        notes.append(f"detailed.glb: {int(outside.sum())} vertices' UVs fall outside the coarse chart; their "
                     "shading frame is their own normal")
    g_normal = frame_corner.normal[first]
    g_normal[outside] = detailed.vertex_normals()[vid[outside]]
    g_tan = frame_corner.tangent[first]
    g_tan[outside] = _any_perpendicular(g_normal[outside])
    g_tan = g_tan - np.sum(g_tan * g_normal, axis=1, keepdims=True) * g_normal
    g_tan /= np.maximum(np.linalg.norm(g_tan, axis=1, keepdims=True), 1e-30)
    rot = gltf_rotation(front, up)  # proper rotation: tangent handedness is unchanged
    g_tangent = np.concatenate([g_tan @ rot.T, frame_corner.sign[first][:, None]], axis=1)
    to_metres = units_to_mm / 1000.0
    base_png = _png_bytes(detailed.texture) if detailed.texture is not None else None
    doc, binary = glb_document(np.asarray(detailed.vertices)[vid] @ rot.T * to_metres, g_normal @ rot.T, g_tangent,
                               np.asarray(detailed.uv)[tid], gfaces, base_png, _png_bytes(normal_rgb))
    write_glb(out_dir / "detailed.glb", doc, binary)
    if detailed.texture is None:
        notes.append("detailed.glb has no base-colour texture: the detailed mesh has none")
    return {"units": "metres", "scale_from_world": to_metres,
            "rotation_from_world": rot.tolist(), "frame": "+Y the face's up, +Z its front (glTF)",
            "vertices": int(len(vid)), "faces": int(len(gfaces)),
            "normal_texture": "normal_tangent_uv.png", "base_color_texture": base_png is not None,
            "normal_and_tangent": "the coarse surface's frame at each vertex (the map's frame)"}


def export_artist_outputs(out_dir: str | Path, coarse: TexturedMesh, detailed: TexturedMesh,
                          displacement: np.ndarray, units_to_mm: float = 1.0, size: tuple[int, int] | None = None,
                          displacement_mesh: TexturedMesh | None = None, texture_name: str = "texture.png",
                          front=(0.0, 0.0, 1.0), up=(0.0, 1.0, 0.0)) -> dict[str, Any]:
    """Write :data:`FILES` into ``out_dir`` (an eval's staging folder) and return their metadata.

    ``coarse``: the mesh the maps are for (world frame, with UVs); its UV layout is the maps'
    layout and its MikkTSpace tangents the normal map's frame. ``detailed``: the dense detailed
    mesh, UVs in the coarse chart, with the base-colour texture (``texture_name`` is that texture's
    file in ``out_dir``, written by the OBJ writer). ``displacement`` (V,): signed displacement in
    world units of each vertex of ``displacement_mesh`` (default ``coarse``; a subdivision of it
    sharing its chart gives a finer map) along that mesh's vertex normals. ``units_to_mm``: mm per
    world unit. ``size``: (H, W) of the maps, default the coarse texture's size (else 1024 x 1024).
    ``front``/``up``: the face's directions in the world frame; the GLB turns them to +Z and +Y.
    """
    out_dir = Path(out_dir)
    displacement_mesh = coarse if displacement_mesh is None else displacement_mesh
    _check_export_inputs(coarse, detailed, displacement_mesh, units_to_mm)
    if size is None:
        size = tuple(coarse.texture.shape[:2]) if coarse.texture is not None else (1024, 1024)
    h, w = int(size[0]), int(size[1])
    notes: list[str] = []
    hits = _locate_texels(coarse, detailed, displacement_mesh, (h, w))
    displacement_meta = _write_displacement_maps(out_dir, displacement_mesh, displacement, units_to_mm, (h, w), hits,
                                                 notes)
    tangents = mikktspace_tangents(coarse)
    normal_rgb, normal_meta = _write_normal_maps(out_dir, coarse, detailed, (h, w), tangents, hits)
    glb_meta = _write_detailed_glb(out_dir, coarse, detailed, tangents, normal_rgb, units_to_mm, front, up, notes)
    ply = write_textured_ply(out_dir / "detailed.ply", detailed, texture_name)
    return {"files": list(FILES), "units_to_mm": float(units_to_mm), "size": [h, w], **displacement_meta,
            **normal_meta, "detailed_glb": glb_meta, "detailed_ply": ply, "notes": notes}
