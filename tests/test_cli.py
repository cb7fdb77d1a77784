"""The command line, end to end: ``python mpqueue_cli.py COMMAND --config FILE``
as real processes against real pools on a real Redis.

Errors a user can cause must print exactly one line on stderr (no traceback)
and exit non-zero.
"""

import ast
import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import mpqueue
from pool_harness import CLI, CLI_TIMEOUT, REPO, STOP_GRACE, E2E, Src, alive, queue_conf, wait_for
from redis_server import free_port

COMMANDS = ('list', 'worker:start', 'worker:stop', 'worker:restart', 'worker:reload',
            'worker:status', 'queue:status', 'queue:failed', 'queue:retry', 'queue:clean',
            'queue:pause', 'queue:resume')


@pytest.fixture
def e2e(tmp_path, redis_url, redis_db, proc_reaper, request):
    harness = E2E(tmp_path, redis_url, redis_db, proc_reaper, request.node.name)
    try:
        yield harness
    finally:
        harness.close()


def one_line_error(res, *words):
    """Assert ``res`` failed with one line on stderr containing ``words``."""
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert 'Traceback' not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def wait_counts(pool, timeout, queue='q', **expected):
    last = {}

    def match():
        last.update(mpqueue.status(queue))
        return all(last[k] == v for k, v in expected.items())
    pool.wait(match, timeout, lambda: 'status of %r to reach %r (last: %r)' % (
        queue, expected, last))


# -- list / -h ---------------------------------------------------------------------

@pytest.mark.parametrize('args', [['list'], ['-h'], ['--help'], []])
def test_list_and_help_work_without_config(e2e, tmp_path, args):
    empty = tmp_path / 'empty'
    empty.mkdir()
    env = e2e.env()
    env.pop('MPQUEUE_CONFIG', None)
    res = e2e.cli(*args, cwd=empty, env=env)
    assert res.returncode == 0, res.stderr
    for command in COMMANDS:
        assert command in res.stdout, command
    assert res.stderr == ''


def test_unknown_command_is_one_line(e2e):
    one_line_error(e2e.cli('worker:fly'), 'worker:fly')


def test_no_config_anywhere_is_one_line(e2e, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    one_line_error(e2e.cli('queue:status', cwd=empty), 'config')


# -- bad config files --------------------------------------------------------------

BAD_CONFIGS = {
    'missing': None,
    'syntax-error': 'import mpqueue\nconfig = {\n    "basics": {"name": "x",\n',
    'raises': 'import mpqueue\nconfig = {"basics": 1 / 0}\n',
    'no-config': 'import mpqueue\nsettings = {}\n',
}


@pytest.mark.parametrize('case', sorted(BAD_CONFIGS))
@pytest.mark.parametrize('command', ['worker:start', 'worker:stop', 'queue:status'])
def test_bad_config_file_one_line_naming_it(e2e, tmp_path, case, command):
    path = tmp_path / ('config_%s.py' % case.replace('-', '_'))
    if BAD_CONFIGS[case] is not None:
        path.write_text(BAD_CONFIGS[case])
    one_line_error(e2e.cli(command, '--config', str(path), timeout=20), str(path))


def test_invalid_config_names_the_key(e2e, tmp_path):
    path = tmp_path / 'config_invalid.py'
    path.write_text('import mpqueue\n'
                    'config = {"basics": {"name": "x", "pid_path": %r},\n'
                    '          "queue": [{"name": "q", "worker_numbr": 2}]}\n'
                    % str(tmp_path))
    one_line_error(e2e.cli('worker:start', '--config', str(path), timeout=20), 'worker_numbr',
                   str(path))
    one_line_error(e2e.cli('queue:status', '--config', str(tmp_path)), str(tmp_path),
                   'is a directory')


# -- start -d / status / stop --------------------------------------------------------

def test_start_daemon_status_and_stop(e2e):
    pool = e2e.pool(queue_conf('q', worker_number=2), queue_conf('other', worker_number=1))
    res = pool.start_daemon()
    assert res.returncode == 0, res.stderr
    manage = pool.pid_in_file()
    assert manage and alive(manage)
    assert psutil.Process(manage).ppid() != os.getpid()     # detached
    assert str(manage) in res.stdout and pool.name in res.stdout

    # Up when -d returns: every master and worker answers at once.
    rows = pool.status()
    assert [r['pid'] for r in rows if r['type'] == 'manage'] == [manage]
    assert len(pool.masters('q', rows)) == 1 and len(pool.masters('other', rows)) == 1
    assert len(pool.workers('q', rows)) == 2 and len(pool.workers('other', rows)) == 1
    tree = {p.pid for p in psutil.Process(manage).children(recursive=True)}
    assert {r['pid'] for r in rows if r['type'] != 'manage'} == tree
    assert pool.log_file.exists()
    assert str(manage) in pool.log_file.read_text()

    # worker:status as text: a header, then one line per process.
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.sleeper, args=('busy', 30))
    pool.wait(lambda: e2e.records('start', tag='busy'), 5, 'a job to start')
    busy_pid = e2e.records('start', tag='busy')[0]['pid']
    res = pool.cli('worker:status')
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 + len(rows), res.stdout
    by_pid = {}
    for line in lines[1:]:
        fields = line.split()
        by_pid[int(fields[2])] = fields
    assert set(by_pid) == {r['pid'] for r in rows}
    for row in rows:
        queue, kind, _, state = by_pid[row['pid']][:4]
        assert kind == row['type']
        if kind == 'worker':
            assert queue == row['queue']
            assert state == ('busy' if row['pid'] == busy_pid else 'idle'), lines
        elif kind == 'master':
            assert queue == row['queue']

    # queue:status: labelled columns, one line per queue.
    res = pool.cli('queue:status')
    assert res.returncode == 0, res.stderr
    header, *body = res.stdout.strip().splitlines()
    assert header.split() == ['queue', 'all', 'waiting', 'blocked', 'working', 'failed',
                              'over', 'cancelled', 'expired', 'paused']
    table = {line.split()[0]: [int(x) for x in line.split()[1:-1]] + line.split()[-1:]
             for line in body}
    assert table == {'q': [1, 0, 0, 1, 0, 0, 0, 0, 'no'],
                     'other': [0, 0, 0, 0, 0, 0, 0, 0, 'no']}
    res = pool.cli('queue:status', '--queue', 'other', '--json')
    assert json.loads(res.stdout) == {'other': {'all': 0, 'waiting': 0, 'working': 0,
                                                'failed': 0, 'over': 0, 'cancelled': 0,
                                                'blocked': 0, 'expired': 0, 'paused': False}}

    # worker:stop: the busy job goes back to its queue, everything stops.
    everyone = [psutil.Process(r['pid']) for r in rows]
    res = pool.cli('worker:stop')
    assert res.returncode == 0, res.stderr
    assert 'stopped' in res.stdout
    assert not pool.pid_file.exists()
    wait_for(lambda: not any(alive(p.pid) for p in everyone), 5, 'every process to be gone')
    # the job still running at the end of stop_grace went back to its queue
    assert mpqueue.status('q') == {'all': 1, 'waiting': 1, 'working': 0, 'failed': 0, 'over': 0,
                                   'expired': 0, 'paused': False}


def test_start_twice_fails_with_one_line(e2e):
    pool = e2e.pool().start()
    manage = pool.manage_pid()
    workers = pool.worker_pids()
    for args in (['worker:start'], ['worker:start', '-d']):
        line = one_line_error(pool.cli(*args, timeout=30), 'already running')
        assert str(manage) in line
        assert 'stale' not in line, line      # /proc says which: the pool runs
    assert pool.pid_in_file() == manage
    assert pool.worker_pids() == workers


def test_stop_when_not_running_fails_with_one_line(e2e):
    pool = e2e.pool()
    one_line_error(pool.cli('worker:stop'), 'not running')
    # A stale pid file (its process is gone) is "not running" too.
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    pool.pid_path.mkdir(parents=True, exist_ok=True)
    pool.pid_file.write_text('%d\n' % dead.pid)
    one_line_error(pool.cli('worker:stop'), 'not running')
    one_line_error(pool.cli('worker:reload'), 'not running')
    one_line_error(pool.cli('worker:status'), 'not running')


def test_stale_pid_file_is_replaced_at_start(e2e):
    pool = e2e.pool()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    pool.pid_path.mkdir(parents=True, exist_ok=True)
    pool.pid_file.write_text('%d\n' % dead.pid)
    res = pool.start_daemon()
    assert res.returncode == 0, res.stderr
    assert pool.pid_in_file() not in (None, dead.pid)
    assert len(pool.workers('q')) == 2


def test_pid_file_naming_a_reused_pid_is_stale(e2e):
    """A pid file whose pid now belongs to a process that started after the
    file was written (the pid was reused) is stale: stop and status leave
    that process alone, and a start replaces the file."""
    pool = e2e.pool()
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        pool.pid_path.mkdir(parents=True, exist_ok=True)
        pool.pid_file.write_text('%d\n' % other.pid)
        written = time.time() - 60              # the file is older than the process
        os.utime(pool.pid_file, (written, written))
        one_line_error(pool.cli('worker:stop'), 'not running')
        one_line_error(pool.cli('worker:status'), 'not running')
        res = pool.start_daemon()
        assert res.returncode == 0, res.stderr
        assert pool.pid_in_file() not in (None, other.pid)
        assert other.poll() is None             # never signalled
    finally:
        other.kill()
        other.wait()


def test_restart_daemon_gives_new_manage_pid(e2e):
    pool = e2e.pool()
    assert pool.start_daemon().returncode == 0
    first = pool.pid_in_file()
    old = {r['pid'] for r in pool.status()}
    res = pool.start_daemon(command='worker:restart')
    assert res.returncode == 0, res.stderr
    second = pool.pid_in_file()
    assert second and second != first and alive(second)
    assert not alive(first)
    rows = pool.status()
    assert [r['pid'] for r in rows if r['type'] == 'manage'] == [second]
    assert len(pool.workers('q', rows)) == 2
    assert not {r['pid'] for r in rows} & old
    wait_for(lambda: not any(alive(pid) for pid in old), 5, 'the old processes to be gone')


def test_reload_via_cli_replaces_workers(e2e):
    pool = e2e.pool().start()
    old = pool.worker_pids('q')
    res = pool.cli('worker:reload')
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()

    def replaced():
        pids = pool.worker_pids('q')
        return len(pids) == 2 and not pids & old
    pool.wait(replaced, 10, 'the workers to be replaced')


def test_sigterm_stops_foreground_pool(e2e):
    pool = e2e.pool().start()
    everyone = [r['pid'] for r in pool.status()]
    os.kill(pool.proc.pid, signal.SIGTERM)
    assert pool.proc.wait(timeout=15) == 0
    assert not pool.pid_file.exists()
    wait_for(lambda: not any(alive(pid) for pid in everyone), 5, 'every process to be gone')


CHATTY = """
import sys

def chatty(tag, lines):
    for n in range(lines):      # print() writes its pieces one by one
        print('out', tag, '%04d' % n, 'x' * 80)
        print('err', tag, '%04d' % n, 'y' * 80, file=sys.stderr)
"""


def test_lines_printed_by_workers_at_once_reach_the_out_file_whole(e2e):
    """Four workers print at once, to stdout and stderr, into the {name}.out
    of -d (the harness runs with PYTHONUNBUFFERED, as many deployments do):
    every line reaches the file whole, none is lost or doubled."""
    e2e.write_jobs(CHATTY)
    pool = e2e.pool(queue_conf('q', worker_number=4))
    jobs = e2e.import_jobs()
    res = pool.start_daemon()
    assert res.returncode == 0, res.stderr
    pool.wait_ready()
    tags, lines = ['t%d' % i for i in range(8)], 300
    mpqueue.push_many('q', [functools.partial(jobs.chatty, tag, lines) for tag in tags])
    wait_counts(pool, 60, over=len(tags))
    assert pool.cli('worker:stop').returncode == 0
    pool.wait(lambda: not alive(pool.pid_in_file() or 0) or None, 30, 'the pool to stop')
    out = (pool.log_path / ('%s.out' % pool.name)).read_text()
    expected = sorted('%s %s %04d %s' % (stream, tag, n, fill * 80)
                      for stream, fill in (('out', 'x'), ('err', 'y'))
                      for tag in tags for n in range(lines))
    got = sorted(line for line in out.splitlines() if line.startswith(('out ', 'err ')))
    garbled = [line for line in out.splitlines() if ('x' in line or 'y' in line)
               and line not in set(expected)]
    assert not garbled, 'lines cut or mixed, e.g. %r' % garbled[:3]
    assert got == expected


# -- config from elsewhere -------------------------------------------------------------

def test_config_from_env_and_module_attr(e2e):
    pool = e2e.pool()
    env = e2e.env()
    env['MPQUEUE_CONFIG'] = str(pool.config_path)
    res = e2e.cli('queue:status', '--json', env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)['q']['all'] == 0
    # module:attr, importable through PYTHONPATH
    settings = e2e.jobs_dir / ('settings_%s.py' % e2e.prefix[-6:].replace('-', '_'))
    settings.write_text(pool.config_path.read_text().replace('config = {', 'CONF = {'))
    res = e2e.cli('queue:status', '--json', '--config', '%s:CONF' % settings.stem)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)['q']['all'] == 0


def test_a_config_file_is_loaded_under_its_own_name(e2e, tmp_path):
    """--config cfg_second.py may import the project's real mpqueue_config
    (it was run as 'mpqueue_config' itself, and found its own half-run
    body); a real circular import is named one, without a Django hint when
    Django had no part in it."""
    project = tmp_path / 'project'
    project.mkdir()
    base = e2e.pool(queue_conf('q'), configure=False).config_path.read_text()
    (project / 'mpqueue_config.py').write_text(base)
    (project / 'cfg_second.py').write_text(
        'from mpqueue_config import config as base\n'
        'config = dict(base, queue=[dict(base["queue"][0], name="second")])\n')
    res = e2e.cli('queue:status', '--json', '--config', str(project / 'cfg_second.py'),
                  cwd=project)
    assert res.returncode == 0, res.stderr
    assert list(json.loads(res.stdout)) == ['second']
    (project / 'cfg_loop.py').write_text('import cfg_loop\nconfig = cfg_loop.config\n')
    line = one_line_error(e2e.cli('queue:status', '--config', str(project / 'cfg_loop.py'),
                                  cwd=project), 'circular import', "module 'cfg_loop'")
    assert 'django' not in line.lower(), line


# -- queue commands ----------------------------------------------------------------------

def test_queue_failed_lists_every_page(e2e):
    import steps
    pool = e2e.pool(queue_conf())
    driver = mpqueue._get_config()['basics']['driver']
    made = {steps.make_failed(driver, 'q') for _ in range(1001)}     # one more than a page
    res = pool.cli('queue:failed', '--queue', 'q', '--json')
    assert res.returncode == 0, res.stderr
    assert [info['id'] for info in json.loads(res.stdout)] == \
        [info['id'] for info in mpqueue.failed_jobs('q', 0, 2000)]
    assert {info['id'] for info in json.loads(res.stdout)} == made
    res = pool.cli('queue:failed', '--queue', 'q')
    assert res.returncode == 0 and res.stdout.count('\n== ') + 1 == 1001, res.stderr


def test_queue_failed_retry_and_clean(e2e):
    pool = e2e.pool(queue_conf(fail_number=0)).start()
    jobs = e2e.import_jobs()
    first = mpqueue.push('q', jobs.flaky, args=('first', 1))
    second = mpqueue.push('q', jobs.flaky, args=('second', 1))
    wait_counts(pool, 10, failed=2, working=0, waiting=0)

    res = pool.cli('queue:failed', '--queue', 'q', '--json')
    assert res.returncode == 0, res.stderr
    failed = {info['id']: info for info in json.loads(res.stdout)}
    assert set(failed) == {first, second}
    for job_id, tag in ((first, 'first'), (second, 'second')):
        info = failed[job_id]
        assert info['queue'] == 'q'
        assert info['type'] == mpqueue.TYPE_NORMAL
        assert info['exec_number'] == 1
        assert len(info['error_info']) == 1
        assert 'ValueError: flaky %s attempt 1' % tag in info['error_info'][0]
        for key in ('create_time', 'start_time', 'worker_id', 'timeout', 'fail_number',
                    'fail_expire'):
            assert key in info

    res = pool.cli('queue:failed', '--queue', 'q')
    assert res.returncode == 0, res.stderr
    assert first in res.stdout and second in res.stdout
    assert 'flaky first attempt 1' in res.stdout

    one_line_error(pool.cli('queue:failed'), '--queue')
    one_line_error(pool.cli('queue:failed', '--queue', 'nope'), 'nope')
    one_line_error(pool.cli('queue:retry', '--queue', 'q', '--id', 'no-such-id'), 'no-such-id')

    # One job back by id, then all: each runs again and succeeds (attempt 2).
    res = pool.cli('queue:retry', '--queue', 'q', '--id', first)
    assert res.returncode == 0, res.stderr
    wait_counts(pool, 10, over=1, failed=1, working=0, waiting=0)
    assert [r['n'] for r in e2e.records('end', tag='first')] == [2]
    res = pool.cli('queue:retry', '--queue', 'q')
    assert res.returncode == 0, res.stderr
    assert '1 job' in res.stdout
    wait_counts(pool, 10, over=2, failed=0, working=0, waiting=0)
    assert [r['n'] for r in e2e.records('end', tag='second')] == [2]
    assert json.loads(pool.cli('queue:failed', '--queue', 'q', '--json').stdout) == []

    # queue:clean empties waiting and delayed jobs and the counters.
    for i in range(3):
        mpqueue.push('q', jobs.ok, delay=60, args=('later-%d' % i,))
    assert mpqueue.status('q')['waiting'] == 3
    res = pool.cli('queue:clean', '--queue', 'q')
    assert res.returncode == 0, res.stderr
    assert mpqueue.status('q') == {'all': 0, 'waiting': 0, 'working': 0, 'failed': 0, 'over': 0,
                                   'expired': 0, 'paused': False}
    res = pool.cli('queue:status', '--json')
    assert json.loads(res.stdout) == {'q': {'all': 0, 'waiting': 0, 'working': 0, 'failed': 0,
                                            'over': 0, 'cancelled': 0, 'blocked': 0,
                                            'expired': 0, 'paused': False}}


def test_queue_pause_and_resume(e2e):
    pool = e2e.pool(queue_conf(worker_number=1, sleep_seconds=30)).start()
    jobs = e2e.import_jobs()
    res = pool.cli('queue:pause', '--queue', 'q')
    assert res.returncode == 0, res.stderr
    assert "queue 'q' paused" in res.stdout
    assert 'already' in pool.cli('queue:pause', '--queue', 'q').stdout
    mpqueue.push('q', jobs.ok, args=('accrued',))
    res = pool.cli('queue:status')
    assert res.returncode == 0, res.stderr
    header, line = res.stdout.strip().splitlines()
    assert header.split()[-1] == 'paused' and line.split() == ['q', '1', '1', '0', '0', '0',
                                                               '0', '0', '0', 'yes']
    assert json.loads(pool.cli('queue:status', '--json').stdout)['q']['paused'] is True
    time.sleep(1.0)                         # a paused pool starts nothing
    assert e2e.records('start') == []
    res = pool.cli('queue:resume', '--queue', 'q')
    assert res.returncode == 0, res.stderr
    assert "queue 'q' resumed" in res.stdout
    wait_counts(pool, 10, over=1, waiting=0, paused=False)
    assert 'was not paused' in pool.cli('queue:resume', '--queue', 'q').stdout


# -- as a new user meets it --------------------------------------------------------------

def run(e2e, argv, cwd, env=None, timeout=CLI_TIMEOUT, **kwargs):
    """Run ``argv`` (a real process, registered with the reaper); a CompletedProcess."""
    kwargs.setdefault('stdout', subprocess.PIPE)
    kwargs.setdefault('stderr', subprocess.PIPE)
    proc = e2e.reaper.popen(argv, cwd=str(cwd), env=env or e2e.env(), text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError('%s did not end within %ss' % (' '.join(map(str, argv)), timeout)) \
            from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def processes_of(e2e, pool):
    """The running processes of ``pool``, wherever they are (a daemon is no
    child of ours), registered with the reaper: its manage process, found by
    its title (``mpq:NAME:manage``) or, without setproctitle, by its command
    line (which names the config file, named after the pool), and all below it."""
    found = {}
    for proc in psutil.process_iter(['cmdline']):
        try:
            if proc.pid != os.getpid() and pool.name in ' '.join(proc.info['cmdline'] or ()):
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.Error:
            pass
    running = []
    for proc in found.values():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(e2e.reaper.add(proc))
        except psutil.Error:
            pass
    return running


@pytest.fixture
def daemon_pools(e2e):
    """Pools the test starts with -d: at teardown, whatever still runs of them
    (found by name, wherever it is) goes to the reaper, even when the test
    failed before it could look."""
    pools = []
    yield pools
    for pool in pools:
        processes_of(e2e, pool)


def elsewhere(tmp_path):
    """A working directory that is neither the config's nor the CLI's."""
    path = tmp_path / 'elsewhere'
    path.mkdir(exist_ok=True)
    return path


def test_daemon_with_relative_paths_is_refused_and_leaves_no_pool(e2e, daemon_pools, tmp_path):
    """-d changes to /: a relative pid_path or log.path would put the pid
    file and the log somewhere the other commands never look."""
    pool = e2e.pool(configure=False)
    daemon_pools.append(pool)
    relative = 'mpqtest-%s' % e2e.prefix[-10:]
    text = pool.config_path.read_text()
    pool.config_path.write_text(text.replace(repr(str(pool.pid_path)), repr(relative + '/run'))
                                .replace(repr(str(pool.log_path)), repr(relative + '/log')))
    cwd = elsewhere(tmp_path)
    try:
        res = run(e2e, [sys.executable, str(CLI), 'worker:start', '-d', '--config',
                        str(pool.config_path)], cwd, env=e2e.env(), timeout=30)
        line = one_line_error(res, 'basics.pid_path', 'absolute', repr(relative + '/run'))
        assert 'os.path.join(os.path.dirname(os.path.abspath(__file__))' in line, line
        assert processes_of(e2e, pool) == []            # no pool anywhere
        assert not (cwd / relative).exists()
    finally:
        for left in (processes_of(e2e, pool), cwd / relative, Path('/') / relative):
            if isinstance(left, list):
                for proc in left:
                    proc.kill()
            elif left.exists():
                shutil.rmtree(str(left))


def test_daemon_started_elsewhere_does_not_depend_on_the_working_directory(e2e, daemon_pools,
                                                                           tmp_path):
    """Started from a project directory by a config that puts '.' on
    sys.path, the daemon still imports the project's modules after it changed
    to /, also after a reload (which drops the import caches), and the other
    commands find it from any directory."""
    project = tmp_path / 'project'
    project.mkdir()
    module = 'relmod_%s' % e2e.prefix[-10:].replace('-', '_')
    (project / (module + '.py')).write_text(
        'import %s as jobs\n\ndef job(tag):\n    jobs.record("start", tag=tag, cwd=__import__("os")'
        '.getcwd())\n' % e2e.jobs_name)
    pool = e2e.pool()
    daemon_pools.append(pool)
    pool.config_path.write_text('import sys\nsys.path.append(".")\n' + pool.config_path.read_text())
    res = run(e2e, [sys.executable, str(CLI), 'worker:start', '-d', '--config',
                    str(pool.config_path)], project, env=e2e.env(), timeout=30)
    e2e.pools.append(pool)
    assert res.returncode == 0, res.stderr
    manage = pool.pid_in_file()
    assert manage and alive(manage) and str(manage) in res.stdout
    e2e.reaper.add(manage)
    mpqueue.push('q', '%s:job' % module, args=('relative-import',))
    pool.wait(lambda: e2e.records('start', tag='relative-import'), 10,
              'the job imported through the relative sys.path entry to run')
    assert e2e.records('start', tag='relative-import')[0]['cwd'] == '/'
    before = pool.worker_pids('q')
    res = run(e2e, [sys.executable, str(CLI), 'worker:reload', '--config',
                    str(pool.config_path)], elsewhere(tmp_path))
    assert res.returncode == 0, res.stderr
    pool.wait(lambda: len(pool.worker_pids('q') - before) == 2, 10, 'the workers to be replaced')
    mpqueue.push('q', '%s:job' % module, args=('after-reload',))
    pool.wait(lambda: e2e.records('start', tag='after-reload') or mpqueue.failed_jobs('q'), 10,
              'the job to run after the reload')
    assert mpqueue.failed_jobs('q') == []
    res = run(e2e, [sys.executable, str(CLI), 'worker:status', '--config',
                    str(pool.config_path)], elsewhere(tmp_path))
    assert res.returncode == 0 and str(manage) in res.stdout, res.stderr
    res = run(e2e, [sys.executable, str(CLI), 'worker:stop', '--config', str(pool.config_path)],
              elsewhere(tmp_path))
    assert res.returncode == 0 and 'stopped' in res.stdout, res.stderr
    wait_for(lambda: not processes_of(e2e, pool), 5, 'every process of the pool to be gone')


FAIL_BOOT = '''
def fail_boot():
    raise RuntimeError('no database at db.invalid:5432')
'''


def test_daemon_with_a_failing_start_hook_says_why_and_leaves_no_pool(e2e, daemon_pools,
                                                                      tmp_path):
    e2e.write_jobs(FAIL_BOOT)
    pool = e2e.pool(queue_conf('fine', worker_number=1),
                    queue_conf('q', worker_start_handle=Src('jobs.fail_boot')))
    daemon_pools.append(pool)
    started = time.monotonic()
    res = run(e2e, [sys.executable, str(CLI), 'worker:start', '-d', '--config',
                    str(pool.config_path)], elsewhere(tmp_path), env=e2e.env(), timeout=20)
    took = time.monotonic() - started
    e2e.pools.append(pool)
    line = one_line_error(res, 'did not start', "workers of queue 'q' fail to boot",
                          'RuntimeError: no database at db.invalid:5432', str(pool.log_file))
    assert took < 10, (took, line)
    # No pool at all: nothing to stop, and the CLI agrees.
    assert not pool.pid_file.exists()
    wait_for(lambda: not processes_of(e2e, pool), 5, 'no process of the pool to be left')
    one_line_error(pool.cli('worker:status'), 'not running')
    assert 'fail to boot' in pool.log_file.read_text()


def test_daemon_start_with_the_broker_down_says_so(e2e, daemon_pools, tmp_path):
    """The pool waits for its broker (and logs it); the terminal hears it too."""
    port = free_port()
    pool = e2e.pool(configure=False)
    daemon_pools.append(pool)
    pool.config_path.write_text(pool.config_path.read_text().replace(
        e2e.driver_source(), 'mpqueue.RedisDriver(url="redis://127.0.0.1:%d/0", prefix=%r)'
        % (port, e2e.prefix)))
    res = run(e2e, [sys.executable, str(CLI), 'worker:start', '-d', '--config',
                    str(pool.config_path)], elsewhere(tmp_path), env=e2e.env(), timeout=30)
    e2e.pools.append(pool)
    manage = pool.pid_in_file()
    if manage:
        e2e.reaper.add(manage)
    assert res.returncode == 0, res.stderr      # it runs, and reconnects by itself later
    assert 'started' in res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and 'warning' in lines[0], res.stderr
    assert '127.0.0.1:%d' % port in lines[0] and 'keeps trying' in lines[0], lines
    res = pool.cli('worker:stop')
    assert res.returncode == 0, res.stderr
    wait_for(lambda: not processes_of(e2e, pool), 10, 'every process of the pool to be gone')


def read_line(stream, timeout):
    """The next line of a pipe, waiting at most ``timeout`` seconds ('' at EOF)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, 'no line within %ss' % timeout
    return stream.readline()


def test_stop_says_what_it_waits_for(e2e):
    pool = e2e.pool().start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.sleeper, args=('draining', 4))
    pool.wait(lambda: e2e.records('start', tag='draining'), 10, 'the job to start')
    proc = e2e.reaper.popen([sys.executable, str(CLI), 'worker:stop', '--config',
                             str(pool.config_path)], env=e2e.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = read_line(proc.stdout, 10)
    assert proc.poll() is None, 'it said nothing until it had stopped: %r' % first
    assert '1 job still running (up to %s s)' % STOP_GRACE in first, first
    assert str(pool.proc.pid) in first and pool.name in first, first
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert 'stopped' in proc.stdout.read()
    assert e2e.records('end', tag='draining')       # it drained the job


def closed_pipe():
    """The write end of a pipe whose read end is already closed."""
    r, w = os.pipe()
    os.close(r)
    return w


def test_closed_stdout_is_a_quiet_exit(e2e):
    """`mpqueue worker:status | head -1`: like other Unix tools, no error."""
    pool = e2e.pool().start()
    for args in (['list'], ['worker:status'], ['queue:status'], ['queue:failed', '--queue', 'q'],
                 ['metrics'], ['queue:status', '--watch', '--count', '2', '--interval', '0.1']):
        w = closed_pipe()
        try:
            res = run(e2e, [sys.executable, str(CLI)] + args + ['--config', str(pool.config_path)],
                      REPO, stdout=w)
        finally:
            os.close(w)
        assert res.stderr == '', (args, res.stderr)
        assert res.returncode == 141, (args, res.returncode)


def test_output_to_a_full_disk_is_one_line(e2e):
    pool = e2e.pool()
    with open('/dev/full', 'w') as full:
        res = run(e2e, [sys.executable, str(CLI), 'queue:status', '--config',
                        str(pool.config_path)], REPO, stdout=full)
    one_line_error(res, 'No space left')


def cli_argvs(tmp_path):
    """The ways to run the command line, and the name each should give itself."""
    vendored = tmp_path / 'vendor'
    vendored.mkdir(exist_ok=True)
    for name in ('mpqueue.py', 'mpqueue_cli.py'):
        shutil.copy(str(REPO / name), str(vendored / name))
    ways = [([sys.executable, 'vendor/mpqueue_cli.py'], 'python vendor/mpqueue_cli.py'),
            ([sys.executable, '-m', 'mpqueue_cli'], 'python -m mpqueue_cli')]
    script = Path(sys.executable).parent / 'mpqueue'
    if script.exists():
        ways.append(([str(script)], 'mpqueue'))
    return ways


def test_the_program_is_named_as_it_was_invoked(e2e, tmp_path):
    for argv, name in cli_argvs(tmp_path):
        res = run(e2e, argv + ['foo'], tmp_path)
        assert res.returncode == 2
        one_line_error(res, "unknown command 'foo'", '(try "%s list")' % name)
        res = run(e2e, argv + ['-h'], tmp_path)
        assert res.returncode == 0 and res.stdout.startswith('usage: %s ' % name), res.stdout


def test_python_m_mpqueue_says_how_to_run_the_command_line(e2e, tmp_path):
    res = run(e2e, [sys.executable, '-m', 'mpqueue', 'queue:status'], tmp_path)
    line = one_line_error(res, '"mpqueue queue:status"', '"python -m mpqueue_cli queue:status"')
    assert res.returncode != 0 and res.stdout == '', line


def test_config_file_with_an_attribute_name(e2e, tmp_path):
    pool = e2e.pool()
    settings = tmp_path / 'settings_file.py'
    settings.write_text(pool.config_path.read_text().replace('config = {', 'CONF = {'))
    res = e2e.cli('queue:status', '--json', '--config', '%s:CONF' % settings,
                  cwd=elsewhere(tmp_path))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)['q']['all'] == 0
    one_line_error(e2e.cli('queue:status', '--config', '%s:NOPE' % settings),
                   'does not define `NOPE`')
    one_line_error(e2e.cli('queue:status', '--config', str(tmp_path / 'nope.py:CONF')),
                   'nope.py', 'FILE.py, FILE.py:NAME, module or module:NAME')


def test_config_module_not_found_hints_at_a_file_path(e2e, tmp_path):
    line = one_line_error(e2e.cli('queue:status', '--config', 'mpqueue_config:config',
                                  cwd=elsewhere(tmp_path)),
                          "No module named 'mpqueue_config'")
    assert 'a file path works from any directory' in line, line


def test_relative_sqlite_file_pushed_from_another_directory_is_refused(e2e, tmp_path):
    """A pusher run by cron in / must not write to /jobs.db unseen."""
    name = 'mpqtest-%s.db' % e2e.prefix[-10:]
    pusher = tmp_path / 'push_from_cron.py'
    pusher.write_text('import mpqueue\n'
                      'mpqueue.configure({"basics": {"name": "cron", "pid_path": %r, '
                      '"driver": mpqueue.SqliteDriver(%r)}, "queue": [{"name": "q"}]})\n'
                      'mpqueue.push("q", "time:sleep", args=(0,))\n' % (str(tmp_path), name))
    try:
        res = run(e2e, [sys.executable, str(pusher)], '/')
        assert res.returncode != 0
        assert 'ConfigError: basics.driver: the SqliteDriver path must be absolute' in res.stderr
        assert not Path('/', name).exists()
    finally:
        for suffix in ('', '-wal', '-shm'):
            if Path('/', name + suffix).exists():
                os.unlink('/' + name + suffix)


@pytest.mark.parametrize('args, words', [
    (['queue:status', '--bogus'], ['unrecognized arguments: --bogus']),
    (['queue:status', '--watch', '--interval', 'soon'], ['--interval', "'soon'"]),
    (['queue:clean', '--id', 'x'], ['queue:clean does not take --id']),
    (['worker:stop', '-d'], ['worker:stop does not take --daemon']),
    (['queue:status', '--count', '3'], ['--count', '--watch']),
    (['queue:status', '--queue', 'nope'], ["queue 'nope' is not in the config"]),
    (['queue:clean', '--queue', 'nope'], ["queue 'nope' is not in the config"]),
    (['queue:retry', '--queue', 'nope'], ["queue 'nope' is not in the config"]),
    (['metrics', '--queue', 'nope'], ["queue 'nope' is not in the config"]),
    (['queue:status', '--watch', '--queue', 'nope'], ["queue 'nope' is not in the config"]),
    (['queue:retry'], ['needs --queue']),
    (['queue:pause', '--queue', 'nope'], ["queue 'nope' is not in the config"]),
    (['queue:resume', '--queue', 'nope'], ["queue 'nope' is not in the config"]),
    (['queue:pause'], ['needs --queue']),
    (['queue:resume', '--id', 'x'], ['queue:resume does not take --id']),
    (['worker:reload'], ['not running']),
    (['worker:status'], ['not running']),
])
def test_mistakes_are_one_line_and_change_nothing(e2e, args, words):
    pool = e2e.pool()
    mpqueue.push('q', 'time:sleep', delay=60, args=(0,))
    res = pool.cli(*args, timeout=20)
    one_line_error(res, *words)
    assert res.stdout == ''
    assert mpqueue.status('q')['waiting'] == 1
    assert mpqueue.status('q')['paused'] is False


def test_missing_queue_name_in_a_config_file_says_it_is_required(e2e, tmp_path):
    path = tmp_path / 'config_noname.py'
    path.write_text('config = {"basics": {"name": "x", "pid_path": %r}, '
                    '"queue": [{"worker_number": 2}]}\n' % str(tmp_path))
    one_line_error(e2e.cli('queue:status', '--config', str(path)), 'queue[0].name is required')


def test_public_functions_for_tools(e2e):
    pool = e2e.pool()
    assert mpqueue.pid_file() == str(pool.pid_file)
    assert mpqueue.pool_pid() is None
    with pytest.raises(mpqueue.MPQueueError, match='is not running'):
        mpqueue.pool_status()
    assert mpqueue.queue_config('q')['worker_number'] == 2
    with pytest.raises(mpqueue.ConfigError, match='nope'):
        mpqueue.queue_config('nope')
    mpqueue.push('q', 'time:sleep', args=(0,))
    time.sleep(0.05)        # let the job wait a little: its age is measured below
    depth = mpqueue.depth('q')
    assert depth['waiting'] == 1 and depth['oldest_waiting_seconds'] >= 0.05, depth
    pool.start()
    assert mpqueue.pool_pid() == pool.proc.pid
    rows = mpqueue.pool_status()
    assert {r['type'] for r in rows} == {'manage', 'master', 'worker'}
    wait_for(lambda: mpqueue.depth('q')['done'] == 1, 10, 'the job to run')
    assert mpqueue.depth('q')['oldest_waiting_seconds'] == 0
    wait_for(lambda: [p for p in mpqueue.fleet() if p['pid'] == pool.proc.pid], 10,
             'the pool to send a heartbeat')


def test_the_command_line_uses_only_public_names():
    """mpqueue_cli.py reads mpqueue through __all__, the functions listed for
    tools in its docstring and its constants: nothing with an underscore."""
    tree = ast.parse((REPO / 'mpqueue_cli.py').read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == 'mpqueue'}
    tools = {'queue_config', 'pid_file', 'pool_pid', 'start_pool', 'pool_status', 'depth',
             'fleet', 'foreign_pools', 'schedules', 'history', 'queued_jobs', 'find_job',
             'search_failed', 'count_failed'}
    assert tools <= set(dir(mpqueue)) and not tools & set(mpqueue.__all__)
    for name in tools:
        assert '``%s(' % name in mpqueue.__doc__, name
    private = sorted(n for n in used if n.startswith('_') and n != '__version__')
    assert private == [], private
    public = set(mpqueue.__all__) | tools | {'__version__'}
    assert used <= public | {n for n in used if n.isupper()}, used - public


def test_importing_the_command_line_imports_neither_django_nor_flask():
    """DjangoCommand and flask_group are made when first asked for."""
    code = ('import sys, mpqueue_cli\n'
            'assert not {"django", "flask", "click"} & set(sys.modules), sorted(sys.modules)\n'
            'assert mpqueue_cli.DjangoCommand.__module__ == "mpqueue_cli"\n'
            'assert "django" in sys.modules and "flask" not in sys.modules\n'
            'assert "worker:start" in mpqueue_cli.flask_group.commands\n'
            'try:\n'
            '    mpqueue_cli.nothing\n'
            'except AttributeError as exc:\n'
            '    print(exc)\n')
    res = subprocess.run([sys.executable, '-c', code], cwd=str(REPO), capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "module 'mpqueue_cli' has no attribute 'nothing'\n"
