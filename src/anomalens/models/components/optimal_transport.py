"""The debiased Sinkhorn divergence between point clouds (Feydy et al., "Interpolating between Optimal Transport and
MMD using Sinkhorn Divergences", AISTATS 2019) — RD++'s self-supervised optimal transport loss uses it.

For measures α = Σ_i a_i δ_{x_i}, β = Σ_j b_j δ_{y_j} (here uniform masses) and the cost C(x, y) = ½‖x − y‖²:

    OT_ε(α, β) = min over couplings π of ⟨π, C⟩ + ε KL(π ‖ α⊗β),
    S_ε(α, β)  = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β),     ε = blur² (p = 2),

S_ε ≥ 0, S_ε(α, α) = 0, and S_ε → W₂²/2 as blur → 0. OT_ε is read from the dual potentials of the symmetric,
log-domain Sinkhorn iterations, f ← −ε log Σ_j b_j exp((g_j − C_ij) / ε) (and the same for g), each update
averaged with the previous one, with ε-scaling: ε goes from the clouds' diameter² down to blur² by a factor
``scaling``² per iteration (GeomLoss' ``SamplesLoss("sinkhorn", p=2)``, written out here for batches of small
clouds). The iterations run without autograd; one last update of the potentials from the differentiable costs
carries the gradient (the envelope theorem: at the optimum the potentials' own dependence does not count, and
∂OT_ε/∂C = π, the optimal coupling), so memory does not grow with the number of iterations.
"""

from __future__ import annotations

import math

import torch


def _softmin(epsilon: float, cost: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """−ε log Σ_j exp(h_j − C_ij / ε), over the last axis: (B, N, M) costs, (B, M) h → (B, N)."""
    return -epsilon * torch.logsumexp(log_weights[:, None, :] - cost / epsilon, dim=2)


def _half_squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C_ij = ½‖x_i − y_j‖² for (B, N, D) and (B, M, D) clouds → (B, N, M)."""
    squared = (x * x).sum(2)[:, :, None] + (y * y).sum(2)[:, None, :] - 2 * torch.bmm(x, y.transpose(1, 2))
    return 0.5 * squared.clamp(min=0)


def _epsilons(diameter: float, blur: float, scaling: float) -> list[float]:
    """ε from diameter² down to blur², a factor scaling² apart (GeomLoss' ``epsilon_schedule`` for p = 2)."""
    if diameter <= blur:
        return [blur ** 2]
    steps = math.ceil(math.log(diameter / blur) / -math.log(scaling))
    return [(diameter * scaling ** k) ** 2 for k in range(steps)] + [blur ** 2]


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, blur: float = 0.05, scaling: float = 0.5) -> torch.Tensor:
    """S_ε between the uniform clouds of each batch item: (B, N, D) and (B, M, D) points → (B,) (module docstring)."""
    n, m = x.shape[1], y.shape[1]
    log_a = torch.full(x.shape[:2], -math.log(n), dtype=x.dtype, device=x.device)
    log_b = torch.full(y.shape[:2], -math.log(m), dtype=y.dtype, device=y.device)
    with torch.no_grad():
        xd, yd = x.detach(), y.detach()
        both = torch.cat([xd, yd], 1)
        diameter = float((both.amax(1) - both.amin(1)).norm(dim=1).max())
        costs = {"xy": _half_squared_distances(xd, yd), "xx": _half_squared_distances(xd, xd),
                 "yy": _half_squared_distances(yd, yd)}
        costs["yx"] = costs["xy"].transpose(1, 2)
        schedule = _epsilons(diameter, blur, scaling)
        eps = schedule[0]
        f_ab, g_ba = _softmin(eps, costs["xy"], log_b), _softmin(eps, costs["yx"], log_a)
        f_aa, g_bb = _softmin(eps, costs["xx"], log_a), _softmin(eps, costs["yy"], log_b)
        for eps in schedule:
            f_next = _softmin(eps, costs["xy"], log_b + g_ba / eps)
            g_next = _softmin(eps, costs["yx"], log_a + f_ab / eps)
            f_aa = 0.5 * (f_aa + _softmin(eps, costs["xx"], log_a + f_aa / eps))
            g_bb = 0.5 * (g_bb + _softmin(eps, costs["yy"], log_b + g_bb / eps))
            f_ab, g_ba = 0.5 * (f_ab + f_next), 0.5 * (g_ba + g_next)
    # The last update, from the differentiable costs: it carries the gradient with respect to the points.
    eps = blur ** 2
    xy = _half_squared_distances(x, y)
    f_ab, g_ba = _softmin(eps, xy, log_b + g_ba / eps), _softmin(eps, xy.transpose(1, 2), log_a + f_ab / eps)
    f_aa = _softmin(eps, _half_squared_distances(x, x), log_a + f_aa / eps)
    g_bb = _softmin(eps, _half_squared_distances(y, y), log_b + g_bb / eps)
    divergence = ((f_ab - f_aa) * log_a.exp()).sum(1) + ((g_ba - g_bb) * log_b.exp()).sum(1)
    # Each point's cost reaches the sum twice (through f and through g), so the autograd gradient is twice the
    # envelope-theorem one ∂OT/∂C = π: half of it carries the gradient, the value stays whole.
    return 0.5 * (divergence + divergence.detach())
