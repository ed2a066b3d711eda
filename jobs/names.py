"""Names that reach a backend, derived deterministically and safely from user strings.

Two kinds of user strings exist. *Identifiers* the user picks on purpose (experiment,
stage and method names, a SLURM partition, a Kubernetes queue) are checked and refused
when unsafe (``check_*``): silently renaming them would hide a typo. *Free text* (matrix
values such as ``optimizer.name: "SGD w/ nesterov"``, descriptions) is never refused but
never pasted either: names derived from it go through ``slug``, which keeps only safe
characters and appends a short hash of the original whenever it had to change or cut
anything, so two different inputs never collide and the same input always gives the same
name. Nothing here builds shell text; backends pass argv lists.

Limits followed: Kubernetes DNS-1123 labels (``[a-z0-9]([-a-z0-9]*[a-z0-9])?``, at most
63 characters; object names that become labels, Job/JobSet names, Service names), label
values (at most 63, ``[A-Za-z0-9._-]``, alphanumeric at both ends), SLURM job names
(we keep them to ``[A-Za-z0-9._-]`` and 64 characters so ``squeue``/``sacct`` show them
whole), and portable file names (``[A-Za-z0-9._-]``, at most 100 characters, no leading dot).
"""

from __future__ import annotations

import hashlib
import re

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
# SLURM partition, account, QOS names: what sinfo/sacctmgr accept without quoting.
SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# SLURM --constraint: features joined by & | , with optional [ ] ( ) and *count.
SLURM_CONSTRAINT = re.compile(r"[A-Za-z0-9_.\[\]()&|,*-]{1,256}")
# OCI image reference: [host[:port]/]path[:tag][@digest] (lowercase repository path).
IMAGE_REF = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?")
# Kubernetes qualified name (taint/toleration keys): [prefix/]name.
QUALIFIED_NAME = re.compile(r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")

K8S_MAX = 63
SLURM_MAX = 64
FILE_MAX = 100
_HASH_LEN = 6


def short_hash(text, n=_HASH_LEN):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def slug(text, *, max_len, lower=True, allowed="a-z0-9", sep="-"):
    """``text`` with every run of characters outside ``allowed`` turned into ``sep``, trimmed to
    ``max_len``; a hash of the original is appended whenever anything was changed or cut."""
    original = str(text)
    work = original.lower() if lower else original
    cleaned = re.sub(f"[^{allowed}]+", sep, work).strip(sep + "._")
    if cleaned == original and len(cleaned) <= max_len:
        return cleaned
    suffix = short_hash(original)
    room = max_len - len(suffix) - 1
    head = cleaned[:room].rstrip(sep + "._")
    return f"{head}{sep}{suffix}" if head else suffix


def k8s_name(*parts):
    """A DNS-1123 label (Kubernetes object/Job/Service name) from parts joined by '-'."""
    name = slug("-".join(str(p) for p in parts if p not in (None, "")), max_len=K8S_MAX)
    if not name or not name[0].isalnum():  # a hash is hex, so this only guards empty input
        name = "x" + name
    return name[:K8S_MAX]


def k8s_label_value(text):
    """A Kubernetes label value (≤ 63, alphanumeric at both ends)."""
    return slug(text, max_len=K8S_MAX, lower=False, allowed="A-Za-z0-9._-")


def slurm_job_name(*parts):
    return slug("-".join(str(p) for p in parts if p not in (None, "")), max_len=SLURM_MAX, lower=False,
                allowed="A-Za-z0-9._-")


def file_name(text):
    """A portable file or directory name (no separators, no leading dot)."""
    return slug(text, max_len=FILE_MAX, lower=False, allowed="A-Za-z0-9._=-", sep="_")


def is_dns1123_label(text):
    return isinstance(text, str) and len(text) <= K8S_MAX and bool(DNS1123_LABEL.fullmatch(text))


def is_label_value(text):
    return isinstance(text, str) and len(text) <= K8S_MAX and bool(LABEL_VALUE.fullmatch(text))
