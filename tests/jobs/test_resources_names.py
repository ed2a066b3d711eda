"""Resource requests (memory sizes, time limits, merging per backend) and the safe names derived for
backends (DNS-1123, SLURM job names, file names): pure functions, no spec or MLflow."""

import re

import pytest

from jobs import names, resources


@pytest.mark.parametrize("text, mib", [(64, 65536), ("64G", 65536), ("512M", 512), ("1.5T", 1572864),
                                       ("32Gi", 32768), ("8GB", 8192), ("0G", None), ("lots", None), (True, None)])
def test_memory_sizes(text, mib):
    assert resources.parse_mem_mib(text) == mib


@pytest.mark.parametrize("text, seconds", [(90, 5400), ("30", 1800), ("10:30", 630), ("72:00:00", 259200),
                                           ("3-00:00:00", 259200), ("1-12", 129600), ("2-01:30", 178200),
                                           ("0", None), ("forever", None), ("1:2:3:4", None)])
def test_time_limits(text, seconds):
    assert resources.parse_time_s(text) == seconds


def test_stage_resources_merge_over_the_experiment_and_the_backend_section_wins():
    cell_res = {"nodes": 4, "gpus_per_node": 8, "time": "3-00:00:00", "slurm": {"nodes": 2, "partition": "gpu"}}
    merged = resources.merge(cell_res, {"nodes": 1, "slurm": {"qos": "high"}})
    assert resources.effective(cell_res, "slurm") == {"nodes": 2, "gpus_per_node": 8, "time": "3-00:00:00",
                                                      "partition": "gpu"}
    assert resources.effective(merged, "slurm")["qos"] == "high" and merged["nodes"] == 1
    assert resources.effective(merged, "k8s") == {"nodes": 1, "gpus_per_node": 8, "time": "3-00:00:00"}


NASTY = ["Model Zoo!", "hirl_mocov2", "a" * 200, "ÜBER/../../etc", "--rm -rf", "x", "", "MiXeD.Case_name-1",
         "seed=0 optimizer.name='SGD w/ nesterov'", "-leading-and-trailing-", "日本語"]


@pytest.mark.parametrize("text", NASTY)
def test_derived_names_are_safe_and_deterministic(text):
    k8s = names.k8s_name("hirl", text, "pretrain")
    assert names.is_dns1123_label(k8s) and k8s == names.k8s_name("hirl", text, "pretrain")
    job = names.slurm_job_name("hirl", text)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", job) and job == names.slurm_job_name("hirl", text)
    f = names.file_name(text) if text else "x"
    assert re.fullmatch(r"[A-Za-z0-9._=-]{1,100}", f) and not f.startswith(".")
    assert names.is_label_value(names.k8s_label_value(text))


def test_derived_names_keep_distinct_inputs_distinct():
    made = {names.k8s_name("hirl", t) for t in NASTY} | {names.k8s_name("hirl", "model-zoo")}
    assert len(made) == len(NASTY) + 1
    assert names.k8s_name("hirl", "demo", "knn") == "hirl-demo-knn"  # clean input passes unchanged
    assert names.k8s_name("hirl", "Demo") != names.k8s_name("hirl", "demo")
