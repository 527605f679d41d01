"""IDR's ray tracer (Yariv et al. 2020, sec. 3.1 and supp.), as a function of an SDF callable.

Per ray, inside the object's bounding sphere:
1. two-sided sphere tracing, from the sphere entry forwards and from the sphere exit backwards, with
   a short line search that backs off when a step lands inside the surface;
2. rays that did not converge in ``sphere_tracing_iters`` are sampled uniformly (``n_steps``) between
   the two fronts; the first sign change is refined by the secant method (``n_secant_steps``);
3. in training, rays that found no surface (or lie outside the object mask) get the point of minimal
   SDF along the ray instead; the mask loss pushes the SDF there.

Everything is vectorised over rays; the loops run over iterations only. Rays from different cameras
may share a batch (origins are per ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from pbidr.utils.config import Config, setting

SDFCallable = Callable[[torch.Tensor], torch.Tensor]


TRACER_MODES = ("idr", "mesh")


@dataclass
class RayTracerConfig(Config):
    """IDR's ``ray_tracer`` conf block, plus the mesh-guided fast path's knobs (``mode = mesh``, see
    ``pbidr.model.mesh_guided_tracing``). The class defaults are IDR's constructor defaults; the model
    conf's (``ModelConfig.ray_tracer``) set line_step_iters = 3, as the original PBIDR conf does."""

    object_bounding_sphere: float = setting(1.0, "radius of the sphere the object lies in (normalised units)",
                                            positive=True)
    sdf_threshold: float = setting(5.0e-5, "sphere tracing stops when |SDF| is below this", positive=True)
    line_search_step: float = setting(0.5, "factor of the step back when a sphere-tracing step lands inside",
                                      positive=True)
    line_step_iters: int = setting(1, "steps of that line search")
    sphere_tracing_iters: int = setting(10, "sphere-tracing steps from each end of the ray")
    n_steps: int = setting(100, "uniform samples between the two fronts of a ray sphere tracing did not finish")
    n_secant_steps: int = setting(8, "secant steps refining the first sign change")
    mode: str = setting("idr", "idr: the faithful IDR tracer (sphere tracing from the bounding sphere, n_steps "
                        "samples, secant); mesh: search a band around the coarse mesh's hit depth, faithful "
                        "tracer on the rays it does not resolve", choices=TRACER_MODES)
    band: float = setting(0.05, "mesh mode: half-width of the search band around the coarse mesh's hit "
                          "(normalised units)", positive=True)
    band_steps: int = setting(10, "mesh mode: samples over the band", least=2)
    n_front_steps: int = setting(10, "mesh mode: sphere-tracing steps checking that no surface lies in front "
                                 "of the band (0: no check)")
    n_steps_outside: int = setting(16, "mesh mode: stratified samples of the min-SDF search on out-of-mask rays",
                                   least=2)
    n_refine_outside: int = setting(4, "mesh mode: bracket-halving steps refining that search")
    fallback: bool = setting(True, "mesh mode: false = rays the band does not resolve are misses (no faithful "
                             "tracer); for an SDF that stays within the band (coarse_residual)")
    search_outside: bool = setting(True, "mesh mode: false = no min-SDF search outside the mask (only the mask "
                                   "loss needs it)")

    MODES = TRACER_MODES


@dataclass
class TraceResult:
    """Per ray (N rays).

    points: (N, 3) the surface point for hits; otherwise (training) the minimal-SDF point along the
        ray inside the sphere, or the ray's closest approach to the sphere centre if it misses the
        sphere; (eval) undefined but finite.
    dists: (N,) distance along the unit ray: points = origins + dists * dirs.
    hit: (N,) bool, IDR's ``network_object_mask``: the ray meets the SDF zero level set.
    n_sdf_evals: number of points at which the SDF was evaluated.
    sampled: (N,) bool, rays handed to the sampling/secant stage (sphere tracing did not converge).
    fallback: (N,) bool, mesh-guided mode only: rays handed to the faithful tracer (None otherwise).
    """

    points: torch.Tensor
    dists: torch.Tensor
    hit: torch.Tensor
    n_sdf_evals: int
    sampled: Optional[torch.Tensor] = None
    fallback: Optional[torch.Tensor] = None

    @property
    def n_fallback(self) -> int:
        """Rays the mesh-guided tracer handed to the faithful one (0 in IDR mode)."""
        return 0 if self.fallback is None else int(self.fallback.sum())


class _CountedSDF:
    """Evaluates the SDF in chunks of at most ``chunk`` points and counts every point."""

    def __init__(self, sdf: SDFCallable, chunk: int):
        self.sdf = sdf
        self.chunk = max(int(chunk), 1)
        self.n_evals = 0

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        n = points.shape[0]
        self.n_evals += n
        if n == 0:
            return points.new_zeros(0)
        if n <= self.chunk:
            return self.sdf(points).reshape(-1)
        return torch.cat([self.sdf(p).reshape(-1) for p in torch.split(points, self.chunk)])


def sphere_intersection(origins: torch.Tensor, dirs: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances (N, 2) of unit rays with the sphere |x| = radius, clamped at 0 (a
    camera inside the sphere starts at its own centre); (N,) bool mask of rays that cross it.
    Non-crossing rays get (0, 0)."""
    b = (dirs * origins).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - radius * radius)
    crosses = disc > 0
    root = torch.sqrt(disc.clamp_min(0.0))
    near_far = torch.stack([-b - root, -b + root], dim=-1).clamp_min(0.0)
    near_far = torch.where(crosses.unsqueeze(-1), near_far, torch.zeros_like(near_far))
    return near_far, crosses


def _eval_pair(sdf: _CountedSDF, pts_a: torch.Tensor, pts_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SDF call for two point sets (fewer, larger calls are faster)."""
    vals = sdf(torch.cat([pts_a, pts_b], dim=0))
    return vals[: pts_a.shape[0]], vals[pts_a.shape[0] :]


@torch.no_grad()
def trace_rays(
    sdf: SDFCallable,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    object_mask: Optional[torch.Tensor] = None,
    config: Optional[RayTracerConfig] = None,
    chunk: int = 100_000,
    generator: Optional[torch.Generator] = None,
) -> TraceResult:
    """Trace N rays against the zero level set of ``sdf``.

    sdf: callable (M, 3) -> (M,); called without gradients.
    origins, dirs: (N, 3); dirs must be unit vectors (sphere tracing steps are SDF values).
    object_mask: (N,) bool ground-truth silhouette for training; None for evaluation, in which case
        only hits are searched (no minimal-SDF points).
    chunk: largest number of points per SDF call (memory knob).
    generator: RNG of the minimal-SDF samples (IDR draws them uniformly); None = torch's global RNG.
    """
    cfg = config or RayTracerConfig()
    f = _CountedSDF(sdf, chunk)
    training = object_mask is not None
    n_rays = origins.shape[0]
    device, dtype = origins.device, origins.dtype
    obj = object_mask.reshape(-1).bool() if training else torch.ones(n_rays, dtype=torch.bool, device=device)

    near_far, crosses = sphere_intersection(origins, dirs, cfg.object_bounding_sphere)
    start_dist, end_dist, unfinished_start = _sphere_tracing(f, origins, dirs, near_far, crosses, cfg)
    min_dist = near_far[:, 0].clone()
    max_dist = near_far[:, 1]
    hit = start_dist < end_dist
    dists = start_dist.clone()

    sampled = unfinished_start
    if sampled.any():
        idx = sampled.nonzero().squeeze(-1)
        sample_dists, sample_hit = _ray_sampler(
            f, origins[idx], dirs[idx], start_dist[idx], end_dist[idx], obj[idx], training, cfg
        )
        dists[idx] = sample_dists
        hit[idx] = sample_hit

    if training:
        in_mask = ~hit & obj & ~sampled
        out_mask = ~obj & ~sampled
        needs_min = in_mask | out_mask

        # Rays that miss the sphere: the closest approach to its centre (where the SDF is smallest
        # for a roughly spherical object), so the mask loss still sees a meaningful point.
        left_out = needs_min & ~crosses
        dists = torch.where(left_out, -(dirs * origins).sum(-1), dists)

        search = needs_min & crosses
        if search.any():
            # Out-of-mask rays that hit the surface look for the minimum beyond the hit: IDR.
            beyond_hit = hit & out_mask
            min_dist = torch.where(beyond_hit, start_dist, min_dist)
            idx = search.nonzero().squeeze(-1)
            dists[idx] = _minimal_sdf_dists(
                f, origins[idx], dirs[idx], min_dist[idx], max_dist[idx], cfg.n_steps, generator
            )

    points = origins + dists.unsqueeze(-1) * dirs
    return TraceResult(points=points, dists=dists, hit=hit, n_sdf_evals=f.n_evals, sampled=sampled)


def _sphere_tracing(
    f: _CountedSDF,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    near_far: torch.Tensor,
    crosses: torch.Tensor,
    cfg: RayTracerConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-sided sphere tracing. Returns start distances (N,), end distances (N,) and the rays whose
    forward front did not converge (N,) bool. A ray hits when start < end at the end."""
    n = origins.shape[0]
    thr = cfg.sdf_threshold
    start_dist = near_far[:, 0].clone()
    end_dist = near_far[:, 1].clone()
    unfinished_start = crosses.clone()
    unfinished_end = crosses.clone()

    def points_at(d: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return origins[idx] + d[idx].unsqueeze(-1) * dirs[idx]

    next_sdf_start = torch.zeros(n, dtype=origins.dtype, device=origins.device)
    next_sdf_end = torch.zeros_like(next_sdf_start)
    idx = crosses.nonzero().squeeze(-1)
    next_sdf_start[idx], next_sdf_end[idx] = _eval_pair(f, points_at(start_dist, idx), points_at(end_dist, idx))

    iters = 0
    while True:
        # Converged fronts (|sdf| small, or stepped inside by the line search) stop moving.
        curr_sdf_start = torch.where(unfinished_start, next_sdf_start, torch.zeros_like(next_sdf_start))
        curr_sdf_start = torch.where(curr_sdf_start <= thr, torch.zeros_like(curr_sdf_start), curr_sdf_start)
        curr_sdf_end = torch.where(unfinished_end, next_sdf_end, torch.zeros_like(next_sdf_end))
        curr_sdf_end = torch.where(curr_sdf_end <= thr, torch.zeros_like(curr_sdf_end), curr_sdf_end)
        unfinished_start = unfinished_start & (curr_sdf_start > thr)
        unfinished_end = unfinished_end & (curr_sdf_end > thr)
        if not (unfinished_start.any() or unfinished_end.any()) or iters == cfg.sphere_tracing_iters:
            break
        iters += 1

        start_dist = start_dist + curr_sdf_start
        end_dist = end_dist - curr_sdf_end
        next_sdf_start = torch.zeros_like(next_sdf_start)
        next_sdf_end = torch.zeros_like(next_sdf_end)
        idx_s = unfinished_start.nonzero().squeeze(-1)
        idx_e = unfinished_end.nonzero().squeeze(-1)
        next_sdf_start[idx_s], next_sdf_end[idx_e] = _eval_pair(
            f, points_at(start_dist, idx_s), points_at(end_dist, idx_e)
        )

        # A step that lands inside (sdf < 0) means the SDF over-estimated the distance: back off
        # by a shrinking fraction of the step and re-evaluate.
        not_proj_start = next_sdf_start < 0
        not_proj_end = next_sdf_end < 0
        k = 0
        while (not_proj_start.any() or not_proj_end.any()) and k < cfg.line_step_iters:
            step = (1.0 - cfg.line_search_step) / (2.0**k)
            start_dist = torch.where(not_proj_start, start_dist - step * curr_sdf_start, start_dist)
            end_dist = torch.where(not_proj_end, end_dist + step * curr_sdf_end, end_dist)
            idx_s = not_proj_start.nonzero().squeeze(-1)
            idx_e = not_proj_end.nonzero().squeeze(-1)
            next_sdf_start[idx_s], next_sdf_end[idx_e] = _eval_pair(
                f, points_at(start_dist, idx_s), points_at(end_dist, idx_e)
            )
            not_proj_start = next_sdf_start < 0
            not_proj_end = next_sdf_end < 0
            k += 1

        # Fronts that crossed each other found no surface between them.
        unfinished_start = unfinished_start & (start_dist < end_dist)
        unfinished_end = unfinished_end & (start_dist < end_dist)

    return start_dist, end_dist, unfinished_start


def _ray_sampler(
    f: _CountedSDF,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    obj: torch.Tensor,
    training: bool,
    cfg: RayTracerConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For S unconverged rays: n_steps uniform samples in [start, end]; the first sample with
    negative SDF marks a hit, refined by secant steps against the sample before it. Rays that
    find no sign change (or, in training, lie outside the mask) take the minimal-SDF sample.
    Returns dists (S,) and hit (S,) bool."""
    s = origins.shape[0]
    n = cfg.n_steps
    t = torch.linspace(0.0, 1.0, n, dtype=origins.dtype, device=origins.device)
    z = start.unsqueeze(-1) + t * (end - start).unsqueeze(-1)  # (S, n)
    pts = origins.unsqueeze(1) + z.unsqueeze(-1) * dirs.unsqueeze(1)  # (S, n, 3)
    sdf_val = f(pts.reshape(-1, 3)).reshape(s, n)

    # argmin of sign(sdf) * (n .. 1) is the first negative sample (or the last sample if none).
    weights = torch.arange(n, 0, -1, dtype=sdf_val.dtype, device=sdf_val.device)
    first_neg = torch.argmin(torch.sign(sdf_val) * weights, dim=-1)  # (S,)
    z_first = z.gather(1, first_neg.unsqueeze(-1)).squeeze(-1)
    sdf_first = sdf_val.gather(1, first_neg.unsqueeze(-1)).squeeze(-1)
    net_surface = sdf_first < 0

    min_idx = torch.argmin(sdf_val, dim=-1)
    z_min = z.gather(1, min_idx.unsqueeze(-1)).squeeze(-1)
    use_min = ~(obj & net_surface)
    dists = torch.where(use_min, z_min, z_first)

    secant = net_surface & obj if training else net_surface
    if secant.any():
        idx = secant.nonzero().squeeze(-1)
        hi = first_neg[idx]
        lo = (hi - 1).clamp_min(0)  # hi == 0 (start already inside) leaves the point as is
        z_high, sdf_high = z[idx, hi], sdf_val[idx, hi]
        z_low, sdf_low = z[idx, lo], sdf_val[idx, lo]
        dists[idx] = _secant(f, origins[idx], dirs[idx], z_low, sdf_low, z_high, sdf_high, cfg.n_secant_steps)
    return dists, net_surface


def _secant_step(z_low, sdf_low, z_high, sdf_high):
    denom = sdf_high - sdf_low
    safe = torch.where(denom == 0, torch.ones_like(denom), denom)
    frac = torch.where(denom == 0, torch.zeros_like(denom), sdf_low / safe)
    return z_low - frac * (z_high - z_low)


def _secant(f, origins, dirs, z_low, sdf_low, z_high, sdf_high, n_steps: int) -> torch.Tensor:
    """Secant (regula falsi) refinement of a bracket sdf(z_low) > 0 > sdf(z_high)."""
    z_pred = _secant_step(z_low, sdf_low, z_high, sdf_high)
    for _ in range(n_steps):
        sdf_mid = f(origins + z_pred.unsqueeze(-1) * dirs)
        outside = sdf_mid > 0
        inside = sdf_mid < 0
        z_low = torch.where(outside, z_pred, z_low)
        sdf_low = torch.where(outside, sdf_mid, sdf_low)
        z_high = torch.where(inside, z_pred, z_high)
        sdf_high = torch.where(inside, sdf_mid, sdf_high)
        z_pred = _secant_step(z_low, sdf_low, z_high, sdf_high)
    return z_pred


def _minimal_sdf_dists(
    f: _CountedSDF,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    min_dist: torch.Tensor,
    max_dist: torch.Tensor,
    n_steps: int,
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """Distance (M,) of the minimal-SDF point among n_steps random samples in [min, max] per ray
    (IDR draws one set of uniform fractions shared by all rays)."""
    m = origins.shape[0]
    frac = torch.rand(n_steps, generator=generator, dtype=origins.dtype,
                      device=generator.device if generator is not None else origins.device)
    frac = frac.to(origins.device)
    z = min_dist.unsqueeze(-1) + frac * (max_dist - min_dist).unsqueeze(-1)  # (M, n)
    pts = origins.unsqueeze(1) + z.unsqueeze(-1) * dirs.unsqueeze(1)
    sdf_val = f(pts.reshape(-1, 3)).reshape(m, n_steps)
    return z.gather(1, torch.argmin(sdf_val, dim=-1, keepdim=True)).squeeze(-1)
