"""Immediate mode: ``basics.immediate = True`` or ``with mpqueue.immediate():``.

push and push_many run each job in this process before they return, through
the worker's own code: the payload is pickled and signed as for a broker,
then checked and unpickled as a worker does.  The broker is an SQLite
database in this process's memory, moved by the steps of every broker: the
config's broker file must never appear, and the edge cases (unique holds,
result_ttl, cancel, retries and fail handlers) come out as a real SQLite
pool's do, which the last test shows side by side.
"""

import asyncio
import contextlib
import functools
import os
import threading
import time

import pytest

import mpqueue
from pool_harness import E2E, Src, queue_conf

#: What the jobs of this module did, in order (they run in this process).
RAN = []


@pytest.fixture(autouse=True)
def forget():
    RAN.clear()
    yield
    RAN.clear()


def make_config(tmp_path, immediate=False, secret=None, **queue):
    queue.setdefault('name', 'q')
    basics = {'name': 'immediate-test', 'pid_path': str(tmp_path), 'immediate': immediate}
    if secret:
        basics['secret'] = secret
    return mpqueue.configure({'basics': basics, 'log': {'path': str(tmp_path)}, 'queue': [queue]})


def broker_file(tmp_path):
    return tmp_path / 'immediate-test.db'


def record(tag, value=None):
    RAN.append(tag)
    return value


def flaky(tag, failures):
    """Fails ``failures`` times, then returns the number of its attempt."""
    RAN.append(tag)
    if len(RAN) <= failures:
        raise ValueError('attempt %d of %s fails' % (len(RAN), tag))
    return len(RAN)


def queue_fail_handle(job_info, exc):
    RAN.append(('queue fail_handle', job_info['exec_number'], type(exc).__name__))


class Failing(mpqueue.Job):
    fail_number = 1

    def handle(self):
        RAN.append('handle')
        raise RuntimeError('always')

    def fail_handle(self, job_info, exc):
        RAN.append(('job fail_handle', len(job_info['error_info'])))
        return False        # the queue's runs too


class Exploding:
    """Pickles fine, cannot be unpickled: what a worker without the job's
    dependencies meets."""

    def __reduce__(self):
        return (_refuse, ())

    def __call__(self):
        RAN.append('never')


def _refuse():
    raise ImportError('no module named nowhere')


def once_more():
    RAN.append('try')
    if len(RAN) == 1:
        raise mpqueue.Retry(delay=3600)
    raise mpqueue.Fail('giving up')


async def doubled(x):
    await asyncio.sleep(0.01)
    RAN.append('async')
    return 2 * x


@mpqueue.job('q', result_ttl=30, priority=4, fail_number=2)
def decorated(tag, value=None):
    RAN.append((tag, os.getpid()))
    return value


def waits_for(job_id, timeout):
    return mpqueue.result('q', job_id, timeout=timeout)


def test_push_runs_the_job_before_it_returns_and_touches_no_broker(tmp_path):
    make_config(tmp_path, immediate=True)
    job_id = mpqueue.push('q', record, args=('one',))
    assert RAN == ['one']
    assert isinstance(job_id, str) and len(job_id) == 22
    ids = mpqueue.push_many('q', [record, record], args=('many',))
    assert RAN == ['one', 'many', 'many'] and len(set(ids)) == 2
    assert not broker_file(tmp_path).exists()


def test_the_block_scopes_it_and_false_sends_to_the_broker_again(tmp_path):
    make_config(tmp_path)
    with mpqueue.immediate():
        mpqueue.push('q', record, args=('inside',))
        with mpqueue.immediate(False):
            job_id = mpqueue.push('q', record, args=('queued',))
        mpqueue.push('q', record, args=('inside again',))
    assert RAN == ['inside', 'inside again']
    assert broker_file(tmp_path).exists()
    assert mpqueue.job_info('q', job_id)['state'] == 'waiting'      # from the broker
    mpqueue.push('q', record, args=('after',))
    assert RAN == ['inside', 'inside again']
    assert mpqueue.status('q')['waiting'] == 2
    mpqueue.clean('q')


def test_it_decorates_a_function(tmp_path):
    make_config(tmp_path)

    @mpqueue.immediate()
    def view():
        return mpqueue.push('q', record, args=('decorated',), result_ttl=10)

    job_id = view()
    assert RAN == ['decorated']
    assert mpqueue.job_info('q', job_id)['state'] == 'done'     # outside the block, still known
    assert not broker_file(tmp_path).exists()


def test_the_handle_and_the_decorator_behave_as_with_a_pool(tmp_path):
    """What test_handles.py shows with pools, here: the decorator's options,
    per-call options over them, a plain call, the handle's methods, and
    result() inside a job without a timeout."""
    make_config(tmp_path)
    assert decorated('here', 1) == 1 and RAN == [('here', os.getpid())]
    with mpqueue.immediate():
        job_id = decorated.push('pushed', value=2)
        assert RAN[-1] == ('pushed', os.getpid())           # ran before push returned
        assert isinstance(job_id, mpqueue.JobId) and job_id.queue == 'q'
        info = job_id.info()
        assert (info['state'], info['priority'], info['fail_number']) == ('done', 4, 2)
        assert info['job'] == '%s:decorated' % __name__
        assert job_id.result() == 2 and job_id.cancel() == 'done'
        other = decorated.push_with(args=('with',), kwargs={'value': 3}, priority=9,
                                    fail_number=0, delay=60)
        assert (other.info()['priority'], other.info()['fail_number']) == (9, 0)
        assert other.result() == 3                          # the delay is not waited for
        many = decorated.push_many([('m1', 1), {'tag': 'm2', 'value': 2}], priority=6)
        assert [(j.result(), j.info()['priority']) for j in many] == [(1, 6), (2, 6)]
        assert mpqueue.push('q', waits_for, args=(job_id, 0), result_ttl=30).result() == 2
        forever = mpqueue.push('q', waits_for, args=(job_id, None), result_ttl=30)
    with pytest.raises(mpqueue.JobFailed, match='inside a running job needs a timeout'):
        forever.result()
    assert mpqueue.JobId(str(job_id), 'q').result() == 2    # after the block, still known
    assert not broker_file(tmp_path).exists()


def test_a_job_that_cannot_be_pickled_fails_at_push_as_in_production(tmp_path):
    make_config(tmp_path, immediate=True)
    lock = threading.Lock()
    with pytest.raises(mpqueue.SerializationError, match="for queue 'q' cannot be pickled"):
        mpqueue.push('q', lambda: lock)
    with pytest.raises(mpqueue.SerializationError, match='max_payload'):
        mpqueue.push('q', record, args=('x' * (17 * 1024 * 1024),))
    assert RAN == []


def test_the_job_is_unpickled_as_a_worker_would(tmp_path):
    """A lambda's closure travels by value: the job changes a copy of the
    list, as it would in a worker; and a payload that cannot be unpickled
    fails the job with the reason, fail handlers run."""
    make_config(tmp_path, immediate=True, secret='s3cret', fail_handle=queue_fail_handle)
    mine = []
    mpqueue.push('q', lambda: mine.append(1))
    assert mine == []
    job_id = mpqueue.push('q', Exploding())
    info = mpqueue.job_info('q', job_id)
    assert info['state'] == 'failed' and info['exec_number'] == 1
    assert 'cannot be unpickled: ImportError: no module named nowhere' in info['error_info'][0]
    assert RAN == [('queue fail_handle', 1, 'SerializationError')]


def test_retries_run_back_to_back_then_the_fail_handlers(tmp_path):
    make_config(tmp_path, immediate=True, fail_number=2, fail_expire=60,
                fail_handle=queue_fail_handle, result_ttl=60)
    began = time.monotonic()
    job_id = mpqueue.push('q', flaky, args=('f', 2))
    assert time.monotonic() - began < 5          # not 2 x 60 s
    assert RAN == ['f', 'f', 'f']
    assert mpqueue.result('q', job_id) == 3
    info = mpqueue.job_info('q', job_id)
    assert info['state'] == 'done' and info['exec_number'] == 3
    assert [e.splitlines()[-2] for e in info['error_info']] == [
        'ValueError: attempt 1 of f fails', 'ValueError: attempt 2 of f fails']

    RAN.clear()
    job_id = mpqueue.push('q', Failing())
    assert RAN == ['handle', 'handle', ('job fail_handle', 2),
                   ('queue fail_handle', 2, 'RuntimeError')]
    with pytest.raises(mpqueue.JobFailed, match='RuntimeError: always') as failed:
        mpqueue.result('q', job_id)
    assert failed.value.job_info['state'] == 'failed'
    assert len(failed.value.job_info['error_info']) == 2
    assert failed.value.job_info['type'] == mpqueue.TYPE_NORMAL


def test_retry_and_fail_raised_by_the_job(tmp_path):
    make_config(tmp_path, immediate=True, fail_number=1)
    job_id = mpqueue.push('q', once_more)
    assert RAN == ['try', 'try']
    info = mpqueue.job_info('q', job_id)
    assert info['state'] == 'failed' and info['exec_number'] == 2
    assert 'giving up' in info['error_info'][-1]


def test_a_delayed_job_runs_at_once(tmp_path):
    make_config(tmp_path, immediate=True)
    began = time.monotonic()
    mpqueue.push('q', record, 3600, args=('later',))
    mpqueue.push_many('q', [record], delay=3600, args=('later too',))
    assert RAN == ['later', 'later too'] and time.monotonic() - began < 5


def test_outcomes_are_kept_as_a_broker_keeps_them(tmp_path):
    """A done job is known for its result_ttl (0: not at all), a failed one
    stays failed; result() returns, raises JobFailed or JobNotFound."""
    make_config(tmp_path, immediate=True, fail_number=0)
    kept = mpqueue.push('q', record, args=('kept', {'answer': 42}), result_ttl=30)
    assert mpqueue.result('q', kept, timeout=0) == {'answer': 42}
    info = mpqueue.job_info('q', kept)
    assert info['state'] == 'done' and info['result_repr'] == "{'answer': 42}"
    assert info['end_time'] >= info['start_time'] >= info['create_time']
    assert info['worker_id'] == '%s:%d' % (os.uname().nodename, os.getpid())

    gone = mpqueue.push('q', record, args=('not kept', 1))          # the queue's result_ttl: 0
    assert mpqueue.job_info('q', gone) is None
    with pytest.raises(mpqueue.JobNotFound):
        mpqueue.result('q', gone)

    short = mpqueue.push('q', record, args=('short', 1), result_ttl=0.2)
    assert mpqueue.job_info('q', short)['state'] == 'done'
    time.sleep(0.3)
    assert mpqueue.job_info('q', short) is None

    assert mpqueue.cancel('q', kept) == 'done'          # ended: nothing changes
    assert mpqueue.cancel('q', 'no-such-job') is None
    assert mpqueue.job_info('q', 'no-such-job') is None
    assert not broker_file(tmp_path).exists()


def test_unique_keys_deduplicate_as_a_broker_does(tmp_path):
    make_config(tmp_path, immediate=True)
    ids = mpqueue.push_many('q', [record, record], args=('batch',), key='k', unique='queued')
    assert ids[0] == ids[1] and RAN == ['batch']         # within one batch
    again = mpqueue.push('q', record, args=('again',), key='k', unique='queued')
    assert again != ids[0] and RAN == ['batch', 'again']  # the first one has ended
    first = mpqueue.push('q', record, args=('window',), key='w', unique=60)
    assert mpqueue.push('q', record, args=('refused',), key='w', unique=60) == first
    assert RAN == ['batch', 'again', 'window']


def push_own_key(mode):
    """Pushes its own key again while it runs: the id that push returns."""
    RAN.append(mode)
    if len(RAN) == 1:
        return mpqueue.push('q', push_own_key, args=(mode,), key='own', unique=mode)


@pytest.mark.parametrize('mode', ['queued', 'active'])
def test_a_job_that_pushes_its_own_key_meets_the_brokers_hold(tmp_path, mode):
    """'queued' is let go when the job is handed out: a new job, run at once,
    inside the first; 'active' is held while the job runs: its own id."""
    make_config(tmp_path, immediate=True, result_ttl=60)
    job_id = mpqueue.push('q', push_own_key, args=(mode,), key='own', unique=mode)
    inner = mpqueue.result('q', job_id)
    if mode == 'queued':
        assert inner != job_id and RAN == [mode, mode]
    else:
        assert inner == job_id and RAN == [mode]


class Urgent(mpqueue.Job):
    priority = 9

    def handle(self):
        RAN.append('urgent')


def nested():
    RAN.append('nested: begins')
    mpqueue.push('q', record, args=('pushed from nested',))
    RAN.append('nested: ends')


def test_the_jobs_of_one_push_many_run_in_the_brokers_order(tmp_path):
    """Highest priority first, then as given; a job pushed from a running
    job runs inside it, before the rest of the batch."""
    make_config(tmp_path, immediate=True)
    mpqueue.push_many('q', [functools.partial(record, 'plain'), nested, Urgent()])
    assert RAN == ['urgent', 'plain', 'nested: begins', 'pushed from nested', 'nested: ends']


def slow():
    RAN.append('slow')
    time.sleep(0.3)
    mpqueue.push('q', record, args=('inner',))


def test_a_job_running_past_its_lease_is_not_taken_for_lost(tmp_path, monkeypatch):
    """Nobody renews the lease of a job running here; the broker's tick would
    recover it as a dead worker's, so none runs while a job does."""
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.1)
    make_config(tmp_path, immediate=True, sleep_seconds=0.01, result_ttl=60)

    job_id = mpqueue.push('q', slow)
    assert RAN == ['slow', 'inner']
    info = mpqueue.job_info('q', job_id)
    assert info['state'] == 'done' and info['exec_number'] == 1 and info['error_info'] == []


def test_memory_keeps_what_a_broker_keeps_and_immediate_keep_failed_jobs(tmp_path,
                                                                        monkeypatch):
    """Expired outcomes are dropped by the tick of a later push; failed jobs
    beyond IMMEDIATE_KEEP, oldest first."""
    monkeypatch.setattr(mpqueue, 'IMMEDIATE_KEEP', 2)
    make_config(tmp_path, immediate=True, name='kept', sleep_seconds=0.01, fail_number=0)
    failed = [mpqueue.push('kept', Failing()) for _ in range(4)]
    assert [mpqueue.job_info('kept', job_id) and 'failed' for job_id in failed] == [
        None, None, 'failed', 'failed']
    mpqueue.push('kept', record, args=('brief', 1), result_ttl=0.05)
    time.sleep(0.1)
    mpqueue.push('kept', record, args=('later',))
    rows = mpqueue._immediate_broker._connect().execute(
        "SELECT state, COUNT(*) FROM mpq_job WHERE queue = 'kept' GROUP BY state").fetchall()
    assert rows == [('failed', 2)]


def test_async_jobs_run_here_too_even_when_pushed_from_a_coroutine(tmp_path):
    make_config(tmp_path, immediate=True, result_ttl=60)
    job_id = mpqueue.push('q', doubled, args=(21,))
    assert mpqueue.result('q', job_id) == 42

    async def view():
        return mpqueue.push('q', doubled, args=(5,))

    job_id = asyncio.run(view())
    assert mpqueue.result('q', job_id) == 10
    assert RAN == ['async', 'async']


def test_the_config_key_is_checked(tmp_path):
    with pytest.raises(mpqueue.ConfigError, match="basics.immediate must be True or False, "
                                                  "got 'yes'"):
        make_config(tmp_path, immediate='yes')


# -- immediate mode and a real SQLite pool, side by side ----------------------------------

@pytest.fixture
def sqlite_e2e(tmp_path, redis_url, redis_db, proc_reaper, request):
    """The end-to-end harness on a SQLite broker file (the jobs record what
    they did in Redis, wherever they run)."""
    harness = E2E(tmp_path, redis_url, redis_db, proc_reaper, request.node.name, 'sqlite')
    try:
        yield harness
    finally:
        harness.close()


def edge_cases(e2e, jobs, run):
    """Push the edge cases and read them back, the same calls in immediate
    mode and against a pool; what came out, with ``run`` (the tag prefix of
    its jobs) left out."""
    def settle(job_id):         # a pool: until the job has ended; immediate mode: at once
        with contextlib.suppress(mpqueue.MPQueueError):
            mpqueue.result('q', job_id, timeout=20)

    def state(job_id):
        info = mpqueue.job_info('q', job_id)
        return info and info['state']

    out = {}
    for mode in ('queued', 'active', 30):
        tags = ['%s-%s-%d' % (run, mode, n) for n in (1, 2)]
        first = mpqueue.push('q', jobs.ok, args=(tags[0],), key='k-%s' % mode, unique=mode)
        settle(first)
        again = mpqueue.push('q', jobs.ok, args=(tags[1],), key='k-%s' % mode, unique=mode)
        settle(again)
        out['unique %s: a new job, runs' % mode] = (
            again != first, [len(e2e.records('start', tag=tag)) for tag in tags])

    kept = mpqueue.push('q', jobs.ok, args=(run + '-kept',), result_ttl=1)
    out['result'] = mpqueue.result('q', kept, timeout=20) == run + '-kept'
    out['cancel of a done job, state after'] = (mpqueue.cancel('q', kept), state(kept))
    time.sleep(max(0.0, mpqueue.job_info('q', kept)['end_time'] + 1.1 - time.time()))
    out['after its result_ttl: job_info, cancel'] = (mpqueue.job_info('q', kept),
                                                     mpqueue.cancel('q', kept))
    plain = mpqueue.push('q', jobs.ok, args=(run + '-plain',))
    settle(plain)
    out['without result_ttl'] = mpqueue.job_info('q', plain)

    failed = mpqueue.push('q', jobs.Boom(run + '-boom'))        # fail_number 2
    settle(failed)
    info = mpqueue.job_info('q', failed)
    out['failed'] = {name: info[name] for name in ('state', 'exec_number', 'type', 'fail_number')}
    out['error lines'] = [e.strip().splitlines()[-1].replace(run, 'RUN')
                          for e in info['error_info']]
    out['cancel of a failed job, state after'] = (mpqueue.cancel('q', failed), state(failed))
    out['fail handlers: exec_number, errors'] = [
        (r['event'], r['info']['exec_number'], len(r['info']['error_info']))
        for r in e2e.records() if r['event'] in ('job_fail', 'queue_fail') and
        r['info']['id'] == failed]
    return out


def test_immediate_mode_and_a_sqlite_pool_agree_on_the_edge_cases(sqlite_e2e):
    pool = sqlite_e2e.pool(queue_conf(worker_number=1, fail_handle=Src('jobs.queue_fail_handle')))
    jobs = sqlite_e2e.import_jobs()
    pool.start()
    in_the_pool = edge_cases(sqlite_e2e, jobs, 'pool')
    with mpqueue.immediate():
        here = edge_cases(sqlite_e2e, jobs, 'here')
    assert here == in_the_pool
    assert in_the_pool['unique queued: a new job, runs'] == (True, [1, 1])
    assert in_the_pool['unique 30: a new job, runs'] == (False, [1, 0])
    assert in_the_pool['failed']['exec_number'] == 3
    assert [event for event, _, _ in in_the_pool['fail handlers: exec_number, errors']] == [
        'job_fail', 'queue_fail']
