#!/usr/bin/env python3
"""Measure mpqueue on your own machine.

    python examples/benchmark.py                          # SQLite broker, 4 workers, 20000 jobs
    python examples/benchmark.py --driver redis           # Redis at redis://127.0.0.1:6379/15
    python examples/benchmark.py --driver redis-cluster   # Redis Cluster with a node at :7000
    python examples/benchmark.py --driver redis-sentinel --redis-url \
        redis+sentinel://127.0.0.1:26379/mymaster/15     # Redis found through Sentinel
    python examples/benchmark.py --only drain,latency --workers 8 --model grab
    python examples/benchmark.py --scaling --jobs 5000    # 1/2/4/8 workers, both drivers and models
    python examples/benchmark.py --scale                  # costs that grow with the queue
    python examples/benchmark.py --scale --code /tmp/old  # ... of the mpqueue of another checkout

The benchmark uses mpqueue the way an application does: ``configure``,
``push``, ``push_many``, ``status`` and ``clean`` from this process, and a
real pool started with ``python -m mpqueue_cli worker:start --config FILE``
in its own session.  It writes that config file and the job bodies
(``mpqbench_jobs.py``) into a temporary directory, which also holds the pool's
log (``mpqbench.log``) and, for SQLite, the broker file.  The directory is
deleted at the end unless something went wrong (or ``--keep``).  The queue
is named ``bench-<pid of the benchmark>``; on Redis its keys (prefix
``--redis-prefix``) are emptied with ``mpqueue.clean`` at the end and the
benchmark's own record keys deleted.

Workloads (``--only`` selects some of them, comma-separated):

  push       N no-op jobs, one ``mpqueue.push`` each, no pool running
  unique     N no-op jobs, one ``push`` each with its own ``key=`` and
             ``unique='queued'``; then N pushes of one key (all but the first
             conflict and write nothing); no pool running
  push_many  the same N jobs in one ``push_many`` call
  drain      N jobs queued (``push_many`` in chunks of 1000), then the pool is
             started; every job records its execution (Redis: SETBIT + INCR
             and its time in one pipeline; SQLite: one line appended to a
             per-worker file).  Reports jobs/s from the first to the last
             execution and from the pool's start to the last execution, and
             lost (never ran: the wait ends when no job ran for 30 s) and
             duplicated (ran more than once) jobs
  latency    pool idle and ready; 300 jobs pushed at 100/s; each records
             time.time() minus its push time: p50 / p99 / max
  delayed    100 jobs with delay=0.5, 20 ms apart; each records how late it
             started: p50 / p99 / max, and how many started early
  handles    200 times: push a job that returns a value (``result_ttl=60``) and
             wait for it with ``mpqueue.result``: push to result, and the job's
             end (as the broker recorded it) to ``result`` returning, p50 / p99;
             then 20 times: push a job that sleeps, and once it runs,
             ``mpqueue.cancel`` it: cancel to its worker process gone, p50 / p99
  idle       pool ready and idle for --idle-seconds: CPU (% of one core) and
             PSS of the whole process tree, and its process count
  schedules  a pool whose queue has 20 schedules ticking every second, for
             --idle-seconds: how late each tick's job started (p50 / p99 /
             max) and the pool's CPU; then a pool with 20 schedules ticking
             once a minute, idle for --idle-seconds: its CPU
  limits     the queue gets the limits ``bench`` (concurrency 100,000: it never
             fills) and ``solo`` (concurrency 1): push (one by one and push_many) and
             drain of N jobs with ``limit='bench'``; 300 jobs of 2 ms under
             ``solo``: from the end of each to the start of the next, p50 /
             p99 / max; then the pool idle for --idle-seconds, first with
             nothing queued, then while one job holds ``solo`` and 10,000
             (at most N) wait for it: CPU of the pool and (Redis) commands the broker
             processed per second
  workflows  N jobs pushed as chains of 10 (one ``chain`` call each) and as
             batches of 10 with a ``then`` (one ``batch`` call each), then
             drained: jobs/s of each, beside plain push_many and drain;
             then 200 batches of 5 short jobs, one after another: from the
             end of a batch's last job to the start of its ``then``, p50 /
             p99 / max

CPU and memory come from /proc (Linux): utime + stime of
``/proc/PID/stat`` (counted in clock ticks, so the idle CPU figure has a
resolution of one tick over the measured time: 0.1 % for 10 s at 100 Hz)
and ``Pss:`` of ``/proc/PID/smaps_rollup``.  With ``--driver redis`` the
workers hold a Redis connection of the benchmark's own (the jobs record
through it), which is part of their PSS.

``--scaling`` runs ``drain`` with 1, 2, 4 and 8 workers for both drivers and
both models, prints a markdown table and writes an SVG line chart (``--svg``).
If Redis does not answer, the Redis half is skipped with a warning.

``--scale`` measures, on SQLite and Redis (``--driver`` picks one; ``--only``
some of ``reads,bulk,delayed,memory``):

  reads    ``status()``, ``depth()``, the metrics text and the dashboard's
           ``GET /api/queues`` (median ms of 21 calls) behind 10k, 100k and
           500k waiting jobs plus 50k failed ones; on SQLite also ``status()``
           while another connection holds the write lock
  bulk     ``retry_failed()`` of 50k failed jobs, and the longest call another
           process made meanwhile: a Redis ``PING``, an SQLite ``push()``
  delayed  ``--delayed-jobs`` (10000) jobs pushed one by one over
           ``--delayed-seconds`` (10), each due 0.5 s after its push: how late
           they start while the pushes go on (p50 / p99 / max)
  memory   PSS of ready pools of 1 and of 50 queues x 1 worker, and so PSS per
           added queue

Figures depend on the machine and on what else runs on it: run the benchmark
on an otherwise idle machine, and more than once, before comparing numbers.
The exit status is 0 when every check passed (no job lost or run twice, the
pool stopped on SIGTERM, ...), 1 when a check failed, 2 on a usage or broker
error, 130 when interrupted.
"""

import argparse
import atexit
import collections
import functools
import importlib
import json
import math
import os
import platform
import runpy
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
# --code DIR measures the mpqueue of another checkout: read before mpqueue is imported
CODE = os.path.abspath(sys.argv[sys.argv.index('--code') + 1]) if '--code' in sys.argv[:-1] \
    else os.path.dirname(HERE)
if os.path.isfile(os.path.join(CODE, 'mpqueue.py')):   # running from a checkout
    sys.path.insert(0, CODE)

import mpqueue  # noqa: E402

WORKLOADS = ('push', 'unique', 'push_many', 'drain', 'latency', 'delayed', 'handles', 'idle',
             'schedules', 'limits', 'workflows')
POOL_NAME = 'mpqbench'
JOBS_MODULE = 'mpqbench_jobs'
PUSH_CHUNK = 1000
LATENCY_JOBS, LATENCY_RATE = 300, 100.0
DELAYED_JOBS, DELAYED_DELAY, DELAYED_GAP = 100, 0.5, 0.020
RESULT_JOBS, CANCEL_JOBS = 200, 20
SCHEDULES = 20              # schedules of the schedules workload, each ticking every second
HANDOFF_JOBS = 300          # limits: jobs run one after the other under a concurrency-1 limit
PARKED_JOBS = 10000         # limits: jobs waiting on a full limit while the pool is measured
FLOW_SIZE = 10              # workflows: jobs per chain and per batch
CALLBACK_BATCHES, CALLBACK_MEMBERS = 200, 5     # workflows: batches run one after another
PROBE_SECONDS = 0.1
STALL_SECONDS = 30          # drain gives up when no job ran for that long
STOP_GRACE = 5              # basics.stop_grace of the generated config
SCALING_WORKERS = (1, 2, 4, 8)
REDIS_URL = 'redis://127.0.0.1:6379/15'
CLUSTER_URL = 'redis://127.0.0.1:7000'
SENTINEL_URL = 'redis+sentinel://127.0.0.1:26379/mymaster/15'
CLK_TCK = os.sysconf('SC_CLK_TCK')


class BenchmarkError(Exception):
    """Something the benchmark cannot go on with (the pool died, a wait timed out)."""


def deadline_wait(cond, timeout, what, interval=0.05, pool=None):
    """Poll ``cond()`` until it is truthy; raise BenchmarkError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if pool is not None:
            pool.check_alive()
        if time.monotonic() >= deadline:
            raise BenchmarkError('timed out after %.0f s waiting for %s' % (timeout, what))
        time.sleep(interval)


# -- /proc ---------------------------------------------------------------------

ProcStat = collections.namedtuple('ProcStat', 'state ppid sid ticks start')


def proc_stat(pid):
    """State, parent, session, CPU ticks (utime + stime) and start time of ``pid``."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b')') + 2:].split()   # fields 3.. (the name may hold spaces)
    return ProcStat(rest[0].decode(), int(rest[1]), int(rest[3]),
                    int(rest[11]) + int(rest[12]), int(rest[19]))


def all_procs():
    out = {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def process_tree(root):
    """``{pid: ProcStat}`` of ``root``, its descendants and every process of its
    session (which still finds children whose parent already exited)."""
    procs = all_procs()
    members = {pid for pid, st in procs.items() if pid == root or st.sid == root}
    children = collections.defaultdict(list)
    for pid, st in procs.items():
        children[st.ppid].append(pid)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    return {pid: procs[pid] for pid in members if procs[pid].state != 'Z'}


def pss_kb(pid):
    try:
        with open('/proc/%d/smaps_rollup' % pid) as f:
            for line in f:
                if line.startswith('Pss:'):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- the pool --------------------------------------------------------------------

_RUNNING_POOLS = set()


class Pool:
    """``python -m mpqueue_cli worker:start --config FILE`` in a session of its own."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.seen = {}          # pid -> start time: every process of the tree seen so far
        self.started_at = None

    def start(self):
        self.out = open(self.workdir.path('pool.out'), 'ab')
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'mpqueue_cli', 'worker:start', '--config',
             self.workdir.config_path], stdin=subprocess.DEVNULL, stdout=self.out,
            stderr=subprocess.STDOUT, env=self.workdir.env(), cwd=self.workdir.dir,
            start_new_session=True)
        _RUNNING_POOLS.add(self)
        return self

    def tree(self):
        procs = process_tree(self.proc.pid)
        for pid, st in procs.items():
            self.seen.setdefault(pid, st.start)
        return procs

    def check_alive(self):
        if self.proc.poll() is not None:
            raise BenchmarkError('the pool exited on its own (status %s); its output:\n%s' % (
                self.proc.returncode, self.workdir.log_tail()))

    def _alive_seen(self):
        alive = []
        for pid, start in self.seen.items():
            st = proc_stat(pid)
            if st is not None and st.start == start and st.state != 'Z':
                alive.append(pid)
        return alive

    def stop(self, grace=STOP_GRACE + 10):
        """SIGTERM to the manage process; SIGKILL to every process of the tree
        still alive after ``grace`` seconds.  Returns what happened."""
        if self.proc is None or self not in _RUNNING_POOLS:
            return None
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            t0 = time.monotonic()
            if self.proc.poll() is None:
                self.tree()
                try:
                    os.kill(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = t0 + grace
            while time.monotonic() < deadline:
                exited = self.proc.poll() is not None
                self.tree()     # the session still finds children the manage process left
                if exited and not self._alive_seen():
                    break
                time.sleep(0.02)
            seconds = time.monotonic() - t0
            killed = []
            for pid in self._alive_seen():
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            return {'stop_seconds': seconds, 'killed': killed,
                    'exit_status': self.proc.returncode}
        finally:
            _RUNNING_POOLS.discard(self)
            self.out.close()
            for s, handler in old.items():
                signal.signal(s, handler)


def stop_problems(stop):
    if stop['killed']:
        return ['the pool did not stop within %d s of SIGTERM; killed pids %s' % (
            STOP_GRACE + 10, ', '.join(map(str, stop['killed'])))]
    if stop['exit_status'] != 0:
        return ['the pool exited with status %s' % stop['exit_status']]
    return []


def _stop_all_pools():
    for pool in list(_RUNNING_POOLS):
        try:
            pool.stop()
        except Exception:   # at exit: do what can be done
            pass


atexit.register(_stop_all_pools)


def _interrupted(signum, frame):
    raise KeyboardInterrupt('signal %d' % signum)


# -- the job bodies --------------------------------------------------------------

# Written to mpqbench_jobs.py next to the generated config; __SINK__ becomes
# ('redis', url, key prefix, cluster) or ('files', directory).  On a cluster the
# record keys share the queue's hash tag: they live on the queue's master, as
# they live on the one server otherwise.
JOBS_SOURCE = '''\
"""Job bodies of the mpqueue benchmark (written by examples/benchmark.py)."""
import os
import time

SINK = __SINK__
REDIS = SINK[0] == 'redis'
KEY = SINK[2] if REDIS else None

_pid = None
_out = None


def _sink():
    """This process's Redis client, or its own record file (O_APPEND)."""
    global _pid, _out
    if _pid != os.getpid():
        if REDIS:
            _out = _redis_client(SINK[1], KEY, SINK[3])
        else:
            _out = os.open(os.path.join(SINK[1], 'rec-%d.txt' % os.getpid()),
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _pid = os.getpid()
    return _out


def _redis_client(url, key, cluster):
    """A plain redis-py client; on a cluster, of the master holding ``key``'s slot."""
    import redis
    if not cluster:
        return redis.Redis.from_url(url, socket_timeout=30)
    import redis.cluster
    nodes = redis.cluster.RedisCluster.from_url(url, socket_timeout=30)
    return nodes.get_redis_connection(nodes.get_node_from_key(key))


def _line(text):
    os.write(_sink(), text.encode())


def warm_up():
    """worker_start_handle: connect (or open the record file) before any job."""
    _sink()


def noop():
    """push and push_many: the job does nothing."""


def drain(i):
    """Job number i: a little work, then record that it ran."""
    started = time.time()
    sum(range(64))
    if REDIS:   # one round trip
        pipe = _sink().pipeline(transaction=False)
        pipe.setbit(KEY + 'seen', i, 1)
        pipe.incr(KEY + 'count')
        pipe.set(KEY + 'first', repr(started), nx=True)
        pipe.set(KEY + 'last', repr(time.time()))
        pipe.execute()
    else:
        _line('d %d %r %r\\n' % (i, started, time.time()))


def probe(seconds):
    """Readiness: hold the worker a moment, then record which process ran."""
    time.sleep(seconds)
    if REDIS:
        _sink().sadd(KEY + 'probe', os.getpid())
    else:
        _line('p %d\\n' % os.getpid())


def latency(pushed_at):
    value = time.time() - pushed_at
    if REDIS:
        _sink().rpush(KEY + 'latency', repr(value))
    else:
        _line('l %r\\n' % value)


def delayed(due_at):
    value = time.time() - due_at
    if REDIS:
        _sink().rpush(KEY + 'delayed', repr(value))
    else:
        _line('y %r\\n' % value)


def value(i):
    """handles: a job whose return value is kept."""
    return i


def sleeper(seconds):
    """handles: a long job to cancel; records its process first."""
    if REDIS:
        _sink().rpush(KEY + 'started', os.getpid())
    else:
        _line('s %d\\n' % os.getpid())
    time.sleep(seconds)


def handoff(seconds):
    """limits: record the start and the end of a short job."""
    started = time.time()
    time.sleep(seconds)
    if REDIS:
        pipe = _sink().pipeline(transaction=False)
        pipe.rpush(KEY + 'handoff_start', repr(started))
        pipe.rpush(KEY + 'handoff_end', repr(time.time()))
        pipe.execute()
    else:
        _line('a %r\\nb %r\\n' % (started, time.time()))


def flow_end():
    """workflows: a batch member that records its end."""
    if REDIS:
        _sink().rpush(KEY + 'flow_end', repr(time.time()))
    else:
        _line('e %r\\n' % time.time())


def flow_then():
    """workflows: a batch's callback that records its start."""
    if REDIS:
        _sink().rpush(KEY + 'flow_then', repr(time.time()))
    else:
        _line('f %r\\n' % time.time())


def tick(period):
    """schedules: how late this tick's job started (ticks fall on multiples of period)."""
    late = time.time() % period
    if REDIS:
        _sink().rpush(KEY + 'tick', repr(late))
    else:
        _line('t %r\\n' % late)
'''

CONFIG_SOURCE = '''\
"""Pool config of the mpqueue benchmark (written by examples/benchmark.py)."""
import logging
import sys

sys.path.insert(0, %(dir)r)     # the workers import mpqbench_jobs from here

import mpqueue
import mpqbench_jobs

config = {
    'basics': {'name': %(name)r, 'pid_path': %(dir)r, 'driver': %(driver)s,
               'stop_grace': %(grace)r, 'worker_start_handle': mpqbench_jobs.warm_up},
    'log': {'path': %(dir)r, 'level': logging.INFO},
    'queue': [{'name': q, 'worker_number': %(workers)d, 'model': %(model)r,
               'schedule': %(schedule)s, **%(options)s} for q in %(queues)r],
}
'''


class RedisRecords:
    """What the jobs recorded, read back from Redis."""

    def __init__(self, url, key, cluster=False):
        import redis
        import redis.cluster
        client = redis.cluster.RedisCluster if cluster else redis.Redis
        self.client = client.from_url(url, socket_timeout=30)
        self.key = key
        self.n = 0

    def keys(self):
        return [self.key + k for k in ('seen', 'count', 'first', 'last', 'probe', 'latency',
                                       'delayed', 'started', 'tick', 'handoff_start',
                                       'handoff_end', 'flow_end', 'flow_then')]

    def start_drain(self, n):
        self.n = n
        self.client.delete(self.key + 'seen', self.key + 'count', self.key + 'first',
                           self.key + 'last')

    def drain_progress(self):
        return self.client.bitcount(self.key + 'seen')

    def drain_result(self):
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.key + 'count')
        pipe.bitcount(self.key + 'seen')
        pipe.get(self.key + 'first')
        pipe.get(self.key + 'last')
        count, distinct, first, last = pipe.execute()
        return {'executions': int(count or 0), 'distinct': distinct,
                'first': float(first) if first else None, 'last': float(last) if last else None}

    def probe_pids(self):
        return {int(p) for p in self.client.smembers(self.key + 'probe')}

    def start_values(self, kind):
        self.client.delete(self.key + kind)

    def values(self, kind):
        return [float(v) for v in self.client.lrange(self.key + kind, 0, -1)]

    def cleanup(self):
        self.client.delete(*self.keys())


RECORD_LETTERS = {'latency': 'l', 'delayed': 'y', 'started': 's', 'tick': 't',
                  'handoff_start': 'a', 'handoff_end': 'b', 'flow_end': 'e', 'flow_then': 'f'}


class FileRecords:
    """What the jobs recorded, read back from their per-worker files.  Files are
    only appended to; each ``start_*`` remembers where the new records begin."""

    def __init__(self, directory):
        self.dir = directory
        self.offsets = {}       # file name -> bytes already read
        self.partial = {}
        self.reset_state()

    def reset_state(self):
        self.seen = bytearray()
        self.distinct = self.executions = 0
        self.first = self.last = None
        self.pids = set()
        self.vals = {letter: [] for letter in RECORD_LETTERS.values()}

    def _mark(self):
        self.poll()
        self.reset_state()

    def poll(self):
        for name in os.listdir(self.dir):
            if not name.startswith('rec-'):
                continue
            path = os.path.join(self.dir, name)
            with open(path, 'rb') as f:
                f.seek(self.offsets.get(name, 0))
                data = self.partial.pop(name, b'') + f.read()
                self.offsets[name] = f.tell()
            lines = data.split(b'\n')
            if lines[-1]:
                self.partial[name] = lines[-1]
            for line in lines[:-1]:
                self._record(line.split())

    def _record(self, fields):
        kind = fields[0]
        if kind == b'd':
            i = int(fields[1])
            if i < len(self.seen):
                if self.seen[i]:
                    self.executions += 1
                else:
                    self.seen[i] = 1
                    self.distinct += 1
                    self.executions += 1
            started, ended = float(fields[2]), float(fields[3])
            self.first = started if self.first is None else min(self.first, started)
            self.last = ended if self.last is None else max(self.last, ended)
        elif kind == b'p':
            self.pids.add(int(fields[1]))
        elif kind.decode() in self.vals:
            self.vals[kind.decode()].append(float(fields[1]))

    def start_drain(self, n):
        self._mark()
        self.seen = bytearray(n)

    def drain_progress(self):
        self.poll()
        return self.distinct

    def drain_result(self):
        self.poll()
        return {'executions': self.executions, 'distinct': self.distinct,
                'first': self.first, 'last': self.last}

    def probe_pids(self):
        self.poll()
        return set(self.pids)

    def start_values(self, kind):
        self._mark()

    def values(self, kind):
        self.poll()
        return list(self.vals[RECORD_LETTERS[kind]])

    def cleanup(self):
        pass


class Workdir:
    """The temporary directory of one driver: jobs module, config, logs, broker file."""

    def __init__(self, driver, redis_url, redis_prefix, keep=False):
        self.driver = driver
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix='mpqbench-')
        self.queue = 'bench-%d' % os.getpid()     # concurrent runs on one Redis do not mix
        self.config_path = self.path('mpqbench_config.py')
        self.cluster = driver == 'redis-cluster'
        if driver != 'sqlite':
            key = '%s:{%s}:rec:' % (redis_prefix, self.queue)
            # through Sentinel, the records go straight to the master it names now
            records_url = sentinel_master_url(redis_url) if driver == 'redis-sentinel' \
                else redis_url
            sink = ('redis', records_url, key, self.cluster)
            self.records = RedisRecords(records_url, key, self.cluster)
        else:
            rec_dir = self.path('records')
            os.mkdir(rec_dir)
            sink = ('files', rec_dir)
            self.records = FileRecords(rec_dir)
        with open(self.path(JOBS_MODULE + '.py'), 'w') as f:
            f.write(JOBS_SOURCE.replace('__SINK__', repr(sink)))
        sys.path.insert(0, self.dir)
        sys.modules.pop(JOBS_MODULE, None)
        importlib.invalidate_caches()
        self.jobs = importlib.import_module(JOBS_MODULE)
        self.queues_used = set()

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def env(self):
        env = dict(os.environ)
        if os.path.isfile(os.path.join(CODE, 'mpqueue.py')):
            env['PYTHONPATH'] = os.pathsep.join(
                [CODE] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
        return env

    def configure(self, workers, model, queues=1, schedule=(), **options):
        """Write the pool's config file (``queues`` queues, the first one
        ``self.queue``, each with ``schedule`` and the other queue
        ``options``) and configure this process from it; the config."""
        names = [self.queue] + ['%s-%d' % (self.queue, i) for i in range(2, queues + 1)]
        if self.driver != 'sqlite':
            driver = 'mpqueue.RedisDriver(url=%r, prefix=%r, cluster=%r)' % (
                self.redis_url, self.redis_prefix, self.cluster)
        else:
            driver = 'mpqueue.SqliteDriver(%r)' % self.path('mpqbench.db')
        with open(self.config_path, 'w') as f:
            f.write(CONFIG_SOURCE % {'dir': self.dir, 'name': POOL_NAME, 'driver': driver,
                                     'grace': STOP_GRACE, 'queues': names,
                                     'workers': workers, 'model': model,
                                     'schedule': repr(list(schedule)),
                                     'options': repr(options)})
        config = runpy.run_path(self.config_path)['config']
        mpqueue.configure(config)
        self.queues_used.update(names)
        return config

    def log_tail(self, lines=40):
        """The end of the pool's log, and what else it printed (tracebacks...)."""
        out, logged = [], set()
        for name in (POOL_NAME + '.log', 'pool.out'):
            try:
                with open(self.path(name), errors='replace') as f:
                    text = [line for line in f if line not in logged]
            except OSError:
                continue
            logged.update(text)
            if text:
                out.append('--- %s (last %d lines%s) ---\n%s' % (
                    self.path(name), min(lines, len(text)),
                    ', not in the log' if name == 'pool.out' else '', ''.join(text[-lines:])))
        return ''.join(out) or '(no log written)'

    def close(self, problems):
        """Empty the queues and keys used; delete the directory unless kept."""
        for queue in self.queues_used:
            try:
                mpqueue.clean(queue)
            except mpqueue.MPQueueError as exc:
                problems.append('clean(%r) failed: %s' % (queue, exc))
        try:
            self.records.cleanup()
        except Exception as exc:
            problems.append('could not delete the record keys: %s' % exc)
        if self.driver != 'sqlite':
            client = self.records.client
            try:
                for queue in self.queues_used:
                    # clean() keeps the schedules' last ticks: they are no jobs
                    client.delete('%s:{%s}:schedules' % (self.redis_prefix, queue))
                    pattern = '%s:{%s}:*' % (self.redis_prefix, queue)
                    left = sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))
                    if left:
                        problems.append('keys left after mpqueue.clean(%r): %s (deleted now)'
                                        % (queue, ', '.join(left)))
                        client.delete(*left)
            except Exception as exc:
                problems.append('could not check for keys left in Redis: %s' % exc)
            client.close()
        if self.dir in sys.path:
            sys.path.remove(self.dir)
        sys.modules.pop(JOBS_MODULE, None)
        if self.keep or problems:
            print('benchmark files and pool logs kept in %s' % self.dir, file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- workloads -------------------------------------------------------------------

def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))]


def ms_summary(values):
    if not values:
        return {'p50_ms': None, 'p99_ms': None, 'max_ms': None}
    return {'p50_ms': percentile(values, 50) * 1000, 'p99_ms': percentile(values, 99) * 1000,
            'max_ms': max(values) * 1000}


def redis_usec(wd):
    """Microseconds the Redis broker spent so far in mpqueue's calls (FCALL: a
    function's time includes the commands it runs); None on other brokers."""
    if wd.driver != 'redis':
        return None
    return wd.records.client.info('commandstats').get('cmdstat_fcall', {}).get('usec', 0)


def per_job(before, after, n):
    return None if before is None or not n else (after - before) / n


def ping_us(wd, n):
    """A bare redis-py PING round trip (µs, the median of 5 runs of n//5), the
    floor of any one-command push; None on SQLite."""
    if wd.driver == 'sqlite':
        return None
    client, runs = wd.records.client, []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(max(1, n // 5)):
            client.ping()
        runs.append((time.perf_counter() - t0) / max(1, n // 5) * 1e6)
    return statistics.median(runs)


def run_push(wd, n, **options):
    mpqueue.clean(wd.queue)
    job = wd.jobs.noop
    usec = redis_usec(wd)
    t0 = time.perf_counter()
    for _ in range(n):
        mpqueue.push(wd.queue, job, **options)
    seconds = time.perf_counter() - t0
    redis_us = per_job(usec, redis_usec(wd), n)
    queued = mpqueue.status(wd.queue)['waiting']
    mpqueue.clean(wd.queue)
    return {'jobs': n, 'seconds': seconds, 'jobs_per_s': n / seconds, 'queued': queued,
            'us_per_job': seconds / n * 1e6, 'ping_us': ping_us(wd, min(n, 5000)),
            'redis_us_per_job': redis_us}


def run_unique(wd, n):
    """push with a key of its own per job, then n conflicting pushes of one key."""
    mpqueue.clean(wd.queue)
    job = wd.jobs.noop
    t0 = time.perf_counter()
    for i in range(n):
        mpqueue.push(wd.queue, job, key='u%d' % i, unique='queued')
    fresh = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        mpqueue.push(wd.queue, job, key='same', unique='queued')
    conflicts = time.perf_counter() - t0
    queued = mpqueue.status(wd.queue)['waiting']
    mpqueue.clean(wd.queue)
    return {'jobs': n, 'jobs_per_s': n / fresh, 'conflicts_per_s': n / conflicts,
            'queued': queued}


def run_push_many(wd, n, **options):
    mpqueue.clean(wd.queue)
    jobs = [wd.jobs.noop] * n
    t0 = time.perf_counter()
    usec = redis_usec(wd)
    mpqueue.push_many(wd.queue, jobs, **options)
    seconds = time.perf_counter() - t0
    redis_us = per_job(usec, redis_usec(wd), n)
    queued = mpqueue.status(wd.queue)['waiting']
    mpqueue.clean(wd.queue)
    return {'jobs': n, 'seconds': seconds, 'jobs_per_s': n / seconds, 'queued': queued,
            'redis_us_per_job': redis_us}


def role_ticks(pool):
    """CPU ticks so far of the pool's manage process, its masters and their workers."""
    tree, root = pool.tree(), pool.proc.pid
    masters = {pid for pid, st in tree.items() if st.ppid == root}
    out = {'manage': 0, 'master': 0, 'worker': 0}
    for pid, st in tree.items():
        out['manage' if pid == root else 'master' if pid in masters else 'worker'] += st.ticks
    return out


def run_drain(wd, pool, n, problems, push=mpqueue.push_many, chunk=PUSH_CHUNK, **options):
    """Queue n jobs (``push`` calls of ``chunk`` jobs with ``options``),
    start ``pool``, wait for all of them to run."""
    mpqueue.clean(wd.queue)
    wd.records.start_drain(n)
    for lo in range(0, n, chunk):
        push(wd.queue, [functools.partial(wd.jobs.drain, i)
                        for i in range(lo, min(n, lo + chunk))], **options)
    pool.start()
    # Allow 50 jobs/s at worst, and give up early when nothing moves for STALL_SECONDS.
    began = time.monotonic()
    deadline = began + 60 + n / 50.0
    progress, moved = 0, began
    # CPU and broker time per job are counted from the first job that ran (the
    # pool's boot is not the jobs' cost) to the last
    first = None
    while True:
        done = wd.records.drain_progress()
        if first is None and done:
            first = (done, role_ticks(pool), redis_usec(wd))
        if done >= n:
            break
        now = time.monotonic()
        if done != progress:
            progress, moved = done, now
        pool.check_alive()
        if now >= deadline or now - moved > STALL_SECONDS:
            problems.append('drain: only %d of %d jobs ran within %.0f s' % (
                done, n, now - began))
            break
        time.sleep(0.05)
    # The broker's bookkeeping (the ``over`` counter) may trail the jobs a little.
    status = {}

    def settled():
        status.update(mpqueue.status(wd.queue))
        return status['over'] >= n and status['waiting'] == 0 and status['working'] == 0

    if done >= n:
        try:
            deadline_wait(settled, 15, 'status() to report %d jobs over' % n, pool=pool)
        except BenchmarkError:
            problems.append('drain: status() still says %s after every job ran' % (status,))
    else:
        settled()
    if first is not None:
        ticks, counted = role_ticks(pool), done - first[0]
        cpu_us = {role: per_job(first[1][role], ticks[role], counted) / CLK_TCK * 1e6
                  for role in ticks} if counted else {}
        redis_us = per_job(first[2], redis_usec(wd), counted)
    time.sleep(0.2)     # a late duplicate would show up now
    rec = wd.records.drain_result()
    result = {'jobs': n, 'done': rec['distinct'], 'executions': rec['executions'],
              'lost': n - rec['distinct'], 'duplicated': rec['executions'] - rec['distinct'],
              'status': dict(status)}
    if first is not None:
        result.update(cpu_us_per_job=cpu_us, redis_us_per_job=redis_us)
    if rec['first'] is not None and rec['last'] is not None and rec['last'] > rec['first']:
        result['exec_seconds'] = rec['last'] - rec['first']
        result['jobs_per_s'] = rec['distinct'] / result['exec_seconds']
        result['wall_seconds'] = rec['last'] - pool.started_at
        result['wall_jobs_per_s'] = rec['distinct'] / result['wall_seconds']
    if result['lost'] or result['duplicated']:
        problems.append('drain: %d job(s) never ran, %d ran twice; status() says %s' % (
            result['lost'], result['duplicated'], status))
    if status.get('failed'):
        problems.append('drain: %d job(s) in the failed list' % status['failed'])
    return result


def queue_idle(queue):
    s = mpqueue.status(queue)
    return s['waiting'] == 0 and s['working'] == 0


def wait_ready(wd, pool, workers, timeout=60):
    """Until ``workers`` distinct live worker processes have run a probe job."""
    deadline = time.monotonic() + timeout
    while True:
        live = {pid for pid in wd.records.probe_pids() if proc_stat(pid) is not None}
        if len(live) >= workers:
            break
        if time.monotonic() >= deadline:
            raise BenchmarkError('only %d of %d workers ran a probe job within %d s' % (
                len(live), workers, timeout))
        # Each probe holds its worker for a moment, so a batch spreads over the pool.
        mpqueue.push_many(wd.queue, [wd.jobs.probe] * workers, args=(PROBE_SECONDS,))
        deadline_wait(lambda: queue_idle(wd.queue), max(1.0, deadline - time.monotonic()),
                      'probe jobs to run', pool=pool)
    time.sleep(0.5)     # let the pool settle back to idle


def run_values(wd, pool, kind, count, delay, gap, job):
    wd.records.start_values(kind)
    t0 = time.time()
    for k in range(count):
        pause = t0 + k * gap - time.time()
        if pause > 0:
            time.sleep(pause)
        pushed = time.time()
        mpqueue.push(wd.queue, job, delay=delay, args=(pushed + delay,))
    try:
        deadline_wait(lambda: len(wd.records.values(kind)) >= count, 30 + delay,
                      '%d %s jobs' % (count, kind), interval=0.02, pool=pool)
    except BenchmarkError as exc:
        return wd.records.values(kind), str(exc)
    return wd.records.values(kind), None


def run_latency(wd, pool, problems):
    values, error = run_values(wd, pool, 'latency', LATENCY_JOBS, 0, 1 / LATENCY_RATE,
                               wd.jobs.latency)
    if error:
        problems.append('latency: ' + error)
    result = {'jobs': LATENCY_JOBS, 'done': len(values), 'rate_per_s': LATENCY_RATE}
    result.update(ms_summary(values))
    return result


def run_delayed(wd, pool, problems):
    values, error = run_values(wd, pool, 'delayed', DELAYED_JOBS, DELAYED_DELAY, DELAYED_GAP,
                               wd.jobs.delayed)
    if error:
        problems.append('delayed: ' + error)
    result = {'jobs': DELAYED_JOBS, 'done': len(values), 'delay_s': DELAYED_DELAY,
              'early': sum(1 for v in values if v < 0)}
    result.update(ms_summary(values))
    if result['early']:
        problems.append('delayed: %d job(s) started before their due time (earliest %.1f ms '
                        'early)' % (result['early'], -min(values) * 1000))
    return result


def run_handles(wd, pool, problems):
    """result() after push, and cancel() of running jobs."""
    waits, ends = [], []
    for i in range(RESULT_JOBS):
        t0 = time.time()
        job_id = mpqueue.push(wd.queue, wd.jobs.value, args=(i,), result_ttl=60)
        got = mpqueue.result(wd.queue, job_id, timeout=30)
        t1 = time.time()
        if got != i:
            problems.append('handles: result() of job %d returned %r' % (i, got))
            break
        waits.append(t1 - t0)
        ends.append(t1 - mpqueue.job_info(wd.queue, job_id)['end_time'])
    wd.records.start_values('started')
    cancels = []
    for k in range(CANCEL_JOBS):
        job_id = mpqueue.push(wd.queue, wd.jobs.sleeper, args=(60,))
        deadline_wait(lambda: len(wd.records.values('started')) > k, 30,
                      'sleeper job %d to start' % k, interval=0.002, pool=pool)
        pid = int(wd.records.values('started')[k])
        t0 = time.time()
        mpqueue.cancel(wd.queue, job_id)
        deadline_wait(lambda: (proc_stat(pid) or ProcStat('Z', 0, 0, 0, 0)).state == 'Z', 30,
                      'worker %d of a cancelled job to exit' % pid, interval=0.001, pool=pool)
        cancels.append(time.time() - t0)
        deadline_wait(lambda: mpqueue.job_info(wd.queue, job_id)['state'] == 'cancelled', 30,
                      'job %s to end cancelled' % job_id, interval=0.01, pool=pool)
    return {'push_to_result': ms_summary(waits), 'end_to_result': ms_summary(ends),
            'cancel_to_exit': ms_summary(cancels), 'jobs': len(waits), 'cancels': len(cancels)}


def run_schedules(wd, args, problems):
    """Pools with SCHEDULES schedules: every second (lateness, CPU), every minute (CPU)."""
    result = {}
    for every in (1, 60):
        wd.configure(args.workers, args.model, schedule=[
            {'name': 's%d' % k, 'every': every, 'job': '%s:tick' % JOBS_MODULE,
             'args': (every,)} for k in range(SCHEDULES)])
        pool = Pool(wd).start()
        try:
            wait_ready(wd, pool, args.workers)
            wd.records.start_values('tick')
            idle = run_idle(pool, args.idle_seconds)
            ticks = wd.records.values('tick')
        finally:
            stop = pool.stop()
        problems += stop_problems(stop)
        result['every_%ds' % every] = dict(ms_summary(ticks), ticks=len(ticks),
                                           cpu_percent=idle['cpu_percent'],
                                           seconds=idle['seconds'])
        if every == 1 and len(ticks) < SCHEDULES * (idle['seconds'] - 2):
            problems.append('schedules: %d ticks ran in %.0f s, expected about %d' % (
                len(ticks), idle['seconds'], SCHEDULES * idle['seconds']))
    return result


def broker_commands(wd):
    """Commands the Redis broker processed so far (None on SQLite and Cluster)."""
    if wd.driver in ('sqlite', 'redis-cluster'):
        return None
    return wd.records.client.info('stats')['total_commands_processed']


def idle_with_commands(wd, pool, seconds):
    """run_idle, with the broker's commands per second meanwhile (less this one call)."""
    before = broker_commands(wd)
    idle = run_idle(pool, seconds)
    after = broker_commands(wd)
    idle['broker_commands_per_s'] = None if before is None else \
        (after - before - 1) / idle['seconds']
    return idle


def run_limits(wd, args, problems):
    """Jobs under a limit: push and drain, the hand-off to the next waiter,
    and a pool while thousands wait on a full limit."""
    # 'bench' never fills: what carrying a limit costs; 'solo' is always full
    wd.configure(args.workers, args.model, limits={'bench': {'concurrency': 100000},
                                                    'solo': {'concurrency': 1}})
    result = {'push': run_push(wd, args.jobs, limit='bench'),
              'push_many': run_push_many(wd, args.jobs, limit='bench')}
    pool = Pool(wd)
    try:
        result['drain'] = run_drain(wd, pool, args.jobs, problems, limit='bench')
        wait_ready(wd, pool, args.workers)
        wd.records.start_values('handoff_start')
        mpqueue.push_many(wd.queue, [wd.jobs.handoff] * HANDOFF_JOBS, args=(0.002,),
                          limit='solo')
        deadline_wait(lambda: len(wd.records.values('handoff_end')) >= HANDOFF_JOBS, 60,
                      '%d jobs under limit solo' % HANDOFF_JOBS, pool=pool)
        starts = sorted(wd.records.values('handoff_start'))
        ends = sorted(wd.records.values('handoff_end'))
        gaps = [b - a for a, b in zip(ends, starts[1:])]
        result['handoff'] = dict(ms_summary(gaps), jobs=len(starts),
                                 overlaps=sum(1 for g in gaps if g < 0))
        if result['handoff']['overlaps']:
            problems.append('limits: %d job(s) under solo started before the one before them '
                            'ended' % result['handoff']['overlaps'])
        deadline_wait(lambda: queue_idle(wd.queue), 30, 'the queue to be idle', pool=pool)
        result['idle'] = idle_with_commands(wd, pool, args.idle_seconds)
        holder = mpqueue.push(wd.queue, wd.jobs.sleeper, args=(args.idle_seconds + 30,),
                              limit='solo')
        parked = min(PARKED_JOBS, args.jobs)
        mpqueue.push_many(wd.queue, [wd.jobs.noop] * parked, limit='solo')
        deadline_wait(lambda: [(r['running'], r['waiting']) for r in mpqueue.limits(wd.queue)
                               if r['name'] == 'solo'] == [(1, parked)], 30,
                      '%d jobs to wait on limit solo' % parked, pool=pool)
        result['parked'] = dict(idle_with_commands(wd, pool, args.idle_seconds), jobs=parked)
        mpqueue.cancel(wd.queue, holder)
        mpqueue.clean(wd.queue)
    finally:
        stop = pool.stop()
    if stop is not None:
        problems += stop_problems(stop)
    return result


def pushed_in(wd, n, push):
    """Seconds to push n no-op jobs by ``push(queue, jobs)`` calls of FLOW_SIZE."""
    mpqueue.clean(wd.queue)
    t0 = time.perf_counter()
    for _ in range(0, n, FLOW_SIZE):
        push(wd.queue, [wd.jobs.noop] * FLOW_SIZE)
    seconds = time.perf_counter() - t0
    mpqueue.clean(wd.queue)
    return {'jobs': n, 'jobs_per_s': n / seconds}


def run_workflows(wd, args, problems):
    """Chains and batches against plain jobs: push, drain, and the hand-off
    from a batch's last job to its callback."""
    def batch(queue, jobs):         # every FLOW_SIZE-th job is the then of the others
        return mpqueue.batch(queue, jobs[:-1], then=jobs[-1])
    result = {}
    for name, push in (('plain', mpqueue.push_many), ('chain', mpqueue.chain),
                       ('batch', batch)):
        result[name] = {'push': pushed_in(wd, args.jobs, push)}
        pool = Pool(wd)
        try:
            result[name]['drain'] = run_drain(wd, pool, args.jobs, problems, push, FLOW_SIZE)
        finally:
            stop = pool.stop()
        if stop is not None:
            problems += stop_problems(stop)
    pool = Pool(wd).start()
    try:
        wait_ready(wd, pool, args.workers)
        wd.records.start_values('flow_end')
        for k in range(CALLBACK_BATCHES):
            mpqueue.batch(wd.queue, [wd.jobs.flow_end] * CALLBACK_MEMBERS, then=wd.jobs.flow_then)
            deadline_wait(lambda: len(wd.records.values('flow_then')) > k, 30,
                          'the callback of batch %d' % k, interval=0.001, pool=pool)
        # sorted: the SQLite run's records come from several files, not in order
        # (the batches run one after another, so the k-th five ends are batch k's)
        ends = sorted(wd.records.values('flow_end'))
        thens = sorted(wd.records.values('flow_then'))
        waits = [then - max(ends[k * CALLBACK_MEMBERS:(k + 1) * CALLBACK_MEMBERS])
                 for k, then in enumerate(thens)]
        result['callback'] = dict(ms_summary(waits), batches=len(thens),
                                  early=sum(1 for w in waits if w < 0))
        if result['callback']['early']:
            problems.append('workflows: %d callback(s) started before their batch ended'
                            % result['callback']['early'])
    finally:
        stop = pool.stop()
    if stop is not None:
        problems += stop_problems(stop)
    return result


def run_idle(pool, seconds):
    time.sleep(0.5)
    before = pool.tree()
    t0 = time.monotonic()
    time.sleep(seconds)
    after = pool.tree()
    elapsed = time.monotonic() - t0
    ticks = 0
    for pid, st in after.items():
        old = before.get(pid)
        ticks += st.ticks - (old.ticks if old is not None and old.start == st.start else 0)
    pss = [pss_kb(pid) for pid in after]
    return {'seconds': elapsed, 'cpu_percent': ticks / CLK_TCK / elapsed * 100,
            'cpu_resolution_percent': 100.0 / CLK_TCK / elapsed,
            'pss_mb': sum(p for p in pss if p) / 1024.0 if any(pss) else None,
            'processes': len(after)}


# -- one benchmark run ----------------------------------------------------------

def machine_info():
    return {'python': platform.python_version(), 'mpqueue': mpqueue.__version__,
            'cpus': os.cpu_count(), 'platform': platform.platform(),
            'load_average': [round(x, 2) for x in os.getloadavg()]}


def run_benchmark(args, selected):
    machine = machine_info()
    problems = []
    results = {}
    wd = Workdir(args.driver, args.redis_url, args.redis_prefix, args.keep)
    pool = Pool(wd)
    try:
        wd.configure(args.workers, args.model)
        mpqueue.clean(wd.queue)
        if 'push' in selected:
            results['push'] = run_push(wd, args.jobs)
        if 'unique' in selected:
            results['unique'] = run_unique(wd, args.jobs)
        if 'push_many' in selected:
            results['push_many'] = run_push_many(wd, args.jobs)
        if 'unique' in results and results['unique']['queued'] != args.jobs + 1:
            problems.append('unique: status() showed %d waiting jobs, expected %d' % (
                results['unique']['queued'], args.jobs + 1))
        for name in ('push', 'push_many'):
            if name in results and results[name]['queued'] != args.jobs:
                problems.append('%s: status() showed %d waiting jobs, expected %d' % (
                    name, results[name]['queued'], args.jobs))
        if 'drain' in selected:
            results['drain'] = run_drain(wd, pool, args.jobs, problems)
        if selected & {'latency', 'delayed', 'handles', 'idle'}:
            if pool.proc is None:
                pool.start()
            wait_ready(wd, pool, args.workers)
            if 'latency' in selected:
                results['latency'] = run_latency(wd, pool, problems)
            if 'delayed' in selected:
                results['delayed'] = run_delayed(wd, pool, problems)
            if 'handles' in selected:
                results['handles'] = run_handles(wd, pool, problems)
            if 'idle' in selected:
                wait_ready(wd, pool, args.workers)
                results['idle'] = run_idle(pool, args.idle_seconds)
        if selected & {'schedules', 'limits', 'workflows'}:
            stop = pool.stop()
            if stop is not None:
                results['pool'] = stop
                problems += stop_problems(stop)
        if 'schedules' in selected:
            results['schedules'] = run_schedules(wd, args, problems)
        if 'limits' in selected:
            results['limits'] = run_limits(wd, args, problems)
        if 'workflows' in selected:
            results['workflows'] = run_workflows(wd, args, problems)
    except BenchmarkError as exc:
        problems.append(str(exc))
    finally:
        stop = pool.stop()
        if stop is not None:
            results['pool'] = stop
            problems += stop_problems(stop)
        if problems:
            problems.append('pool log:\n' + wd.log_tail())
        wd.close(problems)
    return {'driver': args.driver, 'model': args.model, 'workers': args.workers,
            'jobs': args.jobs, 'machine': machine, 'results': results,
            'problems': problems}


def fmt(value, digits=1):
    if value is None:
        return 'n/a'
    if isinstance(value, int):
        return '{:,}'.format(value)
    if abs(value) >= 100:
        return '{:,.0f}'.format(value)
    return '%.*f' % (digits, value)


def table_rows(results):
    r = results
    rows = []
    if 'push' in r:
        p = r['push']
        rows.append(('push', 'jobs/s (one push() per job)', fmt(p['jobs_per_s'])))
        if p.get('ping_us'):
            rows += [('push', 'µs per push / per redis-py PING', '%s / %s (%.2fx)' % (
                fmt(p['us_per_job']), fmt(p['ping_us']), p['us_per_job'] / p['ping_us']))]
        if p.get('redis_us_per_job') is not None:
            rows.append(('push', 'Redis time per push (µs)', fmt(p['redis_us_per_job'])))
    if 'unique' in r:
        rows += [('unique', 'jobs/s (one push() per job, a key each)',
                  fmt(r['unique']['jobs_per_s'])),
                 ('unique', 'conflicting pushes/s (one key)', fmt(r['unique']['conflicts_per_s']))]
    if 'push_many' in r:
        rows.append(('push_many', 'jobs/s (one push_many() call)',
                     fmt(r['push_many']['jobs_per_s'])))
        if r['push_many'].get('redis_us_per_job') is not None:
            rows.append(('push_many', 'Redis time per job (µs)',
                         fmt(r['push_many']['redis_us_per_job'])))
    if 'drain' in r:
        d = r['drain']
        rows += [('drain', 'jobs/s (first to last execution)', fmt(d.get('jobs_per_s'))),
                 ('drain', 'jobs/s (pool start to last execution)',
                  fmt(d.get('wall_jobs_per_s'))),
                 ('drain', 'jobs done', '%s of %s' % (fmt(d['done']), fmt(d['jobs']))),
                 ('drain', 'lost / duplicated', '%d / %d' % (d['lost'], d['duplicated']))]
        if d.get('cpu_us_per_job'):
            rows.append(('drain', 'CPU per job, master / workers / manage (µs)', ' / '.join(
                fmt(d['cpu_us_per_job'][role]) for role in ('master', 'worker', 'manage'))))
        if d.get('redis_us_per_job') is not None:
            rows.append(('drain', 'Redis time per job, hand-out to end (µs)',
                         fmt(d['redis_us_per_job'])))
    if 'latency' in r:
        lat = r['latency']
        rows += [('latency', 'push to start, %s (ms)' % k[:-3], fmt(lat[k], 2))
                 for k in ('p50_ms', 'p99_ms', 'max_ms')]
    if 'delayed' in r:
        d = r['delayed']
        rows += [('delayed', 'lateness, %s (ms)' % k[:-3], fmt(d[k], 2))
                 for k in ('p50_ms', 'p99_ms', 'max_ms')]
        rows.append(('delayed', 'started early', '%d of %d' % (d['early'], d['done'])))
    if 'handles' in r:
        for name, what in (('push_to_result', 'push to result()'),
                           ('end_to_result', 'job end to result()'),
                           ('cancel_to_exit', 'cancel() to worker gone')):
            rows.append(('handles', '%s, p50 / p99 (ms)' % what, '%s / %s' % (
                fmt(r['handles'][name]['p50_ms'], 2), fmt(r['handles'][name]['p99_ms'], 2))))
    if 'schedules' in r:
        s = r['schedules']['every_1s']
        rows += [('schedules', '20 every 1 s: tick lateness, p50 / p99 / max (ms)',
                  '%s / %s / %s' % (fmt(s['p50_ms'], 2), fmt(s['p99_ms'], 2),
                                    fmt(s['max_ms'], 2))),
                 ('schedules', '20 every 1 s: CPU, % of one core', fmt(s['cpu_percent'], 2)),
                 ('schedules', '20 every minute: idle CPU, % of one core',
                  fmt(r['schedules']['every_60s']['cpu_percent'], 2))]
    if 'limits' in r:
        lim = r['limits']
        rows += [('limits', 'jobs/s (one push(limit=) per job)', fmt(lim['push']['jobs_per_s'])),
                 ('limits', 'jobs/s (one push_many(limit=) call)',
                  fmt(lim['push_many']['jobs_per_s'])),
                 ('limits', 'drain, jobs/s (first to last execution)',
                  fmt(lim['drain'].get('jobs_per_s'))),
                 ('limits', 'end of a job to start of the next waiter, p50 / p99 / max (ms)',
                  '%s / %s / %s' % (fmt(lim['handoff']['p50_ms'], 2),
                                    fmt(lim['handoff']['p99_ms'], 2),
                                    fmt(lim['handoff']['max_ms'], 2)))]
        for name, what in (('idle', 'nothing queued'),
                           ('parked', '%s jobs waiting on a full limit' % fmt(
                               lim['parked']['jobs']))):
            rows += [('limits', '%s: CPU, %% of one core' % what,
                      fmt(lim[name]['cpu_percent'], 2)),
                     ('limits', '%s: broker commands/s' % what,
                      fmt(lim[name]['broker_commands_per_s']))]
    if 'workflows' in r:
        w = r['workflows']
        for name, what in (('plain', 'plain push_many'), ('chain', 'chains of %d' % FLOW_SIZE),
                           ('batch', 'batches of %d with a then' % FLOW_SIZE)):
            rows += [('workflows', '%s: push, jobs/s' % what, fmt(w[name]['push']['jobs_per_s'])),
                     ('workflows', '%s: drain, jobs/s (first to last execution)' % what,
                      fmt(w[name]['drain'].get('jobs_per_s')))]
        c = w['callback']
        rows.append(('workflows', 'last job of a batch to its then, p50 / p99 / max (ms)',
                     '%s / %s / %s' % (fmt(c['p50_ms'], 2), fmt(c['p99_ms'], 2),
                                       fmt(c['max_ms'], 2))))
    if 'idle' in r:
        i = r['idle']
        rows += [('idle', 'CPU, %% of one core (over %.0f s)' % i['seconds'],
                  fmt(i['cpu_percent'], 2)),
                 ('idle', 'PSS of the pool (MB)', fmt(i['pss_mb'])),
                 ('idle', 'processes', str(i['processes']))]
    if 'pool' in r:
        rows.append(('pool', 'stop: SIGTERM to exit (s)', fmt(r['pool']['stop_seconds'], 2)))
    return rows


def print_table(report):
    m = report['machine']
    print('mpqueue benchmark: %s broker, %s model, %d workers, %s jobs' % (
        report['driver'], report['model'], report['workers'], fmt(report['jobs'])))
    print('python %s, mpqueue %s, %s CPUs, load average %s at start' % (
        m['python'], m['mpqueue'], m['cpus'], ' '.join('%.2f' % x for x in m['load_average'])))
    rows = [('workload', 'figure', 'value')] + table_rows(report['results'])
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    line = '  '.join('%-*s' for _ in widths[:2]) + '  %*s'
    print()
    print(line % (widths[0], rows[0][0], widths[1], rows[0][1], widths[2], rows[0][2]))
    print('  '.join('-' * w for w in widths))
    for row in rows[1:]:
        print(line % (widths[0], row[0], widths[1], row[1], widths[2], row[2]))


# -- scaling ---------------------------------------------------------------------

def sentinel_master_url(url):
    """The ``redis://`` URL of the master that the sentinels of a
    ``redis+sentinel://`` URL name now (same user, password and database)."""
    from redis.sentinel import Sentinel
    drv = mpqueue.RedisDriver(url=url)
    sentinels = Sentinel(drv.sentinels, socket_timeout=2, socket_connect_timeout=2)
    try:
        host, port = sentinels.discover_master(drv.service_name)
    finally:
        for client in sentinels.sentinels:
            client.close()
    auth = url.split('://', 1)[1].split('/', 1)[0].rpartition('@')[0]
    return '%s://%s%s:%s/%d' % ('rediss' if drv.ssl else 'redis', auth + '@' if auth else '',
                                host, port, drv.database)


def redis_answers(url):
    import redis
    if url.split('://', 1)[0] in ('redis+sentinel', 'rediss+sentinel'):
        try:
            url = sentinel_master_url(url)
        except (redis.RedisError, OSError):
            return False
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def run_scaling(args):
    machine = machine_info()
    drivers = ['sqlite', 'redis']
    problems = []
    if not redis_answers(args.redis_url):
        print('warning: Redis does not answer at %s; measuring SQLite only' % args.redis_url,
              file=sys.stderr)
        drivers = ['sqlite']
    runs = []
    for driver in drivers:
        wd = Workdir(driver, args.redis_url, args.redis_prefix, args.keep)
        driver_problems = []
        try:
            for model in (mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB):
                for workers in SCALING_WORKERS:
                    wd.configure(workers, model)
                    run_problems = []
                    pool = Pool(wd)
                    result = {}
                    try:
                        result = run_drain(wd, pool, args.jobs, run_problems)
                    except BenchmarkError as exc:
                        run_problems.append(str(exc))
                    finally:
                        stop = pool.stop()
                    if stop is not None:
                        run_problems += stop_problems(stop)
                    runs.append({'driver': driver, 'model': model, 'workers': workers,
                                 'drain': result, 'stop': stop})
                    if not args.json:
                        print('%-6s %-10s %d worker(s): %s jobs/s, not run %s, ran twice %s, '
                              'pool stopped in %s s%s' % (
                                  driver, model, workers, fmt(result.get('jobs_per_s')),
                                  result.get('lost', '?'), result.get('duplicated', '?'),
                                  fmt(stop and stop['stop_seconds'], 2),
                                  '  (%s)' % '; '.join(run_problems) if run_problems else ''),
                              file=sys.stderr, flush=True)
                    driver_problems += ['%s %s %d workers: %s' % (driver, model, workers, p)
                                        for p in run_problems]
        finally:
            if driver_problems:
                driver_problems.append('pool log:\n' + wd.log_tail())
            wd.close(driver_problems)
            problems += driver_problems
    return {'jobs': args.jobs, 'workers': list(SCALING_WORKERS), 'machine': machine,
            'runs': runs, 'problems': problems}


def scaling_markdown(report):
    lines = ['| broker | model | %s |' % ' | '.join(
        '%d worker%s' % (w, 's' if w > 1 else '') for w in SCALING_WORKERS),
        '| --- | --- | %s |' % ' | '.join('---:' for _ in SCALING_WORKERS)]
    series = collections.OrderedDict()
    for run in report['runs']:
        series.setdefault((run['driver'], run['model']), {})[run['workers']] = run['drain']
    for (driver, model), by_workers in series.items():
        cells = []
        for w in SCALING_WORKERS:
            d = by_workers.get(w) or {}
            if not d:
                cell = 'failed'
            elif d['lost']:
                cell = 'stalled: %s of %s ran' % (fmt(d['done']), fmt(d['jobs']))
            else:
                cell = fmt(d.get('jobs_per_s'))
            if d.get('duplicated'):
                cell += ' (%d ran twice)' % d['duplicated']
            cells.append(cell)
        lines.append('| %s | %s | %s |' % (driver, model, ' | '.join(cells)))
    return '\n'.join(lines)


def complete_rate(drain):
    """jobs/s of a drain run in which every job ran, else None."""
    if not drain or drain.get('lost'):
        return None
    return drain.get('jobs_per_s')


def nice_ceiling(value):
    """A round axis maximum >= value, and its tick step."""
    if value <= 0:
        return 1.0, 0.2
    raw = value / 5.0
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * power
        if step >= raw:
            break
    return step * math.ceil(value / step), step


def scaling_svg(report):
    width, height = 800, 460
    left, right, top, bottom = 80, 230, 64, 64
    pw, ph = width - left - right, height - top - bottom
    rates = [complete_rate(run['drain']) or 0 for run in report['runs']]
    incomplete = sum(1 for run in report['runs'] if complete_rate(run['drain']) is None)
    ymax, ystep = nice_ceiling(max(rates + [1]) * 1.05)

    def x(i):
        return left + i * pw / (len(SCALING_WORKERS) - 1)

    def y(v):
        return top + ph - v / ymax * ph

    m = report['machine']
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="sans-serif" font-size="13">' % (
               width, height, width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="26" font-size="17" font-weight="bold">mpqueue drain throughput'
           '</text>' % left,
           '<text x="%d" y="46" fill="#555">%s jobs per run, %s CPUs, Python %s, '
           'mpqueue %s</text>' % (left, fmt(report['jobs']), m['cpus'], escape(m['python']),
                                  escape(m['mpqueue']))]
    tick = 0.0
    while tick <= ymax + 1e-9:
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e3e3e3"/>' % (
            left, left + pw, y(tick), y(tick)))
        out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#333">%s</text>' % (
            left - 8, y(tick) + 4, fmt(tick, 0)))
        tick += ystep
    for i, w in enumerate(SCALING_WORKERS):
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#e3e3e3"/>' % (
            x(i), x(i), top, top + ph))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#333">%d</text>' % (
            x(i), top + ph + 20, w))
    out += ['<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>' % (
                left, left + pw, top + ph, top + ph),
            '<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>' % (left, left, top, top + ph),
            '<text x="%.1f" y="%d" text-anchor="middle">workers</text>' % (
                left + pw / 2.0, height - 18),
            '<text transform="translate(22 %.1f) rotate(-90)" text-anchor="middle">'
            'jobs per second</text>' % (top + ph / 2.0)]
    colors = {'sqlite': '#1f6fb4', 'redis': '#c8372d'}
    dashes = {mpqueue.MODEL_DISTRIBUTE: '', mpqueue.MODEL_GRAB: ' stroke-dasharray="7 5"'}
    series = collections.OrderedDict()
    for run in report['runs']:
        series.setdefault((run['driver'], run['model']), {})[run['workers']] = \
            complete_rate(run['drain'])
    for k, ((driver, model), by_workers) in enumerate(series.items()):
        color = colors.get(driver, '#333')
        points = [(x(i), y(by_workers[w])) for i, w in enumerate(SCALING_WORKERS)
                  if by_workers.get(w)]
        if len(points) > 1:
            out.append('<polyline fill="none" stroke="%s" stroke-width="2.2"%s points="%s"/>' % (
                color, dashes.get(model, ''), ' '.join('%.1f,%.1f' % p for p in points)))
        for px, py in points:
            out.append('<circle cx="%.1f" cy="%.1f" r="3.6" fill="%s"/>' % (px, py, color))
        ly = top + 12 + k * 24
        lx = left + pw + 24
        out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2.2"%s/>'
                   % (lx, lx + 34, ly, ly, color, dashes.get(model, '')))
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 42, ly + 4,
                                                      escape('%s, %s' % (driver, model))))
    if incomplete:
        out.append('<text x="%d" y="%d" fill="#c8372d">%d run(s) did not finish: not '
                   'plotted</text>' % (left, height - 2, incomplete))
    out.append('</svg>')
    return '\n'.join(out) + '\n'


# -- at scale --------------------------------------------------------------------

SCALE_PARTS = ('reads', 'bulk', 'delayed', 'memory')
SCALE_BACKLOGS = (10000, 100000, 500000)    # waiting jobs behind the reads
SCALE_FAILED = 50000        # failed jobs beside them, and for the bulk retry
SCALE_CALLS = 21            # calls per read figure: the median is reported
SCALE_QUEUES = (1, 50)      # pools of this many queues x 1 worker: PSS per added queue
FILL_CHUNK = 5000           # jobs per round trip when filling a queue
PSS_SETTLE = 3.0            # seconds a started pool settles before its PSS is read


def fill(wd, waiting=0, failed=0):
    """``failed`` jobs through their lifecycle (push, pop, fail), then
    ``waiting`` more, a chunk per round trip."""
    driver = mpqueue._get_config()['basics']['driver']
    for lo in range(0, failed, FILL_CHUNK):
        mpqueue.push_many(wd.queue, [wd.jobs.noop] * min(FILL_CHUNK, failed - lo))
        driver.execute(wd.queue, [('fail', job['id'], job['attempt'], mpqueue.TYPE_NORMAL,
                                   '["benchmark"]', '')
                                  for job in driver.run(wd.queue, 'pop', FILL_CHUNK, 'b', 'b')])
    for lo in range(0, waiting, FILL_CHUNK):
        mpqueue.push_many(wd.queue, [wd.jobs.noop] * min(FILL_CHUNK, waiting - lo))


def median_ms(call):
    times = []
    for _ in range(SCALE_CALLS):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def dashboard(config):
    """The dashboard's server on a free port, in a thread, and a call of its
    queue API (GET /api/queues) over one kept-alive connection."""
    import http.client
    import threading
    import mpqueue_cli
    server = mpqueue_cli._WebServer(('127.0.0.1', 0), config, None, True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection(*server.server_address[:2])

    def get():
        conn.request('GET', '/api/queues')
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise BenchmarkError('GET /api/queues answered %d' % response.status)
    return server, get


def status_while_locked(wd):
    """status() (ms) while another connection holds SQLite's write lock."""
    import sqlite3
    other = sqlite3.connect(wd.path('mpqbench.db'), isolation_level=None)
    other.execute('BEGIN IMMEDIATE')
    try:
        return median_ms(lambda: mpqueue.status(wd.queue))
    finally:
        other.execute('ROLLBACK')
        other.close()


def run_reads(wd, config):
    """status(), depth(), the metrics and the dashboard's queue API (ms, the
    median of SCALE_CALLS) behind each backlog of SCALE_BACKLOGS."""
    import mpqueue_cli
    server, api = dashboard(config)
    calls = {'status': lambda: mpqueue.status(wd.queue), 'depth': lambda: mpqueue.depth(wd.queue),
             'metrics': lambda: mpqueue_cli.metrics_text([wd.queue]), 'dashboard': api}
    out, have = {}, 0
    try:
        mpqueue.clean(wd.queue)
        fill(wd, failed=SCALE_FAILED)
        for n in SCALE_BACKLOGS:
            fill(wd, waiting=n - have)
            have = n
            out[n] = {name: median_ms(call) for name, call in calls.items()}
            if wd.driver == 'sqlite':
                out[n]['status_locked'] = status_while_locked(wd)
    finally:
        server.shutdown()
        server.server_close()
        mpqueue.clean(wd.queue)
    return out


def longest_call(make_call, work):
    """Run ``work()`` while a forked process calls ``make_call()()`` over and
    over: the seconds ``work`` took, the longest of those calls (ms)."""
    import multiprocessing
    ctx = multiprocessing.get_context('fork')
    running, stop = ctx.Event(), ctx.Event()
    here, there = ctx.Pipe()

    def probe():
        call, longest = make_call(), 0.0
        call()      # connects
        while not stop.is_set():
            t0 = time.perf_counter()
            call()
            longest = max(longest, time.perf_counter() - t0)
            running.set()
        there.send(longest * 1000)

    proc = ctx.Process(target=probe)
    proc.start()
    running.wait(30)
    t0 = time.perf_counter()
    work()
    seconds = time.perf_counter() - t0
    stop.set()
    longest = here.recv()
    proc.join()
    return seconds, longest


def run_bulk(wd):
    """retry_failed() of SCALE_FAILED jobs, and the longest PING (Redis) or
    push() (SQLite: another writer) meanwhile."""
    mpqueue.clean(wd.queue)
    fill(wd, failed=SCALE_FAILED)
    if wd.driver == 'sqlite':
        def make_call():
            return functools.partial(mpqueue.push, wd.queue, wd.jobs.noop)
    else:
        def make_call():
            import redis
            return redis.Redis.from_url(wd.redis_url).ping
    seconds, longest = longest_call(make_call, lambda: mpqueue.retry_failed(wd.queue))
    mpqueue.clean(wd.queue)
    return {'seconds': seconds, 'longest_ms': longest}


def run_delayed_pushing(wd, args, problems):
    """--delayed-jobs jobs pushed one by one over --delayed-seconds, each due
    DELAYED_DELAY after its push: how late they start, while the pushes go on."""
    wd.configure(args.workers, args.model)
    pool = Pool(wd).start()
    try:
        wait_ready(wd, pool, args.workers)
        values, error = run_values(wd, pool, 'delayed', args.delayed_jobs, DELAYED_DELAY,
                                   args.delayed_seconds / args.delayed_jobs, wd.jobs.delayed)
    finally:
        problems += stop_problems(pool.stop())
    if error:
        problems.append('delayed while pushing: ' + error)
    return dict(ms_summary(values), jobs=args.delayed_jobs, done=len(values))


def pool_pss_mb(wd, queues, problems):
    """PSS (MB) of a ready pool of ``queues`` queues x 1 worker."""
    wd.configure(1, mpqueue.MODEL_DISTRIBUTE, queues)
    pool = Pool(wd).start()
    try:
        deadline_wait(lambda: len(pool.tree()) >= 1 + 2 * queues, 120,
                      'a pool of %d processes' % (1 + 2 * queues), pool=pool)
        time.sleep(PSS_SETTLE)
        return sum(pss_kb(pid) or 0 for pid in pool.tree()) / 1024.0
    finally:
        problems += stop_problems(pool.stop())


def run_scale(args, selected):
    report = {'machine': machine_info(), 'code': CODE, 'drivers': {}, 'problems': []}
    drivers = [args.driver] if args.driver else ['sqlite', 'redis']
    if 'redis' in drivers and not redis_answers(args.redis_url):
        print('warning: Redis does not answer at %s; measuring SQLite only' % args.redis_url,
              file=sys.stderr)
        drivers.remove('redis')
    for driver in drivers:
        wd = Workdir(driver, args.redis_url, args.redis_prefix, args.keep)
        out = report['drivers'][driver] = {}
        problems = []
        try:
            config = wd.configure(args.workers, args.model)
            if 'reads' in selected:
                out['reads'] = run_reads(wd, config)
            if 'bulk' in selected:
                out['bulk'] = run_bulk(wd)
            if 'delayed' in selected:
                out['delayed'] = run_delayed_pushing(wd, args, problems)
            if 'memory' in selected:
                out['pss_mb'] = {q: pool_pss_mb(wd, q, problems) for q in SCALE_QUEUES}
        except BenchmarkError as exc:
            problems.append(str(exc))
        finally:
            if problems:
                problems.append('pool log:\n' + wd.log_tail())
            wd.close(problems)
            report['problems'] += ['%s: %s' % (driver, p) for p in problems]
    return report


def scale_rows(report):
    """(figure, value per driver) rows of a --scale report."""
    drivers = report['drivers']
    rows = []

    def add(label, get, digits=2):
        values = []
        for d in drivers.values():
            try:
                values.append(fmt(get(d), digits))
            except (KeyError, TypeError):
                values.append('n/a')
        rows.append((label,) + tuple(values))
    for n in SCALE_BACKLOGS:
        for name in ('status', 'depth', 'metrics', 'dashboard'):
            add('%s ms, %s waiting + %s failed' % (name, fmt(n), fmt(SCALE_FAILED)),
                lambda d: d['reads'][n][name])
        add('status ms while another process writes, %s waiting' % fmt(n),
            lambda d: d['reads'][n]['status_locked'])
    add('retry_failed() of %s failed jobs, s' % fmt(SCALE_FAILED), lambda d: d['bulk']['seconds'])
    add('longest push() (sqlite) / PING (redis) meanwhile, ms',
        lambda d: d['bulk']['longest_ms'])
    for k in ('p50_ms', 'p99_ms', 'max_ms'):
        add('delayed lateness while pushing, %s ms' % k[:-3], lambda d: d['delayed'][k])
    for q in SCALE_QUEUES:
        add('PSS of %d queue(s) x 1 worker, MB' % q, lambda d: d['pss_mb'][q], 1)
    first, last = SCALE_QUEUES[0], SCALE_QUEUES[-1]
    add('PSS per added queue, MB', lambda d: (d['pss_mb'][last] - d['pss_mb'][first]) /
        (last - first))
    return [('figure',) + tuple(drivers)] + rows


def print_scale(report):
    m = report['machine']
    print('mpqueue at scale (%s); python %s, %s CPUs, load average %s at start\n' % (
        report['code'], m['python'], m['cpus'], ' '.join('%.2f' % x for x in m['load_average'])))
    for row in scale_rows(report):
        print('| %s |' % ' | '.join(row))


# -- main ----------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Benchmark mpqueue on this machine (see the docstring of this file).')
    p.add_argument('--driver', choices=('sqlite', 'redis', 'redis-cluster', 'redis-sentinel'),
                   help='the broker (default sqlite; --scale: sqlite and redis)')
    p.add_argument('--redis-url', default=None,
                   help='Redis for --driver redis (default %s); a node of the cluster for '
                   '--driver redis-cluster (default %s); the redis+sentinel:// URL for '
                   '--driver redis-sentinel (default %s)' % (REDIS_URL, CLUSTER_URL,
                                                              SENTINEL_URL))
    p.add_argument('--redis-prefix', default='mpqbench',
                   help='key prefix of the Redis driver (default %(default)s)')
    p.add_argument('--workers', type=int, default=4, help='worker processes (default 4)')
    p.add_argument('--jobs', type=int, default=20000,
                   help='jobs for push, push_many and drain (default 20000)')
    p.add_argument('--model', choices=(mpqueue.MODEL_DISTRIBUTE, mpqueue.MODEL_GRAB),
                   default=mpqueue.MODEL_DISTRIBUTE)
    p.add_argument('--only', help='comma-separated workloads among %s (--scale: among %s)'
                   % (','.join(WORKLOADS), ','.join(SCALE_PARTS)))
    p.add_argument('--idle-seconds', type=float, default=10.0,
                   help='how long to measure the idle pool (default 10)')
    p.add_argument('--json', action='store_true', help='print JSON instead of a table')
    p.add_argument('--scaling', action='store_true',
                   help='drain throughput with 1, 2, 4, 8 workers, both brokers and models')
    p.add_argument('--svg', default=os.path.join(os.path.dirname(HERE), 'docs', 'scaling.svg'),
                   help='where --scaling writes its chart (default docs/scaling.svg, which '
                        'the guide shows)')
    p.add_argument('--scale', action='store_true',
                   help='costs that grow with the queue: reads behind a backlog, bulk retry, '
                   'delayed jobs while pushing, PSS per queue')
    p.add_argument('--delayed-jobs', type=int, default=10000,
                   help='--scale: delayed jobs pushed (default %(default)s)')
    p.add_argument('--delayed-seconds', type=float, default=10.0,
                   help='--scale: ... over this many seconds (default %(default)s)')
    p.add_argument('--code', default=CODE,
                   help='the checkout whose mpqueue to measure (default: this one)')
    p.add_argument('--keep', action='store_true',
                   help='keep the temporary directory (config, jobs, logs, SQLite file)')
    args = p.parse_args(argv)
    if args.redis_url is None:
        args.redis_url = {'redis-cluster': CLUSTER_URL,
                          'redis-sentinel': SENTINEL_URL}.get(args.driver, REDIS_URL)
    if args.scale and args.driver not in (None, 'sqlite', 'redis'):
        p.error('--scale measures --driver sqlite or redis')
    if not args.scale:
        args.driver = args.driver or 'sqlite'
    parts = SCALE_PARTS if args.scale else WORKLOADS
    selected = {w.strip() for w in (args.only or ','.join(parts)).split(',') if w.strip()}
    if selected - set(parts) or not selected:
        p.error('--only takes a comma-separated list of %s' % ', '.join(parts))
    if args.workers < 1 or args.jobs < 1 or args.idle_seconds <= 0:
        p.error('--workers and --jobs must be >= 1 and --idle-seconds > 0')
    if not os.path.isdir('/proc/self'):
        p.error('this benchmark reads /proc: it runs on Linux only')
    return args, selected


def main(argv=None):
    args, selected = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    try:
        if args.scale:
            report = run_scale(args, selected)
            if args.json:
                print(json.dumps(report, indent=1))
            else:
                print_scale(report)
        elif args.scaling:
            report = run_scaling(args)
            svg = scaling_svg(report)
            with open(args.svg, 'w') as f:
                f.write(svg)
            report['svg'] = os.path.abspath(args.svg)
            if args.json:
                print(json.dumps(report, indent=1))
            else:
                m = report['machine']
                print('mpqueue drain throughput, jobs/s (first to last execution), %s jobs per '
                      'run; python %s, %s CPUs, load average %s at start\n' % (
                          fmt(report['jobs']), m['python'], m['cpus'],
                          ' '.join('%.2f' % x for x in m['load_average'])))
                print(scaling_markdown(report))
                print('\nchart: %s' % report['svg'])
        else:
            if args.driver != 'sqlite' and not redis_answers(args.redis_url):
                print('benchmark: error: Redis does not answer at %s' % args.redis_url,
                      file=sys.stderr)
                return 2
            report = run_benchmark(args, selected)
            if args.json:
                print(json.dumps(report, indent=1))
            else:
                print_table(report)
    except KeyboardInterrupt:
        _stop_all_pools()
        print('benchmark: interrupted', file=sys.stderr)
        return 130
    except mpqueue.MPQueueError as exc:
        _stop_all_pools()
        print('benchmark: error: %s' % exc, file=sys.stderr)
        return 2
    if report['problems']:
        print('\nPROBLEMS:', file=sys.stderr)
        for problem in report['problems']:
            print('- ' + problem, file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
