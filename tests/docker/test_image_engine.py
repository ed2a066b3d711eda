"""`hirl image` against a real Docker API (podman's socket and a local registry: docker/engine-up.sh,
started by .ci/run). Builds the image once from localhost/debian:bookworm, pushes it, runs it as its
non-root user, and runs a tiny pre-training stage inside it that logs to an MLflow server on the host.

Build arguments come from HIRL_IMAGE_BUILD_ARGS (CI: the Debian base, faiss-cpu and a local wheel index);
the registry from HIRL_REGISTRY. Skipped without an engine, unless HIRL_REQUIRE_ENGINE=1 (CI) makes
that a failure."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jobs import image

from ..needs_data import fashion_mnist_or_skip

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    try:
        return image._client()
    except image.ImageError as exc:
        if os.environ.get("HIRL_REQUIRE_ENGINE") == "1":
            pytest.fail(f"HIRL_REQUIRE_ENGINE=1 but {exc}")
        pytest.skip(f"needs a container engine (docker/engine-up.sh): {exc}")


@pytest.fixture(scope="module")
def args():
    pairs = os.environ.get("HIRL_IMAGE_BUILD_ARGS", "BASE_IMAGE=localhost/debian:bookworm FAISS_PACKAGE=faiss-cpu")
    return image.parse_build_args(pairs.split())


@pytest.fixture(scope="module")
def repository():
    return f"{os.environ.get('HIRL_REGISTRY', '127.0.0.1:5001')}/hirl"


@pytest.fixture(scope="module")
def built(engine, args, repository, tmp_path_factory):
    """(reference, build log): the first build of this source (or a reuse when the engine has it)."""
    out = io.StringIO()
    reference, _ = image.build(repository, args, root=REPO, out=out, client=engine)
    return reference, out.getvalue()


@pytest.fixture(scope="module")
def pushed(engine, args, repository, built, tmp_path_factory):
    root = tmp_path_factory.mktemp("record")
    for entry in image.CONTEXT + ("docker",):  # the record lives under the repo root it was pushed from
        os.symlink(REPO / entry, root / entry)
    out = io.StringIO()
    return image.push(repository, args, root=root, out=out, client=engine), root, out.getvalue()


def test_build_tags_by_content_and_a_second_build_reuses_the_tag(engine, args, repository, built):
    reference, _ = built
    assert reference == f"{repository}:{image.content_hash(REPO, args)[:16]}"
    labels = engine.images.get(reference).labels
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert len(labels["org.opencontainers.image.revision"]) in (40, 7) or labels[
        "org.opencontainers.image.revision"] == "unknown"
    started, out = time.time(), io.StringIO()
    again, built_now = image.build(repository, args, root=REPO, out=out, client=engine)
    assert (again, built_now) == (reference, False) and "up to date" in out.getvalue()
    assert time.time() - started < 30


def test_push_returns_the_registry_digest_and_records_it(pushed, repository, built):
    pinned, root, log = pushed
    assert pinned.startswith(f"{repository}@sha256:") and len(pinned.split("@sha256:")[1]) == 64
    host, _, name = repository.partition("/")
    request = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{built[0].rsplit(':', 1)[1]}", method="HEAD",
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                                        "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Docker-Content-Digest"] == pinned.split("@")[1]
    record = json.loads((root / ".hirl" / "images.json").read_text())
    assert record["latest"] == built[0] and record["pushed"][built[0]]["reference"] == pinned
    assert image.pinned_reference("", root=root) == pinned


def _run(engine, reference, command, **kwargs):
    container = engine.containers.run(reference, command, detach=True, network_mode="host", **kwargs)
    try:
        code = container.wait(timeout=900)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_the_image_runs_as_a_non_root_user_and_its_cli_works(engine, built):
    code, log = _run(engine, built[0], ["--", "python", "-c", "import os; print('uid', os.getuid())"])
    assert code == 0 and "uid 1000" in log, log
    code, log = _run(engine, built[0], ["--", "python", "-m", "hirl_core", "--help"])
    assert code == 0 and "pretrain" in log and "knn" in log, log


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{path / 'mlflow.db'}",
                             "--artifacts-destination", str(path / "artifacts"), "--workers", "1"],
                            stdout=open(path / "server.log", "w"), stderr=subprocess.STDOUT, cwd=path)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (path / "server.log").read_text()
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_a_tiny_pretrain_stage_runs_in_the_image_and_tags_its_run_with_the_digest(engine, pushed, mlflow_server):
    pinned = pushed[0]
    data = fashion_mnist_or_skip()
    config = "/opt/hirl/src/configs/pretrain/baseline/mocov2_demo.yaml"
    code, log = _run(engine, pinned, ["pretrain", "-c", config, "epochs=1", "batch_size=32", "data.train_subset=128",
                                      "method.queue_size=64", "backbone.width=8", "method.hidden_dim=32",
                                      "data.root=/data", "output_dir=/workspace/out"],
                     volumes={data: {"bind": "/data", "mode": "ro"}},
                     environment={"MLFLOW_TRACKING_URI": mlflow_server, "HIRL_IMAGE": pinned,
                                  "MLFLOW_EXPERIMENT_NAME": "image-test", "OMP_NUM_THREADS": "2"})
    assert code == 0, log
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("image-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, log
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["hirl.image"] == pinned
    assert "loss" in " ".join(run.data.metrics), run.data.metrics


def test_rendered_slurm_artifacts_pin_the_pushed_digest_never_a_tag(pushed, built):
    from jobs.backends import Plan
    from jobs.backends.slurm import SlurmBackend
    from jobs.dag import assign_outputs
    from jobs.matrix import load_sweep

    pinned, root, _ = pushed
    for profile in ("pyxis", "apptainer"):
        cell = assign_outputs(load_sweep("demo", root=str(REPO)).cells[0])
        cell.root = str(root)  # the repo root whose .hirl/images.json holds the push
        files = SlurmBackend(site=str(REPO / "slurm" / f"{profile}.yaml")).render(Plan(cell, None))
        text = "\n".join(files[f"slurm/{s}.sbatch"] + files[f"slurm/{s}.job.txt"] for s in ("pretrain", "knn"))
        digest = pinned.split("@")[1]
        assert digest in text, profile
        assert built[0].rsplit(":", 1)[1] not in text     # the mutable tag never appears
        assert "hirl-image-not-built" not in text
