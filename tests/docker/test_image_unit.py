"""The image's pure parts: what goes into the context, the content-hash tag, the push record and the
pinning rules cluster backends apply; hadolint on the Dockerfile. No container engine needed."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import image
from jobs.errors import ImageError

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def tree(tmp_path):
    """A copy of everything the image is built from."""
    for entry in ("docker", *image.CONTEXT):
        src = REPO / entry
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / entry)
    return tmp_path


def test_the_context_is_what_the_dockerfile_copies():
    text = (REPO / image.DOCKERFILE).read_text()
    copied = set()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        copied.update(line.split()[:-1])
    assert copied == set(image.CONTEXT)
    arcnames = [a for a, _ in image.context_files(REPO)]
    assert "Dockerfile" in arcnames and "jobs/image.py" in arcnames and "configs/experiments/demo.yaml" in arcnames
    assert not [a for a in arcnames if "__pycache__" in a or a.endswith(".pyc") or a.startswith((".venv", "outputs"))]


def test_dockerignore_keeps_data_checkpoints_and_the_venv_out():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in lines  # everything out, then only the context back in
    back_in = {l[1:] for l in lines if l.startswith("!")}
    assert all(not any(x in b for x in ("outputs", "mlflow.db", ".venv", "data")) for b in back_in)
    assert {"docker/Dockerfile", "pyproject.toml"} <= back_in


def test_hash_is_stable_and_follows_the_content(tree):
    first = image.content_hash(tree)
    assert image.content_hash(tree) == first
    mtime_only = tree / "jobs" / "names.py"
    mtime_only.touch()
    assert image.content_hash(tree) == first            # times are not content
    (tree / "outputs").mkdir()
    (tree / "outputs" / "ckpt.pth").write_bytes(b"x")
    (tree / "mlflow.db").write_bytes(b"x")
    assert image.content_hash(tree) == first            # neither are outputs or the tracking store
    (tree / "hirl_core" / "new_module.py").write_text("X = 1\n")
    assert image.content_hash(tree) != first            # a new source file is
    second = image.content_hash(tree)
    pins = tree / "pyproject.toml"
    pins.write_text(pins.read_text().replace('"timm>=1.0,<2"', '"timm>=1.0.1,<2"'))
    assert image.content_hash(tree) != second           # and so are the dependency pins


def test_build_args_that_change_the_image_change_the_tag_and_download_sources_do_not(tree):
    base = image.content_hash(tree, {})
    assert image.content_hash(tree, {"BASE_IMAGE": "localhost/debian:bookworm"}) != base
    assert image.content_hash(tree, {"PIP_EXTRA_INDEX_URL": "http://127.0.0.1:8765/simple",
                                     "REVISION": "abc"}) == base


@pytest.mark.parametrize("pairs, match", [
    (["FOO=1"], "bad --build-arg 'FOO=1'"),
    (["BASE_IMAGE"], "expected KEY=VALUE"),
    (["BASE_IMAGE=evil;rm -rf /"], "bad --base reference"),
    (["VERSION=1\nRUN x"], "newline"),
])
def test_bad_build_args_are_refused(pairs, match):
    with pytest.raises(ImageError, match=match):
        image.parse_build_args(pairs)


@pytest.mark.parametrize("repo", ["Hirl", "hirl:latest", "127.0.0.1:5001/hirl;x", "", "a/../b"])
def test_bad_repositories_are_refused(repo):
    with pytest.raises(ImageError, match="bad image repository"):
        image.check_repository(repo)


def test_pinning_rules(tmp_path):
    with pytest.raises(ImageError, match="no image has been pushed yet"):
        image.pinned_reference("", root=tmp_path)
    explicit = f"registry.example.com/hirl@{DIGEST}"
    assert image.pinned_reference(explicit, root=tmp_path) == explicit
    record = {"pushed": {"127.0.0.1:5001/hirl:0123456789abcdef": {"reference": f"127.0.0.1:5001/hirl@{DIGEST}",
                                                                   "digest": DIGEST}},
              "latest": "127.0.0.1:5001/hirl:0123456789abcdef"}
    (tmp_path / ".hirl").mkdir()
    (tmp_path / ".hirl" / "images.json").write_text(json.dumps(record))
    assert image.pinned_reference("", root=tmp_path) == f"127.0.0.1:5001/hirl@{DIGEST}"
    assert image.pinned_reference("127.0.0.1:5001/hirl:0123456789abcdef", root=tmp_path).endswith(DIGEST)
    with pytest.raises(ImageError, match="was never pushed"):
        image.pinned_reference("127.0.0.1:5001/hirl:latest", root=tmp_path)


def test_image_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs", "image", "push", "--repository", "hirl"], cwd=tmp_path,
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "hirl: error:" in out.stderr
    assert not (tmp_path / ".hirl").exists()


def test_hadolint_passes_on_the_dockerfile():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it is a test dependency (pip install -e '.[test]')")
    out = subprocess.run([hadolint, str(REPO / image.DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_slurm_container_profiles_pin_a_pushed_tag_by_digest_and_refuse_an_unknown_one(tmp_path):
    from jobs.backends import BackendError, Plan
    from jobs.backends.slurm import SlurmBackend
    from jobs.dag import assign_outputs
    from jobs.matrix import load_sweep

    tag = "127.0.0.1:5001/hirl:0123456789abcdef"
    (tmp_path / ".hirl").mkdir()
    (tmp_path / ".hirl" / "images.json").write_text(json.dumps(
        {"pushed": {tag: {"reference": f"127.0.0.1:5001/hirl@{DIGEST}", "digest": DIGEST}}, "latest": tag}))
    cell = assign_outputs(load_sweep("demo", root=str(REPO)).cells[0])
    cell.root = str(tmp_path)
    for profile in ("pyxis", "apptainer"):
        backend = SlurmBackend(site=str(REPO / "slurm" / f"{profile}.yaml"))
        text = "".join(backend.render(Plan(cell, None)).values())
        assert DIGEST in text and "0123456789abcdef" not in text and "hirl-image-not-built" not in text
    cell.image = "127.0.0.1:5001/hirl:latest"          # a tag nobody pushed from here
    backend = SlurmBackend(site=str(REPO / "slurm" / "pyxis.yaml"))
    assert "hirl-image-not-built" in "".join(backend.render(Plan(cell, None)).values())
    with pytest.raises(BackendError, match="was never pushed"):
        backend.preflight([Plan(cell, None)])


SECRET = "s3cr3t-t0ken"


@pytest.mark.parametrize("how, value", [
    ("env", f"https://builder:{SECRET}@pypi.example.com/simple"),
    ("env", f"https://{SECRET}@pypi.example.com/simple"),
    ("flag", f"http://127.0.0.1:8765/simple https://x:{SECRET}@pypi.example.com/simple"),
    ("flag", f"https://pypi.example.com/simple?token={SECRET}"),
    ("flag", f"https://pypi.example.com/simple?a=1&Access_Token={SECRET}"),
])
def test_credentials_in_a_build_argument_are_refused_without_printing_them(tmp_path, how, value):
    """Build arguments that RUN steps use are recorded in the image's history, so a credentialed
    index URL would travel with every pushed image: refused before any engine is asked."""
    key = "PIP_INDEX_URL" if "?" in value else "PIP_EXTRA_INDEX_URL"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    argv = [sys.executable, "-m", "jobs", "image", "build", "--repository", "hirl"]
    if how == "env":
        env["HIRL_IMAGE_BUILD_ARGS"] = f"BASE_IMAGE=localhost/debian:bookworm {key}={value}"
    else:
        argv += ["--build-arg", f"{key}={value}"]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stdout == "", out.stdout + out.stderr
    assert f"hirl: error: build argument {key} carries credentials" in out.stderr
    assert "history" in out.stderr and SECRET not in out.stderr


@pytest.mark.parametrize("value", ["http://127.0.0.1:8765/simple", "https://pypi.example.com/simple?x=1",
                                   "https://pypi.org/simple/@scope"])
def test_index_urls_without_credentials_are_accepted(value):
    assert image.parse_build_args([f"PIP_EXTRA_INDEX_URL={value}"]) == {"PIP_EXTRA_INDEX_URL": value}
