"""Render a plan as Kubernetes Jobs (official client models), and optionally create and follow them.

One Job per step: the model step (with a GPU when the plan asks for one); per dataset an Indexed Job whose
index K runs shard K (`JOB_COMPLETION_INDEX`), and a merge Job. Exit code 2 (bad input) fails a shard's
index (or the model/merge Job) at once through `podFailurePolicy`; node disruptions are not counted.

Pods see only their volumes: the plan's `kubernetes.volumes` (PVC, NFS, host path) are mounted in every pod,
and a plan with a local path on none of them is refused before anything is rendered (`plan.check_for`).

Kubernetes has no Job dependencies, so the merge pod starts with the shards and waits in an init container:
`data wait` polls the dataset's shard folder (one listing per poll) until every shard wrote its completion
marker, then the merge container starts, once. A shard that exits 2 leaves a failure record
(`data convert --record-failure`) and the wait exits 2, failing the merge Job at once; so does the wait's
timeout (exit 1). On the happy path no pod fails. Nothing waits for the model step: no other step reads it.
No RBAC and no extra tool: `kubectl apply -f DIR` alone runs the plan to completion.

A dataset's `energon:` and `check:` blocks follow its merge the same way: their Jobs start at once and wait
in init containers (`data wait --for merge`: the shards, then the merge's stats.json newer than them); the
export's finalize Job waits for the export shards (`--for energon`), a sharded check's `--merge` Job for the
check shards (`--for check`). A check that finds problems (exit 3) fails its Job at once, like bad input.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client

from neva_prep import storage
from neva_prep.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_FAILED, EXIT_OK, BadInput, StepFailed
from neva_prep.launch.plan import (
    SCRATCH_MOUNT,
    DatasetSpec,
    Plan,
    Target,
    VolumeSpec,
    check_argv,
    check_for,
    check_job_name,
    energon_argv,
    energon_job_name,
    merge_argv,
    merge_job_name,
    model_argv,
    model_job_name,
    resolve,
    shard_argv,
    shards_job_name,
    wait_argv,
)

CONTAINER = "neva-prep"
WAIT_CONTAINER = "wait-for-shards"
WAIT_FOR = {  # `data wait --for X` -> the init container that runs it
    "shards": WAIT_CONTAINER,
    "merge": "wait-for-merge",
    "energon": "wait-for-export",
    "check": "wait-for-check",
}
SCRATCH = SCRATCH_MOUNT
UID = 1000
_RENDERED = "rendered by `neva-prep launch k8s`"
KUSTOMIZATION = "Kustomization"  # kustomize's extension-less name: `kubectl apply -f DIR` skips it
_IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

GATING_NOTE = (
    "The merge pod starts with the shards; its init container runs `neva-prep data wait` until every shard "
    "wrote its completion marker, then the merge runs once. A shard that failed with bad input (exit 2) or "
    "the wait's timeout (exit 1) fails this Job at once."
)
AFTER_NOTE = (
    "This Job starts with the plan; its init container runs `neva-prep data wait --for {stage}` until "
    "{what}, then the step runs. The wait's timeout (exit 1) or a shard that failed with bad input "
    "(exit 2) fails this Job at once."
)
_AFTER_WHAT = {
    "merge": "the dataset's merge finished (its stats.json, newer than the shards' markers)",
    "energon": "every export shard wrote its completion marker",
    "check": "every check shard wrote its part.json",
}


def _labels(plan: Plan, component: str, ds: DatasetSpec | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "neva-prep",
        "app.kubernetes.io/instance": plan.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "neva-prep",
    }
    if ds is not None:
        labels["neva-prep/dataset"] = ds.name
    return labels


def _failure_policy(
    action: str, *, wait: str | None = None, final: tuple[int, ...] = (EXIT_BAD_INPUT,)
) -> client.V1PodFailurePolicy:
    """Exit 2 (and a check's 3) means a retry cannot help: `action` (FailIndex / FailJob) at once; disruptions
    never count. A wait (init container `wait`) that ends without success (a failed shard, or its timeout)
    would only wait again: FailJob."""
    rules = [
        client.V1PodFailurePolicyRule(
            action=action,
            on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
                container_name=CONTAINER, operator="In", values=list(final)
            ),
        )
    ]
    if wait:
        rules.append(
            client.V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=wait, operator="In", values=[EXIT_FAILED, EXIT_BAD_INPUT]
                ),
            )
        )
    return client.V1PodFailurePolicy(
        rules=[
            *rules,
            client.V1PodFailurePolicyRule(
                action="Ignore",
                on_pod_conditions=[
                    client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                ],
            ),
        ]
    )


def _volume(v: VolumeSpec) -> client.V1Volume:
    if v.persistent_volume_claim is not None:
        return client.V1Volume(
            name=v.name,
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                claim_name=v.persistent_volume_claim, read_only=v.read_only or None
            ),
        )
    if v.nfs is not None:
        return client.V1Volume(
            name=v.name,
            nfs=client.V1NFSVolumeSource(server=v.nfs.server, path=v.nfs.path, read_only=v.read_only or None),
        )
    assert v.host_path is not None
    # "Directory": it must exist on the node; one the kubelet created would be root's, unwritable for uid 1000
    return client.V1Volume(
        name=v.name, host_path=client.V1HostPathVolumeSource(path=v.host_path, type="Directory")
    )


def _container(
    plan: Plan, name: str, image: str, argv: list[str], gpus: int, env: list[client.V1EnvVar]
) -> client.V1Container:
    k = plan.kubernetes
    requests = {"cpu": k.cpu_request, "memory": k.memory_request}
    limits: dict[str, str] = {}
    if k.cpu_limit:
        limits["cpu"] = k.cpu_limit
    if k.memory_limit:
        limits["memory"] = k.memory_limit
    if gpus > 0:
        limits[k.gpu_resource] = str(gpus)
    base_env = [
        client.V1EnvVar(name="TMPDIR", value=SCRATCH),
        client.V1EnvVar(name="HOME", value=SCRATCH),
        client.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
    ]
    mounts = [client.V1VolumeMount(name="scratch", mount_path=SCRATCH)]
    mounts += [
        client.V1VolumeMount(name=v.name, mount_path=v.mount_path, read_only=v.read_only or None)
        for v in k.volumes
    ]
    return client.V1Container(
        name=name,
        image=image,
        image_pull_policy="IfNotPresent",
        command=[argv[0]],
        args=argv[1:],
        env=base_env + env,
        env_from=(
            [client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=k.secret))] if k.secret else None
        ),
        resources=client.V1ResourceRequirements(requests=requests, limits=limits or None),
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            run_as_user=UID,
            run_as_group=UID,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        volume_mounts=mounts,
    )


def _job(
    plan: Plan,
    name: str,
    component: str,
    argv: list[str],
    *,
    ds: DatasetSpec | None = None,
    gpus: int = 0,
    indexed: bool = False,
    completions: int | None = None,
    wait: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    final: tuple[int, ...] = (EXIT_BAD_INPUT,),
) -> client.V1Job:
    """One Job; `wait`: the argv of an init container (`data wait`) that must succeed before `argv` starts;
    `indexed`: `completions` indexes (default: the dataset's shards); `final`: exit codes never retried."""
    k = plan.kubernetes
    wait_name = WAIT_FOR[wait[wait.index("--for") + 1] if "--for" in wait else "shards"] if wait else None
    image = plan.image if component == "model" else plan.shards_image
    labels = _labels(plan, component, ds)
    env = []
    if indexed:  # Kubernetes injects it too; explicit so the shard index never depends on that
        env.append(
            client.V1EnvVar(
                name="JOB_COMPLETION_INDEX",
                value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(
                        field_path="metadata.annotations['batch.kubernetes.io/job-completion-index']"
                    )
                ),
            )
        )
    pod = client.V1PodSpec(
        restart_policy="Never",
        automount_service_account_token=False,
        service_account_name=k.service_account,
        node_selector=dict(k.node_selector) or None,
        tolerations=[client.V1Toleration(**t) for t in k.tolerations] or None,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=UID,
            run_as_group=UID,
            fs_group=UID,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        init_containers=[_container(plan, wait_name, image, wait, 0, [])] if wait and wait_name else None,
        containers=[_container(plan, CONTAINER, image, argv, gpus, env)],
        volumes=[
            client.V1Volume(
                name="scratch", empty_dir=client.V1EmptyDirVolumeSource(size_limit=k.scratch_size)
            ),
            *(_volume(v) for v in k.volumes),
        ],
    )
    spec = client.V1JobSpec(
        ttl_seconds_after_finished=k.ttl_seconds_after_finished,
        # a retry starts only once the failed pod is gone: never two writers for one shard
        pod_replacement_policy="Failed",
        template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod),
    )
    if indexed:
        assert ds is not None
        spec.completion_mode = "Indexed"
        spec.completions = completions or ds.num_shards
        spec.parallelism = completions or ds.max_parallel
        spec.backoff_limit_per_index = k.backoff_limit_per_index
        spec.pod_failure_policy = _failure_policy("FailIndex", wait=wait_name, final=final)
    else:
        spec.completions = 1
        spec.parallelism = 1
        spec.backoff_limit = k.backoff_limit_per_index
        spec.pod_failure_policy = _failure_policy("FailJob", wait=wait_name, final=final)
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name, namespace=k.namespace, labels=labels, annotations=annotations or None
        ),
        spec=spec,
    )


def jobs(plan: Plan) -> list[client.V1Job]:
    """Every Job of the plan: the model step, then per dataset its shards and its merge. A plan with a
    local path that no pod could see is refused here (bad input), before anything is rendered."""
    check_for(plan, Target.K8S)
    plan = resolve(plan, Target.K8S)
    out = []
    if plan.model is not None:
        out.append(_job(plan, model_job_name(plan), "model", model_argv(plan), gpus=plan.model.gpus))
    for ds in plan.datasets:
        shard = shard_argv(plan, ds, record_failure=True)
        out.append(_job(plan, shards_job_name(plan, ds), "shards", shard, ds=ds, indexed=True))
        out.append(
            _job(
                plan,
                merge_job_name(plan, ds),
                "merge",
                merge_argv(plan, ds),
                ds=ds,
                wait=wait_argv(plan, ds),
                annotations={"neva-prep/gating": GATING_NOTE},
            )
        )
        out += _after_merge_jobs(plan, ds)
    return out


def _gated(stage: str) -> dict[str, str]:
    return {"neva-prep/gating": AFTER_NOTE.format(stage=stage, what=_AFTER_WHAT[stage])}


def _after_merge_jobs(plan: Plan, ds: DatasetSpec) -> list[client.V1Job]:
    """The dataset's Energon export (Indexed Job + finalize Job) and data check (one Job, or an Indexed Job
    + its --merge Job), each gated by a `data wait` init container."""
    out = []
    if ds.energon is not None:
        n = ds.energon.shards
        out += [
            _job(
                plan,
                energon_job_name(plan, ds),
                "energon",
                energon_argv(plan, ds),
                ds=ds,
                indexed=True,
                completions=n,
                wait=wait_argv(plan, ds, "merge"),
                annotations=_gated("merge"),
            ),
            _job(
                plan,
                energon_job_name(plan, ds, finalize=True),
                "energon-index",
                energon_argv(plan, ds, finalize=True),
                ds=ds,
                wait=wait_argv(plan, ds, "energon"),
                annotations=_gated("energon"),
            ),
        ]
    if ds.check is not None:
        n, checked = ds.check.shards, (EXIT_BAD_INPUT, EXIT_CHECK_FAILED)
        name, argv, after = check_job_name(plan, ds), check_argv(plan, ds), wait_argv(plan, ds, "merge")
        if n == 1:
            out.append(
                _job(plan, name, "check", argv, ds=ds, wait=after, annotations=_gated("merge"), final=checked)
            )
        else:
            out += [
                _job(
                    plan,
                    name,
                    "check",
                    argv,
                    ds=ds,
                    indexed=True,
                    completions=n,
                    wait=after,
                    annotations=_gated("merge"),
                ),
                _job(
                    plan,
                    check_job_name(plan, ds, merge=True),
                    "check-merge",
                    check_argv(plan, ds, merge=True),
                    ds=ds,
                    wait=wait_argv(plan, ds, "check"),
                    annotations=_gated("check"),
                    final=checked,
                ),
            ]
    return out


def to_dict(job: client.V1Job) -> dict[str, Any]:
    """The manifest as `kubectl` reads it (camelCase keys, no nulls)."""
    data: dict[str, Any] = client.ApiClient().sanitize_for_serialization(job)
    return data


def job_name(job: client.V1Job) -> str:
    assert job.metadata is not None
    return str(job.metadata.name)


def _component(job: client.V1Job) -> str:
    assert job.metadata is not None and job.metadata.labels is not None
    return str(job.metadata.labels["app.kubernetes.io/component"])


_AFTER = {
    "energon": [
        "Energon export: index K writes the tars export shard K owns (JOB_COMPLETION_INDEX). Gating: its",
        "init container (`data wait --for merge`) waits until the dataset's merge finished.",
    ],
    "energon-index": [
        "Energon export's finalize: rejects, stats and .nv-meta/ with Energon's index. Gating: its init",
        "container (`data wait --for energon`) waits until every export shard wrote its marker.",
    ],
    "check": [
        "data check (index K checks share K when sharded). Gating: its init container (`data wait --for",
        "merge`) waits until the dataset's merge finished. Exit 3 (problems found) is not retried.",
    ],
    "check-merge": [
        "data check --merge: the report from every check shard. Gating: its init container (`data wait",
        "--for check`) waits for every shard's part.json. Exit 3 (problems found) is not retried.",
    ],
}


def _header(job: client.V1Job) -> str:
    component = _component(job)
    lines = [f"# {job_name(job)}: {_RENDERED} from the plan; edit the plan instead."]
    if component == "shards":
        lines += [
            "# Index K runs shard K (JOB_COMPLETION_INDEX); exit 2 (bad input) fails that index and leaves",
            "# the failure record DST/shards/IIIII-of-NNNNN.FAILED for the merge's wait.",
        ]
    elif component == "merge":
        lines += [
            "# Gating: this Job starts with the shards; its init container (`data wait`, one listing per",
            "# poll) waits until every shard wrote its completion marker, then the merge runs once. A shard",
            "# that failed with bad input (exit 2) or the wait's timeout (exit 1) fails the Job at once.",
        ]
    elif component in _AFTER:
        lines += [f"# {line}" for line in _AFTER[component]]
    return "\n".join(lines) + "\n"


def render(plan: Plan) -> dict[str, str]:
    """File name -> YAML text: one file per Job, plus a `Kustomization` (for `kubectl apply -k`)."""
    files: dict[str, str] = {}
    for job in jobs(plan):
        body = yaml.safe_dump(to_dict(job), sort_keys=True, default_flow_style=False, allow_unicode=True)
        files[f"{job_name(job)}.yaml"] = _header(job) + body
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files[KUSTOMIZATION] = (
        "# `kubectl apply -k DIR` reads this; `kubectl apply -f DIR` ignores it (no .yaml extension).\n"
        + yaml.safe_dump(kustomization, sort_keys=True)
    )
    return dict(sorted(files.items()))


@dataclass
class K8sLaunch:
    """What `launch k8s` did: the files it wrote, the Jobs it created, and how they ended."""

    out: str
    files: list[str]
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)  # job -> Complete / Failed (reason)
    exit_code: int = EXIT_OK

    def summary(self) -> str:
        lines = [f"wrote {len(self.files)} file(s) to {storage.redact(self.out)}: {', '.join(self.files)}"]
        if self.created or self.existing:
            lines.append(f"created {len(self.created)} job(s): {', '.join(self.created) or '-'}")
        if self.existing:
            lines.append(f"already there (left as they are): {', '.join(self.existing)}")
        lines += [f"  {name}: {state}" for name, state in self.final.items()]
        if not self.created and not self.existing and not self.final:
            lines.append(f"apply them with: kubectl apply -f {self.out}")
        return "\n".join(lines)


def write_manifests(plan: Plan, out: str) -> list[str]:
    """Write the rendered files under `out` (atomically, one by one); returns their names.

    Manifests an earlier rendering left there (a dataset since removed from the plan) are deleted, so that
    `kubectl apply -f DIR` never starts a Job the plan no longer has; other files are left alone."""
    files = render(plan)
    storage.makedirs(out)
    for name in storage.listdir(out):
        url = storage.join(out, name)
        if name.endswith(".yaml") and name not in files and _RENDERED in storage.read_text(url)[:300]:
            storage.remove(url)
    for name, text in files.items():
        storage.write_text(storage.join(out, name), text)
    return list(files)


def _api() -> tuple[client.BatchV1Api, str]:
    """A Batch API client from the kubeconfig (KUBECONFIG or ~/.kube/config), else the in-cluster account,
    and the namespace kubectl would use: the current context's, the pod's own, else `default`."""
    from kubernetes import config

    try:
        config.load_kube_config()
        _, context = config.list_kube_config_contexts()
        namespace = str((context or {}).get("context", {}).get("namespace") or "default")
    except (config.ConfigException, OSError, TypeError):
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise BadInput(
                "no Kubernetes configuration: set KUBECONFIG (or ~/.kube/config), or run inside a cluster"
            ) from None
        try:
            with open(_IN_CLUSTER_NAMESPACE, encoding="utf-8") as f:
                namespace = f.read().strip() or "default"
        except OSError:
            namespace = "default"
    return client.BatchV1Api(), namespace


def _api_error(exc: client.ApiException, what: str) -> Exception:
    reason = f"{what}: Kubernetes API answered {exc.status} {exc.reason}"
    if exc.status in (400, 401, 403, 404, 422):
        return BadInput(reason)  # permissions, namespace or manifest: a retry cannot help
    return StepFailed(reason)


def apply(plan: Plan, api: client.BatchV1Api, namespace: str = "default") -> tuple[list[str], list[str]]:
    """Create every Job in the plan's namespace (else `namespace`, the current one); existing Jobs are left
    alone (re-running is safe)."""
    created: list[str] = []
    existing: list[str] = []
    for job in jobs(plan):
        try:
            api.create_namespaced_job(namespace=plan.kubernetes.namespace or namespace, body=job)
        except client.ApiException as exc:
            if exc.status == 409:
                existing.append(job_name(job))
                continue
            raise _api_error(exc, f"creating job {job_name(job)}") from None
        created.append(job_name(job))
    return created, existing


def job_state(job: client.V1Job) -> tuple[str | None, str]:
    """(Complete / Failed / None while running, a one-line progress text) of a Job read from the API."""
    status = job.status or client.V1JobStatus()
    done = (job.spec.completions if job.spec else None) or 1
    text = (
        f"{status.succeeded or 0}/{done} succeeded, {status.active or 0} running, {status.failed or 0} failed"
    )
    for cond in status.conditions or []:
        if cond.status == "True" and cond.type in ("Complete", "Failed"):
            if cond.type == "Complete":
                return "Complete", text
            why = cond.reason or "unknown"
            return f"Failed ({why}: {cond.message})" if cond.message else f"Failed ({why})", text
    return None, text


def failed_with_bad_input(state: str) -> bool:
    """A Job failed by the exit-2 rule of its podFailurePolicy (not by the wait's timeout, exit 1, nor by a
    check that found problems, exit 3)."""
    return state.startswith("Failed (PodFailurePolicy") and not any(
        f"exit code {code} " in state for code in (EXIT_FAILED, EXIT_CHECK_FAILED)
    )


def failed_with_findings(state: str) -> bool:
    """A check Job failed by its exit-3 rule: it ran, and found problems (see its report)."""
    return state.startswith("Failed (PodFailurePolicy") and f"exit code {EXIT_CHECK_FAILED} " in state


def wait(
    plan: Plan,
    api: client.BatchV1Api,
    names: list[str],
    echo: Callable[[str], None],
    interval: float = 10.0,
    namespace: str = "default",
) -> dict[str, str]:
    """Poll the Jobs (in the plan's namespace, else `namespace`) until each is Complete or Failed, printing
    a line whenever one of them changes."""
    final: dict[str, str] = {}
    last: dict[str, str] = {}
    while len(final) < len(names):
        for name in names:
            if name in final:
                continue
            try:
                job = api.read_namespaced_job_status(
                    name=name, namespace=plan.kubernetes.namespace or namespace
                )
            except client.ApiException as exc:
                raise _api_error(exc, f"reading job {name}") from None
            state, text = job_state(job)
            if last.get(name) != text:
                echo(f"{name}: {text}")
                last[name] = text
            if state is not None:
                final[name] = state
                echo(f"{name}: {state}")
        if len(final) < len(names):
            time.sleep(interval)
    return final


def launch_k8s(
    plan: Plan,
    out: str,
    *,
    do_apply: bool = False,
    do_wait: bool = False,
    interval: float = 10.0,
    echo: Callable[[str], None] = print,
) -> K8sLaunch:
    """Render the plan into `out`; with `do_apply` create the Jobs, with `do_wait` follow them to the end
    (without `do_apply`: Jobs someone already created, e.g. with `kubectl apply -f`)."""
    result = K8sLaunch(out=out, files=write_manifests(plan, out))
    if not (do_apply or do_wait):
        return result
    api, namespace = _api()
    if do_apply:
        result.created, result.existing = apply(plan, api, namespace)
    if do_wait:
        names = [job_name(job) for job in jobs(plan)]
        result.final = wait(plan, api, names, echo, interval, namespace)
        failed = [state for state in result.final.values() if state != "Complete"]
        if any(failed_with_bad_input(s) for s in failed):
            result.exit_code = EXIT_BAD_INPUT
        elif failed and all(failed_with_findings(s) for s in failed):
            result.exit_code = EXIT_CHECK_FAILED  # everything ran; a data check found problems
        elif failed:
            result.exit_code = EXIT_FAILED
    return result


__all__ = ["K8sLaunch", "apply", "jobs", "launch_k8s", "render", "to_dict", "wait", "write_manifests"]
