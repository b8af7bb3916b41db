"""The soak's HTTP entrances and its hostile input through every entrance, in the order the soak sends it.

    servers = Servers.make()                          # ports, an ingest token and a webhook secret
    entrances = SoakEntrances(seed, options.hostile, now, inputs.records, servers, env, workdir)
    ... entrances.incoming (topic records, before the payments), entrances.incoming_after (stateful kinds)
    entrances.send_api(); entrances.send_publish()    # while the fault schedule runs
    entrances.send_webhooks(stripe_transfers)         # once some Stripe payouts are settled
    entrances.redeliver(stripe, settled_stripe_payouts)  # after the last payouts, before the ledger goes quiet
    failures = entrances.check(bootstrap, settings)   # once the ledger is quiet

The hostile budget: a fifth goes to `ledger publish` files, a tenth to the webhook endpoint, the rest to the
topic (JSON and Avro) and POST /v1/payments in turn (demo/hostile.py). Each sender is demo/entrances.py's.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from demo import entrances, hostile
from runtime.processes import free_port
from runtime.settings import Settings

PUBLISH_SHARE = 5  # 1/5 of the hostile records are publish lines
WEBHOOK_SHARE = 10  # 1/10 are webhook deliveries
REVERSALS = 6  # settled Stripe payouts whose webhooks are redelivered out of order (about half reversed)


@dataclass(frozen=True)
class Servers:
    """The HTTP entrances the soak runs (and kills) beside the processors: the API and the webhook endpoint."""

    api_port: int
    webhook_port: int
    token: str
    webhook_secret: str

    @classmethod
    def make(cls) -> "Servers":
        return cls(free_port(), free_port(), secrets.token_urlsafe(24), f"whsec_{secrets.token_hex(16)}")

    @property
    def env(self) -> dict[str, str]:
        # hostile records go one per request: the per-token rate must not be what refuses them
        return {"LEDGER_API_TOKENS": json.dumps({self.token: "ingest"}), "LEDGER_INGEST_RATE_PER_S": "10000",
                "LEDGER_INGEST_BURST": "10000", "LEDGER_STRIPE_WEBHOOK_SECRET": self.webhook_secret}

    @property
    def arguments(self) -> dict[str, list[str]]:
        return {"api": ["api", "--port", str(self.api_port)],
                "webhooks": ["webhooks", "serve", "--port", str(self.webhook_port)]}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}/webhooks/stripe"


class SoakEntrances:
    def __init__(self, seed: int, count: int, now: datetime, records: list[dict], servers: Servers,
                 env: Mapping[str, str], workdir: Path) -> None:
        self.seed, self.servers, self.env, self.workdir = seed, servers, dict(env), workdir
        valid = {record["payment_id"]: record for record in records if record.get("type", "payment") == "payment"}
        self.webhooks_count = count // WEBHOOK_SHARE
        publish_count = count // PUBLISH_SHARE
        made = hostile.hostile_records(seed, count - publish_count - self.webhooks_count, now, valid) if count else []
        stateful = hostile.STATEFUL_KINDS
        self.incoming = [r for r in made if r.entrance != "api" and r.kind not in stateful]
        # sent after the payments they name are chained: else a conflicting payment sent first would be recorded
        self.incoming_after = [r for r in made if r.entrance != "api" and r.kind in stateful]
        # the API checks each record alone: a stateful kind passes it and is refused by the sequencer
        self.api = [r for r in made if r.entrance == "api" and r.kind not in stateful]
        self.publish = hostile.hostile_records(seed + 1, publish_count, now, valid, entrances=hostile.PUBLISH) \
            if publish_count else []
        self.results: dict[str, Any] = {}
        self._webhook_ids: dict[str, str] = {}
        self._redelivered: dict[str, Any] | None = None

    @property
    def sent_by_entrance(self) -> dict[str, int]:
        return {"incoming": len(self.incoming), "incoming_after": len(self.incoming_after), "api": len(self.api),
                "publish": len(self.publish), "webhooks": self.results.get("webhooks_sent", 0)}

    def send_api(self) -> None:
        self.results.update(entrances.send_api(self.servers.api_url, self.servers.token, self.api))

    def send_publish(self) -> None:
        """After the valid payments are chained: the stateful kinds among the lines then conflict with them."""
        self.results.update(entrances.publish_hostile(self.env, self.publish, self.workdir / "publish"))

    def send_webhooks(self, targets: list[dict]) -> None:
        """`targets`: Stripe transfers of settled payouts, which the harmful deliveries name."""
        if not self.webhooks_count:
            return
        result = entrances.send_webhooks_hostile(self.servers.webhook_url, self.servers.webhook_secret, self.seed,
                                                 self.webhooks_count, targets=targets[:5])
        self._webhook_ids = result.pop("webhooks_event_ids")
        self.results.update(result)

    def redeliver(self, stripe, payout_ids: list[str]) -> None:  # noqa: ANN001 - StripeTestServer
        """Reverse some settled Stripe payouts and redeliver their webhooks out of order (after the last close:
        the reversed money returns to the payees' balances and must not be paid again within the soak)."""
        self._redelivered = entrances.reverse_and_redeliver(stripe, self.servers.webhook_url,
                                                            self.servers.webhook_secret, self.seed, payout_ids,
                                                            REVERSALS)
        self.results.update({key: value for key, value in self._redelivered.items()
                             if key not in ("redelivery_transfers",)})

    def check(self, bootstrap: str, settings: Settings) -> list[str]:
        """Once the ledger is quiet: no hostile delivery chained or appended, each redelivered payout as expected,
        and every sender's own failures."""
        failures = [failure for key, value in self.results.items() if key.endswith("_failures") for failure in value]
        failures += entrances.check_nothing_appended(bootstrap, settings.topic_events, settings.topic_commands,
                                                     self._webhook_ids)
        if self._redelivered is not None:
            failures += entrances.check_redelivered(bootstrap, settings.topic_events, self._redelivered)
        return failures
