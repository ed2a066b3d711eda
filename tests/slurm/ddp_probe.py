"""Tests only: run the real pretrain stage, then have *every* rank write a digest of its final weights.

    python tests/slurm/ddp_probe.py <stage config.yaml>

The engine saves from rank 0 only, so to see that all ranks of a multi-node job end with identical
weights each rank digests the parameters of the model it trained (captured where the engine wraps
it in DistributedDataParallel). BatchNorm running statistics are per-rank by design and left out.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import hirl_core.engine.pretrain as pretrain
from hirl_core.config import load_config

captured = {}
_ddp = pretrain.DistributedDataParallel


def _capture(module, *args, **kwargs):
    captured["model"] = module
    return _ddp(module, *args, **kwargs)


def main():
    pretrain.DistributedDataParallel = _capture
    cfg = load_config(sys.argv[1])
    pretrain.run_pretrain(cfg)
    digest = hashlib.sha256()
    model = captured["model"]
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().numpy().tobytes())
    import torch.distributed as dist

    info = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "host": os.uname().nodename,
            "slurm_procid": os.environ.get("SLURM_PROCID"), "slurm_nodeid": os.environ.get("SLURM_NODEID"),
            "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", "params": digest.hexdigest()}
    Path(cfg.output_dir, f"weights-rank{info['rank']}.json").write_text(json.dumps(info) + "\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
