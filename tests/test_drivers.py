"""Contract suite for broker drivers.

Every test here talks to a driver only through the ``mpqueue._Driver``
interface, so each driver (Redis, SQLite) must pass all of it unchanged;
test_cluster.py runs it against a Redis Cluster too.
Times are never slept on blindly: tests poll ``tick()`` with a deadline.
"""

import collections
import json
import multiprocessing
import os
import select
import time
import uuid

import pytest

import mpqueue

PREFIX = 'mpqtest'
WAIT = 5.0          # longest wait for something that is due
SLACK = 0.02        # clock granularity allowed when checking "not before"


# -- fixtures and helpers ----------------------------------------------------------

@pytest.fixture(params=['redis', 'sqlite'])
def driver(request, tmp_path):
    if request.param == 'redis':
        drv = mpqueue.RedisDriver(url=request.getfixturevalue('redis_db_url'), prefix=PREFIX)
    else:
        drv = mpqueue.SqliteDriver(str(tmp_path / 'q.db'))
        probe = 'probe-' + uuid.uuid4().hex[:8]
        try:
            drv.execute(probe, [('tick', 1)])
        except mpqueue.DriverError as exc:
            if 'not available' in str(exc):
                pytest.skip('SqliteDriver: %s' % exc)
            raise
        drv.clean(probe)
    yield drv
    drv.close()


@pytest.fixture
def queue(driver):
    """A queue name of this test alone; everything under it is removed afterwards."""
    name = 'drv-%s' % uuid.uuid4().hex[:12]
    yield name
    driver.clean(name)
    assert driver.status(name) == {'all': 0, 'waiting': 0, 'working': 0, 'failed': 0,
                                   'over': 0}
    if isinstance(driver, mpqueue.RedisDriver):   # its own client: one server or a cluster
        left = list(driver._redis().scan_iter(match='%s:{%s}:*' % (PREFIX, name), count=1000))
        assert left == [], 'keys left behind: %r' % left


def noop():
    pass


_PAYLOAD = mpqueue._encode('contract', noop, (), None, None, 1 << 20)


def entry(job=noop, *, t=0, f=3, e=0, delay=0, payload=None):
    """One ``(id, meta_json, payload, delay)`` as mpqueue.push_many builds it."""
    meta = {'c': time.time(), 'n': mpqueue._job_name(job), 'x': 0, 't': t, 'f': f, 'e': e}
    if payload is None:
        payload = _PAYLOAD if job is noop else mpqueue._encode('contract', job, (), None,
                                                               None, 1 << 20)
    return (mpqueue._new_id(), json.dumps(meta, separators=(',', ':')), payload, delay)


def push(driver, queue, n=1, **kw):
    """Push ``n`` jobs in one call; return their ids."""
    entries = [entry(**kw) for _ in range(n)]
    driver.push(queue, entries)
    return [e[0] for e in entries]


def push1(driver, queue, **kw):
    return push(driver, queue, 1, **kw)[0]


def ids_of(reserved):
    return [r[0] for r in reserved]


def counts(driver, queue):
    return driver.status(queue)


def wait_for(predicate, timeout=WAIT, interval=0.005, what='condition'):
    """Call ``predicate`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %.1f s waiting for %s' % (timeout, what))
        time.sleep(interval)


def tick_and_reserve(driver, queue, n=1):
    driver.tick(queue)
    return driver.reserve(queue, n)


def tick_until_idle(driver, queue):
    """Tick until nothing is reserved or working any more."""
    def idle():
        driver.tick(queue)
        return counts(driver, queue)['working'] == 0
    wait_for(idle, what='tick to take the job back')


def make_failed(driver, queue, type_=mpqueue.TYPE_NORMAL, **kw):
    job_id = push1(driver, queue, **kw)
    got = driver.pop(queue, 'w', 'o')
    assert got[0] == job_id
    assert driver.fail(queue, job_id, type_, ['it broke']) == 1
    return job_id


# -- push and reserve --------------------------------------------------------------------

def test_push_immediate_is_fifo(driver, queue):
    first = push(driver, queue, 3, t=7, f=2, e=0.5)
    second = push(driver, queue, 2)
    assert counts(driver, queue) == {'all': 5, 'waiting': 5, 'working': 0, 'failed': 0,
                                     'over': 0}
    got = driver.reserve(queue, 10)
    assert ids_of(got) == first + second
    job_id, meta, payload = got[0]
    assert (meta['x'], meta['t'], meta['f'], meta['e']) == (0, 7, 2, 0.5)
    assert meta['n'] == mpqueue._job_name(noop)
    assert bytes(payload) == _PAYLOAD
    job, args, kwargs = mpqueue._decode(bytes(payload), None)
    assert job is noop and args == () and kwargs == {}


def test_push_keeps_payload_bytes_exactly(driver, queue):
    payload = mpqueue._encode('contract', noop, (bytes(range(256)) * 4,), {'k': '\u00e9'},
                              b'key', 1 << 20)
    job_id = push1(driver, queue, payload=payload)
    [(got_id, _, got)] = driver.reserve(queue, 1)
    assert got_id == job_id and bytes(got) == payload
    assert mpqueue._decode(bytes(got), b'key')[1] == (bytes(range(256)) * 4,)


def test_job_meta_of_unknown_job_is_none(driver, queue):
    assert driver.job_meta(queue, mpqueue._new_id()) is None


def test_tick_of_empty_queue_returns_none(driver, queue):
    assert driver.tick(queue) is None


def test_delayed_push_waits_for_tick_after_due(driver, queue):
    delay = 0.6
    started = time.monotonic()
    job_id = push1(driver, queue, delay=delay)
    now_id = push1(driver, queue)
    # Counted as waiting, but only the immediate job can be reserved.
    assert counts(driver, queue)['waiting'] == 2
    due = driver.tick(queue)
    assert ids_of(driver.reserve(queue, 10)) == [now_id]
    assert driver.done(queue, now_id) == 1
    assert due is not None and 0 < due <= delay + SLACK
    assert driver.reserve(queue, 10) == []
    got = wait_for(lambda: tick_and_reserve(driver, queue), what='the delayed job')
    assert time.monotonic() - started >= delay - SLACK
    assert ids_of(got) == [job_id]


def test_tick_returns_seconds_until_next_due(driver, queue):
    push1(driver, queue, delay=30)
    due = driver.tick(queue)
    assert 25 < due <= 30
    push1(driver, queue, delay=3)
    due = driver.tick(queue)
    assert 2 < due <= 3


def test_delayed_jobs_come_out_in_due_order(driver, queue):
    later = push1(driver, queue, delay=0.4)
    sooner = push1(driver, queue, delay=0.2)
    # tick() is None once nothing is delayed (nor reserved or working) any more.
    wait_for(lambda: driver.tick(queue) is None, what='both delayed jobs due')
    assert ids_of(driver.reserve(queue, 2)) == [sooner, later]


def test_tick_limit_bounds_the_work_of_one_tick(driver, queue):
    ids = push(driver, queue, 3, delay=0.05)
    time.sleep(0.1)                 # all three are due by now
    driver.tick(queue, 1)
    first = ids_of(driver.reserve(queue, 10))
    assert len(first) == 1 and first[0] in ids
    assert driver.tick(queue, 10) is not None      # the reserved job is pending
    rest = ids_of(driver.reserve(queue, 10))
    assert sorted(first + rest) == sorted(ids)


def test_reserve_returns_at_most_n_in_order(driver, queue):
    ids = push(driver, queue, 5)
    assert ids_of(driver.reserve(queue, 2)) == ids[:2]
    assert counts(driver, queue)['waiting'] == 3
    assert counts(driver, queue)['working'] == 2     # reserved counts as working
    assert ids_of(driver.reserve(queue, 10)) == ids[2:]
    assert driver.reserve(queue, 1) == []
    assert counts(driver, queue) == {'all': 5, 'waiting': 0, 'working': 5, 'failed': 0,
                                     'over': 0}


def test_execute_applies_a_batch_in_order(driver, queue):
    a, b = entry(), entry()
    results = driver.execute(queue, [('push',) + a, ('push',) + b, ('reserve', 1),
                                     ('tick', 100)])
    assert len(results) == 4
    flat = results[2]
    assert mpqueue._text(flat[0]) == a[0]
    assert ids_of(driver.reserve(queue, 5)) == [b[0]]


def test_waker_wakes_on_push(driver, queue):
    waker = driver.waker(queue)
    try:
        push1(driver, queue)
        readable, _, _ = select.select([waker], [], [], WAIT)
        assert readable == [waker]
        waker.drain()
    finally:
        waker.close()


# -- start and pop -----------------------------------------------------------------------

def test_start_moves_a_reserved_job_to_working(driver, queue):
    job_id = push1(driver, queue)
    timed_id = push1(driver, queue, t=5)
    assert len(driver.reserve(queue, 2)) == 2
    before = time.time()
    assert driver.start(queue, job_id, 'host:1', 'owner-1') == 1
    assert driver.start(queue, timed_id, 'host:2', 'owner-1') == 1
    after = time.time()
    meta = driver.job_meta(queue, job_id)
    assert meta['x'] == 1
    assert (meta['w'], meta['o']) == ('host:1', 'owner-1')
    assert before - 1 <= meta['s'] <= after + 1
    assert not meta.get('d')            # no timeout: no deadline
    timed = driver.job_meta(queue, timed_id)
    assert timed['d'] == pytest.approx(timed['s'] + 5, abs=0.01)
    assert counts(driver, queue)['working'] == 2
    # Only a reserved job can start, and only once.
    assert driver.start(queue, job_id, 'host:1', 'owner-1') == 0
    assert driver.job_meta(queue, job_id)['x'] == 1


def test_start_of_a_job_not_reserved_returns_0(driver, queue):
    job_id = push1(driver, queue)
    assert driver.start(queue, job_id, 'w', 'o') == 0
    assert driver.start(queue, mpqueue._new_id(), 'w', 'o') == 0
    assert counts(driver, queue)['waiting'] == 1
    assert driver.job_meta(queue, job_id)['x'] == 0
    assert ids_of(driver.reserve(queue, 1)) == [job_id]


def test_reserved_but_not_started_goes_back_to_head(driver, queue, monkeypatch):
    monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', 0.3)
    ids = push(driver, queue, 3)
    started = time.monotonic()
    assert ids_of(driver.reserve(queue, 2)) == ids[:2]
    due = driver.tick(queue)
    assert counts(driver, queue)['working'] == 2       # not yet
    assert due is not None and due <= 0.3 + SLACK
    tick_until_idle(driver, queue)
    assert time.monotonic() - started >= 0.3 - SLACK
    assert counts(driver, queue)['waiting'] == 3
    # Too late to start now; once reserved again, it can.
    assert driver.start(queue, ids[0], 'w', 'o') == 0
    # Back at the head, before the job never reserved; the attempt not counted.
    again = ids_of(driver.reserve(queue, 3))
    assert set(again[:2]) == set(ids[:2]) and again[2] == ids[2]
    assert driver.job_meta(queue, ids[0])['x'] == 0
    assert driver.start(queue, ids[0], 'w', 'o') == 1


def test_expired_reservations_keep_queue_order(driver, queue, monkeypatch):
    # Jobs reserved in one batch come back in the order they were queued,
    # whatever their ids (ids pushed here in descending order on purpose).
    monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', 0.2)
    entries = sorted((entry() for _ in range(4)), key=lambda e: e[0], reverse=True)
    driver.push(queue, entries)
    ids = [e[0] for e in entries]
    assert ids_of(driver.reserve(queue, 3)) == ids[:3]
    tick_until_idle(driver, queue)
    assert ids_of(driver.reserve(queue, 4)) == ids


def test_pop_reserves_and_starts(driver, queue):
    a, b = push(driver, queue, 2)
    before = time.time()
    job_id, meta, payload = driver.pop(queue, 'host:9', 'owner-9')
    assert job_id == a
    assert meta['x'] == 1 and meta['w'] == 'host:9' and meta['o'] == 'owner-9'
    assert before - 1 <= meta['s'] <= time.time() + 1
    assert bytes(payload) == _PAYLOAD
    assert driver.job_meta(queue, a)['x'] == 1
    assert counts(driver, queue)['waiting'] == 1
    assert counts(driver, queue)['working'] == 1
    assert driver.pop(queue, 'host:9', 'owner-9')[0] == b
    assert driver.pop(queue, 'host:9', 'owner-9') is None
    assert counts(driver, queue)['working'] == 2


# -- done, retry, fail -----------------------------------------------------------------

def test_done_forgets_the_job_and_counts_it_over(driver, queue):
    a, b = push(driver, queue, 2)
    driver.pop(queue, 'w', 'o')
    assert driver.done(queue, a) == 1
    assert driver.job_meta(queue, a) is None
    assert counts(driver, queue) == {'all': 2, 'waiting': 1, 'working': 0, 'failed': 0,
                                     'over': 1}
    driver.reserve(queue, 1)                # reserved only: done still finishes it
    assert driver.done(queue, b) == 1
    assert counts(driver, queue) == {'all': 2, 'waiting': 0, 'working': 0, 'failed': 0,
                                     'over': 2}


def test_done_after_recovery_takes_the_copy_back(driver, queue, monkeypatch):
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.2)
    job_id = push1(driver, queue, f=3)
    driver.pop(queue, 'w', 'o')
    tick_until_idle(driver, queue)          # lease lapsed: back to waiting
    assert counts(driver, queue)['waiting'] == 1
    # The first worker finishes after all: the job must not run again.
    assert driver.done(queue, job_id) == 1
    assert counts(driver, queue) == {'all': 1, 'waiting': 0, 'working': 0, 'failed': 0,
                                     'over': 1}
    assert driver.reserve(queue, 1) == []


def test_done_of_an_unknown_job_counts_nothing(driver, queue):
    push1(driver, queue)
    driver.done(queue, mpqueue._new_id())
    assert counts(driver, queue) == {'all': 1, 'waiting': 1, 'working': 0, 'failed': 0,
                                     'over': 0}


def test_done_after_failure_elsewhere_leaves_no_orphan(driver, queue, monkeypatch):
    # A slow worker loses its lease; the recovered copy runs elsewhere and
    # fails for good; then the slow worker reports success.
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.2)
    job_id = push1(driver, queue, f=1)
    driver.pop(queue, 'slow', 'o')
    tick_until_idle(driver, queue)
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 10.0)
    assert driver.pop(queue, 'other', 'o')[0] == job_id
    assert driver.fail(queue, job_id, mpqueue.TYPE_NORMAL, ['failed elsewhere']) == 1
    driver.done(queue, job_id)
    failed = driver.failed(queue)
    status = counts(driver, queue)
    assert status['failed'] == len(failed)
    for failed_id, _ in failed:
        assert driver.job_meta(queue, failed_id) is not None, \
            'failed list holds %s whose meta is gone' % failed_id


def test_retry_appends_the_error_and_delays(driver, queue):
    job_id = push1(driver, queue, f=3, e=0)
    driver.pop(queue, 'w', 'o')
    started = time.monotonic()
    assert driver.retry(queue, job_id, 0.4, 'ValueError: boom') == 1
    meta = driver.job_meta(queue, job_id)
    assert meta['r'] == ['ValueError: boom']
    assert meta['x'] == 1
    assert counts(driver, queue)['waiting'] == 1
    assert counts(driver, queue)['working'] == 0
    assert driver.reserve(queue, 1) == []
    got = wait_for(lambda: tick_and_reserve(driver, queue), what='the retried job')
    assert time.monotonic() - started >= 0.4 - SLACK
    assert ids_of(got) == [job_id]
    assert driver.start(queue, job_id, 'w', 'o') == 1
    assert driver.job_meta(queue, job_id)['x'] == 2


def test_retry_without_delay_goes_to_the_tail(driver, queue):
    a, b = push(driver, queue, 2)
    driver.pop(queue, 'w', 'o')
    assert driver.retry(queue, a, 0, 'err') == 1
    assert ids_of(driver.reserve(queue, 2)) == [b, a]


def test_retry_of_a_job_not_working_returns_0(driver, queue):
    job_id = push1(driver, queue)
    assert driver.retry(queue, job_id, 0, 'err') == 0
    assert driver.retry(queue, mpqueue._new_id(), 0, 'err') == 0
    assert driver.job_meta(queue, job_id)['r'] == []
    assert counts(driver, queue)['waiting'] == 1


def test_fail_moves_to_the_failed_list(driver, queue):
    job_id = push1(driver, queue, f=3)
    driver.pop(queue, 'w', 'o')
    driver.retry(queue, job_id, 0, 'e1')
    assert driver.pop(queue, 'w', 'o')[0] == job_id
    assert driver.fail(queue, job_id, mpqueue.TYPE_NORMAL, ['e2', 'e3'],
                       'pkg.mod.Name') == 1
    meta = driver.job_meta(queue, job_id)
    assert meta['r'] == ['e1', 'e2', 'e3']
    assert meta['y'] == mpqueue.TYPE_NORMAL
    assert meta['n'] == 'pkg.mod.Name'
    assert meta['x'] == 2
    assert not meta.get('p')
    [(failed_id, failed_meta)] = driver.failed(queue)
    assert failed_id == job_id
    assert failed_meta['r'] == ['e1', 'e2', 'e3']
    assert counts(driver, queue) == {'all': 1, 'waiting': 0, 'working': 0, 'failed': 1,
                                     'over': 0}
    assert driver.reserve(queue, 1) == []


def test_fail_keeps_the_name_when_none_given_and_records_the_type(driver, queue):
    job_id = push1(driver, queue)
    driver.pop(queue, 'w', 'o')
    assert driver.fail(queue, job_id, mpqueue.TYPE_TIMEOUT, ['timed out']) == 1
    meta = driver.job_meta(queue, job_id)
    assert meta['n'] == mpqueue._job_name(noop)
    assert meta['y'] == mpqueue.TYPE_TIMEOUT


def test_failed_lists_oldest_first_with_paging(driver, queue):
    ids = [make_failed(driver, queue) for _ in range(3)]
    assert ids_of(driver.failed(queue)) == ids
    assert ids_of(driver.failed(queue, 1, 1)) == ids[1:2]
    assert ids_of(driver.failed(queue, 0, 2)) == ids[:2]
    assert driver.failed(queue, 3, 10) == []


def test_fail_after_recovery_leaves_no_copy_behind(driver, queue, monkeypatch):
    # The lease lapses while the fail handlers run; the job is recovered to
    # run them again; then the first worker reports the final failure.
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.2)
    job_id = push1(driver, queue, f=0)
    driver.pop(queue, 'w', 'o')
    tick_until_idle(driver, queue)
    assert driver.job_meta(queue, job_id)['p'] == 'f'
    assert driver.fail(queue, job_id, mpqueue.TYPE_NORMAL, ['late']) == 1
    # The job is failed, once: not also waiting to run its handlers again.
    assert counts(driver, queue) == {'all': 1, 'waiting': 0, 'working': 0, 'failed': 1,
                                     'over': 0}
    assert driver.reserve(queue, 1) == []


# -- lost ------------------------------------------------------------------------------

def test_lost_retries_while_attempts_remain_then_runs_fail_handlers(driver, queue):
    a = push1(driver, queue, f=1, e=0)
    b = push1(driver, queue)
    assert driver.pop(queue, 'w', 'o')[0] == a
    assert driver.lost(queue, a, 'worker died (1)') == 1
    meta = driver.job_meta(queue, a)
    assert meta['r'] == ['worker died (1)'] and meta['x'] == 1
    assert not meta.get('p')
    assert counts(driver, queue)['waiting'] == 2 and counts(driver, queue)['working'] == 0
    assert driver.pop(queue, 'w', 'o')[0] == a          # run again at once, from the head
    assert driver.job_meta(queue, a)['x'] == 2
    c = push1(driver, queue)
    assert driver.lost(queue, a, 'worker died (2)') == 1
    meta = driver.job_meta(queue, a)
    assert meta['p'] == 'f'
    assert meta['y'] == mpqueue.TYPE_NORMAL
    assert meta['r'] == ['worker died (1)', 'worker died (2)']
    assert meta['x'] == 2
    # Its fail handlers run next: at the head.
    assert ids_of(driver.reserve(queue, 3)) == [a, b, c]


def test_lost_job_runs_again_at_once_whatever_fail_expire(driver, queue):
    # A worker that died did not fail the job: no fail_expire wait, but the
    # death counts as an attempt (so a job that kills its worker cannot loop).
    job_id = push1(driver, queue, f=3, e=30)
    other = push1(driver, queue)
    driver.pop(queue, 'w', 'o')
    assert driver.lost(queue, job_id, 'worker died') == 1
    assert ids_of(driver.reserve(queue, 2)) == [job_id, other]
    assert driver.job_meta(queue, job_id)['x'] == 1


def test_lost_at_timeout_is_not_retried(driver, queue):
    a = push1(driver, queue, f=3, t=1)
    b = push1(driver, queue)
    driver.pop(queue, 'w', 'o')
    assert driver.lost(queue, a, 'killed at its timeout', timeout=True) == 1
    meta = driver.job_meta(queue, a)
    assert meta['y'] == mpqueue.TYPE_TIMEOUT
    assert meta['p'] == 'f'
    assert meta['x'] == 1
    assert meta['r'] == ['killed at its timeout']
    assert ids_of(driver.reserve(queue, 2)) == [a, b]
    # Running the fail handlers is not another attempt.
    assert driver.start(queue, a, 'w2', 'o2') == 1
    meta = driver.job_meta(queue, a)
    assert meta['x'] == 1 and meta['p'] == 'f' and meta['w'] == 'w2'


def test_lost_of_a_reserved_job_that_never_started(driver, queue):
    a, b = push(driver, queue, 2)
    assert ids_of(driver.reserve(queue, 1)) == [a]
    assert driver.lost(queue, a, 'worker died before starting') == 2
    meta = driver.job_meta(queue, a)
    assert meta['r'] == [] and meta['x'] == 0
    assert ids_of(driver.reserve(queue, 2)) == [a, b]


def test_lost_of_a_job_not_running_returns_0(driver, queue):
    failed_id = make_failed(driver, queue)
    job_id = push1(driver, queue)
    assert driver.lost(queue, job_id, 'x') == 0
    assert driver.lost(queue, mpqueue._new_id(), 'x') == 0
    assert driver.lost(queue, failed_id, 'x') == 0
    assert counts(driver, queue) == {'all': 2, 'waiting': 1, 'working': 0, 'failed': 1,
                                     'over': 0}


def test_lost_while_running_fail_handlers(driver, queue):
    attempts = mpqueue.HANDLER_ATTEMPTS
    job_id = push1(driver, queue, f=0)
    driver.pop(queue, 'w', 'o')
    driver.lost(queue, job_id, 'worker died')
    assert driver.job_meta(queue, job_id)['p'] == 'f'
    for k in range(1, attempts + 1):
        assert driver.pop(queue, 'w', 'o')[0] == job_id
        assert driver.lost(queue, job_id, 'handler died (%d)' % k) == 1
        meta = driver.job_meta(queue, job_id)
        assert meta['x'] == 1                           # handlers are not attempts
        if k < attempts:
            assert meta['p'] == 'f' and meta['h'] == k
            assert counts(driver, queue)['waiting'] == 1
            assert driver.failed(queue) == []
    meta = driver.job_meta(queue, job_id)
    expected = ['worker died'] + ['handler died (%d)' % k for k in range(1, attempts + 1)]
    assert meta['r'][:len(expected)] == expected
    assert len(meta['r']) == len(expected) + 1         # plus why it gave up
    assert not meta.get('p')
    assert meta['y'] == mpqueue.TYPE_NORMAL
    assert ids_of(driver.failed(queue)) == [job_id]
    assert counts(driver, queue) == {'all': 1, 'waiting': 0, 'working': 0, 'failed': 1,
                                     'over': 0}


# -- leases and deadlines ----------------------------------------------------------------

@pytest.mark.parametrize('timeout', [0, 30])
def test_tick_recovers_a_lapsed_lease_as_a_lost_attempt(driver, queue, monkeypatch, timeout):
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.3)
    job_id = push1(driver, queue, f=3, e=0, t=timeout)
    driver.pop(queue, 'w', 'o')
    started = time.monotonic()
    driver.tick(queue)
    assert counts(driver, queue)['working'] == 1        # not yet
    tick_until_idle(driver, queue)
    assert time.monotonic() - started >= 0.3 - SLACK
    meta = driver.job_meta(queue, job_id)
    assert len(meta['r']) == 1
    assert meta['x'] == 1
    assert not meta.get('p') and not meta.get('y')    # a retry, not a timeout
    assert ids_of(driver.reserve(queue, 1)) == [job_id]


def test_lapsed_lease_of_the_last_attempt_runs_fail_handlers(driver, queue, monkeypatch):
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.2)
    job_id = push1(driver, queue, f=0)
    other = push1(driver, queue)
    driver.pop(queue, 'w', 'o')
    tick_until_idle(driver, queue)
    meta = driver.job_meta(queue, job_id)
    assert meta['p'] == 'f' and meta['y'] == mpqueue.TYPE_NORMAL
    assert ids_of(driver.reserve(queue, 2)) == [job_id, other]


def test_renew_keeps_a_lease_alive(driver, queue, monkeypatch):
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.5)
    job_id = push1(driver, queue)
    driver.pop(queue, 'w', 'o')
    until = time.monotonic() + 1.2                      # over twice the lease
    while time.monotonic() < until:
        assert driver.renew(queue, [job_id]) == [1]
        driver.tick(queue)
        assert counts(driver, queue)['working'] == 1
        time.sleep(0.05)
    assert driver.job_meta(queue, job_id)['r'] == []
    tick_until_idle(driver, queue)                      # renewals stop: recovered
    assert len(driver.job_meta(queue, job_id)['r']) == 1


def test_renew_of_a_job_not_working_returns_0(driver, queue):
    job_id = push1(driver, queue)
    assert driver.renew(queue, [job_id, mpqueue._new_id()]) == [0, 0]
    assert driver.renew(queue, []) == []


def test_renew_cannot_outlast_the_deadline(driver, queue):
    job_id = push1(driver, queue, t=0.2, f=3)
    driver.pop(queue, 'w', 'o')

    def recovered():
        driver.renew(queue, [job_id])
        driver.tick(queue)
        return counts(driver, queue)['working'] == 0
    wait_for(recovered, what='the job past its deadline to be recovered')
    meta = driver.job_meta(queue, job_id)
    assert not meta.get('p') and meta['x'] == 1      # an ordinary attempt: run again


def test_tick_recovers_a_job_past_its_deadline_plus_1s_as_an_attempt(driver, queue):
    # Nobody killed it at its deadline, so its master (or server) is gone: a
    # job that never ran past its timeout must not be failed as a timeout.
    # Recovered at deadline + 1 s (before the lease), as an ordinary attempt.
    job_id = push1(driver, queue, t=0.1, f=3)
    other = push1(driver, queue)
    driver.pop(queue, 'w', 'o')
    started = time.monotonic()
    driver.tick(queue)
    assert counts(driver, queue)['working'] == 1
    tick_until_idle(driver, queue)
    assert 1.1 - SLACK <= time.monotonic() - started < mpqueue.LEASE_SECONDS
    meta = driver.job_meta(queue, job_id)
    assert not meta.get('p') and meta.get('y') in (None, mpqueue.TYPE_NORMAL)
    assert meta['x'] == 1
    assert len(meta['r']) == 1 and 'lease expired' in meta['r'][0]
    assert ids_of(driver.reserve(queue, 2)) == [job_id, other]


# -- requeue, recover_owner --------------------------------------------------------------

def test_requeue_puts_a_running_job_back_at_the_head(driver, queue):
    a, b = push(driver, queue, 2)
    driver.pop(queue, 'w', 'o')
    assert driver.requeue(queue, a) == 1
    meta = driver.job_meta(queue, a)
    assert meta['x'] == 0 and meta['r'] == []
    assert counts(driver, queue)['working'] == 0
    assert ids_of(driver.reserve(queue, 1)) == [a]
    assert driver.requeue(queue, a) == 1                # a reserved one too
    assert driver.job_meta(queue, a)['x'] == 0
    assert ids_of(driver.reserve(queue, 2)) == [a, b]


def test_requeue_of_a_job_not_running_returns_0(driver, queue):
    job_id = push1(driver, queue)
    assert driver.requeue(queue, job_id) == 0
    assert driver.requeue(queue, mpqueue._new_id()) == 0
    assert counts(driver, queue)['waiting'] == 1


def test_requeue_in_fail_phase_keeps_exec_number(driver, queue):
    job_id = push1(driver, queue, f=0)
    driver.pop(queue, 'w', 'o')
    driver.lost(queue, job_id, 'worker died')
    driver.pop(queue, 'w', 'o')
    assert driver.requeue(queue, job_id) == 1
    meta = driver.job_meta(queue, job_id)
    assert meta['x'] == 1 and meta['p'] == 'f'


def test_recover_owner_requeues_only_that_owners_jobs(driver, queue):
    a, b, c, d = push(driver, queue, 4)
    assert driver.pop(queue, 'w1', 'owner-1')[0] == a
    assert driver.pop(queue, 'w2', 'owner-2')[0] == b
    assert ids_of(driver.reserve(queue, 1)) == [c]
    assert driver.start(queue, c, 'w3', 'owner-1') == 1
    assert driver.recover_owner(queue, 'owner-1', 'master died') == 2
    status = counts(driver, queue)
    assert status['working'] == 1 and status['waiting'] == 3
    got = ids_of(driver.reserve(queue, 3))
    assert set(got[:2]) == {a, c} and got[2] == d
    assert driver.job_meta(queue, a)['x'] == 0
    assert driver.job_meta(queue, c)['x'] == 0
    meta_b = driver.job_meta(queue, b)
    assert meta_b['o'] == 'owner-2' and meta_b['x'] == 1
    assert driver.recover_owner(queue, 'nobody', 'x') == 0


# -- the failed list ------------------------------------------------------------------

def test_retry_failed_one_then_all(driver, queue):
    a = make_failed(driver, queue, mpqueue.TYPE_TIMEOUT)
    b = make_failed(driver, queue)
    assert counts(driver, queue)['failed'] == 2
    assert driver.retry_failed(queue, a) == 1
    meta = driver.job_meta(queue, a)
    assert meta['x'] == 0 and meta['r'] == []
    assert not meta.get('y') and not meta.get('p') and not meta.get('h')
    assert ids_of(driver.failed(queue)) == [b]
    assert counts(driver, queue)['failed'] == 1 and counts(driver, queue)['waiting'] == 1
    assert driver.retry_failed(queue, a) == 0           # not failed any more
    assert driver.retry_failed(queue, mpqueue._new_id()) == 0
    assert driver.retry_failed(queue) == 1
    assert driver.failed(queue) == []
    assert driver.job_meta(queue, b)['x'] == 0
    assert counts(driver, queue) == {'all': 2, 'waiting': 2, 'working': 0, 'failed': 0,
                                     'over': 0}
    assert ids_of(driver.reserve(queue, 2)) == [a, b]
    assert driver.retry_failed(queue) == 0


def test_retried_failed_job_gets_all_its_attempts_again(driver, queue):
    job_id = push1(driver, queue, f=1, e=0)
    for _ in range(2):
        driver.pop(queue, 'w', 'o')
        driver.lost(queue, job_id, 'died')
    assert driver.job_meta(queue, job_id)['p'] == 'f'
    driver.pop(queue, 'w', 'o')
    driver.fail(queue, job_id, mpqueue.TYPE_NORMAL, [])
    assert driver.retry_failed(queue, job_id) == 1
    driver.pop(queue, 'w', 'o')
    driver.lost(queue, job_id, 'died again')
    meta = driver.job_meta(queue, job_id)
    assert meta['x'] == 1 and not meta.get('p')        # a retry, not the end


def test_delete_failed(driver, queue):
    job_id = make_failed(driver, queue)
    waiting = push1(driver, queue)
    assert driver.delete_failed(queue, waiting) == 0   # only failed jobs
    assert driver.delete_failed(queue, job_id) == 1
    assert driver.job_meta(queue, job_id) is None
    assert driver.delete_failed(queue, job_id) == 0
    assert driver.failed(queue) == []
    assert counts(driver, queue)['failed'] == 0
    assert driver.job_meta(queue, waiting) is not None
    assert ids_of(driver.reserve(queue, 1)) == [waiting]


# -- clean and status -----------------------------------------------------------------

def _every_state(driver, queue):
    """One job in each state; returns their ids and the expected status."""
    done_id, failed_id, working_id, reserved_id, waiting_id = push(driver, queue, 5)
    delayed_id = push1(driver, queue, delay=60)
    driver.pop(queue, 'w', 'o')
    driver.done(queue, done_id)
    driver.pop(queue, 'w', 'o')
    driver.fail(queue, failed_id, mpqueue.TYPE_NORMAL, ['x'])
    driver.pop(queue, 'w', 'o')
    driver.reserve(queue, 1)
    ids = [done_id, failed_id, working_id, reserved_id, waiting_id, delayed_id]
    return ids, {'all': 6, 'waiting': 2, 'working': 2, 'failed': 1, 'over': 1}


def test_status_counts_every_state(driver, queue):
    _, expected = _every_state(driver, queue)
    assert counts(driver, queue) == expected


def test_status_of_unknown_queue_is_zero(driver, queue):
    assert counts(driver, queue) == {'all': 0, 'waiting': 0, 'working': 0, 'failed': 0,
                                     'over': 0}


def test_clean_empties_every_state(driver, queue):
    ids, _ = _every_state(driver, queue)
    other = 'drv-other-%s' % uuid.uuid4().hex[:8]
    kept = push1(driver, other)
    try:
        driver.clean(queue)
        assert counts(driver, queue) == {'all': 0, 'waiting': 0, 'working': 0, 'failed': 0,
                                         'over': 0}
        for job_id in ids:
            assert driver.job_meta(queue, job_id) is None
        assert driver.reserve(queue, 10) == []
        assert driver.failed(queue) == []
        assert driver.tick(queue) is None
        # Other queues are untouched.
        assert driver.job_meta(other, kept) is not None
        assert counts(driver, other)['waiting'] == 1
    finally:
        driver.clean(other)


# -- many processes at once ----------------------------------------------------------------

N_JOBS = 5000
N_PROCS = 4


def _drain(driver, queue, mode, path, go):
    go.wait(30)
    ids = []
    worker = 'w%d' % os.getpid()
    while True:
        if mode == 'pop':
            got = driver.pop(queue, worker, 'owner')
            if got is None:
                break
            ids.append(got[0])
        else:
            got = driver.reserve(queue, 7)
            if not got:
                break
            ids.extend(ids_of(got))
    with open(path, 'w') as f:
        f.write('\n'.join(ids))


def _push_many(driver, queue, n):
    ids = []
    for start in range(0, n, 500):
        ids += push(driver, queue, min(500, n - start))
    return ids


@pytest.mark.parametrize('mode', ['pop', 'reserve'])
def test_concurrent_consumers_get_every_job_once(driver, queue, tmp_path, proc_reaper, mode):
    pushed = _push_many(driver, queue, N_JOBS)
    ctx = multiprocessing.get_context('fork')
    go = ctx.Event()
    paths = [tmp_path / ('%s-%d.ids' % (mode, i)) for i in range(N_PROCS)]
    procs = [ctx.Process(target=_drain, args=(driver, queue, mode, str(p), go))
             for p in paths]
    for proc in procs:
        proc.start()
        proc_reaper.add(proc)
    go.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0, 'consumer %d exited with %r' % (proc.pid, proc.exitcode)
    seen = []
    per_proc = []
    for path in paths:
        text = path.read_text()
        got = text.split('\n') if text else []
        per_proc.append(len(got))
        seen += got
    counter = collections.Counter(seen)
    dupes = [i for i, n in counter.items() if n > 1]
    assert dupes == [], '%d jobs delivered more than once' % len(dupes)
    assert set(seen) == set(pushed) and len(seen) == N_JOBS
    assert counts(driver, queue) == {'all': N_JOBS, 'waiting': 0, 'working': N_JOBS,
                                     'failed': 0, 'over': 0}
    assert sum(1 for n in per_proc if n) >= 2, 'no concurrency happened: %r' % per_proc
    # Each process saw its own share, in push order.
    order = {job_id: i for i, job_id in enumerate(pushed)}
    for path in paths:
        text = path.read_text()
        got = [order[i] for i in text.split('\n')] if text else []
        assert got == sorted(got)
