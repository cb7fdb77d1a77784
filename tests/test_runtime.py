"""End to end: pools started with ``python mpqueue_cli.py worker:start`` as real
processes, on a real Redis, with real signals.

Every job records what it did (a JSON record per event on a Redis list, with
its pid, attempt number and time); the tests assert on those records, on the
queue counters and on ``worker:status --json``.  Every wait polls with a
deadline; every process is stopped at teardown even when a test fails.
"""

import importlib
import json
import os
import pickle
import signal
import sys
import time

import psutil
import pytest

import mpqueue
from pool_harness import (REPO, Src, alive, kill_tree, percentile, queue_conf, wait_for)
from steps import push_step

MODELS = [mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB]


def counts(queue='q'):
    return mpqueue.status(queue)


def wait_counts(pool, timeout, queue='q', **expected):
    """Wait until ``mpqueue.status(queue)`` has the ``expected`` values."""
    last = {}

    def match():
        last.update(counts(queue))
        if 'failed' in expected and last['failed'] > expected['failed']:
            raise AssertionError('queue %r: %d job(s) failed, expected %d; status %r; failed: %r'
                                 % (queue, last['failed'], expected['failed'], last,
                                    mpqueue.failed_jobs(queue)))
        return all(last[k] == v for k, v in expected.items())
    pool.wait(match, timeout, lambda: 'status of %r to reach %r (last: %r)' % (
        queue, expected, last))
    return dict(last)


def starts(e2e, tag):
    return sorted(e2e.records('start', tag=tag), key=lambda r: r['n'])


# -- 1. success ----------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_success_counts_over(e2e, model):
    pool = e2e.pool(queue_conf(model=model)).start()
    jobs = e2e.import_jobs()
    job_id = mpqueue.push('q', jobs.ok, args=('one',))
    assert isinstance(job_id, str) and job_id

    got = wait_counts(pool, 10, over=1, failed=0)
    assert got == {'all': 1, 'waiting': 0, 'working': 0, 'failed': 0, 'over': 1,
                   'expired': 0, 'paused': False}
    assert [r['n'] for r in e2e.records('start', tag='one')] == [1]
    assert len(e2e.records('end', tag='one')) == 1
    assert e2e.records('start')[0]['pid'] in pool.worker_pids('q')
    assert mpqueue.failed_jobs('q') == []


# -- 2. retry ------------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_retry_runs_again_after_fail_expire_then_over(e2e, model):
    pool = e2e.pool(queue_conf(model=model)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.flaky, args=('flaky', 2), fail_number=3, fail_expire=0.2)

    wait_counts(pool, 10, over=1, failed=0)
    runs = starts(e2e, 'flaky')
    assert [r['n'] for r in runs] == [1, 2, 3]
    gaps = [b['time'] - a['time'] for a, b in zip(runs, runs[1:])]
    assert all(0.2 - 0.001 <= gap < 1.5 for gap in gaps), gaps
    assert len(e2e.records('end', tag='flaky')) == 1
    assert counts() == {'all': 1, 'waiting': 0, 'working': 0, 'failed': 0, 'over': 1,
                        'expired': 0, 'paused': False}


# -- 3. final failure and fail handlers -----------------------------------------

def test_final_failure_runs_fail_handlers_and_keeps_errors(e2e):
    pool = e2e.pool(queue_conf(fail_handle=Src('jobs.queue_fail_handle'), worker_number=3)).start()
    jobs = e2e.import_jobs()
    # Boom: fail_number = 2, fail_expire = 0.1 (class attributes).
    plain = mpqueue.push('q', jobs.Boom('plain'))
    handled = mpqueue.push('q', jobs.BoomHandled('handled'))
    broken = mpqueue.push('q', jobs.BoomBadHandler('broken'))
    boom_fn = mpqueue.push('q', jobs.boom, args=('fn',), fail_number=2, fail_expire=0.1)

    wait_counts(pool, 15, failed=4, working=0, waiting=0)
    failed = {info['id']: info for info in mpqueue.failed_jobs('q')}
    assert set(failed) == {plain, handled, broken, boom_fn}

    for tag, job_id in (('plain', plain), ('handled', handled), ('broken', broken),
                        ('fn', boom_fn)):
        assert [r['n'] for r in starts(e2e, tag)] == [1, 2, 3], tag
        info = failed[job_id]
        assert info['type'] == mpqueue.TYPE_NORMAL
        assert info['exec_number'] == 3
        assert info['fail_number'] == 2
        # one entry per attempt, in order, with the exception's text
        for n, error in enumerate(info['error_info'][:3], 1):
            assert 'RuntimeError: boom-%s-attempt-%d' % (tag, n) in error, (tag, n, error)

    # Job.fail_handle ran once, with the job_info; then the queue's handler ran.
    (job_fail,) = e2e.records('job_fail', tag='plain')
    assert job_fail['id'] == plain
    assert job_fail['info']['exec_number'] == 3
    assert job_fail['info']['type'] == mpqueue.TYPE_NORMAL
    assert job_fail['info']['queue'] == 'q'
    assert len(job_fail['info']['error_info']) == 3
    assert 'boom-plain-attempt-3' in job_fail['exc']
    assert len(failed[plain]['error_info']) == 3
    queue_fail = e2e.records('queue_fail', tag=plain)
    assert len(queue_fail) == 1
    assert queue_fail[0]['time'] >= job_fail['time']

    # fail_handle returned True: the queue's handler did not run.
    assert len(e2e.records('job_fail', tag='handled')) == 1
    assert e2e.records('queue_fail', tag=handled) == []

    # fail_handle raised: its error is kept, the job is still in the failed list.
    assert len(e2e.records('job_fail', tag='broken')) == 1
    assert any('handler-broke-broken' in e for e in failed[broken]['error_info'])
    assert len(failed[broken]['error_info']) == 4
    assert 'handler-broke-broken' in failed[broken]['error_info'][3]

    # A plain function has no Job.fail_handle: the queue's handler ran once.
    assert len(e2e.records('queue_fail', tag=boom_fn)) == 1
    assert counts()['over'] == 0


# -- 4. timeout ----------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_timeout_kills_worker_fails_without_retry(e2e, model):
    pool = e2e.pool(queue_conf(model=model, fail_handle=Src('jobs.queue_fail_handle'),
                               fail_number=3, fail_expire=0.1)).start()
    jobs = e2e.import_jobs()
    t0 = time.time()
    job_id = mpqueue.push('q', jobs.SlowJob('slow', 30), timeout=1)

    (first,) = pool.wait(lambda: e2e.records('start', tag='slow'), 5, 'the job to start')
    pool.wait(lambda: not alive(first['pid']), 5,
              'worker %d to be killed at the 1 s timeout' % first['pid'])
    killed_at = time.time()
    assert killed_at - t0 >= 1.0

    wait_counts(pool, 10, failed=1, working=0, waiting=0)
    (info,) = mpqueue.failed_jobs('q')
    assert info['id'] == job_id
    assert info['type'] == mpqueue.TYPE_TIMEOUT
    assert len(e2e.records('start', tag='slow')) == 1        # no retry
    assert e2e.records('end', tag='slow') == []

    (job_fail,) = e2e.records('job_fail', tag='slow')
    (queue_fail,) = e2e.records('queue_fail', tag=job_id)
    assert job_fail['pid'] != first['pid']
    assert queue_fail['pid'] != first['pid']
    assert job_fail['info']['type'] == mpqueue.TYPE_TIMEOUT
    assert job_fail['exc_type'] == 'TimeoutError'

    def full_pool():
        pids = pool.worker_pids('q')
        return len(pids) == 2 and first['pid'] not in pids and all(alive(p) for p in pids)
    pool.wait(full_pool, 10, 'the pool to be back to 2 workers')
    lines = [line for line in pool.log_tail(400).splitlines() if job_id in line]
    assert any('killed at the timeout' in line and 'not retried' in line for line in lines), lines
    assert not [line for line in lines if 'recovered' in line], lines


HANGING_HANDLER = '''
class HangingHandler(mpqueue.Job):
    def __init__(self, tag):
        self.tag = tag

    def handle(self):
        sleeper(self.tag, 30)

    def fail_handle(self, job_info, exc):
        record('job_fail', tag=self.tag)
        time.sleep(30)
'''


def test_timeout_fail_handler_is_bounded_too(e2e):
    e2e.write_jobs(HANGING_HANDLER)
    pool = e2e.pool(queue_conf(worker_number=2)).start()
    jobs = e2e.import_jobs()
    t0 = time.time()
    job_id = mpqueue.push('q', jobs.HangingHandler('hang'), timeout=1)
    wait_counts(pool, 15, failed=1, working=0, waiting=0)
    took = time.time() - t0
    (info,) = mpqueue.failed_jobs('q')
    assert info['id'] == job_id and info['type'] == mpqueue.TYPE_TIMEOUT
    handler_runs = e2e.records('job_fail', tag='hang')
    assert 1 <= len(handler_runs) <= mpqueue.HANDLER_ATTEMPTS
    assert took < 1 + len(handler_runs) * 1 + 5
    assert len(e2e.records('start', tag='hang')) == 1


def test_timed_out_job_keeps_its_own_start_time(e2e):
    """job_info['start_time'] of a job stopped at its timeout is when the job
    started, not when its fail handler started in another worker."""
    pool = e2e.pool(queue_conf(worker_number=2)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.SlowJob('own-start', 30), timeout=1)
    wait_counts(pool, 15, failed=1, working=0, waiting=0)
    (started,) = e2e.records('start', tag='own-start')
    (handler,) = e2e.records('job_fail', tag='own-start')
    assert handler['time'] - started['time'] >= 0.8        # the handler ran at the timeout
    (info,) = mpqueue.failed_jobs('q')
    assert abs(info['start_time'] - started['time']) < 0.3, (info['start_time'], started, handler)


def test_fail_handler_timeout_says_the_fail_handler_ran_past_it(e2e):
    """The job's own timeout is one error; each time its fail handler is
    stopped at the timeout, the error says it was the fail handler."""
    e2e.write_jobs(HANGING_HANDLER)
    pool = e2e.pool(queue_conf(worker_number=2)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.HangingHandler('hang'), timeout=1)
    wait_counts(pool, 20, failed=1, working=0, waiting=0)
    (info,) = mpqueue.failed_jobs('q')
    assert len(e2e.records('job_fail', tag='hang')) >= 1
    first, *handlers = info['error_info']
    assert 'fail handler' not in first.lower(), info['error_info']
    assert handlers, info['error_info']
    for error in handlers:
        assert 'fail handler' in error.lower(), info['error_info']


# -- stop ---------------------------------------------------------------------------

def test_graceful_stop_lets_running_job_finish(e2e):
    pool = e2e.pool(queue_conf(worker_number=2)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.sleeper, args=('finishing', 1.0))
    pool.wait(lambda: e2e.records('start', tag='finishing'), 5, 'the job to start')
    everyone = [r['pid'] for r in pool.status()]
    os.kill(pool.proc.pid, signal.SIGTERM)
    assert pool.proc.wait(timeout=15) == 0
    assert len(e2e.records('end', tag='finishing')) == 1
    assert counts() == {'all': 1, 'waiting': 0, 'working': 0, 'failed': 0, 'over': 1,
                        'expired': 0, 'paused': False}
    wait_for(lambda: not any(alive(pid) for pid in everyone), 5, 'every process to be gone')


def test_stop_past_grace_puts_running_job_back(e2e):
    pool = e2e.pool(queue_conf(worker_number=1, fail_number=0), stop_grace=1).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.slow_once, args=('interrupted', 30))
    pool.wait(lambda: e2e.records('start', tag='interrupted'), 5, 'the job to start')
    t0 = time.monotonic()
    os.kill(pool.proc.pid, signal.SIGTERM)
    assert pool.proc.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 1 + 5
    # back in the queue, the interrupted attempt not counted as a failure
    assert counts() == {'all': 1, 'waiting': 1, 'working': 0, 'failed': 0, 'over': 0,
                        'expired': 0, 'paused': False}
    again = e2e.pool(queue_conf(worker_number=1, fail_number=0), name='again').start()
    wait_counts(again, 10, over=1, failed=0, waiting=0, working=0)
    assert [r['n'] for r in starts(e2e, 'interrupted')] == [1, 2]


# -- 5. SIGKILL of a busy worker ---------------------------------------------------

@pytest.mark.parametrize('timeout, fail_expire', [(30, 3), (0, 3), (0, 0.1)])
def test_sigkill_busy_worker_job_rerun_at_once(e2e, timeout, fail_expire):
    # fail_expire is the delay between retries of a job that *raised*; a job
    # whose worker died is recovered at once, whatever fail_expire is.
    pool = e2e.pool(queue_conf(worker_number=2, fail_number=1, fail_expire=fail_expire,
                               timeout=timeout)).start()
    jobs = e2e.import_jobs()
    others = [mpqueue.push('q', jobs.ok, args=('other-%d' % i,)) for i in range(5)]
    mpqueue.push('q', jobs.slow_once, args=('victim', 30))

    (first,) = pool.wait(lambda: e2e.records('start', tag='victim'), 5, 'the job to start')
    victim = first['pid']
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)

    runs = pool.wait(lambda: len(starts(e2e, 'victim')) >= 2 and starts(e2e, 'victim'), 10,
                     'the killed job to run again')
    recovery = runs[1]['time'] - killed_at
    print('timeout=%s fail_expire=%s: job re-run %.3fs after the SIGKILL' % (
        timeout, fail_expire, recovery))
    assert recovery < 1.0, 'job re-run %.3fs after its worker was killed' % recovery
    assert runs[1]['pid'] != victim

    wait_counts(pool, 10, over=len(others) + 1, failed=0, waiting=0, working=0)
    assert len(e2e.records('end', tag='victim')) == 1

    def replaced():
        pids = pool.worker_pids('q')
        return len(pids) == 2 and victim not in pids
    pool.wait(replaced, 10, 'the killed worker to be replaced')


# -- 6. SIGKILL of a master ----------------------------------------------------------

def test_sigkill_master_new_master_and_nothing_lost(e2e):
    pool = e2e.pool(queue_conf(worker_number=3, fail_number=1, fail_expire=0.1)).start()
    jobs = e2e.import_jobs()
    (old_master,) = pool.masters('q')
    old_workers = pool.worker_pids('q')

    long_tags = ['long-%d' % i for i in range(3)]
    for tag in long_tags:
        mpqueue.push('q', jobs.slow_once, args=(tag, 3))
    short_tags = ['short-%d' % i for i in range(20)]
    for tag in short_tags:
        mpqueue.push('q', jobs.ok, args=(tag,))
    pool.wait(lambda: all(e2e.records('start', tag=t) for t in long_tags), 5,
              'the long jobs to start')

    os.kill(old_master['pid'], signal.SIGKILL)

    def new_master():
        masters = pool.masters('q')
        return len(masters) == 1 and masters[0]['pid'] != old_master['pid'] and masters[0]
    pool.wait(new_master, 10, 'a new master')

    wait_counts(pool, 20, over=23, failed=0, waiting=0, working=0)
    for tag in long_tags + short_tags:
        assert e2e.records('end', tag=tag), 'job %s never finished' % tag
    for tag in long_tags:     # in flight when the master died: run again
        assert len(e2e.records('start', tag=tag)) >= 2, tag

    def full_pool():
        pids = pool.worker_pids('q')
        return len(pids) == 3 and not pids & old_workers
    pool.wait(full_pool, 10, 'three new workers')


def test_sigkill_master_stops_its_orphaned_workers(e2e):
    # The workers of a dead master must not run on unsupervised (no timeout,
    # no lease renewal): the manage process stops them and recovers their jobs.
    pool = e2e.pool(queue_conf(worker_number=2, fail_number=1, fail_expire=0.1)).start()
    jobs = e2e.import_jobs()
    (master,) = pool.masters('q')
    mpqueue.push('q', jobs.slow_once, args=('long', 20))
    (first,) = pool.wait(lambda: e2e.records('start', tag='long'), 5, 'the job to start')

    os.kill(master['pid'], signal.SIGKILL)
    pool.wait(lambda: not alive(first['pid']), 3,
              'worker %d of the dead master (busy for 20 s) to be stopped' % first['pid'])
    wait_counts(pool, 10, over=1, failed=0, waiting=0, working=0)


# -- 7. SIGKILL of the whole tree; another pool recovers ------------------------------

@pytest.mark.slow
def test_sigkill_whole_tree_other_pool_recovers_within_lease(e2e):
    q = queue_conf(worker_number=2, fail_number=2, fail_expire=0.1)
    first = e2e.pool(q, name='server-a').start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.slow_once, args=('with-timeout', 60), timeout=60)
    mpqueue.push('q', jobs.slow_once, args=('no-timeout', 60), timeout=0)
    tags = ('with-timeout', 'no-timeout')
    first.wait(lambda: all(e2e.records('start', tag=t) for t in tags), 5,
               'both jobs to start')

    killed_at = time.time()
    tree = kill_tree(first)
    assert len(tree) == 1 + 1 + 2

    second = e2e.pool(q, name='server-b').start()
    for tag in tags:
        runs = second.wait(lambda: len(starts(e2e, tag)) >= 2 and starts(e2e, tag),
                           mpqueue.LEASE_SECONDS + 5, 'job %s to be recovered' % tag)
        recovery = runs[1]['time'] - killed_at
        print('%s: recovered %.2fs after the whole tree was killed' % (tag, recovery))
        assert recovery < mpqueue.LEASE_SECONDS + 5
        assert runs[1]['pid'] not in tree
    wait_counts(second, 10, over=2, failed=0, waiting=0, working=0)


# -- 8. reload -------------------------------------------------------------------------

VERSIONED = '''
def versioned(tag):
    record('start', tag=tag, version=%r)


def long_versioned(tag, seconds):
    record('start', tag=tag, version=%r)
    time.sleep(seconds)
    record('end', tag=tag, version=%r)
'''


def write_version(e2e, version):
    e2e.write_jobs(VERSIONED % ((version,) * 3) + '\n# %s\n' % ('x' * len(version) * 7))


def test_reload_runs_new_code_and_finishes_running_job(e2e):
    write_version(e2e, 'v1')
    pool = e2e.pool(queue_conf(worker_number=2)).start()
    jobs = e2e.import_jobs()
    old_workers = pool.worker_pids('q')

    mpqueue.push('q', jobs.versioned, args=('before',))
    pool.wait(lambda: e2e.records('start', tag='before'), 5, 'a job before the reload')
    assert e2e.records('start', tag='before')[0]['version'] == 'v1'
    mpqueue.push('q', jobs.long_versioned, args=('long', 1.5))
    (long_start,) = pool.wait(lambda: e2e.records('start', tag='long'), 5, 'the long job')

    write_version(e2e, 'version-2')
    res = pool.cli('worker:reload')
    assert res.returncode == 0, res.stderr
    for i in range(5):
        mpqueue.push('q', jobs.versioned, args=('after-%d' % i,))

    wait_counts(pool, 15, over=7, failed=0, waiting=0, working=0)
    for i in range(5):
        (rec,) = e2e.records('start', tag='after-%d' % i)
        assert rec['version'] == 'version-2', rec
        assert rec['pid'] not in old_workers
    (long_end,) = e2e.records('end', tag='long')
    assert long_end['version'] == 'v1' and long_end['pid'] == long_start['pid']
    assert len(e2e.records('start', tag='long')) == 1

    def all_new():
        pids = pool.worker_pids('q')
        return len(pids) == 2 and not pids & old_workers
    pool.wait(all_new, 10, 'every worker to be replaced')


def test_a_job_added_before_the_reload_says_to_reload(e2e):
    """A function added to the jobs module and pushed before worker:reload:
    the worker, which imported the module at its first job, cannot find it;
    the error says that workers run the code they started with and that
    worker:reload loads the new one, and after the reload the job runs."""
    write_version(e2e, 'v1')
    pool = e2e.pool(queue_conf(worker_number=1, fail_number=1, fail_expire=0.1)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.versioned, args=('first',))
    pool.wait(lambda: e2e.records('start', tag='first'), 5, 'a job of the module to run')
    e2e.write_jobs(VERSIONED % (('v2',) * 3) + '\n\ndef brand_new(tag):\n'
                   '    record("start", tag=tag)\n')
    jobs = e2e.import_jobs()
    job_id = mpqueue.push('q', jobs.brand_new, args=('new',))
    wait_counts(pool, 10, failed=1, waiting=0, working=0)
    (info,) = mpqueue.failed_jobs('q')
    assert info['id'] == job_id
    error = info['error_info'][-1]
    assert "Can't get attribute 'brand_new'" in error, error
    assert error.splitlines()[-1].startswith('hint: ') and 'worker:reload' in error, error
    assert pool.cli('worker:reload').returncode == 0
    mpqueue.retry_failed('q')
    pool.wait(lambda: e2e.records('start', tag='new'), 10, 'the job to run after the reload')


def test_reload_signal_with_jobs_pushed_at_once_loses_nothing(e2e):
    # Jobs pushed while the reload is under way must neither fail nor be
    # counted as a failed attempt: the workers being replaced take no job.
    write_version(e2e, 'v1')
    pool = e2e.pool(queue_conf(worker_number=3, fail_number=0)).start()
    jobs = e2e.import_jobs()
    manage = pool.manage_pid()
    for round_ in range(5):
        os.kill(manage, signal.SIGUSR1)
        for i in range(10):
            mpqueue.push('q', jobs.versioned, args=('r%d-%d' % (round_, i),))
        wait_counts(pool, 15, over=10 * (round_ + 1), failed=0, waiting=0, working=0)
    assert len(e2e.records('start')) == 50


def test_reload_with_mpqueue_vendored_beside_the_jobs(e2e):
    # mpqueue.py is meant to be copied into a project; the project's own
    # modules then sit beside it, and worker:reload must still load them anew.
    for name in ('mpqueue.py', 'mpqueue_cli.py'):
        (e2e.jobs_dir / name).write_bytes((REPO / name).read_bytes())
    write_version(e2e, 'v1')
    pool = e2e.pool(queue_conf(worker_number=2), cli_path=e2e.jobs_dir / 'mpqueue_cli.py')
    pool.start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.versioned, args=('before',))
    pool.wait(lambda: e2e.records('start', tag='before'), 5, 'a job before the reload')
    old_workers = pool.worker_pids('q')

    write_version(e2e, 'version-2')
    res = pool.cli('worker:reload')
    assert res.returncode == 0, res.stderr
    pool.wait(lambda: not pool.worker_pids('q') & old_workers, 10, 'the workers to be replaced')
    mpqueue.push('q', jobs.versioned, args=('after',))
    (rec,) = pool.wait(lambda: e2e.records('start', tag='after'), 5, 'a job after the reload')
    assert rec['version'] == 'version-2', rec


# -- 9. memory_limit ---------------------------------------------------------------

HOG = '''
_HOG = []


def hog(tag, mb):
    _HOG.append(b'x' * (mb * 1024 * 1024))
    record('start', tag=tag)
'''


def test_memory_limit_replaces_worker_after_job(e2e):
    e2e.write_jobs(HOG)
    pool = e2e.pool(queue_conf(worker_number=1, memory_limit=60)).start()
    jobs = e2e.import_jobs()
    (before,) = pool.worker_pids('q')

    mpqueue.push('q', jobs.hog, args=('big', 100))
    wait_counts(pool, 10, over=1, failed=0, working=0)
    (rec,) = e2e.records('start', tag='big')
    assert rec['pid'] == before
    pool.wait(lambda: not alive(before), 5, 'the worker over its memory limit to exit')

    def replaced():
        pids = pool.worker_pids('q')
        return len(pids) == 1 and before not in pids and pids
    (after,) = pool.wait(replaced, 10, 'a new worker')
    mpqueue.push('q', jobs.ok, args=('next',))
    wait_counts(pool, 10, over=2)
    assert e2e.records('start', tag='next')[0]['pid'] == after


def test_memory_limit_with_jobs_waiting_loses_none(e2e):
    # The worker over its limit exits after its job: the jobs queued behind it
    # must go to its replacement, not to the exiting process.
    e2e.write_jobs(HOG)
    pool = e2e.pool(queue_conf(worker_number=1, memory_limit=60, fail_number=0)).start()
    jobs = e2e.import_jobs()
    for round_ in range(3):
        mpqueue.push('q', jobs.hog, args=('big-%d' % round_, 100))
        for i in range(5):
            mpqueue.push('q', jobs.ok, args=('small-%d-%d' % (round_, i),))
        wait_counts(pool, 15, over=6 * (round_ + 1), failed=0, waiting=0, working=0)


# -- 11. latency ---------------------------------------------------------------------

def test_latency_does_not_depend_on_sleep_seconds(e2e):
    pool = e2e.pool(queue_conf(worker_number=3, sleep_seconds=1)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.ok, args=('warm-up',))
    wait_counts(pool, 10, over=1)
    # Let the master go idle (its longest wait is sleep_seconds = 1 s).
    pool.wait(lambda: all(w['state'] == 'idle' for w in pool.workers('q')), 5, 'idle workers')

    n = 100
    for i in range(n):
        mpqueue.push('q', jobs.latency, args=('lat-%d' % i, time.time()))
        time.sleep(0.02)      # pacing of the pushes, not a wait for a result
    wait_counts(pool, 10, over=n + 1)
    lat = [r['latency'] for r in e2e.records('start') if r['tag'].startswith('lat-')]
    assert len(lat) == n
    p50, p90, worst = percentile(lat, 0.5), percentile(lat, 0.9), max(lat)
    print('latency over %d pushes 20 ms apart: p50 %.1f ms, p90 %.1f ms, max %.1f ms' % (
        n, p50 * 1000, p90 * 1000, worst * 1000))
    assert p50 < 0.050, 'p50 latency %.1f ms' % (p50 * 1000)


@pytest.mark.parametrize('model', MODELS)
def test_delayed_job_starts_on_time(e2e, model):
    pool = e2e.pool(queue_conf(model=model, worker_number=2)).start()
    jobs = e2e.import_jobs()
    results = []
    for i in range(3):
        pushed = time.time()
        mpqueue.push('q', jobs.latency, delay=0.5, args=('delayed-%d' % i, pushed))
        (rec,) = pool.wait(lambda: e2e.records('start', tag='delayed-%d' % i), 5,
                           'the delayed job')
        results.append(rec['latency'])
    print('delay=0.5 s: started after %s s' % ', '.join('%.3f' % x for x in results))
    for late in results:
        assert late >= 0.5 - 0.001, 'started %.3fs after a push with delay=0.5' % late
        assert late < 0.5 + 0.2, 'started %.3fs after a push with delay=0.5' % late
    wait_counts(pool, 5, over=3)


# -- 12. grab model (success, retry, timeout and delay are parametrized above) ------

@pytest.mark.parametrize('model', MODELS)
def test_idle_pool_stays_quiet(e2e, model):
    # Little CPU at idle: no process of an idle pool may poll in a busy loop.
    pool = e2e.pool(queue_conf(model=model, worker_number=2)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.ok, args=('one',))
    wait_counts(pool, 10, over=1, failed=0)
    procs = [psutil.Process(r['pid']) for r in pool.status()]

    def cpu():
        return sum(sum(p.cpu_times()[:2]) for p in procs)
    before, t0 = cpu(), time.monotonic()
    wait_for(lambda: time.monotonic() - t0 >= 2.0, 3, 'two seconds to pass')
    used = cpu() - before
    print('%s model, idle pool: %.3f s CPU in 2 s' % (model, used))
    assert used < 0.2, 'an idle %s-model pool used %.2f s of CPU in 2 s' % (model, used)
    mpqueue.push('q', jobs.ok, args=('two',))
    wait_counts(pool, 10, over=2, failed=0)


# -- 13. kinds of jobs ---------------------------------------------------------------

def test_job_kinds_async_class_instance_import_path_lambda_closure(e2e):
    pool = e2e.pool(queue_conf(worker_number=2)).start()
    jobs = e2e.import_jobs()
    url, key = e2e.redis_db_url, e2e.key

    def make_closure(word):
        def closure(suffix):
            import json as json_
            import redis as redis_
            redis_.Redis.from_url(url).rpush(key, json_.dumps(
                {'event': 'start', 'tag': 'closure', 'word': word + suffix}))
        return closure

    mpqueue.push('q', jobs.async_job, args=('async-fn',))
    mpqueue.push('q', jobs.Tagged)                         # a Job class
    mpqueue.push('q', jobs.Tagged('instance'))             # a Job instance
    mpqueue.push('q', jobs.AsyncTagged('async-handle'))    # a coroutine handle()
    mpqueue.push('q', '%s:ok' % e2e.jobs_name, args=('import-path',))
    mpqueue.push('q', lambda: __import__('redis').Redis.from_url(url).rpush(
        key, '{"event": "start", "tag": "lambda"}'))
    mpqueue.push('q', make_closure('clo'), args=('sure',))

    wait_counts(pool, 10, over=7, failed=0)
    for tag in ('async-fn', 'class-pushed', 'instance', 'async-handle', 'import-path',
                'lambda', 'closure'):
        assert len(e2e.records('start', tag=tag)) == 1, tag
    assert e2e.records('end', tag='async-fn')[0]['kind'] == 'async'
    assert e2e.records('start', tag='closure')[0]['word'] == 'closure'


# -- bad payloads already in the broker -------------------------------------------

def _store_raw(queue, payload):
    """Put a job with this exact payload in the broker, as a foreign writer could."""
    driver = mpqueue._get_config()['basics']['driver']
    [job_id] = driver.execute(queue, [push_step(payload=payload, job='raw', fail_number=2)])
    return job_id


def test_corrupt_payload_goes_to_failed_and_worker_keeps_going(e2e):
    pool = e2e.pool(queue_conf()).start()
    jobs = e2e.import_jobs()
    workers = set(pool.worker_pids('q'))
    bad = _store_raw('q', b'MPQ1U this is not a pickle')
    foreign = _store_raw('q', b'{"json": "from another tool"}')
    mpqueue.push('q', jobs.ok, args=('after',))

    wait_counts(pool, 10, over=1, failed=2)
    failed = {info['id']: info for info in mpqueue.failed_jobs('q')}
    assert set(failed) == {bad, foreign}
    assert 'cannot be unpickled' in failed[bad]['error_info'][0]
    assert 'not mpqueue data' in failed[foreign]['error_info'][0]
    assert failed[bad]['exec_number'] == 1          # not retried: it can never decode
    assert len(e2e.records('end', tag='after')) == 1
    assert set(pool.worker_pids('q')) == workers     # no worker died over it


BAD_INIT = '''
class BadInit(mpqueue.Job):
    def __init__(self):
        raise LookupError('settings missing for BadInit')

    def handle(self):
        pass
'''


def test_undecodable_job_keeps_its_name_and_reason(e2e, tmp_path):
    """A job the worker cannot import, or a Job class whose __init__ raises
    in the worker, shows in queue:failed under the name pushed with it and
    with the real reason, not as '<undecodable job>'."""
    e2e.write_jobs(BAD_INIT)
    pool = e2e.pool(queue_conf()).start()
    jobs = e2e.import_jobs()
    pusher_only = tmp_path / 'pusher_only'          # on this process's path, not the pool's
    pusher_only.mkdir()
    module = 'other_%s' % e2e.prefix[-10:].replace('-', '_')
    (pusher_only / (module + '.py')).write_text('def func(tag):\n    return tag\n')
    sys.path.insert(0, str(pusher_only))
    try:
        other = importlib.import_module(module)
        not_importable = mpqueue.push('q', other.func, args=('x',))
    finally:
        sys.path.remove(str(pusher_only))
        sys.modules.pop(module, None)
    bad_init = mpqueue.push('q', jobs.BadInit)
    wait_counts(pool, 10, failed=2, working=0, waiting=0)
    res = pool.cli('queue:failed', '--queue', 'q', '--json')
    assert res.returncode == 0, res.stderr
    failed = {info['id']: info for info in json.loads(res.stdout)}
    for job_id, name, reason in (
            (not_importable, '%s.func' % module, "No module named '%s'" % module),
            (bad_init, '%s.BadInit' % e2e.jobs_name, 'settings missing for BadInit')):
        info = failed[job_id]
        assert info['job'] != '<undecodable job>' and name in info['job'], info
        assert any(reason in error for error in info['error_info']), info
    text = pool.cli('queue:failed', '--queue', 'q').stdout
    assert '<undecodable job>' not in text, text


def test_with_a_secret_unsigned_and_tampered_payloads_are_never_unpickled(e2e, tmp_path):
    marker = tmp_path / 'unpickled'
    pool = e2e.pool(queue_conf())
    text = pool.config_path.read_text().replace(
        "'stop_grace'", "'secret': b'k3y', 'stop_grace'")
    pool.config_path.write_text(text)
    e2e.configure(pool)
    pool.start()
    jobs = e2e.import_jobs()

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), 'w'))

    body = pickle.dumps({'v': 1, 'job': Evil()})
    unsigned = _store_raw('q', b'MPQ1U' + body)
    tampered = _store_raw('q', b'MPQ1S' + b'\0' * 32 + body)
    signed = mpqueue.push('q', jobs.ok, args=('signed',))

    wait_counts(pool, 10, over=1, failed=2)
    failed = {info['id']: info for info in mpqueue.failed_jobs('q')}
    assert set(failed) == {unsigned, tampered}
    assert 'not signed' in failed[unsigned]['error_info'][0]
    assert 'signature does not match' in failed[tampered]['error_info'][0]
    assert not marker.exists()
    assert signed not in failed
    assert len(e2e.records('end', tag='signed')) == 1
