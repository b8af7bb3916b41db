"""Entry point of the `ledger` command: the command group and its error handling."""

from __future__ import annotations

import os

import click
import sqlalchemy.exc
from confluent_kafka import KafkaException
from pydantic import ValidationError
from pydantic_settings import SettingsError

from commands.output import fail
from ledger.commission import InvalidPlan, UnknownPlan
from processors.dead_letters import UnknownDeadLetter
from processors.kafka_io import DeliveryFailed
from processors.ledger_replay import CorruptLedger
from runtime.kafka_admin import TopicError
from runtime.kafka_security import KafkaRefused
from runtime.single_instance import AlreadyRunning
from runtime.processes import ServiceStartError
from runtime.stack import StackNotRunning

# Failures a user can act on: shown as one clear line and exit code 1, not a traceback.
EXPECTED_FAILURES = (
    KafkaRefused,
    ServiceStartError,
    StackNotRunning,
    TopicError,
    KafkaException,
    sqlalchemy.exc.OperationalError,
    TimeoutError,
    AlreadyRunning,
    UnknownDeadLetter,
    CorruptLedger,
    DeliveryFailed,
    InvalidPlan,
    UnknownPlan,
)


class LedgerGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EXPECTED_FAILURES as exc:
            fail(str(exc).strip() or type(exc).__name__)
        except ValidationError as exc:
            problems = "; ".join(
                (f"LEDGER_{'_'.join(str(part) for part in error['loc']).upper()}: " if error["loc"] else "")
                + error["msg"].removeprefix("Value error, ")
                for error in exc.errors()
            )
            fail(f"invalid setting: {problems}")
        except SettingsError as exc:  # an environment value that is not what the setting reads (e.g. not JSON)
            field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
            fail(f"invalid setting: LEDGER_{field.upper()} cannot be read (JSON expected for lists and maps)"
                 if field else f"invalid setting: {exc}")
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug, not a user error: say so briefly; LEDGER_DEBUG=1 shows the traceback
            if os.environ.get("LEDGER_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (set LEDGER_DEBUG=1 for the traceback)")


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="payout-ledger")
def cli() -> None:
    """Payout ledger: an event-sourced ledger of marketplace payouts over Kafka.

    Settings come from LEDGER_* environment variables (see README). Without LEDGER_KAFKA_BOOTSTRAP
    and LEDGER_DATABASE_URL, commands use the embedded stack started by `ledger up`.
    """


def _register() -> None:
    from commands import (
        aggregator_command, dlq, payee_commands, payout_now, payout_ops, publish, quote, run_command,
        schemas_command, sequencer_command,
        projections_command, smoke, stack_commands, transfers_command, webhooks_command,
    )
    from commands import api_command, report_command
    from commands import alerts_command
    from commands import notify_command  # adds `payee contact` to payee_commands.payee

    cli.add_command(stack_commands.up)
    cli.add_command(stack_commands.down)
    cli.add_command(stack_commands.status)
    cli.add_command(schemas_command.schemas)
    cli.add_command(smoke.smoke)
    from commands import demo_command

    cli.add_command(demo_command.demo)
    from commands import soak_command

    cli.add_command(soak_command.soak)
    cli.add_command(sequencer_command.sequencer)
    cli.add_command(dlq.dlq)
    cli.add_command(publish.publish)
    cli.add_command(quote.quote)
    cli.add_command(run_command.run)
    cli.add_command(payee_commands.schedule)
    cli.add_command(payee_commands.payee)
    cli.add_command(aggregator_command.aggregator)
    cli.add_command(aggregator_command.tick)
    cli.add_command(payout_ops.payouts)  # payouts_command's group, with list|show|retry|cancel|confirm|fail
    cli.add_command(payout_now.payout)
    cli.add_command(transfers_command.transfers)
    cli.add_command(webhooks_command.webhooks)
    cli.add_command(projections_command.projector)
    cli.add_command(projections_command.projections)
    cli.add_command(projections_command.verify)
    cli.add_command(report_command.report)
    cli.add_command(api_command.api)
    cli.add_command(api_command.api_token)
    cli.add_command(alerts_command.alerts)
    cli.add_command(notify_command.notifier)
    cli.add_command(notify_command.notifications)
    from commands import checkpoints_command

    cli.add_command(checkpoints_command.checkpoints)
    from commands import partitions_command

    cli.add_command(partitions_command.partitions)


_register()
