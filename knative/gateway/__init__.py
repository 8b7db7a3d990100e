"""The inference gateway: the OpenAI API in front of the revisions (weighted split, breakers,
deadline, retry budget, fallback), its routing table and its pooled upstream client."""

from knative.gateway._app import create_app as create_gateway_app
from knative.gateway._app import gateway_of
from knative.gateway._gateway import Gateway
from knative.gateway._routing import (
    Endpoint,
    PlatformResolver,
    Resolver,
    Route,
    RoutingSpecError,
    RoutingTable,
    StaticResolver,
    static_table,
)
from knative.gateway._server import GatewayServerSettings, serve
from knative.gateway._settings import GatewaySettings, GatewaySettingsError

__all__ = [
    "Endpoint",
    "Gateway",
    "GatewayServerSettings",
    "GatewaySettings",
    "GatewaySettingsError",
    "PlatformResolver",
    "Resolver",
    "Route",
    "RoutingSpecError",
    "RoutingTable",
    "StaticResolver",
    "create_gateway_app",
    "gateway_of",
    "serve",
    "static_table",
]
