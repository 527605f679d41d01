"""SDF network (encoding, geometric init, one-pass gradients), sample network, and the full PBIDR
model forward/backward on a toy batch (tiny networks, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from pbidr.errors import PbidrError
from pbidr.model.embedder import PositionalEncoding, get_embedder
from pbidr.model.pbidr_model import PBIDRModel, RayBatch
from pbidr.model.ray_tracing import RayTracerConfig, trace_rays
from pbidr.model.sample_network import sample_network
from pbidr.model.sdf_network import SDFNetwork
from pbidr.training.losses import PBIDRLoss
from pbidr.training.regularisers import RegulariserSampler
from pbidr.training.conf import model_config

TINY_MODEL = {
    "feature_vector_size": 8,
    "sdf_network": {"dims": [32, 32, 32, 32], "skip_in": [2], "multires": 2},
    "diffuse_network": {"dims": [16], "multires": 2},
    "specular_network": {"dims": [16], "multires_normal": 2},
    "albedo_network": {"dims": [16, 16], "multires": 2},
}


# ----------------------------------------------------------------------------- helpers
def rays_towards_centre(n: int, seed: int = 0, cam_dist: float = 2.5, spread: float = 0.35, dtype=torch.float32):
    """n rays from cameras on a sphere of radius cam_dist, aimed near the origin."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=g, dtype=torch.float64)
    origins = origins / origins.norm(dim=-1, keepdim=True) * cam_dist
    dirs = torch.randn(n, 3, generator=g, dtype=torch.float64) * spread - origins
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return origins.to(dtype), dirs.to(dtype)


def sphere_hits(origins, dirs, radius):
    b = (dirs * origins).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - radius * radius)
    t = -b - torch.sqrt(disc.clamp_min(0))
    return disc > 0, t, disc


def toy_batch(n: int = 256, seed: int = 0, mesh_radius: float = 0.5) -> RayBatch:
    """Coarse 'mesh' = a sphere of radius mesh_radius; the silhouette is the mesh's."""
    origins, dirs = rays_towards_centre(n, seed)
    hit, t, _ = sphere_hits(origins, dirs, mesh_radius)
    points = origins + t.unsqueeze(-1) * dirs
    normals = points / points.norm(dim=-1, keepdim=True)
    return RayBatch(origins=origins, dirs=dirs, object_mask=hit.clone(), mesh_hit=hit,
                    mesh_points=torch.where(hit.unsqueeze(-1), points, torch.zeros_like(points)),
                    mesh_normals=torch.where(hit.unsqueeze(-1), normals, torch.zeros_like(normals)))


def zero_set_radii(net: SDFNetwork, n_dirs: int = 128, steps: int = 20) -> torch.Tensor:
    """Radius of the zero set along n_dirs random directions, by bisection in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(n_dirs, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    lo, hi = torch.zeros(n_dirs), torch.ones(n_dirs)
    with torch.no_grad():
        assert (net.sdf(d * 0.0) < 0).all() and (net.sdf(d) > 0).all()
        for _ in range(steps):
            mid = (lo + hi) / 2
            inside = net.sdf(d * mid.unsqueeze(-1)) < 0
            lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
    return (lo + hi) / 2


# ----------------------------------------------------------------------------- encoding
def test_positional_encoding_layout():
    assert PositionalEncoding(0)(torch.ones(2, 3)).shape == (2, 3)
    enc, dim = get_embedder(2)
    assert dim == 3 + 3 * 2 * 2
    x = torch.tensor([[0.1, -0.2, 0.3]])
    expected = torch.cat([x, torch.sin(x), torch.cos(x), torch.sin(2 * x), torch.cos(2 * x)], dim=-1)
    torch.testing.assert_close(enc(x), expected)


# ----------------------------------------------------------------------------- geometric init
def test_geometric_init_wide_network_is_sphere_of_radius_bias():
    """The SAL/IDR init constants make a wide ReLU-like network ||x|| - bias (law of large numbers
    over 4096 units: a few % anisotropy). Encoded channels start at zero."""
    torch.manual_seed(0)
    net = SDFNetwork(feature_dim=4, dims=[4096], skip_in=(), multires=6, bias=0.6, beta=1e4)
    radii = zero_set_radii(net)
    assert (radii - 0.6).abs().max() < 0.06 * 0.6
    assert abs(radii.mean().item() - 0.6) < 0.02 * 0.6
    assert net.layers[0].weight[:, 3:].abs().max() == 0


def test_geometric_init_idr_network_starts_from_a_closed_surface():
    """IDR's default 8x512 net with Softplus(beta=100): the softplus offset log(2)/beta, summed by the
    last layer's positive weights, shrinks the initial sphere (radius ~0.45, not 0.6) and finite width
    makes it a blob. What the tracer needs is a closed surface around the origin, inside the unit
    sphere (asserted in zero_set_radii)."""
    torch.manual_seed(0)
    net = SDFNetwork()
    radii = zero_set_radii(net, n_dirs=64, steps=14)
    assert radii.min() > 0.3 and radii.max() < 0.8
    assert 0.35 < radii.mean() < 0.65
    # The skip layer's encoded (sin/cos) inputs start silent too: the fresh net is a function of x.
    skip_w = net.layers[4].weight
    assert skip_w[:, skip_w.shape[1] - 36 :].abs().max() == 0


# ----------------------------------------------------------------------------- one-pass gradients
def test_sdf_feature_gradient_matches_forward_and_finite_differences():
    torch.manual_seed(0)
    net = SDFNetwork(feature_dim=4, dims=[16, 16, 16], skip_in=(2,), multires=2).double()
    x = torch.rand(20, 3, dtype=torch.float64) * 1.6 - 0.8
    sdf, feature, grad = net.sdf_feature_gradient(x, create_graph=False)
    out = net(x)
    torch.testing.assert_close(sdf, out[:, 0])
    torch.testing.assert_close(feature, out[:, 1:])
    torch.testing.assert_close(net.sdf(x), out[:, 0])
    h = 1e-6
    fd = torch.stack(
        [(net.sdf(x + h * e) - net.sdf(x - h * e)) / (2 * h) for e in torch.eye(3, dtype=torch.float64)], dim=-1
    )
    torch.testing.assert_close(grad, fd, atol=1e-7, rtol=1e-6)
    # create_graph=True: the gradient is itself differentiable (double backward, eikonal / normals).
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: net.sdf_feature_gradient(p, create_graph=True)[2], (xg,))
    _, _, g2 = net.sdf_feature_gradient(x, create_graph=True)
    ((g2.norm(dim=-1) - 1) ** 2).sum().backward()
    # Every parameter but the last bias (a constant shift leaves the gradient unchanged) is reached.
    reached = [name for name, p in net.named_parameters() if p.grad is not None]
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert len(reached) == len(list(net.parameters())) - 1 and "layers.3.bias" not in reached
    # Works under no_grad (rendering).
    with torch.no_grad():
        _, _, g3 = net.sdf_feature_gradient(x, create_graph=False)
    torch.testing.assert_close(g3, grad)


# ----------------------------------------------------------------------------- sample network
def _tight_tracer() -> RayTracerConfig:
    return RayTracerConfig(sdf_threshold=1e-12, sphere_tracing_iters=200, n_secant_steps=30)


def test_sample_network_sphere_radius_derivative():
    """x(r) on a sphere |x - c| = r: dx/dr = -v r / sqrt(disc) (analytic), and equals the finite
    difference of re-traced points."""
    c = torch.tensor([0.1, -0.05, 0.02], dtype=torch.float64)
    r0 = 0.5
    origins, dirs = rays_towards_centre(64, seed=1, spread=0.15, dtype=torch.float64)
    origins = origins + c

    def trace(r):
        res = trace_rays(lambda p: (p - c).norm(dim=-1) - r, origins, dirs, None, config=_tight_tracer())
        return res

    res = trace(r0)
    hit = res.hit
    assert hit.sum() > 20
    x0, v = res.points[hit], dirs[hit]
    r = torch.full((x0.shape[0],), r0, dtype=torch.float64, requires_grad=True)  # one copy per ray
    sdf = (x0 - c).norm(dim=-1) - r
    grad = (x0 - c) / (x0 - c).norm(dim=-1, keepdim=True)
    x = sample_network(x0, v, sdf, grad)
    torch.testing.assert_close(x, x0)  # identity in value
    dx_dr = torch.stack([torch.autograd.grad(x[:, j].sum(), r, retain_graph=True)[0] for j in range(3)], -1)

    _, _, disc = sphere_hits(origins[hit] - c, v, r0)
    analytic = -v * (r0 / torch.sqrt(disc)).unsqueeze(-1)
    torch.testing.assert_close(dx_dr, analytic, atol=1e-9, rtol=1e-7)
    h = 1e-5
    fd = (trace(r0 + h).points[hit] - trace(r0 - h).points[hit]) / (2 * h)
    torch.testing.assert_close(dx_dr, fd, atol=1e-6, rtol=1e-5)


def test_sample_network_matches_finite_differences_of_a_network():
    """Directional derivative of sum_k w_k . x_k(theta) along a random parameter direction."""
    torch.manual_seed(3)
    net = SDFNetwork(feature_dim=2, dims=[16, 16], skip_in=(), multires=0, weight_norm=False).double()
    origins, dirs = rays_towards_centre(48, seed=2, spread=0.12, dtype=torch.float64)
    weights = torch.randn(48, 3, dtype=torch.float64)
    params = list(net.parameters())
    direction = [torch.randn_like(p) for p in params]

    def exact_points():
        with torch.no_grad():
            res = trace_rays(net.sdf, origins, dirs, None, config=_tight_tracer())
            t = res.dists.clone()
            for _ in range(3):  # Newton along the ray: machine-precision roots for the FD
                p = origins + t.unsqueeze(-1) * dirs
                g = net.gradient(p, create_graph=False)
                t = t - net.sdf(p) / (g * dirs).sum(-1)
        return res.hit, origins + t.unsqueeze(-1) * dirs

    hit, x0 = exact_points()
    assert hit.sum() > 20
    sdf, _, grad = net.sdf_feature_gradient(x0[hit], create_graph=False)
    x = sample_network(x0[hit], dirs[hit], sdf, grad)
    objective = (weights[hit] * x).sum()
    autograd_dd = sum((g * d).sum() for g, d in zip(torch.autograd.grad(objective, params), direction))

    h = 1e-6
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * h * d)
        hit_h, x_h = exact_points()
        assert torch.equal(hit_h, hit)
        values.append((weights[hit] * x_h[hit]).sum())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * h * d)
    fd_dd = (values[0] - values[1]) / (2 * h)
    assert abs(autograd_dd.item() - fd_dd.item()) < 1e-5 * max(1.0, abs(fd_dd.item()))


# ----------------------------------------------------------------------------- full model
def test_model_forward_backward_finite_grads():
    torch.manual_seed(0)
    model = PBIDRModel(model_config(TINY_MODEL)).train()
    batch = toy_batch(256)
    out = model(batch)
    n = batch.n_rays
    surf = out.surface_mask
    assert surf.sum() > 50 and (~surf).sum() > 20
    assert torch.equal(surf, out.network_object_mask & batch.object_mask)
    for name in ("rgb", "diffuse", "specular", "albedo", "normals", "points"):
        assert getattr(out, name).shape == (n, 3), name
    for name in ("rgb", "diffuse", "specular", "albedo", "normals"):
        assert (getattr(out, name)[~surf] == 0).all(), name
    geo = out.geometry
    assert geo.traced_sdf.shape == (n,) and geo.eikonal_gradients.shape == (n + n // 2, 3)
    p = int((surf & batch.mesh_hit).sum())
    for name in ("mesh_points", "mesh_pull_points", "mesh_pull_targets", "sdf_normals", "mesh_normals"):
        assert getattr(geo, name).shape == (p, 3), name
    assert geo.mesh_sdf.shape == (p,)
    assert torch.equal(geo.mesh_points, batch.mesh_points[surf & batch.mesh_hit])
    assert out.surface_features.shape == (int(surf.sum()), TINY_MODEL["feature_vector_size"])
    assert not out.surface_features.requires_grad
    # The detail mode's priors are off in this conf: the loss side samples nothing.
    priors = RegulariserSampler(model)(out)
    assert priors.residual_lowpass.shape == (0,) and priors.albedo_step.shape == (0, 3)
    # Differentiable surface points equal the traced ones in value; the SDF vanishes there.
    torch.testing.assert_close(geo.mesh_pull_targets, out.points[surf & batch.mesh_hit])
    # Sphere-traced hits stop at sdf <= 5e-5; IDR also accepts a front that a line search left
    # inside the surface (sdf < 0) when the SDF over-estimates distance (|grad| > 1 at init).
    surf_sdf = geo.traced_sdf[surf].detach()
    assert (surf_sdf < 1e-3).all() and (surf_sdf.abs() < 1e-3).float().mean() > 0.9
    assert out.n_sdf_evals > 0 and out.n_sdf_grad_evals == n + n // 2 + p

    loss = PBIDRLoss()(out, torch.rand(n, 3) * 2 - 1)
    for name, value in loss.as_floats().items():
        assert math.isfinite(value), name
    loss.total.backward()
    for name, prm in model.named_parameters():
        assert prm.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(prm.grad).all(), name
    for sub in ("sdf_network", "diffuse_network", "specular_network", "albedo_network"):
        assert any(p.grad.abs().sum() > 0 for p in getattr(model, sub).parameters()), sub


def test_second_surface_pass_same_values():
    """Re-evaluating at x(theta) (IDR's exact variant) changes gradients, not values."""
    model = PBIDRModel(model_config(TINY_MODEL)).train()
    model2 = PBIDRModel(model_config({**TINY_MODEL, "second_surface_pass": True})).train()
    model2.load_state_dict(model.state_dict())
    batch = toy_batch(128, seed=4)
    torch.manual_seed(1)
    a = model(batch)
    torch.manual_seed(1)
    b = model2(batch)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-5, rtol=1e-5)
    PBIDRLoss()(b, torch.zeros(128, 3)).total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model2.parameters())


def test_forward_without_grad_and_render_eval():
    torch.manual_seed(0)
    model = PBIDRModel(model_config(TINY_MODEL))
    batch = toy_batch(200, seed=5)
    with torch.no_grad():
        out = model.eval()(batch)  # validation-style call
    assert out.surface_mask.any()
    full = model.render_eval(batch, chunk=10_000)
    chunked = model.render_eval(batch, chunk=37)
    assert torch.equal(full.hit, chunked.hit)
    torch.testing.assert_close(full.rgb, chunked.rgb)
    assert not full.rgb.requires_grad
    assert (full.rgb[~full.hit] == 0).all() and (full.rgb[full.hit] != 0).any()
    torch.testing.assert_close(full.normals[full.hit].norm(dim=-1), torch.ones(int(full.hit.sum())))
    # Surface rays of the training forward are hits of the eval render at the same depth.
    both = out.surface_mask & full.hit
    assert both.sum() > 0.9 * out.surface_mask.sum()
    torch.testing.assert_close(out.dists[both], full.dists[both])


def test_model_rejects_unknown_conf_keys():
    with pytest.raises(PbidrError):
        model_config({"sdf_network": {"dimz": [8]}})
    with pytest.raises(PbidrError, match=r"model.diffuse_network.d_out = 2: expected one of 1, 3"):
        model_config({"diffuse_network": {"d_out": 2}})
    with pytest.raises(TypeError, match="ModelConfig"):
        PBIDRModel({"diffuse_network": {"d_out": 1}})  # a component takes its config object, never a dict


def test_albedo_prior_compares_the_albedo_a_tangent_step_away():
    """The loss side's albedo prior: the albedo at each surface point minus the albedo network's at a
    point ``albedo_smoothness_step`` away along the surface (perpendicular to the SDF normal)."""
    model = PBIDRModel(model_config({**TINY_MODEL, "albedo_smoothness_step": 0.05})).train()
    torch.manual_seed(0)
    out = model(toy_batch(256))
    surf = out.surface_mask
    seen = {}
    albedo_at = model.albedo_at

    def spy(points, features):
        seen["points"], seen["features"] = points, features
        return albedo_at(points, features)

    model.albedo_at = spy
    step = RegulariserSampler(model)(out).albedo_step
    assert step.shape == (int(surf.sum()), 3) and torch.isfinite(step).all()
    offset = seen["points"] - out.points[surf]
    torch.testing.assert_close(offset.norm(dim=-1), torch.full((offset.shape[0],), 0.05))
    assert (offset * out.normals[surf]).sum(-1).abs().max() < 1e-5
    assert torch.equal(seen["features"], out.surface_features)
    torch.testing.assert_close(step, out.albedo[surf] - albedo_at(seen["points"], seen["features"]))
    step.abs().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.albedo_network.parameters())
