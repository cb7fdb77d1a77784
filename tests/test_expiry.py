"""Expiry with real pools, on Redis and on SQLite, in both models: a job
that is due but not started within ``expires`` never starts, whether its
pool was busy, paused or down, and ends ``expired``.

The step contract (reserve, pop, start and sweep each end it; a started
job runs to its end; expiry counts from the due time) is in test_drivers.py.
"""

import time

import pytest

import mpqueue
from pool_harness import queue_conf, wait_for
from test_limits import LIMIT_JOBS, MODELS


@pytest.fixture(autouse=True)
def _restore_config(monkeypatch):
    monkeypatch.setattr(mpqueue, '_config', None)


def expired(job_id):
    return lambda: (mpqueue.job_info('q', job_id) or {}).get('state') == 'expired'


def assert_expired(e2e, job_id, tag):
    info = mpqueue.job_info('q', job_id)
    assert (info['state'], info['exec_number'], info['start_time']) == ('expired', 0, None)
    assert not e2e.records('start', tag=tag)
    with pytest.raises(mpqueue.JobExpired) as raised:
        mpqueue.result('q', job_id)
    assert job_id in str(raised.value) and '\n' not in str(raised.value)


@pytest.mark.parametrize('model', MODELS)
def test_a_busy_pool_never_starts_a_job_too_late(e2e, model):
    e2e.write_jobs(LIMIT_JOBS)
    pool = e2e.pool(queue_conf(worker_number=1, model=model)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.gated, args=('busy',))
    pool.wait(lambda: e2e.records('start', tag='busy'), 10, 'the worker to be busy')
    late = mpqueue.push('q', jobs.ok, args=('late',), expires=0.3)
    in_time = mpqueue.push('q', jobs.ok, args=('in-time',), expires=60)
    pool.wait(expired(late), 10, 'the job to expire while the worker is busy')
    e2e.redis.set('%s:gate:busy' % e2e.key, 1)
    pool.wait(lambda: e2e.records('end', tag='in-time'), 10, 'the other job to run')
    assert_expired(e2e, late, 'late')
    assert mpqueue.status('q')['expired'] == 1


@pytest.mark.parametrize('model', MODELS)
def test_a_paused_queue_ends_its_jobs_on_time(e2e, model):
    e2e.write_jobs(LIMIT_JOBS)
    pool = e2e.pool(queue_conf(worker_number=2, model=model)).start()
    jobs = e2e.import_jobs()
    mpqueue.pause('q')
    late = mpqueue.push('q', jobs.ok, args=('late',), expires=0.3)
    pushed = time.time()
    pool.wait(expired(late), 10, 'the job to expire while the queue is paused')
    ended = mpqueue.job_info('q', late)['end_time']
    assert ended - pushed < 0.3 + 1.5       # the master woke for it: no poll at sleep_seconds
    mpqueue.resume('q')
    done = mpqueue.push('q', jobs.ok, args=('after',))
    pool.wait(lambda: e2e.records('end', tag='after'), 10, 'a job after the resume')
    assert_expired(e2e, late, 'late')
    assert mpqueue.job_info('q', done) is None          # done, nothing kept


@pytest.mark.parametrize('model', MODELS)
def test_a_job_too_late_when_its_pool_comes_back_never_starts(e2e, model):
    e2e.write_jobs(LIMIT_JOBS)
    pool = e2e.pool(queue_conf(worker_number=2, model=model))
    jobs = e2e.import_jobs()
    late = mpqueue.push('q', jobs.ok, args=('late',), expires=0.2)
    in_time = mpqueue.push('q', jobs.ok, args=('in-time',), expires=600, delay=0.5)
    wait_for(lambda: time.time() > mpqueue.job_info('q', late)['expire_time'], 5,
             'the job to be too late')
    pool.start()
    pool.wait(lambda: e2e.records('end', tag='in-time'), 10, 'the job in time to run')
    pool.wait(expired(late), 10, 'the late job to end expired')
    assert_expired(e2e, late, 'late')
    assert mpqueue.job_info('q', in_time) is None


def test_bad_expires_is_a_one_line_error_naming_it(e2e):
    e2e.write_jobs(LIMIT_JOBS)
    e2e.pool(queue_conf(worker_number=1))
    jobs = e2e.import_jobs()
    before = mpqueue.depth('q')['pushed']
    for value in (-1, 'soon', True):
        with pytest.raises(mpqueue.ConfigError) as info:
            mpqueue.push('q', jobs.ok, args=('x',), expires=value)
        message = str(info.value)
        assert 'expires' in message and repr(value) in message and '\n' not in message
    assert mpqueue.depth('q')['pushed'] == before
