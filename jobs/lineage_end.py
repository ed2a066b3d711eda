"""Ending runs that nothing will run any more: after a submission broke once its runs existed, and
after a local submitter died while one of its stages ran (the stage's watcher calls it)."""

from __future__ import annotations

from . import lineage


def abandon(sweep, cells, keep=(), reason="", state="FAILED", uri=None):
    """After a submission broke with its runs created: every SCHEDULED or RUNNING stage run of ``cells``
    that nothing will run (its id not in ``keep``: work a backend still holds) turns ``state`` with
    ``hirl.reason``; then the chains and the sweep run are settled. The run ids it ended."""
    ended = []
    for st in lineage.sweep_status(sweep.name, cells, uri):
        for row in st.rows:
            if row.run_id and row.status in ("SCHEDULED", "RUNNING") and row.run_id not in keep:
                lineage.set_tags(row.run_id, {"hirl.reason": reason[:500]}, uri)
                lineage.set_run_status(row.run_id, state, uri)
                ended.append(row.run_id)
        if st.chain is not None:
            lineage.end_chain(sweep.name, st.cell.cell_id, uri=uri, close_sweep=False)
    lineage.settle_sweep(sweep, uri)
    return ended


def end_orphaned_chain(experiment_name, cell_id, reason, uri=None):
    """A local submitter died while a stage of this cell ran: no later stage of this chain, nor of the
    chains of its sweep that never started, will run. Their SCHEDULED runs turn KILLED with ``reason``
    (``hirl retry`` reruns them) and the chains and the sweep are closed."""
    chain = lineage.find_chain(experiment_name, cell_id, uri)
    if chain is None:
        return
    c = lineage.client(uri)
    parent = chain.data.tags.get("mlflow.parentRunId")
    chains = [chain]
    if parent:
        query = f"tags.`mlflow.parentRunId` = '{parent}' and tags.`hirl.kind` = 'chain'"
        chains += [r for r in lineage.search_all(c, chain.info.experiment_id, query)
                   if r.info.run_id != chain.info.run_id]
    for ch in chains:
        if ch.info.status not in ("RUNNING", "SCHEDULED"):
            continue
        stages = lineage.latest_stage_runs(c, ch.info.experiment_id, ch.info.run_id).values()
        if ch is not chain and any(r.info.status == "RUNNING" for r in stages):
            continue  # a stage of it is running: its own watcher settles it
        for run in stages:
            if run.info.status == "SCHEDULED":
                lineage.set_tags(run.info.run_id, {"hirl.reason": reason}, uri)
                lineage.set_run_status(run.info.run_id, "KILLED", uri)
        lineage.end_chain(experiment_name, ch.data.tags.get("hirl.cell", ""), uri=uri)
