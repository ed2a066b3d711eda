"""The ``hirl`` verbs on runs that exist: status (with a queueing backend's view), logs, cancel, retry,
report and export. Each acts on a whole sweep, or on the cells ``--cell`` selects."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from hirl_core.config import closest

from . import names
from .backends import Plan, get_backend
from .cli_common import (DONE, INTERRUPTED_RC, counts, load, print_rows, print_sweep,
                         runs_end_on_failure)
from .dag import OUTPUT_ROOT
from .spec import SpecError


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

    sweep = load(args)
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

    merged, touched, backends = {}, [], {}
    for st in statuses:
        name = st.chain.data.tags.get("hirl.backend", "local") if st.chain is not None else "local"
        backend = backends.setdefault(name, get_backend(name))
        views = backend.status([backend.handle(st.cell, r) for r in st.rows if r.run_id], uri)
        if not views:  # nothing beyond MLflow's states (local): nothing to merge or settle
            continue
        merged[st.cell.cell_id] = views
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
        print_rows(st.rows)
        return
    if all(st.chain is None for st in statuses):
        print(f"experiment {sweep.name}, sweep {sweep.sweep_id}: no runs yet (hirl submit {args.experiment})")
        return
    print(f"experiment {sweep.name}, sweep {sweep.sweep_id}: {len(statuses)} cells ({counts(statuses)})")
    print_sweep(statuses)


# -- logs / cancel / retry ----------------------------------------------------------------------
def _stage_names(cells):
    out = []
    for cell in cells:
        out += [s.name for s in cell.stages if s.name not in out]
    return out


def _check_stage(name, cells):
    known = _stage_names(cells)
    if name and name not in known:
        raise SpecError(f"unknown stage {name!r}{closest(name, known)}; stages: {', '.join(known)}")


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


def _log_text(backend, handle, rank, uri):
    """The backend's log of the stage; when it has none (pods or nodes gone, a log file deleted), the
    tail the stage kept as its run's artifact (rank 0's)."""
    from .backends.common import log_artifact

    text = backend.logs(handle, rank)
    if text or rank:
        return text
    return log_artifact(handle.run_id, uri)


def _one_cell(args):
    """(sweep, the one cell ``--cell`` picks) for a command about one stage; more than one is refused."""
    sweep = load(args)
    cells = sweep.select(args.cell)
    if len(cells) > 1:
        listing = "; ".join(f"{c.cell_id[:8]} {c.label}" for c in cells[:6])
        raise SpecError(f"{len(cells)} cells match: pick one with --cell (id prefix or key=value): {listing}")
    _check_stage(args.stage, cells)
    return sweep, cells[0]


def cmd_logs(args):
    from . import lineage

    sweep, cell = _one_cell(args)
    stage = args.stage or cell.stages[0].name
    uri = lineage.tracking_uri()
    st = lineage.sweep_status(sweep.name, [cell], uri)[0]
    row = next(r for r in st.rows if r.stage == stage)
    if not row.run_id or not row.output_dir:
        print(f"stage {stage} of cell {cell.cell_id[:8]} has no run yet (hirl submit {args.experiment})",
              file=sys.stderr)
        return 1
    backend = _backend_for(args, st)
    handle = backend.handle(cell, row)
    shown = _log_text(backend, handle, args.rank, uri)
    if not shown and not row.attempt:  # an empty screen would look like a broken `logs`
        print(f"stage {stage} of cell {cell.cell_id[:8]} has not started (run {row.run_id} is {row.status}): "
              f"no log yet", file=sys.stderr)
        if not args.follow or row.status not in ("SCHEDULED", "RUNNING"):
            return 1
    sys.stdout.write(shown)
    sys.stdout.flush()
    try:
        while args.follow:
            status = lineage.run_status(row.run_id, uri)
            time.sleep(1.0)
            text = _log_text(backend, handle, args.rank, uri)
            if len(text) > len(shown):
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
            shown = text
            if status in DONE:
                break
    except KeyboardInterrupt:
        pass
    return 0


def _selected(args):
    """The spec, the cells --cell selects (with --stage checked), the tracking URI and their statuses."""
    from . import lineage

    sweep = load(args)
    cells = sweep.select(args.cell)
    _check_stage(args.stage, cells)
    uri = lineage.tracking_uri()
    # retry and cancel read the runs first: a dead server answers in seconds, in one line naming the URI,
    # before anything is queued or stopped (as submit's probe), not after MLflow's minutes of retries
    lineage.check_tracking(uri)
    return sweep, cells, uri, lineage.sweep_status(sweep.name, cells, uri)


def cmd_cancel(args):
    from . import lineage

    sweep, cells, uri, statuses = _selected(args)
    groups = {}  # backend name -> (backend, [(cell, handle)]): one cancel call each, so every
    for st in statuses:  # scheduled stage of the sweep is marked before any process is stopped
        if st.chain is None:
            continue
        chosen = _downstream(st.cell, [args.stage]) if args.stage else set(st.cell.names)
        for r in st.rows:
            if r.stage in chosen and r.run_id and r.status in ("SCHEDULED", "RUNNING"):
                backend = _backend_for(args, st)
                groups.setdefault(backend.name, (backend, []))[1].append((st.cell, backend.handle(st.cell, r)))
    total, touched = 0, set()
    for backend, pairs in groups.values():
        acted = {id(h) for h in backend.cancel([h for _, h in pairs], uri)}
        for cell, h in pairs:
            if id(h) in acted:
                print(f"cancelled {cell.cell_id[:8]} {h.stage} (run {h.run_id}, was {h.state})")
                total += 1
                touched.add(cell.cell_id)
    for cell_id in touched:
        lineage.end_chain(sweep.name, cell_id, uri=uri, close_sweep=False)  # the sweep: below
    lineage.settle_sweep(sweep, uri)
    scope = f"stage {args.stage}" if args.stage else ("sweep" if sweep.is_matrix and not args.cell else "cell")
    if not total:
        print(f"nothing to cancel in {sweep.name} ({scope}): no stage is scheduled or running")
    else:
        print(f"cancelled {total} stages in {len(touched)} cells of {sweep.name} ({scope})")
    return 0


def cmd_retry(args):
    from . import lineage

    sweep, cells, uri, statuses = _selected(args)
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
    existing = {id(st): lineage.existing_runs(st.cell, uri) for st, _ in todo}
    for backend in {b.name: b for b in backends.values()}.values():  # data here, the cluster answers: before anything
        backend.preflight([Plan(st.cell, None, uri) for st, _ in todo
                           if backends[id(st)].name == backend.name and existing[id(st)] is not None])
    rc = 0
    for st, only in todo:
        runs = existing[id(st)]
        if runs is None:
            print(f"skip cell {st.cell.cell_id[:8]}: some stages have no run (hirl submit {args.experiment})")
            continue
        print(f"\n== retry cell {st.cell.cell_id[:8]} {st.cell.label}".rstrip() + f": {', '.join(sorted(only))}",
              flush=True)
        with runs_end_on_failure(sweep, [st.cell], backends[id(st)], uri):
            result = backends[id(st)].submit(Plan(st.cell, runs, uri, False, only=only))
        lineage.end_chain(sweep.name, st.cell.cell_id, uri=uri, close_sweep=False)  # the sweep: below
        if result.returncode == INTERRUPTED_RC:
            return INTERRUPTED_RC
        rc = rc or result.returncode
    statuses = lineage.sweep_status(sweep.name, cells, uri)
    lineage.settle_sweep(sweep, uri, statuses if len(cells) == len(sweep.cells) else None)
    if sweep.is_matrix:
        print_sweep(statuses)
    else:
        print_rows(statuses[0].rows)
    return rc


# -- report -------------------------------------------------------------------------------------
def cmd_report(args):
    from . import lineage, report

    sweep = load(args)
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


# -- export -------------------------------------------------------------------------------------
EXPORT_FORMATS = ("torchvision", "timm", "detectron2")


def add_export_parser(sub):
    p = sub.add_parser("export", help="write a pre-trained backbone as a torchvision / timm state dict or a "
                                      "detectron2 pickle (python -m hirl_core.export)")
    p.add_argument("checkpoint", nargs="?", default="", help="a checkpoint file; or --experiment for a "
                                                             "finished pre-training's backbone.pth")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--arch", default="", help="backbone arch (default: from the checkpoint)")
    p.add_argument("--experiment", default="", metavar="EXP", help="experiment or sweep whose pre-training to export")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="the overrides it was submitted with (they decide the cell)")
    p.add_argument("--cell", default="", help="the cell (id prefix or key=value), when EXP is a sweep")
    p.add_argument("--stage", default="", help="the pre-training stage (default: the cell's first pretrain)")


def _finished_backbone(args):
    """The backbone.pth of the chosen cell's FINISHED pre-training stage, found through MLflow."""
    from . import lineage

    sweep, cell = _one_cell(args)
    pretrains = [s.name for s in cell.stages if s.type == "pretrain"]
    stage = args.stage or (pretrains[0] if pretrains else "")
    if stage not in pretrains:
        raise SpecError(f"stage {stage or '(none)'!r} is not a pretrain stage; export takes a pre-training's "
                        f"backbone: {', '.join(pretrains) or 'this cell has none'}")
    row = next(r for r in lineage.sweep_status(sweep.name, [cell], lineage.tracking_uri())[0].rows
               if r.stage == stage)
    if row.status != "FINISHED":
        raise SpecError(f"stage {stage} of cell {cell.cell_id[:8]} is {row.status if row.run_id else 'not submitted'}"
                        f", not FINISHED: its backbone.pth is written at its end (hirl status {args.experiment})")
    path = os.path.join(row.output_dir, "backbone.pth")
    if not os.path.isfile(path):
        raise SpecError(f"stage {stage} of cell {cell.cell_id[:8]} finished, but {path} is not here (run hirl "
                        f"export where its outputs are, or pass the file)")
    return path


def cmd_export(args):
    if bool(args.checkpoint) == bool(args.experiment):
        raise SpecError("hirl export takes a checkpoint file or --experiment EXP [--cell C] [--stage S], "
                        f"not {'both' if args.checkpoint else 'neither'}")
    path = args.checkpoint or _finished_backbone(args)
    argv = [sys.executable, "-m", "hirl_core.export", path, "--format", args.format, "-o", args.output]
    if args.arch:
        argv += ["--arch", args.arch]
    return subprocess.run(argv).returncode  # its one-line errors and exit code 2 pass through
