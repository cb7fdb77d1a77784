"""End-to-end harness shared by test_runtime.py and test_cli.py.

A test gets an ``E2E`` object (fixture ``e2e`` below, defined in each test
file through ``make_e2e``) that:

- writes a jobs module into ``tmp_path`` under a name unique to the test, so
  the pushing process (this one) and the workers (through ``PYTHONPATH``)
  import the same code, and a reload can be proven by rewriting the file;
- writes config files (``.py`` defining ``config``) with a ``RedisDriver`` on
  the test database and a key prefix unique to the test (or a ``SqliteDriver``
  on a file of the test's own, for ``driver='sqlite'``), pid and log files
  under ``tmp_path``;
- starts pools as real processes: ``python mpqueue_cli.py worker:start
  --config FILE`` (``Pool.start``), asks them for their status through the
  CLI, stops them at teardown whatever happened, and deletes every Redis key
  the test made.

Jobs record what they did with ``record(event, **fields)``: one JSON object
per event pushed onto a Redis list, with the pid and ``time.time()``.  Tests
read those records back with ``E2E.records``.
"""

import importlib
import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import redis

import mpqueue
from redis_server import wait_for  # noqa: F401 - the tests import it from here

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / 'mpqueue_cli.py'

# Runtime settings small enough to keep the suite fast.
STOP_GRACE = 5
CLI_TIMEOUT = 60


def alive(pid):
    """True if ``pid`` is a running process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_tree(pool):
    """A server lost: SIGKILL a pool's manage process and every descendant at
    once.  The tree is frozen first, top-down and until no new child shows up,
    so that nobody reacts to the others' death or forks a replacement; a
    process that exits meanwhile is simply gone.  Returns the killed pids."""
    tree, frozen = [psutil.Process(pool.manage_pid())], set()
    while len(frozen) < len(tree):
        for proc in tree:
            if proc.pid not in frozen:
                frozen.add(proc.pid)
                try:
                    proc.send_signal(signal.SIGSTOP)
                    tree += [c for c in proc.children() if c.pid not in {p.pid for p in tree}]
                except psutil.NoSuchProcess:
                    pass
    for proc in tree:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    if pool.proc is not None:
        pool.proc.wait(5)
    wait_for(lambda: not any(alive(p.pid) for p in tree), 5, 'the killed tree to be gone')
    return {p.pid for p in tree}


class Src:
    """A piece of Python source put verbatim into a generated config file."""

    def __init__(self, code):
        self.code = code

    def __repr__(self):
        return self.code


#: Python source put at the top of every jobs module.  ``%(url)r`` and
#: ``%(key)r`` are filled in by ``E2E.write_jobs``.
JOBS_PREAMBLE = '''\
import asyncio
import json
import os
import time

import redis

import mpqueue

REDIS_URL = %(url)r
KEY = %(key)r

_client = None
_client_pid = None


def client():
    """One Redis connection per process (never shared across a fork)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client, _client_pid = redis.Redis.from_url(REDIS_URL), os.getpid()
    return _client


def record(event, **fields):
    fields.update(event=event, pid=os.getpid(), time=time.time())
    client().rpush(KEY, json.dumps(fields, default=repr))


def attempt(tag):
    """1 the first time a job with this tag asks, 2 the second time..."""
    return client().incr(KEY + ':n:' + tag)


def _info(job_info):
    keys = ('id', 'queue', 'create_time', 'start_time', 'exec_number', 'worker_id',
            'timeout', 'fail_number', 'fail_expire', 'error_info', 'type')
    return {k: job_info.get(k) for k in keys}


# -- plain functions ---------------------------------------------------------

def ok(tag):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    record('end', tag=tag, n=n)
    return tag


def flaky(tag, fails):
    """Raises on its first ``fails`` attempts, then succeeds."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    if n <= fails:
        raise ValueError('flaky %%s attempt %%d' %% (tag, n))
    record('end', tag=tag, n=n)


def boom(tag):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    raise RuntimeError('boom-%%s-attempt-%%d' %% (tag, n))


def sleeper(tag, seconds):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    time.sleep(seconds)
    record('end', tag=tag, n=n)


def slow_once(tag, seconds):
    """Sleeps ``seconds`` on its first attempt only, then returns."""
    n = attempt(tag)
    record('start', tag=tag, n=n)
    if n == 1:
        time.sleep(seconds)
    record('end', tag=tag, n=n)


def latency(tag, pushed_at):
    started = time.time()
    record('start', tag=tag, latency=started - pushed_at, started=started)


async def async_job(tag):
    await asyncio.sleep(0.01)
    record('start', tag=tag, kind='async')
    await asyncio.sleep(0.01)
    record('end', tag=tag, kind='async')


def queue_fail_handle(job_info, exc):
    record('queue_fail', tag=job_info['id'], info=_info(job_info), exc=repr(exc))


# -- mpqueue.Job subclasses ----------------------------------------------------

class Tagged(mpqueue.Job):
    def __init__(self, tag='class-pushed'):
        self.tag = tag

    def handle(self):
        ok(self.tag)


class AsyncTagged(mpqueue.Job):
    def __init__(self, tag='async-class'):
        self.tag = tag

    async def handle(self):
        await asyncio.sleep(0.01)
        ok(self.tag)


class Boom(mpqueue.Job):
    """Always raises; its fail_handle records its job_info and returns False."""
    fail_number = 2
    fail_expire = 0.1
    returns = False

    def __init__(self, tag):
        self.tag = tag

    def handle(self):
        boom(self.tag)

    def fail_handle(self, job_info, exc):
        record('job_fail', tag=self.tag, id=job_info['id'], info=_info(job_info),
               exc=repr(exc), exc_type=type(exc).__name__)
        return self.returns


class BoomHandled(Boom):
    """Its fail_handle returns True: the queue's handler must not run."""
    returns = True


class BoomBadHandler(Boom):
    """Its fail_handle raises."""

    def fail_handle(self, job_info, exc):
        record('job_fail', tag=self.tag, id=job_info['id'], info=_info(job_info))
        raise LookupError('handler-broke-%%s' %% self.tag)


class SlowJob(mpqueue.Job):
    """Sleeps; records its fail_handle (for timeouts)."""

    def __init__(self, tag, seconds):
        self.tag, self.seconds = tag, seconds

    def handle(self):
        sleeper(self.tag, self.seconds)

    def fail_handle(self, job_info, exc):
        record('job_fail', tag=self.tag, id=job_info['id'], info=_info(job_info),
               exc=repr(exc), exc_type=type(exc).__name__)
        return False
'''

CONFIG_TEMPLATE = '''\
import logging

import mpqueue
import %(jobs)s as jobs

config = {
    'basics': {
        'name': %(name)r,
        'pid_path': %(pid_path)r,
        'driver': %(driver)s,
        'stop_grace': %(stop_grace)r,%(basics)s
    },
    'log': {'path': %(log_path)r, 'level': logging.DEBUG},
    'queue': %(queues)r,
}
'''


def queue_conf(name='q', **options):
    """A queue dict for a generated config; fast defaults for tests."""
    conf = {'name': name, 'worker_number': 2, 'sleep_seconds': 1, 'timeout': 0,
            'fail_number': 0, 'fail_expire': 0.2, 'memory_limit': 0}
    conf.update(options)
    return conf


class Pool:
    """One pool: a config file, and (once started) its manage process."""

    def __init__(self, e2e, name, queues, stop_grace=STOP_GRACE, cli_path=CLI, basics=None):
        self.e2e = e2e
        self.cli_path = Path(cli_path)
        self.name = name
        self.queues = queues
        self.pid_path = e2e.tmp_path / 'run'
        self.log_path = e2e.tmp_path / 'log'
        self.config_path = e2e.tmp_path / ('config_%s.py' % name)
        self.config_path.write_text(CONFIG_TEMPLATE % {
            'jobs': e2e.jobs_name, 'name': name, 'pid_path': str(self.pid_path),
            'driver': e2e.driver_source(), 'stop_grace': stop_grace,
            'log_path': str(self.log_path), 'queues': queues,
            'basics': ''.join('\n        %r: %r,' % kv for kv in sorted((basics or {}).items()))})
        self.proc = None
        self.pids_seen = set()
        self.procs_seen = []     # psutil.Process: the create time pins identity

    # -- files -----------------------------------------------------------------

    @property
    def pid_file(self):
        return self.pid_path / ('%s.pid' % self.name)

    @property
    def log_file(self):
        return self.log_path / ('%s.log' % self.name)

    def pid_in_file(self):
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines=60):
        try:
            text = self.log_file.read_text(errors='replace')
        except OSError:
            return '(no log file %s)' % self.log_file
        return '\n'.join(text.splitlines()[-lines:])

    # -- the CLI ---------------------------------------------------------------

    def cli(self, *args, timeout=CLI_TIMEOUT):
        return self.e2e.cli(*args, '--config', str(self.config_path), timeout=timeout,
                            cli_path=self.cli_path)

    def start(self, workers_per_queue=None):
        """``worker:start`` in the foreground, as a child of this process;
        returns once every queue has its master and its workers."""
        out = open(self.e2e.tmp_path / ('%s.out' % self.name), 'ab')
        try:
            self.proc = self.e2e.reaper.popen(
                [sys.executable, str(self.cli_path), 'worker:start', '--config',
                 str(self.config_path)],
                cwd=str(self.cli_path.parent), env=self.e2e.env(), stdout=out,
                stderr=subprocess.STDOUT)
        finally:
            out.close()
        self.e2e.pools.append(self)
        self.wait_ready(workers_per_queue)
        return self

    def start_daemon(self, *extra, command='worker:start'):
        """``worker:start -d`` (or ``command -d``): returns the CompletedProcess;
        the manage pid (from the pid file) is registered for teardown."""
        if self not in self.e2e.pools:
            self.e2e.pools.append(self)
        res = self.cli(command, '-d', *extra)
        pid = self.pid_in_file()
        if pid and alive(pid):
            self.e2e.reaper.add(pid)
        return res

    def wait_ready(self, workers_per_queue=None, timeout=20):
        def ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError('pool %r exited with %s while starting:\n%s' % (
                    self.name, self.proc.returncode, self.output()))
            pid = self.pid_in_file()
            if not pid or not alive(pid):
                return None
            try:
                rows = self.status()
            except AssertionError:
                return None
            for q in self.queues:
                want = workers_per_queue or q['worker_number']
                if len(self.masters(q['name'], rows)) != 1:
                    return None
                if len(self.workers(q['name'], rows)) != want:
                    return None
            return rows
        return self.wait(ready, timeout, 'pool %r to be up' % self.name)

    def output(self):
        try:
            return (self.e2e.tmp_path / ('%s.out' % self.name)).read_text(errors='replace')[-4000:]
        except OSError:
            return ''

    def status(self):
        """``worker:status --json``: one dict per process (manage, masters, workers)."""
        res = self.cli('worker:status', '--json')
        if res.returncode != 0:
            raise AssertionError('worker:status failed (%d): %s' % (res.returncode, res.stderr))
        rows = json.loads(res.stdout)
        for row in rows:
            pid = row.get('pid')
            if isinstance(pid, int) and pid not in self.pids_seen:
                self.pids_seen.add(pid)
                self.e2e.reaper.add(pid)
                try:
                    self.procs_seen.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
        return rows

    def masters(self, queue=None, rows=None):
        rows = self.status() if rows is None else rows
        return [r for r in rows if r['type'] == 'master' and queue in (None, r['queue'])]

    def workers(self, queue=None, rows=None):
        rows = self.status() if rows is None else rows
        return [r for r in rows if r['type'] == 'worker' and queue in (None, r['queue'])]

    def worker_pids(self, queue=None):
        return {r['pid'] for r in self.workers(queue)}

    def wait(self, cond, timeout, what):
        """``wait_for`` that adds the tail of the pool's log to the failure."""
        try:
            return wait_for(cond, timeout, what)
        except AssertionError as exc:
            raise AssertionError('%s\n--- log of pool %r ---\n%s' % (
                exc, self.name, self.log_tail())) from None

    # -- stopping --------------------------------------------------------------

    def manage_pid(self):
        if self.proc is not None:
            return self.proc.pid
        return self.pid_in_file()

    def stop(self):
        """SIGTERM (graceful), a second SIGTERM (fast) if it lingers; the
        reaper SIGKILLs whatever is left."""
        pid = self.manage_pid()
        if not pid or not alive(pid):
            self._reap_child()
            return
        self.e2e.reaper.add(pid)
        for patience in (1.0, 10.0):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline and alive(pid):
                self._reap_child()
                time.sleep(0.02)
            if not alive(pid):
                break
        self._reap_child()

    def kill_leftovers(self, timeout=5):
        """SIGKILL any process of this pool still running once it stopped
        (a worker orphaned by a dead master, say), so that nothing writes to
        Redis after the test cleaned it."""
        left = []
        for proc in self.procs_seen:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
                    left.append(proc)
            except psutil.NoSuchProcess:
                pass
        wait_for(lambda: not any(alive(p.pid) for p in left), timeout,
                 'leftover processes %s to die' % [p.pid for p in left])

    def _reap_child(self):
        if self.proc is not None:
            self.proc.poll()


class E2E:
    """Per-test state: prefix, jobs module, pools, records."""

    def __init__(self, tmp_path, redis_url, redis_db, reaper, test_name, driver='redis'):
        self.tmp_path = tmp_path
        self.driver = driver
        self.reaper = reaper
        self.redis_db_url = '%s/%d' % (redis_url, redis_db)
        token = uuid.uuid4().hex[:10]
        self.prefix = 'mpqtest-e2e-%s' % token
        self.key = '%s:records' % self.prefix
        self.jobs_name = 'jobs_%s_%s' % (''.join(c if c.isalnum() else '_' for c in test_name)[:40],
                                         token)
        self.jobs_dir = tmp_path / 'jobs'
        self.jobs_dir.mkdir(exist_ok=True)
        self.redis = redis.Redis.from_url(self.redis_db_url)
        self.pools = []
        self.write_jobs()

    def driver_source(self):
        """The broker of every pool of the test, as config source: Redis with a
        prefix of the test's own, or one SQLite file shared by its pools."""
        if self.driver == 'sqlite':
            return 'mpqueue.SqliteDriver(%r)' % str(self.tmp_path / 'broker.db')
        return 'mpqueue.RedisDriver(url=%r, prefix=%r)' % (self.redis_db_url, self.prefix)

    # -- jobs module -----------------------------------------------------------

    @property
    def jobs_file(self):
        return self.jobs_dir / ('%s.py' % self.jobs_name)

    def write_jobs(self, extra=''):
        """(Re)write the jobs module: the preamble plus ``extra`` source."""
        source = JOBS_PREAMBLE % {'url': self.redis_db_url, 'key': self.key}
        self.jobs_file.write_text(source + '\n\n' + textwrap.dedent(extra))

    def import_jobs(self):
        if str(self.jobs_dir) not in sys.path:
            sys.path.insert(0, str(self.jobs_dir))
        importlib.invalidate_caches()
        sys.modules.pop(self.jobs_name, None)
        return importlib.import_module(self.jobs_name)

    def env(self):
        env = dict(os.environ)
        env.pop('MPQUEUE_CONFIG', None)
        paths = [str(self.jobs_dir), str(REPO)]
        if env.get('PYTHONPATH'):
            paths.append(env['PYTHONPATH'])
        env['PYTHONPATH'] = os.pathsep.join(paths)
        env['PYTHONDONTWRITEBYTECODE'] = '1'
        env['PYTHONUNBUFFERED'] = '1'
        return env

    # -- pools -----------------------------------------------------------------

    def pool(self, *queues, name=None, configure=True, **kwargs):
        """A pool (not started) on ``queues`` (dicts, see ``queue_conf``);
        with ``configure`` this process pushes with the same config."""
        if not queues:
            queues = (queue_conf(),)
        name = name or 'pool-%d-%s' % (len(self.pools) + 1, self.prefix[-6:])
        pool = Pool(self, name, list(queues), **kwargs)
        if configure:
            self.configure(pool)
        return pool

    def configure(self, pool):
        self.import_jobs()
        config = runpy.run_path(str(pool.config_path), run_name='mpqueue_test_config')['config']
        mpqueue.configure(config)
        return config

    def cli(self, *args, timeout=CLI_TIMEOUT, cwd=None, env=None, cli_path=CLI):
        """Run ``python mpqueue_cli.py ARGS``; return a CompletedProcess (text).

        The process is registered with the reaper, so one that does not end
        (a second foreground pool, say) is still stopped at teardown."""
        argv = [sys.executable, str(cli_path)] + list(args)
        proc = self.reaper.popen(argv, cwd=str(cwd or Path(cli_path).parent),
                                 env=env or self.env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError('%s did not end within %ss' % (' '.join(args), timeout)) \
                from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    # -- records ---------------------------------------------------------------

    def records(self, event=None, **match):
        out = []
        for raw in self.redis.lrange(self.key, 0, -1):
            rec = json.loads(raw)
            if event is not None and rec['event'] != event:
                continue
            if all(rec.get(k) == v for k, v in match.items()):
                out.append(rec)
        return out

    # -- teardown --------------------------------------------------------------

    def close(self):
        errors = []
        for pool in self.pools:
            try:
                pool.stop()
            except Exception as exc:   # keep going: the reaper kills what is left
                errors.append(exc)
        for pool in self.pools:
            try:
                pool.kill_leftovers()
            except Exception as exc:
                errors.append(exc)
        try:
            for pool in self.pools:
                for q in pool.queues:
                    try:
                        mpqueue.clean(q['name'])
                    except mpqueue.MPQueueError:
                        pass
            for key in self.redis.scan_iter(match=self.prefix + '*', count=1000):
                self.redis.delete(key)
        finally:
            self.redis.close()
            if str(self.jobs_dir) in sys.path:
                sys.path.remove(str(self.jobs_dir))
            sys.modules.pop(self.jobs_name, None)
        if errors:
            raise errors[0]


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# -- example projects (Django, Flask) ----------------------------------------------

class ExamplePool:
    """An example project's own pool: ``mpqueue_cli.py worker:start --config``
    on the project's ``mpqueue_config.py``, with the environment the test
    shares with it; output to a file under ``tmp``, the log under
    ``env['MPQ_RUN_DIR']``."""

    def __init__(self, reaper, config, pool_name, tmp, env):
        self.reaper, self.config, self.pool_name = reaper, config, pool_name
        self.tmp, self.env = Path(tmp), env
        self.out_path = self.tmp / 'pool.out'
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env.pop('MPQUEUE_CONFIG', None)
        env.update(self.env)
        env['PYTHONUNBUFFERED'] = '1'
        with open(self.out_path, 'ab') as out:
            self.proc = self.reaper.popen(
                [sys.executable, str(CLI), 'worker:start', '--config', str(self.config)],
                cwd=str(REPO), env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def check_running(self):
        if self.proc.poll() is not None:
            raise AssertionError('the pool exited with %s\n%s' % (
                self.proc.returncode, self.diagnostics()))

    def failed_error(self, queue, job_id, timeout):
        """Wait until ``job_id`` is the only failed job of ``queue``; the last
        error of its record."""
        def failed():
            self.check_running()
            return mpqueue.failed_jobs(queue)
        try:
            jobs = wait_for(failed, timeout, 'the job to fail')
        except AssertionError as exc:
            raise AssertionError('%s\n%s' % (exc, self.diagnostics())) from None
        assert [job['id'] for job in jobs] == [job_id]
        return jobs[0]['error_info'][-1]

    def diagnostics(self):
        log = Path(self.env['MPQ_RUN_DIR']) / (self.pool_name + '.log')
        parts = []
        for label, path in (('output', self.out_path), ('log', log)):
            try:
                text = path.read_text(errors='replace')
            except OSError:
                text = '(none)'
            parts.append('--- pool %s (%s) ---\n%s' % (label, path, text[-4000:]))
        return '\n'.join(parts)

    def stop(self):
        """SIGTERM the manage process (graceful stop) and wait for it; the
        reaper SIGKILLs anything left at teardown."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.reaper.add(psutil.Process(self.proc.pid))   # remember its children
        except psutil.NoSuchProcess:
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass


class FrameworkCommand:
    """An example project's pool run through its framework's command line
    (``python manage.py mpqueue ...``, ``flask --app greeter mpqueue ...``):
    each command a process of its own, registered with the reaper, and the
    daemon's manage process too once ``worker:start -d`` has written its pid."""

    def __init__(self, reaper, prefix, cwd, env, pid_file):
        self.reaper, self.prefix, self.cwd = reaper, list(prefix), str(cwd)
        self.env, self.pid_file = env, Path(pid_file)

    def run(self, *args, timeout=CLI_TIMEOUT):
        proc = self.reaper.popen(self.prefix + list(args), cwd=self.cwd, env=self.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError('%s did not end within %ss' % (' '.join(args), timeout)) \
                from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self):
        """``worker:start -d``: the manage pid, registered with the reaper."""
        res = self.run('worker:start', '-d', timeout=60)
        assert res.returncode == 0, res
        pid = int(self.pid_file.read_text().split()[0])
        self.reaper.add(psutil.Process(pid))
        return pid

    def stop(self, pid):
        """``worker:stop``; waits until the manage process is gone."""
        res = self.run('worker:stop', timeout=60)
        assert res.returncode == 0, res
        wait_for(lambda: not alive(pid), 20, 'the pool to stop')
        return res


def delete_keys(url, prefix):
    """Delete every key of ``prefix`` (an example project's broker keys)."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=prefix + '*', count=1000):
            client.delete(key)
    finally:
        client.close()


# -- the fleet and the metrics ---------------------------------------------------

def fleet(pool):
    """``worker:status --all --json`` as {pool name: heartbeat}."""
    res = pool.cli('worker:status', '--all', '--json')
    assert res.returncode == 0, res.stderr
    return {p['name']: p for p in json.loads(res.stdout)}


def wait_fleet(pool, timeout, what, cond):
    """Poll the fleet until ``cond(fleet)`` holds; return that fleet."""
    last = {}

    def check():
        last.clear()
        last.update(fleet(pool))
        return cond(last) and dict(last)
    return pool.wait(check, timeout, lambda: '%s (fleet: %r)' % (what, last))


_NAME = r'[a-zA-Z_:][a-zA-Z0-9_:]*'
_SAMPLE = re.compile(r'^(%s)(?:\{(.*)\})? (\S+)$' % _NAME)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_exposition(text):
    """A strict reader of the Prometheus text format (0.0.4): returns
    ``{family: {'type', 'help', 'samples': {frozenset(labels): value}}}``."""
    families, current = {}, None
    assert text.endswith('\n')
    for line in text.splitlines():
        if line.startswith('# HELP ') or line.startswith('# TYPE '):
            _, kind, name, rest = line.split(' ', 3)
            assert re.fullmatch(_NAME, name), line
            family = families.setdefault(name, {'samples': {}})
            key = kind.lower()
            assert key not in family, 'a second %s line for %s' % (kind, name)
            family[key] = rest
            if key == 'type':
                assert rest in ('counter', 'gauge'), line
                assert not family['samples'], 'TYPE after the samples of %s' % name
            current = name
            continue
        match = _SAMPLE.match(line)
        assert match, 'not a sample line: %r' % line
        name, body, value = match.groups()
        assert name == current, 'sample %s outside its family block' % name
        labels = {}
        while body:
            pair = _LABEL.match(body)
            assert pair, 'bad labels in %r' % line
            labels[pair.group(1)] = re.sub(r'\\(.)', lambda m: {'n': '\n'}.get(
                m.group(1), m.group(1)), pair.group(2))
            body = body[pair.end():]
        key = frozenset(labels.items())
        assert key not in families[name]['samples'], 'duplicate series %r' % line
        families[name]['samples'][key] = float(value)
    for name, family in families.items():
        assert 'help' in family and 'type' in family, name
        assert (family['type'] == 'counter') == name.endswith('_total'), name
        assert all(math.isfinite(v) and v >= 0 for v in family['samples'].values()), name
    return families


def sample(families, name, **labels):
    return families[name]['samples'].get(frozenset(labels.items()))
