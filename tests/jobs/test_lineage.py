"""MLflow lineage against a real sqlite store in tmp_path (no mocks)."""

import shutil

import yaml

from jobs import lineage
from jobs.dag import compile_cell
from jobs.spec import load_experiment



def compile_demo(root, overrides=()):
    return compile_cell(load_experiment("demo", root=root, overrides=overrides))


def test_tracking_uri_defaults_to_an_absolute_sqlite_file_in_the_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert lineage.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert not lineage.store_exists()
    assert lineage.find_chain("demo", "0" * 12) is None and not (tmp_path / "mlflow.db").exists()


def test_chain_and_stage_runs_exist_with_all_tags_before_anything_runs(root):
    cell = compile_demo(root)
    runs = lineage.ensure_chain(cell, "local")
    client = lineage.client()

    chain = lineage.find_chain("demo", cell.cell_id)
    assert chain.info.run_name == f"demo-{cell.cell_id[:8]}"
    assert client.get_experiment(chain.info.experiment_id).name == "demo"
    assert {k: chain.data.tags[k] for k in ("hirl.kind", "hirl.cell", "hirl.experiment", "hirl.backend",
                                           "hirl.config_hash")} == {
        "hirl.kind": "chain", "hirl.cell": cell.cell_id, "hirl.experiment": "demo", "hirl.backend": "local",
        "hirl.config_hash": cell.cell_id}

    assert list(runs) == ["pretrain", "knn"]
    for stage in cell.stages:
        got = client.get_run(runs[stage.name].run_id)
        upstream = runs["pretrain"].run_id if stage.name == "knn" else ""
        assert got.info.status == "SCHEDULED" and runs[stage.name].created
        assert stage.output_dir == f"outputs/demo/{cell.cell_id}/{stage.name}-{got.info.run_id[:8]}"
        assert {k: v for k, v in got.data.tags.items() if k.startswith("hirl.") or k == "mlflow.parentRunId"} == {
            "mlflow.parentRunId": chain.info.run_id, "hirl.stage": stage.name, "hirl.stage_type": stage.type,
            "hirl.cell": cell.cell_id, "hirl.upstream_run_id": upstream, "hirl.backend": "local",
            "hirl.config_hash": stage.config_hash, "hirl.image": "local", "hirl.output_dir": stage.output_dir,
            "hirl.experiment": "demo"}
        logged = yaml.safe_load(open(client.download_artifacts(got.info.run_id, "config.yaml", str(root))))
        assert logged == stage.config.to_dict()
    assert cell.stage("knn").config.pretrained == f"{cell.stage('pretrain').output_dir}/backbone.pth"
    assert not (root / "outputs").exists()  # lineage creates runs, never output dirs


def test_second_call_reuses_the_runs_and_force_makes_new_stage_runs(root):
    first = lineage.ensure_chain(compile_demo(root), "local")
    again = lineage.ensure_chain(compile_demo(root), "local")
    assert {s: r.run_id for s, r in again.items()} == {s: r.run_id for s, r in first.items()}
    assert not any(r.created for r in again.values())
    chain_id = lineage.find_chain("demo", compile_demo(root).cell_id).info.run_id

    cell = compile_demo(root)
    forced = lineage.ensure_chain(cell, "local", force=True)
    assert all(r.created and r.status == "SCHEDULED" for r in forced.values())
    assert not {r.run_id for r in forced.values()} & {r.run_id for r in first.values()}
    assert lineage.find_chain("demo", cell.cell_id).info.run_id == chain_id  # same chain, new attempt
    assert lineage.client().get_run(forced["knn"].run_id).data.tags["hirl.upstream_run_id"] == forced["pretrain"].run_id
    # the newest attempt is what later calls find
    assert {s: r.run_id for s, r in lineage.ensure_chain(compile_demo(root), "local").items()} == \
        {s: r.run_id for s, r in forced.items()}


def test_another_cell_gets_its_own_chain(root):
    a = compile_demo(root)
    b = compile_demo(root, ["optimizer.lr=0.1"])
    lineage.ensure_chain(a, "local")
    lineage.ensure_chain(b, "local")
    assert lineage.find_chain("demo", a.cell_id).info.run_id != lineage.find_chain("demo", b.cell_id).info.run_id


def test_status_rows_key_metrics_and_end_chain(root):
    cell = compile_demo(root)
    runs = lineage.ensure_chain(cell, "local")
    client = lineage.client()
    client.log_metric(runs["pretrain"].run_id, "loss", 2.0, step=0)
    client.log_metric(runs["pretrain"].run_id, "loss", 1.5, step=1)
    lineage.set_run_status(runs["pretrain"].run_id, "FINISHED")
    assert lineage.end_chain("demo", cell.cell_id) == "RUNNING"  # knn still scheduled: not over

    lineage.set_run_status(runs["knn"].run_id, "FAILED")
    rows = lineage.chain_status("demo", cell.cell_id, cell.names)
    assert [(r.stage, r.run_id, r.status, r.metric, r.value) for r in rows] == [
        ("pretrain", runs["pretrain"].run_id, "FINISHED", "loss", 1.5),
        ("knn", runs["knn"].run_id, "FAILED", "", None)]
    assert lineage.end_chain("demo", cell.cell_id) == "FAILED"

    client.log_metric(runs["knn"].run_id, "knn_top1_k20", 71.25)
    lineage.set_run_status(runs["knn"].run_id, "FINISHED")
    assert lineage.end_chain("demo", cell.cell_id) == "FINISHED"
    chain = lineage.find_chain("demo", cell.cell_id)
    assert chain.info.status == "FINISHED" and chain.info.end_time
    assert lineage.chain_status("demo", cell.cell_id)[1].value == 71.25


def test_the_chain_that_ends_last_closes_its_sweep_run(root):
    # what a SLURM sweep relies on: nobody watches it, each chain's last stage job calls end_chain
    from jobs.matrix import load_sweep

    from . import FIXTURES
    for path in (FIXTURES / "sweeps").glob("*.yaml"):
        shutil.copy(path, root / "configs" / "experiments")
    sweep = load_sweep("sweep", root=root)
    ref = lineage.SweepRef(sweep.sweep_id, lineage.ensure_sweep_run(sweep, "slurm"))
    chains = [lineage.ensure_chain(cell, "slurm", sweep=ref) for cell in sweep.cells]
    outcomes = ["FINISHED"] * (len(chains) - 1) + ["FAILED"]
    for i, (cell, runs, last) in enumerate(zip(sweep.cells, chains, outcomes)):
        assert lineage.run_status(ref.run_id) == "RUNNING"  # chains still open: the sweep is not over
        lineage.set_run_status(runs["pretrain"].run_id, "FINISHED")
        lineage.set_run_status(runs["knn"].run_id, last)
        assert lineage.end_chain("sweep", cell.cell_id) == last
    assert lineage.run_status(ref.run_id) == "FAILED"  # every chain ended, one failed
