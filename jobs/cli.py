"""``hirl``: plan, submit and inspect experiments and sweeps.

Bad input (experiment, stage, override key, matrix axis, resource, backend) is
reported as one line, exit code 2, before MLflow or the file system is touched.
MLflow is imported only by commands that need it, so ``hirl plan`` answers instantly.
Every command takes a spec; a spec with matrix axes is a sweep and the command acts
on all its cells (``--cell`` narrows to some, by id prefix or ``key=value``).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time

from hirl_core.config import ConfigError

from . import image, names
from .backends import BackendError, Handle, Plan, available_backends, get_backend
from .dag import OUTPUT_ROOT, assign_outputs
from .matrix import format_sweep_plan, load_sweep
from .spec import SpecError, _closest

INPUT_ERRORS = (SpecError, ConfigError, BackendError)
USAGE_RC = 2
INTERRUPTED_RC = 130
DONE = ("FINISHED", "FAILED", "KILLED")


def _add_experiment_args(parser):
    parser.add_argument("experiment", metavar="EXP",
                        help="experiment or sweep name (configs/experiments/EXP.yaml) or path to a spec")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="config override for every cell; '<stage>.key=v' for one stage, 'key=v' for "
                             "every stage that has the key, '+key=v' adds a key (repeatable)")


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

    p = sub.add_parser("ui", help="serve the MLflow UI on the tracking store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    return parser


def _load(args):
    return load_sweep(args.experiment, root=".", overrides=args.overrides)


def _metric_text(row):
    return f"{row.metric}={row.value:.4g}" if row.metric and row.value is not None else "-"


def _table(rows, indent="  "):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(v.ljust(w) for v, w in zip(row, widths))).rstrip() for row in rows]


def _print_rows(rows):
    """One cell's stages (the single-experiment view: each line starts with the stage name)."""
    table = [("stage", "type", "state", "job id", "attempt", "run id", "key metric")]
    table += [(r.stage, r.type or "-", r.status, r.job_id or "-", str(r.attempt or "-"), r.run_id or "-",
               _metric_text(r)) for r in rows]
    print("\n".join(_table(_scheduler_column(table, rows))))


def _print_sweep(statuses):
    """Cells × stages of a sweep; the cell's id and matrix point on its first stage's line."""
    table = [("cell", "params", "stage", "job id", "state", "attempt", "key metric")]
    for st in statuses:
        for i, r in enumerate(st.rows):
            first = i == 0
            table.append((st.cell.cell_id[:8] if first else "", st.cell.label if first else "", r.stage,
                          r.job_id or "-", r.status, str(r.attempt or "-"), _metric_text(r)))
    print("\n".join(_table(_scheduler_column(table, [r for st in statuses for r in st.rows]))))


def _scheduler_column(table, rows):
    """A last column with the scheduler's view (SLURM state, reason, why) when a backend gave one."""
    if not any(getattr(r, "scheduler", "") for r in rows):
        return table
    return [table[0] + ("scheduler",)] + [t + (getattr(r, "scheduler", "") or "-",) for t, r in zip(table[1:], rows)]


def _counts(statuses):
    counts = {}
    for st in statuses:
        counts[st.status] = counts.get(st.status, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


# -- plan ---------------------------------------------------------------------------------------
def cmd_plan(args):
    backend = get_backend(args.backend)
    sweep = _load(args)
    for cell in sweep.cells:
        assign_outputs(cell)  # placeholder run ids: nothing exists yet
    text = format_sweep_plan(sweep)
    files = {}
    if args.out:
        for cell in sweep.cells:
            for rel, content in backend.render(Plan(cell, None)).items():
                if sweep.is_matrix and not rel.startswith(OUTPUT_ROOT + "/"):
                    head, tail = posixpath.split(rel)  # one per cell: local/<cell>/commands.sh
                    rel = posixpath.join(head, names.file_name(cell.cell_id), tail)
                files[rel] = content
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
def check_cells_data(cells):
    """The local backend's pre-flight: every stage's dataset is here (each distinct one checked once)."""
    from hirl_core.data import check_data

    seen = set()
    for cell in cells:
        for stage in cell.stages:
            data = stage.config.get("data")
            if not isinstance(data, dict):
                continue
            splits = ("train",) if stage.type == "pretrain" else ("train", "val")
            key = (json.dumps(data, sort_keys=True, default=str), splits)
            if key in seen:
                continue
            seen.add(key)
            try:
                check_data(data, splits=splits)
            except ConfigError as exc:
                raise ConfigError(f"stage {stage.name!r}: {exc}") from None


def cmd_submit(args):
    from . import lineage

    backend = get_backend(args.backend)
    sweep = _load(args)
    if backend.name == "local":
        check_cells_data(sweep.cells)
    uri = lineage.tracking_uri()
    for cell in sweep.cells:  # preflight: backend settings, before creating runs
        backend.render(Plan(assign_outputs(cell), None, uri))
    if hasattr(backend, "preflight"):  # what only a real submission needs (SLURM: an image digest, sbatch)
        backend.preflight([Plan(cell, None, uri) for cell in sweep.cells])
    cells = sweep.cells
    if sweep.is_matrix:
        print(f"experiment {sweep.name}, sweep {sweep.sweep_id}: {len(cells)} cells, "
              f"{sum(len(c.stages) for c in cells)} stages on {backend.name}", flush=True)
    else:
        print(f"experiment {sweep.name}, cell {cells[0].cell_id}: {len(cells[0].stages)} stages on {backend.name}",
              flush=True)
    ref = lineage.SweepRef(sweep.sweep_id, lineage.ensure_sweep_run(sweep, backend, uri) if sweep.is_matrix else "")
    if ref.run_id:
        lineage.set_run_status(ref.run_id, "RUNNING", uri)
    # Every cell's runs exist before anything runs: the UI shows the whole sweep, cancel can reach it.
    all_runs = [lineage.ensure_chain(cell, backend, force=args.force, uri=uri, sweep=ref) for cell in cells]
    if sweep.is_matrix and not args.force and all(r.status == "FINISHED" for runs in all_runs for r in runs.values()):
        print(f"nothing new to run: all {len(cells)} cells are finished (FORCE=1 / --force reruns them)")
    rc = 0
    # A backend that queues work (SLURM) takes a sweep at once: same-shape stages become one job array.
    batched = (backend.submit_many([Plan(c, r, uri, args.force) for c, r in zip(cells, all_runs)])
               if sweep.is_matrix and hasattr(backend, "submit_many") else None)
    for i, (cell, runs) in enumerate(zip(cells, all_runs), 1):
        if sweep.is_matrix and batched is None:
            print(f"\n== cell {i}/{len(cells)} {cell.cell_id[:8]}: {cell.label}", flush=True)
        result = batched[i - 1] if batched is not None else backend.submit(Plan(cell, runs, uri, args.force))
        lineage.end_chain(sweep.name, cell.cell_id, uri=uri)
        if result.returncode == INTERRUPTED_RC:
            rc = INTERRUPTED_RC
            break
        rc = rc or result.returncode
    if not sweep.is_matrix:
        cell = cells[0]
        chain = lineage.find_chain(sweep.name, cell.cell_id, uri=uri)
        print(f"\nchain {sweep.name}-{cell.cell_id[:8]}: {chain.info.status if chain else '-'}")
        rows = lineage.chain_status(sweep.name, cell.cell_id, cell.names, uri=uri)
        _print_rows(lineage.sweep_status(sweep.name, [cell], uri=uri)[0].rows)
        print(_summary_line(rows, uri))
        return rc
    statuses = lineage.sweep_status(sweep.name, cells, uri=uri)
    state = lineage.end_sweep(ref.run_id, [st.status for st in statuses], uri)
    print(f"\nsweep {sweep.name}-{sweep.sweep_id[:8]}: {state} ({_counts(statuses)})")
    _print_sweep(statuses)
    print(f"table: hirl report {args.experiment} · open the MLflow UI: make ui  (tracking: {uri})")
    return rc


def _summary_line(rows, uri):
    """One closing line: KNN of the pre-trained vs the untrained backbone, and where to look."""
    from . import lineage

    ui = f"open the MLflow UI: make ui  (tracking: {uri})"
    knn = [r for r in rows if r.type == "knn" and r.run_id and r.status == "FINISHED"]
    if not knn:
        return ui
    metrics = lineage.client(uri).get_run(knn[0].run_id).data.metrics
    ours, base = metrics.get("knn_top1_k20"), metrics.get("knn_top1_k20_untrained")
    if ours is None or base is None:
        return ui
    return (f"KNN top-1 (k=20): pre-trained {100 * ours:.2f} %, untrained {100 * base:.2f} % "
            f"({100 * (ours - base):+.2f}) · {ui}")


# -- status -------------------------------------------------------------------------------------
def _settled(statuses):
    """True when nothing will change without a new submit: no stage runs, none waits on a live upstream."""
    for st in statuses:
        state = {r.stage: r.status for r in st.rows}
        for stage, r in zip(st.cell.stages, st.rows):
            if r.status == "RUNNING":
                return False
            if r.status == "SCHEDULED" and st.chain is not None:
                up = state.get(stage.upstream) if stage.upstream else None
                if up is None or up in ("FINISHED", "RUNNING", "SCHEDULED"):
                    return False
    return True


def cmd_status(args):
    from . import lineage

    sweep = _load(args)
    cells = sweep.select(args.cell)
    uri = lineage.tracking_uri()
    interactive = sys.stdout.isatty()
    try:
        while True:
            statuses = _with_scheduler_states(sweep, lineage.sweep_status(sweep.name, cells, uri), uri)
            if args.watch and interactive:
                sys.stdout.write("\033[H\033[2J")
            if args.watch:
                print(time.strftime("%H:%M:%S"), f"(every {args.watch:g} s, Ctrl-C to stop)")
            _show_status(sweep, statuses, args)
            sys.stdout.flush()
            if not args.watch or _settled(statuses):
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _with_scheduler_states(sweep, statuses, uri):
    """Merge a queueing backend's states (SLURM: squeue/sacct) into the rows as ``.scheduler``; the
    backend also settles MLflow states no job could set (e.g. evaluations cancelled by a dependency)."""
    from . import lineage

    merged, touched = {}, []
    for st in statuses:
        name = st.chain.data.tags.get("hirl.backend", "local") if st.chain is not None else "local"
        if name == "local":
            continue
        handles = [_handle(st.cell, r) for r in st.rows if r.run_id]
        merged[st.cell.cell_id] = get_backend(name).status(handles)
        touched.append(st.cell)
    if not touched:
        return statuses
    for cell in touched:
        lineage.end_chain(sweep.name, cell.cell_id, uri=uri)
    fresh = {st.cell.cell_id: st for st in lineage.sweep_status(sweep.name, touched, uri)}
    out = [fresh.get(st.cell.cell_id, st) for st in statuses]
    for st in out:
        for r in st.rows:
            r.scheduler = merged.get(st.cell.cell_id, {}).get(r.stage, "")
    return out


def _show_status(sweep, statuses, args):
    if not sweep.is_matrix:
        cell, st = sweep.cells[0], statuses[0]
        if st.chain is None:
            print(f"experiment {sweep.name}, cell {cell.cell_id}: no runs yet (hirl submit {args.experiment})")
            return
        print(f"experiment {sweep.name}, cell {cell.cell_id}: chain run {st.chain.info.run_id} {st.status}")
        _print_rows(st.rows)
        return
    if all(st.chain is None for st in statuses):
        print(f"experiment {sweep.name}, sweep {sweep.sweep_id}: no runs yet (hirl submit {args.experiment})")
        return
    print(f"experiment {sweep.name}, sweep {sweep.sweep_id}: {len(statuses)} cells ({_counts(statuses)})")
    _print_sweep(statuses)


# -- logs / cancel / retry ----------------------------------------------------------------------
def _stage_names(cells):
    out = []
    for cell in cells:
        out += [s.name for s in cell.stages if s.name not in out]
    return out


def _check_stage(name, cells):
    known = _stage_names(cells)
    if name and name not in known:
        raise SpecError(f"unknown stage {name!r}{_closest(name, known)}; stages: {', '.join(known)}")


def _downstream(cell, roots):
    """``roots`` and every stage after them in the cell."""
    chosen = set(roots)
    for stage in cell.stages:  # topological order
        if stage.upstream in chosen:
            chosen.add(stage.name)
    return chosen


def _backend_for(args, status):
    name = args.backend or (status.chain.data.tags.get("hirl.backend") if status.chain is not None else "") or "local"
    return get_backend(name)


def _handle(cell, row):
    log_path = os.path.join(cell.root, row.output_dir, "log.txt") if row.output_dir else ""
    return Handle(row.stage, row.run_id, row.status, log_path)


def cmd_logs(args):
    from . import lineage

    sweep = _load(args)
    cells = sweep.select(args.cell)
    if len(cells) > 1:
        listing = "; ".join(f"{c.cell_id[:8]} {c.label}" for c in cells[:6])
        raise SpecError(f"{len(cells)} cells match: pick one with --cell (id prefix or key=value): {listing}")
    cell = cells[0]
    _check_stage(args.stage, cells)
    stage = args.stage or cell.stages[0].name
    uri = lineage.tracking_uri()
    st = lineage.sweep_status(sweep.name, [cell], uri)[0]
    row = next(r for r in st.rows if r.stage == stage)
    if not row.run_id or not row.output_dir:
        print(f"stage {stage} of cell {cell.cell_id[:8]} has no run yet (hirl submit {args.experiment})",
              file=sys.stderr)
        return 1
    backend = _backend_for(args, st)
    handle = _handle(cell, row)
    shown = backend.logs(handle, args.rank)
    sys.stdout.write(shown)
    sys.stdout.flush()
    try:
        while args.follow:
            status = lineage.run_status(row.run_id, uri)
            time.sleep(1.0)
            text = backend.logs(handle, args.rank)
            if len(text) > len(shown):
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
            shown = text
            if status in DONE:
                break
    except KeyboardInterrupt:
        pass
    return 0


def cmd_cancel(args):
    from . import lineage

    sweep = _load(args)
    cells = sweep.select(args.cell)
    _check_stage(args.stage, cells)
    uri = lineage.tracking_uri()
    statuses = lineage.sweep_status(sweep.name, cells, uri)
    groups = {}  # backend name -> (backend, [(cell, handle)]): one cancel call each, so every
    for st in statuses:  # scheduled stage of the sweep is marked before any process is stopped
        if st.chain is None:
            continue
        chosen = _downstream(st.cell, [args.stage]) if args.stage else set(st.cell.names)
        for r in st.rows:
            if r.stage in chosen and r.run_id and r.status in ("SCHEDULED", "RUNNING"):
                backend = _backend_for(args, st)
                groups.setdefault(backend.name, (backend, []))[1].append((st.cell, _handle(st.cell, r)))
    total, touched = 0, set()
    for backend, pairs in groups.values():
        acted = {id(h) for h in backend.cancel([h for _, h in pairs], uri)}
        for cell, h in pairs:
            if id(h) in acted:
                print(f"cancelled {cell.cell_id[:8]} {h.stage} (run {h.run_id}, was {h.state})")
                total += 1
                touched.add(cell.cell_id)
    for cell_id in touched:
        lineage.end_chain(sweep.name, cell_id, uri=uri)
    if sweep.is_matrix:
        run = lineage.find_sweep_run(sweep.name, sweep.sweep_id, uri)
        if run is not None:
            lineage.end_sweep(run.info.run_id, [s.status for s in lineage.sweep_status(sweep.name, sweep.cells, uri)],
                              uri)
    scope = f"stage {args.stage}" if args.stage else ("sweep" if sweep.is_matrix and not args.cell else "cell")
    if not total:
        print(f"nothing to cancel in {sweep.name} ({scope}): no stage is scheduled or running")
    else:
        print(f"cancelled {total} stages in {len(touched)} cells of {sweep.name} ({scope})")
    return 0


def cmd_retry(args):
    from . import lineage

    sweep = _load(args)
    cells = sweep.select(args.cell)
    _check_stage(args.stage, cells)
    uri = lineage.tracking_uri()
    statuses = lineage.sweep_status(sweep.name, cells, uri)
    todo = []
    for st in statuses:
        failed = [r.stage for r in st.rows if r.status in ("FAILED", "KILLED")
                  and (not args.stage or r.stage == args.stage)]
        if failed and st.chain is not None:
            todo.append((st, _downstream(st.cell, failed)))
    if not todo:
        print(f"nothing to retry in {sweep.name}: no FAILED or KILLED stage"
              + (f" named {args.stage}" if args.stage else ""))
        return 0
    backends = {id(st): _backend_for(args, st) for st, _ in todo}
    if any(b.name == "local" for b in backends.values()):
        check_cells_data([st.cell for st, _ in todo])
    rc = 0
    for st, only in todo:
        runs = lineage.existing_runs(st.cell, uri)
        if runs is None:
            print(f"skip cell {st.cell.cell_id[:8]}: some stages have no run (hirl submit {args.experiment})")
            continue
        print(f"\n== retry cell {st.cell.cell_id[:8]} {st.cell.label}".rstrip() + f": {', '.join(sorted(only))}",
              flush=True)
        result = backends[id(st)].submit(Plan(st.cell, runs, uri, False, only=only))
        lineage.end_chain(sweep.name, st.cell.cell_id, uri=uri)
        if result.returncode == INTERRUPTED_RC:
            return INTERRUPTED_RC
        rc = rc or result.returncode
    statuses = lineage.sweep_status(sweep.name, cells, uri)
    if sweep.is_matrix:
        run = lineage.find_sweep_run(sweep.name, sweep.sweep_id, uri)
        if run is not None:
            lineage.end_sweep(run.info.run_id, [s.status for s in lineage.sweep_status(sweep.name, sweep.cells, uri)],
                              uri)
        _print_sweep(statuses)
    else:
        _print_rows(statuses[0].rows)
    return rc


# -- report -------------------------------------------------------------------------------------
def cmd_report(args):
    from . import lineage, report

    sweep = _load(args)
    uri = lineage.tracking_uri()
    statuses = lineage.sweep_status(sweep.name, sweep.cells, uri)
    if all(st.chain is None for st in statuses):
        print(f"no runs yet for {sweep.name} (hirl submit {args.experiment})", file=sys.stderr)
        return 1
    table = report.build(sweep, statuses)
    out = args.out or os.path.join(OUTPUT_ROOT, sweep.name, f"report-{sweep.sweep_id[:8]}")
    paths = report.write(table, out, names.file_name(sweep.name))
    backend = next((st.chain.data.tags.get("hirl.backend", "local") for st in statuses if st.chain is not None), "local")
    run_id = report.log_to_mlflow(sweep, table, paths, uri, backend)
    print(table.markdown, end="")
    print(f"\nwrote {', '.join(paths.values())}; logged to sweep run {run_id} (artifacts: report/)")
    return 0


def cmd_ui(args):
    from .lineage import tracking_uri

    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
            "--host", args.host, "--port", str(args.port)]
    print(" ".join(argv), flush=True)
    os.execv(sys.executable, argv)  # replaces this process; Ctrl-C goes straight to the server


COMMANDS = {"plan": cmd_plan, "submit": cmd_submit, "status": cmd_status, "logs": cmd_logs, "cancel": cmd_cancel,
            "retry": cmd_retry, "report": cmd_report, "ui": cmd_ui, "image": image.cmd_image}


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except INPUT_ERRORS as exc:
        print(f"hirl: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return USAGE_RC
    except KeyboardInterrupt:
        print("hirl: interrupted", file=sys.stderr)
        return INTERRUPTED_RC
