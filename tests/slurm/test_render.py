"""What the SLURM backend renders, without a cluster: golden sbatch scripts for a pyxis and an
Apptainer site, refusals, and hostile names/overrides that must never reach a script unquoted
(the rendered script is *run* under bash with a stub srun that records its argv)."""

import json
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hirl_core.config import parse_override
from jobs.backends import BackendError, Plan
from jobs.backends.slurm import SlurmBackend
from jobs.dag import assign_outputs
from jobs.lineage import StageRun
from jobs.matrix import load_sweep
from jobs.spec import SpecError

from .. import hostile
from ..jobs.goldens import check_golden

HERE = Path(__file__).resolve().parent
FIX = HERE / "fixtures"
GOLDEN = HERE / "golden"
SPEC = FIX / "configs" / "experiments" / "gpu_chain.yaml"
ROOT = "/srv/hirl"  # a fixed root: the golden files do not depend on where the checkout lives


def _cell(root=FIX, overrides=(), spec=SPEC, at=ROOT):
    cell = assign_outputs(load_sweep(spec, root=root, overrides=overrides).cells[0])
    cell.root = at
    return cell


def _render(site, cell=None):
    return SlurmBackend(site=str(FIX / "slurm" / f"{site}.yaml")).render(Plan(cell or _cell(), None))


@pytest.mark.parametrize("site", ["pyxis_site", "apptainer_site"])
def test_golden_sbatch_scripts(site):
    files = _render(site)
    assert _render(site) == files  # pure: the same plan renders the same bytes
    for stage in ("pretrain", "knn"):
        check_golden(f"{site}/{stage}.sbatch", files[f"slurm/{stage}.sbatch"], GOLDEN)
        check_golden(f"{site}/{stage}.job.txt", files[f"slurm/{stage}.job.txt"], GOLDEN)
    pre, knn = files["slurm/pretrain.sbatch"], files["slurm/knn.sbatch"]
    for flag in ("--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=10", "--mem=491520M",
                 "--time=4320", "--partition=gpu", "--account=vision-lab", "--qos=high", "--exclusive",
                 "--constraint='a100|h100'", "--requeue", "--chdir=/srv/hirl"):
        assert f"#SBATCH {flag}\n" in pre, flag
    assert "#SBATCH --signal=USR2@" in pre and "--dependency" not in pre
    assert "#SBATCH --dependency='afterok:<pretrain job id>'\n" in knn and "#SBATCH --kill-on-invalid-dep=yes\n" in knn
    assert "#SBATCH --gpus-per-node=1\n" in knn and "#SBATCH --time=60\n" in knn
    assert "MLFLOW_TRACKING_URI=" not in pre + knn  # no secrets (the URI comes from the job's environment)


def test_pyxis_and_apptainer_launch_lines():
    pyxis = _render("pyxis_site")["slurm/pretrain.sbatch"]
    assert ("--container-image=registry.example.com:5000#hirl/hirl@sha256:4e51eadf521996e40dc2884fcc751f155b50bd"
            "028548128528478c6470be4b10") in pyxis
    assert "--container-mounts=/srv/hirl:/srv/hirl,/datasets:/datasets,/scratch/cache:/cache" in pyxis
    app = _render("apptainer_site")["slurm/pretrain.sbatch"]
    assert ("apptainer exec --nv --pwd /srv/hirl --bind /srv/hirl:/srv/hirl --bind /datasets:/datasets "
            "docker://registry.example.com/hirl/hirl@sha256:") in app
    assert "#SBATCH --signal=USR2@300\n" in app


def test_container_profiles_without_a_digest_render_a_placeholder_and_refuse_to_submit(tmp_path):
    prof = tmp_path / "nodigest.yaml"
    prof.write_text((FIX / "slurm" / "pyxis_site.yaml").read_text().replace(
        "image: registry.example.com:5000/hirl/hirl@sha256:", "image: registry.example.com/hirl:latest #"))
    backend = SlurmBackend(site=str(prof))
    cell = _cell()
    assert "hirl-image-not-built@sha256:0000" in backend.render(Plan(cell, None))["slurm/pretrain.sbatch"]
    with pytest.raises(BackendError, match="pinned by digest"):
        backend.preflight([Plan(cell, None)])
    runs = {s.name: StageRun(s.name, f"run{i}", "SCHEDULED", True, s.output_dir) for i, s in enumerate(cell.stages)}
    with pytest.raises(BackendError, match="pinned by digest"):
        backend.submit(Plan(cell, runs))


@pytest.mark.parametrize("key, value, match", [
    ("runtime", "docker", "runtime must be one of"),
    ("partition", "gpu; reboot", "unsafe SLURM name"),
    ("python", "python3 -c 'import os'", "python must be a plain path"),
    ("mounts", "['/data,/etc:/x']", "mounts must be"),
    ("mounts", "[relative/dir]", "mounts must be"),
    ("image", "'evil;rm@sha256:" + "a" * 64 + "'", "unsafe image reference"),
    ("bogus", "1", "unknown key 'bogus'"),
])
def test_bad_site_profiles_are_refused(tmp_path, key, value, match):
    lines = [l for l in (FIX / "slurm" / "pyxis_site.yaml").read_text().splitlines() if not l.startswith(f"{key}:")]
    prof = tmp_path / "site.yaml"
    prof.write_text("\n".join(lines + [f"{key}: {value}"]) + "\n")
    with pytest.raises(BackendError, match=match):
        SlurmBackend(site=str(prof)).render(Plan(_cell(), None))


@pytest.mark.parametrize("resources, match", [
    ("{partition: 'gpu$(reboot)'}", "unsafe SLURM name"),
    ("{constraint: 'a100`id`'}", "unsafe SLURM constraint"),
    ("{account: 'lab acct'}", "unsafe SLURM name"),
    ("{exclusive: 'yes'}", "must be true or false"),
    ("{ntasks_per_node: 0}", "positive integer"),
])
def test_hostile_resources_are_refused_when_the_spec_loads(tmp_path, resources, match):
    spec = tmp_path / "configs" / "experiments" / "evil.yaml"
    shutil.copytree(FIX / "configs", tmp_path / "configs")
    spec.write_text(SPEC.read_text().replace("slurm: {partition: gpu, account: vision-lab, qos: high, "
                                             "constraint: \"a100|h100\", exclusive: true}", f"slurm: {resources}"))
    with pytest.raises(SpecError, match=match):
        load_sweep(spec, root=tmp_path)


# Every shared hostile value as an override, each with one of the shared hostile checkout paths.
HOSTILE = [(hostile.PATHS[i % len(hostile.PATHS)], value) for i, value in enumerate(hostile.VALUES)]


def _stub_srun(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "srun"
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open(os.environ['SRUN_RECORD'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.parametrize("name, value", HOSTILE, ids=hostile.ids(hostile.VALUES))
def test_hostile_root_and_overrides_are_quoted_and_run_as_plain_arguments(tmp_path, name, value):
    """A checkout path and --set values full of shell syntax: the rendered script, run by bash,
    hands srun exactly the intended argv, and nothing the strings 'say' is executed."""
    root = tmp_path / name
    shutil.copytree(FIX / "configs", root / "configs")
    (root / "slurm").mkdir()
    (root / "slurm" / "plain.yaml").write_text("runtime: none\npython: .venv/bin/python\ntime: 10\n")
    overrides = [f"pretrain.data.root={value}", "knn.knn.k=[20]"]
    cell = _cell(root, overrides, at=str(root))
    if "\n" in name or "%" in name:   # a newline would end an #SBATCH line; % is an sbatch file pattern
        with pytest.raises(BackendError, match="sbatch cannot carry"):
            SlurmBackend(site="plain").render(Plan(cell, None))
        return
    files = SlurmBackend(site="plain").render(Plan(cell, None))
    cfg = yaml.safe_load(files[f"{cell.stage('pretrain').output_dir}/config.yaml"])
    assert cfg["data"]["root"] == parse_override(overrides[0])[1]   # the value reaches the config, as data
    script = files["slurm/pretrain.sbatch"]
    assert hostile.CANARY not in value or value not in script
    for line in script.splitlines():                   # every #SBATCH value is one shell word
        if line.startswith("#SBATCH "):
            assert len(shlex.split(line[len("#SBATCH "):])) == 1, line
    assert f"#SBATCH --chdir={shlex.quote(str(root))}\n" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    record = tmp_path / "srun.jsonl"
    env = {"PATH": f"{_stub_srun(tmp_path)}:/usr/bin:/bin", "SRUN_RECORD": str(record), "HOME": str(tmp_path)}
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    folder = f"{root}/{cell.stage('pretrain').output_dir}/slurm/<submission>"
    assert json.loads(record.read_text()) == [
        "--unbuffered", "--output", f"{folder}/%j_%t_log.out", "--error", f"{folder}/%j_%t_log.err",
        "--cpus-per-task=10", ".venv/bin/python", "-u", "-m", "submitit.core._submit", folder]
    hostile.assert_no_canary(tmp_path)


def test_hostile_root_cannot_be_mounted_into_containers(tmp_path):
    root = tmp_path / "a:b,c"
    shutil.copytree(FIX / "configs", root / "configs")
    with pytest.raises(BackendError, match="cannot be mounted"):
        _render("pyxis_site", _cell(root, at=str(root)))


def test_apptainer_script_runs_the_container_command_as_argv(tmp_path):
    script = _render("apptainer_site")["slurm/pretrain.sbatch"]
    record = tmp_path / "srun.jsonl"
    env = {"PATH": f"{_stub_srun(tmp_path)}:/usr/bin:/bin", "SRUN_RECORD": str(record)}
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, check=True, timeout=30)
    argv = json.loads(record.read_text())
    i = argv.index("apptainer")
    assert argv[i:i + 11] == ["apptainer", "exec", "--nv", "--pwd", ROOT, "--bind", f"{ROOT}:{ROOT}", "--bind",
                              "/datasets:/datasets", argv[i + 9], "python3"]
    assert argv[i + 9].startswith("docker://registry.example.com/hirl/hirl@sha256:")
    assert argv[:2] == ["--unbuffered", "--output"] and "--cpus-per-task=10" in argv


@pytest.mark.parametrize("method", hostile.NAMES, ids=hostile.ids(hostile.NAMES))
def test_job_names_are_slugged_from_free_text(method):
    cell = _cell()
    cell.method = method
    name = _render("pyxis_site", cell)["slurm/pretrain.sbatch"].split("--job-name=")[1].split("\n")[0]
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") and len(name) <= 64


def test_make_submit_passes_the_site_to_the_backend():
    out = subprocess.run(["make", "-s", "-n", "-p", "submit", "EXP=demo", "BACKEND=slurm", "SITE=pyxis"],
                         cwd=HERE.parents[1], capture_output=True, text=True, timeout=60).stdout
    assert "HIRL_SLURM_SITE := pyxis" in out      # values reach hirl through the environment
    assert "HIRL_MAKE_EXP := demo" in out and "HIRL_MAKE_BACKEND := slurm" in out
    assert '-m jobs submit "$HIRL_MAKE_EXP"' in out and '--backend "$HIRL_MAKE_BACKEND"' in out
