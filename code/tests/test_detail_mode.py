"""The detail mode: coarse signed distance + residual SDF, coarse-to-fine encoding, band sizing,
off-surface filtering of marching cubes, geometry warm-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from pyhocon import ConfigFactory

from pbidr.evaluation.displacement import displace_along_normals
from pbidr.evaluation.marching_cubes import extract_level_set
from pbidr.evaluation.run_eval import band_for_displacement, world_sdf
from pbidr.geometry.coarse_distance import CoarseDistance
from pbidr.io.mesh import TexturedMesh
from pbidr.model.embedder import PositionalEncoding
from pbidr.model.pbidr_model import PBIDRModel
from pbidr.training.conf import load_conf, model_config
from pbidr.training.regularisers import RegulariserSampler
from pbidr.training.trainer import make_optimizer

RADIUS = 0.5
RESIDUAL_MODEL = {
    "feature_vector_size": 4,
    "sdf_network": {"parameterisation": "coarse_residual", "dims": [32, 32], "skip_in": [1], "multires": 4,
                    "max_residual": 0.02},
    "diffuse_network": {"dims": [8]},
    "specular_network": {"dims": [8]},
    "albedo_network": {"dims": [8]},
}


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)


def _sphere_error(mesh: trimesh.Trimesh) -> float:
    """Largest gap between the icosphere's flat faces and the true sphere (at face centroids)."""
    return float(RADIUS - np.linalg.norm(mesh.triangles_center, axis=1).min())


def test_coarse_distance_matches_the_analytic_sphere(sphere_mesh):
    coarse = CoarseDistance(sphere_mesh.vertices, sphere_mesh.faces)
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(2000, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    radii = rng.uniform(0.3, 0.8, size=2000)
    x = torch.tensor(dirs * radii[:, None], dtype=torch.float64, requires_grad=True)
    sdf, normal, closest = coarse(x)
    exact = radii - RADIUS
    tol = _sphere_error(sphere_mesh) + 1e-9
    assert np.abs(sdf.detach().numpy() - exact).max() <= tol
    # Inside negative, outside positive, everywhere (a sign error would be off by 2 |d|).
    assert np.all(np.sign(sdf.detach().numpy()[np.abs(exact) > tol]) == np.sign(exact[np.abs(exact) > tol]))
    # The smooth normal is the radial direction to within the mesh's faceting, and it is the gradient.
    cos = np.einsum("nd,nd->n", normal.numpy(), dirs)
    assert cos.min() > np.cos(np.radians(1.5))  # icosphere(4) edges span ~4 degrees
    (grad,) = torch.autograd.grad(sdf.sum(), x)
    assert torch.allclose(grad, normal)
    assert np.abs(np.linalg.norm(closest.numpy(), axis=1) - RADIUS).max() <= tol


def test_coarse_distance_is_exact_at_vertices(sphere_mesh):
    coarse = CoarseDistance(sphere_mesh.vertices, sphere_mesh.faces)
    q = coarse.closest(sphere_mesh.vertices)
    assert np.abs(q.distance).max() < 1e-12
    assert np.allclose(q.point, sphere_mesh.vertices)


def _residual_model(mesh: trimesh.Trimesh) -> PBIDRModel:
    torch.manual_seed(0)
    model = PBIDRModel(model_config(RESIDUAL_MODEL))
    model.attach_coarse_mesh(mesh.vertices, mesh.faces)
    return model


def test_zero_residual_at_step_0_gives_back_the_coarse_mesh(sphere_mesh):
    """At step 0 the detailed mesh is the coarse mesh (<= 0.01 mm for a 134 mm face radius, i.e.
    7.5e-5 normalised) and the SDF's normals at the vertices are the coarse vertex normals."""
    model = _residual_model(sphere_mesh)
    coarse_mesh = TexturedMesh(vertices=np.asarray(sphere_mesh.vertices, np.float64), faces=sphere_mesh.faces)
    scale_mat = np.diag([134.0, 134.0, 134.0, 1.0])  # world = 134 x normalised, as for the sample face
    world = coarse_mesh.with_vertices(coarse_mesh.vertices * 134.0)
    detailed, disp = displace_along_normals(world, world_sdf(model.sdf_network.sdf, scale_mat))
    assert np.abs(disp).max() <= 0.01
    assert np.abs(detailed.vertices - world.vertices).max() <= 0.01
    x = torch.tensor(sphere_mesh.vertices, dtype=torch.float32)
    _, _, grad = model.sdf_network.sdf_feature_gradient(x, create_graph=False)
    cos = torch.nn.functional.cosine_similarity(grad, torch.tensor(coarse_mesh.vertex_normals(), dtype=torch.float32))
    assert cos.min() > 1.0 - 1e-5
    # The residual network is not dead: the sdf row gets a gradient.
    x = x[:64].clone()
    model.sdf_network.sdf(x).sum().backward()
    g = [p.grad for p in model.sdf_network.residual.layers[-1].parameters() if p.grad is not None]
    assert g and any(float(t.abs().sum()) > 0 for t in g)


def test_residual_moves_the_surface_along_the_coarse_normal(sphere_mesh):
    """A constant residual c moves the zero level set inward by c along the normals: the displaced
    mesh of eval reads back -c at every vertex, whatever the direction."""
    model = _residual_model(sphere_mesh)
    last = model.sdf_network.residual.layers[-1]
    with torch.no_grad():
        last.bias[0] = 0.01
    c = model.sdf_network.max_residual * np.tanh(0.01 / model.sdf_network.max_residual)
    coarse_mesh = TexturedMesh(vertices=np.asarray(sphere_mesh.vertices, np.float64), faces=sphere_mesh.faces)
    _, disp = displace_along_normals(coarse_mesh, world_sdf(model.sdf_network.sdf, np.eye(4)))
    assert np.allclose(disp, -c, atol=1e-6)


def test_residual_model_needs_its_coarse_mesh():
    from pbidr.errors import PbidrError

    model = PBIDRModel(model_config(RESIDUAL_MODEL))
    with pytest.raises(PbidrError, match="coarse mesh"):
        model.sdf_network.sdf(torch.zeros(4, 3))


def test_coarse_to_fine_window():
    enc = PositionalEncoding(4, 3)
    x = torch.rand(5, 3)
    plain = enc(x)
    enc.set_bandwidth(0.0)
    assert torch.equal(enc(x)[:, :3], x) and torch.all(enc(x)[:, 3:] == 0)
    enc.set_bandwidth(2.0)  # bands 0 and 1 open, 2 and 3 closed
    out = enc(x)
    assert torch.allclose(out[:, : 3 + 12], plain[:, : 3 + 12]) and torch.all(out[:, 3 + 12 :] == 0)
    enc.set_bandwidth(None)
    assert torch.equal(enc(x), plain)


def test_band_for_displacement():
    d = np.array([0.1, -4.0, 2.0, np.nan])
    assert band_for_displacement(d, minimum=3.0, voxel=0.3) == pytest.approx(1.25 * 4.0 + 0.6)
    assert band_for_displacement(np.array([0.2, -0.1]), minimum=3.0, voxel=0.3) == 3.0


def test_marching_cubes_drops_the_sign_flip_beyond_an_open_border():
    """The coarse-residual SDF of an open patch flips sign beyond its border without a zero crossing;
    with the off-surface filter marching cubes keeps only the patch."""
    plane = trimesh.creation.box(extents=(1.0, 1.0, 0.1))
    top = plane.faces[plane.face_normals[:, 2] > 0.9]
    patch = trimesh.Trimesh(plane.vertices, top, process=True).subdivide().subdivide()
    coarse = CoarseDistance(patch.vertices, patch.faces)
    sdf = lambda x: coarse(x)[0]  # noqa: E731
    guide = patch.sample(4000, seed=0) if "seed" in patch.sample.__code__.co_varnames else patch.vertices
    common = dict(resolution=64, bounds=((-0.7, -0.7, -0.2), (0.7, 0.7, 0.3)), guide_points=np.asarray(guide),
                  band=0.1, lipschitz=None)
    raw = extract_level_set(sdf, **common)
    kept = extract_level_set(sdf, off_surface_tolerance=0.5, **common)
    outside = lambda v: (np.abs(v[:, :2]) > 0.5 + 0.03).any(axis=1)  # noqa: E731
    assert outside(raw.vertices).sum() > 0  # the skirt is there without the filter
    assert outside(kept.vertices).sum() == 0
    assert np.abs(kept.vertices[:, 2] - 0.05).max() < 0.01
    assert kept.stats["n_faces_off_surface_dropped"] > 0


def test_geometry_warmup_and_learning_rate_factor():
    conf = load_conf(None, {"train.learning_rate": 1e-3, "train.sdf_lr_factor": 0.5,
                            "train.geometry_warmup_iters": 10})
    model = PBIDRModel(model_config(RESIDUAL_MODEL))
    opt, sched = make_optimizer(model, conf.train, epoch_len=17)
    assert opt.param_groups[0]["lr"] == 0.0 and opt.param_groups[1]["lr"] == pytest.approx(1e-3)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 1e-3 * 0.5)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 1e-3)
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.sdf_network.parameters()}


def test_fast_conf_is_the_detail_mode_and_test_conf_the_paper():
    from pathlib import Path

    confs = Path(__file__).resolve().parents[2] / "confs"
    fast = load_conf(confs / "fast_mlp.conf")
    assert load_conf(confs / "fast.conf").model.sdf_network.parameterisation == "displacement_map"
    paper = load_conf(confs / "test.conf")
    assert fast.model.sdf_network.parameterisation == "coarse_residual"
    assert paper.model.sdf_network.parameterisation == "sphere"
    assert paper.model.ray_tracer.mode == "idr"
    assert paper.model.diffuse_normal == "coarse"


def test_detail_mode_end_to_end_on_a_tiny_sample(tmp_path):
    """fast_mlp.conf's detail mode (ray batches, residual MLP) at toy sizes: rays drawn inside the mask, a time budget that stops the
    run, eval's ground-truth panel, score and band sizing."""
    import json

    from pbidr.datasets.scan import RaySampler, load_scan
    from pbidr.evaluation.run_eval import evaluate
    from pbidr.geometry.cameras import Rig
    from pbidr.preprocess.pipeline import preprocess
    from pbidr.preprocess.sample import make_sample
    from pbidr.training.trainer import Trainer

    make_sample(tmp_path / "raw", grid=(60, 80), texture_size=128)
    preprocess(tmp_path / "raw", tmp_path / "scan", Rig(yaw=3, yaw_angle=30, res=64), progress=False)
    sampler = RaySampler(load_scan(tmp_path / "scan"))
    rays = sampler.sample(500, np.random.default_rng(0), mask_fraction=1.0)
    assert rays["object_mask"].all() and rays["mesh_hit"].all()
    assert not sampler.sample(500, np.random.default_rng(0))["object_mask"].all()

    confs = __import__("pathlib").Path(__file__).resolve().parents[2] / "confs"
    small = {"train.iters": 12, "train.batch_size": 128, "train.plot_freq": 0, "train.checkpoint_freq": 0,
             "model.sdf_network.dims": [64, 64], "model.sdf_network.skip_in": [1],
             "model.albedo_network.dims": [16], "model.residual_lowpass_points": 16}
    run = tmp_path / "run"
    result = Trainer(tmp_path / "scan", run, confs / "fast_mlp.conf", small, progress=False).run()
    assert result.step == 12
    budget = Trainer(tmp_path / "scan", tmp_path / "budget", confs / "fast_mlp.conf",
                     {**small, "train.iters": 100000, "train.time_budget_s": 2.0}, progress=False).run()
    assert 0 < budget.step < 100000 and "time budget" in (tmp_path / "budget" / "log.txt").read_text()

    metrics = evaluate(run, mc_resolution=48, views="2", device="cpu", progress=False)
    assert metrics["compare"]["ground_truth_panel"] is True
    assert set(metrics["score"]) >= {"normal_error_ratio", "displacement_correlation", "albedo_leak"}
    largest = max(abs(metrics["displacement"]["detailed"]["min"]), abs(metrics["displacement"]["detailed"]["max"]))
    assert metrics["band"] >= 1.25 * largest and metrics["displacement"]["fraction_outside_band"] == 0.0
    assert json.loads((run / "eval" / "metrics.json").read_text())["score"]["mesh"] == "detailed.obj"


def test_residual_lowpass_averages_over_tangent_discs(sphere_mesh):
    """The loss side's low-pass prior samples discs in the coarse mesh's tangent planes: with the residual
    replaced by |x|^2 and points on a sphere of radius R (normals radial), each disc's mean is R^2 plus
    the mean squared offset, which lies in [0, radius^2] and averages radius^2 / 2 (uniform disc)."""
    radius, samples = 0.1, 8
    model = PBIDRModel(model_config({**RESIDUAL_MODEL, "residual_lowpass_points": 64,
                                     "residual_lowpass_radius": radius, "residual_lowpass_samples": samples}))
    model.sdf_network.residual_at = lambda x: (x * x).sum(-1)
    sampler = RegulariserSampler(model)
    normals = torch.nn.functional.normalize(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    means = sampler.residual_lowpass(RADIUS * normals, normals)
    assert means.shape == (64,)
    excess = (means - RADIUS ** 2) * (samples + 1) / samples  # the mean of |offset|^2 over the k samples
    assert excess.min() >= -1e-6 and excess.max() <= radius ** 2 + 1e-6
    assert abs(float(excess.mean()) - radius ** 2 / 2) < 0.15 * radius ** 2
    # off unless the field is a residual one
    sphere = PBIDRModel(model_config({"residual_lowpass_points": 64}))
    assert RegulariserSampler(sphere).residual_lowpass(RADIUS * normals, normals).shape == (0,)
