"""librdkafka's read-ahead, bounded: every LogReader uses these (a reader may be far behind the log's end).

By default a consumer queues up to 64 MiB (queued.max.messages.kbytes) ahead of the loop that handles
the records. A reader that starts far behind (a full replay, a notifier on a long ledger without
committed offsets) then holds a growing part of the history in memory. Measured on the embedded broker
(a notifier reading the whole of ledger.events from the beginning, 3 partitions): peak RSS 74 MB at
5,000 events and 97 MB at 45,000 with the defaults (585 bytes per event); 75.3 MB at 45,000 and 75.4 MB
at 85,000 with a 2 MiB bound. Bounding the fetch sizes and queued.min.messages as well cost a
projections rebuild 40 % of its speed (2,771 instead of 4,614 events/s on 33,500 events); the byte
bound alone keeps the queue constant (at most 8 MiB) at the full speed (4,476 and 4,701 events/s).
"""

from __future__ import annotations

BOUNDED_PREFETCH = {
    "queued.max.messages.kbytes": 8_192,
}
