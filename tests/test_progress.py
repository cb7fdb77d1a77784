"""Inside a running job: ``mpqueue.current_job()`` and ``mpqueue.progress()``.

The ``progress`` step's contract (fenced by attempt, untouched by the steps
that end an attempt, kept as long as the outcome) is in test_drivers.py.
Here: real pools (``python mpqueue_cli.py worker:start``) on Redis and on
SQLite, in both models and on a coroutine worker, where a job's reports
show in ``job_info`` while it runs (the first at once, a later one within
PROGRESS_INTERVAL of the call), the last one lands however fast the calls
come, and 1,000 calls cost little; the runtime's own fencing of a stale
attempt; immediate mode; and one-line errors for bad values.
"""

import asyncio
import threading
import time

import pytest

import mpqueue
from pool_harness import queue_conf, wait_for
from test_options import OPTION_JOBS

MODELS = [mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB]
#: How late a report may show, past PROGRESS_INTERVAL: a poll of job_info
#: and the timer thread's wake-up on a shared 2-core machine.
SLACK = 0.05
#: 1,000 progress() calls in a loop take less than this (seconds): they cost
#: microseconds each, the broker sees ten writes a second at most.
LOOP_BUDGET = 0.05

PROGRESS_JOBS = OPTION_JOBS + '''

def wait_gate(tag, name):
    deadline = time.time() + GATE_WAIT
    while not client().exists('%s:gate:%s:%s' % (KEY, tag, name)):
        if time.time() > deadline:
            raise RuntimeError('the gate %s of %s was never opened' % (name, tag))
        time.sleep(0.005)


def reporter(tag, calls):
    """Reports, waits at gate a; reports twice at once, waits at gate b;
    then reports ``calls`` times in a loop (the last: 1.0) and returns."""
    record('me', tag=tag, me=mpqueue.current_job())
    mpqueue.progress(0.4, rows=4)
    record('reported', tag=tag, value=0.4)
    wait_gate(tag, 'a')
    mpqueue.progress(0.5, rows=5)
    mpqueue.progress(0.6, rows=6)        # less than PROGRESS_INTERVAL after the last write
    record('reported', tag=tag, value=0.6)
    wait_gate(tag, 'b')
    started = time.perf_counter()
    for i in range(1, calls + 1):
        mpqueue.progress(i / calls, rows=i)
    record('looped', tag=tag, calls=calls, seconds=time.perf_counter() - started)


async def knows_itself(tag):
    """A coroutine job: asks who it is and reports between awaits, while
    the other jobs of its worker do the same."""
    me = mpqueue.current_job()
    same = True
    for step in range(1, 4):
        await asyncio.sleep(0.02)
        same = same and mpqueue.current_job() == me
        mpqueue.progress(step / 3, tag=tag, step=step)
    record('knew', tag=tag, me=me, same=same)
'''


def gate(e2e, tag, name):
    e2e.redis.set('%s:gate:%s:%s' % (e2e.key, tag, name), 1)


def records_of(e2e, event, tag, n=1, timeout=15):
    return wait_for(lambda: len(e2e.records(event, tag=tag)) >= n and e2e.records(event, tag=tag),
                    timeout, '%d %r record(s) of %s' % (n, event, tag))


def shown(queue, job_id):
    info = mpqueue.job_info(queue, job_id)
    return info['state'], info['progress'], info['meta']


# -- real pools ------------------------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_reports_show_while_the_job_runs_and_the_last_one_stays_after_its_end(e2e, model):
    e2e.write_jobs(PROGRESS_JOBS)
    e2e.pool(queue_conf(worker_number=1, model=model, result_ttl=60)).start()
    jobs = e2e.import_jobs()
    job_id = mpqueue.push('q', jobs.reporter, args=('r', 1000))

    # The first report is written by the call itself.
    records_of(e2e, 'reported', 'r')
    assert shown('q', job_id) == ('working', 0.4, {'rows': 4})
    [me] = records_of(e2e, 'me', 'r')
    info = mpqueue.job_info('q', job_id)
    assert me['me'] == {'queue': 'q', 'id': job_id, 'attempt': 1, 'depends_on': [],
                        'job': info['job'], 'key': None, 'exec_number': 1, 'priority': 0,
                        'timeout': 0, 'create_time': info['create_time'],
                        'start_time': me['me']['start_time'], 'worker_id': info['worker_id']}
    assert abs(me['me']['start_time'] - info['start_time']) < 1

    # A report within PROGRESS_INTERVAL of the last write shows within the interval.
    gate(e2e, 'r', 'a')
    seen = wait_for(lambda: shown('q', job_id)[1] == 0.6 and time.time(), 5, 'the report 0.6')
    [_, second] = records_of(e2e, 'reported', 'r', 2)
    assert seen - second['time'] < mpqueue.PROGRESS_INTERVAL + SLACK, seen - second['time']
    assert shown('q', job_id) == ('working', 0.6, {'rows': 6})

    # 1,000 calls in a loop cost little, and the last one lands before the job's end.
    gate(e2e, 'r', 'b')
    wait_for(lambda: shown('q', job_id)[0] == 'done', 10, 'the job to end')
    assert shown('q', job_id) == ('done', 1.0, {'rows': 1000})
    [looped] = records_of(e2e, 'looped', 'r')
    print('%s, %s: 1,000 progress() calls took %.1f ms' % (e2e.driver, model,
                                                          looped['seconds'] * 1000))
    assert looped['seconds'] < LOOP_BUDGET


def test_each_coroutine_job_knows_itself_and_reports_its_own_progress(e2e):
    e2e.write_jobs(PROGRESS_JOBS)
    e2e.pool(queue_conf(worker_number=1, coroutine_number=4, result_ttl=60)).start()
    jobs = e2e.import_jobs()
    ids = {tag: mpqueue.push('q', jobs.knows_itself, args=(tag,)) for tag in 'abcd'}
    knew = {r['tag']: r for r in wait_for(lambda: len(e2e.records('knew')) == 4 and
                                          e2e.records('knew'), 15, 'the 4 jobs to end')}
    for tag, job_id in ids.items():
        assert knew[tag]['me']['id'] == job_id and knew[tag]['same'], knew[tag]
        wait_for(lambda: shown('q', job_id)[0] == 'done', 5, 'job %s to end' % tag)
        assert shown('q', job_id) == ('done', 1.0, {'tag': tag, 'step': 3})
    assert len({r['pid'] for r in knew.values()}) == 1        # one worker ran them all
    starts = sorted(mpqueue.job_info('q', i)['start_time'] for i in ids.values())
    ends = sorted(mpqueue.job_info('q', i)['end_time'] for i in ids.values())
    assert starts[-1] < ends[0]                                # side by side


def test_a_stale_attempt_reports_nothing(e2e):
    e2e.pool(queue_conf())                     # configures this process, starts nothing
    driver = mpqueue._get_config()['basics']['driver']
    job_id = mpqueue.push('q', 'os:getcwd', result_ttl=60)
    [stale] = driver.run('q', 'pop', 1, 'w', 'o')
    assert driver.run('q', 'requeue', job_id, stale['attempt']) is True
    [current] = driver.run('q', 'pop', 1, 'w', 'o')
    with mpqueue._RunningJob('q', stale, driver):
        mpqueue.progress(0.9, late=True)
        mpqueue.progress(1.0, late=True)       # pending: written at the body's end
    assert shown('q', job_id) == ('working', None, None)
    with mpqueue._RunningJob('q', current, driver):
        assert mpqueue.current_job()['attempt'] == current['attempt'] == stale['attempt'] + 1
        mpqueue.progress(0.3, rows=3)
    assert shown('q', job_id) == ('working', 0.3, {'rows': 3})
    mpqueue.clean('q')


def test_what_a_call_costs(e2e, monkeypatch):
    # The figures of the README (pytest tests/test_progress.py -k cost -n 0 -s).
    e2e.pool(queue_conf())
    driver = mpqueue._get_config()['basics']['driver']
    mpqueue.push('q', 'os:getcwd')
    [job] = driver.run('q', 'pop', 1, 'w', 'o')

    def per_call(n):
        with mpqueue._RunningJob('q', job, driver):
            started = time.perf_counter()
            for i in range(n):
                mpqueue.progress(0.5, rows=i)
            return (time.perf_counter() - started) / n
    waits = min(per_call(10000) for _ in range(3))     # all but a write every 0.1 s wait
    monkeypatch.setattr(mpqueue, 'PROGRESS_INTERVAL', 0)
    writes = min(per_call(300) for _ in range(3))      # every call writes
    print('%s: a call that waits %.2f us, one that writes %.1f us'
          % (e2e.driver, waits * 1e6, writes * 1e6))
    assert waits < LOOP_BUDGET / 1000 and waits * 5 < writes
    mpqueue.clean('q')


# -- immediate mode and bad values -------------------------------------------------------------

REPORTS = []


def immediate_job(n):
    REPORTS.append(mpqueue.current_job())
    for i in range(1, n + 1):
        mpqueue.progress(i / n, rows=i)
    return mpqueue.current_job()['id']


async def async_immediate_job(n):
    await asyncio.sleep(0)
    return immediate_job(n)


def pushes_an_async_job():
    """Runs another job inside itself (immediate mode), then reports."""
    me = mpqueue.current_job()
    inner = mpqueue.push('q', async_immediate_job, args=(3,))
    assert mpqueue.current_job() == me
    mpqueue.progress(0.5, inner=inner)
    return inner


@pytest.fixture
def immediate(tmp_path):
    REPORTS.clear()
    mpqueue.configure({'basics': {'name': 'progress-test', 'pid_path': str(tmp_path)},
                       'log': {'path': str(tmp_path)}, 'queue': [{'name': 'q', 'result_ttl': 60}]})
    with mpqueue.immediate():
        yield
    REPORTS.clear()


def timer_threads():
    return len([t for t in threading.enumerate() if t.name == 'mpqueue-progress'])


def test_immediate_mode_reports_in_the_caller(immediate):
    assert mpqueue.current_job() is None
    job_id = mpqueue.push('q', immediate_job, args=(1000,))
    assert mpqueue.result('q', job_id) == job_id
    assert shown('q', job_id) == ('done', 1.0, {'rows': 1000})
    [me] = REPORTS
    assert (me['id'], me['queue'], me['attempt'], me['depends_on']) == (job_id, 'q', 1, [])
    assert mpqueue.current_job() is None
    assert timer_threads() == 1         # started by the first report that waited; it stays

    outer = mpqueue.push('q', pushes_an_async_job)
    inner = mpqueue.result('q', outer)
    assert shown('q', outer) == ('done', 0.5, {'inner': inner})
    assert shown('q', inner) == ('done', 1.0, {'rows': 3})
    assert mpqueue.current_job() is None and timer_threads() == 1


def test_an_async_job_pushed_from_a_coroutine_knows_itself(immediate):
    async def main():
        return mpqueue.push('q', async_immediate_job, args=(2,))
    job_id = asyncio.run(main())
    assert mpqueue.result('q', job_id) == job_id
    assert REPORTS[0]['id'] == job_id
    assert shown('q', job_id) == ('done', 1.0, {'rows': 2})


def bad_report(value, **meta):
    try:
        mpqueue.progress(value, **meta)
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize('value, meta, words', [
    (1.5, {}, ['value', '1.5', 'from 0 to 1']),
    (-0.1, {}, ['value', '-0.1']),
    ('half', {}, ['value', "'half'"]),
    (True, {}, ['value', 'True']),
    (float('nan'), {}, ['value', 'nan']),
    (0.5, {'rows': 1, 'seen': {1, 2}}, ['seen=', 'JSON', 'set']),
    (0.5, {'ratio': float('inf')}, ['ratio=', 'JSON']),
    (0.5, {'when': object()}, ['when=', 'JSON', 'object']),
])
def test_a_bad_value_is_a_one_line_error_naming_it_and_writes_nothing(immediate, value, meta,
                                                                     words):
    job_id = mpqueue.push('q', bad_report, args=(value,), kwargs=meta)
    message = mpqueue.result('q', job_id)
    assert message and '\n' not in message, message
    for word in words:
        assert word in message, message
    assert shown('q', job_id) == ('done', None, None)


def test_progress_outside_a_job_is_a_one_line_error(immediate):
    with pytest.raises(mpqueue.MPQueueError) as info:
        mpqueue.progress(0.5)
    assert '\n' not in str(info.value) and 'progress()' in str(info.value)
