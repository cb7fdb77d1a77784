"""What a security review of ``mpqueue web`` broke (issue #28), each attack
replayed against a real ``mpqueue web`` process: over HTTP, and in headless
Chromium where a browser is the attacker (a page on another loopback port).

The broker password is the first target: it must not show anywhere an
address is shown, for every URL form redis-py reads.
"""

import http.client
import http.server
import re
import socket
import threading
import time

import pytest

import mpqueue
import mpqueue_cli
from pool_harness import queue_conf, wait_for
from redis_server import RedisServer, free_port
from web_harness import (  # noqa: F401 (fixtures)
    Web, browser, chromium_missing, needs_chromium, one_broker, wait_page)

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


# -- sessions, CSRF, guessing: a dashboard with a token ------------------------------------

TOKEN = 'correct-horse-battery-staple-4f1c'


def token_web(e2e, pool, *args):
    return Web(e2e, pool.config_path, *args, env=dict(e2e.env(), MPQUEUE_WEB_TOKEN=TOKEN))


def login(web):
    """Sign in over HTTP as the form does: the session cookie (name=value)."""
    status, headers, page = web.request('GET', '/login')
    nonce = headers['Set-Cookie'].split(';')[0]
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
    status, headers, _ = web.request(
        'POST', '/login', {'Cookie': nonce, 'Content-Type': 'application/x-www-form-urlencoded',
                           'Origin': 'http://127.0.0.1:%d' % web.port},
        'csrf_token=%s&token=%s' % (csrf, TOKEN))
    assert status == 303, status
    cookies = [v.split(';')[0] for k, v in headers.items() if k.lower() == 'set-cookie']
    (session,) = [c for c in cookies if c.startswith('mpqueue_session')]
    return session


def page_csrf(web, cookie):
    return web.csrf_token({'Cookie': cookie})


def test_sessions_are_random_server_side_and_end_at_logout(one_broker):
    pool = one_broker.pool(queue_conf('q'))
    web, other = token_web(one_broker, pool), token_web(one_broker, pool)
    first, second = login(web), login(web)
    assert first != second and TOKEN not in first
    assert first.startswith('mpqueue_session_%d=' % web.port), first
    for cookie in (first, second):
        assert web.json('GET', '/api/queues', {'Cookie': cookie})[0] == 200
    # another dashboard with the same token does not take this one's session
    assert other.json('GET', '/api/queues', {'Cookie': first})[0] == 401
    assert other.json('GET', '/api/queues', {
        'Cookie': first.replace(str(web.port), str(other.port))})[0] == 401
    # the CSRF token belongs to the session: another session's, or the login form's, fail
    csrf = page_csrf(web, first)
    assert csrf != page_csrf(web, second)
    _, _, form = web.request('GET', '/login')
    assert csrf.encode() not in form
    status, _, _ = web.request('POST', '/logout', {'Cookie': first}, 'csrf_token=' +
                               page_csrf(web, second))
    assert status == 403
    assert web.json('GET', '/api/queues', {'Cookie': first})[0] == 200
    # logout ends the session for good, the others live on
    status, headers, _ = web.request('POST', '/logout', {'Cookie': first}, 'csrf_token=' + csrf)
    assert status == 303 and 'Max-Age=0' in headers['Set-Cookie']
    assert web.json('GET', '/api/queues', {'Cookie': first})[0] == 401
    assert web.json('GET', '/api/queues', {'Cookie': second})[0] == 200
    web.stop()
    other.stop()


class Attacker:
    """A web server on another loopback port: it serves ``page`` and keeps
    the Cookie header of every request it gets."""

    def __init__(self, page):
        self.cookies = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.cookies.append(self.headers.get('Cookie') or '')
                body = page.encode()
                self.send_response(200)
                self.send_header('Content-Type', 'text/html')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d/' % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def browser_login(browser, web):
    browser.get(web.url + 'login')
    field = browser.find_element('id', 'token')
    field.send_keys(TOKEN)
    field.submit()
    wait_page(browser, lambda: browser.current_url.rstrip('/') == web.url.rstrip('/'),
              'the dashboard after login')


def test_a_page_on_another_port_gets_no_session_it_can_use_and_cannot_log_out(
        one_broker, browser):
    pool = one_broker.pool(queue_conf('q'))
    web, other = token_web(one_broker, pool), token_web(one_broker, pool)
    browser.delete_all_cookies()
    browser_login(browser, web)
    # the attacker reads the login form's token itself and has the browser post a logout
    _, _, form = web.request('GET', '/login')
    stolen = re.search(rb'name="csrf_token" value="([^"]+)"', form).group(1).decode()
    attacker = Attacker('''<!doctype html><body><form id="f" method="post"
        action="%slogout"><input name="csrf_token" value="%s"></form>
        <script>document.getElementById('f').submit()</script>''' % (web.url, stolen))
    try:
        browser.get(attacker.url)
        wait_for(lambda: attacker.cookies, 10, 'the attacker page to load')
        wait_for(lambda: browser.current_url.startswith(web.url), 10, 'the forged logout')
        browser.get(web.url)
        wait_page(browser, lambda: browser.current_url.rstrip('/') == web.url.rstrip('/') and
                  browser.find_elements('id', 'queues-body'), 'still signed in')
        # what the other port got: a session of this dashboard only, ended by logout
        leaked = [c.strip() for c in attacker.cookies[0].split(';')
                  if c.strip().startswith('mpqueue_session')]
        assert leaked and leaked[0].startswith('mpqueue_session_%d=' % web.port), leaked
        assert other.json('GET', '/api/queues', {'Cookie': leaked[0]})[0] == 401
        assert web.json('GET', '/api/queues', {'Cookie': leaked[0]})[0] == 200
        browser.find_element('css selector', '#logout button').click()
        wait_page(browser, lambda: browser.current_url.endswith('/login'), 'signed out')
        assert web.json('GET', '/api/queues', {'Cookie': leaked[0]})[0] == 401
    finally:
        attacker.close()
        web.stop()
        other.stop()


def test_wrong_tokens_wait_in_one_line_and_weak_tokens_are_refused(one_broker):
    pool = one_broker.pool(queue_conf('q'))
    for weak in (' ' * 16, 'a' * 20, 'abababababababab', ' %s ' % TOKEN):
        res = one_broker.cli('web', '--config', str(pool.config_path), '--token', weak)
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert 'at least 16' in res.stderr, res.stderr
    web = token_web(one_broker, pool)
    guesses, began = 12, time.monotonic()
    results = []

    def guess(n):
        results.append(web.json('GET', '/api/queues',
                                {'Authorization': 'Bearer wrong-%d-%s' % (n, TOKEN)})[0])
    threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    took = time.monotonic() - began
    assert results == [401] * guesses
    # one at a time for the whole process, not per connection
    assert took >= guesses * 0.5 * 0.9, took
    web.stop()


def test_other_apps_cookies_do_not_lock_users_out(one_broker):
    pool = one_broker.pool(queue_conf('q'))
    web = token_web(one_broker, pool)
    session = login(web)
    for junk in ('pref={"a":1}', 'name=John Doe', 'x=caf\u00e9'.encode().decode('latin-1'),
                 'noequals', 'a="unterminated', 'mpqueue_session=old'):
        assert web.json('GET', '/api/queues', {'Cookie': '%s; %s' % (junk, session)})[0] == 200, \
            junk
    web.stop()


# -- HTTP parsing and the rest --------------------------------------------------------------

def raw_exchange(port, data):
    """Send ``data`` on one connection; everything the server answers until it closes."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
        sock.sendall(data)
        out = b''
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return out + b'<still open>'
            if not chunk:
                return out
            out += chunk


def test_bad_content_lengths_are_refused_and_close_and_the_log_is_escaped(one_broker):
    pool = one_broker.pool(queue_conf('q'))
    web = Web(one_broker, pool.config_path)
    smuggled = b'GET /api/fleet HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n' % web.port
    for lengths in ([b'\xb2'], [b'0', b'%d' % len(smuggled)], [b'%d' % len(smuggled), b'0']):
        request = (b'POST /api/queues/q/\x1b[2Jfailed/retry HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n'
                   % web.port + b''.join(b'Content-Length: %s\r\n' % n for n in lengths) +
                   b'\r\n' + smuggled)
        answer = raw_exchange(web.port, request)
        assert answer.startswith(b'HTTP/1.1 400 '), (lengths, answer)
        assert answer.count(b'HTTP/1.1') == 1 and b'Connection: close' in answer, answer
    web.stop()
    assert '\x1b' not in web.stderr(), web.stderr()


def test_hosts_targets_origins_offsets_and_connections(one_broker):
    pool = one_broker.pool(queue_conf('q'))
    web = Web(one_broker, pool.config_path)
    port = web.port
    assert web.json('GET', '/api/queues/q/failed?offset=9223372036854775808')[0] == 400
    for host, status in ((None, 400), ('localhost:evil', 403), ('localhost:1', 403),
                         ('127.0.0.1:%d' % port, 200), ('[::1]:%d' % port, 200)):
        head = b'' if host is None else b'Host: %s\r\n' % host.encode()
        answer = raw_exchange(port, b'GET /api/queues HTTP/1.1\r\n%sConnection: close\r\n\r\n'
                              % head)
        assert answer.startswith(b'HTTP/1.1 %d ' % status), (host, answer[:200])
    answer = raw_exchange(port, b'GET http://evil.example/api/queues HTTP/1.1\r\nHost: '
                          b'127.0.0.1:%d\r\nConnection: close\r\n\r\n' % port)
    assert answer.startswith(b'HTTP/1.1 400 '), answer[:200]
    # a POST from another origin is refused even with the right CSRF token
    csrf = web.csrf_token()
    for origin, status in (('http://127.0.0.1:%d' % (port + 1), 403), ('null', 403),
                           ('http://127.0.0.1:%d' % port, 200)):
        got = web.json('POST', '/api/queues/q/failed/retry', {'X-CSRF-Token': csrf,
                                                             'Origin': origin})[0]
        assert got == status, (origin, got)
    # slow clients hold a bounded number of threads
    proc = '/proc/%d/status' % web.proc.pid

    def threads():
        with open(proc) as f:
            return int(re.search(r'Threads:\s+(\d+)', f.read()).group(1))
    socks = []
    try:
        for _ in range(60):
            sock = socket.create_connection(('127.0.0.1', port), timeout=10)
            sock.sendall(b'GET /api/queues HTTP/1.1\r\n')
            socks.append(sock)
        limit = mpqueue_cli._HTTP_CONNECTIONS_MAX + mpqueue_cli._WEB_BROKER_THREADS + 4
        wait_for(lambda: threads() >= mpqueue_cli._HTTP_CONNECTIONS_MAX, 10, 'the slots to fill')
        assert threads() <= limit, threads()
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: web.request('GET', '/api/queues')[0] == 200, 20, 'the server to answer')
    web.stop()


def test_fleet_survives_a_bad_heartbeat_and_read_only_reads_it_without_writing(
        one_broker, browser):
    pool = one_broker.pool(queue_conf('q'))
    driver = mpqueue._get_config()['basics']['driver']
    driver.heartbeat('good-pool|1', 'q', {'pool': {'name': 'good', 'host': 'h', 'pid': 1,
                                                    'state': 'running', 'started': time.time()},
                                          'queue': 'q', 'workers': 2, 'busy': 1, 'idle': 1,
                                          'done': 5}, 60)
    driver.heartbeat('bad-pool|1', 'q', {'pool': {'name': 'bad', 'host': ['h'], 'pid': {},
                                                   'state': 7, 'started': 'yesterday'},
                                         'queue': 'q', 'workers': 'many', 'busy': None,
                                         'idle': [], 'done': {}}, 60)
    driver.heartbeat('gone-pool|1', 'q', {'pool': {'name': 'gone'}, 'queue': 'q'}, 0.01)
    web = Web(one_broker, pool.config_path, '--read-only')
    browser.get(web.url + '#fleet')
    wait_page(browser, lambda: browser.find_elements(
        'css selector', '#fleet-body tr[data-pool="good"] [data-col=busy]'), 'the good pool')
    import sqlite3
    path = str(one_broker.tmp_path / 'broker.db')
    wait_for(lambda: web.json('GET', '/api/fleet')[1] and len(web.json('GET', '/api/fleet')[1])
             == 2, 10, 'the expired beat to leave the fleet')
    with sqlite3.connect(path) as conn:
        names = {row[0] for row in conn.execute('SELECT id FROM mpq_fleet')}
    assert 'gone-pool|1|q' in names, 'a read-only dashboard deleted a beat: %r' % names
    web.stop()
