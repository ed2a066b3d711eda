"""``hirl report``: the seed README's model-zoo table, generated from MLflow for a sweep.

One row per cell: Method, the other matrix values (e.g. seed), Arch., Epochs, Batch Size
(per-GPU batch × processes, as the seed states it), then one column per evaluation stage
the cells declare, with the key metric of that stage's latest run, in percent. What a column
is called, where it stands and which metric fills it come from the stage registry
(``hirl_core.stages``): the type's ``column`` and ``column_order``; a semi-supervised stage's
title carries its labelled fraction ("Semi 1 %"), a transfer stage's its dataset
("Places205"); several stages of one type in a cell each get a column. A row whose experiment
names a ``baseline`` gets its difference to the baseline's row at the same other
matrix values ("57.56 (+1.82)"). Written as Markdown, CSV and a bar chart (PNG), and
logged as artifacts of the sweep run (created if the sweep has none yet).

matplotlib (and the numpy it pulls in) is imported here only, inside ``chart``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field

from hirl_core.config import MISSING as NOT_SET, Config, ConfigError, get_dotted, load_config
from hirl_core.stages import STAGE_TYPES

from . import resources
from .dag import format_value

_PERCENT_IN_NAME = re.compile(r"(\d+(?:\.\d+)?)\s*(?:percent|pct|%)")  # imagenet_1percent, semisup_10pct
_ARCH = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
         "vit_tiny": "ViT-T", "vit_small": "ViT-S", "vit_base": "ViT-B", "vit_large": "ViT-L"}
MISSING = "–"


@dataclass
class Table:
    columns: list                       # titles, in order
    rows: list                          # dict title -> cell text (Markdown)
    values: list                        # dict eval title -> float percent (or None), per row
    deltas: list                        # dict eval title -> float points vs the baseline (or None), per row
    params: list                        # the extra matrix columns (not Method)
    evals: list                         # the eval column titles present
    run_ids: list = field(default_factory=list)  # dict eval title -> stage run id, per row
    untrained: list = field(default_factory=list)  # dict eval title -> the untrained backbone's percent, per row
    markdown: str = ""
    csv: str = ""


def _stage_config(cell, stage):
    """A stage's resolved config; a planned stage has none yet, so its file as written (empty if absent)."""
    if not getattr(stage, "planned", False):
        return stage.config
    try:
        return load_config(os.path.join(cell.root, stage.config_path), stage.overrides)
    except (ConfigError, OSError):
        return Config()


def semisup_percent(config):
    """The labelled fraction of a semi-supervised stage in percent, as text ("1", "10", "0.5"), or "":
    a fixed list's (imagenet_1percent), which the stage reads before any fraction, else ``semisup.fraction``."""
    found = _PERCENT_IN_NAME.search(str(get_dotted(config, "semisup.list", "") or ""))
    if found:
        return f"{float(found.group(1)):g}"
    fraction = get_dotted(config, "semisup.fraction", NOT_SET)
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and fraction > 0:
        return f"{round(100 * fraction, 6):g}"
    return ""


def column_of(cell, stage):
    """(title, sort key) of the column a stage fills, or None when its type is not a table column."""
    kind = STAGE_TYPES.get(stage.type)
    if kind is None or not kind.column:
        return None
    config = _stage_config(cell, stage)
    title, within = kind.column, 0.0
    if stage.type == "semisup":
        percent = semisup_percent(config)
        title, within = (f"{title} {percent} %", float(percent)) if percent else (title, within)
    elif stage.type == "transfer" and str(get_dotted(config, "data.dataset", "")).lower() == "places205":
        title = "Places205"
    return title, (kind.column_order, within)


def cell_columns(cell):
    """[(title, sort key, stage name)] of a cell's evaluation stages (runnable and planned), in stage
    order; a title two stages of the cell share gets the later one's name: "KNN (knn_k10)"."""
    out, taken = [], set()
    for stage in list(cell.stages) + list(cell.planned):
        column = column_of(cell, stage)
        if column is None:
            continue
        title = column[0] if column[0] not in taken else f"{column[0]} ({stage.name})"
        taken.add(title)
        out.append((title, column[1], stage.name))
    return out


def arch_text(backbone):
    if not isinstance(backbone, dict):
        return MISSING
    arch = str(backbone.get("arch", ""))
    text = _ARCH.get(arch, arch or MISSING)
    if arch.startswith("vit_"):
        text += f"/{backbone.get('patch_size', 16)}"
    width = backbone.get("width")
    if arch.startswith("resnet") and width not in (None, 64):
        text += f" (width {width})"
    return text


def _pretrain(cell):
    return next((s for s in cell.stages if s.type == "pretrain"), None)


def _batch(cell, backend):
    pre = _pretrain(cell)
    if pre is None:
        return None
    per_process = pre.config.get("batch_size")
    if per_process is None and isinstance(pre.config.get("data"), dict):
        per_process = pre.config["data"].get("batch_size")
    if not isinstance(per_process, int) or isinstance(per_process, bool):
        return None
    merged = resources.merge(cell.resources, pre.resources)
    return per_process * resources.world_size(merged, backend)


def _fmt(value):
    return f"{value:.2f}" if value is not None else MISSING


def build(sweep, statuses):
    """The table for a sweep from its cells and their MLflow stage runs (lineage.sweep_status)."""
    cells = [st.cell for st in statuses]
    params = []
    for cell in cells:
        params += [k for k in cell.params if k != "method" and k not in params]
    stage_of, order = [], {}  # per cell: title -> stage name; title -> its place (first seen wins)
    for cell in cells:
        found = cell_columns(cell)
        stage_of.append({title: name for title, _, name in found})
        for title, key, _ in found:
            order.setdefault(title, (key, len(order)))
    evals = sorted(order, key=order.get)
    columns = ["Method", *params, "Arch.", "Epochs", "Batch Size", *evals]

    values, untrained, run_ids = [], [], []
    for st, titles in zip(statuses, stage_of):
        by_name = {r.stage: r for r in st.rows}
        vals, bases, ids = {}, {}, {}
        for title in evals:
            row = by_name.get(titles.get(title))
            vals[title] = bases[title] = None
            if row is not None and row.status == "FINISHED" and row.value is not None:
                vals[title] = 100.0 * row.value
                ids[title] = row.run_id
                kind = STAGE_TYPES.get(row.type)
                base = (row.metrics or {}).get(kind.untrained_metric) if kind and kind.untrained_metric else None
                bases[title] = 100.0 * base if base is not None else None
        values.append(vals)
        untrained.append(bases)
        run_ids.append(ids)

    def point(cell):
        return tuple((k, format_value(v)) for k, v in cell.params.items() if k != "method")

    index = {(c.method, point(c)): i for i, c in enumerate(cells)}
    deltas, rows = [], []
    for i, st in enumerate(statuses):
        cell = st.cell
        base = index.get((cell.baseline, point(cell))) if cell.baseline else None
        delta = {}
        for title in evals:
            ours, theirs = values[i][title], values[base][title] if base is not None else None
            delta[title] = ours - theirs if ours is not None and theirs is not None else None
        deltas.append(delta)
        backend = (st.chain.data.tags.get("hirl.backend") if st.chain is not None else "") or "local"
        pre = _pretrain(cell)
        batch = _batch(cell, backend)
        row = {"Method": cell.display_name or cell.method or sweep.name,
               "Arch.": arch_text(pre.config.get("backbone")) if pre else MISSING,
               "Epochs": str(pre.config.get("epochs", MISSING)) if pre else MISSING,
               "Batch Size": str(batch) if batch is not None else MISSING}
        for k in params:
            row[k] = format_value(cell.params[k]) if k in cell.params else MISSING
        for title in evals:
            text = _fmt(values[i][title])
            if delta[title] is not None:
                text += f" ({delta[title]:+.2f})"
            row[title] = text
        rows.append(row)
    table = Table(columns, rows, values, deltas, params, evals, run_ids, untrained)
    table.markdown = to_markdown(table, sweep)
    table.csv = to_csv(table)
    return table


def to_markdown(table, sweep):
    centered = {"Epochs", "Batch Size", *table.evals, *table.params}
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join(":------:" if c in centered else "---------------" for c in table.columns) + "|"
    body = ["| " + " | ".join(row[c].replace("|", "\\|") for c in table.columns) + " |" for row in table.rows]
    title = f"{sweep.name} (sweep {sweep.sweep_id})"
    note = ("Top-1 accuracy in % from each stage's latest finished MLflow run (KNN: k = 20; NMI: clustering, ×100); "
            "(±x): difference to the row's baseline. Batch Size = per-GPU batch × processes.")
    return "\n".join([f"# {title}", "", note, "", head, rule, *body]) + "\n"


def chain_rows(table):
    """Header, rule and one line per row, each number with the untrained backbone's beside it
    ("78.1 (untrained 75.6)"): what ``hirl submit`` of one chain prints last, to show what
    pre-training bought."""
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    lines = [head, rule]
    for row, vals, bases in zip(table.rows, table.values, table.untrained):
        cells = dict(row)
        for title in table.evals:
            text = f"{vals[title]:.1f}" if vals[title] is not None else MISSING
            if vals[title] is not None and bases[title] is not None:
                text += f" (untrained {bases[title]:.1f})"
            cells[title] = text
        lines.append("| " + " | ".join(cells[c].replace("|", "\\|") for c in table.columns) + " |")
    return lines


def to_csv(table):
    """Plain numbers: one column per evaluation and one for its delta (empty when unknown)."""
    out = io.StringIO()
    fields = ["Method", *table.params, "Arch.", "Epochs", "Batch Size"]
    for title in table.evals:
        fields += [title, f"{title} delta"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for row, vals, deltas in zip(table.rows, table.values, table.deltas):
        line = [row[c] for c in ["Method", *table.params, "Arch.", "Epochs", "Batch Size"]]
        for title in table.evals:
            line += [f"{vals[title]:.2f}" if vals[title] is not None else "",
                     f"{deltas[title]:+.2f}" if deltas[title] is not None else ""]
        writer.writerow(line)
    return out.getvalue()


def chart(table, path, title):
    """Grouped bars: one group per row, one bar per evaluation with a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [t for t in table.evals if any(v[t] is not None for v in table.values)] or table.evals[:1]
    labels = [" ".join([row["Method"]] + [f"{k}={row[k]}" for k in table.params]) for row in table.rows]
    n, m = len(labels), max(1, len(evals))
    width = 0.8 / m
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 4.5))
    for j, t in enumerate(evals):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(n)]
        ys = [v[t] if v[t] is not None else 0.0 for v in table.values]
        bars = ax.bar(xs, ys, width, label=t)
        for bar, v in zip(bars, table.values):
            if v[t] is not None:
                ax.annotate(f"{v[t]:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 %")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(table, out_dir, stem):
    os.makedirs(out_dir, exist_ok=True)
    paths = {"md": os.path.join(out_dir, f"{stem}.md"), "csv": os.path.join(out_dir, f"{stem}.csv"),
             "png": os.path.join(out_dir, f"{stem}.png")}
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(table.markdown)
    with open(paths["csv"], "w", encoding="utf-8", newline="") as f:
        f.write(table.csv)
    chart(table, paths["png"], stem)
    return paths


def log_to_mlflow(sweep, table, paths, uri, backend="local"):
    """Log the files under ``report/`` of the sweep run, the table as its note; the run id."""
    from . import lineage

    run_id = lineage.ensure_sweep_run(sweep, backend, uri)
    c = lineage.client(uri)
    for path in paths.values():
        c.log_artifact(run_id, path, "report")
    c.set_tag(run_id, "mlflow.note.content", table.markdown)
    return run_id


def log_at_sweep_end(sweep, statuses, uri, backend="local"):
    """When a sweep ends, its run gets the table and the chart (as ``hirl report`` would log them), so
    the UI holds the model-zoo table of every finished sweep; the run id."""
    import tempfile

    from . import names

    table = build(sweep, statuses)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write(table, tmp, names.file_name(sweep.name))
        return log_to_mlflow(sweep, table, paths, uri, backend)
