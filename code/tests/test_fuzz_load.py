"""Parser fuzzing: mutated OBJ / MTL / PNG / PLY files end in a loaded mesh or one PbidrError line.

Never a traceback, a hang or an out-of-memory: every case is seeded (the failing case's name says
how to rebuild it) and the whole set must run in seconds.
"""

from __future__ import annotations

import io
import time
import traceback

import numpy as np
import pytest
from PIL import Image

from pbidr.errors import PbidrError
from pbidr.io.load import load_mesh
from pbidr.io.mesh import TexturedMesh

N_CASES = 1200
SEED = 11


def _grid(n: int = 4):
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    verts = np.stack([u.ravel() * 10, v.ravel() * 10, np.sin(u.ravel() * 3)], 1)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a = i * n + j
            faces += [(a, a + 1, a + n + 1), (a, a + n + 1, a + n)]
    uv = np.stack([u.ravel(), v.ravel()], 1)
    return verts, np.array(faces), uv


def _png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def base_files() -> dict[str, dict[str, bytes]]:
    """Valid inputs: textured OBJ (+MTL +PNG), quad OBJ with negative indices, vertex-coloured OBJ,
    ASCII and binary PLY with vertex colours."""
    verts, faces, uv = _grid()
    col = (np.arange(len(verts))[:, None] * [0.05, 0.03, 0.02]) % 1.0
    obj = ["mtllib mesh.mtl", "o face"] + [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in verts]
    obj += [f"vt {a:.4f} {b:.4f}" for a, b in uv] + ["usemtl skin", "s 1"]
    obj += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
    mtl = "newmtl skin\nKa 1 1 1\nKd 1 1 1\nmap_Kd -s 1 1 1 mesh.png\n"
    quad = [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in verts[:4]] + ["f -4 -3 -1 -2"]
    vc = [f"v {x:.4f} {y:.4f} {z:.4f} {r:.3f} {g:.3f} {b:.3f}" for (x, y, z), (r, g, b) in zip(verts, col)]
    vc += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    import trimesh

    tm = trimesh.Trimesh(verts, faces, vertex_colors=(col * 255).astype(np.uint8), process=False)
    return {
        "textured_obj": {"mesh.obj": "\n".join(obj).encode() + b"\n", "mesh.mtl": mtl.encode(), "mesh.png": _png()},
        "quad_vc_obj": {"mesh.obj": ("\n".join(q + " 1 0 0" if q.startswith("v") else q for q in quad) + "\n").encode()},
        "vc_obj": {"mesh.obj": ("\n".join(vc) + "\n").encode()},
        "ascii_ply": {"mesh.ply": trimesh.exchange.ply.export_ply(tm, encoding="ascii")},
        "binary_ply": {"mesh.ply": trimesh.exchange.ply.export_ply(tm, encoding="binary")},
    }


# ----------------------------------------------------------------------------------------------
# Mutations: each takes (bytes, rng) and returns bytes


def truncate(data: bytes, rng) -> bytes:
    return data[: int(rng.integers(0, max(len(data), 1)))]


def random_bytes(data: bytes, rng) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        if b:
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
    return bytes(b)


def insert_garbage(data: bytes, rng) -> bytes:
    k = int(rng.integers(0, len(data) + 1))
    return data[:k] + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes() + data[k:]


def _edit_lines(data: bytes, rng, prefix: bytes, fn) -> bytes:
    lines = data.split(b"\n")
    idx = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    if idx:
        i = idx[int(rng.integers(0, len(idx)))]
        lines[i] = fn(lines[i], rng)
    return b"\n".join(lines)


def _replace_token(line: bytes, rng, values) -> bytes:
    toks = line.split(b" ")
    if len(toks) > 1:
        k = int(rng.integers(1, len(toks)))
        parts = toks[k].split(b"/")
        parts[int(rng.integers(0, len(parts)))] = values[int(rng.integers(0, len(values)))]
        toks[k] = b"/".join(parts)
    return b" ".join(toks)


HUGE = [b"99999999999999999999999", b"2147483648", b"9223372036854775807", b"18446744073709551616", b"1e30",
        b"4294967296", b"100000"]
NEGATIVE = [b"-1", b"-2", b"-999999", b"-9223372036854775808", b"-99999999999999999999999", b"0", b"-0"]
NUMBERS = [b"nan", b"inf", b"-inf", b"1e400", b"", b"x", b"1..2", b"0x10", b"--1", b"1e", b"\xff\xfe"]


def huge_index(data, rng):
    return _edit_lines(data, rng, b"f ", lambda line, r: _replace_token(line, r, HUGE))


def negative_index(data, rng):
    return _edit_lines(data, rng, b"f ", lambda line, r: _replace_token(line, r, NEGATIVE))


def bad_number(data, rng):
    return _edit_lines(data, rng, [b"v ", b"vt ", b"f "][int(rng.integers(0, 3))],
                       lambda line, r: _replace_token(line, r, NUMBERS))


def zero_area(data, rng):
    def fn(line, r):
        toks = line.split(b" ")
        return b" ".join([toks[0], toks[1], toks[1], toks[-1]]) if len(toks) >= 4 else line
    out = data
    for _ in range(int(rng.integers(1, 40))):
        out = _edit_lines(out, rng, b"f ", fn)
    return out


def duplicate_lines(data, rng):
    lines = data.split(b"\n")
    for _ in range(int(rng.integers(1, 10))):
        i = int(rng.integers(0, len(lines)))
        lines.insert(i, lines[i])
    return b"\n".join(lines)


def drop_lines(data, rng):
    lines = data.split(b"\n")
    for _ in range(int(rng.integers(1, 10))):
        if lines:
            del lines[int(rng.integers(0, len(lines)))]
    return b"\n".join(lines)


def wrong_uv_count(data, rng):
    lines = data.split(b"\n")
    vt = [i for i, line in enumerate(lines) if line.startswith(b"vt ")]
    if not vt:
        return data
    if rng.random() < 0.5:  # fewer vt than the faces use
        drop = set(rng.choice(vt, size=int(rng.integers(1, len(vt) + 1)), replace=False).tolist())
        return b"\n".join(line for i, line in enumerate(lines) if i not in drop)
    for i in vt:  # each vt with 1 or 3+ values
        lines[i] = b"vt 0.5" if rng.random() < 0.5 else lines[i] + b" 0 7"
    return b"\n".join(lines)


def ply_header(data, rng):
    head, sep, body = data.partition(b"end_header\n")
    lines = head.split(b"\n")
    el = [i for i, line in enumerate(lines) if line.startswith(b"element") or line.startswith(b"property")
          or line.startswith(b"format")]
    i = el[int(rng.integers(0, len(el)))]
    choices = [b"element vertex 99999999999", b"element face 4000000000", b"element vertex -5",
               b"element face 0", b"element vertex 1", b"property float x", b"property list uchar int vertex_indices",
               b"property list uint int vertex_indices", b"property double y", b"format binary_big_endian 1.0",
               b"format ascii 1.0", b"format binary_little_endian 1.0", b"property uchar red", b"comment x",
               b"element vertex 1e9", b"property list int int vertex_indices"]
    lines[i] = choices[int(rng.integers(0, len(choices)))]
    return b"\n".join(lines) + sep + body


def ply_big_list(data, rng):
    """A face whose corner count claims a huge list (ASCII) or a huge uchar/int count (binary)."""
    if b"format ascii" in data:
        return _edit_lines(data, rng, b"3 ", lambda line, r: b"4000000000" + line[1:])
    head, sep, body = data.partition(b"end_header\n")
    b = bytearray(body)
    if b:
        k = int(rng.integers(max(0, len(b) - 200), len(b)))
        b[k : k + 4] = (2**31 - 1).to_bytes(4, "little")
    return head + sep + bytes(b)


GENERIC = [truncate, random_bytes, insert_garbage, duplicate_lines, drop_lines]
OBJ_ONLY = [huge_index, negative_index, bad_number, zero_area, wrong_uv_count]


def _mutate_case(rng, bases):
    name = list(bases)[int(rng.integers(0, len(bases)))]
    files = dict(bases[name])
    target = list(files)[int(rng.integers(0, len(files)))]
    special = "none"
    if name == "textured_obj" and rng.random() < 0.06:
        special = ["no texture", "no mtl", "texture renamed"][int(rng.integers(0, 3))]
        if special == "no texture":
            del files["mesh.png"]
        elif special == "no mtl":
            del files["mesh.mtl"]
        else:
            files["mesh.mtl"] = files["mesh.mtl"].replace(b"mesh.png", b"missing/face.jpg")
        return f"{name}/{special}", files
    pool = list(GENERIC)
    if target == "mesh.obj":
        pool += OBJ_ONLY * 2
    elif target == "mesh.ply":
        pool += [ply_header, ply_big_list] * 2
    mutations = [pool[int(rng.integers(0, len(pool)))] for _ in range(int(rng.integers(1, 3)))]
    data = files[target]
    for m in mutations:
        data = m(data, rng)
    files[target] = data
    return f"{name}/{target}/{'+'.join(m.__name__ for m in mutations)}", files


def test_valid_bases_load(tmp_path):
    for name, files in base_files().items():
        folder = tmp_path / name
        folder.mkdir()
        for fname, data in files.items():
            (folder / fname).write_bytes(data)
        mesh = load_mesh(folder / next(f for f in files if f.startswith("mesh.") and f[5:] in ("obj", "ply")))
        assert isinstance(mesh, TexturedMesh) and len(mesh.faces) >= 2, name


@pytest.mark.filterwarnings("error")  # a stray warning is output the user did not ask for
def test_fuzzed_files_load_or_fail_with_one_line(tmp_path, capfd):
    bases = base_files()
    rng = np.random.default_rng(SEED)
    outcome = {"loaded": 0, "error": 0}
    slowest = (0.0, "")
    t_all = time.perf_counter()
    for case in range(N_CASES):
        name, files = _mutate_case(rng, bases)
        folder = tmp_path / f"c{case:04d}"
        folder.mkdir()
        for fname, data in files.items():
            (folder / fname).write_bytes(data)
        mesh_file = folder / ("mesh.obj" if "mesh.obj" in files else "mesh.ply")
        t0 = time.perf_counter()
        try:
            mesh = load_mesh(mesh_file)
        except PbidrError as err:
            msg = str(err)
            assert msg and "\n" not in msg and str(mesh_file) in msg, f"case {case} ({name}): {msg!r}"
            outcome["error"] += 1
        except Exception:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case} ({name}, seed {SEED}) raised instead of PbidrError:\n{traceback.format_exc()}")
        else:
            assert len(mesh.faces) and np.isfinite(mesh.vertices).all(), f"case {case} ({name})"
            assert mesh.faces.min() >= 0 and mesh.faces.max() < len(mesh.vertices), f"case {case} ({name})"
            outcome["loaded"] += 1
        dt = time.perf_counter() - t0
        slowest = max(slowest, (dt, f"case {case} ({name})"))
        assert dt < 2.0, f"case {case} ({name}) took {dt:.1f} s"
    total = time.perf_counter() - t_all
    out, err = capfd.readouterr()
    assert not out.strip() and not err.strip(), (out + err)[:500]  # nothing printed besides errors raised
    print(f"fuzz: {N_CASES} cases, {outcome}, {total:.1f} s, slowest {slowest[0] * 1000:.0f} ms: {slowest[1]}")
    assert outcome["loaded"] > 50 and outcome["error"] > 300, outcome  # both paths were exercised
    assert total < 30, total
