"""Everything a method carries between steps (queues, centers, EMA teachers, momentum encoders, BN
statistics) is in its state_dict, and schedules are functions of the step: a fresh method loaded from
the state_dict continues exactly as the original (what the engine's resume relies on)."""
import copy

import pytest
import torch

from ._tiny import METHOD_CFGS, forward, tiny_masks, tiny_method, tiny_views

OVERRIDES = {"swav": {"queue_length": 16, "epoch_queue_starts": 0}}


def _step(model, name, step, views, masks):
    model.on_step_start(step, 20, 5)
    out = forward(model, name, views, masks)
    out.loss.backward()
    model.before_optimizer_step()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.01 * p.grad)
                p.grad = None
    model.after_step((step + 1) / 20)
    return out.loss.item()


@pytest.mark.parametrize("name", list(METHOD_CFGS))
def test_state_dict_round_trip_continues_identically(name):
    model = tiny_method(name, **OVERRIDES.get(name, {}))
    batches = [(tiny_views(name, 8, seed=s), tiny_masks(8, seed=s) if name == "ibot" else None) for s in range(4)]
    for step in range(2):
        _step(model, name, step, *batches[step])
    state = copy.deepcopy(model.state_dict())
    fresh = tiny_method(name, seed=123, **OVERRIDES.get(name, {}))  # different init, then the saved state
    fresh.load_state_dict(state)
    for step in (2, 3):
        torch.manual_seed(step)  # MoCo v2's shuffle is a no-op in one process; keep any RNG use aligned
        a = _step(model, name, step, *batches[step])
        torch.manual_seed(step)
        b = _step(fresh, name, step, *batches[step])
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), step
