"""``hirl``: plan, submit and inspect experiments and sweeps.

Bad input (experiment, stage, override key, matrix axis, resource, backend) is
reported as one line, exit code 2, before MLflow or the file system is touched.
MLflow is imported only by commands that need it, so ``hirl plan`` answers instantly.
Every command takes a spec; a spec with matrix axes is a sweep and the command acts
on all its cells (``--cell`` narrows to some, by id prefix or ``key=value``).
"""

from __future__ import annotations

import argparse
import os
import sys

from hirl_core.config import ConfigError

from . import claim, cli_runs, image
from .backends import BackendError, Plan, available_backends, get_backend
from .cli_common import (INTERRUPTED_RC, USAGE_RC, counts, load, print_rows, print_sweep,
                         runs_end_on_failure, summary_line)
from .dag import assign_outputs
from .matrix import format_sweep_plan
from .spec import SpecError

INPUT_ERRORS = (SpecError, ConfigError, BackendError)


def _add_experiment_args(parser):
    parser.add_argument("experiment", metavar="EXP",
                        help="experiment or sweep name (configs/experiments/EXP.yaml) or path to a spec")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="config override for every cell; '<stage>.key=v' for one stage, 'key=v' for "
                             "every stage that has the key, '+key=v' adds a key (repeatable)")
    parser.add_argument("--overrides", dest="override_text", default="", metavar="'K=V K=V ...'",
                        help="overrides in one string (make's SET=), split at spaces outside brackets and "
                             "quotes: 'knn.k=[10, 20] optimizer.name=\"SGD w/ nesterov\"'; before any --set")


_CLOSING = {"[": "]", "(": ")", "{": "}"}


def split_overrides(text):
    """``'knn.k=[10, 20] a="x y"'`` -> two overrides: split at whitespace outside brackets and quotes
    (the quotes stay; the override grammar strips them), so a value with spaces is never cut."""
    items, current, pending, quote = [], "", [], ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _CLOSING:
            pending.append(_CLOSING[ch])
        elif pending and ch == pending[-1]:
            pending.pop()
        elif ch.isspace() and not pending:
            items, current = items + [current] if current else items, ""
            continue
        current += ch
    if quote or pending:
        missing = f"an unclosed {quote}" if quote else f"a missing {pending[-1]}"
        raise ConfigError(f"bad overrides {text!r}: {missing}; expected key=value items separated by spaces, "
                          f"a value with spaces inside brackets or quotes")
    return items + [current] if current else items


def _add_cell_arg(parser):
    parser.add_argument("--cell", metavar="CELL", default="",
                        help="only cells whose id starts with CELL, or that match key=value[,key=value]")


def build_parser():
    parser = argparse.ArgumentParser(prog="hirl", description="HIRL experiments: pretrain → evaluations, "
                                     "as single chains or sweeps, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backends = ", ".join(available_backends())

    p = sub.add_parser("plan", help="show the cells and stages of an experiment or sweep; create nothing")
    _add_experiment_args(p)
    p.add_argument("--backend", default="local", help=f"backend whose files --out renders ({backends})")
    p.add_argument("--out", metavar="DIR", help="also write the backend's rendered files (dry run) to DIR")

    p = sub.add_parser("submit", help="create the MLflow runs and run the stages (every cell of a sweep)")
    _add_experiment_args(p)
    p.add_argument("--backend", default="local", help=f"where to run ({backends})")
    p.add_argument("--force", action="store_true", help="new runs for every stage, even finished ones")

    p = sub.add_parser("status", help="a table of cells × stages: job id, state, attempt, key metric")
    _add_experiment_args(p)
    _add_cell_arg(p)
    p.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 5) until nothing is left to run")

    p = sub.add_parser("logs", help="the log of one stage")
    _add_experiment_args(p)
    _add_cell_arg(p)
    p.add_argument("--stage", default="", help="stage name (default: the first stage)")
    p.add_argument("--rank", type=int, help="only this rank's lines, where the backend keeps them apart")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the stage ends")
    p.add_argument("--backend", default="", help="backend that ran it (default: the chain run's)")

    p = sub.add_parser("cancel", help="stop the stages of a sweep, a cell (--cell) or a stage (--stage)")
    _add_experiment_args(p)
    _add_cell_arg(p)
    p.add_argument("--stage", default="", help="this stage and the stages after it")
    p.add_argument("--backend", default="", help="backend that runs it (default: the chain run's)")

    p = sub.add_parser("retry", help="rerun FAILED or KILLED stages (and the stages they hold back) only")
    _add_experiment_args(p)
    _add_cell_arg(p)
    p.add_argument("--stage", default="", help="only this stage (and the stages after it)")
    p.add_argument("--backend", default="", help="backend to run on (default: the chain run's)")

    p = sub.add_parser("report", help="the model-zoo table from MLflow: Markdown, CSV, bar chart; logged "
                                      "to the sweep run")
    _add_experiment_args(p)
    p.add_argument("--out", metavar="DIR", help="where to write the files (default outputs/EXP/report-<sweep>)")

    image.add_parser(sub)
    cli_runs.add_export_parser(sub)

    p = sub.add_parser("ui", help="serve the MLflow UI on the tracking store; prints the address of the runs "
                                  "table of the latest experiment (or --experiment)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--experiment", default="", metavar="EXP", help="experiment name or spec (default: the "
                                                                   "one with the newest run)")
    return parser


# -- plan ---------------------------------------------------------------------------------------
def cmd_plan(args):
    backend = get_backend(args.backend)
    sweep = load(args)
    for cell in sweep.cells:
        assign_outputs(cell)  # placeholder run ids: nothing exists yet
    text = format_sweep_plan(sweep)
    files = {}
    if args.out:  # what submit would create: one file set per cell, or a sweep's one Workflow (k8s)
        files.update(backend.render_many([Plan(cell, None) for cell in sweep.cells], matrix=sweep.is_matrix))
    sys.stdout.write(text)
    if args.out:
        files["plan.txt"] = text
        for rel, content in sorted(files.items()):
            path = os.path.join(args.out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(content)
        print(f"wrote {len(files)} files under {args.out}")
    return 0


# -- submit -------------------------------------------------------------------------------------
def cmd_submit(args):
    from . import lineage

    backend = get_backend(args.backend)
    sweep = load(args)
    uri = lineage.tracking_uri()
    lineage.check_tracking(uri)  # seconds, not MLflow's minutes of retries, and before anything exists
    for cell in sweep.cells:  # preflight: backend settings, before creating runs
        backend.render(Plan(assign_outputs(cell), None, uri))
    # what only a real submission needs (local: the data; SLURM: an image digest, sbatch)
    backend.preflight([Plan(cell, None, uri) for cell in sweep.cells])
    cells = sweep.cells
    # One submission per cell at a time, held for the whole submission (jobs/claim.py): before any run exists.
    claim.claim(cells, backend.name)
    try:
        return _submit_claimed(args, backend, sweep, cells, uri)
    finally:
        claim.release_all()


def _submit_claimed(args, backend, sweep, cells, uri):
    from . import lineage, lineage_bulk

    if sweep.is_matrix:
        print(f"experiment {sweep.name}, sweep {sweep.sweep_id}: {len(cells)} cells, "
              f"{sum(len(c.stages) for c in cells)} stages on {backend.name}", flush=True)
    else:
        print(f"experiment {sweep.name}, cell {cells[0].cell_id}: {len(cells[0].stages)} stages on {backend.name}",
              flush=True)
    # From here on runs exist: whatever breaks leaves none of them waiting for nothing.
    with runs_end_on_failure(sweep, cells, backend, uri):
        ref = lineage.SweepRef(sweep.sweep_id, lineage.ensure_sweep_run(sweep, backend, uri) if sweep.is_matrix else "")
        if ref.run_id:
            lineage.set_run_status(ref.run_id, "RUNNING", uri)
        # Every cell's runs exist before anything runs: the UI shows the whole sweep, cancel can reach it.
        all_runs = lineage_bulk.ensure_chains(cells, backend, force=args.force, uri=uri, sweep=ref)
        for cell, runs in zip(cells, all_runs):
            claim.note_run(cell, next((r.run_id for r in runs.values() if r.status != "FINISHED"), ""))
        if sweep.is_matrix and not args.force and all(r.status == "FINISHED"
                                                      for runs in all_runs for r in runs.values()):
            print(f"nothing new to run: all {len(cells)} cells are finished (FORCE=1 / --force reruns them)")
        rc = 0
        # A backend that queues work (SLURM, k8s) takes a sweep at once: same-shape stages become one job array.
        batched = (backend.submit_many([Plan(c, r, uri, args.force) for c, r in zip(cells, all_runs)])
                   if sweep.is_matrix and backend.batches else None)
        for i, (cell, runs) in enumerate(zip(cells, all_runs), 1):
            if sweep.is_matrix and batched is None:
                print(f"\n== cell {i}/{len(cells)} {cell.cell_id[:8]}: {cell.label}", flush=True)
            result = batched[i - 1] if batched is not None else backend.submit(Plan(cell, runs, uri, args.force))
            lineage.end_chain(sweep.name, cell.cell_id, uri=uri, close_sweep=False)  # the sweep: below
            if result.returncode == INTERRUPTED_RC:
                rc = INTERRUPTED_RC
                break
            rc = rc or result.returncode
    if not sweep.is_matrix:
        cell = cells[0]
        chain = lineage.find_chain(sweep.name, cell.cell_id, uri=uri)
        print(f"\nchain {sweep.name}-{cell.cell_id[:8]}: {chain.info.status if chain else '-'}")
        status = lineage.sweep_status(sweep.name, [cell], uri=uri)[0]
        print_rows(status.rows)
        print(summary_line(sweep, status, uri))  # last: the chain's row of the results table
        return rc
    statuses = lineage.sweep_status(sweep.name, cells, uri=uri)
    state = lineage.end_sweep(ref.run_id, [st.status for st in statuses], uri)
    if state != "RUNNING":  # the sweep run holds its model-zoo table and chart (artifacts report/)
        from . import report

        report.log_at_sweep_end(sweep, statuses, uri, backend.name)
    print(f"\nsweep {sweep.name}-{sweep.sweep_id[:8]}: {state} ({counts(statuses)})")
    print_sweep(statuses)
    print(f"table: hirl report {args.experiment} · open the MLflow UI: make ui  (tracking: {uri})")
    return rc


def _ui_experiment(c, name):
    from . import mlflow_view

    exp = mlflow_view.latest_experiment(c, name)
    if exp is None and name:  # a spec name or path: its experiment is the spec's name
        from .matrix import load_sweep

        exp = c.get_experiment_by_name(load_sweep(name).name)
    return exp


def cmd_ui(args):
    from . import lineage, mlflow_view

    uri = lineage.tracking_uri()
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", args.host, "--port", str(args.port)]
    print(" ".join(argv), flush=True)
    if lineage.store_exists(uri):
        c = lineage.client(uri)
        mlflow_view.mark_project_experiments(c)  # a click on the experiment lands in its runs table too
        exp = _ui_experiment(c, args.experiment)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        if exp is not None:
            view = mlflow_view.save_view(c, exp.experiment_id)
            print(f"runs of {exp.name}: {mlflow_view.runs_url(host, args.port, exp.experiment_id, view)}", flush=True)
        elif args.experiment:
            print(f"no experiment {args.experiment!r} in {uri} yet (hirl submit {args.experiment})", flush=True)
    os.execv(sys.executable, argv)  # replaces this process; Ctrl-C goes straight to the server


COMMANDS = {"plan": cmd_plan, "submit": cmd_submit, "status": cli_runs.cmd_status, "logs": cli_runs.cmd_logs,
            "cancel": cli_runs.cmd_cancel, "retry": cli_runs.cmd_retry, "report": cli_runs.cmd_report, "ui": cmd_ui,
            "image": image.cmd_image, "export": cli_runs.cmd_export}


def main(argv=None):
    # MLflow prints "View run … at: <url>" on stdout whenever a run ends against a server; hirl's own output
    # (status tables, one-line errors) must stay what a person or a script reads.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "override_text", ""):
            args.overrides = split_overrides(args.override_text) + list(args.overrides)
        return COMMANDS[args.command](args)
    except INPUT_ERRORS as exc:
        print(f"hirl: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return USAGE_RC
    except KeyboardInterrupt:
        print("hirl: interrupted", file=sys.stderr)
        return INTERRUPTED_RC
    finally:
        if argv is None and "mlflow" in sys.modules:
            # The command is over and the process exits next: after MLflow's imports the interpreter's final
            # garbage collections walk about a million objects (~1 s of a submit). Frozen, they are skipped;
            # every file is closed by now, and stdout/stderr are flushed at exit regardless.
            import gc

            gc.freeze()
