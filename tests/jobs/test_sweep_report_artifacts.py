"""A sweep that ends under ``hirl submit`` leaves its model-zoo table and chart on the sweep run, and its
chains carry the key numbers and summary params (the recording backend of test_sweep_local; real sqlite)."""

from jobs import cli, lineage

from .test_sweep_local import recording_backend, root, use  # noqa: F401 - fixtures


def test_an_ended_sweep_holds_its_report_and_its_chains_their_numbers(root, monkeypatch, capsys):  # noqa: F811
    use(monkeypatch, recording_backend(root / "order.txt"))
    assert cli.main(["submit", "sweep"]) == 0
    c = lineage.client()
    exp = c.get_experiment_by_name("sweep")
    runs = lineage.search_all(c, exp.experiment_id)
    (sweep_run,) = [r for r in runs if r.data.tags.get("hirl.kind") == "sweep"]
    assert sweep_run.info.status == "FINISHED"
    arts = {a.path for a in c.list_artifacts(sweep_run.info.run_id, "report")}
    assert arts == {"report/sweep.md", "report/sweep.csv", "report/sweep.png"}
    assert "| Method |" in c.get_run(sweep_run.info.run_id).data.tags["mlflow.note.content"]
    chains = [r for r in runs if r.data.tags.get("hirl.kind") == "chain"]
    assert len(chains) == 4 and all(ch.data.params["seed"] in ("0", "1") for ch in chains)
    assert {ch.data.params["method"] for ch in chains} == {"row_a", "row_b"}  # the matrix point wins
