"""YAML experiment configs: ``_base_`` inheritance plus typed, strict ``key=value`` overrides.

Parents named under a top-level ``_base_`` key are merged first and the file on top
(mappings merge key by key, other values are replaced; ``_delete_: true`` replaces a
parent's mapping outright). Keys are strict because a typo such as ``optimizer.lrr=0.1``
would otherwise launch a long cluster job that silently ignores it; new keys need an
explicit ``+key=value``. Only stdlib and PyYAML are imported so the orchestrator stays fast.
"""

import copy
import difflib
import hashlib
import json
import os
import re
import tempfile

import yaml

_NO_DEFAULT = object()
# Pass as get_dotted's default to tell an absent key from one that holds None.
MISSING = object()
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A user mistake in a config file or an override; the message is one line."""


def closest(word, choices):
    """`` (did you mean 'x'?)`` for the choice nearest to a mistyped ``word``, else ``""``."""
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _wrap(value):
    if isinstance(value, dict) and not isinstance(value, Config):
        return Config(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(v) for v in value)
    return value


def plain_tree(value):
    """Dicts and lists rebuilt all the way down (tuples become lists): a deep copy made of builtins."""
    if isinstance(value, dict):
        return {k: plain_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_tree(v) for v in value]
    return value


class Config(dict):
    """A dict whose keys are also attributes, recursively; ``cfg["items"]`` for method names."""

    __slots__ = ()  # no instance __dict__, so pickle/deepcopy only see the items

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.update(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name, value):
        self[name] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, _wrap(value))

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def copy(self):
        return Config(self)

    def to_dict(self):
        return plain_tree(self)


def _merge(base, child):
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            keep = value.get("_delete_") is not True and isinstance(out.get(key), dict)
            out[key] = _merge(out[key] if keep else {}, value)  # merging into {} drops _delete_
        elif key != "_delete_":
            out[key] = value
    return out


def _load_tree(path, chain):
    real = os.path.realpath(path)
    if real in chain:
        names = [os.path.basename(p) for p in chain[chain.index(real):]] + [os.path.basename(real)]
        raise ConfigError(f"_base_ cycle: {' -> '.join(names)} (in {os.path.dirname(real)})")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping at top level, not {type(data).__name__}")
    bases = data.pop("_base_", None) or []
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"_base_ in {path} must be a path or a list of paths, got {bases!r}")
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), os.path.expanduser(base))
        merged = _merge(merged, _load_tree(base_path, chain + [real]))
    return _merge(merged, data)


def load_config(path, overrides=()):
    """Load a YAML config, resolving ``_base_`` chains, then apply ``overrides``."""
    return apply_overrides(Config(_load_tree(os.fspath(path), [])), overrides)


def _split_top(text):
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[()]":
            depth += 1 if ch in "[(" else -1
            if depth < 0:
                raise ValueError("unbalanced brackets")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError("unbalanced brackets or quotes")
    parts.append(text[start:])
    return parts


def _parse_value(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text and text[0] in "[(":
        if text[-1] != "])"["[(".index(text[0])]:
            raise ValueError("unbalanced brackets")
        inner = text[1:-1].strip()
        return [_parse_value(item) for item in _split_top(inner)] if inner else []
    if text.lower() in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(text.lower())
    if _FLOAT_RE.fullmatch(text):
        return int(text) if _INT_RE.fullmatch(text) else float(text)
    return text


def parse_override(text):
    """Parse ``[+]a.b.c=value`` into ``(key, typed_value, is_add)``."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"bad override {text!r}: expected key=value (or +key=value to add a key)")
    key, raw = text.split("=", 1)
    is_add = key.strip().startswith("+")
    key = key.strip()[is_add:].strip()
    if not key or any(not part or any(c.isspace() for c in part) for part in key.split(".")):
        raise ConfigError(f"bad override {text!r}: key must be non-empty dotted names like a.b.c")
    try:
        value = _parse_value(raw)
    except ValueError as exc:
        raise ConfigError(f"bad override {text!r}: {exc} in value {raw.strip()!r}") from None
    return key, value, is_add


def _unknown(cfg, key):
    """The error for a missing key, with the closest existing keys as suggestions."""
    parent, _, last = key.rpartition(".")
    scored = []
    for cand in flat_keys(cfg):
        cand_parent, _, cand_last = cand.rpartition(".")
        tail = difflib.SequenceMatcher(None, last, cand_last).ratio()
        if cand_parent == parent:  # siblings share the prefix, so only the last part tells
            score = tail if tail >= 0.6 else 0.0
        else:  # a typo in a parent, or the right name at the wrong level
            same_depth = cand.count(".") == key.count(".")
            full = difflib.SequenceMatcher(None, key, cand).ratio() if same_depth else 0.0
            score = max(full if full >= 0.75 else 0.0, tail * 0.99 if tail >= 0.75 else 0.0)
        if score:
            scored.append((-score, cand))
    close = [cand for _, cand in sorted(scored)[:3]]
    if close:
        hint = f"did you mean: {', '.join(close)}?"
    else:
        node, level = cfg, []
        for part in key.split(".")[:-1]:
            if not isinstance(node.get(part), dict):
                break
            node, level = node[part], level + [part]
        where = f"under '{'.'.join(level)}'" if level else "at top level"
        hint = f"no similar key; valid keys {where}: {', '.join(sorted(map(str, node))) or '(none)'}"
    return ConfigError(f"unknown config key {key!r} ({hint}); add a new key explicitly with +{key}=...")


def _parent(cfg, key, create):
    """The mapping that holds the last part of dotted ``key``, and that last part."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or (create and node[part] is None):
            if not create:
                raise _unknown(cfg, key)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[:i + 1])!r} holds "
                              f"{type(node).__name__} {node!r}, not a mapping")
    return node, parts[-1]


def apply_overrides(cfg, overrides):
    """Return a new Config with ``overrides`` applied; ``cfg`` is left untouched."""
    out = Config(copy.deepcopy(plain_tree(cfg)))
    for text in [overrides] if isinstance(overrides, str) else overrides:
        key, value, is_add = parse_override(text)
        node, last = _parent(out, key, create=is_add)
        if last not in node and not is_add:
            raise _unknown(out, key)
        if isinstance(node.get(last), dict):  # parsed values are never mappings
            raise ConfigError(f"cannot set {key!r} to {value!r}: it holds a mapping; "
                              f"set its sub-keys instead (e.g. {key}.<name>=...)")
        node[last] = value
    return out


def flat_keys(cfg):
    """All dotted keys, mappings included (``optimizer`` and ``optimizer.lr``), sorted."""
    keys, todo = [], [("", cfg)]
    while todo:
        prefix, node = todo.pop()
        for k, v in node.items():
            keys.append(f"{prefix}{k}")
            if isinstance(v, dict):
                todo.append((f"{prefix}{k}.", v))
    return sorted(keys)


def get_dotted(cfg, key, default=_NO_DEFAULT):
    """``cfg['a']['b']`` for ``'a.b'``; ``default`` if missing, else KeyError."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def set_dotted(cfg, key, value):
    """Set ``'a.b.c'`` in place, creating intermediate mappings as needed."""
    node, last = _parent(cfg, key, create=True)
    node[last] = value


def config_hash(cfg, exclude=()):
    """First 12 hex chars of sha256 over canonical JSON; ``exclude`` drops dotted keys."""
    data = plain_tree(cfg)
    for key in exclude:
        parent, _, last = key.rpartition(".")
        node = get_dotted(data, parent, None) if parent else data
        if isinstance(node, dict):
            node.pop(last, None)
    # json writes floats via repr (0.1 stays 0.1), tuples as lists; str() covers YAML dates.
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def dumps_config(cfg):
    """The config as YAML text, keys in their natural order."""
    return yaml.safe_dump(plain_tree(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


def dump_config(cfg, path):
    """Write the config as YAML atomically, so readers never see a half-written file."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps_config(cfg))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; configs are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
