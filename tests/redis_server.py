"""Private Redis servers for the test suite.

``RedisServer(port, *extra_args)`` runs one ``redis-server`` in the
foreground, in a temporary directory of its own, listening on 127.0.0.1 only
and keeping nothing on disk unless ``extra_args`` say otherwise::

    server = RedisServer(free_port(), '--appendonly', 'yes')
    server.start()
    client = server.client()
    ...
    server.kill()       # a crash: SIGKILL, the data directory stays
    server.start()      # same port, same directory: the AOF is replayed
    server.stop()       # SIGTERM, then SIGKILL; the directory is removed

``--requirepass`` in ``extra_args`` is honoured by ``url``, ``ping()`` and
``client()``. ``tls=True`` serves TLS on ``port`` (plain TCP is switched off)
with a self-signed certificate made with the ``openssl`` command; ``url`` is
then ``rediss://...`` and ``ca_file`` is the certificate to trust.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ['RedisServer', 'ensure_redis_server_binary', 'free_port',
           'no_retry', 'port_in_use', 'wait_for']

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_FALLBACK_DIRS = ('/usr/bin', '/usr/sbin', '/usr/local/bin', '/usr/local/sbin')


def _find_binary():
    path = shutil.which('redis-server')
    if path:
        return path
    for directory in _FALLBACK_DIRS:
        candidate = os.path.join(directory, 'redis-server')
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_redis_server_binary():
    """Return the path of ``redis-server``, installing it when we are root.

    Without the binary and without root, the test run stops with a
    message that says how to install it.
    """
    path = _find_binary()
    if path:
        return path
    if hasattr(os, 'geteuid') and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
        subprocess.run(
            'apt-get update -qq && apt-get install -y -qq redis-server',
            shell=True, check=True, env=env, stdin=subprocess.DEVNULL)
        path = _find_binary()
        if path:
            return path
    pytest.exit("redis-server not found on PATH: install Redis "
                "(e.g. 'apt-get install redis-server') to run the tests",
                returncode=2)


def no_retry():
    """A redis-py ``retry=`` value that fails at once.

    redis-py retries connection errors (authentication errors included)
    with backoff for several seconds by default.
    """
    return Retry(NoBackoff(), 0)


def ask(client, *command):
    """One command on ``client``, which is closed after; None if the server
    does not answer."""
    try:
        return client.execute_command(*command)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def wait_for(cond, timeout, what, interval=0.02):
    """Poll ``cond()`` until it returns something truthy; return that.

    Fails with ``AssertionError`` naming ``what`` (a string, or a callable
    returning one, evaluated only on failure) once ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError('timed out after %.1fs waiting for %s' % (timeout, text))
        time.sleep(interval)


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def port_in_use(port, host='127.0.0.1'):
    """True if something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _option(args, name):
    """The value following the last ``--name`` in ``args``, or None."""
    value = None
    for i, arg in enumerate(args[:-1]):
        if arg == name:
            value = args[i + 1]
    return value


class RedisServer:
    """One ``redis-server`` process started and stopped by the tests.

    :param port: TCP port on 127.0.0.1 (the TLS port when ``tls`` is true).
    :param extra_args: more ``--option value`` arguments for redis-server;
        they come last, so they override the defaults.
    :param tls: serve TLS only, with a self-signed certificate.
    """

    host = '127.0.0.1'

    def __init__(self, port, *extra_args, tls=False):
        self.port = int(port)
        self.extra_args = [str(arg) for arg in extra_args]
        self.tls = tls
        self.password = _option(self.extra_args, '--requirepass')
        self.dir = None
        self.ca_file = None
        self.proc = None
        self._log = None

    # -- addresses and clients ---------------------------------------------

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self):
        """``redis://`` (or ``rediss://``) URL of this server, password included."""
        scheme = 'rediss' if self.tls else 'redis'
        auth = ':%s@' % self.password if self.password else ''
        return '%s://%s%s:%d' % (scheme, auth, self.host, self.port)

    def client_kwargs(self):
        """Keyword arguments for ``redis.Redis`` to reach this server."""
        kwargs = {'host': self.host, 'port': self.port}
        if self.password:
            kwargs['password'] = self.password
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=self.ca_file,
                          ssl_check_hostname=False)
        return kwargs

    def client(self, db=0, **kwargs):
        """A new ``redis.Redis`` connected to this server."""
        options = self.client_kwargs()
        options.update(kwargs)
        return redis.Redis(db=db, **options)

    def ping(self, timeout=0.5):
        """True if the server answers PING within ``timeout`` seconds."""
        client = self.client(socket_timeout=timeout,
                             socket_connect_timeout=timeout, retry=no_retry())
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self):
        return os.path.join(self.dir, 'redis.log') if self.dir else None

    def log_tail(self, lines=20):
        """The last lines the server printed, for error messages."""
        try:
            with open(self.log_path, errors='replace') as fh:
                return ''.join(fh.readlines()[-lines:])
        except (OSError, TypeError):
            return ''

    # -- life cycle --------------------------------------------------------

    def _make_certificate(self):
        if shutil.which('openssl') is None:
            raise RuntimeError('openssl not found on PATH: it is needed to '
                               'make the certificate of a TLS test server')
        cert = os.path.join(self.dir, 'server.crt')
        key = os.path.join(self.dir, 'server.key')
        subprocess.run(
            ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
             '-days', '2', '-subj', '/CN=127.0.0.1',
             '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
             '-keyout', key, '-out', cert],
            check=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ca_file = cert
        return ['--port', '0', '--tls-port', str(self.port),
                '--tls-cert-file', cert, '--tls-key-file', key,
                '--tls-ca-cert-file', cert, '--tls-auth-clients', 'no']

    def command(self):
        """The argument list that starts this server."""
        args = [ensure_redis_server_binary(),
                '--port', str(self.port), '--bind', self.host,
                '--save', '', '--appendonly', 'no', '--daemonize', 'no',
                '--dir', self.dir, '--logfile', '']
        if self.tls:
            args += self._make_certificate()
        return args + self.extra_args

    def start(self, timeout=START_TIMEOUT):
        """Start the server and wait until it answers PING.

        A second ``start()`` after ``kill()`` or ``stop(cleanup=False)``
        reuses the same data directory.
        """
        if self.running:
            raise RuntimeError('redis-server on port %d is already running '
                               '(pid %d)' % (self.port, self.pid))
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix='mpqtest-redis-%d-' % self.port)
        args = self.command()
        self._log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(
            args, cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.ping():
                return self
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._close_log()
                self.proc = None
                raise RuntimeError(
                    'redis-server on port %d exited with status %s:\n%s'
                    % (self.port, code, self.log_tail()))
            if time.monotonic() > deadline:
                self.stop(cleanup=False)
                raise RuntimeError(
                    'redis-server on port %d did not answer PING within %.0f s:'
                    '\n%s' % (self.port, timeout, self.log_tail()))
            time.sleep(0.05)

    def stop(self, cleanup=True, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL after ``timeout`` s; wait for the exit.

        :param cleanup: also remove the data directory.
        """
        if self.proc is not None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        self._close_log()
        if cleanup and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def kill(self):
        """Crash the server (SIGKILL); its data directory stays for ``start()``."""
        if self.proc is not None:
            self._signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        self._close_log()

    def restart(self, timeout=START_TIMEOUT):
        """Graceful stop and start again on the same port and directory."""
        self.stop(cleanup=False)
        return self.start(timeout)

    def _signal(self, signum):
        try:
            os.kill(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def __repr__(self):
        return '<RedisServer %s pid=%s>' % (self.url, self.pid)
