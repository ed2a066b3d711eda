"""What the local backend renders (``hirl plan --out``: local/commands.sh and the stage configs) with
the shared hostile values (tests/hostile.py) as overrides, matrix values and the checkout path: the
listing, run by bash with a stub ``python``, hands the stub exactly the argv and environment the
backend would start, every non-command line is a comment, and the configs read the values back."""

import json
import shlex
import stat
import subprocess
import sys

import pytest
import yaml

from hirl_core.config import parse_override
from jobs.backends import Plan
from jobs.backends.local import LocalBackend
from jobs.dag import assign_outputs
from jobs.matrix import load_sweep

from .. import hostile
from . import make_root

SPEC = {"description": "hostile values", "stages": {
    "pretrain": {"config": "configs/pretrain/tiny_pretrain.yaml"},
    "knn": {"config": "configs/knn/tiny_knn.yaml", "after": "pretrain"}}}


def _stub_python(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python"
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"env = {{k: os.environ.get(k) for k in ('MLFLOW_RUN_ID', 'HIRL_STAGE')}}\n"
                    f"open(os.environ['RECORD'], 'a').write(json.dumps([sys.argv[1:], env]) + '\\n')\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _run_listing(text, tmp_path):
    """commands.sh as bash runs it from the checkout: the stub's records, one per command line."""
    for line in text.split("\n"):              # bash ends a line (and a comment) at \n only
        assert line == "" or line.startswith("# ") or not line.startswith("#"), line
        if line and not line.startswith("#"):
            assert shlex.split(line)[-5:-3] == ["-m", "hirl_core"], line  # one whole command per line
    record = tmp_path / "record.jsonl"
    env = {"PATH": f"{_stub_python(tmp_path)}:/usr/bin:/bin", "RECORD": str(record), "HOME": str(tmp_path)}
    run = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


def _expected(cell):
    return [[LocalBackend.hirl_command(s)[1:], {"MLFLOW_RUN_ID": "<run-id>", "HIRL_STAGE": s.name}]
            for s in cell.stages]


def _sweep_cell(root, axis, value):
    spec = root / "configs" / "experiments" / "hostile.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "matrix": {axis: [value]}}, allow_unicode=True))
    return assign_outputs(load_sweep(spec, root=root).cells[0])


@pytest.mark.parametrize("value", hostile.VALUES, ids=hostile.ids(hostile.VALUES))
def test_a_hostile_matrix_value_stays_data_in_the_listing_and_the_config(tmp_path, value):
    root = make_root(tmp_path / "repo")
    cell = _sweep_cell(root, "pretrain.data.root", value)
    files = LocalBackend().render(Plan(cell, None))
    assert _run_listing(files["local/commands.sh"], tmp_path) == _expected(cell)
    written = yaml.safe_load(files[f"{cell.stage('pretrain').output_dir}/config.yaml"])
    assert written["data"]["root"] == value
    hostile.assert_no_canary(tmp_path)


@pytest.mark.parametrize("value", hostile.VALUES, ids=hostile.ids(hostile.VALUES))
def test_a_hostile_override_stays_data_in_the_listing_and_the_config(tmp_path, value):
    root = make_root(tmp_path / "repo")
    (root / "configs" / "experiments" / "plain.yaml").write_text(yaml.safe_dump(SPEC))
    override = f"pretrain.data.root={value}"
    cell = assign_outputs(load_sweep("plain", root=root, overrides=[override]).cells[0])
    files = LocalBackend().render(Plan(cell, None))
    assert _run_listing(files["local/commands.sh"], tmp_path) == _expected(cell)
    written = yaml.safe_load(files[f"{cell.stage('pretrain').output_dir}/config.yaml"])
    assert written["data"]["root"] == parse_override(override)[1]
    hostile.assert_no_canary(tmp_path)


@pytest.mark.parametrize("name", hostile.PATHS, ids=hostile.ids(hostile.PATHS))
def test_a_hostile_checkout_path_never_reaches_the_listing(tmp_path, name):
    root = make_root(tmp_path / name)
    (root / "configs" / "experiments" / "plain.yaml").write_text(yaml.safe_dump(SPEC))
    cell = assign_outputs(load_sweep("plain", root=root).cells[0])
    text = LocalBackend().render(Plan(cell, None))["local/commands.sh"]
    assert name not in text                     # the listing runs from the checkout, by relative paths
    assert _run_listing(text, tmp_path) == _expected(cell)
    hostile.assert_no_canary(tmp_path)
