"""Loading the user's textured face mesh (OBJ + MTL + texture, PLY, GLB/GLTF) into a ``TexturedMesh``.

The OBJ reader is our own and keeps the file's topology exactly: positions and texture
coordinates keep separate indices (``face_uv``), nothing is merged, split or dropped, and
polygons are fan-triangulated in file order. It works in three steps: ``_parse_obj`` reads and
checks the text into an ``ObjParse``, ``_assemble_obj`` makes the mesh of it, and
``_resolve_obj_texture`` finds the faces' texture through the MTL and loads it. It is
vectorised: per-line work is one Python branch; numbers are parsed in bulk by NumPy, and a slow
line-by-line parser runs only to name the offending line when the bulk parse finds something
malformed.

PLY and GLB/GLTF go through trimesh (``process=False``), whose UVs are per vertex
(``face_uv = faces``).

Every problem with the input is a ``PbidrError`` whose one-line message names the file and says
what is wrong. Nothing is written anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pbidr.errors import PbidrError
from pbidr.io.mesh import TexturedMesh

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf")

# Options a map_* statement may carry before the file name, with how many values each takes.
# (min, max): -o/-s/-t take 1 to 3 numbers; the others take a fixed count.
_MAP_OPTIONS = {
    "-blendu": (1, 1), "-blendv": (1, 1), "-boost": (1, 1), "-mm": (2, 2), "-o": (1, 3),
    "-s": (1, 3), "-t": (1, 3), "-texres": (1, 1), "-clamp": (1, 1), "-bm": (1, 1),
    "-imfchan": (1, 1), "-type": (1, 1), "-cc": (1, 1),
}


# --------------------------------------------------------------------------------------------
# Finding the mesh
# --------------------------------------------------------------------------------------------

def find_mesh_in_dir(raw: str | Path) -> Path:
    """The mesh file to load from ``raw``: the file itself, or the single ``mesh.*`` in the folder
    (``mesh.obj``, ``mesh.ply``, ``mesh.glb``, ``mesh.gltf``; suffix case ignored)."""
    raw = Path(raw)
    if not raw.exists():
        raise PbidrError(f"{raw}: no such file or folder (expected a mesh file or a folder holding mesh.obj/.ply/.glb/.gltf)")
    if raw.is_file():
        if raw.suffix.lower() not in MESH_SUFFIXES:
            raise PbidrError(f"{raw}: unknown mesh file type '{raw.suffix}' (supported: {', '.join(MESH_SUFFIXES)})")
        return raw
    files = sorted(p for p in raw.iterdir() if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
    candidates = [p for p in files if p.stem.lower() == "mesh"]
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise PbidrError(f"{raw}: several candidate meshes ({names}); keep one mesh.* or pass the file itself")
    if not candidates:
        hint = ""
        if files:
            hint = f"; found {', '.join(p.name for p in files[:5])}: rename one to mesh{files[0].suffix.lower()} or pass the file itself"
        raise PbidrError(f"{raw}: no mesh found (expected mesh.obj, mesh.ply, mesh.glb or mesh.gltf in this folder){hint}")
    return candidates[0]


def load_mesh(path: str | Path) -> TexturedMesh:
    """Load and validate a textured (or vertex-coloured) triangle mesh.

    OBJ (own parser, with MTL and ``map_Kd`` texture), PLY, GLB and GLTF (through trimesh).
    Raises ``PbidrError`` naming the file and the problem for anything this pipeline cannot use.
    """
    path = Path(path)
    if not path.exists():
        raise PbidrError(f"{path}: mesh file not found")
    if not path.is_file():
        raise PbidrError(f"{path}: is not a file")
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise PbidrError(f"{path}: unknown mesh file type '{path.suffix}' (supported: {', '.join(MESH_SUFFIXES)})")
    if suffix == ".obj":
        mesh, why_no_texture = _load_obj(path)
    else:
        mesh, why_no_texture = _load_trimesh(path), ""
    _validate(mesh, path, why_no_texture)
    return mesh


# --------------------------------------------------------------------------------------------
# Colour sampling
# --------------------------------------------------------------------------------------------

def sample_texture_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup: texture (H, W, 3) uint8 (or (H, W) / (H, W, 4)), uv (N, 2) in OBJ
    convention (v = 0 is the image bottom) -> (N, 3) float32 in [0, 1].

    Texel (row i, col j) has its centre at uv ((j + 0.5) / W, 1 - (i + 0.5) / H); lookups beyond
    the outer texel centres clamp to the edge texels (no wrapping). NaN uv reads texel (0, 0).
    """
    texture = np.asarray(texture)
    h, w = texture.shape[:2]
    uv = np.asarray(uv)
    x = uv[:, 0].astype(np.float32) * np.float32(w) - np.float32(0.5)
    y = (np.float32(1.0) - uv[:, 1].astype(np.float32)) * np.float32(h) - np.float32(0.5)
    # Clamping the continuous coordinate (not the integer one) gives exact edge colours outside.
    np.nan_to_num(x, copy=False)
    np.nan_to_num(y, copy=False)
    np.clip(x, 0, w - 1, out=x)
    np.clip(y, 0, h - 1, out=y)
    x0f = np.floor(x)
    y0f = np.floor(y)
    fx = x - x0f
    fy = y - y0f
    itype = np.int32 if h * w < 2**31 - w - 1 else np.int64
    i00 = y0f.astype(itype) * itype(w) + x0f.astype(itype)
    dx = (x0f < w - 1).astype(itype)
    dy = np.where(y0f < h - 1, itype(w), itype(0))
    # One 4-byte gather per corner (RGB padded to RGBA, viewed as uint32) is much faster than
    # gathering 3-byte rows.
    rgba = np.zeros((h * w, 4), dtype=np.uint8)
    if texture.ndim == 2:
        rgba[:, :3] = texture.reshape(-1, 1)
    else:
        rgba[:, :3] = texture.reshape(h * w, -1)[:, :3]
    texels = rgba.view(np.uint32).reshape(-1)

    def corner(index: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return texels[index].view(np.uint8).reshape(-1, 4)[:, :3].astype(np.float32) * weight[:, None]

    gx = np.float32(1.0) - fx
    gy = np.float32(1.0) - fy
    out = corner(i00, gx * gy)
    out += corner(i00 + dx, fx * gy)
    out += corner(i00 + dy, gx * fy)
    out += corner(i00 + dy + dx, fx * fy)
    out *= np.float32(1.0 / 255.0)
    return out


# --------------------------------------------------------------------------------------------
# OBJ
# --------------------------------------------------------------------------------------------

def _read_text(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PbidrError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    # surrogateescape keeps non-UTF-8 file names in mtllib/map_Kd usable as paths.
    text = data.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _split_lines(text: str) -> list[str]:
    """Lines of ``text``, with backslash continuations joined (line numbers kept: the joined
    line sits at the first physical line and the continued lines become empty)."""
    lines = text.split("\n")
    if "\\\n" not in text:
        return lines
    out: list[str] = []
    pending: list[str] = []
    for line in lines:
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        if pending:
            out.append(" ".join(pending + [line]))
            out.extend([""] * len(pending))
            pending = []
        else:
            out.append(line)
    if pending:
        out.append(" ".join(pending))
        out.extend([""] * (len(pending) - 1))
    return out


def _tokens_per_line(buf: bytes, n_lines: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``buf`` = n_lines lines joined by b'\\n': tokens per line (n_lines,), and for every
    whitespace-separated token its start offset and line index (in order)."""
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(n_lines, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    ws = (b == 32) | (b == 9) | (b == 10) | (b == 11) | (b == 12)
    prev_ws = np.empty_like(ws)
    prev_ws[0] = True
    prev_ws[1:] = ws[:-1]
    starts = np.flatnonzero(~ws & prev_ws)
    tok_line = np.searchsorted(np.flatnonzero(b == 10), starts)  # newlines before a token = its line
    counts = np.bincount(tok_line, minlength=n_lines)
    return counts, starts, tok_line


def _join_rows(lines: list[str], idx: np.ndarray, keyword: str) -> str:
    """The statement lines ``lines[idx]`` (each starting with ``keyword``), keyword dropped, joined by newlines."""
    text = "\n".join([lines[i] for i in idx.tolist()])
    if "#" in text:  # trailing comments, rare enough to handle line by line
        text = "\n".join([line.partition("#")[0] for line in text.split("\n")])
    return text[len(keyword):].replace("\n" + keyword, "\n")


def _parse_rows(lines: list[str], idx: np.ndarray, keyword: str, path: Path):
    """Numbers of the statement lines ``lines[idx]`` (keyword dropped).
    Returns (flat float64 numbers, per-line counts, per-line start offsets)."""
    n = len(idx)
    if n == 0:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    text = _join_rows(lines, idx, keyword)
    counts, _, _ = _tokens_per_line(text.encode("utf-8", "surrogateescape"), n)
    try:
        flat = np.fromstring(text, dtype=np.float64, sep=" ")
        ok = flat.size == counts.sum()
    except ValueError:
        ok = False
    if not ok:
        for ln in idx.tolist():
            for tok in lines[ln].partition("#")[0][len(keyword):].split():
                try:
                    float(tok)
                except ValueError:
                    raise PbidrError(f"{path}: line {ln + 1}: cannot read '{keyword}' statement: '{tok}' is not a number") from None
        raise PbidrError(f"{path}: cannot read the '{keyword}' statements")  # unreachable in practice
    starts = np.cumsum(counts) - counts
    return flat, counts, starts


def _parse_faces(lines: list[str], idx: np.ndarray, path: Path):
    """Face lines ``lines[idx]`` -> (counts (L,), pos (K,), tex (K,)) raw OBJ indices per corner;
    tex 0 = absent."""
    n = len(idx)
    text = _join_rows(lines, idx, "f")
    buf = text.encode("utf-8", "surrogateescape")
    counts, starts, _ = _tokens_per_line(buf, n)
    b = np.frombuffer(buf, dtype=np.uint8)
    slash = np.flatnonzero(b == 47)
    n_tok = len(starts)
    # Token of each slash: the last token start at or before it.
    slash_tok = np.searchsorted(starts, slash, side="right") - 1
    n_slash = np.bincount(slash_tok, minlength=n_tok)
    if len(slash) and np.any(n_slash > 2):
        return _parse_faces_slow(lines, idx, path)
    try:
        nums = np.fromstring(text.replace("//", "/0/").replace("/", " "), dtype=np.int64, sep=" ")
    except ValueError:
        return _parse_faces_slow(lines, idx, path)
    per_tok = n_slash + 1
    if nums.size != per_tok.sum():
        return _parse_faces_slow(lines, idx, path)
    off = np.cumsum(per_tok) - per_tok
    pos = nums[off]
    tex = np.where(n_slash >= 1, nums[np.minimum(off + 1, nums.size - 1)], 0)
    return counts, pos, tex


def _parse_faces_slow(lines: list[str], idx: np.ndarray, path: Path):
    counts, pos, tex = [], [], []
    for ln in idx.tolist():
        toks = lines[ln].partition("#")[0][1:].split()
        counts.append(len(toks))
        for tok in toks:
            parts = tok.split("/")
            try:
                if len(parts) > 3 or not parts[0]:
                    raise ValueError
                pos.append(int(parts[0]))
                tex.append(int(parts[1]) if len(parts) > 1 and parts[1] else 0)
                if len(parts) > 2 and parts[2]:
                    int(parts[2])
            except ValueError:
                raise PbidrError(f"{path}: line {ln + 1}: cannot read face vertex '{tok}' (expected v, v/vt, v/vt/vn or v//vn)") from None
    return np.asarray(counts, np.int64), np.asarray(pos, np.int64), np.asarray(tex, np.int64)


def _resolve_index(raw: np.ndarray, n_before: np.ndarray, n_total: int) -> np.ndarray:
    """OBJ 1-based / negative-relative indices -> 0-based; invalid ones (0, out of range) -> -1."""
    idx = np.where(raw > 0, raw - 1, n_before + raw)
    bad = (raw == 0) | (idx < 0) | (idx >= n_total)
    idx[bad] = -1
    return idx


def _scan_obj(text: str):
    """Split an OBJ into lines and find its statements. Returns (lines, line numbers of the
    ``v``, ``vt`` and ``f`` statements (int64 arrays), usemtl [(line, name)], mtllib [(line, spec)]).
    Statement lines in ``lines`` start with their keyword (indentation stripped)."""
    if "\\\n" in text:
        text = "\n".join(_split_lines(text))
    lines = text.split("\n")
    # Classify all lines at once from their first three bytes; only the rare lines that need a
    # closer look (indented, usemtl, mtllib) go through Python.
    b = np.frombuffer(text.encode("utf-8", "surrogateescape") + b"\0\0\0", dtype=np.uint8)
    starts = np.zeros(len(lines), dtype=np.int64)
    starts[1:] = np.flatnonzero(b == 10) + 1
    c0, c1, c2 = b[starts], b[starts + 1], b[starts + 2]
    sep1 = (c1 == 32) | (c1 == 9)
    is_v = (c0 == 118) & sep1
    is_vt = (c0 == 118) & (c1 == 116) & ((c2 == 32) | (c2 == 9))
    is_f = (c0 == 102) & sep1
    closer = np.flatnonzero((c0 == 32) | (c0 == 9) | (c0 == 117) | (c0 == 109))
    usemtl: list[tuple[int, str]] = []
    mtllibs: list[tuple[int, str]] = []
    for ln in closer.tolist():
        line = lines[ln].strip()
        lines[ln] = line
        key, _, rest = line.replace("\t", " ").partition(" ")
        if key == "v":
            is_v[ln] = True
        elif key == "vt":
            is_vt[ln] = True
        elif key == "f":
            is_f[ln] = True
        elif key == "usemtl":
            usemtl.append((ln, rest.strip()))
        elif key == "mtllib":
            mtllibs.append((ln, line[6:].strip()))
        # o, g, s, l, vn, vp, comments and anything else: not needed for one textured surface
    return lines, np.flatnonzero(is_v), np.flatnonzero(is_vt), np.flatnonzero(is_f), usemtl, mtllibs


@dataclass
class ObjParse:
    """What an OBJ file says about the one textured surface this pipeline reads: checked, indices
    resolved to 0-based ones (OBJ's negative indices count back from their statement), polygons
    fan-triangulated in file order. Normals (``vn``), groups, smoothing and other statements are
    not read."""

    positions: np.ndarray  # (V, 3) float64: x y z of the 'v' statements (a fourth value w dropped)
    vertex_colors: np.ndarray | None  # (V, 3) uint8 when every 'v' also has r g b (0..1 or 0..255), else None
    uv: np.ndarray | None  # (T, 2) float64: u v of the 'vt' statements (v = 0 where absent); None without any
    faces: np.ndarray  # (F, 3) int64: position indices of the triangles
    face_uv: np.ndarray | None  # (F, 3) int64: their 'vt' indices, -1 on polygons without; None when no polygon has any
    face_polygon: np.ndarray  # (F,) int64: the polygon (index into polygon_lines) each triangle comes from
    polygon_lines: np.ndarray  # (P,) int64: 0-based line of each 'f' statement (a continued line: its first)
    polygon_has_uv: np.ndarray  # (P,) bool: the polygon's corners have texture coordinates (all or none do)
    used_materials: list[str]  # sorted names of the materials the polygons use (the last 'usemtl' before each)
    material_libraries: list[tuple[int, str]]  # (0-based line, file names as written) of each 'mtllib', in order

    @property
    def n_polygons(self) -> int:
        """The number of ``f`` statements."""
        return len(self.polygon_lines)


def _load_obj(path: Path) -> tuple[TexturedMesh, str]:
    """The OBJ at ``path`` as a mesh (parse, assemble, resolve the texture), and what the
    "no texture and no vertex colours" message of ``_validate`` adds for it ("" when not needed)."""
    parse = _parse_obj(path)
    mesh = _assemble_obj(parse, path)
    return mesh, _resolve_obj_texture(mesh, parse, path)


def _parse_obj(path: Path) -> ObjParse:
    """Read and check the OBJ at ``path``; anything malformed is a PbidrError naming its line."""
    lines, v_ln, vt_ln, f_ln, usemtl, mtllibs = _scan_obj(_read_text(path, "the OBJ file"))
    if not len(v_ln):
        raise PbidrError(f"{path}: empty mesh (no vertices)")
    if not len(f_ln):
        raise PbidrError(f"{path}: empty mesh (no faces; a point cloud cannot be used)")
    positions, vertex_colors = _parse_vertices(lines, v_ln, path)
    uv = _parse_uvs(lines, vt_ln, path)
    n_vt = 0 if uv is None else len(uv)
    corner_counts, pos, tex, polygon_has_uv = _parse_polygons(lines, f_ln, v_ln, vt_ln, len(positions), n_vt, path)
    corner_idx, face_polygon = _fan_triangulate(corner_counts)

    # Materials: which one each face line uses (the last usemtl before it).
    mtl_ln = np.asarray([ln for ln, _ in usemtl], np.int64)
    mtl_names = [name for _, name in usemtl]
    line_mat = np.searchsorted(mtl_ln, f_ln, side="right") - 1
    used = sorted({mtl_names[i] for i in np.unique(line_mat) if i >= 0})

    return ObjParse(
        positions=positions, vertex_colors=vertex_colors, uv=uv,
        faces=pos[corner_idx], face_uv=tex[corner_idx] if tex is not None else None, face_polygon=face_polygon,
        polygon_lines=f_ln, polygon_has_uv=polygon_has_uv, used_materials=used, material_libraries=mtllibs,
    )


def _parse_vertices(lines: list[str], v_ln: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``v`` statements ``lines[v_ln]`` (x y z [w] or x y z r g b [a]) -> positions (V, 3)
    float64 and vertex colours (V, 3) uint8 or None."""
    flat, counts, starts = _parse_rows(lines, v_ln, "v", path)
    short = np.flatnonzero(counts < 3)
    if len(short):
        raise PbidrError(f"{path}: line {v_ln[short[0]] + 1}: a vertex needs 3 coordinates, found {counts[short[0]]}")
    if np.all(counts == 3):
        vertices = flat.reshape(-1, 3)
    else:
        vertices = flat[starts[:, None] + np.arange(3)]
    vertex_colors = None
    if np.all(counts >= 6):
        rgb = flat[starts[:, None] + np.arange(3, 6)]
        # Colours are floats in [0, 1] by convention; some tools write 0..255.
        scale = 1.0 if (rgb.size and np.nanmax(rgb) > 1.0) else 255.0
        with np.errstate(over="ignore", invalid="ignore"):  # 1e308 or inf in a colour: clipped below
            vertex_colors = np.clip(np.rint(np.nan_to_num(rgb, posinf=255.0, neginf=0.0) * scale), 0, 255).astype(np.uint8)
    return vertices, vertex_colors


def _parse_uvs(lines: list[str], vt_ln: np.ndarray, path: Path) -> np.ndarray | None:
    """The ``vt`` statements ``lines[vt_ln]`` (u [v [w]]) -> (T, 2) float64, or None without any."""
    if not len(vt_ln):
        return None
    flat_t, counts_t, starts_t = _parse_rows(lines, vt_ln, "vt", path)
    empty = np.flatnonzero(counts_t < 1)
    if len(empty):
        raise PbidrError(f"{path}: line {vt_ln[empty[0]] + 1}: empty texture coordinate 'vt'")
    if np.all(counts_t == 2):
        return flat_t.reshape(-1, 2)
    uv = np.zeros((len(vt_ln), 2))
    uv[:, 0] = flat_t[starts_t]
    has_v = counts_t >= 2
    uv[has_v, 1] = flat_t[starts_t[has_v] + 1]
    return uv


def _parse_polygons(lines: list[str], f_ln: np.ndarray, v_ln: np.ndarray, vt_ln: np.ndarray, n_v: int, n_vt: int,
                    path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The ``f`` statements ``lines[f_ln]``, their indices checked against the ``n_v`` vertices and
    ``n_vt`` texture coordinates. Returns corner counts (P,), position indices (K,) of the corners
    (polygons one after another), their ``vt`` indices (K,) (-1 where absent) or None when no
    polygon has any, and (P,) whether each polygon has texture coordinates."""
    corner_counts, pos_raw, tex_raw = _parse_faces(lines, f_ln, path)
    small = np.flatnonzero(corner_counts < 3)
    if len(small):
        raise PbidrError(f"{path}: line {f_ln[small[0]] + 1}: a face needs at least 3 vertices, found {corner_counts[small[0]]}")
    corner_line = np.repeat(np.arange(len(f_ln)), corner_counts)
    v_before = np.searchsorted(v_ln, f_ln)[corner_line]
    pos = _resolve_index(pos_raw, v_before, n_v)
    bad = np.flatnonzero(pos < 0)
    if len(bad):
        k = bad[0]
        raise PbidrError(
            f"{path}: line {f_ln[corner_line[k]] + 1}: face vertex index {pos_raw[k]} is out of range "
            f"(the file has {n_v} vertices; {int(len(np.unique(corner_line[bad])))} faces affected)"
        )

    has_tex = tex_raw != 0
    line_tex = np.bincount(corner_line, weights=has_tex, minlength=len(f_ln)).astype(np.int64)
    mixed = np.flatnonzero((line_tex != 0) & (line_tex != corner_counts))
    if len(mixed):
        raise PbidrError(f"{path}: line {f_ln[mixed[0]] + 1}: some corners of the face have texture coordinates and some do not")
    face_has_uv = line_tex > 0
    tex = None
    if face_has_uv.any():
        vt_before = np.searchsorted(vt_ln, f_ln)[corner_line]
        tex = _resolve_index(tex_raw, vt_before, n_vt)
        bad = np.flatnonzero((tex < 0) & has_tex)
        if len(bad):
            k = bad[0]
            raise PbidrError(
                f"{path}: line {f_ln[corner_line[k]] + 1}: texture coordinate index {tex_raw[k]} is out of range "
                f"(the file has {n_vt} 'vt' coordinates)"
            )
    return corner_counts, pos, tex, face_has_uv


def _fan_triangulate(corner_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fan triangulation (0, k, k + 1) of polygons with ``corner_counts`` (P,) corners stored one
    after another: (F, 3) indices into those corners, and (F,) the polygon of each triangle."""
    n_tri = corner_counts - 2
    tri_line = np.repeat(np.arange(len(corner_counts)), n_tri)
    first = np.cumsum(corner_counts) - corner_counts
    k = np.arange(len(tri_line)) - np.repeat(np.cumsum(n_tri) - n_tri, n_tri) + 1
    base = first[tri_line]
    return np.stack([base, base + k, base + k + 1], axis=1), tri_line


def _assemble_obj(parse: ObjParse, path: Path) -> TexturedMesh:
    """The mesh of ``parse`` without its texture (``_resolve_obj_texture`` adds that)."""
    return TexturedMesh(vertices=np.ascontiguousarray(parse.positions, dtype=np.float64),
                        faces=parse.faces.astype(np.int64), vertex_colors=parse.vertex_colors, source=path,
                        n_polygons=parse.n_polygons)


def _resolve_obj_texture(mesh: TexturedMesh, parse: ObjParse, path: Path) -> str:
    """Texture ``mesh`` with the material its faces use: read the MTL libraries, pick the single
    texture, load its image (with no texture, keep the file's UV layout when every face has one).

    Returns what the "no texture and no vertex colours" message of ``_validate`` adds for this
    file ("" when there is nothing to add)."""
    materials: dict[str, Path | None] = {}
    for ln, name in parse.material_libraries:
        materials.update(_load_mtllib(path, ln, name))
    texture_path, material_name = _pick_texture(path, materials, parse.used_materials)
    if material_name is not None:
        mesh.material_name = material_name
    if texture_path is not None:
        _attach_texture(mesh, parse, texture_path, material_name, path)
    elif parse.polygon_has_uv.all():
        # No texture, but the UV layout is part of the user's mesh: keep it for the outputs.
        mesh.uv = np.ascontiguousarray(parse.uv, dtype=np.float64)
        mesh.face_uv = parse.face_uv.astype(np.int64)
    if texture_path is None and parse.vertex_colors is None:
        if not parse.material_libraries:
            return " (no 'mtllib' statement, so no material or texture)"
        if material_name is not None:
            return f" (material '{material_name}' has no map_Kd texture)"
    return ""


def _attach_texture(mesh: TexturedMesh, parse: ObjParse, texture_path: Path, material_name: str | None,
                    path: Path) -> None:
    """Put the image at ``texture_path`` and the file's UVs on ``mesh``; when no face has texture
    coordinates, vertex colours stand in (with a warning) if the file has them."""
    tri_has_uv = parse.polygon_has_uv[parse.face_polygon]
    if not tri_has_uv.any():
        if parse.vertex_colors is None:
            raise PbidrError(
                f"{path}: material '{material_name}' has texture {texture_path.name} but the faces have no "
                f"texture coordinates (expected 'f v/vt ...')"
            )
        mesh.load_warnings.append(f"texture {texture_path.name} ignored: faces have no texture coordinates; using vertex colours")
        return
    if not tri_has_uv.all():
        line = parse.polygon_lines[parse.face_polygon[np.flatnonzero(~tri_has_uv)[0]]]
        raise PbidrError(f"{path}: line {line + 1}: face has no texture coordinates but the mesh is textured "
                         f"({int((~parse.polygon_has_uv).sum())} faces without 'vt')")
    mesh.texture = _read_texture(texture_path, path)
    mesh.texture_path = texture_path
    mesh.uv = np.ascontiguousarray(parse.uv, dtype=np.float64)
    mesh.face_uv = parse.face_uv.astype(np.int64)


def _pick_texture(path: Path, materials: dict[str, Path | None], used: list[str]) -> tuple[Path | None, str | None]:
    """The single texture the faces use, and its material's name."""
    if not used:
        # No usemtl: fine when the MTL leaves no choice.
        textured = {name: tex for name, tex in materials.items() if tex is not None}
        distinct = {tex for tex in textured.values()}
        if len(distinct) > 1:
            names = ", ".join(f"{n} ({t.name})" for n, t in textured.items())
            raise PbidrError(f"{path}: no 'usemtl' and the MTL defines {len(distinct)} different textures: {names}; "
                             f"this pipeline needs a single texture")
        if textured:
            name = next(iter(textured))
            return textured[name], name
        return None, (next(iter(materials)) if materials else None)
    textured = {name: materials[name] for name in used if materials.get(name) is not None}
    distinct = {tex for tex in textured.values()}
    if len(distinct) > 1:
        names = ", ".join(f"{n} ({t.name})" for n, t in textured.items())
        raise PbidrError(f"{path}: faces use {len(distinct)} different textures in materials {names}; "
                         f"this pipeline needs a single texture (bake them into one atlas)")
    if textured:
        untextured = [n for n in used if n not in textured]
        if untextured:
            raise PbidrError(f"{path}: faces use {len(used)} materials ({', '.join(used)}) but only "
                             f"{', '.join(textured)} has a texture; this pipeline needs a single textured material")
        name = next(iter(textured))
        return textured[name], name
    return None, used[0]


def _load_mtllib(obj_path: Path, ln: int, spec: str) -> dict[str, Path | None]:
    """Materials (name -> resolved map_Kd path or None) of one ``mtllib`` statement."""
    if not spec:
        raise PbidrError(f"{obj_path}: line {ln + 1}: 'mtllib' without a file name")
    base = obj_path.parent
    # The statement may list several files; a single name may contain spaces. Prefer the whole
    # rest of the line when that file exists.
    found = _existing(base, spec)
    names = [found] if found is not None else [_existing(base, s) for s in spec.split()]
    if not names or any(n is None for n in names):
        raise PbidrError(f"{obj_path}: material library '{spec}' (line {ln + 1}) is missing: "
                         f"{base / spec.replace(chr(92), '/')} not found")
    out: dict[str, Path | None] = {}
    for mtl in names:
        out.update(_parse_mtl(mtl))
    return out


def _existing(base: Path, name: str) -> Path | None:
    """``name`` relative to ``base`` (Windows separators allowed), else its file name in ``base``."""
    p = Path(name.replace("\\", "/"))
    full = p if p.is_absolute() else base / p
    if full.is_file():
        return full
    alt = base / p.name
    return alt if p.name and alt.is_file() else None


def _parse_mtl(mtl: Path) -> dict[str, Path | None]:
    materials: dict[str, Path | None] = {}
    current: str | None = None
    for ln, line in enumerate(_split_lines(_read_text(mtl, "the material library"))):
        line = line.strip()
        if not line or line[0] == "#":
            continue
        key, _, rest = line.partition(" ")
        if "\t" in key:
            key, _, rest2 = line.partition("\t")
            rest = rest2
        key = key.lower()
        rest = rest.strip()
        if key == "newmtl":
            current = rest
            materials.setdefault(current, None)
        elif key == "map_kd":
            if current is None:
                current = ""
            name = _map_file_name(rest)
            if not name:
                raise PbidrError(f"{mtl}: line {ln + 1}: 'map_Kd' without a texture file name")
            materials[current] = _resolve_texture(mtl, name)
    return materials


def _map_file_name(rest: str) -> str:
    """The file name of a ``map_*`` statement: the rest of the line after the known options."""
    toks = list(re.finditer(r"\S+", rest))
    i = 0
    while i < len(toks):
        opt = toks[i].group().lower()
        if opt not in _MAP_OPTIONS:
            break
        lo, hi = _MAP_OPTIONS[opt]
        j = i + 1
        taken = 0
        while taken < hi and j < len(toks) - 1:  # always leave a token for the file name
            if taken >= lo and not _is_number(toks[j].group()):
                break
            j += 1
            taken += 1
        i = j
    if i >= len(toks):
        return ""
    return rest[toks[i].start():].strip()


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _resolve_texture(mtl: Path, name: str) -> Path:
    """Texture path relative to the MTL's folder; a path written on another machine falls back
    to its file name beside the MTL. The result need not exist (checked when read, so the
    message can name the path as written)."""
    found = _existing(mtl.parent, name)
    if found is not None:
        return found
    p = Path(name.replace("\\", "/"))
    return p if p.is_absolute() else mtl.parent / p


def _read_texture(texture_path: Path, mesh_path: Path) -> np.ndarray:
    if not texture_path.is_file():
        raise PbidrError(f"{mesh_path}: texture file {texture_path} is missing (referenced by map_Kd)")
    try:
        with Image.open(texture_path) as img:
            img.load()
            return image_to_rgb8(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PbidrError(f"{mesh_path}: texture file {texture_path} is unreadable ({exc})") from None


def image_to_rgb8(img: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB (alpha dropped, grey replicated,
    16-bit scaled down, palettes expanded)."""
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img)
    elif mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0
        arr = np.repeat(np.clip(np.rint(a), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    elif mode == "F":
        a = np.asarray(img).astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        arr = np.repeat(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    elif mode in ("P", "PA", "LA", "La", "RGBa", "1"):
        arr = np.asarray(img.convert("RGBA"))[..., :3]
    else:
        arr = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(arr, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# PLY / GLB / GLTF through trimesh
# --------------------------------------------------------------------------------------------

def load_trimesh_parts(path: Path, **load_kwargs) -> list:
    """The non-empty triangle meshes of a file read by trimesh (``process=False``; scene transforms
    applied), or a one-line PbidrError when it is unreadable or holds no faces."""
    import logging
    import warnings

    import trimesh

    # trimesh logs ("unable to convert colors!") and warns about a damaged file before failing or
    # giving up a part; the user gets our one line instead.
    log = logging.getLogger("trimesh")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            loaded = trimesh.load(str(path), process=False, **load_kwargs)
    except Exception as exc:  # trimesh raises many types for a bad file; all mean "unreadable"
        raise PbidrError(f"{path}: cannot read the mesh ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    finally:
        log.setLevel(level)
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        parts = [loaded]
    else:
        parts = []
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        raise PbidrError(f"{path}: empty mesh (no faces; a point cloud or empty scene cannot be used)")
    return parts


def _load_trimesh(path: Path) -> TexturedMesh:
    parts = load_trimesh_parts(path)

    textures = [_trimesh_texture(p) for p in parts]
    n_textured = sum(t is not None for t in textures)
    texture = None
    material_name = "material0"
    uv = None
    if n_textured:
        if n_textured != len(parts):
            raise PbidrError(f"{path}: {len(parts) - n_textured} of {len(parts)} parts have no texture; "
                             f"this pipeline needs one texture over the whole mesh")
        images: list[np.ndarray] = []
        names: list[str] = []
        for p, img in zip(parts, textures):
            if not any(img.shape == o.shape and np.array_equal(img, o) for o in images):
                images.append(img)
                names.append(str(getattr(p.visual.material, "name", None) or f"#{len(images)}"))
        if len(images) > 1:
            raise PbidrError(f"{path}: the mesh uses {len(images)} different textures (materials {', '.join(names)}); "
                             f"this pipeline needs a single texture (bake them into one atlas)")
        texture = images[0]
        material_name = getattr(parts[0].visual.material, "name", None) or material_name
        uv = np.concatenate([np.asarray(p.visual.uv, dtype=np.float64) for p in parts])

    colors = [_trimesh_vertex_colors(p) for p in parts]
    vertex_colors = np.concatenate(colors) if all(c is not None for c in colors) else None

    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])[:-1]
    vertices = np.concatenate([np.asarray(p.vertices, dtype=np.float64) for p in parts])
    faces = np.concatenate([np.asarray(p.faces, dtype=np.int64) + o for p, o in zip(parts, offsets)])
    mesh = TexturedMesh(vertices=vertices, faces=faces, vertex_colors=vertex_colors, source=path,
                        material_name=str(material_name))
    if texture is not None:
        mesh.texture = texture
        mesh.uv = uv
        mesh.face_uv = faces.copy()
    return mesh


def _trimesh_texture(part) -> np.ndarray | None:
    """(H, W, 3) uint8 base-colour texture of a trimesh part with per-vertex UVs, else None."""
    visual = part.visual
    if getattr(visual, "kind", None) != "texture" or getattr(visual, "uv", None) is None:
        return None
    if len(visual.uv) != len(part.vertices):
        return None
    material = getattr(visual, "material", None)
    img = getattr(material, "baseColorTexture", None)
    if img is None:
        img = getattr(material, "image", None)
    if img is None:
        return None
    # glTF's baseColorFactor is deliberately not applied: trimesh writes its default grey diffuse
    # (0.4) as the factor of every textured mesh it exports, so applying it would darken most
    # files made by Python tools; the texture is what the user sees as the face's colour.
    return image_to_rgb8(img)


def _trimesh_vertex_colors(part) -> np.ndarray | None:
    visual = part.visual
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        return np.ascontiguousarray(np.asarray(visual.vertex_colors)[:, :3], dtype=np.uint8)
    if kind == "face":
        from trimesh.visual.color import face_to_vertex_color

        vc = face_to_vertex_color(part, np.asarray(visual.face_colors))
        return np.ascontiguousarray(np.asarray(vc)[:, :3], dtype=np.uint8)
    return None


# --------------------------------------------------------------------------------------------
# Validation shared by all formats
# --------------------------------------------------------------------------------------------

def _validate(mesh: TexturedMesh, path: Path, why_no_texture: str) -> None:
    """``why_no_texture``: added to the message for a mesh with neither texture nor vertex colours."""
    v, f = mesh.vertices, mesh.faces
    if len(v) == 0:
        raise PbidrError(f"{path}: empty mesh (no vertices)")
    if len(f) == 0:
        raise PbidrError(f"{path}: empty mesh (no faces)")
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise PbidrError(f"{path}: unexpected array shapes (vertices {v.shape}, faces {f.shape})")
    finite = np.isfinite(v).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise PbidrError(f"{path}: {len(bad)} vertices have NaN or infinite coordinates (first: vertex {bad[0] + 1})")
    out = (f < 0) | (f >= len(v))
    if out.any():
        k = int(np.flatnonzero(out.any(axis=1))[0])
        raise PbidrError(f"{path}: face {k + 1} refers to vertex index {int(f[k][out[k]][0])} "
                         f"but the mesh has {len(v)} vertices")
    if mesh.has_texture:
        if mesh.face_uv.shape != f.shape:
            raise PbidrError(f"{path}: texture-coordinate faces {mesh.face_uv.shape} do not match faces {f.shape}")
        out = (mesh.face_uv < 0) | (mesh.face_uv >= len(mesh.uv))
        if out.any():
            k = int(np.flatnonzero(out.any(axis=1))[0])
            raise PbidrError(f"{path}: face {k + 1} refers to texture coordinate {int(mesh.face_uv[k][out[k]][0])} "
                             f"but the mesh has {len(mesh.uv)}")
        if not np.isfinite(mesh.uv).all():
            raise PbidrError(f"{path}: texture coordinates contain NaN or infinite values")
        if mesh.texture.ndim != 3 or mesh.texture.shape[0] == 0 or mesh.texture.shape[1] == 0:
            raise PbidrError(f"{path}: texture image has an unusable shape {mesh.texture.shape}")
    elif mesh.vertex_colors is None:
        raise PbidrError(f"{path}: the mesh has no texture and no vertex colours{why_no_texture}; "
                         f"a textured mesh (OBJ+MTL+image, GLB) or a vertex-coloured one is needed")
    elif len(mesh.vertex_colors) != len(v):
        raise PbidrError(f"{path}: {len(mesh.vertex_colors)} vertex colours for {len(v)} vertices")
    tri = v[f]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    diag = float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
    if not (area2 > 1e-12 * diag * diag).any() or diag == 0.0:
        raise PbidrError(f"{path}: all {len(f)} faces are degenerate (zero area)")
