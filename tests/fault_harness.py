"""What the fault tests share with the Cluster and Sentinel tests: the jobs
that record their executions (``FAULT_JOBS``), the harness with a private
broker (``FaultE2E``), load (``Pusher``, ``push_tagged``), the counts over it
(``tally``: executed, duplicated, lost) and the one-line report, and the
smallest ACL rule set mpqueue works with."""

import collections
import functools
import json
import os
import re
import threading
import time

import mpqueue
from pool_harness import E2E, alive

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

    @classmethod
    def on(cls, setup, url, request, *args, **broker_kwargs):
        """A generator for a fixture: the harness with the pools' broker on
        ``setup`` (a ``LocalCluster`` or ``LocalSentinel``) at ``url``; at the
        end, no key of the test may be left there."""
        harness = cls(*args, request.node.name)
        harness.broker_url, harness.broker_kwargs = url, broker_kwargs or None
        harness.write_jobs(FAULT_JOBS)
        try:
            yield harness
        finally:
            try:
                harness.close()
            finally:
                left = setup.keys(harness.prefix)
                setup.delete_keys(harness.prefix)
            assert left == [], 'keys left on %s: %r' % (url, left[:10])

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


#: The smallest ACL rule set mpqueue works with (prefix 'mpq'): its keys and
#: channels, FCALL / FUNCTION LOAD of its library, SUBSCRIBE for the wake-ups
#: and result waits, and the commands the library calls (Redis checks those too).
MPQ_ACL_RULES = ('resetkeys resetchannels -@all ~mpq:* &mpq:* '
                 '+fcall +function|load +subscribe '
                 '+time +hset +hget +hdel +hmget +hgetall +hincrby +rpush +lpush +lpop +lrem '
                 '+lrange +ltrim +llen +lindex +exists +del +unlink +pexpire +zadd +zrem +zrange '
                 '+zrangebyscore +zremrangebyscore +zscore +zcard +zcount +zrank +publish '
                 '+hlen +lpos +sadd +srem +smembers +persist +hexists')
