"""Golden files: byte-exact expected output, one helper for every package's tests (tests/jobs/golden/
by default, or the test package's own golden/ folder). ``UPDATE_GOLDEN=1`` rewrites them; review the
diff, since a changed cell id means earlier runs of that cell are no longer found, and a changed
sbatch script is what every cluster job runs from then on."""

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def check_golden(name, text, folder=GOLDEN):
    path = Path(folder) / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; create it with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"
