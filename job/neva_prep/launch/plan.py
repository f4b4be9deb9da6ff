"""The plan: one YAML file saying what to prepare and where it runs, and the ONE mapping of it onto CLI calls.

Every launcher (Kubernetes, Slurm, local) renders the argv lists built here and nothing else, so a job
on any scheduler runs exactly the command a user would type. The plan is validated when it is loaded
(unknown keys, wrong types, names that cannot become Kubernetes/Slurm job names): a bad plan is bad input
(exit 2) before anything is submitted. What only one scheduler needs (on Kubernetes, every local path on a
mounted volume) is checked by `check_for` when the plan is rendered for it.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import yaml

from neva_prep import storage
from neva_prep.cpus import usable_cpus
from neva_prep.data.prompts import builtin_names, check_builtin
from neva_prep.errors import BadInput, where

if TYPE_CHECKING:
    from neva_prep.data.check.options import CheckOptions

PRECISIONS = ("16", "bf16", "32")
DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("webvid", "captions", "llava")
MEDIA = ("image", "video")
AUTO = "auto"  # a dataset's `shards:` when absent: `resolve` makes it a count for the launcher
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 63  # Job names become pod labels and hostnames (<= 63 characters)
_MAX_JOB_NAME = _MAX_NAME - len("-merge")
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "toleration_seconds")
_VOLUME_KEYS = ("name", "mount_path", "persistent_volume_claim", "nfs", "host_path", "read_only")
_VOLUME_SOURCES = ("persistent_volume_claim", "nfs", "host_path")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SCRATCH_MOUNT = "/tmp"  # every pod's emptyDir scratch (TMPDIR, HOME); no plan volume may take it


class Target(str, Enum):
    """Where a plan is rendered for; `plan check --for` applies that scheduler's extra rules."""

    K8S = "k8s"
    SLURM = "slurm"
    LOCAL = "local"


@dataclass(frozen=True)
class ModelSpec:
    """The model step: an HF LLaMA directory (path or URL) converted to `output/checkpoints/NAME.nemo`."""

    source: str
    name: str
    precision: str = "16"
    layout: str = "mcore"
    gpus: int = 1
    tokens: tuple[str, ...] | None = None  # None: the step's default `<extra_id_0>`..`<extra_id_7>`
    device: str = "auto"


@dataclass(frozen=True)
class EnergonSpec:
    """`energon:` in a dataset: after its merge, `data export energon` in `shards` tasks, then --finalize."""

    media_root: str
    samples_per_shard: int = 10_000
    split: str | None = None  # e.g. "train=98,val=2"; default all train
    shards: int = 1


@dataclass(frozen=True)
class CheckSpec:
    """`check:` in a dataset: after its merge, `data check` of NAME.json for the NeMo settings training uses
    (`options`, the keys of the block but `shards`; report in `output/datasets/NAME/report/`); `shards` > 1
    splits it (with `decode`), then --merge."""

    options: CheckOptions  # its media_root defaults to the dataset's
    shards: int = 1


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: converted in `shards` parallel tasks into `output/datasets/NAME/`, then merged."""

    name: str
    source: str
    from_: str
    media: str
    shards: int | None = None  # None: `auto`, a count only once `resolve` made the plan a launcher's
    parallelism: int | None = None  # how many shards run at once; default: all of them
    media_column: str | None = None
    caption_column: str | None = None
    id_column: str | None = None
    prompts: str | None = None
    media_root: str | None = None
    energon: EnergonSpec | None = None  # also write an Energon WebDataset (NeMo 2, Megatron-Bridge)
    check: CheckSpec | None = None  # then check it is ready to train (`data check`)

    @property
    def num_shards(self) -> int:
        """The shard count in a plan `resolve`d for its launcher (what the argv and the schedulers use)."""
        if self.shards is None:
            raise ValueError(f"dataset {self.name!r}: `shards: auto` is unresolved; call plan.resolve first")
        return self.shards

    @property
    def max_parallel(self) -> int:
        return min(self.parallelism or self.num_shards, self.num_shards)


@dataclass(frozen=True)
class NfsExport:
    server: str
    path: str


@dataclass(frozen=True)
class VolumeSpec:
    """A volume every pod mounts at `mount_path`: exactly one of a PVC, an NFS export or a node's path.

    Pods see nothing of the machine that rendered them: a local path in the plan means a path on one of
    these volumes (the PVC over NFS / Lustre / Filestore that training clusters keep their data on)."""

    name: str
    mount_path: str
    persistent_volume_claim: str | None = None
    nfs: NfsExport | None = None
    host_path: str | None = None
    read_only: bool = False

    def holds(self, path: str) -> bool:
        """Whether the absolute, normalised `path` lies on this volume."""
        return path == self.mount_path or path.startswith(self.mount_path.rstrip("/") + "/")


@dataclass(frozen=True)
class KubernetesSpec:
    """Where and how the Jobs run; credentials come only from `secret` (a Secret with AWS_* keys)."""

    namespace: str | None = None  # None: kubectl's current namespace (the manifests name none)
    secret: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    service_account: str | None = None
    ttl_seconds_after_finished: int = 86400
    backoff_limit_per_index: int = 2
    cpu_request: str = "2"
    cpu_limit: str | None = None
    memory_request: str = "8Gi"
    memory_limit: str | None = "16Gi"
    scratch_size: str = "20Gi"
    volumes: tuple[VolumeSpec, ...] = ()
    wait_timeout_seconds: int = 86400  # how long a merge waits for its shards (0: no limit)


@dataclass(frozen=True)
class SlurmSpec:
    """sbatch options; `container_image` runs the steps through pyxis/enroot, None in a bare environment."""

    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    array_parallelism: int | None = None
    container_image: str | None = None
    container_mounts: str | None = None
    cpus_per_task: int = 4
    mem: str | None = None
    extra_sbatch: tuple[str, ...] = ()  # extra "#SBATCH ..." lines, verbatim
    setup: tuple[str, ...] = ()  # shell lines run before the command
    log_dir: str = "logs"


@dataclass(frozen=True)
class Plan:
    """A whole preparation: the model step (optional) and every dataset, for one output root."""

    output: str
    image: str
    model: ModelSpec | None
    datasets: tuple[DatasetSpec, ...]
    kubernetes: KubernetesSpec
    slurm: SlurmSpec
    name: str = "neva-prep"
    data_image: str | None = None  # the shards', waits' and merges' image (no GPU, no NeMo); None: `image`
    source: str = field(default="plan", compare=False)  # the plan file, for messages
    auto_shards: tuple[str, ...] = field(default=(), compare=False)  # what `resolve` chose, one line each

    @property
    def shards_image(self) -> str:
        return self.data_image or self.image

    def dataset(self, name: str) -> DatasetSpec:
        for ds in self.datasets:
            if ds.name == name:
                return ds
        raise KeyError(name)


# --- loading and validation ---------------------------------------------------------------------------

_MISSING = object()


class _Section:
    """One mapping of the plan, read key by key with type checks; unknown keys are reported first."""

    def __init__(self, data: object, path: str, source: str, allowed: tuple[str, ...]):
        self.path, self.source = path, source
        if not isinstance(data, Mapping):
            raise self.error(path, f"expected a mapping, got {_kind(data)}")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise self.error(self.key(unknown[0]), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        self.data: Mapping[str, object] = data

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, field_path: str, message: str) -> BadInput:
        return BadInput(f"{where(self.source, field=field_path)}: {message}")

    def raw(self, key: str, default: object) -> object:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(self.key(key), "missing")
            return default
        return value

    def text(self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] = ()) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(self.key(key), f"expected a string, got {_kind(value)}")
        text = str(value)
        if not text.strip():
            raise self.error(self.key(key), "must not be empty")
        if choices and text not in choices:
            raise self.error(self.key(key), f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int = 0) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(self.key(key), f"expected an integer, got {_kind(value)}")
        if value < minimum:
            raise self.error(self.key(key), f"must be >= {minimum}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(self.key(key), f"expected true or false, got {_kind(value)}")
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.raw(key, None)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(self.key(key), f"expected a list of strings, got {_kind(value)}")
        return tuple(value)

    def section(self, key: str, allowed: tuple[str, ...]) -> _Section:
        return _Section(self.raw(key, {}), self.key(key), self.source, allowed)


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _dns_label(sec: _Section, key: str, value: str) -> str:
    if len(value) > _MAX_JOB_NAME or not _DNS_LABEL.match(value):
        raise sec.error(
            sec.key(key),
            f"{value!r} must be a DNS-1123 label (lowercase letters, digits, '-'; at most "
            f"{_MAX_JOB_NAME} characters): it names jobs and folders",
        )
    return value


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name.rstrip("_") for f in dataclasses.fields(cls))


def _model(sec: _Section) -> ModelSpec:
    tokens = sec.strings("tokens")
    if tokens is not None and not tokens:
        raise sec.error(sec.key("tokens"), "an empty list adds no tokens; leave it out for the defaults")
    return ModelSpec(
        source=sec.text("source"),
        name=sec.text("name"),
        precision=sec.text("precision", "16", choices=PRECISIONS),
        layout=sec.text("layout", "mcore"),
        gpus=sec.integer("gpus", 1),
        tokens=tokens,
        device=sec.text("device", "auto", choices=DEVICES),
    )


def _dataset(sec: _Section) -> DatasetSpec:
    name = _dns_label(sec, "name", sec.text("name"))
    shards = _shards(sec)
    ds = DatasetSpec(
        name=name,
        source=sec.text("source"),
        from_=sec.text("from", choices=SOURCES),
        media=sec.text("media", choices=MEDIA),
        shards=shards,
        parallelism=sec.integer("parallelism", None, minimum=1),
        media_column=sec.text("media_column", None),
        caption_column=sec.text("caption_column", None),
        id_column=sec.text("id_column", None),
        prompts=_prompts(sec),
        media_root=sec.text("media_root", None),
        energon=_energon(sec) if sec.data.get("energon") is not None else None,
        check=_check(sec) if sec.data.get("check") is not None else None,
    )
    _check_convert_options(sec, ds)
    return ds


def _shards(sec: _Section) -> int | None:
    """`shards: N` (N >= 1), or `auto` (also when absent): None until `resolve` knows the launcher."""
    value = sec.raw("shards", AUTO)
    if value == AUTO:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise sec.error(sec.key("shards"), f"expected a positive integer or {AUTO}, got {_kind(value)}")
    if value < 1:
        raise sec.error(sec.key("shards"), f"must be >= 1 or {AUTO}, got {value}")
    return value


def _check_convert_options(sec: _Section, ds: DatasetSpec) -> None:
    """`data convert`'s own option rules (records.check_options), so that a plan asking a format for what it
    cannot use (`prompts` with `from: llava`, columns with webvid) is refused before anything runs."""
    from neva_prep.data.records import ConvertOptions, check_options

    options = ConvertOptions(
        source_format=ds.from_,
        media=ds.media,
        media_column=ds.media_column,
        caption_column=ds.caption_column,
        id_column=ds.id_column,
        prompts=ds.prompts,
    )
    try:
        check_options(options)
    except BadInput as exc:
        raise _at_key(sec, exc) from None


def _at_key(sec: _Section, exc: BadInput) -> BadInput:
    """A command's own option error (`--media-root ...`) as the plan's error at the key it names."""
    flag = re.match(r"--([a-z-]+)", str(exc))
    key = flag.group(1).replace("-", "_") if flag else ""
    return sec.error(sec.key(key) if key in sec.data else sec.path, str(exc))


def _check(dataset: _Section) -> CheckSpec:
    """The block's keys are `data check`'s options (`CheckOptions`, but `media`: the dataset's) and `shards`;
    `CheckOptions` applies the command's own rules, reported here at the key they name."""
    from neva_prep.data.check.options import CheckOptions
    from neva_prep.data.check.templates import TEMPLATES

    keys = (*(f for f in _fields(CheckOptions) if f != "media"), "shards")
    sec = dataset.section("check", keys)
    values: dict[str, Any] = {
        "template": sec.text("template", choices=TEMPLATES),
        "media": dataset.text("media"),
        "tokenizer": sec.text("tokenizer"),
        "seq_length": sec.integer("seq_length", minimum=1),
        "crop_size": sec.integer("crop_size", 224, minimum=1),
        "patch_size": sec.integer("patch_size", 14, minimum=1),
        "media_tokens": sec.integer("media_tokens", None, minimum=1),
        "num_frames": sec.integer("num_frames", None, minimum=1),
        "media_root": sec.text("media_root", None) or dataset.text("media_root", None),
        "decode": sec.boolean("decode", False),
    }
    if values["media"] == "video" and values["num_frames"] is None:
        raise sec.error(sec.key("num_frames"), "missing (model.data.num_frames; needed for video)")
    if values["decode"] and values["media_root"] is None:
        raise sec.error(sec.key("media_root"), "missing (decode needs the media folder)")
    try:
        options = CheckOptions(**values)
    except BadInput as exc:
        raise _at_key(sec, exc) from None
    return CheckSpec(options, shards=sec.integer("shards", 1, minimum=1))


def _energon(dataset: _Section) -> EnergonSpec:
    from neva_prep.data.writers.energon import parse_split

    sec = dataset.section("energon", _fields(EnergonSpec))
    media_root = sec.text("media_root", None) or dataset.text("media_root", None)
    if media_root is None:
        raise sec.error(sec.key("media_root"), "missing (the folder the records' media paths are under)")
    split = sec.text("split", None)
    try:
        parse_split(split)
    except BadInput as exc:
        raise sec.error(sec.key("split"), str(exc)) from None
    return EnergonSpec(
        media_root=media_root,
        samples_per_shard=sec.integer("samples_per_shard", 10_000, minimum=1),
        split=split,
        shards=sec.integer("shards", 1, minimum=1),
    )


def _prompts(sec: _Section) -> str | None:
    value: str | None = sec.text("prompts", None)
    problem = None if value is None else check_builtin(value)
    if problem:
        raise sec.error(sec.key("prompts"), problem)
    return value


def _kubernetes(sec: _Section) -> KubernetesSpec:
    node_selector = sec.raw("node_selector", {})
    if not isinstance(node_selector, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in node_selector.items()
    ):
        raise sec.error(sec.key("node_selector"), "expected a mapping of strings to strings")
    tolerations = sec.raw("tolerations", [])
    if not isinstance(tolerations, list):
        raise sec.error(sec.key("tolerations"), f"expected a list, got {_kind(tolerations)}")
    checked = []
    for i, t in enumerate(tolerations):
        tol = _Section(t, sec.key(f"tolerations[{i}]"), sec.source, _TOLERATION_KEYS)
        item: dict[str, Any] = {k: tol.text(k, None) for k in _TOLERATION_KEYS[:-1]}
        item["toleration_seconds"] = tol.integer("toleration_seconds", None)
        checked.append({k: v for k, v in item.items() if v is not None})
    namespace = sec.text("namespace", None)
    if namespace is not None:
        _dns_label(sec, "namespace", namespace)
    return KubernetesSpec(
        namespace=namespace,
        secret=sec.text("secret", None),
        gpu_resource=sec.text("gpu_resource", "nvidia.com/gpu"),
        node_selector=dict(node_selector),
        tolerations=checked,
        service_account=sec.text("service_account", None),
        ttl_seconds_after_finished=sec.integer("ttl_seconds_after_finished", 86400),
        backoff_limit_per_index=sec.integer("backoff_limit_per_index", 2),
        cpu_request=sec.text("cpu_request", "2"),
        cpu_limit=sec.text("cpu_limit", None),
        memory_request=sec.text("memory_request", "8Gi"),
        memory_limit=sec.text("memory_limit", "16Gi"),
        scratch_size=sec.text("scratch_size", "20Gi"),
        volumes=_volumes(sec),
        wait_timeout_seconds=sec.integer("wait_timeout_seconds", 86400),
    )


def _absolute(sec: _Section, key: str, value: str) -> str:
    if not value.startswith("/") or posixpath.normpath(value) != value or value == "/":
        raise sec.error(sec.key(key), f"{value!r} must be an absolute, normalised path other than /")
    return value


def _volumes(sec: _Section) -> tuple[VolumeSpec, ...]:
    items = sec.raw("volumes", [])
    if not isinstance(items, list):
        raise sec.error(sec.key("volumes"), f"expected a list, got {_kind(items)}")
    volumes: list[VolumeSpec] = []
    for i, item in enumerate(items):
        vol = _Section(item, sec.key(f"volumes[{i}]"), sec.source, _VOLUME_KEYS)
        name = vol.text("name")
        if len(name) > 63 or not _DNS_LABEL.match(name) or name == "scratch":
            raise vol.error(vol.key("name"), f"{name!r} must be a DNS-1123 label other than 'scratch'")
        mount_path = _absolute(vol, "mount_path", vol.text("mount_path"))
        given = [k for k in _VOLUME_SOURCES if vol.data.get(k) is not None]
        if len(given) != 1:
            raise vol.error(vol.path, f"give exactly one of {', '.join(_VOLUME_SOURCES)} (got {len(given)})")
        claim = vol.text("persistent_volume_claim", None)
        if claim is not None and (len(claim) > 253 or not _DNS_SUBDOMAIN.match(claim)):
            raise vol.error(vol.key("persistent_volume_claim"), f"{claim!r} is not a PVC name")
        nfs = None
        if vol.data.get("nfs") is not None:
            export = vol.section("nfs", ("server", "path"))
            nfs = NfsExport(export.text("server"), _absolute(export, "path", export.text("path")))
        host_path = vol.text("host_path", None)
        if host_path is not None:
            _absolute(vol, "host_path", host_path)
        spec = VolumeSpec(name, mount_path, claim, nfs, host_path, vol.boolean("read_only", False))
        for other in (SCRATCH_MOUNT, *(v.mount_path for v in volumes)):
            if spec.holds(other) or VolumeSpec("", other).holds(mount_path):
                raise vol.error(vol.key("mount_path"), f"{mount_path} overlaps {other} (mounted already)")
        if name in (v.name for v in volumes):
            raise vol.error(vol.key("name"), f"duplicate volume name {name!r}")
        volumes.append(spec)
    return tuple(volumes)


def _slurm(sec: _Section) -> SlurmSpec:
    if isinstance(sec.data.get("time"), int | float) and not isinstance(sec.data.get("time"), bool):
        # YAML reads an unquoted 4:00:00 as the number 14400: ask for the string Slurm expects.
        raise sec.error(sec.key("time"), "quote it, e.g. time: '04:00:00' (YAML reads H:MM:SS as a number)")
    return SlurmSpec(
        partition=sec.text("partition", None),
        account=sec.text("account", None),
        time=sec.text("time", "04:00:00"),
        array_parallelism=sec.integer("array_parallelism", None, minimum=1),
        container_image=sec.text("container_image", None),
        container_mounts=sec.text("container_mounts", None),
        cpus_per_task=sec.integer("cpus_per_task", 4, minimum=1),
        mem=sec.text("mem", None),
        extra_sbatch=sec.strings("extra_sbatch") or (),
        setup=sec.strings("setup") or (),
        log_dir=sec.text("log_dir", "logs"),
    )


def parse_plan(data: object, source: str) -> Plan:
    """Validate an already-parsed plan document; `source` names it in messages."""
    top = _Section(
        data,
        "",
        source,
        ("name", "output", "image", "data_image", "model", "datasets", "kubernetes", "slurm"),
    )
    name = _dns_label(top, "name", top.text("name", "neva-prep"))
    model_data = top.data.get("model")
    model = None if model_data is None else _model(top.section("model", _fields(ModelSpec)))
    datasets_data = top.raw("datasets", [])
    if not isinstance(datasets_data, list):
        raise top.error("datasets", f"expected a list, got {_kind(datasets_data)}")
    datasets = tuple(
        _dataset(_Section(d, f"datasets[{i}]", source, _fields(DatasetSpec)))
        for i, d in enumerate(datasets_data)
    )
    seen: set[str] = set()
    for i, ds in enumerate(datasets):
        if ds.name in seen:
            raise top.error(f"datasets[{i}].name", f"duplicate dataset name {ds.name!r}")
        seen.add(ds.name)
        if len(f"{name}-{ds.name}") > _MAX_JOB_NAME:
            raise top.error(
                f"datasets[{i}].name",
                f"job name {name}-{ds.name!r} is longer than {_MAX_JOB_NAME} characters; shorten it",
            )
    if model is None and not datasets:
        raise top.error("model", "the plan has neither a model nor datasets: nothing to do")
    plan = Plan(
        output=top.text("output"),
        image=top.text("image", "neva-prep:latest"),
        model=model,
        datasets=datasets,
        kubernetes=_kubernetes(top.section("kubernetes", _fields(KubernetesSpec))),
        slurm=_slurm(top.section("slurm", _fields(SlurmSpec))),
        name=name,
        data_image=top.text("data_image", None),
        source=source,
    )
    for i, ds in enumerate(datasets):  # the check's and the export's jobs have longer names
        longest = max(_dataset_job_names(plan, ds), key=len)
        if len(longest) > _MAX_NAME:
            raise top.error(
                f"datasets[{i}].name",
                f"job name {longest!r} is longer than {_MAX_NAME} characters (a pod label); shorten it",
            )
    return plan


def load_plan(url: str) -> Plan:
    """Read and validate a plan (local path or URL); `yaml.safe_load` only."""
    text = storage.read_text(url)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise BadInput(f"{storage.redact(url)}{at}: not valid YAML ({problem})") from None
    return parse_plan(data, storage.redact(url))


# --- what one scheduler needs on top ---------------------------------------------------------------------


def local_paths(plan: Plan) -> list[tuple[str, str]]:
    """(field, path) of every local path the steps read or write; URLs (s3://, gs://) are not listed."""
    found: list[tuple[str, str]] = []
    if plan.model is not None:
        found.append(("model.source", plan.model.source))
    found.append(("output", plan.output))
    for i, ds in enumerate(plan.datasets):
        found.append((f"datasets[{i}].source", ds.source))
        if ds.media_root is not None:
            found.append((f"datasets[{i}].media_root", ds.media_root))
        if ds.prompts is not None and ds.prompts not in builtin_names():
            found.append((f"datasets[{i}].prompts", ds.prompts))
        if ds.energon is not None:
            found.append((f"datasets[{i}].energon.media_root", ds.energon.media_root))
        if ds.check is not None:
            found.append((f"datasets[{i}].check.tokenizer", ds.check.options.tokenizer))
            if ds.check.options.media_root is not None:
                found.append((f"datasets[{i}].check.media_root", ds.check.options.media_root))
    return [(key, storage.local_path(url)) for key, url in found if storage.is_local(url)]


def _kubernetes_path_problem(plan: Plan, key: str, path: str) -> str | None:
    volumes = plan.kubernetes.volumes
    mounted = ", ".join(v.mount_path for v in volumes) or "none"
    advice = "use a URL (s3://, gs://) or a path on a volume listed in kubernetes.volumes"
    if not path.startswith("/"):
        return f"relative local path {path!r} means nothing inside a pod: {advice}"
    normal = posixpath.normpath(path)
    holder = next((v for v in volumes if v.holds(normal)), None)
    if holder is None:
        return f"local path {path} is on no mounted volume (mounted: {mounted}), pods cannot see it: {advice}"
    if key == "output" and holder.read_only:
        return f"{path} is on volume {holder.name!r}, mounted read-only: the output needs a writable volume"
    return None


def check_for(plan: Plan, target: Target | str) -> None:
    """Refuse (bad input) what cannot work where the plan is rendered for. Kubernetes: pods see only their
    volumes, so every local path must lie under a `kubernetes.volumes` mount path (or be a URL)."""
    if Target(target) is not Target.K8S:
        return
    problems = [
        (key, problem)
        for key, path in local_paths(plan)
        if (problem := _kubernetes_path_problem(plan, key, path)) is not None
    ]
    if problems:
        key, problem = problems[0]
        more = f" (and {len(problems) - 1} more local path(s))" if len(problems) > 1 else ""
        raise BadInput(f"{where(plan.source, field=key)}: {problem}{more}")


# --- `shards: auto`: the one rule every launcher calls ----------------------------------------------------


def resolve(plan: Plan, target: Target | str, *, workers: int | None = None) -> Plan:
    """The plan as `target` runs it: every `shards: auto` made a count. Under `launch local` that is the CPUs
    this process may use, at most `workers` (the commands run at once: more shards would only queue); on a
    cluster (Kubernetes, Slurm, submitit) it is 1, as before: there the user says how wide a dataset goes.
    The merged output is the same bytes whatever the count. `auto_shards` says what was chosen and why."""
    auto = [ds.name for ds in plan.datasets if ds.shards is None]
    if not auto:
        return plan
    if Target(target) is Target.LOCAL:
        cpus = usable_cpus()
        count = min(cpus, workers or cpus)
        why = f"{cpus} usable CPU{'s' if cpus != 1 else ''}"
        why += f", --workers {workers}" if count < cpus else ""
    else:
        count, why = 1, "1 on a cluster; write shards: N to spread it"
    datasets = tuple(dataclasses.replace(ds, shards=count) if ds.name in auto else ds for ds in plan.datasets)
    said = tuple(f"{name}: {count} shard{'s' if count != 1 else ''} (auto: {why})" for name in auto)
    return dataclasses.replace(plan, datasets=datasets, auto_shards=said)


# --- the one mapping onto CLI calls ----------------------------------------------------------------------


def dataset_output(plan: Plan, ds: DatasetSpec) -> str:
    """Where dataset `ds` lands: `OUTPUT/datasets/NAME/` (NAME.json, rejects.jsonl, stats.json)."""
    return storage.join(plan.output, "datasets", ds.name)


def model_argv(plan: Plan) -> list[str]:
    """`neva-prep model SRC OUTPUT ...` for the plan's model step."""
    m = plan.model
    if m is None:
        raise ValueError("the plan has no model step")
    argv = ["neva-prep", "model", m.source, plan.output, "--name", m.name]
    argv += ["--precision", m.precision, "--layout", m.layout]
    for token in m.tokens or ():
        argv += ["--token", token]
    if m.device != "auto":
        argv += ["--device", m.device]
    return argv


def shard_argv(plan: Plan, ds: DatasetSpec, *, record_failure: bool = False) -> list[str]:
    """`neva-prep data convert ...` for one shard; the shard index comes from the scheduler's environment
    (JOB_COMPLETION_INDEX / SLURM_ARRAY_TASK_ID) or an appended `--shard-index I`. `record_failure`: a
    shard that exits 2 leaves the record `wait_argv`'s command reads (Kubernetes, where a merge waits)."""
    argv = ["neva-prep", "data", "convert", ds.source, dataset_output(plan, ds)]
    argv += ["--from", ds.from_, "--media", ds.media, "--num-shards", str(ds.num_shards)]
    options = (
        ("--media-column", ds.media_column),
        ("--caption-column", ds.caption_column),
        ("--id-column", ds.id_column),
        ("--prompts", ds.prompts),
        ("--media-root", ds.media_root),
    )
    for flag, value in options:
        if value is not None:
            argv += [flag, value]
    if record_failure:
        argv.append("--record-failure")
    return argv


def wait_argv(plan: Plan, ds: DatasetSpec, stage: str = "shards") -> list[str]:
    """`neva-prep data wait DST --num-shards N [--for STAGE] [--timeout S]`: where no scheduler can order a
    step after the one it reads (Kubernetes), it waits in front of it: `shards` before the merge, `merge`
    before the Energon export and the data check, `energon` before the export's finalize, `check` before the
    check's --merge. Exit 0 when the step finished, 2 when a shard failed with bad input (its failure
    record), 1 after the plan's wait timeout."""
    out = dataset_output(plan, ds)
    if stage in ("shards", "merge"):
        dst, count = out, ds.num_shards
    elif stage == "energon" and ds.energon is not None:
        dst, count = out, ds.energon.shards
    elif stage == "check" and ds.check is not None:
        dst, count = check_report(plan, ds), ds.check.shards
    else:
        raise ValueError(f"no {stage!r} step in dataset {ds.name!r}")
    argv = ["neva-prep", "data", "wait", dst, "--num-shards", str(count)]
    argv += ["--for", stage] if stage != "shards" else []
    if plan.kubernetes.wait_timeout_seconds:
        argv += ["--timeout", str(plan.kubernetes.wait_timeout_seconds)]
    return argv


def merge_argv(plan: Plan, ds: DatasetSpec) -> list[str]:
    """`neva-prep data merge OUTPUT/datasets/NAME --name NAME --num-shards N`: run after the shards (exits 1
    while one is not finished); the shard count ignores shards of older runs."""
    return [
        "neva-prep",
        "data",
        "merge",
        dataset_output(plan, ds),
        "--name",
        ds.name,
        "--num-shards",
        str(ds.num_shards),
    ]


def model_job_name(plan: Plan) -> str:
    return f"{plan.name}-model"


def shards_job_name(plan: Plan, ds: DatasetSpec) -> str:
    return f"{plan.name}-{ds.name}"


def merge_job_name(plan: Plan, ds: DatasetSpec) -> str:
    return f"{plan.name}-{ds.name}-merge"


def energon_argv(plan: Plan, ds: DatasetSpec, *, finalize: bool = False) -> list[str]:
    """`neva-prep data export energon OUTPUT/datasets/NAME ...`: one export shard (the index comes from the
    scheduler's environment or an appended `--shard-index I`), or with `finalize` the step after them all."""
    e = ds.energon
    if e is None:
        raise ValueError(f"dataset {ds.name!r} has no energon block")
    argv = ["neva-prep", "data", "export", "energon", dataset_output(plan, ds), "--name", ds.name]
    argv += ["--media-root", e.media_root, "--samples-per-shard", str(e.samples_per_shard)]
    argv += ["--num-shards", str(e.shards)] + (["--split", e.split] if e.split else [])
    return [*argv, "--finalize"] if finalize else argv


def energon_job_name(plan: Plan, ds: DatasetSpec, *, finalize: bool = False) -> str:
    return f"{plan.name}-{ds.name}-energon" + ("-index" if finalize else "")


def check_argv(plan: Plan, ds: DatasetSpec, *, merge: bool = False) -> list[str]:
    """`neva-prep data check OUTPUT/datasets/NAME/NAME.json ... --report OUTPUT/datasets/NAME/report`: the
    whole check (1 shard), one check shard (index from the environment or `--shard-index I`), or `merge`."""
    if ds.check is None:
        raise ValueError(f"dataset {ds.name!r} has no check block")
    c = ds.check.options
    out = dataset_output(plan, ds)
    argv = ["neva-prep", "data", "check", storage.join(out, f"{ds.name}.json"), "--media", c.media]
    argv += ["--template", c.template, "--tokenizer", c.tokenizer, "--seq-length", str(c.seq_length)]
    argv += ["--crop-size", str(c.crop_size), "--patch-size", str(c.patch_size)]
    for flag, value in (("--media-tokens", c.media_tokens), ("--num-frames", c.num_frames)):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--media-root", c.media_root] if c.media_root else []
    argv += ["--decode"] if c.decode else []
    argv += ["--report", check_report(plan, ds)]
    argv += ["--num-shards", str(ds.check.shards)] if ds.check.shards > 1 else []
    return [*argv, "--merge"] if merge else argv


def check_report(plan: Plan, ds: DatasetSpec) -> str:
    """Where a dataset's `check:` writes its report: `OUTPUT/datasets/NAME/report/`."""
    return storage.join(dataset_output(plan, ds), "report")


def check_job_name(plan: Plan, ds: DatasetSpec, *, merge: bool = False) -> str:
    return f"{plan.name}-{ds.name}-check" + ("-merge" if merge else "")


def _dataset_job_names(plan: Plan, ds: DatasetSpec) -> list[str]:
    names = [shards_job_name(plan, ds), merge_job_name(plan, ds)]
    if ds.energon is not None:
        names += [energon_job_name(plan, ds), energon_job_name(plan, ds, finalize=True)]
    if ds.check is not None:
        names += [check_job_name(plan, ds), check_job_name(plan, ds, merge=True)]
    return names


def steps(plan: Plan) -> Iterator[tuple[str, list[str]]]:
    """(job name, argv) of every job in the plan, in the order they may start."""
    if plan.model is not None:
        yield model_job_name(plan), model_argv(plan)
    for ds in plan.datasets:
        yield f"{shards_job_name(plan, ds)} (x{ds.num_shards})", shard_argv(plan, ds)
        yield merge_job_name(plan, ds), merge_argv(plan, ds)
        if ds.energon is not None:
            yield f"{energon_job_name(plan, ds)} (x{ds.energon.shards})", energon_argv(plan, ds)
            yield energon_job_name(plan, ds, finalize=True), energon_argv(plan, ds, finalize=True)
        if ds.check is not None and ds.check.shards > 1:
            yield f"{check_job_name(plan, ds)} (x{ds.check.shards})", check_argv(plan, ds)
            yield check_job_name(plan, ds, merge=True), check_argv(plan, ds, merge=True)
        elif ds.check is not None:
            yield check_job_name(plan, ds), check_argv(plan, ds)


def _kubernetes_steps(plan: Plan) -> Iterator[tuple[str, list[str]]]:
    """`steps` as the Kubernetes Jobs run them: shards leave failure records, each merge waits first."""
    if plan.model is not None:
        yield model_job_name(plan), model_argv(plan)
    for ds in plan.datasets:
        yield f"{shards_job_name(plan, ds)} (x{ds.num_shards})", shard_argv(plan, ds, record_failure=True)
        yield f"{merge_job_name(plan, ds)} (init)", wait_argv(plan, ds)
        yield merge_job_name(plan, ds), merge_argv(plan, ds)
        if ds.energon is not None:
            name = energon_job_name(plan, ds)
            yield f"{name} (init)", wait_argv(plan, ds, "merge")
            yield f"{name} (x{ds.energon.shards})", energon_argv(plan, ds)
            name = energon_job_name(plan, ds, finalize=True)
            yield f"{name} (init)", wait_argv(plan, ds, "energon")
            yield name, energon_argv(plan, ds, finalize=True)
        if ds.check is not None:
            name = check_job_name(plan, ds)
            yield f"{name} (init)", wait_argv(plan, ds, "merge")
            yield f"{name} (x{ds.check.shards})" if ds.check.shards > 1 else name, check_argv(plan, ds)
            if ds.check.shards > 1:
                name = check_job_name(plan, ds, merge=True)
                yield f"{name} (init)", wait_argv(plan, ds, "check")
                yield name, check_argv(plan, ds, merge=True)


def describe(plan: Plan, target: Target | str | None = None) -> str:
    """What `plan check` prints: the commands every launcher (or the `target` one) will run; with no target,
    a `shards: auto` dataset as a cluster runs it, and what `launch local` would choose here."""
    lines = [f"plan {plan.name!r}: output {storage.redact(plan.output)}, image {plan.image}"]
    if plan.data_image:
        lines[0] += f", data image {plan.data_image}"
    k8s = target is not None and Target(target) is Target.K8S
    shown = resolve(plan, Target.SLURM if target is None else target)
    commands = _kubernetes_steps(shown) if k8s else steps(shown)
    lines += [f"  {job}: {storage.redact(shlex.join(argv))}" for job, argv in commands]
    lines += [f"  {line}" for line in shown.auto_shards]
    if target is None and shown.auto_shards:
        lines.append(f"  under launch local here: {'; '.join(resolve(plan, Target.LOCAL).auto_shards)}")
    for v in plan.kubernetes.volumes:
        lines.append(f"  kubernetes volume {v.name}: {_volume_text(v)} at {v.mount_path}")
    return "\n".join(lines)


def _volume_text(v: VolumeSpec) -> str:
    if v.persistent_volume_claim is not None:
        what = f"PVC {v.persistent_volume_claim}"
    elif v.nfs is not None:
        what = f"NFS {v.nfs.server}:{v.nfs.path}"
    else:
        what = f"host path {v.host_path}"
    return what + (" (read-only)" if v.read_only else "")


EXAMPLE_PLAN = """\
# neva-prep plan: what to prepare and where it runs. Render it with
#   neva-prep launch k8s PLAN --out k8s/      (kubectl apply -f k8s/)
#   neva-prep launch slurm PLAN --out slurm/  (bash slurm/submit.sh)
#   neva-prep launch local PLAN               (this machine)
name: neva-prep                      # job name prefix (lowercase letters, digits, '-')
output: s3://my-bucket/neva-prep     # checkpoints/, tokenizers/, datasets/NAME/ land under here
image: nvcr.io/my-org/neva-prep:0.1.0  # built from this repo's Dockerfile (FROM the NeMo container)
# data_image: nvcr.io/my-org/neva-prep-data:0.1.0  # shards, waits, merges: no GPU, no NeMo (default: image)

model:                               # HF LLaMA-2 / Vicuna -> checkpoints/NAME.nemo, tokenizers/
  source: s3://my-bucket/hf/Llama-2-7b-chat-hf
  name: llama-2-7b-chat
  precision: "16"                    # 16 | bf16 | 32
  layout: mcore
  gpus: 1                            # 0 runs the model step on CPU
  # tokens: ["<extra_id_0>", "<extra_id_1>"]   # default: <extra_id_0>..<extra_id_7>
  # device: auto                     # auto | cpu | cuda

datasets:                            # each: `shards` parallel conversions, then one merge
  - name: webvid                     # -> output/datasets/webvid/webvid.json
    source: s3://my-bucket/webvid/results_10M_train.csv
    from: webvid                     # webvid | captions | llava
    media: video                     # image | video
    shards: 16                       # default auto: the usable CPUs under launch local, 1 on a cluster
    parallelism: 8                   # shards running at once (default: all)
    # media_root: s3://my-bucket/webvid/videos   # reject rows whose media file is missing
  - name: llava-pretrain
    source: s3://my-bucket/llava/blip_laion_cc_sbu_558k.json
    from: llava
    media: image
    shards: 4
    media_root: s3://my-bucket/llava/images
    energon:                         # after the merge: an Energon WebDataset in datasets/NAME/energon/
      samples_per_shard: 10000       # media_root: default the dataset's
      split: train=98,val=2
      shards: 4                      # export shards, then one --finalize (needs the `energon` extra)
    check:                           # after the merge: `data check`, report in datasets/NAME/report/
      template: plain                # model.data.conv_template
      tokenizer: s3://my-bucket/tokenizers/tokenizer_neva.model  # a patched tokenizer that exists by then
      seq_length: 2048               # model.encoder_seq_length
      decode: true                   # decode every image under media_root
      shards: 4                      # check shards, then --merge
  # - name: cc3m                     # a caption table (CSV / JSONL / Parquet)
  #   source: s3://my-bucket/cc3m/*.parquet
  #   from: captions
  #   media: image
  #   media_column: key
  #   caption_column: caption
  #   id_column: key
  #   shards: auto                   # the default (same bytes out whatever the count; only speed changes)
  #   prompts: image_brief           # a list shipped in the package (image_brief, video_brief) or a file URL

kubernetes:
  # namespace: ml-data               # default: kubectl's current namespace (the manifests name none)
  secret: neva-prep-s3               # Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...
  gpu_resource: nvidia.com/gpu
  node_selector: {}                  # e.g. {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}
  tolerations: []                    # e.g. [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  service_account: null
  ttl_seconds_after_finished: 86400  # finished Jobs are deleted after a day
  backoff_limit_per_index: 2         # retries of a failed shard (exit 2 = bad input is never retried)
  cpu_request: "2"
  memory_request: 8Gi
  memory_limit: 16Gi
  scratch_size: 20Gi                 # emptyDir mounted at /tmp
  wait_timeout_seconds: 86400        # a merge waits this long for its shards, then fails (0: forever)
  volumes: []                        # mounted by every pod; local paths in this plan must lie on one
  # volumes:                         # (pods see nothing else; URLs like s3:// need no volume)
  #   - name: data
  #     mount_path: /data
  #     persistent_volume_claim: neva-prep-data   # a PVC in the Jobs' namespace (ReadWriteMany for shards)
  #   - name: datasets
  #     mount_path: /datasets
  #     nfs: {server: nfs.example.com, path: /exports/datasets}
  #     read_only: true
  #   - name: node-models
  #     mount_path: /models
  #     host_path: /mnt/models          # an existing directory on every node

slurm:
  partition: null
  account: null
  time: "04:00:00"                   # quote it: YAML reads 4:00:00 as a number
  array_parallelism: 8               # --array=0-(N-1)%8
  container_image: null              # e.g. nvcr.io#my-org/neva-prep:0.1.0 with pyxis/enroot
  container_mounts: null
  cpus_per_task: 4
  mem: 16G
  extra_sbatch: []                   # verbatim lines, e.g. ["#SBATCH --qos=normal"]
  setup: []                          # shell lines before each command, e.g. ["source /opt/venv/bin/activate"]
  log_dir: logs
"""


def example_plan() -> str:
    """The commented example plan `neva-prep plan init` prints."""
    return EXAMPLE_PLAN
