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
    """`--metrics-port`: serve this process's Prometheus metrics on 127.0.0.1:PORT/metrics."""
    return click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
                        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.")(function)
