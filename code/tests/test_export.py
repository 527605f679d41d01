"""Artists' outputs on exact answers, without Blender: the 16-bit PNG's mid-level and strength, the
float EXR in mm, the GLB's structure, MikkTSpace tangents of a plane, and tangent-space normal maps
of a zero displacement (flat blue) and of a known tilt. test_blender.py opens them in Blender."""

import json
import struct

import cv2
import numpy as np
import pytest

from pbidr.errors import PbidrError
from pbidr.evaluation import export as E
from pbidr.evaluation.displacement import subdivide_midpoint
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess.sample import coarse_surface, displacement_uv, grid_faces

STEP_MM = E.DISPLACEMENT_STRENGTH_MM / 65535.0


def plane(n: int = 9, size: float = 100.0, flip_v: bool = False) -> TexturedMesh:
    """A flat n x n grid in the z = 0 plane (mm), normal +z, u along +x and v along +y (or -y)."""
    g = np.linspace(0.0, 1.0, n)
    u, v = np.meshgrid(g, g)
    uv = np.stack([u.ravel(), v.ravel()], 1)
    vertices = np.stack([(uv[:, 0] - 0.5) * size, (uv[:, 1] - 0.5) * size, np.zeros(len(uv))], 1)
    faces = grid_faces(n, n)
    if flip_v:
        uv = uv * [1.0, -1.0] + [0.0, 1.0]
    texture = np.full((32, 32, 3), 200, np.uint8)
    return TexturedMesh(vertices, faces, uv=uv, face_uv=faces, texture=texture)


def face_mesh(grid=(24, 30)) -> TexturedMesh:
    """The built-in sample's coarse face surface (curved, mm) on a small grid, texture included."""
    g = np.meshgrid(np.linspace(0, 1, grid[0]), np.linspace(0, 1, grid[1]))
    uv = np.stack([g[0].ravel(), g[1].ravel()], 1)
    faces = grid_faces(*grid)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return TexturedMesh(coarse_surface(uv[:, 0], uv[:, 1]), faces, uv=uv, face_uv=faces, texture=texture)


def displaced(mesh: TexturedMesh, d: np.ndarray) -> TexturedMesh:
    return mesh.with_vertices(mesh.vertices + d[:, None] * mesh.vertex_normals())


# ---------------------------------------------------------------------------------------------
# Displacement: 16-bit PNG (mid-level 0.5, strength 8 mm) and float EXR (mm)


def test_png_mid_level_and_strength_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    d = rng.uniform(-3.99, 3.99, (40, 50))
    d[0, :3] = [0.0, 4.0, -4.0]
    q, clipped = E.encode_displacement_png(d)
    assert q.dtype == np.uint16 and not clipped.any()
    assert q[0, 0] == 32768 and q[0, 1] == 65535 and q[0, 2] == 0  # 0 mm is the mid-level, +-4 mm the ends
    E.write_png16_grey(tmp_path / "d.png", q)
    back = E.decode_displacement_png(E.read_png16_grey(tmp_path / "d.png"))
    assert np.max(np.abs(back - d)) <= STEP_MM / 2 + 1e-9
    # What Blender's Displace modifier computes: (value - mid_level) * strength, value = png / 65535.
    assert np.allclose((q / 65535.0 - 0.5) * 8.0, back)


def test_png_clipping_is_reported():
    d = np.array([[0.0, 4.5, -6.0, np.nan]])
    q, clipped = E.encode_displacement_png(d)
    assert clipped.tolist() == [[False, True, True, False]]
    assert q.tolist() == [[32768, 65535, 0, 32768]]  # non-finite: written as the mid-level (no displacement)


def test_exr_round_trip_float32(tmp_path):
    rng = np.random.default_rng(4)
    d = rng.normal(0.0, 1.0, (33, 47)).astype(np.float32)
    E.write_exr(tmp_path / "d.exr", d)
    back = E.read_exr(tmp_path / "d.exr")
    assert back.dtype == np.float32 and back.shape == d.shape
    np.testing.assert_array_equal(back, d)  # float32 end to end: no quantisation at all


def test_exr_errors_name_the_file(tmp_path):
    with pytest.raises(PbidrError, match="nope.exr"):
        E.read_exr(tmp_path / "nope.exr")
    (tmp_path / "bad.exr").write_bytes(b"not an exr")
    with pytest.raises(PbidrError, match="bad.exr.*not a readable EXR"):
        E.read_exr(tmp_path / "bad.exr")
    with pytest.raises(PbidrError, match="x.exr.*\\(H, W\\)"):
        E.write_exr(tmp_path / "x.exr", np.zeros((2, 2, 3)))


def test_export_writes_millimetres_for_a_mesh_in_metres(tmp_path):
    """The same face in mm and in metres gives the same EXR and PNG (both in mm) and the same GLB
    (in metres); the Blender strength is in the mesh's own units."""
    mesh_mm = face_mesh()
    d_mm = displacement_uv(mesh_mm.uv[:, 0], mesh_mm.uv[:, 1])
    mesh_m = mesh_mm.with_vertices(mesh_mm.vertices / 1000.0)
    out = {}
    for name, mesh, d, f in (("mm", mesh_mm, d_mm, 1.0), ("m", mesh_m, d_mm / 1000.0, 1000.0)):
        (tmp_path / name).mkdir()
        out[name] = E.export_artist_outputs(tmp_path / name, mesh, displaced(mesh, d), d, units_to_mm=f, size=(64, 64))
    exr_mm, exr_m = E.read_exr(tmp_path / "mm" / "displacement.exr"), E.read_exr(tmp_path / "m" / "displacement.exr")
    assert np.abs(exr_mm).max() > 0.3  # the sample's wrinkles, in mm
    np.testing.assert_allclose(exr_m, exr_mm, atol=1e-5)
    assert out["mm"]["displacement_uv"]["blender_displace"]["strength"] == 8.0
    assert out["m"]["displacement_uv"]["blender_displace"]["strength"] == pytest.approx(0.008)
    pos = {}
    for name in ("mm", "m"):
        doc, binary = E.read_glb(tmp_path / name / "detailed.glb")
        pos[name] = E.glb_accessor(doc, binary, doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    np.testing.assert_allclose(pos["m"], pos["mm"], atol=1e-7)
    assert np.ptp(pos["mm"][:, 1]) == pytest.approx(np.ptp(mesh_mm.vertices[:, 1]) / 1000.0, rel=1e-5)


def test_glb_turns_the_face_to_gltf_up_and_front(tmp_path):
    """A face stored Z-up and looking toward -y comes out of the GLB +Y up and facing +Z, the same
    as the face in the default frame; normals and tangents turn with it."""
    mesh = face_mesh()
    d = displacement_uv(mesh.uv[:, 0], mesh.uv[:, 1])
    to_zup = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # (x, y, z) -> (x, -z, y): up +z, front -y
    turned = mesh.with_vertices(mesh.vertices @ to_zup.T)
    np.testing.assert_allclose(E.gltf_rotation(front=(0, -1, 0), up=(0, 0, 1)), to_zup.T, atol=1e-12)
    attrs = {}
    for name, m, kw in (("default", mesh, {}), ("zup", turned, {"front": (0, -1, 0), "up": (0, 0, 1)})):
        (tmp_path / name).mkdir()
        E.export_artist_outputs(tmp_path / name, m, displaced(m, d), d, size=(32, 32), **kw)
        doc, binary = E.read_glb(tmp_path / name / "detailed.glb")
        a = doc["meshes"][0]["primitives"][0]["attributes"]
        attrs[name] = {k: E.glb_accessor(doc, binary, i) for k, i in a.items()}
    for key in ("POSITION", "NORMAL", "TANGENT"):
        np.testing.assert_allclose(attrs["zup"][key], attrs["default"][key], atol=1e-5)
    assert attrs["default"]["NORMAL"][:, 2].mean() > 0.5  # the face looks toward +Z


def test_scan_frame_reads_units_and_rig(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"units": "m", "rig": {"front": [0, -1, 0], "up": [0, 0, 1]}}))
    frame = E.scan_frame(tmp_path)
    assert frame.units_to_mm == 1000.0 and frame.front == (0.0, -1.0, 0.0) and frame.up == (0.0, 0.0, 1.0)
    assert "meta.json" in frame.units_source
    (tmp_path / "meta.json").write_text("{}")
    assert E.scan_frame(tmp_path).units_to_mm == 1.0 and "assumed mm" in E.scan_frame(tmp_path).units_source
    # what `pbidr preprocess --units cm` writes, and a scan made without --units
    (tmp_path / "meta.json").write_text(json.dumps({"units": {"unit": "cm", "declared": True, "mm_per_unit": 10.0}}))
    assert E.scan_frame(tmp_path).units_to_mm == 10.0
    (tmp_path / "meta.json").write_text(json.dumps({"units": {"unit": "mm", "declared": False}}))
    assert E.scan_frame(tmp_path).units_to_mm == 1.0 and "assumed mm" in E.scan_frame(tmp_path).units_source


def test_export_decodes_to_the_displacement_at_the_vertices(tmp_path):
    mesh = face_mesh((40, 50))
    d = displacement_uv(mesh.uv[:, 0], mesh.uv[:, 1])
    meta = E.export_artist_outputs(tmp_path, mesh, displaced(mesh, d), d, size=(512, 512))
    from pbidr.evaluation.uv_maps import sample_uv_map

    png = E.decode_displacement_png(E.read_png16_grey(tmp_path / "displacement_uv.png"))
    exr = E.read_exr(tmp_path / "displacement.exr")
    assert np.max(np.abs(png - exr)) <= STEP_MM / 2 + 1e-6
    # Bilinear reads at the vertices (what a Displace modifier does) give the displacement back.
    rms = np.sqrt(np.mean((sample_uv_map(png, mesh.uv) - d) ** 2))
    assert rms < 0.01 and meta["displacement_uv"]["clipped_fraction"] == 0.0
    lo, hi = meta["displacement_uv"]["range_mm"]  # texel centres miss the extreme vertices by a little
    assert d.min() - 1e-6 <= lo <= d.min() + 0.05 and d.max() - 0.05 <= hi <= d.max() + 1e-6


# ---------------------------------------------------------------------------------------------
# Tangent frames and tangent-space normal maps


def test_mikktspace_tangents_of_a_plane():
    t = E.mikktspace_tangents(plane())
    np.testing.assert_allclose(t[..., :3].reshape(-1, 3), np.tile([1.0, 0.0, 0.0], (t.shape[0] * 3, 1)), atol=1e-12)
    assert np.all(t[..., 3] == 1.0)  # b = cross(+z, +x) = +y: v increases along +y
    mirrored = E.mikktspace_tangents(plane(flip_v=True))
    assert np.all(mirrored[..., 3] == -1.0)  # v runs down: bitangent = -cross(n, t) = -y


def test_mikktspace_tangents_are_unit_and_perpendicular_on_a_curved_face():
    mesh = face_mesh()
    t = E.mikktspace_tangents(mesh)
    n = mesh.vertex_normals()[mesh.faces]
    np.testing.assert_allclose(np.linalg.norm(t[..., :3], axis=2), 1.0, atol=1e-12)
    assert np.max(np.abs(np.sum(t[..., :3] * n, axis=2))) < 1e-12
    # Corners that share a vertex share its tangent (no UV seams here).
    per_vertex = np.zeros((len(mesh.vertices), 3))
    per_vertex[mesh.faces.reshape(-1)] = t[..., :3].reshape(-1, 3)
    np.testing.assert_allclose(per_vertex[mesh.faces], t[..., :3], atol=1e-12)


def test_tangent_normal_map_of_zero_displacement_is_flat_blue(tmp_path):
    mesh = face_mesh()
    zero = np.zeros(len(mesh.vertices))
    # The coarse mesh displaced by nothing. (A midpoint subdivision of it would not be flat: its
    # normals show the coarse mesh's facets, as a bake from it in Blender would.)
    E.export_artist_outputs(tmp_path, mesh, displaced(mesh, zero), zero, size=(64, 64))
    rgb = cv2.cvtColor(cv2.imread(str(tmp_path / "normal_tangent_uv.png")), cv2.COLOR_BGR2RGB)
    assert rgb.shape == (64, 64, 3)
    assert np.abs(rgb.astype(int) - E.FLAT_TANGENT_RGB).max() <= 1  # (0.5, 0.5, 1) everywhere
    obj = cv2.cvtColor(cv2.imread(str(tmp_path / "normal_object_uv.png")), cv2.COLOR_BGR2RGB)
    assert np.abs(obj.astype(int) - [128, 128, 255]).max() > 60  # object space: the face's normals vary
    q = E.read_png16_grey(tmp_path / "displacement_uv.png")
    assert np.all(q == 32768)


def test_tangent_normal_map_of_a_tilt():
    """A ramp d = a x + b y on a plane tilts the normal to (-a, -b, 1) / |.|: in the plane's tangent
    frame (t = +x, bitangent +y) that is the tangent-space value (red -a, green -b); with u mirrored
    (t = -x) red changes sign and green does not."""
    a, b = 0.2, -0.3
    want = np.array([-a, -b, 1.0]) / np.linalg.norm([a, b, 1.0])

    def ramp(mesh):
        dense = subdivide_midpoint(mesh)
        return dense.with_vertices(dense.vertices + np.outer(dense.vertices[:, :2] @ [a, b], [0, 0, 1.0]))

    base = plane(9)
    c, coverage = E.tangent_normal_map(base, ramp(base), (16, 16))
    assert coverage.all()
    np.testing.assert_allclose(c.reshape(-1, 3), np.tile(want, (256, 1)), atol=1e-9)
    mirrored = base.with_vertices(base.vertices * [-1.0, 1.0, 1.0])
    mirrored.faces = base.faces[:, ::-1]
    mirrored.face_uv = base.face_uv[:, ::-1]  # keep the normal +z: u now runs along -x
    c_m, _ = E.tangent_normal_map(mirrored, ramp(mirrored), (16, 16))
    np.testing.assert_allclose(c_m.reshape(-1, 3), np.tile(want * [-1, 1, 1], (256, 1)), atol=1e-9)


def test_normal_rgb_round_trip():
    rng = np.random.default_rng(5)
    v = rng.normal(size=(8, 8, 3))
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    assert np.abs(E.decode_normal_rgb(E.encode_normal_rgb(v)) - v).max() <= 1.0 / 255.0 + 1e-12


# ---------------------------------------------------------------------------------------------
# GLB and PLY


def test_glb_structure(tmp_path):
    mesh = face_mesh()
    detailed = subdivide_midpoint(mesh)
    d = displacement_uv(detailed.uv[:, 0], detailed.uv[:, 1])
    detailed = displaced(detailed, d)
    meta = E.export_artist_outputs(tmp_path, mesh, detailed, d, size=(64, 64), displacement_mesh=detailed)
    data = (tmp_path / "detailed.glb").read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data)
    assert (magic, version, length) == (b"glTF", 2, len(data)) and length % 4 == 0
    json_len, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON" and json_len % 4 == 0
    doc = json.loads(data[20:20 + json_len])
    bin_len, bin_kind = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_kind == b"BIN\0" and doc["buffers"][0]["byteLength"] <= bin_len
    binary = data[28 + json_len:28 + json_len + bin_len]

    material = doc["materials"][0]
    base_tex = material["pbrMetallicRoughness"]["baseColorTexture"]["index"]
    normal_tex = material["normalTexture"]["index"]
    assert base_tex != normal_tex
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["material"] == 0 and prim["mode"] == 4
    attrs = prim["attributes"]
    assert set(attrs) == {"POSITION", "NORMAL", "TANGENT", "TEXCOORD_0"}
    acc = {k: doc["accessors"][i] for k, i in attrs.items()}
    n_vertices = acc["POSITION"]["count"]
    assert all(a["count"] == n_vertices for a in acc.values())
    assert acc["TANGENT"]["type"] == "VEC4" and acc["POSITION"]["type"] == "VEC3"
    assert doc["accessors"][prim["indices"]]["count"] == 3 * len(detailed.faces)
    assert n_vertices == meta["detailed_glb"]["vertices"] >= len(detailed.vertices)
    for view in doc["bufferViews"]:
        assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= len(binary)

    get = lambda k: E.glb_accessor(doc, binary, attrs[k])  # noqa: E731
    pos, nrm, tan, uv = get("POSITION"), get("NORMAL"), get("TANGENT"), get("TEXCOORD_0")
    np.testing.assert_allclose(acc["POSITION"]["min"], pos.min(0), rtol=1e-6)
    np.testing.assert_allclose(pos.max(0), detailed.vertices.max(0) / 1000.0, rtol=1e-5)  # metres
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tan[:, :3], axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(np.sum(tan[:, :3] * nrm, axis=1))) < 1e-5 and set(np.unique(tan[:, 3])) <= {-1.0, 1.0}
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    # glTF's UV origin is the image's top-left: v is flipped from the OBJ convention.
    indices = E.glb_accessor(doc, binary, prim["indices"]).reshape(-1, 3)
    np.testing.assert_allclose(uv[indices][..., 1], 1.0 - detailed.uv[detailed.face_uv][..., 1], atol=1e-6)
    np.testing.assert_allclose(pos[indices] * 1000.0, detailed.vertices[detailed.faces], atol=1e-3)

    images = [doc["images"][doc["textures"][t]["source"]] for t in (base_tex, normal_tex)]
    decoded = []
    for image in images:
        view = doc["bufferViews"][image["bufferView"]]
        png = binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]]
        decoded.append(cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        assert image["mimeType"] == "image/png"
    np.testing.assert_array_equal(decoded[0], mesh.texture)
    on_disk = cv2.cvtColor(cv2.imread(str(tmp_path / "normal_tangent_uv.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded[1], on_disk)


def test_glb_reader_refuses_other_files(tmp_path):
    (tmp_path / "x.glb").write_bytes(b"PK\x03\x04 not a glb at all")
    with pytest.raises(PbidrError, match="x.glb.*not a GLB"):
        E.read_glb(tmp_path / "x.glb")


def test_textured_ply(tmp_path):
    mesh = face_mesh()
    meta = E.write_textured_ply(tmp_path / "d.ply", mesh, "texture.png")
    data = (tmp_path / "d.ply").read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert "comment TextureFile texture.png" in header
    for prop in ("property float s", "property float t", "property uchar red"):
        assert prop in header
    rec = np.frombuffer(data[end:], dtype=[("p", "<f4", 3), ("uv", "<f4", 2), ("c", "u1", 3)], count=meta["vertices"])
    np.testing.assert_allclose(rec["p"], mesh.vertices, atol=1e-4)  # no seams here: one vertex per position
    np.testing.assert_allclose(rec["uv"], mesh.uv, atol=1e-6)
    from pbidr.evaluation.uv_maps import sample_uv_map

    np.testing.assert_array_equal(rec["c"], np.round(sample_uv_map(mesh.texture, mesh.uv)).astype(np.uint8))


def test_split_at_seams_duplicates_only_seam_vertices():
    # Two triangles sharing an edge whose UVs differ on one side: that shared vertex splits.
    mesh = TexturedMesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]]), np.array([[0, 1, 2], [1, 3, 2]]),
                        uv=np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 1.0]]),
                        face_uv=np.array([[0, 1, 2], [1, 3, 4]]))
    vid, tid, faces = E.split_at_seams(mesh)
    assert len(vid) == 5 and sorted(vid.tolist()) == [0, 1, 2, 2, 3]
    np.testing.assert_array_equal(vid[faces], mesh.faces)
    np.testing.assert_array_equal(tid[faces], mesh.face_uv)


def test_export_refuses_a_mesh_without_uvs(tmp_path):
    mesh = face_mesh()
    bare = TexturedMesh(mesh.vertices, mesh.faces)
    with pytest.raises(PbidrError, match="coarse mesh has no texture coordinates"):
        E.export_artist_outputs(tmp_path, bare, mesh, np.zeros(len(mesh.vertices)))
    with pytest.raises(PbidrError, match="units 'inch'"):
        E.units_to_mm("inch")
