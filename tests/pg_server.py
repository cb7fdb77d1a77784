"""A private PostgreSQL server for the tests that need one.

``PostgresServer()`` makes a data directory with ``initdb`` in a temporary
directory of its own and runs ``postgres`` in the foreground on a free port
of 127.0.0.1, with trust authentication for the user ``postgres`` and its
socket in that directory::

    server = PostgresServer().start()
    server.create_database('notes')
    ...
    server.stop()       # SIGINT (fast shutdown), then SIGKILL; the directory is removed

PostgreSQL refuses to run as root: as root, ``initdb`` and ``postgres`` run as
the system user ``postgres`` (Debian's package creates it), which gets the
directory, made under ``/tmp``.  Without the programs (or that user, as
root), ``available`` is False.  The binaries are found on PATH, else in Debian's
``/usr/lib/postgresql/<version>/bin``.
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

from redis_server import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SYSTEM_USER = 'postgres'


def find_binary(name):
    """The path of a PostgreSQL server program, or None."""
    found = shutil.which(name)
    if found:
        return found
    for path in sorted(glob.glob('/usr/lib/postgresql/*/bin/' + name), reverse=True):
        if os.access(path, os.X_OK):
            return path
    return None


class PostgresServer:
    """One ``postgres`` process started and stopped by the tests."""

    host = '127.0.0.1'
    user = 'postgres'

    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = self.proc = self._log = None
        self.initdb, self.postgres = find_binary('initdb'), find_binary('postgres')

    @property
    def available(self):
        if not (self.initdb and self.postgres):
            return False
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                return False
        return True

    @property
    def data(self):
        return os.path.join(self.dir, 'data')

    @property
    def log_path(self):
        return os.path.join(self.dir, 'postgres.log')

    def _as_owner(self):
        """preexec_fn that drops root for the system user postgres."""
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam(SYSTEM_USER)

        def drop():
            os.setgid(entry.pw_gid)
            os.initgroups(SYSTEM_USER, entry.pw_gid)
            os.setuid(entry.pw_uid)
        return drop

    def start(self, timeout=START_TIMEOUT):
        if not self.available:
            raise RuntimeError('initdb and postgres are not installed (Debian: apt-get install '
                               'postgresql)')
        # as root, in /tmp: the user postgres must reach it ($TMPDIR may be root's own)
        self.dir = tempfile.mkdtemp(prefix='mpqtest-postgres-%d-' % self.port,
                                    dir='/tmp' if os.geteuid() == 0 else None)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)
        init = subprocess.run([self.initdb, '-D', self.data, '-U', self.user, '-A', 'trust',
                               '-E', 'UTF8', '--no-sync'], preexec_fn=self._as_owner(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=self.dir)
        if init.returncode:
            raise RuntimeError('initdb failed (%s):\n%s' % (init.returncode, init.stdout))
        self._log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(
            [self.postgres, '-D', self.data, '-p', str(self.port), '-h', self.host,
             '-k', self.dir, '-c', 'fsync=off', '-c', 'full_page_writes=off'],
            preexec_fn=self._as_owner(), cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(cleanup=False)
                raise RuntimeError('postgres on port %d did not start:\n%s'
                                   % (self.port, self.log_tail()))
            time.sleep(0.1)
        return self

    def connect(self, dbname='postgres', **kwargs):
        import psycopg
        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=dbname,
                               connect_timeout=3, **kwargs)

    def ping(self):
        try:
            with self.connect() as conn:
                conn.execute('SELECT 1')
            return True
        except Exception:
            return False

    def create_database(self, name):
        with self.connect(autocommit=True) as conn:
            conn.execute('CREATE DATABASE "%s"' % name)

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors='replace') as f:
                return ''.join(f.readlines()[-lines:])
        except OSError:
            return '(no log)'

    def stop(self, cleanup=True, timeout=STOP_TIMEOUT):
        """SIGINT (fast shutdown), then SIGKILL after ``timeout`` s; wait for the exit."""
        if self.proc is not None:
            try:
                self.proc.send_signal(signal.SIGINT)        # fast shutdown
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if cleanup and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
