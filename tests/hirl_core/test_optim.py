"""Per-parameter gradient clipping: the seed's rule (each gradient scaled by max_norm / (‖g‖ + 1e-6)
when that factor is below 1), and gradients already within the bound left unwritten."""
import pytest
import torch

from hirl_core.config import ConfigError
from hirl_core.engine.optim import clip_gradients


def _seed_rule(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    coef = max_norm / (grad.norm(2) + 1e-6)
    return grad * coef if coef < 1 else grad.clone()


def test_per_param_clipping_matches_the_seed_rule_and_leaves_small_gradients_unwritten():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(64, 32), (32,), (8, 8, 3), (5,)]]
    scales = [1.0, 0.001, 0.5, 0.0]  # norms ≈ 45, 0.006, 7, 0: above, below, above, zero
    for p, s in zip(params, scales):
        p.grad = torch.randn(p.shape) * s
    frozen = torch.nn.Parameter(torch.zeros(3))  # no gradient: skipped
    expected = [_seed_rule(p.grad, 0.3) for p in params]
    versions = [p.grad._version for p in params]
    clip_gradients([*params, frozen], 0.3, "per_param")
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.grad, want, rtol=1e-6, atol=0)
    assert params[0].grad.norm().item() == pytest.approx(0.3, rel=1e-5)
    # below the bound the factor would be 1: the tensor is not written at all (no multiply)
    assert params[1].grad._version == versions[1] and params[3].grad._version == versions[3]
    assert params[0].grad._version > versions[0] and params[2].grad._version > versions[2]
    assert frozen.grad is None


def test_global_clipping_and_unknown_mode():
    a = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([3.0, 4.0])
    clip_gradients([a], 1.0, "global")
    assert a.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ConfigError, match="'layerwise'.*allowed: global, per_param"):
        clip_gradients([a], 1.0, "layerwise")
