"""Creates and checks the ledger's Kafka topics (works on Tansu and on Apache Kafka)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from runtime.settings import TopicSpec
from runtime.kafka_security import secure

ADMIN_TIMEOUT_S = 15.0


class TopicError(RuntimeError):
    """A topic could not be created, or exists with a different partition count."""


def ensure_topics(bootstrap: str, specs: list[TopicSpec], replication_factor: int = 1) -> list[str]:
    """Create missing topics; return the names created. Existing ones must match the partition count."""
    admin = AdminClient(secure({"bootstrap.servers": bootstrap}))
    existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    wanted = [spec for spec in specs if spec.name not in existing]
    created: list[str] = []
    if wanted:
        futures = admin.create_topics(
            [NewTopic(spec.name, spec.partitions, replication_factor, config=spec.config) for spec in wanted],
            request_timeout=ADMIN_TIMEOUT_S,
        )
        for name, future in futures.items():
            try:
                future.result(ADMIN_TIMEOUT_S)
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent creator won
                    raise TopicError(f"cannot create topic {name}: {exc.args[0].str()}") from None
        existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    for spec in specs:
        partitions = len(existing[spec.name].partitions)
        if partitions != spec.partitions:
            raise TopicError(
                f"topic {spec.name} has {partitions} partitions but the settings say {spec.partitions}"
            )
    return created


def topic_partition_counts(bootstrap: str) -> dict[str, int]:
    admin = AdminClient(secure({"bootstrap.servers": bootstrap}))
    return {
        name: len(meta.partitions)
        for name, meta in admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics.items()
        if not name.startswith("__")
    }
