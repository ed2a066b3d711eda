"""Hostile names and values, in one list that every backend's render tests use (SLURM sbatch scripts,
the local commands.sh, Kubernetes manifests): whatever a backend writes must carry these as data.

Each value that would *do* something if a shell re-parsed it does exactly one thing: it creates a
file whose name starts with ``CANARY`` in the working directory (or /tmp). A test runs the rendered
text the way the backend's runner would, from a scratch directory, then calls ``assert_no_canary``.
The YAML-special values check that a rendered config or manifest reads back the same string.
"""

import os
from pathlib import Path

CANARY = "PWNED-hirl"

# Free-text values: override values, matrix axis values, data roots.
VALUES = [
    f"$(touch {CANARY}-subst)",
    f"`touch {CANARY}-backtick`",
    f"x'; touch {CANARY}-squote; '",
    f'x"; touch {CANARY}-dquote; "',
    f"x\ntouch {CANARY}-newline",
    f"x\r\ntouch {CANARY}-crlf",
    f"x;touch${{IFS}}{CANARY}-ifs",
    f"x && touch {CANARY}-and",
    f"x | tee {CANARY}-pipe",
    f"x > {CANARY}-redirect",
    f"/tmp/$(touch /tmp/{CANARY}-abs)'\"`id`",
    "$HOME ${PATH} $$ $? $0 \\$x",
    "-rf",
    "--output=/etc/passwd",
    "key: value # not a comment",
    "- not a list item",
    "{not: a mapping}",
    "&anchor *alias !!python/object/apply:os.system ['id']",
    "'quoted in YAML'x",
    "%j %t %A %% @",
    "~root/*.yaml ?[a]",
    "tab\there\vand\fform",
    "ünïcødé ✓ 名前 \u202eevil",
    "back\\slash \\n \\'",
    "#!/bin/sh",
    "",
    " leading and trailing ",
    "x" * 4096,
]

# Directory names a checkout (or a data root) may have: every one is a legal file name.
PATHS = [
    f"co de'$(touch {CANARY}-path);x\"`id`",
    f"-rf;touch {CANARY}-dash",
    f"new\nline {CANARY}-nl",
    "ünïcødé 名前",
    "#hash: colon",
    "%j %t",
    "a" * 200,
]

# Free text that names are derived from (experiment rows, matrix points): slugged, never pasted.
NAMES = VALUES[:12] + ["SGD w/ nesterov; $(id)", "..", ".hidden", "-leading-dash", "UPPER lower", "a/b/../c"]


def ids(values):
    """Short readable test ids (pytest would otherwise print 4 kB values)."""
    return [f"{i}:{v[:24]!r}" for i, v in enumerate(values)]


def assert_no_canary(*folders):
    """Nothing a hostile value says was executed: no canary file in ``folders`` or /tmp."""
    found = [str(p) for f in folders for p in Path(f).rglob(f"{CANARY}*")]
    found += [os.path.join("/tmp", n) for n in os.listdir("/tmp") if n.startswith(CANARY)]
    assert not found, f"a hostile value was executed: {found}"
