"""The rendered pods really run: the container command, args and env of a 2-pod CPU pre-training JobSet,
exactly as ``hirl plan --backend k8s`` renders them, started as two local processes with the completion
indices the Job controller gives (0 and 1). They rendezvous at "pod 0", train a tiny MoCo v2 with world
size 2 on gloo, log into the pre-created stage run, and after SIGTERM (what the kubelet sends every pod
of a gang JobSet restarts) the restarted gang resumes from the checkpoint into the same run.

What stands in for the cluster, and why it is faithful:
- pod 0's DNS name ``<jobset>-node-0-0.<jobset>`` (in ``--rdzv_endpoint`` and ``HIRL_MASTER_ADDR``) is
  replaced by 127.0.0.1, and the rendezvous port by a free one (two test sessions share this host): in
  the cluster the name resolves to pod 0's address through the JobSet's headless Service, and the port
  is the container port the pod opens; both pods here live on one host.
- ``MLFLOW_TRACKING_URI`` (a ConfigMap reference) gets this test's store; the optional Secret keys are
  left out, as the kubelet leaves out an optional key of a Secret that does not exist.
- ``/etc/hirl/config.yaml`` (the mounted ConfigMap) is the rendered ConfigMap's text in a folder here,
  and the working directory stands for ``/workspace`` with its shared ``outputs`` volume; the image's
  code (at /workspace in it) comes from this checkout through PYTHONPATH, its torchrun from the venv.
- ``JOB_COMPLETION_INDEX`` is what the Job controller sets in each pod, and ``JOBSET_RESTART_ATTEMPT`` what
  the kubelet resolves from the rendered downward-API reference to the pod's
  ``jobset.sigs.k8s.io/restart-attempt`` label, which JobSet sets to 0 on the first gang and 1 on the
  gang it recreates after one restart; the kubelet expands ``$(NAME)`` in the command and args from the
  container's env (``--rdzv_id <run>-<attempt>-$(JOBSET_RESTART_ATTEMPT)``), and so does ``_pods``.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobs import lineage
from jobs.backends import Plan
from jobs.backends import k8s_render as kr
from jobs.backends.k8s import K8sBackend
from jobs.dag import assign_outputs
from jobs.matrix import load_sweep

from ..jobs import make_blank_mlflow_db
from .conftest import DIGEST, REPO

pytestmark = pytest.mark.fashion_mnist
SPEC = """\
name: podrun
stages:
  pretrain:
    config: configs/pretrain/baseline/mocov2_demo.yaml
    overrides: [epochs=4, batch_size=32, data.train_subset=384, method.queue_size=64, backbone.width=8,
                method.hidden_dim=32]
resources:
  nodes: 2
  k8s: {gpus_per_node: 0}
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rendered(tmp_path):
    """The cell, its stage run, and the JobSet and ConfigMap as the backend renders them for that run."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    spec = tmp_path / "podrun.yaml"
    spec.write_text(SPEC)
    cell = assign_outputs(load_sweep(str(spec), root=str(tmp_path)).cells[0])
    cell.image = DIGEST
    runs = lineage.ensure_chain(cell, "k8s")
    files = K8sBackend().render(Plan(cell, runs))
    jobset = yaml.safe_load(files["k8s/pretrain.jobset.yaml"])
    config_map = yaml.safe_load(files["k8s/config.configmap.yaml"])
    return cell, runs["pretrain"].run_id, jobset, config_map


def _pods(jobset, config_map, tmp_path, uri, port, restart_attempt):
    """(argv, env) of pod 0 and pod 1: the rendered container with the stand-ins above; the pods' JobSet
    restart-attempt label is ``restart_attempt``."""
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    assert job["completions"] == job["parallelism"] == 2 and job["completionMode"] == "Indexed"
    host = next(e["value"] for e in container["env"] if e["name"] == "HIRL_MASTER_ADDR")
    assert f"{host}:{kr.RDZV_PORT}" in container["command"]  # torchrun's c10d endpoint: pod 0
    config_dir = tmp_path / "etc-hirl"
    config_dir.mkdir(exist_ok=True)
    volume = next(v for v in pod["volumes"] if v["name"] == "config")["configMap"]
    (config_dir / volume["items"][0]["path"]).write_text(config_map["data"][volume["items"][0]["key"]])

    def swap(text):
        return (text.replace(f"{host}:{kr.RDZV_PORT}", f"127.0.0.1:{port}").replace(host, "127.0.0.1")
                .replace(kr.CONFIG_DIR, str(config_dir)))
    argv = [swap(a) for a in container["command"] + container["args"]]
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if os.environ.get("HIRL_FASHION_MNIST"):
        env["HIRL_FASHION_MNIST"] = os.environ["HIRL_FASHION_MNIST"]
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = swap(item["value"]) if item["name"] != "HIRL_MASTER_PORT" else str(port)
        elif item["valueFrom"].get("configMapKeyRef", {}).get("key") == "MLFLOW_TRACKING_URI":
            env["MLFLOW_TRACKING_URI"] = uri
        elif "fieldRef" in item["valueFrom"]:  # the kubelet resolves it from the pod's own labels
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{kr.RESTART_LABEL}']"
            env[item["name"]] = str(restart_attempt)
        else:
            assert item["valueFrom"]["secretKeyRef"]["optional"] is True  # no Secret here: left out
    argv = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in argv]
    return [(argv, {**env, "JOB_COMPLETION_INDEX": str(i)}) for i in range(2)]


def _start(pods, workspace, log_dir, attempt):
    procs = []
    for i, (argv, env) in enumerate(pods):
        log = open(log_dir / f"pod{i}-attempt{attempt}.log", "wb")
        procs.append((subprocess.Popen(argv, env=env, cwd=workspace, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(0.5)  # pod 0 first: it hosts the rendezvous store (the other one would too, by retry)
    return procs


def _wait(procs, timeout):
    deadline = time.monotonic() + timeout
    codes = []
    for proc, log in procs:
        codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        log.close()
    return codes


def _kill(procs):
    for proc, log in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_rendered_pods_train_with_world_size_2_and_a_restart_resumes_into_the_same_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    make_blank_mlflow_db(tmp_path / "mlflow.db")
    cell, run_id, jobset, config_map = _rendered(tmp_path)
    workspace, logs = tmp_path / "workspace", tmp_path / "logs"
    workspace.mkdir()
    logs.mkdir()
    out = workspace / cell.stages[0].output_dir
    checkpoint = out / "checkpoint.pth"

    container = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    rendered = {e["name"]: e for e in container["env"]}
    assert rendered["HIRL_MAX_RESTARTS"]["value"] == str(jobset["spec"]["failurePolicy"]["maxRestarts"])
    assert "fieldRef" in rendered["JOBSET_RESTART_ATTEMPT"]["valueFrom"]
    procs = _start(_pods(jobset, config_map, tmp_path, uri, _free_port(), 0), workspace, logs, 1)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and time.monotonic() < deadline and all(p.poll() is None for p, _ in procs):
            time.sleep(0.2)
        assert checkpoint.exists(), "\n".join(p.read_text()[-3000:] for p in sorted(logs.iterdir()))
        for proc, _ in procs:  # the kubelet's SIGTERM to each pod's main process (torchrun)
            proc.send_signal(signal.SIGTERM)
        codes = _wait(procs, 60)
    finally:
        _kill(procs)
    first = lineage.run_state(run_id, uri)
    assert all(code != 0 for code in codes), codes
    assert first[0] in ("KILLED", "FAILED") and first[1]["hirl.attempt"] == "1", first
    assert "hirl.retry_reason" in first[1], first  # maxRestarts not used up: the run waits for the next gang
    for i in range(2):  # torchrun made each pod's process a rank of a world of 2
        assert f"[hirl] rank {i}/2 attempt 1" in (logs / f"pod{i}-attempt1.log").read_text()

    # JobSet recreates the gang from the same template (same command, args and env) with its
    # restart-attempt label at 1, which the pods read through the downward API as JOBSET_RESTART_ATTEMPT
    procs = _start(_pods(jobset, config_map, tmp_path, uri, _free_port(), 1), workspace, logs, 2)
    try:
        codes = _wait(procs, 150)
    finally:
        _kill(procs)
    assert codes == [0, 0], "\n".join(p.read_text()[-3000:] for p in sorted(logs.iterdir()))
    client = lineage.client(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["hirl.attempt"] == "2"  # the gang restart counts as the second start
    resumed = [m.value for m in client.get_metric_history(run_id, "resumed_from_epoch")]
    assert resumed[0] == 0 and resumed[-1] >= 1, resumed  # the second start went on from the checkpoint
    assert sorted({m.step for m in client.get_metric_history(run_id, "loss")}) == [0, 1, 2, 3]
    assert (out / "backbone.pth").is_file()
    stages = [r for r in client.search_runs([run.info.experiment_id]) if r.data.tags.get("hirl.stage")]
    assert [r.info.run_id for r in stages] == [run_id]  # no second run: the restart went into this one
    (tmp_path / "dl").mkdir()
    tail = Path(client.download_artifacts(run_id, "logs/log-tail.txt", str(tmp_path / "dl"))).read_text()
    assert "epoch 4/4" in tail
