# The payout ledger's image: the `ledger` command. docker-compose.kafka.yml runs one subcommand per
# service (ledger sequencer, ledger projector, ledger api, ...) with LEDGER_* settings from its environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEDGER_DATA_DIR=/var/lib/ledger

WORKDIR /app
COPY . /app
# Installed in place (-e): ledger/codec.py reads the Avro schemas from <repo>/schemas/avro, which a wheel
# built from pyproject.toml does not contain (docs/deployment.md, "Image").
RUN pip install -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/ledger --create-home ledger \
    && mkdir -p /var/lib/ledger/bank/outbox /var/lib/ledger/bank/status \
    && chown -R ledger:ledger /var/lib/ledger

USER ledger
WORKDIR /var/lib/ledger
ENTRYPOINT ["ledger"]
CMD ["--help"]
