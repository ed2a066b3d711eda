"""The config schema: rules, messages, sections, the shipped configs, and the registries' names."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hirl_core import schema
from hirl_core.config import Config, ConfigError, load_config, set_dotted
from hirl_core.schema import (Bool, Choice, Either, Int, Num, Seq, Text, check_config, check_stage_config,
                              check_value)

REPO = Path(__file__).resolve().parents[2]


# (rule, allowed values, refused values with the start of the problem)
RULES = [
    (Int(1), [1, 7, 10**9], [(0, "is out of range"), (-3, "is out of range"), (2.5, "has the wrong type"),
                             ("abc", "has the wrong type"), (True, "has the wrong type"), (None, "has the wrong type")]),
    (Int(1, null="all"), [None, 1], [(0, "is out of range"), (-5, "is out of range")]),
    (Num(0, lo_open=True), [1, 0.001, 3e-4], [(0, "is out of range"), (-0.1, "is out of range"),
                                             (None, "has the wrong type"), (False, "has the wrong type"),
                                             (math.inf, "is out of range"), (math.nan, "is out of range"),
                                             ("1e-4", "has the wrong type")]),
    (Num(0, 1), [0, 1, 0.5], [(1.01, "is out of range"), (-1, "is out of range")]),
    (Num(0, 1, hi_open=True), [0, 0.999], [(1, "is out of range")]),
    (Bool(), [True, False], [(1, "has the wrong type"), ("true", "has the wrong type"), (None, "has the wrong type")]),
    (Bool(null=""), [None, True], [(0, "has the wrong type")]),
    (Text(), ["", "x"], [(3, "has the wrong type"), (None, "has the wrong type")]),
    (Choice(("sgd", "adamw"), fold_case=True), ["sgd", "SGD", "AdamW"], [("sgdx", "is not allowed (did you mean 'sgd'?)"),
                                                                      (1, "is not allowed")]),
    (Choice(("sgd",)), ["sgd"], [("SGD", "is not allowed")]),
    (Choice((1, 3)), [1, 3], [(True, "is not allowed"), (2, "is not allowed"), (3.0, "is not allowed")]),
    (Seq(Int(1)), [[1], [10, 20], (5,)], [([], "is out of range"), ([0, 20], "is out of range"),
                                          ([1, "x"], "has the wrong type"), (5, "has the wrong type")]),
    (Seq(Num(0, 1, lo_open=True), length=2), [[0.2, 1.0]], [([0.2], "is out of range"), ([0, 1], "is out of range")]),
    (Either(Num(0, 1), Seq(Num(0, 1))), [0.5, [1.0, 0.1]], [(2, "is out of range"), ([0.5, 2], "is out of range"),
                                                            ("x", "has the wrong type")]),
]


@pytest.mark.parametrize("rule, good, bad", RULES, ids=[r[0].describe() for r in RULES])
def test_each_rule_allows_and_refuses_what_it_describes(rule, good, bad):
    for value in good:
        assert rule.problem(value) is None, value
    for value, problem in bad:
        assert (rule.problem(value) or "").startswith(problem), (value, rule.problem(value))


@pytest.mark.parametrize("rule, text", [
    (Int(1), "an integer >= 1"), (Int(0), "an integer >= 0"), (Int(1, null="all"), "null (all) or an integer >= 1"),
    (Num(0, lo_open=True), "a number > 0"), (Num(0, 1), "a number in [0, 1]"),
    (Num(0, 1, hi_open=True), "a number in [0, 1)"), (Bool(null=""), "null or true or false"),
    (Choice(("a", "b")), "one of a, b"), (Seq(Int(1)), "a non-empty list, each an integer >= 1"),
    (Seq(Num(0), length=2), "a list of 2, each a number >= 0"),
])
def test_a_rule_describes_what_is_allowed(rule, text):
    assert rule.describe() == text


def test_the_message_is_one_line_naming_the_key_the_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        check_value("optimizer.name", "sgdx", schema.PRETRAIN["optimizer.name"])
    assert str(err.value) == ("optimizer.name='sgdx' is not allowed (did you mean 'sgd'?): "
                              "must be one of sgd, adamw, lars")
    with pytest.raises(ConfigError, match=r"^pretrain: epochs=0 is out of range: must be an integer >= 1$"):
        check_stage_config(Config({"epochs": 0}), "pretrain")


def _pretrain(changes):
    cfg = load_config(REPO / "configs/pretrain/baseline/mocov2_demo.yaml")
    for key, value in changes.items():
        set_dotted(cfg, key, value)
    return cfg


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 0}, "epochs=0 is out of range"),
    ({"optimizer.lr": None}, "optimizer.lr=None has the wrong type: must be a number > 0"),
    ({"data.train_subset": -5}, "data.train_subset=-5 is out of range"),
    ({"method.name": "nope"}, "method.name='nope' is not allowed"),
    ({"backbone.arch": "resnet999"}, "backbone.arch='resnet999' is not allowed"),
    ({"precision": "fp8"}, "precision='fp8' is not allowed"),
    ({"device": "tpu"}, "device='tpu' is not allowed"),
    ({"seed": True}, "seed=True has the wrong type"),
    ({"hirl.num_cluster": [10, 0]}, "hirl.num_cluster=[10, 0] is out of range"),
    ({"optimizer": None}, "optimizer=None has the wrong type: must be a mapping of optimizer settings"),
    ({"backbone": 3}, "backbone=3 has the wrong type"),
])
def test_a_pretrain_config_with_a_bad_value_is_refused(changes, message):
    with pytest.raises(ConfigError) as err:
        check_config(_pretrain(changes), "pretrain")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_only_known_keys_that_are_present_are_checked():
    check_config(Config({"seed": 0}), "pretrain")  # the code's defaults stand in for the rest
    check_config(_pretrain({"method.some_new_knob": "anything", "optimizer.lr": 1}), "pretrain")  # ints are numbers
    check_config(Config({"epochs": 0}), "not_a_stage_type")  # a type without a schema: not checked
    check_config(load_config(REPO / "configs/downstream/knn/knn_demo.yaml"), "knn")  # backbone: null is fine here
    with pytest.raises(ConfigError, match=r"^knn.k=\[0, 20\] is out of range"):
        check_config(Config({"knn": {"k": [0, 20]}}), "knn")


# every stage config the project ships, by the stage type its tree holds (a new tree must be named here)
TREES = {"configs/pretrain": "pretrain", "configs/downstream/knn": "knn", "configs/downstream/clustering": "clustering",
         "configs/downstream/linear": "linear", "configs/downstream/imagenet/lincls": "linear",
         "configs/downstream/finetune": "finetune", "configs/downstream/imagenet/finetune": "finetune",
         "configs/downstream/semisup": "semisup", "configs/downstream/imagenet/semisup": "semisup",
         "configs/downstream/transfer": "transfer", "configs/downstream/places205": "transfer"}


def _shipped():
    found = [(stage, p) for tree, stage in TREES.items() for p in (REPO / tree).rglob("*.yaml")]
    found += [(p.parent.name, p) for p in REPO.glob("tests/*/fixtures/configs/*/*.yaml") if p.parent.name in TREES.values()]
    return sorted((stage, str(p.relative_to(REPO))) for stage, p in found)


def test_every_shipped_config_is_in_a_known_tree():
    trees = {str(Path(p).parent) for _, p in _shipped()}
    everywhere = {str(p.parent.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")
                  if "experiments" not in p.relative_to(REPO / "configs").parts}
    assert everywhere <= trees, sorted(everywhere - trees)
    assert {stage for stage, _ in _shipped()} == set(schema.SCHEMAS)


@pytest.mark.parametrize("stage, path", _shipped())
def test_every_shipped_config_passes_the_schema(stage, path):
    cfg = load_config(REPO / path)
    if path.startswith("configs/"):  # the test fixtures leave the runner to the spec
        assert cfg.runner == stage, path
    check_config(cfg, stage)


def test_the_registries_list_the_schemas_names():
    from hirl_core.__main__ import STAGES
    from hirl_core.data.paths import DATASETS
    from hirl_core.engine import optim
    from hirl_core.methods import METHODS
    from hirl_core.models import BACKBONES

    assert tuple(METHODS) == schema.METHODS
    assert tuple(BACKBONES) == schema.ARCHS
    assert optim.OPTIMIZERS is schema.OPTIMIZERS
    assert schema.COMMON["data.dataset"].options == DATASETS
    assert set(STAGES) == set(schema.SCHEMAS)


def test_the_schema_is_torch_free():
    code = "import sys, hirl_core.schema; assert not {'torch', 'numpy'} & set(sys.modules), sys.modules.keys()"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
