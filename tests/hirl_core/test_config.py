import copy
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hirl_core.config import (
    Config, ConfigError, apply_overrides, config_hash, dump_config, dumps_config, flat_keys,
    get_dotted, load_config, parse_override, set_dotted,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def cfg():
    return Config({
        "seed": 0,
        "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9},
        "data": {"root": "/data", "crops": [224, 96]},
        "heads": [{"dim": 128}],
    })


# ---------------------------------------------------------------- Config

def test_attribute_access_is_recursive(cfg):
    assert cfg.optimizer.lr == 0.1
    assert isinstance(cfg.optimizer, Config)
    assert isinstance(cfg.heads[0], Config) and cfg.heads[0].dim == 128
    cfg.optimizer.lr = 0.5
    cfg.extra = {"a": {"b": 1}}
    assert cfg["optimizer"]["lr"] == 0.5 and cfg.extra.a.b == 1


def test_missing_attribute_raises_attribute_error_naming_key(cfg):
    with pytest.raises(AttributeError, match="nope"):
        cfg.optimizer.nope
    assert getattr(cfg, "nope", 7) == 7
    assert not hasattr(cfg, "nope")


def test_to_dict_is_plain(cfg):
    d = cfg.to_dict()
    assert d == cfg
    assert type(d) is dict and type(d["optimizer"]) is dict and type(d["heads"][0]) is dict


def test_pickle_and_deepcopy(cfg):
    for clone in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert clone == cfg and isinstance(clone, Config)
        assert clone.optimizer.lr == 0.1
        clone.optimizer.lr = 9
        assert cfg.optimizer.lr == 0.1


# ---------------------------------------------------------------- loading

def test_two_level_base_chain(tmp_path):
    write(tmp_path / "a.yaml", """
        model: {arch: resnet50, dim: 128}
        optimizer: {name: SGD, lr: 0.1}
        epochs: 100
    """)
    write(tmp_path / "b.yaml", """
        _base_: a.yaml
        optimizer: {lr: 0.05}
        epochs: 200
    """)
    write(tmp_path / "c.yaml", """
        _base_: b.yaml
        model: {dim: 256}
    """)
    c = load_config(tmp_path / "c.yaml")
    assert c.to_dict() == {
        "model": {"arch": "resnet50", "dim": 256},
        "optimizer": {"name": "SGD", "lr": 0.05},
        "epochs": 200,
    }
    assert "_base_" not in c


def test_list_of_bases_in_order(tmp_path):
    write(tmp_path / "x.yaml", "a: 1\nb: {p: 1, q: 1}\n")
    write(tmp_path / "y.yaml", "a: 2\nb: {q: 2}\n")
    write(tmp_path / "top.yaml", "_base_: [x.yaml, y.yaml]\nc: 3\n")
    assert load_config(str(tmp_path / "top.yaml")).to_dict() == {"a": 2, "b": {"p": 1, "q": 2}, "c": 3}


def test_bases_are_relative_to_the_file_naming_them(tmp_path, monkeypatch):
    write(tmp_path / "base" / "default.yaml", "lr: 0.1\nname: base\n")
    write(tmp_path / "exp" / "sub" / "run.yaml", "_base_: ../../base/default.yaml\nname: run\n")
    monkeypatch.chdir(tmp_path / "base")  # the working directory must not matter
    assert load_config(tmp_path / "exp" / "sub" / "run.yaml").to_dict() == {"lr": 0.1, "name": "run"}


def test_delete_replaces_the_base_mapping(tmp_path):
    write(tmp_path / "base.yaml", "optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\nkeep: {a: 1}\n")
    write(tmp_path / "child.yaml", """
        _base_: base.yaml
        optimizer:
          _delete_: true
          name: AdamW
          lr: 0.001
        keep: {b: 2}
    """)
    c = load_config(tmp_path / "child.yaml")
    assert c.optimizer.to_dict() == {"name": "AdamW", "lr": 0.001}
    assert c.keep.to_dict() == {"a": 1, "b": 2}
    assert "_delete_" not in flat_keys(c) and "optimizer._delete_" not in flat_keys(c)


def test_base_cycle_is_an_error_naming_the_files(tmp_path):
    write(tmp_path / "one.yaml", "_base_: two.yaml\na: 1\n")
    write(tmp_path / "two.yaml", "_base_: one.yaml\nb: 1\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(tmp_path / "one.yaml")
    assert "one.yaml" in str(err.value) and "two.yaml" in str(err.value)


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")
    write(tmp_path / "c.yaml", "_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*gone.yaml"):
        load_config(tmp_path / "c.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "bad.yaml" in msg and "line " in msg and "\n" not in msg


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_load_config_applies_overrides(tmp_path):
    path = write(tmp_path / "c.yaml", "optimizer: {lr: 0.1}\n")
    assert load_config(path, ["optimizer.lr=1e-3"]).optimizer.lr == 0.001


# ---------------------------------------------------------------- override parsing

@pytest.mark.parametrize("text, value", [
    ("a=3", 3), ("a=-2", -2), ("a=0", 0),
    ("a=0.1", 0.1), ("a=1e-3", 1e-3), ("a=1.5E+2", 150.0), ("a=-.5", -0.5),
    ("a=True", True), ("a=false", False), ("a=None", None), ("a=null", None), ("a=none", None),
    ("a=[1,2,3]", [1, 2, 3]), ("a=[0.5, 1.0]", [0.5, 1.0]), ("a=[a, b]", ["a", "b"]),
    ("a=[[1, 2], [3]]", [[1, 2], [3]]), ("a=(1, x)", [1, "x"]), ("a=[]", []),
    ("a=['x,y', \"1\"]", ["x,y", "1"]),
    ("a='abc'", "abc"), ('a="1"', "1"), ("a='True'", "True"),
    ("a=./out/x", "./out/x"), ("a=AdamW", "AdamW"), ("a=b=c", "b=c"), ("a=x==y", "x==y"),
])
def test_typed_values(text, value):
    key, parsed, is_add = parse_override(text)
    assert key == "a" and not is_add
    assert parsed == value and type(parsed) is type(value)


def test_parse_override_keys():
    assert parse_override("optimizer.lr=0.1") == ("optimizer.lr", 0.1, False)
    assert parse_override("+new.key=1") == ("new.key", 1, True)


@pytest.mark.parametrize("text", ["noequals", "=3", "+=3", "a..b=1", ".a=1", "a=[1, 2"])
def test_bad_overrides(text):
    with pytest.raises(ConfigError, match="bad override") as err:
        parse_override(text)
    assert repr(text) in str(err.value)


# ---------------------------------------------------------------- applying overrides

def test_apply_sets_values_and_does_not_mutate_input(cfg):
    before = copy.deepcopy(cfg)
    out = apply_overrides(cfg, ["optimizer.lr=0.02", "data.crops=[160, 64]", "seed=3"])
    assert out.optimizer.lr == 0.02 and out.data.crops == [160, 64] and out.seed == 3
    assert cfg == before
    assert out.optimizer is not cfg.optimizer


def test_unknown_key_suggests_the_closest(cfg):
    with pytest.raises(ConfigError) as err:
        apply_overrides(cfg, ["optimizer.lrr=0.1"])
    msg = str(err.value)
    assert "unknown config key 'optimizer.lrr'" in msg
    assert "did you mean: optimizer.lr" in msg
    assert "+optimizer.lrr=" in msg


def test_unknown_key_matches_on_last_component(cfg):
    with pytest.raises(ConfigError, match="did you mean: .*optimizer.momentum"):
        apply_overrides(cfg, ["momentum=0.5"])


def test_unknown_key_without_suggestion_lists_level(cfg):
    with pytest.raises(ConfigError) as err:
        apply_overrides(cfg, ["optimizer.zzzzzzzz=1"])
    msg = str(err.value)
    assert "no similar key" in msg and "lr, momentum, name" in msg


def test_plus_adds_keys_and_intermediate_dicts(cfg):
    out = apply_overrides(cfg, ["+new.deep.key=1", "+optimizer.wd=5e-4", "+seed=4"])
    assert out.new.deep.key == 1 and isinstance(out.new.deep, Config)
    assert out.optimizer.wd == 5e-4 and out.optimizer.lr == 0.1
    assert out.seed == 4
    assert "new" not in cfg


def test_sub_key_under_scalar_is_an_error(cfg):
    with pytest.raises(ConfigError, match="'optimizer.lr'.*not a mapping"):
        apply_overrides(cfg, ["optimizer.lr.x=1"])
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides(cfg, ["+seed.x=1"])


def test_mapping_replaced_by_scalar_is_an_error(cfg):
    with pytest.raises(ConfigError, match="holds a mapping; set its sub-keys"):
        apply_overrides(cfg, ["optimizer=3"])


def test_all_overrides_validated_and_input_untouched_on_error(cfg):
    before = copy.deepcopy(cfg)
    with pytest.raises(ConfigError, match="nokey"):
        apply_overrides(cfg, ["optimizer.lr=5", "nokey=1"])
    assert cfg == before


# ---------------------------------------------------------------- helpers

def test_flat_keys(cfg):
    keys = flat_keys(cfg)
    assert keys == sorted(keys)
    assert {"optimizer", "optimizer.lr", "data.crops", "heads", "seed"} <= set(keys)
    assert "heads.0" not in keys


def test_get_and_set_dotted(cfg):
    assert get_dotted(cfg, "optimizer.lr") == 0.1
    assert get_dotted(cfg, "optimizer.nope", None) is None
    assert get_dotted(cfg, "optimizer.lr.x", "d") == "d"
    with pytest.raises(KeyError):
        get_dotted(cfg, "nope")
    set_dotted(cfg, "a.b.c", 1)
    assert cfg.a.b.c == 1
    plain = {}
    set_dotted(plain, "x.y", 2)
    assert plain == {"x": {"y": 2}}
    with pytest.raises(ConfigError):
        set_dotted(cfg, "seed.x", 1)


def test_config_hash():
    a = Config({"x": 1, "opt": {"lr": 0.1, "name": "SGD"}, "l": (1, 2)})
    b = Config({"opt": {"name": "SGD", "lr": 0.1}, "l": [1, 2], "x": 1})
    h = config_hash(a)
    assert len(h) == 12 and int(h, 16) >= 0
    assert h == config_hash(b) == config_hash(a.to_dict())
    assert config_hash(apply_overrides(a, ["opt.lr=0.2"])) != h
    assert config_hash(apply_overrides(a, ["x=1.0"])) != h  # 1 and 1.0 differ
    c = apply_overrides(a, ["opt.name=Adam"])
    assert config_hash(c) != h
    assert config_hash(c, exclude=["opt.name"]) == config_hash(a, exclude=["opt.name", "missing.key"])
    assert config_hash(a, exclude=["x"]) != h
    assert a.x == 1 and a.opt.name == "SGD"  # exclude does not mutate


def test_dump_load_round_trip(tmp_path, cfg):
    path = tmp_path / "deep" / "dir" / "cfg.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert config_hash(load_config(path)) == config_hash(cfg)
    assert list(yaml.safe_load(path.read_text())) == list(cfg)  # natural key order kept
    assert os.listdir(path.parent) == ["cfg.yaml"]  # no temp files left behind
    text = dumps_config(cfg)
    assert yaml.safe_load(text) == cfg.to_dict() and "{" not in text


def test_import_does_not_pull_torch():
    code = "import sys, hirl_core.config; assert 'torch' not in sys.modules; assert 'numpy' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)


def test_closest_suggests_the_nearest_choice_or_nothing():
    from hirl_core.config import closest

    assert closest("pretrian", ["pretrain", "knn"]) == " (did you mean 'pretrain'?)"
    assert closest(3, ["3a", "x"]) == " (did you mean '3a'?)"  # non-text input is compared as text
    assert closest("zzz", ["pretrain", "knn"]) == ""
