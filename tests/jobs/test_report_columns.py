"""The seed-style table of a full evaluation chain: columns from the stage registry (title, order, key
metric, the untrained number beside it), filled from MLflow. Stand-in stage processes log each stage's
numbers into its real run (real sqlite store); every evaluation type is made runnable for the DAG."""

import csv
import json
import shutil

import pytest
import yaml

from jobs import cli, lineage, report, spec
from jobs.backends.local import LocalBackend
from jobs.cli_common import summary_line
from jobs.dag import compile_cell
from jobs.matrix import load_sweep
from jobs.spec import load_experiment

from . import PYTHON, make_root

# Logs the stage type's key metric and its untrained twin (names from the registry) with the given values.
STAGE = """\
import json, os, sys
from hirl_core.stages import STAGE_TYPES
kind = STAGE_TYPES[sys.argv[1]]
ours, base = json.loads(sys.argv[2])[os.environ["HIRL_STAGE"]]
import mlflow
with mlflow.start_run():
    mlflow.log_metric(kind.key_metric, ours)
    if kind.untrained_metric:
        mlflow.log_metric(kind.untrained_metric, base)
"""
# Written out of the seed's order on purpose: the table orders them.
EVALS = {"transfer": ("transfer", {}), "semisup_10": ("semisup", {"semisup": {"list": "imagenet_10percent"}}),
         "clustering": ("clustering", {}), "semisup_1": ("semisup", {"semisup": {"fraction": 0.01}}),
         "finetune": ("finetune", {}), "linear": ("linear", {}), "knn": ("knn", {})}
VALUES = {"pretrain": (3.5, None), "knn": (0.781, 0.756), "linear": (0.82, 0.61), "finetune": (0.9, 0.85),
          "semisup_1": (0.55, 0.31), "semisup_10": (0.7, 0.52), "clustering": (0.612, 0.401),
          "transfer": (0.66, 0.47)}


@pytest.fixture
def root(tmp_path, monkeypatch, blank_db):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(spec, "RUNNABLE_TYPES", spec.STAGE_TYPES)  # every type in the DAG, runner or not
    make_root(tmp_path)
    shutil.copy(blank_db, tmp_path / "mlflow.db")
    knn = yaml.safe_load((tmp_path / "configs/knn/tiny_knn.yaml").read_text())
    stages = {"pretrain": {"config": "configs/pretrain/tiny_pretrain.yaml", "overrides": ["epochs=1"]}}
    for name, (kind, extra) in EVALS.items():
        config = {k: v for k, v in knn.items() if kind == "knn" or k != "knn"} | extra
        (tmp_path / f"configs/{name}.yaml").write_text(yaml.safe_dump(config))
        stages[name] = {"type": kind, "config": f"configs/{name}.yaml", "after": "pretrain"}
    experiment = {"name": "full", "display_name": "MoCo v2 (demo)", "stages": stages,
                  "resources": {"local": {"nproc_per_node": 1}}}
    (tmp_path / "configs/experiments/full.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    backend = LocalBackend(command_for=lambda stage: [PYTHON, "-c", STAGE, stage.type, json.dumps(VALUES)])
    monkeypatch.setattr(cli, "get_backend", lambda name: backend)
    return tmp_path


SEED_COLUMNS = ["KNN", "Linear", "Fine-tune", "Semi 1 %", "Semi 10 %", "NMI", "Transfer"]
BY_TITLE = dict(zip(SEED_COLUMNS, ["knn", "linear", "finetune", "semisup_1", "semisup_10", "clustering", "transfer"]))


def test_submit_ends_with_the_chain_row_and_report_fills_every_column(root, capsys):
    assert cli.main(["submit", "full"]) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-3] == "| Method | Arch. | Epochs | Batch Size | " + " | ".join(SEED_COLUMNS) + " |"
    assert lines[-1] == ("| MoCo v2 (demo) | ResNet-18 | 1 | 8 | 78.1 (untrained 75.6) | 82.0 (untrained 61.0) | "
                         "90.0 (untrained 85.0) | 55.0 (untrained 31.0) | 70.0 (untrained 52.0) | "
                         "61.2 (untrained 40.1) | 66.0 (untrained 47.0) |")

    assert cli.main(["report", "full", "--out", str(root / "rep")]) == 0
    printed = capsys.readouterr().out
    assert "| Method | Arch. | Epochs | Batch Size | " + " | ".join(SEED_COLUMNS) + " |" in printed
    with open(root / "rep/full.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    c = lineage.client()
    cell = compile_cell(load_experiment("full", root=root))
    runs = {r.stage: r for r in lineage.sweep_status("full", [cell])[0].rows}
    for title, stage in BY_TITLE.items():  # each number is that stage run's key metric in MLflow, in percent
        metric, value = runs[stage].metric, c.get_run(runs[stage].run_id).data.metrics[runs[stage].metric]
        assert metric and float(row[title]) == round(100 * value, 2), title


def test_no_untrained_number_shows_the_trained_one_alone(root):
    cell = compile_cell(load_experiment("full", root=root))
    runs = lineage.ensure_chain(cell, "local")
    c = lineage.client()
    for name, (ours, _base) in VALUES.items():  # only the key metrics, nothing untrained
        metric = "loss" if name == "pretrain" else spec.registry.STAGE_TYPES[cell.stage(name).type].key_metric
        c.log_metric(runs[name].run_id, metric, ours)
        lineage.set_run_status(runs[name].run_id, "FINISHED" if name != "transfer" else "FAILED")
    sweep = load_sweep("full", root=root)
    text = summary_line(sweep, lineage.sweep_status("full", sweep.cells)[0], lineage.tracking_uri())
    assert text.splitlines()[-1] == "| MoCo v2 (demo) | ResNet-18 | 1 | 8 | 78.1 | 82.0 | 90.0 | 55.0 | 70.0 | 61.2 | – |"


def test_two_stages_of_one_title_each_get_a_column_and_places205_is_named(root):
    data = yaml.safe_load((root / "configs/experiments/full.yaml").read_text())
    data["stages"] = {"pretrain": data["stages"]["pretrain"], "knn": data["stages"]["knn"],
                      "knn_k5": {**data["stages"]["knn"], "overrides": ["knn.k=[5]"]},
                      "places": {**data["stages"]["transfer"], "overrides": ["data.dataset=places205"]}}
    (root / "configs/experiments/full.yaml").write_text(yaml.safe_dump(data))
    cell = compile_cell(load_experiment("full", root=root))
    assert [title for title, _, _ in report.cell_columns(cell)] == ["KNN", "KNN (knn_k5)", "Places205"]
    assert report.semisup_percent({"semisup": {"fraction": 0.005}}) == "0.5"
    assert report.semisup_percent({"semisup": {"list": "imagenet_1percent"}}) == "1"
    assert report.semisup_percent({"data": {}}) == ""
