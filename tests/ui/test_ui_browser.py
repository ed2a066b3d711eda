"""The MLflow UI as a user sees it, in headless Chromium (Debian's ``chromium``), after a tiny real chain:
the address ``hirl ui`` prints (what ``make ui`` runs) shows the model-training runs table with the chain
run, its stage runs, the key metric and the config params. Skipped without chromium unless
HIRL_REQUIRE_BROWSER=1."""
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = """\
name: uitiny
stages:
  pretrain:
    config: configs/pretrain/baseline/mocov2_demo.yaml
    overrides: [epochs=1, batch_size=64, data.train_subset=256, method.queue_size=64, backbone.width=8,
                method.hidden_dim=32, optimizer.lr=0.004]
  knn:
    config: configs/downstream/knn/knn_demo.yaml
    after: pretrain
    overrides: [data.train_subset=256, data.val_subset=200]
"""
CHROMIUM = shutil.which("chromium")

pytestmark = [pytest.mark.fashion_mnist, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", autouse=True)
def _browser():
    if CHROMIUM is None:
        if os.environ.get("HIRL_REQUIRE_BROWSER") == "1":
            pytest.fail("HIRL_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("needs chromium (apt-get install -y chromium)")


def _env(root):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ui(root, port):
    """``hirl ui`` as ``make ui`` runs it; the runs-table address it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "jobs", "ui", "--port", str(port)], cwd=root, env=_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = queue.Queue()  # read in a thread: a server that prints nothing more must not block the test
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    url, deadline = None, time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        found = re.search(r"runs of uitiny: (\S+)", line)
        url = found.group(1) if found else None
        if url is None and "runs of" not in line and "mlflow ui" not in line:
            deadline = min(deadline, time.monotonic() + 30)  # the server talks: the address came before it
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    return proc, url


def _chromium(url, tmp, *action):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--window-size=2400,1200",
                           "--virtual-time-budget=30000", *action, url],
                          capture_output=True, text=True, timeout=180)


def test_make_ui_address_shows_the_chain_in_the_model_training_runs_table(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "experiments" / "uitiny.yaml").write_text(TINY)
    res = subprocess.run([sys.executable, "-m", "jobs", "submit", "uitiny"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    proc, url = _start_ui(tmp_path, _free_port())
    try:
        assert url and "/runs?workflowType=machine_learning" in url, url
        dom = _chromium(url, tmp_path, "--dump-dom").stdout
        shot = Path(os.environ.get("HIRL_UI_SCREENSHOT", tmp_path / "runs.png"))
        _chromium(url, tmp_path, f"--screenshot={shot}")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("uitiny")
    runs = client.search_runs([exp.experiment_id])
    chain = next(r for r in runs if r.data.tags.get("hirl.kind") == "chain")
    stages = {r.data.tags["hirl.stage"]: r for r in runs if "hirl.stage" in r.data.tags}
    assert {k: r.info.status for k, r in stages.items()} == {"pretrain": "FINISHED", "knn": "FINISHED"}
    # the params the stages log themselves (resolved) sit beside the submitted config: none was refused
    assert "precision" in stages["pretrain"].data.params and "optimizer.lr" in stages["pretrain"].data.params
    assert "backbone_prefix" in stages["knn"].data.params and "knn.k" in stages["knn"].data.params
    assert not list(tmp_path.glob("outputs/**/mlflow_spool.jsonl")), "tracking writes left undelivered"
    assert chain.data.metrics.get("knn_top1_k20") is not None  # the real chain logged its key number
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "Model training" in dom and "0 traces" not in text
    for name in (chain.info.run_name, "pretrain", "knn"):  # the chain row and its nested stage rows
        assert name in text, name
    assert "knn_top1_k20" in text and "fashion_mnist" in text  # the key metric's column, the Dataset column
    value = chain.data.metrics["knn_top1_k20"]
    assert re.search(rf"\b{value:.3f}".rstrip("0").rstrip("."), text), value  # its value on the rows
    assert "method" in text and "mocov2" in text  # a config param and its value
    assert shot.stat().st_size > 10_000
