"""Benchmark (not a test): the floor, what the least Python work per record costs with these libraries.

    .venv/bin/ledger up && .venv/bin/python bench/python_floor.py --records 50000 [--json]

It answers one question: how fast could a stage go if it did nothing but the unavoidable calls?
Each loop below skips every rule of the ledger (no validation, no dedupe, no chain state, no
PostgreSQL), so it is an upper bound on what the real stage can reach in one Python process:

- `client_floor`: fastavro encode of an already-built record and `produce` (what `LedgerClient` must do);
- `sequencer_floor`: consume, fastavro decode, set two envelope fields, fastavro encode, SHA-256,
  `produce` with a header (what the sequencer must do per record);
- `decode_floor`: consume and fastavro decode (what every reader of `ledger.events` must do);
- `faust_noop`: a Faust agent (`stream.events()`) that only counts (what the aggregator pays before
  its own code runs), as CPU µs per record of its process.

Every rate is also given as a ratio to the raw read rate of the floor's own event topic, measured by
`bench/run_all.py`'s own code for (a). Uses topics of its own (suffix floor-<random>), removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench_reading import raw_read_rate
from ledger.codec import EventCodec
from processors.kafka_io import make_producer, topic_partitions
from processors.ledger_client import LedgerClient
from runtime.kafka_admin import ensure_topics
from runtime.settings import Settings
from runtime.stack import connections

FAUST_AGENT = textwrap.dedent("""
    import os, sys, time, uuid
    import faust
    topic_name, count, bootstrap, datadir, answer_fd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    app = faust.App(f"floor-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", store="memory://",
                    processing_guarantee="at_least_once", consumer_auto_offset_reset="earliest",
                    web_enabled=False, datadir=datadir)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
    seen = {"n": 0}
    @app.agent(topic)
    async def count_only(stream):
        async for _event in stream.events():
            if seen["n"] == 0:
                seen["wall"], seen["cpu"] = time.perf_counter(), time.process_time()
            seen["n"] += 1
            if seen["n"] == count:
                wall, cpu = time.perf_counter() - seen["wall"], time.process_time() - seen["cpu"]
                os.write(answer_fd, f"{wall} {cpu}".encode())
                os._exit(0)
    from faust.worker import Worker
    Worker(app, loglevel="WARN", quiet=True, override_logging=False).execute_from_commandline()
""")


def read_all(bootstrap: str, topic: str, count: int, handle=None) -> float:  # noqa: ANN001 - a batch callback
    """Seconds to consume `count` records of `topic` from the start, calling handle(batch) on each batch."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0) for partition in topic_partitions(bootstrap, topic)])
    got, deadline = 0, time.monotonic() + 300
    started = time.perf_counter()
    while got < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"read {got} of {count} records of {topic} in 300 s")
        batch = consumer.consume(10_000 if handle is None else 500, 1.0)
        if handle is not None:
            handle(batch)
        got += len(batch)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    count = args.records
    base = Settings()
    bootstrap, _ = connections(base)
    settings = base.with_topic_suffix(f"floor-{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, settings.topic_specs())
    codec = EventCodec()
    known = codec.schemas.current("PaymentCompleted")
    occurred = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    try:
        with LedgerClient(bootstrap, settings) as client:
            events = [client.validate({"payment_id": f"p{i}", "payee_id": f"payee-{i % 500}",
                                       "amount_minor": 100 + i % 9000, "currency": ("USD", "EUR", "XOF")[i % 3],
                                       "occurred_at": occurred}) for i in range(count)]
        encoded = [codec.encode(event) for event in events]
        prefix = encoded[0][:10]
        wire = [fastavro.schemaless_reader(io.BytesIO(value[10:]), known.fast, None) for value in encoded]
        keys = [event.payee_id.encode() for event in events]

        producer = make_producer(bootstrap)
        started = time.perf_counter()
        for record, key in zip(wire, keys):
            body = io.BytesIO()
            fastavro.schemaless_writer(body, known.fast, record)
            while True:
                try:
                    producer.produce(settings.topic_incoming, prefix + body.getvalue(), key)
                    break
                except BufferError:
                    producer.poll(0.005)
        producer.flush(60)
        client_s = time.perf_counter() - started

        out = make_producer(bootstrap)

        def sequence(batch: list) -> None:
            for message in batch:
                value = message.value()
                record = fastavro.schemaless_reader(io.BytesIO(value[10:]), known.fast, None)
                record["envelope"]["sequence"] = 1
                record["envelope"]["previous_hash"] = "0" * 64
                body = io.BytesIO()
                fastavro.schemaless_writer(body, known.fast, record)
                data = value[:10] + body.getvalue()
                hashlib.sha256(data).hexdigest()
                out.produce(settings.topic_events, data, message.key(), headers=[("ledger-source", b"floor")])
            out.poll(0)

        sequencer_s = read_all(bootstrap, settings.topic_incoming, count, sequence)
        out.flush(60)

        def decode(batch: list) -> None:
            for message in batch:
                fastavro.schemaless_reader(io.BytesIO(message.value()[10:]), known.fast, None)

        decode_s = read_all(bootstrap, settings.topic_events, count, decode)
        raw = raw_read_rate(bootstrap, settings.topic_events, repeats=5, timeout_s=300)["records_per_s"]
        faust_wall, faust_cpu = faust_noop(bootstrap, settings.topic_events, count, base.data_dir)
    finally:
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics(
            [spec.name for spec in settings.topic_specs()], operation_timeout=30)
    result = {
        "records": count,
        "raw_read_records_per_s": round(raw),
        "client_floor": rates(count, client_s, raw),
        "sequencer_floor": rates(count, sequencer_s, raw),
        "decode_floor": rates(count, decode_s, raw),
        "faust_noop": {**rates(count, faust_wall, raw), "cpu_us_per_record": round(faust_cpu / count * 1e6, 1)},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"raw read {raw:,.0f} records/s")
        for name in ("client_floor", "sequencer_floor", "decode_floor", "faust_noop"):
            figure = result[name]
            extra = f", {figure['cpu_us_per_record']} µs CPU" if "cpu_us_per_record" in figure else ""
            print(f"{name:16} {figure['records_per_s']:>9,}/s  {figure['us_per_record']:>6} µs wall/record  "
                  f"ratio {figure['ratio_to_raw_read']}{extra}")
    return 0


def rates(count: int, seconds: float, raw: float) -> dict:
    return {"records_per_s": round(count / seconds), "us_per_record": round(seconds / count * 1e6, 1),
            "ratio_to_raw_read": round(count / seconds / raw, 4)}


def faust_noop(bootstrap: str, topic: str, count: int, data_dir: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a counting Faust agent over `count` records of `topic` (its own process)."""
    read_end, write_end = os.pipe()
    datadir = data_dir / f"floor-faust-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen([sys.executable, "-c", FAUST_AGENT, topic, str(count), bootstrap, str(datadir),
                                str(write_end)],
                               pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        raise SystemExit("the Faust agent did not read every record in 300 s") from None
    answer = os.read(read_end, 200).decode()
    os.close(read_end)
    if not answer:
        raise SystemExit(f"the Faust agent exited {process.returncode} without an answer")
    wall, cpu = (float(part) for part in answer.split())
    return wall, cpu


if __name__ == "__main__":
    sys.exit(main())
