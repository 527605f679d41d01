"""The mesh-guided tracer (ray_tracer.mode = "mesh") on exact SDFs: band hits at the analytic depth,
faithful fallback where the band has no sign change, IDR's min-SDF points outside the mask, far fewer
SDF evaluations than the faithful tracer; the tracer factory that picks it by mode; and the PBIDR model
training with it."""

from __future__ import annotations

import math

import pytest
import torch

from pbidr.errors import PbidrError
from pbidr.model.mesh_guided_tracing import trace_rays_mesh_guided
from pbidr.model.pbidr_model import PBIDRModel, RayBatch
from pbidr.model.ray_tracing import RayTracerConfig, sphere_intersection, trace_rays
from pbidr.model.tracer import make_tracer
from pbidr.training.losses import PBIDRLoss
from pbidr.training.conf import model_config
from pbidr.utils.config import build

MESH = RayTracerConfig(mode="mesh")


def pinhole_rays(cam, n: int = 48, half_fov: float = 0.25, target=(0.0, 0.0, 0.0)):
    """n*n unit rays from camera centre ``cam`` looking at ``target``: origins, dirs (n*n, 3)."""
    cam = torch.tensor(cam, dtype=torch.float64)
    forward = torch.tensor(target, dtype=torch.float64) - cam
    forward = forward / forward.norm()
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    u = torch.linspace(-half_fov, half_fov, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    dirs = forward + xx.reshape(-1, 1) * right + yy.reshape(-1, 1) * up
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return cam.expand_as(dirs).contiguous().float(), dirs.float()


def sphere_sdf(radius: float = 0.5):
    return lambda p: p.norm(dim=-1) - radius


def torus_sdf(major: float = 0.5, minor: float = 0.15):
    def sdf(p):
        q = torch.stack([torch.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - major, p[:, 1]], dim=-1)
        return q.norm(dim=-1) - minor

    return sdf


def sphere_depth(origins, dirs, radius):
    """Analytic first-hit depth (inf for a miss) and hit mask of a centred sphere, in float64."""
    o, d = origins.double(), dirs.double()
    b = (d * o).sum(-1)
    disc = b * b - ((o * o).sum(-1) - radius * radius)
    hit = disc > 0
    t = -b - torch.sqrt(disc.clamp_min(0.0))
    return torch.where(hit, t, torch.full_like(t, math.inf)), hit


def dense_min_sdf(sdf, origins, dirs, n: int = 4000):
    """Reference minimal SDF along each ray inside the unit sphere (dense samples)."""
    o, d = origins.double(), dirs.double()
    near_far, crosses = sphere_intersection(o, d, 1.0)
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    z = near_far[:, :1] + t * (near_far[:, 1:] - near_far[:, :1])
    vals = sdf((o.unsqueeze(1) + z.unsqueeze(-1) * d.unsqueeze(1)).reshape(-1, 3)).reshape(-1, n)
    return torch.where(crosses, vals.min(-1).values, torch.full_like(vals[:, 0], math.inf))


# ----------------------------------------------------------------------------- exact sphere
@pytest.mark.parametrize("delta", [0.0, 0.02, -0.02])
def test_band_hits_at_the_analytic_depth(delta):
    """Coarse 'mesh' = sphere of radius 0.5 + delta, SDF surface = radius 0.5."""
    origins, dirs = pinhole_rays((0.0, 0.0, 3.0), n=64)
    mesh_depth, mesh_hit = sphere_depth(origins, dirs, 0.5 + delta)
    gt_t, gt_hit = sphere_depth(origins, dirs, 0.5)
    res = trace_rays_mesh_guided(sphere_sdf(), origins, dirs, None, mesh_depth.float(), MESH)
    assert gt_hit.any() and (~gt_hit).any()
    assert torch.equal(res.hit, gt_hit)  # misses (of the mesh, or of the band) are reported as misses
    assert (res.dists.double() - gt_t)[gt_hit].abs().max() < 1e-4
    torch.testing.assert_close(res.points, origins + res.dists.unsqueeze(-1) * dirs)
    # Every ray whose surface lies inside the band is resolved there; the others (along-ray offset
    # delta / cos > band, rays that hit only one of the two spheres) and every mesh miss fall back.
    # The front check (sphere tracing up to the band) adds the few grazing rays it cannot finish.
    in_band = mesh_hit & gt_hit & ((mesh_depth - gt_t).abs() < 0.95 * MESH.band)
    assert in_band.sum() > 0.4 * gt_hit.sum()
    assert res.fallback[in_band].float().mean() < 0.05
    assert res.fallback[~mesh_hit].all()
    no_front_check = trace_rays_mesh_guided(sphere_sdf(), origins, dirs, None, mesh_depth.float(),
                                            RayTracerConfig(mode="mesh", n_front_steps=0))
    assert not no_front_check.fallback[in_band].any()
    assert torch.equal(no_front_check.hit, gt_hit)
    assert (no_front_check.dists.double() - gt_t)[gt_hit].abs().max() < 1e-4


def test_no_sign_change_in_band_falls_back_and_still_hits():
    origins, dirs = pinhole_rays((0.0, 0.0, 3.0), n=32, half_fov=0.1)  # every ray hits
    gt_t, gt_hit = sphere_depth(origins, dirs, 0.5)
    assert gt_hit.all()
    mesh_depth = gt_t.clone()
    k = torch.arange(len(mesh_depth))
    far_behind, far_front, inside = k % 3 == 0, k % 3 == 1, (k % 7 == 2) & (k % 3 == 2)
    mesh_depth[far_behind] += 0.3  # band inside the object: first sample already negative
    mesh_depth[far_front] -= 0.3  # band in front of the object: all positive
    mesh_depth[inside] = math.inf  # mesh missed although the SDF is hit
    counted = []

    def sdf(p):
        counted.append(p.shape[0])
        return sphere_sdf()(p)

    res = trace_rays_mesh_guided(sdf, origins, dirs, None, mesh_depth.float(), MESH)
    expected_fallback = far_behind | far_front | inside
    assert torch.equal(res.fallback, expected_fallback)
    assert res.n_fallback == int(expected_fallback.sum())
    assert res.hit.all()
    assert (res.dists.double() - gt_t).abs().max() < 1e-4
    assert res.n_sdf_evals == sum(counted)  # every evaluated point is counted, fallback included


def test_front_check_sees_a_floater_in_front_of_the_band():
    """A small sphere floats between the camera and the object, absent from the coarse mesh: its rays
    must hit it (the faithful first hit), not the band's surface behind it."""
    floater_c, floater_r = torch.tensor([0.0, 0.0, 0.8]), 0.12

    def sdf(p):
        return torch.minimum(p.norm(dim=-1) - 0.5, (p - floater_c.to(p)).norm(dim=-1) - floater_r)

    origins, dirs = pinhole_rays((0.0, 0.0, 3.0), n=48, half_fov=0.12)
    mesh_depth, mesh_hit = sphere_depth(origins, dirs, 0.5)
    faithful = trace_rays(sdf, origins, dirs, None)
    through_floater = faithful.hit & (faithful.dists < mesh_depth.float() - 0.2)
    assert through_floater.sum() > 20 and (mesh_hit & ~through_floater).sum() > 100
    res = trace_rays_mesh_guided(sdf, origins, dirs, None, mesh_depth.float(), MESH)
    assert torch.equal(res.hit, faithful.hit)
    assert (res.dists - faithful.dists)[faithful.hit].abs().max() < 1e-4
    assert res.fallback[through_floater].all()
    # Without the front check the band's surface hides the floater (the documented trade-off).
    unchecked = trace_rays_mesh_guided(sdf, origins, dirs, None, mesh_depth.float(),
                                       RayTracerConfig(mode="mesh", n_front_steps=0))
    assert (unchecked.dists[through_floater] > faithful.dists[through_floater] + 0.2).all()


def test_far_fewer_evaluations_than_faithful():
    """A batch where most rays hit: eval and training mode, at most a quarter of IDR's evaluations.
    The SDF under-estimates distance (|grad| = 0.5), as a network's SDF often does, so sphere tracing
    does not finish in 10 steps and IDR samples the rest; on an exact SDF sphere tracing converges
    in a few steps and costs about as much as the band search."""
    origins, dirs = pinhole_rays((0.0, 0.0, 2.0), n=48, half_fov=0.2)
    mesh_depth, mesh_hit = sphere_depth(origins, dirs, 0.51)
    gt_t, gt_hit = sphere_depth(origins, dirs, 0.5)
    assert gt_hit.float().mean() > 0.7

    def sdf(p):
        return 0.5 * sphere_sdf()(p)

    for mask in (None, gt_hit):
        gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        faithful = trace_rays(sdf, origins, dirs, mask, generator=gen())
        fast = trace_rays_mesh_guided(sdf, origins, dirs, mask, mesh_depth.float(), MESH, generator=gen())
        assert torch.equal(fast.hit, faithful.hit)
        assert fast.n_sdf_evals <= faithful.n_sdf_evals / 4, (fast.n_sdf_evals, faithful.n_sdf_evals)


def test_idr_results_keep_their_shape():
    origins, dirs = pinhole_rays((0.0, 0.0, 3.0), n=8)
    res = trace_rays(sphere_sdf(), origins, dirs, None)
    assert res.fallback is None and res.n_fallback == 0


# ----------------------------------------------------------------------------- outside the mask
def test_outside_mask_min_sdf_close_to_faithful():
    """Torus seen from above at an angle: the mask is the silhouette minus one row of hit rays; rays
    outside the mask (those declared outside included) get a min-SDF point as good as IDR's."""
    sdf = torus_sdf()
    origins, dirs = pinhole_rays((0.3, 2.0, 2.0), n=48, half_fov=0.35)
    faithful_eval = trace_rays(sdf, origins, dirs, None)
    gt_hit = faithful_eval.hit
    mesh_depth = torch.where(gt_hit, faithful_eval.dists + 0.01, torch.full_like(faithful_eval.dists, math.inf))
    rows = torch.arange(origins.shape[0]) // 48
    object_mask = gt_hit & (rows != 20)
    outside = ~object_mask
    assert (outside & gt_hit).sum() > 5 and (outside & ~gt_hit).sum() > 100

    faithful = trace_rays(sdf, origins, dirs, object_mask, generator=torch.Generator().manual_seed(0))
    fast = trace_rays_mesh_guided(sdf, origins, dirs, object_mask, mesh_depth, MESH,
                                  generator=torch.Generator().manual_seed(0))
    ref = dense_min_sdf(sdf, origins, dirs)
    _, crosses = sphere_intersection(origins, dirs, 1.0)
    sel = outside & crosses
    sdf_fast = sdf(fast.points[sel]).double()
    sdf_faithful = sdf(faithful.points[sel]).double()
    # Within a small tolerance of the faithful tracer's min (and better on average), and close to
    # the dense reference.
    assert (sdf_fast - sdf_faithful).max() < 0.01
    assert (sdf_fast - sdf_faithful).mean() <= 0
    assert (sdf_fast - ref[sel]).max() < 0.01
    # Out-of-mask rays that meet the surface are hits found beyond it (negative SDF), as in IDR.
    assert torch.equal(fast.hit[sel], faithful.hit[sel])
    assert (sdf_fast[(outside & gt_hit)[sel]] < 0).all()
    # Rays missing the bounding sphere: the closest approach to its centre.
    if (~crosses).any():
        torch.testing.assert_close(fast.dists[~crosses], -(dirs * origins).sum(-1)[~crosses])
    # Mask rays: hits at the faithful depth (band found them: mesh depth is 0.01 off).
    inside_hit = object_mask & gt_hit
    assert (fast.dists - faithful.dists)[inside_hit].abs().max() < 1e-4
    assert (fast.fallback & inside_hit).float().mean() < 0.1


def test_chunking_is_invisible():
    sdf = torus_sdf()
    origins, dirs = pinhole_rays((0.3, 2.0, 2.0), n=16, half_fov=0.35)
    ev = trace_rays(sdf, origins, dirs, None)
    depth = torch.where(ev.hit, ev.dists - 0.005, torch.full_like(ev.dists, math.inf))
    a = trace_rays_mesh_guided(sdf, origins, dirs, ev.hit, depth, MESH, generator=torch.Generator().manual_seed(1))
    b = trace_rays_mesh_guided(sdf, origins, dirs, ev.hit, depth, MESH, chunk=7,
                               generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.hit, b.hit) and a.n_sdf_evals == b.n_sdf_evals
    torch.testing.assert_close(a.dists, b.dists)


def test_config_mode_and_knobs():
    cfg = build(RayTracerConfig, {"mode": "mesh", "band": 0.05, "band_steps": 12}, "ray_tracer")
    assert cfg.mode == "mesh" and cfg.band == 0.05 and cfg.band_steps == 12 and isinstance(cfg.band_steps, int)
    assert RayTracerConfig().mode == "idr"
    with pytest.raises(ValueError, match="ray_tracer.mode = 'fast': expected one of idr, mesh"):
        build(RayTracerConfig, {"mode": "fast"}, "ray_tracer")
    with pytest.raises(ValueError, match="band_steps = 1: must be >= 2"):
        RayTracerConfig(mode="mesh", band_steps=1)  # checked when made in code too
    with pytest.raises(PbidrError, match=r"unknown key model.ray_tracer.bnad \(did you mean band\?\)"):
        model_config({"ray_tracer": {"bnad": 0.1}})



def test_make_tracer_picks_the_tracer_by_mode():
    """The model's one tracer factory: mode "mesh" searches the band when a mesh depth is given and
    traces faithfully without one; mode "idr" ignores the mesh depth. Same numbers as calling the
    tracer functions directly, with the conf's sdf_chunk."""
    origins, dirs = pinhole_rays((0.0, 0.0, 3.0), n=24)
    mesh_depth = sphere_depth(origins, dirs, 0.52)[0].float()
    mesh_conf, idr_conf = model_config({"ray_tracer": {"mode": "mesh"}, "sdf_chunk": 97}), model_config({})
    mesh = make_tracer(mesh_conf.ray_tracer, mesh_conf.sdf_chunk)
    idr = make_tracer(idr_conf.ray_tracer, idr_conf.sdf_chunk)
    assert (mesh.config.mode, mesh.chunk, idr.config.mode) == ("mesh", 97, "idr")
    assert mesh.config.line_step_iters == idr.config.line_step_iters == 3  # the conf's defaults, not IDR's
    guided = trace_rays_mesh_guided(sphere_sdf(), origins, dirs, None, mesh_depth, mesh.config, chunk=97)
    faithful = trace_rays(sphere_sdf(), origins, dirs, None, idr.config)
    for res, ref in [(mesh(sphere_sdf(), origins, dirs, None, mesh_depth), guided),
                     (mesh(sphere_sdf(), origins, dirs, None), trace_rays(sphere_sdf(), origins, dirs, None, mesh.config)),
                     (idr(sphere_sdf(), origins, dirs, None, mesh_depth), faithful)]:
        assert torch.equal(res.hit, ref.hit) and torch.equal(res.dists, ref.dists)
        assert res.n_sdf_evals == ref.n_sdf_evals and res.n_fallback == ref.n_fallback
    assert guided.n_sdf_evals < faithful.n_sdf_evals


# ----------------------------------------------------------------------------- full model
TINY_MODEL = {
    "feature_vector_size": 8,
    "sdf_network": {"dims": [32, 32, 32, 32], "skip_in": [2], "multires": 2},
    "diffuse_network": {"dims": [16], "multires": 2},
    "specular_network": {"dims": [16], "multires_normal": 2},
    "albedo_network": {"dims": [16, 16], "multires": 2},
}


def toy_batch(n: int, mesh_depth_of, seed: int = 0) -> RayBatch:
    """Rays from cameras at distance 2.5 aimed near the origin; coarse 'mesh' hits at mesh_depth_of(o, d)."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=g)
    origins = origins / origins.norm(dim=-1, keepdim=True) * 2.5
    dirs = torch.randn(n, 3, generator=g) * 0.3 - origins
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    t, hit = mesh_depth_of(origins, dirs)
    t = torch.where(hit, t, torch.zeros_like(t)).float()
    points = origins + t.unsqueeze(-1) * dirs
    normals = points / points.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return RayBatch(origins=origins, dirs=dirs, object_mask=hit.clone(), mesh_hit=hit,
                    mesh_points=torch.where(hit.unsqueeze(-1), points, torch.zeros_like(points)),
                    mesh_normals=torch.where(hit.unsqueeze(-1), normals, torch.zeros_like(normals)))


def test_model_forward_backward_mesh_mode():
    torch.manual_seed(0)
    conf = dict(TINY_MODEL, ray_tracer={"mode": "mesh", "band": 0.1})
    model = PBIDRModel(model_config(conf)).train()
    assert model.ray_tracer_config.mode == "mesh"

    # The coarse mesh = the fresh network's own zero level set (traced faithfully), pushed back by
    # 0.02, so the band search finds it; the silhouette is the mesh's.
    def net_depth(origins, dirs):
        res = model.trace(origins, dirs, None)
        return res.dists + 0.02, res.hit

    batch = toy_batch(256, net_depth)
    assert batch.mesh_hit.sum() > 50 and (~batch.mesh_hit).sum() > 20
    torch.testing.assert_close(batch.mesh_depth()[batch.mesh_hit],
                               (batch.mesh_points - batch.origins).norm(dim=-1)[batch.mesh_hit])
    assert torch.isinf(batch.mesh_depth()[~batch.mesh_hit]).all()

    out = model(batch)
    surf = out.surface_mask
    assert surf.sum() > 50
    assert out.n_trace_fallback < 0.2 * batch.mesh_hit.sum()
    idr = PBIDRModel(model_config(TINY_MODEL))
    idr.load_state_dict(model.state_dict())
    ref = idr.trace(batch.origins, batch.dirs, batch.object_mask)
    assert out.n_sdf_evals < ref.n_sdf_evals
    both = surf & ref.hit
    assert (out.dists - ref.dists)[both].abs().max() < 1e-3

    loss = PBIDRLoss()(out, torch.zeros(batch.n_rays, 3), alpha=50.0)
    assert torch.isfinite(loss.total)
    loss.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    model.eval()
    render = model.render_eval(RayBatch(batch.origins, batch.dirs, None, batch.mesh_hit, batch.mesh_points,
                                        batch.mesh_normals), chunk=100)
    ref_eval = idr.trace(batch.origins, batch.dirs, None)
    assert torch.equal(render.hit, ref_eval.hit)
    assert (render.dists - ref_eval.dists)[render.hit].abs().max() < 1e-3

