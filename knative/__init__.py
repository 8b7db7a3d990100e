"""Serving on Knative: the replica app, the gateway and its breakers, manifests, and the
platform seam with its Knative and local implementations.

Names are imported on first use, so a process pays only for what it touches (a replica
starts without the gateway, breakers and events machinery).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, str]] = {
    "ACTIONS": ("knative._breaker", "ACTIONS"),
    "ApplyResult": ("knative._deploy", "ApplyResult"),
    "BackendError": ("knative._backends", "BackendError"),
    "BreakerError": ("knative._breaker", "BreakerError"),
    "BreakerRegistry": ("knative._breaker", "BreakerRegistry"),
    "BreakerRegistrySettings": ("knative._breaker", "BreakerRegistrySettings"),
    "BreakerSettings": ("knative._breaker", "BreakerSettings"),
    "BreakerStatus": ("knative._breaker", "BreakerStatus"),
    "BreakerStore": ("knative._breaker", "BreakerStore"),
    "BreakerUnavailable": ("knative._breaker", "BreakerUnavailable"),
    "CloudEventSink": ("knative._breaker_events", "CloudEventSink"),
    "Conflict": ("knative._platform", "Conflict"),
    "ContextOverflow": ("knative._backends", "ContextOverflow"),
    "EmbeddedRedis": ("knative._redis", "EmbeddedRedis"),
    "EmbeddingBackend": ("knative._backends", "EmbeddingBackend"),
    "Endpoint": ("knative._routing", "Endpoint"),
    "EngineBusy": ("knative._backends", "EngineBusy"),
    "EvictionReport": ("knative._platform", "EvictionReport"),
    "Gateway": ("knative._gateway", "Gateway"),
    "GatewaySettings": ("knative._gateway", "GatewaySettings"),
    "GatewaySettingsError": ("knative._gateway", "GatewaySettingsError"),
    "GenerationBackend": ("knative._backends", "GenerationBackend"),
    "InvalidBreakerKey": ("knative._breaker", "InvalidBreakerKey"),
    "InvalidBreakerSettings": ("knative._breaker", "InvalidBreakerSettings"),
    "KnativePlatform": ("knative._kube", "KnativePlatform"),
    "KubeSettings": ("knative._kube", "KubeSettings"),
    "KubeSettingsError": ("knative._kube", "KubeSettingsError"),
    "LlamaCppBackend": ("knative._backends", "LlamaCppBackend"),
    "ModelLoadError": ("knative._backends", "ModelLoadError"),
    "Node": ("knative._platform", "Node"),
    "NotFound": ("knative._platform", "NotFound"),
    "PermanentPlatformError": ("knative._platform", "PermanentPlatformError"),
    "Permit": ("knative._breaker", "Permit"),
    "Platform": ("knative._platform", "Platform"),
    "PlatformError": ("knative._platform", "PlatformError"),
    "PlatformResolver": ("knative._routing", "PlatformResolver"),
    "RedisStartError": ("knative._redis", "RedisStartError"),
    "RenderConfig": ("knative._render", "RenderConfig"),
    "RenderConfigError": ("knative._render", "RenderConfigError"),
    "Replica": ("knative._platform", "Replica"),
    "Resolver": ("knative._routing", "Resolver"),
    "Route": ("knative._routing", "Route"),
    "RoutingSpecError": ("knative._routing", "RoutingSpecError"),
    "RoutingTable": ("knative._routing", "RoutingTable"),
    "Runtime": ("knative._replica", "Runtime"),
    "STATES": ("knative._breaker", "STATES"),
    "SentenceTransformerBackend": ("knative._backends", "SentenceTransformerBackend"),
    "ServeSettings": ("knative._serve_settings", "ServeSettings"),
    "SettingsError": ("knative._serve_settings", "SettingsError"),
    "StaticResolver": ("knative._routing", "StaticResolver"),
    "Target": ("knative._platform", "Target"),
    "TemporaryPlatformError": ("knative._platform", "TemporaryPlatformError"),
    "TooManyRequests": ("knative._platform", "TooManyRequests"),
    "Transition": ("knative._breaker", "Transition"),
    "TransitionHook": ("knative._breaker", "TransitionHook"),
    "Unauthorized": ("knative._platform", "Unauthorized"),
    "Unavailable": ("knative._replica", "Unavailable"),
    "apply_objects": ("knative._deploy", "apply_objects"),
    "create_app": ("knative._replica", "create_app"),
    "create_gateway_app": ("knative._gateway", "create_app"),
    "format_knative_status": ("knative._deploy", "format_knative_status"),
    "gateway_of": ("knative._gateway", "gateway_of"),
    "keys_for": ("knative._breaker", "keys_for"),
    "knative_status": ("knative._deploy", "knative_status"),
    "load_config": ("knative._render", "load_config"),
    "load_models": ("knative._replica", "load_models"),
    "node_key": ("knative._breaker", "node_key"),
    "render": ("knative._render", "render"),
    "replica_key": ("knative._breaker", "replica_key"),
    "revision_key": ("knative._breaker", "revision_key"),
    "runtime_of": ("knative._replica", "runtime_of"),
    "static_table": ("knative._routing", "static_table"),
    "validate_traffic": ("knative._platform", "validate_traffic"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'knative' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from knative._backends import BackendError as BackendError
    from knative._backends import ContextOverflow as ContextOverflow
    from knative._backends import EmbeddingBackend as EmbeddingBackend
    from knative._backends import EngineBusy as EngineBusy
    from knative._backends import GenerationBackend as GenerationBackend
    from knative._backends import LlamaCppBackend as LlamaCppBackend
    from knative._backends import ModelLoadError as ModelLoadError
    from knative._backends import SentenceTransformerBackend as SentenceTransformerBackend
    from knative._breaker import ACTIONS as ACTIONS
    from knative._breaker import STATES as STATES
    from knative._breaker import BreakerError as BreakerError
    from knative._breaker import BreakerRegistry as BreakerRegistry
    from knative._breaker import BreakerRegistrySettings as BreakerRegistrySettings
    from knative._breaker import BreakerSettings as BreakerSettings
    from knative._breaker import BreakerStatus as BreakerStatus
    from knative._breaker import BreakerStore as BreakerStore
    from knative._breaker import BreakerUnavailable as BreakerUnavailable
    from knative._breaker import InvalidBreakerKey as InvalidBreakerKey
    from knative._breaker import InvalidBreakerSettings as InvalidBreakerSettings
    from knative._breaker import Permit as Permit
    from knative._breaker import Transition as Transition
    from knative._breaker import TransitionHook as TransitionHook
    from knative._breaker import keys_for as keys_for
    from knative._breaker import node_key as node_key
    from knative._breaker import replica_key as replica_key
    from knative._breaker import revision_key as revision_key
    from knative._breaker_events import CloudEventSink as CloudEventSink
    from knative._deploy import ApplyResult as ApplyResult
    from knative._deploy import apply_objects as apply_objects
    from knative._deploy import format_knative_status as format_knative_status
    from knative._deploy import knative_status as knative_status
    from knative._gateway import Gateway as Gateway
    from knative._gateway import GatewaySettings as GatewaySettings
    from knative._gateway import GatewaySettingsError as GatewaySettingsError
    from knative._gateway import create_app as create_gateway_app  # noqa: F401
    from knative._gateway import gateway_of as gateway_of
    from knative._kube import KnativePlatform as KnativePlatform
    from knative._kube import KubeSettings as KubeSettings
    from knative._kube import KubeSettingsError as KubeSettingsError
    from knative._platform import Conflict as Conflict
    from knative._platform import EvictionReport as EvictionReport
    from knative._platform import Node as Node
    from knative._platform import NotFound as NotFound
    from knative._platform import PermanentPlatformError as PermanentPlatformError
    from knative._platform import Platform as Platform
    from knative._platform import PlatformError as PlatformError
    from knative._platform import Replica as Replica
    from knative._platform import Target as Target
    from knative._platform import TemporaryPlatformError as TemporaryPlatformError
    from knative._platform import TooManyRequests as TooManyRequests
    from knative._platform import Unauthorized as Unauthorized
    from knative._platform import validate_traffic as validate_traffic
    from knative._redis import EmbeddedRedis as EmbeddedRedis
    from knative._redis import RedisStartError as RedisStartError
    from knative._render import RenderConfig as RenderConfig
    from knative._render import RenderConfigError as RenderConfigError
    from knative._render import load_config as load_config
    from knative._render import render as render
    from knative._replica import Runtime as Runtime
    from knative._replica import Unavailable as Unavailable
    from knative._replica import create_app as create_app
    from knative._replica import load_models as load_models
    from knative._replica import runtime_of as runtime_of
    from knative._routing import Endpoint as Endpoint
    from knative._routing import PlatformResolver as PlatformResolver
    from knative._routing import Resolver as Resolver
    from knative._routing import Route as Route
    from knative._routing import RoutingSpecError as RoutingSpecError
    from knative._routing import RoutingTable as RoutingTable
    from knative._routing import StaticResolver as StaticResolver
    from knative._routing import static_table as static_table
    from knative._serve_settings import ServeSettings as ServeSettings
    from knative._serve_settings import SettingsError as SettingsError
