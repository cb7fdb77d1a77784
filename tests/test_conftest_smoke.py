"""The test fixtures themselves work: Redis servers, the process reaper and
the installing of Chromium for the dashboard tests."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import redis

from redis_server import RedisServer, free_port, no_retry


def test_redis_fixture_answers(redis_url, redis_client, redis_db):
    assert redis_client.ping()
    assert redis_client.connection_pool.connection_kwargs['db'] == redis_db
    redis_client.set('mpqtest:smoke', b'1')
    assert redis.Redis.from_url(redis_url, db=redis_db).get('mpqtest:smoke') == b'1'


def test_redis_client_starts_empty(redis_client):
    assert redis_client.dbsize() == 0


def test_private_server_start_stop():
    server = RedisServer(free_port())
    server.start()
    try:
        assert server.ping()
        assert server.client().ping()
        data_dir = server.dir
        assert os.path.isdir(data_dir)
    finally:
        server.stop()
    assert not server.ping()
    assert not os.path.exists(data_dir)


def test_private_server_password():
    with RedisServer(free_port(), '--requirepass', 's3cret') as server:
        assert server.url.startswith('redis://:s3cret@')
        assert redis.Redis.from_url(server.url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, retry=no_retry()).ping()


def test_private_server_survives_crash_with_appendonly():
    server = RedisServer(free_port(), '--appendonly', 'yes',
                         '--appendfsync', 'always')
    server.start()
    try:
        server.client().set('mpqtest:kept', b'yes')
        server.kill()
        assert not server.ping()
        server.start()
        assert server.client().get('mpqtest:kept') == b'yes'
    finally:
        server.stop()


def test_private_server_tls():
    with RedisServer(free_port(), tls=True) as server:
        assert server.url.startswith('rediss://')
        assert server.client().ping()
        client = redis.Redis.from_url(server.url, ssl_ca_certs=server.ca_file,
                                      ssl_check_hostname=False)
        assert client.ping()


def test_proc_reaper_kills_tree(proc_reaper):
    # A parent that spawns a child ignoring SIGTERM, then sleeps.
    script = textwrap.dedent('''
        import signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, '-c',
            'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
            'print("ready", flush=True); time.sleep(600)'], stdout=sys.stdout)
        time.sleep(600)
    ''')
    parent = proc_reaper.popen([sys.executable, '-c', script],
                               stdout=subprocess.PIPE)
    assert parent.stdout.readline().strip() == b'ready'
    child = psutil.Process(parent.pid).children()[0]
    started = time.monotonic()
    proc_reaper.reap(timeout=1.0)
    assert parent.poll() == -signal.SIGTERM
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - started < 5


# -- Chromium for the dashboard tests ----------------------------------------------------

TESTS = os.path.dirname(os.path.abspath(__file__))
FAKE_APT = '''#!/bin/sh
# apt-get as the tests call it: "update", then "install -y -qq chromium chromium-driver"
echo "$*" >> %(log)s
case "$1" in install)
    sleep 1
    for path in %(paths)s; do printf '#!/bin/sh\\n' > "$path"; chmod +x "$path"; done;;
esac
'''


def test_missing_chromium_is_installed_once_by_parallel_test_processes(tmp_path):
    """As root, ensure_chromium runs apt-get install when Chromium is
    missing; test processes asking at once install it once (a lock), the
    others find it installed.  A stand-in apt-get on the PATH plays apt."""
    if os.geteuid() != 0:
        pytest.skip('the install path is the root one')
    bin_dir, run_dir = tmp_path / 'bin', tmp_path / 'run'
    bin_dir.mkdir()
    run_dir.mkdir()
    paths = [tmp_path / 'chromium', tmp_path / 'chromedriver']
    (bin_dir / 'apt-get').write_text(FAKE_APT % {'log': tmp_path / 'apt.log',
                                                 'paths': ' '.join(map(str, paths))})
    (bin_dir / 'apt-get').chmod(0o755)
    env = dict(os.environ, PATH='%s:%s' % (bin_dir, os.environ['PATH']),
               MPQTEST_CHROMIUM=str(paths[0]), MPQTEST_CHROMEDRIVER=str(paths[1]))
    code = 'import sys, chromium; print(chromium.ensure_chromium(sys.argv[1]))'
    procs = [subprocess.Popen([sys.executable, '-c', code, str(run_dir)], cwd=TESTS, env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert outs == ['None'] * 3
    assert (tmp_path / 'apt.log').read_text().splitlines() == [
        'update -qq', 'install -y -qq chromium chromium-driver']


def test_missing_chromium_without_root_fails_once_with_one_line(tmp_path):
    """Not root: the dashboard tests report the missing browser once, in one
    line that says what to install; the other browser tests skip."""
    if os.geteuid() == 0:
        probe = subprocess.run(['unshare', '--user', 'true'], capture_output=True)
        if probe.returncode != 0:
            pytest.skip('cannot leave root here (unshare --user: %s)' % probe.stderr.strip())
        prefix = ['unshare', '--user']       # euid 65534 inside, files still readable
    else:
        prefix = []
    env = dict(os.environ, MPQTEST_CHROMIUM=str(tmp_path / 'no-chromium'))
    res = subprocess.run(prefix + [sys.executable, '-m', 'pytest', '-n', '2', '-p',
                                   'no:cacheprovider', '--basetemp', str(tmp_path / 'bt'),
                                   '-m', 'not cluster', os.path.join(TESTS, 'test_web.py')],
                         cwd=os.path.dirname(TESTS), env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    # The error's own line; pytest's short summary repeats it after 'ERROR <test> - Failed:'
    # (cut to the terminal's width or not, depending on where it runs).
    told = [line for line in out.splitlines() if 'apt-get install chromium chromium-driver' in line
            and not line.startswith('ERROR ')]
    assert len(told) == 1 and told[0].startswith(str(tmp_path / 'no-chromium')), out
    assert 'Traceback' not in out and 'selenium' not in out, out
    assert re.search(r'\b1 error\b', out) and re.search(r'\b[1-9]\d* skipped\b', out), out
