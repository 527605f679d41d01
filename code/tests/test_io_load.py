"""Loading meshes: exact topology/UVs, every OBJ statement form, PLY/GLB, every user error, texture sampling."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from pbidr.errors import PbidrError
from pbidr.io.load import find_mesh_in_dir, image_to_rgb8, load_mesh, sample_texture_bilinear
from pbidr.io.mesh import TexturedMesh
from pbidr.io.obj import write_obj, write_ply

SQUARE_V = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float64)


def _png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)
    return path


def _textured_obj(tmp_path, name="m.obj", map_kd="tex.png", faces="f 1/1 2/2 3/3\nf 1/1 3/3 4/4\n"):
    """A textured unit square (OBJ + MTL + PNG)."""
    _png(tmp_path / "tex.png", np.full((4, 4, 3), 200))
    (tmp_path / "m.mtl").write_text(f"newmtl skin\nmap_Kd {map_kd}\n")
    obj = tmp_path / name
    obj.write_text(
        "mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nusemtl skin\n" + faces
    )
    return obj


def _expect_error(path, *words):
    with pytest.raises(PbidrError) as info:
        load_mesh(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert path.name in msg, msg
    for word in words:
        assert word.lower() in msg.lower(), msg
    return msg


# ------------------------------------------------------------------------------------------
# OBJ
# ------------------------------------------------------------------------------------------

def test_round_trip_keeps_topology_and_uv_seams(tmp_path):
    rng = np.random.default_rng(0)
    # A cube: 8 positions, 12 triangles, 14 UVs (a seam: UVs are indexed separately).
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    f = trimesh.creation.box().faces.astype(np.int64)
    uv = rng.random((14, 2))
    face_uv = rng.integers(0, 14, f.shape)
    texture = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    mesh = TexturedMesh(v, f, uv=uv, face_uv=face_uv, texture=texture, material_name="face_skin")
    path = write_obj(tmp_path / "out" / "mesh.obj", mesh)

    got = load_mesh(path)
    assert np.array_equal(got.faces, f) and got.faces.dtype == np.int64
    assert np.array_equal(got.face_uv, face_uv) and got.face_uv.dtype == np.int64
    assert got.vertices.shape == (8, 3) and got.uv.shape == (14, 2)
    np.testing.assert_allclose(got.vertices, v, atol=1e-6)
    np.testing.assert_allclose(got.uv, uv, atol=1e-7)
    assert np.array_equal(got.texture, texture) and got.texture.dtype == np.uint8
    assert got.texture_path == path.parent / "mesh.png"
    assert got.material_name == "face_skin"
    assert got.source == path and got.vertex_colors is None


def test_round_trip_vertex_coloured_obj(tmp_path):
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
    mesh = TexturedMesh(SQUARE_V, np.array([[0, 1, 2], [0, 2, 3]]), vertex_colors=colors)
    got = load_mesh(write_obj(tmp_path / "vc.obj", mesh))
    assert np.array_equal(got.vertex_colors, colors)
    assert not got.has_texture


def test_hand_written_obj_all_forms(tmp_path):
    sub = tmp_path / "maps" / "my dir"
    texture = np.zeros((2, 2, 3), dtype=np.uint8)
    texture[1, 0] = (255, 0, 0)
    _png(sub / "my tex.png", texture)
    (tmp_path / "face.mtl").write_bytes(
        b"# material\r\nnewmtl skin\r\nKd 1 1 1\r\n"
        b"map_Kd -s 1 1 1 -o 0 0 -bm 1 -clamp on maps/my dir/my tex.png\r\n"
    )
    text = (
        "# comment\n"
        "mtllib face.mtl\n"
        "o head\n"
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"
        "\n"
        "  v 2 0 0\n"  # indented statement
        "v 2 1 0 1.0\n"  # with w
        "vt 0 0\nvt 1 0\nvt 1 1 0\nvt 0 1\n"
        "vn 0 0 1\n"
        "g group1\ns 1\nusemtl skin\n"
        "f 1/1/1 2/2/1 3/3/1 4/4/1\n"  # quad, a/b/c
        "f -4/-4/1 -3/-3 \\\n  -1/-1\n"  # negative indices, a/b, continuation over two lines
        "f\t2/2 5/2 6/3 3/3\n"  # tab separator, positive after the negatives
    )
    obj = tmp_path / "face.obj"
    obj.write_bytes(text.replace("\n", "\r\n").encode())

    got = load_mesh(obj)
    assert got.vertices.shape == (6, 3) and got.uv.shape == (4, 2)
    np.testing.assert_array_equal(got.vertices[5], [2, 1, 0])
    np.testing.assert_array_equal(got.uv[2], [1, 1])
    # Fan triangulation in file order; "-4" at a point with 6 vertices is vertex 3 (1-based).
    expected = [[0, 1, 2], [0, 2, 3], [2, 3, 5], [1, 4, 5], [1, 5, 2]]
    assert got.faces.tolist() == expected
    assert got.face_uv.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 3], [1, 1, 2], [1, 2, 2]]
    assert got.texture_path == sub / "my tex.png"
    assert np.array_equal(got.texture, texture)
    assert got.material_name == "skin"
    assert got.n_polygons == 3


def test_obj_face_forms_without_uv_and_colour_scales(tmp_path):
    # Vertex colours in 0..255 (some tools) and the `a` and `a//c` forms.
    obj = tmp_path / "vc255.obj"
    obj.write_text(
        "v 0 0 0 255 0 0\nv 1 0 0 0 255 0\nv 1 1 0 0 0 255\nv 0 1 0 128 128 128\nvn 0 0 1\n"
        "f 1//1 2//1 3//1\nf 1 3 4\n"
    )
    got = load_mesh(obj)
    assert got.faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    assert got.vertex_colors.tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]
    assert got.face_uv is None and got.texture is None

    obj = tmp_path / "vc1.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 1 1 0 0 0 0.5\nf 1 2 3\n")
    assert load_mesh(obj).vertex_colors.tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 128]]


def test_obj_trailing_comments_and_uv_kept_without_texture(tmp_path):
    obj = tmp_path / "comments.obj"
    obj.write_text(
        "v 0 0 0 1 0 0 # first\nv 1 0 0 0 1 0\nv 0 1 0 0 0 1\nvt 0 0\nvt 1 0\nvt 0 1 # uv\n"
        "f 1/1 2/2 3/3 # a triangle\n"
    )
    got = load_mesh(obj)
    assert got.faces.tolist() == [[0, 1, 2]] and got.face_uv.tolist() == [[0, 1, 2]]
    assert got.uv.shape == (3, 2) and got.vertex_colors[0].tolist() == [255, 0, 0]
    assert not got.has_texture  # UVs without an image: vertex colours are the colour source


def test_obj_without_usemtl_uses_the_single_material(tmp_path):
    obj = _textured_obj(tmp_path)
    obj.write_text(obj.read_text().replace("usemtl skin\n", ""))
    got = load_mesh(obj)
    assert got.has_texture and got.material_name == "skin"


def test_obj_texture_path_from_another_machine_falls_back_to_file_name(tmp_path):
    obj = _textured_obj(tmp_path, map_kd="C:\\Users\\someone\\scans\\tex.png")
    assert load_mesh(obj).texture_path == tmp_path / "tex.png"


def test_obj_several_materials_sharing_one_texture_is_fine(tmp_path):
    obj = _textured_obj(tmp_path, faces="f 1/1 2/2 3/3\nusemtl skin2\nf 1/1 3/3 4/4\n")
    (tmp_path / "m.mtl").write_text("newmtl skin\nmap_Kd tex.png\nnewmtl skin2\nmap_Kd ./tex.png\n")
    assert load_mesh(obj).has_texture


# ------------------------------------------------------------------------------------------
# PLY, GLB
# ------------------------------------------------------------------------------------------

def test_ply_with_vertex_colours(tmp_path):
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]], dtype=np.uint8)
    got = load_mesh(write_ply(tmp_path / "mesh.ply", SQUARE_V, faces, colors))
    assert np.array_equal(got.faces, faces)
    np.testing.assert_allclose(got.vertices, SQUARE_V)
    assert np.array_equal(got.vertex_colors, colors)
    assert not got.has_texture


def test_glb_textured_and_vertex_coloured(tmp_path):
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.1, 0.2], [0.9, 0.2], [0.9, 0.8], [0.1, 0.8]])
    texture = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(texture))
    trimesh.Trimesh(SQUARE_V, faces, visual=visual, process=False).export(tmp_path / "mesh.glb")

    got = load_mesh(tmp_path / "mesh.glb")
    np.testing.assert_allclose(got.vertices, SQUARE_V, atol=1e-6)
    assert np.array_equal(got.faces, faces)
    assert np.array_equal(got.face_uv, faces)
    np.testing.assert_allclose(got.uv, uv, atol=1e-6)  # OBJ convention kept through glTF
    assert np.array_equal(got.texture, texture)

    colors = np.array([[255, 0, 0, 255]] * 4, dtype=np.uint8)
    trimesh.Trimesh(SQUARE_V, faces, vertex_colors=colors, process=False).export(tmp_path / "vc.glb")
    got = load_mesh(tmp_path / "vc.glb")
    assert got.vertex_colors.tolist() == [[255, 0, 0]] * 4 and not got.has_texture


def test_gltf_with_external_buffers(tmp_path):
    uv = np.array([[0.1, 0.2], [0.9, 0.2], [0.9, 0.8], [0.1, 0.8]])
    texture = np.random.default_rng(4).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(texture))
    files = trimesh.Trimesh(SQUARE_V, [[0, 1, 2], [0, 2, 3]], visual=visual, process=False).export(file_type="gltf")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "model.gltf").rename(tmp_path / "mesh.gltf")
    got = load_mesh(find_mesh_in_dir(tmp_path))
    assert np.array_equal(got.texture, texture)
    np.testing.assert_allclose(got.uv, uv, atol=1e-6)
    next(tmp_path.glob("*.bin")).unlink()
    _expect_error(tmp_path / "mesh.gltf", "cannot read")


# ------------------------------------------------------------------------------------------
# Errors: one line, naming the file and the problem
# ------------------------------------------------------------------------------------------

def test_missing_and_unknown_and_unreadable_files(tmp_path):
    _expect_error(tmp_path / "nope.obj", "not found")
    stl = tmp_path / "mesh.stl"
    stl.write_text("solid x\nendsolid x\n")
    _expect_error(stl, "unknown", ".stl")
    bad = tmp_path / "broken.glb"
    bad.write_bytes(b"this is not a glb")
    _expect_error(bad, "cannot read")


def test_empty_meshes(tmp_path):
    obj = tmp_path / "empty.obj"
    obj.write_text("# nothing\n")
    _expect_error(obj, "empty", "vertices")
    obj = tmp_path / "points.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 0 1 0 0\n")
    _expect_error(obj, "empty", "faces")
    ply = write_ply(tmp_path / "points.ply", SQUARE_V, np.zeros((0, 3), dtype=np.int64))
    _expect_error(ply, "no faces")


def test_non_finite_vertices(tmp_path):
    obj = tmp_path / "nan.obj"
    obj.write_text("v 0 0 0 1 0 0\nv nan 0 0 1 0 0\nv 0 1 0 1 0 0\nf 1 2 3\n")
    _expect_error(obj, "nan", "vertex 2")


def test_bad_number(tmp_path):
    obj = tmp_path / "typo.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 oops\nf 1 2 3\n")
    _expect_error(obj, "line 3", "oops")
    obj = tmp_path / "typo_face.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 0 1 0 0\nf 1 2 x3\n")
    _expect_error(obj, "line 4", "x3")


def test_face_index_out_of_range(tmp_path):
    obj = tmp_path / "range.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 0 1 0 0\nf 1 2 3\nf 1 2 7\n")
    _expect_error(obj, "line 5", "out of range", "3 vertices")
    obj = tmp_path / "negative.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nf -1 -2 -3\nv 0 1 0 1 0 0\n")
    _expect_error(obj, "line 3", "out of range")
    obj = tmp_path / "zero.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 0 1 0 0\nf 0 1 2\n")
    _expect_error(obj, "line 4", "out of range")


def test_uv_index_out_of_range(tmp_path):
    obj = _textured_obj(tmp_path, name="uvrange.obj", faces="f 1/1 2/2 3/3\nf 1/1 3/3 4/9\n")
    _expect_error(obj, "line 12", "texture coordinate", "out of range", "4")


def test_face_with_too_few_vertices(tmp_path):
    obj = tmp_path / "line.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 0 1 0 0\nf 1 2\n")
    _expect_error(obj, "line 4", "at least 3")


def test_no_texture_and_no_vertex_colours(tmp_path):
    obj = tmp_path / "bare.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    _expect_error(obj, "no texture", "no vertex colours")
    (tmp_path / "plain.mtl").write_text("newmtl plain\nKd 1 0 0\n")
    obj = tmp_path / "plain.obj"
    obj.write_text("mtllib plain.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl plain\nf 1 2 3\n")
    _expect_error(obj, "no texture", "plain")
    ply = write_ply(tmp_path / "bare.ply", SQUARE_V, np.array([[0, 1, 2]]))
    _expect_error(ply, "no texture")


def test_missing_mtl_and_texture(tmp_path):
    obj = _textured_obj(tmp_path, name="nomtl.obj")
    obj.write_text(obj.read_text().replace("mtllib m.mtl", "mtllib gone.mtl"))
    _expect_error(obj, "gone.mtl", "missing")

    obj = _textured_obj(tmp_path, name="notex.obj", map_kd="textures/face tex.png")
    msg = _expect_error(obj, "missing")
    assert "face tex.png" in msg

    obj = _textured_obj(tmp_path, name="badtex.obj", map_kd="bad.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    msg = _expect_error(obj, "unreadable")
    assert "bad.png" in msg


def test_textured_faces_without_uv(tmp_path):
    obj = _textured_obj(tmp_path, name="nouv.obj", faces="f 1 2 3\n")
    _expect_error(obj, "no texture coordinates")
    obj = _textured_obj(tmp_path, name="someuv.obj", faces="f 1/1 2/2 3/3\nf 1 3 4\n")
    _expect_error(obj, "line 12", "no texture coordinates")


def test_several_textures(tmp_path):
    _png(tmp_path / "eyes.png", np.zeros((2, 2, 3)))
    obj = _textured_obj(tmp_path, name="multi.obj", faces="f 1/1 2/2 3/3\nusemtl eyes\nf 1/1 3/3 4/4\n")
    (tmp_path / "m.mtl").write_text("newmtl skin\nmap_Kd tex.png\nnewmtl eyes\nmap_Kd eyes.png\n")
    msg = _expect_error(obj, "2 different textures", "single texture")
    assert "skin" in msg and "eyes" in msg

    visuals = [trimesh.visual.TextureVisuals(uv=np.zeros((4, 2)), image=Image.fromarray(np.full((2, 2, 3), c, np.uint8)))
               for c in (0, 255)]
    parts = [trimesh.Trimesh(SQUARE_V + k, [[0, 1, 2], [0, 2, 3]], visual=vis, process=False) for k, vis in enumerate(visuals)]
    trimesh.Scene(parts).export(tmp_path / "multi.glb")
    _expect_error(tmp_path / "multi.glb", "2 different textures")


def test_all_faces_degenerate(tmp_path):
    obj = tmp_path / "flat.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 2 0 0 1 0 0\nf 1 2 3\nf 1 1 2\n")
    _expect_error(obj, "degenerate")


def test_some_degenerate_faces_are_kept(tmp_path):
    obj = tmp_path / "partly.obj"
    obj.write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 0 1 0 0\nf 1 2 3\nf 1 1 2\n")
    assert load_mesh(obj).faces.tolist() == [[0, 1, 2], [0, 0, 1]]


# ------------------------------------------------------------------------------------------
# Finding the mesh
# ------------------------------------------------------------------------------------------

def test_find_mesh_in_dir(tmp_path):
    with pytest.raises(PbidrError, match="no such"):
        find_mesh_in_dir(tmp_path / "absent")
    (tmp_path / "face.obj").write_text("")
    with pytest.raises(PbidrError, match="no mesh found.*face.obj"):
        find_mesh_in_dir(tmp_path)
    (tmp_path / "mesh.OBJ").write_text("")
    assert find_mesh_in_dir(tmp_path) == tmp_path / "mesh.OBJ"
    assert find_mesh_in_dir(tmp_path / "face.obj") == tmp_path / "face.obj"
    (tmp_path / "mesh.glb").write_bytes(b"")
    with pytest.raises(PbidrError, match="several candidate meshes") as info:
        find_mesh_in_dir(tmp_path)
    assert "mesh.OBJ" in str(info.value) and "mesh.glb" in str(info.value)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(PbidrError, match="unknown mesh file type"):
        find_mesh_in_dir(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------
# Texture images and sampling
# ------------------------------------------------------------------------------------------

def test_image_modes_become_rgb8():
    rgb = np.random.default_rng(2).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((3, 5, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb8(Image.fromarray(rgba)), rgb)
    grey = rgb[..., 0]
    assert np.array_equal(image_to_rgb8(Image.fromarray(grey)), np.repeat(grey[..., None], 3, 2))
    pal = Image.fromarray(rgb).quantize(colors=16)
    assert np.array_equal(image_to_rgb8(pal), np.asarray(pal.convert("RGB")))
    grey_alpha = Image.fromarray(np.stack([grey, grey], axis=2))
    assert grey_alpha.mode == "LA" and np.array_equal(image_to_rgb8(grey_alpha)[..., 2], grey)
    grey16 = Image.fromarray(grey.astype(np.uint16) * 257)
    assert grey16.mode == "I;16"
    out = image_to_rgb8(grey16)
    assert out.dtype == np.uint8 and np.array_equal(out[..., 1], grey)


def test_sixteen_bit_texture_file(tmp_path):
    obj = _textured_obj(tmp_path, name="t16.obj", map_kd="t16.png")
    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(tmp_path / "t16.png")
    got = load_mesh(obj)
    assert got.texture.shape == (2, 2, 3) and (got.texture == 255).all()


def test_bilinear_sampling_texel_centres_and_v_up():
    texture = np.array([[[255, 0, 0], [0, 255, 0]],     # top row: red, green
                        [[0, 0, 255], [255, 255, 255]]],  # bottom row: blue, white
                       dtype=np.uint8)
    uv = np.array([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25], [0.5, 0.5]])
    got = sample_texture_bilinear(texture, uv)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    # v = 0 is the bottom of the image: (0.25, 0.25) is the bottom-left texel (row 1, col 0), blue.
    np.testing.assert_allclose(got[2], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(got[:4], texture.reshape(4, 3) / 255.0, atol=1e-6)
    np.testing.assert_allclose(got[4], texture.reshape(4, 3).mean(axis=0) / 255.0, atol=1e-6)
    # Between two centres: the mean of the pair (top row, halfway from red to green).
    np.testing.assert_allclose(sample_texture_bilinear(texture, [[0.5, 0.75]])[0], [0.5, 0.5, 0], atol=1e-6)


def test_bilinear_sampling_clamps_to_edge():
    texture = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    uv = np.array([[0.0, 1.0], [-3.0, 7.0], [1.0, 0.0], [2.0, -1.0], [0.0, 0.5]])
    got = sample_texture_bilinear(texture, uv)
    np.testing.assert_allclose(got[0], [1, 0, 0], atol=1e-6)  # top-left corner: red
    np.testing.assert_allclose(got[1], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(got[2], [1, 1, 1], atol=1e-6)  # bottom-right: white
    np.testing.assert_allclose(got[3], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(got[4], [0.5, 0, 0.5], atol=1e-6)  # left edge, halfway red/blue


def test_bilinear_sampling_matches_reference_on_random_lookups():
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    uv = rng.uniform(-0.2, 1.2, (200, 2))
    h, w = texture.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1 - uv[:, 1]) * h - 0.5, 0, h - 1)
    ref = np.zeros((len(uv), 3))
    for n in range(len(uv)):
        j0, i0 = int(np.floor(x[n])), int(np.floor(y[n]))
        j1, i1 = min(j0 + 1, w - 1), min(i0 + 1, h - 1)
        a, b = x[n] - j0, y[n] - i0
        t = texture.astype(np.float64) / 255
        ref[n] = (1 - a) * (1 - b) * t[i0, j0] + a * (1 - b) * t[i0, j1] + (1 - a) * b * t[i1, j0] + a * b * t[i1, j1]
    np.testing.assert_allclose(sample_texture_bilinear(texture, uv), ref, atol=1e-5)
