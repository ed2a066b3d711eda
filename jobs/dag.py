"""An experiment → one cell: its stages in run order, wired together, with stable hashes.

The cell id is a content hash of everything that determines the results (the
experiment name, each stage's type and resolved config, the edges), so
resubmitting an identical cell finds its runs and skips finished work. Output
directories and checkpoint paths are left out of the hash: they derive from run
ids, which only exist once lineage has created the runs (``assign_outputs``).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field

from hirl_core.config import MISSING, Config, get_dotted, plain_tree, set_dotted

from .spec import EVAL_TYPES, Experiment, SpecError

OUTPUT_ROOT = "outputs"
PLACEHOLDER_RUN_ID = "<run-id>"  # shown by dry runs, before any run exists
# Keys the DAG sets in an eval config from its upstream pretrain.
WIRED_KEYS = ("pretrained", "backbone", "seed")


@dataclass
class Stage:
    name: str
    type: str
    config: Config              # resolved and wired; output_dir/pretrained set by assign_outputs
    upstream: str | None
    config_hash: str            # this stage's config and its upstream's hash
    config_path: str = ""       # the spec's config file, for display
    output_dir: str | None = None  # relative to the root: outputs/<exp>/<cell>/<stage>-<run8>
    resources: dict = field(default_factory=dict)  # the stage's own requests (over the cell's)

    @property
    def wired(self):
        """True when the DAG feeds this stage its upstream's checkpoint."""
        return self.upstream is not None and self.type in EVAL_TYPES


@dataclass
class Cell:
    experiment: str
    cell_id: str
    stages: list                # Stage, topological order (spec order among ties)
    edges: list                 # (upstream, downstream) pairs
    root: str = "."
    resources: dict = field(default_factory=dict)
    overrides: tuple = ()
    description: str = ""
    planned: list = field(default_factory=list)   # spec.StageSpec whose type cannot run yet
    params: dict = field(default_factory=dict)    # matrix axis -> value ({} outside a sweep)
    method: str = ""            # the experiment row a sweep's `method` axis picked ("" if none)
    image: str = ""
    display_name: str = ""
    baseline: str = ""

    @property
    def label(self):
        """The cell's matrix point as text, e.g. ``method=mocov2 seed=0`` ("" outside a sweep)."""
        return " ".join(f"{k}={format_value(v)}" for k, v in self.params.items())

    def stage(self, name):
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def names(self):
        return [s.name for s in self.stages]


def format_value(value):
    """A matrix value as the override grammar would write it (lists in brackets, no spaces)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _topological(specs):
    order, placed = [], set()
    pending = list(specs.values())
    while pending:  # spec validation rules out cycles, so each pass places one
        ready = next(s for s in pending if s.after is None or s.after in placed)
        order.append(ready)
        placed.add(ready.name)
        pending.remove(ready)
    return order


def _require(cfg, key, stage_name, why):
    value = get_dotted(cfg, key, MISSING)
    if value is MISSING:
        raise SpecError(f"stage {stage_name!r}: its config has no key {key!r}, needed {why}")
    return value


def digest(data):
    """``hirl_core.config.config_hash`` of plain data, minus its defensive deep copy (a sweep of
    1,000 cells hashes 3,000 payloads). The two are tested to agree."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def compile_cell(experiment: Experiment) -> Cell:
    stages, hashes, payloads = [], {}, {}
    for spec in _topological(experiment.stages):
        data = plain_tree(spec.config)  # a deep copy; stage configs may be Config or plain dicts
        wired = spec.after is not None and spec.type in EVAL_TYPES
        if wired:
            upstream = experiment.stages[spec.after].config
            for key in WIRED_KEYS:
                _require(data, key, spec.name, f"to take it from upstream {spec.after!r}")
            data["backbone"] = plain_tree(_require(upstream, "backbone", spec.after, f"by downstream {spec.name!r}"))
            data["seed"] = plain_tree(_require(upstream, "seed", spec.after, f"by downstream {spec.name!r}"))
        _require(data, "output_dir", spec.name, "to place its outputs")
        # Output paths derive from run ids; a wired checkpoint path follows from the upstream
        # (a standalone eval's checkpoint is an input, so it stays in).
        hashed = {k: v for k, v in data.items() if k != "output_dir" and not (wired and k == "pretrained")}
        payloads[spec.name] = {"type": spec.type, "config": hashed}
        hashes[spec.name] = digest({**payloads[spec.name], "upstream": hashes.get(spec.after)})
        stages.append(Stage(name=spec.name, type=spec.type, config=Config(data), upstream=spec.after,
                            config_hash=hashes[spec.name], config_path=spec.config_path,
                            resources=dict(spec.resources)))
    edges = sorted((s.upstream, s.name) for s in stages if s.upstream is not None)
    cell_id = digest({
        "experiment": experiment.name,
        "stages": {s.name: payloads[s.name] for s in stages},
        "edges": [list(e) for e in edges],
    })
    return Cell(experiment=experiment.name, cell_id=cell_id, stages=stages, edges=edges,
                root=experiment.root, resources=dict(experiment.resources),
                overrides=tuple(experiment.overrides), description=experiment.description,
                planned=list(experiment.planned.values()), image=experiment.image,
                display_name=experiment.display_name, baseline=experiment.baseline)


def output_dir_for(cell, stage_name, run_id):
    return posixpath.join(OUTPUT_ROOT, cell.experiment, cell.cell_id, f"{stage_name}-{run_id[:8]}")


def assign_outputs(cell, run_ids=None, elsewhere=None):
    """Fill in output dirs (and wired checkpoint paths) from ``run_ids``; placeholders if None.
    ``elsewhere``: {stage: output dir} of stages whose finished work another chain did (lineage reuses
    it), so their downstream reads that chain's outputs."""
    run_ids, elsewhere = run_ids or {}, elsewhere or {}
    for stage in cell.stages:  # topological, so an upstream's dir is known first
        stage.output_dir = (elsewhere.get(stage.name) or
                            output_dir_for(cell, stage.name, run_ids.get(stage.name, PLACEHOLDER_RUN_ID)))
        set_dotted(stage.config, "output_dir", stage.output_dir)
        if stage.wired:
            upstream = cell.stage(stage.upstream)
            set_dotted(stage.config, "pretrained", posixpath.join(upstream.output_dir, "backbone.pth"))
    return cell


def format_plan(cell) -> str:
    """A deterministic, human-readable plan (no timestamps, no absolute paths)."""
    lines = [f"experiment: {cell.experiment}", f"cell: {cell.cell_id}"]
    if cell.description:
        lines.append(f"description: {cell.description}")
    if cell.overrides:
        lines.append(f"overrides: {' '.join(cell.overrides)}")
    lines.append(f"stages ({len(cell.stages)}, in run order):")
    rows = [("#", "stage", "type", "after", "hash", "config")]
    for i, s in enumerate(cell.stages, 1):
        rows.append((str(i), s.name, s.type, s.upstream or "-", s.config_hash, s.config_path))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
    lines += wiring_lines(cell)
    lines += planned_lines(cell.planned)
    return "\n".join(lines) + "\n"


def wiring_lines(cell):
    return [f"  {s.name} <- {s.upstream}: pretrained = {s.upstream} output/backbone.pth; "
            f"backbone, seed = {s.upstream}'s" for s in cell.stages if s.wired]


def planned_lines(planned):
    """Stages kept in the spec whose type cannot run yet ("" when there are none)."""
    if not planned:
        return []
    lines = [f"planned ({len(planned)}; each joins the DAG once `python -m hirl_core <type>` runs it):"]
    rows = [(p.name, p.type, p.after or "-", p.config_path) for p in planned]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for row in rows:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
    return lines
