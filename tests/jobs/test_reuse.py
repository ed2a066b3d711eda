"""Finished stage runs are found by the stage's own config hash across the chains of an experiment:
a chain that grew (a new cell id) reuses them instead of running them again. Real child processes
(tiny stand-in stages through ``command_for``) and a real MLflow sqlite store."""

import shutil

import pytest
import yaml

from jobs import cli, lineage
from jobs.backends.local import LocalBackend
from jobs.dag import compile_cell
from jobs.spec import load_experiment

from . import PYTHON, make_root

# Records that it ran, writes a pretrain's backbone.pth into its output dir, logs its key metric.
STAGE = """\
import os, sys
stage, out = os.environ["HIRL_STAGE"], sys.argv[2]
with open(sys.argv[1], "a") as f:
    f.write(stage + "\\n")
if stage == "pretrain":
    with open(os.path.join(out, "backbone.pth"), "w") as f:
        f.write("weights\\n")
import mlflow
with mlflow.start_run():
    mlflow.log_metric("loss" if stage == "pretrain" else "knn_top1_k20", 0.25)
"""


@pytest.fixture
def root(tmp_path, monkeypatch, blank_db):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    make_root(tmp_path)
    shutil.copy(blank_db, tmp_path / "mlflow.db")
    order = tmp_path / "order.txt"
    backend = LocalBackend(command_for=lambda stage: [PYTHON, "-c", STAGE, str(order),
                                                      str(tmp_path / stage.output_dir)])
    monkeypatch.setattr(cli, "get_backend", lambda name: backend)
    return tmp_path


def write_spec(root, stages):
    spec = {"name": "grow", "stages": stages, "resources": {"local": {"nproc_per_node": 1}}}
    (root / "configs/experiments/grow.yaml").write_text(yaml.safe_dump(spec))
    return compile_cell(load_experiment("grow", root=root))


PRETRAIN = {"pretrain": {"config": "configs/pretrain/tiny_pretrain.yaml", "overrides": ["epochs=1"]}}
KNN = {"knn": {"config": "configs/knn/tiny_knn.yaml", "after": "pretrain"}}
KNN_K5 = {"knn_k5": {"type": "knn", "config": "configs/knn/tiny_knn.yaml", "after": "pretrain",
                     "overrides": ["knn.k=[5]"]}}


def ran(root):
    return (root / "order.txt").read_text().splitlines()


def test_a_grown_chain_runs_only_its_new_stage_and_reads_the_finished_pretraining(root, capsys):
    first = write_spec(root, PRETRAIN)
    assert cli.main(["submit", "grow"]) == 0
    (old,) = lineage.chain_status("grow", first.cell_id, first.names)
    backbone = root / f"outputs/grow/{first.cell_id}/pretrain-{old.run_id[:8]}/backbone.pth"
    written = backbone.stat().st_mtime_ns
    assert ran(root) == ["pretrain"]
    capsys.readouterr()

    grown = write_spec(root, {**PRETRAIN, **KNN})
    assert grown.cell_id != first.cell_id  # a new cell: its id hashes the whole DAG
    assert grown.stage("pretrain").config_hash == first.stage("pretrain").config_hash
    assert cli.main(["submit", "grow"]) == 0
    out = capsys.readouterr().out
    assert ran(root) == ["pretrain", "knn"]  # the pre-training did not run again
    assert backbone.stat().st_mtime_ns == written
    assert not list((root / f"outputs/grow/{grown.cell_id}").glob("pretrain-*"))
    assert f"skip pretrain (finished in run {old.run_id}, reused as run" in out

    c = lineage.client()
    rows = lineage.chain_status("grow", grown.cell_id, grown.names)
    assert [(r.stage, r.status, r.metric, r.value) for r in rows] == [
        ("pretrain", "FINISHED", "loss", 0.25), ("knn", "FINISHED", "knn_top1_k20", 0.25)]
    pointer, knn = (c.get_run(r.run_id) for r in rows)
    assert pointer.info.run_id != old.run_id and pointer.data.tags["hirl.reused_from"] == old.run_id
    assert pointer.data.tags["hirl.output_dir"] == str(backbone.parent.relative_to(root))
    assert knn.data.tags["hirl.upstream_run_id"] == old.run_id
    knn_config = yaml.safe_load((root / knn.data.tags["hirl.output_dir"] / "config.yaml").read_text())
    assert knn_config["pretrained"] == str(backbone.relative_to(root))
    assert lineage.find_chain("grow", grown.cell_id).info.status == "FINISHED"

    assert cli.main(["submit", "grow"]) == 0  # nothing left to run
    assert ran(root) == ["pretrain", "knn"]
    capsys.readouterr()
    assert cli.main(["status", "grow"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["pretrain"]]
    assert line.split()[:4] == ["pretrain", "pretrain", "FINISHED", "reused"]


def test_finished_evaluations_are_reused_too_and_force_reruns_everything(root, capsys):
    first = write_spec(root, {**PRETRAIN, **KNN})
    assert cli.main(["submit", "grow"]) == 0
    before = {r.stage: r.run_id for r in lineage.sweep_status("grow", [first])[0].rows}

    cell = write_spec(root, {**PRETRAIN, **KNN, **KNN_K5})
    assert cli.main(["submit", "grow"]) == 0
    assert ran(root) == ["pretrain", "knn", "knn_k5"]  # pretrain and knn are the first chain's
    rows = {r.stage: r for r in lineage.sweep_status("grow", [cell])[0].rows}
    assert rows["knn"].reused_from == before["knn"] and rows["pretrain"].reused_from == before["pretrain"]
    knn_k5 = lineage.client().get_run(rows["knn_k5"].run_id)
    assert knn_k5.data.tags["hirl.upstream_run_id"] == before["pretrain"]

    assert cli.main(["submit", "grow", "--force"]) == 0
    assert ran(root)[3:] == ["pretrain", "knn", "knn_k5"]


def test_a_stage_whose_upstream_run_differs_is_not_reused(root):
    """A finished knn read one pre-training run: a chain that reuses a newer pre-training runs its own."""
    write_spec(root, {**PRETRAIN, **KNN})
    assert cli.main(["submit", "grow"]) == 0
    write_spec(root, PRETRAIN)
    assert cli.main(["submit", "grow", "--force"]) == 0  # a second pre-training, same hash, newer
    assert ran(root) == ["pretrain", "knn", "pretrain"]
    c = lineage.client()
    cell = write_spec(root, {**PRETRAIN, **KNN})
    newest = lineage.find_chain("grow", write_spec(root, PRETRAIN).cell_id)
    (newer,) = lineage.latest_stage_runs(c, newest.info.experiment_id, newest.info.run_id).values()
    runs = lineage.ensure_chain(cell, "local")  # the first cell's chain, found again by its id
    assert runs["pretrain"].run_id != newer.info.run_id and not runs["pretrain"].reused_from  # its own, kept

    grown = write_spec(root, {**PRETRAIN, **KNN, **KNN_K5})
    runs = lineage.ensure_chain(grown, "local")
    assert runs["pretrain"].reused_from == newer.info.run_id and runs["pretrain"].status == "FINISHED"
    assert runs["knn"].status == "SCHEDULED" and not runs["knn"].reused_from  # its knn read the older one
    assert grown.stage("knn").config.pretrained == f"{newer.data.tags['hirl.output_dir']}/backbone.pth"
    assert c.get_run(runs["knn"].run_id).data.tags["hirl.upstream_run_id"] == newer.info.run_id


def test_a_bulk_creation_can_tell_which_new_cells_have_finished_work_to_reuse(root):
    from jobs import lineage_reuse

    first = write_spec(root, PRETRAIN)
    runs = lineage.ensure_chain(first, "local")
    c = lineage.client()
    exp_id = c.get_experiment_by_name("grow").experiment_id
    assert lineage_reuse.finished_hashes(c, exp_id) == set()  # SCHEDULED is no finished work
    lineage.set_run_status(runs["pretrain"].run_id, "FINISHED")
    assert lineage_reuse.finished_hashes(c, exp_id) == {first.stage("pretrain").config_hash}
    hashes = lineage_reuse.finished_hashes(c, exp_id)
    assert lineage_reuse.may_reuse(write_spec(root, {**PRETRAIN, **KNN}), hashes)
    other = {"pretrain": {**PRETRAIN["pretrain"], "overrides": ["epochs=2"]}}
    assert not lineage_reuse.may_reuse(write_spec(root, {**other, **KNN}), hashes)


def test_a_sweep_over_an_evaluation_key_reuses_the_finished_pretraining_in_every_cell(root, capsys):
    first = write_spec(root, PRETRAIN)
    assert cli.main(["submit", "grow"]) == 0
    (old,) = lineage.chain_status("grow", first.cell_id, first.names)
    spec = {"name": "grow", "stages": {**PRETRAIN, **KNN}, "matrix": {"knn.knn.k": [[5], [10]]},
            "resources": {"local": {"nproc_per_node": 1}}}
    (root / "configs/experiments/grow.yaml").write_text(yaml.safe_dump(spec))
    assert cli.main(["submit", "grow"]) == 0
    # every new cell has a finished twin of its pre-training: a bulk creation must leave it to
    # ensure_chain (lineage_reuse.may_reuse), which reuses it
    assert ran(root) == ["pretrain", "knn", "knn"]
    from jobs.matrix import load_sweep

    for st in lineage.sweep_status("grow", load_sweep("grow", root=root).cells):
        rows = {r.stage: r for r in st.rows}
        assert rows["pretrain"].reused_from == old.run_id and rows["knn"].status == "FINISHED"
        knn = lineage.client().get_run(rows["knn"].run_id)
        assert knn.data.tags["hirl.upstream_run_id"] == old.run_id
