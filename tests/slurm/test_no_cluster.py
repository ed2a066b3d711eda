"""The SLURM backend where no cluster answers: clients missing from PATH, ``SLURM_CONF`` naming a
controller that is not running, or a file that is not there. ``submit`` and ``retry`` refuse in one
line (exit 2) before anything is created or touched; ``status`` names the cause instead of calling
jobs "unknown to SLURM". The real SLURM clients run where they are installed (Debian's
slurm-client); the missing-client cases need nothing."""

import shutil
import socket
import subprocess
import sys

import pytest

from jobs import lineage
from jobs.dag import compile_cell
from jobs.spec import load_experiment
from tests.jobs import REPO_ROOT, make_blank_mlflow_db, make_root, subprocess_env

HAVE_CLIENTS = bool(shutil.which("sbatch") and shutil.which("squeue") and shutil.which("scontrol"))


def _free_port():
    with socket.socket() as s:  # bound then closed: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def blank_db(tmp_path_factory):
    return make_blank_mlflow_db(tmp_path_factory.mktemp("template") / "mlflow.db")


@pytest.fixture
def root(tmp_path, blank_db):
    make_root(tmp_path)
    shutil.copytree(REPO_ROOT / "slurm", tmp_path / "slurm", ignore=shutil.ignore_patterns("*.sh"))
    shutil.copy(blank_db, tmp_path / "mlflow.db")
    return tmp_path


def _no_slurm_path(tmp_path):
    """A PATH with this interpreter and the basic tools but no SLURM client."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sh", "env", "uname", "tail"):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def _dead_conf(tmp_path):
    conf = tmp_path / "dead-slurm.conf"
    conf.write_text(f"ClusterName=dead\nSlurmctldHost=localhost\nSlurmctldPort={_free_port()}\nAuthType=auth/none\n"
                    "NodeName=n1 NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN\nPartitionName=debug Nodes=ALL Default=YES\n")
    return str(conf)


CASES = {"no clients": lambda tmp: {"PATH": _no_slurm_path(tmp)},
         "dead controller": lambda tmp: {"SLURM_CONF": _dead_conf(tmp)},
         "missing SLURM_CONF file": lambda tmp: {"SLURM_CONF": str(tmp / "nowhere" / "slurm.conf")}}
EXPECT = {"no clients": "not found", "dead controller": "does not answer",
          "missing SLURM_CONF file": "nowhere/slurm.conf is not a file"}


def _hirl(root, env_more, *args):
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", HIRL_SLURM_SITE="none",
                         HF_HUB_OFFLINE="1", **env_more)
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def _runs(root):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


def _needs(case):
    if case != "no clients" and not HAVE_CLIENTS:
        pytest.skip("needs the SLURM client programs (Debian's slurm-client) to meet a dead controller")


@pytest.mark.parametrize("case", list(CASES))
def test_submit_without_a_cluster_refuses_in_one_line_and_creates_nothing(root, case):
    _needs(case)
    out = _hirl(root, CASES[case](root), "submit", "demo", "--backend", "slurm")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hirl: error: ") and EXPECT[case] in lines[0], out.stderr
    assert _runs(root) == []
    assert not (root / "outputs").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_retry_without_a_cluster_refuses_in_one_line_and_touches_nothing(root, case):
    _needs(case)
    cell = compile_cell(load_experiment("demo", root=root))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = lineage.ensure_chain(cell, "slurm", uri=uri)
    lineage.set_run_status(runs["pretrain"].run_id, "FAILED", uri)
    before = sorted((r.info.run_id, r.info.status) for r in _runs(root))
    out = _hirl(root, CASES[case](root), "retry", "demo")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and EXPECT[case] in lines[0], out.stderr
    assert sorted((r.info.run_id, r.info.status) for r in _runs(root)) == before
    assert not (root / "outputs").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_status_names_the_real_cause_instead_of_unknown_to_slurm(root, case):
    _needs(case)
    cell = compile_cell(load_experiment("demo", root=root))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = lineage.ensure_chain(cell, "slurm", uri=uri)
    lineage.set_tags(runs["pretrain"].run_id, {"hirl.job_id": "4242"}, uri)
    lineage.set_tags(runs["knn"].run_id, {"hirl.job_id": "4243"}, uri)
    out = _hirl(root, CASES[case](root), "status", "demo")
    assert "unknown to SLURM" not in out.stdout, out.stdout
    lines = out.stderr.splitlines()
    expect = {**EXPECT, "dead controller": "squeue failed: slurm_load_jobs error: Unable to contact slurm controller"}
    assert len(lines) == 1 and expect[case] in lines[0], out.stderr
    assert "no answer" in out.stdout  # the scheduler column
    # nothing is settled from a cluster that did not answer
    assert {r.info.run_id: r.info.status for r in _runs(root)}[runs["pretrain"].run_id] == "SCHEDULED"


def test_a_submission_that_breaks_after_the_runs_exist_leaves_them_terminal(root, monkeypatch):
    from jobs import cli
    from jobs.backends.local import LocalBackend

    class Broken(LocalBackend):
        def submit(self, plan):
            raise RuntimeError("the scheduler went away")

    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setattr(cli, "get_backend", lambda name: Broken())
    with pytest.raises(RuntimeError):
        cli.main(["submit", "demo"])
    runs = _runs(root)
    assert runs and {r.info.status for r in runs} <= {"FAILED", "KILLED"}, [(r.data.tags.get("hirl.stage"),
                                                                             r.info.status) for r in runs]
    stages = [r for r in runs if "hirl.stage" in r.data.tags]
    assert all("the scheduler went away" in r.data.tags.get("hirl.reason", "") for r in stages)
