"""The values one proxied request passes between the gateway's steps: the request as admitted,
a whole answer to pass on, a try that produced nothing worth passing on, and the request's
progress through the revisions."""

from __future__ import annotations

from knative.breakers import Permit
from knative.gateway._inflight import Ticket


class ProxyRequest:
    """A ``/v1/*`` request as the gateway forwards it, with its deadline and its accounting."""

    __slots__ = (
        "assemble",
        "body",
        "deadline",
        "first_event",
        "headers",
        "method",
        "path",
        "resumable",
        "rev_permit",
        "rev_t0",
        "ticket",
    )

    def __init__(self, method: str, path: str, body: bytes, headers: dict[str, str],
                 deadline: float, ticket: Ticket) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.deadline = deadline
        self.ticket = ticket
        # The revision's breaker judges whole requests on that revision (after retries on its
        # other replicas), so its permit is taken once per revision and settled once.
        self.rev_permit: Permit | None = None
        self.rev_t0 = 0.0
        # a streamed completion or chat the gateway may continue on another replica
        self.resumable = False
        # the replica answers with a stream (its first event bounded by a first-event timeout)
        self.first_event = False
        # a non-streamed request sent as an internal stream: the gateway assembles the answer
        self.assemble = False

    def with_body(self, body: bytes) -> ProxyRequest:
        """The same request (headers, deadline, accounting) with another body and no permit
        of its own: a stream's continuation, settled by the stream."""
        other = ProxyRequest(self.method, self.path, body, dict(self.headers), self.deadline,
                             self.ticket)
        other.rev_t0 = self.rev_t0
        other.resumable = self.resumable
        other.first_event = self.first_event
        other.assemble = self.assemble
        return other


class Reply:
    """A whole upstream answer, passed on as it is."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Failure:
    """A try that did not produce an answer worth passing on."""

    __slots__ = ("kind", "message", "retry_after", "retryable", "status")

    def __init__(
        self, status: int, kind: str, message: str, retryable: bool, retry_after: str | None = None
    ) -> None:
        self.status = status
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class Progress:
    """One request's way through the revisions: the replicas and revisions it tried, its
    tries, the last failure, whether a replica answered it (up, and said no), the revisions
    the retry budget turned it away from, and its time in the wait queue."""

    __slots__ = ("answered", "attempts", "busy_waits", "failure", "first", "left", "revisions",
                 "tried", "waited")

    def __init__(self) -> None:
        self.tried: set[str] = set()
        self.revisions: set[str] = set()
        self.left: set[str] = set()
        self.attempts = 0
        self.failure: Failure | None = None
        self.answered = False
        self.waited = 0.0
        self.busy_waits = 0  # waits for replicas that answered 503 (full) to have room
        self.first: str | None = None  # the revision the traffic split drew
