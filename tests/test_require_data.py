"""The suites that train on Fashion-MNIST skip without its files, except under HIRL_REQUIRE_DATA=1 (CI),
where the missing data fails the run: a machine without the data must not pass with no end-to-end
test at all. Each suite is run for real by pytest, pointed at an empty data folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITES = ["tests/e2e/test_demo_chain.py", "tests/e2e/test_resume_methods.py", "tests/jobs/test_sweep_e2e.py",
          "tests/hirl_core/test_interrupt.py::test_sigterm_right_after_a_checkpoint_still_logs_that_epoch",
          "tests/hirl_core/test_data.py::test_real_fashion_mnist_shapes"]


def _pytest(target, data, **env):
    base = {k: v for k, v in os.environ.items() if k != "HIRL_REQUIRE_DATA"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", target],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(base, HIRL_FASHION_MNIST=str(data), HF_HUB_OFFLINE="1", **env))


@pytest.mark.parametrize("suite", SUITES, ids=[s.split("/")[-1].split("::")[0] for s in SUITES])
def test_missing_data_skips_and_fails_when_required(tmp_path, suite):
    empty = tmp_path / "no fashion-mnist here"
    empty.mkdir()
    skipped = _pytest(suite, empty)
    assert skipped.returncode == 0 and " skipped" in skipped.stdout and " passed" not in skipped.stdout, \
        skipped.stdout[-3000:]
    assert "train-images-idx3-ubyte" in skipped.stdout     # the skip reason says what is missing
    required = _pytest(suite, empty, HIRL_REQUIRE_DATA="1")
    assert required.returncode == 1 and " skipped" not in required.stdout, required.stdout[-3000:]
    assert "HIRL_REQUIRE_DATA=1" in required.stdout and str(empty) in required.stdout, required.stdout[-3000:]
