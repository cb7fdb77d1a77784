"""Push options end to end: unique keys, priorities, retry policies, Retry,
Fail, retry_on / dont_retry_on.

Real pools (``python mpqueue_cli.py worker:start``) on Redis and on SQLite
(the ``e2e`` fixture runs each test on both), in both models where the order
of dispatch matters.  Jobs record every start on a Redis list with the pid,
the attempt number and the time; a *gated* job waits until the test opens
its gate, so that a test knows which state a job is in when it pushes.  The
step-level contract of the same options is in test_drivers.py.
"""

import functools
import os
import re
import signal
import time

import pytest

import mpqueue
from pool_harness import Src, kill_tree, queue_conf

MODELS = [mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB]
#: An observed retry never starts before the delay the worker chose for it
#: (give or take the clock's EARLY), and at most LATE after it.  LATE is loose
#: because the suite runs on loaded machines; how late retries are on a quiet
#: one is measured, not asserted (2-10 ms, the README says).
EARLY, LATE = 0.01, 0.5

OPTION_JOBS = '''
GATE_WAIT = 60


def gated(tag):
    """Records its start, then waits until the test opens its gate."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    deadline = time.time() + GATE_WAIT
    while not client().exists(KEY + ':gate:' + tag):
        if time.time() > deadline:
            raise RuntimeError('the gate of %s was never opened' % tag)
        time.sleep(0.005)
    record('end', tag=tag, n=n)
    return tag


def pushes_its_key(tag, key):
    """Pushes a job with its own queued key from its first line."""
    again = mpqueue.push('q', ok, args=(tag + '-again',), key=key, unique='queued')
    record('start', tag=tag, n=attempt(tag), again=again)


def gated_boom(tag):
    gated(tag)
    raise RuntimeError('gated-boom-%s' % tag)


def napper(tag, seconds):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    time.sleep(seconds)


def asks_retry(tag, delay, times):
    """Raises Retry(delay) on its first ``times`` attempts, then returns."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    if n <= times:
        raise mpqueue.Retry(delay)
    return n


class Urgent(mpqueue.Job):
    priority = 8

    def __init__(self, tag):
        self.tag = tag

    def handle(self):
        ok(self.tag)


class ListPolicy(mpqueue.Job):
    fail_number = 4
    fail_expire = [0.1, 0.4, 0.2]

    def __init__(self, tag):
        self.tag = tag

    def handle(self):
        boom(self.tag)


class Declined(mpqueue.Job):
    """Fails for good at once with mpqueue.Fail; its fail_handle records."""
    fail_number = 3
    fail_expire = 0.05

    def __init__(self, tag):
        self.tag = tag

    def handle(self):
        n = attempt(self.tag)
        record('start', tag=self.tag, n=n)
        raise mpqueue.Fail('card declined for %s' % self.tag)

    def fail_handle(self, job_info, exc):
        record('job_fail', tag=self.tag, exc_type=type(exc).__name__, exc=str(exc),
               errors=len(job_info['error_info']))
        return False


class Picky(mpqueue.Job):
    """Retries network errors, but not a refused connection, nor anything else."""
    fail_number = 2
    fail_expire = 0.05
    retry_on = (ConnectionError,)
    dont_retry_on = ConnectionRefusedError        # a subclass of ConnectionError

    def __init__(self, tag, error):
        self.tag, self.error = tag, error

    def handle(self):
        n = attempt(self.tag)
        record('start', tag=self.tag, n=n)
        raise {'ConnectionError': ConnectionError, 'KeyError': KeyError,
               'ConnectionRefusedError': ConnectionRefusedError}[self.error](
                   '%s-attempt-%d' % (self.tag, n))

    def fail_handle(self, job_info, exc):
        record('job_fail', tag=self.tag, exc_type=type(exc).__name__,
               errors=len(job_info['error_info']))
        return False
'''

RETRIED = re.compile(r'\(attempt (\d+) of (\d+); retried after ([0-9.]+)s\)$')


def options_e2e(e2e):
    e2e.write_jobs(OPTION_JOBS)
    return e2e


def starts(e2e, tag):
    return sorted(e2e.records('start', tag=tag), key=lambda r: r['n'])


def open_gate(e2e, tag):
    e2e.redis.set('%s:gate:%s' % (e2e.key, tag), 1)


def started(pool, e2e, tag, n=1, timeout=10):
    """Wait for attempt ``n`` of ``tag`` to start; its record."""
    def found():
        runs = [r for r in starts(e2e, tag) if r['n'] == n]
        return runs and runs[0]
    return pool.wait(found, timeout, 'attempt %d of %s to start' % (n, tag))


def recorded_working(pool, job_id, queue='q'):
    """Wait for the broker to record the start of ``job_id``: the master sends
    it in its next round trip, after the job began."""
    pool.wait(lambda: mpqueue.job_info(queue, job_id)['state'] == 'working', 10,
              'the broker to record the start of %s' % job_id)


def wait_status(pool, timeout, queue='q', **expected):
    last = {}

    def match():
        last.update(mpqueue.status(queue))
        return all(last[k] == v for k, v in expected.items())
    pool.wait(match, timeout, lambda: 'status of %r to reach %r (last: %r)' % (
        queue, expected, last))
    return dict(last)


def chosen_delays(error_info):
    """The delays the worker chose, from its note on each retried attempt."""
    out = []
    for n, error in enumerate(error_info, 1):
        match = RETRIED.search(error)
        if match:
            assert int(match.group(1)) == n, error
            out.append(float(match.group(3)))
    return out


def observed_gaps(e2e, tag):
    runs = starts(e2e, tag)
    return [b['time'] - a['time'] for a, b in zip(runs, runs[1:])]


def assert_on_time(gaps, delays):
    assert len(gaps) == len(delays), (gaps, delays)
    off = [round(gap - delay, 3) for gap, delay in zip(gaps, delays)]
    print('chosen delays %s, observed gaps %s, off by %s' % (
        delays, [round(g, 3) for g in gaps], off))
    assert all(-EARLY <= x <= LATE for x in off), 'retries off their delays by %s s' % off


# -- unique keys --------------------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_queued_key_is_held_while_the_job_waits(e2e, model):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1, model=model)).start()
    jobs = e2e.import_jobs()
    first = mpqueue.push('q', jobs.gated, args=('a',), key='k', unique='queued')
    started(pool, e2e, 'a')
    recorded_working(pool, first)
    # Started: the key is free again.  The next job waits behind it and holds it.
    second = mpqueue.push('q', jobs.gated, args=('b',), key='k', unique='queued')
    assert second != first
    pushed = mpqueue.status('q')['all']
    assert mpqueue.push('q', jobs.ok, args=('c',), key='k', unique='queued') == second
    assert mpqueue.push_many('q', [jobs.ok, jobs.ok], args=('c',), key='k',
                             unique='queued') == [second, second]
    assert mpqueue.status('q')['all'] == pushed          # nothing written
    # push_many: one key per job, de-duplicated within the batch and against the broker.
    ids = mpqueue.push_many('q', [jobs.ok, jobs.ok, jobs.ok, jobs.ok],
                            args=('x',), key=['k', 'other', 'other', None], unique='queued')
    assert ids[0] == second and ids[1] == ids[2] and len({second, ids[1], ids[3]}) == 3
    assert mpqueue.status('q')['all'] == pushed + 2
    assert mpqueue.job_info('q', ids[1])['key'] == 'other'

    open_gate(e2e, 'a')
    started(pool, e2e, 'b')
    recorded_working(pool, second)
    third = mpqueue.push('q', jobs.ok, args=('d',), key='k', unique='queued')
    assert third not in (first, second)
    open_gate(e2e, 'b')
    wait_status(pool, 15, over=5, waiting=0, working=0, failed=0)
    assert sorted(r['tag'] for r in e2e.records('start')) == ['a', 'b', 'd', 'x', 'x']


@pytest.mark.parametrize('model', MODELS)
def test_a_job_that_pushes_its_own_queued_key_first_thing_gets_a_new_job(e2e, model):
    # The hold is gone before the job's body can begin: a change pushed just
    # after the job read its data is run again, not dropped as a duplicate.
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=2, model=model)).start()
    jobs = e2e.import_jobs()
    for i in range(5):
        first = mpqueue.push('q', jobs.pushes_its_key, args=('a%d' % i, 'k%d' % i),
                             key='k%d' % i, unique='queued')
        run = started(pool, e2e, 'a%d' % i)
        assert run['again'] != first, 'try %d: the running job got its own id back' % i
        started(pool, e2e, 'a%d-again' % i)
    wait_status(pool, 15, over=10, waiting=0, working=0, failed=0)


@pytest.mark.parametrize('model', MODELS)
def test_active_key_is_held_until_done_and_until_the_final_failure(e2e, model):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1, model=model)).start()
    jobs = e2e.import_jobs()
    first = mpqueue.push('q', jobs.gated, args=('a',), key='k', unique='active')
    started(pool, e2e, 'a')
    assert mpqueue.push('q', jobs.ok, args=('no',), key='k', unique='active') == first
    assert mpqueue.push_many('q', [jobs.ok] * 3, args=('no',), key='k',
                             unique='active') == [first] * 3
    assert mpqueue.status('q')['all'] == 1

    open_gate(e2e, 'a')
    wait_status(pool, 10, over=1)
    # done: released in the step that ended the job
    second = mpqueue.push('q', jobs.gated_boom, args=('b',), key='k', unique='active',
                          fail_number=1, fail_expire=0.3)
    assert second != first
    started(pool, e2e, 'b')
    assert mpqueue.push('q', jobs.ok, args=('no',), key='k', unique='active') == second
    open_gate(e2e, 'b')

    def between_attempts():
        info = mpqueue.job_info('q', second)
        return info['state'] in ('delayed', 'waiting') and info
    pool.wait(between_attempts, 5, 'the retry of b to be due')
    assert mpqueue.push('q', jobs.ok, args=('no',), key='k', unique='active') == second
    wait_status(pool, 10, failed=1)
    # failed for good: released in the step that failed it
    third = mpqueue.push('q', jobs.ok, args=('c',), key='k', unique='active')
    assert third not in (first, second)
    wait_status(pool, 10, over=2, failed=1, waiting=0, working=0)
    assert not e2e.records('start', tag='no')
    assert [r['n'] for r in starts(e2e, 'b')] == [1, 2]


def test_a_hold_of_seconds_counts_pushes_not_jobs(e2e):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1)).start()
    jobs = e2e.import_jobs()
    before = time.time()
    first = mpqueue.push('q', jobs.ok, args=('a',), key='k', unique=1.0)
    wait_status(pool, 10, over=1)
    # The job is done, its window is not.
    assert mpqueue.push('q', jobs.ok, args=('no',), key='k', unique=1.0) == first
    ids = mpqueue.push_many('q', [functools.partial(jobs.ok, 'no'),
                                  functools.partial(jobs.ok, 'k2')], key=['k', 'k2'], unique=1.0)
    assert ids[0] == first and ids[1] != first
    while True:
        second = mpqueue.push('q', jobs.ok, args=('b',), key='k', unique=1.0)
        if second != first:
            break
        assert time.time() - before < 3, 'the hold of 1 s still refuses pushes after 3 s'
        time.sleep(0.01)
    window = time.time() - before
    print('a hold of 1 s let a push in after %.3f s' % window)
    assert 1.0 - EARLY <= window <= 1.0 + LATE, window
    wait_status(pool, 10, over=3, waiting=0, working=0, failed=0)
    assert not e2e.records('start', tag='no')


def test_a_worker_sigkilled_until_the_job_fails_releases_its_key(e2e):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=2, fail_number=1, fail_expire=5,
                               fail_handle=Src('jobs.queue_fail_handle'))).start()
    jobs = e2e.import_jobs()
    victim = mpqueue.push('q', jobs.gated, args=('victim',), key='k', unique='active')
    killed = set()
    for n in (1, 2):
        run = started(pool, e2e, 'victim', n)
        assert run['pid'] not in killed
        assert mpqueue.push('q', jobs.ok, args=('no',), key='k', unique='active') == victim
        os.kill(run['pid'], signal.SIGKILL)
        killed.add(run['pid'])
    wait_status(pool, 10, failed=1)
    again = mpqueue.push('q', jobs.ok, args=('again',), key='k', unique='active')
    assert again != victim
    wait_status(pool, 10, over=1, failed=1, waiting=0, working=0)
    [failed] = mpqueue.failed_jobs('q')
    assert failed['id'] == victim and failed['exec_number'] == 2
    assert len(failed['error_info']) == 2
    assert [r['tag'] for r in e2e.records('queue_fail')] == [victim]
    assert not e2e.records('start', tag='no')


@pytest.mark.slow
def test_a_lease_recovered_by_another_pool_keeps_then_releases_the_key(e2e):
    # Pool A runs two 'active' jobs and is SIGKILLed whole.  Their keys stay
    # held until pool B recovers them after the lease: 'last' had no retry
    # left and fails for good there (key released); 'again' runs again in B
    # (key still held) and is released when it is done.
    e2e = options_e2e(e2e)
    q = queue_conf(worker_number=2)
    a = e2e.pool(q, name='server-a').start()
    jobs = e2e.import_jobs()
    last = mpqueue.push('q', jobs.gated, args=('last',), key='k-last', unique='active',
                        fail_number=0)
    again = mpqueue.push('q', jobs.gated, args=('again',), key='k-again', unique='active',
                         fail_number=1)
    started(a, e2e, 'last')
    started(a, e2e, 'again')
    dead = kill_tree(a)
    killed_at = time.time()
    assert mpqueue.push('q', jobs.ok, args=('no',), key='k-last', unique='active') == last
    assert mpqueue.push('q', jobs.ok, args=('no',), key='k-again', unique='active') == again

    b = e2e.pool(q, name='server-b', configure=False).start()   # the same broker and queue
    rerun = started(b, e2e, 'again', 2, timeout=mpqueue.LEASE_SECONDS + 10)
    assert rerun['pid'] not in dead
    wait_status(b, 10, failed=1)
    print('recovered %.2f s after the pool was killed' % (rerun['time'] - killed_at))
    [failed] = mpqueue.failed_jobs('q')
    assert failed['id'] == last and 'lease expired' in failed['error_info'][-1]
    fresh = mpqueue.push('q', jobs.ok, args=('fresh',), key='k-last', unique='active')
    assert fresh != last
    assert mpqueue.push('q', jobs.ok, args=('no',), key='k-again', unique='active') == again
    open_gate(e2e, 'again')
    wait_status(b, 10, over=2, failed=1, waiting=0, working=0)
    after = mpqueue.push('q', jobs.ok, args=('after',), key='k-again', unique='active')
    assert after != again
    wait_status(b, 10, over=3, waiting=0, working=0)
    assert not e2e.records('start', tag='no')


def test_clean_releases_every_key(e2e):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1)).start()
    jobs = e2e.import_jobs()
    holders = {'active': mpqueue.push('q', jobs.gated, args=('a',), key='ka', unique='active')}
    started(pool, e2e, 'a')
    holders['queued'] = mpqueue.push('q', jobs.ok, args=('b',), key='kq', unique='queued')
    holders[60] = mpqueue.push('q', jobs.ok, args=('c',), key='ks', unique=60, delay=30)
    keys = {'active': 'ka', 'queued': 'kq', 60: 'ks'}
    for mode, holder in holders.items():
        assert mpqueue.push('q', jobs.ok, args=('no',), key=keys[mode], unique=mode) == holder
    mpqueue.clean('q')
    fresh = {mode: mpqueue.push('q', jobs.ok, args=('fresh-%s' % mode,), key=keys[mode],
                                unique=mode) for mode in holders}
    for mode in holders:
        assert fresh[mode] != holders[mode]
    open_gate(e2e, 'a')          # its outcome finds no job any more: it changes nothing
    for mode in holders:
        started(pool, e2e, 'fresh-%s' % mode)
    wait_status(pool, 10, over=3, waiting=0, working=0, failed=0)
    assert not e2e.records('start', tag='no') and not e2e.records('start', tag='b')


# -- priorities ---------------------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_higher_priorities_run_first_fifo_within_a_level(e2e, model):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1, model=model))    # not started yet
    jobs = e2e.import_jobs()
    pushed = []                                      # (level, tag) in push order
    for i, level in enumerate([0, 5, 9, 5, 0, 9, 1, 0, 3, 9, 0]):
        tag = 'p%d-%02d' % (level, i)
        mpqueue.push('q', jobs.ok, args=(tag,), priority=level)
        pushed.append((level, tag))
    mpqueue.push_many('q', [jobs.ok] * 3, args=('b5',), priority=5)
    pushed += [(5, 'b5')] * 3
    mpqueue.push('q', jobs.Urgent('u8'))             # Job.priority = 8
    pushed.append((8, 'u8'))
    mpqueue.push('q', jobs.Urgent('u2'), priority=2)  # the push argument wins
    pushed.append((2, 'u2'))
    pool.start()
    wait_status(pool, 15, over=len(pushed), waiting=0, working=0, failed=0)
    order = [r['tag'] for r in sorted(e2e.records('start'), key=lambda r: r['time'])]
    expected = [tag for _, tag in sorted(pushed, key=lambda p: -p[0])]     # sort is stable
    assert order == expected


@pytest.mark.parametrize('model', MODELS)
def test_a_retry_keeps_its_priority(e2e, model):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1, model=model))
    jobs = e2e.import_jobs()
    for i in range(4):
        mpqueue.push('q', jobs.napper, args=('low-%d' % i, 0.05))
    mpqueue.push('q', jobs.flaky, args=('high', 1), priority=7, fail_number=1, fail_expire=0)
    mpqueue.push('q', jobs.napper, args=('mid', 0.05), priority=7)
    pool.start()
    wait_status(pool, 15, over=6, waiting=0, working=0, failed=0)
    order = [(r['tag'], r['n']) for r in sorted(e2e.records('start'), key=lambda r: r['time'])]
    # The retry goes to the tail of its level, ahead of every lower one.
    assert order == [('high', 1), ('mid', 1), ('high', 2)] + [('low-%d' % i, 1)
                                                             for i in range(4)]


# -- retry policies -----------------------------------------------------------------------

POLICIES = {
    # name: (queue settings, how the job is pushed, the delays expected or their bounds)
    'number (queue)': (dict(fail_number=2, fail_expire=0.3), 'boom', [0.3, 0.3]),
    'list (Job)': ({}, 'ListPolicy', [0.1, 0.4, 0.2, 0.2]),
    'backoff, no jitter (push)': ({}, 'push backoff', [0.1, 0.2, 0.4, 0.5]),
    'backoff with jitter (queue)': (
        dict(fail_number=4, fail_expire=Src('mpqueue.backoff(0.2, factor=2, max=0.5, '
                                            'jitter=0.5)')),
        'boom', [(0.1, 0.3), (0.2, 0.6), (0.25, 0.75), (0.25, 0.75)]),
}


@pytest.mark.parametrize('model', MODELS)
@pytest.mark.parametrize('policy', list(POLICIES))
def test_retry_policy_delays_are_chosen_recorded_and_kept(e2e, policy, model):
    settings, how, expected = POLICIES[policy]
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1, model=model, **settings)).start()
    jobs = e2e.import_jobs()
    if how == 'ListPolicy':
        job_id = mpqueue.push('q', jobs.ListPolicy('t'))
    elif how == 'push backoff':
        job_id = mpqueue.push('q', jobs.boom, args=('t',), fail_number=4,
                              fail_expire=mpqueue.backoff(0.1, factor=2, max=0.5, jitter=0))
    else:
        job_id = mpqueue.push('q', jobs.boom, args=('t',))
    wait_status(pool, 15, failed=1, waiting=0, working=0)
    [info] = mpqueue.failed_jobs('q')
    assert info['id'] == job_id
    assert info['exec_number'] == len(expected) + 1
    delays = chosen_delays(info['error_info'])
    if isinstance(expected[0], tuple):
        assert all(low <= d <= high for d, (low, high) in zip(delays, expected)), delays
        bases = [(low + high) / 2 for low, high in expected]
        assert delays != [round(b, 3) for b in bases], 'no jitter: %s' % delays
        assert info['fail_expire'] == {'first': 0.2, 'factor': 2, 'max': 0.5, 'jitter': 0.5}
    else:
        assert delays == expected
    assert_on_time(observed_gaps(e2e, 't'), delays)
    assert mpqueue.job_info('q', job_id)['error_info'] == info['error_info']


def test_retry_with_a_delay_counts_as_an_attempt(e2e):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1, fail_number=2, fail_expire=5,
                               result_ttl=60)).start()
    jobs = e2e.import_jobs()
    # Retry(0.3) twice, then done: its own delay, not the queue's 5 s.
    done_id = mpqueue.push('q', jobs.asks_retry, args=('own', 0.3, 2))
    # Retry() uses the policy: 0.1, then 0.25.
    policy_id = mpqueue.push('q', jobs.asks_retry, args=('policy', None, 2),
                             fail_expire=[0.1, 0.25])
    # Always Retry(0.05) with one retry allowed: two attempts, then failed for good.
    spent_id = mpqueue.push('q', jobs.asks_retry, args=('spent', 0.05, 99), fail_number=1)
    wait_status(pool, 15, over=2, failed=1, waiting=0, working=0)

    for tag, job_id, delays in (('own', done_id, [0.3, 0.3]),
                                ('policy', policy_id, [0.1, 0.25])):
        info = mpqueue.job_info('q', job_id)
        assert info['state'] == 'done' and info['exec_number'] == 3
        assert chosen_delays(info['error_info']) == delays
        assert all('the job asked to be retried' in e for e in info['error_info'])
        assert_on_time(observed_gaps(e2e, tag), delays)
    [spent] = mpqueue.failed_jobs('q')
    assert spent['id'] == spent_id and spent['exec_number'] == 2
    assert chosen_delays(spent['error_info']) == [0.05]
    assert 'mpqueue.Retry: the job asked to be retried in 0.05s' in spent['error_info'][-1]


def test_fail_skips_the_retries_and_runs_the_fail_handlers(e2e):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=1,
                               fail_handle=Src('jobs.queue_fail_handle'))).start()
    jobs = e2e.import_jobs()
    job_id = mpqueue.push('q', jobs.Declined('card'))        # fail_number = 3
    wait_status(pool, 10, failed=1, waiting=0, working=0)
    assert [r['n'] for r in starts(e2e, 'card')] == [1]
    [info] = mpqueue.failed_jobs('q')
    assert info['id'] == job_id and info['exec_number'] == 1
    [error] = info['error_info']
    assert 'Traceback' in error and error.endswith('mpqueue.Fail: card declined for card')
    [handled] = e2e.records('job_fail', tag='card')
    assert handled['exc_type'] == 'Fail' and handled['exc'] == 'card declined for card'
    assert [r['tag'] for r in e2e.records('queue_fail')] == [job_id]


def test_retry_on_and_dont_retry_on_choose_what_is_retried(e2e):
    e2e = options_e2e(e2e)
    pool = e2e.pool(queue_conf(worker_number=2)).start()
    jobs = e2e.import_jobs()
    ids = {error: mpqueue.push('q', jobs.Picky(error, error))
           for error in ('ConnectionError', 'ConnectionRefusedError', 'KeyError')}
    wait_status(pool, 15, failed=3, waiting=0, working=0)
    failed = {info['id']: info for info in mpqueue.failed_jobs('q')}
    for error, attempts in (('ConnectionError', 3), ('ConnectionRefusedError', 1),
                            ('KeyError', 1)):
        info = failed[ids[error]]
        assert [r['n'] for r in starts(e2e, error)] == list(range(1, attempts + 1)), error
        assert info['exec_number'] == attempts
        assert len(info['error_info']) == attempts
        last = info['error_info'][-1]
        assert 'Traceback' in last and '%s-attempt-%d' % (error, attempts) in last, last
        assert '%s: ' % error in last
        assert chosen_delays(info['error_info']) == [0.05] * (attempts - 1)
        [handled] = e2e.records('job_fail', tag=error)
        assert handled['exc_type'] == error and handled['errors'] == attempts


# -- bad options --------------------------------------------------------------------------

def _configure(tmp_path, driver, queue, **options):
    return mpqueue.configure({'basics': {'name': 'options', 'pid_path': str(tmp_path),
                                         'driver': driver},
                              'queue': [dict({'name': queue}, **options)]})


def _bad(callable_, exc_type, *names):
    with pytest.raises(exc_type) as info:
        callable_()
    message = str(info.value)
    assert '\n' not in message, message
    for name in names:
        assert name in message, message
    return message


class _Add(mpqueue.Job):
    def handle(self):
        return 1 + 1


def _job_with(**attributes):
    return type('BadJob', (_Add,), attributes)


@pytest.mark.parametrize('value, names', [
    ([], ['queue[0].fail_expire', 'empty list']),
    ([0.1, -1], ['queue[0].fail_expire[1]', '-1']),
    ([0.1, 'x'], ['queue[0].fail_expire[1]', "'x'"]),
    ('3', ['queue[0].fail_expire', "'3'"]),
    ({'first': 1}, ['queue[0].fail_expire', 'backoff']),
    (True, ['queue[0].fail_expire', 'True']),
])
def test_a_bad_policy_in_the_queue_config(tmp_path, driver, queue, value, names):
    _bad(lambda: _configure(tmp_path, driver, queue, fail_expire=value), mpqueue.ConfigError,
         *names)


@pytest.mark.parametrize('kwargs, names', [
    ({'first': -1}, ['backoff first', '-1']),
    ({'first': 1, 'factor': 0.5}, ['backoff factor', '0.5']),
    ({'first': 2, 'max': 1}, ['backoff max', '1']),
    ({'first': 1, 'jitter': 1.5}, ['backoff jitter', '1.5']),
    ({'first': 'soon'}, ['backoff first', "'soon'"]),
])
def test_a_bad_backoff_is_refused_where_it_is_made(kwargs, names):
    _bad(lambda: mpqueue.backoff(**kwargs), mpqueue.ConfigError, *names)


@pytest.mark.parametrize('attributes, push_kwargs, exc_type, names', [
    ({'fail_expire': []}, {}, mpqueue.ConfigError, ['BadJob.fail_expire', 'empty list']),
    ({'fail_expire': [1, -2]}, {}, mpqueue.ConfigError, ['BadJob.fail_expire[1]', '-2']),
    ({'fail_expire': 'soon'}, {}, mpqueue.ConfigError, ['BadJob.fail_expire', "'soon'"]),
    ({'priority': 10}, {}, mpqueue.ConfigError, ['BadJob.priority', '10']),
    ({'retry_on': 'ValueError'}, {}, TypeError, ['BadJob.retry_on', "'ValueError'"]),
    ({'dont_retry_on': (KeyError, 3)}, {}, TypeError, ['BadJob.dont_retry_on']),
    ({}, {'fail_expire': [0.5, -1]}, mpqueue.ConfigError, ['fail_expire[1]', '-1']),
    ({}, {'fail_expire': ()}, mpqueue.ConfigError, ['fail_expire', 'empty list']),
    ({}, {'fail_expire': {'first': 1}}, mpqueue.ConfigError, ['fail_expire', 'backoff']),
    ({}, {'priority': -1}, mpqueue.ConfigError, ['priority', '-1']),
    ({}, {'priority': 2.5}, mpqueue.ConfigError, ['priority', '2.5']),
    ({}, {'priority': True}, mpqueue.ConfigError, ['priority', 'True']),
    ({}, {'key': 'k', 'unique': 'always'}, mpqueue.ConfigError, ['unique', "'always'"]),
    ({}, {'key': 'k', 'unique': 0}, mpqueue.ConfigError, ['unique', '0']),
    ({}, {'unique': 'queued'}, mpqueue.ConfigError, ['unique', 'needs a key']),
    ({}, {'key': '', 'unique': 'queued'}, mpqueue.ConfigError, ['key', "''"]),
    ({}, {'key': 42}, mpqueue.ConfigError, ['key', '42']),
    ({}, {'key': ['a']}, mpqueue.ConfigError, ['key', 'push_many']),
])
def test_bad_push_options_write_nothing(tmp_path, driver, queue, store, attributes,
                                        push_kwargs, exc_type, names):
    _configure(tmp_path, driver, queue)
    job = _job_with(**attributes)() if attributes else _Add()
    _bad(lambda: mpqueue.push(queue, job, **push_kwargs), exc_type, *names)
    if not isinstance(push_kwargs.get('key'), list):      # a list is push_many's
        _bad(lambda: mpqueue.push_many(queue, [_Add(), job], **push_kwargs), exc_type, *names)
    assert store.leftovers(queue) == []


def test_push_many_wants_one_key_per_job(tmp_path, driver, queue, store):
    _configure(tmp_path, driver, queue)
    _bad(lambda: mpqueue.push_many(queue, [_Add()] * 3, key=['a', 'b'], unique='queued'),
         mpqueue.ConfigError, 'key', '2 keys for 3 jobs')
    _bad(lambda: mpqueue.push_many(queue, [_Add()] * 2, key=['a', 7], unique='queued'),
         mpqueue.ConfigError, 'key[1]', '7')
    assert store.leftovers(queue) == []


@pytest.mark.parametrize('delay', [-1, 'soon', float('inf'), True])
def test_retry_checks_its_delay(delay):
    _bad(lambda: mpqueue.Retry(delay), ValueError, 'Retry(delay)', repr(delay))
