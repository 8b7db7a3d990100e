"""One valid payload per catalog type, shared by the events tests."""

from __future__ import annotations

import events as ev

PAYLOADS: list[ev.EventData] = [
    ev.GpuXid(node="n1", xid=79, severity="fatal", action="reboot", fatal=True, gpu=0,
              pci_bus_id="00000000:3B:00.0", message="GPU has fallen off the bus."),
    ev.GpuEcc(node="n1", severity="critical", action="reset_gpu", fatal=True, gpu=1,
              volatile_uncorrected=2, remapped_rows_pending=True),
    ev.GpuThermal(node="n1", severity="warning", reasons=("hw_thermal",), temperature_c=91,
                  gpu=0),
    ev.GpuLost(node="n2", reason="NVML_ERROR_GPU_IS_LOST", gpu=3),
    ev.GpuHealthy(node="n2", cleared=("thermal",), gpu=0),
    ev.PodDeleted(namespace="default", pod="llm-1", node="n1", revision="llm-00001",
                  terminating=True, grace_period_seconds=30),
    ev.PodEvicted(namespace="default", pod="llm-2", reason="EvictionByEvictionAPI"),
    ev.PodOomKilled(namespace="default", pod="llm-3", container="user-container",
                    restart_count=2, exit_code=137),
    ev.PodCrashLoop(namespace="default", pod="llm-4", container="user-container",
                    restart_count=5),
    ev.PodRestarted(namespace="default", pod="llm-5", container="c", restart_count=1,
                    reason="Error", exit_code=1),
    ev.PodReady(namespace="default", pod="llm-6"),
    ev.PodNotReady(namespace="default", pod="llm-7", reason="ContainersNotReady"),
    ev.NodeNotReady(node="n3", status="Unknown", reason="NodeStatusUnknown"),
    ev.NodeReady(node="n3"),
    ev.NodeCordoned(node="n3"),
    ev.NodeUncordoned(node="n3"),
    ev.NodeQuarantined(node="n1", reason="xid 79", cause_event_id="e1",
                       evicted_pods=("default/llm-1",)),
    ev.NodeReleased(node="n1", reason="gpu.healthy"),
    ev.BreakerOpened(scope="node", name="n1", reason="xid 79", hold_seconds=30.0),
    ev.BreakerHalfOpened(scope="revision", name="llm-00001"),
    ev.BreakerClosed(scope="node", name="n1"),
    ev.CheckpointRequested(revision="llm-00001", reason="timer"),
    ev.CheckpointSaved(revision="llm-00001", checkpoint_id="ck-1", seconds=0.5, bytes=1024),
    ev.CheckpointRestored(pod="llm-1", namespace="default", checkpoint_id="ck-1", seconds=1.5),
    ev.TrafficRerouted(service="llm", from_revision="llm-00001", to_revision="llm-fallback",
                       percent=100, targets=({"revisionName": "llm-fallback", "percent": 100},)),
    ev.TrafficRestored(service="llm", revision="llm-00001", percent=10, step=1),
]
