"""LARS (You et al. 2017, "Large Batch Training of Convolutional Networks"), our own implementation.

The seed wrapped SGD in NVIDIA apex's LARC (trust 0.001, clip=False), which needs apex at import
time (hirl-method.md §6.7). This is the same update without apex: for each parameter tensor w with
gradient g and weight decay λ,

    trust = η ‖w‖ / (‖g‖ + λ ‖w‖ + eps)        (1 when ‖w‖ or ‖g‖ is 0, e.g. zero-initialised biases)
    d     = trust · (g + λ w)
    v     = μ v + d ;  w ← w − lr · v           (SGD momentum, no dampening, as torch.optim.SGD)

Groups with `lars_exclude: True` (biases and norm parameters when `optimizer.exclude_1d` is set) take
a plain momentum-SGD step with their own weight decay (the builder gives them 0), no trust ratio.
"""
from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @staticmethod
    def trust_ratio(w: torch.Tensor, g: torch.Tensor, weight_decay: float, trust_coefficient: float,
                    eps: float = 1e-8) -> torch.Tensor:
        w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
        ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
        return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, mom = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                d = g.add(p, alpha=wd) if wd else g.clone()
                if not group["lars_exclude"]:
                    d.mul_(self.trust_ratio(p, g, wd, group["trust_coefficient"], group["eps"]))
                if mom:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(mom).add_(d)
                    d = buf
                p.add_(d, alpha=-group["lr"])
        return loss
