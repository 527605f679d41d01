"""Writing meshes: OBJ + MTL + texture (opens textured in Blender/MeshLab), and PLY.

Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pbidr.io.mesh import TexturedMesh
from pbidr.utils.atomic import atomic_path, write_text


def _savetxt(buf: io.StringIO, rows: np.ndarray, fmt: str) -> None:
    """``np.savetxt(buf, rows, fmt=fmt)``, byte for byte, formatting the whole array in one ``%``
    (savetxt formats row by row in Python: most of an eval's OBJ export time)."""
    rows = np.asarray(rows)
    if len(rows):
        buf.write(((fmt + "\n") * len(rows)) % tuple(rows.ravel().tolist()))


def _obj_text(mesh: TexturedMesh, mtl_name: str | None, normals: np.ndarray | None) -> str:
    buf = io.StringIO()
    buf.write("# written by pbidr\n")
    if mtl_name is not None:
        buf.write(f"mtllib {mtl_name}\n")
    if mesh.vertex_colors is not None and not mesh.has_texture:
        vc = mesh.vertex_colors.astype(np.float64) / 255.0
        _savetxt(buf, np.concatenate([mesh.vertices, vc], axis=1), "v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        _savetxt(buf, mesh.vertices, "v %.6f %.6f %.6f")
    if mesh.has_texture:
        _savetxt(buf, mesh.uv, "vt %.7f %.7f")
    if normals is not None:
        _savetxt(buf, normals, "vn %.5f %.5f %.5f")
    if mtl_name is not None:
        buf.write(f"usemtl {mesh.material_name}\n")
    f = mesh.faces + 1
    if mesh.has_texture and normals is not None:
        ft = mesh.face_uv + 1
        rows = np.stack([f[:, 0], ft[:, 0], f[:, 0], f[:, 1], ft[:, 1], f[:, 1], f[:, 2], ft[:, 2], f[:, 2]], 1)
        _savetxt(buf, rows, "f %d/%d/%d %d/%d/%d %d/%d/%d")
    elif mesh.has_texture:
        ft = mesh.face_uv + 1
        rows = np.stack([f[:, 0], ft[:, 0], f[:, 1], ft[:, 1], f[:, 2], ft[:, 2]], 1)
        _savetxt(buf, rows, "f %d/%d %d/%d %d/%d")
    elif normals is not None:
        _savetxt(buf, np.repeat(f, 2, axis=1), "f %d//%d %d//%d %d//%d")
    else:
        _savetxt(buf, f, "f %d %d %d")
    return buf.getvalue()


def write_obj(
    path: str | Path,
    mesh: TexturedMesh,
    texture_name: str | None = None,
    write_texture: bool = True,
    normals: np.ndarray | None = None,
) -> Path:
    """Write ``mesh`` as OBJ. With a texture, also ``<stem>.mtl`` and the texture image beside it.

    ``texture_name`` is the texture's file name in the same folder (default ``<stem>.png``); with
    ``write_texture=False`` the MTL refers to an existing file of that name (meshes sharing one
    texture). ``normals`` (V, 3) optional per-vertex normals. Returns the OBJ path.
    """
    path = Path(path)
    mtl_name = None
    if mesh.has_texture:
        texture_name = texture_name or f"{path.stem}.png"
        mtl_name = f"{path.stem}.mtl"
        if write_texture:
            with atomic_path(path.parent / texture_name) as tmp:
                Image.fromarray(np.ascontiguousarray(mesh.texture[..., :3])).save(tmp)
        write_text(
            path.parent / mtl_name,
            f"newmtl {mesh.material_name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_name}\n",
        )
    write_text(path, _obj_text(mesh, mtl_name, normals))
    return path


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None,
              uv: np.ndarray | None = None, comments: list[str] | tuple[str, ...] = ()) -> Path:
    """Binary little-endian PLY of a triangle mesh (optional uint8 RGB vertex colours, optional
    per-vertex texture coordinates ``s``/``t`` (V, 2), and header comments such as MeshLab's
    ``TextureFile name.png``)."""
    path = Path(path)
    vertices = np.asarray(vertices, dtype="<f4")
    faces = np.asarray(faces, dtype="<i4")
    header = ["ply", "format binary_little_endian 1.0", *[f"comment {c}" for c in comments],
              f"element vertex {len(vertices)}", "property float x", "property float y", "property float z"]
    vdtype = [("p", "<f4", 3)]
    if uv is not None:
        header += ["property float s", "property float t"]
        vdtype.append(("uv", "<f4", 2))
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        vdtype.append(("c", "u1", 3))
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    vrec = np.empty(len(vertices), dtype=vdtype)
    vrec["p"] = vertices
    if uv is not None:
        vrec["uv"] = np.asarray(uv, dtype="<f4")
    if colors is not None:
        vrec["c"] = np.asarray(colors, dtype=np.uint8)
    frec = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", 3)])
    frec["n"] = 3
    frec["i"] = faces
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(header) + "\n").encode("ascii"))
            fh.write(vrec.tobytes())
            fh.write(frec.tobytes())
    return path
