"""The spool's edge cases against a real MLflow store (sqlite): a write the server refuses for good does
not hold back the writes after it, and a line torn by a killed attempt does not swallow the next one."""
import json

from mlflow.tracking import MlflowClient

from hirl_core.tracking import SPOOL, Tracker


def _run(monkeypatch, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    run_id = c.create_run(c.create_experiment("spool")).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.setenv("HIRL_TRACKING_DRAIN_S", "3")  # a write stuck in the spool shows within seconds
    return c, run_id


def test_a_write_refused_for_good_is_dropped_and_the_rest_still_arrive(tmp_path, monkeypatch, capsys):
    c, run_id = _run(monkeypatch, tmp_path)
    out = tmp_path / "out"
    tracker = Tracker(True, spool_dir=out)
    tracker.params({"epochs": 3})
    tracker.params({"epochs": 4})  # MLflow refuses a param that changes value (400), whatever the retries
    tracker.metrics({"loss": 1.5}, step=0)
    tracker.finish("FINISHED")
    run = c.get_run(run_id)
    assert run.data.params == {"epochs": "3"} and run.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(run_id, "loss")] == [0]
    assert "refused a params write for good" in capsys.readouterr().err


def test_a_torn_last_line_is_cut_and_the_kept_writes_are_delivered_by_the_next_attempt(tmp_path, monkeypatch):
    c, run_id = _run(monkeypatch, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    kept = {"op": "metrics", "values": {"loss": 2.0}, "step": 0, "ts": 1000}
    # an earlier attempt kept one write, then died in the middle of the next append
    (out / SPOOL).write_text(json.dumps(kept) + "\n" + '{"op": "metrics", "values": {"lo')
    tracker = Tracker(True, spool_dir=out)
    tracker.metrics({"loss": 1.0}, step=1)
    tracker.finish("FINISHED")
    assert sorted((m.step, m.value) for m in c.get_metric_history(run_id, "loss")) == [(0, 2.0), (1, 1.0)]
    assert c.get_run(run_id).info.status == "FINISHED"


def test_a_server_whose_database_is_overloaded_keeps_the_write_instead_of_dropping_it():
    # what the PostgreSQL-backed server answered under 32 writers when its connection pool ran dry
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, INVALID_PARAMETER_VALUE

    from hirl_core.tracking import _refused

    overloaded = MlflowException("QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00",
                                 error_code=BAD_REQUEST)
    changed = MlflowException("Changing param values is not allowed. Param with key='epochs' was already logged "
                              "with value='3'", error_code=INVALID_PARAMETER_VALUE)
    assert not _refused(overloaded) and _refused(changed)
