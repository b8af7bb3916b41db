"""A sandbox bank: answers every pain.001 file in the outbox with a pain.002 status report.

The bank transfer connector writes SEPA batches to an outbox directory and reads the bank's status
reports from a status directory (connectors/bank_transfer.py). This thread plays the bank: each new
`pain001-*.xml` gets one `pain002-<MsgId>.xml`, every transfer accepted and settled (ACSC) except
those to IBANs in `closed_ibans`, which are rejected with AC04 (account closed). Reports are written
atomically (a hidden temp file, then a rename), as the connector expects of a bank's upload job.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from connectors.sepa_status import read_credit_transfers, write_status_report


class SandboxBank:
    def __init__(self, outbox_dir: Path, status_dir: Path, closed_ibans: set[str] | None = None,
                 interval_s: float = 0.2) -> None:
        self.outbox_dir, self.status_dir = Path(outbox_dir), Path(status_dir)
        self.closed_ibans = {iban.replace(" ", "").upper() for iban in (closed_ibans or set())}
        self.interval_s = interval_s
        self.answered: dict[str, tuple[int, int]] = {}  # MsgId -> (transfers accepted, rejected)
        self.accepted: dict[str, tuple[str, int]] = {}  # EndToEndId -> (currency, minor) of each transfer accepted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "SandboxBank":
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        self.status_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="sandbox-bank", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def answer_new_files(self) -> int:
        """Write a status report for each outbox file not answered yet; returns how many were answered."""
        answered = 0
        for path in sorted(self.outbox_dir.rglob("pain001-*.xml")):
            raw = path.read_bytes()
            batch = read_credit_transfers(raw)
            if batch.message_id in self.answered:
                continue
            rejected = {t.end_to_end_id: "AC04" for t in batch.transfers if t.iban.upper() in self.closed_ibans}
            report = write_status_report(raw, rejected, initiating_party="sandbox-bank")
            temp = self.status_dir / f".pain002-{batch.message_id}.tmp"
            temp.write_bytes(report)
            os.replace(temp, self.status_dir / f"pain002-{batch.message_id}.xml")
            for transfer in batch.transfers:
                if transfer.end_to_end_id not in rejected:
                    self.accepted[transfer.end_to_end_id] = (transfer.amount.currency.code, transfer.amount.amount_minor)
            self.answered[batch.message_id] = (len(batch.transfers) - len(rejected), len(rejected))
            answered += 1
        return answered

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.answer_new_files()
