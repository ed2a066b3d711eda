"""What the ``hirl`` verbs share: loading the spec named on the command line,
and the status tables (one cell's stages, a sweep's cells × stages, the closing table row)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from .backends.base import INTERRUPTED_RC  # noqa: F401 - the verbs' exit code for Ctrl-C
from .matrix import load_sweep

USAGE_RC = 2
DONE = ("FINISHED", "FAILED", "KILLED")


def load(args):
    return load_sweep(args.experiment, root=".", overrides=args.overrides)


def _metric_text(row):
    return f"{row.metric}={row.value:.4g}" if row.metric and row.value is not None else "-"


def _job_text(row):
    """The job id; a stage run that stands for another chain's finished run had no job: "reused"."""
    return row.job_id or ("reused" if getattr(row, "reused_from", "") else "-")


def _table(rows, indent="  "):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(v.ljust(w) for v, w in zip(row, widths))).rstrip() for row in rows]


def print_rows(rows):
    """One cell's stages (the single-experiment view: each line starts with the stage name)."""
    table = [("stage", "type", "state", "job id", "attempt", "run id", "key metric")]
    table += [(r.stage, r.type or "-", r.status, _job_text(r), str(r.attempt or "-"), r.run_id or "-",
               _metric_text(r)) for r in rows]
    print("\n".join(_table(_scheduler_column(table, rows))))


def print_sweep(statuses):
    """Cells × stages of a sweep; the cell's id and matrix point on its first stage's line."""
    table = [("cell", "params", "stage", "job id", "state", "attempt", "key metric")]
    for st in statuses:
        for i, r in enumerate(st.rows):
            first = i == 0
            table.append((st.cell.cell_id[:8] if first else "", st.cell.label if first else "", r.stage,
                          _job_text(r), r.status, str(r.attempt or "-"), _metric_text(r)))
    print("\n".join(_table(_scheduler_column(table, [r for st in statuses for r in st.rows]))))


def _scheduler_column(table, rows):
    """A last column with the scheduler's view (SLURM state, reason, why) when a backend gave one."""
    if not any(getattr(r, "scheduler", "") for r in rows):
        return table
    return [table[0] + ("scheduler",)] + [t + (getattr(r, "scheduler", "") or "-",) for t, r in zip(table[1:], rows)]


def counts(statuses):
    counts = {}
    for st in statuses:
        counts[st.status] = counts.get(st.status, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def summary_line(sweep, status, uri):
    """The closing lines of one chain's submission: where to look, then its seed-style table row (every
    evaluation column the registry knows, each trained number with the untrained backbone's beside it)."""
    from . import report

    ui = f"open the MLflow UI: make ui  (tracking: {uri})"
    table = report.build(sweep, [status])
    if not table.evals:
        return ui
    return "\n".join([ui, "", *report.chain_rows(table)])


@contextmanager
def runs_end_on_failure(sweep, cells, backend, uri):
    """Whatever breaks a submission once its runs exist (sbatch refusing, a crash, Ctrl-C while jobs are
    queued) leaves no run SCHEDULED or RUNNING that nothing will run: those turn FAILED (KILLED for
    Ctrl-C) with the reason, their chains and sweep with them; work the backend still holds is left to
    end by itself. The error then goes on to the caller (one line for a BackendError)."""
    from . import lineage, lineage_end

    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        text = " ".join(str(exc).split()) or type(exc).__name__
        reason = "interrupted" if interrupted else f"submission failed: {text}"
        try:
            keep = backend.live_runs(lineage.sweep_status(sweep.name, cells, uri), uri)
            lineage_end.abandon(sweep, cells, keep, reason, "KILLED" if interrupted else "FAILED", uri)
        except Exception as inner:  # noqa: BLE001 - the first error is the one to report
            print(f"hirl: warning: could not settle the runs: {type(inner).__name__}: {inner}", file=sys.stderr)
        raise
