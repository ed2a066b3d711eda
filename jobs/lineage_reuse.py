"""Finished work found by the stage's own config hash, across the chains of an experiment.

A cell's id hashes its whole DAG, so a chain that grows a stage is a new cell with a new chain run. Its
stages that did not change keep their ``Stage.config_hash`` (type, resolved config, upstream's hash):
a FINISHED stage run with that hash, that read the same upstream run, is the work this stage would redo.
``lineage.ensure_chain`` then gives the new chain a stage run that stands for it (``hirl.reused_from``,
the same output dir, its metrics, FINISHED), which every backend skips; the rule is in
docs/architecture.md (How a submission flows, 4).
"""

from __future__ import annotations

REUSED_TAG = "hirl.reused_from"  # on a stage run that stands for a finished run of another chain


def _finished_runs(c, exp_id, filter_string, pages=1):
    """FINISHED active runs matching the filter, newest first: ``pages`` pages of 1,000 (None: all)."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = c.search_runs([exp_id], filter_string=f"attributes.status = 'FINISHED' and {filter_string}",
                             run_view_type=ViewType.ACTIVE_ONLY, order_by=["attributes.start_time DESC"],
                             max_results=1000, page_token=token)
        runs += list(page)
        token, pages = page.token, None if pages is None else pages - 1
        if not token or pages == 0:
            return runs


def finished_elsewhere(c, exp_id, stage, upstream_id, runs):
    """The newest FINISHED stage run in the experiment with ``stage``'s config hash and type that read
    ``upstream_id`` ("" for a root), or None. ``runs``: the chain's StageRuns so far. Only worth a search
    when the stage is a root or its upstream is finished: a downstream can have finished only after the
    very run its upstream stands for."""
    if stage.upstream and runs[stage.upstream].status != "FINISHED":
        return None
    for run in _finished_runs(c, exp_id, f"tags.`hirl.config_hash` = '{stage.config_hash}'"):  # newest first
        tags = run.data.tags
        if (tags.get("hirl.stage_type") == stage.type and tags.get("hirl.kind") != "chain"
                and tags.get("hirl.upstream_run_id", "") == upstream_id and tags.get("hirl.output_dir")):
            return run
    return None


def stand_for(c, run_id, done):
    """Close a stage run that stands for the finished run ``done``: its latest metrics copied (the chain's
    key numbers, ``hirl status`` and ``hirl report`` read them here), FINISHED."""
    from mlflow.entities import Metric

    stamp = done.info.end_time or done.info.start_time or 0
    metrics = [Metric(k, float(v), stamp, 0) for k, v in sorted(done.data.metrics.items())]
    for i in range(0, len(metrics), 1000):  # MLflow's limit per log_batch
        c.log_batch(run_id, metrics=metrics[i:i + 1000])
    c.set_terminated(run_id, status="FINISHED")


def finished_hashes(c, exp_id):
    """The config hashes of the experiment's FINISHED stage runs (one search): a new cell none of whose
    root stages' hashes is among them has nothing to reuse, so a bulk creation may make its runs blind."""
    return {run.data.tags["hirl.config_hash"] for run in _finished_runs(c, exp_id, "tags.`hirl.stage` LIKE '%'", pages=None)
            if "hirl.config_hash" in run.data.tags}


def may_reuse(cell, hashes):
    """True when one of the cell's root stages has a finished twin (``hashes``: finished_hashes)."""
    return any(stage.upstream is None and stage.config_hash in hashes for stage in cell.stages)
