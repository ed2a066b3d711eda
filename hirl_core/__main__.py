"""`python -m hirl_core <stage> -c CONFIG [key=value ...]` — run one stage (also under torchrun).

Bad input (unknown key, missing data, unreadable checkpoint) is one line on stderr and exit code 2,
before anything is tracked.
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_config
from .schema import check_stage_config
from .stages import STAGE_TYPES, runnable

STAGES = runnable()

# glibc hands large freed blocks back to the OS, so every CPU training step page-faults its
# activations in again: measured 3x slower on the demo (100 vs 290 img/s). These must be in the
# environment before the process starts, hence the one-time re-exec below.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000000"}


def _reexec_with_malloc_env(argv) -> None:
    if all(k in os.environ for k in MALLOC_ENV) or os.environ.get("HIRL_NO_REEXEC"):
        return
    env = {**os.environ, **MALLOC_ENV}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "hirl_core", *argv], env)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hirl_core", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES, help="which stage to run")
    parser.add_argument("-c", "--config", required=True, help="stage config YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted sub-keys; +key=value adds)")
    args = parser.parse_intermixed_args(argv)
    if argv is None:  # a real process (not a test calling main): make sure the allocator is tuned
        _reexec_with_malloc_env(sys.argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub that cannot be reached
    try:
        cfg = load_config(args.config, args.overrides)
        check_stage_config(cfg, args.stage)
        if args.stage == "pretrain":
            from .data import check_data
            check_data(cfg.data)
        STAGE_TYPES[args.stage].load_runner()(cfg)
    except ConfigError as err:
        print(f"hirl_core: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
