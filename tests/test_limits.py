"""Limits: concurrency and rate per limit name, across every pool.

The step contract (admission, parking, release by every step that ends an
attempt, fencing, rate windows) is in test_drivers.py.  Here: the config and
the push option (errors name the path or the name, and write nothing),
``mpqueue.limits()``, and real pools (``python mpqueue_cli.py worker:start``)
on Redis and on SQLite, in both models.  Jobs record the start and end of
every attempt with ``time.time()`` (one server: one clock); the overlap of
those intervals per limit name is what "never exceeded" is checked on.
"""

import json
import os
import signal
import time

import pytest

import mpqueue
from pool_harness import kill_tree, queue_conf
from test_options import OPTION_JOBS

MODELS = [mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB]

LIMIT_JOBS = OPTION_JOBS + '''

def interval(tag, name, seconds):
    """Records its start and its end, ``seconds`` apart, under limit ``name``."""
    n = attempt(tag)
    record('start', tag=tag, name=name, n=n)
    time.sleep(seconds)
    record('end', tag=tag, name=name, n=n)
'''


@pytest.fixture(autouse=True)
def _restore_config(monkeypatch):
    monkeypatch.setattr(mpqueue, '_config', None)


def _noop():
    pass


def config(limits, redis_url=None, **queue):
    return {'basics': {'name': 'limits-test', 'driver': mpqueue.RedisDriver(
                url=redis_url or 'redis://127.0.0.1:6379/15', prefix='mpqtest-limits')},
            'queue': [dict({'name': 'api', 'limits': limits}, **queue)]}


def one_line_error(call, *words):
    with pytest.raises(mpqueue.ConfigError) as info:
        call()
    message = str(info.value)
    assert '\n' not in message, message
    for word in words:
        assert word in message, message
    return message


# -- definitions and the push option ---------------------------------------------------------

@pytest.mark.parametrize('limits, path', [
    ([('stripe', 4)], 'queue[0].limits'),
    ({'stripe': 4}, "queue[0].limits['stripe']"),
    ({'stripe': {}}, "queue[0].limits['stripe']"),
    ({'stripe': {'concurrency': 0}}, "queue[0].limits['stripe'].concurrency"),
    ({'stripe': {'concurrency': 1.5}}, "queue[0].limits['stripe'].concurrency"),
    ({'stripe': {'concurrency': True}}, "queue[0].limits['stripe'].concurrency"),
    ({'stripe': {'rate': 5}}, "queue[0].limits['stripe']"),
    ({'stripe': {'per': 5}}, "queue[0].limits['stripe']"),
    ({'stripe': {'rate': 0, 'per': 1}}, "queue[0].limits['stripe'].rate"),
    ({'stripe': {'rate': 5, 'per': 0}}, "queue[0].limits['stripe'].per"),
    ({'stripe': {'rate': 5, 'per': 'hour'}}, "queue[0].limits['stripe'].per"),
    ({'stripe': {'concurrency': 1, 'burst': 2}}, "queue[0].limits['stripe']"),
    ({'a b': {'concurrency': 1}}, "queue[0].limits['a b']"),
    ({'a*b*': {'concurrency': 1}}, "queue[0].limits['a*b*']"),
    ({'{tag}': {'concurrency': 1}}, "queue[0].limits['{tag}']"),
    ({1: {'concurrency': 1}}, 'queue[0].limits[1]'),
])
def test_a_bad_definition_is_a_config_error_naming_its_path(limits, path):
    one_line_error(lambda: mpqueue.configure(config(limits)), path)


def test_good_definitions_are_kept_with_every_setting():
    checked = mpqueue.configure(config({
        'stripe': {'concurrency': 4}, 'github': {'rate': 5000, 'per': 3600},
        'customer:*': {'concurrency': 1, 'rate': 10, 'per': 0.5}}))
    assert checked['queue'][0]['limits'] == {
        'stripe': (4, 0, 0), 'github': (0, 5000, 3600), 'customer:*': (1, 10, 0.5)}


def test_a_name_no_definition_matches_is_refused_at_push_and_nothing_is_written(redis_db_url):
    mpqueue.configure(config({'stripe': {'concurrency': 1}, 'customer:*': {'concurrency': 1}},
                             redis_db_url))
    before = mpqueue.depth('api')['pushed']
    one_line_error(lambda: mpqueue.push('api', _noop, limit='strype'), "'strype'", "'api'",
                   'stripe')
    one_line_error(lambda: mpqueue.push_many('api', [_noop, _noop],
                                             limit=['stripe', 'customer']), "'customer'")
    one_line_error(lambda: mpqueue.push('api', _noop, limit='customer:*'), "'customer:*'")
    one_line_error(lambda: mpqueue.push('api', _noop, limit=[]), 'limit')
    one_line_error(lambda: mpqueue.push('api', _noop, limit=3), 'limit')

    class Charge(mpqueue.Job):
        limit = 'paypal'

        def handle(self):
            pass
    one_line_error(lambda: mpqueue.push('api', Charge), 'Charge.limit', "'paypal'")
    assert mpqueue.depth('api')['pushed'] == before
    mpqueue.clean('api')


def test_a_schedule_names_its_limits_and_a_bad_one_is_a_config_error():
    sched = {'name': 'tick', 'every': 60, 'job': 'mod:func', 'limit': 'nope'}
    one_line_error(lambda: mpqueue.configure(config({'stripe': {'concurrency': 1}},
                                                    schedule=[sched])),
                   'queue[0].schedule[0].limit', "'nope'")
    sched['limit'] = ['stripe']
    checked = mpqueue.configure(config({'stripe': {'concurrency': 1}}, schedule=[sched]))
    assert checked['queue'][0]['schedule'][0]['limits'] == '[["stripe",1,0,0]]'


def test_limits_lists_the_names_in_use_with_their_definition(redis_db_url):
    mpqueue.configure(config({'stripe': {'concurrency': 2}, 'customer:*': {'concurrency': 1},
                              'github': {'rate': 10, 'per': 60}}, redis_db_url))

    class Charge(mpqueue.Job):
        limit = ['customer:7', 'stripe']

        def handle(self):
            pass
    ids = mpqueue.push_many('api', [Charge(), Charge(), Charge()])
    info = mpqueue.job_info('api', ids[0])
    assert info['limit'] == ['customer:7', 'stripe'] and 'waiting_for' not in info
    driver = mpqueue._get_config()['basics']['driver']
    assert len(driver.run('api', 'reserve', 10)) == 1
    assert mpqueue.job_info('api', ids[1])['waiting_for'] == 'customer:7'
    assert mpqueue.limits('api') == [
        {'name': 'customer:7', 'limit': 'customer:*', 'concurrency': 1, 'rate': None,
         'per': None, 'running': 1, 'waiting': 2},
        {'name': 'github', 'limit': 'github', 'concurrency': None, 'rate': 10, 'per': 60,
         'running': 0, 'waiting': 0},
        {'name': 'stripe', 'limit': 'stripe', 'concurrency': 2, 'rate': None, 'per': None,
         'running': 1, 'waiting': 0},
    ]
    mpqueue.clean('api')
    assert [d['name'] for d in mpqueue.limits('api')] == ['github', 'stripe']


# -- real pools ------------------------------------------------------------------------------

def limited_pool(e2e, model, workers, limits, **options):
    """A started pool whose queue 'q' has ``limits``; and the jobs module."""
    e2e.write_jobs(LIMIT_JOBS)
    pool = e2e.pool(queue_conf(worker_number=workers, model=model, limits=limits,
                               **options)).start()
    return pool, e2e.import_jobs()


def most_at_once(records, name=None):
    """The largest number of attempts between their start and end at one
    instant (of those under limit ``name``); ties: an end before a start."""
    events = sorted((r['time'], 0 if r['event'] == 'end' else 1) for r in records
                    if r['event'] in ('start', 'end') and (name is None or r.get('name') == name))
    most = now = 0
    for _, kind in events:
        now += 1 if kind else -1
        most = max(most, now)
    return most


def wait_done(pool, n, timeout=60, queue='q'):
    last = {}

    def done():
        last.update(mpqueue.status(queue))
        return last['over'] >= n
    pool.wait(done, timeout, lambda: '%d jobs done (status: %r)' % (n, last))


@pytest.mark.parametrize('model', MODELS)
def test_two_pools_never_exceed_a_concurrency_limit(e2e, model):
    pool, jobs = limited_pool(e2e, model, 4, {'stripe': {'concurrency': 2}})
    pools = [pool, e2e.pool(*pool.queues, configure=False).start()]
    mpqueue.push_many('q', [jobs.interval] * 30, args=('s', 'stripe', 0.02), limit='stripe')
    wait_done(pools[0], 30)
    records = e2e.records()
    assert len([r for r in records if r['event'] == 'end']) == 30
    assert most_at_once(records) == 2          # reached, never exceeded
    assert mpqueue.limits('q') == [{'name': 'stripe', 'limit': 'stripe', 'concurrency': 2,
                                    'rate': None, 'per': None, 'running': 0, 'waiting': 0}]


@pytest.mark.parametrize('model', MODELS)
def test_a_pattern_limit_keeps_each_concrete_name_apart(e2e, model):
    pool, jobs = limited_pool(e2e, model, 4, {'customer:*': {'concurrency': 1}})
    for i in range(8):
        for name in ('customer:1', 'customer:2'):
            mpqueue.push('q', jobs.interval, args=('%s-%d' % (name, i), name, 0.03), limit=name)
    wait_done(pool, 16)
    records = e2e.records()
    assert most_at_once(records, 'customer:1') == most_at_once(records, 'customer:2') == 1
    assert most_at_once(records) == 2       # the two names ran side by side


@pytest.mark.parametrize('model', MODELS)
def test_other_jobs_flow_while_thousands_wait_on_a_full_name(e2e, model):
    pool, jobs = limited_pool(e2e, model, 2, {'solo': {'concurrency': 1}})
    mpqueue.push('q', jobs.gated, args=('holder',), limit='solo')
    pool.wait(lambda: e2e.records('start', tag='holder'), 10, 'the holder to start')
    mpqueue.push_many('q', [jobs.interval] * 2000, args=('waiter', 'solo', 0), limit='solo')
    t0 = time.time()
    mpqueue.push_many('q', [jobs.interval] * 50, args=('free', 'none', 0))
    wait_done(pool, 50, timeout=20)
    assert time.time() - t0 < 10
    pool.wait(lambda: mpqueue.limits('q')[0]['waiting'] == 2000, 10, 'the waiters to park')
    [solo] = mpqueue.limits('q')
    assert (solo['running'], solo['waiting']) == (1, 2000)
    assert not e2e.records('start', tag='waiter')
    assert mpqueue.depth('q')['waiting'] == 2000
    e2e.redis.set('%s:gate:holder' % e2e.key, 1)
    wait_done(pool, 2051, timeout=120)
    assert most_at_once(e2e.records(), 'solo') <= 1
    waiters = e2e.records('start', tag='waiter')
    assert len(waiters) == 2000 and max(r['n'] for r in waiters) == 2000


@pytest.mark.parametrize('model', MODELS)
def test_a_sigkilled_workers_slot_comes_back_with_its_jobs_recovery(e2e, model):
    pool, jobs = limited_pool(e2e, model, 2, {'solo': {'concurrency': 1}}, fail_number=0)
    victim = mpqueue.push('q', jobs.gated, args=('victim',), limit='solo')
    pool.wait(lambda: e2e.records('start', tag='victim'), 10, 'the victim to start')
    waiter = mpqueue.push('q', jobs.interval, args=('waiter', 'solo', 0), limit='solo')
    pool.wait(lambda: (mpqueue.job_info('q', waiter) or {}).get('waiting_for') == 'solo', 10,
              'the waiter to wait for solo')
    info = mpqueue.job_info('q', waiter)
    assert (info['state'], info['exec_number']) == ('waiting', 0)     # no attempt used
    [run] = e2e.records('start', tag='victim')
    killed_at = time.time()
    os.kill(run['pid'], signal.SIGKILL)
    pool.wait(lambda: e2e.records('start', tag='waiter'), 10, 'the waiter to start')
    [started] = e2e.records('start', tag='waiter')
    assert started['time'] - killed_at < 1.0
    pool.wait(lambda: mpqueue.status('q')['failed'] == 1 and mpqueue.status('q')['over'] == 1,
              10, 'the victim to fail and the waiter to end')
    assert mpqueue.limits('q')[0]['running'] == 0
    assert mpqueue.failed_jobs('q')[0]['id'] == victim


@pytest.mark.parametrize('model', MODELS)
def test_two_pools_never_exceed_a_rate_window_and_use_all_of_it(e2e, model):
    # 5 starts a second across two pools: in no second more than 5 (a window
    # a little shorter than a second allows for the hop from the broker's
    # hand-out to the job's first line); 20 jobs take 3 s and no longer than
    # the window's edges need (a waiter is handed out when its window opens).
    pool, jobs = limited_pool(e2e, model, 3, {'github': {'rate': 5, 'per': 1.0}})
    pools = [pool, e2e.pool(*pool.queues, configure=False).start()]
    mpqueue.push_many('q', [jobs.interval] * 20, args=('g', 'github', 0), limit='github')
    wait_done(pools[0], 20, timeout=30)
    starts = sorted(r['time'] for r in e2e.records('start'))
    assert len(starts) == 20
    assert max(sum(1 for t in starts if s <= t < s + 0.9) for s in starts) == 5
    assert 3.0 - 0.1 < starts[-1] - starts[0] < 3.0 + 0.5, starts
    assert len({r['pid'] for r in e2e.records('start')}) > 1


@pytest.mark.parametrize('model', MODELS)
def test_a_dead_servers_slot_comes_back_within_the_lease(e2e, model):
    # Server A runs the holder and is SIGKILLed whole; server B starts the
    # waiter once the holder's lease lapses (the holder, with no retry left,
    # fails for good then).
    pool, jobs = limited_pool(e2e, model, 2, {'solo': {'concurrency': 1}}, fail_number=0)
    holder = mpqueue.push('q', jobs.gated, args=('holder',), limit='solo')
    pool.wait(lambda: e2e.records('start', tag='holder'), 10, 'the holder to start')
    mpqueue.push('q', jobs.interval, args=('waiter', 'solo', 0), limit='solo')
    pool.wait(lambda: mpqueue.limits('q')[0]['waiting'] == 1, 10, 'the waiter to wait')
    dead = kill_tree(pool)
    killed_at = time.time()
    other = e2e.pool(*pool.queues, configure=False, name='server-b').start()
    [waiter] = other.wait(lambda: e2e.records('start', tag='waiter'),
                          mpqueue.LEASE_SECONDS + 10, 'the waiter to start')
    assert waiter['pid'] not in dead
    assert waiter['time'] - killed_at < mpqueue.LEASE_SECONDS + 5
    wait_done(other, 1)
    [failed] = mpqueue.failed_jobs('q')
    assert failed['id'] == holder and 'lease expired' in failed['error_info'][-1]
    assert most_at_once(e2e.records(), 'solo') <= 1
    assert mpqueue.limits('q')[0]['running'] == 0


def test_limit_list_and_the_metrics_show_each_name(e2e):
    pool, jobs = limited_pool(e2e, mpqueue.MODEL_DISTRIBUTE, 2, {'solo': {'concurrency': 1}})
    mpqueue.push('q', jobs.gated, args=('holder',), limit='solo')
    mpqueue.push_many('q', [jobs.ok] * 3, args=('waiter',), limit='solo')
    pool.wait(lambda: mpqueue.limits('q')[0]['waiting'] == 3, 10, 'three jobs to wait')
    out = pool.cli('limit:list', '--config', str(pool.config_path))
    assert out.returncode == 0, out.stderr
    head, row = out.stdout.splitlines()
    assert head.split() == ['queue', 'name', 'limit', 'concurrency', 'rate', 'per', 'running',
                            'waiting']
    assert row.split() == ['q', 'solo', 'solo', '1', '-', '-', '1', '3']
    out = pool.cli('limit:list', '--config', str(pool.config_path), '--queue', 'q', '--json')
    assert [dict(r, queue='q') for r in mpqueue.limits('q')] == json.loads(out.stdout)
    metrics = pool.cli('metrics', '--config', str(pool.config_path)).stdout
    assert 'mpqueue_limit_running{queue="q",limit="solo"} 1' in metrics
    assert 'mpqueue_limit_waiting{queue="q",limit="solo"} 3' in metrics
    e2e.redis.set('%s:gate:holder' % e2e.key, 1)
    wait_done(pool, 4)
