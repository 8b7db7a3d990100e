"""A JSON document kept in a ConfigMap: the cluster's durable home for state that must outlive
Redis (the operator's forced breakers). The ConfigMap is made on the first write, not by the
render, so that a re-deploy never overwrites what an operator decided."""

from __future__ import annotations

import json
import logging
from typing import Any

from knative.platforms import NotFound, PlatformError
from knative.platforms.kube._errors import map_api_error

log = logging.getLogger(__name__)

DATA_KEY = "state.json"


class ConfigMapHome:
    """``read()``/``write()`` of one JSON document in ``namespace/name`` (key ``state.json``)."""

    def __init__(self, api_client: Any, namespace: str, name: str,
                 timeout: float = 10.0) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.timeout = timeout

    def describe(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def read(self) -> Any:
        """The document (``{}`` when the ConfigMap or its key is missing or not JSON; an
        unreadable API raises the platform's error, so a caller never takes it for empty)."""
        try:
            cm = self._core.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self.timeout)
        except Exception as exc:
            err = map_api_error(exc, f"read {self.describe()}")
            if isinstance(err, NotFound):
                return {}
            raise err from exc
        text = (cm.data or {}).get(DATA_KEY, "")
        try:
            return json.loads(text) if text else {}
        except ValueError:
            log.error("%s: %s is not valid JSON; treated as empty", self.describe(), DATA_KEY)
            return {}

    def write(self, document: dict[str, Any]) -> None:
        body: Any = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "surefoot"}},
                "data": {DATA_KEY: json.dumps(document, indent=2, sort_keys=True)}}
        try:
            self._core.replace_namespaced_config_map(
                self.name, self.namespace, body, _request_timeout=self.timeout)
            return
        except Exception as exc:
            err: PlatformError = map_api_error(exc, f"write {self.describe()}")
            if not isinstance(err, NotFound):
                raise err from exc
        try:
            self._core.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self.timeout)
        except Exception as exc:
            raise map_api_error(exc, f"create {self.describe()}") from exc
