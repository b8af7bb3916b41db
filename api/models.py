"""Request bodies of the API: strict (unknown fields refused), bounded, each field documented."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Text = Annotated[str, Field(max_length=500)]
Id = Annotated[str, Field(min_length=1, max_length=200)]


class Strict(BaseModel):
    """Unknown fields are refused; no text may hold a NUL (PostgreSQL text cannot store one)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000) characters")
        return value


class RetryBody(Strict):
    actor: Text = Field("", description="who asks (default: the token's name)")


class CancelBody(Strict):
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    actor: Text = ""


class ConfirmBody(Strict):
    reference: Annotated[str, Field(min_length=1, max_length=500, description="receipt, bank statement line")]


class FailBody(Strict):
    reason_code: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_]+$")]
    message: Text = ""


class ManualPayoutBody(Strict):
    currency: Annotated[str, Field(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$")]
    request_id: Id | None = Field(None, description="idempotency: the same id never pays twice (default: new)")


class Minimum(Strict):
    currency: Annotated[str, Field(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$")]
    amount: Annotated[str, Field(pattern=r"^[0-9]{1,15}(\.[0-9]{1,4})?$", description="major units, e.g. 25.00")]


class ScheduleBody(Strict):
    frequency: Literal["DAILY", "WEEKLY", "BIWEEKLY", "MONTHLY", "MANUAL"]
    cutoff_time: Annotated[str, Field(pattern=r"^[0-9]{2}:[0-9]{2}$")] = "23:59"
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"
    day_of_week: Annotated[int, Field(ge=0, le=6)] | None = None
    day_of_month: Annotated[int, Field(ge=1, le=31)] | None = None
    plan: Annotated[str, Field(min_length=1, max_length=100)]
    method: Annotated[str, Field(min_length=1, max_length=100)]
    destination: Text = ""
    minimum: Minimum | None = None
    actor: Text = ""


class RunBody(Strict):
    """The cron endpoint's body."""

    dryRun: bool = Field(False, description="decide and report; request nothing")
    forceRun: bool = Field(False, description="also pay every balance that reaches the minimum now, whatever the schedule")
    at: datetime | None = Field(None, description="decide as of this instant (ISO 8601 with offset); default now")


class PauseBody(Strict):
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    actor: Text = ""


class ResumeBody(Strict):
    reason: Text = ""
    actor: Text = ""


class AlertActionBody(Strict):
    actor: Text = ""
