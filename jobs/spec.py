"""Experiment specs (``configs/experiments/<name>.yaml``) → validated, resolved objects.

Everything a user can get wrong (a misspelt experiment, stage type, upstream or
override key, a config value of the wrong type or range, a resource that is not a
number, an unsafe name) is rejected here, before lineage or a backend creates anything. Each stage config is resolved through
``hirl_core.config``, which is torch-free. Matrix axes (sweeps) are expanded by
``jobs.matrix`` on top of what this module loads.

A stage whose *type* ``python -m hirl_core`` cannot run yet (a type in ``hirl_core.stages``
whose runner module is not there) is *planned*: kept in the spec, shown by ``hirl plan``,
left out of the runnable DAG, and its config file need not exist yet. It joins the DAG
by itself the day hirl_core gains that stage type; nothing here changes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import yaml

from hirl_core import stages as registry
from hirl_core.config import (MISSING, Config, ConfigError, apply_overrides, closest, get_dotted, load_config,
                              parse_override)

from hirl_core.schema import check_config

from . import names, resources as res
from .errors import SpecError

SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# The stage types and which of them evaluate a backbone: hirl_core's registry, never a list of our own.
STAGE_TYPES = tuple(registry.STAGE_TYPES)
EVAL_TYPES = registry.EVAL_TYPES
EXPERIMENTS_DIR = os.path.join("configs", "experiments")
MATRIX_KEYS = ("matrix", "include", "exclude")
_SPEC_KEYS = ("name", "description", "display_name", "baseline", "image", "stages", "resources") + MATRIX_KEYS
_STAGE_KEYS = ("type", "config", "overrides", "after", "resources")
# Stage types the stage runner can execute; None: ask hirl_core (tests pin it).
RUNNABLE_TYPES = None


def runnable_types():
    """The stage types ``python -m hirl_core`` runs today: the registry's types whose runner is present."""
    if RUNNABLE_TYPES is not None:
        return tuple(RUNNABLE_TYPES)
    return registry.runnable()


@dataclass
class StageSpec:
    name: str
    type: str
    config_path: str            # as written in the spec, relative to the root
    overrides: tuple = ()       # the spec's own overrides for this stage
    after: str | None = None    # upstream stage name
    config: Config = field(default_factory=Config)  # resolved: file + spec overrides + user overrides
    resources: dict = field(default_factory=dict)   # this stage's own requests, over the experiment's
    planned: bool = False       # its type cannot run yet: not in the DAG, config not loaded


@dataclass
class Experiment:
    name: str
    description: str
    path: str                   # the spec file
    root: str                   # absolute repo root; stage config paths are relative to it
    stages: dict                # name -> StageSpec, in spec order
    resources: dict = field(default_factory=dict)
    overrides: tuple = ()       # the user's overrides (--set), as given
    planned: dict = field(default_factory=dict)   # name -> StageSpec whose type cannot run yet
    image: str = ""             # container image for cluster backends ("" = the backend's default)
    display_name: str = ""      # e.g. "HIRL-MoCo v2": the Method column of `hirl report`
    baseline: str = ""          # the experiment this one improves on (report deltas)


def available_experiments(root="."):
    folder = os.path.join(root, EXPERIMENTS_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.splitext(f)[0] for f in os.listdir(folder)
                  if f.endswith((".yaml", ".yml")) and not f.startswith("."))


def find_spec(name_or_path, root="."):
    """The spec file for a bare experiment name or a path to a YAML file."""
    text = os.fspath(name_or_path)
    looks_like_path = text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text
    if looks_like_path:
        for candidate in (text, os.path.join(root, text)):
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
        raise SpecError(f"experiment spec not found: {text}")
    for ext in (".yaml", ".yml"):
        candidate = os.path.join(root, EXPERIMENTS_DIR, text + ext)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    names = available_experiments(root)
    listing = ", ".join(names) if names else f"(none in {os.path.join(root, EXPERIMENTS_DIR)})"
    raise SpecError(f"unknown experiment {text!r}; available: {listing}")


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: `hirl plan` stays fast


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML in {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise SpecError(f"experiment spec {path} must hold a mapping at top level")
    return data


def _check_keys(mapping, allowed, where):
    for key in mapping:
        if key not in allowed:
            raise SpecError(f"unknown key {key!r} in {where}{closest(str(key), allowed)}; "
                            f"allowed: {', '.join(allowed)}")


def check_name(name, what):
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise SpecError(f"bad {what} {name!r}: use lowercase letters, digits, '_' and '-' "
                        f"(start with a letter or digit, at most 63 characters)")


def _parse_stage(name, raw, spec_path, root, runnable):
    where = f"stage {name!r} of {spec_path}"
    check_name(name, "stage name")
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping with at least 'config'")
    _check_keys(raw, _STAGE_KEYS, where)
    stype = raw.get("type", name)
    if stype not in STAGE_TYPES:
        raise SpecError(f"{where}: unknown type {stype!r}{closest(str(stype), STAGE_TYPES)}; "
                        f"allowed: {', '.join(STAGE_TYPES)}")
    planned = stype not in runnable
    path = raw.get("config")
    if not isinstance(path, str) or not path:
        raise SpecError(f"{where} needs 'config: <path to a stage config>'")
    if not planned and not os.path.isfile(os.path.join(root, path)):
        raise SpecError(f"{where}: config file not found: {path}")
    overrides = raw.get("overrides") or []
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise SpecError(f"{where}: 'overrides' must be a list of key=value strings")
    after = raw.get("after")
    if after is not None and not isinstance(after, str):
        raise SpecError(f"{where}: 'after' must name one stage")
    stage_resources = res.validate(raw.get("resources"), f"{where}: resources")
    return StageSpec(name=name, type=stype, config_path=path, overrides=tuple(overrides), after=after,
                     resources=stage_resources, planned=planned)


def _check_graph(stages, spec_path):
    for stage in stages.values():
        if stage.after is None:
            continue
        if stage.after not in stages:
            raise SpecError(f"stage {stage.name!r} of {spec_path}: 'after' names no stage: "
                            f"{stage.after!r}{closest(stage.after, stages)}; stages: {', '.join(stages)}")
        upstream = stages[stage.after]
        # An eval reads its upstream's backbone.pth, which only a pretrain writes.
        if stage.type in EVAL_TYPES and upstream.type != "pretrain":
            raise SpecError(f"stage {stage.name!r} of {spec_path}: an eval's 'after' must be a "
                            f"pretrain stage, {upstream.name!r} is {upstream.type!r}")
        if upstream.planned and not stage.planned:
            raise SpecError(f"stage {stage.name!r} of {spec_path} runs after {upstream.name!r}, whose type "
                            f"{upstream.type!r} cannot run yet")
    for start in stages:  # each stage has at most one upstream, so follow the chain
        seen, node = [start], stages[start].after
        while node is not None:
            if node in seen:
                loop = seen[seen.index(node):] + [node]
                raise SpecError(f"cycle in 'after' of {spec_path}: {' -> '.join(loop)}")
            seen.append(node)
            node = stages[node].after


def _merged_view(configs):
    """Union of the stage configs, mappings never replaced by scalars: for suggestions only."""
    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v)
            elif isinstance(v, dict) or k not in out or not isinstance(out[k], dict):
                out[k] = v
        return out
    merged = {}
    for cfg in configs:
        merged = merge(merged, Config(cfg).to_dict())
    return Config(merged)


def override_targets(text, stages):
    """(stage names, override text for them) that one user override applies to.

    ``<stage>.<key>=v`` is scoped to that stage when the stage has ``<key>`` (or it
    is a ``+`` add); otherwise the whole key is looked up in every stage, so a
    config key that happens to share a stage's name (``knn.k`` with a ``knn``
    stage) still works. A key found in no stage is one error with a suggestion.
    """
    key, _value, is_add = parse_override(text)
    raw_value = text.split("=", 1)[1]
    head, _, rest = key.partition(".")
    if head in stages and rest:
        scoped = ("+" if is_add else "") + rest + "=" + raw_value
        if is_add or get_dotted(stages[head].config, rest, MISSING) is not MISSING:
            return [head], scoped
        anywhere = any(get_dotted(s.config, k, MISSING) is not MISSING
                       for s in stages.values() for k in (key, head))
        if not anywhere:  # plainly meant for the stage: suggest from its config alone
            try:
                apply_overrides(stages[head].config, [scoped])
            except ConfigError as exc:
                raise ConfigError(f"stage {head!r}: {exc}") from None
    if is_add:
        return list(stages), text
    having = [name for name, s in stages.items() if get_dotted(s.config, key, MISSING) is not MISSING]
    if having:
        return having, text
    # Reuse the config module's message, with suggestions drawn from all stages.
    apply_overrides(_merged_view(s.config for s in stages.values()), [text])
    raise ConfigError(f"unknown config key {key!r} in every stage ({', '.join(stages)})")


def apply_user_overrides(stages, overrides):
    """Apply ``--set`` overrides in order to the resolved stage configs, in place."""
    for text in overrides:
        names, stage_text = override_targets(text, stages)
        for name in names:
            try:
                stages[name].config = apply_overrides(stages[name].config, [stage_text])
            except ConfigError as exc:
                raise ConfigError(f"stage {name!r}: {exc}") from None


def check_stage_values(stages):
    """Refuse a value the config schema does not allow (``epochs=0``, ``device=tpu``), naming the stage."""
    for stage in stages.values():
        try:
            check_config(stage.config, stage.type)
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name!r}: {exc}") from None


def read_spec(name_or_path, root="."):
    """(absolute path, path relative to root, raw mapping) of a spec; nothing resolved yet."""
    root = os.path.abspath(root)
    path = find_spec(name_or_path, root)
    data = _read_yaml(path)
    rel = os.path.relpath(path, root)
    _check_keys(data, _SPEC_KEYS, rel)
    return path, rel, data


def is_sweep(data):
    """True when a raw spec has matrix axes (or includes): ``jobs.matrix`` expands it."""
    return any(key in data for key in MATRIX_KEYS)


def spec_name(data, path):
    name = data.get("name", os.path.splitext(os.path.basename(path))[0])
    check_name(name, "experiment name")
    return name


def _optional_text(data, key, rel):
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpecError(f"{rel}: {key!r} must be text, got {value!r}")
    return value


def check_image(image, where):
    if image in (None, ""):
        return ""
    if not isinstance(image, str) or not names.IMAGE_REF.fullmatch(image):
        raise SpecError(f"{where}: unsafe image reference {image!r}")
    return image


def _load_stage_config(root, stage, cache):
    """The stage's config file with its spec overrides; ``cache`` (one sweep's loads) parses each
    (file, overrides) once however many rows use it."""
    key = (os.path.join(root, stage.config_path), stage.overrides)
    if cache is None or key not in cache:
        loaded = load_config(key[0], stage.overrides)
        if cache is None:
            return loaded
        cache[key] = loaded
    return Config(cache[key].to_dict())


def experiment_from_data(data, path, root, overrides=(), name=None, cache=None):
    """Validate and resolve a spec's stages (matrix keys are not looked at here)."""
    root = os.path.abspath(root)
    rel = os.path.relpath(path, root)
    name = name or spec_name(data, path)
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, dict) or not raw_stages:
        raise SpecError(f"{rel} needs a non-empty 'stages' mapping")
    runnable = runnable_types()
    all_stages = {}
    for sname, raw in raw_stages.items():
        all_stages[sname] = _parse_stage(sname, raw, rel, root, runnable)
    _check_graph(all_stages, rel)
    stages = {n: s for n, s in all_stages.items() if not s.planned}
    planned = {n: s for n, s in all_stages.items() if s.planned}
    if not stages:
        raise SpecError(f"{rel}: no stage can run yet (types {', '.join(s.type for s in planned.values())}; "
                        f"runnable: {', '.join(runnable)})")
    for stage in stages.values():
        try:
            stage.config = _load_stage_config(root, stage, cache)
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name!r} ({stage.config_path}): {exc}") from None
    apply_user_overrides(stages, tuple(overrides))
    check_stage_values(stages)
    resources = res.validate(data.get("resources"), f"{rel}: resources")
    baseline = _optional_text(data, "baseline", rel)
    if baseline:
        check_name(baseline, "baseline experiment name")
    return Experiment(name=name, description=_optional_text(data, "description", rel), path=path, root=root,
                      stages=stages, resources=resources, overrides=tuple(overrides), planned=planned,
                      image=check_image(data.get("image"), rel), display_name=_optional_text(data, "display_name", rel),
                      baseline=baseline)


def load_experiment(name_or_path, root=".", overrides=()) -> Experiment:
    """Load, validate and resolve a single-cell experiment spec; raise SpecError/ConfigError on bad input.

    A spec with matrix axes is a sweep: load it with ``jobs.matrix.load_sweep``."""
    path, rel, data = read_spec(name_or_path, root)
    if is_sweep(data):
        raise SpecError(f"{rel} is a sweep (it has {', '.join(k for k in MATRIX_KEYS if k in data)}); "
                        f"load it with jobs.matrix.load_sweep")
    return experiment_from_data(data, path, root, overrides)

