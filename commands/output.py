"""Printing for commands: rich for people, exact JSON for scripts, clear errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click
from rich.console import Console

console = Console()
errors = Console(stderr=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, for grep
    sys.exit(code)


def metrics_port_option(function):  # noqa: ANN001, ANN201 - a click decorator
    """`--metrics-port`: serve this process's Prometheus metrics on PORT/metrics (LEDGER_METRICS_HOST)."""
    return click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
                        help="Serve Prometheus metrics on PORT/metrics (address: LEDGER_METRICS_HOST, default 127.0.0.1).")(function)


def standby_option(function):  # noqa: ANN001, ANN201 - a click decorator
    """`--standby`: for processors that run once per ledger (runtime/single_instance.py)."""
    return click.option("--standby", is_flag=True, help="If another one runs, wait as a hot standby and take over "
                        "when it stops (instead of exiting).")(function)


def start_logging(settings, process: str, as_json: bool = False) -> None:  # noqa: ANN001 - Settings
    """Log as LEDGER_LOG_FORMAT says: json lines on stderr; text lines where long-running commands always
    printed them (stdout, or stderr when --json keeps stdout for the result)."""
    from runtime.logs import configure_logging

    stream = sys.stderr if as_json or settings.log_format == "json" else sys.stdout
    configure_logging(settings.log_format, process, stream=stream)
