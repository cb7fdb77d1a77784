"""Fault injection, end to end: real pools (``python mpqueue_cli.py
worker:start``), real ``redis-server`` processes, real signals.

Every scenario injects its fault for real and measures what happened to the
jobs: how many were pushed, how many executions finished (each job appends
one line per finished execution to a list on the shared test Redis, which
survives whatever happens to the broker), how many ran more than once
(at-least-once delivery allows it; the number is reported), how many were lost
(never finished and not in the failed list: must be 0) and how long the pool
took to recover.  Each scenario prints one summary line (``pytest -s`` shows
it) and, when ``$MPQ_FAULT_REPORT`` names a file, appends it there as a JSON
line.

Brokers that get killed are private ``redis-server`` processes on ports of
their own (``RedisServer``); the executions are recorded on the shared test
Redis (fixture ``redis_url``), under the test's key prefix, so that a broker
crash cannot erase them.  Every wait polls with a deadline; every process is
stopped by pid at teardown and every key is deleted.

CLI behaviour with a missing or broken config file is covered by
``test_cli.py::test_bad_config_file_one_line_naming_it``.
"""

import collections
import functools
import json
import os
import re
import signal
import threading
import time

import psutil
import pytest
import redis

import mpqueue
from pool_harness import E2E, Src, alive, queue_conf, wait_for
from redis_server import RedisServer, free_port

MODELS = [mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB]


# -- jobs -----------------------------------------------------------------------

FAULT_JOBS = '''
import signal
import sys

EXEC_KEY = KEY + ':exec'


def work(tag, seconds=0.0):
    """A short job: sleeps, then appends "tag time pid" to the executions list."""
    if seconds:
        time.sleep(seconds)
    client().rpush(EXEC_KEY, '%s %r %d' % (tag, time.time(), os.getpid()))


def long_once(tag, seconds):
    """Long on its first attempt (a target for a fault), short afterwards."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    if n == 1:
        time.sleep(seconds)
    work(tag)


def fault_once(tag, how):
    """Kills its worker or raises on its first attempt; succeeds afterwards."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    if n == 1:
        if how == 'os_exit':
            os._exit(7)
        if how == 'sys_exit':
            sys.exit(7)
        if how == 'keyboard_interrupt':
            raise KeyboardInterrupt('from the job')
        if how == 'base_exception':
            raise BaseException('from the job')
        if how == 'sigkill_self':
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError('unknown fault %r' % how)
    work(tag)


def stall(tag, seconds):
    """Records that it started, then sleeps (the test SIGSTOPs its worker)."""
    record('start', tag=tag)
    time.sleep(seconds)
    work(tag)
'''


class FaultE2E(E2E):
    """The harness, with the broker of the pools optionally on a private
    Redis server (``broker_url``), while the jobs keep recording on the
    shared test Redis."""

    broker_url = None
    broker_kwargs = None
    broker_prefix = None        # the key prefix on the private broker (default: the test's)

    def driver_source(self):
        if self.broker_url is None:
            return super().driver_source()
        extra = ''.join(', %s=%r' % kv for kv in sorted((self.broker_kwargs or {}).items()))
        return 'mpqueue.RedisDriver(url=%r, prefix=%r%s)' % (
            self.broker_url, self.broker_prefix or self.prefix, extra)

    @property
    def exec_key(self):
        return self.key + ':exec'

    def executions(self):
        """``[(tag, time, pid), ...]`` of every finished execution, in order."""
        out = []
        for raw in self.redis.lrange(self.exec_key, 0, -1):
            tag, when, pid = raw.decode().split()
            out.append((tag, float(when), int(pid)))
        return out


@pytest.fixture
def e2e(tmp_path, redis_url, redis_db, proc_reaper, request):
    harness = FaultE2E(tmp_path, redis_url, redis_db, proc_reaper, request.node.name)
    harness.write_jobs(FAULT_JOBS)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def servers():
    """``servers(*args, **kwargs)`` starts a private ``RedisServer`` on a free
    port; all of them are stopped (data directory removed) at teardown."""
    made = []

    def make(*args, port=None, start=True, **kwargs):
        server = RedisServer(port or free_port(), *args, **kwargs)
        made.append(server)
        if start:
            server.start()
        return server
    try:
        yield make
    finally:
        for server in made:
            server.stop()


# -- measuring --------------------------------------------------------------------

def tally(e2e, tags, failed_ok=()):
    """Counts over the pushed ``tags``: executions finished, duplicates, lost.

    A tag in ``failed_ok`` may instead have ended in the failed list (a job
    stopped at its timeout); it is then not lost.
    """
    runs = collections.Counter(tag for tag, _, _ in e2e.executions())
    pushed = list(tags)
    executed = sum(runs[t] for t in pushed)
    distinct = sum(1 for t in pushed if runs[t])
    stray = sorted(set(runs) - set(pushed))
    assert not stray, 'executions of jobs never pushed: %r' % stray[:10]
    missing = [t for t in pushed if not runs[t] and t not in failed_ok]
    return {'pushed': len(pushed), 'executed': executed, 'duplicated': executed - distinct,
            'lost': len(missing), 'missing': missing[:10]}


def report(scenario, figures, recovery, **extra):
    """Print the one-line summary of a scenario; append it to $MPQ_FAULT_REPORT."""
    line = dict(scenario=scenario, pushed=figures['pushed'], executed=figures['executed'],
                duplicated=figures['duplicated'], lost=figures['lost'],
                recovery_s=None if recovery is None else round(recovery, 3))
    line.update(extra)
    text = ' '.join('%s=%s' % (k, v) for k, v in line.items() if k != 'scenario')
    print('\n[fault] %-44s %s' % (scenario, text))
    path = os.environ.get('MPQ_FAULT_REPORT')
    if path:
        with open(path, 'a') as fh:
            fh.write(json.dumps(line, default=repr) + '\n')
    return line


def wait_drained(pool, queue='q', timeout=30, failed=None):
    """Wait until nothing of ``queue`` is waiting, delayed, reserved or running."""
    last = {}

    def drained():
        try:
            last.update(mpqueue.status(queue))
        except mpqueue.DriverError as exc:
            last['error'] = str(exc)
            return False
        if failed is not None and last['failed'] > failed:
            raise AssertionError('%d job(s) failed, expected %d: %r' % (
                last['failed'], failed, mpqueue.failed_jobs(queue)))
        return last['waiting'] == 0 and last['working'] == 0
    pool.wait(drained, timeout, lambda: 'queue %r to drain (last status %r)' % (queue, last))
    return dict(last)


def wait_all_ran(e2e, pool, tags, timeout, failed_ok=()):
    want = set(tags) - set(failed_ok)

    def done():
        return want <= {tag for tag, _, _ in e2e.executions()}
    pool.wait(done, timeout, lambda: '%d job(s) to run; still missing %r' % (
        len(want), sorted(want - {t for t, _, _ in e2e.executions()})[:10]))


def process_rows(pool):
    """``{pid: type}`` of the manage, master and worker processes of ``pool``."""
    return {r['pid']: r['type'] for r in pool.status()}


def full_strength(pool, queue='q', gone=()):
    """The pool has its master and ``worker_number`` live workers, none in ``gone``."""
    want = next(q['worker_number'] for q in pool.queues if q['name'] == queue)

    def check():
        try:
            rows = pool.status()
        except AssertionError:
            return False
        masters = pool.masters(queue, rows)
        workers = pool.workers(queue, rows)
        pids = {r['pid'] for r in masters + workers}
        return (len(masters) == 1 and len(workers) == want and not pids & set(gone)
                and all(alive(p) for p in pids) and rows)
    return check


def log_lines(pool, pattern, levels=('ERROR', 'WARNING', 'CRITICAL')):
    try:
        text = pool.log_file.read_text(errors='replace')
    except OSError:
        return []
    rx = re.compile(pattern, re.I)
    return [line for line in text.splitlines()
            if any(' %s ' % lv in line for lv in levels) and rx.search(line)]


class Pusher(threading.Thread):
    """Pushes ``n`` jobs ``work(tag, seconds)`` in batches, retrying a batch
    (same tags) while the broker cannot be reached."""

    def __init__(self, jobs, tags, seconds, batch=100, pause=0.1):
        super().__init__(daemon=True)
        self.jobs, self.tags, self.seconds = jobs, list(tags), seconds
        self.batch, self.pause = batch, pause
        self.pushed = []
        self.refused = 0            # push_many calls that raised DriverError
        self.error = None
        self.stop_at = time.monotonic() + 120

    def run(self):
        try:
            for i in range(0, len(self.tags), self.batch):
                chunk = self.tags[i:i + self.batch]
                while True:
                    if time.monotonic() > self.stop_at:
                        raise AssertionError('could not push for 120 s')
                    try:
                        push_tagged(self.jobs, chunk, self.seconds)
                        break
                    except mpqueue.DriverError:
                        self.refused += 1
                        time.sleep(0.05)
                self.pushed.extend(chunk)
                time.sleep(self.pause)
        except BaseException as exc:     # reported by the test
            self.error = exc


def push_tagged(jobs, tags, seconds=0.0, queue='q', **options):
    """One push_many of ``work(tag, seconds)`` per tag (partials carry the tag)."""
    return mpqueue.push_many(queue, [functools.partial(jobs.work, t, seconds) for t in tags],
                             **options)


# -- 1. the broker is killed and restarted under load ------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('model', MODELS)
def test_broker_killed_and_restarted_under_load(e2e, servers, model):
    broker = servers('--appendonly', 'yes', '--appendfsync', 'always')
    e2e.broker_url = broker.url
    pool = e2e.pool(queue_conf(model=model, worker_number=4, fail_number=3,
                               fail_expire=0.2)).start()
    jobs = e2e.import_jobs()
    before = process_rows(pool)
    tags = ['job-%04d' % i for i in range(2000)]
    pusher = Pusher(jobs, tags, seconds=0.01, batch=100, pause=0.1)
    pusher.start()

    outages = []
    for fraction in (0.2, 0.6):
        pool.wait(lambda: len(e2e.executions()) >= fraction * len(tags), 60,
                  '%d%% of the jobs to run' % (fraction * 100))
        killed = time.monotonic()
        broker.kill()
        # the pool sees the broker gone for a while: long enough for every
        # process to hit the outage, short enough to keep the test quick
        time.sleep(1.5)
        broker.start()
        up = time.monotonic()
        over_at_up = broker.client().hget(
            '%s:{q}:stats' % e2e.prefix, 'over')
        over_at_up = int(over_at_up or 0)

        def pool_writes_again():
            got = broker.client().hget('%s:{q}:stats' % e2e.prefix, 'over')
            return int(got or 0) > over_at_up
        pool.wait(pool_writes_again, 30, 'the pool to record finished jobs again')
        outages.append({'down_s': round(up - killed, 2),
                        'recovery_s': round(time.monotonic() - up, 3)})

    pusher.join(120)
    assert not pusher.is_alive(), 'the pusher did not finish'
    assert pusher.error is None, pusher.error
    assert sorted(pusher.pushed) == tags
    wait_all_ran(e2e, pool, tags, 60)
    final = wait_drained(pool, timeout=30, failed=0)
    figures = tally(e2e, tags)
    broker_errors = log_lines(pool, r'broker|reach|redis|connect')
    crashed = log_lines(pool, r'crashed|Traceback')
    after = process_rows(pool)
    report('broker SIGKILL+restart x2 (%s)' % model, figures,
           max(o['recovery_s'] for o in outages), outages=outages,
           push_refused=pusher.refused, log_errors=len(broker_errors), status=final)

    assert figures['lost'] == 0, figures
    assert final['failed'] == 0
    assert after == before, 'processes changed across broker outages: %r -> %r' % (
        before, after)
    assert not crashed, '\n'.join(crashed[:20])
    # one line per process and outage at most (the master, and in the grab
    # model each worker, which talks to the broker itself), not one per retry
    talkers = 1 + (4 if model == 'grab' else 0)
    assert len(broker_errors) <= (talkers + 1) * len(outages), \
        '%d broker error lines for %d outages:\n%s' % (
            len(broker_errors), len(outages), '\n'.join(broker_errors[:30]))


# -- 2. no broker when the pool starts ------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_broker_absent_at_start_pool_waits_then_runs(e2e, servers, model):
    broker = servers('--appendonly', 'yes', start=False)
    e2e.broker_url = broker.url
    pool = e2e.pool(queue_conf(model=model, worker_number=2, sleep_seconds=1)).start()
    jobs = e2e.import_jobs()

    t0 = time.monotonic()
    with pytest.raises(mpqueue.DriverError) as err:
        push_tagged(jobs, ['too-early'])
    assert time.monotonic() - t0 < 2
    assert '127.0.0.1:%d' % broker.port in str(err.value)

    pool.wait(lambda: log_lines(pool, r'retrying|back-off|reach'), 10,
              'the pool to log that it waits for the broker')
    before = process_rows(pool)
    # the pool keeps running without a broker for a while
    wait_for(lambda: time.monotonic() - t0 >= 2, 3, 'two seconds without a broker')
    assert process_rows(pool) == before

    broker.start()
    up = time.monotonic()
    tags = ['late-%d' % i for i in range(20)]
    push_tagged(jobs, tags)
    wait_all_ran(e2e, pool, tags, 15)
    recovery = time.monotonic() - up
    final = wait_drained(pool, failed=0)
    figures = tally(e2e, tags)
    waits = log_lines(pool, r'broker|reach|redis|connect')
    crashed = log_lines(pool, r'crashed|Traceback')
    report('broker absent at start (%s)' % model, figures, recovery,
           log_errors=len(waits), status=final)
    assert figures['lost'] == 0
    assert process_rows(pool) == before
    assert not crashed, '\n'.join(crashed[:20])
    assert len(waits) <= 3, '\n'.join(waits[:30])
