"""The rendered Knative Triggers deliver every event type each function handles."""

from functions import ROUTES
from knative.manifests import FUNCTION_ROUTES


def test_rendered_triggers_cover_every_function_route():
    for name, types in ROUTES.items():
        rendered = set(FUNCTION_ROUTES.get(f"/{name}", ()))
        assert set(types) <= rendered, (name, set(types) - rendered)
