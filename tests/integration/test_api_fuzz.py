"""Property-based fuzzing of the API from its own OpenAPI description (schemathesis): no 5xx, ever.

Valid (positive) and invalid (negative) requests are generated for every operation and sent, with an
operator token, to the app running on the real stack (sequencer and projector up, a payout to act on).
Derandomized, so a failure here fails the same way on the next run.
"""

from __future__ import annotations

import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode

from tests.integration.test_api import OP, api_settings, stack
from tests.integration.transfer_helpers import request_payouts

EXAMPLES_PER_MODE = 25


def test_fuzzing_the_openapi_description_finds_no_server_error(settings):
    settings = api_settings(settings, ingest_rate_per_s=10_000.0, ingest_burst=10_000)
    request_payouts(settings, {"fz-1": ("manual", "")})
    server_errors: list[str] = []
    calls = {"count": 0}
    with stack(settings) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @hypothesis.settings(max_examples=EXAMPLES_PER_MODE, deadline=None, derandomize=True, database=None,
                                     suppress_health_check=list(HealthCheck))
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def send(case) -> None:  # noqa: ANN001 - a schemathesis Case
                    response = case.call(headers={**OP, **(case.headers or {})})
                    calls["count"] += 1
                    if response.status_code >= 500:
                        server_errors.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r:.300} "
                                             f"-> {response.status_code} {response.text[:300]}")

                try:
                    send()
                except hypothesis.errors.Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE, operation.label  # e.g. /health: nothing to make invalid
    assert calls["count"] > 300, calls  # it really ran: ~20 operations x 2 modes
    assert server_errors == [], "\n".join(server_errors[:10])
