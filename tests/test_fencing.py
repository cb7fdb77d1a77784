"""Stale outcomes are fenced: an outcome written for an attempt that is no
longer the job's current one changes nothing.

Each test makes a stale outcome on purpose, end to end.  Pool A starts a job
and its master is SIGSTOPped, so nobody renews the job's lease; once the lease
(``mpqueue.LEASE_SECONDS``) lapses, pool B recovers the job and runs it again.
Then pool A's attempt ends (its run returns, raises, or its worker is
SIGKILLed) and its outcome reaches the broker: at once from a grab worker,
when its master is resumed (SIGCONT) in the distribute model.  That outcome is
stale: the job's state must be decided by B's attempt alone, and the job must
never run twice at the same time.

Which stale outcomes this reaches: ``done`` and ``retry`` (A's run returns or
raises with attempts left), ``fail`` (A's run raises with none left; B runs
the fail handlers) and ``lost`` (A's worker is killed while its master is
stopped; the master reports it once resumed).  A stale ``renew`` cannot be
observed here: A's master reads its worker's outcome (or reaps it) before it
renews, and a renewal only matters if B's pool then died with the job.

Every run of the job (and of its fail handler) records its start and end on
the test Redis, on its own connection, and waits at its start until the test
releases it (``Fenced`` below).  After A's stale outcome, two probe jobs run
one after the other on A's only worker: once the second one has ended, A's
outcome has been written and whatever it made A do has happened.
"""

import os
import signal
import time

import psutil
import pytest

import mpqueue
from pool_harness import alive, queue_conf, wait_for

FENCE_JOBS = '''
import signal


class Fenced(mpqueue.Job):
    """A job whose every run (of ``handle`` or ``fail_handle``) records its
    start and end.  ``plan`` maps the run number (1, 2, ... counted over both)
    to what that run does besides: 'hold' (wait at the start until the test
    pushes to ``KEY:go:TAG:N``), 'stop' (SIGSTOP its own process once it has
    recorded its end, before its outcome is reported), 'raise'; joined with
    '-'.  A run not in the plan returns at once."""

    fail_expire = 0

    def __init__(self, tag, plan):
        self.tag, self.plan = tag, plan

    def _run(self, what):
        n = attempt(self.tag)
        how = self.plan.get(n, '').split('-')
        record('start', tag=self.tag, n=n, what=what)
        if 'hold' in how:
            deadline = time.time() + 60
            while not client().blpop(KEY + ':go:%s:%d' % (self.tag, n), 1) \\
                    and time.time() < deadline:
                pass
        record('end', tag=self.tag, n=n, what=what)
        if 'stop' in how:
            os.kill(os.getpid(), signal.SIGSTOP)
        if 'raise' in how:
            raise RuntimeError('run %d of %s raises' % (n, self.tag))

    def handle(self):
        self._run('handle')

    def fail_handle(self, job_info, exc):
        self._run('fail_handle')
        return True
'''

# outcome -> (the job's plan, its fail_number, A's last run, B's run)
OUTCOMES = {
    # A's run raises with attempts left: 'retry'
    'retry': ({1: 'hold-stop-raise', 2: 'hold'}, 2, 1, 2),
    # A's run returns: 'done'
    'done': ({1: 'hold-stop', 2: 'hold'}, 2, 1, 2),
    # A's worker is SIGKILLed while its master is stopped: 'lost', once resumed
    'lost': ({1: 'hold', 2: 'hold'}, 2, 1, 2),
    # A's run raises with no attempt left and A runs the fail handler (run 2):
    # 'fail'; B's recovery runs the fail handler again (run 3)
    'fail': ({1: 'hold-raise', 2: 'stop', 3: 'hold'}, 0, 2, 3),
}

CASES = [
    pytest.param('redis', mpqueue.MODEL_DISTRIBUTE, 'retry'),
    pytest.param('redis', mpqueue.MODEL_DISTRIBUTE, 'done'),
    pytest.param('redis', mpqueue.MODEL_DISTRIBUTE, 'lost'),
    pytest.param('redis', mpqueue.MODEL_DISTRIBUTE, 'fail'),
    pytest.param('redis', mpqueue.MODEL_GRAB, 'retry', marks=pytest.mark.slow),
    pytest.param('redis', mpqueue.MODEL_GRAB, 'done', marks=pytest.mark.slow),
    pytest.param('sqlite', mpqueue.MODEL_DISTRIBUTE, 'retry', marks=pytest.mark.slow),
    pytest.param('sqlite', mpqueue.MODEL_DISTRIBUTE, 'done', marks=pytest.mark.slow),
    pytest.param('sqlite', mpqueue.MODEL_DISTRIBUTE, 'lost', marks=pytest.mark.slow),
]


@pytest.fixture
def e2e(tmp_path, redis_url, redis_db, proc_reaper, request):
    from pool_harness import E2E
    broker = request.node.callspec.params['broker']
    harness = E2E(tmp_path, redis_url, redis_db, proc_reaper, request.node.name, broker)
    harness.write_jobs(FENCE_JOBS)
    try:
        yield harness
    finally:
        harness.close()


def runs_of(e2e, tag):
    """``{n: {'start', 'end', 'pid', 'what'}}`` of every run of ``tag``."""
    runs = {}
    for rec in e2e.records(tag=tag):
        run = runs.setdefault(rec['n'], {'pid': rec['pid'], 'what': rec.get('what'),
                                         'start': None, 'end': None})
        run[rec['event']] = rec['time']
    return runs


def overlaps(runs, died):
    """Pairs of runs whose [start, end] intervals overlap.  A run with no end
    ends when its process died (``died``: pid -> time), else it is still on."""
    spans = sorted((r['start'], r['end'] or died.get(r['pid'], float('inf')), n)
                   for n, r in runs.items())
    out = []
    for i, (start, end, n) in enumerate(spans):
        for start2, _, n2 in spans[i + 1:]:
            if start2 < end:
                out.append((n, n2))
    return out


def describe(runs):
    return '; '.join('run %d (%s) pid %d %.3f-%s' % (
        n, r['what'], r['pid'], r['start'], '%.3f' % r['end'] if r['end'] else 'open')
        for n, r in sorted(runs.items()))


def release(e2e, tag, n):
    e2e.redis.rpush('%s:go:%s:%d' % (e2e.key, tag, n), 1)


def run_probe(e2e, pool, jobs, tag, timeout=15):
    """Push a probe job and wait until the broker has it done (the job's own
    record of its end comes before its master records the outcome)."""
    job_id = mpqueue.push('q', jobs.ok, args=(tag,), result_ttl=60)
    pool.wait(lambda: (mpqueue.job_info('q', job_id) or {}).get('state') == 'done', timeout,
              'probe %s to be done' % tag)
    return e2e.records('end', tag=tag)[0]


def stopped(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def cont(*pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize('broker, model, outcome', CASES)
def test_stale_outcome_is_fenced(e2e, broker, model, outcome):
    plan, fail_number, a_last, b_run = OUTCOMES[outcome]
    q = queue_conf(model=model, worker_number=1, fail_number=fail_number, fail_expire=0)
    a = e2e.pool(q, name='pool-a').start()
    jobs = e2e.import_jobs()
    (a_master,) = a.masters('q')
    tag = 'fenced'
    mpqueue.push('q', jobs.Fenced(tag, plan))
    first = a.wait(lambda: runs_of(e2e, tag).get(1), 10, 'run 1 to start on pool A')
    a_worker = first['pid']
    # Stop A's master before its first lease renewal (LEASE_SECONDS / 3 after
    # the start): nobody renews the lease from now on.  A's attempt ends
    # before the lease lapses, but its outcome is held back: in the master
    # (stopped) and in the worker, which stops itself once the run has ended.
    os.kill(a_master['pid'], signal.SIGSTOP)
    died = {}
    try:
        if outcome == 'lost':
            died[a_worker] = time.time()
            os.kill(a_worker, signal.SIGKILL)
            wait_for(lambda: not alive(a_worker), 5, 'worker %d to die' % a_worker)
        else:
            release(e2e, tag, 1)
            a.wait(lambda: runs_of(e2e, tag).get(a_last, {}).get('end') and stopped(a_worker),
                   10, "A's last run to end and its worker to stop")
        b = e2e.pool(q, name='pool-b').start()
        jobs = e2e.import_jobs()        # the pushing side imports the jobs anew per pool
        taken = b.wait(lambda: runs_of(e2e, tag).get(b_run), mpqueue.LEASE_SECONDS + 10,
                       'pool B to run the job once its lease lapsed')
        assert taken['pid'] != a_worker
        took_over = taken['start'] - first['start']

        # A's outcome reaches the broker now, stale: B's attempt is the current one.
        cont(a_worker, a_master['pid'])
        # Two probes, one after the other, on A's only worker (B's is held):
        # when the second has ended, A has written its stale outcome and done
        # whatever that outcome led it to do.
        run_probe(e2e, a, jobs, 'probe-1')
        run_probe(e2e, a, jobs, 'probe-2')
        meanwhile = runs_of(e2e, tag)
        status = mpqueue.status('q')
        release(e2e, tag, b_run)
        final = a.wait(lambda: (lambda s: s['waiting'] == 0 and s['working'] == 0 and s)(
            mpqueue.status('q')), 15, 'the queue to settle')
        runs = runs_of(e2e, tag)
    finally:
        cont(a_worker, a_master['pid'])
    print('\n[fence] %s %s stale %s: B took over %.2fs after the start; runs: %s; '
          'status after A resumed %r; final %r' % (broker, model, outcome, took_over,
                                                   describe(runs), status, final))

    both = overlaps(runs, died)
    assert not both, 'job ran twice at the same time (runs %s) after the stale %r of ' \
        'pool A: %s' % (both, outcome, describe(runs))
    assert sorted(meanwhile) == list(range(1, b_run + 1)), \
        'the stale %r of pool A made the job run again: %s' % (outcome, describe(meanwhile))
    assert (status['working'], status['waiting'], status['failed']) == (1, 0, 0), \
        'the stale %r of pool A changed the job while B ran it: status %r' % (outcome, status)
    assert sorted(runs) == list(range(1, b_run + 1)), describe(runs)
    if outcome == 'fail':
        assert final['failed'] == 1, final
        (info,) = mpqueue.failed_jobs('q')
        assert any('lease expired' in e for e in info['error_info']), info['error_info']
    else:
        assert final['failed'] == 0 and final['over'] == 3, final
