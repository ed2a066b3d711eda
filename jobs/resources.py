"""Resource requests in experiment specs: validated when the spec loads, merged per stage.

``resources`` holds keys every cluster backend understands at its top level and one
section per backend, which wins over them::

    resources:
      nodes: 1                # per stage job
      gpus_per_node: 8
      cpus_per_task: 10
      mem: 256G               # or a number of GiB
      time: "3-00:00:00"      # SLURM's forms, or a number of minutes
      local: {nproc_per_node: 1}
      slurm: {partition: gpu, account: lab, qos: normal, constraint: "a100|h100"}
      k8s: {gpu_pool: a100, queue: research, tolerations: [{key: nvidia.com/gpu, operator: Exists}]}

A stage may carry its own ``resources`` (same form), merged over the experiment's.
Numbers must be numbers and names must be safe for the backend: both are refused with
one line when the spec loads, long before a scheduler would complain.
"""

from __future__ import annotations

import copy
import re

from hirl_core.config import closest
from hirl_core.schema import is_int

from . import names
from .errors import SpecError

BACKEND_SECTIONS = ("local", "slurm", "k8s")
_MEM = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT])(i?B?)?", re.IGNORECASE)
_MEM_FACTOR_MIB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
# SLURM --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def _pos_int(v, where):
    if not is_int(v) or v < 1:
        raise SpecError(f"{where} must be a positive integer, got {v!r}")


def _nonneg_int(v, where):
    if not is_int(v) or v < 0:
        raise SpecError(f"{where} must be a whole number (0 or more), got {v!r}")


def parse_mem_mib(v):
    """Memory in MiB from a number of GiB or a size such as ``64G``, ``512Mi``, ``1.5T``; None if bad."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return int(v * 1024) if v > 0 else None
    m = _MEM.fullmatch(str(v).strip())
    if not m or float(m.group(1)) <= 0:
        return None
    return max(1, int(float(m.group(1)) * _MEM_FACTOR_MIB[m.group(2).upper()]))


def _mem(v, where):
    if parse_mem_mib(v) is None:
        raise SpecError(f"{where} must be a size such as 64G or 512M (or a number of GiB), got {v!r}")


def parse_time_s(v):
    """Seconds from a number of minutes or SLURM's time forms; None if bad."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return int(v * 60) if v > 0 else None
    m = _TIME.fullmatch(str(v).strip())
    if not m:
        return None
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = (nums + [0, 0])[:3]
        seconds = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif len(nums) == 1:  # minutes
        seconds = nums[0] * 60
    elif len(nums) == 2:  # M:S
        seconds = nums[0] * 60 + nums[1]
    else:  # H:M:S
        seconds = nums[0] * 3600 + nums[1] * 60 + nums[2]
    return seconds if seconds > 0 else None


def _time(v, where):
    if parse_time_s(v) is None:
        raise SpecError(f"{where} must be a time limit such as 72:00:00, 3-00:00:00 or a number of minutes, "
                        f"got {v!r}")


def _matcher(regex, what):
    def check(v, where):
        if not isinstance(v, str) or not regex.fullmatch(v):
            raise SpecError(f"{where}: unsafe {what} {v!r}")
    return check


def _dns_label(v, where):
    if not names.is_dns1123_label(v):
        raise SpecError(f"{where}: unsafe name {v!r} for Kubernetes (a DNS-1123 label: lowercase letters, "
                        f"digits and '-', at most 63 characters)")


def _label_value(v, where):
    if not names.is_label_value(v) or not v:
        raise SpecError(f"{where}: unsafe Kubernetes label value {v!r} (letters, digits, '-', '_', '.', "
                        f"at most 63 characters, alphanumeric at both ends)")


_slurm_name = _matcher(names.SLURM_NAME, "SLURM name (letters, digits, '_', '.', '-')")
_constraint = _matcher(names.SLURM_CONSTRAINT, "SLURM constraint (features joined by & | ,)")
_image = _matcher(names.IMAGE_REF, "image reference")
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


def _tolerations(v, where):
    if not isinstance(v, list):
        raise SpecError(f"{where} must be a list of tolerations ({{key, operator, value, effect}})")
    for i, tol in enumerate(v):
        at = f"{where}[{i}]"
        if not isinstance(tol, dict):
            raise SpecError(f"{at} must be a mapping with key/operator/value/effect")
        for k in tol:
            if k not in _TOLERATION_KEYS:
                raise SpecError(f"{at}: unknown key {k!r}{closest(k, _TOLERATION_KEYS)}; "
                                f"allowed: {', '.join(_TOLERATION_KEYS)}")
        if "key" in tol and not (isinstance(tol["key"], str) and names.QUALIFIED_NAME.fullmatch(tol["key"])):
            raise SpecError(f"{at}.key: unsafe toleration key {tol['key']!r}")
        if tol.get("operator", "Equal") not in ("Equal", "Exists"):
            raise SpecError(f"{at}.operator must be Equal or Exists, got {tol['operator']!r}")
        if "value" in tol and not names.is_label_value(str(tol["value"])):
            raise SpecError(f"{at}.value: unsafe label value {tol['value']!r}")
        if tol.get("effect") not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SpecError(f"{at}.effect must be NoSchedule, PreferNoSchedule or NoExecute, got {tol['effect']!r}")
        if "tolerationSeconds" in tol:
            _nonneg_int(tol["tolerationSeconds"], f"{at}.tolerationSeconds")


def _choice(*allowed):
    def check(v, where):
        if v not in allowed:
            raise SpecError(f"{where} must be one of {', '.join(allowed)}, got {v!r}")
    return check


def _bool(v, where):
    if not isinstance(v, bool):
        raise SpecError(f"{where} must be true or false, got {v!r}")


COMMON = {"nodes": _pos_int, "gpus_per_node": _nonneg_int, "cpus_per_task": _pos_int, "mem": _mem,
          "time": _time}
SCHEMA = {
    "local": {"nproc_per_node": _pos_int},
    "slurm": {**COMMON, "partition": _slurm_name, "account": _slurm_name, "qos": _slurm_name,
              "constraint": _constraint, "array_parallelism": _pos_int, "image": _image,
              # tasks (= torch ranks) per node when not one per GPU (CPU jobs); a whole node to itself
              "ntasks_per_node": _pos_int, "exclusive": _bool},
    "k8s": {**COMMON, "gpu_pool": _label_value, "tolerations": _tolerations, "queue": _dns_label,
            "namespace": _dns_label, "priority_class": _dns_label, "image": _image,
            # jobset: JobSet with gang restarts; indexed-job: batch/v1 Indexed Job + headless Service
            "workload": _choice("jobset", "indexed-job"), "max_restarts": _nonneg_int,
            "grace_period_s": _nonneg_int, "shm_size": _mem, "data_pvc": _dns_label, "checkpoint_pvc": _dns_label,
            "mlflow_configmap": _dns_label, "mlflow_secret": _dns_label, "service_account": _dns_label},
}


def validate(raw, where):
    """Check a ``resources`` mapping; return a deep copy. Raise SpecError (one line) on bad input."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping (keys: {', '.join(COMMON)}, or a backend section: "
                        f"{', '.join(BACKEND_SECTIONS)})")
    allowed = list(COMMON) + list(BACKEND_SECTIONS)
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key in COMMON:
            if value is not None:
                COMMON[key](value, at)
        elif key in SCHEMA:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise SpecError(f"{at} must be a mapping of {key} settings")
            for sub, subvalue in value.items():
                if sub not in SCHEMA[key]:
                    raise SpecError(f"unknown key {sub!r} in {at}{closest(sub, SCHEMA[key])}; "
                                    f"allowed: {', '.join(SCHEMA[key])}")
                if subvalue is not None:
                    SCHEMA[key][sub](subvalue, f"{at}.{sub}")
        else:
            raise SpecError(f"unknown key {key!r} in {where}{closest(key, allowed)}; allowed: {', '.join(allowed)}")
    return copy.deepcopy(raw)


def merge(base, top):
    """``top`` over ``base``: backend sections merge key by key."""
    out = copy.deepcopy(base or {})
    for key, value in (top or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective(resources, backend):
    """The flat settings one backend sees: the common keys, then its own section over them."""
    res = resources or {}
    flat = {k: v for k, v in res.items() if k in COMMON and v is not None}
    section = res.get(backend) or {}
    flat.update({k: v for k, v in section.items() if v is not None} if isinstance(section, dict) else {})
    return flat


def world_size(resources, backend):
    """Processes a stage runs with on ``backend`` (the seed's total batch = per-GPU batch × this)."""
    opts = effective(resources, backend)
    if backend == "local":
        return int(opts.get("nproc_per_node") or 1)
    per_node = opts.get("ntasks_per_node") or opts.get("gpus_per_node") or 1  # one rank per GPU by default
    return int(opts.get("nodes") or 1) * int(per_node)
