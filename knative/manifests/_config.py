"""What ``surefoot.yaml`` may say: the render config as a frozen dataclass, read from YAML and
checked whole, so that one run names every bad field at once instead of the first."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from functions import FunctionSettings

SHAPES = ("knative", "kubernetes")
POD_SOURCES = ("apiserversource", "surefoot")
CHECKPOINT_VOLUMES = ("emptydir", "pvc")


class RenderConfigError(ValueError):
    """A config file that cannot render; ``errors`` names every bad field."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = errors
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(errors))


@dataclass(frozen=True)
class Images:
    replica: str = "ghcr.io/surefoot/replica:0.1.0-cuda"
    fallback: str = ""  # "" = the replica image
    app: str = "ghcr.io/surefoot/app:0.1.0"


@dataclass(frozen=True)
class Traffic:
    primary: int = 100
    fallback: int = 0


@dataclass(frozen=True)
class RenderConfig:
    """What ``surefoot.yaml`` may say. Every field has a working default except ``model``."""

    model: str = ""  # SUREFOOT_MODEL of the primary revision: a GGUF path or a known alias
    fallback_model: str = ""  # "" = the primary's model
    embedding_model: str = ""  # "" = the replica's default
    name: str = "surefoot"  # prefix of every object name
    namespace: str = "surefoot"
    # our revision suffix: <name>-llm-<revision>, <name>-llm-fallback-<revision>
    revision: str = "v1"
    shape: str = "knative"
    images: Images = field(default_factory=Images)
    gpus: int = 1  # nvidia.com/gpu per primary replica (0 = CPU)
    fallback_gpus: int = 0
    replica_cpu: str = "2"
    replica_memory: str = "8Gi"
    min_scale: int = 3  # replicas of the primary that serve
    max_scale: int = 6  # 0 = unbounded
    fallback_min_scale: int = 1
    fallback_max_scale: int = 3
    # warm spare pods per revision, ready and loaded: min-scale = replicas + standby, so a lost
    # pod leaves the revision's replicas serving while Knative replaces it
    standby: int = 1
    fallback_standby: int = 0
    gpu_budget: int = 0  # nvidia.com/gpu the revisions' pods at min-scale may hold (0 = no check)
    target: int = 4  # autoscaling target: concurrent requests per replica
    container_concurrency: int = 8
    timeout_seconds: int = 300
    response_start_timeout_seconds: int = 120
    rollout_duration: str = "120s"
    traffic: Traffic = field(default_factory=Traffic)
    gateway_min_scale: int = 2
    redis_url: str = ""  # "" = run Redis in the namespace
    redis_url_secret: str = ""  # "<secret>/<key>" holding an external Redis URL with credentials
    redis_size: str = "1Gi"  # the rendered Redis's append-only volume
    redis_storage_class: str = ""
    secret: str = ""  # an existing Secret with the credentials; "" = render <name>-secrets
    checkpoint_volume: str = "emptydir"
    checkpoint_size: str = "20Gi"
    checkpoint_storage_class: str = ""
    checkpoint_schedule: str = "*/5 * * * *"
    pod_source: str = "apiserversource"
    dead_letter_path: str = "/dead-letter"
    delivery_retry: int = 5
    delivery_backoff_delay: str = "PT0.5S"

    # ------------------------------------------------------------------ names
    @property
    def llm(self) -> str:
        return f"{self.name}-llm"

    @property
    def primary_revision(self) -> str:
        return f"{self.llm}-{self.revision}"

    @property
    def fallback_configuration(self) -> str:
        return f"{self.llm}-fallback"

    @property
    def fallback_revision(self) -> str:
        return f"{self.fallback_configuration}-{self.revision}"

    @property
    def broker(self) -> str:
        return self.name

    @property
    def broker_url(self) -> str:
        return (
            "http://broker-ingress.knative-eventing.svc.cluster.local/"
            f"{self.namespace}/{self.broker}"
        )

    @property
    def secret_name(self) -> str:
        return self.secret or f"{self.name}-secrets"

    @property
    def runs_redis(self) -> bool:
        return not (self.redis_url or self.redis_url_secret)

    def sa(self, component: str) -> str:
        return f"{self.name}-{component}"


# ---------------------------------------------------------------------- type checks
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_DURATION = re.compile(r"^[0-9]+(s|m|h)$")
_ISO_DURATION = re.compile(r"^PT([0-9]+(\.[0-9]+)?[HMS])+$")
_CRON = re.compile(r"^(\S+\s+){4}\S+$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+$")


def _check_value(kind: str, name: str, value: Any, errors: list[str]) -> tuple[bool, Any]:
    """One field's value checked against its declared type: (good, value)."""
    if kind == "Images":
        return True, Images(**_check_section(value, Images, name, errors))
    if kind == "Traffic":
        return True, Traffic(**_check_section(value, Traffic, name, errors))
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{name}: must be an integer, got {value!r}")
            return False, None
        return True, value
    if kind == "str":
        if isinstance(value, (bool, dict, list)) or value is None:
            errors.append(f"{name}: must be a string, got {value!r}")
            return False, None
        return True, str(value)
    return False, None


def _check_section(raw: Any, cls: type, path: str, errors: list[str]) -> dict[str, Any]:
    """Type-check one mapping against a dataclass; returns the good values."""
    if not isinstance(raw, Mapping):
        errors.append(f"{path or 'config'}: must be a mapping, got {type(raw).__name__}")
        return {}
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{path}.{key}" if path else str(key)
        f = fields_.get(str(key))
        if f is None:
            close = difflib.get_close_matches(str(key), list(fields_), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{name}: unknown field{hint}")
            continue
        good, checked = _check_value(str(f.type), name, value, errors)
        if good:
            out[f.name] = checked
    return out


# ---------------------------------------------------------------------- value checks
def _check_names(c: RenderConfig) -> list[str]:
    errors: list[str] = []
    if not c.model.strip():
        errors.append("model: is required (a GGUF path or model alias for the primary revision)")
    for fname in ("name", "namespace", "revision"):
        value = getattr(c, fname)
        if not _DNS_LABEL.match(value) or len(value) > 40:
            errors.append(
                f"{fname}: {value!r} must be a lowercase DNS label (a-z, 0-9, '-') "
                "of at most 40 characters"
            )
    return errors


def _check_choices(c: RenderConfig) -> list[str]:
    errors: list[str] = []
    for fname, allowed in (
        ("shape", SHAPES),
        ("pod_source", POD_SOURCES),
        ("checkpoint_volume", CHECKPOINT_VOLUMES),
    ):
        value = getattr(c, fname)
        if value not in allowed:
            errors.append(f"{fname}: {value!r} is not one of {', '.join(allowed)}")
    for fname in ("replica", "app"):
        if not getattr(c.images, fname).strip():
            errors.append(f"images.{fname}: must not be empty")
    return errors


_NON_NEGATIVE = ("gpus", "fallback_gpus", "min_scale", "max_scale", "fallback_min_scale",
                 "fallback_max_scale", "gateway_min_scale", "delivery_retry", "standby",
                 "fallback_standby", "gpu_budget")
_POSITIVE = ("target", "container_concurrency", "timeout_seconds",
             "response_start_timeout_seconds")


def _check_numbers(c: RenderConfig) -> list[str]:
    errors: list[str] = []
    for fname in _NON_NEGATIVE:
        if getattr(c, fname) < 0:
            errors.append(f"{fname}: must not be negative, got {getattr(c, fname)}")
    for fname in _POSITIVE:
        if getattr(c, fname) <= 0:
            errors.append(f"{fname}: must be positive, got {getattr(c, fname)}")
    if c.max_scale and c.min_scale > c.max_scale:
        errors.append(
            f"max_scale: {c.max_scale} is below min_scale {c.min_scale} (0 means unbounded)"
        )
    if c.fallback_max_scale and c.fallback_min_scale > c.fallback_max_scale:
        errors.append(
            f"fallback_max_scale: {c.fallback_max_scale} is below fallback_min_scale "
            f"{c.fallback_min_scale}"
        )
    errors += _check_standby(c)
    if c.response_start_timeout_seconds > c.timeout_seconds:
        errors.append(
            f"response_start_timeout_seconds: {c.response_start_timeout_seconds} exceeds "
            f"timeout_seconds {c.timeout_seconds}"
        )
    return errors


def _check_standby(c: RenderConfig) -> list[str]:
    """The spares fit under max-scale, and every pod at min-scale fits the GPU budget."""
    errors: list[str] = []
    for prefix in ("", "fallback_"):
        lo, hi, spare = (getattr(c, f"{prefix}{f}") for f in ("min_scale", "max_scale",
                                                               "standby"))
        if spare > 0 and lo <= hi and hi and lo + spare > hi:
            errors.append(
                f"{prefix}standby: {prefix}min_scale {lo} + {prefix}standby {spare} = "
                f"{lo + spare} pods exceed {prefix}max_scale {hi}; raise {prefix}max_scale "
                f"or lower {prefix}standby"
            )
    boosted = c.fallback_min_scale + c.fallback_standby + FunctionSettings().fallback_boost
    if c.fallback_max_scale and c.fallback_max_scale < boosted:
        errors.append(
            f"fallback_max_scale: {c.fallback_max_scale} leaves no room for the reroute's boost: "
            f"fallback_min_scale {c.fallback_min_scale} + fallback_standby "
            f"{c.fallback_standby} + the functions' fallback_boost "
            f"{FunctionSettings().fallback_boost} = {boosted}; raise fallback_max_scale or "
            "lower fallback_standby"
        )
    need = gpus_at_min_scale(c)
    if c.gpu_budget and need > c.gpu_budget:
        errors.append(
            f"gpu_budget: the revisions' pods at min-scale need {need} nvidia.com/gpu "
            f"(primary ({c.min_scale} + standby {c.standby}) x {c.gpus}, fallback "
            f"({c.fallback_min_scale} + fallback_standby {c.fallback_standby}) x "
            f"{c.fallback_gpus}), more than gpu_budget {c.gpu_budget}; lower standby or "
            "min_scale, or raise gpu_budget"
        )
    return errors


def gpus_at_min_scale(c: RenderConfig) -> int:
    """nvidia.com/gpu the inference pods hold at min-scale: replicas and standbys."""
    return ((c.min_scale + c.standby) * c.gpus
            + (c.fallback_min_scale + c.fallback_standby) * c.fallback_gpus)


def _check_formats(c: RenderConfig) -> list[str]:
    errors: list[str] = []
    for fname in ("replica_cpu", "replica_memory", "checkpoint_size", "redis_size"):
        if not _QUANTITY.match(getattr(c, fname)):
            errors.append(
                f"{fname}: {getattr(c, fname)!r} is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)"
            )
    if not _DURATION.match(c.rollout_duration):
        errors.append(f"rollout_duration: {c.rollout_duration!r} must look like 120s, 5m or 1h")
    if not _ISO_DURATION.match(c.delivery_backoff_delay):
        errors.append(
            f"delivery_backoff_delay: {c.delivery_backoff_delay!r} must be an ISO 8601 duration "
            "like PT0.5S"
        )
    if not _CRON.match(c.checkpoint_schedule.strip()):
        errors.append(
            f"checkpoint_schedule: {c.checkpoint_schedule!r} is not a five-field cron schedule"
        )
    if not c.dead_letter_path.startswith("/"):
        errors.append(f"dead_letter_path: {c.dead_letter_path!r} must start with '/'")
    return errors


def _check_traffic(c: RenderConfig) -> list[str]:
    errors: list[str] = []
    for fname in ("primary", "fallback"):
        pct = getattr(c.traffic, fname)
        if not 0 <= pct <= 100:
            errors.append(f"traffic.{fname}: {pct} is not within 0..100")
    total = c.traffic.primary + c.traffic.fallback
    if total != 100:
        errors.append(
            f"traffic: primary ({c.traffic.primary}) + fallback ({c.traffic.fallback}) = "
            f"{total}, must be 100"
        )
    return errors


def _check_references(c: RenderConfig) -> list[str]:
    errors: list[str] = []
    if len(c.fallback_revision) > 63:
        errors.append(
            f"revision: {c.fallback_revision!r} (name + '-llm-fallback-' + revision) is longer "
            "than 63 characters; shorten name or revision"
        )
    if c.redis_url and not re.match(r"^rediss?://", c.redis_url):
        errors.append(f"redis_url: {c.redis_url!r} must start with redis:// or rediss://")
    if c.redis_url_secret and not _SECRET_KEY.match(c.redis_url_secret):
        errors.append(f"redis_url_secret: {c.redis_url_secret!r} must be <secret name>/<key>")
    if c.redis_url and c.redis_url_secret:
        errors.append("redis_url_secret: give redis_url or redis_url_secret, not both")
    if c.secret and (not _DNS_NAME.match(c.secret) or len(c.secret) > 253):
        errors.append(f"secret: {c.secret!r} is not a Secret name (lowercase a-z, 0-9, '-', '.')")
    return errors


_CHECKS: tuple[Callable[[RenderConfig], list[str]], ...] = (
    _check_names, _check_choices, _check_numbers, _check_formats, _check_traffic, _check_references,
)


def validate(c: RenderConfig) -> list[str]:
    """Every problem with the values of a well-typed config."""
    return [e for check in _CHECKS for e in check(c)]


# ---------------------------------------------------------------------- loading
def config_from_mapping(raw: Any, source: str = "") -> RenderConfig:
    """Build and check a config from parsed YAML; raises :class:`RenderConfigError` naming
    every bad field."""
    errors: list[str] = []
    if raw is not None and not isinstance(raw, Mapping):
        raise RenderConfigError(
            [f"config: must be a mapping of fields, got {type(raw).__name__}"], source
        )
    values = _check_section(raw if raw is not None else {}, RenderConfig, "", errors)
    config = RenderConfig(**values)
    typed = {x.split(":")[0] for x in errors}
    errors += [e for e in validate(config) if e.split(":")[0] not in typed]
    if errors:
        raise RenderConfigError(errors, source)
    return config


def _read_yaml(path: str | Path, source: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RenderConfigError(
            [f"cannot read config file: {exc.strerror or exc}"], source
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RenderConfigError([f"not valid YAML{where}"], source) from None
    return {} if raw is None else raw


def load_config(path: str | Path | None, **overrides: Any) -> RenderConfig:
    """Read ``surefoot.yaml`` (``None``: defaults, which need ``model`` from ``overrides``);
    ``overrides`` (not None) replace top-level fields before checking."""
    source = str(path) if path else ""
    raw: Any = {} if path is None else _read_yaml(path, source)
    if isinstance(raw, Mapping):
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    return config_from_mapping(raw, source)
