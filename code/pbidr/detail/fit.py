"""The texel fit: the detail as a displacement map D on the coarse chart, from every texel at once.

Image model (PBIDR's, on the chart): colour T = albedo x shading(n), n the detailed normal
``normalise(n_c - grad_s D)``. Shading is grey, so in log space the chromaticity
``chi_c = log T_c - Y`` (Y = mean_c log T_c) is albedo alone, and ``Y = a + log s(n)`` with a the
albedo's log intensity. The fit:

1. **Light, anchored on the coarse shape.** ``s(n)`` is a polynomial of the normal of degree
   ``light_order`` (2 = order-2 spherical harmonics), least-squares fitted (robustly, IRLS) to the
   linear luminance on the *coarse* normals with constant albedo, then frozen. The geometry never
   moves the light, so the convex/concave ambiguity cannot flip the relief.
2. **Albedo, locally affine in chromaticity.** For any D the albedo intensity that explains the rest
   is ``a = GF(Y - log s(n))``, the guided filter of the shading-free luminance with the
   chromaticity as guide: inside each window the albedo's intensity is an affine function of its
   chromaticity, so smooth tone, freckles, eyebrows and lips (which change colour with intensity) are
   explained, while shading (grey) is not. The data term is the robust residual
   ``rho((I - GF)(Y - log s(n)))`` on every valid texel, blind to albedo of that form and to smooth
   offsets.
3. **Geometry priors.** D's local mean over a Gaussian of ``lowpass_sigma_mm`` is penalised (detail
   has no low frequencies: the coarse mesh has them), and, weakly, D's texel-scale part (D minus its
   Gaussian mean over ``finescale_sigma_texels``): it stops texel noise and, per mm of amplitude, weighs
   the 2-3 mm detail about 9x less than a Laplacian of weight 0.3 (optional: ``laplacian_weight``).
4. **Multi-resolution.** D is a sum of grids (cells of 2^k texels, k = ``finest_level`` ..
   ``coarsest_level``), a preconditioner for Adam; with ``level_steps`` > 0 the coarsest opens first,
   one finer level every ``level_steps`` steps (coarse to fine). Adam on all texels per step.

Seams: where a vertex has several UV corners, D at its copies is pulled together (``seam_weight``);
the meshes are displaced per position, so they have no cracks anyway.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from pbidr.detail.chart import TexelChart
from pbidr.errors import PbidrError
from pbidr.detail.filters import GuidedFilter, box_kernel, gaussian_kernel, masked_mean
from pbidr.utils.config import Config, setting

LOG_FLOOR = 1.0 / 512.0  # colours below this are clamped before the log (8-bit black)


@dataclass
class FitConfig:
    """Knobs of the texel fit as :func:`fit` takes them. A run builds it from its ``loss.texel`` block
    (:class:`TexelConfig`, whose defaults are the shipped ones), ``model.displacement_map`` and ``train``
    (``pbidr.detail.solver.fit_config``); the defaults here are the bare function's, for tests and
    benchmarks that set what they vary."""

    steps: int = 400
    learning_rate: float = 0.02  # mm per step (Adam), on every grid level
    final_lr_fraction: float = 0.05  # the learning rate decays (cosine) to this fraction: Adam's steps
    # are about lr per cell whatever the gradient, so a constant rate keeps shaking every level
    light_model: str = "lambert"  # lambert (ambient + clamped diffuse) or poly (SH of light_order)
    light_order: int = 2  # degree of the shading polynomial in n (2 = SH2), for light_model = poly
    light_iters: int = 4  # IRLS iterations of the light fit
    albedo_radius_mm: float = 2.0  # guided-filter window half-size
    albedo_eps: float = 1e-4  # guided-filter regulariser (chromaticity^2)
    albedo_guide_order: int = 1  # 1: albedo affine in chromaticity per window; 2: quadratic (blends of two colours)
    robust_scale: float = 0.02  # Charbonnier scale of the data term (log units)
    mark_tau: float = 0.02  # data weight 1 / (1 + (|chi - local mean chi| / tau)^2): marks count less (0: off)
    mark_radius_mm: float = 3.0
    dark_level: float = 0.25  # data weight min(1, (luminance / dark_level)^2): the log of a dark 8-bit colour is noise
    lowpass_sigma_mm: float = 4.0
    lowpass_weight: float = 50.0
    laplacian_weight: float = 1e-4
    finescale_weight: float = 0.0  # penalty on D minus its Gaussian mean over finescale_sigma_texels, per
    # texel^2: mostly texel-scale noise (a Laplacian weighs the 2-3 mm detail more)
    finescale_sigma_texels: float = 1.0
    seam_weight: float = 10.0
    finest_level: int = 1  # cells of 2^finest_level texels
    coarsest_level: int = 6
    level_steps: int = 40  # steps between the opening of two levels
    max_displacement_mm: float = 5.0  # |D| bound (tanh), far above any skin detail
    log_every: int = 50


LIGHT_MODELS = ("lambert", "poly")
COLOUR_SOURCES = ("texture", "views")


@dataclass
class TexelConfig(Config):
    """``loss.texel``: the texel fit's energy in a run (``train.solver = texels``); :func:`fit_config`
    of ``pbidr.detail.solver`` turns it into a :class:`FitConfig`, whose comments say more."""

    colour_source: str = setting("texture", "texture (the views are its renders) or views (project into the "
                                            "images)", choices=COLOUR_SOURCES)
    light_model: str = setting("lambert", "lambert (ambient + clamped diffuse) or poly (SH of light_order)",
                               choices=LIGHT_MODELS)
    light_order: int = setting(2, "degree of the shading polynomial in n, for light_model = poly")
    light_iters: int = setting(4, "IRLS iterations of the light fit", positive=True)
    albedo_radius_mm: float = setting(3.0, "window half-size of the albedo model (3 mm: best of 2-6 on seeds 0-2)",
                                      positive=True)
    albedo_eps: float = setting(1.0e-6, "guided-filter regulariser (chromaticity^2): small lets the albedo follow "
                                        "colour edges")
    albedo_guide_order: int = setting(2, "1: albedo affine in chromaticity, 2: quadratic (blends of two colours)",
                                      choices=(1, 2))
    robust_scale: float = setting(0.001, "Charbonnier scale of the data term (log units): near L1", positive=True)
    mark_tau: float = setting(0.04, "marks (chromaticity far from the local mean) count less; 0: off")
    mark_radius_mm: float = setting(3.0, "window of that local mean")
    dark_level: float = setting(0.25, "dark texels count less: the log of a dark 8-bit colour is noise")
    lowpass_sigma_mm: float = setting(10.0, "D's local mean over this Gaussian is penalised (no low frequencies)",
                                      positive=True)
    lowpass_weight: float = setting(20.0, "weight of that penalty")
    laplacian_weight: float = setting(0.0, "a Laplacian on D (damps the 2-3 mm detail too; BENCHMARKS.md)")
    finescale_weight: float = setting(1.0, "weak penalty on D minus its Gaussian mean over finescale_sigma_texels: "
                                           "stops texel noise")
    finescale_sigma_texels: float = setting(1.0, "sigma of that Gaussian (texels)")
    seam_weight: float = setting(10.0, "the UV copies of a seam vertex agree")
    level_steps: int = setting(0, "steps between the opening of two map levels, coarse to fine (0: all open "
                                  "from the start)")
    final_lr_fraction: float = setting(0.05, "cosine decay of train.learning_rate to this fraction")


@dataclass
class Light:
    """Grey shading of a unit normal.

    ``lambert``: s(n) = ambient + diffuse max(0, n . l), ``coeffs`` = [ambient, diffuse * l (3)];
    ``poly``: s(n) = poly(n) . coeffs, the monomials of degree <= ``order`` (order 2 = SH2).
    """

    model: str
    order: int
    coeffs: np.ndarray

    def shading(self, n: torch.Tensor) -> torch.Tensor:
        c = torch.as_tensor(self.coeffs, dtype=n.dtype, device=n.device)
        if self.model == "lambert":
            return c[0] + (n @ c[1:]).clamp_min(0.0)
        return light_basis(n, self.order) @ c

    def describe(self) -> dict:
        out = {"model": self.model, "coeffs": [float(x) for x in self.coeffs]}
        if self.model == "lambert":
            d = np.asarray(self.coeffs[1:], dtype=np.float64)
            out.update(ambient=float(self.coeffs[0]), diffuse=float(np.linalg.norm(d)),
                       direction=(d / max(np.linalg.norm(d), 1e-12)).tolist())
        else:
            out["order"] = self.order
        return out


def light_basis(n: torch.Tensor, order: int) -> torch.Tensor:
    """Monomials x^i y^j z^k, i + j + k <= order, of unit normals (..., 3) -> (..., K). On the sphere
    they span the spherical harmonics up to ``order`` (order 2: the 9 SH2 functions)."""
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    terms = []
    for total in range(order + 1):
        for i in range(total + 1):
            for j in range(total - i + 1):
                k = total - i - j
                if k >= 2:
                    continue  # z^2 = 1 - x^2 - y^2 on the sphere: keep the basis independent
                terms.append(x**i * y**j * z**k)
    return torch.stack(terms, dim=-1)


@dataclass
class DetailFit:
    """The fit's result: D (H, W) in the chart's world units, the albedo map (H, W, 3) in [0, 1]
    (T / s(n)), the light, and the loss history."""

    displacement: np.ndarray
    albedo: np.ndarray
    light: Light
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


class DisplacementGrids(torch.nn.Module):
    """D = max_d tanh(sum_k up(G_k) / max_d): grids of 2^k-texel cells, bilinearly upsampled."""

    def __init__(self, size: tuple[int, int], levels: list[int], max_displacement: float,
                 init: torch.Tensor | None = None):
        super().__init__()
        h, w = size
        self.size = (h, w)
        self.levels = list(levels)
        self.max_d = float(max_displacement)
        self.grids = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(1, 1, max(1, math.ceil(h / 2**k)), max(1, math.ceil(w / 2**k))))
             for k in self.levels])
        self.register_buffer("base", torch.zeros(h, w) if init is None else
                             torch.atanh((init / self.max_d).clamp(-0.999, 0.999)) * self.max_d)

    def forward(self) -> torch.Tensor:
        total = self.base
        for g in self.grids:
            if g.shape[-2:] == self.size:
                total = total + g[0, 0]
            else:
                total = total + F.interpolate(g, size=self.size, mode="bilinear", align_corners=False)[0, 0]
        return self.max_d * torch.tanh(total / self.max_d)


def detailed_normals(chart_t: dict, d: torch.Tensor) -> torch.Tensor:
    """Unit normals (H, W, 3) of S = P_c + D n_c to first order: normalise(n_c - grad_s D); D's
    derivatives are central differences, zero where the texel is not interior (seams, borders)."""
    h, w = d.shape
    du = torch.zeros_like(d)
    dv = torch.zeros_like(d)
    du[:, 1:-1] = (d[:, 2:] - d[:, :-2]) * (w / 2.0)
    dv[1:-1, :] = -(d[2:, :] - d[:-2, :]) * (h / 2.0)  # rows run along -v
    inter = chart_t["interior"]
    du, dv = du * inter, dv * inter
    grad = du.unsqueeze(-1) * chart_t["grad_u"] + dv.unsqueeze(-1) * chart_t["grad_v"]
    n = chart_t["normals"] - grad
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _huber_weights(r: torch.Tensor) -> torch.Tensor:
    r = r.abs()
    scale = 1.4826 * r.median().clamp_min(1e-6)
    return torch.where(r <= 1.5 * scale, torch.ones_like(r), 1.5 * scale / r)


def fit_light(normals: torch.Tensor, luminance: torch.Tensor, model: str = "lambert", order: int = 2,
              iters: int = 4, max_samples: int = 200_000) -> Light:
    """The grey light that best explains ``luminance`` (N,) on ``normals`` (N, 3) with a constant
    albedo (absorbed in the scale), robustly (IRLS with Huber weights).

    ``poly``: linear least squares. ``lambert``: Gauss-Newton on [ambient, diffuse * l], started from
    the order-1 fit (exact where the whole face is lit, refined where max(0, .) clamps).
    """
    if model not in LIGHT_MODELS:
        raise ValueError(f"light model must be one of {', '.join(LIGHT_MODELS)}, got {model!r}")
    n = normals.double()
    y = luminance.double()
    if len(y) > max_samples:  # a fixed subset: 9-25 unknowns need nowhere near every texel
        pick = torch.linspace(0, len(y) - 1, max_samples, device=y.device).long()
        n, y = n[pick], y[pick]
    a = light_basis(n, 1 if model == "lambert" else order)
    wts = torch.ones_like(y)
    coeffs = None
    for _ in range(max(1, iters)):
        sw = wts.sqrt()
        coeffs = torch.linalg.lstsq(a * sw[:, None], (y * sw).unsqueeze(-1)).solution[:, 0]
        wts = _huber_weights(a @ coeffs - y)
    if model == "poly":
        return Light(model="poly", order=order, coeffs=coeffs.cpu().numpy())
    c = coeffs.clone()  # [ambient, l_x, l_y, l_z] of the unclamped fit
    for _ in range(max(1, iters) * 3):
        ndl = n @ c[1:]
        lit = (ndl > 0).double()
        pred = c[0] + ndl.clamp_min(0.0)
        jac = torch.cat([torch.ones_like(y)[:, None], n * lit[:, None]], dim=1)
        sw = wts.sqrt()
        step = torch.linalg.lstsq(jac * sw[:, None], ((y - pred) * sw).unsqueeze(-1)).solution[:, 0]
        c = c + step
        wts = _huber_weights(c[0] + (n @ c[1:]).clamp_min(0.0) - y)
        if float(step.abs().max()) < 1e-9:
            break
    return Light(model="lambert", order=1, coeffs=c.cpu().numpy())


def seam_pairs(chart: TexelChart, mesh) -> tuple[np.ndarray, np.ndarray]:
    """Texel index pairs (P,), (P,) of the UV copies of every vertex that has several UV corners."""
    faces, fuv = np.asarray(mesh.faces), np.asarray(mesh.face_uv)
    corner_v, corner_t = faces.reshape(-1), fuv.reshape(-1)
    pairs = np.unique(np.stack([corner_v, corner_t], 1), axis=0)
    order = np.argsort(pairs[:, 0], kind="stable")
    pairs = pairs[order]
    first = np.concatenate([[True], pairs[1:, 0] != pairs[:-1, 0]])
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(pairs)), 0))
    other = ~first
    a_uv = np.asarray(mesh.uv)[pairs[group_start[other], 1]]
    b_uv = np.asarray(mesh.uv)[pairs[other, 1]]
    h, w = chart.size

    def texel(uv):
        col = np.clip(np.floor(uv[:, 0] * w), 0, w - 1).astype(np.int64)
        row = np.clip(np.floor((1.0 - uv[:, 1]) * h), 0, h - 1).astype(np.int64)
        return row * w + col

    return texel(a_uv), texel(b_uv)


class TexelObjective:
    """The fit's energy on one chart: built once from the chart and its colours (light fit, albedo
    guide, data weights), then ``energy(D)`` for any D (H, W) in world units, and ``albedo(D)``.

    Both the standalone fit (:func:`fit_detail`) and ``pbidr train`` (``train.solver = texels``)
    step this object, so they optimise the same energy.
    """

    def __init__(self, chart: TexelChart, colours: np.ndarray, cfg: FitConfig, device: torch.device | str = "cpu",
                 weight: np.ndarray | None = None, seams: tuple[np.ndarray, np.ndarray] | None = None,
                 light: Light | None = None, albedo: np.ndarray | None = None):
        """``light`` / ``albedo`` (H, W, 3) in [0, 1], when given, replace the fitted light and the
        guided-filter albedo by known ones: the benchmark's diagnostics (the sample's truth) measure
        what each part of the energy costs."""
        self.cfg = cfg
        self.chart = chart
        device = torch.device(device)
        dt = torch.float32
        self.ct = {
            "normals": torch.as_tensor(chart.normals, dtype=dt, device=device),
            "grad_u": torch.as_tensor(chart.grad_u, dtype=dt, device=device),
            "grad_v": torch.as_tensor(chart.grad_v, dtype=dt, device=device),
            "interior": torch.as_tensor(chart.interior, dtype=dt, device=device),
        }
        valid_np = chart.interior & chart.mask
        if weight is not None:
            valid_np = valid_np & (weight > 0)
        wmap = torch.as_tensor(valid_np if weight is None else np.where(valid_np, weight, 0.0), dtype=dt,
                               device=device)
        valid = wmap > 0
        if not bool(valid.any()):
            raise PbidrError("texel fit: no chart texel has a colour and four neighbours in its UV island")
        self.colours = torch.as_tensor(np.clip(colours, LOG_FLOOR, 1.0), dtype=dt, device=device)
        logc = torch.log(self.colours)
        self.lum_log = logc.mean(-1)  # Y
        chroma = (logc - self.lum_log.unsqueeze(-1)).permute(2, 0, 1)[[0, 2]]  # (2, H, W)
        guide = chroma
        if cfg.albedo_guide_order >= 2:  # a blend of two albedos is a curve, not a line, in log space
            guide = torch.cat([chroma, chroma**2, (chroma[0] * chroma[1]).unsqueeze(0)], dim=0)
        if cfg.dark_level > 0:
            wmap = wmap * (self.colours.mean(-1) / cfg.dark_level).clamp(max=1.0) ** 2
        texel = max(chart.texel_size, 1e-12)
        if cfg.mark_tau > 0:  # albedo marks: chromaticity far from the local skin's
            local = masked_mean(chroma, wmap, box_kernel(max(1, int(round(cfg.mark_radius_mm / texel)))))
            wmap = wmap / (1.0 + ((chroma - local).norm(dim=0) / cfg.mark_tau) ** 2)
        self.wmap = wmap
        if light is not None:
            self.light = light
        else:
            self.light = fit_light(self.ct["normals"][valid], self.colours.mean(-1)[valid], cfg.light_model,
                                   cfg.light_order, cfg.light_iters)
            # The light absorbs the albedo's overall scale (the fit is blind to it); choose it so that the
            # albedo T / s fills [0, 1] (its 99.5th percentile channel is 1), as a texture's would.
            with torch.no_grad():
                s0 = self.light.shading(self.ct["normals"][valid]).clamp_min(1e-3)
                top = torch.quantile((self.colours[valid] / s0[:, None]).amax(-1)[:200_000], 0.995)
            self.light = Light(self.light.model, self.light.order, self.light.coeffs * float(top))
        self.known_albedo = None
        if albedo is not None:  # its log intensity: the data term is then Y - log s(n) - that, no filter
            self.known_albedo = torch.log(torch.as_tensor(np.clip(albedo, LOG_FLOOR, 1.0), dtype=dt,
                                                          device=device)).mean(-1)
        # a known albedo replaces the filter's albedo model (the diagnostics): no filter to build then
        self.gf = None if self.known_albedo is not None else GuidedFilter(
            guide, wmap, max(1, int(round(cfg.albedo_radius_mm / texel))), cfg.albedo_eps)
        self.gauss = gaussian_kernel(cfg.lowpass_sigma_mm / texel)
        self.fine = gaussian_kernel(cfg.finescale_sigma_texels)
        self.chart_w = torch.as_tensor(chart.mask, dtype=dt, device=device)
        self.n_valid = float(valid.sum())  # normalises every term (weights change only the data's)
        self.texel2 = texel**2
        if seams is not None and len(seams[0]):
            self.seam_a = torch.as_tensor(seams[0], device=device)
            self.seam_b = torch.as_tensor(seams[1], device=device)
        else:
            self.seam_a = self.seam_b = None

    def energy(self, d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total energy (scalar, differentiable) and its terms (detached) of D (H, W)."""
        cfg = self.cfg
        n = detailed_normals(self.ct, d)
        p = self.lum_log - torch.log(self.light.shading(n).clamp_min(1e-3))
        r = p - (self.known_albedo if self.gf is None else self.gf.apply(p))
        data = (torch.sqrt(r**2 + cfg.robust_scale**2) - cfg.robust_scale) * self.wmap
        e_data = data.sum() / self.n_valid
        low = masked_mean(d.unsqueeze(0), self.chart_w, self.gauss)[0]
        e_low = ((low**2) * self.chart_w).sum() / self.n_valid
        e = e_data + cfg.lowpass_weight * e_low
        terms = {"data": e_data.detach(), "lowpass": e_low.detach()}
        if cfg.laplacian_weight > 0:
            lap = torch.zeros_like(d)
            lap[1:-1, 1:-1] = (d[2:, 1:-1] + d[:-2, 1:-1] + d[1:-1, 2:] + d[1:-1, :-2] - 4 * d[1:-1, 1:-1]) / self.texel2
            e_lap = ((lap**2) * self.ct["interior"]).sum() / self.n_valid
            e = e + cfg.laplacian_weight * e_lap
            terms["laplacian"] = e_lap.detach()
        if cfg.finescale_weight > 0:
            fine = d - masked_mean(d.unsqueeze(0), self.chart_w, self.fine)[0]
            e_fine = ((fine**2) * self.chart_w).sum() / (self.n_valid * self.texel2)
            e = e + cfg.finescale_weight * e_fine
            terms["finescale"] = e_fine.detach()
        if self.seam_a is not None:
            flat = d.reshape(-1)
            e_seam = ((flat[self.seam_a] - flat[self.seam_b]) ** 2).mean()
            e = e + cfg.seam_weight * e_seam
            terms["seam"] = e_seam.detach()
        return e, terms

    def albedo(self, d: torch.Tensor) -> torch.Tensor:
        """The albedo map (H, W, 3) that D leaves: colour / shading(n(D)), in [0, 1]."""
        with torch.no_grad():
            s = self.light.shading(detailed_normals(self.ct, d)).clamp_min(1e-3)
            return (self.colours / s.unsqueeze(-1)).clamp(0.0, 1.0)

    def learning_rate(self, step: int, total: int) -> float:
        """Cosine decay from ``learning_rate`` to ``final_lr_fraction`` of it over ``total`` steps."""
        cfg = self.cfg
        t = min(1.0, step / max(1, total))
        return cfg.learning_rate * (cfg.final_lr_fraction + (1.0 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))

    def open_levels(self, step: int) -> int:
        """How many grid levels (coarsest first) may move at ``step`` (all when ``level_steps`` is 0)."""
        if self.cfg.level_steps <= 0:
            return 1 << 30
        return 1 + step // self.cfg.level_steps


def adam_step(objective: TexelObjective, grids: "DisplacementGrids", optimizer: torch.optim.Optimizer,
              step: int) -> dict[str, float]:
    """One step of the texel fit: energy of the whole chart, gradients, closed levels held, Adam (at
    the learning rate the caller set)."""
    optimizer.zero_grad(set_to_none=True)
    e, terms = objective.energy(grids())
    if not torch.isfinite(e):
        raise FloatingPointError({"energy": float(e), **{k: float(v) for k, v in terms.items()}})
    e.backward()
    open_levels = objective.open_levels(step)
    for k, g in enumerate(grids.grids):
        if k >= open_levels and g.grad is not None:
            g.grad.zero_()
    optimizer.step()
    return {"total": float(e.detach()), **{k: float(v) for k, v in terms.items()}}


def fit_detail(chart: TexelChart, colours: np.ndarray, config: FitConfig | None = None,
               device: torch.device | str = "cpu", init_displacement: np.ndarray | None = None,
               seams: tuple[np.ndarray, np.ndarray] | None = None, callback=None,
               weight: np.ndarray | None = None, light: Light | None = None,
               albedo: np.ndarray | None = None) -> DetailFit:
    """Fit D (and the light, and the albedo) to ``colours`` (H, W, 3) in [0, 1] on ``chart``.

    ``weight`` (H, W) optional per-texel data weight (default: the chart's valid texels).
    ``init_displacement`` (H, W) starts the solve there (the oracle-drift benchmark starts at the
    truth). ``callback(step, displacement_tensor)`` is called every ``log_every`` steps. ``light`` and
    ``albedo``: known ones instead of the fitted (see :class:`TexelObjective`; diagnostics only).
    """
    cfg = config or FitConfig()
    device = torch.device(device)
    t0 = time.perf_counter()
    objective = TexelObjective(chart, colours, cfg, device, weight=weight, seams=seams, light=light, albedo=albedo)
    init = None if init_displacement is None else torch.as_tensor(init_displacement, dtype=torch.float32,
                                                                      device=device)
    grids = DisplacementGrids(chart.size, fit_levels(cfg), cfg.max_displacement_mm, init).to(device)
    opt = torch.optim.Adam(grids.parameters(), lr=cfg.learning_rate)
    history = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = objective.learning_rate(step, cfg.steps)
        terms = adam_step(objective, grids, opt, step)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            history.append({"step": step, **terms, "seconds": time.perf_counter() - t0})
            if callback is not None:
                callback(step, grids().detach())
    with torch.no_grad():
        d = grids()
    return DetailFit(displacement=d.cpu().numpy().astype(np.float32), albedo=objective.albedo(d).cpu().numpy(),
                     light=objective.light, history=history, seconds=time.perf_counter() - t0, steps=cfg.steps)


def grid_levels(finest: int, coarsest: int) -> list[int]:
    """Grid levels, coarsest first (cells of 2^k texels, k = coarsest .. finest)."""
    return list(range(coarsest, finest - 1, -1))


def fit_levels(cfg: FitConfig) -> list[int]:
    return grid_levels(cfg.finest_level, cfg.coarsest_level)
