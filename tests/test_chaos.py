"""The chaos soak: two pools on one queue, processes killed and stopped at
random under load, the broker killed and restarted; afterwards nothing is
lost, no job ran twice at the same time, and both pools serve again.

Per variant (Redis or SQLite broker, distribute or grab model): two pools of
three workers share queue ``q`` on a broker of the test's own (a private
``redis-server`` with ``appendonly yes`` and ``appendfsync always``, or one
SQLite file).  A thread pushes ``JOBS`` short jobs (2-8 ms) spread over the
chaos time while the test, for ``MPQ_CHAOS_SECONDS`` (default 20, at most
60), picks an action every 0.3-1.2 s:

- SIGKILL a worker (half the actions) or a master (a fifth);
- SIGSTOP a worker for 1.5-2.5 s, then SIGCONT it (the rest);
- a worker to kill or stop is, seven times out of ten, one in a job (the
  jobs are short and the workers mostly idle, so a blind pick would mostly
  hit idle ones);
- Redis: SIGKILL the broker at 30 % and 70 % of the chaos time and start it
  again 0.5-2 s later on the same port and data directory;
- SQLite (no broker to restart): each kill goes first to a process of the
  kind chosen that holds the database's write lock (the WAL write lock, as
  ``/proc/locks`` shows it), watched for up to 0.25 s, while single-job
  pushes keep that lock busy.  Masters write in both models, workers only
  in the grab model.

Each run of a job records its start and its end (time, pid) on its own
connection to the test Redis, which the chaos never touches.  A run without
an end (its process was killed) ends when that process was killed, or with
its master.  Once the chaos is over and every stopped process resumed, the
test waits for the queue to drain, then checks:

- lost == 0: every job pushed ran to its end at least once (those of a
  push that raised too, if a job of it ran: it was stored; in a chain, the
  links up to the first failing one);
- no job ran twice *at the same time* (its runs' [start, end] intervals
  never overlap); running twice one after the other is at-least-once
  delivery and only counted;
- both pools are back to full strength and each runs a new job;
- once the pools stopped, ``clean`` leaves nothing of the queue in the
  broker: no Redis key under its prefix, no row in an SQLite table.

The "-limits" variants give the queue limits (``LIMITS``) and most pushes
limit names (``LIMIT_CHOICES``); they also check that no limit name was ever
held by more runs at one instant than its concurrency (a killed run holds it
until its process was killed: its slot is given back later, by its
recovery, so this is a lower bound of the slots held), and that once the
queue drained no slot is held and no job waits for one.

The "-flows" variants push batches (2-5 members and a ``then``) and chains
of 3 instead (``BATCHES`` and ``CHAINS`` per 20 s of chaos), a member or a
link failing for good (``mpqueue.Fail``, once its end is recorded) one time
in ``FAIL_ONE``.  They also check that no dependent started before the last
run of each of its parents ended (a parent killed after its end and run
again counts by its rerun); that no link after a failing one started, and
the queue counted one cancel per such link; that the failed jobs are the
failing ones; that nothing is left ``blocked``; and that a ``then`` that
ran to its end more than once did so only because the process of the run
before (or its master) was killed once that run started (at-least-once
delivery: its outcome was lost), never because it was released twice.

One line of figures per run is printed (``pytest -s``), kept as test
properties (``record_property``, in the JUnit XML) and appended as JSON to
``$MPQ_CHAOS_REPORT`` if set.  ``MPQ_CHAOS_SEED`` replays a run's choices
(the timing of the processes still differs).
"""

import collections
import contextlib
import functools
import json
import math
import os
import random
import signal
import sqlite3
import threading
import time

import psutil
import pytest

import mpqueue
from pool_harness import E2E, queue_conf, wait_for
from redis_server import RedisServer, free_port
from test_limits import most_at_once

CHAOS_SECONDS = min(60.0, float(os.environ.get('MPQ_CHAOS_SECONDS') or 20))
JOBS = 2000
WORKERS = 3
#: chaos actions: (weight, name)
ACTIONS = ((0.5, 'kill_worker'), (0.2, 'kill_master'), (0.3, 'stop_worker'))
PREFER_BUSY = 0.7       # how often a worker to kill or stop is picked among those in a job
BROKER_KILLS_AT = (0.3, 0.7)        # fractions of the chaos time
DRAIN_TIMEOUT = 90

CHAOS_JOBS = '''
RUNS_KEY = KEY + ':runs'


def chaos_job(tag, seconds, limits=(), fail=False):
    """Records its start, works ``seconds``, records its end: "s|e tag time
    pid", the start followed by the limit names the job holds; then, with
    ``fail``, fails for good."""
    c = client()
    c.rpush(RUNS_KEY, ' '.join(['s %s %r %d' % (tag, time.time(), os.getpid())] + list(limits)))
    time.sleep(seconds)
    c.rpush(RUNS_KEY, 'e %s %r %d' % (tag, time.time(), os.getpid()))
    if fail:
        raise mpqueue.Fail('meant to fail')
'''

VARIANTS = ['redis-distribute', 'redis-grab', 'sqlite-distribute', 'sqlite-grab',
            'redis-grab-limits', 'sqlite-distribute-limits',
            'redis-distribute-flows', 'sqlite-grab-flows']
#: the queue's limits in a "-limits" variant; a push's limit names are one of
#: LIMIT_CHOICES (the same for a whole batch, so a batch can fill a name)
LIMITS = {'shared': {'concurrency': 2}, 'customer:*': {'concurrency': 1}}
LIMIT_CHOICES = [(), ('shared',), ('shared',), ('customer:1',), ('customer:2',), ('customer:3',),
                 ('shared', 'customer:1'), ('shared', 'customer:2')]
#: a "-flows" variant pushes, over the chaos time, BATCHES batches (2-5
#: members and a then) and CHAINS chains of 3 (per 20 s of chaos); a member
#: or a link fails for good one time in FAIL_ONE
BATCHES, CHAINS = (round(n * CHAOS_SECONDS / 20) for n in (1000, 250))
FAIL_ONE = 10


class ChaosE2E(E2E):
    """The harness with the pools' broker on a private Redis (``broker``) or on
    SQLite; the jobs record their runs on the test Redis either way."""

    broker = None

    def driver_source(self):
        if self.broker is None:
            return super().driver_source()
        return 'mpqueue.RedisDriver(url=%r, prefix=%r)' % (self.broker.url, self.prefix)

    @property
    def runs_key(self):
        return self.key + ':runs'

    def runs(self):
        """``{tag: [{'start', 'end', 'pid', 'limits'}, ...]}`` of every run begun."""
        runs, running = collections.defaultdict(list), {}
        for raw in self.redis.lrange(self.runs_key, 0, -1):
            kind, tag, when, pid, *limits = raw.decode().split()
            if kind == 's':
                run = {'start': float(when), 'end': None, 'pid': int(pid), 'limits': limits}
                runs[tag].append(run)
                running[tag, int(pid)] = run
            else:
                running.pop((tag, int(pid)))['end'] = float(when)
        return runs


@pytest.fixture
def e2e(tmp_path, redis_url, redis_db, proc_reaper, request):
    broker_kind = request.node.callspec.params['variant'].split('-')[0]
    server = None
    if broker_kind == 'redis':
        server = RedisServer(free_port(), '--appendonly', 'yes', '--appendfsync', 'always')
        server.start()
    try:
        harness = ChaosE2E(tmp_path, redis_url, redis_db, proc_reaper, request.node.name,
                           broker_kind)
        harness.broker = server
        harness.write_jobs(CHAOS_JOBS)
        try:
            yield harness
        finally:
            if server is not None and not server.running:
                server.start()      # the pools stop faster with their broker there
            harness.close()
    finally:
        if server is not None:
            server.stop()


# -- the processes of a pool ------------------------------------------------------------

def live(proc):
    try:
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def tree(pool):
    """``{master pid: [worker pids]}`` of a pool, live processes only."""
    out = {}
    try:
        masters = psutil.Process(pool.proc.pid).children()
    except psutil.NoSuchProcess:
        return out
    for master in masters:
        if not live(master):
            continue
        try:
            out[master.pid] = [w.pid for w in master.children() if live(w)]
        except psutil.NoSuchProcess:
            pass
    return out


def write_lock_holder(db_file, candidates, window):
    """A pid of ``candidates`` that holds the SQLite WAL write lock of
    ``db_file`` (byte 120 of its ``-shm`` file), watched for ``window`` s."""
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        try:
            suffix = ':%d' % os.stat(db_file + '-shm').st_ino
            with open('/proc/locks') as fh:
                lines = fh.read().splitlines()
        except OSError:
            return None
        for line in lines:
            # "17: POSIX  ADVISORY  WRITE 32538 fe:00:2148447 120 120"; "->": a waiter
            parts = line.split()
            if len(parts) == 8 and parts[3] == 'WRITE' and parts[6] == '120' \
                    and parts[5].endswith(suffix) and int(parts[4]) in candidates:
                return int(parts[4])
        time.sleep(0.0005)
    return None


# -- pushing --------------------------------------------------------------------------

class Pusher(threading.Thread):
    """Pushes ``units`` evenly over ``seconds``, each in one call.  A unit is
    ``(kind, jobs, limits)``, its jobs ``(tag, seconds, fail)`` run as
    ``chaos_job``: kind ``'jobs'``: ``push_many`` under the limit names
    ``limits``; ``'chain'``: ``chain``; ``'batch'``: ``batch``, its last job
    the ``then``.  A push that raises DriverError may or may not have been
    stored (all of the unit or nothing): the unit is kept apart
    (``uncertain``), and pushed again under new tags.  ``pushed``: the units
    stored, under their tags; ``ids``: tag -> job id."""

    def __init__(self, jobs, units, seconds):
        super().__init__(daemon=True)
        self.jobs, self.units, self.seconds = jobs, units, seconds
        self.pushed, self.uncertain, self.ids = [], [], {}
        self.refused = 0
        self.error = None

    def run(self):
        try:
            t0 = time.monotonic()
            for i, unit in enumerate(self.units):
                time.sleep(max(0.0, t0 + self.seconds * i / len(self.units) - time.monotonic()))
                self._push(*unit)
        except BaseException as exc:    # reported by the test
            self.error = exc

    def _push(self, kind, jobs, limits):
        deadline = time.monotonic() + 60
        for again in range(1000):
            unit = (kind, [(tag if not again else '%s.r%d' % (tag, again), sec, fail)
                           for tag, sec, fail in jobs], limits)
            calls = [functools.partial(self.jobs.chaos_job, tag, sec, limits, fail)
                     for tag, sec, fail in unit[1]]
            try:
                if kind == 'chain':
                    ids = mpqueue.chain('q', calls)
                elif kind == 'batch':
                    members, then = mpqueue.batch('q', calls[:-1], then=calls[-1])
                    ids = members + [then]
                else:
                    ids = mpqueue.push_many('q', calls, limit=list(limits) or None)
            except mpqueue.DriverError:
                self.refused += 1
                self.uncertain.append(unit)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            self.pushed.append(unit)
            self.ids.update(zip(tags(unit), ids))
            return


def tags(*units):
    """The tags of the jobs of ``units``, in order."""
    return [tag for _, jobs, _ in units for tag, _, _ in jobs]


def flow_units(rnd, batches, chains):
    """``batches`` batches of 2-5 members and a then, and ``chains`` chains
    of 3, in a random order; jobs of 2-8 ms, a member or a link failing for
    good one time in FAIL_ONE (a then never)."""
    def job(tag, may_fail=True):
        return tag, rnd.uniform(0.002, 0.008), may_fail and rnd.random() < 1 / FAIL_ONE
    units = [('batch', [job('b%04d-%d' % (i, j)) for j in range(rnd.randint(2, 5))] +
              [job('b%04d-then' % i, may_fail=False)], ()) for i in range(batches)]
    units += [('chain', [job('c%04d-%d' % (i, j)) for j in range(3)], ()) for i in range(chains)]
    rnd.shuffle(units)
    return units


def job_units(rnd, n, batch, limit_choices=None):
    """``n`` jobs of 2-8 ms, ``batch`` a push, each push under limit names
    picked from ``limit_choices`` (none if not given)."""
    return [('jobs', [('job-%04d' % j, rnd.uniform(0.002, 0.008), False)
                      for j in range(i, min(n, i + batch))],
             rnd.choice(limit_choices) if limit_choices else ())
            for i in range(0, n, batch)]


# -- the chaos ----------------------------------------------------------------------------

class Chaos:
    """Kills and stops the pools' processes (and the Redis broker) at random;
    remembers when each process it killed died (a master's workers die with it)."""

    def __init__(self, e2e, pools, rnd, sqlite_file=None):
        self.e2e, self.pools, self.rnd = e2e, pools, rnd
        self.broker = e2e.broker
        self.sqlite_file = sqlite_file
        self.died = {}              # pid -> time.time() it was killed
        self.stopped = {}           # pid -> monotonic time to resume it
        self.counts = collections.Counter()

    def _kill(self, pid, kind, workers=()):
        self.e2e.reaper.add(pid)
        now = time.time()
        for p in (pid,) + tuple(workers):
            self.died.setdefault(p, now)
            self.stopped.pop(p, None)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.counts[kind] += 1

    def act(self):
        trees = [tree(pool) for pool in self.pools]
        masters = {m: ws for t in trees for m, ws in t.items()}
        workers = {w: m for m, ws in masters.items() for w in ws if w not in self.died}
        roll, name = self.rnd.random(), ACTIONS[-1][1]
        for weight, action in ACTIONS:
            if roll < weight:
                name = action
                break
            roll -= weight
        if self.sqlite_file and name.startswith('kill'):
            # a process of the kind chosen that holds the write lock, if any
            # does within the window (distribute-model workers never write)
            holder = write_lock_holder(
                self.sqlite_file, set(masters if name == 'kill_master' else workers), 0.25)
            if holder in masters:
                return self._kill(holder, 'master_kills_holding_lock', masters[holder])
            if holder is not None:
                return self._kill(holder, 'worker_kills_holding_lock')
        if name != 'kill_master' and self.rnd.random() < PREFER_BUSY:
            busy = {run['pid'] for rs in self.e2e.runs().values() for run in rs
                    if run['end'] is None} & set(workers)
            workers = {pid: workers[pid] for pid in busy} or workers
        if name == 'kill_master' and masters:
            pid = self.rnd.choice(sorted(masters))
            self._kill(pid, 'master_kills', masters[pid])
        elif name == 'kill_worker' and workers:
            self._kill(self.rnd.choice(sorted(workers)), 'worker_kills')
        elif name == 'stop_worker':
            running = sorted(set(workers) - set(self.stopped))
            if running:
                pid = self.rnd.choice(running)
                self.e2e.reaper.add(pid)
                os.kill(pid, signal.SIGSTOP)
                self.stopped[pid] = time.monotonic() + self.rnd.uniform(1.5, 2.5)
                self.counts['stops'] += 1

    def resume(self, everyone=False):
        now = time.monotonic()
        for pid, when in list(self.stopped.items()):
            if everyone or now >= when:
                del self.stopped[pid]
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def run(self, seconds):
        """The chaos, for ``seconds``; returns when it is over, every stopped
        process resumed and the broker up."""
        t0 = time.monotonic()
        end = t0 + seconds
        broker_kills = [t0 + f * seconds for f in BROKER_KILLS_AT] if self.broker else []
        broker_back = None
        next_act = t0 + self.rnd.uniform(0.3, 1.2)
        while True:
            now = time.monotonic()
            self.resume()
            if broker_kills and now >= broker_kills[0]:
                broker_kills.pop(0)
                self.broker.kill()
                self.counts['broker_restarts'] += 1
                broker_back = now + self.rnd.uniform(0.5, 2.0)
            if broker_back is not None and now >= broker_back:
                self.broker.start()
                broker_back = None
            if now >= end:
                break
            if now >= next_act:
                self.act()
                next_act = time.monotonic() + self.rnd.uniform(0.3, 1.2)
            time.sleep(0.02)
        self.resume(everyone=True)
        if broker_back is not None:
            self.broker.start()


# -- what happened -------------------------------------------------------------------------

def run_end(run, died):
    """A run's end: its own, else when its process was killed, else never."""
    if run['end'] is not None:
        return run['end']
    return died.get(run['pid'], math.inf)


def analyse(runs, died):
    """Per job: its runs as [start, end] intervals (a run without an end ends
    when its process was killed; if that is not known, it is taken as still
    running).  Returns the figures and the jobs whose runs overlap."""
    figures = collections.Counter()
    concurrent = {}
    for tag, rs in runs.items():
        spans = []
        for run in rs:
            end = run_end(run, died)
            if run['end'] is None:
                figures['killed_runs' if end < math.inf else 'unexplained_open_runs'] += 1
            spans.append((run['start'], end, run['pid']))
        spans.sort()
        figures['runs'] += len(rs)
        latest = -math.inf
        for start, end, _ in spans:
            if start < latest:
                concurrent[tag] = spans
            latest = max(latest, end)
        if tag not in concurrent and sum(1 for r in rs if r['end'] is not None) > 1:
            figures['sequential_duplicates'] += 1
    figures['concurrent_duplicates'] = len(concurrent)
    return figures, concurrent


def outcomes(units):
    """What must become of the jobs of ``units``: the tags that must run to
    their end, those that must end cancelled (the links of a chain after one
    that fails) and those that must fail."""
    must_run, cancelled, failing = set(), set(), set()
    for kind, jobs, _ in units:
        broken = False
        for tag, _, fail in jobs:
            if broken:
                cancelled.add(tag)
                continue
            must_run.add(tag)
            if fail:
                failing.add(tag)
                broken = kind == 'chain'
    return must_run, cancelled, failing


def check_flows(units, runs, died):
    """The dependents of ``units`` (the links of a chain after the first, a
    batch's then) against their parents' runs, ``{finding: [tags]}``:

    - 'early': a dependent started before the last run of a parent ended (a
      killed run ends when its process was killed; a parent killed after
      its end and run again counts by its rerun's end);
    - 'cancelled_ran': a link after a failing one started;
    - 'then_reruns': a then ran to its end again (one entry per rerun);
    - 'then_reruns_unexplained': ... though the process of the run before
      was not killed once that run started (at-least-once delivery explains
      only that: the kill, or its master's, lost the run's outcome; a
      worker whose master was killed may still end its run a moment later):
      its release was delivered twice."""
    found = collections.defaultdict(list)
    cancelled = outcomes(units)[1]

    def last_end(tag):
        return max((run_end(run, died) for run in runs.get(tag, ())), default=-math.inf)
    for kind, jobs, _ in units:
        order = [tag for tag, _, _ in jobs]
        if kind == 'chain':
            dependents = [(child, [parent]) for parent, child in zip(order, order[1:])]
        elif kind == 'batch':
            dependents = [(order[-1], order[:-1])]
        else:
            continue
        for child, parents in dependents:
            starts = [run['start'] for run in runs.get(child, ())]
            if child in cancelled:
                if starts:
                    found['cancelled_ran'].append(child)
            elif starts and min(starts) < max(last_end(parent) for parent in parents):
                found['early'].append(child)
        if kind == 'batch':
            ended = sorted((run for run in runs.get(order[-1], ()) if run['end'] is not None),
                           key=lambda run: run['start'])
            for run in ended[:-1]:
                found['then_reruns'].append(order[-1])
                if not run['start'] <= died.get(run['pid'], -math.inf):
                    found['then_reruns_unexplained'].append(order[-1])
    return found


def most_per_limit(runs, died):
    """``{limit name: the most runs holding it at one instant}``, of the runs'
    [start, end] intervals as ``analyse`` ends them."""
    records = [{'time': when, 'event': event, 'name': name}
               for rs in runs.values() for run in rs for name in run['limits']
               for when, event in ((run['start'], 'start'), (run_end(run, died), 'end'))]
    return {name: most_at_once(records, name) for name in {r['name'] for r in records}}


def left_after_clean(e2e, sqlite_file):
    """What the broker still holds of queue ``q`` once the pools stopped and
    ``clean`` ran: its Redis keys, or its rows in each SQLite table that has
    a queue column (``{name: how many}``)."""
    for pool in e2e.pools:
        pool.stop()
        pool.kill_leftovers()
    mpqueue.clean('q')
    if sqlite_file is None:
        client = e2e.broker.client()
        try:
            return {key.decode(): 1 for key in
                    client.scan_iter(match='%s:{q}:*' % e2e.prefix, count=1000)}
        finally:
            client.close()
    with contextlib.closing(sqlite3.connect(sqlite_file)) as db:
        tables = [name for name, in db.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'table' AND name LIKE 'mpq%'")]
        rows = {table: db.execute('SELECT COUNT(*) FROM %s WHERE queue = ?' % table,
                                  ('q',)).fetchone()[0]
                for table in tables
                if 'queue' in [col[1] for col in db.execute('PRAGMA table_info(%s)' % table)]}
    return {table: n for table, n in rows.items() if n}


def pool_of(pid, pools):
    for pool in pools:
        try:
            family = {p.pid for p in psutil.Process(pool.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
        if pid in family:
            return pool.name
    return None


def report(line):
    text = ' '.join('%s=%s' % kv for kv in line.items())
    print('\n[chaos] ' + text)
    path = os.environ.get('MPQ_CHAOS_REPORT')
    if path:
        with open(path, 'a') as fh:
            fh.write(json.dumps(line) + '\n')


# -- the soak -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(CHAOS_SECONDS + 240)
@pytest.mark.parametrize('variant', VARIANTS)
def test_chaos_soak(e2e, variant, record_property):
    broker_kind, model, *extra = variant.split('-')
    limited, flows = 'limits' in extra, 'flows' in extra
    seed = int(os.environ.get('MPQ_CHAOS_SEED') or random.SystemRandom().randrange(10 ** 6))
    rnd = random.Random(seed)
    # fail_number: the kills count as attempts; a job fails only when it is meant to (Fail)
    q = queue_conf(model=model, worker_number=WORKERS, fail_number=50, fail_expire=0.05,
                   limits=LIMITS if limited else {})
    pools = [e2e.pool(q, name='chaos-a').start(), e2e.pool(q, name='chaos-b').start()]
    jobs = e2e.import_jobs()
    sqlite_file = str(e2e.tmp_path / 'broker.db') if broker_kind == 'sqlite' else None
    # SQLite: one job per push, many small transactions on the write lock
    units = flow_units(rnd, BATCHES, CHAINS) if flows else job_units(
        rnd, JOBS, batch=1 if sqlite_file else 10,
        limit_choices=LIMIT_CHOICES if limited else None)
    pusher = Pusher(jobs, units, CHAOS_SECONDS * 0.9)
    chaos = Chaos(e2e, pools, rnd, sqlite_file)
    pusher.start()
    try:
        chaos.run(CHAOS_SECONDS)
    finally:
        chaos.resume(everyone=True)
    over_at = time.monotonic()
    pusher.join(60)
    assert not pusher.is_alive(), 'the pusher did not finish'
    assert pusher.error is None, pusher.error

    last = {}

    def stored(runs):
        """The units pushed, and those whose push raised but that were stored
        (a job of theirs ran)."""
        return pusher.pushed + [unit for unit in pusher.uncertain
                                if any(tag in runs for tag in tags(unit))]

    def drained():
        try:
            last.update(mpqueue.depth('q'))
        except mpqueue.DriverError as exc:
            last['error'] = str(exc)
            return False
        if any(last[state] for state in ('waiting', 'delayed', 'reserved', 'working', 'blocked')):
            return False
        runs = e2e.runs()
        ended = {tag for tag, rs in runs.items() if any(r['end'] for r in rs)}
        failed = {info['id'] for info in mpqueue.failed_jobs('q', count=10 ** 6)}
        last['missing'] = len([t for t in outcomes(stored(runs))[0] if t not in ended
                               and pusher.ids.get(t) not in failed])
        return not last['missing']
    pools[0].wait(drained, DRAIN_TIMEOUT, lambda: 'the queue to drain (last %r)' % last)
    drain_s = time.monotonic() - over_at
    runs = e2e.runs()
    figures, concurrent = analyse(runs, chaos.died)
    final = mpqueue.depth('q')
    units = stored(runs)
    _, cancelled, failing = outcomes(units)
    found = check_flows(units, runs, chaos.died)
    failed = mpqueue.failed_jobs('q', count=10 ** 6)
    most = most_per_limit(runs, chaos.died)
    concurrency = {name: (LIMITS.get(name) or LIMITS['customer:*'])['concurrency']
                   for name in most}

    def held_slots():
        return {d['name']: (d['running'], d['waiting']) for d in mpqueue.limits('q')
                if d['running'] or d['waiting']}
    held, deadline = held_slots(), time.monotonic() + 30     # a recovery may lag
    while held and time.monotonic() < deadline:
        time.sleep(0.2)
        held = held_slots()

    # both pools serve again: full strength, and each runs a new job
    for pool in pools:
        pool.wait_ready(WORKERS, timeout=30)
    full_s = time.monotonic() - over_at
    served = {}
    probes = 0

    def both_served():
        nonlocal probes
        if probes < 60:
            mpqueue.push_many('q', [functools.partial(jobs.chaos_job, 'probe-%d' % (probes + i),
                                                      0.05) for i in range(6)])
            probes += 6
        for tag, rs in e2e.runs().items():
            if tag.startswith('probe-'):
                for run in rs:
                    if run['end'] and run['pid'] not in served:
                        served[run['pid']] = pool_of(run['pid'], pools)
        return {p.name for p in pools} <= set(served.values())
    wait_for(both_served, 30, lambda: 'both pools to run a probe (ran on %r)' % served)
    left = left_after_clean(e2e, sqlite_file)

    line = {
        'variant': variant, 'seed': seed, 'chaos_s': CHAOS_SECONDS,
        'jobs': len(tags(*pusher.pushed)),
        'push_refused': pusher.refused,
        'uncertain_ran': sum(1 for tag in tags(*pusher.uncertain) if tag in runs),
        'runs': figures['runs'], 'reruns': figures['runs'] - len(runs),
        'killed_runs': figures['killed_runs'],
        'sequential_duplicates': figures['sequential_duplicates'],
        'concurrent_duplicates': figures['concurrent_duplicates'],
        'unexplained_open_runs': figures['unexplained_open_runs'],
        'worker_kills': chaos.counts['worker_kills'],
        'master_kills': chaos.counts['master_kills'],
        'worker_kills_holding_lock': chaos.counts['worker_kills_holding_lock'],
        'master_kills_holding_lock': chaos.counts['master_kills_holding_lock'],
        'stops': chaos.counts['stops'], 'broker_restarts': chaos.counts['broker_restarts'],
        'drain_s': round(drain_s, 2), 'full_strength_s': round(full_s, 2),
        'lost': last['missing'], 'failed': final['failed'], 'left_after_clean': len(left),
    }
    if flows:
        batches, chains = ([unit for unit in units if unit[0] == kind]
                           for kind in ('batch', 'chain'))
        line.update({
            'batches': len(batches),
            'batches_failing': sum(bool(failing.intersection(tags(b))) for b in batches),
            'chains': len(chains),
            'chains_broken': sum(bool(cancelled.intersection(tags(c))) for c in chains),
            'cancelled': final['cancelled'], 'blocked': final['blocked'],
            'early': len(found['early']), 'cancelled_ran': len(found['cancelled_ran']),
            'then_reruns': len(found['then_reruns']),
            'then_reruns_unexplained': len(found['then_reruns_unexplained']),
        })
    if limited:
        line.update({
            'limit_most': ','.join('%s=%d/%d' % (name, most[name], concurrency[name])
                                   for name in sorted(most)),
            'over_limit': sum(most[name] > concurrency[name] for name in most),
            'limits_reached': sum(most[name] == concurrency[name] for name in most),
            'slots_held': sum(r + w for r, w in held.values()),
        })
    report(line)
    for key, value in line.items():
        record_property(key, value)

    assert line['lost'] == 0, line
    assert not concurrent, 'jobs ran twice at the same time: %s' % '; '.join(
        '%s (id %s): %s' % (tag, pusher.ids.get(tag), [
            (round(s, 3), round(e, 3), pid) for s, e, pid in spans])
        for tag, spans in sorted(concurrent.items())[:5])
    assert final['failed'] == len(failing), [
        (f['id'], f['error_info'][-1:]) for f in failed if f['id'] not in
        {pusher.ids.get(tag) for tag in failing}][:5]
    assert figures['unexplained_open_runs'] == 0, figures
    assert not left, 'left of the queue after clean: %r' % sorted(left.items())[:10]
    if broker_kind == 'redis':
        assert chaos.counts['broker_restarts'] >= 1
    if flows:
        assert not (found['early'] or found['cancelled_ran'] or found['then_reruns_unexplained']), {
            finding: found[finding][:5]
            for finding in ('early', 'cancelled_ran', 'then_reruns_unexplained')}
        assert final['cancelled'] == len(cancelled), (final['cancelled'], len(cancelled))
        assert line['batches_failing'] and line['chains_broken'], 'no failure: nothing was checked'
    if limited:
        assert line['over_limit'] == 0, line['limit_most']
        assert most.get('shared') == 2, 'the shared limit was never full: nothing was checked'
        assert not held, 'slots held after the run (running, waiting): %r' % held


def test_analysis_finds_runs_at_the_same_time():
    # The soak's check on its own: a run without an end lasts until its
    # process was killed, or (not known) for ever; touching is not overlapping.
    runs = {
        'apart': [{'start': 1.0, 'end': 2.0, 'pid': 10}, {'start': 2.0, 'end': 3.0, 'pid': 11}],
        'killed-then-rerun': [{'start': 1.0, 'end': None, 'pid': 12},
                              {'start': 1.6, 'end': 1.7, 'pid': 13}],
        'rerun-while-on': [{'start': 1.0, 'end': None, 'pid': 14},
                           {'start': 1.2, 'end': 1.3, 'pid': 15}],
        'nested': [{'start': 1.0, 'end': 5.0, 'pid': 16}, {'start': 2.0, 'end': 3.0, 'pid': 17},
                   {'start': 6.0, 'end': 7.0, 'pid': 16}],
        'unexplained': [{'start': 1.0, 'end': None, 'pid': 18},
                        {'start': 9.0, 'end': 9.5, 'pid': 19}],
    }
    figures, concurrent = analyse(runs, {12: 1.5, 14: 1.5})
    assert sorted(concurrent) == ['nested', 'rerun-while-on', 'unexplained']
    assert (figures['runs'], figures['killed_runs'], figures['unexplained_open_runs']) == (11, 2, 1)
    assert (figures['sequential_duplicates'], figures['concurrent_duplicates']) == (1, 3)


def test_a_run_holds_its_limits_until_it_ended_or_its_process_was_killed():
    runs = {
        'killed-then-rerun': [{'start': 1.0, 'end': None, 'pid': 12, 'limits': ['shared']},
                              {'start': 2.2, 'end': 2.4, 'pid': 13, 'limits': ['shared']}],
        'both': [{'start': 1.5, 'end': 2.5, 'pid': 14, 'limits': ['shared', 'customer:1']}],
        'touching': [{'start': 2.5, 'end': 3.0, 'pid': 15, 'limits': ['customer:1']}],
        'none': [{'start': 1.0, 'end': 3.0, 'pid': 16, 'limits': []}],
    }
    assert most_per_limit(runs, {12: 2.0}) == {'shared': 2, 'customer:1': 1}
    assert most_per_limit(runs, {12: 2.3}) == {'shared': 3, 'customer:1': 1}


def test_flow_checks_find_early_dependents_cancelled_links_and_second_releases():
    def run(start, end, pid):
        return {'start': start, 'end': end, 'pid': pid, 'limits': []}
    units = [('chain', [('c-0', 0, False), ('c-1', 0, True), ('c-2', 0, False)], ()),
             ('batch', [('b-0', 0, False), ('b-1', 0, True), ('b-then', 0, False)], ()),
             ('batch', [('d-0', 0, False), ('d-then', 0, False)], ())]
    assert outcomes(units) == ({'c-0', 'c-1', 'b-0', 'b-1', 'b-then', 'd-0', 'd-then'},
                               {'c-2'}, {'c-1', 'b-1'})
    runs = {
        # c-0 ended, was killed before its outcome was written, ran again:
        # c-1 started between the two ends
        'c-0': [run(1.0, 1.1, 10), run(1.5, 1.6, 11)], 'c-1': [run(1.2, 1.3, 12)],
        # b-then ran twice: the master of its first process was killed
        # during the run, which still ended (its outcome was lost)
        'b-0': [run(1.0, 1.1, 13)], 'b-1': [run(1.0, None, 14), run(1.3, 1.4, 15)],
        'b-then': [run(1.5, 1.6, 16), run(1.8, 1.9, 17)],
        # d-then ran twice, its first process killed before that run only:
        # a second release; then c-2, a link after a failing one, started
        'd-0': [run(1.0, 1.1, 18)], 'd-then': [run(1.2, 1.3, 19), run(1.4, 1.5, 20)],
        'c-2': [run(2.0, 2.1, 21)],
    }
    died = {10: 1.2, 14: 1.2, 16: 1.55, 19: 1.15}
    found = check_flows(units, runs, died)
    assert dict(found) == {'early': ['c-1'], 'cancelled_ran': ['c-2'],
                           'then_reruns': ['b-then', 'd-then'],
                           'then_reruns_unexplained': ['d-then']}
    runs['b-1'][1]['end'] = 1.55        # b-1's rerun ended after b-then started
    assert check_flows(units, runs, died)['early'] == ['c-1', 'b-then']
