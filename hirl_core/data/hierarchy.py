"""Class hierarchies: coarse levels above a dataset's classes, for the clustering evaluation.

A hierarchy is `data.hierarchy` in a stage config: a mapping of *level names* → {coarse class → the fine
classes under it}. Each level maps straight from the fine classes (not from the level before), so a level
can be added or dropped alone; levels are listed fine → coarse. Fine classes are named by index or by
their dataset name (Fashion-MNIST's `CLASSES`, an ImageFolder's folder names). Every fine class must sit
under exactly one coarse class of every level.

    data:
      hierarchy:                 # null: the dataset's own (Fashion-MNIST: below; imagefolder: none); {}: none
        coarse:
          tops: [T-shirt/top, Pullover, Coat, Shirt]
          footwear: [Sandal, Sneaker, Ankle boot]
          ...

Why a dataset-level default: the hierarchy belongs to the dataset's classes, not to one stage config, so
every Fashion-MNIST config gets the same one without a copy that could drift. Torch-free (the
orchestrator may import it).
"""
from __future__ import annotations

import re

from ..config import ConfigError
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES

FASHION_MNIST_HIERARCHY = {
    "coarse": {
        "tops": ["T-shirt/top", "Pullover", "Coat", "Shirt"],
        "footwear": ["Sandal", "Sneaker", "Ankle boot"],
        "trouser": ["Trouser"],
        "dress": ["Dress"],
        "bag": ["Bag"],
    },
}
DEFAULTS = {"fashion_mnist": FASHION_MNIST_HIERARCHY}
LEVEL_NAME = re.compile(r"[a-z][a-z0-9_]*")
RESERVED = ("fine", "untrained")  # would make metric names ambiguous (nmi_untrained is the untrained backbone's)


def class_names(data) -> tuple | None:
    """The fine class names a dataset knows without being opened (Fashion-MNIST), else None."""
    return FASHION_MNIST_CLASSES if data.get("dataset") == "fashion_mnist" else None


def hierarchy_of(data) -> dict:
    """The configured hierarchy (`data.hierarchy`), or the dataset's default when it is null or absent."""
    given = data.get("hierarchy")
    if given is None:
        return DEFAULTS.get(data.get("dataset"), {})
    if not isinstance(given, dict):
        raise ConfigError(f"data.hierarchy={given!r} has the wrong type: must be a mapping of level names to "
                          "{coarse class: [fine classes]}, {} (none) or null (the dataset's own)")
    return given


def _fine_index(item, names, num_classes: int, where: str) -> int:
    if isinstance(item, int) and not isinstance(item, bool):
        if 0 <= item < num_classes:
            return item
        raise ConfigError(f"{where}: class index {item} is out of range: must be in [0, {num_classes - 1}]")
    if isinstance(item, str) and names is not None and item in names:
        return list(names).index(item)
    allowed = ", ".join(map(repr, names)) if names is not None else f"class indices 0..{num_classes - 1}"
    raise ConfigError(f"{where}: unknown fine class {item!r}; allowed: {allowed}")


def resolve_hierarchy(hierarchy: dict, names, num_classes: int) -> dict:
    """{level: (fine → coarse index list [num_classes], coarse class names)}; ConfigError (one line) when a
    level is malformed or does not put every fine class under exactly one coarse class."""
    out = {}
    for level, groups in hierarchy.items():
        where = f"data.hierarchy.{level}"
        if not isinstance(level, str) or not LEVEL_NAME.fullmatch(level) or level in RESERVED:
            raise ConfigError(f"data.hierarchy level name {level!r} is not allowed: must be lower-case letters, "
                              f"digits and _ (a metric suffix), not {' or '.join(RESERVED)}")
        if not isinstance(groups, dict) or not groups:
            raise ConfigError(f"{where}={groups!r} has the wrong type: must be a non-empty mapping of "
                              "coarse class → list of fine classes")
        coarse_of = [None] * num_classes
        for c, (coarse, members) in enumerate(groups.items()):
            if not isinstance(members, (list, tuple)) or not members:
                raise ConfigError(f"{where}.{coarse}={members!r} has the wrong type: must be a non-empty list of "
                                  "fine classes (index or name)")
            for item in members:
                i = _fine_index(item, names, num_classes, f"{where}.{coarse}")
                if coarse_of[i] is not None:
                    raise ConfigError(f"{where}: fine class {item!r} is under two coarse classes "
                                      f"({list(groups)[coarse_of[i]]!r} and {coarse!r})")
                coarse_of[i] = c
        missing = [names[i] if names is not None else i for i, c in enumerate(coarse_of) if c is None]
        if missing:
            raise ConfigError(f"{where}: fine classes {missing!r} are under no coarse class; every class must be")
        out[level] = (coarse_of, [str(g) for g in groups])
    return out
