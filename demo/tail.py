"""Follows ledger.events from where it ended when the demo began, folding the demo's payees' events
with the domain's own folds (earnings, payouts) and counting them: the demo's view of its run."""

from __future__ import annotations

from collections import Counter

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ledger.codec import EventCodec
from ledger.earnings import PayeeEarnings
from ledger.payouts import Payout, PayoutBook
from processors.kafka_io import CLIENT_LOG
from processors.log_end import end_offsets
from runtime.kafka_security import secure


class LedgerTail:
    def __init__(self, bootstrap: str, topic: str, payee_ids: set[str]) -> None:
        self.payee_ids = payee_ids
        self.codec = EventCodec()
        self.earnings: dict[str, PayeeEarnings] = {payee: PayeeEarnings(payee) for payee in payee_ids}
        self.book = PayoutBook()
        self.counts: Counter = Counter()  # event type -> how many of ours are chained
        self.payment_ids: set[str] = set()
        starts = end_offsets(bootstrap, topic)
        self._consumer = Consumer(secure({"bootstrap.servers": bootstrap, "group.id": "ledger-demo-tail",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 50, "logger": CLIENT_LOG}))
        self._consumer.assign([TopicPartition(topic, partition, offset) for partition, offset in starts.items()])

    def poll(self, max_records: int = 5_000) -> int:
        """Fold what has arrived (at most max_records); returns how many of our events were folded."""
        folded = 0
        for message in self._consumer.consume(num_messages=max_records, timeout=0.2):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            key = (message.key() or b"").decode()
            if key not in self.payee_ids:
                continue
            event = self.codec.decode(message.value() or b"")
            self.earnings[event.payee_id].apply(event)
            self.book.apply(event)
            self.counts[event.event_type] += 1
            if event.event_type == "PaymentCompleted":
                self.payment_ids.add(event.payload["payment_id"])
            folded += 1
        return folded

    def payouts(self) -> list[Payout]:
        return list(self.book.payouts.values())

    def close(self) -> None:
        self._consumer.close()
