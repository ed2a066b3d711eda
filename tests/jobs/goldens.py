"""Golden files (tests/jobs/golden/): byte-exact expected output. ``UPDATE_GOLDEN=1`` rewrites them;
review the diff, since a changed cell id means earlier runs of that cell are no longer found."""

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def check_golden(name, text):
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; create it with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"
