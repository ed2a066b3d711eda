"""What the MLflow UI reads from a chain: the experiment's kind, params, datasets, the chain's key numbers
(a real sqlite store in tmp_path, no mocks)."""

import json

from jobs import lineage, mlflow_view
from jobs.dag import compile_cell
from jobs.spec import load_experiment



def test_the_experiment_opens_in_the_model_training_view(root):
    c = lineage.client()
    old = c.create_experiment("demo")  # made by an earlier version, without the kind
    cell = compile_cell(load_experiment("demo", root=root))
    lineage.ensure_chain(cell, "local")
    assert c.get_experiment(old).tags[mlflow_view.KIND_TAG] == "custom_model_development"
    lineage.experiment_id_of(c, "fresh", create=True)
    assert c.get_experiment_by_name("fresh").tags[mlflow_view.KIND_TAG] == "custom_model_development"
    assert mlflow_view.latest_experiment(c).experiment_id == old
    assert mlflow_view.runs_url("127.0.0.1", 5000, old).endswith(
        f"/#/experiments/{old}/runs?workflowType=machine_learning")


def test_existing_project_experiments_get_the_kind(root):
    c = lineage.client()
    mine, other = c.create_experiment("mine"), c.create_experiment("other")
    c.create_run(mine, tags={"hirl.kind": "chain"})
    c.create_run(other)
    assert mlflow_view.mark_project_experiments(c) == [mine]
    assert mlflow_view.KIND_TAG not in c.get_experiment(other).tags


def test_stage_runs_carry_the_flat_config_and_their_dataset(root):
    cell = compile_cell(load_experiment("demo", root=root, overrides=["pretrain.optimizer.lr=0.001"]))
    runs = lineage.ensure_chain(cell, "local")
    c = lineage.client()
    pre = c.get_run(runs["pretrain"].run_id)
    assert pre.data.params["optimizer.lr"] == "0.001" and pre.data.params["method.name"] == "mocov2"
    assert "precision" not in pre.data.params and "epochs" not in pre.data.params  # the stage logs them resolved
    assert pre.data.params["output_dir"] == pre.data.tags["hirl.output_dir"]
    (ds,) = pre.inputs.dataset_inputs
    assert ds.dataset.name == "imagefolder" and ds.dataset.source == "data" and ds.dataset.profile is None
    assert [t.value for t in ds.tags] == ["train"] and len(ds.dataset.digest) == 8
    knn = c.get_run(runs["knn"].run_id)
    assert knn.data.params["knn.k"] == "[10, 20]" and "backbone_prefix" not in knn.data.params
    chain = lineage.find_chain("demo", cell.cell_id)
    assert chain.data.params == {"method": "mocov2", "arch": "resnet18", "epochs": str(cell.stages[0].config["epochs"])}
    found = c.search_runs([pre.info.experiment_id], "params.`optimizer.lr` = '0.001'")
    assert [r.info.run_id for r in found] == [pre.info.run_id]


def test_params_stay_within_mlflow_limits():
    flat = mlflow_view.flatten({"a": {f"k{i}": i for i in range(250)}, "long": "x" * 7000, "k" * 300: 1})
    assert len(flat["long"]) == 6000 and flat["long"].endswith("…")
    assert max(len(k) for k in flat) == 250
    batches = mlflow_view.param_batches(flat)
    assert [len(b) for b in batches] == [100, 100, 52]


def test_the_chain_run_carries_its_stages_key_numbers(root):
    cell = compile_cell(load_experiment("demo", root=root))
    runs = lineage.ensure_chain(cell, "local")
    c = lineage.client()
    c.log_metric(runs["pretrain"].run_id, "loss", 3.5)
    c.log_metric(runs["knn"].run_id, "knn_top1_k20", 0.71)
    for r in runs.values():
        c.set_terminated(r.run_id, "FINISHED")
    assert lineage.end_chain("demo", cell.cell_id) == "FINISHED"
    chain = lineage.find_chain("demo", cell.cell_id)
    assert chain.data.metrics == {"loss": 3.5, "knn_top1_k20": 0.71}


def test_the_dataset_size_follows_the_data_config():
    from types import SimpleNamespace

    def size(data):
        ds = mlflow_view.dataset_input(SimpleNamespace(config={"data": data}))
        return json.loads(ds.dataset.profile)["num_rows"] if ds.dataset.profile else None

    assert size({"dataset": "fashion_mnist"}) == 60000
    assert size({"dataset": "fashion_mnist", "train_subset": 1024}) == 1024
    assert size({"dataset": "imagefolder", "root": "x", "train_subset": 300}) == 300
    assert mlflow_view.dataset_input(SimpleNamespace(config={"data": None})) is None
    one = mlflow_view.dataset_input(SimpleNamespace(config={"data": {"dataset": "fashion_mnist"}}))
    two = mlflow_view.dataset_input(SimpleNamespace(config={"data": {"dataset": "fashion_mnist", "train_subset": 9}}))
    assert one.dataset.digest != two.dataset.digest
