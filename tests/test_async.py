"""Async jobs on coroutine workers (``coroutine_number`` > 1), end to end.

One worker runs up to ``coroutine_number`` jobs at once on its event loop.
Proven here with real pools (``python mpqueue_cli.py worker:start``) on both
brokers: waiting jobs overlap; a job's timeout cancels it without touching
the others; a job that blocks the loop is still stopped (its worker is
killed) and the jobs it held hostage run again; retries, fail handlers,
leases and a graceful stop work as for one-at-a-time workers; status shows
how many coroutines are busy.
"""

import os
import signal
import time

import pytest

import mpqueue
from pool_harness import Src, alive, queue_conf


ASYNC_JOBS = '''
async def nap(tag, seconds):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    await asyncio.sleep(seconds)
    record('end', tag=tag, n=n)


async def hog(tag, seconds):
    """Blocks its worker's event loop: no other coroutine runs meanwhile."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    time.sleep(seconds)
    record('end', tag=tag, n=n)


async def flaky_async(tag, fails):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    await asyncio.sleep(0.01)
    if n <= fails:
        raise ValueError('flaky %s attempt %d' % (tag, n))
    record('end', tag=tag, n=n)


async def cancelled_inside(tag):
    """Raises a CancelledError of its own (a task it awaited was cancelled)
    on its first attempt."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    if n == 1:
        inner = asyncio.ensure_future(asyncio.sleep(30))
        asyncio.get_running_loop().call_later(0.05, inner.cancel)
        await inner
    record('end', tag=tag, n=n)


class AsyncFailing(mpqueue.Job):
    """Always fails; its async fail_handle records what it was given."""

    def __init__(self, tag):
        self.tag = tag

    async def handle(self):
        await flaky_async(self.tag, 99)

    async def fail_handle(self, job_info, exc):
        await asyncio.sleep(0.01)
        record('job_fail', tag=self.tag, info=_info(job_info), exc_type=type(exc).__name__)
        return False
'''


def start_pool(e2e, coroutines, **options):
    e2e.write_jobs(ASYNC_JOBS)
    conf = queue_conf(worker_number=1, coroutine_number=coroutines, **options)
    pool = e2e.pool(conf).start()
    return pool, e2e.import_jobs()


def spans(e2e, tag_prefix):
    """(first start, last end) over the records whose tag starts with ``tag_prefix``."""
    starts = [r['time'] for r in e2e.records('start') if r['tag'].startswith(tag_prefix)]
    ends = [r['time'] for r in e2e.records('end') if r['tag'].startswith(tag_prefix)]
    return min(starts), max(ends)


def test_sleeping_jobs_overlap_on_one_worker_and_status_shows_busy_coroutines(e2e):
    pool, jobs = start_pool(e2e, 20)
    ids = [mpqueue.push('q', jobs.nap, args=('nap-%d' % i, 1.5)) for i in range(20)]

    def busy_coroutines():
        (worker,) = pool.workers('q')
        return worker.get('coroutines') == '20/20' and worker['state'] == 'busy'
    pool.wait(busy_coroutines, 10, 'the worker to show 20 of 20 coroutines busy')

    pool.wait(lambda: len(e2e.records('end')) == 20, 20, 'the 20 naps to end')
    first_start, last_end = spans(e2e, 'nap-')
    # 20 sleeps of 1.5 s one after the other would take 30 s
    assert last_end - first_start < 2 * 1.5, last_end - first_start
    assert len({r['pid'] for r in e2e.records('start')}) == 1       # one worker ran them all
    pool.wait(lambda: mpqueue.status('q')['over'] == len(ids), 10, 'the 20 naps to be recorded')
    (worker,) = pool.workers('q')
    assert worker['coroutines'] == '0/20' and worker['state'] == 'idle'


def test_cancelled_at_timeout_others_keep_running(e2e):
    pool, jobs = start_pool(e2e, 10, fail_handle=Src('jobs.queue_fail_handle'))
    t0 = time.time()
    late_id = mpqueue.push('q', jobs.nap, args=('late', 30), timeout=1, fail_number=3)
    for i in range(5):
        mpqueue.push('q', jobs.nap, args=('nap-%d' % i, 2.5))

    pool.wait(lambda: mpqueue.status('q')['failed'] == 1, 10, 'the late job to fail')
    assert 1.0 <= time.time() - t0 < 4
    (info,) = mpqueue.failed_jobs('q')
    assert info['id'] == late_id and info['type'] == mpqueue.TYPE_TIMEOUT   # never retried
    assert any('timeout of 1s' in e for e in info['error_info'])
    assert len(e2e.records('start', tag='late')) == 1
    assert len(e2e.records('queue_fail', tag=late_id)) == 1

    pool.wait(lambda: len(e2e.records('end')) == 5, 10, 'the other naps to end')
    pids = {r['pid'] for r in e2e.records('start')}
    assert len(pids) == 1 and alive(pids.pop())         # cancelled, not killed
    assert all(len(e2e.records('start', tag='nap-%d' % i)) == 1 for i in range(5))


def test_job_blocking_the_loop_is_stopped_at_its_timeout(e2e):
    pool, jobs = start_pool(e2e, 10, fail_handle=Src('jobs.queue_fail_handle'))
    for i in range(3):
        mpqueue.push('q', jobs.nap, args=('nap-%d' % i, 1))
    pool.wait(lambda: len(e2e.records('start')) == 3, 10, 'the naps to start')
    t0 = time.time()
    hog_id = mpqueue.push('q', jobs.hog, args=('hog', 60), timeout=1, fail_number=3)
    (hog,) = pool.wait(lambda: e2e.records('start', tag='hog'), 10, 'the hog to start')

    pool.wait(lambda: not alive(hog['pid']), 10, 'the hog\'s worker to be killed')
    killed_after = time.time() - t0
    assert 1.0 <= killed_after < 1.0 + mpqueue.COROUTINE_KILL_GRACE + 1.5, killed_after

    pool.wait(lambda: mpqueue.status('q')['failed'] == 1, 10, 'the hog to be filed as failed')
    (info,) = mpqueue.failed_jobs('q')
    assert info['id'] == hog_id and info['type'] == mpqueue.TYPE_TIMEOUT
    assert len(e2e.records('start', tag='hog')) == 1
    # the naps sharing its loop were held up, not at fault: they run again, uncounted
    pool.wait(lambda: all(e2e.records('end', tag='nap-%d' % i) for i in range(3)), 15,
              'the naps held up by the hog to run again and end')
    pool.wait(lambda: mpqueue.status('q')['over'] == 3, 10, 'the naps to be recorded')
    assert e2e.records('end', tag='hog') == []


def test_retries_and_async_fail_handlers(e2e):
    pool, jobs = start_pool(e2e, 5, fail_expire=0.1)
    mpqueue.push('q', jobs.flaky_async, args=('flaky', 2), fail_number=2)
    failing_id = mpqueue.push('q', jobs.AsyncFailing('failing'), fail_number=1)

    pool.wait(lambda: e2e.records('end', tag='flaky'), 15, 'the flaky job to succeed')
    assert [r['n'] for r in e2e.records('start', tag='flaky')] == [1, 2, 3]
    (handled,) = pool.wait(lambda: e2e.records('job_fail', tag='failing'), 15,
                           'the failing job\'s fail_handle')
    assert handled['exc_type'] == 'ValueError'
    assert handled['info']['id'] == failing_id and handled['info']['exec_number'] == 2
    assert len(handled['info']['error_info']) == 2
    pool.wait(lambda: mpqueue.status('q')['failed'] == 1, 10, 'the failing job to be filed')


def test_a_cancelled_error_of_the_jobs_own_is_an_ordinary_failure(e2e):
    pool, jobs = start_pool(e2e, 5, fail_expire=0.1)
    mpqueue.push('q', jobs.cancelled_inside, args=('inside',), timeout=30, fail_number=1)
    pool.wait(lambda: e2e.records('end', tag='inside'), 10, 'the job to succeed on its retry')
    assert [r['n'] for r in e2e.records('start', tag='inside')] == [1, 2]
    pool.wait(lambda: mpqueue.status('q')['over'] == 1, 10, 'the job to be recorded as done')
    assert mpqueue.status('q')['failed'] == 0


@pytest.mark.slow
def test_leases_of_every_running_coroutine_are_renewed(e2e):
    """Jobs running longer than the lease are not taken for lost."""
    pool, jobs = start_pool(e2e, 5)
    for i in range(3):
        mpqueue.push('q', jobs.nap, args=('long-%d' % i, mpqueue.LEASE_SECONDS + 2))
    pool.wait(lambda: len(e2e.records('end')) == 3, mpqueue.LEASE_SECONDS + 15,
              'the long naps to end')
    pool.wait(lambda: mpqueue.status('q')['over'] == 3, 10, 'the long naps to be recorded')
    assert all(len(e2e.records('start', tag='long-%d' % i)) == 1 for i in range(3))


def test_memory_limit_replaces_a_coroutine_worker_after_its_jobs(e2e):
    """Over memory_limit, a coroutine worker takes no more jobs, finishes
    those it runs, exits and is replaced; no job is lost or run twice."""
    pool, jobs = start_pool(e2e, 5, memory_limit=1)        # every worker is over 1 MB
    for i in range(12):
        mpqueue.push('q', jobs.nap, args=('nap-%d' % i, 0.2))
    pool.wait(lambda: mpqueue.status('q')['over'] == 12, 30, 'the 12 naps to be done')
    assert all(len(e2e.records('start', tag='nap-%d' % i)) == 1 for i in range(12))
    assert len({r['pid'] for r in e2e.records('start')}) >= 2    # replaced at least once
    pool.wait(lambda: len(pool.workers('q')) == 1, 10, 'a worker to be back')


def test_graceful_stop_lets_running_coroutines_finish(e2e):
    pool, jobs = start_pool(e2e, 10)
    for i in range(6):
        mpqueue.push('q', jobs.nap, args=('nap-%d' % i, 1.5))
    pool.wait(lambda: len(e2e.records('start')) == 6, 10, 'the naps to start')
    manage = pool.manage_pid()
    os.kill(manage, signal.SIGTERM)         # once: graceful
    pool.wait(lambda: not alive(manage), 15, 'the pool to stop')
    assert len(e2e.records('end')) == 6
    assert mpqueue.status('q')['over'] == 6


