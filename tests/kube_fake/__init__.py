"""A fake Kubernetes API server for tests: real HTTP on 127.0.0.1, in a thread.

No cluster runs on the development machines, yet KnativePlatform, the functions and the pod/node
watch source must be tested against the API they will meet. This server speaks that API over
HTTP, so the official ``kubernetes`` client talks to it unchanged (a ``Configuration`` whose
``host`` is the server's URL).

Usage::

    from tests.kube_fake import FakeKubeServer

    with FakeKubeServer() as kube:
        api = kube.api_client()                  # kubernetes.client.ApiClient
        kube.add_node("gpu-1", labels={"nvidia.com/gpu.present": "true"})
        kube.add_pod("llm-abc", node="gpu-1", labels={"app": "llm"}, ready=True)
        kube.set_pod_ready("llm-abc", False)
        kube.set_pod_status("llm-abc", {"containerStatuses": [...]})  # e.g. OOMKilled
        kube.patch_object("nodes", "gpu-1", {"spec": {"taints": []}}, None)  # any kind
        kube.delete_pod("llm-abc")               # watchers see DELETED
        kube.add_revision("llm-v1", service="llm")   # Revision + its PodAutoscaler
        kube.fail_next("/api/v1/nodes", 500, times=2)  # inject faults by path prefix
        kube.compact()                           # older watches now get 410 Gone
        FakeKubeServer(time_scale=0.05)          # watch timeoutSeconds pass 20x faster
        kube.end_watches()                       # close open watch streams
        kube.get("services.serving.knative.dev", "llm")   # read an object back
        kube.requests_to("/api/v1/namespaces/default/pods", "POST")  # what clients sent
        kube.write_kubeconfig(tmp_path / "kubeconfig")   # for code that loads kubeconfig

What it implements, following the Kubernetes API conventions
(https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md)
and the API concepts page (https://kubernetes.io/docs/reference/using-api/api-concepts/):

- Paths ``/api/v1/...`` and ``/apis/<group>/<version>/...``, namespaced and cluster-scoped,
  for the core, apps, batch, policy, rbac and Knative serving/eventing/sources kinds Surefoot
  uses (``_state.RESOURCES``). Errors are ``Status`` objects with ``reason`` and ``code``.
- Create answers 201 (409 AlreadyExists; 404 for a missing namespace; ``generateName``); get;
  list with ``labelSelector`` (equality and set-based) and ``fieldSelector`` (metadata.name,
  metadata.namespace, and per kind e.g. pods' spec.nodeName and status.phase, nodes'
  spec.unschedulable; others answer 400 as the real server does); delete.
- ``metadata.resourceVersion`` from one global counter, ``uid``, ``generation`` bumped on spec
  changes, ``creationTimestamp``. Optimistic concurrency: a PUT, or a patch that carries a
  ``resourceVersion``, that is stale gets 409 Conflict. A custom resource PUT without one is 422.
- Watch (``?watch=true``): chunked JSON lines, ``timeoutSeconds``, resume from
  ``resourceVersion``; a bounded event history (``history`` events) and ``compact()``: a watch
  from an older version gets a 200 stream holding one ERROR event with a 410 Expired Status, as
  the real server sends. Without ``resourceVersion`` (or with "0") it starts with synthetic
  ADDED events for what exists. With a selector, objects moving in/out are ADDED/DELETED.
- PATCH with ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json``
  (RFC 6902) and ``application/strategic-merge-patch+json`` (core kinds; merge keys for the
  common lists); strategic merge on a custom resource answers 415, as the real server does.
  Server-side apply (``application/apply-patch+yaml`` with ``fieldManager``, ``force``,
  ``dryRun=All``) creates or merges; fields a manager stops applying are removed; conflicts
  between managers are not modelled.
- Custom resources are checked against the real Knative CRD schemas
  (``shared/schemas/knative``): a type or pattern violation is 422 Invalid; unknown fields are
  pruned with a ``Warning`` header, or rejected with 400 under ``fieldValidation=Strict``.
  Status is a subresource: writes to the main resource keep the stored status.
- Knative's webhook rule for ``spec.traffic`` (percents in 0..100 summing to 100, unique tags)
  answers 400 as an admission denial. A Knative Service's ``status.traffic`` follows its
  ``spec.traffic`` once every revision named there exists (``add_revision``) and belongs to
  it (Serving v1.21+); until then RoutesReady is False with reason RevisionMissing (or
  RevisionNotOwned). A standalone Route's status follows the same way for any revision.
- Knative's pod-spec field mask (``automountServiceAccountToken`` only as ``false``) and the
  rule that a chosen revision name starts with ``<owner>-`` answer 400; a PodAutoscaler's
  ``autoscaling.knative.dev/*`` annotations are put back to its Revision's after any write
  (see ``_knative``).
- ``pods/{name}/eviction`` (policy/v1 Eviction): PodDisruptionBudgets (minAvailable or
  maxUnavailable, int or percent) gate it against the ready pods they select; 201 when allowed
  (the pod is deleted at once: there is no kubelet; with ``state.graceful_eviction`` it is
  left terminating until the test deletes it), 429 TooManyRequests with a DisruptionBudget
  cause when not, 500 when more than one budget selects the pod. Pending, terminal and
  terminating pods evict regardless, as in the real handler.

Not modelled: authentication and RBAC (inject 401/403 with ``fail_next``), controllers other
than the Knative route status above (no ReplicaSets creating pods, no kubelet, no graceful
deletion), managedFields, pagination (``limit``/``continue``), bookmarks, protobuf.
"""

from tests.kube_fake._server import FakeKubeServer, RequestRecord
from tests.kube_fake._state import ApiError, pod_ready

__all__ = ["ApiError", "FakeKubeServer", "RequestRecord", "pod_ready"]
