"""Loss terms on exact answers."""

from __future__ import annotations

import math

import pytest
import torch

from pbidr.errors import PbidrError
from pbidr.model.pbidr_model import GeometrySupervision
from pbidr.training.conf import loss_config
from pbidr.training.regularisers import RegulariserSamples
from pbidr.training.losses import (
    PBIDRLoss,
    alpha_at,
    eikonal_loss,
    mask_loss,
    mesh_pull_loss,
    normal_loss,
    rgb_loss,
)


def test_eikonal_of_exact_sdf_is_zero():
    x = (torch.rand(500, 3, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    sdf = (x - torch.tensor([0.1, 0.2, -0.1], dtype=torch.float64)).norm(dim=-1) - 0.4
    (grad,) = torch.autograd.grad(sdf.sum(), x)
    assert eikonal_loss(grad).item() < 1e-20
    assert eikonal_loss(2 * grad).item() == pytest.approx(1.0)


def test_mask_loss_limits():
    n = 10
    surface = torch.zeros(n, dtype=torch.bool)
    outside = torch.zeros(n, dtype=torch.bool)
    alpha = 50.0
    # Outside the object, far outside the SDF surface: nothing to fix.
    assert mask_loss(torch.full((n,), 1.0), surface, outside, alpha).item() < 1e-20
    # Outside the object but deep inside the SDF: logit alpha*0.5 -> BCE ~ 25 per ray, / alpha.
    big = mask_loss(torch.full((n,), -0.5), surface, outside, alpha).item()
    assert big == pytest.approx(0.5, rel=1e-6)
    # Inside the object and inside the SDF: fine again.
    assert mask_loss(torch.full((n,), -1.0), surface, ~outside, alpha).item() < 1e-20
    # Rays in the surface mask are excluded; the sum is divided by all N rays.
    half = torch.arange(n) < 5
    assert mask_loss(torch.full((n,), -0.5), half, outside, alpha).item() == pytest.approx(0.25, rel=1e-6)
    assert mask_loss(torch.zeros(n), torch.ones(n, dtype=torch.bool), outside, alpha).item() == 0.0


def test_rgb_loss_is_l1_over_surface_divided_by_rays():
    rgb = torch.zeros(4, 3)
    gt = torch.ones(4, 3)
    surface = torch.tensor([True, True, False, False])
    assert rgb_loss(rgb, gt, surface).item() == pytest.approx(2 * 3 / 4)
    assert rgb_loss(rgb, gt, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_mesh_pull_and_normal_losses():
    a = torch.zeros(2, 3)
    b = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    assert mesh_pull_loss(a, b, "l2sq").item() == pytest.approx((25 + 1) / 2)
    assert mesh_pull_loss(a, b, "l2").item() == pytest.approx((5 + 1) / 2)
    assert mesh_pull_loss(a, b, "l1").item() == pytest.approx((7 + 1) / 2)
    assert mesh_pull_loss(a[:0], b[:0]).item() == 0.0
    n = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
    assert normal_loss(n, torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])).item() == pytest.approx(1.0)


def test_alpha_schedule():
    ms = [250, 500, 750, 1000, 1250]
    assert alpha_at(0, 50.0, 2.0, ms) == 50.0
    assert alpha_at(249, 50.0, 2.0, ms) == 50.0
    assert alpha_at(250, 50.0, 2.0, ms) == 100.0
    assert alpha_at(5000, 50.0, 2.0, ms) == 50.0 * 2**5
    loss = PBIDRLoss()
    assert loss.alpha_for(600) == 200.0


class _FakeOutput:
    """The ModelOutput fields the loss reads (the masks, rgb, the geometry struct), and ``priors``: what
    a RegulariserSampler would draw (the loss's ``regularisers``)."""

    def __init__(self, n=6, p=3, requires_grad=True):
        g = torch.Generator().manual_seed(0)
        self.rgb = torch.rand(n, 3, generator=g).requires_grad_(requires_grad)
        self.surface_mask = torch.arange(n) < 3
        self.object_mask = torch.arange(n) < 4
        self.geometry = GeometrySupervision(
            traced_sdf=torch.randn(n, generator=g).requires_grad_(requires_grad),
            eikonal_gradients=torch.randn(2 * n, 3, generator=g).requires_grad_(requires_grad),
            mesh_points=torch.randn(p, 3, generator=g),
            mesh_pull_points=torch.randn(p, 3, generator=g).requires_grad_(requires_grad),
            mesh_pull_targets=torch.randn(p, 3, generator=g).requires_grad_(requires_grad),
            sdf_normals=torch.randn(p, 3, generator=g).requires_grad_(requires_grad),
            mesh_normals=torch.randn(p, 3, generator=g),
            mesh_sdf=torch.randn(p, generator=g).requires_grad_(requires_grad),
        )
        self.priors = RegulariserSamples(
            residual_lowpass=torch.randn(2, generator=g).requires_grad_(requires_grad),
            albedo_step=torch.randn(4, 3, generator=g).requires_grad_(requires_grad),
        )


def test_total_is_weighted_sum_and_conf_overrides():
    out = _FakeOutput()
    gt = torch.zeros(6, 3)
    loss = PBIDRLoss(loss_config({"mesh_pull_weight": 2.0, "normal_weight": 0.5}))
    t = loss(out, gt, alpha=10.0)
    expected = t.rgb + 0.1 * t.eikonal + 100.0 * t.mask + 2.0 * t.mesh_pull + 0.5 * t.normal
    torch.testing.assert_close(t.total, expected)
    assert all(v.dim() == 0 for v in (t.total, t.rgb, t.eikonal, t.mask, t.mesh_pull, t.normal))
    t.total.backward()
    assert out.geometry.mesh_pull_targets.grad is not None
    detached = PBIDRLoss(loss_config({"mesh_pull_detach_target": True}))
    out2 = _FakeOutput()
    detached(out2, gt).total.backward()
    assert out2.geometry.mesh_pull_targets.grad is None
    # The detail mode's terms: mean squares, weighted into the total, off by default.
    weighted = loss_config({"residual_weight": 3.0, "residual_lowpass_weight": 7.0, "albedo_smoothness_weight": 2.0})
    reg = PBIDRLoss(weighted)(out2, gt, regularisers=out2.priors)
    torch.testing.assert_close(reg.residual, (out2.geometry.mesh_sdf ** 2).mean())
    torch.testing.assert_close(reg.residual_lowpass, (out2.priors.residual_lowpass ** 2).mean())
    plain = PBIDRLoss()(out2, gt)
    torch.testing.assert_close(reg.albedo_smoothness, out2.priors.albedo_step.abs().sum(-1).mean())
    torch.testing.assert_close(reg.total - plain.total,
                               3.0 * reg.residual + 7.0 * reg.residual_lowpass + 2.0 * reg.albedo_smoothness)
    with pytest.raises(PbidrError):
        loss_config({"mask_wieght": 1.0})
    with pytest.raises(PbidrError, match="loss.mesh_pull_norm = 'l3': expected one of l2sq, l2, l1"):
        loss_config({"mesh_pull_norm": "l3"})
    assert math.isfinite(PBIDRLoss()(out, gt).total.item())
