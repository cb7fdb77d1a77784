"""Two projects on one machine, each set up with the manual's snippets, as
real pools started with ``python -m mpqueue_cli worker:start``: they either
stay apart or collide loudly.

- The Quick start config (SQLite, files beside the config): two copies run
  two pools, and each project's jobs run in its own pool with its own code.
- The same config with one shared ``pid_path`` (what the snippets used to
  amount to, with ``/tmp``): the second start refuses, naming the first
  project's pool.
- The "Choosing a broker" Redis config copied into two projects, so one
  prefix for both: every later pool warns, on the terminal (``-d`` and
  foreground) and in its log, naming the other pool's host, pid and
  application.  With a prefix each, or one ``basics.app`` for both, no
  warning.

The Redis snippet's address is replaced by the test Redis, and its prefix by
one of the test's own (the same in both projects, as with a copied snippet).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import mpqueue
from docs_pages import README, section
from pool_harness import delete_keys, wait_for

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90
JOBS_PER_PROJECT = 3
DEADLINE = 30

JOBS = '''\
import os

PROJECT = os.path.basename(os.path.dirname(os.path.abspath(__file__)))


def where(pushed_by, results):
    """Record which project's code ran the job that ``pushed_by`` pushed."""
    print('printed by a job of', PROJECT, flush=True)    # the pool's stdout
    with open(results, 'a') as f:
        f.write('%s ran %s\\n' % (PROJECT, pushed_by))
'''

PUSH = '''\
import sys
import mpqueue
from mpqueue_config import config

mpqueue.configure(config)
queue = config['queue'][0]['name']
for _ in range(int(sys.argv[1])):
    mpqueue.push(queue, 'jobs:where', args=(sys.argv[2], sys.argv[3]))
'''


def readme_block(title, page=None):
    """The first ```python block of the manual's section ``title`` (the
    README's Quick start, the guide's Choosing a broker)."""
    match = re.search(r'^```python\n(.*?)^```', section(title, page), re.S | re.M)
    assert match, 'section %r has no python block' % title
    return match.group(1)


def env():
    out = {key: value for key, value in os.environ.items()
           if not key.startswith('MPQ')}
    out['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), out.get('PYTHONPATH')]))
    out['PYTHONUNBUFFERED'] = '1'
    return out


class Project:
    """A directory with a config made of a snippet of the manual and a jobs module."""

    def __init__(self, tmp, name, config_source, reaper):
        self.name, self.dir, self.reaper = name, tmp / name, reaper
        self.dir.mkdir()
        (self.dir / 'mpqueue_config.py').write_text(config_source)
        (self.dir / 'jobs.py').write_text(JOBS)
        self.results = tmp / 'results.txt'
        self.config = None
        self.foreground = None

    def cli(self, *args, timeout=START_TIMEOUT):
        proc = self.reaper.popen([sys.executable, '-m', 'mpqueue_cli'] + list(args),
                                 cwd=str(self.dir), env=env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self):
        """``worker:start -d``: the completed process; the pool is registered
        with the reaper."""
        res = self.cli('worker:start', '-d')
        found = re.search(r'manage pid (\d+)', res.stdout)
        if found:
            self.reaper.add(int(found.group(1)))
        return res

    def start_foreground(self, err_path):
        with open(err_path, 'w') as err:
            self.foreground = self.reaper.popen(
                [sys.executable, '-m', 'mpqueue_cli', 'worker:start'], cwd=str(self.dir),
                env=env(), stdout=subprocess.DEVNULL, stderr=err)
        return self.foreground

    def push(self, n=JOBS_PER_PROJECT):
        res = subprocess.run([sys.executable, '-c', PUSH, str(n), self.name, str(self.results)],
                             cwd=str(self.dir), env=env(), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr

    def loaded(self):
        """The config as the pool sees it (validated), read in this process."""
        if self.config is None:
            import runpy
            self.config = mpqueue._validate(runpy.run_path(str(self.dir / 'mpqueue_config.py'),
                                                           run_name='mpqueue_config')['config'])
        return self.config

    def log(self):
        cfg = self.loaded()
        path = Path(cfg['log']['path']) / (cfg['basics']['name'] + '.log')
        return path.read_text(errors='replace') if path.exists() else ''

    def diagnostics(self):
        cfg = self.loaded()
        base = Path(cfg['log']['path']) / cfg['basics']['name']
        return '\n'.join('--- %s: %s ---\n%s' % (self.name, path, path.read_text(
            errors='replace')[-3000:]) for path in (Path(str(base) + '.log'),
                                                     Path(str(base) + '.out')) if path.exists())

    def stop(self):
        if self.foreground is not None and self.foreground.poll() is None:
            self.foreground.send_signal(signal.SIGTERM)
            try:
                self.foreground.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.cli('worker:stop', timeout=60)


@pytest.fixture
def projects(tmp_path, proc_reaper):
    made = []

    def make(name, source):
        project = Project(tmp_path, name, source, proc_reaper)
        made.append(project)
        return project

    yield make
    for project in made:
        try:
            project.stop()
        except Exception:       # the reaper stops what is left
            pass


def ran(results, n, *projects):
    def lines():
        try:
            got = results.read_text().splitlines()
        except FileNotFoundError:
            return None
        return len(got) >= n and sorted(got)
    return wait_for(lines, DEADLINE, lambda: '%d jobs to run\n%s' % (
        n, '\n'.join(p.diagnostics() for p in projects)))


# -- SQLite: the Quick start config --------------------------------------------

def test_two_projects_with_the_quick_start_config_stay_apart(projects, tmp_path):
    snippet = readme_block('Quick start', README)
    assert snippet.startswith('# mpqueue_config.py') and "'name': 'myapp'" in snippet
    alpha, beta = projects('alpha', snippet), projects('beta', snippet)
    for project in (alpha, beta):
        res = project.start()
        assert res.returncode == 0, res.stderr
        assert 'warning' not in res.stderr, res.stderr
    alpha.push()
    beta.push()
    assert ran(alpha.results, 2 * JOBS_PER_PROJECT, alpha, beta) == sorted(
        ['alpha ran alpha'] * JOBS_PER_PROJECT + ['beta ran beta'] * JOBS_PER_PROJECT)
    for project in (alpha, beta):
        assert (project.dir / 'run' / 'myapp.db').exists()
        assert 'another application' not in project.log(), project.diagnostics()
        # what a job prints goes to {log.path}/{name}.out with -d (the guide's checklist)
        out = (project.dir / 'run' / 'myapp.out').read_text()
        assert out.count('printed by a job of %s\n' % project.name) == JOBS_PER_PROJECT, \
            project.diagnostics()


def test_two_projects_sharing_a_pid_path_collide_loudly(projects, tmp_path):
    shared = tmp_path / 'shared'
    snippet = readme_block('Quick start', README).replace(
        "RUN = os.path.join(HERE, 'run')", 'RUN = %r' % str(shared))
    assert str(shared) in snippet
    alpha, beta = projects('alpha', snippet), projects('beta', snippet)
    res = alpha.start()
    assert res.returncode == 0, res.stderr
    pid = int(re.search(r'manage pid (\d+)', res.stdout).group(1))
    driver = alpha.loaded()['basics']['driver']
    wait_for(lambda: driver.fleet(), DEADLINE, "alpha's heartbeat")
    res = beta.start()
    assert res.returncode == 1
    assert res.stderr.count('\n') == 1, res.stderr
    assert res.stderr.startswith(
        "mpqueue: error: pool 'myapp' of another application (app %s) already runs on pid %d "
        'with the pid file %s' % (alpha.dir, pid, shared / 'myapp.pid')), res.stderr
    assert "give this one a basics.pid_path of its own" in res.stderr
    driver.close()


# -- Redis: the "Choosing a broker" config ---------------------------------------

def redis_snippet(redis_url, redis_db, prefix, extra=''):
    snippet = readme_block('Choosing a broker')
    assert "prefix='blog'" in snippet and "url='redis://127.0.0.1:6379/0'" in snippet
    snippet = snippet.replace("url='redis://127.0.0.1:6379/0'", 'url=%r' % (
        '%s/%d' % (redis_url, redis_db))).replace("prefix='blog'", 'prefix=%r' % prefix)
    return snippet + '''
# the test's own: files beside the config, one worker
import os
HERE = os.path.dirname(os.path.abspath(__file__))
config['basics']['pid_path'] = os.path.join(HERE, 'run')
config['log'] = {'path': os.path.join(HERE, 'run')}
config['queue'][0]['worker_number'] = 1
''' + extra


@pytest.fixture
def prefix(redis_url, redis_db):
    name = 'mpqtest-iso-%s' % uuid.uuid4().hex[:10]
    yield name
    delete_keys('%s/%d' % (redis_url, redis_db), name)


def warning_about(pool_project, pid):
    return ("queue 'mail' is also served by pool 'blog-web-1' of another application on this "
            'broker (', "host %s, pid %d, app %s (basics.app: by default the directory of its "
            "config); each pool may run the other's jobs. Give each application a key prefix "
            "of its own: RedisDriver(..., prefix='myapp'); if both are one application, give "
            'them the same basics.app' % (socket.gethostname(), pid, pool_project.dir))


def test_two_applications_on_one_redis_prefix_are_warned(projects, tmp_path, redis_url,
                                                         redis_db, prefix):
    snippet = redis_snippet(redis_url, redis_db, prefix)
    alpha, beta, gamma = (projects(name, snippet) for name in ('alpha', 'beta', 'gamma'))
    res = alpha.start()
    assert res.returncode == 0 and 'warning' not in res.stderr, res.stderr
    pid = int(re.search(r'manage pid (\d+)', res.stdout).group(1))
    driver = alpha.loaded()['basics']['driver']
    wait_for(lambda: driver.fleet(), DEADLINE, "alpha's heartbeat")
    head, tail = warning_about(alpha, pid)

    # worker:start -d: on the terminal, and in the log
    res = beta.start()
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if 'another application' in line]
    assert len(lines) == 1 and lines[0].startswith('mpqueue: warning: ' + head), res.stderr
    assert lines[0].endswith(tail), lines[0]
    assert "prefix '%s'" % prefix in lines[0]
    wait_for(lambda: tail in beta.log(), DEADLINE, lambda: 'the warning in the log:\n'
             + beta.log())

    # in the foreground: on the terminal (the log's stderr copy), naming both others
    err_path = tmp_path / 'gamma.err'
    gamma.start_foreground(err_path)
    wait_for(lambda: err_path.read_text().count('another application') >= 2, DEADLINE,
             lambda: 'two warnings on the terminal:\n' + err_path.read_text())
    text = err_path.read_text()
    assert tail in text and 'app %s' % beta.dir in text
    assert 'another application' not in alpha.log()      # it looked before the others came
    driver.close()


def test_a_prefix_each_or_one_app_keeps_them_quiet(projects, tmp_path, redis_url, redis_db,
                                                   prefix):
    alpha = projects('alpha', redis_snippet(redis_url, redis_db, prefix + '-a'))
    beta = projects('beta', redis_snippet(redis_url, redis_db, prefix + '-b'))
    for project in (alpha, beta):
        res = project.start()
        assert res.returncode == 0 and 'warning' not in res.stderr, res.stderr
    alpha.push()
    beta.push()
    assert ran(alpha.results, 2 * JOBS_PER_PROJECT, alpha, beta) == sorted(
        ['alpha ran alpha'] * JOBS_PER_PROJECT + ['beta ran beta'] * JOBS_PER_PROJECT)

    # one application on two "servers" (two names, one prefix, one basics.app): no warning
    one_app = "config['basics']['app'] = 'blog'\nconfig['basics']['name'] = %r\n"
    web1 = projects('web1', redis_snippet(redis_url, redis_db, prefix, one_app % 'blog-web-1'))
    web2 = projects('web2', redis_snippet(redis_url, redis_db, prefix, one_app % 'blog-web-2'))
    res = web1.start()
    assert res.returncode == 0, res.stderr
    driver = web1.loaded()['basics']['driver']
    wait_for(lambda: driver.fleet(), DEADLINE, "web1's heartbeat")
    res = web2.start()
    assert res.returncode == 0 and 'warning' not in res.stderr, res.stderr
    time.sleep(mpqueue.HEARTBEAT_SECONDS)       # its master has read the fleet by now
    for project in (alpha, beta, web1, web2):
        assert 'another application' not in project.log(), project.log()
    pools = {pool['name']: pool for pool in driver.fleet()}
    assert pools['blog-web-1']['app'] == pools['blog-web-2']['app'] == 'blog'
    driver.close()
