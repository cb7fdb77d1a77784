"""Schedules without a broker: the cron parser, next and latest ticks across
leap days, month ends and DST changes, catch-up selection, tick job ids and
the validation of a queue's ``schedule`` list.

Every expected tick below is written out by hand, as UTC, from the calendar and
the DST rules of 2026: Europe/Berlin springs forward at 01:00 UTC on March 29
(02:00 CET -> 03:00 CEST) and falls back at 01:00 UTC on October 25 (03:00 CEST
-> 02:00 CET); America/New_York springs forward at 07:00 UTC on March 8
(02:00 EST -> 03:00 EDT) and falls back at 06:00 UTC on November 1 (02:00 EDT
-> 01:00 EST).  2026-01-01 is a Thursday.
"""

import calendar
import json
import re
import sys
import time

import pytest

import mpqueue


def utc(text):
    """Epoch seconds of 'YYYY-MM-DD HH:MM[:SS]' read as UTC."""
    fmt = '%Y-%m-%d %H:%M:%S' if text.count(':') == 2 else '%Y-%m-%d %H:%M'
    return calendar.timegm(time.strptime(text, fmt))


def cron(expression, timezone='UTC', catch_up='latest'):
    return mpqueue._Schedule(cron=expression, timezone=timezone, catch_up=catch_up)


def every(seconds, catch_up='latest'):
    return mpqueue._Schedule(every=seconds, catch_up=catch_up)


# -- next tick -----------------------------------------------------------------

NEXT_TICKS = [
    # expression, time zone, after (UTC), first tick strictly after it (UTC)
    ('* * * * *', 'UTC', '2026-01-01 00:00', '2026-01-01 00:01'),
    ('* * * * *', 'UTC', '2026-01-01 00:00:30', '2026-01-01 00:01'),
    ('0 3 * * *', 'UTC', '2026-01-01 02:59:59', '2026-01-01 03:00'),
    ('0 3 * * *', 'UTC', '2026-01-01 03:00', '2026-01-02 03:00'),
    # lists, ranges, steps
    ('0,30 * * * *', 'UTC', '2026-01-01 00:10', '2026-01-01 00:30'),
    ('0,30 * * * *', 'UTC', '2026-01-01 00:30', '2026-01-01 01:00'),
    ('0 9-17 * * *', 'UTC', '2026-01-01 08:59', '2026-01-01 09:00'),
    ('0 9-17 * * *', 'UTC', '2026-01-01 17:00', '2026-01-02 09:00'),
    ('*/15 * * * *', 'UTC', '2026-01-01 00:46', '2026-01-01 01:00'),
    ('1-30/5 * * * *', 'UTC', '2026-01-01 00:02', '2026-01-01 00:06'),
    ('1-30/5 * * * *', 'UTC', '2026-01-01 00:26', '2026-01-01 01:01'),
    ('5/20 * * * *', 'UTC', '2026-01-01 00:06', '2026-01-01 00:25'),
    ('5/20 * * * *', 'UTC', '2026-01-01 00:45', '2026-01-01 01:05'),
    ('0 0 1 */3 *', 'UTC', '2026-01-01 00:00', '2026-04-01 00:00'),
    ('0 0 * * 1-5', 'UTC', '2026-01-02 00:00', '2026-01-05 00:00'),
    # names, any case; 0 and 7 are Sunday
    ('0 12 * * mon,WED', 'UTC', '2026-01-01 00:00', '2026-01-05 12:00'),
    ('0 12 * * mon,WED', 'UTC', '2026-01-05 12:00', '2026-01-07 12:00'),
    ('0 0 * * 7', 'UTC', '2026-01-01 00:00', '2026-01-04 00:00'),
    ('0 0 * * 0', 'UTC', '2026-01-01 00:00', '2026-01-04 00:00'),
    ('0 0 * * Sun', 'UTC', '2026-01-01 00:00', '2026-01-04 00:00'),
    ('0 0 * * 5-7', 'UTC', '2026-01-01 00:00', '2026-01-02 00:00'),
    ('0 0 * * 5-7', 'UTC', '2026-01-03 00:00', '2026-01-04 00:00'),
    ('0 0 1 jan,JUL *', 'UTC', '2026-01-01 00:00', '2026-07-01 00:00'),
    ('0 0 1 Mar-May *', 'UTC', '2026-05-01 00:00', '2027-03-01 00:00'),
    # aliases
    ('@hourly', 'UTC', '2026-01-01 00:00', '2026-01-01 01:00'),
    ('@daily', 'UTC', '2026-01-01 00:00', '2026-01-02 00:00'),
    ('@midnight', 'UTC', '2026-01-01 12:00', '2026-01-02 00:00'),
    ('@weekly', 'UTC', '2026-01-01 00:00', '2026-01-04 00:00'),
    ('@monthly', 'UTC', '2026-01-01 00:00', '2026-02-01 00:00'),
    ('@yearly', 'UTC', '2026-01-01 00:00', '2027-01-01 00:00'),
    ('@ANNUALLY', 'UTC', '2026-06-15 00:00', '2027-01-01 00:00'),
    # both day fields restricted: either matches (the 13th or a Friday)
    ('0 0 13 * 5', 'UTC', '2026-01-01 00:00', '2026-01-02 00:00'),
    ('0 0 13 * 5', 'UTC', '2026-01-09 00:00', '2026-01-13 00:00'),
    ('0 0 13 * 5', 'UTC', '2026-01-13 00:00', '2026-01-16 00:00'),
    # day-of-month starts with '*': both must match (an odd day that is a Friday)
    ('0 0 */2 * 5', 'UTC', '2026-01-01 00:00', '2026-01-09 00:00'),
    # leap days: 2100 is not a leap year
    ('0 0 29 2 *', 'UTC', '2026-01-01 00:00', '2028-02-29 00:00'),
    ('0 0 29 2 *', 'UTC', '2028-02-29 00:00', '2032-02-29 00:00'),
    ('0 0 29 2 *', 'UTC', '2096-03-01 00:00', '2104-02-29 00:00'),
    ('0 0 29 2 1', 'UTC', '2026-01-01 00:00', '2026-02-02 00:00'),   # or any Monday in February
    # month ends
    ('0 0 31 * *', 'UTC', '2026-01-31 00:00', '2026-03-31 00:00'),
    ('0 0 31 * *', 'UTC', '2026-03-31 00:00', '2026-05-31 00:00'),
    ('0 0 31 * *', 'UTC', '2026-07-31 00:00', '2026-08-31 00:00'),
    ('0 0 30 * *', 'UTC', '2026-01-30 00:00', '2026-03-30 00:00'),
    ('59 23 31 12 *', 'UTC', '2026-01-01 00:00', '2026-12-31 23:59'),
    # fixed offsets
    ('0 9 * * *', 'Asia/Tokyo', '2026-01-01 00:00', '2026-01-02 00:00'),
    ('0 0 * * *', 'Asia/Kolkata', '2026-01-01 00:00', '2026-01-01 18:30'),
    # Berlin, spring: 02:30 does not exist on March 29 and runs once at 03:00 CEST
    ('30 2 * * *', 'Europe/Berlin', '2026-03-28 02:00', '2026-03-29 01:00'),
    ('30 2 * * *', 'Europe/Berlin', '2026-03-29 01:00', '2026-03-30 00:30'),
    ('*/15 2 * * *', 'Europe/Berlin', '2026-03-29 00:00', '2026-03-29 01:00'),
    ('*/15 2 * * *', 'Europe/Berlin', '2026-03-29 01:00', '2026-03-30 00:00'),
    ('30 3 * * *', 'Europe/Berlin', '2026-03-29 00:00', '2026-03-29 01:30'),
    # Berlin, autumn: 02:30 happens twice on October 25 and runs at the first (CEST)
    ('30 2 * * *', 'Europe/Berlin', '2026-10-24 12:00', '2026-10-25 00:30'),
    ('30 2 * * *', 'Europe/Berlin', '2026-10-25 00:30', '2026-10-26 01:30'),
    ('30 2 * * *', 'Europe/Berlin', '2026-10-25 01:15', '2026-10-26 01:30'),
    ('0 3 * * *', 'Europe/Berlin', '2026-10-25 00:00', '2026-10-25 02:00'),
    # New York, spring: 02:30 does not exist on March 8 and runs once at 03:00 EDT
    ('30 2 * * *', 'America/New_York', '2026-03-08 05:00', '2026-03-08 07:00'),
    ('30 2 * * *', 'America/New_York', '2026-03-08 07:00', '2026-03-09 06:30'),
    ('0 2 * * *', 'America/New_York', '2026-03-07 12:00', '2026-03-08 07:00'),
    # New York, autumn: 01:30 happens twice on November 1 and runs at the first (EDT)
    ('30 1 * * *', 'America/New_York', '2026-11-01 04:00', '2026-11-01 05:30'),
    ('30 1 * * *', 'America/New_York', '2026-11-01 05:30', '2026-11-02 06:30'),
    ('30 1 * * *', 'America/New_York', '2026-11-01 06:10', '2026-11-02 06:30'),
    ('*/30 * * * *', 'America/New_York', '2026-11-01 06:10', '2026-11-01 07:00'),
]


@pytest.mark.parametrize('expression, timezone, after, expected', NEXT_TICKS)
def test_next_tick(expression, timezone, after, expected):
    assert cron(expression, timezone).next_after(utc(after)) == utc(expected)


LATEST_TICKS = [
    # expression, time zone, now (UTC), last tick at or before it (UTC)
    ('*/15 * * * *', 'UTC', '2026-01-01 00:14:59', '2026-01-01 00:00'),
    ('*/15 * * * *', 'UTC', '2026-01-01 00:15', '2026-01-01 00:15'),
    ('0 0 29 2 *', 'UTC', '2027-01-01 00:00', '2024-02-29 00:00'),
    ('0 0 31 * *', 'UTC', '2026-05-01 00:00', '2026-03-31 00:00'),
    ('0 0 13 * 5', 'UTC', '2026-01-15 00:00', '2026-01-13 00:00'),
    ('30 2 * * *', 'Europe/Berlin', '2026-03-29 00:59', '2026-03-28 01:30'),
    ('30 2 * * *', 'Europe/Berlin', '2026-03-29 01:00', '2026-03-29 01:00'),
    # 02:15 CET, in the repeated hour: its 02:30 CEST is already past
    ('30 2 * * *', 'Europe/Berlin', '2026-10-25 01:15', '2026-10-25 00:30'),
    ('30 1 * * *', 'America/New_York', '2026-11-01 06:45', '2026-11-01 05:30'),
]


@pytest.mark.parametrize('expression, timezone, now, expected', LATEST_TICKS)
def test_latest_tick(expression, timezone, now, expected):
    assert cron(expression, timezone).latest(utc(now)) == utc(expected)


HOURLY_ACROSS_DST = [
    # Spring: 02:00 does not exist and is the instant of 03:00, so the ticks
    # stay one real hour apart.  Autumn: 02:00 (Berlin) / 01:00 (New York)
    # happens twice and runs once, so one real hour has no tick.
    ('Europe/Berlin', '2026-03-28 23:30', ['2026-03-29 00:00', '2026-03-29 01:00',
                                           '2026-03-29 02:00', '2026-03-29 03:00']),
    ('Europe/Berlin', '2026-10-24 23:30', ['2026-10-25 00:00', '2026-10-25 02:00',
                                           '2026-10-25 03:00', '2026-10-25 04:00']),
    ('America/New_York', '2026-03-08 05:30', ['2026-03-08 06:00', '2026-03-08 07:00',
                                              '2026-03-08 08:00', '2026-03-08 09:00']),
    ('America/New_York', '2026-11-01 04:30', ['2026-11-01 05:00', '2026-11-01 07:00',
                                              '2026-11-01 08:00', '2026-11-01 09:00']),
]


@pytest.mark.parametrize('timezone, start, expected', HOURLY_ACROSS_DST)
def test_hourly_across_dst(timezone, start, expected):
    schedule = cron('0 * * * *', timezone)
    ticks, tick = [], utc(start)
    for _ in expected:
        tick = schedule.next_after(tick)
        ticks.append(tick)
    assert ticks == [utc(t) for t in expected]


@pytest.mark.parametrize('local_day_start, local_day_end, count', [
    ('2026-03-28 23:00', '2026-03-29 22:00', 23),   # Berlin March 29: 23 real hours
    ('2026-10-24 22:00', '2026-10-25 23:00', 24),   # Berlin October 25: 25 real hours
])
def test_hourly_ticks_per_dst_day(local_day_start, local_day_end, count):
    schedule = cron('0 * * * *', 'Europe/Berlin')
    ticks, tick = [], schedule.next_after(utc(local_day_start) - 1)
    while tick < utc(local_day_end):
        ticks.append(tick)
        tick = schedule.next_after(tick)
    assert len(ticks) == count
    assert len(set(ticks)) == count


def test_every_ticks_at_multiples_of_the_period():
    assert every(30).next_after(utc('2026-01-01 00:00')) == utc('2026-01-01 00:00:30')
    assert every(30).next_after(utc('2026-01-01 00:00:01')) == utc('2026-01-01 00:00:30')
    assert every(30).latest(utc('2026-01-01 00:00:59')) == utc('2026-01-01 00:00:30')
    assert every(7).next_after(100) == 105
    assert every(7).latest(104.999) == 98
    assert every(7).latest(105) == 105
    assert every(86400).next_after(utc('2026-03-29 00:30')) == utc('2026-03-30 00:00')
    assert every(1.5).next_after(10) == 10.5
    assert every(1.5).next_after(10.5) == 12


def test_expression_and_fingerprint():
    assert cron('0 3 * * *').expression == '0 3 * * *'
    assert cron('@daily').expression == '@daily'
    assert every(30).expression == 'every 30s'
    assert every(2.5).expression == 'every 2.5s'
    fingerprints = {cron('0 3 * * *').fingerprint, cron('0 4 * * *').fingerprint,
                    cron('0 3 * * *', 'Europe/Berlin').fingerprint, every(30).fingerprint,
                    every(31).fingerprint}
    assert len(fingerprints) == 5
    assert cron('0 3 * * *').fingerprint == cron('0 3 * * *', catch_up='all').fingerprint


def test_next_tick_is_fast():
    hard = [cron('0 0 29 2 *'), cron('0 0 29 2 1'), cron('59 23 31 12 *'),
            cron('*/15 2 * * *', 'Europe/Berlin'), cron('30 1 * * *', 'America/New_York'),
            cron('0 0 31 * *', 'Europe/Berlin')]
    start = utc('2026-01-01 00:00')
    for schedule in hard:
        began = time.perf_counter()
        for i in range(1000):
            schedule.next_after(start + i * 3 * 86400)
            schedule.latest(start + i * 3 * 86400)
        assert time.perf_counter() - began < 1.0, schedule.expression


# -- catch-up ------------------------------------------------------------------

def test_first_check_pushes_nothing_for_the_past():
    for policy in ('latest', 'all', 'none'):
        assert every(60, policy).due(None, 1000.5) == ([], 960, 0)
        assert cron('0 3 * * *', catch_up=policy).due(None, utc('2026-01-02 12:00')) == \
            ([], utc('2026-01-02 03:00'), 0)


def test_nothing_due_keeps_last():
    for policy in ('latest', 'all', 'none'):
        assert every(60, policy).due(960, 1019.999) == ([], 960, 0)
        # a last tick ahead of the clock is never moved back
        assert every(60, policy).due(1300, 1310) == ([], 1300, 0)


def test_catch_up_latest():
    assert every(60).due(960, 1020) == ([1020], 1020, 0)
    assert every(60).due(960, 1319) == ([1260], 1260, 0)
    nightly = cron('0 3 * * *', 'Europe/Berlin')
    assert nightly.due(utc('2026-01-01 02:00'), utc('2026-03-30 12:00')) == \
        ([utc('2026-03-30 01:00')], utc('2026-03-30 01:00'), 0)


def test_catch_up_all():
    assert every(60, 'all').due(960, 1319) == ([1020, 1080, 1140, 1200, 1260], 1260, 0)
    # exactly 100 missed: all of them; 101: the newest 100
    assert every(60, 'all').due(0, 6000) == ([60 * k for k in range(1, 101)], 6000, 0)
    assert every(60, 'all').due(0, 6060) == ([60 * k for k in range(2, 102)], 6060, 1)
    assert every(60, 'all').due(0, 9005) == ([60 * k for k in range(51, 151)], 9000, 50)


def test_catch_up_all_cron_cap():
    # 180 minutes missed, 00:01 .. 03:00: the newest 100 are 01:21 .. 03:00
    expected = [utc('2026-01-01 01:21') + 60 * k for k in range(100)]
    assert expected[-1] == utc('2026-01-01 03:00')
    schedule = cron('* * * * *', catch_up='all')
    assert schedule.due(utc('2026-01-01 00:00'), utc('2026-01-01 03:00:30')) == \
        (expected, utc('2026-01-01 03:00'), 80)


def test_catch_up_all_across_dst():
    spring = cron('30 2 * * *', 'Europe/Berlin', 'all')
    assert spring.due(utc('2026-03-27 01:30'), utc('2026-03-30 12:00')) == (
        [utc('2026-03-28 01:30'), utc('2026-03-29 01:00'), utc('2026-03-30 00:30')],
        utc('2026-03-30 00:30'), 0)
    autumn = cron('*/30 1 * * *', 'America/New_York', 'all')
    assert autumn.due(utc('2026-10-31 12:00'), utc('2026-11-01 12:00')) == (
        [utc('2026-11-01 05:00'), utc('2026-11-01 05:30')], utc('2026-11-01 05:30'), 0)


def test_catch_up_none():
    hourly = every(3600, 'none')
    assert mpqueue.SCHEDULE_GRACE == 60
    assert hourly.due(0, 3600 + 59) == ([3600], 3600, 0)
    assert hourly.due(0, 3600 + 60) == ([3600], 3600, 0)
    assert hourly.due(0, 3600 + 61) == ([], 3600, 0)
    # down over two ticks, back 5 s after the second: only that one
    assert hourly.due(0, 7205) == ([7200], 7200, 0)
    # the grace is at most half the period: a tick half a period old is missed
    short = every(10, 'none')
    assert short.due(0, 15) == ([10], 10, 0)
    assert short.due(0, 15.1) == ([], 10, 0)
    nightly = cron('0 3 * * *', catch_up='none')
    assert nightly.due(utc('2026-01-01 03:00'), utc('2026-01-05 12:00')) == \
        ([], utc('2026-01-05 03:00'), 0)


# -- job ids -------------------------------------------------------------------

def test_tick_job_id():
    tick = utc('2026-01-01 03:00')
    job_id = mpqueue._schedule_job_id('reports', 'nightly', tick)
    assert re.match(r'^[0-9a-f]{22}$', job_id)
    assert len(job_id) == len(mpqueue._new_id())
    assert job_id[:12] == '%012x' % (tick * 1000)
    assert job_id == mpqueue._schedule_job_id('reports', 'nightly', tick)
    later = mpqueue._schedule_job_id('reports', 'nightly', tick + 60)
    assert later > job_id and later[12:] == job_id[12:]
    others = {mpqueue._schedule_job_id('reports', 'weekly', tick),
              mpqueue._schedule_job_id('billing', 'nightly', tick),
              mpqueue._schedule_job_id('a:b', 'c', tick),
              mpqueue._schedule_job_id('a', 'b:c', tick)}
    assert len(others) == 4 and job_id not in others
    assert mpqueue._schedule_job_id('q', 's', 10.5)[:12] == '%012x' % 10500


# -- configuration -------------------------------------------------------------

def ping():
    pass


@pytest.fixture(autouse=True)
def _restore_config(monkeypatch):
    monkeypatch.setattr(mpqueue, '_config', None)


def configure(*schedules, queue=0):
    queues = [{'name': 'first'}, {'name': 'reports'}]
    queues[queue]['schedule'] = list(schedules)
    return mpqueue.configure({'basics': {'name': 'sched-test',
                                         'driver': mpqueue.RedisDriver(prefix='mpqtest')},
                              'queue': queues})


def config_error(*schedules, queue=0):
    with pytest.raises(mpqueue.ConfigError) as info:
        configure(*schedules, queue=queue)
    message = str(info.value)
    assert '\n' not in message, message
    return message


def test_normalized_schedules():
    result = configure(
        {'name': 'nightly', 'cron': '0 3 * * *', 'job': 'reports.jobs:nightly',
         'timezone': 'Europe/Berlin'},
        {'name': 'ping', 'every': 30, 'job': ping, 'args': [1], 'kwargs': {'a': 2},
         'catch_up': 'all', 'overlap': False, 'timeout': 5, 'fail_number': 0,
         'fail_expire': 0.5, 'result_ttl': 60, 'priority': 9},
        queue=1)
    assert result['queue'][0]['schedule'] == []
    nightly, pinger = result['queue'][1]['schedule']
    assert {k: v for k, v in nightly.items() if k != 'when'} == {
        'name': 'nightly', 'cron': '0 3 * * *', 'every': None, 'job': 'reports.jobs:nightly',
        'args': (), 'kwargs': {}, 'timezone': 'Europe/Berlin', 'catch_up': 'latest',
        'overlap': True, 'timeout': None, 'fail_number': None, 'fail_expire': None,
        'result_ttl': None, 'expires': None, 'priority': None, 'key': 'schedule:nightly', 'unique': '',
        'limit': None, 'limits': '', 'expression': '0 3 * * *'}
    assert nightly['when'].next_after(utc('2026-03-29 00:00')) == utc('2026-03-29 01:00')
    assert pinger['args'] == (1,) and pinger['kwargs'] == {'a': 2}
    assert pinger['expression'] == 'every 30s' and pinger['catch_up'] == 'all'
    assert pinger['overlap'] is False and pinger['priority'] == 9
    assert (pinger['key'], pinger['unique']) == ('schedule:ping', 'active')
    assert pinger['when'].due(960, 1030) == ([990, 1020], 1020, 0)


def test_full_error_messages():
    good = {'name': 'ok', 'every': 60, 'job': ping}
    assert config_error(good, {'name': 'bad', 'cron': '61 * * * *', 'job': ping}) == \
        "queue[0].schedule[1].cron: minute field '61' out of range 0-59"
    assert config_error(good, {'name': 'bad', 'crn': '0 3 * * *', 'job': ping}) == (
        "queue[0].schedule[1] has unknown key 'crn' (known keys: args, catch_up, cron, every, "
        "expires, fail_expire, fail_number, job, key, kwargs, limit, name, overlap, priority, "
        "result_ttl, timeout, timezone, unique)")
    assert config_error({'name': 'both', 'every': 60, 'job': ping, 'overlap': False,
                         'unique': 'queued'}) == (
        "queue[0].schedule[0] has overlap=False and unique='queued': overlap=False is "
        "unique='active' on the schedule's key; give one of them")
    assert config_error({'name': 'feb', 'cron': '0 0 30 2 *', 'job': ping}, queue=1) == \
        "queue[1].schedule[0].cron: '0 0 30 2 *' never matches: none of its months has such a day"
    assert config_error({'name': 'x', 'cron': '0 3 * * *', 'every': 60, 'job': ping}) == (
        'queue[0].schedule[0] needs exactly one of cron (an expression such as "0 3 * * *") '
        'or every (seconds)')


BAD_SCHEDULES = [
    # given (merged into a valid entry; None deletes the key), path the error names
    ({'name': None}, 'queue[0].schedule[0].name'),
    ({'name': 'a b'}, 'queue[0].schedule[0].name'),
    ({'every': None}, 'queue[0].schedule[0] needs exactly one of cron'),
    ({'every': 0}, 'queue[0].schedule[0].every'),
    ({'every': 0.5}, 'queue[0].schedule[0].every'),
    ({'every': '60'}, 'queue[0].schedule[0].every'),
    ({'every': True}, 'queue[0].schedule[0].every'),
    ({'every': None, 'cron': 5}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '* * * *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '* * * * * *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '@fortnightly'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': 'x * * * *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '1-,2 * * * *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 24 * * *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 0 0 * *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 0 * 13 *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 0 * * 8'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 0 * foo *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 0 * * jan'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '*/0 * * * *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '5-1 * * * *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 0 * * mon-sun'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 0 31 2 *'}, 'queue[0].schedule[0].cron'),
    ({'every': None, 'cron': '0 0 31 4,6,9,11 *'}, 'queue[0].schedule[0].cron'),
    ({'job': None}, 'queue[0].schedule[0].job'),
    ({'job': 42}, 'queue[0].schedule[0].job'),
    ({'job': 'not a path'}, 'queue[0].schedule[0].job'),
    ({'args': 'abc'}, 'queue[0].schedule[0].args'),
    ({'kwargs': [1]}, 'queue[0].schedule[0].kwargs'),
    ({'timezone': 'Mars/Olympus'}, 'queue[0].schedule[0].timezone'),
    ({'timezone': '../etc/passwd'}, 'queue[0].schedule[0].timezone'),
    ({'timezone': 5}, 'queue[0].schedule[0].timezone'),
    ({'catch_up': 'some'}, 'queue[0].schedule[0].catch_up'),
    ({'overlap': 'yes'}, 'queue[0].schedule[0].overlap'),
    ({'timeout': -1}, 'queue[0].schedule[0].timeout'),
    ({'fail_number': 1.5}, 'queue[0].schedule[0].fail_number'),
    ({'fail_expire': 'x'}, 'queue[0].schedule[0].fail_expire'),
    ({'result_ttl': -1}, 'queue[0].schedule[0].result_ttl'),
    ({'priority': 10}, 'queue[0].schedule[0].priority'),
    ({'priority': -1}, 'queue[0].schedule[0].priority'),
    ({'priority': True}, 'queue[0].schedule[0].priority'),
    ({'key': ''}, 'queue[0].schedule[0].key'),
    ({'key': 7}, 'queue[0].schedule[0].key'),
    ({'key': 'k', 'unique': 'always'}, 'queue[0].schedule[0].unique'),
    ({'unique': 0}, 'queue[0].schedule[0].unique'),
    ({'overlap': False, 'unique': 'active'}, 'queue[0].schedule[0] has overlap=False and unique'),
]


@pytest.mark.parametrize('change, path', BAD_SCHEDULES)
def test_error_names_the_path(change, path):
    entry = {'name': 'ping', 'every': 60, 'job': ping}
    entry.update(change)
    entry = {k: v for k, v in entry.items() if v is not None or k in ('name', 'job')}
    assert config_error(entry).startswith(path)


def test_error_names_the_path_of_the_list():
    for schedules, path in (('x', 'queue[0].schedule must be a list'),
                            (['x'], 'queue[0].schedule[0] must be a dict'),
                            ([{'name': 'a', 'every': 1, 'job': ping},
                              {'name': 'a', 'every': 2, 'job': ping}],
                             'queue[0].schedule[1].name')):
        with pytest.raises(mpqueue.ConfigError) as info:
            mpqueue.configure({'basics': {'name': 'sched-test',
                                          'driver': mpqueue.RedisDriver(prefix='mpqtest')},
                               'queue': [{'name': 'first', 'schedule': schedules}]})
        assert str(info.value).startswith(path), str(info.value)


def test_utc_needs_no_zoneinfo(monkeypatch):
    monkeypatch.setitem(sys.modules, 'zoneinfo', None)    # as on Python 3.8
    [queue] = mpqueue.configure({
        'basics': {'name': 'sched-test', 'driver': mpqueue.RedisDriver(prefix='mpqtest')},
        'queue': [{'name': 'first', 'schedule': [
            {'name': 'a', 'cron': '0 3 * * *', 'job': ping}]}]})['queue']
    when = queue['schedule'][0]['when']
    assert when.next_after(utc('2026-01-01 00:00')) == utc('2026-01-01 03:00')
    message = config_error({'name': 'b', 'cron': '0 3 * * *', 'job': ping,
                            'timezone': 'Europe/Berlin'})
    assert message.startswith('queue[0].schedule[0].timezone: ')
    assert 'Python 3.9' in message


# -- end to end: pools ticking schedules ------------------------------------------------

SCHEDULE_JOBS = '''
def ticked(name, seconds=0):
    """Records when it ran: its tick is the period's multiple just before."""
    record('start', name=name, started=time.time())
    if seconds:
        time.sleep(seconds)
    record('end', name=name, ended=time.time())
'''


def _pools(e2e, schedules, n=1, **queue):
    from pool_harness import queue_conf
    e2e.write_jobs(SCHEDULE_JOBS)
    conf = queue_conf(worker_number=2, schedule=schedules, **queue)
    pools = [e2e.pool(conf) for _ in range(n)]
    return pools, e2e.import_jobs()


def _sched(name, seconds, **options):
    from pool_harness import Src
    return dict({'name': name, 'every': seconds, 'job': Src('jobs.ticked'), 'args': (name,)},
                **options)


def _ticks(e2e, name, period):
    """{tick: runs} of schedule ``name`` from the jobs' own records."""
    out = {}
    for rec in e2e.records('start', name=name):
        tick = int(rec['started'] // period * period)
        out[tick] = out.get(tick, 0) + 1
    return out


def _wait_until(when):
    from pool_harness import wait_for
    wait_for(lambda: time.time() >= when, when - time.time() + 5, 'the clock to reach %.2f' % when)


def test_each_tick_runs_once_whatever_pools_run_or_die(e2e):
    """Three pools tick one schedule; one pool's whole tree is SIGKILLed half
    way and another starts: every tick from the first to the last ran once."""
    from pool_harness import kill_tree
    pools, _ = _pools(e2e, [_sched('each', 1)], n=3)
    for pool in pools:
        pool.start()
    t0 = time.time()
    pools[0].wait(lambda: len(_ticks(e2e, 'each', 1)) >= 4, 10, 'four ticks to run')
    kill_tree(pools[1])
    late = e2e.pool(pools[0].queues[0]).start()
    _wait_until(t0 + 10.5)
    for pool in pools[::2] + [late]:
        pool.stop()
    ticks = _ticks(e2e, 'each', 1)
    first, last = min(ticks), max(ticks)
    assert last - first >= 9, ticks
    assert ticks == {t: 1 for t in range(first, last + 1)}, ticks
    (row,) = mpqueue.schedules('q')
    assert row['last_tick'] == last and row['expression'] == 'every 1s'
    assert row['last_job_id'] == mpqueue._schedule_job_id('q', 'each', last)


def test_catch_up_after_every_pool_was_down(e2e):
    """One pool, three schedules of 3 s: one per catch_up mode.  It stops for
    three ticks and starts again 1.7 s after the last one it missed.  Which
    ticks were pushed is read from the broker: a tick's job id is derived from
    the tick, and its outcome is kept (result_ttl)."""
    period, modes = 3, ('latest', 'all', 'none')
    scheds = [_sched(mode, period, catch_up=mode, result_ttl=120) for mode in modes]

    def pushed(mode, ticks):
        return [t for t in ticks if mpqueue.job_info(
            'q', mpqueue._schedule_job_id('q', mode, t)) is not None]
    (first,), _ = _pools(e2e, scheds)
    first.start()
    first.wait(lambda: all(_ticks(e2e, m, period) for m in modes), 10, 'every schedule to tick')
    first.stop()
    stopped = time.time()
    last_before = int(stopped // period * period)
    restart = (stopped // period + 3) * period + 1.7
    _wait_until(restart)
    missed = list(range(last_before + period, int(restart), period))
    assert len(missed) >= 2, missed
    (second,), _ = _pools(e2e, scheds)
    second.start()
    _wait_until(restart + 2 * period)
    second.stop()
    caught = {m: pushed(m, missed) for m in modes}
    assert caught == {'all': missed, 'latest': [missed[-1]], 'none': []}, caught
    for mode in modes:      # after the restart every tick is pushed again, and each ran once
        now = time.time()
        ticks = range(int(restart) // period * period + period, int(now) + 1, period)
        after = [t for t in ticks if t + 1 < now - 0.5]
        assert after and pushed(mode, after) == after, (mode, after)
        # runs since the first pool stopped: the caught-up ticks and the later
        # ones (bucketing them by tick would miscount a catch-up job that
        # started late)
        runs = [r for r in e2e.records('start', name=mode) if r['started'] > stopped]
        low, high = len(caught[mode]) + len(after), len(caught[mode]) + len(pushed(mode, ticks))
        assert low <= len(runs) <= high, (mode, caught[mode], after, runs)


def test_overlap_false_skips_ticks_while_the_last_job_runs(e2e):
    (pool,), _ = _pools(e2e, [_sched('slow', 1, overlap=False, args=('slow', 2.5))])
    pool.start()
    pool.wait(lambda: len(e2e.records('end', name='slow')) >= 2, 15, 'two runs to end')
    pool.stop()
    starts = sorted(r['started'] for r in e2e.records('start', name='slow'))
    ends = sorted(r['ended'] for r in e2e.records('end', name='slow'))
    for begin, end in zip(starts[1:], ends):
        assert begin >= end, 'runs overlapped: %r %r' % (starts, ends)
    (row,) = mpqueue.schedules('q')
    assert row['skipped'] >= 2, row


def test_a_schedule_takes_key_and_unique(e2e):
    # unique='active' on the key 'report': a tick while a job holding that key
    # (pushed by anybody) waits or runs is skipped; the ticks' jobs carry the key.
    (pool,), jobs = _pools(e2e, [_sched('report', 1, key='report', unique='active',
                                        args=('tick', 0), result_ttl=60)])
    holder = mpqueue.push('q', jobs.ticked, args=('held', 2.5), key='report', unique='active')
    pool.start()
    pool.wait(lambda: e2e.records('end', name='held'), 15, 'the job holding the key to end')
    held = e2e.records('end', name='held')[0]['ended']
    pool.wait(lambda: e2e.records('start', name='tick'), 15, 'a tick to run after it')
    pool.stop()
    ticks = [r['started'] for r in e2e.records('start', name='tick')]
    assert min(ticks) >= held, 'a tick ran while the key was held: %r %r' % (ticks, held)
    (row,) = mpqueue.schedules('q')
    assert row['skipped'] >= 1, row
    info = mpqueue.job_info('q', row['last_job_id'])
    assert info['key'] == 'report' and info['id'] != holder, info


def test_changed_or_removed_schedules_and_pools_that_disagree(e2e):
    import re as _re
    (pool,), _ = _pools(e2e, [_sched('when', 2), _sched('gone', 1)])
    pool.start()
    pool.wait(lambda: _ticks(e2e, 'when', 2) and _ticks(e2e, 'gone', 1), 10, 'both to tick')
    first = pool.pid_in_file()
    pool.stop()
    stopped = time.time()
    # the same name with another period, in two pools at once: it still ticks
    # once per tick of whichever pool ticks, and the pools say they disagree
    (three,), _ = _pools(e2e, [_sched('when', 3)])
    three.start()
    (other,), _ = _pools(e2e, [_sched('when', 5)])
    other.start()
    t0 = time.time()
    _wait_until(t0 + 7)

    def warned():
        return [line for p in (three, other) for line in p.log_tail(400).splitlines()
                if _re.search(r"schedule 'when' of queue 'q' is defined otherwise by pool", line)]
    three.wait(warned, 15, 'a pool to warn that the pools disagree')
    assert not [line for line in warned() if ':%d ' % first in line], \
        'a changed schedule was taken for a disagreement with the stopped pool: %r' % warned()
    res = three.cli('schedule:list', '--json')
    assert res.returncode == 0, res.stderr
    (row,) = [r for r in json.loads(res.stdout) if r['name'] == 'when']
    assert row['expression'] == 'every 3s' and row['last_tick'] is not None
    assert row['last_tick'] < row['next_tick'] <= row['last_tick'] + 3, row
    res = three.cli('schedule:list')
    assert res.returncode == 0 and 'next tick' in res.stdout.splitlines()[0], res
    three.stop()
    other.stop()
    assert not [r for r in e2e.records('start', name='gone') if r['started'] > stopped], \
        'a schedule removed from the config still ticked'
    later = [r['started'] for r in e2e.records('start', name='when') if r['started'] > t0]
    assert later and all(s % 3 < 0.5 or s % 5 < 0.5 for s in later), later
