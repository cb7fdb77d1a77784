"""Job handles end to end: ``job_info``, ``result``, ``cancel`` and
``result_ttl`` with real pools on both brokers (and both models where the
worker's side differs).

What every test leans on: a job's state lives in its record in the broker,
written by the same atomic step that moves the job, so whatever the pool
does (or whatever kills it) ``job_info`` tells the truth, ``result`` waits on
the broker for the job's end, and a cancel is a flag in the record that any
recovery reads.
"""

import json
import os
import pickle
import signal
import sqlite3
import time

import psutil
import pytest

import mpqueue
from pool_harness import Src, alive, queue_conf, wait_for


HANDLE_JOBS = '''
def answer(tag, value):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    record('end', tag=tag, n=n)
    return value


def blocked(tag, seconds):
    """Stuck in C code: time.sleep returns to Python only when it is over."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    time.sleep(seconds)
    record('end', tag=tag, n=n)


def big(n):
    return b'x' * n


def lock_result(tag):
    """Returns what no pickler takes."""
    import threading
    record('start', tag=tag)
    return threading.Lock()


def info_fail_handle(job_info, exc):
    record('handler_info', info=job_info)


async def nap(tag, seconds):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    await asyncio.sleep(seconds)
    record('end', tag=tag, n=n)


@mpqueue.job('q', result_ttl=30, priority=4, fail_number=2)
def decorated(tag, value=None):
    record('start', tag=tag, n=attempt(tag))
    return value


@mpqueue.job('not-configured')
def elsewhere():
    pass


def waits_for(job_id, timeout):
    return mpqueue.result('q', job_id, timeout=timeout)
'''

MODELS = [mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB]


def start(e2e, *queues, **kwargs):
    e2e.write_jobs(HANDLE_JOBS)
    pool = e2e.pool(*(queues or (queue_conf(worker_number=1),)), **kwargs)
    jobs = e2e.import_jobs()
    return pool, jobs


def state(job_id, queue='q'):
    info = mpqueue.job_info(queue, job_id)
    return info and info['state']


def wait_state(pool, job_id, want, timeout=10, queue='q'):
    return pool.wait(lambda: state(job_id, queue) == want, timeout,
                     'job %s to be %s (it is %s)' % (job_id, want, state(job_id, queue)))


def runs(e2e, tag):
    return len(e2e.records('start', tag=tag))


# -- job_info --------------------------------------------------------------------

def test_job_info_tells_every_state_and_none_for_an_unknown_id(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=60),
                       queue_conf('parked', worker_number=1))
    assert mpqueue.job_info('q', mpqueue._new_id()) is None
    waiting = mpqueue.push('q', jobs.answer, args=('w', 1))
    delayed = mpqueue.push('q', jobs.answer, args=('d', 2), delay=60)
    info = mpqueue.job_info('q', waiting)
    assert info['state'] == 'waiting' and info['exec_number'] == 0
    assert info['id'] == waiting and info['queue'] == 'q' and info['create_time'] > 0
    assert info['job'].endswith('.answer') and 'payload' not in info and 'result' not in info
    assert state(delayed) == 'delayed'
    # reserved: what a master holds between reserving and handing out, made here
    # with the step a master sends (no pool runs queue 'parked')
    parked = mpqueue.push('parked', jobs.answer, args=('r', 3))
    driver = mpqueue._get_config()['basics']['driver']
    (reserved,) = driver.run('parked', 'reserve', 1)
    assert reserved['id'] == parked and state(parked, 'parked') == 'reserved'

    pool.start()
    done = wait_state(pool, waiting, 'done')
    info = mpqueue.job_info('q', waiting)
    assert info['end_time'] >= info['start_time'] >= info['create_time']
    assert info['exec_number'] == 1 and info['result_repr'] == '1'
    running = mpqueue.push('q', jobs.blocked, args=('b', 60))
    wait_state(pool, running, 'working')
    assert mpqueue.job_info('q', running)['worker_id'] == '%s:%d' % (
        mpqueue._HOST, next(iter(pool.worker_pids('q'))))
    assert mpqueue.cancel('q', running) == 'working'
    wait_state(pool, running, 'cancelled')
    failed = mpqueue.push('q', jobs.boom, args=('f',), fail_number=0)
    wait_state(pool, failed, 'failed')
    assert mpqueue.cancel('q', delayed) == 'delayed'
    assert state(delayed) == 'cancelled'
    assert done


def test_job_info_has_key_end_time_and_priority_also_when_the_job_has_none(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=60, fail_number=0,
                                       fail_handle=Src('jobs.info_fail_handle')))
    waiting = mpqueue.push('q', jobs.answer, args=('w', 1))
    info = mpqueue.job_info('q', waiting)
    assert (info['key'], info['end_time'], info['priority']) == (None, None, 0), info
    res = pool.cli('job:status', '--queue', 'q', '--id', waiting, '--json')
    assert res.returncode == 0, res.stderr
    assert {'key': None, 'end_time': None, 'priority': 0}.items() <= json.loads(res.stdout).items()
    pool.start()
    failed = mpqueue.push('q', jobs.boom, args=('f',))
    wait_state(pool, failed, 'failed')
    [handled] = pool.wait(lambda: e2e.records('handler_info'), 10, 'the fail handler to run')
    assert 'key' in handled['info'] and handled['info']['key'] is None, handled
    [listed] = mpqueue.failed_jobs('q')
    assert listed['key'] is None and mpqueue.job_info('q', failed)['key'] is None
    assert mpqueue.job_info('q', waiting)['key'] is None        # done, kept: still there


# -- result ----------------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_result_of_done_failed_cancelled_and_unknown_jobs(e2e, model):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=30, model=model))
    pool.start()
    job_id = mpqueue.push('q', jobs.answer, args=('a', {'x': [1, 2]}))
    assert mpqueue.result('q', job_id, timeout=10) == {'x': [1, 2]}
    assert mpqueue.result('q', job_id, timeout=0) == {'x': [1, 2]}   # kept: still readable

    failed = mpqueue.push('q', jobs.boom, args=('b',), fail_number=0)
    with pytest.raises(mpqueue.JobFailed) as err:
        mpqueue.result('q', failed, timeout=10)
    assert err.value.job_info['state'] == 'failed' and err.value.job_info['id'] == failed
    assert 'boom-b-attempt-1' in str(err.value)

    cancelled = mpqueue.push('q', jobs.answer, args=('c', 3), delay=60)
    mpqueue.cancel('q', cancelled)
    with pytest.raises(mpqueue.JobCancelled):
        mpqueue.result('q', cancelled, timeout=10)

    for timeout in (0, 1, None):
        t0 = time.monotonic()
        with pytest.raises(mpqueue.JobNotFound):
            mpqueue.result('q', mpqueue._new_id(), timeout=timeout)
        assert time.monotonic() - t0 < 0.5         # an unknown id never waits

    # result_ttl=0: nothing is kept after success; a waiter learns it, not hangs
    forgotten = mpqueue.push('q', jobs.blocked, args=('f', 0.3), result_ttl=0)
    t0 = time.monotonic()
    with pytest.raises(mpqueue.JobNotFound):
        mpqueue.result('q', forgotten, timeout=10)
    assert 0.25 < time.monotonic() - t0 < 5
    assert mpqueue.job_info('q', forgotten) is None


@pytest.mark.parametrize('model', MODELS)
def test_result_timeouts(e2e, model):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=30, model=model))
    parked = mpqueue.push('q', jobs.answer, args=('p', 1))        # no pool yet: it waits
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        mpqueue.result('q', parked, timeout=0)
    assert time.monotonic() - t0 < 0.5 and 'waiting' in str(err.value)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        mpqueue.result('q', parked, timeout=0.2)
    assert 0.2 <= time.monotonic() - t0 < 1.5

    pool.start()
    slow = mpqueue.push('q', jobs.blocked, args=('s', 1.0))
    assert mpqueue.result('q', parked, timeout=10) == 1
    with pytest.raises(TimeoutError):
        mpqueue.result('q', slow, timeout=0.2)
    t0 = time.monotonic()
    assert mpqueue.result('q', slow, timeout=10) is None
    assert time.monotonic() - t0 < 2


def test_result_that_cannot_be_kept_says_why(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=30),
                       basics={'max_payload': 4096})
    pool.start()
    job_id = mpqueue.push('q', jobs.lock_result, args=('l',))
    with pytest.raises(mpqueue.SerializationError) as err:
        mpqueue.result('q', job_id, timeout=10)
    assert 'cannot be pickled' in str(err.value) and job_id in str(err.value)
    info = mpqueue.job_info('q', job_id)
    assert info['state'] == 'done' and 'cannot be pickled' in info['result_note']
    assert info['result_repr'].startswith('<unlocked _thread.lock')

    big = mpqueue.push('q', jobs.big, args=(10000,))
    with pytest.raises(mpqueue.SerializationError) as err:
        mpqueue.result('q', big, timeout=10)
    assert 'over basics.max_payload' in str(err.value)


def _store_result(e2e, queue, job_id, data):
    """Overwrite the stored result of a job, as anyone who can write to the broker could."""
    if e2e.driver == 'sqlite':
        conn = sqlite3.connect(str(e2e.tmp_path / 'broker.db'))
        with conn:
            assert conn.execute('UPDATE mpq_job SET result = ? WHERE queue = ? AND id = ?',
                                (data, queue, job_id)).rowcount == 1
        conn.close()
    else:
        assert e2e.redis.hset('%s:{%s}:job:%s' % (e2e.prefix, queue, job_id), 'result',
                              data) == 0


class _Marker:
    """Unpickling it creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def test_tampered_result_is_refused_before_it_is_unpickled(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=30),
                       basics={'secret': 'the-right-secret'})
    pool.start()
    job_id = mpqueue.push('q', jobs.answer, args=('t', 'fine'))
    assert mpqueue.result('q', job_id, timeout=10) == 'fine'
    marker = e2e.tmp_path / 'unpickled'
    evil = pickle.dumps(_Marker(str(marker)))
    forged = [mpqueue._MAGIC + b'S' + mpqueue._sign(b'another secret', evil) + evil,
              mpqueue._MAGIC + b'U' + evil]
    for data in forged:
        _store_result(e2e, 'q', job_id, data)
        with pytest.raises(mpqueue.SerializationError) as err:
            mpqueue.result('q', job_id, timeout=0)
        assert 'not unpickled' in str(err.value)
        assert mpqueue.job_info('q', job_id)['result_repr'] == "'fine'"   # shown without unpickling
    assert not marker.exists()


def test_result_ttl_expires(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, sleep_seconds=0.2))
    pool.start()
    kept = mpqueue.push('q', jobs.answer, args=('k', 5), result_ttl=1)
    assert mpqueue.result('q', kept, timeout=10) == 5
    ended = mpqueue.job_info('q', kept)['end_time']
    pool.wait(lambda: mpqueue.job_info('q', kept) is None, 5, 'the kept outcome to expire')
    assert time.time() - ended >= 0.9
    with pytest.raises(mpqueue.JobNotFound):
        mpqueue.result('q', kept, timeout=0)


def test_nothing_stays_behind_with_result_ttl_0(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=2))
    ids = mpqueue.push_many('q', [jobs.ok] * 2000, args=('n',))
    pool.start()
    pool.wait(lambda: mpqueue.status('q')['over'] == 2000, 60, 'the 2,000 jobs to run')
    if e2e.driver == 'sqlite':
        conn = sqlite3.connect(str(e2e.tmp_path / 'broker.db'))
        rows = conn.execute('SELECT COUNT(*) FROM mpq_job').fetchone()[0]
        conn.close()
        assert rows == 0
    else:
        left = sorted(k.decode() for k in e2e.redis.scan_iter(match='%s:{q}:*' % e2e.prefix))
        # the counters and their bounded history, no key per job
        assert left in (['%s:{q}:stats' % e2e.prefix],
                        ['%s:{q}:%s' % (e2e.prefix, k) for k in ('history', 'stats')]), left[:10]
    assert all(mpqueue.job_info('q', job_id) is None for job_id in ids[:50])


# -- cancel ----------------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_cancel_of_waiting_delayed_and_running_jobs(e2e, model):
    pool, jobs = start(e2e, queue_conf(worker_number=1, model=model, result_ttl=60,
                                       fail_number=3, fail_handle=Src('jobs.queue_fail_handle')))
    waiting = mpqueue.push('q', jobs.answer, args=('w', 1))
    delayed = mpqueue.push('q', jobs.answer, args=('d', 1), delay=0.5)
    assert mpqueue.cancel('q', waiting) == 'waiting'
    assert mpqueue.cancel('q', delayed) == 'delayed'
    assert mpqueue.cancel('q', mpqueue._new_id()) is None      # unknown: nothing written
    pool.start()
    (worker,) = pool.worker_pids('q')
    running = mpqueue.push('q', jobs.blocked, args=('r', 60))
    pool.wait(lambda: runs(e2e, 'r') == 1, 10, 'the blocked job to start')
    t0 = time.monotonic()
    assert mpqueue.cancel('q', running) == 'working'
    wait_state(pool, running, 'cancelled')
    pool.wait(lambda: not alive(worker), 5, 'the worker running it to be stopped')
    took = time.monotonic() - t0
    info = mpqueue.job_info('q', running)
    assert info['cancelled_by'] == '%s:%d' % (mpqueue._HOST, os.getpid())
    assert info['cancel_time'] >= info['start_time']
    after = mpqueue.push('q', jobs.answer, args=('after', 2))
    assert mpqueue.result('q', after, timeout=10) == 2        # a new worker serves
    time.sleep(0.5)     # (any retry of the cancelled job would have started by now)
    assert runs(e2e, 'r') == 1 and runs(e2e, 'w') == 0 and runs(e2e, 'd') == 0
    assert not e2e.records('queue_fail'), 'fail handlers ran for a cancelled job'
    assert mpqueue.cancel('q', running) == 'cancelled'       # ended: left as it is
    assert mpqueue.cancel('q', after) == 'done'
    assert mpqueue.depth('q')['cancelled'] == 3
    assert took < 3, took
    # the log says what happened: a cancel, at INFO, and nothing "recovered"
    lines = [line for line in pool.log_tail(400).splitlines() if running in line]
    assert any(' INFO ' in line and 'was cancelled while running' in line
               for line in lines), lines
    assert not [line for line in lines if 'recovered' in line or ' ERROR ' in line], lines


def test_cancel_of_a_reserved_job(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=60))
    job_id = mpqueue.push('q', jobs.answer, args=('res', 1))
    driver = mpqueue._get_config()['basics']['driver']
    (got,) = driver.run('q', 'reserve', 1)       # as a master does before handing it out
    assert mpqueue.cancel('q', job_id) == 'reserved'
    assert state(job_id) == 'cancelled'
    assert driver.run('q', 'start', job_id, got['attempt'], 'w', 'o') is False
    pool.start()
    other = mpqueue.push('q', jobs.answer, args=('other', 2))
    assert mpqueue.result('q', other, timeout=10) == 2
    assert runs(e2e, 'res') == 0


def test_cancel_of_a_coroutine_job_leaves_its_loop_mates_running(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, coroutine_number=5, result_ttl=60))
    pool.start()
    (worker,) = pool.worker_pids('q')
    long_id = mpqueue.push('q', jobs.nap, args=('long', 60))
    mates = [mpqueue.push('q', jobs.nap, args=('mate-%d' % i, 1.5)) for i in range(3)]
    pool.wait(lambda: runs(e2e, 'long') == 1 and all(
        runs(e2e, 'mate-%d' % i) for i in range(3)), 10, 'the four naps to start')
    assert mpqueue.cancel('q', long_id) == 'working'
    wait_state(pool, long_id, 'cancelled', timeout=5)
    for job_id in mates:
        assert mpqueue.result('q', job_id, timeout=10) is None
    assert alive(worker) and pool.worker_pids('q') == {worker}    # its task, not its worker
    assert not e2e.records('end', tag='long') and runs(e2e, 'long') == 1


def test_cancel_survives_a_sigkill_of_the_whole_pool(e2e):
    """The flag is in the broker: the pool that recovers the job (after the
    lease of a pool that died before it could stop the job) ends it
    cancelled and never runs it again."""
    first, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=60))
    first.start()
    job_id = mpqueue.push('q', jobs.blocked, args=('x', 120))
    first.wait(lambda: runs(e2e, 'x') == 1, 10, 'the job to start')
    tree = [psutil.Process(first.manage_pid())]
    tree += tree[0].children(recursive=True)
    (master,) = first.masters('q')
    os.kill(master['pid'], signal.SIGSTOP)      # it must not get to stop the worker
    assert mpqueue.cancel('q', job_id) == 'working'
    for proc in tree:
        proc.kill()
    wait_for(lambda: not any(alive(p.pid) for p in tree), 5, 'the pool tree to die')
    assert state(job_id) == 'working'           # flagged; nobody stopped it yet

    second = e2e.pool(queue_conf(worker_number=1, result_ttl=60)).start()
    jobs = e2e.import_jobs()        # (configuring the second pool imported them anew)
    wait_state(second, job_id, 'cancelled', timeout=mpqueue.LEASE_SECONDS + 5)
    info = mpqueue.job_info('q', job_id)
    assert info['cancelled_by'] == '%s:%d' % (mpqueue._HOST, os.getpid())
    assert any('lease expired' in e for e in info['error_info'])
    probe = mpqueue.push('q', jobs.answer, args=('probe', 7))
    assert mpqueue.result('q', probe, timeout=10) == 7
    assert runs(e2e, 'x') == 1


# -- the command line ----------------------------------------------------------------

def test_job_status_and_cancel_on_the_command_line(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=60))
    job_id = mpqueue.push('q', jobs.answer, args=('cli', 42), delay=60, priority=7,
                          key='report:7')
    res = pool.cli('job:status', '--queue', 'q', '--id', job_id, '--json')
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert (info['id'], info['state'], info['priority'], info['key']) == \
        (job_id, 'delayed', 7, 'report:7')
    text = pool.cli('job:status', '--queue', 'q', '--id', job_id)
    assert text.returncode == 0 and 'delayed' in text.stdout and job_id in text.stdout
    res = pool.cli('job:cancel', '--queue', 'q', '--id', job_id)
    assert res.returncode == 0 and 'cancelled (it was delayed)' in res.stdout, res
    assert state(job_id) == 'cancelled'
    for args in (('job:cancel', '--queue', 'q', '--id', 'nosuchjob'),
                 ('job:status', '--queue', 'q', '--id', 'nosuchjob'),
                 ('job:status', '--queue', 'q')):
        res = pool.cli(*args)
        assert res.returncode != 0 and res.stdout == '', res
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert 'nosuchjob' in pool.cli('job:cancel', '--queue', 'q', '--id', 'nosuchjob').stderr


# -- the handle and the decorator ----------------------------------------------------

def test_a_job_id_is_its_id_and_a_handle_on_the_job(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1, result_ttl=30))
    pool.start()
    job_id = mpqueue.push('q', jobs.answer, args=('h', 5))
    plain = str(job_id)
    assert isinstance(job_id, mpqueue.JobId) and type(plain) is str and job_id.queue == 'q'
    assert job_id == plain and plain == job_id and hash(job_id) == hash(plain)
    assert {plain: 1}[job_id] == 1 and {job_id: 1}[plain] == 1
    assert json.dumps({'id': job_id}) == json.dumps({'id': plain})
    stored = pickle.loads(pickle.dumps(job_id))
    assert stored == job_id and type(stored) is str        # what is stored: the plain id
    assert b'mpqueue' not in pickle.dumps(job_id)        # loads where mpqueue is not
    assert repr(job_id) == "JobId('%s', 'q')" % plain
    again = mpqueue.JobId(stored, 'q')                      # the handle from a stored id
    assert again == job_id and again.queue == 'q'

    assert job_id.result(timeout=10) == 5 == mpqueue.result('q', job_id, timeout=0)
    assert again.info() == mpqueue.job_info('q', plain) and again.info()['state'] == 'done'
    assert again.cancel() == 'done' == mpqueue.cancel('q', plain)

    delayed = mpqueue.push('q', jobs.answer, args=('d', 1), delay=60)
    assert delayed.info()['state'] == 'delayed'
    assert delayed.cancel() == 'delayed' and delayed.info()['state'] == 'cancelled'
    with pytest.raises(mpqueue.JobCancelled):
        delayed.result(timeout=0)
    unknown = mpqueue.JobId(mpqueue._new_id(), 'q')
    assert unknown.info() is None and unknown.cancel() is None
    with pytest.raises(mpqueue.JobNotFound):
        unknown.result(timeout=0)

    ids = mpqueue.push_many('q', [jobs.answer, jobs.answer], args=('m', 2))
    assert all(isinstance(i, mpqueue.JobId) and i.queue == 'q' for i in ids)
    assert [i.result(timeout=10) for i in ids] == [2, 2]
    first = mpqueue.push('q', jobs.answer, args=('u', 1), delay=60, key='k', unique='queued')
    held = mpqueue.push('q', jobs.answer, args=('u', 2), key='k', unique='queued')
    assert held == first and isinstance(held, mpqueue.JobId) and held.queue == 'q'


def test_the_decorator_pushes_with_its_options_and_a_plain_call_runs_here(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1))
    assert jobs.decorated('here', 3) == 3                  # a plain call: runs in this process
    [ran] = e2e.records('start', tag='here')
    assert ran['pid'] == os.getpid()
    assert jobs.decorated.__name__ == 'decorated' and jobs.decorated.queue == 'q'

    parked = jobs.decorated.push('parked', value=1)          # no pool yet: it waits
    info = parked.info()
    assert isinstance(parked, mpqueue.JobId) and parked.queue == 'q'
    assert (info['state'], info['priority'], info['fail_number']) == ('waiting', 4, 2)
    assert info['job'] == '%s:decorated' % e2e.jobs_name    # travels as its import path
    later = jobs.decorated.push_with(args=('later',), kwargs={'value': 2}, delay=60,
                                     priority=9, fail_number=0, key='later')
    info = later.info()
    assert (info['state'], info['priority'], info['fail_number'], info['key']) == \
        ('delayed', 9, 0, 'later')                          # per-call options win

    pool.start()
    pushed = jobs.decorated.push('pool', value={'v': 7})
    assert pushed.result(timeout=10) == {'v': 7}
    assert parked.result(timeout=10) == 1
    [ran] = e2e.records('start', tag='pool')
    assert ran['pid'] in pool.worker_pids('q')
    assert pushed.info()['state'] == 'done'                 # result_ttl=30: kept

    many = jobs.decorated.push_many([('m1', 1), {'tag': 'm2', 'value': 2}], priority=6)
    assert [j.info()['priority'] for j in many] == [6, 6]
    assert [j.result(timeout=10) for j in many] == [1, 2]

    # the queue is looked up at push, not at import
    with pytest.raises(mpqueue.ConfigError, match='not-configured'):
        jobs.elsewhere.push()
    with pytest.raises(TypeError, match="'timout' is not a push option"):
        mpqueue.job('q', timout=3)
    with pytest.raises(TypeError, match='tuple of arguments or a dict'):
        jobs.decorated.push_many(['bare'])


def test_result_inside_a_job_needs_a_timeout(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=2, result_ttl=30))
    pool.start()
    done = mpqueue.push('q', jobs.answer, args=('a', 4))
    assert done.result(timeout=10) == 4
    assert mpqueue.push('q', jobs.waits_for, args=(done, 5)).result(timeout=10) == 4
    forever = mpqueue.push('q', jobs.waits_for, args=(done, None))
    with pytest.raises(mpqueue.JobFailed, match='inside a running job needs a timeout'):
        forever.result(timeout=10)


def test_queue_jobs_on_the_command_line_pages_by_cursor(e2e):
    pool, jobs = start(e2e, queue_conf(worker_number=1))
    waiting = mpqueue.push_many('q', [jobs.answer] * 3, args=('w', 1))
    urgent = mpqueue.push('q', jobs.answer, args=('u', 1), priority=9, key='urgent')
    delayed = mpqueue.push('q', jobs.answer, args=('d', 1), delay=60)
    res = pool.cli('queue:jobs', '--queue', 'q', '--count', '2', '--json')
    assert res.returncode == 0, res.stderr
    page = json.loads(res.stdout)
    assert [j['id'] for j in page['jobs']] == [urgent, waiting[0]] and page['cursor']
    res = pool.cli('queue:jobs', '--queue', 'q', '--count', '2', '--json', '--cursor',
                   page['cursor'])
    page = json.loads(res.stdout)
    assert [j['id'] for j in page['jobs']] == waiting[1:] and page['cursor'] is None
    text = pool.cli('queue:jobs', '--queue', 'q', '--count', '1')
    assert text.returncode == 0 and urgent in text.stdout and 'urgent' in text.stdout
    assert 'queue:jobs --queue q --state waiting --cursor ' in text.stdout     # the next page
    res = pool.cli('queue:jobs', '--queue', 'q', '--state', 'delayed', '--json')
    [job] = json.loads(res.stdout)['jobs']
    assert job['id'] == delayed and job['state'] == 'delayed' and job['due_time'] > time.time()
    mpqueue.cancel('q', delayed)
    assert "no delayed jobs in queue 'q'" in pool.cli('queue:jobs', '--queue', 'q', '--state',
                                                     'delayed').stdout
    for args in (('--state', 'failed'), ('--count', '0')):
        res = pool.cli('queue:jobs', '--queue', 'q', *args)
        assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res
    res = pool.cli('queue:status', '--count', '2')
    assert res.returncode == 2 and '--watch' in res.stderr, res
