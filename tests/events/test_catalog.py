"""The catalog: every type builds, round-trips, and reports every bad field."""

from __future__ import annotations

import pytest

import events as ev
from events._xid import DECODE, IGNORE, REBOOT, RESET_GPU, RESTART_APP
from tests.events.samples import PAYLOADS


def test_every_catalog_type_has_a_sample() -> None:
    assert {p.TYPE for p in PAYLOADS} == set(ev.CATALOG)


def test_types_are_reverse_dns_under_dev_surefoot() -> None:
    for t in ev.CATALOG:
        area, what = t.removeprefix(ev.PREFIX).split(".")
        assert t.startswith("dev.surefoot.")
        assert area
        assert what
        assert t == t.lower()


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.TYPE)
def test_build_and_decode_payload(payload: ev.EventData) -> None:
    event = ev.build(payload, source="/test")
    assert event.type == payload.TYPE
    assert event.subject == payload.subject()
    assert ev.parse_subject(event.subject) is not None
    assert event.time is not None
    assert event.id
    assert ev.payload_of(event) == payload
    assert ev.check_payload(event) == {}


def test_subjects_name_pod_node_revision_service() -> None:
    assert ev.build(PAYLOADS[0], source="/s").subject == "node/n1"
    assert ev.pod_subject("ns", "p") == "pod/ns/p"
    assert ev.parse_subject("pod/ns/p") == ("pod", "ns/p")
    assert ev.parse_subject("revision/r1") == ("revision", "r1")
    assert ev.parse_subject("nonsense") is None
    assert ev.BreakerOpened(scope="revision", name="r1").subject() == "revision/r1"
    assert ev.TrafficRestored(service="llm", revision="r", percent=1).subject() == (
        "service/default/llm"
    )


def test_from_dict_reports_every_bad_field_at_once() -> None:
    with pytest.raises(ev.EventValidationError) as info:
        ev.GpuXid.from_dict({"node": 3, "xid": "79", "fatal": "yes", "count": True})
    assert info.value.errors == {
        "data.node": "must be a string",
        "data.xid": "must be an integer",
        "data.severity": "missing",
        "data.action": "missing",
        "data.fatal": "must be a boolean",
        "data.count": "must be an integer",
    }


def test_value_rules_are_checked_too() -> None:
    with pytest.raises(ev.EventValidationError) as info:
        ev.GpuXid.from_dict({"node": "n", "xid": -1, "severity": "meh", "action": "x",
                             "fatal": False, "count": 0})
    assert set(info.value.errors) == {"data.severity", "data.xid", "data.count"}
    with pytest.raises(ev.EventValidationError):
        ev.build(ev.BreakerOpened(scope="cluster", name="x"), source="/s")
    with pytest.raises(ev.EventValidationError) as info2:
        ev.CheckpointRequested.from_dict({})
    assert "data.revision" in info2.value.errors


def test_payload_must_be_an_object() -> None:
    with pytest.raises(ev.EventValidationError) as info:
        ev.PodReady.from_dict(["x"])
    assert info.value.errors == {"data": "must be a JSON object for dev.surefoot.pod.ready"}


def test_unknown_extra_data_fields_are_tolerated() -> None:
    p = ev.NodeReady.from_dict({"node": "n1", "future": 1})
    assert p == ev.NodeReady(node="n1")


def test_lists_become_tuples_and_back() -> None:
    p = ev.GpuThermal.from_dict({"node": "n", "severity": "warning", "reasons": ["a", "b"]})
    assert p.reasons == ("a", "b")
    assert p.to_dict()["reasons"] == ["a", "b"]
    with pytest.raises(ev.EventValidationError) as info:
        ev.GpuThermal.from_dict({"node": "n", "severity": "warning", "reasons": ["a", 1]})
    assert info.value.errors == {"data.reasons": "item 1 must be a string"}


def test_accepted_types_include_knative() -> None:
    assert ev.is_accepted_type("dev.surefoot.gpu.xid")
    assert ev.is_accepted_type("dev.knative.apiserver.resource.delete")
    assert ev.is_accepted_type("dev.knative.apiserver.ref.add")
    assert ev.is_accepted_type("dev.knative.sources.ping")
    assert not ev.is_accepted_type("dev.surefoot.gpu.nope")
    assert not ev.is_accepted_type("com.example.someevent")


@pytest.mark.parametrize(
    ("xid", "action", "fatal"),
    [(43, IGNORE, False), (45, IGNORE, False), (63, IGNORE, False), (92, IGNORE, False),
     (13, RESTART_APP, False), (31, RESTART_APP, False), (68, RESTART_APP, False),
     (69, RESTART_APP, False), (94, RESTART_APP, False),
     (62, RESET_GPU, True), (64, RESET_GPU, True), (95, RESET_GPU, True),
     (119, RESET_GPU, True), (120, RESET_GPU, True), (79, REBOOT, True)],
)
def test_xid_table(xid: int, action: str, fatal: bool) -> None:
    verdict = ev.classify(xid)
    assert (verdict.action, verdict.fatal) == (action, fatal)
    assert not verdict.escalated


def test_xid_48_and_74_are_decoded() -> None:
    assert ev.rule_for(48).action == DECODE
    assert ev.rule_for(74).action == DECODE
    assert ev.classify(48, ecc_uncontained=False).action == RESTART_APP
    assert ev.classify(48, ecc_uncontained=True).action == RESET_GPU
    assert ev.classify(48).action == RESET_GPU  # unknown containment: assume the worst
    assert ev.classify(74, message="NVLink: fatal error detected on link 3").action == RESET_GPU
    assert ev.classify(74, message="NVLink: corrected CRC error on link 1").action == RESTART_APP


def test_repeated_app_xid_escalates_to_reset() -> None:
    assert ev.classify(13, repeats=2, escalate_after=3).action == RESTART_APP
    verdict = ev.classify(13, repeats=3, escalate_after=3)
    assert verdict.action == RESET_GPU
    assert verdict.fatal
    assert verdict.escalated
    assert ev.classify(43, repeats=10).action == IGNORE  # ignorable stays ignorable
    assert ev.classify(999).action == "investigate"


def test_every_type_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    for t, cls in ev.CATALOG.items():
        assert f"`{t.removeprefix(ev.PREFIX)}` | `{cls.__name__}`" in doc, t
