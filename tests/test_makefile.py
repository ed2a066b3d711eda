"""The Makefile hands user values (SET, DATA, CELL, OUT, ...) to hirl as data: never re-parsed by
make or the shell, so spaces, brackets, quotes, ``$(...)`` and backticks arrive intact or are refused
by hirl with one line; nothing a value says is executed.

`make plan` runs the real CLI (it creates nothing); the other targets run with VENV pointing at a
stub interpreter that records the argv and environment each recipe would start hirl with."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from . import hostile

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


# The environment's copies of the Makefile's variables would stand in for the ones a test leaves out.
MAKE_VARIABLES = ("EXP", "BACKEND", "SET", "DATA", "PORT", "FORCE", "CELL", "STAGE", "RANK", "OUT", "FOLLOW",
                  "WATCH", "SITE", "REGISTRY", "IMAGE_REPO", "FASHION_MNIST", "HIRL_REGISTRY", "HIRL_SLURM_SITE",
                  "HIRL_IMAGE_REPOSITORY", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def make(*args, venv=VENV, env=None, cwd=REPO):
    """`make -s ARGS` from the checkout; the setup target is taken as done (-o), so nothing installs."""
    argv = ["make", "-s", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed", *args]
    base = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=dict(base, HF_HUB_OFFLINE="1", **(env or {})))


def _configs(out):
    found = {p.parent.name.split("-")[0]: yaml.safe_load(p.read_text()) for p in Path(out).rglob("config.yaml")}
    assert set(found) == {"pretrain", "knn", "linear", "finetune", "semisup_1pct", "semisup_10pct", "clustering",
                          "transfer"}, found  # the demo chain's eight stages
    return found


def test_data_with_a_space_reaches_the_configs_whole(tmp_path):
    data = tmp_path / f"my 'images' $(touch {tmp_path}/x)"
    for split in ("train", "val"):
        (data / split / "cls").mkdir(parents=True)
    out = tmp_path / "plan out"
    run = make("plan", "EXP=demo", f"DATA={data}", f"OUT={out}")
    assert run.returncode == 0, run.stderr
    cfg = _configs(out)
    assert cfg["pretrain"]["data"]["root"] == str(data) and cfg["pretrain"]["data"]["dataset"] == "imagefolder"
    assert cfg["pretrain"]["backbone"]["in_chans"] == 3
    assert make("data", f"DATA={data}").returncode == 0


def test_a_set_value_with_a_space_is_one_override(tmp_path):
    run = make("plan", "EXP=demo", "SET=knn.k=[5, 7] pretrain.epochs=3", f"OUT={tmp_path}")
    assert run.returncode == 0, run.stderr
    assert "overrides: knn.k=[5, 7] pretrain.epochs=3" in run.stdout, run.stdout
    cfg = _configs(tmp_path)
    assert cfg["knn"]["knn"]["k"] == [5, 7] and cfg["pretrain"]["epochs"] == 3


def _hirl_lines(stderr):
    return [line for line in stderr.splitlines() if not re.match(r"make(\[\d+\])?: ", line)]


@pytest.mark.parametrize("value, bad", [
    ("pretrain.epochs=$(touch {t}/subst) `touch {t}/backtick`", "bad override '`touch'"),
    ("pretrain.epochs=3; touch {t}/semicolon", "bad override 'touch'"),
    ("pretrain.epochs='3 `touch {t}/quote`", "bad overrides \"pretrain.epochs='3 `touch"),
])
def test_a_set_value_with_shell_syntax_runs_nothing_and_is_refused(tmp_path, value, bad):
    run = make("plan", "EXP=demo", f"SET={value.format(t=tmp_path)}")
    assert run.returncode == 2 and _hirl_lines(run.stderr) == [_hirl_lines(run.stderr)[0]], run.stdout + run.stderr
    assert _hirl_lines(run.stderr)[0].startswith(f"hirl: error: {bad}"), run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["$(touch {t}/subst)", "$(shell touch {t}/make-shell)", "${{HOME}}`id`$$"])
def test_a_set_value_that_make_or_the_shell_would_run_arrives_as_text(tmp_path, value):
    value = value.format(t=tmp_path)
    run = make("plan", "EXP=demo", f"SET=pretrain.data.root={value}")
    if run.returncode == 0:
        assert f"overrides: pretrain.data.root={value}\n" in run.stdout, run.stdout
    else:                                   # or refused by a config check, which quotes it whole
        assert run.returncode == 2 and repr(value) in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["{t}/$(touch {t}/subst)", "{t}/`touch {t}/backtick`",
                                   "{t}/$(shell touch {t}/make-shell)", "{t}/\"; touch {t}/dquote; \""])
def test_make_data_runs_nothing_a_data_value_says(tmp_path, value):
    run = make("data", f"DATA={value.format(t=tmp_path)}")
    assert run.returncode == 2 and "has no train/ folder" in run.stdout, run.stdout + run.stderr
    assert list(tmp_path.iterdir()) == []


# -- every target, through a stub interpreter --------------------------------------------------------
@pytest.fixture
def stub(tmp_path):
    """A VENV whose python records its argv and the hirl environment (one JSON line per start)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      "keep = ('HIRL_SLURM_SITE', 'HIRL_IMAGE_REPOSITORY')\n"
                      "env = {k: v for k, v in os.environ.items() if k in keep}\n"
                      "open(os.environ['RECORD'], 'a').write(json.dumps([sys.argv[1:], env]) + '\\n')\n")
    python.chmod(0o755)
    (venv / ".installed").touch()
    record = tmp_path / "record.jsonl"

    def run(*args):
        record.unlink(missing_ok=True)
        done = make(*args, venv=venv, env={"RECORD": str(record)}, cwd=REPO)
        assert done.returncode == 0, done.stdout + done.stderr
        return [json.loads(line) for line in record.read_text().splitlines()]
    return run


# Target, make variables (hostile where the target passes them on), and the argv hirl must get.
V = hostile.VALUES
CASES = [
    ("submit", {"EXP": V[0], "BACKEND": V[1], "SET": V[2], "FORCE": "1"},
     ["submit", V[0], "--overrides", V[2], "--backend", V[1], "--force"]),
    ("plan", {"EXP": V[3], "BACKEND": V[4], "OUT": V[5]}, ["plan", V[3], "--backend", V[4], "--out", V[5]]),
    ("status", {"EXP": V[6], "CELL": V[7], "WATCH": "2.5"}, ["status", V[6], "--cell", V[7], "--watch", "2.5"]),
    ("logs", {"EXP": V[8], "CELL": V[9], "STAGE": V[10], "RANK": V[11], "FOLLOW": "yes"},
     ["logs", V[8], "--cell", V[9], "--stage", V[10], "--rank", V[11], "--follow"]),
    ("cancel", {"EXP": V[12], "STAGE": V[13], "SET": V[14]}, ["cancel", V[12], "--overrides", V[14], "--stage", V[13]]),
    ("retry", {"EXP": V[15], "CELL": V[16]}, ["retry", V[15], "--cell", V[16]]),
    ("report", {"EXP": V[17], "OUT": V[18]}, ["report", V[17], "--out", V[18]]),
    ("ui", {"PORT": V[19]}, ["ui", "--port", V[19]]),
    ("ui", {"PORT": V[19], "EXP": V[0]}, ["ui", "--port", V[19], "--experiment", V[0]]),
]


@pytest.mark.parametrize("target, variables, argv", CASES, ids=[c[0] for c in CASES])
def test_every_target_passes_user_values_as_single_arguments(tmp_path, stub, target, variables, argv):
    calls = stub(target, *(f"{k}={v}" for k, v in variables.items()))
    assert calls == [[["-m", "jobs", *argv], {"HIRL_IMAGE_REPOSITORY": "hirl"}]]
    hostile.assert_no_canary(tmp_path)
    assert not list(REPO.glob(f"{hostile.CANARY}*"))      # the recipes run in the checkout


def test_data_becomes_three_overrides_after_set(stub):
    data = "/data/my 'images' $(x)"
    [[argv, _]] = stub("submit", f"DATA={data}", "SET=pretrain.epochs=2")
    assert argv[argv.index("--overrides"):argv.index("--backend")] == [
        "--overrides", "pretrain.epochs=2", "--set", "data.dataset=imagefolder", f"data.root='{data}'",
        "pretrain.backbone.in_chans=3"]


@pytest.mark.parametrize("value", [V[0], V[2], V[4], V[11], "a\\ b c"], ids=hostile.ids([V[0], V[2], V[4], V[11], "a"]))
def test_make_demo_hands_the_values_on_through_its_own_make(tmp_path, stub, value):
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    (fashion / "train-images-idx3-ubyte.gz").touch()
    calls = stub("demo", f"FASHION_MNIST={fashion}", f"SET={value}", "EXP=ignored", "BACKEND=ignored")
    assert calls == [[["-m", "jobs", "submit", "demo", "--overrides", value, "--backend", "local"],
                      {"HIRL_IMAGE_REPOSITORY": "hirl"}]]
    hostile.assert_no_canary(tmp_path)


def test_site_and_registry_reach_hirl_through_the_environment(stub):
    site, registry = V[0], "127.0.0.1:5001$(touch x)"
    [[argv, env]] = stub("submit", "BACKEND=slurm", f"SITE={site}", f"REGISTRY={registry}")
    assert env == {"HIRL_SLURM_SITE": site, "HIRL_IMAGE_REPOSITORY": f"{registry}/hirl"}
    [[argv, env]] = stub("image", f"IMAGE_REPO={V[1]}")
    assert argv == ["-m", "jobs", "image", "build"] and env["HIRL_IMAGE_REPOSITORY"] == V[1]
