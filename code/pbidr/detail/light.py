"""The texel fit's light, anchored on the coarse shape: a grey diffuse shading of the normal and, when the
texture shows one, a grey glossy lobe (PBIDR's specular term, on the detailed normal).

Both are fitted once on the *coarse* normals, robustly, with a constant albedo, then frozen: the geometry
never moves the light, so the convex/concave ambiguity cannot flip the relief. A highlight is then not a
bump: it is the lobe of the coarse shape, and its change with the detailed normal is a second view of the
relief (it sees the surface from the lobe's direction, not the key's).

* diffuse ``lambert``: s(n) = ambient + max(0, n . l_d), coeffs = [ambient, l_d (3)];
  ``lambert2``: a key and a fill, s(n) = ambient + max(0, n . l_1) + max(0, n . l_2), coeffs = [ambient,
  l_1 (3), l_2 (3)], |l_1| >= |l_2| (where both light a texel they add to one effective light; they differ
  where one of them clamps, which is what tells them apart);
  ``poly``: s(n) = poly(n) . coeffs, the monomials of degree <= ``order`` (order 2 = SH2);
  ``auto`` fits ``lambert`` and ``lambert2`` and keeps the second only when texels held out of both fits say
  so (``LIGHT_GAIN``): one light, or a key and a fill, as the texture's own data decide.
* lobe: q(n) = k max(0, n . h)^e, ``lobe`` = [k, h (3), e] (None: matte). It is *added* to albedo x
  s(n) and is grey (white light): T_c = a_c s(n) + q(n).

The lobe is searched over half-vectors h and exponents e (a per-channel affine Lambert model and the
candidate lobe, linear least squares on a subset of texels), and kept only when it predicts texels held
out of that search better than no lobe does (``LOBE_GAIN``): the input's own data decide, not a setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LIGHT_MODELS = ("auto", "lambert", "lambert2", "poly")
LIGHT_GAIN = 0.05  # a second light must cut the held-out residual by 5 % to be kept
FILL_LEAST = 0.1  # and be at least a tenth of the key
LIGHT_SAMPLES = 60_000  # texels for the key-and-fill search (half of them held out)
LOBE_EXPONENTS = (4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
LOBE_GAIN = 0.03  # a lobe must cut the held-out residual by 3 % to be kept
LOBE_SAMPLES = 30_000
LOBE_CONE_DEG = 20.0  # the half-vector searched within this of the key's and a frontal viewer's


@dataclass
class Light:
    """Grey shading of a unit normal, and an optional grey glossy lobe (see the module docstring)."""

    model: str
    order: int
    coeffs: np.ndarray
    lobe: np.ndarray | None = None

    def shading(self, n: torch.Tensor) -> torch.Tensor:
        c = torch.as_tensor(self.coeffs, dtype=n.dtype, device=n.device)
        if self.model == "lambert":
            return c[0] + (n @ c[1:]).clamp_min(0.0)
        if self.model == "lambert2":
            return c[0] + (n @ c[1:4]).clamp_min(0.0) + (n @ c[4:7]).clamp_min(0.0)
        return light_basis(n, self.order) @ c

    def specular(self, n: torch.Tensor) -> torch.Tensor:
        """The lobe's grey radiance (...,) of unit normals (..., 3); zeros when there is none."""
        if self.lobe is None or self.lobe[0] <= 0:
            return n.new_zeros(n.shape[:-1])
        k, h, e = float(self.lobe[0]), torch.as_tensor(self.lobe[1:4], dtype=n.dtype, device=n.device), float(self.lobe[4])
        return k * (n @ h).clamp_min(0.0) ** e

    def key_direction(self) -> np.ndarray:
        """The unit direction of the diffuse light's first-order term (Lambert: l; poly: the coefficients of
        x, y, z, which light_basis orders 1, z, y, x)."""
        c = np.asarray(self.coeffs, dtype=np.float64)
        d = c[1:4] if self.model in ("lambert", "lambert2") else c[[3, 2, 1]]
        return d / max(float(np.linalg.norm(d)), 1e-12)

    def describe(self) -> dict:
        out = {"model": self.model, "coeffs": [float(x) for x in self.coeffs]}
        if self.model in ("lambert", "lambert2"):
            d = np.asarray(self.coeffs[1:4], dtype=np.float64)
            out.update(ambient=float(self.coeffs[0]), diffuse=float(np.linalg.norm(d)),
                       direction=(d / max(np.linalg.norm(d), 1e-12)).tolist())
        if self.model == "lambert2":
            f = np.asarray(self.coeffs[4:7], dtype=np.float64)
            out.update(fill=float(np.linalg.norm(f)), fill_direction=(f / max(np.linalg.norm(f), 1e-12)).tolist())
        else:
            out["order"] = self.order
        if self.lobe is not None:
            out["lobe"] = {"strength": float(self.lobe[0]), "half_vector": [float(x) for x in self.lobe[1:4]],
                           "exponent": float(self.lobe[4])}
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


def _huber_weights(r: torch.Tensor) -> torch.Tensor:
    r = r.abs()
    scale = 1.4826 * r.median().clamp_min(1e-6)
    return torch.where(r <= 1.5 * scale, torch.ones_like(r), 1.5 * scale / r)


def _subset(n: int, count: int, device) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(n, count), device=device).long()


def fit_light(normals: torch.Tensor, luminance: torch.Tensor, model: str = "auto", order: int = 2,
              iters: int = 4, max_samples: int = 200_000) -> Light:
    """The grey diffuse light that best explains ``luminance`` (N,) on ``normals`` (N, 3) with a constant
    albedo (absorbed in the scale), robustly (IRLS with Huber weights).

    ``poly``: linear least squares. ``lambert``: Gauss-Newton on [ambient, diffuse * l], started from
    the order-1 fit (exact where the whole face is lit, refined where max(0, .) clamps). ``lambert2``: a
    fill added to that, Gauss-Newton from several starts. ``auto``: ``lambert2`` when held-out texels say so.
    """
    if model not in LIGHT_MODELS:
        raise ValueError(f"light model must be one of {', '.join(LIGHT_MODELS)}, got {model!r}")
    pick = _subset(len(luminance), max_samples, luminance.device)  # 4-25 unknowns need nowhere near every texel
    n, y = normals.double()[pick], luminance.double()[pick]
    if model == "poly":
        coeffs, _ = _robust_residual(light_basis(n, order), y.unsqueeze(-1), max(1, iters))
        return Light(model="poly", order=order, coeffs=coeffs[:, 0].cpu().numpy())
    one = _fit_lambert(n, y, iters)
    if model == "lambert":
        return one
    return _with_fill(n, y, one, iters, keep_always=model == "lambert2")


def _fit_lambert(n: torch.Tensor, y: torch.Tensor, iters: int) -> Light:
    """One light: the unclamped (affine in n) IRLS fit, then Gauss-Newton on the clamped model."""
    a = light_basis(n, 1)
    wts = torch.ones_like(y)
    coeffs = None
    for _ in range(max(1, iters)):
        sw = wts.sqrt()
        coeffs = torch.linalg.lstsq(a * sw[:, None], (y * sw).unsqueeze(-1)).solution[:, 0]
        wts = _huber_weights(a @ coeffs - y)
    return Light(model="lambert", order=1, coeffs=_gauss_newton(n, y, coeffs.clone(), wts, iters, 1))


def _gauss_newton(n, y, c, wts, iters: int, lights: int) -> np.ndarray:
    """Refine [ambient, l_1 (, l_2)] of ambient + sum_k max(0, n . l_k) from ``c`` (robust weights kept)."""
    for _ in range(max(1, iters) * 3):
        ndl = [n @ c[1 + 3 * k:4 + 3 * k] for k in range(lights)]
        pred = c[0] + sum(d.clamp_min(0.0) for d in ndl)
        jac = torch.cat([torch.ones_like(y)[:, None]] + [n * (d > 0).double()[:, None] for d in ndl], dim=1)
        sw = wts.sqrt()
        step = torch.linalg.lstsq(jac * sw[:, None], ((y - pred) * sw).unsqueeze(-1)).solution[:, 0]
        c = c + step
        pred = c[0] + sum((n @ c[1 + 3 * k:4 + 3 * k]).clamp_min(0.0) for k in range(lights))
        wts = _huber_weights(pred - y)
        if float(step.abs().max()) < 1e-9:
            break
    return c.cpu().numpy()


def _with_fill(n: torch.Tensor, y: torch.Tensor, one: Light, iters: int, keep_always: bool) -> Light:
    """``one`` with a fill light added (Gauss-Newton from fills at 12 directions, a third of the key's
    strength, on one half of a subset of texels), kept when it is at least FILL_LEAST of the key and cuts
    the robust residual of the other half by LIGHT_GAIN (or always, ``keep_always``)."""
    idx = _subset(len(y), LIGHT_SAMPLES, y.device)
    fit_i, held_i = idx[0::2], idx[1::2]
    key = torch.as_tensor(one.coeffs, dtype=torch.float64, device=y.device)
    strength = float(key[1:].norm()) / 3.0
    wts = _huber_weights(one.shading(n[fit_i]) - y[fit_i])
    best, best_res = None, np.inf
    for d in _hemisphere(12):
        start = torch.cat([key, torch.as_tensor(d * strength, dtype=torch.float64, device=y.device)])
        c = torch.as_tensor(_gauss_newton(n[fit_i], y[fit_i], start, wts, iters, 2))
        res = float((Light("lambert2", 1, c.numpy()).shading(n[fit_i]) - y[fit_i]).abs().mean())
        if res < best_res:
            best, best_res = c.numpy(), res
    c = best.copy()
    if np.linalg.norm(c[4:7]) > np.linalg.norm(c[1:4]):  # the key is the stronger of the two
        c[1:4], c[4:7] = best[4:7], best[1:4]
    two = Light("lambert2", 1, c)
    held = float((two.shading(n[held_i]) - y[held_i]).abs().mean())
    held_one = float((one.shading(n[held_i]) - y[held_i]).abs().mean())
    strong = np.linalg.norm(c[4:7]) >= FILL_LEAST * np.linalg.norm(c[1:4])  # a faint fill changes no shading
    return two if keep_always or (strong and held < (1.0 - LIGHT_GAIN) * held_one) else one


def _hemisphere(count: int) -> np.ndarray:
    """``count`` unit vectors spread over the front hemisphere (z > 0.05; Fibonacci lattice)."""
    i = np.arange(count) + 0.5
    z = 0.05 + 0.95 * i / count
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _robust_residual(a: torch.Tensor, y: torch.Tensor, iters: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """IRLS (Huber) fit of y (N, C) on the design a (N, K): (coefficients (K, C), residual (N, C)). The normal
    equations carry a tiny ridge: the design may be rank-deficient (a clamped Lambert that never clamps is
    affine in n), and a deterministic, minimum-size answer is wanted then."""
    w = torch.ones(len(y), dtype=y.dtype, device=y.device)
    coef = None
    eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    for _ in range(iters):
        aw = a * w[:, None]
        gram = a.T @ aw
        coef = torch.linalg.solve(gram + 1e-9 * gram.diagonal().sum() * eye, aw.T @ y)
        w = _huber_weights((a @ coef - y).abs().mean(-1))
    return coef, a @ coef - y


def _diffuse_basis(n: torch.Tensor, diffuse: Light) -> torch.Tensor:
    """(N, 5): [1, n, s(n)], an affine Lambert and the fitted clamped one; each channel gets its own
    coefficients (the albedo's colour), so only what no diffuse shading explains is left to a lobe."""
    return torch.cat([torch.ones_like(n[:, :1]), n, diffuse.shading(n).unsqueeze(-1)], dim=1)


def _lobe_fit_shared(n: torch.Tensor, colours: torch.Tensor, diffuse: Light, h: torch.Tensor | None, e: float):
    """Robust least squares of colours (N, 3) = basis B_c (+ k lobe, k shared by the channels: grey), the
    channels stacked so that k is one unknown. Returns (k, residual (N, 3)); k = 0 without ``h``."""
    base = _diffuse_basis(n, diffuse)
    nb, nrow = base.shape[1], len(n)
    design = torch.zeros(3 * nrow, 3 * nb + (h is not None), dtype=n.dtype, device=n.device)
    for c in range(3):
        design[c * nrow:(c + 1) * nrow, nb * c:nb * (c + 1)] = base
    if h is not None:
        design[:, -1] = ((n @ h).clamp_min(0.0) ** e).repeat(3)
    coef, res = _robust_residual(design, colours.T.reshape(-1, 1))
    return (float(coef[-1, 0]) if h is not None else 0.0), res.reshape(3, nrow).T


def fit_lobe(normals: torch.Tensor, colours: torch.Tensor, diffuse: Light, key: np.ndarray | None = None,
             directions: int = 2000) -> np.ndarray | None:
    """A grey glossy lobe [k, h (3), e] that the colours (N, 3) on the coarse normals (N, 3) hold beyond the
    ``diffuse`` light, or None.

    Search: every half-vector of a hemisphere lattice (when the diffuse ``key`` direction is known, those
    within LOBE_CONE_DEG of its half-vector with a frontal viewer, and that one: the texture was taken from
    the front) and every exponent of LOBE_EXPONENTS, on a fixed subset of texels, by how much
    the lobe cuts the (robustly weighted) least-squares residual of the diffuse model; the best is kept if
    its strength is positive and it cuts the robust residual of *other* texels (held out of the search) by
    LOBE_GAIN against the same model without a lobe.
    """
    idx = _subset(len(colours), 2 * LOBE_SAMPLES, colours.device)
    n, y = normals.double(), colours.double()
    cands = _hemisphere(directions)
    if key is not None:  # a highlight as a frontal camera saw it: near the half-vector of the key and +z
        half = np.asarray(key, np.float64) + np.array([0.0, 0.0, 1.0])
        half /= np.linalg.norm(half)
        cands = np.concatenate([cands[cands @ half > np.cos(np.radians(LOBE_CONE_DEG))], half[None]])
    fit_n, fit_y = n[idx[0::2]], y[idx[0::2]]
    h, e = _lobe_search(fit_n, fit_y, diffuse, torch.as_tensor(cands, dtype=torch.float64), LOBE_EXPONENTS)
    if h is None:
        return None
    # refined around the best: exponents a quarter-octave apart, half-vectors within 6 degrees
    near = _cone(h.cpu().numpy(), 6.0, 40)
    h, e = _lobe_search(fit_n, fit_y, diffuse, torch.as_tensor(near, dtype=torch.float64),
                        tuple(e * 2.0 ** (k / 4.0) for k in range(-4, 5)))
    held_n, held_y = n[idx[1::2]], y[idx[1::2]]
    k, res = _lobe_fit_shared(held_n, held_y, diffuse, h, e)
    _, res0 = _lobe_fit_shared(held_n, held_y, diffuse, None, 0.0)
    gain = 1.0 - float(res.abs().mean()) / max(float(res0.abs().mean()), 1e-12)
    if k <= 0 or gain < LOBE_GAIN:
        return None
    return np.array([k, *h.cpu().numpy(), e])


def _cone(axis: np.ndarray, degrees: float, count: int) -> np.ndarray:
    """``axis`` and ``count`` unit vectors spread within ``degrees`` of it (a Fibonacci spiral)."""
    axis = axis / np.linalg.norm(axis)
    i = np.arange(count) + 0.5
    r = np.radians(degrees) * np.sqrt(i / count)
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    u = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    out = np.cos(r)[:, None] * axis + np.sin(r)[:, None] * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v)
    return np.concatenate([axis[None], out])


def _lobe_search(n: torch.Tensor, y: torch.Tensor, diffuse: Light, cands: torch.Tensor, exponents):
    """The (half-vector, exponent) whose lobe, added with one grey strength k > 0 to the per-channel diffuse
    basis, removes the most weighted squared residual (weights: Huber, of the diffuse fit). Closed form per
    candidate: the lobe orthogonalised against the basis, projected on the three channels' residuals."""
    base = _diffuse_basis(n, diffuse)
    coef, res = _robust_residual(base, y)
    sw = _huber_weights(res.abs().mean(-1)).sqrt()[:, None]
    q, _ = torch.linalg.qr(base * sw)
    r = y * sw - q @ (q.T @ (y * sw))  # (N, 3)
    best = (0.0, None, None)
    for e in exponents:
        phi = (n @ cands.T).clamp_min(0.0) ** e * sw  # (N, C)
        phi = phi - q @ (q.T @ phi)
        num = (phi.T @ r).sum(-1)  # (C,): k's normal equation over the stacked channels
        den = 3.0 * (phi**2).sum(0)
        gain = torch.where(num > 0, num**2 / den.clamp_min(1e-12), torch.zeros_like(num))
        i = int(gain.argmax())
        if float(gain[i]) > best[0]:
            best = (float(gain[i]), cands[i], e)
    return best[1], float(best[2]) if best[2] is not None else None
