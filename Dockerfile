# The payout ledger's image: the `ledger` command. docker-compose.kafka.yml runs one subcommand per
# service (ledger sequencer, ledger projector, ledger api, ...) with LEDGER_* settings from its environment.

# Build stage: the wheel. Everything read at run time (Avro schemas, migrations, templates) is package data
# inside it, found through importlib.resources (tests/unit/test_wheel_contents.py checks the list).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . /src
RUN python -m pip wheel --no-deps . -w /wheels

# Final image: the wheel installed (not the checkout, not editable) and nothing else of the repository.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEDGER_DATA_DIR=/var/lib/ledger

COPY --from=build /wheels /tmp/wheels
RUN pip install /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/ledger --create-home ledger \
    && mkdir -p /var/lib/ledger/bank/outbox /var/lib/ledger/bank/status \
    && chown -R ledger:ledger /var/lib/ledger

USER ledger
WORKDIR /var/lib/ledger
ENTRYPOINT ["ledger"]
CMD ["--help"]
