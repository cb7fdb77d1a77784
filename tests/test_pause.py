"""Pause and resume a queue end to end: ``mpqueue.pause`` / ``resume`` with
real pools (``python mpqueue_cli.py worker:start``) on Redis and on SQLite
(the ``e2e`` fixture runs each test on both), in both models.

The queues here look at the broker only every 30 s (``sleep_seconds``), so
a pause that takes effect at once, and jobs that start at once on resume,
prove the wake-ups: nothing polls.  The step-level contract of pause,
resume and paused is in test_drivers.py.
"""

import time

import psutil
import pytest

import mpqueue
from pool_harness import queue_conf

MODELS = [mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB]
#: Longer than any periodic look of these queues: only wake-ups move them.
SLEEP = 30
#: A job handed out before pause() returned may record its start a moment
#: later (its worker writes the record); nothing may start after that.
HANDED_SLACK = 0.25
#: Resume -> first start, on a loaded machine (measured: see the printed figures).
RESUME_WITHIN = 1.0
#: How long the tests watch a paused pool for a start that must not come.
QUIET = 1.5


def starts(e2e):
    return sorted(r['time'] for r in e2e.records('start'))


def wait_status(pool, queue='q', timeout=20, **expected):
    last = {}

    def match():
        last.update(mpqueue.status(queue))
        return all(last[k] == v for k, v in expected.items())
    pool.wait(match, timeout, lambda: 'status to reach %r (last: %r)' % (expected, last))


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.mark.parametrize('model', MODELS)
def test_pause_stops_every_pool_at_once_survives_restarts_and_resume_runs_what_accrued(
        e2e, model):
    conf = queue_conf(worker_number=2, model=model, sleep_seconds=SLEEP)
    pools = [e2e.pool(conf).start(), e2e.pool(conf).start()]
    jobs = e2e.import_jobs()
    mpqueue.push_many('q', [jobs.sleeper] * 40, args=('before', 0.2))
    pools[0].wait(lambda: len(starts(e2e)) >= 4, 15, 'jobs to start on both pools')

    assert mpqueue.pause('q') is True
    paused_at = time.time()
    assert mpqueue.pause('q') is False and mpqueue.status('q')['paused'] is True
    wait_status(pools[0], working=0)                # the running jobs finish
    last = starts(e2e)[-1] - paused_at
    print('%s: last start %.1f ms after pause() returned' % (model, last * 1000))
    assert last <= HANDED_SLACK
    ran = len(starts(e2e))
    assert ran < 40

    # What comes while paused accrues: a push, and a delayed job that falls due.
    mpqueue.push('q', jobs.sleeper, args=('while', 0))
    delayed = mpqueue.push('q', jobs.sleeper, args=('delayed', 0), delay=0.3)
    pools[0].wait(lambda: mpqueue.job_info('q', delayed)['state'] == 'waiting', 10,
                  'the delayed job to fall due')
    pids = [p.pid for pool in pools for p in pool.procs_seen]
    cpu_before = cpu_seconds(pids)
    time.sleep(QUIET)
    spent = cpu_seconds(pids) - cpu_before
    print('%s: %d pool processes spent %.3f s of CPU in %.1f s paused' % (
        model, len(pids), spent, QUIET))
    assert spent < 0.1 * len(pids), 'a paused pool spins'
    assert len(starts(e2e)) == ran

    # The flag is in the broker: the pools restart into a paused queue.
    for pool in pools:
        pool.stop()
    again = e2e.pool(conf).start()
    time.sleep(QUIET)
    assert len(starts(e2e)) == ran and mpqueue.status('q')['paused'] is True

    assert mpqueue.resume('q') is True
    resumed_at = time.time()
    assert mpqueue.resume('q') is False
    again.wait(lambda: len(starts(e2e)) > ran, 10, 'a job to start after resume')
    first = starts(e2e)[ran] - resumed_at
    print('%s: first start %.1f ms after resume() returned' % (model, first * 1000))
    assert first <= RESUME_WITHIN
    wait_status(again, timeout=30, waiting=0, working=0, over=42, paused=False)
    assert {r['tag'] for r in e2e.records('start')} == {'before', 'while', 'delayed'}


@pytest.mark.parametrize('model', MODELS)
def test_a_delayed_job_due_while_paused_waits_for_resume(e2e, model):
    pool = e2e.pool(queue_conf(worker_number=1, model=model, sleep_seconds=SLEEP)).start()
    jobs = e2e.import_jobs()
    mpqueue.pause('q')
    job_id = mpqueue.push('q', jobs.ok, args=('late',), delay=0.2)
    due = time.time() + 0.2
    pool.wait(lambda: mpqueue.job_info('q', job_id)['state'] == 'waiting', 10,
              'the delayed job to fall due')
    time.sleep(max(0.0, due + QUIET - time.time()))
    assert e2e.records('start') == []
    mpqueue.resume('q')
    resumed_at = time.time()
    [run] = pool.wait(lambda: e2e.records('start'), 10, 'the job to start after resume')
    print('%s: started %.1f ms after resume()' % (model, (run['time'] - resumed_at) * 1000))
    assert run['time'] - resumed_at <= RESUME_WITHIN


def test_pause_of_an_unknown_queue_is_a_config_error_and_writes_nothing(e2e):
    e2e.pool()                      # configures this process: one queue, 'q'
    driver = mpqueue._get_config()['basics']['driver']
    for call in (mpqueue.pause, mpqueue.resume):
        with pytest.raises(mpqueue.ConfigError) as info:
            call('nope')
        assert "'nope'" in str(info.value) and '\n' not in str(info.value)
    assert driver.run('nope', 'paused') is False
    assert mpqueue.status('q')['paused'] is False
