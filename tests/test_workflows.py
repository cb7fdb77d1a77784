"""Dependencies, chains and batches with real pools, on Redis and on SQLite,
in both models.

The step contract (blocked, released or cancelled by the step that ends a
parent, settled at push, outcomes kept for children) is in test_drivers.py.
Here: ``depends_on``, ``chain()`` and ``batch()`` through the public API,
pools that run them (``python mpqueue_cli.py worker:start``), and the
workers killed under them.  Jobs record the start and end of every attempt
with ``time.time()`` (one server: one clock).
"""

import functools
import os
import signal

import pytest

import mpqueue
from pool_harness import queue_conf
from test_limits import LIMIT_JOBS, MODELS, wait_done

WORKFLOW_JOBS = LIMIT_JOBS + '''

def value(tag, n):
    """Returns n, recording its start and end."""
    ok(tag)
    return n


def reads_parents(tag):
    """Records its parents' results as current_job() and result() give them."""
    me = mpqueue.current_job()
    record('start', tag=tag, parents=me['depends_on'],
           results=[mpqueue.result(me['queue'], p, timeout=0) for p in me['depends_on']])
    gated(tag + '-gate')
'''


@pytest.fixture(autouse=True)
def _restore_config(monkeypatch):
    monkeypatch.setattr(mpqueue, '_config', None)


_call = functools.partial       # a job that calls func(*args)


def workflow_pool(e2e, model, workers=3, **options):
    e2e.write_jobs(WORKFLOW_JOBS)
    pool = e2e.pool(queue_conf(worker_number=workers, model=model, **options)).start()
    return pool, e2e.import_jobs()


def ended(e2e, tag):
    [end] = e2e.records('end', tag=tag)
    return end['time']


def started(e2e, tag):
    [start] = e2e.records('start', tag=tag)
    return start['time']


@pytest.mark.parametrize('model', MODELS)
def test_a_chain_runs_in_order_and_stops_at_a_failure(e2e, model):
    pool, jobs = workflow_pool(e2e, model, fail_number=0)
    tags = ['link-%d' % i for i in range(6)]
    gate = mpqueue.push('q', jobs.gated, args=('gate',))
    ids = mpqueue.chain('q', [_call(jobs.interval, tag, 'chain', 0.01) for tag in tags],
                        depends_on=gate)
    pool.wait(lambda: e2e.records('start', tag='gate'), 10, 'the gate job to start')
    info = mpqueue.job_info('q', ids[1])
    assert (info['state'], info['depends_on'], info['waiting_for']) == (
        'blocked', [ids[0]], [ids[0]])
    assert mpqueue.depth('q')['blocked'] == 6
    e2e.redis.set('%s:gate:gate' % e2e.key, 1)
    wait_done(pool, 7)
    for before, after in zip(tags, tags[1:]):
        assert ended(e2e, before) <= started(e2e, after)
    broken = mpqueue.chain('q', [_call(jobs.ok, 'a'), _call(jobs.boom, 'b'),
                                 _call(jobs.ok, 'c'), _call(jobs.ok, 'd')])
    pool.wait(lambda: (mpqueue.job_info('q', broken[3]) or {}).get('state') == 'cancelled',
              10, 'the rest of the broken chain to be cancelled')
    assert [mpqueue.job_info('q', i)['state'] for i in broken[1:]] == [
        'failed', 'cancelled', 'cancelled']
    assert mpqueue.job_info('q', broken[2])['error_info'] == [
        'parent %s ended failed' % broken[1]]
    assert not e2e.records('start', tag='c') and not e2e.records('start', tag='d')
    assert mpqueue.depth('q')['blocked'] == 0


@pytest.mark.parametrize('model', MODELS)
def test_a_batch_callback_runs_once_after_every_member_however_it_ended(e2e, model):
    pool, jobs = workflow_pool(e2e, model, fail_number=0)
    members = [_call(jobs.boom if i % 4 == 0 else jobs.interval, 'm-%d' % i,
                     *(() if i % 4 == 0 else ('batch', 0.005))) for i in range(40)]
    ids, then = mpqueue.batch('q', members, then=_call(jobs.ok, 'then'))
    assert mpqueue.job_info('q', then)['depends_on'] == ids
    pool.wait(lambda: e2e.records('end', tag='then'), 30, 'the callback to run')
    [start] = e2e.records('start', tag='then')
    last = max(r['time'] for r in e2e.records() if r['tag'].startswith('m-'))
    assert start['time'] >= last
    wait_done(pool, 31)
    assert mpqueue.status('q')['failed'] == 10
    assert len(e2e.records('start', tag='then')) == 1
    # the members' outcomes (result_ttl 0) went with the callback's end
    assert all(mpqueue.job_info('q', i) is None for i in ids if i not in {
        f['id'] for f in mpqueue.failed_jobs('q', count=100)})


@pytest.mark.parametrize('model', MODELS)
def test_a_dependent_reads_its_parents_result_until_it_ends(e2e, model):
    pool, jobs = workflow_pool(e2e, model)
    parent, child = mpqueue.chain('q', [_call(jobs.value, 'parent', 42),
                                        _call(jobs.reads_parents, 'child')])
    [read] = pool.wait(lambda: e2e.records('start', tag='child'), 10, 'the child to start')
    assert (read['parents'], read['results']) == ([parent], [42])   # result_ttl 0: kept for it
    assert mpqueue.result('q', parent) == 42
    e2e.redis.set('%s:gate:child-gate' % e2e.key, 1)
    wait_done(pool, 2)
    pool.wait(lambda: mpqueue.job_info('q', parent) is None, 10,
              'the parent to be forgotten once the child ended')
    with pytest.raises(mpqueue.JobNotFound) as info:
        mpqueue.push('q', jobs.ok, args=('late',), depends_on=parent)
    assert parent in str(info.value) and 'result_ttl' in str(info.value)


@pytest.mark.parametrize('model', MODELS)
def test_a_parent_whose_worker_is_killed_runs_again_and_then_its_child(e2e, model):
    pool, jobs = workflow_pool(e2e, model, fail_number=1)
    parent = mpqueue.push('q', jobs.gated, args=('parent',))
    child = mpqueue.push('q', jobs.ok, args=('child',), depends_on=parent)
    [run] = pool.wait(lambda: e2e.records('start', tag='parent'), 10, 'the parent to start')
    os.kill(run['pid'], signal.SIGKILL)
    pool.wait(lambda: len(e2e.records('start', tag='parent')) == 2, 10,
              'the parent to run again')
    assert mpqueue.job_info('q', child)['state'] == 'blocked'
    assert not e2e.records('start', tag='child')
    e2e.redis.set('%s:gate:parent' % e2e.key, 1)
    wait_done(pool, 2)
    assert started(e2e, 'child') >= max(r['time'] for r in e2e.records('end', tag='parent'))


def test_bad_options_are_one_line_errors_and_write_nothing(e2e):
    pool, jobs = workflow_pool(e2e, mpqueue.MODEL_DISTRIBUTE)
    parent = mpqueue.push('q', jobs.ok, args=('p',), delay=60)
    before = mpqueue.depth('q')
    for call, words in (
            (lambda: mpqueue.push('q', jobs.ok, depends_on=[]), ['depends_on']),
            (lambda: mpqueue.push('q', jobs.ok, depends_on=[parent, 3]), ['depends_on']),
            (lambda: mpqueue.push('q', jobs.ok, depends_on=parent, on_parent_failure='skip'),
             ['on_parent_failure', 'skip']),
            (lambda: mpqueue.push('q', jobs.ok, depends_on=mpqueue.JobId(parent, 'other')),
             ['depends_on', 'other']),
            (lambda: mpqueue.chain('q', [jobs.ok], key='k'), ['key']),
            (lambda: mpqueue.push_many('q', [jobs.ok] * 3, depends_on=['x' * 22]),
             ['x' * 22])):
        with pytest.raises(mpqueue.MPQueueError) as info:
            call()
        message = str(info.value)
        assert '\n' not in message and all(w in message for w in words), message
    assert mpqueue.depth('q') == dict(before, oldest_waiting_seconds=mpqueue.depth('q')[
        'oldest_waiting_seconds'])
