"""librdkafka's read-ahead, bounded: every LogReader uses these (a reader may be far behind the log's end).

By default a consumer buffers up to 100,000 records per partition (queued.min.messages) and fetches
up to 1 MiB per partition and 50 MiB per request ahead of the loop that handles them. A reader that
starts far behind (a full replay, a notifier on a long ledger without committed offsets) then holds
a growing part of the history in memory. Measured on the embedded broker (a notifier reading the
whole of ledger.events from the beginning, 3 partitions, PaymentCompleted events): peak RSS 74 MB at
5,000 events and 97 MB at 45,000 with the defaults (585 bytes per event); 75.3 MB at 45,000 and
75.4 MB at 85,000 with these bounds. A reader at the end of the log is not affected either way.
"""

from __future__ import annotations

BOUNDED_PREFETCH = {
    "queued.min.messages": 1_000,
    "queued.max.messages.kbytes": 2_048,
    "fetch.max.bytes": 1024 * 1024,
    "max.partition.fetch.bytes": 256 * 1024,
}
