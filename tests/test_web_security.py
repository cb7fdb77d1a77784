"""What a security review of ``mpqueue web`` broke (issue #28), each attack
replayed against a real ``mpqueue web`` process: over HTTP, and in headless
Chromium where a browser is the attacker (a page on another loopback port).

The broker password is the first target: it must not show anywhere an
address is shown, for every URL form redis-py reads.
"""

import http.client
import http.server
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

import mpqueue
from pool_harness import queue_conf, wait_for
from redis_server import RedisServer, free_port
from test_web import Web, browser, one_broker, wait_page  # noqa: F401 (fixtures)

PASSWORD = 'S3cr3t-pw'

#: Every URL form of redis-py (and of RedisDriver on top of it) with a
#: password, and what is shown of it.
URL_FORMS = [
    ('redis://127.0.0.1:6391/0?password=%s' % PASSWORD, 'redis://127.0.0.1:6391/0'),
    ('redis://:%s@127.0.0.1:6391/2' % PASSWORD, 'redis://127.0.0.1:6391/2'),
    ('redis://alice:%s@127.0.0.1:6391' % PASSWORD, 'redis://127.0.0.1:6391'),
    ('redis://%s@127.0.0.1:6391' % PASSWORD, 'redis://127.0.0.1:6391'),    # user only
    ('redis://:p@ss:%s@h:6391/0' % PASSWORD, 'redis://h:6391/0'),          # unencoded @
    ('redis://:%s%%2Fx@h:6391' % PASSWORD, 'redis://h:6391'),             # encoded /
    ('redis://h:6391/0?db=3&password=%s&socket_timeout=2' % PASSWORD,
     'redis://h:6391/0?db=3'),
    ('redis://h:6391/0?username=bob&password=%s#frag' % PASSWORD, 'redis://h:6391/0'),
    ('redis://[::1]:6391/0?password=%s' % PASSWORD, 'redis://[::1]:6391/0'),
    ('unix:///run/redis/redis.sock?db=0&password=%s' % PASSWORD,
     'unix:///run/redis/redis.sock?db=0'),
    ('unix://:%s@/run/redis/redis.sock?db=1' % PASSWORD, 'unix:///run/redis/redis.sock?db=1'),
    ('rediss://:%s@h:6380/0?ssl_cert_reqs=none' % PASSWORD, 'rediss://h:6380/0'),
    ('rediss://h:6380?password=%s&ssl_password=%s' % (PASSWORD, PASSWORD), 'rediss://h:6380'),
    ('redis://:%s@10.0.0.1:7000,redis://:%s@10.0.0.2:7000' % (PASSWORD, PASSWORD),
     'redis://10.0.0.1:7000,redis://10.0.0.2:7000'),
    ('redis://:p,%s@10.0.0.1:7000,redis://10.0.0.2:7000?password=%s' % (PASSWORD, PASSWORD),
     'redis://10.0.0.1:7000,redis://10.0.0.2:7000'),
    ('redis+sentinel://:%s@h1:26379,h2:26380,[::1]:26381/svc/1' % PASSWORD,
     'redis+sentinel://h1:26379,h2:26380,[::1]:26381/svc/1'),
    ('rediss+sentinel://bob:%s@h1/svc?password=%s' % (PASSWORD, PASSWORD),
     'rediss+sentinel://h1/svc'),
]

#: What does not parse shows as a whole placeholder, never in part.
UNPARSEABLE = [
    'redis://:pa/%s@h:6391/0' % PASSWORD,       # unencoded / moves the rest into the path
    'redis://:pa?%s@h:6391/0' % PASSWORD,
    'redis://:pa#%s@h:6391/0' % PASSWORD,
    '%s' % PASSWORD, 'redis://h\x1b[2J%s' % PASSWORD, 'redis://h%s\u00e9' % PASSWORD,
    'redis://:%s@h:99999999' % PASSWORD, None, 12,
]


@pytest.mark.parametrize('url,shown', URL_FORMS)
def test_every_url_form_is_shown_without_its_password(url, shown):
    assert getattr(mpqueue, "_redacted_address", lambda u: u)(url) == shown
    cluster = url.count('://') > 1
    driver = mpqueue.RedisDriver(url=url, cluster=cluster)
    if driver.service_name is None:
        assert driver.address == shown
    for text in (driver.address, repr(driver), driver._where('q')):
        assert PASSWORD not in text and 'pw' not in text.replace('password', ''), text


@pytest.mark.parametrize('url', UNPARSEABLE)
def test_an_address_that_does_not_parse_is_not_shown_at_all(url):
    assert getattr(mpqueue, "_redacted_address", lambda u: u)(url) == mpqueue._UNSHOWN_ADDRESS


def test_config_errors_about_a_url_do_not_show_its_password():
    cases = [
        dict(url='redis://:%s@a:7000,redis://b:7000?password=%s' % (PASSWORD, PASSWORD)),
        dict(url='redis://h:1/0?password=%s' % PASSWORD, sentinels=['h:26379']),
        dict(url='redis+sentinel://:%s@h1:26379/svc/x/y' % PASSWORD),
        dict(url='redis+sentinel://:pa/%s@h1:26379/svc' % PASSWORD),
    ]
    for kwargs in cases:
        with pytest.raises(mpqueue.ConfigError) as info:
            mpqueue.RedisDriver(**kwargs)
        assert PASSWORD not in str(info.value), (kwargs, str(info.value))
    # a URL redis-py cannot read: its own message would quote a piece of the password
    driver = mpqueue.RedisDriver(url='redis://:pa/%s@127.0.0.1:1/0' % PASSWORD)
    with pytest.raises(mpqueue.ConfigError) as info:
        driver.run('q', 'info', 'some-id', '')
    assert PASSWORD not in str(info.value) and 'could not be cast' not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def _assert_hidden(text, where):
    assert PASSWORD not in text, '%s shows the password: %r' % (where, text)


def test_the_password_shows_nowhere_an_address_is_shown(one_broker, tmp_path):
    """A Redis with a password, reached by TCP and by a unix socket with
    ``?password=``: the dashboard (page, read-only page, startup line, 503s
    of a broker that is down), worker:status, fleet status, metrics, the
    pool's log and CLI errors never show it."""
    sock = str(tmp_path / 'redis.sock')
    server = RedisServer(free_port(), '--requirepass', PASSWORD, '--unixsocket', sock,
                         '--unixsocketperm', '700')
    server.start()
    try:
        urls = {
            'tcp': ('redis://127.0.0.1:%d/0?password=%s' % (server.port, PASSWORD),
                    'redis://127.0.0.1:%d/0' % server.port),
            'unix': ('unix://%s?db=0&password=%s' % (sock, PASSWORD), 'unix://%s?db=0' % sock),
            'down': ('redis://:%s@127.0.0.1:%d/0' % (PASSWORD, free_port()), None),
            'unix-down': ('unix://%s.gone?password=%s' % (sock, PASSWORD), None),
        }
        for name, (url, shown) in urls.items():
            one_broker.driver_source = lambda url=url: 'mpqueue.RedisDriver(url=%r, ' \
                'prefix=%r)' % (url, one_broker.prefix)
            pool = one_broker.pool(queue_conf('q'), name='pw-%s' % name, configure=False)
            address = shown or getattr(mpqueue, "_redacted_address", lambda u: u)(url)
            for args in ((), ('--read-only',)):
                web = Web(one_broker, pool.config_path, *args)
                _assert_hidden(web.startup, 'the startup line of %s' % name)
                assert address in web.startup, web.startup
                status, _, page = web.request('GET', '/')
                assert status == 200
                _assert_hidden(page.decode(), 'the page %s %s' % (name, args))
                assert ('>%s<' % address).encode() in page, (address, page[:2000])
                for path in ('/api/queues', '/api/fleet', '/api/schedules',
                             '/api/queues/q/failed', '/api/queues/q/jobs/x'):
                    status, _, body = web.request('GET', path)
                    _assert_hidden(body.decode(), '%s of %s' % (path, name))
                    if shown is None and path != '/api/schedules':   # none configured
                        assert status == 503 and address in body.decode(), (path, body)
                web.stop()
                _assert_hidden(web.stderr(), 'the web log of %s' % name)
            for command in (('worker:status',), ('worker:status', '--all'),
                            ('worker:status', '--all', '--json'), ('queue:status',),
                            ('metrics',), ('queue:failed', '--queue', 'q')):
                res = pool.cli(*command)
                _assert_hidden(res.stdout + res.stderr, '%s on %s' % (command, name))
                if shown is None and command != ('worker:status',):   # reads the pid file
                    assert address in res.stderr, (command, res.stderr)
            if shown is not None:
                assert address in pool.cli('worker:status', '--all').stdout
                pool.start()
                res = pool.cli('worker:status', '--all')
                _assert_hidden(res.stdout + res.stderr, 'the fleet of %s' % name)
                pool.stop()
                _assert_hidden(pool.log_tail(1000), 'the pool log of %s' % name)
    finally:
        server.stop()
