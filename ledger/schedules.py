"""Payout schedules: when a payee's payout periods close, as cutoff instants in UTC."""

# PERIODS. A period is the half-open UTC interval (previous cutoff, cutoff]: an event at exactly
# a cutoff instant belongs to the period that closes then. A cutoff is the local wall time
# cutoff_time on each qualifying date of the schedule's IANA zone: DAILY every date; WEEKLY the
# dates whose weekday is day_of_week (0 = Monday); BIWEEKLY those in even-numbered weeks counted
# from Monday 1970-01-05 (week 0), so the fortnight follows from the calendar with no stored
# state; MONTHLY day min(day_of_month, the month's last day); MANUAL none (payouts on request).
# A period's id is its cutoff's qualifying local date, "YYYY-MM-DD", for every frequency.
#
# DAYLIGHT SAVING. A wall time skipped by a spring-forward gap resolves to the first instant after
# the gap: 02:30 in New York on 2026-03-08 is 03:00 EDT (07:00Z). A wall time repeated by a
# fall-back resolves to its first occurrence (fold=0): 01:30 on 2026-11-01 is 01:30 EDT (05:30Z).
# One rule covers both: the cutoff is the first instant at which the local clock shows the cutoff
# date and time or later. Two dates landing on one instant (a zone that skipped a whole day, as
# Pacific/Apia did in 2011) make a single cutoff, named after the earlier date.

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import Enum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# A guard against a caller asking for centuries of daily cutoffs by mistake.
MAX_CUTOFFS_PER_QUERY = 10_000

# Week 0 of the biweekly count; a Monday, so a week never straddles two parities.
BIWEEKLY_ANCHOR = date(1970, 1, 5)

# Strict 24-hour "HH:MM": no "9:00", no "24:00", no seconds, so one schedule has one spelling.
_HH_MM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_ONE_DAY = timedelta(days=1)
# Files that some tz databases carry beside the zones and that mean "whatever this host uses":
# a schedule must close at the same instant on every machine.
_HOST_ZONES = frozenset({"localtime", "posixrules"})
# Qualifying dates are searched from a little before the instant's local date: a cutoff in a
# gap that spans midnight can fall on the next local date.
_SEARCH_MARGIN = timedelta(days=2)


class Frequency(str, Enum):
    """How often a period closes (the symbols of the Avro enum PayoutFrequency)."""

    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    BIWEEKLY = "BIWEEKLY"
    MONTHLY = "MONTHLY"
    MANUAL = "MANUAL"


class InvalidSchedule(ValueError):
    """A schedule field is missing, malformed or out of range; the message names the field."""


class NoCutoffs(ValueError):
    """The schedule is MANUAL: it has no cutoffs, hence no periods."""


class InvalidInstant(ValueError):
    """An instant is not a timezone-aware datetime; the message names the parameter."""


class RangeTooLarge(ValueError):
    """A range would yield more than MAX_CUTOFFS_PER_QUERY cutoffs."""


@dataclass(frozen=True)
class Schedule:
    """When a payee's periods close. Every field is checked, so an invalid Schedule cannot exist."""

    frequency: Frequency
    cutoff_time: str  # local "HH:MM", 24-hour
    timezone: str  # IANA zone name
    day_of_week: int | None = None  # 0 = Monday .. 6; WEEKLY and BIWEEKLY only
    day_of_month: int | None = None  # 1..31; MONTHLY only

    def __post_init__(self) -> None:
        if not isinstance(self.frequency, Frequency):
            raise InvalidSchedule(f"frequency: must be a Frequency, got {self.frequency!r}")
        _check_cutoff_time(self.cutoff_time)
        _check_timezone(self.timezone)
        weekly = self.frequency in (Frequency.WEEKLY, Frequency.BIWEEKLY)
        _check_day_field(self, "day_of_week", self.day_of_week, weekly, 0, 6)
        monthly = self.frequency is Frequency.MONTHLY
        _check_day_field(self, "day_of_month", self.day_of_month, monthly, 1, 31)

    @classmethod
    def create(cls, frequency: Frequency | str, *, cutoff_time: str, timezone: str,
               day_of_week: int | None = None, day_of_month: int | None = None) -> Schedule:
        """A validated schedule; `frequency` may be given as its Avro symbol, e.g. "WEEKLY"."""
        return cls(_parse_frequency(frequency), cutoff_time, timezone, day_of_week, day_of_month)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def wall_time(self) -> time:
        hours, minutes = self.cutoff_time.split(":")
        return time(int(hours), int(minutes))


@dataclass(frozen=True)
class Period:
    """The UTC interval (start_utc, end_utc]: end_utc is the cutoff, start_utc the one before."""

    start_utc: datetime
    end_utc: datetime
    period_id: str  # the cutoff's qualifying local date, "YYYY-MM-DD"

    def contains(self, instant: datetime) -> bool:
        return self.start_utc < _as_utc("instant", instant) <= self.end_utc


def cutoff_at_or_after(schedule: Schedule, instant_utc: datetime) -> datetime:
    """The first cutoff at or after `instant_utc` (aware UTC)."""
    cutoff, _ = next(_cutoffs_from(schedule, _as_utc("instant_utc", instant_utc)))
    return cutoff


def cutoff_before(schedule: Schedule, instant_utc: datetime) -> datetime:
    """The last cutoff strictly before `instant_utc` (aware UTC)."""
    instant = _as_utc("instant_utc", instant_utc)
    day = _qualifying_date(schedule, _local_date(schedule, instant) + _SEARCH_MARGIN, -1)
    while (cutoff := _cutoff_on(schedule, day)) >= instant:
        day = _qualifying_date(schedule, day - _ONE_DAY, -1)
    return cutoff


def period_containing(schedule: Schedule, instant_utc: datetime) -> Period:
    """The period (previous cutoff, cutoff] that `instant_utc` falls in."""
    end, day = next(_cutoffs_from(schedule, _as_utc("instant_utc", instant_utc)))
    return Period(start_utc=cutoff_before(schedule, end), end_utc=end, period_id=day.isoformat())


def cutoffs_between(schedule: Schedule, start_exclusive: datetime, end_inclusive: datetime) -> list[datetime]:
    """The cutoffs in (start_exclusive, end_inclusive], ascending; [] for a MANUAL schedule."""
    start = _as_utc("start_exclusive", start_exclusive)
    end = _as_utc("end_inclusive", end_inclusive)
    if start > end:
        raise ValueError(f"start_exclusive {start.isoformat()} is after end_inclusive {end.isoformat()}")
    if schedule.frequency is Frequency.MANUAL:
        return []
    found: list[datetime] = []
    # Instants are whole microseconds, so "after start" is "at or after start + 1 µs".
    for cutoff, _ in _cutoffs_from(schedule, start + timedelta(microseconds=1)):
        if cutoff > end:
            return found
        if len(found) == MAX_CUTOFFS_PER_QUERY:
            raise RangeTooLarge(f"({start.isoformat()}, {end.isoformat()}] holds more than "
                                f"{MAX_CUTOFFS_PER_QUERY} cutoffs; ask for a shorter range")
        found.append(cutoff)
    raise AssertionError("unreachable: the cutoff sequence is infinite")


def _cutoffs_from(schedule: Schedule, instant: datetime) -> Iterator[tuple[datetime, date]]:
    """Cutoffs >= instant, strictly ascending, each with the date it is named after."""
    day = _qualifying_date(schedule, _local_date(schedule, instant) - _SEARCH_MARGIN, 1)
    previous: datetime | None = None
    while True:
        cutoff = _cutoff_on(schedule, day)
        # Skipping a repeat keeps one id per instant when two dates resolve to the same cutoff.
        if cutoff >= instant and (previous is None or cutoff > previous):
            yield cutoff, day
            previous = cutoff
        day = _qualifying_date(schedule, day + _ONE_DAY, 1)


def _cutoff_on(schedule: Schedule, day: date) -> datetime:
    """The UTC cutoff instant for the qualifying local date `day`."""
    zone = schedule.zone
    wall = datetime.combine(day, schedule.wall_time)
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant  # the wall time exists; fold=0 picks the first of two occurrences
    # In a gap zoneinfo reads fold=1 with the offset after the transition (an instant before
    # it) and fold=0 with the offset before (an instant after it): the transition lies between.
    before_gap = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return _transition_between(zone, before_gap, instant)


def _transition_between(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] with after's UTC offset: the end of the gap."""
    # zoneinfo does not expose its transitions, but they fall on whole seconds: bisect.
    target = after.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _qualifying_date(schedule: Schedule, day: date, step: int) -> date:
    """The nearest qualifying local date to `day`, itself included, searching forward (step=1)
    or backward (step=-1)."""
    match schedule.frequency:
        case Frequency.DAILY:
            return day
        case Frequency.WEEKLY | Frequency.BIWEEKLY:
            candidate = day + step * timedelta(days=step * (schedule.day_of_week - day.weekday()) % 7)
            return candidate if _in_schedule_week(schedule, candidate) else candidate + step * 7 * _ONE_DAY
        case Frequency.MONTHLY:
            candidate = _monthly_date(schedule, day, 0)
            return candidate if (candidate - day).days * step >= 0 else _monthly_date(schedule, day, step)
    raise NoCutoffs("MANUAL schedules have no cutoffs, hence no periods: payouts are requested by hand")


def _in_schedule_week(schedule: Schedule, day: date) -> bool:
    if schedule.frequency is Frequency.WEEKLY:
        return True
    return ((day - BIWEEKLY_ANCHOR).days // 7) % 2 == 0


def _monthly_date(schedule: Schedule, day: date, months_later: int) -> date:
    """The monthly cutoff date `months_later` months after the month of `day`."""
    year, zero_based_month = divmod(day.year * 12 + day.month - 1 + months_later, 12)
    last_day = calendar.monthrange(year, zero_based_month + 1)[1]
    return date(year, zero_based_month + 1, min(schedule.day_of_month, last_day))


def _local_date(schedule: Schedule, instant: datetime) -> date:
    return instant.astimezone(schedule.zone).date()


def _as_utc(name: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidInstant(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _parse_frequency(value: Frequency | str) -> Frequency:
    try:
        return Frequency(value)
    except ValueError:
        symbols = ", ".join(member.value for member in Frequency)
        raise InvalidSchedule(f"frequency: must be one of {symbols}, got {value!r}") from None


def _check_cutoff_time(value: object) -> None:
    if not isinstance(value, str) or not _HH_MM.fullmatch(value):
        raise InvalidSchedule(f"cutoff_time: must be 24-hour local 'HH:MM' (00:00..23:59), got {value!r}")


def _check_timezone(value: object) -> None:
    if not isinstance(value, str) or not value or value in _HOST_ZONES:
        raise InvalidSchedule(f"timezone: must be an IANA zone name such as 'Africa/Abidjan', got {value!r}")
    try:
        ZoneInfo(value)
    # Besides ZoneInfoNotFoundError, zoneinfo raises ValueError for keys that are not plain
    # relative paths and OSError for a directory such as "America".
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule(f"timezone: unknown IANA zone {value!r}") from None


def _check_day_field(schedule: Schedule, name: str, value: object, needed: bool, low: int, high: int) -> None:
    frequency = schedule.frequency.value
    if not needed and value is not None:
        raise InvalidSchedule(f"{name}: must be None for {frequency} schedules, got {value!r}")
    if needed and value is None:
        raise InvalidSchedule(f"{name}: required for {frequency} schedules")
    # bool is an int subclass; True as a day is a bug, not Tuesday.
    if needed and (type(value) is not int or not low <= value <= high):
        raise InvalidSchedule(f"{name}: must be an integer {low}..{high}, got {value!r}")


# The schedule of a payee who never set one.
DEFAULT_SCHEDULE = Schedule.create(Frequency.WEEKLY, cutoff_time="23:59", timezone="UTC", day_of_week=4)
