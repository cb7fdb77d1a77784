"""Helpers for tests that talk to a broker driver through its steps.

A driver applies the lifecycle steps of ``mpqueue._STEPS``:
``driver.execute(queue, [(name, *args), ...])`` or ``driver.run(queue, name,
*args)``.  The helpers here build those steps with readable defaults (``push``
with keyword settings, ``pop`` with a worker and an owner ...) and name the
outcome steps after the attempt they report on: each takes the job dict that
``reserve`` or ``pop`` handed out, whose ``attempt`` fences the outcome.

``Store`` looks at what a driver wrote, without the driver: the Redis keys
of a queue, or the rows of the SQLite file.  The contract tests use it to
check that counts match the stored jobs and that nothing is left behind.
"""

import collections
import json
import os
import select
import shutil
import socket
import sqlite3
import tempfile
import time

import mpqueue
from redis_server import wait_for

PREFIX = 'mpqtest'
WAIT = 5.0          # longest wait for something that is due
SLACK = 0.02        # clock granularity allowed when checking "not before"
LIVE = ('waiting', 'delayed', 'reserved', 'working', 'failed', 'blocked')     # states depth() counts
COUNTERS = ('pushed', 'done', 'failed_total', 'cancelled', 'expired')   # counters of depth()
BULK = 1000         # limit of the clean steps that empty a queue


def noop():
    pass


PAYLOAD = mpqueue._encode('contract', noop, (), None, None, 1 << 20)
NAME = mpqueue._job_name(noop)


# -- building and running steps ------------------------------------------------------

def push_step(job_id=None, *, payload=PAYLOAD, delay=0, job=NAME, timeout=0, fail_number=3,
              fail_expire=0, priority=0, key='', unique='', result_ttl=0, limits='',
              parents=(), on_parent_failure='cancel', expires=0):
    """One ``push`` step, as ``mpqueue.push_many`` builds it (``unique``: the
    step's unique_mode: '', 'queued', 'active' or seconds as text; ``limits``:
    the job's limits field, see ``limits_field``; ``parents``: the ids it
    depends on)."""
    return ('push', job_id or mpqueue._new_id(), payload, delay, job, timeout, fail_number,
            json.dumps(fail_expire), priority, key, unique, result_ttl, limits,
            json.dumps(list(parents)) if parents else '', on_parent_failure if parents else '',
            expires)


def limits_field(*names, **definitions):
    """The limits field of a job that names ``names`` (default: every name of
    ``definitions``), each defined as ``{'concurrency': N}`` and/or
    ``{'rate': N, 'per': S}``."""
    defs = mpqueue._check_limits('limits', definitions)
    return mpqueue._limits_text({'name': 'contract', 'limits': defs}, list(names or defs))


def push(driver, queue, n=1, **settings):
    """Push ``n`` jobs with ``settings`` (see ``push_step``) in one call; their ids."""
    return driver.execute(queue, [push_step(**settings) for _ in range(n)])


def push1(driver, queue, **settings):
    return push(driver, queue, 1, **settings)[0]


def reserve(driver, queue, n=1):
    return driver.run(queue, 'reserve', n)


def pop(driver, queue, n=1, worker='w', owner='o'):
    return driver.run(queue, 'pop', n, worker, owner)


def pop1(driver, queue, worker='w', owner='o'):
    """The one job a pop hands out (there must be one)."""
    [job] = pop(driver, queue, 1, worker, owner)
    return job


def ids_of(jobs):
    return [job['id'] for job in jobs]


def start(driver, queue, job, worker='w', owner='o'):
    return driver.run(queue, 'start', job['id'], job['attempt'], worker, owner)


def renew(driver, queue, job):
    return driver.run(queue, 'renew', job['id'], job['attempt'])


def done(driver, queue, job, result=b'', result_repr='', result_note=''):
    return driver.run(queue, 'done', job['id'], job['attempt'], result, result_repr,
                      result_note)


def retry(driver, queue, job, delay=0, error='error'):
    return driver.run(queue, 'retry', job['id'], job['attempt'], delay, error)


def fail(driver, queue, job, type_=mpqueue.TYPE_NORMAL, errors=(), name=''):
    return driver.run(queue, 'fail', job['id'], job['attempt'], type_, json.dumps(list(errors)),
                      name)


def lost(driver, queue, job, error='worker died', timeout=False):
    return driver.run(queue, 'lost', job['id'], job['attempt'], error, 1 if timeout else 0)


def requeue(driver, queue, job):
    return driver.run(queue, 'requeue', job['id'], job['attempt'])


def cancel(driver, queue, job_id, by='tester'):
    return driver.run(queue, 'cancel', job_id, by)


def sweep(driver, queue, limit=mpqueue.SWEEP_LIMIT):
    """``(seconds to the next due time or None, broker time)``."""
    return driver.run(queue, 'sweep', limit)


def broker_clock(driver, queue):
    """The broker's time, read by a sweep that may move no job."""
    return sweep(driver, queue, 0)[1]


def info(driver, queue, job_id, watch=''):
    return driver.run(queue, 'info', job_id, watch)


def state(driver, queue, job_id):
    record = info(driver, queue, job_id)
    return None if record is None else record['state']


def depth(driver, queue):
    return driver.run(queue, 'depth')


def counts(driver, queue):
    """depth() without ``oldest_created``."""
    out = depth(driver, queue)
    del out['oldest_created']
    return out


def zero_counts(**given):
    return dict(dict.fromkeys(LIVE + COUNTERS, 0), **given)


def failed(driver, queue, offset=0, count=100, after=''):
    return driver.run(queue, 'failed', offset, count, after)


def empty(driver, queue):
    """Clean ``queue`` completely (the clean step works in chunks)."""
    while driver.run(queue, 'clean', BULK) >= BULK:
        pass


def make_failed(driver, queue, type_=mpqueue.TYPE_NORMAL, **settings):
    """Push a job, pop it and fail it for good; its id."""
    job_id = push1(driver, queue, **settings)
    job = pop1(driver, queue)
    assert job['id'] == job_id
    assert fail(driver, queue, job, type_, ['it broke']) is True
    return job_id


def poll(cond, what, timeout=WAIT):
    """``cond()``'s first true value, asked every few milliseconds until ``timeout``."""
    return wait_for(cond, timeout, what, interval=0.005)


def sweep_until_state(driver, queue, job_id, wanted, what=None):
    """Tick until the job is in state ``wanted``; its record."""
    def reached():
        sweep(driver, queue)
        record = info(driver, queue, job_id)
        return record if record and record['state'] == wanted else None
    return poll(reached, what or 'job %s to be %s after a sweep' % (job_id, wanted))


def sweep_until_due(driver, queue, n=1):
    """Tick until a reserve hands out jobs; those jobs."""
    def due():
        sweep(driver, queue)
        return reserve(driver, queue, n)
    return poll(due, 'a due job')


def wait_broker_time(driver, queue, when):
    """Until the broker's clock reads ``when`` (its time as records carry it)."""
    poll(lambda: broker_clock(driver, queue) >= when,
         'the broker clock to reach %.3f' % when)


def taken_back(driver, queue, job_id, monkeypatch, take):
    """Hand the job out (``take``: 'reserve' or 'pop'), with short reservations
    and leases, and sweep until the broker takes it back to waiting; the job
    dict of that now stale attempt.  The defaults are restored afterwards."""
    reserve_seconds, lease_seconds = mpqueue.RESERVE_SECONDS, mpqueue.LEASE_SECONDS
    monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', 0.2)
    monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', 0.2)
    try:
        [job] = reserve(driver, queue) if take == 'reserve' else pop(driver, queue)
        assert job['id'] == job_id
        sweep_until_state(driver, queue, job_id, 'waiting')
    finally:
        monkeypatch.setattr(mpqueue, 'RESERVE_SECONDS', reserve_seconds)
        monkeypatch.setattr(mpqueue, 'LEASE_SECONDS', lease_seconds)
    return job


# -- counting the jobs ourselves -----------------------------------------------------------

def tally(driver, queue, job_ids):
    """Jobs per live state among ``job_ids``, read one by one with ``info``."""
    found = collections.Counter(state(driver, queue, job_id) for job_id in job_ids)
    return {name: found[name] for name in LIVE}


def assert_depth(driver, queue, job_ids, store=None, **counters):
    """depth() agrees with the jobs themselves: its live states with the
    states ``info`` reports for ``job_ids`` (every job the test pushed) and,
    given a ``store``, with what is stored; its counters with ``counters``."""
    got = counts(driver, queue)
    assert {name: got[name] for name in LIVE} == tally(driver, queue, job_ids)
    if store is not None:
        assert {name: got[name] for name in LIVE} == store.states(queue)
    for name, value in counters.items():
        assert got[name] == value, 'depth()[%r] is %r, not %r: %r' % (name, got[name], value,
                                                                      got)
    return got


# -- what a driver stored ----------------------------------------------------------------

class RedisStore:
    """The keys of a queue on Redis (one server or a cluster), read with the
    given redis-py client."""

    def __init__(self, client, prefix=PREFIX):
        self.client, self.prefix = client, prefix

    def key(self, queue, name):
        return '%s:{%s}:%s' % (self.prefix, queue, name)

    def leftovers(self, queue):
        """Every key of the queue."""
        return sorted(k.decode() for k in self.client.scan_iter(
            match='%s:{%s}:*' % (self.prefix, queue), count=1000))

    def traces(self, queue, job_id):
        """Keys of the queue that hold the job: its record, or a list, sorted
        set or hash that names it."""
        out = []
        for name in self.leftovers(queue):
            kind = self.client.type(name).decode()
            if ':job:%s' % job_id in name:        # its record, its parents, its children
                out.append(name)
            elif kind == 'list' and job_id.encode() in self.client.lrange(name, 0, -1):
                out.append(name)
            elif kind == 'zset' and self.client.zscore(name, job_id) is not None:
                out.append(name)
            elif kind == 'hash' and job_id.encode() in self.client.hvals(name):
                out.append(name)
        return out

    def states(self, queue):
        waiting = sum(self.client.llen(self.key(queue, 'waiting' + level))
                      for level in [''] + [':%d' % n for n in range(1, 10)])
        waiting += sum(self.client.llen(name) for name in self.client.scan_iter(
            match=self.key(queue, 'limit:parked:*'), count=1000))     # parked by a limit
        return dict(waiting=waiting, **{name: self.client.zcard(self.key(queue, name))
                                        for name in ('delayed', 'reserved', 'working', 'failed',
                                                     'blocked')})

    def holds(self, queue):
        """Unique key -> id of the job holding it."""
        return {k.decode(): v.decode()
                for k, v in self.client.hgetall(self.key(queue, 'unique')).items()}

    def payload_kept(self, queue, job_id):
        return bool(self.client.hexists(self.key(queue, 'job:' + job_id), 'payload'))

    def expires_in(self, queue, job_id):
        """Seconds until the job's record expires (None: it never does)."""
        ms = self.client.pttl(self.key(queue, 'job:' + job_id))
        return None if ms < 0 else ms / 1000.0

    def watcher(self, queue):
        return RedisWatcher(self.client, self.key(queue, 'ended'))

    def close(self):
        self.client.close()


class SqliteStore:
    """The rows of a queue in the SQLite file of a SqliteDriver."""

    def __init__(self, path):
        self.conn = sqlite3.connect(path, isolation_level=None)

    def _rows(self, sql, *args):
        return self.conn.execute(sql, args).fetchall()

    def leftovers(self, queue):
        return ([('mpq_job', i) for i, in self._rows(
                    'SELECT id FROM mpq_job WHERE queue = ?', queue)] +
                [('mpq_unique', k) for k, in self._rows(
                    'SELECT key FROM mpq_unique WHERE queue = ?', queue)] +
                [('mpq_queue', q) for q, in self._rows(
                    'SELECT queue FROM mpq_queue WHERE queue = ?', queue)] +
                [('mpq_paused', q) for q, in self._rows(
                    'SELECT queue FROM mpq_paused WHERE queue = ?', queue)] +
                [(table, name) for table in ('mpq_limit_held', 'mpq_limit_start')
                 for name, in self._rows('SELECT name FROM %s WHERE queue = ?' % table,
                                         queue)] +
                [('mpq_dep', child) for child, in self._rows(
                    'SELECT child FROM mpq_dep WHERE queue = ?', queue)])

    def traces(self, queue, job_id):
        return ([('mpq_job', job_id)] * len(self._rows(
                    'SELECT 1 FROM mpq_job WHERE queue = ? AND id = ?', queue, job_id)) +
                [('mpq_dep', job_id)] * len(self._rows(
                    'SELECT 1 FROM mpq_dep WHERE queue = ? AND ? IN (child, parent)', queue,
                    job_id)) +
                [('mpq_unique', k) for k, in self._rows(
                    'SELECT key FROM mpq_unique WHERE queue = ? AND id = ?', queue, job_id)])

    def states(self, queue):
        found = dict(self._rows('SELECT state, COUNT(*) FROM mpq_job WHERE queue = ? '
                                'GROUP BY state', queue))
        return {name: found.get(name, 0) for name in LIVE}

    def holds(self, queue):
        return dict(self._rows('SELECT key, id FROM mpq_unique WHERE queue = ?', queue))

    def payload_kept(self, queue, job_id):
        [(payload,)] = self._rows('SELECT payload FROM mpq_job WHERE queue = ? AND id = ?',
                                  queue, job_id)
        return payload is not None

    def expires_in(self, queue, job_id):
        return None         # kept outcomes are dropped by sweep, not by the database

    def watcher(self, queue):
        return SocketWatcher()

    def close(self):
        self.conn.close()


class RedisWatcher:
    """A subscription to a queue's ``ended`` channel; ``address`` is what a
    waiter passes to the ``info`` step (on Redis, any text: the job's end
    publishes its id)."""

    address = 'test-waiter'

    def __init__(self, client, channel):
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(channel)
        poll(lambda: (self.pubsub.get_message(timeout=0.05) or {}).get('type') == 'subscribe',
             'the subscription to %s' % channel)
        self.got = []

    def wait(self, job_id, timeout=WAIT):
        """The ids of the ended jobs notified, up to and including ``job_id``."""
        deadline = time.monotonic() + timeout
        while job_id not in self.got:
            left = deadline - time.monotonic()
            assert left > 0, 'no notification for %s within %s s: got %r' % (
                job_id, timeout, self.got)
            msg = self.pubsub.get_message(timeout=min(left, 0.05))
            if msg is not None and msg['type'] == 'message':
                self.got.append(msg['data'].decode())
        return list(self.got)

    def close(self):
        self.pubsub.close()


class SocketWatcher:
    """A Unix datagram socket a waiter listens on (SQLite: ``info`` stores its
    path; a job's end sends it b'e')."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='mpqw-', dir='/tmp')   # AF_UNIX paths are short
        self.address = os.path.join(self.dir, 'waiter')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.got = []

    def wait(self, job_id, timeout=WAIT):
        """Every notification so far, once one came: ``job_id`` for each b'e'
        (the socket waits for that one job, the datagram names none)."""
        deadline = time.monotonic() + timeout
        while not self.got:
            left = deadline - time.monotonic()
            assert left > 0, 'no notification for %s within %s s' % (job_id, timeout)
            if select.select([self.sock], [], [], left)[0]:
                self.got.append(self.sock.recv(64))
        self.sock.setblocking(False)
        try:
            while True:
                self.got.append(self.sock.recv(64))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        assert set(self.got) == {b'e'}, self.got
        return [job_id] * len(self.got)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
