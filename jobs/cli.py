"""``hirl``: plan, submit and inspect experiments.

Bad input (experiment, stage, override key, backend) is reported as one line,
exit code 2, before MLflow or the file system is touched. MLflow is imported
only by commands that need it, so ``hirl plan`` answers instantly.
"""

from __future__ import annotations

import argparse
import os
import sys

from hirl_core.config import ConfigError

from .backends import BackendError, Plan, available_backends, get_backend
from .dag import assign_outputs, compile_cell, format_plan
from .spec import SpecError, load_experiment

INPUT_ERRORS = (SpecError, ConfigError, BackendError)
USAGE_RC = 2


def _add_experiment_args(parser):
    parser.add_argument("experiment", metavar="EXP",
                        help="experiment name (configs/experiments/EXP.yaml) or path to a spec")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="config override; '<stage>.key=v' for one stage, 'key=v' for every stage "
                             "that has the key, '+key=v' adds a key (repeatable)")


def build_parser():
    parser = argparse.ArgumentParser(prog="hirl", description="HIRL experiments: pretrain → evaluations, "
                                     "tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backends = ", ".join(available_backends())

    p = sub.add_parser("plan", help="show the stages of an experiment; create nothing")
    _add_experiment_args(p)
    p.add_argument("--backend", default="local", help=f"backend whose files --out renders ({backends})")
    p.add_argument("--out", metavar="DIR", help="also write the backend's rendered files (dry run) to DIR")

    p = sub.add_parser("submit", help="create the MLflow runs and run the stages")
    _add_experiment_args(p)
    p.add_argument("--backend", default="local", help=f"where to run ({backends})")
    p.add_argument("--force", action="store_true", help="new runs for every stage, even finished ones")

    p = sub.add_parser("status", help="stage states and key metrics of the experiment's cell")
    _add_experiment_args(p)

    p = sub.add_parser("ui", help="serve the MLflow UI on the tracking store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    return parser


def _compile(args):
    experiment = load_experiment(args.experiment, root=".", overrides=args.overrides)
    return experiment, compile_cell(experiment)


def _metric_text(row):
    return f"{row.metric}={row.value:.4g}" if row.metric and row.value is not None else "-"


def _print_rows(rows):
    table = [("stage", "type", "status", "run id", "key metric")]
    table += [(r.stage, r.type or "-", r.status, r.run_id or "-", _metric_text(r)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_plan(args):
    backend = get_backend(args.backend)
    _experiment, cell = _compile(args)
    assign_outputs(cell)  # placeholder run ids: nothing exists yet
    text = format_plan(cell)
    files = backend.render(Plan(cell, None)) if args.out else {}
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


def cmd_submit(args):
    from . import lineage

    backend = get_backend(args.backend)
    experiment, cell = _compile(args)
    uri = lineage.tracking_uri()
    backend.render(Plan(assign_outputs(cell), None, uri))  # preflight: backend settings, before creating runs
    print(f"experiment {experiment.name}, cell {cell.cell_id}: {len(cell.stages)} stages on {backend.name}",
          flush=True)
    runs = lineage.ensure_chain(cell, backend, force=args.force, uri=uri)
    result = backend.submit(Plan(cell, runs, uri, args.force))
    chain_state = lineage.end_chain(experiment.name, cell.cell_id, uri=uri)
    print(f"\nchain {experiment.name}-{cell.cell_id[:8]}: {chain_state}")
    _print_rows(lineage.chain_status(experiment.name, cell.cell_id, cell.names, uri=uri))
    print(f"MLflow UI: make ui  (tracking: {uri})")
    return result.returncode


def cmd_status(args):
    from . import lineage

    experiment, cell = _compile(args)
    uri = lineage.tracking_uri()
    chain = lineage.find_chain(experiment.name, cell.cell_id, uri=uri)
    if chain is None:
        print(f"experiment {experiment.name}, cell {cell.cell_id}: no runs yet (hirl submit {args.experiment})")
        return 0
    print(f"experiment {experiment.name}, cell {cell.cell_id}: chain run {chain.info.run_id} {chain.info.status}")
    _print_rows(lineage.chain_status(experiment.name, cell.cell_id, cell.names, uri=uri))
    return 0


def cmd_ui(args):
    from .lineage import tracking_uri

    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
            "--host", args.host, "--port", str(args.port)]
    print(" ".join(argv), flush=True)
    os.execv(sys.executable, argv)  # replaces this process; Ctrl-C goes straight to the server


COMMANDS = {"plan": cmd_plan, "submit": cmd_submit, "status": cmd_status, "ui": cmd_ui}


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except INPUT_ERRORS as exc:
        print(f"hirl: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return USAGE_RC
    except KeyboardInterrupt:
        print("hirl: interrupted", file=sys.stderr)
        return 130
