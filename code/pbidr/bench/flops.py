"""FLOP accounting for one training iteration, from the network shapes and the evaluations made (the
train-speed section of ``pbidr bench all`` reads it against :func:`pbidr.bench.common.matmul_rate`).

Convention (documented in BENCHMARKS.md): a linear layer costs 2·in·out FLOPs per point forward;
activations and encodings are ignored (they are O(width), not O(width²)). A backward pass costs
twice its forward. So, per point:

- ray tracer (no grad):            F_sdf
- SDF pass with input gradient:    F_sdf (forward) + 2 F_sdf (d sdf / d x, graph kept)
- loss backward through that pass: 2 x (F_sdf + 2 F_sdf) (double backward through the gradient graph)
- shading nets at surface points:  3 F_shade (forward + backward)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def linear_flops(module: nn.Module) -> int:
    """Forward FLOPs per point of every nn.Linear in ``module`` (2·in·out each)."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


@dataclass
class IterationFlops:
    trace: float
    sdf_grad_pass: float
    backward: float
    shading: float

    @property
    def total(self) -> float:
        return self.trace + self.sdf_grad_pass + self.backward + self.shading


def iteration_flops(model: nn.Module, n_sdf_evals: int, n_sdf_grad_evals: int, n_surface: int) -> IterationFlops:
    """FLOPs of one training iteration of ``model`` (a PBIDRModel) given the counts it reported."""
    f_sdf = linear_flops(model.sdf_network)
    f_shade = (linear_flops(model.diffuse_network) + linear_flops(model.specular_network)
               + linear_flops(model.albedo_network))
    grad_pass = 3.0 * f_sdf * n_sdf_grad_evals
    return IterationFlops(trace=float(f_sdf) * n_sdf_evals, sdf_grad_pass=grad_pass, backward=2.0 * grad_pass,
                          shading=3.0 * f_shade * n_surface)

