"""Which partition a key belongs to: Kafka's murmur2 partitioner, the one every ledger producer uses.

The Java client, Faust and librdkafka's `murmur2_random` all place a keyed record at
`(murmur2(key) & 0x7fffffff) % partitions`. A partitioned processor needs the same answer without
producing anything: the sequencer instance that owns a partition chains only the payees that hash
there, and sends a record a foreign producer placed elsewhere (another partitioner) to the partition
its key belongs to.
"""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2) as an unsigned 32-bit value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a keyed record among `partitions` (Kafka's default for keyed records)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
