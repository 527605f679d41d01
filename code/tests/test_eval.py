"""``pbidr eval``: every output of a tiny trained run, exact displacement/marching cubes on a sphere SDF,
atomic replacement of an earlier eval, and one-line errors for bad inputs."""

import json
import shutil

import numpy as np
import pytest
import torch
import trimesh

from pbidr.errors import PbidrError
from pbidr.evaluation.run_eval import (
    detail_meshes, evaluate, framing_camera, level_set_world, parse_views, world_sdf,
)
from pbidr.geometry.cameras import Rig, scale_matrix, to_normalised
from pbidr.io.load import load_mesh
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess.pipeline import preprocess
from pbidr.preprocess.sample import make_sample
from pbidr.training.checkpoints import write_checkpoint
from pbidr.training.conf import conf_to_text, parse_conf

TINY = """
train { batch_size = 128, iters = 20, plot_freq = 0, plot_res = 32, checkpoint_freq = 10, learning_rate = 5.0e-4 }
model {
  feature_vector_size = 8
  sdf_network { dims = [32, 32], skip_in = [], multires = 2 }
  diffuse_network { dims = [8], multires = 0 }
  specular_network { dims = [8], multires_view = 0, multires_normal = 0 }
  albedo_network { dims = [16], multires = 0 }
  ray_tracer { n_steps = 16, n_secant_steps = 4 }
}
"""
# A wide band: 20 iterations leave the SDF surface far from the coarse mesh in places.
FAST = ["--mc-resolution", "48", "--band", "30", "--device", "cpu", "--quiet"]
EXPECTED = ["detailed.obj", "detailed.mtl", "detailed_subdivided.obj", "detailed_subdivided.mtl", "texture.png",
            "displacement.npy", "displacement_subdivided.npy", "sdf_mc.ply", "displacement_uv.png", "displacement.exr",
            "normal_tangent_uv.png", "normal_object_uv.png", "detailed.glb", "detailed.ply",
            "compare.png", "contact_sheet.png", "metrics.json"]


def run_cli(*argv: str) -> int:
    """``pbidr eval ...`` through the real command line."""
    from pbidr.commands import main as cli

    return cli.main(["eval", *argv])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pbidr.commands.main import main

    root = tmp_path_factory.mktemp("evalrun")
    make_sample(root / "raw", grid=(60, 80), texture_size=128)
    # Five views, so the default (frontal + the two extreme yaws) differs from --views all.
    preprocess(root / "raw", root / "scan", Rig(yaw=5, yaw_angle=30, res=64), progress=False)
    (root / "tiny.conf").write_text(TINY)
    assert main(["train", "--data", str(root / "scan"), "--exp-dir", str(root / "run"), "--conf",
                 str(root / "tiny.conf"), "--device", "cpu", "--quiet"]) == 0
    return root


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run (tests that break it must not break the others)."""
    shutil.copytree(tiny_run / "run", tmp_path / "run")
    return tmp_path / "run"


def test_eval_writes_every_output(tiny_run, run_copy, capsys):
    assert run_cli("--exp-dir", str(run_copy), "--views", "1,3", *FAST) == 0
    assert "compare.png" in capsys.readouterr().out
    out = run_copy / "eval"
    for name in EXPECTED + ["renders/001_rgb.png", "renders/003_normal.png", "renders/003_albedo.png"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "renders" / "002_rgb.png").exists()
    assert not list(run_copy.glob(".eval*")), "staging folder left behind"
    for mtl in ("detailed.mtl", "detailed_subdivided.mtl"):
        assert "map_Kd texture.png" in (out / mtl).read_text()

    coarse = load_mesh(tiny_run / "scan" / "mesh.obj")
    detailed = load_mesh(out / "detailed.obj")
    assert len(detailed.faces) == len(coarse.faces) and len(detailed.uv) == len(coarse.uv)
    assert np.array_equal(detailed.faces, coarse.faces) and np.array_equal(detailed.face_uv, coarse.face_uv)
    disp = np.load(out / "displacement.npy")
    assert disp.shape == (len(coarse.vertices),)
    moved = np.linalg.norm(detailed.vertices - coarse.vertices, axis=1)
    assert np.allclose(moved, np.abs(disp), atol=1e-3)
    reach = np.abs(disp).max() + 1e-3
    assert np.all(np.abs(detailed.vertices.min(0) - coarse.vertices.min(0)) <= reach)
    assert np.all(np.abs(detailed.vertices.max(0) - coarse.vertices.max(0)) <= reach)
    sub = load_mesh(out / "detailed_subdivided.obj")
    assert len(sub.faces) == 4 * len(coarse.faces)
    assert np.load(out / "displacement_subdivided.npy").shape == (len(sub.vertices),)

    m = json.loads((out / "metrics.json").read_text())
    views = m["rendering"]["views"]
    assert [v["view"] for v in views] == [1, 3] and all(isinstance(v["psnr"], float) for v in views)
    assert m["rendering"]["psnr_mean"] == pytest.approx(np.mean([v["psnr"] for v in views]))
    assert m["step"] == 20 and "sdf_network" in m["conf"] and m["scan_dir"].endswith("scan")
    d = m["displacement"]["detailed"]
    assert d["min"] == pytest.approx(float(disp.min()), abs=1e-4) and "p50" in d["percentiles"]
    mc = m["marching_cubes"]
    assert mc["n_sdf_evals"] < mc["dense_evals"] and mc["n_faces"] > 0 and mc["peak_rss_mb_after"] > 0
    uv = m["uv_maps"]["displacement_uv"]
    assert uv["size"] == [128, 128] and uv["hi"] >= uv["lo"]
    # The artists' maps decode to eval's displacement in mm (the sample is in mm, with no units record).
    from pbidr.evaluation.export import decode_displacement_png, read_exr, read_png16_grey
    from pbidr.evaluation.uv_maps import sample_uv_map

    assert m["uv_maps"]["units_to_mm"] == 1.0 and "assumed mm" in m["uv_maps"]["units_source"]
    exr = read_exr(out / "displacement.exr")
    png = decode_displacement_png(read_png16_grey(out / "displacement_uv.png"))
    clipped = m["uv_maps"]["displacement_uv"]["clipped_fraction"]
    assert clipped > 0 or np.max(np.abs(png - exr)) < 1e-4  # a 20-step SDF may be far beyond +-4 mm
    err = sample_uv_map(exr, coarse.uv) - disp
    assert np.sqrt(np.mean(err ** 2)) < 0.1 * np.sqrt(np.mean(disp ** 2))
    assert m["uv_maps"]["detailed_glb"]["faces"] == m["coarse_mesh"]["faces"] * 4
    for part in ("displacement_s", "marching_cubes_s", "rendering_s", "total_s"):
        assert m["timings"][part] >= 0


def _rendered(out) -> list[str]:
    return sorted(p.name.split("_")[0] for p in (out / "renders").glob("*_rgb.png"))


def test_default_views_are_front_and_extreme_yaws_and_all_is_all(run_copy, capsys):
    assert run_cli("--exp-dir", str(run_copy), *FAST) == 0
    out = run_copy / "eval"
    assert _rendered(out) == ["001", "003", "005"]  # yaw -30, 0, +30 of the 5-view rig
    m = json.loads((out / "metrics.json").read_text())
    assert m["rendering"]["renderer"] == "mesh" and [v["view"] for v in m["rendering"]["views"]] == [1, 3, 5]
    # The mesh renderer's silhouette is the detailed mesh's: the coarse mesh's, moved by a 20-step SDF's
    # displacement (up to tens of mm here), so it overlaps the scan's mask but only roughly.
    assert all(0.5 < v["silhouette_iou"] <= 1.0 for v in m["rendering"]["views"])
    assert run_cli("--exp-dir", str(run_copy), "--views", "all", "--overwrite", *FAST) == 0
    assert _rendered(out) == ["001", "002", "003", "004", "005"]


def test_sdf_renderer_stays_available(run_copy):
    assert run_cli("--exp-dir", str(run_copy), "--views", "2", "--renderer", "sdf", *FAST) == 0
    m = json.loads((run_copy / "eval" / "metrics.json").read_text())
    r = m["rendering"]
    assert r["renderer"] == "sdf" and [v["view"] for v in r["views"]] == [2] and r["views"][0]["n_sdf_evals"] > 0
    assert _rendered(run_copy / "eval") == ["002"]


def test_non_terminal_progress_is_plain_lines(run_copy, capsys):
    fast = [a for a in FAST if a != "--quiet"]
    assert run_cli("--exp-dir", str(run_copy), "--views", "1,3", *fast) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err
    for stage in ("load", "displaced meshes", "marching cubes", "UV maps and exports", "compare.png", "renders"):
        assert f"eval: {stage} done in" in err, stage
    assert "eval: render (mesh): 2/2 view" in err


def test_failed_eval_keeps_the_earlier_one(run_copy):
    assert run_cli("--exp-dir", str(run_copy), "--no-rendering", *FAST) == 0
    before = (run_copy / "eval" / "metrics.json").read_text()
    assert not (run_copy / "eval" / "contact_sheet.png").exists()
    assert (run_copy / "eval" / "compare.png").is_file()  # no network needed: written without rendering too
    (run_copy / "checkpoints" / "latest.pt").unlink()
    assert run_cli("--exp-dir", str(run_copy), *FAST) != 0  # refused: an earlier eval and no --overwrite
    assert run_cli("--exp-dir", str(run_copy), "--overwrite", *FAST) != 0  # fails: no checkpoint
    assert (run_copy / "eval" / "metrics.json").read_text() == before
    assert not list(run_copy.glob(".eval*"))


def _error(run, **kwargs) -> str:
    with pytest.raises(PbidrError) as info:
        evaluate(run, mc_resolution=16, device="cpu", eval_rendering=False, progress=False, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs(run_copy, tmp_path, capsys):
    assert "run directory not found" in _error(tmp_path / "nope")
    assert run_cli("--exp-dir", str(tmp_path / "nope"), *FAST) == 2
    captured = capsys.readouterr()
    assert "run directory not found" in captured.out + captured.err

    msg = _error(run_copy, checkpoint=7)
    assert "step_0000007.pt" in msg and "available steps: 10, 20" in msg
    assert "'latest' or a step" in _error(run_copy, checkpoint="best")

    with pytest.raises(PbidrError, match="--views"):
        evaluate(run_copy, mc_resolution=16, views="0,9", device="cpu", progress=False)

    ckpt_path = run_copy / "checkpoints" / "step_0000010.pt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    # the same run, but a conf with another SDF network
    other = parse_conf(ckpt["conf"], overrides={"model.sdf_network.dims": [48]})
    ckpt["conf"] = conf_to_text(other)
    write_checkpoint(ckpt_path, ckpt)  # with its checksum, so it is not merely "corrupt"
    assert "does not match its conf" in _error(run_copy, checkpoint=10)

    info = json.loads((run_copy / "run.json").read_text())
    info["scan_dir"] = str(tmp_path / "moved")
    (run_copy / "run.json").write_text(json.dumps(info))
    msg = _error(run_copy)
    assert "moved" in msg and "scan directory" in msg

    for p in (run_copy / "checkpoints").glob("*.pt"):
        p.unlink()
    assert "no checkpoint" in _error(run_copy)


def test_parse_views(tmp_path):
    assert parse_views("all", 5) == [0, 1, 2, 3, 4]
    assert parse_views("default", 5) == parse_views(None, 5) == [0, 2, 4]  # no scan: first, middle, last
    # With a rig in meta.json: the frontal view and the extreme yaws, wherever they are in the order.
    angles = [[0.0, 0.0], [-20.0, 0.0], [20.0, 0.0], [-40.0, 0.0], [40.0, 0.0], [0.0, 30.0]]
    (tmp_path / "meta.json").write_text(json.dumps({"rig": {"angles_yaw_pitch_deg": angles}}))
    assert parse_views("default", 6, tmp_path) == [0, 3, 4]
    assert parse_views("3, 1,3", 5) == [0, 2]
    for bad in ("0", "6", "a,b", ","):
        with pytest.raises(PbidrError):
            parse_views(bad, 5)


# ------------------------------------------------------------------------------------------------
# Exact answers on a sphere: world units through scale_mat


def sphere_mesh(radius: float, center: np.ndarray) -> TexturedMesh:
    ico = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return TexturedMesh(vertices=ico.vertices + center, faces=ico.faces.astype(np.int64))


def test_sphere_sdf_moves_every_vertex_by_d_world_units():
    r, d, center = 50.0, 1.5, np.array([10.0, -20.0, 65.0])  # mm
    coarse = sphere_mesh(r, center)
    scale_mat = scale_matrix(center, r)  # normalised unit sphere = the sphere x 1.1
    s = scale_mat[0, 0]
    calls = []

    def sdf(x: torch.Tensor) -> torch.Tensor:  # normalised frame: a sphere of world radius r + d
        calls.append(len(x))
        return x.norm(dim=1) - (r + d) / s

    f = world_sdf(sdf, scale_mat, chunk=1000)
    assert np.allclose(f(center[None] + [[r + d, 0, 0]]), 0.0, atol=1e-4)
    detail = detail_meshes(coarse, f)
    assert max(calls) <= 1000
    assert np.allclose(detail.displacement, d, atol=1e-4)
    assert np.allclose(detail.displacement_subdivided[: len(coarse.vertices)], d, atol=1e-4)
    radii = np.linalg.norm(detail.detailed.vertices - center, axis=1)
    assert np.allclose(radii, r + d, atol=1e-3)
    assert np.array_equal(detail.detailed.faces, coarse.faces)
    # Midpoints sit inside the sphere (on chords); they move by d plus their sagitta.
    extra = detail.displacement_subdivided[len(coarse.vertices):]
    assert np.all(extra >= d - 1e-4) and np.all(extra < d + 0.5)

    ls = level_set_world(sdf, coarse, scale_mat, resolution=96, band=3.0)
    voxel = ls.stats["voxel_size_world"]
    assert voxel == pytest.approx((2 * (r + 3.0)) / s * s / 96, rel=0.05)
    mc_radii = np.linalg.norm(ls.vertices - center, axis=1)
    assert np.all(np.abs(mc_radii - (r + d)) < voxel)
    assert ls.stats["n_sdf_evals"] < 0.5 * ls.stats["dense_evals"]
    assert trimesh.Trimesh(ls.vertices, ls.faces).is_watertight


def test_framing_camera_fills_the_panel():
    cam = Rig(yaw=1, res=64).cameras()[0]
    pts = to_normalised(sphere_mesh(50.0, np.zeros(3)).vertices, scale_matrix(np.zeros(3), 100.0))
    framed = framing_camera(cam, pts, height=300, pad=0.05)
    pix, _ = framed.project(pts)
    assert framed.height == 300 and abs(framed.width - 300) <= 2  # a sphere is as wide as tall
    assert pix.min() >= 0 and pix[:, 0].max() <= framed.width - 1 and pix[:, 1].max() <= framed.height - 1
    # 5% padding of the extent on each side: the points span 1 / 1.1 of the panel.
    assert (pix[:, 1].max() - pix[:, 1].min()) / 300 == pytest.approx(1 / 1.1, rel=0.02)


def test_off_surface_check_near_the_border_only_drops_the_same_faces():
    """The sign flip of the coarse-residual SDF happens beyond the open border: checking only the vertices
    near the border gives the mesh the check at every vertex gives, for a fraction of the SDF queries."""
    from pbidr.evaluation.marching_cubes import border_points, extract_level_set
    from pbidr.geometry.coarse_distance import CoarseDistance

    plane = trimesh.creation.box(extents=(1.0, 1.0, 0.1))
    top = plane.faces[plane.face_normals[:, 2] > 0.9]
    patch = trimesh.Trimesh(plane.vertices, top, process=True).subdivide().subdivide().subdivide()
    coarse = CoarseDistance(patch.vertices, patch.faces)
    sdf = lambda x: coarse(x)[0] + 0.004 * torch.sin(40.0 * x[:, 0])  # noqa: E731  (a detail, not a plane)
    common = dict(resolution=96, bounds=((-0.7, -0.7, -0.2), (0.7, 0.7, 0.3)), guide_points=np.asarray(patch.vertices),
                  band=0.04, lipschitz=None, off_surface_tolerance=0.5)
    everywhere = extract_level_set(sdf, **common)
    border = border_points(patch.vertices, patch.faces, spacing=0.02)
    assert len(border) > 0 and np.allclose(np.abs(border[:, :2]).max(axis=1), 0.5)  # on the square's rim
    voxel = everywhere.stats["voxel_size"]
    near = extract_level_set(sdf, off_surface_near=border, off_surface_radius=0.04 + 0.01 + 3.3 * voxel, **common)
    assert everywhere.stats["n_faces_off_surface_dropped"] > 0
    assert np.array_equal(near.faces, everywhere.faces) and np.array_equal(near.vertices, everywhere.vertices)
    assert near.stats["n_vertices_off_surface_checked"] < 0.7 * everywhere.stats["n_vertices_off_surface_checked"]
    assert near.stats["n_sdf_evals"] < everywhere.stats["n_sdf_evals"]
    closed = trimesh.creation.icosphere(subdivisions=1)
    assert border_points(closed.vertices, closed.faces, 0.1).shape == (0, 3)
