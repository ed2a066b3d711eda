"""Typed schema of the stage configs: each known key's type, range or allowed names.

``check_config(cfg, stage)`` refuses a value the stage code would crash on, or worse run with
(``epochs=0`` finishes an untrained chain, ``device=tpu`` trains on the CPU), in one line naming the
key, the value and what is allowed. The orchestrator checks every resolved stage config (each sweep
cell too) before anything is created; ``python -m hirl_core`` checks again at stage start, so a config
run by hand is refused the same way.

Only keys present are checked: a config that leaves a key out gets the code's default, and keys not
listed here (method-specific extras, ``+key`` additions) are the strict override grammar's business.
The allowed names live here, torch-free, for the orchestrator; the torch registries use them (the
optimisers) or are tested to list the same (methods, backbones).
"""
from __future__ import annotations

import math

from .config import MISSING, ConfigError, closest, get_dotted
from .data.paths import DATASETS, MADE_IF_MISSING

METHODS = ("mocov2", "simsiam", "swav", "mocov3", "dino", "ibot")
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "vit_tiny", "vit_small", "vit_base")
OPTIMIZERS = ("sgd", "adamw", "lars")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")   # auto: bf16 on CUDA, fp32 on CPU
DEVICES = ("auto", "cpu", "cuda")
CLIP_MODES = ("global", "per_param")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")

WRONG_TYPE, OUT_OF_RANGE, NOT_ALLOWED = "has the wrong type", "is out of range", "is not allowed"


class Rule:
    """What one key may hold. ``null``: None refused; text: None allowed and means that ("" says nothing)."""

    def __init__(self, null=None):
        self.null = null

    def problem(self, value):
        """None when ``value`` is allowed, else why not (WRONG_TYPE, OUT_OF_RANGE or NOT_ALLOWED ...)."""
        if value is None:
            return None if self.null is not None else WRONG_TYPE
        return self._problem(value)

    def describe(self):
        own = self._describe()
        if self.null is None:
            return own
        return f"null ({self.null}) or {own}" if self.null else f"null or {own}"

    def _problem(self, value):
        raise NotImplementedError

    def _describe(self):
        raise NotImplementedError


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to a config


def _bounds(lo, hi, lo_open, hi_open):
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


class Num(Rule):
    """A number (ints are numbers: ``lr=1`` is fine); bounds closed unless ``lo_open``/``hi_open``."""

    kind = "a number"

    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False, null=None):
        super().__init__(null)
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def _type_ok(self, value):
        return is_int(value) or isinstance(value, float)

    def _problem(self, value):
        if not self._type_ok(value):
            return WRONG_TYPE
        if isinstance(value, float) and not math.isfinite(value):
            return OUT_OF_RANGE
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return OUT_OF_RANGE
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return OUT_OF_RANGE
        return None

    def _describe(self):
        return self.kind + _bounds(self.lo, self.hi, self.lo_open, self.hi_open)


class Int(Num):
    kind = "an integer"

    def _type_ok(self, value):
        return is_int(value)


class Bool(Rule):
    def _problem(self, value):
        return None if isinstance(value, bool) else WRONG_TYPE

    def _describe(self):
        return "true or false"


class Text(Rule):
    def _problem(self, value):
        return None if isinstance(value, str) else WRONG_TYPE

    def _describe(self):
        return "text"


class Choice(Rule):
    """One of fixed names; ``fold_case`` where the code lower-cases (``optimizer.name: SGD``)."""

    def __init__(self, options, fold_case=False, null=None):
        super().__init__(null)
        self.options, self.fold_case = tuple(options), fold_case

    def _problem(self, value):
        for option in self.options:
            if type(value) is type(option) and (value == option or (
                    self.fold_case and isinstance(value, str) and value.lower() == option)):
                return None
        return NOT_ALLOWED + (closest(value, self.options) if isinstance(value, str) else "")

    def _describe(self):
        return "one of " + ", ".join(map(str, self.options))


class Seq(Rule):
    """A non-empty list of ``item`` (``length`` of them when given)."""

    def __init__(self, item, length=None, null=None):
        super().__init__(null)
        self.item, self.length = item, length

    def _problem(self, value):
        if not isinstance(value, (list, tuple)):
            return WRONG_TYPE
        problems = [self.item.problem(v) for v in value]
        if any(p is not None and p.startswith(WRONG_TYPE) for p in problems):
            return WRONG_TYPE
        if not value or (self.length is not None and len(value) != self.length) or any(problems):
            return OUT_OF_RANGE
        return None

    def _describe(self):
        count = f"a list of {self.length}" if self.length else "a non-empty list"
        return f"{count}, each {self.item.describe()}"


class Either(Rule):
    """``first`` or ``second`` (a probability or one per crop, say)."""

    def __init__(self, first, second, null=None):
        super().__init__(null)
        self.first, self.second = first, second

    def _problem(self, value):
        problems = [self.first.problem(value), self.second.problem(value)]
        if None in problems:
            return None
        return next((p for p in problems if not p.startswith(WRONG_TYPE)), WRONG_TYPE)

    def _describe(self):
        return f"{self.first.describe()}, or {self.second.describe()}"


POSITIVE, NON_NEGATIVE = Num(0, lo_open=True), Num(0)
COUNT, INDEX = Int(1), Int(0)                 # at least one; zero or more
FRACTION = Num(0, 1)                          # a probability or a momentum
SCALE = Seq(Num(0, 1, lo_open=True), length=2)  # a crop's area range
PROB_PER_CROP = Either(FRACTION, Seq(FRACTION))

# Sections that must be mappings; True: null is allowed too (a knn takes the pre-training's backbone,
# a baseline has no hirl).
PRETRAIN_SECTIONS = {"method": False, "backbone": False, "data": False, "optimizer": False, "schedule": False,
                     "augment": False, "hirl": True, "hirl.kmeans": False, "tracking": False}
KNN_SECTIONS = {"backbone": True, "data": False, "knn": False, "tracking": False}
# data.hierarchy: null takes the dataset's own (hirl_core/data/hierarchy.py checks its contents)
CLUSTERING_SECTIONS = {"backbone": True, "data": False, "data.hierarchy": True, "clustering": False,
                       "tracking": False}

COMMON = {
    "seed": INDEX, "device": Choice(DEVICES), "output_dir": Text(),
    "tracking.system_metrics_interval_s": Num(1, null="no system metrics"),
    "data.dataset": Choice(DATASETS), "data.root": Text(null="the dataset's default"),
    "data.train_subset": Int(1, null="all"), "data.val_subset": Int(1, null="all"), "data.subset_seed": INDEX,
    "data.image_size": COUNT, "data.channels": Choice((1, 3)), "data.train_dir": Text(), "data.val_dir": Text(),
    "data.train_list": Text(null="the whole train split"),
    # csv / places205 (hirl_core/data/csv_dataset.py)
    "data.train_csv": Text(), "data.val_csv": Text(), "data.image_root": Text(null="the CSV's folder"),
    "data.in_memory": Bool(), "data.mean": Seq(Num(0, 1), null="ImageNet's"),
    "data.std": Seq(POSITIVE, null="ImageNet's"), "data.make_if_missing": Choice(MADE_IF_MISSING, null="never"),
    "backbone.arch": Choice(ARCHS), "backbone.width": COUNT, "backbone.small_stem": Bool(),
    "backbone.stem_stride": COUNT, "backbone.in_chans": COUNT, "backbone.zero_init_residual": Bool(),
    "backbone.image_size": COUNT, "backbone.patch_size": COUNT, "backbone.depth": Int(1, null="the arch's"),
    "backbone.drop_path_rate": Num(0, 1, hi_open=True), "backbone.qkv_bias": Bool(),
    "backbone.pos_embed": Choice(("learned", "sincos")), "backbone.weight_init": Choice(("timm", "mocov3")),
    "backbone.mask_token": Bool(),
}

PRETRAIN = {
    **COMMON,
    "epochs": COUNT, "batch_size": COUNT, "num_workers": INDEX, "precision": Choice(PRECISIONS),
    "clip_grad": Num(0, null="no clipping"), "clip_grad_mode": Choice(CLIP_MODES), "sync_bn": Bool(),
    "assumed_gpus": Int(1, null=""),
    "method.name": Choice(METHODS),
    # the methods' own keys: one meaning wherever they appear
    "method.dim": COUNT, "method.hidden_dim": Int(1, null="the backbone's width"), "method.mlp_dim": COUNT,
    "method.pred_dim": COUNT, "method.out_dim": COUNT, "method.patch_out_dim": COUNT,
    "method.bottleneck_dim": COUNT, "method.proj_layers": COUNT, "method.n_prototypes": COUNT,
    "method.queue_size": COUNT, "method.queue_length": INDEX, "method.bn_splits": COUNT,
    "method.temperature": POSITIVE, "method.student_temp": POSITIVE, "method.teacher_temp": POSITIVE,
    "method.warmup_teacher_temp": POSITIVE, "method.teacher_patch_temp": POSITIVE,
    "method.warmup_teacher_patch_temp": POSITIVE, "method.warmup_teacher_temp_epochs": INDEX,
    "method.momentum": FRACTION, "method.momentum_teacher": FRACTION, "method.center_momentum": FRACTION,
    "method.center_momentum2": FRACTION, "method.epsilon": POSITIVE, "method.sinkhorn_iterations": COUNT,
    "method.crops_for_assign": Seq(INDEX), "method.freeze_prototypes_iters": INDEX,
    "method.epoch_queue_starts": INDEX, "method.freeze_last_layer": INDEX, "method.pred_start_epoch": INDEX,
    "method.norm_last_layer": Bool(), "method.shared_head": Bool(), "method.symmetric": Bool(),
    "method.fix_pred_lr": Bool(), "method.bn_stats_from_global_crops": Bool(),
    "method.lambda1": NON_NEGATIVE, "method.lambda2": NON_NEGATIVE,
    "method.pred_ratio": Either(Num(0, 1, hi_open=True), Seq(Num(0, 1, hi_open=True))),
    "method.pred_ratio_var": Either(NON_NEGATIVE, Seq(NON_NEGATIVE)),
    "method.pred_aspect_ratio": Seq(POSITIVE, length=2),
    "optimizer.name": Choice(OPTIMIZERS, fold_case=True), "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE, "optimizer.weight_decay_end": Num(0, null="constant"),
    "optimizer.momentum": FRACTION, "optimizer.betas": Seq(Num(0, 1, hi_open=True), length=2),
    "optimizer.trust_coefficient": POSITIVE, "optimizer.exclude_1d": Bool(null="the optimiser's default"),
    "optimizer.scale_lr": Bool(),
    "schedule.warmup_epochs": NON_NEGATIVE, "schedule.warmup_start_lr": Num(0, null="from ~0"),
    "schedule.min_lr": NON_NEGATIVE, "schedule.by_epoch": Bool(),
    "augment.crop_size": Int(1, null="data.image_size"), "augment.crop_scale": SCALE, "augment.flip": FRACTION,
    "augment.jitter_p": FRACTION, "augment.brightness": NON_NEGATIVE, "augment.contrast": NON_NEGATIVE,
    "augment.color_jitter": Seq(NON_NEGATIVE, length=4), "augment.gray_p": FRACTION,
    "augment.blur_p": PROB_PER_CROP, "augment.solarize_p": PROB_PER_CROP, "augment.local_blur_p": FRACTION,
    "augment.interpolation": Choice(INTERPOLATIONS), "augment.local_crops": INDEX,
    "augment.local_size": Int(1, null=""), "augment.local_scale": SCALE,
    "hirl.num_cluster": Seq(COUNT), "hirl.num_neg_path": COUNT, "hirl.num_mlp_layer": COUNT,
    "hirl.activation": Choice(("relu",)), "hirl.cluster_warmup_epoch": INDEX, "hirl.iter_wise_assignment": Bool(),
    "hirl.reassign_separate_forward": Bool(), "hirl.T": POSITIVE, "hirl.feature_batch_size": COUNT,
    "hirl.kmeans.niter": COUNT, "hirl.kmeans.nredo": COUNT, "hirl.kmeans.max_points_per_centroid": COUNT,
    "hirl.kmeans.min_points_per_centroid": INDEX,
}

KNN = {
    **COMMON,
    "pretrained": Text(null="set by the orchestrator"), "backbone_prefix": Text(), "untrained": Bool(),
    "knn.k": Seq(COUNT), "knn.temperature": POSITIVE, "knn.batch_size": COUNT, "knn.query_chunk": COUNT,
}

CLUSTERING = {
    **COMMON,
    "pretrained": Text(null="set by the orchestrator"), "backbone_prefix": Text(), "untrained": Bool(),
    "clustering.num_clusters": Either(Int(1), Seq(COUNT), null="the number of classes"),
    "clustering.niter": COUNT,
    "clustering.nredo": COUNT, "clustering.seed": INDEX, "clustering.max_points_per_centroid": COUNT,
    "clustering.batch_size": COUNT, "clustering.num_workers": INDEX, "clustering.tree": Bool(),
    "clustering.tree_train_purity": Bool(),
    "clustering.faiss_threads": Int(1, null="faiss's default"),
}

# The supervised evaluations (hirl_core/evals/supervised*.py): linear and finetune as they are; the
# semi-supervised and transfer stages add their own keys to SUPERVISED.
SUPERVISED_MODES = ("linear", "finetune")
SCHEDULES = ("cosine", "step")
HEAD_INITS = ("normal", "trunc_normal")
ERASE_MODES = ("const", "rand", "pixel")
SUPERVISED_SECTIONS = {"backbone": True, "data": False, "optimizer": False, "schedule": False, "augment": False,
                       "head": False, "mixup": True, "model_ema": True, "tracking": False}
SUPERVISED = {
    **COMMON,
    "pretrained": Text(null="set by the orchestrator"), "backbone_prefix": Text(), "untrained": Bool(),
    "epochs": COUNT, "batch_size": COUNT, "eval_batch_size": COUNT, "num_workers": INDEX,
    "precision": Choice(PRECISIONS), "drop_path_rate": Num(0, 1, hi_open=True, null="the backbone's"),
    "label_smoothing": Num(0, 1, hi_open=True),
    "head.init": Choice(HEAD_INITS), "head.std": POSITIVE,
    "optimizer.name": Choice(OPTIMIZERS, fold_case=True), "optimizer.lr": POSITIVE,
    "optimizer.lr_last_layer": Num(0, lo_open=True, null="optimizer.lr"),
    "optimizer.layer_decay": Num(0, 1, lo_open=True, null="none"), "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": FRACTION, "optimizer.betas": Seq(Num(0, 1, hi_open=True), length=2),
    "optimizer.trust_coefficient": POSITIVE, "optimizer.exclude_1d": Bool(null="the optimiser's default"),
    "optimizer.scale_lr": Bool(),
    "schedule.name": Choice(SCHEDULES), "schedule.milestones": Seq(INDEX, null="no steps"),
    "schedule.gamma": Num(0, 1, lo_open=True), "schedule.warmup_epochs": NON_NEGATIVE,
    "schedule.warmup_start_lr": Num(0, null="from ~0"), "schedule.min_lr": NON_NEGATIVE,
    "augment.random_resized_crop": Bool(), "augment.crop_scale": SCALE, "augment.flip": FRACTION,
    "augment.rand_augment": Text(null="off"), "augment.color_jitter": NON_NEGATIVE,
    "augment.interpolation": Choice(INTERPOLATIONS), "augment.reprob": FRACTION,
    "augment.remode": Choice(ERASE_MODES), "augment.recount": COUNT,
    "mixup.mixup_alpha": NON_NEGATIVE, "mixup.cutmix_alpha": NON_NEGATIVE, "mixup.prob": FRACTION,
    "mixup.switch_prob": FRACTION, "mixup.mode": Choice(("batch", "pair", "elem")),
    "model_ema.decay": Num(0, 1, hi_open=True, null="no EMA"),
}

# semisup (hirl_core/evals/semisup.py): exactly one of list, fraction, per_class (the stage checks that)
SEMISUP_SECTIONS = {**SUPERVISED_SECTIONS, "semisup": False}
SEMISUP = {
    **SUPERVISED,
    "semisup.list": Text(null="a drawn subset"), "semisup.fraction": Num(0, 1, lo_open=True, null="not a fraction"),
    "semisup.per_class": Int(1, null="not a count"), "semisup.seed": INDEX,
}

SCHEMAS = {"pretrain": (PRETRAIN_SECTIONS, PRETRAIN), "knn": (KNN_SECTIONS, KNN),
           "clustering": (CLUSTERING_SECTIONS, CLUSTERING),
           "linear": (SUPERVISED_SECTIONS, SUPERVISED), "finetune": (SUPERVISED_SECTIONS, SUPERVISED),
           "semisup": (SEMISUP_SECTIONS, SEMISUP), "transfer": (SUPERVISED_SECTIONS, SUPERVISED)}


def check_value(key, value, rule):
    """Raise ConfigError (one line) when ``rule`` does not allow ``value`` at ``key``."""
    problem = rule.problem(value)
    if problem is not None:
        raise ConfigError(f"{key}={value!r} {problem}: must be {rule.describe()}")


def check_config(cfg, stage):
    """Refuse the first known key of a ``stage`` config (``pretrain``, ``knn``, ``clustering``) whose value
    is not allowed.

    A stage type without a schema is not checked (the orchestrator plans types it cannot run yet)."""
    if stage not in SCHEMAS:
        return
    sections, keys = SCHEMAS[stage]
    for key, nullable in sections.items():
        value = get_dotted(cfg, key, MISSING)
        if value is not MISSING and not isinstance(value, dict) and not (value is None and nullable):
            raise ConfigError(f"{key}={value!r} {WRONG_TYPE}: must be a mapping of {key} settings"
                              + (" (or null)" if nullable else ""))
    for key, rule in keys.items():
        value = get_dotted(cfg, key, MISSING)
        if value is not MISSING:
            check_value(key, value, rule)


def check_stage_config(cfg, stage):
    """``check_config`` with the stage in front: ``pretrain: epochs=0 is out of range: ...``."""
    try:
        check_config(cfg, stage)
    except ConfigError as exc:
        raise ConfigError(f"{stage}: {exc}") from None
