"""The command line, end to end: ``python mpqueue_cli.py COMMAND --config FILE``
as real processes against real pools on a real Redis.

Errors a user can cause must print exactly one line on stderr (no traceback)
and exit non-zero.
"""

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

import mpqueue
from pool_harness import E2E, alive, queue_conf, wait_for

COMMANDS = ('list', 'worker:start', 'worker:stop', 'worker:restart', 'worker:reload',
            'worker:status', 'queue:status', 'queue:failed', 'queue:retry', 'queue:clean')


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
    one_line_error(e2e.cli('worker:start', '--config', str(path), timeout=20), 'worker_numbr')


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
    assert header.split() == ['queue', 'all', 'waiting', 'working', 'failed', 'over']
    table = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in body}
    assert table == {'q': [1, 0, 1, 0, 0], 'other': [0, 0, 0, 0, 0]}
    res = pool.cli('queue:status', '--queue', 'other', '--json')
    assert json.loads(res.stdout) == {'other': {'all': 0, 'waiting': 0, 'working': 0,
                                                'failed': 0, 'over': 0}}

    # worker:stop: the busy job goes back to its queue, everything stops.
    everyone = [psutil.Process(r['pid']) for r in rows]
    res = pool.cli('worker:stop')
    assert res.returncode == 0, res.stderr
    assert 'stopped' in res.stdout
    assert not pool.pid_file.exists()
    wait_for(lambda: not any(alive(p.pid) for p in everyone), 5, 'every process to be gone')
    # the job still running at the end of stop_grace went back to its queue
    assert mpqueue.status('q') == {'all': 1, 'waiting': 1, 'working': 0, 'failed': 0, 'over': 0}


def test_start_twice_fails_with_one_line(e2e):
    pool = e2e.pool().start()
    manage = pool.manage_pid()
    workers = pool.worker_pids()
    for args in (['worker:start'], ['worker:start', '-d']):
        line = one_line_error(pool.cli(*args, timeout=30), 'already running')
        assert str(manage) in line
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


# -- queue commands ----------------------------------------------------------------------

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
    assert mpqueue.status('q') == {'all': 0, 'waiting': 0, 'working': 0, 'failed': 0, 'over': 0}
    res = pool.cli('queue:status', '--json')
    assert json.loads(res.stdout) == {'q': {'all': 0, 'waiting': 0, 'working': 0, 'failed': 0,
                                            'over': 0}}
