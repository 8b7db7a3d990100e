"""Surefoot functions: the reflexes that react to fault events.

Four functions, each ``handle(event, context) -> Outcome`` and idempotent by event id:
``trip_breaker`` (open breakers in Redis), ``reroute_traffic`` (primary <-> fallback traffic),
``snapshot_checkpoint`` (ask replicas to snapshot) and ``quarantine_node`` (label, cordon,
drain a node with a broken GPU). ``create_app`` / ``FunctionsServer`` serve them over HTTP,
Knative-style. See docs/functions.md.
"""

from functions import quarantine_node, reroute_traffic, snapshot_checkpoint, trip_breaker
from functions._context import (
    ACTED,
    DEFERRED,
    DRY_RUN,
    DUPLICATE,
    NOOP,
    STATUSES,
    CanaryControl,
    Context,
    LeaseKeeper,
    Outcome,
    Sink,
    build_context,
)
from functions._errors import (
    FunctionError,
    PermanentFunctionError,
    TemporaryFunctionError,
    map_error,
)
from functions._faults import Fault, assess
from functions._host import (
    DEAD_LETTER_PATH,
    FUNCTIONS,
    ROUTES,
    FunctionsServer,
    Host,
    Sweeper,
    create_app,
    functions_for,
    host_of,
    triggers,
)
from functions._kserve import KServeCanary
from functions._once import once, run_once
from functions._settings import FunctionSettings, SettingsError

__all__ = [
    "ACTED",
    "DEAD_LETTER_PATH",
    "DEFERRED",
    "DRY_RUN",
    "DUPLICATE",
    "FUNCTIONS",
    "NOOP",
    "ROUTES",
    "STATUSES",
    "CanaryControl",
    "Context",
    "Fault",
    "FunctionError",
    "FunctionSettings",
    "FunctionsServer",
    "Host",
    "KServeCanary",
    "LeaseKeeper",
    "Outcome",
    "PermanentFunctionError",
    "SettingsError",
    "Sink",
    "Sweeper",
    "TemporaryFunctionError",
    "assess",
    "build_context",
    "create_app",
    "functions_for",
    "host_of",
    "map_error",
    "once",
    "quarantine_node",
    "reroute_traffic",
    "run_once",
    "snapshot_checkpoint",
    "triggers",
    "trip_breaker",
]
