"""The test fixtures themselves work: Redis servers and the process reaper."""

import os
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
