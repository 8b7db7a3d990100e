"""Small pieces every function uses: type checks, ping handling, deferred-action sweeps."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from events import Event, EventValidationError
from functions._context import ACTED, NOOP, Context, Outcome
from functions._errors import TemporaryFunctionError
from functions._state import defer, take_due

log = logging.getLogger(__name__)

RETRY_DEFERRED_S = 5.0


def check_type(function: str, event: Event, types: Sequence[str]) -> None:
    """A function given an event type it does not handle is a routing mistake: 400."""
    if event.type not in types:
        raise EventValidationError(
            {"type": f"{function} does not handle {event.type!r}; it handles "
                     f"{', '.join(types)}"},
            message=f"event type not handled by {function}",
        )


def run_deferred(
    ctx: Context, function: str, action: str, run: Callable[[str], Outcome]
) -> list[Outcome]:
    """Run every due deferred ``function|action|<subject>``; a temporary failure puts it back
    (a few seconds later), anything else is logged and dropped."""
    prefix = f"{function}|{action}|"
    out: list[Outcome] = []
    for member in take_due(ctx, prefix):
        subject = member[len(prefix):]
        try:
            out.append(run(subject))
        except TemporaryFunctionError as exc:
            log.warning("%s %s of %s failed, retrying later: %s", function, action, subject, exc)
            defer(ctx, member, ctx.clock() + RETRY_DEFERRED_S)
        except Exception:
            log.exception("%s %s of %s failed; dropped", function, action, subject)
    return out


def merge(function: str, outcomes: Sequence[Outcome], idle: str) -> Outcome:
    """One outcome for a sweep: the first reply, the other events as extras."""
    events = [e for o in outcomes for e in o.events]
    if not events:
        reasons = "; ".join(o.reason for o in outcomes if o.reason)
        return Outcome(function, NOOP, reasons or idle)
    acted = [o for o in outcomes if o.status == ACTED]
    status = ACTED if acted else outcomes[0].status
    return Outcome(function, status, "; ".join(o.reason for o in outcomes if o.reason),
                   reply=events[0], extra=tuple(events[1:]))
