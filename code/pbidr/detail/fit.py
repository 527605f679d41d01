"""The texel fit: the detail as a displacement map D on the coarse chart, from every texel at once.

Image model (PBIDR's, on the chart): colour T_c = albedo_c x s(n) + q(n), n the detailed normal
``normalise(n_c - grad_s D)``, s a grey diffuse shading and q a grey glossy lobe (PBIDR's specular term,
when the texture holds one). With the lobe taken off, shading is grey, so in log space the chromaticity
``chi_c = log T_c - Y`` (Y = mean_c log T_c) is albedo alone, and ``Y = a + log s(n)`` with a the
albedo's log intensity. The fit:

1. **Light, anchored on the coarse shape** (:mod:`pbidr.detail.light`): s is ambient + a clamped Lambert
   key, with a clamped Lambert fill when held-out texels say the texture holds one (``light_model = auto``;
   or SH of ``light_order``), least-squares fitted (robustly) to the luminance on the *coarse* normals
   with a constant albedo; the lobe is searched and kept only if held-out texels say the texture holds
   one; then both are frozen. The geometry never moves the light, so the convex/concave ambiguity cannot
   flip the relief, and a highlight is the lobe of the coarse shape, never a bump.
2. **Albedo, locally affine in chromaticity.** For any D the albedo intensity that explains the rest
   is ``a = GF(p)``, ``p = mean_c log(T_c - q(n)) - log s(n)``, the guided filter with the chromaticity
   as guide: inside each window the albedo's intensity is an affine (quadratic) function of its
   chromaticity, so smooth tone, freckles, eyebrows and lips (which change colour with intensity) are
   explained, while shading (grey) is not. The data term is the robust residual ``rho(p - GF(p))``.
3. **Dark, colourless marks are not relief.** Moles, lashes, brow hair and grey freckles darken a texel
   without a change of colour, so no albedo of that form explains them, and no relief under an anchored
   light makes a dark spot: small relief shades as a dipole whose mean is nearly zero. Left to D, the fit
   makes one from a ramp that trails along the light (a streak). So a grey, one-signed mark layer m >= 0
   (``mark_layer_cost`` per unit, L1, against the data term's 1) darkens the albedo before its model:
   a dark spot costs m there, while relief explains both halves of its dipole at no such cost.
4. **Geometry priors.** D's local mean over a Gaussian of ``lowpass_sigma_mm`` is penalised (detail
   has no low frequencies: the coarse mesh has them), and, weakly, D's texel-scale part (D minus its
   Gaussian mean over ``finescale_sigma_texels``): it stops texel noise.
5. **Multi-resolution.** D is a sum of grids (cells of 2^k texels, k = ``finest_level`` ..
   ``coarsest_level``), a preconditioner for Adam; with ``level_steps`` > 0 the coarsest opens first,
   one finer level every ``level_steps`` steps (coarse to fine). Adam on all texels per step.

Seams: where a vertex has several UV corners, D at its copies is pulled together (``seam_weight``);
the meshes are displaced per position, so they have no cracks anyway.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch.nn import functional as F

from pbidr.detail.chart import TexelChart
from pbidr.detail.filters import GuidedFilter, box_kernel, gaussian_kernel, masked_mean
from pbidr.detail.light import LIGHT_MODELS, Light, fit_light, fit_lobe, light_basis
from pbidr.errors import PbidrError
from pbidr.utils.config import Config, setting

__all__ = ["LIGHT_MODELS", "Light", "fit_light", "light_basis", "TexelConfig", "FitConfig", "TexelObjective",
           "DetailFit", "DisplacementGrids", "detailed_normals", "fit_detail", "adam_step", "seam_pairs"]

LOG_FLOOR = 1.0 / 512.0  # colours below this are clamped before the log (8-bit black)
MARK_BETA = 25.0  # the mark layer's softplus sharpness (log units^-1)
MARK_INIT = -0.1  # its variable's start: m = 0.003, with a slope of 0.08 so that it can grow
COLOUR_SOURCES = ("texture", "views")
SPECULAR_MODES = ("auto", "off")


@dataclass
class TexelConfig(Config):
    """``loss.texel``: the texel fit's energy (the one set of defaults: a run's conf, the bare
    :func:`fit_detail` and the benchmarks all start here)."""

    colour_source: str = setting("texture", "texture (the views are its renders) or views (project into the "
                                            "images)", choices=COLOUR_SOURCES)
    light_model: str = setting("auto", "auto (one light, or a key and a fill where held-out texels say so), "
                                          "lambert (ambient + clamped diffuse), lambert2 (+ a fill) or poly (SH of "
                                          "light_order)", choices=LIGHT_MODELS)
    light_order: int = setting(2, "degree of the shading polynomial in n, for light_model = poly")
    light_iters: int = setting(4, "IRLS iterations of the light fit", positive=True)
    specular: str = setting("auto", "auto: a grey glossy lobe when texels held out of its search say the texture "
                                    "holds one; off: none", choices=SPECULAR_MODES)
    albedo_radius_mm: float = setting(3.0, "window half-size of the albedo model (3 mm: best of 2-6 on seeds 0-2)",
                                      positive=True)
    albedo_eps: float = setting(1.0e-6, "guided-filter regulariser (chromaticity^2): small lets the albedo follow "
                                        "colour edges")
    albedo_guide_order: int = setting(2, "1: albedo affine in chromaticity, 2: quadratic (blends of two colours)",
                                      choices=(1, 2))
    robust_scale: float = setting(0.001, "Charbonnier scale of the data term (log units): near L1", positive=True)
    mark_layer_cost: float = setting(0.5, "a darkening mark layer m >= 0 (grey, in log units, before the albedo "
                                          "model) at this cost per unit against the data term's (0.5: best of "
                                          "0.3-0.6 on the matrix); 0: off")
    mark_tau: float = setting(0.04, "marks (chromaticity far from the local mean) count less; 0: off")
    mark_radius_mm: float = setting(3.0, "window of that local mean")
    dark_level: float = setting(0.25, "dark texels count less: the log of a dark 8-bit colour is noise")
    lowpass_sigma_mm: float = setting(10.0, "D's local mean over this Gaussian is penalised (no low frequencies)",
                                      positive=True)
    lowpass_weight: float = setting(20.0, "weight of that penalty")
    laplacian_weight: float = setting(0.0, "a Laplacian on D (damps the 2-3 mm detail too; BENCHMARKS.md)")
    finescale_weight: float = setting(1.0, "weak penalty on D minus its Gaussian mean over finescale_sigma_texels: "
                                           "stops texel noise")
    finescale_sigma_texels: float = setting(1.0, "sigma of that Gaussian (texels)", positive=True)
    seam_weight: float = setting(10.0, "the UV copies of a seam vertex agree")
    level_steps: int = setting(0, "steps between the opening of two map levels, coarse to fine (0: all open "
                                  "from the start)")
    final_lr_fraction: float = setting(0.05, "cosine decay of train.learning_rate to this fraction")


@dataclass
class FitConfig(TexelConfig):
    """Everything :func:`fit_detail` takes: the energy (:class:`TexelConfig`, its defaults) and the solve's
    schedule and map, whose defaults are ``confs/fast.conf``'s (``train.iters``, ``train.learning_rate``,
    ``model.displacement_map``); ``pbidr.detail.solver.fit_config`` builds it from a run's conf."""

    steps: int = setting(150, "Adam steps", positive=True)
    learning_rate: float = setting(0.02, "mm per step (Adam), on every grid level", positive=True)
    finest_level: int = setting(1, "finest grid level: cells of 2^k texels")
    coarsest_level: int = setting(5, "coarsest grid level")
    max_displacement_mm: float = setting(5.0, "|D| bound (tanh), far above any skin detail", positive=True)
    log_every: int = setting(50, "history (and callback) every this many steps", positive=True)


def texel_config_fields() -> list[str]:
    return [f.name for f in fields(TexelConfig)]


@dataclass
class DetailFit:
    """The fit's result: D (H, W) in the chart's world units, the albedo map (H, W, 3) in [0, 1]
    ((T - q) / s(n)), the light, and the loss history."""

    displacement: np.ndarray
    albedo: np.ndarray
    light: Light
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


class DisplacementGrids(torch.nn.Module):
    """D = max_d tanh(sum_k up(G_k) / max_d): grids of 2^k-texel cells, bilinearly upsampled. Beside them,
    ``marks`` (H, W), the free variable of the fit's darkening mark layer (used only when it is on;
    :meth:`mark_layer` maps it to m >= 0)."""

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
        self.marks = torch.nn.Parameter(torch.full((h, w), MARK_INIT))

    def mark_layer(self) -> torch.Tensor:
        """m = softplus(beta theta) / beta >= 0 (H, W): smooth at zero, so a texel's mark can start to grow."""
        return F.softplus(self.marks * MARK_BETA) / MARK_BETA

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "base" in state_dict and prefix + "marks" not in state_dict:  # a run from before the layer
            state_dict[prefix + "marks"] = torch.full_like(self.marks, MARK_INIT)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self) -> torch.Tensor:
        total = self.base
        for g in self.grids:
            if g.shape[-2:] == self.size:
                total = total + g[0, 0]
            else:
                total = total + F.interpolate(g, size=self.size, mode="bilinear", align_corners=False)[0, 0]
        return self.max_d * torch.tanh(total / self.max_d)


def surface_gradient(chart_t: dict, d: torch.Tensor) -> torch.Tensor:
    """grad_s D (H, W, 3) in world units per world unit: D's central differences on the chart through its
    dual tangent basis, zero where the texel is not interior (seams, borders)."""
    h, w = d.shape
    du = torch.zeros_like(d)
    dv = torch.zeros_like(d)
    du[:, 1:-1] = (d[:, 2:] - d[:, :-2]) * (w / 2.0)
    dv[1:-1, :] = -(d[2:, :] - d[:-2, :]) * (h / 2.0)  # rows run along -v
    inter = chart_t["interior"]
    return (du * inter).unsqueeze(-1) * chart_t["grad_u"] + (dv * inter).unsqueeze(-1) * chart_t["grad_v"]


def detailed_normals(chart_t: dict, d: torch.Tensor) -> torch.Tensor:
    """Unit normals (H, W, 3) of S = P_c + D n_c to first order: normalise(n_c - grad_s D)."""
    n = chart_t["normals"] - surface_gradient(chart_t, d)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


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
    """The fit's energy on one chart: built once from the chart and its colours (light and lobe fit,
    albedo guide, data weights, the light's tangential directions), then ``energy(D)`` for any D (H, W)
    in world units, and ``albedo(D)``.

    Both the standalone fit (:func:`fit_detail`) and ``pbidr train`` (``train.solver = texels``)
    step this object, so they optimise the same energy.
    """

    def __init__(self, chart: TexelChart, colours: np.ndarray, cfg: TexelConfig, device: torch.device | str = "cpu",
                 weight: np.ndarray | None = None, seams: tuple[np.ndarray, np.ndarray] | None = None,
                 light: Light | None = None, albedo: np.ndarray | None = None):
        """``light`` / ``albedo`` (H, W, 3) in [0, 1], when given, replace the fitted light and the
        guided-filter albedo by known ones: the benchmark's diagnostics (the sample's truth) measure
        what each part of the energy costs."""
        self.cfg = cfg
        self.chart = chart
        self.device = torch.device(device)
        self.ct = chart_tensors(chart, self.device)
        valid = self._data_weights(weight, colours)
        self.light = light if light is not None else self._fit_light(valid)
        self.known_albedo = None
        if albedo is not None:  # its log intensity: the data term is then Y - log s(n) - that, no filter
            self.known_albedo = torch.log(torch.as_tensor(np.clip(albedo, LOG_FLOOR, 1.0), dtype=torch.float32,
                                                          device=self.device)).mean(-1)
        self._albedo_model(self.light.specular(self.ct["normals"]))
        self._priors_setup(seams)

    def _albedo_model(self, specular: torch.Tensor) -> None:
        """The albedo model's guide and weights from the colours with ``specular`` (H, W), the lobe, taken
        off: the data weights ``wmap`` (marks, chromaticity far from the local skin's, count less) and the
        guided filter (none when the albedo is known)."""
        cfg = self.cfg
        guide = self._guide(specular)
        self.wmap = self.base_wmap
        if cfg.mark_tau > 0:
            local = masked_mean(guide[:2], self.wmap, box_kernel(self._texels(cfg.mark_radius_mm)))
            self.wmap = self.wmap / (1.0 + ((guide[:2] - local).norm(dim=0) / cfg.mark_tau) ** 2)
        # a known albedo replaces the filter's albedo model (the diagnostics): no filter to build then
        self.gf = None if self.known_albedo is not None else GuidedFilter(
            guide, self.wmap, self._texels(cfg.albedo_radius_mm), cfg.albedo_eps)


    # ------------------------------------------------------------------ set-up
    def _texels(self, mm: float) -> int:
        return max(1, int(round(mm / max(self.chart.texel_size, 1e-12))))

    def _data_weights(self, weight: np.ndarray | None, colours: np.ndarray) -> torch.Tensor:
        """The texels the data term sees (H, W) bool, and their weights ``base_wmap`` (dark texels count less)."""
        valid_np = self.chart.interior & self.chart.mask
        if weight is not None:
            valid_np = valid_np & (weight > 0)
        wmap = torch.as_tensor(valid_np if weight is None else np.where(valid_np, weight, 0.0),
                               dtype=torch.float32, device=self.device)
        valid = wmap > 0
        if not bool(valid.any()):
            raise PbidrError("texel fit: no chart texel has a colour and four neighbours in its UV island")
        self.colours = torch.as_tensor(np.clip(colours, LOG_FLOOR, 1.0), dtype=torch.float32, device=self.device)
        if self.cfg.dark_level > 0:
            wmap = wmap * (self.colours.mean(-1) / self.cfg.dark_level).clamp(max=1.0) ** 2
        self.base_wmap = wmap
        self.n_valid = float(valid.sum())  # normalises every term (weights change only the data's)
        return valid

    def _fit_light(self, valid: torch.Tensor) -> Light:
        """The diffuse light (and the lobe, with ``specular = auto``) on the coarse normals of the valid
        texels; its scale makes the albedo (T - q) / s fill [0, 1] (its 99.5th percentile channel is 1),
        as a texture's would: the fit is blind to the albedo's overall scale."""
        cfg = self.cfg
        n, colours = self.ct["normals"][valid], self.colours[valid]
        lum = colours.mean(-1)
        lobe = None
        if cfg.specular == "auto":  # searched against one light (a fill could take a highlight for itself)
            one = fit_light(n, lum, "lambert", cfg.light_order, cfg.light_iters)
            lobe = fit_lobe(n, colours, one, key=one.key_direction())
            if lobe is not None:  # the diffuse light is then fitted without the highlights
                q = Light(one.model, one.order, one.coeffs, lobe).specular(n.double()).float()
                lum = (colours - q.unsqueeze(-1)).clamp_min(LOG_FLOOR).mean(-1)
        light = fit_light(n, lum, cfg.light_model, cfg.light_order, cfg.light_iters)
        light = Light(light.model, light.order, light.coeffs, lobe)
        with torch.no_grad():
            s0 = light.shading(n).clamp_min(1e-3)
            lit = (colours - light.specular(n).unsqueeze(-1)).clamp_min(0.0)
            top = torch.quantile((lit / s0[:, None]).amax(-1)[:200_000], 0.995)
        return Light(light.model, light.order, light.coeffs * float(top), light.lobe)

    def _guide(self, specular: torch.Tensor) -> torch.Tensor:
        """The guided filter's guide (G, H, W): the chromaticity of the colours with the lobe ``specular``
        (H, W) taken off (a highlight desaturates), and its squares when the albedo model is quadratic."""
        logc = torch.log((self.colours - specular.unsqueeze(-1)).clamp_min(LOG_FLOOR))
        chroma = (logc - logc.mean(-1, keepdim=True)).permute(2, 0, 1)[[0, 2]]  # (2, H, W)
        guide = chroma
        if self.cfg.albedo_guide_order >= 2:  # a blend of two albedos is a curve, not a line, in log space
            guide = torch.cat([chroma, chroma**2, (chroma[0] * chroma[1]).unsqueeze(0)], dim=0)
        return guide

    def _priors_setup(self, seams) -> None:
        cfg = self.cfg
        texel = max(self.chart.texel_size, 1e-12)
        self.gauss = gaussian_kernel(cfg.lowpass_sigma_mm / texel)
        self.fine = gaussian_kernel(cfg.finescale_sigma_texels)
        self.chart_w = torch.as_tensor(self.chart.mask, dtype=torch.float32, device=self.device)
        self.texel2 = texel**2
        if seams is not None and len(seams[0]):
            self.seam_a = torch.as_tensor(seams[0], device=self.device)
            self.seam_b = torch.as_tensor(seams[1], device=self.device)
        else:
            self.seam_a = self.seam_b = None

    # ------------------------------------------------------------------ the energy
    def shading_free(self, d: torch.Tensor) -> torch.Tensor:
        """p (H, W): the log intensity that the albedo must explain, mean_c log(T_c - q(n)) - log s(n)."""
        n = detailed_normals(self.ct, d)
        lit = self.colours
        if self.light.lobe is not None:
            lit = (self.colours - self.light.specular(n).unsqueeze(-1)).clamp_min(LOG_FLOOR)
        return torch.log(lit).mean(-1) - torch.log(self.light.shading(n).clamp_min(1e-3))

    def data_term(self, d: torch.Tensor, marks: torch.Tensor | None = None) -> torch.Tensor:
        """The robust residual of the albedo model; ``marks`` (H, W) >= 0, the mark layer, darkens the albedo
        before its model (so a mark leaves its window's fit alone)."""
        cfg = self.cfg
        p = self.shading_free(d)
        if marks is not None:
            p = p + marks
        r = p - (self.known_albedo if self.gf is None else self.gf.apply(p))
        rho = torch.sqrt(r**2 + cfg.robust_scale**2) - cfg.robust_scale
        return (rho * self.wmap).sum() / self.n_valid

    def prior_terms(self, d: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        """Every geometric prior that is on: name -> (weight, term)."""
        cfg = self.cfg
        low = masked_mean(d.unsqueeze(0), self.chart_w, self.gauss)[0]
        terms = {"lowpass": (cfg.lowpass_weight, ((low**2) * self.chart_w).sum() / self.n_valid)}
        if cfg.laplacian_weight > 0:
            lap = torch.zeros_like(d)
            lap[1:-1, 1:-1] = (d[2:, 1:-1] + d[:-2, 1:-1] + d[1:-1, 2:] + d[1:-1, :-2] - 4 * d[1:-1, 1:-1]) / self.texel2
            terms["laplacian"] = (cfg.laplacian_weight, ((lap**2) * self.ct["interior"]).sum() / self.n_valid)
        if cfg.finescale_weight > 0:
            fine = d - masked_mean(d.unsqueeze(0), self.chart_w, self.fine)[0]
            terms["finescale"] = (cfg.finescale_weight, ((fine**2) * self.chart_w).sum() / (self.n_valid * self.texel2))
        if self.seam_a is not None:
            flat = d.reshape(-1)
            terms["seam"] = (cfg.seam_weight, ((flat[self.seam_a] - flat[self.seam_b]) ** 2).mean())
        return terms

    def energy(self, d: torch.Tensor, marks: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total energy (scalar, differentiable) and its terms (detached) of D (H, W) and, when the mark layer
        is on, its m (H, W) >= 0."""
        use = marks is not None and self.cfg.mark_layer_cost > 0
        e_data = self.data_term(d, marks if use else None)
        e = e_data
        terms = {"data": e_data.detach()}
        if use:
            e_marks = (marks * self.wmap).sum() / self.n_valid
            e = e + self.cfg.mark_layer_cost * e_marks
            terms["marks"] = e_marks.detach()
        for name, (weight, term) in self.prior_terms(d).items():
            e = e + weight * term
            terms[name] = term.detach()
        return e, terms

    def albedo(self, d: torch.Tensor) -> torch.Tensor:
        """The albedo map (H, W, 3) that D leaves: (colour - lobe) / shading(n(D)), in [0, 1]."""
        with torch.no_grad():
            n = detailed_normals(self.ct, d)
            s = self.light.shading(n).clamp_min(1e-3)
            lit = self.colours - self.light.specular(n).unsqueeze(-1)
            return (lit / s.unsqueeze(-1)).clamp(0.0, 1.0)

    def learning_rate(self, step: int, total: int, base: float) -> float:
        """Cosine decay from ``base`` to ``final_lr_fraction`` of it over ``total`` steps."""
        frac = self.cfg.final_lr_fraction
        t = min(1.0, step / max(1, total))
        return base * (frac + (1.0 - frac) * 0.5 * (1 + math.cos(math.pi * t)))

    def open_levels(self, step: int) -> int:
        """How many grid levels (coarsest first) may move at ``step`` (all when ``level_steps`` is 0)."""
        if self.cfg.level_steps <= 0:
            return 1 << 30
        return 1 + step // self.cfg.level_steps


def chart_tensors(chart: TexelChart, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(getattr(chart, k), dtype=torch.float32, device=device)
            for k in ("normals", "grad_u", "grad_v", "interior")}


def adam_step(objective: TexelObjective, grids: DisplacementGrids, optimizer: torch.optim.Optimizer,
              step: int) -> dict[str, float]:
    """One step of the texel fit: energy of the whole chart, gradients, closed levels held, Adam (at
    the learning rate the caller set)."""
    optimizer.zero_grad(set_to_none=True)
    e, terms = objective.energy(grids(), grids.mark_layer())
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
            group["lr"] = objective.learning_rate(step, cfg.steps, cfg.learning_rate)
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
