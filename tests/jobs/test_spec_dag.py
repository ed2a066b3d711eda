"""Experiment specs, user overrides, cell ids, wiring and the plan: no MLflow involved."""

import subprocess

import pytest
import yaml

from hirl_core.config import ConfigError
from jobs import cli
from jobs.backends import available_backends
from jobs.dag import assign_outputs, compile_cell, format_plan
from jobs.spec import SpecError, load_experiment

from . import FIXTURES, PYTHON, make_root, subprocess_env
from .goldens import check_golden

PRETRAIN = "configs/pretrain/tiny_pretrain.yaml"
KNN = "configs/knn/tiny_knn.yaml"


def write_spec(root, name, spec):
    path = root / "configs" / "experiments" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def test_unknown_experiment_lists_the_available_ones():
    with pytest.raises(SpecError) as err:
        load_experiment("nope", root=FIXTURES)
    assert str(err.value) == "unknown experiment 'nope'; available: demo, pretrain_only"


def test_loads_by_name_or_path_and_defaults_the_name_to_the_stem():
    exp = load_experiment("pretrain_only", root=FIXTURES)
    assert exp.name == "pretrain_only" and list(exp.stages) == ["pretrain"]
    by_path = load_experiment(FIXTURES / "configs" / "experiments" / "demo.yaml", root=FIXTURES)
    assert by_path.name == "demo"
    assert by_path.stages["knn"].type == "knn" and by_path.stages["knn"].after == "pretrain"
    assert by_path.stages["pretrain"].config.epochs == 1  # the spec's own override
    assert by_path.resources == {"local": {"nproc_per_node": 1}}


@pytest.mark.parametrize("override, named, suggested", [
    ("optimizer.lrr=0.1", "'optimizer.lrr'", "optimizer.lr"),
    ("pretrain.optimizer.lrr=0.1", "'optimizer.lrr'", "optimizer.lr"),
    ("knn.temperatur=0.1", "'knn.temperatur'", "knn.temperature"),
])
def test_a_bad_override_key_names_it_and_suggests_the_closest(override, named, suggested):
    with pytest.raises(ConfigError) as err:
        load_experiment("demo", root=FIXTURES, overrides=[override])
    message = str(err.value)
    assert named in message and f"did you mean: {suggested}" in message and "\n" not in message


def test_overrides_scope_by_stage_name_or_by_which_stages_have_the_key():
    exp = load_experiment("demo", root=FIXTURES, overrides=[
        "pretrain.epochs=5",        # stage-scoped
        "optimizer.lr=0.1",         # only the pretrain config has it
        "knn.temperature=0.5",      # 'knn' is a stage, but knn.temperature is a config key
        "knn.data.batch_size=64",   # stage-scoped, data exists in both stages
        "data.root=elsewhere",      # both stages have it
        "+extra=1",                 # added to every stage
        "+knn.only_here=2",         # added to one stage
    ])
    pre, knn = exp.stages["pretrain"].config, exp.stages["knn"].config
    assert pre.epochs == 5 and pre.optimizer.lr == 0.1
    assert knn.knn.temperature == 0.5 and knn.data.batch_size == 64 and pre.data.batch_size == 8
    assert pre.data.root == knn.data.root == "elsewhere"
    assert pre.extra == knn.extra == 1
    assert knn.only_here == 2 and "only_here" not in pre


def _stage(after=None, **extra):
    stage = {"config": PRETRAIN if extra.get("type", "pretrain") == "pretrain" else KNN, **extra}
    if after:
        stage["after"] = after
    return stage


@pytest.mark.parametrize("spec, message", [
    ({"stages": {"pretrain": _stage(), "knn": _stage(after="pretrian", type="knn")}},
     "'after' names no stage: 'pretrian' (did you mean 'pretrain'?)"),
    ({"stages": {"a": _stage(after="b", type="pretrain"), "b": _stage(after="a", type="pretrain")}}, "cycle in 'after'"),
    ({"stages": {"a": _stage(after="a", type="pretrain")}}, "cycle in 'after'"),
    ({"stages": {"pretrain": _stage(type="pretrian")}}, "unknown type 'pretrian' (did you mean 'pretrain'?)"),
    ({"stages": {"Pre Train": _stage()}}, "bad stage name 'Pre Train'"),
    ({"name": "Demo!", "stages": {"pretrain": _stage()}}, "bad experiment name 'Demo!'"),
    ({"stages": {}}, "needs a non-empty 'stages' mapping"),
    ({"stages": {"pretrain": {"config": "configs/missing.yaml"}}}, "config file not found: configs/missing.yaml"),
    ({"stages": {"pretrain": _stage(afterr="x")}}, "unknown key 'afterr'"),
    ({"stagez": {}}, "unknown key 'stagez'"),
    ({"stages": {"pretrain": _stage(), "knn": _stage(after="pretrain", type="knn"),
                 "knn2": _stage(after="knn", type="knn")}}, "an eval's 'after' must be a pretrain stage"),
])
def test_bad_specs_are_rejected_with_one_line(root, spec, message):
    write_spec(root, "bad", spec)
    with pytest.raises(SpecError) as err:
        load_experiment("bad", root=root)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cell_id_is_stable_ignores_key_order_and_output_dir_but_not_values(root):
    first = compile_cell(load_experiment("demo", root=FIXTURES))
    again = compile_cell(load_experiment("demo", root=FIXTURES))
    assert first.cell_id == again.cell_id and len(first.cell_id) == 12
    assert [s.config_hash for s in first.stages] == [s.config_hash for s in again.stages]

    spec = yaml.safe_load((root / "configs/experiments/demo.yaml").read_text())
    spec["stages"]["pretrain"]["config"] = "configs/pretrain/tiny_pretrain_reordered.yaml"
    write_spec(root, "demo", spec)  # same values, other key order and output_dir
    assert compile_cell(load_experiment("demo", root=root)).cell_id == first.cell_id

    changed = compile_cell(load_experiment("demo", root=FIXTURES, overrides=["optimizer.lr=0.1"]))
    assert changed.cell_id != first.cell_id
    # the knn stage's hash follows its upstream's
    assert changed.stages[1].config_hash != first.stages[1].config_hash


def test_eval_stage_takes_checkpoint_backbone_and_seed_from_its_upstream():
    cell = compile_cell(load_experiment("demo", root=FIXTURES))
    assert [s.name for s in cell.stages] == ["pretrain", "knn"]
    pre, knn = cell.stages
    assert knn.upstream == "pretrain" and cell.edges == [("pretrain", "knn")]
    assert knn.config.backbone == pre.config.backbone == {"arch": "resnet18", "cifar_stem": False}
    assert knn.config.seed == pre.config.seed == 0  # the knn file says 1

    assign_outputs(cell, {"pretrain": "a" * 32, "knn": "b" * 32})
    base = f"outputs/demo/{cell.cell_id}"
    assert pre.output_dir == pre.config.output_dir == f"{base}/pretrain-aaaaaaaa"
    assert knn.config.output_dir == f"{base}/knn-bbbbbbbb"
    assert knn.config.pretrained == f"{base}/pretrain-aaaaaaaa/backbone.pth"


def test_stages_run_in_dependency_order_whatever_the_spec_order(root):
    write_spec(root, "reversed", {"stages": {"knn": _stage(after="pretrain", type="knn"),
                                             "pretrain": _stage()}})
    assert [s.name for s in compile_cell(load_experiment("reversed", root=root)).stages] == ["pretrain", "knn"]


def test_an_eval_config_without_the_wired_keys_is_rejected(root):
    (root / "configs/knn/no_pretrained.yaml").write_text("seed: 0\noutput_dir: x\nbackbone: null\n")
    write_spec(root, "partial", {"stages": {"pretrain": _stage(), "knn": {
        "config": "configs/knn/no_pretrained.yaml", "after": "pretrain"}}})
    with pytest.raises(SpecError, match="'knn': its config has no key 'pretrained'"):
        compile_cell(load_experiment("partial", root=root))


# Byte-exact (golden/plan_demo.txt): a change there means every existing cell id changed.


def test_plan_is_deterministic_and_matches_the_golden_text(monkeypatch, capsys):
    monkeypatch.chdir(FIXTURES)
    assert cli.main(["plan", "demo", "--set", "pretrain.epochs=3"]) == 0
    out = capsys.readouterr().out
    check_golden("plan_demo.txt", out)
    cell = compile_cell(load_experiment("demo", root=FIXTURES, overrides=["pretrain.epochs=3"]))
    assert format_plan(cell) == out


def test_plan_out_writes_the_rendered_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(FIXTURES)
    assert cli.main(["plan", "demo", "--out", str(tmp_path / "dry")]) == 0
    written = sorted(str(p.relative_to(tmp_path / "dry")) for p in (tmp_path / "dry").rglob("*") if p.is_file())
    cell_id = compile_cell(load_experiment("demo", root=FIXTURES)).cell_id
    assert written == ["local/commands.sh", f"outputs/demo/{cell_id}/knn-<run-id>/config.yaml",
                       f"outputs/demo/{cell_id}/pretrain-<run-id>/config.yaml", "plan.txt"]
    assert not (FIXTURES / "mlflow.db").exists() and not (FIXTURES / "outputs").exists()


def test_bad_input_is_one_line_on_stderr_and_exit_code_2(monkeypatch, capsys):
    monkeypatch.chdir(FIXTURES)
    assert cli.main(["plan", "nope"]) == 2
    assert capsys.readouterr().err == "hirl: error: unknown experiment 'nope'; available: demo, pretrain_only\n"
    assert cli.main(["plan", "demo", "--backend", "slurmz"]) == 2
    assert capsys.readouterr().err == f"hirl: error: unknown backend 'slurmz'; available: {', '.join(available_backends())}\n"


def test_plan_imports_neither_mlflow_nor_torch():
    probe = ("import sys; from jobs import cli; rc = cli.main(['plan', 'demo']); "
             "heavy = [m for m in ('mlflow', 'torch', 'numpy', 'torchvision', 'timm', 'faiss') if m in sys.modules]; "
             "assert not heavy, heavy; sys.exit(rc)")
    done = subprocess.run([PYTHON, "-c", probe], cwd=FIXTURES, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
