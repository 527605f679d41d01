"""The Cycles bake (pbidr.preprocess.cycles) on a surface made here, 60 x 60 mm, where the physics
is measurable. Skipped when bpy is not installed (pip install --no-deps -r requirements-blender.txt);
the error messages are checked without it.

Layout (x right, y up, mm; UV = the plane's parameter, so the red patch's corner also checks the
v = 0-at-the-bottom convention):
  y = 15: two Gaussian bumps in the mesh (x = -20, -8) and one in the bump map only (x = 4);
  top right: a red albedo patch;
  y < 0: a groove (x = -20) and a tall ridge (x = 18) that shades the plane on its side away from
  the key.
Three bakes in one Blender process, at a fixed exposure of 1 (the raw units): key only (from +x,
53 degrees above the plane), matte; the same, glossy; a uniform sky only, matte.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pbidr.errors import PbidrError
from pbidr.preprocess import cycles as C

HAS_BPY = importlib.util.find_spec("bpy") is not None
needs_bpy = pytest.mark.skipif(not HAS_BPY,
                               reason="bpy not installed (pip install --no-deps -r requirements-blender.txt)")

SIZE = 256
PLANE_MM = 60.0
GREY = 0.6
RED = (0.7, 0.12, 0.12)
KEY = (0.6, 0.0, 0.8)
MESH_BUMPS = ((-20.0, 15.0), (-8.0, 15.0))
MAP_BUMP = (4.0, 15.0)
BUMP_HEIGHT, BUMP_SIGMA = 1.5, 2.0
GROOVE_X, RIDGE_X = -20.0, 18.0


def _window(y, lo, hi):
    """1 between lo and hi (mm), smooth 1 mm edges."""
    return 1.0 / (1.0 + np.exp(-(y - lo))) / (1.0 + np.exp(y - hi))


def _bump(x, y, centre):
    return BUMP_HEIGHT * np.exp(-0.5 * ((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / BUMP_SIGMA ** 2)


def height(x, y):
    """The mesh's height field (mm): bumps, a groove 1.5 mm deep, a ridge 6 mm tall."""
    h = sum(_bump(x, y, c) for c in MESH_BUMPS)
    h = h - 1.5 * np.exp(-0.5 * ((x - GROOVE_X) / 0.8) ** 2) * _window(y, -24.0, -2.0)
    return h + 6.0 * np.exp(-0.5 * (x - RIDGE_X) ** 2) * _window(y, -24.0, -2.0)


def texel_xy():
    """(x, y) mm of the texel centres (SIZE, SIZE), rows top-down (row 0 is v = 1)."""
    t = (np.arange(SIZE) + 0.5) / SIZE
    u, v = np.meshgrid(t, 1.0 - t)
    return (u - 0.5) * PLANE_MM, (v - 0.5) * PLANE_MM


def texel_normals():
    """Unit normals (SIZE, SIZE, 3) of the whole relief (mesh and bump map) at the texel centres."""
    x, y = texel_xy()
    e = 1e-3
    total = lambda x, y: height(x, y) + _bump(x, y, MAP_BUMP)  # noqa: E731
    n = np.stack([-(total(x + e, y) - total(x - e, y)) / (2 * e), -(total(x, y + e) - total(x, y - e)) / (2 * e),
                  np.ones_like(x)], axis=-1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def relief_plane(n: int = 181):
    """The plane as a grid mesh (n x n vertices, 0.33 mm apart), its albedo and bump map."""
    g = np.linspace(0.0, 1.0, n)
    u, v = np.meshgrid(g, g)
    uv = np.stack([u.reshape(-1), v.reshape(-1)], axis=1)
    x, y = (uv[:, 0] - 0.5) * PLANE_MM, (uv[:, 1] - 0.5) * PLANE_MM
    vertices = np.stack([x, y, height(x, y)], axis=1)
    iu, iv = np.meshgrid(np.arange(n - 1), np.arange(n - 1))
    a = (iv * n + iu).reshape(-1)
    faces = np.concatenate([np.stack([a, a + 1, a + n + 1], 1), np.stack([a, a + n + 1, a + n], 1)])
    tx, ty = texel_xy()
    albedo = np.full((SIZE, SIZE, 3), GREY)
    albedo[(tx > 19.0) & (ty > 19.0)] = RED
    return vertices, faces, uv, albedo, _bump(tx, ty, MAP_BUMP)


def box(image, x0, x1, y0, y1):
    """Mean over the texels whose centre lies in [x0, x1] x [y0, y1] (mm)."""
    x, y = texel_xy()
    sel = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    assert sel.sum() >= 4
    return image[sel].mean(axis=0)


@pytest.fixture(scope="module")
def bakes():
    vertices, faces, uv, albedo, bump = relief_plane()
    key = C.CyclesLighting(key_direction=KEY, key_strength=1.0, key_size_mm=100.0, fill_strength=0.0,
                           sky_strength=0.0)
    sky = C.CyclesLighting(key_strength=0.0, fill_strength=0.0, sky_strength=1.0)
    matte, glossy = C.CyclesSkin(roughness=0.25, specular=0.0), C.CyclesSkin(roughness=0.25, specular=2.0)
    out = C.bake_textures(vertices, faces, uv, faces, albedo, SIZE, [(key, matte), (key, glossy), (sky, matte)],
                          samples=16, seed=0, bump_mm=bump, exposure=1.0)
    bake_s = ", ".join(f"{b.seconds['bake_s']:.1f}" for b in out)
    print(f"\nCycles {out[0].blender_version}, {len(faces)} triangles, {SIZE}^2 x 16 samples: bakes {bake_s} s, "
          f"Blender process {out[0].seconds['process_s']:.1f} s")
    return dict(zip(("key", "glossy", "sky"), out))


@needs_bpy
def test_strengths_are_in_the_albedos_units(bakes):
    """Open flat skin: a uniform sky of 1 gives the albedo; the key alone gives albedo x cos x the
    inverse-square falloff from the bounding-box centre (where its strength is defined) to here."""
    vertices = relief_plane()[0]
    key_position = 0.5 * (vertices.min(0) + vertices.max(0)) + 1000.0 * np.asarray(KEY)
    to_key = key_position - np.array([-26.0, 2.0, 0.0])
    falloff = (1000.0 / np.linalg.norm(to_key)) ** 2
    for name, want in (("key", GREY * to_key[2] / np.linalg.norm(to_key) * falloff), ("sky", GREY)):
        bake = bakes[name]
        assert bake.covered.all() and bake.exposure == 1.0
        got = box(bake.raw, -29.0, -23.0, -1.0, 5.0)
        print(f"\n{name}: open flat skin {got}, expected {want:.4f}")
        np.testing.assert_allclose(got, want, rtol=0.02, err_msg=name)


@needs_bpy
@pytest.mark.parametrize("centre", [*MESH_BUMPS, MAP_BUMP], ids=["mesh_bump_1", "mesh_bump_2", "bump_map_bump"])
def test_bump_side_facing_the_key_is_brighter(bakes, centre):
    """Normals there tilt 24 degrees toward / away from the key: cosines 0.97 and 0.49."""
    tex = bakes["key"].raw
    cx, cy = centre
    toward = box(tex, cx + 1.5, cx + 2.5, cy - 0.7, cy + 0.7).mean()
    away = box(tex, cx - 2.5, cx - 1.5, cy - 0.7, cy + 0.7).mean()
    print(f"\nbump at {centre}: toward the key {toward:.3f}, away {away:.3f}")
    assert toward > 1.6 * away


@needs_bpy
def test_groove_is_darker_under_the_sky(bakes):
    """A uniform sky lights every open orientation alike: only occlusion darkens the groove."""
    tex = bakes["sky"].raw.mean(axis=2)
    bottom = box(tex, GROOVE_X - 0.3, GROOVE_X + 0.3, -18.0, -8.0)
    beside = 0.5 * (box(tex, GROOVE_X - 7.0, GROOVE_X - 5.0, -18.0, -8.0)
                    + box(tex, GROOVE_X + 5.0, GROOVE_X + 7.0, -18.0, -8.0))
    print(f"\ngroove under the sky: bottom {bottom:.3f}, beside {beside:.3f}")
    assert bottom < 0.92 * beside


@needs_bpy
def test_ridge_casts_a_shadow(bakes):
    """Flat plane on both sides of the ridge: the side away from the key is in its shadow."""
    tex = bakes["key"].raw.mean(axis=2)
    shadowed = box(tex, RIDGE_X - 4.0, RIDGE_X - 2.5, -16.0, -8.0)
    lit = box(tex, RIDGE_X + 2.5, RIDGE_X + 4.0, -16.0, -8.0)
    print(f"\nridge: shadow side {shadowed:.3f}, lit side {lit:.3f}")
    assert lit > 0.9 * GREY * KEY[2] and shadowed < 0.2 * lit


@needs_bpy
def test_red_patch_stays_red(bakes):
    tex = bakes["key"].texture
    patch, grey = box(tex, 21.0, 29.0, 21.0, 29.0), box(tex, -29.0, -23.0, -1.0, 5.0)
    print(f"\nred patch {patch}, grey {grey}")
    assert patch[0] / patch[1] == pytest.approx(RED[0] / RED[1], rel=0.1)
    assert patch[1] == pytest.approx(patch[2], rel=0.05) and grey[0] == pytest.approx(grey[1], rel=0.03)


@needs_bpy
def test_glossy_lobe_peaks_for_a_frontal_viewer(bakes):
    """On the mesh bumps, the highlight (glossy minus matte) is where the normal is the half vector of
    the key and +z (a frontal camera), not where the normal points at the key (Cycles' default view
    along the normal would put it there)."""
    half = np.add(KEY, (0.0, 0.0, 1.0))
    half /= np.linalg.norm(half)
    n = texel_normals()
    x, y = texel_xy()
    near = np.zeros(x.shape, dtype=bool)
    for cx, cy in MESH_BUMPS:
        near |= np.hypot(x - cx, y - cy) < 4.0
    angle_to_half = np.degrees(np.arccos(np.clip(n @ half, -1.0, 1.0)))
    angle_to_key = np.degrees(np.arccos(np.clip(n @ np.asarray(KEY), -1.0, 1.0)))
    lobe = near & (angle_to_half < 1.5)
    facing_key = near & (angle_to_key < angle_to_key[near].min() + 1.0)
    gloss = (bakes["glossy"].raw - bakes["key"].raw).mean(axis=2)
    print(f"\nglossy minus matte: at the frontal half vector {gloss[lobe].mean():.3f} ({lobe.sum()} texels), "
          f"where the normal faces the key {gloss[facing_key].mean():.3f} ({facing_key.sum()} texels)")
    assert gloss[lobe].mean() > 0.3
    assert gloss[lobe].mean() > 3.0 * gloss[facing_key].mean()


def test_missing_bpy_is_one_line_saying_how_to_install(monkeypatch):
    monkeypatch.setattr(C.importlib.util, "find_spec", lambda name: None)
    vertices, faces, uv = np.eye(3), np.array([[0, 1, 2]]), np.eye(3)[:, :2]
    with pytest.raises(PbidrError, match="requirements-blender.txt") as err:
        C.path_traced_texture(vertices, faces, uv, faces, np.zeros((4, 4, 3)), 4, C.CyclesLighting(), C.CyclesSkin())
    assert "\n" not in str(err.value)


def test_blender_failure_is_one_line_with_its_stderr(monkeypatch, tmp_path):
    client = tmp_path / "client.py"
    client.write_text("import sys\nsys.stderr.write('Traceback ...\\nRuntimeError: no bake for you\\n')\nsys.exit(3)\n")
    monkeypatch.setattr(C, "CLIENT", Path(client))
    monkeypatch.setattr(C.importlib.util, "find_spec", lambda name: object())
    vertices, faces, uv = np.eye(3), np.array([[0, 1, 2]]), np.eye(3)[:, :2]
    with pytest.raises(PbidrError, match="exit code 3.*no bake for you") as err:
        C.path_traced_texture(vertices, faces, uv, faces, np.zeros((4, 4, 3)), 4, C.CyclesLighting(), C.CyclesSkin())
    assert "\n" not in str(err.value)


def test_bad_inputs_are_refused_in_one_line():
    vertices, faces, uv = np.eye(3), np.array([[0, 1, 2]]), np.eye(3)[:, :2]
    albedo, light, skin = np.zeros((4, 4, 3)), C.CyclesLighting(), C.CyclesSkin()
    cases = [
        (lambda: C.path_traced_texture(vertices, faces + 1, uv, faces, albedo, 4, light, skin), "out of range"),
        (lambda: C.path_traced_texture(vertices, faces, uv, faces, albedo + 2.0, 4, light, skin), "albedo"),
        (lambda: C.path_traced_texture(vertices, faces, uv, faces, albedo, 0, light, skin), "size"),
        (lambda: C.path_traced_texture(vertices, faces, uv, faces, albedo, 4, light, skin, bump_mm=np.ones(3)),
         "bump_mm"),
        (lambda: C.CyclesLighting(key_direction=(0, 0, 0)), "direction"),
        (lambda: C.CyclesLighting(sky_strength=-1.0), "sky_strength"),
        (lambda: C.CyclesSkin(roughness=1.5), "roughness"),
    ]
    for call, match in cases:
        with pytest.raises(PbidrError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


@needs_bpy
def test_same_seed_same_texture_and_empty_texels_filled():
    """Two processes, the same inputs and seed: the same texture; another seed: a different one. The
    UVs fill only the middle of the image: the rest is not covered and takes the nearest baked texel."""
    vertices, faces, uv, albedo, bump = relief_plane(n=41)
    light, skin = C.CyclesLighting(key_direction=KEY), C.CyclesSkin()

    def run(seed):
        return C.bake_textures(vertices, faces, 0.25 + 0.5 * uv, faces, albedo, 64, [(light, skin)], samples=4,
                               seed=seed, bump_mm=bump, exposure=1.0)[0]

    first, again, other = run(0), run(0), run(1)
    np.testing.assert_array_equal(first.texture, again.texture)
    assert np.abs(first.texture - other.texture).max() > 0.01
    inside = np.zeros((64, 64), dtype=bool)
    inside[16:48, 16:48] = True  # texel centres in [0.25, 0.75]^2
    assert np.array_equal(first.covered, inside)
    assert np.all(first.raw[~inside] == 0.0)
    above = np.broadcast_to(first.texture[16, 20], (16, 3))  # the first covered row of that column
    np.testing.assert_array_equal(first.texture[:16, 20], above)
    np.testing.assert_array_equal(first.texture[:16, :16], np.broadcast_to(first.texture[16, 16], (16, 16, 3)))


def test_fill_takes_the_nearest_covered_texel():
    image = np.zeros((5, 6, 1))
    covered = np.zeros((5, 6), dtype=bool)
    image[1, 1], image[3, 4] = 1.0, 2.0
    covered[1, 1] = covered[3, 4] = True
    filled = C.fill_empty_texels(image, covered)[..., 0]
    np.testing.assert_array_equal(filled[:, 0], [1, 1, 1, 1, 1])  # (3, 0): 2 from (1, 1), 4 from (3, 4)
    np.testing.assert_array_equal(filled[:, 5], [2, 2, 2, 2, 2])
    assert filled[1, 1] == 1.0 and filled[3, 4] == 2.0


def test_grid_interpolant_is_the_meshs_piecewise_linear_surface():
    """Exact at the vertices and for a linear field; between vertices, the triangle grid_faces makes."""
    from pbidr.preprocess.cycles_face import grid_interpolant

    nu, nv = 5, 4
    rng = np.random.default_rng(0)
    values = rng.standard_normal((nv, nu))
    gu, gv = np.meshgrid(np.linspace(0, 1, nu), np.linspace(0, 1, nv))
    np.testing.assert_allclose(grid_interpolant(values, gu, gv), values, atol=1e-9)
    u, v = rng.uniform(0, 1, 100), rng.uniform(0, 1, 100)
    np.testing.assert_allclose(grid_interpolant(2 * gu + 3 * gv, u, v), 2 * u + 3 * v, atol=1e-9)
    # The middle of cell (0, 0)'s diagonal a-c, and of its two triangles (a, b, c) and (a, c, d).
    du, dv = 1 / (nu - 1), 1 / (nv - 1)
    a, b, c, d = values[0, 0], values[0, 1], values[1, 1], values[1, 0]
    got = grid_interpolant(values, np.array([0.5, 2 / 3, 1 / 3]) * du, np.array([0.5, 1 / 3, 2 / 3]) * dv)
    np.testing.assert_allclose(got, [(a + c) / 2, (a + b + c) / 3, (a + c + d) / 3], atol=1e-9)


@needs_bpy
def test_procedural_face_bakes():
    """The built-in face end to end, small: mesh + bump map, studio light, glossy skin, auto exposure."""
    from pbidr.preprocess.cycles_face import bake_procedural_face

    face, bake = bake_procedural_face(texture_size=64, samples=2, grid=(31, 41))
    assert bake.texture.shape == (64, 64, 3) and bake.covered.all()
    assert np.abs(face.bump_mm).max() > 0.05  # the coarse grid leaves detail to the bump map
    shading = bake.raw.sum(axis=2) / face.fields.albedo.sum(axis=2) * bake.exposure
    assert np.percentile(shading, 95) == pytest.approx(1.0, rel=1e-3) and bake.clipped_fraction < 0.05


@needs_bpy
def test_cycles_preset_runs_end_to_end(tmp_path):
    """`pbidr sample --preset cycles` (path-traced texture, small) through preprocess, the texel fit (a few
    steps), eval and score: every stage runs on it and the score is finite."""
    import json

    from pbidr.commands.main import main

    raw, scan, run = tmp_path / "raw", tmp_path / "scan", tmp_path / "run"
    assert main(["sample", "-o", str(raw), "--preset", "cycles", "--texture-size", "96",
                 "--set", "cycles_samples=4"]) == 0
    meta = json.loads((raw / "sample.json").read_text())
    assert meta["conditions"]["renderer"] == "cycles" and (raw / "marks_hair_uv.png").is_file()
    tex = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(raw / "mesh.png"))
    assert tex.shape == (96, 96, 3) and tex.std() > 5  # a real, shaded texture
    assert main(["preprocess", "-i", str(raw), "-o", str(scan), "--res", "64", "--yaw", "3"]) == 0
    assert main(["train", "-i", str(scan), "-o", str(run), "--iters", "4", "--set",
                 "model.displacement_map.resolution=64", "--quiet"]) == 0
    assert main(["eval", "-i", str(run), "--mc-resolution", "32", "--views", "2", "--quiet"]) == 0
    out = tmp_path / "score.json"
    assert main(["score", "-i", str(run / "eval" / "detailed.obj"), "--sample", str(raw), "--output", str(out)]) == 0
    score = json.loads(out.read_text())
    assert np.isfinite(score["normal_error_ratio"]) and "hair" in score["albedo_leak_by_kind"]
