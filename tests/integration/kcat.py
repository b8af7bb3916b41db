"""kcat, a producer that is not the project's own, run against the librdkafka that confluent-kafka ships.

Debian 12's kcat links its own librdkafka 2.0.2, which misreads the embedded broker's ApiVersions v3
answer and cannot connect at all; the same kcat binary with a current librdkafka (the one inside the
confluent-kafka wheel, put first on LD_LIBRARY_PATH under its usual name) talks to it. `make test`
installs kcat when it is missing (.ci/ensure-debian-packages).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import confluent_kafka


def _wheel_librdkafka() -> str:
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(glob.glob(str(libs / "librdkafka*.so*")))
    if not found:
        raise RuntimeError(f"no librdkafka in {libs}: confluent-kafka is not installed from its wheel")
    return found[0]


class Kcat:
    """Produce records with kcat: one call per record, so any bytes (a BOM, no newline) go as they are."""

    def __init__(self, bootstrap: str, workdir: Path) -> None:
        binary = shutil.which("kcat")
        if binary is None:
            raise RuntimeError("kcat is not installed: `make test` installs it (.ci/ensure-debian-packages)")
        lib_dir = workdir / "librdkafka"
        lib_dir.mkdir(parents=True, exist_ok=True)
        link = lib_dir / "librdkafka.so.1"
        if not link.exists():
            link.symlink_to(_wheel_librdkafka())
        self.binary, self.bootstrap, self.workdir = binary, bootstrap, workdir
        self.env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}

    def version(self) -> str:
        return subprocess.run([self.binary, "-V"], env=self.env, capture_output=True, text=True, check=True).stdout

    def produce(self, topic: str, value: bytes, *, key: bytes | None = None, partition: int | None = None,
                murmur2: bool = True) -> None:
        """One record; keyed if `key`, to `partition` if given, else placed by murmur2 (the ledger's partitioner)
        or, with murmur2=False, by kcat's own default (librdkafka's consistent_random, CRC32)."""
        path = self.workdir / "record.bin"
        path.write_bytes(value)
        args = [self.binary, "-P", "-b", self.bootstrap, "-t", topic, "-X", "message.max.bytes=20000000",
                "-X", "acks=all"]
        if murmur2:
            args += ["-X", "partitioner=murmur2_random"]
        if partition is not None:
            args += ["-p", str(partition)]
        if key is not None:
            args += ["-k", key.decode()]
        # -l: the whole file is one message, byte for byte (no delimiter splits it)
        result = subprocess.run([*args, "-l", str(path)], env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"kcat failed ({result.returncode}): {result.stderr}")
