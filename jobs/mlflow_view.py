"""What the MLflow UI shows of a chain: the experiment's view, a stage run's params and dataset, the chain's
key numbers, and the address of the runs table.

The view an experiment opens in is decided by the UI (MLflow 3.17, ``experimentPage`` chunk of the JS
bundle): opening ``#/experiments/<id>`` reads the experiment tag ``mlflow.experimentKind``; any value but
``genai_development`` lands on the Runs tab, and ``workflowType`` (GenAI or "Model training") follows the
kind, ``custom_model_development`` giving ``machine_learning``. Without the tag the UI falls back to its
own default, the GenAI overview. ``?workflowType=machine_learning`` in the address overrides the toggle a
browser remembers, so the address ``hirl ui`` prints lands in the runs table whatever was clicked before.

MLflow is imported inside functions only, as in lineage.
"""

from __future__ import annotations

import hashlib
import json

KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
# MLflow's own limits (mlflow.utils.validation): a param value, a key, params per log_batch call.
MAX_VALUE, MAX_KEY, MAX_BATCH = 6000, 250, 100
# Sizes of the datasets the configs name, per split, before train_subset / val_subset.
SPLIT_SIZES = {"fashion_mnist": {"train": 60000, "val": 10000}}


def flatten(config, prefix=""):
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": "0.1"}``; lists and None as JSON text. Keys
    and values are cut to MLflow's limits (a cut value ends in ``…``), so a long value never fails a run."""
    out = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_VALUE:
            text = text[:MAX_VALUE - 1] + "…"
        out[name[:MAX_KEY]] = text
    return out


def param_batches(params):
    """Params as lists of mlflow Param, at most MAX_BATCH each."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    return [items[i:i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]


# Params the stage process logs itself with the values it resolved (pretrain: precision "auto" -> "bf16";
# knn: backbone_prefix "auto" -> "backbone."). MLflow refuses to change a param, so the submission leaves
# these keys to the stage.
STAGE_LOGGED = frozenset({"method", "arch", "epochs", "lr", "batch_size_total", "world_size", "precision",
                          "pretrained", "backbone_prefix"})


def stage_params(stage):
    """The stage's resolved config, flattened, less the keys the stage logs itself."""
    return {k: v for k, v in flatten(stage.config).items() if k not in STAGE_LOGGED}


def chain_params(cell):
    """What the runs table of a sweep needs per chain: method, arch, epochs, the matrix point."""
    pre = next((s for s in cell.stages if s.type == "pretrain"), None)
    out = {}
    if pre is not None:
        cfg = pre.config
        out.update({"method": (cfg.get("method") or {}).get("name", ""),
                    "arch": (cfg.get("backbone") or {}).get("arch", ""), "epochs": cfg.get("epochs", "")})
    elif cell.method:
        out["method"] = cell.method
    for key, value in (cell.params or {}).items():
        out[key] = value
    return {k[:MAX_KEY]: (v if isinstance(v, str) else json.dumps(v, default=str))[:MAX_VALUE]
            for k, v in out.items()}


def dataset_input(stage):
    """The stage's training data as an MLflow DatasetInput (name, digest, source, rows), or None."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    data = stage.config.get("data")
    if not isinstance(data, dict) or not data.get("dataset"):
        return None
    name = str(data["dataset"])
    size = SPLIT_SIZES.get(name, {}).get("train")
    subset = data.get("train_subset")
    if isinstance(subset, int) and not isinstance(subset, bool) and subset > 0:
        size = min(subset, size) if size else subset
    source = str(data.get("root") or name)
    ident = {k: data.get(k) for k in sorted(data)}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
    profile = json.dumps({"num_rows": size}) if size else None
    dataset = Dataset(name=name, digest=digest, source_type="local", source=source, profile=profile)
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])


def log_stage_run(c, run_id, stage, extra_tags=None):
    """Params in batches (the first also carries ``extra_tags``) and the dataset input of a new stage run."""
    from mlflow.entities import RunTag

    tags = [RunTag(k, str(v)) for k, v in (extra_tags or {}).items()]
    batches = param_batches(stage_params(stage)) or [[]]
    for i, batch in enumerate(batches):
        c.log_batch(run_id, params=batch, tags=tags if i == 0 else [])
    ds = dataset_input(stage)
    if ds is not None:
        from mlflow.exceptions import MlflowException

        try:
            c.log_inputs(run_id, datasets=[ds])
        except MlflowException:
            # Chains created in parallel log the same dataset (name, digest) at once: the store's unique
            # key lets one insert win and fails the other's transaction whole; the retry finds that row.
            c.log_inputs(run_id, datasets=[ds])


def chain_metrics(rows):
    """{metric name: value} of the stages' key numbers, for the chain run; a name two stages share is
    prefixed by the stage name."""
    found = [(r.stage, r.metric, r.value) for r in rows if r.metric and r.value is not None]
    counts = {}
    for _, metric, _ in found:
        counts[metric] = counts.get(metric, 0) + 1
    return {(metric if counts[metric] == 1 else f"{stage}.{metric}"): float(value) for stage, metric, value in found}


def log_chain_metrics(c, chain, rows):
    """Copy the stages' key numbers onto the chain run (only those that changed)."""
    from mlflow.entities import Metric

    import time

    have = chain.data.metrics
    now = int(time.time() * 1000)
    new = [Metric(k, v, now, 0) for k, v in chain_metrics(rows).items() if have.get(k) != v]
    if new:
        c.log_batch(chain.info.run_id, metrics=new)


def mark_experiment(c, exp_id):
    c.set_experiment_tag(exp_id, KIND_TAG, KIND)


def mark_project_experiments(c):
    """Tag every experiment holding a hirl run that has no kind yet (made before the tag was set)."""
    from mlflow.entities import ViewType

    marked = []
    for exp in c.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        if exp.tags.get(KIND_TAG):
            continue
        if c.search_runs([exp.experiment_id], "tags.`hirl.kind` != ''", max_results=1):
            mark_experiment(c, exp.experiment_id)
            marked.append(exp.experiment_id)
    return marked


def latest_experiment(c, name=""):
    """The experiment named ``name``, else the one whose newest hirl run is the most recent; or None."""
    from mlflow.entities import ViewType

    if name:
        return c.get_experiment_by_name(name)
    exps = {e.experiment_id: e for e in c.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if not exps:
        return None
    runs = c.search_runs(list(exps), "tags.`hirl.kind` != ''", order_by=["attributes.start_time DESC"],
                         max_results=1)
    return exps[runs[0].info.experiment_id] if runs else None


def runs_url(host, port, exp_id, view=""):
    """The address of the experiment's runs table in the model-training view (with a saved view)."""
    url = f"http://{host}:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    return url + (f"&viewStateShareKey={view}" if view else "")


SHARE_KEY = "hirl"


def save_view(c, exp_id):
    """A saved view of the runs table (the UI's shared view, an experiment tag): the chains' key numbers and
    summary params as columns, ordered by the first key number, so the table reads like the model-zoo
    table; ordering by a metric lists the stage runs beside their chains. The share key for the address."""
    chains = c.search_runs([exp_id], "tags.`hirl.kind` = 'chain'", max_results=200)
    metrics, params = [], []
    for run in chains:
        metrics += [k for k in run.data.metrics if k not in metrics]
        params += [k for k in run.data.params if k not in params]
    metrics.sort(key=lambda k: (k == "loss", k))  # evaluations first, the pre-training loss last
    columns = (["attributes.`Dataset`"] + [f"metrics.`{k}`" for k in metrics[:12]] +
               [f"params.`{k}`" for k in params[:12]])
    state = {"selectedColumns": columns, "orderByKey": f"metrics.`{metrics[0]}`" if metrics else
             "attributes.start_time", "orderByAsc": False, "searchFilter": "", "lifecycleFilter": "Active"}
    c.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{SHARE_KEY}", json.dumps(state))
    return SHARE_KEY
