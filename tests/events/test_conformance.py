"""Replay of the CloudEvents conformance cases (../shared/schemas/cloudevents-conformance/)
against the receiver: the YAML event cases, turned into HTTP requests the way the upstream
``cloudevents invoke`` tool does, and the HTTP binding feature's raw requests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import events as ev

ROOT = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "cloudevents-conformance"
if not ROOT.is_dir():  # running from a clone next to shared/
    ROOT = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "cloudevents-conformance"

pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="conformance cases not available")

ATTRS = ("specversion", "type", "time", "id", "source", "subject", "schemaurl", "dataschema",
         "datacontenttype")


def _cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((ROOT / "yaml").rglob("*.yaml")) if ROOT.is_dir() else []:
        with path.open(encoding="utf-8") as fh:
            # BaseLoader keeps every scalar a string, as the Go tool does ("1.0" stays "1.0").
            for i, doc in enumerate(yaml.load_all(fh, Loader=yaml.BaseLoader)):
                if doc:
                    out.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return out


def _request(case: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    attrs = case.get("ContextAttributes") or {}
    exts = attrs.get("Extensions") or {}
    data = case.get("Data", "")
    headers = dict(case.get("TransportExtensions") or {})
    if case.get("Mode", "binary") == "structured":
        envelope = {k: attrs[k] for k in ATTRS if attrs.get(k)}
        envelope.update(exts)
        envelope["data"] = json.loads(data)
        headers["Content-Type"] = "application/cloudevents+json; charset=UTF-8"
        return headers, json.dumps(envelope).encode()
    for k in ATTRS:
        value = str(attrs.get(k) or "").strip()
        if not value:
            continue
        if k == "datacontenttype":
            headers["Content-Type"] = value
        else:
            headers[f"ce-{k}"] = value
    for k, v in exts.items():
        if str(v).strip():
            headers[f"ce-{k}"] = str(v).strip()
    return headers, data.encode()


@pytest.fixture
def receiver() -> tuple[Any, list[ev.Event]]:
    got: list[ev.Event] = []

    def handler(event: ev.Event) -> None:
        got.append(event)

    app = ev.create_app(ev.ReceiverSettings(strict_types=False), handler)
    return app.test_client(), got


CASES = _cases()


def test_cases_were_found() -> None:
    assert len(CASES) >= 14


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[n for n, _ in CASES])
def test_yaml_case(receiver: tuple[Any, list[ev.Event]], case: dict[str, Any]) -> None:
    client, got = receiver
    headers, body = _request(case)
    resp = client.post("/", headers=headers, data=body)
    assert resp.status_code == 202, resp.get_json()
    (event,) = got
    attrs = case["ContextAttributes"]
    assert event.specversion == attrs["specversion"]
    assert (event.id, event.type, event.source) == (attrs["id"], attrs["type"], attrs["source"])
    if attrs.get("time"):
        assert event.attribute("time") == attrs["time"]
    else:
        assert event.time is None  # nothing invented
    if attrs.get("datacontenttype"):
        assert event.datacontenttype == attrs["datacontenttype"]
    for k, v in (attrs.get("Extensions") or {}).items():
        assert event.extensions[k].strip() == str(v).strip()
    data = case["Data"]
    ct = attrs.get("datacontenttype") or "application/json"
    if "json" in ct:
        assert event.data == json.loads(data)
    else:
        assert event.data == data


def _feature_scenarios() -> list[tuple[str, str, dict[str, str], Any]]:
    path = ROOT / "features" / "http-protocol-binding.feature"
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    out = []
    for block in re.split(r"\n\s*Scenario Outline: ", text)[1:]:
        title = block.splitlines()[0].strip()
        docs = re.findall(r'"""\n(.*?)\n\s*"""', block, re.S)
        request, expected_data = docs[0], json.loads(docs[1])
        attr_rows = re.findall(r"^\s*\|\s*(\w+)\s*\|\s*(.*?)\s*\|\s*$",
                               block.split("Then the attributes are:")[1].split("And the data")[0],
                               re.M)
        attrs = {k: v for k, v in attr_rows if k != "key"}
        examples = re.findall(r"^\s*\|\s*(\S[^|]*?)\s*\|\s*$", block.split("Examples:")[1], re.M)
        for value in examples[1:]:
            req = request.replace("<contentType>", value)
            expect = {k: v.replace("<contentType>", value) for k, v in attrs.items()}
            out.append((f"{title} {value}", req, expect, expected_data))
    return out


def _parse_raw(raw: str) -> tuple[dict[str, str], bytes]:
    lines = [line.strip() for line in raw.splitlines()]
    blank = lines.index("")
    headers = {}
    for line in lines[1:blank]:
        name, _, value = line.partition(":")
        if name.lower() not in ("host", "content-length"):
            headers[name] = value.strip()
    return headers, "\n".join(lines[blank + 1:]).encode()


SCENARIOS = _feature_scenarios()


def test_feature_scenarios_were_found() -> None:
    assert len(SCENARIOS) == 4


@pytest.mark.parametrize(("raw", "expect", "data"), [s[1:] for s in SCENARIOS],
                         ids=[s[0] for s in SCENARIOS])
def test_http_binding_feature(receiver: tuple[Any, list[ev.Event]], raw: str,
                              expect: dict[str, str], data: Any) -> None:
    client, got = receiver
    headers, body = _parse_raw(raw)
    resp = client.post("/", headers=headers, data=body)
    assert resp.status_code == 202, resp.get_json()
    (event,) = got
    assert {k: event.attribute(k) for k in expect} == expect
    assert event.data == data
