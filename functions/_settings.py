"""The functions' settings: one frozen dataclass, built once from ``SUREFOOT_*`` variables.

Every function reads the same object, so the names of the service and its revisions, the caps
on quarantines and the hold times agree between them; the entry point (``surefoot functions``,
``surefoot up``) builds it and passes it down. Each field has a ``SUREFOOT_<FIELD>`` variable
(``SUREFOOT_SERVICE``, ``SUREFOOT_PRIMARY_REVISION``, ``SUREFOOT_MAX_QUARANTINED``, ...); the
names shared with the other components (``SUREFOOT_REDIS_URL``, ``SUREFOOT_NAMESPACE``,
``SUREFOOT_SINK``, ``SUREFOOT_PLATFORM``, ``SUREFOOT_ADMIN_TOKEN``) mean the same thing there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envreader import env_fields

ENV_PREFIX = "SUREFOOT_"
PLATFORMS = ("knative", "local")
SNAPSHOT_SCOPES = ("one", "all")
FUNCTION_NAMES = ("trip_breaker", "reroute_traffic", "snapshot_checkpoint", "quarantine_node")


class SettingsError(ValueError):
    """A setting that cannot work; ``errors`` maps each bad field (or variable) to the problem."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


def _label_pair(text: str) -> tuple[str, str] | None:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        return None
    return key.strip(), value.strip()


@dataclass(frozen=True)
class FunctionSettings:
    """What the functions act on and how careful they are.

    Names: ``service`` is the Knative Service (or the local service) whose ``primary_revision``
    and ``fallback_revision`` split the traffic, tagged ``primary_tag`` / ``fallback_tag``.

    trip_breaker: ``crash_threshold`` OOMKilled / CrashLoop events of one revision within
    ``crash_window_s`` open its breaker; ``node_hold_s`` is how long a GPU must stay healthy
    before its node's breaker goes half-open.

    reroute_traffic: the fallback's min-scale goes from ``fallback_min_scale`` to
    ``fallback_min_scale + fallback_boost`` while it carries the primary's share (max-scale
    ``fallback_max_scale``, 0 = unbounded), plus ``fallback_standby`` warm spare pods in both
    (a reroute waits for the replicas, not for the spares). A restore walks ``restore_steps``
    (percent of the primary's normal share) with ``restore_step_wait_s`` between steps; before
    each step the primary needs ``restore_min_ready`` ready replicas, waited for up to
    ``restore_health_timeout_s``. ``kserve_isvc`` names an InferenceService: traffic is then
    steered through its ``canaryTrafficPercent`` (KServe reverts direct Knative patches).

    quarantine_node: at most ``max_quarantined`` nodes at once and at most
    ``max_quarantined_percent`` of the GPU nodes (those labelled ``gpu_node_label``; every node
    when none is), and never fewer than one node; a drain must leave ``primary_min_ready`` ready
    primary replicas unless the node is already lost. ``release_hold_s``: how long a GPU must
    stay healthy before its node is released. A node labelled ``optout_label`` is never
    quarantined. ``dry_run`` reports what would be done and changes nothing.

    Plumbing: ``dedupe_ttl_s`` how long an event id is remembered; ``lease_s`` how long a claim
    on an event survives a crashed handler; ``inflight_wait_s`` how long a second delivery of
    an event being handled waits for the first before answering 503; ``sweep_interval_s`` how
    often the host runs deferred actions (0: only on ``dev.knative.sources.ping``).
    ``only_function``: the host serves that one function (at its path and at ``/``), for a
    function deployed on its own.
    """

    service: str = "surefoot"
    namespace: str = "default"
    primary_revision: str = "surefoot-primary"
    fallback_revision: str = "surefoot-fallback"
    primary_tag: str = "primary"
    fallback_tag: str = "fallback"
    platform: str = "knative"
    redis_url: str = ""
    redis_prefix: str = "surefoot:fn"
    sink: str = ""
    source: str = "/surefoot/functions"
    admin_token: str = ""
    # trip_breaker
    crash_threshold: int = 3
    crash_window_s: float = 300.0
    node_hold_s: float = 60.0
    # reroute_traffic
    fallback_min_scale: int = 1
    fallback_max_scale: int = 0
    fallback_boost: int = 2
    fallback_standby: int = 0  # warm spare pods in the fallback's min-scale, not waited for
    fallback_ready_timeout_s: float = 60.0  # reroute: wait for the boosted fallback's replicas
    restore_steps: tuple[int, ...] = (10, 50, 100)
    restore_step_wait_s: float = 30.0
    restore_min_ready: int = 1
    restore_health_timeout_s: float = 60.0
    restore_health_poll_s: float = 2.0
    kserve_isvc: str = ""
    # snapshot_checkpoint
    snapshot_replicas: str = "one"
    snapshot_timeout_s: float = 60.0
    # quarantine_node
    primary_min_ready: int = 2
    max_quarantined: int = 2
    max_quarantined_percent: float = 25.0
    gpu_node_label: str = "nvidia.com/gpu.present=true"
    quarantine_label: str = "surefoot.dev/gpu-error"
    optout_label: str = "surefoot.dev/quarantine=disabled"
    release_hold_s: float = 300.0
    drain_timeout_s: float = 120.0
    drain_retry_s: float = 30.0
    dry_run: bool = False
    # plumbing
    dedupe_ttl_s: float = 86_400.0
    lease_s: float = 30.0
    inflight_wait_s: float = 2.0
    sweep_interval_s: float = 5.0
    dead_letter_keep: int = 1000
    only_function: str = ""  # serve one function alone (its own Knative Service, func.yaml)

    def __post_init__(self) -> None:
        errors = self.check()
        if errors:
            raise SettingsError(errors)

    def check(self) -> dict[str, str]:
        """Every problem at once (empty when the settings can work)."""
        errors: dict[str, str] = {}
        self._check_names(errors)
        self._check_counts(errors)
        self._check_seconds(errors)
        self._check_choices(errors)
        return errors

    def _check_names(self, errors: dict[str, str]) -> None:
        for name in ("service", "namespace", "primary_revision", "fallback_revision",
                     "redis_prefix", "source", "quarantine_label"):
            if not getattr(self, name):
                errors[name] = "must not be empty"
        if self.primary_revision and self.primary_revision == self.fallback_revision:
            errors["fallback_revision"] = "must differ from primary_revision"
        if self.primary_tag and self.primary_tag == self.fallback_tag:
            errors["fallback_tag"] = "must differ from primary_tag"
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            errors["redis_url"] = f"{self.redis_url!r} is not a redis:// URL"
        if self.sink and not self.sink.startswith(("http://", "https://")):
            errors["sink"] = f"{self.sink!r} is not an http(s) URL"
        for name in ("gpu_node_label", "optout_label"):
            value = getattr(self, name)
            if value and _label_pair(value) is None:
                errors[name] = f"{value!r} is not KEY=VALUE"

    def _check_counts(self, errors: dict[str, str]) -> None:
        for name in ("crash_threshold", "max_quarantined", "dead_letter_keep"):
            if getattr(self, name) < 1:
                errors[name] = "must be >= 1"
        for name in ("fallback_min_scale", "fallback_max_scale", "fallback_boost",
                     "fallback_standby", "restore_min_ready", "primary_min_ready"):
            if getattr(self, name) < 0:
                errors[name] = "must be >= 0"
        boosted = self.fallback_min_scale + self.fallback_standby + self.fallback_boost
        if self.fallback_max_scale and self.fallback_max_scale < boosted:
            errors["fallback_max_scale"] = (
                f"{self.fallback_max_scale} is below fallback_min_scale + fallback_standby + "
                f"fallback_boost ({boosted}); use 0 for unbounded"
            )
        steps = self.restore_steps
        if not steps:
            errors["restore_steps"] = "needs at least one step"
        elif any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            errors["restore_steps"] = "must be increasing percents in 1..100"
        elif steps[-1] != 100:
            errors["restore_steps"] = "the last step must be 100"
        if not 0 < self.max_quarantined_percent <= 100:
            errors["max_quarantined_percent"] = "must be within (0, 100]"

    def _check_seconds(self, errors: dict[str, str]) -> None:
        for name in ("crash_window_s", "dedupe_ttl_s", "lease_s", "restore_health_poll_s",
                     "snapshot_timeout_s"):
            if not getattr(self, name) > 0:
                errors[name] = "must be > 0 seconds"
        for name in ("node_hold_s", "restore_step_wait_s", "restore_health_timeout_s",
                     "fallback_ready_timeout_s",
                     "release_hold_s", "drain_timeout_s", "drain_retry_s", "inflight_wait_s",
                     "sweep_interval_s"):
            if getattr(self, name) < 0:
                errors[name] = "must be >= 0 seconds"

    def _check_choices(self, errors: dict[str, str]) -> None:
        if self.platform not in PLATFORMS:
            errors["platform"] = f"{self.platform!r} is not one of {', '.join(PLATFORMS)}"
        if self.snapshot_replicas not in SNAPSHOT_SCOPES:
            errors["snapshot_replicas"] = f"must be one of {', '.join(SNAPSHOT_SCOPES)}"
        if self.only_function and self.only_function not in FUNCTION_NAMES:
            errors["only_function"] = (
                f"{self.only_function!r} is not one of {', '.join(FUNCTION_NAMES)}")

    # --- derived --------------------------------------------------------------------------
    @property
    def gpu_label(self) -> tuple[str, str] | None:
        return _label_pair(self.gpu_node_label) if self.gpu_node_label else None

    @property
    def optout(self) -> tuple[str, str] | None:
        return _label_pair(self.optout_label) if self.optout_label else None

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> FunctionSettings:
        """Settings from the ``SUREFOOT_<FIELD>`` variables of ``env`` (the entry point passes
        ``os.environ``), then ``overrides`` that are not None. Raises SettingsError naming every
        bad variable, and every setting that cannot work."""
        values, errors = env_fields(cls, ENV_PREFIX, env)
        if errors:
            raise SettingsError(errors)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
