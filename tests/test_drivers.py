"""The driver contract: the lifecycle steps of ``mpqueue._STEPS``, the same
on every broker.

Every test talks to a driver only through ``execute`` / ``run`` (and its
``waker``), so each broker must pass all of it unchanged: the fixture
``driver`` (conftest.py) gives Redis, SQLite, a Redis Cluster (marked
``cluster``: ``-m 'not cluster'`` leaves it out) and Redis through Sentinel
(marked ``sentinel``).  ``store`` reads what the
driver stored, to check counts against the jobs and that nothing is left
behind.  Times are never slept on blindly: tests sweep and poll with a
deadline, on the broker's clock where a due time matters.
"""

import collections
import json
import os
import select
import socket
import time

import pytest

import mpqueue
from steps import (NAME, PAYLOAD, SLACK, WAIT, assert_depth, broker_clock, cancel, counts,
                   depth, done, empty, fail, failed, ids_of, info, limits_field, lost,
                   make_failed, poll,
                   pop, pop1, push, push1, push_step, renew, requeue, reserve, retry, start,
                   state, taken_back, sweep, sweep_until_due, sweep_until_state, wait_broker_time,
                   zero_counts)


def counts_of(depth_reply):
    return {name: value for name, value in depth_reply.items() if name != 'oldest_created'}


def sweep_until(driver, queue, cond, what):
    """Tick until ``cond()`` is true."""
    return poll(lambda: sweep(driver, queue) and cond(), what)


def subscribed_waker(driver, queue):
    """A waker known to listen: a push has woken it.  (Made just before a
    step, a Redis subscription may not be in place yet when the step
    publishes; a master ticks after making its waker, so it misses nothing.)"""
    waker = driver.waker(queue)
    push1(driver, queue)
    readable, _, _ = select.select([waker], [], [], WAIT)
    assert readable == [waker]
    assert waker.drain() == ([], False)
    return waker


def drain_until(waker, job_id):
    """Read the waker until it reports ``job_id`` cancelled (or, for None, the
    queue paused); the ids it reported cancelled."""
    got, paused = [], []

    def reported():
        if select.select([waker], [], [], 0.05)[0]:
            cancelled, pause = waker.drain()
            got.extend(cancelled)
            paused.append(pause)
        return job_id in got if job_id is not None else any(paused)
    poll(reported, 'the waker to report %s' % ('%s cancelled' % job_id if job_id else 'a pause'))
    return got


# -- push and reserve ----------------------------------------------------------------------

def test_push_is_fifo_and_reserve_hands_out_the_work_fields(driver, queue):
    first = push(driver, queue, 3, timeout=7, fail_number=2, fail_expire=0.5)
    second = push(driver, queue, 2)
    assert counts(driver, queue) == zero_counts(waiting=5, pushed=5)
    got = reserve(driver, queue, 10)
    assert ids_of(got) == first + second
    job = got[0]
    # the fields a worker needs (an option never set may be left out: 0 / none)
    assert {'id', 'payload', 'attempt', 'job', 'create_time', 'timeout', 'fail_number',
            'fail_expire'} <= set(job) <= {'id'} | set(mpqueue._FIELDS)
    assert (job['attempt'], job.get('exec_number', 0), job['timeout'], job['fail_number'],
            job['fail_expire'], job.get('priority', 0)) == (1, 0, 7.0, 2, '0.5', 0)
    assert job['job'] == NAME and job['error_info'] == []
    assert job['payload'] == PAYLOAD
    func, args, kwargs = mpqueue._decode(job['payload'], None)
    assert func.__name__ == 'noop' and args == () and kwargs == {}
    assert got[3]['timeout'] == 0.0 and got[3]['fail_number'] == 3


def test_push_returns_the_ids_given_and_records_the_job(driver, queue):
    before = time.time()
    assert driver.execute(queue, [push_step('job-1', timeout=2.5, fail_number=4,
                                            fail_expire=[1, 2])]) == ['job-1']
    record = info(driver, queue, 'job-1')
    assert record['state'] == 'waiting'
    assert before - 1 <= record['create_time'] <= time.time() + 1
    assert (record['exec_number'], record['attempt'], record['timeout'],
            record['fail_number'], record['fail_expire'], record['job']) == (
        0, 0, 2.5, 4, '[1, 2]', NAME)
    assert 'payload' not in record


def test_push_keeps_payload_bytes_exactly(driver, queue):
    payload = mpqueue._encode('contract', len, (bytes(range(256)) * 4,), {'k': '\u00e9'},
                              b'key', 1 << 20)
    job_id = push1(driver, queue, payload=payload)
    [job] = reserve(driver, queue)
    assert job['id'] == job_id and job['payload'] == payload
    assert mpqueue._decode(job['payload'], b'key')[1] == (bytes(range(256)) * 4,)


def test_info_of_an_unknown_job_is_none(driver, queue):
    assert info(driver, queue, mpqueue._new_id()) is None
    push1(driver, queue)
    assert info(driver, queue, mpqueue._new_id()) is None


def test_tick_of_an_empty_queue_has_nothing_due_and_tells_the_time(driver, queue):
    due, now = sweep(driver, queue)
    assert due is None
    assert abs(now - time.time()) < 1.0


def test_delayed_push_waits_for_a_tick_after_its_due_time(driver, queue):
    delay = 0.6
    started = time.monotonic()
    job_id = push1(driver, queue, delay=delay)
    now_id = push1(driver, queue)
    assert counts(driver, queue) == zero_counts(waiting=1, delayed=1, pushed=2)
    assert state(driver, queue, job_id) == 'delayed'
    due, _ = sweep(driver, queue)
    assert 0 < due <= delay + SLACK
    now_job = pop1(driver, queue)
    assert now_job['id'] == now_id and done(driver, queue, now_job) is True
    assert reserve(driver, queue, 10) == []
    got = sweep_until_due(driver, queue, 10)
    assert time.monotonic() - started >= delay - SLACK
    assert ids_of(got) == [job_id]


def test_tick_returns_seconds_until_the_next_due_time(driver, queue):
    push1(driver, queue, delay=30)
    due, _ = sweep(driver, queue)
    assert 25 < due <= 30
    push1(driver, queue, delay=3)
    due, _ = sweep(driver, queue)
    assert 2 < due <= 3


def test_delayed_jobs_come_out_in_due_order(driver, queue):
    later = push1(driver, queue, delay=0.4)
    sooner = push1(driver, queue, delay=0.2)
    # Nothing is due any more once nothing is delayed (nor reserved or working).
    poll(lambda: sweep(driver, queue)[0] is None, 'both delayed jobs to be due')
    assert ids_of(reserve(driver, queue, 2)) == [sooner, later]


def test_tick_limit_bounds_the_work_of_one_tick(driver, queue):
    ids = push(driver, queue, 3, delay=0.05)      # one batch: one due time
    wait_broker_time(driver, queue, info(driver, queue, ids[0])['create_time'] + 0.05)
    assert counts(driver, queue)['delayed'] == 3
    sweep(driver, queue, 1)
    first = ids_of(reserve(driver, queue, 10))
    assert len(first) == 1 and first[0] in ids
    assert sweep(driver, queue, 10)[0] is not None      # the reserved job goes back later
    rest = ids_of(reserve(driver, queue, 10))
    assert sorted(first + rest) == sorted(ids)


def test_reserve_hands_out_at_most_n_in_order(driver, queue):
    ids = push(driver, queue, 5)
    assert ids_of(reserve(driver, queue, 2)) == ids[:2]
    assert counts(driver, queue) == zero_counts(waiting=3, reserved=2, pushed=5)
    got = reserve(driver, queue, 10)
    assert ids_of(got) == ids[2:]
    assert [job['attempt'] for job in got] == [1, 1, 1]
    assert reserve(driver, queue, 1) == []
    assert counts(driver, queue) == zero_counts(reserved=5, pushed=5)
    assert state(driver, queue, ids[0]) == 'reserved'


# -- a batch, the waker --------------------------------------------------------------------

def test_execute_applies_a_batch_in_order(driver, queue):
    a, b = push_step(), push_step()
    results = driver.execute(queue, [a, b, ('reserve', 1), ('info', a[1], ''), ('sweep', 100)])
    assert len(results) == 5
    assert results[:2] == [a[1], b[1]]
    assert ids_of(results[2]) == [a[1]]
    assert results[3]['state'] == 'reserved'
    assert ids_of(reserve(driver, queue, 5)) == [b[1]]
    assert driver.run(queue, 'depth') == driver.execute(queue, [('depth',)])[0]


def test_depth_in_a_batch_counts_the_steps_before_it(driver, queue):
    results = driver.execute(queue, [push_step(), push_step(), ('reserve', 1), ('depth',),
                                     ('clean', 10), ('depth',)])
    assert counts_of(results[3]) == zero_counts(waiting=1, reserved=1, pushed=2)
    assert results[4] == 2
    assert counts_of(results[5]) == zero_counts()


@pytest.mark.parametrize('bad', [('nope', 1), ('reserve',), ('reserve', 1, 2), ('push', 'x')])
def test_execute_refuses_a_batch_with_a_step_not_in_the_table(driver, queue, bad):
    with pytest.raises(ValueError):
        driver.execute(queue, [push_step(), bad])
    assert counts(driver, queue) == zero_counts()
    assert driver.execute(queue, []) == []


def test_the_waker_wakes_on_push(driver, queue):
    waker = driver.waker(queue)
    try:
        push1(driver, queue)
        readable, _, _ = select.select([waker], [], [], WAIT)
        assert readable == [waker]
        assert waker.drain() == ([], False)
    finally:
        waker.close()


def test_the_waker_wakes_on_a_delayed_push(driver, queue):
    # A master asleep until its next due time must hear of a sooner one.
    waker = driver.waker(queue)
    try:
        push1(driver, queue, delay=30)
        readable, _, _ = select.select([waker], [], [], WAIT)
        assert readable == [waker]
        assert waker.drain() == ([], False)
    finally:
        waker.close()


# -- start and pop ---------------------------------------------------------------------

def test_start_moves_a_reserved_attempt_to_working(driver, queue):
    job_id = push1(driver, queue)
    timed_id = push1(driver, queue, timeout=5)
    job, timed = reserve(driver, queue, 2)
    before = time.time()
    assert start(driver, queue, job, 'host:1', 'owner-1') is True
    assert start(driver, queue, timed, 'host:2', 'owner-1') is True
    after = time.time()
    record = info(driver, queue, job_id)
    assert record['state'] == 'working'
    assert record['exec_number'] == 1 and record['attempt'] == 1
    assert (record['worker_id'], record['owner']) == ('host:1', 'owner-1')
    assert before - 1 <= record['start_time'] <= after + 1
    assert not record.get('deadline')               # no timeout: no deadline
    record = info(driver, queue, timed_id)
    assert record['deadline'] == pytest.approx(record['start_time'] + 5, abs=0.01)
    assert counts(driver, queue) == zero_counts(working=2, pushed=2)
    # An attempt starts once.
    assert start(driver, queue, job, 'host:1', 'owner-1') is False
    assert info(driver, queue, job_id)['exec_number'] == 1


def test_start_of_a_job_not_reserved_is_false(driver, queue):
    job_id = push1(driver, queue)
    for attempt in (0, 1):
        assert driver.run(queue, 'start', job_id, attempt, 'w', 'o') is False
    assert driver.run(queue, 'start', mpqueue._new_id(), 1, 'w', 'o') is False
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=1)
    assert info(driver, queue, job_id)['exec_number'] == 0
    assert ids_of(reserve(driver, queue)) == [job_id]


def take_back_at_once(driver, queue, due):
    """One sweep once every reservation of a batch is over (they end
    microseconds apart, ``due`` the first): sweeps that fell between them
    would take back each on its own, each to the head."""
    wait_broker_time(driver, queue, due + 0.01)
    sweep(driver, queue)
    assert counts(driver, queue)['reserved'] == 0


def test_reserved_but_not_started_goes_back_to_the_head(driver, queue, monkeypatch):
    monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', 0.3)
    ids = push(driver, queue, 3)
    started = time.monotonic()
    stale = reserve(driver, queue, 2)
    assert ids_of(stale) == ids[:2]
    due, now = sweep(driver, queue)
    assert counts(driver, queue)['reserved'] == 2      # not yet
    assert due is not None and due <= 0.3 + SLACK
    take_back_at_once(driver, queue, now + due)
    assert time.monotonic() - started >= 0.3 - SLACK
    assert counts(driver, queue) == zero_counts(waiting=3, pushed=3)
    # Too late to start that attempt; the next one can.
    assert start(driver, queue, stale[0]) is False
    again = reserve(driver, queue, 3)
    assert ids_of(again) == ids                   # back at the head, in order
    assert again[0]['attempt'] == 2 and again[0]['exec_number'] == 0
    assert start(driver, queue, again[0]) is True
    assert info(driver, queue, ids[0])['exec_number'] == 1


def test_expired_reservations_keep_queue_order(driver, queue, monkeypatch):
    # Jobs reserved in one batch come back in the order they were queued,
    # whatever their ids (ids pushed here in descending order on purpose).
    monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', 0.2)
    batch = sorted((push_step() for _ in range(4)), key=lambda s: s[1], reverse=True)
    ids = driver.execute(queue, batch)
    assert ids_of(reserve(driver, queue, 3)) == ids[:3]
    due, now = sweep(driver, queue)
    take_back_at_once(driver, queue, now + due)
    assert ids_of(reserve(driver, queue, 4)) == ids


def test_pop_reserves_and_starts(driver, queue):
    a, b, c = push(driver, queue, 3)
    before = time.time()
    [job] = pop(driver, queue, 1, 'host:9', 'owner-9')
    assert job['id'] == a
    assert (job['attempt'], job['exec_number'], job['worker_id']) == (1, 1, 'host:9')
    assert before - 1 <= job['start_time'] <= time.time() + 1
    assert job['payload'] == PAYLOAD
    record = info(driver, queue, a)
    assert (record['state'], record['owner'], record['exec_number']) == ('working', 'owner-9', 1)
    assert counts(driver, queue) == zero_counts(waiting=2, working=1, pushed=3)
    assert ids_of(pop(driver, queue, 5)) == [b, c]
    assert pop(driver, queue, 1) == []
    assert counts(driver, queue) == zero_counts(working=3, pushed=3)


# -- done, retry, fail ----------------------------------------------------------------

def test_done_forgets_the_job_and_counts_it(driver, queue, store):
    a, b = push(driver, queue, 2)
    job = pop1(driver, queue)
    assert done(driver, queue, job) is True
    assert info(driver, queue, a) is None
    assert store.traces(queue, a) == []
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=2, done=1)
    assert done(driver, queue, job) is False           # once
    assert counts(driver, queue)['done'] == 1


def test_done_of_a_reserved_attempt_not_started_changes_nothing(driver, queue):
    # (The first protocol finished a job that was only reserved.)
    job_id = push1(driver, queue)
    [job] = reserve(driver, queue)
    assert done(driver, queue, job) is False
    assert state(driver, queue, job_id) == 'reserved'
    assert counts(driver, queue) == zero_counts(reserved=1, pushed=1)
    assert start(driver, queue, job) is True
    assert done(driver, queue, job) is True
    assert counts(driver, queue) == zero_counts(pushed=1, done=1)


def test_done_of_an_attempt_taken_back_changes_nothing(driver, queue, monkeypatch):
    # A worker that lost its lease reports success after all; the job was
    # recovered meanwhile.  (The first protocol took the recovered copy back
    # and counted the job done; an attempt that is not current changes
    # nothing now, and the job runs again.)
    job_id = push1(driver, queue, fail_number=3)
    stale = taken_back(driver, queue, job_id, monkeypatch, 'pop')
    assert done(driver, queue, stale) is False
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=1)
    again = pop1(driver, queue)
    assert (again['id'], again['attempt']) == (job_id, 2)
    assert done(driver, queue, again) is True
    assert counts(driver, queue) == zero_counts(pushed=1, done=1)


def test_done_of_an_unknown_job_is_false_and_counts_nothing(driver, queue):
    push1(driver, queue)
    assert driver.run(queue, 'done', mpqueue._new_id(), 1, b'', '', '') is False
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=1)


def test_done_after_a_failure_elsewhere_leaves_no_orphan(driver, queue, monkeypatch, store):
    # A slow worker loses its lease; the recovered job runs elsewhere and
    # fails for good; then the slow worker reports success.
    job_id = push1(driver, queue, fail_number=1)
    slow = taken_back(driver, queue, job_id, monkeypatch, 'pop')
    other = pop1(driver, queue, worker='other')
    assert fail(driver, queue, other, errors=['failed elsewhere']) is True
    assert done(driver, queue, slow) is False
    assert ids_of(failed(driver, queue)) == [job_id]
    assert state(driver, queue, job_id) == 'failed'
    assert_depth(driver, queue, [job_id], store, pushed=1, done=0, failed_total=1)


def test_retry_appends_the_error_and_delays(driver, queue):
    job_id = push1(driver, queue, fail_number=3)
    job = pop1(driver, queue)
    started = time.monotonic()
    assert retry(driver, queue, job, 0.4, 'ValueError: boom') is True
    record = info(driver, queue, job_id)
    assert record['error_info'] == ['ValueError: boom']
    assert record['exec_number'] == 1 and record['state'] == 'delayed'
    assert counts(driver, queue) == zero_counts(delayed=1, pushed=1)
    assert reserve(driver, queue) == []
    got = sweep_until_due(driver, queue)
    assert time.monotonic() - started >= 0.4 - SLACK
    assert ids_of(got) == [job_id]
    assert start(driver, queue, got[0]) is True
    assert info(driver, queue, job_id)['exec_number'] == 2


def test_retry_without_delay_goes_to_the_tail(driver, queue):
    a, b = push(driver, queue, 2)
    assert retry(driver, queue, pop1(driver, queue), 0, 'err') is True
    assert state(driver, queue, a) == 'waiting'
    assert ids_of(reserve(driver, queue, 2)) == [b, a]


def test_retry_of_a_job_not_working_is_false(driver, queue):
    job_id = push1(driver, queue)
    for attempt in (0, 1):
        assert driver.run(queue, 'retry', job_id, attempt, 0, 'err') is False
    assert driver.run(queue, 'retry', mpqueue._new_id(), 1, 0, 'err') is False
    assert info(driver, queue, job_id)['error_info'] == []
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=1)


def test_fail_moves_the_job_to_the_failed_list(driver, queue):
    job_id = push1(driver, queue, fail_number=3)
    retry(driver, queue, pop1(driver, queue), 0, 'e1')
    job = pop1(driver, queue)
    assert job['id'] == job_id and job['error_info'] == ['e1']
    assert fail(driver, queue, job, mpqueue.TYPE_NORMAL, ['e2', 'e3'], 'pkg.mod.Name') is True
    record = info(driver, queue, job_id)
    assert record['state'] == 'failed'
    assert record['error_info'] == ['e1', 'e2', 'e3']
    assert record['type'] == mpqueue.TYPE_NORMAL
    assert record['job'] == 'pkg.mod.Name'
    assert record['exec_number'] == 2
    assert not record.get('phase')
    assert record['fail_time'] >= record['start_time'] and record['end_time'] >= record['fail_time']
    [listed] = failed(driver, queue)
    assert listed['id'] == job_id and listed['error_info'] == ['e1', 'e2', 'e3']
    assert 'payload' not in listed
    assert counts(driver, queue) == zero_counts(failed=1, pushed=1, failed_total=1)
    assert reserve(driver, queue) == []


def test_fail_keeps_the_name_when_none_is_given_and_records_the_type(driver, queue):
    job_id = push1(driver, queue)
    assert fail(driver, queue, pop1(driver, queue), mpqueue.TYPE_TIMEOUT, ['timed out']) is True
    record = info(driver, queue, job_id)
    assert record['job'] == NAME
    assert record['type'] == mpqueue.TYPE_TIMEOUT


def test_failed_lists_oldest_first_with_paging(driver, queue):
    ids = [make_failed(driver, queue) for _ in range(3)]
    assert ids_of(failed(driver, queue)) == ids
    assert ids_of(failed(driver, queue, 1, 1)) == ids[1:2]
    assert ids_of(failed(driver, queue, 0, 2)) == ids[:2]
    assert failed(driver, queue, 3, 10) == []
    assert failed(driver, queue, 0, 0) == []


def test_fail_of_an_attempt_taken_back_leaves_the_handlers_to_run(driver, queue, monkeypatch):
    # The lease lapses while the fail handlers run; the job is recovered to
    # run them again; then the first worker reports the final failure.  (The
    # first protocol took that report; now the stale attempt changes nothing
    # and the job's next attempt runs the handlers.)
    job_id = push1(driver, queue, fail_number=0)
    stale = taken_back(driver, queue, job_id, monkeypatch, 'pop')
    assert info(driver, queue, job_id)['phase'] == 'handlers'
    assert fail(driver, queue, stale, errors=['late']) is False
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=1)
    handlers = pop1(driver, queue)
    assert handlers['phase'] == 'handlers' and handlers['exec_number'] == 1
    assert fail(driver, queue, handlers, errors=['handled']) is True
    assert counts(driver, queue) == zero_counts(failed=1, pushed=1, failed_total=1)
    assert reserve(driver, queue) == []


# -- lost ------------------------------------------------------------------------------

def test_lost_runs_again_while_attempts_remain_then_runs_fail_handlers(driver, queue):
    a = push1(driver, queue, fail_number=1)
    b = push1(driver, queue)
    job = pop1(driver, queue)
    assert job['id'] == a
    assert lost(driver, queue, job, 'worker died (1)') is True
    record = info(driver, queue, a)
    assert record['error_info'] == ['worker died (1)'] and record['exec_number'] == 1
    assert not record.get('phase') and record['state'] == 'waiting'
    assert counts(driver, queue) == zero_counts(waiting=2, pushed=2)
    job = pop1(driver, queue)                     # run again at once, from the head
    assert (job['id'], job['exec_number']) == (a, 2)
    c = push1(driver, queue)
    assert lost(driver, queue, job, 'worker died (2)') is True
    record = info(driver, queue, a)
    assert record['phase'] == 'handlers'
    assert record['type'] == mpqueue.TYPE_NORMAL
    assert record['error_info'] == ['worker died (1)', 'worker died (2)']
    assert record['exec_number'] == 2
    # Its fail handlers run next: at the head.
    assert ids_of(reserve(driver, queue, 3)) == [a, b, c]


def test_a_lost_job_runs_again_at_once_whatever_fail_expire(driver, queue):
    # A worker that died did not fail the job: no fail_expire wait, but the
    # death counts as an attempt (so a job that kills its worker cannot loop).
    job_id = push1(driver, queue, fail_number=3, fail_expire=30)
    other = push1(driver, queue)
    assert lost(driver, queue, pop1(driver, queue)) is True
    assert ids_of(reserve(driver, queue, 2)) == [job_id, other]
    assert info(driver, queue, job_id)['exec_number'] == 1


def test_lost_at_its_timeout_is_not_retried(driver, queue):
    a = push1(driver, queue, fail_number=3, timeout=1)
    b = push1(driver, queue)
    assert lost(driver, queue, pop1(driver, queue), 'killed at its timeout', timeout=True) is True
    record = info(driver, queue, a)
    assert record['type'] == mpqueue.TYPE_TIMEOUT
    assert record['phase'] == 'handlers'
    assert record['exec_number'] == 1
    assert record['error_info'] == ['killed at its timeout']
    again = reserve(driver, queue, 2)
    assert ids_of(again) == [a, b]
    # Running the fail handlers is not another attempt of the job.
    assert start(driver, queue, again[0], 'w2', 'o2') is True
    record = info(driver, queue, a)
    assert (record['exec_number'], record['phase'], record['owner']) == (1, 'handlers', 'o2')
    assert record['worker_id'] == 'w'               # the worker that ran the job
    assert record['handler_start'] >= record['start_time']


def test_lost_of_a_reserved_attempt_that_never_started(driver, queue):
    a, b = push(driver, queue, 2)
    [job] = reserve(driver, queue)
    assert job['id'] == a
    assert lost(driver, queue, job, 'worker died before starting') is True
    record = info(driver, queue, a)
    assert record['error_info'] == [] and record['exec_number'] == 0
    assert ids_of(reserve(driver, queue, 2)) == [a, b]


def test_lost_of_a_job_not_running_is_false(driver, queue):
    failed_id = make_failed(driver, queue)
    job_id = push1(driver, queue)
    assert driver.run(queue, 'lost', job_id, 0, 'x', 0) is False
    assert driver.run(queue, 'lost', mpqueue._new_id(), 1, 'x', 0) is False
    assert driver.run(queue, 'lost', failed_id, 1, 'x', 0) is False
    assert counts(driver, queue) == zero_counts(waiting=1, failed=1, pushed=2, failed_total=1)
    assert info(driver, queue, failed_id)['error_info'] == ['it broke']


def test_lost_while_running_fail_handlers(driver, queue):
    attempts = mpqueue.HANDLER_ATTEMPTS
    job_id = push1(driver, queue, fail_number=0)
    lost(driver, queue, pop1(driver, queue), 'worker died')
    assert info(driver, queue, job_id)['phase'] == 'handlers'
    for k in range(1, attempts + 1):
        job = pop1(driver, queue)
        assert job['id'] == job_id
        assert lost(driver, queue, job, 'handler died (%d)' % k) is True
        record = info(driver, queue, job_id)
        assert record['exec_number'] == 1                 # handlers are not attempts
        if k < attempts:
            assert record['phase'] == 'handlers' and record['handler_runs'] == k
            assert counts(driver, queue)['waiting'] == 1
            assert failed(driver, queue) == []
    record = info(driver, queue, job_id)
    expected = ['worker died'] + ['handler died (%d)' % k for k in range(1, attempts + 1)]
    assert record['error_info'][:len(expected)] == expected
    assert len(record['error_info']) == len(expected) + 1      # plus why it gave up
    assert not record.get('phase')
    assert record['type'] == mpqueue.TYPE_NORMAL
    assert ids_of(failed(driver, queue)) == [job_id]
    assert counts(driver, queue) == zero_counts(failed=1, pushed=1, failed_total=1)


# -- leases and deadlines ----------------------------------------------------------------

@pytest.mark.parametrize('timeout', [0, 30])
def test_tick_recovers_a_lapsed_lease_as_a_lost_attempt(driver, queue, monkeypatch, timeout):
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.3)
    job_id = push1(driver, queue, fail_number=3, timeout=timeout)
    pop1(driver, queue)
    started = time.monotonic()
    sweep(driver, queue)
    assert counts(driver, queue)['working'] == 1        # not yet
    record = sweep_until_state(driver, queue, job_id, 'waiting')
    assert time.monotonic() - started >= 0.3 - SLACK
    assert len(record['error_info']) == 1 and 'lease expired' in record['error_info'][0]
    assert record['exec_number'] == 1
    assert not record.get('phase') and not record.get('type')    # runs again, not a timeout
    assert ids_of(reserve(driver, queue)) == [job_id]


def test_a_lapsed_lease_of_the_last_attempt_runs_fail_handlers(driver, queue, monkeypatch):
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.2)
    job_id = push1(driver, queue, fail_number=0)
    other = push1(driver, queue)
    pop1(driver, queue)
    record = sweep_until_state(driver, queue, job_id, 'waiting')
    assert record['phase'] == 'handlers' and record['type'] == mpqueue.TYPE_NORMAL
    assert ids_of(reserve(driver, queue, 2)) == [job_id, other]


def test_renew_keeps_a_lease_alive(driver, queue, monkeypatch):
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.5)
    job_id = push1(driver, queue)
    job = pop1(driver, queue)
    until = time.monotonic() + 1.2                     # over twice the lease
    while time.monotonic() < until:
        assert renew(driver, queue, job) == 'ok'
        sweep(driver, queue)
        assert counts(driver, queue)['working'] == 1
        time.sleep(0.05)
    assert info(driver, queue, job_id)['error_info'] == []
    record = sweep_until_state(driver, queue, job_id, 'waiting')   # renewals stop: recovered
    assert len(record['error_info']) == 1


def test_renew_of_an_attempt_not_working_is_none(driver, queue):
    job_id = push1(driver, queue)
    for attempt in (0, 1):
        assert driver.run(queue, 'renew', job_id, attempt) is None
    assert driver.run(queue, 'renew', mpqueue._new_id(), 1) is None
    [job] = reserve(driver, queue)
    assert renew(driver, queue, job) is None            # reserved, not started
    assert counts(driver, queue) == zero_counts(reserved=1, pushed=1)


def test_renew_cannot_outlast_the_deadline(driver, queue):
    job_id = push1(driver, queue, timeout=0.2, fail_number=3)
    job = pop1(driver, queue)

    def recovered():
        renew(driver, queue, job)
        sweep(driver, queue)
        return state(driver, queue, job_id) == 'waiting'
    poll(recovered, 'the job past its deadline to be recovered')
    record = info(driver, queue, job_id)
    assert not record.get('phase') and record['exec_number'] == 1      # runs again


def test_tick_recovers_a_job_past_its_deadline_plus_1s_as_an_attempt(driver, queue):
    # Nobody stopped it at its deadline, so its master (or server) is gone: a
    # job that never ran past its timeout must not be failed as a timeout.
    # Recovered at deadline + 1 s (before the lease), as an ordinary attempt.
    job_id = push1(driver, queue, timeout=0.1, fail_number=3)
    other = push1(driver, queue)
    pop1(driver, queue)
    started = time.monotonic()
    sweep(driver, queue)
    assert counts(driver, queue)['working'] == 1
    record = sweep_until_state(driver, queue, job_id, 'waiting')
    assert 1.1 - SLACK <= time.monotonic() - started < mpqueue.LEASE_SECONDS
    assert not record.get('phase') and record.get('type') in (None, mpqueue.TYPE_NORMAL)
    assert record['exec_number'] == 1
    assert len(record['error_info']) == 1 and 'lease expired' in record['error_info'][0]
    assert ids_of(reserve(driver, queue, 2)) == [job_id, other]


# -- requeue, recover --------------------------------------------------------------------

def test_requeue_puts_a_running_job_back_at_the_head(driver, queue):
    a, b = push(driver, queue, 2)
    assert requeue(driver, queue, pop1(driver, queue)) is True
    record = info(driver, queue, a)
    assert record['exec_number'] == 0 and record['error_info'] == []
    assert record['state'] == 'waiting'
    assert counts(driver, queue) == zero_counts(waiting=2, pushed=2)
    [job] = reserve(driver, queue)
    assert job['id'] == a
    assert requeue(driver, queue, job) is True          # a reserved one too
    assert info(driver, queue, a)['exec_number'] == 0
    assert ids_of(reserve(driver, queue, 2)) == [a, b]


def test_requeue_of_a_job_not_running_is_false(driver, queue):
    job_id = push1(driver, queue)
    for attempt in (0, 1):
        assert driver.run(queue, 'requeue', job_id, attempt) is False
    assert driver.run(queue, 'requeue', mpqueue._new_id(), 1) is False
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=1)


def test_requeue_while_fail_handlers_run_keeps_exec_number(driver, queue):
    job_id = push1(driver, queue, fail_number=0)
    lost(driver, queue, pop1(driver, queue))
    assert requeue(driver, queue, pop1(driver, queue)) is True
    record = info(driver, queue, job_id)
    assert record['exec_number'] == 1 and record['phase'] == 'handlers'


def test_recover_requeues_only_the_jobs_of_that_owner(driver, queue):
    a, b, c, d = push(driver, queue, 4)
    assert pop1(driver, queue, 'w1', 'owner-1')['id'] == a
    assert pop1(driver, queue, 'w2', 'owner-2')['id'] == b
    [job_c] = reserve(driver, queue)
    assert start(driver, queue, job_c, 'w3', 'owner-1') is True
    assert driver.run(queue, 'recover', 'owner-1') == 2
    assert counts(driver, queue) == zero_counts(waiting=3, working=1, pushed=4)
    got = ids_of(reserve(driver, queue, 3))
    assert set(got[:2]) == {a, c} and got[2] == d
    assert info(driver, queue, a)['exec_number'] == 0
    assert info(driver, queue, c)['exec_number'] == 0
    record = info(driver, queue, b)
    assert (record['owner'], record['exec_number'], record['state']) == ('owner-2', 1, 'working')
    assert driver.run(queue, 'recover', 'nobody') == 0


# -- the failed list ------------------------------------------------------------------

def test_retry_failed_one_then_all(driver, queue):
    a = make_failed(driver, queue, mpqueue.TYPE_TIMEOUT)
    b = make_failed(driver, queue)
    assert counts(driver, queue)['failed'] == 2
    assert driver.run(queue, 'retry_failed', a, 1) == 1
    record = info(driver, queue, a)
    assert record['state'] == 'waiting'
    assert record['exec_number'] == 0 and record['error_info'] == []
    for name in ('type', 'phase', 'handler_runs', 'fail_time', 'end_time'):
        assert not record.get(name), name
    assert ids_of(failed(driver, queue)) == [b]
    assert counts(driver, queue) == zero_counts(waiting=1, failed=1, pushed=2, failed_total=2)
    assert driver.run(queue, 'retry_failed', a, 1) == 0      # not failed any more
    assert driver.run(queue, 'retry_failed', mpqueue._new_id(), 1) == 0
    assert driver.run(queue, 'retry_failed', '', 100) == 1
    assert failed(driver, queue) == []
    assert info(driver, queue, b)['exec_number'] == 0
    assert counts(driver, queue) == zero_counts(waiting=2, pushed=2, failed_total=2)
    assert ids_of(reserve(driver, queue, 2)) == [a, b]
    assert driver.run(queue, 'retry_failed', '', 100) == 0


def test_a_retried_failed_job_gets_all_its_attempts_again(driver, queue):
    job_id = push1(driver, queue, fail_number=1)
    for _ in range(2):
        lost(driver, queue, pop1(driver, queue), 'died')
    assert info(driver, queue, job_id)['phase'] == 'handlers'
    fail(driver, queue, pop1(driver, queue))
    assert driver.run(queue, 'retry_failed', job_id, 1) == 1
    lost(driver, queue, pop1(driver, queue), 'died again')
    record = info(driver, queue, job_id)
    assert record['exec_number'] == 1 and not record.get('phase')      # runs again


def test_delete_failed(driver, queue, store):
    job_id = make_failed(driver, queue)
    waiting = push1(driver, queue)
    assert driver.run(queue, 'delete_failed', waiting) is False    # only failed jobs
    assert driver.run(queue, 'delete_failed', job_id) is True
    assert info(driver, queue, job_id) is None
    assert store.traces(queue, job_id) == []
    assert driver.run(queue, 'delete_failed', job_id) is False
    assert failed(driver, queue) == []
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=2, failed_total=1)
    assert ids_of(reserve(driver, queue)) == [waiting]


# -- finding jobs: by id or unique key, failed ones by text ------------------------------------

def test_find_a_job_by_id_or_by_the_unique_key_it_holds(driver, queue):
    plain = push1(driver, queue, key='k-plain')
    held = push1(driver, queue, key='k-held', unique='queued')
    window = push1(driver, queue, key='k-window', unique='60')
    assert [driver.run(queue, 'find', text) for text in (
        plain, held, window, 'k-held', 'k-window', 'k-plain', 'K-HELD', 'nope', '')] == [
        plain, held, window, held, window, None, None, None, None]
    assert driver.run(queue, 'find', plain + ':parents') is None
    job = reserve(driver, queue, 3)[1]          # handed out: 'queued' lets go of its key
    assert job['id'] == held and driver.run(queue, 'find', 'k-held') is None
    assert driver.run(queue, 'find', held) == held


def make_failures(driver, queue, *jobs):
    """Fail a job for each (name, key, error) in one batch each; their ids."""
    ids = []
    for name, key, error in jobs:
        job_id = push1(driver, queue, key=key or '')
        job = pop1(driver, queue)
        assert fail(driver, queue, job, errors=['Traceback ...\n' + error], name=name)
        ids.append(job_id)
    return ids


def match(driver, queue, text, count=100, cursor='', limit=100):
    n, records, after = driver.run(queue, 'match_failed', text, count, cursor, limit)
    return n, ids_of(records), after


def test_match_failed_finds_the_text_in_the_name_key_or_errors_ascii_case_blind(driver, queue):
    a, b, c, d = make_failures(driver, queue, ('mod.charge', None, 'ValueError: bad card'),
                               ('mod.sync', 'customer:7', 'KeyError: "id"'),
                               ('mod.Charge_all', None, 'RuntimeError: \u00c9t\u00e9 "x"\n'),
                               ('mod.other', None, 'TypeError: valueerror'))
    assert match(driver, queue, 'charge') == (2, [a, c], '')
    assert match(driver, queue, 'VALUEERROR') == (2, [a, d], '')
    assert match(driver, queue, 'Customer:7') == (1, [b], '')
    assert match(driver, queue, 'KeyError: "id"') == (1, [b], '')
    assert match(driver, queue, '\u00c9t\u00e9 "x"') == (1, [c], '')
    assert match(driver, queue, '\u00e9T\u00c9') == (0, [], '')     # ASCII letters only
    assert match(driver, queue, '') == (4, [a, b, c, d], '')
    assert match(driver, queue, 'nothing') == (0, [], '')
    assert match(driver, queue, 'nValueError') == (0, [], '')     # the stored text has '\\n'
    n, found, after = match(driver, queue, 'mod.', count=2)      # stops at the count-th
    assert (n, found) == (2, [a, b]) and after
    assert match(driver, queue, 'mod.', cursor=after) == (2, [c, d], '')
    assert match(driver, queue, 'mod.', count=0) == (4, [], '')   # counting only
    record = driver.run(queue, 'match_failed', 'bad card', 1, '', 10)[1][0]
    assert record['state'] == 'failed' and record['job'] == 'mod.charge'
    assert record['error_info'] == ['Traceback ...\nValueError: bad card']


def test_match_failed_walks_in_chunks_and_ends_at_the_jobs_failed_by_its_first_step(
        driver, queue):
    ids = make_failures(driver, queue, *[('mod.job%d' % i, None, 'E%d' % (i % 2))
                                         for i in range(7)])
    seen, cursor, total = [], '', 0
    while True:
        n, found, cursor = match(driver, queue, 'e1', cursor=cursor, limit=3)
        seen += found
        total += n
        if not cursor:
            break
        if len(seen) == 1:      # failed after the walk began: not met
            make_failures(driver, queue, ('mod.late', None, 'E1'))
            assert driver.run(queue, 'retry_failed', ids[1], 1) == 1    # retried: gone
    assert (seen, total) == ([ids[1], ids[3], ids[5]], 3)
    # a cursor whose job left the list meanwhile goes on after its place
    n, found, after = match(driver, queue, 'mod.', count=2)
    assert driver.run(queue, 'delete_failed', found[1]) is True
    assert found == [ids[0], ids[2]]
    assert match(driver, queue, 'mod.', count=1, cursor=after)[1] == [ids[3]]


def test_a_walk_meets_jobs_that_failed_in_one_step_once_each(driver, queue):
    push(driver, queue, 6)
    jobs = pop(driver, queue, 6)
    assert all(driver.execute(queue, [('fail', job['id'], job['attempt'], 1, '["E"]', 'f')
                                      for job in jobs]))
    order = ids_of(failed(driver, queue))      # one fail time: the broker's order of ties
    seen, cursor = [], ''
    while True:
        _, found, cursor = match(driver, queue, 'e', cursor=cursor, limit=2)
        seen += found
        if len(seen) == 2:      # the job at the cursor leaves the list
            assert driver.run(queue, 'delete_failed', seen[-1]) is True
        if not cursor:
            break
    assert seen == order


def test_retry_and_delete_matching_act_on_the_matching_jobs_chunk_by_chunk(driver, queue,
                                                                          store):
    ids = make_failures(driver, queue, *[('mod.job%d' % i, None, 'E%d' % (i % 3))
                                         for i in range(8)])
    cursor, retried = '', 0
    while True:
        n, cursor = driver.run(queue, 'retry_matching', 'e0', cursor, 3)
        retried += n
        for job in pop(driver, queue, 10):      # they fail again at once: never met twice
            assert fail(driver, queue, job, errors=['E0 again'])
        if not cursor:
            break
    assert retried == 3
    assert counts(driver, queue)['failed'] == 8
    cursor, deleted = '', 0
    while True:
        n, cursor = driver.run(queue, 'delete_matching', 'E1', cursor, 2)
        deleted += n
        if not cursor:
            break
    assert deleted == 3
    left = ids_of(failed(driver, queue))
    assert left == [ids[i] for i in (2, 5, 0, 3, 6)], left
    for job_id in set(ids) - set(left):
        assert info(driver, queue, job_id) is None and store.traces(queue, job_id) == []
    assert counts(driver, queue) == zero_counts(failed=5, pushed=8, failed_total=11)
    assert driver.run(queue, 'retry_matching', 'nothing', '', 100) == (0, '')


# -- attempts fence every outcome ------------------------------------------------------------

OUTCOMES = {
    'start': lambda driver, queue, job: start(driver, queue, job),
    'renew': lambda driver, queue, job: renew(driver, queue, job),
    'done': lambda driver, queue, job: done(driver, queue, job, b'r', "'r'", ''),
    'retry': lambda driver, queue, job: retry(driver, queue, job, 0, 'late error'),
    'fail': lambda driver, queue, job: fail(driver, queue, job, errors=['late failure']),
    'lost': lambda driver, queue, job: lost(driver, queue, job, 'late death'),
    'lost at timeout': lambda driver, queue, job: lost(driver, queue, job, 'late', True),
    'requeue': lambda driver, queue, job: requeue(driver, queue, job),
    'progress': lambda driver, queue, job: report(driver, queue, job, 0.9, late=True),
}


@pytest.mark.parametrize('again', ['reserve', 'pop'])
@pytest.mark.parametrize('step', list(OUTCOMES))
def test_an_outcome_of_a_stale_attempt_changes_nothing(driver, queue, store, monkeypatch,
                                                       step, again):
    job_id = push1(driver, queue, fail_number=3, result_ttl=60)
    other = push1(driver, queue)
    # The first attempt is taken back by a sweep (a start fences a reservation,
    # the other outcomes a started attempt); the job is handed out again.
    stale = taken_back(driver, queue, job_id, monkeypatch, 'reserve' if step == 'start' else 'pop')
    [current] = reserve(driver, queue) if again == 'reserve' else pop(driver, queue)
    assert current['id'] == job_id and current['attempt'] == stale['attempt'] + 1
    record, before = info(driver, queue, job_id), counts(driver, queue)

    assert OUTCOMES[step](driver, queue, stale) is (None if step == 'renew' else False)
    assert info(driver, queue, job_id) == record
    assert counts(driver, queue) == before
    assert ids_of(reserve(driver, queue, 5)) == [other]        # nothing was put back

    # The current attempt still works.
    if again == 'reserve':
        assert start(driver, queue, current) is True
    assert renew(driver, queue, current) == 'ok'
    assert done(driver, queue, current, b'r', "'r'", '') is True
    assert state(driver, queue, job_id) == 'done'
    assert OUTCOMES[step](driver, queue, stale) is (None if step == 'renew' else False)
    assert_depth(driver, queue, [job_id, other], store, pushed=2, done=1)


# -- progress ----------------------------------------------------------------------------

def report(driver, queue, job, value, **meta):
    """A ``progress`` step of the attempt ``job`` (value None: no fraction)."""
    return driver.run(queue, 'progress', job['id'], job['attempt'],
                      '' if value is None else value, json.dumps(meta))


def shown(driver, queue, job_id):
    """``(progress, meta)`` as ``job_info`` shows them."""
    record = info(driver, queue, job_id)
    public = mpqueue._public_info(queue, dict(record, id=job_id))
    return public['progress'], public['meta']


def test_progress_of_a_running_attempt_is_in_its_record_and_replaced_by_the_next(driver, queue):
    job_id = push1(driver, queue)
    assert shown(driver, queue, job_id) == (None, None)        # never reported
    job = pop1(driver, queue)
    assert report(driver, queue, job, 0.25, rows=25, stage='load') is True
    assert shown(driver, queue, job_id) == (0.25, {'rows': 25, 'stage': 'load'})
    assert report(driver, queue, job, None, stage='index') is True
    assert shown(driver, queue, job_id) == (None, {'stage': 'index'})
    assert report(driver, queue, job, 1) is True
    assert shown(driver, queue, job_id) == (1.0, {})
    assert counts(driver, queue) == zero_counts(working=1, pushed=1)


def test_progress_of_a_reserved_attempt_lands_and_start_keeps_it(driver, queue):
    # (distribute model: a worker may begin before its master's start step lands)
    job_id = push1(driver, queue)
    [job] = reserve(driver, queue)
    assert report(driver, queue, job, 0.1, rows=1) is True
    assert start(driver, queue, job) is True
    assert shown(driver, queue, job_id) == (0.1, {'rows': 1})


def test_progress_of_a_job_not_running_writes_nothing(driver, queue, store):
    job_id = push1(driver, queue, result_ttl=60)
    for attempt in (0, 1):                                      # waiting
        assert driver.run(queue, 'progress', job_id, attempt, 0.5, '{}') is False
    assert driver.run(queue, 'progress', mpqueue._new_id(), 1, 0.5, '{}') is False
    job = pop1(driver, queue)
    assert done(driver, queue, job) is True
    assert report(driver, queue, job, 0.5) is False             # ended
    assert shown(driver, queue, job_id) == (None, None)
    assert_depth(driver, queue, [job_id], store, pushed=1, done=1)


def _end_after_progress(driver, queue, job, how):
    if how == 'done':
        return done(driver, queue, job, b'r', "'r'", '')
    if how == 'retry':
        return retry(driver, queue, job, 60, 'again later')
    if how == 'fail':
        return fail(driver, queue, job, errors=['for good'])
    if how == 'lost':
        return lost(driver, queue, job, 'worker died')
    if how == 'cancel':
        assert cancel(driver, queue, job['id']) == 'working'
        return lost(driver, queue, job, 'killed: cancelled')
    return requeue(driver, queue, job)


@pytest.mark.parametrize('how', ['done', 'retry', 'fail', 'lost', 'cancel', 'requeue'])
def test_no_step_that_ends_an_attempt_touches_its_progress(driver, queue, how):
    job_id = push1(driver, queue, fail_number=0 if how == 'fail' else 3, result_ttl=60)
    job = pop1(driver, queue)
    assert report(driver, queue, job, 0.75, rows=750) is True
    assert _end_after_progress(driver, queue, job, how) is True
    assert info(driver, queue, job_id)['state'] == {
        'done': 'done', 'retry': 'delayed', 'fail': 'failed', 'lost': 'waiting',
        'cancel': 'cancelled', 'requeue': 'waiting'}[how]
    assert shown(driver, queue, job_id) == (0.75, {'rows': 750})


def test_progress_is_kept_as_long_as_the_outcome_and_goes_with_it(driver, queue, store):
    job_id = push1(driver, queue, result_ttl=0.5)
    job = pop1(driver, queue)
    assert report(driver, queue, job, 1.0, rows=3) is True
    assert done(driver, queue, job) is True
    assert shown(driver, queue, job_id) == (1.0, {'rows': 3})
    sweep_until(driver, queue, lambda: info(driver, queue, job_id) is None,
                'the outcome to expire')
    sweep(driver, queue)
    assert store.traces(queue, job_id) == []
    gone = push1(driver, queue)                         # result_ttl 0: nothing kept
    job = pop1(driver, queue)
    assert report(driver, queue, job, 0.5) is True
    assert done(driver, queue, job) is True
    assert info(driver, queue, gone) is None and store.traces(queue, gone) == []


# -- job records and waiters ---------------------------------------------------------------

def test_info_reports_the_state_of_a_job_in_every_state(driver, queue, store):
    reserved_id, working_id = push(driver, queue, 2)
    reserve(driver, queue)
    pop(driver, queue)
    done_id = push1(driver, queue, result_ttl=60)
    done(driver, queue, pop1(driver, queue))
    failed_id = make_failed(driver, queue)
    cancelled_id = push1(driver, queue, result_ttl=60)
    assert cancel(driver, queue, cancelled_id) == 'waiting'
    waiting_id = push1(driver, queue)
    delayed_id = push1(driver, queue, delay=60)
    expected = {waiting_id: 'waiting', delayed_id: 'delayed', reserved_id: 'reserved',
                working_id: 'working', done_id: 'done', failed_id: 'failed',
                cancelled_id: 'cancelled'}
    for job_id, wanted in expected.items():
        record = info(driver, queue, job_id)
        assert record['state'] == wanted, (job_id, record)
        assert 'payload' not in record and record['job'] == NAME
    assert info(driver, queue, mpqueue._new_id()) is None
    assert_depth(driver, queue, list(expected), store, pushed=7, done=1, failed_total=1,
                 cancelled=1)


def _end(driver, queue, job_id, how):
    """End a job that waits, after a first attempt that does not end it."""
    assert retry(driver, queue, pop1(driver, queue), 0, 'not the end') is True
    if how == 'done':
        assert done(driver, queue, pop1(driver, queue)) is True
    elif how == 'fail':
        assert fail(driver, queue, pop1(driver, queue)) is True
    elif how == 'cancel':
        assert cancel(driver, queue, job_id) == 'waiting'
    else:                                    # cancelled while it works
        job = pop1(driver, queue)
        assert cancel(driver, queue, job_id) == 'working'
        assert lost(driver, queue, job, 'killed: cancelled') is True


ENDS = ['done', 'fail', 'cancel', 'cancel while working']


@pytest.mark.parametrize('how', ENDS)
def test_info_with_a_watch_is_notified_once_when_the_job_ends(driver, queue, store, how):
    watcher = store.watcher(queue)
    try:
        job_id = push1(driver, queue)
        assert info(driver, queue, job_id, watcher.address)['state'] == 'waiting'
        assert info(driver, queue, job_id)['waiter'].split('\n') == [watcher.address]
        _end(driver, queue, job_id, how)
        assert watcher.wait(job_id) == [job_id]
    finally:
        watcher.close()


def test_two_waiters_of_one_job_are_both_notified(driver, queue, store):
    watchers = [store.watcher(queue), store.watcher(queue)]
    try:
        job_id = push1(driver, queue)
        for watcher in watchers:
            info(driver, queue, job_id, watcher.address)
        done(driver, queue, pop1(driver, queue))
        for watcher in watchers:
            assert watcher.wait(job_id) == [job_id]
    finally:
        for watcher in watchers:
            watcher.close()


def test_a_watch_on_a_job_that_ended_is_not_stored(driver, queue, store):
    watcher = store.watcher(queue)
    try:
        job_id = push1(driver, queue, result_ttl=60)
        done(driver, queue, pop1(driver, queue))
        record = info(driver, queue, job_id, watcher.address)
        assert record['state'] == 'done'
        assert 'waiter' not in info(driver, queue, job_id)
    finally:
        watcher.close()


# -- result_ttl ------------------------------------------------------------------------

def test_done_with_result_ttl_keeps_the_outcome_until_it_expires(driver, queue, store):
    ttl = 1.0
    job_id = push1(driver, queue, result_ttl=ttl)
    job = pop1(driver, queue)
    assert done(driver, queue, job, b'\x00\xffresult', "'result'", 'a note') is True
    ended = time.monotonic()
    record = info(driver, queue, job_id)
    assert record['state'] == 'done'
    assert record['result'] == b'\x00\xffresult'
    assert (record['result_repr'], record['result_note']) == ("'result'", 'a note')
    assert record['end_time'] >= record['start_time']
    assert not store.payload_kept(queue, job_id)
    expires = store.expires_in(queue, job_id)      # Redis: the record's key expires
    assert expires is None or 0 < expires <= ttl
    sweep(driver, queue)
    assert state(driver, queue, job_id) == 'done'
    assert counts(driver, queue) == zero_counts(pushed=1, done=1)
    sweep_until(driver, queue, lambda: info(driver, queue, job_id) is None,
               'the outcome to expire')
    assert time.monotonic() - ended >= ttl - 0.1
    sweep(driver, queue)         # SQLite: info hides it at once, a sweep drops its row
    assert store.traces(queue, job_id) == []
    assert counts(driver, queue) == zero_counts(pushed=1, done=1)


def test_an_outcome_past_its_result_ttl_is_gone_before_any_tick(driver, queue, store):
    # Redis lets the record's key expire; SQLite keeps the row until a sweep
    # but no step sees it: info is None and cancel knows no such job.
    ahead = broker_clock(driver, queue) - time.time()      # no sweep after this one
    job_id = push1(driver, queue, result_ttl=0.2)
    assert done(driver, queue, pop1(driver, queue), b'result', "'result'", '') is True
    ended = info(driver, queue, job_id)['end_time']
    assert state(driver, queue, job_id) == 'done'
    time.sleep(max(0.0, ended + 0.25 - ahead - time.time()))
    assert info(driver, queue, job_id) is None
    assert cancel(driver, queue, job_id) is None
    assert counts(driver, queue) == zero_counts(pushed=1, done=1)


def test_done_without_result_ttl_leaves_nothing(driver, queue, store):
    job_id = push1(driver, queue)
    assert done(driver, queue, pop1(driver, queue), b'result', "'result'", '') is True
    assert info(driver, queue, job_id) is None
    assert store.traces(queue, job_id) == []


def test_a_cancelled_job_is_kept_for_cancelled_keep_at_least(driver, queue, store,
                                                             monkeypatch):
    monkeypatch.setattr(mpqueue, 'CANCELLED_KEEP', 0.5)     # (a day, really)
    job_id = push1(driver, queue, result_ttl=0.1)
    assert cancel(driver, queue, job_id) == 'waiting'
    assert state(driver, queue, job_id) == 'cancelled'
    sweep_until(driver, queue, lambda: info(driver, queue, job_id) is None,
               'the cancelled record to expire')
    assert store.traces(queue, job_id) == []
    assert counts(driver, queue) == zero_counts(pushed=1, cancelled=1)


# -- cancel ------------------------------------------------------------------------------

@pytest.mark.parametrize('was', ['waiting', 'delayed', 'reserved'])
def test_cancel_of_a_job_not_started_ends_it_at_once(driver, queue, store, was):
    job_id = push1(driver, queue, result_ttl=60, delay=60 if was == 'delayed' else 0)
    other = push1(driver, queue)
    if was == 'reserved':
        [handed] = reserve(driver, queue)
    assert state(driver, queue, job_id) == was
    before = time.time()
    assert cancel(driver, queue, job_id, 'admin') == was
    record = info(driver, queue, job_id)
    assert record['state'] == 'cancelled' and record['cancelled_by'] == 'admin'
    assert before - 1 <= record['cancel_time'] <= record['end_time'] <= time.time() + 1
    assert_depth(driver, queue, [job_id, other], store, pushed=2, cancelled=1)
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=2, cancelled=1)
    assert ids_of(reserve(driver, queue, 5)) == [other]
    if was == 'reserved':
        assert start(driver, queue, handed) is False        # its master was too late
    assert state(driver, queue, job_id) == 'cancelled'


def test_cancel_of_a_reserved_job_tells_the_masters(driver, queue):
    waker = subscribed_waker(driver, queue)
    try:
        [job] = reserve(driver, queue)
        job_id = job['id']
        assert cancel(driver, queue, job_id) == 'reserved'
        assert drain_until(waker, job_id) == [job_id]
    finally:
        waker.close()


def test_cancel_of_a_working_job_flags_it_and_tells_the_masters(driver, queue):
    waker = subscribed_waker(driver, queue)
    try:
        job = pop1(driver, queue)
        job_id = job['id']
        before = time.time()
        assert cancel(driver, queue, job_id, 'admin') == 'working'
        record = info(driver, queue, job_id)
        assert record['state'] == 'working' and record['cancelled_by'] == 'admin'
        assert before - 1 <= record['cancel_time'] <= time.time() + 1
        assert renew(driver, queue, job) == 'cancel'
        assert drain_until(waker, job_id) == [job_id]
        assert counts(driver, queue) == zero_counts(working=1, pushed=1)
        # A second cancel changes nothing.
        assert cancel(driver, queue, job_id, 'someone else') == 'working'
        assert info(driver, queue, job_id) == record
    finally:
        waker.close()


@pytest.mark.parametrize('outcome', ['lost', 'lost at timeout', 'retry', 'fail', 'requeue',
                                     'lease expired', 'recover'])
def test_a_cancelled_working_job_ends_cancelled_never_retried(driver, queue, store,
                                                              monkeypatch, outcome):
    if outcome == 'lease expired':
        monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.2)
    job_id = push1(driver, queue, fail_number=3, result_ttl=60)
    other = push1(driver, queue)
    job = pop1(driver, queue, owner='owner-1')
    assert cancel(driver, queue, job_id) == 'working'
    if outcome == 'lease expired':
        sweep_until_state(driver, queue, job_id, 'cancelled')
    elif outcome == 'recover':
        assert driver.run(queue, 'recover', 'owner-1') == 1
    else:
        assert OUTCOMES[outcome](driver, queue, job) is True
    record = info(driver, queue, job_id)
    assert record['state'] == 'cancelled'
    assert not record.get('phase')                  # no fail handlers either
    assert_depth(driver, queue, [job_id, other], store, pushed=2, cancelled=1, done=0,
                 failed_total=0)
    assert ids_of(reserve(driver, queue, 5)) == [other]
    assert failed(driver, queue) == []


@pytest.mark.parametrize('end', ['done', 'failed', 'cancelled'])
def test_cancel_of_a_finished_job_changes_nothing(driver, queue, store, end):
    if end == 'failed':
        job_id = make_failed(driver, queue)
    else:
        job_id = push1(driver, queue, result_ttl=60)
        if end == 'done':
            done(driver, queue, pop1(driver, queue))
        else:
            cancel(driver, queue, job_id)
    record, before = info(driver, queue, job_id), counts(driver, queue)
    assert cancel(driver, queue, job_id) == end
    assert info(driver, queue, job_id) == record
    assert counts(driver, queue) == before
    assert ids_of(failed(driver, queue)) == ([job_id] if end == 'failed' else [])


def test_cancel_of_an_unknown_job_is_none_and_writes_nothing(driver, queue, store):
    assert cancel(driver, queue, mpqueue._new_id()) is None
    assert store.leftovers(queue) == []
    assert counts(driver, queue) == zero_counts()


# -- priorities -------------------------------------------------------------------------

@pytest.mark.parametrize('take', ['reserve', 'pop'])
def test_higher_priorities_first_fifo_within_a_level(driver, queue, take):
    levels = [0, 5, 9, 5, 0, 9, 1, 0]
    ids = [push1(driver, queue, priority=level) for level in levels]
    by_level = {}
    for level, job_id in zip(levels, ids):
        by_level.setdefault(level, []).append(job_id)
    expected = [job_id for level in sorted(by_level, reverse=True) for job_id in by_level[level]]
    hand = reserve if take == 'reserve' else pop
    got = hand(driver, queue, 3) + hand(driver, queue, 10)
    assert ids_of(got) == expected
    assert [job['priority'] for job in got] == sorted(levels, reverse=True)
    assert info(driver, queue, ids[2])['priority'] == 9


def test_depth_oldest_created_is_the_oldest_waiting_job_of_any_level(driver, queue):
    old = push1(driver, queue)
    push1(driver, queue, priority=5)
    oldest = info(driver, queue, old)['create_time']
    assert depth(driver, queue)['oldest_created'] == oldest
    assert ids_of(reserve(driver, queue)) != [old]              # the level 5 job goes first
    assert depth(driver, queue)['oldest_created'] == oldest
    reserve(driver, queue)
    assert depth(driver, queue)['oldest_created'] is None


def test_a_delayed_job_goes_to_its_priority_when_due(driver, queue):
    low = push1(driver, queue)
    high = push1(driver, queue, priority=3, delay=0.1)
    sweep_until_state(driver, queue, high, 'waiting')
    assert ids_of(reserve(driver, queue, 2)) == [high, low]


COME_BACK = ['retry', 'retry delayed', 'retry_failed', 'requeue', 'lost', 'lost at timeout',
             'reservation expired', 'lease expired']


@pytest.mark.parametrize('how', COME_BACK)
def test_a_job_that_comes_back_keeps_its_priority(driver, queue, monkeypatch, how):
    high = push1(driver, queue, priority=5, fail_number=3)
    same = push1(driver, queue, priority=5)
    low = push1(driver, queue, priority=0)
    if how in ('reservation expired', 'lease expired'):
        taken_back(driver, queue, high, monkeypatch, 'reserve' if how.startswith('res') else 'pop')
    else:
        job = pop1(driver, queue)
        assert job['id'] == high
        if how == 'retry':
            retry(driver, queue, job, 0)
        elif how == 'retry delayed':
            retry(driver, queue, job, 0.1)
            sweep_until_state(driver, queue, high, 'waiting')
        elif how == 'retry_failed':
            fail(driver, queue, job)
            assert driver.run(queue, 'retry_failed', high, 1) == 1
        else:
            assert OUTCOMES[how](driver, queue, job) is True
    assert info(driver, queue, high)['priority'] == 5
    # A retry goes to the tail of its level, the others back to its head.
    first = [same, high] if how.startswith('retry') else [high, same]     # retry_failed too
    assert ids_of(reserve(driver, queue, 3)) == first + [low]


# -- unique holds -----------------------------------------------------------------------

MODES = ['queued', 'active', '30']


@pytest.mark.parametrize('mode', MODES)
def test_a_conflicting_push_returns_the_holder_and_stores_nothing(driver, queue, store, mode):
    holder = push1(driver, queue, key='k', unique=mode)
    refused = mpqueue._new_id()
    assert driver.execute(queue, [push_step(refused, key='k', unique=mode)]) == [holder]
    assert info(driver, queue, refused) is None
    assert store.traces(queue, refused) == []
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=1)
    assert store.holds(queue) == {'k': holder}
    # Another key, or the same key without a unique mode, is no conflict.
    other = push1(driver, queue, key='other', unique=mode)
    free = push1(driver, queue, key='k')
    assert len({holder, other, free}) == 3
    assert info(driver, queue, free)['key'] == 'k'
    assert counts(driver, queue) == zero_counts(waiting=3, pushed=3)
    assert store.holds(queue) == {'k': holder, 'other': other}


@pytest.mark.parametrize('mode', ['queued', 'active'])
def test_a_job_holds_its_key_while_it_waits_or_is_delayed(driver, queue, store, mode):
    delayed = push1(driver, queue, key='d', unique=mode, delay=60)
    assert push1(driver, queue, key='d', unique=mode) == delayed
    holder = push1(driver, queue, key='k', unique=mode)
    assert push1(driver, queue, key='k', unique=mode) == holder
    assert counts(driver, queue)['pushed'] == 2
    [job] = reserve(driver, queue)
    assert job['id'] == holder
    if mode == 'active':                    # 'active': until the job ends
        assert push1(driver, queue, key='k', unique=mode) == holder
        assert store.holds(queue) == {'d': delayed, 'k': holder}
    else:                                   # 'queued': no longer once handed out
        assert store.holds(queue) == {'d': delayed}
        assert push1(driver, queue, key='k', unique=mode) != holder


@pytest.mark.parametrize('how', ['reserve, start', 'pop'])
def test_a_queued_hold_is_released_when_the_job_is_handed_out(driver, queue, store, how):
    # The worker may begin the job before its start is recorded: a push from
    # its first line must already be accepted.
    holder = push1(driver, queue, key='k', unique='queued')
    job = reserve(driver, queue)[0] if how == 'reserve, start' else pop1(driver, queue)
    assert store.holds(queue) == {}
    second = push1(driver, queue, key='k', unique='queued')
    assert second != holder
    assert state(driver, queue, second) == 'waiting'
    assert store.holds(queue) == {'k': second}
    if how == 'reserve, start':
        assert start(driver, queue, job) is True
        assert store.holds(queue) == {'k': second}
    assert ids_of(pop(driver, queue)) == [second]
    third = push1(driver, queue, key='k', unique='queued')
    assert third not in (holder, second)


@pytest.mark.parametrize('back', ['lost', 'requeue', 'expired'])
def test_a_reservation_that_comes_back_takes_its_queued_key_again(driver, queue, store,
                                                                   monkeypatch, back):
    monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', 0.2)
    holder = push1(driver, queue, key='k', unique='queued')
    [job] = reserve(driver, queue)
    assert store.holds(queue) == {}
    if back == 'lost':
        assert lost(driver, queue, job) is True
    elif back == 'requeue':
        assert requeue(driver, queue, job) is True
    else:
        sweep_until(driver, queue, lambda: counts(driver, queue)['reserved'] == 0,
                   'the reservation to expire')
    assert state(driver, queue, holder) == 'waiting'
    assert store.holds(queue) == {'k': holder}
    assert push1(driver, queue, key='k', unique='queued') == holder
    # Unless another job took the key meanwhile: then both wait.
    [job] = reserve(driver, queue)
    other = push1(driver, queue, key='k', unique='queued')
    assert lost(driver, queue, job) is True
    assert store.holds(queue) == {'k': other}
    assert sorted(ids_of(reserve(driver, queue, 2))) == sorted([holder, other])


@pytest.mark.parametrize('end', ['done', 'final fail', 'cancel', 'cancel while working',
                                 'clean'])
def test_an_active_hold_lasts_until_the_job_ends(driver, queue, store, end):
    holder = push1(driver, queue, key='k', unique='active', fail_number=0)
    if end == 'cancel':
        assert cancel(driver, queue, holder) == 'waiting'
    else:
        job = pop1(driver, queue)
        assert push1(driver, queue, key='k', unique='active') == holder     # while working
        assert retry(driver, queue, job, 0.05) is True
        assert push1(driver, queue, key='k', unique='active') == holder     # retry delayed
        sweep_until_state(driver, queue, holder, 'waiting')
        job = pop1(driver, queue)
        assert push1(driver, queue, key='k', unique='active') == holder
        if end == 'done':
            assert done(driver, queue, job) is True
        elif end == 'final fail':
            assert fail(driver, queue, job) is True
        elif end == 'cancel while working':
            assert cancel(driver, queue, holder) == 'working'
            assert push1(driver, queue, key='k', unique='active') == holder   # not ended yet
            assert lost(driver, queue, job) is True
        else:
            empty(driver, queue)
            assert store.holds(queue) == {}
    second = push1(driver, queue, key='k', unique='active')
    assert second != holder
    assert state(driver, queue, second) == 'waiting'
    assert store.holds(queue) == {'k': second}


@pytest.mark.parametrize('how', ['lost', 'lost at timeout'])
def test_a_job_queued_for_its_fail_handlers_does_not_take_its_key_again(driver, queue, store,
                                                                        how):
    # It will not run again: a push that got its id would be a push lost.
    holder = push1(driver, queue, key='k', unique='queued', fail_number=0)
    job = pop1(driver, queue)
    assert store.holds(queue) == {}
    assert OUTCOMES[how](driver, queue, job) is True
    assert state(driver, queue, holder) == 'waiting'
    assert store.holds(queue) == {}
    second = push1(driver, queue, key='k', unique='queued')
    assert second != holder
    assert store.holds(queue) == {'k': second}
    [handlers] = reserve(driver, queue)
    assert handlers['id'] == holder and handlers['phase'] == mpqueue._PHASE_HANDLERS
    assert start(driver, queue, handlers) is True
    assert fail(driver, queue, handlers) is True
    assert store.holds(queue) == {'k': second}


def test_a_hold_of_seconds_expires_on_the_broker_clock(driver, queue, store):
    holder = push1(driver, queue, key='k', unique='1')
    created = info(driver, queue, holder)['create_time']
    assert done(driver, queue, pop1(driver, queue)) is True
    assert push1(driver, queue, key='k', unique='1') == holder     # ended: the hold lasts
    wait_broker_time(driver, queue, created + 1)
    second = push1(driver, queue, key='k', unique='1')
    assert second != holder
    assert store.holds(queue) == {'k': second}
    # A sweep drops the holds that expired.
    wait_broker_time(driver, queue, info(driver, queue, second)['create_time'] + 1)
    sweep(driver, queue)
    assert store.holds(queue) == {}
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=2, done=1)


@pytest.mark.parametrize('mode', MODES)
def test_two_pushes_of_one_key_in_one_batch(driver, queue, mode):
    first, second = push_step(key='k', unique=mode), push_step(key='k', unique=mode)
    assert driver.execute(queue, [first, second]) == [first[1], first[1]]
    assert info(driver, queue, second[1]) is None
    assert counts(driver, queue) == zero_counts(waiting=1, pushed=1)


# -- depth -----------------------------------------------------------------------------

def _every_state(driver, queue):
    """One job in each live state, one done and one cancelled; their ids."""
    done_id, failed_id, working_id, reserved_id, waiting_id = push(driver, queue, 5)
    delayed_id = push1(driver, queue, delay=60)
    cancelled_id = push1(driver, queue, delay=60)
    blocked_id = push1(driver, queue, parents=[working_id])
    done(driver, queue, pop1(driver, queue))
    fail(driver, queue, pop1(driver, queue))
    pop1(driver, queue)
    reserve(driver, queue)
    cancel(driver, queue, cancelled_id)
    return [done_id, failed_id, working_id, reserved_id, waiting_id, delayed_id, cancelled_id,
            blocked_id]


def test_depth_counts_every_state(driver, queue, store):
    ids = _every_state(driver, queue)
    assert counts(driver, queue) == dict(
        waiting=1, delayed=1, reserved=1, working=1, failed=1, blocked=1, pushed=8, done=1,
        failed_total=1, cancelled=1, expired=0)
    assert_depth(driver, queue, ids, store)


def test_depth_of_an_unknown_queue_is_zero(driver, queue, store):
    assert depth(driver, queue) == dict(zero_counts(), oldest_created=None)
    assert store.leftovers(queue) == []


def test_depth_stays_exact_through_every_path(driver, queue, store, monkeypatch):
    ids = push(driver, queue, 6, fail_number=1) + push(driver, queue, 2, delay=60)
    ids.append(push1(driver, queue, priority=7))
    n = dict(pushed=9, done=0, failed_total=0, cancelled=0)

    def check():
        assert_depth(driver, queue, ids, store, **n)

    check()
    top, a = reserve(driver, queue, 2)
    check()
    assert start(driver, queue, top) is True
    check()
    b = pop1(driver, queue)
    assert done(driver, queue, b) is True
    n['done'] += 1
    check()
    assert retry(driver, queue, top, 0, 'err') is True             # to waiting
    check()
    assert start(driver, queue, a) is True
    assert retry(driver, queue, a, 30, 'err') is True              # to delayed
    check()
    c = pop1(driver, queue)
    assert fail(driver, queue, c) is True
    n['failed_total'] += 1
    check()
    d = pop1(driver, queue)
    assert lost(driver, queue, d) is True                          # runs again
    check()
    d = pop1(driver, queue)
    assert requeue(driver, queue, d) is True
    check()
    # taken back by a sweep: a reservation, then a lease
    monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', 0.1)
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.1)
    [r] = reserve(driver, queue)
    check()
    sweep_until_state(driver, queue, r['id'], 'waiting')
    check()
    p = pop1(driver, queue)
    check()
    sweep_until_state(driver, queue, p['id'], 'waiting')
    check()
    monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', 0.5)
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 10.0)
    # a dead master's jobs
    pop(driver, queue, 2, owner='dead')
    check()
    assert driver.run(queue, 'recover', 'dead') == 2
    check()
    # cancel in every state it can happen in
    waiting = [i for i in ids if state(driver, queue, i) == 'waiting']
    delayed = [i for i in ids if state(driver, queue, i) == 'delayed']
    assert cancel(driver, queue, waiting[-1]) == 'waiting'
    assert cancel(driver, queue, delayed[0]) == 'delayed'
    n['cancelled'] += 2
    check()
    [r] = reserve(driver, queue)
    assert cancel(driver, queue, r['id']) == 'reserved'
    n['cancelled'] += 1
    check()
    w = pop1(driver, queue)
    assert cancel(driver, queue, w['id']) == 'working'
    check()
    assert lost(driver, queue, w) is True
    n['cancelled'] += 1
    check()
    # the failed list
    assert driver.run(queue, 'retry_failed', c['id'], 1) == 1
    check()
    f = pop1(driver, queue)
    assert fail(driver, queue, f) is True
    n['failed_total'] += 1
    check()
    assert driver.run(queue, 'delete_failed', f['id']) is True
    check()
    assert driver.run(queue, 'clean', 2) == 2
    check()


# -- pause and resume ----------------------------------------------------------------------

@pytest.mark.parametrize('take', ['reserve', 'pop'])
def test_a_paused_queue_hands_out_nothing_and_accrues_until_resume(driver, queue, take):
    first = push1(driver, queue)
    assert driver.run(queue, 'paused') is False
    assert driver.execute(queue, [('pause',), ('pause',), ('paused',)]) == [True, False, True]
    later = push1(driver, queue)
    delayed = push1(driver, queue, delay=0.1)
    sweep_until_state(driver, queue, delayed, 'waiting')     # due: it waits in line
    hand = reserve if take == 'reserve' else pop
    assert hand(driver, queue, 10) == []
    assert counts(driver, queue) == zero_counts(waiting=3, pushed=3)
    assert driver.execute(queue, [('resume',), ('resume',), ('paused',)]) == [True, False,
                                                                              False]
    assert ids_of(hand(driver, queue, 10)) == [first, later, delayed]


def test_pause_and_resume_in_one_batch_take_effect_in_order(driver, queue):
    job_id = push1(driver, queue)
    assert ids_of(driver.execute(queue, [('pause',), ('reserve', 5), ('resume',),
                                         ('reserve', 5)])[3]) == [job_id]


def test_pause_tells_the_masters_once_and_resume_wakes_them(driver, queue):
    waker = subscribed_waker(driver, queue)
    try:
        assert driver.run(queue, 'pause') is True
        drain_until(waker, None)
        assert driver.run(queue, 'pause') is False        # paused already: no news
        assert driver.run(queue, 'resume') is True
        readable, _, _ = select.select([waker], [], [], WAIT)
        assert readable == [waker]
        assert waker.drain() == ([], False)
    finally:
        waker.close()


def test_running_jobs_finish_and_outcomes_land_while_paused(driver, queue):
    push1(driver, queue)
    push1(driver, queue, fail_number=2)
    job, retried = pop(driver, queue, 2)
    driver.run(queue, 'pause')
    assert done(driver, queue, job) is True
    assert retry(driver, queue, retried, 0, 'again') is True
    assert state(driver, queue, retried['id']) == 'waiting'     # back in line, not handed out
    assert pop(driver, queue, 5) == []
    driver.run(queue, 'resume')
    assert ids_of(pop(driver, queue, 5)) == [retried['id']]


def test_clean_leaves_a_queue_paused(driver, queue):
    push1(driver, queue)
    driver.run(queue, 'pause')
    empty(driver, queue)
    assert driver.run(queue, 'paused') is True
    push1(driver, queue)
    assert reserve(driver, queue) == []
    driver.run(queue, 'resume')
    assert len(reserve(driver, queue)) == 1


def test_a_pause_is_per_queue(driver, queue):
    other = queue + '-other'
    try:
        driver.run(other, 'pause')
        push1(driver, queue)
        push1(driver, other)
        assert len(reserve(driver, queue)) == 1 and reserve(driver, other) == []
    finally:
        driver.run(other, 'resume')
        empty(driver, other)


# -- clean, and bulk steps in chunks ----------------------------------------------------------

def test_clean_empties_every_state_of_one_queue(driver, queue, store):
    ids = _every_state(driver, queue)
    other = queue + '-other'
    kept = push1(driver, other)
    try:
        assert driver.run(queue, 'clean', 100) == 7     # the kept cancelled one too
        assert counts(driver, queue) == zero_counts()
        for job_id in ids:
            assert info(driver, queue, job_id) is None
        assert reserve(driver, queue, 10) == []
        assert failed(driver, queue) == []
        assert sweep(driver, queue)[0] is None
        assert store.leftovers(queue) == []
        # Other queues are untouched.
        assert state(driver, other, kept) == 'waiting'
        assert counts(driver, other) == zero_counts(waiting=1, pushed=1)
    finally:
        empty(driver, other)
    assert store.leftovers(other) == []


def test_clean_in_chunks_keeps_the_counters_until_the_last(driver, queue, store):
    ids = [make_failed(driver, queue) for _ in range(2)] + push(driver, queue, 3, result_ttl=60)
    for job in pop(driver, queue, 3):
        done(driver, queue, job)
    ids += push(driver, queue, 4)
    counters = dict(pushed=9, done=3, failed_total=2, cancelled=0)
    assert_depth(driver, queue, ids, store, **counters)
    left = len(ids)
    for expected in (4, 4):
        assert driver.run(queue, 'clean', 4) == expected
        left -= expected
        assert sum(info(driver, queue, job_id) is not None for job_id in ids) == left
        assert_depth(driver, queue, ids, store, **counters)
    assert driver.run(queue, 'clean', 4) == 1
    assert counts(driver, queue) == zero_counts()
    assert store.leftovers(queue) == []


def test_retry_failed_in_chunks_oldest_first(driver, queue):
    ids = [make_failed(driver, queue) for _ in range(7)]
    for n, left in ((3, 4), (3, 1), (1, 0)):
        assert driver.run(queue, 'retry_failed', '', 3) == n
        assert ids_of(failed(driver, queue)) == ids[len(ids) - left:]
        assert counts(driver, queue) == zero_counts(waiting=7 - left, failed=left, pushed=7,
                                                    failed_total=7)
    assert driver.run(queue, 'retry_failed', '', 3) == 0
    assert ids_of(reserve(driver, queue, 10)) == ids


# -- many processes at once ----------------------------------------------------------------

N_JOBS = 5000
N_PROCS = 4


def _drain(driver, queue, mode, path, go):
    go.wait(30)
    ids = []
    while True:
        if mode == 'pop':
            got = pop(driver, queue, 3, 'w%d' % os.getpid(), 'owner')
        else:
            got = reserve(driver, queue, 7)
        if not got:
            break
        ids.extend(ids_of(got))
    with open(path, 'w') as f:
        f.write('\n'.join(ids))


@pytest.mark.parametrize('mode', ['pop', 'reserve'])
def test_concurrent_consumers_get_every_job_once(driver, queue, tmp_path, proc_reaper, mode):
    import multiprocessing
    pushed = []
    for _ in range(0, N_JOBS, 500):
        pushed += push(driver, queue, 500)
    ctx = multiprocessing.get_context('fork')
    go = ctx.Event()
    paths = [tmp_path / ('%s-%d.ids' % (mode, i)) for i in range(N_PROCS)]
    procs = [ctx.Process(target=_drain, args=(driver, queue, mode, str(p), go)) for p in paths]
    for proc in procs:
        proc.start()
        proc_reaper.add(proc)
    go.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0, 'consumer %d exited with %r' % (proc.pid, proc.exitcode)
    per_proc = []
    for path in paths:
        text = path.read_text()
        per_proc.append(text.split('\n') if text else [])
    seen = [job_id for got in per_proc for job_id in got]
    dupes = [i for i, n in collections.Counter(seen).items() if n > 1]
    assert dupes == [], '%d jobs handed out more than once' % len(dupes)
    assert set(seen) == set(pushed) and len(seen) == N_JOBS
    held = 'working' if mode == 'pop' else 'reserved'
    assert counts(driver, queue) == zero_counts(pushed=N_JOBS, **{held: N_JOBS})
    assert sum(1 for got in per_proc if got) >= 2, 'no concurrency happened: %r' % [
        len(got) for got in per_proc]
    # Each process saw its own share, in push order.
    order = {job_id: i for i, job_id in enumerate(pushed)}
    for got in per_proc:
        positions = [order[i] for i in got]
        assert positions == sorted(positions)


def test_redis_waker_finds_the_socket_of_its_subscription(redis_db_url):
    """redis-py has no public call for a connection's socket: the Redis waker
    reads ``PubSub.connection._sock`` (setup.cfg bounds redis-py for it).  If a
    redis-py release renames it, this fails here, not as a master that never
    wakes."""
    driver = mpqueue.RedisDriver(url=redis_db_url, prefix='mpqtest-sock')
    waker = driver.waker('q')
    try:
        fd = waker.fileno()
        assert fd >= 0, 'PubSub.connection._sock is gone from this redis-py'
        probe = socket.socket(fileno=os.dup(fd))
        try:
            port = probe.getpeername()[1]
        finally:
            probe.close()
        assert port == int(redis_db_url.rsplit(':', 1)[1].split('/')[0])
    finally:
        waker.close()
        driver.close()


def test_redis_watch_outlives_a_restart_of_the_server():
    """``result()`` waits on a watch: when the server goes away under it (a
    restart, a Sentinel failover), ``wait`` returns by its timeout without
    raising, and subscribes again once the server answers."""
    import threading
    import redis
    from redis_server import RedisServer, free_port
    server = RedisServer(free_port()).start()
    driver = mpqueue.RedisDriver(url=server.url + '/0', prefix='mpqtest-watch')
    watch = driver.watch('q')
    publisher = None
    try:
        server.kill()
        started = time.monotonic()
        watch.wait(1.0)                     # the server is gone: no exception
        assert 1.0 <= time.monotonic() - started < 3.0
        server.start()
        started = time.monotonic()
        watch.wait(10)                      # subscribed again: returns at once
        assert time.monotonic() - started < 2.0
        publisher = redis.Redis.from_url(server.url)
        woke = threading.Event()
        waiter = threading.Thread(target=lambda: (watch.wait(10), woke.set()), daemon=True)
        waiter.start()
        poll(lambda: publisher.pubsub_numsub('mpqtest-watch:{q}:ended')[0][1] == 1,
             'the watch to be subscribed again')
        started = time.monotonic()
        publisher.publish('mpqtest-watch:{q}:ended', 'some-id')
        assert woke.wait(5) and time.monotonic() - started < 2.0
        waiter.join(5)
    finally:
        watch.close()
        driver.close()
        if publisher is not None:
            publisher.close()
        server.stop()


# -- limits ----------------------------------------------------------------------------------

def limited(driver, queue, n, *names, **definitions):
    """Push ``n`` jobs that hold limits ``names`` of ``definitions``; their ids."""
    return push(driver, queue, n, limits=limits_field(*names, **definitions))


def held_and_waiting(driver, queue):
    return driver.run(queue, 'limits')


TAKE = {'reserve': lambda driver, queue, n: reserve(driver, queue, n),
        'pop': lambda driver, queue, n: pop(driver, queue, n)}


@pytest.mark.parametrize('take', list(TAKE))
def test_a_concurrency_limit_hands_out_n_and_parks_the_rest(driver, queue, store, take):
    ids = limited(driver, queue, 5, stripe={'concurrency': 2})
    plain = push1(driver, queue)
    got = TAKE[take](driver, queue, 10)
    # the plain job behind the parked ones flows; the parked ones used no attempt
    assert ids_of(got) == ids[:2] + [plain]
    assert held_and_waiting(driver, queue) == {'stripe': (2, 3)}
    for job_id in ids[2:]:
        record = info(driver, queue, job_id)
        assert (record['state'], record['waiting_for'], record['attempt']) == \
            ('waiting', 'stripe', 0)
    assert TAKE[take](driver, queue, 10) == []       # nothing polls them back
    assert_depth(driver, queue, ids + [plain], store,
                 **{'waiting': 3, ('reserved' if take == 'reserve' else 'working'): 3})


def _ending(how):
    """Steps that end a started (or, for the reserved ones, reserved) attempt."""
    return {
        'done': lambda d, q, j, mp: done(d, q, j),
        'retry': lambda d, q, j, mp: retry(d, q, j, 0, 'e'),
        'fail': lambda d, q, j, mp: fail(d, q, j, errors=['e']),
        'lost': lambda d, q, j, mp: lost(d, q, j, 'died'),
        'lost at timeout': lambda d, q, j, mp: lost(d, q, j, 'late', True),
        'requeue': lambda d, q, j, mp: requeue(d, q, j),
        'recover': lambda d, q, j, mp: d.run(q, 'recover', 'o') == 1,
        'cancel reserved': lambda d, q, j, mp: cancel(d, q, j['id']) == 'reserved',
        'lost reserved': lambda d, q, j, mp: lost(d, q, j, 'never started'),
        'reservation expires': lambda d, q, j, mp: _expire(d, q, j, mp, 'RESERVE_SECONDS'),
        'lease expires': lambda d, q, j, mp: _expire(d, q, j, mp, 'LEASE_SECONDS'),
    }[how]


def _expire(driver, queue, job, monkeypatch, setting):
    monkeypatch.setattr(mpqueue, setting, 0.1)
    if setting == 'LEASE_SECONDS':
        assert renew(driver, queue, job) == 'ok'         # the lease now ends in 0.1 s
    return sweep_until(driver, queue, lambda: state(driver, queue, job['id']) != (
        'reserved' if setting == 'RESERVE_SECONDS' else 'working'), 'the attempt to lapse')


ENDINGS = ['done', 'retry', 'fail', 'lost', 'lost at timeout', 'requeue', 'recover',
           'cancel reserved', 'lost reserved', 'reservation expires', 'lease expires']


@pytest.mark.parametrize('how', ENDINGS)
def test_every_step_that_ends_an_attempt_gives_its_slot_to_the_oldest_waiter(
        driver, queue, store, monkeypatch, how):
    waker = subscribed_waker(driver, queue)
    [plain] = reserve(driver, queue, 1)                # the job that subscribed it
    cancel(driver, queue, plain['id'])
    first, second, third = limited(driver, queue, 3, solo={'concurrency': 1})
    [job] = reserve(driver, queue, 5)
    assert job['id'] == first
    if 'reserv' not in how:
        assert start(driver, queue, job) is True
    waker.drain()
    assert _ending(how)(driver, queue, job, monkeypatch)
    assert select.select([waker], [], [], WAIT)[0] == [waker]     # the masters are woken
    waker.close()
    # the oldest waiter is at the head of waiting now (a job that goes back
    # to the head goes before it); the other still waits
    got = ids_of(reserve(driver, queue, 1))
    if how in ('done', 'fail', 'cancel reserved', 'retry'):
        assert got == [second]
    else:
        assert got == [first]
    handlers = how == 'lost at timeout'               # a fail handler run takes no slot
    assert held_and_waiting(driver, queue)['solo'][0] == (0 if handlers else 1)
    assert info(driver, queue, third)['waiting_for'] == 'solo'


@pytest.mark.parametrize('step', ['done', 'retry', 'fail', 'lost', 'requeue'])
def test_a_stale_outcome_gives_back_no_slot(driver, queue, monkeypatch, step):
    job_id, waiter = limited(driver, queue, 2, solo={'concurrency': 1})
    stale = taken_back(driver, queue, job_id, monkeypatch, 'pop')
    [current] = pop(driver, queue, 5)                    # the waiter is parked
    assert current['id'] == job_id and current['attempt'] == stale['attempt'] + 1
    before = held_and_waiting(driver, queue)
    assert before == {'solo': (1, 1)}
    assert OUTCOMES[step](driver, queue, stale) is False
    assert held_and_waiting(driver, queue) == before
    assert pop(driver, queue) == []                      # the waiter still waits
    assert done(driver, queue, current) is True
    assert ids_of(pop(driver, queue)) == [waiter]


def test_a_slot_comes_back_when_the_job_goes_back_to_waiting_and_runs_again(driver, queue):
    job_id, = limited(driver, queue, 1, solo={'concurrency': 1})
    job = pop1(driver, queue)
    assert lost(driver, queue, job, 'died') is True       # runs again: first in line
    again = pop1(driver, queue)
    assert (again['id'], again['attempt']) == (job_id, 2)
    assert held_and_waiting(driver, queue) == {'solo': (1, 0)}
    assert done(driver, queue, again) is True
    assert held_and_waiting(driver, queue) == {}


def test_each_limit_name_counts_apart_and_every_limit_must_admit(driver, queue):
    defs = {'customer:1': {'concurrency': 1}, 'customer:2': {'concurrency': 1},
            'api': {'concurrency': 3}}
    a1, a2 = limited(driver, queue, 2, 'customer:1', 'api', **defs)
    b1, = limited(driver, queue, 1, 'customer:2', 'api', **defs)
    c1, = limited(driver, queue, 1, 'api', **defs)
    d1, = limited(driver, queue, 1, 'customer:2', **defs)
    assert ids_of(pop(driver, queue, 10)) == [a1, b1, c1]
    assert held_and_waiting(driver, queue) == {'customer:1': (1, 1), 'customer:2': (1, 1),
                                               'api': (3, 0)}
    assert info(driver, queue, a2)['waiting_for'] == 'customer:1'


def test_cancel_and_clean_of_parked_jobs(driver, queue, store):
    ids = limited(driver, queue, 4, solo={'concurrency': 1})
    [job] = pop(driver, queue, 5)
    assert cancel(driver, queue, ids[1]) == 'waiting'
    assert held_and_waiting(driver, queue) == {'solo': (1, 2)}
    assert_depth(driver, queue, ids, store, waiting=2, working=1, cancelled=1)
    assert done(driver, queue, job) is True
    assert ids_of(pop(driver, queue, 5)) == [ids[2]]      # not the cancelled one
    empty(driver, queue)
    assert held_and_waiting(driver, queue) == {}


def test_fail_handler_runs_take_no_slot(driver, queue):
    job_id, other = limited(driver, queue, 2, solo={'concurrency': 1})
    job = pop1(driver, queue)
    assert lost(driver, queue, job, 'late', True) is True      # at its timeout: handlers
    handlers = pop(driver, queue, 5)
    assert ids_of(handlers)[:2] == [job_id, other]


def test_a_rate_limit_delays_a_job_to_the_instant_its_window_permits(driver, queue, store):
    ids = limited(driver, queue, 3, github={'rate': 2, 'per': 1.0})
    t0 = broker_clock(driver, queue)
    got = pop(driver, queue, 5)
    assert ids_of(got) == ids[:2]
    record = info(driver, queue, ids[2])
    assert (record['state'], record['waiting_for'], record['attempt']) == \
        ('delayed', 'github', 0)    # (job_info shows it waiting)
    due, _ = sweep(driver, queue)
    assert 0.9 < due <= 1.0 + SLACK
    for job in got:
        assert done(driver, queue, job) is True     # a rate counts starts, not running jobs
    assert pop(driver, queue, 5) == []
    [job] = sweep_until_due(driver, queue, 5)
    assert job['id'] == ids[2] and job['attempt'] == 1
    assert start(driver, queue, job) is True
    assert info(driver, queue, job['id'])['start_time'] >= t0 + 1.0 - SLACK
    assert done(driver, queue, job) is True


def test_a_rate_window_slides(driver, queue):
    [a] = limited(driver, queue, 1, r={'rate': 2, 'per': 0.6})
    first = pop1(driver, queue)
    wait_broker_time(driver, queue, first['start_time'] + 0.3)
    [b, c] = limited(driver, queue, 2, r={'rate': 2, 'per': 0.6})
    second = pop1(driver, queue)
    assert second['id'] == b and pop(driver, queue) == []
    # c may start when the first start leaves the window, not when the second does
    due, _ = sweep(driver, queue)
    assert abs((broker_clock(driver, queue) + due) - (first['start_time'] + 0.6)) < 0.05
    [third] = sweep_until_due(driver, queue, 5)
    assert third['id'] == c and start(driver, queue, third) is True
    assert info(driver, queue, c)['start_time'] >= first['start_time'] + 0.6 - SLACK
    for job in (first, second, third):
        assert done(driver, queue, job) is True


# -- dependencies -------------------------------------------------------------------------------

def parents_of(driver, queue, job_id):
    """(state, depends_on, waiting_for) of a job, as job_info shows them."""
    record = mpqueue._public_info(queue, dict(info(driver, queue, job_id), id=job_id))
    return record['state'], record['depends_on'], record.get('waiting_for')


def test_a_child_waits_blocked_until_its_last_parent_ends_done(driver, queue):
    a, b = push(driver, queue, 2)
    child = push1(driver, queue, parents=[a, b])
    assert parents_of(driver, queue, child) == ('blocked', [a, b], sorted([a, b]))
    assert counts(driver, queue) == zero_counts(waiting=2, blocked=1, pushed=3)
    first, second = pop(driver, queue, 5)           # the child is not handed out
    assert done(driver, queue, first) is True
    assert parents_of(driver, queue, child) == ('blocked', [a, b], [b])
    assert done(driver, queue, first) is False      # a stale outcome settles nothing
    assert done(driver, queue, second) is True      # the step that ends the last one releases it
    assert parents_of(driver, queue, child)[0] == 'waiting'
    assert ids_of(pop(driver, queue, 5)) == [child]


@pytest.mark.parametrize('ending', ['fail', 'cancel', 'lost'])
def test_a_parent_that_does_not_end_done_cancels_its_children_all_the_way_down(
        driver, queue, ending):
    parent = push1(driver, queue, fail_number=0)
    child = push1(driver, queue, parents=[parent])
    grandchild = push1(driver, queue, parents=[child])
    runs = push1(driver, queue, parents=[parent], on_parent_failure='run')
    job = pop1(driver, queue)
    if ending == 'fail':
        assert fail(driver, queue, job) is True
    elif ending == 'cancel':
        assert cancel(driver, queue, parent) == 'working'
        assert requeue(driver, queue, job) is True          # its worker stopped it
    else:
        assert lost(driver, queue, job) is True             # no retry left: fail handlers...
        handlers = pop1(driver, queue)
        assert fail(driver, queue, handlers) is True        # ... then failed for good
    how = 'cancelled' if ending == 'cancel' else 'failed'
    for job_id, by in ((child, parent), (grandchild, child)):
        record = info(driver, queue, job_id)
        assert record['state'] == 'cancelled'
        assert record['cancelled_by'] == 'parent %s' % by
        assert record['error_info'][-1] == 'parent %s ended %s' % (by, 'cancelled' if
                                                                   by == child else how)
    assert ids_of(pop(driver, queue, 5)) == [runs]


def test_a_parent_that_ended_before_the_push_settles_the_child_at_push(driver, queue):
    ok, bad = push(driver, queue, 2, result_ttl=60, fail_number=0)
    assert done(driver, queue, pop1(driver, queue)) is True
    assert fail(driver, queue, pop1(driver, queue)) is True
    released = push1(driver, queue, parents=[ok])
    cancelled = push1(driver, queue, parents=[ok, bad])
    runs = push1(driver, queue, parents=[bad], on_parent_failure='run')
    assert state(driver, queue, released) == 'waiting'
    assert state(driver, queue, cancelled) == 'cancelled'
    assert ids_of(pop(driver, queue, 5)) == [released, runs]


def test_an_unknown_parent_writes_nothing(driver, queue, store):
    known = push1(driver, queue)
    before, stored = counts(driver, queue), store.leftovers(queue)
    gone = mpqueue._new_id()
    assert driver.execute(queue, [push_step(parents=[known, gone]),
                                  push_step(key='k', unique='queued', parents=[gone])]) == \
        ['!' + gone, '!' + gone]
    assert counts(driver, queue) == before and store.leftovers(queue) == stored


def test_a_parent_keeps_its_outcome_until_its_children_end(driver, queue, store):
    parent = push1(driver, queue, result_ttl=0)
    child = push1(driver, queue, parents=[parent])
    assert done(driver, queue, pop1(driver, queue), b'r', 'r') is True
    kept = info(driver, queue, parent)
    assert (kept['state'], kept['result']) == ('done', b'r')   # result_ttl 0, but a child runs
    assert store.expires_in(queue, parent) is None
    job = pop1(driver, queue)
    assert info(driver, queue, parent)['state'] == 'done'
    assert done(driver, queue, job) is True
    sweep(driver, queue)
    assert info(driver, queue, parent) is None and info(driver, queue, child) is None
    assert store.traces(queue, parent) == store.traces(queue, child) == []


def test_a_delayed_child_stays_delayed_after_release(driver, queue):
    parent = push1(driver, queue)
    child = push1(driver, queue, parents=[parent], delay=60)
    assert state(driver, queue, child) == 'blocked'
    assert done(driver, queue, pop1(driver, queue)) is True
    assert state(driver, queue, child) == 'delayed'


def test_a_cancelled_child_leaves_its_parents(driver, queue, store):
    parent = push1(driver, queue)
    child = push1(driver, queue, parents=[parent])
    assert cancel(driver, queue, child) == 'blocked'
    assert counts(driver, queue)['blocked'] == 0
    assert done(driver, queue, pop1(driver, queue)) is True
    assert info(driver, queue, parent) is None          # nothing keeps it
    assert state(driver, queue, child) == 'cancelled'


# -- expiry ------------------------------------------------------------------------------------

@pytest.mark.parametrize('take', ['reserve', 'pop', 'start', 'sweep'])
def test_a_job_not_started_within_expires_ends_expired(driver, queue, take, store):
    job_id = push1(driver, queue, expires=0.2)
    child = push1(driver, queue, parents=[job_id])
    runs = push1(driver, queue, parents=[job_id], on_parent_failure='run')
    if take == 'start':
        [job] = reserve(driver, queue, 1)
    wait_broker_time(driver, queue, info(driver, queue, job_id)['expire_time'])
    if take == 'reserve':
        assert reserve(driver, queue, 5) == []
    elif take == 'pop':
        assert pop(driver, queue, 5) == []
    elif take == 'start':
        assert start(driver, queue, job) is False
    else:
        sweep(driver, queue)
    record = info(driver, queue, job_id)
    assert (record['state'], record.get('start_time'), record['exec_number']) == (
        'expired', None, 0)
    assert state(driver, queue, child) == 'cancelled'
    assert ids_of(pop(driver, queue, 5)) == [runs]
    assert counts(driver, queue)['expired'] == 1


def test_a_job_started_in_time_runs_to_its_end_and_retries(driver, queue):
    job_id = push1(driver, queue, expires=0.3)
    job = pop1(driver, queue)
    assert info(driver, queue, job_id).get('expire_time') is None
    assert retry(driver, queue, job) is True
    wait_broker_time(driver, queue, job['create_time'] + 0.4)
    sweep(driver, queue)
    again = pop1(driver, queue)             # its retry is no first start: it runs
    assert again['id'] == job_id and done(driver, queue, again) is True


def test_expiry_counts_from_the_due_time(driver, queue):
    delayed = push1(driver, queue, delay=60, expires=5)
    parent = push1(driver, queue)
    child = push1(driver, queue, parents=[parent], expires=5)
    assert info(driver, queue, child).get('expire_time') is None      # not due yet
    due = info(driver, queue, delayed)
    assert abs(due['expire_time'] - (due['create_time'] + 65)) < SLACK
    assert done(driver, queue, pop1(driver, queue)) is True
    released = broker_clock(driver, queue)
    assert abs(info(driver, queue, child)['expire_time'] - (released + 5)) < 1
    assert sweep(driver, queue)[0] <= 5


def test_a_parent_that_started_before_its_child_says_its_value_was_not_sent(driver, queue):
    parent = push1(driver, queue)
    job = pop1(driver, queue)                   # handed out with no child: its value unsent
    push1(driver, queue, parents=[parent])
    assert done(driver, queue, job) is True
    record = info(driver, queue, parent)
    assert record['state'] == 'done' and 'result_ttl' in record['result_note']
    assert done(driver, queue, pop1(driver, queue), b'v') is True
