"""Every cross-rank operation gives on 2 gloo processes what 1 process gives on the concatenated batch.

Each method runs two steps: a no-grad forward on batch A (it fills queues and moves centers), then a
forward + backward on batch B under DDP. The mean of the two ranks' losses, the DDP-averaged gradients
and the queues/centers must equal the 1-process run on the concatenated batches. What this covers:
MoCo v2's queue enqueue from all ranks and Shuffle-BN key path, SwAV's Sinkhorn sums (with the queue
joining the Sinkhorn batch), MoCo v3's gathered keys and rank-offset labels, DINO/iBOT centers.

BatchNorm is put in eval mode in both runs: torch's SyncBatchNorm runs on GPUs only, and per-rank
batch statistics (what CPU multi-process training does) differ from full-batch ones by design, so
with train-mode BN the runs could not agree. Eval-mode BN makes the per-sample maps identical, which
isolates the method's own cross-rank code. One spawn serves all methods (spawning costs seconds).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from ._tiny import forward, tiny_masks, tiny_method, tiny_views

WORLD, B = 2, 4  # per-rank batch
NAMES = ["mocov2", "simsiam", "swav", "mocov3", "dino", "ibot"]
OVERRIDES = {"swav": {"queue_length": WORLD * B, "epoch_queue_starts": 0}}
STATE = ("queue", "center", "center2")


def _batches(name):
    """The global batches A and B (views, masks), identical in every process."""
    a, b = tiny_views(name, WORLD * B, seed=11), tiny_views(name, WORLD * B, seed=12)
    masks = (tiny_masks(WORLD * B, seed=13), tiny_masks(WORLD * B, seed=14)) if name == "ibot" else (None, None)
    return (a, masks[0]), (b, masks[1])


def _shard(views, masks, rank, world):
    sl = slice(rank * B, (rank + 1) * B) if world > 1 else slice(None)
    return [v[sl] for v in views], None if masks is None else [m[sl] for m in masks]


def _run(name, rank, world):
    method = tiny_method(name, **OVERRIDES.get(name, {}))
    method.train()
    for m in method.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    model = DistributedDataParallel(method) if world > 1 else method
    method.on_step_start(0, 10, 5)
    (va, ma), (vb, mb) = _batches(name)
    with torch.no_grad():
        forward(model, name, *_shard(va, ma, rank, world))
    out = forward(model, name, *_shard(vb, mb, rank, world))
    out.loss.backward()
    loss = out.loss.detach().clone()
    if world > 1:
        dist.all_reduce(loss)
        loss /= world
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    state = {k: v.clone() for k, v in method.state_dict().items() if k in STATE}
    return {"loss": loss.item(), "grads": grads, "state": state}


def _worker(rank, world, init_file, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {name: _run(name, rank, world) for name in NAMES}
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    out = folder / "rank0.pt"
    mp.spawn(_worker, args=(WORLD, str(folder / "init"), str(out)), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("name", NAMES)
def test_two_ranks_equal_one_rank_on_the_concatenated_batch(name, two_rank_results):
    assert not dist.is_initialized()
    one, two = _run(name, 0, 1), two_rank_results[name]
    assert abs(one["loss"] - two["loss"]) <= 1e-5 * max(1.0, abs(one["loss"])), (one["loss"], two["loss"])
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 0
    for key, g in one["grads"].items():  # float32 sums in a different order: tolerance relative to the tensor's scale
        assert torch.allclose(g, two["grads"][key], rtol=1e-4, atol=1e-5 * float(g.abs().max())), key
    assert one["state"].keys() == two["state"].keys()
    for key, v in one["state"].items():
        assert torch.allclose(v, two["state"][key], rtol=1e-5, atol=1e-6), key
    if name in ("swav", "mocov2", "dino", "ibot"):
        assert one["state"], "the cross-rank state (queue/center) was not compared"


def test_spawned_workers_left_no_process_group():
    assert os.environ.get("WORLD_SIZE") in (None, "1") and not dist.is_initialized()
