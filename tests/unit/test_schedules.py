"""Behaviour of ledger.schedules: cutoffs in local wall time, periods (previous, cutoff] in UTC."""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger.schedules import (
    BIWEEKLY_ANCHOR,
    DEFAULT_SCHEDULE,
    MAX_CUTOFFS_PER_QUERY,
    Frequency,
    InvalidInstant,
    InvalidSchedule,
    NoCutoffs,
    Period,
    RangeTooLarge,
    Schedule,
    cutoff_at_or_after,
    cutoff_before,
    cutoffs_between,
    period_containing,
)

ONE_MICROSECOND = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def daily(cutoff_time: str, zone: str) -> Schedule:
    return Schedule.create(Frequency.DAILY, cutoff_time=cutoff_time, timezone=zone)


def consecutive_gaps(cutoffs: list[datetime]) -> list[timedelta]:
    return [later - earlier for earlier, later in zip(cutoffs, cutoffs[1:])]


# --- the schedule value --------------------------------------------------------------------


def test_frequency_symbols_match_the_avro_enum() -> None:
    assert [member.value for member in Frequency] == ["DAILY", "WEEKLY", "BIWEEKLY", "MONTHLY", "MANUAL"]


def test_default_schedule_is_friday_23_59_utc_weekly() -> None:
    assert DEFAULT_SCHEDULE == Schedule(Frequency.WEEKLY, "23:59", "UTC", day_of_week=4)


def test_create_accepts_the_avro_symbol_and_the_schedule_is_frozen() -> None:
    schedule = Schedule.create("MONTHLY", cutoff_time="18:00", timezone="Europe/Paris", day_of_month=31)
    assert schedule.frequency is Frequency.MONTHLY
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.cutoff_time = "19:00"  # type: ignore[misc]


@pytest.mark.parametrize(
    "cutoff_time", ["24:00", "9:00", "09:60", "0900", "09:00:00", " 09:00", "", None, 900]
)
def test_bad_cutoff_time_is_refused_naming_the_field(cutoff_time: object) -> None:
    with pytest.raises(InvalidSchedule, match="cutoff_time"):
        Schedule.create(Frequency.DAILY, cutoff_time=cutoff_time, timezone="UTC")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "zone",
    ["Mars/Olympus_Mons", "", "America", "localtime", "../etc/passwd", "/usr/share/zoneinfo/UTC", None],
)
def test_unknown_timezone_is_refused_naming_the_field(zone: object) -> None:
    with pytest.raises(InvalidSchedule, match="timezone"):
        Schedule.create(Frequency.DAILY, cutoff_time="10:00", timezone=zone)  # type: ignore[arg-type]


def test_unknown_frequency_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSchedule, match="frequency"):
        Schedule.create("HOURLY", cutoff_time="10:00", timezone="UTC")
    with pytest.raises(InvalidSchedule, match="frequency"):
        Schedule("DAILY", "10:00", "UTC")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frequency", "fields", "named", "reason"),
    [
        (Frequency.WEEKLY, {}, "day_of_week", "required"),
        (Frequency.BIWEEKLY, {}, "day_of_week", "required"),
        (Frequency.MONTHLY, {}, "day_of_month", "required"),
        (Frequency.WEEKLY, {"day_of_week": 7}, "day_of_week", "0..6"),
        (Frequency.WEEKLY, {"day_of_week": -1}, "day_of_week", "0..6"),
        (Frequency.WEEKLY, {"day_of_week": True}, "day_of_week", "integer"),
        (Frequency.MONTHLY, {"day_of_month": 0}, "day_of_month", "1..31"),
        (Frequency.MONTHLY, {"day_of_month": 32}, "day_of_month", "1..31"),
        (Frequency.MONTHLY, {"day_of_month": "15"}, "day_of_month", "integer"),
        (Frequency.DAILY, {"day_of_week": 1}, "day_of_week", "must be None"),
        (Frequency.MANUAL, {"day_of_month": 1}, "day_of_month", "must be None"),
        (Frequency.WEEKLY, {"day_of_week": 1, "day_of_month": 1}, "day_of_month", "must be None"),
        (Frequency.MONTHLY, {"day_of_month": 1, "day_of_week": 1}, "day_of_week", "must be None"),
    ],
)
def test_day_fields_must_fit_the_frequency(
    frequency: Frequency, fields: dict[str, object], named: str, reason: str
) -> None:
    with pytest.raises(InvalidSchedule, match=rf"{named}.*{reason}|{reason}.*{named}"):
        Schedule.create(frequency, cutoff_time="10:00", timezone="UTC", **fields)  # type: ignore[arg-type]


def test_invalid_schedule_and_no_cutoffs_are_value_errors() -> None:
    assert issubclass(InvalidSchedule, ValueError)
    assert issubclass(NoCutoffs, ValueError)
    assert issubclass(InvalidInstant, ValueError)
    assert issubclass(RangeTooLarge, ValueError)


# --- naive and non-datetime instants -------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda s, t: cutoff_at_or_after(s, t), "instant_utc"),
        (lambda s, t: cutoff_before(s, t), "instant_utc"),
        (lambda s, t: period_containing(s, t), "instant_utc"),
        (lambda s, t: cutoffs_between(s, t, utc(2030, 1, 1)), "start_exclusive"),
        (lambda s, t: cutoffs_between(s, utc(2020, 1, 1), t), "end_inclusive"),
    ],
)
@pytest.mark.parametrize("instant", [datetime(2026, 1, 1, 12), date(2026, 1, 1), "2026-01-01T12:00Z"])
def test_naive_or_non_datetime_instants_are_refused_naming_the_parameter(
    call, parameter: str, instant: object  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(InvalidInstant, match=parameter):
        call(DEFAULT_SCHEDULE, instant)


def test_aware_non_utc_instants_are_accepted_and_answers_are_utc() -> None:
    schedule = daily("23:59", "UTC")
    in_tokyo = datetime(2026, 11, 23, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 2026-11-22T23:00Z
    cutoff = cutoff_at_or_after(schedule, in_tokyo)
    assert cutoff == utc(2026, 11, 22, 23, 59)
    assert cutoff.tzinfo is UTC
    assert cutoff_at_or_after(schedule, in_tokyo.astimezone(timezone(timedelta(hours=-3)))) == cutoff


# --- manual --------------------------------------------------------------------------------


def test_manual_schedules_have_no_cutoffs() -> None:
    manual = Schedule.create(Frequency.MANUAL, cutoff_time="00:00", timezone="UTC")
    assert cutoffs_between(manual, utc(2020, 1, 1), utc(2030, 1, 1)) == []
    for query in (period_containing, cutoff_at_or_after, cutoff_before):
        with pytest.raises(NoCutoffs, match="MANUAL"):
            query(manual, utc(2026, 1, 1))


# --- the brief's examples -------------------------------------------------------------------


def test_daily_abidjan_cutoff_instant_belongs_to_the_closing_period() -> None:
    schedule = daily("23:59", "Africa/Abidjan")
    closing = period_containing(schedule, utc(2026, 11, 22, 10))
    assert closing == Period(utc(2026, 11, 21, 23, 59), utc(2026, 11, 22, 23, 59), "2026-11-22")
    assert period_containing(schedule, utc(2026, 11, 22, 23, 59)) == closing
    after = period_containing(schedule, utc(2026, 11, 22, 23, 59, 0, 1))
    assert after.end_utc == utc(2026, 11, 23, 23, 59)
    assert after.start_utc == closing.end_utc
    assert after.period_id == "2026-11-23"


def test_daily_00_30_new_york_stays_00_30_local_across_both_transitions() -> None:
    schedule = daily("00:30", "America/New_York")
    new_york = ZoneInfo("America/New_York")
    spring = cutoffs_between(schedule, utc(2026, 3, 5), utc(2026, 3, 12))
    autumn = cutoffs_between(schedule, utc(2026, 10, 29), utc(2026, 11, 5))
    for cutoff in spring + autumn:
        assert cutoff.astimezone(new_york).strftime("%H:%M") == "00:30"
    spring_days = [c.astimezone(new_york).date() for c in spring]
    autumn_days = [c.astimezone(new_york).date() for c in autumn]
    # The day that loses an hour is 03-08, so the cutoff on 03-09 comes 23 h after 03-08's.
    assert consecutive_gaps(spring) == [
        23 * HOUR if later == date(2026, 3, 9) else 24 * HOUR for later in spring_days[1:]
    ]
    assert consecutive_gaps(autumn) == [
        25 * HOUR if later == date(2026, 11, 2) else 24 * HOUR for later in autumn_days[1:]
    ]
    assert 23 * HOUR in consecutive_gaps(spring) and 25 * HOUR in consecutive_gaps(autumn)


def test_nonexistent_wall_time_resolves_to_the_end_of_the_gap() -> None:
    schedule = daily("02:30", "America/New_York")
    cutoff = cutoff_at_or_after(schedule, utc(2026, 3, 8))
    assert cutoff == utc(2026, 3, 8, 7, 0)
    assert cutoff.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M %Z") == "03:00 EDT"
    assert period_containing(schedule, cutoff).period_id == "2026-03-08"


def test_ambiguous_wall_time_resolves_to_the_first_occurrence() -> None:
    schedule = daily("01:30", "America/New_York")
    cutoff = cutoff_at_or_after(schedule, utc(2026, 11, 1))
    assert cutoff == utc(2026, 11, 1, 5, 30)
    assert cutoff.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M %Z") == "01:30 EDT"
    # The second 01:30 (06:30Z) is inside the next period, not a cutoff of its own.
    assert period_containing(schedule, utc(2026, 11, 1, 6, 30)).period_id == "2026-11-02"


@pytest.mark.parametrize(
    ("zone", "cutoff_time", "day", "expected"),
    [
        # Lord Howe Island moves its clocks by 30 minutes: 02:00 -> 02:30 (+10:30 -> +11:00).
        ("Australia/Lord_Howe", "02:10", date(2026, 10, 4), utc(2026, 10, 3, 15, 30)),
        # Chatham Islands: 02:45 -> 03:45 (+12:45 -> +13:45).
        ("Pacific/Chatham", "03:00", date(2026, 9, 27), utc(2026, 9, 26, 14, 0)),
        ("Europe/Paris", "02:59", date(2026, 3, 29), utc(2026, 3, 29, 1, 0)),
    ],
)
def test_gap_end_in_zones_with_unusual_transitions(
    zone: str, cutoff_time: str, day: date, expected: datetime
) -> None:
    schedule = daily(cutoff_time, zone)
    cutoff = cutoff_at_or_after(schedule, expected - 2 * HOUR)
    assert cutoff == expected
    assert cutoff.astimezone(ZoneInfo(zone)).date() == day
    just_before = cutoff - ONE_MICROSECOND
    assert cutoff.astimezone(ZoneInfo(zone)).utcoffset() > just_before.astimezone(ZoneInfo(zone)).utcoffset()
    assert period_containing(schedule, cutoff).period_id == day.isoformat()


def test_ambiguous_wall_time_in_a_30_minute_fall_back() -> None:
    # Lord Howe Island falls back 02:00 -> 01:30 (+11:00 -> +10:30) on 2026-04-05.
    schedule = daily("01:45", "Australia/Lord_Howe")
    cutoff = cutoff_at_or_after(schedule, utc(2026, 4, 4))
    assert cutoff == utc(2026, 4, 4, 14, 45)
    assert cutoff.astimezone(ZoneInfo("Australia/Lord_Howe")).utcoffset() == timedelta(hours=11)


def test_a_skipped_calendar_day_does_not_make_two_cutoffs_at_one_instant() -> None:
    # Samoa skipped 2011-12-30: midnight on the 30th (nonexistent) and on the 31st are one instant.
    schedule = daily("00:00", "Pacific/Apia")
    cutoffs = cutoffs_between(schedule, utc(2011, 12, 28), utc(2012, 1, 2))
    assert cutoffs == [utc(2011, 12, day, 10) for day in (28, 29, 30, 31)] + [utc(2012, 1, 1, 10)]
    assert [period_containing(schedule, c).period_id for c in cutoffs] == [
        "2011-12-28", "2011-12-29", "2011-12-30", "2012-01-01", "2012-01-02"
    ]
    assert cutoff_before(schedule, utc(2011, 12, 31, 10)) == utc(2011, 12, 30, 10)


@pytest.mark.parametrize(
    ("month", "day"), [(1, 31), (2, 28), (3, 31), (4, 30), (6, 30), (12, 31)]
)
def test_monthly_day_31_is_clamped_to_the_month_end(month: int, day: int) -> None:
    schedule = Schedule.create(
        Frequency.MONTHLY, cutoff_time="18:00", timezone="Europe/Paris", day_of_month=31
    )
    paris = ZoneInfo("Europe/Paris")
    cutoff = cutoff_at_or_after(schedule, datetime(2026, month, 1, tzinfo=paris))
    assert cutoff.astimezone(paris).replace(tzinfo=None) == datetime(2026, month, day, 18, 0)
    assert period_containing(schedule, cutoff).period_id == f"2026-{month:02d}-{day:02d}"


def test_monthly_leap_february_and_a_full_year() -> None:
    schedule = Schedule.create(
        Frequency.MONTHLY, cutoff_time="18:00", timezone="Europe/Paris", day_of_month=30
    )
    cutoffs = cutoffs_between(schedule, utc(2027, 12, 31), utc(2028, 12, 31))
    paris = ZoneInfo("Europe/Paris")
    assert [c.astimezone(paris).day for c in cutoffs] == [30, 29, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30]


def test_weekly_friday_17_00_tokyo_is_seven_days_apart_and_a_tokyo_friday() -> None:
    schedule = Schedule.create(Frequency.WEEKLY, cutoff_time="17:00", timezone="Asia/Tokyo", day_of_week=4)
    cutoffs = cutoffs_between(schedule, utc(2026, 1, 1), utc(2026, 12, 31))
    assert len(cutoffs) == 52
    assert set(consecutive_gaps(cutoffs)) == {7 * DAY}
    for cutoff in cutoffs:
        assert cutoff.astimezone(ZoneInfo("Asia/Tokyo")).weekday() == 4
        assert (cutoff.weekday(), cutoff.hour) == (4, 8)  # Friday 08:00Z


def test_weekly_cutoff_is_a_local_friday_even_when_it_is_thursday_in_utc() -> None:
    schedule = Schedule.create(Frequency.WEEKLY, cutoff_time="05:00", timezone="Asia/Tokyo", day_of_week=4)
    cutoff = cutoff_at_or_after(schedule, utc(2026, 11, 16))
    assert cutoff == utc(2026, 11, 19, 20, 0)  # Thursday in UTC
    assert cutoff.astimezone(ZoneInfo("Asia/Tokyo")).weekday() == 4
    assert period_containing(schedule, cutoff).period_id == "2026-11-20"


def test_biweekly_is_fourteen_days_apart_anchored_on_even_weeks_from_1970_01_05() -> None:
    schedule = Schedule.create(
        Frequency.BIWEEKLY, cutoff_time="12:00", timezone="Asia/Kolkata", day_of_week=2
    )
    cutoffs = cutoffs_between(schedule, utc(2026, 1, 1), utc(2027, 1, 1))
    assert set(consecutive_gaps(cutoffs)) == {14 * DAY}
    for cutoff in cutoffs:
        local_day = cutoff.astimezone(ZoneInfo("Asia/Kolkata")).date()
        assert local_day.weekday() == 2
        assert ((local_day - BIWEEKLY_ANCHOR).days // 7) % 2 == 0
    # Week 0 is the anchor week itself: its Wednesday is a cutoff.
    assert period_containing(schedule, utc(1970, 1, 5)).period_id == "1970-01-07"


def test_biweekly_is_the_same_whatever_the_starting_point() -> None:
    schedule = Schedule.create(Frequency.BIWEEKLY, cutoff_time="09:00", timezone="UTC", day_of_week=0)
    reference = set(cutoffs_between(schedule, utc(2025, 1, 1), utc(2028, 1, 1)))
    for offset_days in range(0, 30):
        start = utc(2026, 1, 1) + offset_days * DAY
        window = cutoffs_between(schedule, start, start + 180 * DAY)
        assert set(window) <= reference
        assert cutoff_at_or_after(schedule, start) in reference
        assert cutoff_before(schedule, start) in reference


def test_period_bounds_and_chaining() -> None:
    schedule = Schedule.create(Frequency.WEEKLY, cutoff_time="23:59", timezone="UTC", day_of_week=4)
    t = utc(2026, 11, 18, 12)
    period = period_containing(schedule, t)
    assert period.start_utc < t <= period.end_utc and period.contains(t)
    assert period_containing(schedule, period.end_utc) == period
    assert not period.contains(period.start_utc)
    following = period_containing(schedule, period.end_utc + ONE_MICROSECOND)
    assert following.start_utc == period.end_utc
    assert following.period_id != period.period_id
    assert cutoff_before(schedule, period.end_utc) == period.start_utc
    assert cutoff_at_or_after(schedule, period.end_utc) == period.end_utc
    assert cutoff_before(schedule, period.end_utc + ONE_MICROSECOND) == period.end_utc


def test_cutoffs_between_is_half_open() -> None:
    schedule = daily("12:00", "UTC")
    assert cutoffs_between(schedule, utc(2026, 1, 1, 12), utc(2026, 1, 3, 12)) == [
        utc(2026, 1, 2, 12),
        utc(2026, 1, 3, 12),
    ]
    assert cutoffs_between(schedule, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12)) == []


def test_cutoffs_between_refuses_a_reversed_range() -> None:
    with pytest.raises(ValueError, match="after"):
        cutoffs_between(DEFAULT_SCHEDULE, utc(2026, 2, 1), utc(2026, 1, 1))


def test_cutoffs_between_is_bounded() -> None:
    schedule = daily("12:00", "UTC")
    start = utc(2000, 1, 1)
    exactly_the_cap = cutoffs_between(schedule, start, start + MAX_CUTOFFS_PER_QUERY * DAY)
    assert len(exactly_the_cap) == MAX_CUTOFFS_PER_QUERY
    with pytest.raises(RangeTooLarge, match="10000"):
        cutoffs_between(schedule, start, start + (MAX_CUTOFFS_PER_QUERY + 1) * DAY)
    with pytest.raises(RangeTooLarge):
        cutoffs_between(schedule, utc(1900, 1, 1), utc(2900, 1, 1))


# --- properties -----------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Africa/Abidjan",
    "America/New_York",
    "Europe/Paris",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
]
# Times that hit the transitions of the zones above often, plus any minute of the day.
AWKWARD_TIMES = ["00:00", "00:30", "01:30", "02:00", "02:10", "02:30", "02:45", "03:00", "03:30", "23:59"]
CUTOFF_TIMES = st.one_of(
    st.sampled_from(AWKWARD_TIMES),
    st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59)),
)


ANY_INSTANT = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
)


@functools.cache
def transitions(zone: str) -> tuple[datetime, ...]:
    """Noon UTC on each day, 2020-2035, after which the zone's offset differs from the day before."""
    tz = ZoneInfo(zone)
    noons = [utc(2020, 1, 1, 12) + n * DAY for n in range(16 * 366)]
    offsets = [noon.astimezone(tz).utcoffset() for noon in noons]
    return tuple(noon for noon, before, after in zip(noons[1:], offsets, offsets[1:]) if before != after)


@st.composite
def schedules_and_instants(draw: st.DrawFn) -> tuple[Schedule, datetime]:
    """A schedule and an instant; half the instants are drawn within days of a DST change of the
    schedule's zone, since a uniform instant would meet a gap or an overlap once in a few hundred."""
    frequency = draw(st.sampled_from([f for f in Frequency if f is not Frequency.MANUAL]))
    weekly = frequency in (Frequency.WEEKLY, Frequency.BIWEEKLY)
    zone = draw(st.sampled_from(ZONES))
    schedule = Schedule.create(
        frequency,
        cutoff_time=draw(CUTOFF_TIMES),
        timezone=zone,
        day_of_week=draw(st.integers(0, 6)) if weekly else None,
        day_of_month=draw(st.integers(1, 31)) if frequency is Frequency.MONTHLY else None,
    )
    if transitions(zone) and draw(st.booleans()):
        change = draw(st.sampled_from(transitions(zone)))
        return schedule, change + draw(st.timedeltas(min_value=-4 * DAY, max_value=2 * DAY))
    return schedule, draw(ANY_INSTANT)


@settings(max_examples=200, deadline=None)
@given(schedules_and_instants())
def test_an_instant_lies_in_its_period_and_periods_chain(case: tuple[Schedule, datetime]) -> None:
    schedule, t = case
    period = period_containing(schedule, t)
    assert period.start_utc < t <= period.end_utc
    assert period_containing(schedule, period.end_utc) == period
    following = period_containing(schedule, period.end_utc + ONE_MICROSECOND)
    assert following.start_utc == period.end_utc
    assert following.period_id > period.period_id
    assert cutoff_at_or_after(schedule, t) == period.end_utc
    assert cutoff_before(schedule, t) < t


@settings(max_examples=100, deadline=None)
@given(schedules_and_instants(), st.integers(min_value=0, max_value=120))
def test_cutoffs_between_equals_the_chain_of_next_cutoffs(case: tuple[Schedule, datetime], days: int) -> None:
    schedule, a = case
    b = a + days * DAY
    chain: list[datetime] = []
    cutoff = cutoff_at_or_after(schedule, a + ONE_MICROSECOND)
    while cutoff <= b:
        chain.append(cutoff)
        cutoff = cutoff_at_or_after(schedule, cutoff + ONE_MICROSECOND)
    assert cutoffs_between(schedule, a, b) == chain
    assert all(earlier < later for earlier, later in zip(chain, chain[1:]))


def assert_wall_time_exact_unless_in_a_gap(schedule: Schedule, cutoff: datetime) -> None:
    zone = ZoneInfo(schedule.timezone)
    local = cutoff.astimezone(zone)
    if local.strftime("%H:%M") == schedule.cutoff_time:
        assert local.fold == 0, "a repeated wall time must resolve to its first occurrence"
        return
    event("cutoff wall time in a gap")
    # Otherwise the cutoff is a spring-forward transition (the offset grows at that very instant)
    # and the wall time lies in the skipped interval, so the clock shows a later time.
    gap = local.utcoffset() - (cutoff - ONE_MICROSECOND).astimezone(zone).utcoffset()
    assert gap > timedelta(0)
    wall_after_gap = local.replace(tzinfo=None)
    nominal = [datetime.combine(local.date() - back * DAY, schedule.wall_time) for back in (0, 1)]
    assert any(wall_after_gap - gap <= wall < wall_after_gap for wall in nominal)


@settings(max_examples=200, deadline=None)
@given(schedules_and_instants())
def test_cutoff_wall_time_is_exact_unless_it_falls_in_a_gap(case: tuple[Schedule, datetime]) -> None:
    schedule, t = case
    assert_wall_time_exact_unless_in_a_gap(schedule, cutoff_at_or_after(schedule, t))


DST_ZONES = [zone for zone in ZONES if transitions(zone)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DST_ZONES), CUTOFF_TIMES, st.data())
def test_daily_cutoffs_around_every_kind_of_change(zone: str, cutoff_time: str, data: st.DataObject) -> None:
    # Every cutoff from two days before a change to a day after it: the change day's cutoff falls in
    # the gap or the overlap whenever cutoff_time is in it.
    schedule = daily(cutoff_time, zone)
    change = data.draw(st.sampled_from(transitions(zone)))
    cutoffs = cutoffs_between(schedule, change - 3 * DAY, change + DAY)
    assert len(cutoffs) >= 3
    for cutoff in cutoffs:
        assert_wall_time_exact_unless_in_a_gap(schedule, cutoff)
    for earlier, later in zip(cutoffs, cutoffs[1:]):
        assert timedelta(hours=22) <= later - earlier <= timedelta(hours=26)
        period = period_containing(schedule, later)
        assert (period.start_utc, period.end_utc) == (earlier, later)
