"""Pure parts of the Kubernetes backend: the manifests of one submission as plain dicts and YAML.

A submission is one Argo ``Workflow`` whose DAG creates, per cell, a ConfigMap with the stage
configs and then one workload per stage in dependency order (sweep cells are independent chains
in the same DAG, so they run side by side). A stage's workload is a ``JobSet`` (one replicated job
of ``nodes`` indexed pods, DNS hostnames so pod 0 is the c10d rendezvous, gang restarts through
``failurePolicy.maxRestarts``) or, with ``resources.k8s.workload: indexed-job``, a batch/v1 Indexed
Job plus the headless Service that gives pod 0 its name.

Failures (``jobs.entrypoint``): the pod's main process is ``python -m jobs.entrypoint --pod torchrun
...``, which exits ``FINAL_EXIT`` when a rank failed for good (out of memory, bad input). The Job's
``podFailurePolicy`` fails the Job on that exit (and on 2), and the JobSet's ``failurePolicy.rules``
then fail the JobSet (``FailJobSet`` on reason ``PodFailurePolicy``) instead of restarting the gang
into the same failure. A pod the cluster disrupts (preemption, eviction, node drain: the pod
condition ``DisruptionTarget``) fails its Job too, and JobSet restarts the whole gang without counting
it against ``maxRestarts`` (``RestartJobSetAndIgnoreMaxRestarts``, matched on the Job controller's
message): a single replacement pod could not rejoin the gang's rendezvous. Every other failure
(exit 1, a node fault) restarts the gang, counted. An Indexed Job (no gang restarts) replaces a
disrupted pod (``Ignore``) and fails at once on a final failure.

Grace period: ``terminationGracePeriodSeconds`` (``grace_period_s``, 300 s) is passed on to torchrun
as ``--shutdown-timeout`` (less a margin), which otherwise kills its workers 30 s after SIGTERM. What
it buys (``hirl_core.engine.lifecycle``): a SIGTERM during the write of an epoch's checkpoint waits
until that checkpoint and its metrics are written, then the run ends KILLED; the work done since
the last epoch's checkpoint is done again by the restarted gang, which resumes from that checkpoint
into the same run. Each gang gets a fresh c10d rendezvous id: ``<run id>-<attempt>-<restart>``, the
kubelet expanding ``$(JOBSET_RESTART_ATTEMPT)`` from the pod's restart-attempt label.

Everything here is a function of its arguments: no clock, no cluster, no environment, so
``hirl plan --backend k8s --out DIR`` is golden-testable. User text never becomes a name or label
raw (``jobs.names`` slugs it); configs travel as ConfigMap data. No secret is ever rendered: the
tracking URI and its credentials come from a ConfigMap and a Secret by reference (``valueFrom``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from hirl_core.config import dumps_config

from .. import names, resources as res
from ..entrypoint import FINAL_EXIT, int_or_zero
from . import common
from .base import BackendError

JOBSET_API = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
WORKFLOW_API = ("argoproj.io", "v1alpha1", "workflows")
MANAGED_BY = {"app.kubernetes.io/managed-by": "hirl"}
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
POOL_LABEL = "hirl/gpu-pool"            # the node label a GPU pool's nodes carry (k8s/README.md)
REPLICATED_JOB = "node"                 # one pod per node
RDZV_PORT = 29500
RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"  # JobSet's RestartsKey: the gang restarts so far
WORKDIR = "/workspace"                  # the image's WORKDIR; outputs/ below it is the checkpoint PVC
CONFIG_DIR = "/etc/hirl"
DATA_DIR = "/data"
DEFAULTS = {"namespace": "hirl", "workload": "jobset", "max_restarts": 3, "grace_period_s": 300,
            "shm_size": "16G", "data_pvc": "hirl-data", "checkpoint_pvc": "hirl-outputs",
            "mlflow_configmap": "hirl-mlflow", "mlflow_secret": "hirl-mlflow-auth",
            "service_account": "hirl-workflow"}
CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
CONTAINER = "stage"
FINAL_EXITS = [2, FINAL_EXIT]           # bad input, and whatever jobs.entrypoint --pod found final (OOM)
SHUTDOWN_MARGIN_S = 15                  # torchrun kills its workers this long before the kubelet would
DISRUPTION = {"type": "DisruptionTarget", "status": "True"}  # preempted, evicted, drained: not the job's fault
# The Job controller's failure message when a pod condition matched a FailJob rule (pod_failure_policy.go)
DISRUPTION_MESSAGE = "has condition DisruptionTarget matching FailJob rule"
# etcd keeps an object under ~1.5 MiB, and Argo writes the Workflow's status (a node per task) into the
# same object (no status subresource): the rendered Workflow must leave room for it.
MAX_WORKFLOW_BYTES = 1 << 20


@dataclass
class StageJob:
    """One stage as the Workflow creates it."""
    cell: object             # jobs.dag.Cell, output dirs assigned
    stage: object            # jobs.dag.Stage
    run_id: str
    options: dict            # resources.effective(..., "k8s") for this stage
    image: str
    after: str = ""          # the upstream stage when it is created by this Workflow too
    attempt_base: int = 0
    submission: str = ""     # set by ``workflow``: the id every name and label of the submission carries

    @property
    def settings(self):
        return {**DEFAULTS, **self.options}


# -- names ------------------------------------------------------------------------------------------
def _dns1035(name):
    """Service and JobSet names must start with a letter (a slug of digits or a hash may not)."""
    return name if name[:1].isalpha() else "h" + name[:62]


def submission_name(experiment, submission):
    return _dns1035(names.slug(f"hirl-{experiment}", max_len=50) + f"-{submission}")


def workload_name(cell, stage, submission):
    """Short: JobSet pod host names (``<name>-node-0-0``) must stay a DNS label."""
    head = names.slug(f"{cell.experiment}-{stage.name}", max_len=22)
    return _dns1035(f"{head}-{cell.cell_id[:6]}-{submission[:6]}")


def config_map_name(cell, submission):
    return _dns1035(f"hirl-cfg-{cell.cell_id[:8]}-{submission}")


def task_name(cell, stage_name="", suffix=""):
    """A DAG task name, unique in the Workflow: slugs never hold '--', so the suffixes cannot collide."""
    base = f"c{cell.cell_id[:8]}" + (f"-{names.slug(stage_name, max_len=40)}" if stage_name else "")
    return base + (f"--{suffix}" if suffix else "")


def config_key(stage):
    return names.k8s_label_value(stage.name) + ".yaml"


def cell_label(cell_id):
    return cell_id[:32]


def labels(cell, submission, stage=None, run_id=""):
    out = {**MANAGED_BY, "hirl/experiment": names.k8s_label_value(cell.experiment),
           "hirl/cell": cell_label(cell.cell_id), "hirl/submission": submission}
    if stage is not None:
        out["hirl/stage"] = names.k8s_label_value(stage.name)
        out["hirl/run"] = names.k8s_label_value(run_id)
    return out


# -- the pod ---------------------------------------------------------------------------------------
def rendezvous_host(job):
    name = workload_name(job.cell, job.stage, job.submission)
    if job.settings["workload"] == "jobset":  # <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>
        return f"{name}-{REPLICATED_JOB}-0-0.{name}"
    return f"{name}-0.{name}"  # Indexed Job: <job>-<index>.<service>


def _nodes(settings):
    return max(1, int_or_zero(settings.get("nodes")))


def shutdown_timeout(grace_s):
    """torchrun's wait for its workers after SIGTERM: the pod's grace period less a margin (at most half)
    in which torchrun and ``jobs.entrypoint --pod`` exit before the kubelet's SIGKILL."""
    grace_s = int_or_zero(grace_s)
    return grace_s - min(SHUTDOWN_MARGIN_S, grace_s // 2)


def rendezvous_id(job):
    """``<run id>-<attempt>``, and for a JobSet ``-<gang restart>``: the kubelet expands
    ``$(JOBSET_RESTART_ATTEMPT)`` from the container's env, so every gang JobSet recreates rendezvouses
    under an id of its own and never meets a stale store of the gang before."""
    rdzv = f"{job.run_id}-{int(job.attempt_base) + 1}"
    return rdzv + "-$(JOBSET_RESTART_ATTEMPT)" if job.settings["workload"] == "jobset" else rdzv


def container_command(job):
    """(command, args): the pod launcher (``jobs.entrypoint --pod``: a final failure of a rank becomes
    the pod's ``FINAL_EXIT``) around torchrun with c10d rendezvous at pod 0, one worker per GPU, each
    the image's entrypoint (which tags the run from global rank 0 and runs ``python -m hirl_core``)."""
    s = job.settings
    nodes, gpus = _nodes(s), int_or_zero(s.get("gpus_per_node"))
    command = ["python", "-m", "jobs.entrypoint", "--pod",
               "torchrun", "--nnodes", str(nodes), "--nproc_per_node", str(gpus or 1),
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{rendezvous_host(job)}:{RDZV_PORT}",
               "--rdzv_id", rendezvous_id(job), "--max_restarts", "0",
               "--shutdown-timeout", str(shutdown_timeout(s.get("grace_period_s"))), "-m", "jobs.entrypoint"]
    return command, [job.stage.type, "-c", f"{CONFIG_DIR}/config.yaml"]


def container_env(job):
    s = job.settings
    env = common.stage_env(job.stage, job.run_id, cell=job.cell, attempt_base=job.attempt_base)
    env.update({"HIRL_IMAGE": job.image, "HIRL_NNODES": str(_nodes(s)),
                "HIRL_NPROC_PER_NODE": str(int_or_zero(s.get("gpus_per_node")) or 1),
                "HIRL_MASTER_ADDR": rendezvous_host(job), "HIRL_MASTER_PORT": str(RDZV_PORT)})
    gang = s["workload"] == "jobset"
    if gang:  # a failed stage whose gang JobSet recreates leaves its run open for the next attempt
        env["HIRL_MAX_RESTARTS"] = str(int_or_zero(s.get("max_restarts")))
    out = [{"name": k, "value": v} for k, v in env.items()]
    if gang:  # the attempt counts JobSet's restarts, which only the pod's own label knows
        out.append({"name": "JOBSET_RESTART_ATTEMPT", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.labels['{RESTART_LABEL}']"}}})
    out.append({"name": "MLFLOW_TRACKING_URI", "valueFrom": {"configMapKeyRef": {
        "name": s["mlflow_configmap"], "key": "MLFLOW_TRACKING_URI"}}})
    for key in CREDENTIAL_KEYS:  # optional: a tracking server without auth has no such Secret
        out.append({"name": key, "valueFrom": {"secretKeyRef": {"name": s["mlflow_secret"], "key": key,
                                                                "optional": True}}})
    return out


def _resources(s):
    gpus = int_or_zero(s.get("gpus_per_node"))
    nproc = gpus or 1
    requests, limits = {}, {}
    if s.get("cpus_per_task"):
        requests["cpu"] = str(int(s["cpus_per_task"]) * nproc)
    if s.get("mem") is not None:
        requests["memory"] = limits["memory"] = f"{res.parse_mem_mib(s['mem'])}Mi"
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def pod_spec(job, pod_labels):
    s = job.settings
    container = {"name": CONTAINER, "image": job.image, "imagePullPolicy": "IfNotPresent", "workingDir": WORKDIR}
    container["command"], container["args"] = container_command(job)
    container["env"] = container_env(job)
    container["ports"] = [{"name": "rdzv", "containerPort": RDZV_PORT}]
    if _resources(s):
        container["resources"] = _resources(s)
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"},
                                 {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                                 {"name": "outputs", "mountPath": f"{WORKDIR}/outputs"},
                                 {"name": "data", "mountPath": DATA_DIR, "readOnly": True}]
    spec = {"restartPolicy": "Never", "terminationGracePeriodSeconds": int_or_zero(s.get("grace_period_s")),
            "securityContext": {"fsGroup": 1000}, "containers": [container]}
    if s.get("priority_class"):
        spec["priorityClassName"] = s["priority_class"]
    if s.get("gpu_pool"):
        spec["nodeSelector"] = {POOL_LABEL: s["gpu_pool"]}
    if s.get("tolerations"):
        spec["tolerations"] = [dict(t) for t in s["tolerations"]]
    if _nodes(s) > 1:  # one pod per node: never two of the same stage on one host
        spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"hirl/run": pod_labels["hirl/run"]}},
            "topologyKey": "kubernetes.io/hostname"}]}}
    spec["volumes"] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{res.parse_mem_mib(s['shm_size'])}Mi"}},
        {"name": "config", "configMap": {"name": config_map_name(job.cell, job.submission),
                                         "items": [{"key": config_key(job.stage), "path": "config.yaml"}]}},
        {"name": "outputs", "persistentVolumeClaim": {"claimName": s["checkpoint_pvc"]}},
        {"name": "data", "persistentVolumeClaim": {"claimName": s["data_pvc"], "readOnly": True}}]
    return spec


def pod_failure_policy(gang):
    """A final failure (``FINAL_EXITS``) fails the Job at once. A disrupted pod: in a gang JobSet it fails
    the Job, which JobSet restarts uncounted (``jobset``'s rules); an Indexed Job replaces it (Ignore)."""
    return {"rules": [
        {"action": "FailJob" if gang else "Ignore", "onPodConditions": [dict(DISRUPTION)]},
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": list(FINAL_EXITS)}}]}


def _job_spec(job, pod_labels, backoff):
    nodes = _nodes(job.settings)
    spec = {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes, "backoffLimit": backoff}
    # needs the pod template's restartPolicy Never (pod_spec)
    spec["podFailurePolicy"] = pod_failure_policy(job.settings["workload"] == "jobset")
    seconds = res.parse_time_s(job.settings["time"]) if job.settings.get("time") else None
    if seconds:
        spec["activeDeadlineSeconds"] = seconds
    spec["template"] = {"metadata": {"labels": dict(pod_labels)}, "spec": pod_spec(job, pod_labels)}
    return spec


# -- the workloads ---------------------------------------------------------------------------------
def _meta(job, kind_labels):
    s = job.settings
    meta = {"name": workload_name(job.cell, job.stage, job.submission), "namespace": s["namespace"],
            "labels": dict(kind_labels)}
    if s.get("queue"):
        meta["labels"][QUEUE_LABEL] = s["queue"]
    return meta


def jobset(job):
    """The stage's JobSet: a failed pod fails its Job (backoffLimit 0) and JobSet restarts the whole gang,
    except after a final failure (FailJobSet) and, uncounted, after a disruption (module docstring)."""
    lab = labels(job.cell, job.submission, job.stage, job.run_id)
    spec = {}
    if job.settings.get("queue"):
        spec["suspend"] = True  # Kueue admits the workload by un-suspending it
    spec["network"] = {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    spec["failurePolicy"] = {"maxRestarts": int_or_zero(job.settings.get("max_restarts")),
                             "restartStrategy": "Recreate",
                             "rules": [  # the first that matches a failed Job applies; none: RestartJobSet
                                 {"name": "Disruption", "action": "RestartJobSetAndIgnoreMaxRestarts",
                                  "onJobFailureReasons": ["PodFailurePolicy"],
                                  "onJobFailureMessagePatterns": [DISRUPTION_MESSAGE]},
                                 {"name": "FinalFailure", "action": "FailJobSet",
                                  "onJobFailureReasons": ["PodFailurePolicy"]}]}
    spec["replicatedJobs"] = [{"name": REPLICATED_JOB, "replicas": 1, "template": {
        "metadata": {"labels": dict(lab)}, "spec": _job_spec(job, lab, 0)}}]
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": _meta(job, lab), "spec": spec}


def indexed_job(job):
    """For clusters without JobSet: pods get ``<job>-<index>.<service>`` names through the Service."""
    lab = labels(job.cell, job.submission, job.stage, job.run_id)
    spec = _job_spec(job, lab, 0)
    if job.settings.get("queue"):
        spec["suspend"] = True
    spec["template"]["spec"]["subdomain"] = workload_name(job.cell, job.stage, job.submission)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(job, lab), "spec": spec}


def headless_service(job):
    lab = labels(job.cell, job.submission, job.stage, job.run_id)
    name = workload_name(job.cell, job.stage, job.submission)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": job.settings["namespace"], "labels": lab},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {"batch.kubernetes.io/job-name": name},
                     "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT}]}}


def config_map(cell, jobs, submission, namespace):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": config_map_name(cell, submission), "namespace": namespace,
                         "labels": labels(cell, submission)},
            "data": {config_key(j.stage): dumps_config(j.stage.config) for j in jobs}}


def workloads(job):
    """[(suffix of the DAG task, manifest, success condition, failure condition)] for one stage."""
    if job.settings["workload"] == "jobset":
        return [("", jobset(job), "status.terminalState == Completed", "status.terminalState == Failed")]
    nodes = _nodes(job.settings)
    return [("svc", headless_service(job), "", ""),
            ("", indexed_job(job), f"status.succeeded == {nodes}", "status.failed > 0")]


# -- the Workflow ----------------------------------------------------------------------------------
def _resource_template(name, manifest, success="", failure=""):
    resource = {"action": "create", "setOwnerReference": True, "manifest": to_yaml(manifest)}
    if success:
        resource["successCondition"] = success
    if failure:
        resource["failureCondition"] = failure
    return {"name": name, "resource": resource}


def workflow(jobs, submission):
    """The submission's Workflow: per cell a ConfigMap task, then each stage after its upstream."""
    if not jobs:
        raise BackendError("nothing to submit: every stage is finished, held or not selected")
    spaces = sorted({j.settings["namespace"] for j in jobs})
    if len(spaces) > 1:
        raise BackendError(f"resources.k8s.namespace: one submission runs in one namespace, got {', '.join(spaces)}")
    accounts = sorted({j.settings["service_account"] for j in jobs})
    if len(accounts) > 1:
        raise BackendError(f"resources.k8s.service_account: one Workflow has one, got {', '.join(accounts)}")
    for j in jobs:
        j.submission = submission
    first, tasks, templates = jobs[0], [], []
    cells = {}
    for j in jobs:
        cells.setdefault(j.cell.cell_id, (j.cell, []))[1].append(j)
    for cell, cell_jobs in cells.values():
        cfg = task_name(cell, suffix="config")
        tasks.append({"name": cfg, "template": cfg})
        templates.append(_resource_template(cfg, config_map(cell, cell_jobs, submission, spaces[0])))
        for j in cell_jobs:
            before = [cfg] + ([task_name(cell, j.after)] if j.after else [])
            for suffix, manifest, success, failure in workloads(j):
                name = task_name(cell, j.stage.name, suffix)
                tasks.append({"name": name, "template": name, "dependencies": before})
                templates.append(_resource_template(name, manifest, success, failure))
                before = [cfg, name] if suffix else before
    wf_labels = {**MANAGED_BY, "hirl/experiment": names.k8s_label_value(first.cell.experiment),
                 "hirl/submission": submission}
    wf = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
          "metadata": {"name": submission_name(first.cell.experiment, submission), "namespace": spaces[0],
                       "labels": wf_labels},
          "spec": {"entrypoint": "stages", "serviceAccountName": accounts[0],
                   "templates": [{"name": "stages", "dag": {"tasks": tasks}}] + templates}}
    _check_size(wf, len(cells))
    return wf


def workflow_json(wf):
    """The Workflow as the client sends it (compact JSON): what etcd stores."""
    return json.dumps(wf, separators=(",", ":")).encode()


def _check_size(wf, cells):
    """One line before anything exists when the Workflow (it embeds every manifest it creates) would not
    fit in one object with the status Argo adds to it."""
    size = len(workflow_json(wf))
    if size <= MAX_WORKFLOW_BYTES:
        return
    what = f"{cells} cells" if cells > 1 else "one cell"
    fit = cells * MAX_WORKFLOW_BYTES // size
    how = (f"submit at most about {fit} cells at a time (CELL=<cell id prefix or key=value,...>, "
           f"hirl submit --cell)" if fit else "split the cell's stages into experiments of their own")
    raise BackendError(f"the Workflow for {what} is {size / 1e6:.2f} MB, over the {MAX_WORKFLOW_BYTES / 1e6:.2f} MB "
                       f"limit of one Workflow (etcd keeps an object under ~1.5 MB and Argo writes its status "
                       f"into it); {how}")


def manifests(wf):
    """The objects a Workflow's resource templates create, in DAG order (what Argo would submit)."""
    return [yaml.safe_load(t["resource"]["manifest"]) for t in wf["spec"]["templates"] if "resource" in t]


def render_files(jobs, submission, per_cell=False):
    """{path: YAML}: the Workflow, and each object it creates as a file of its own for reading (in a
    folder per cell, ``k8s/<cell id[:8]>/``, with ``per_cell``: a sweep's one Workflow)."""
    wf = workflow(jobs, submission)
    files = {"k8s/workflow.yaml": to_yaml(wf)}
    for obj in manifests(wf):
        labels_ = obj["metadata"]["labels"]
        stem = labels_.get("hirl/stage", "config")
        folder = f"k8s/{labels_['hirl/cell'][:8]}" if per_cell else "k8s"
        files[f"{folder}/{names.file_name(stem)}.{obj['kind'].lower()}.yaml"] = to_yaml(obj)
    return files


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value):
    style = "|" if "\n" in value and all(c == "\n" or c.isprintable() for c in value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(obj):
    """Stable YAML (key order as built, ASCII only, multi-line text as blocks where that reads back the same)."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=False,
                     width=100000)
