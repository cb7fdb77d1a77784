"""Shared fixtures: a real Redis server, a Redis Cluster, a Redis Sentinel
setup and a reaper for the processes tests start.

``redis_url`` is the Redis on 127.0.0.1:6379 when one answers, otherwise a
private ``redis-server`` started for the test run. Tests use database
``redis_db`` (14, or ``$MPQTEST_DB``) on it and the key prefix ``PREFIX`` ('mpqtest');
``redis_client`` empties that database before and after each test.
``redis_cluster`` is a six-node Redis Cluster on 127.0.0.1:7000-7005 (see
``redis_cluster.py``), started on first use unless one already runs there.
``redis_sentinel`` is a master, a replica and three sentinels on free ports
(see ``redis_sentinel.py``), started on first use, stopped at the end.

``driver`` is a broker driver, once per broker: Redis, SQLite, a Redis
Cluster and Redis through Sentinel.  The cluster runs are marked ``cluster``
(as are the tests of test_cluster.py): ``-m 'not cluster'`` leaves the
cluster out, ``-m cluster`` runs only what needs it; likewise ``sentinel``
(test_sentinel.py).  ``store`` reads what the driver stored (see
``steps.py``), ``queue`` is a queue name of the test alone, emptied and
checked for leftovers afterwards.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mpqueue  # noqa: E402
import steps  # noqa: E402
from redis_cluster import LocalCluster  # noqa: E402
from redis_sentinel import LocalSentinel  # noqa: E402
from redis_server import RedisServer, free_port, no_retry, port_in_use  # noqa: E402

# $MPQTEST_REDIS_URL: another Redis for the whole run (two runs side by side)
SHARED_REDIS_URL = os.environ.get('MPQTEST_REDIS_URL', 'redis://127.0.0.1:6379')
PRIVATE_REDIS_PORT = 6390
# The Redis database the tests may empty (two runs side by side: set MPQTEST_DB
# apart); each pytest-xdist worker (gw0, gw1, ...) takes the next one down.
_XDIST_WORKER = os.environ.get('PYTEST_XDIST_WORKER', '')
TEST_DB = int(os.environ.get('MPQTEST_DB', 14)) - int(_XDIST_WORKER[2:] or 0)
PREFIX = steps.PREFIX
REAP_TIMEOUT = 5.0


def pytest_configure(config):
    config.addinivalue_line('markers', 'cluster: needs the Redis Cluster on 127.0.0.1:7000-7005')
    config.addinivalue_line('markers', 'sentinel: needs the Redis Sentinel setup the tests start')


@pytest.hookimpl(tryfirst=True)       # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (``-n``, ``--dist loadgroup``) the tests that need the
    Redis Cluster on its fixed ports all run in one worker."""
    for item in items:
        if item.get_closest_marker('cluster') or 'redis_cluster' in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group('redis-cluster'))


def _answers(url, timeout=0.5):
    client = redis.Redis.from_url(url, socket_timeout=timeout,
                                  socket_connect_timeout=timeout,
                                  retry=no_retry())
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


# -- Redis -------------------------------------------------------------------

@pytest.fixture(scope='session')
def redis_url():
    """URL of a Redis server for the whole test run (no database number)."""
    if _answers(SHARED_REDIS_URL):
        yield SHARED_REDIS_URL
        return
    port = PRIVATE_REDIS_PORT
    if port_in_use(port):
        port = free_port()
    server = RedisServer(port)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope='session')
def redis_db():
    """The database number the tests may empty at will."""
    return TEST_DB


@pytest.fixture(scope='session')
def redis_db_url(redis_url, redis_db):
    """``redis_url`` with the test database selected."""
    return '%s/%d' % (redis_url, redis_db)


@pytest.fixture
def redis_client(redis_url, redis_db):
    """A ``redis.Redis`` on the test database, emptied before and after the test."""
    client = redis.Redis.from_url(redis_url, db=redis_db)
    client.flushdb()
    try:
        yield client
    finally:
        try:
            client.flushdb()
        finally:
            client.close()


@pytest.fixture(scope='session')
def redis_cluster():
    """A ``LocalCluster``: three masters and three replicas on 127.0.0.1:7000-7005,
    the cluster already running there or one started (and stopped) for the run."""
    cluster = LocalCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope='session')
def redis_sentinel():
    """A ``LocalSentinel``: a master, its replica and three sentinels on free
    ports of 127.0.0.1, started for the run and stopped at its end.  Tests
    that fail it over leave it whole again (``restore``)."""
    setup = LocalSentinel().start()
    try:
        yield setup
    finally:
        setup.stop()


# -- drivers -----------------------------------------------------------------

BROKERS = ('redis', 'sqlite', pytest.param('cluster', marks=pytest.mark.cluster),
           pytest.param('sentinel', marks=pytest.mark.sentinel))


@pytest.fixture(params=BROKERS)
def driver(request, tmp_path):
    """A driver of each broker, with the key prefix ``PREFIX``."""
    if request.param == 'redis':
        request.getfixturevalue('redis_client')      # the test database, emptied
        drv = mpqueue.RedisDriver(url=request.getfixturevalue('redis_db_url'), prefix=PREFIX)
    elif request.param == 'cluster':
        drv = mpqueue.RedisDriver(url=request.getfixturevalue('redis_cluster').url,
                                  prefix=PREFIX, cluster=True)
    elif request.param == 'sentinel':
        drv = mpqueue.RedisDriver(url=request.getfixturevalue('redis_sentinel').url,
                                  prefix=PREFIX)
    else:
        drv = mpqueue.SqliteDriver(str(tmp_path / 'q.db'))
    try:
        yield drv
    finally:
        drv.close()


@pytest.fixture
def store(request, driver):
    """What ``driver`` stored, read without it (``steps.RedisStore`` or
    ``steps.SqliteStore``)."""
    if isinstance(driver, mpqueue.SqliteDriver):
        driver.run('probe', 'depth')              # the file and its tables exist
        view = steps.SqliteStore(driver.path)
    elif driver.cluster:
        view = steps.RedisStore(request.getfixturevalue('redis_cluster').client(), PREFIX)
    elif driver.service_name is not None:
        view = steps.RedisStore(request.getfixturevalue('redis_sentinel').master_client(),
                                PREFIX)
    else:
        view = steps.RedisStore(redis.Redis.from_url(request.getfixturevalue('redis_db_url')),
                                PREFIX)
    try:
        yield view
    finally:
        view.close()


@pytest.fixture
def queue(driver, store):
    """A queue name of this test alone; emptied afterwards, when nothing of it
    may be left in the broker."""
    name = 'drv-%s' % uuid.uuid4().hex[:12]
    yield name
    steps.empty(driver, name)
    assert steps.counts(driver, name) == steps.zero_counts()
    assert store.leftovers(name) == [], 'left behind: %r' % store.leftovers(name)


# -- processes ---------------------------------------------------------------

class ProcReaper:
    """Remembers processes a test starts and makes sure none outlives it.

    ``add()`` takes a pid, a ``subprocess.Popen``, a
    ``multiprocessing.Process`` or a ``psutil.Process``. At teardown every
    registered process and every descendant seen (at registration or at
    teardown) gets SIGTERM, then SIGKILL if still alive after 5 s.
    """

    def __init__(self):
        self._procs = {}     # pid -> psutil.Process (create time pins identity)
        self._handles = []   # Popen / multiprocessing objects: they reap their own

    def add(self, proc):
        """Register ``proc`` (and its current descendants); return it."""
        if isinstance(proc, int):
            pid = proc
        elif isinstance(proc, psutil.Process):
            pid = proc.pid
        else:
            pid = proc.pid          # subprocess.Popen, multiprocessing.Process
            self._handles.append(proc)
        if pid is None:
            raise ValueError('process %r has no pid (not started?)' % (proc,))
        try:
            ps = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return proc
        self._remember(ps)
        self._remember_children(ps)
        return proc

    def popen(self, args, **kwargs):
        """``subprocess.Popen(args, **kwargs)``, registered. stdin defaults to /dev/null."""
        kwargs.setdefault('stdin', subprocess.DEVNULL)
        return self.add(subprocess.Popen(args, **kwargs))

    def _remember(self, ps):
        known = self._procs.get(ps.pid)
        if known is None or not known.is_running():
            self._procs[ps.pid] = ps

    def _remember_children(self, ps):
        try:
            for child in ps.children(recursive=True):
                self._remember(child)
        except psutil.NoSuchProcess:
            pass

    def _alive(self):
        alive = []
        for ps in self._procs.values():
            try:
                if ps.is_running() and ps.status() != psutil.STATUS_ZOMBIE:
                    alive.append(ps)
            except psutil.NoSuchProcess:
                pass
        return alive

    def _signal_all(self, signum):
        for ps in self._alive():
            try:
                ps.send_signal(signum)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def _refresh(self):
        for ps in list(self._procs.values()):
            self._remember_children(ps)

    def _reap_zombies(self):
        # Children of ours registered by bare pid stay zombies unless waited
        # for; Popen and multiprocessing objects are left to reap their own.
        owned = {handle.pid for handle in self._handles}
        for pid in self._procs:
            if pid not in owned:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except OSError:
                    pass

    def reap(self, timeout=REAP_TIMEOUT):
        """Stop everything registered; called at teardown."""
        self._refresh()
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap_zombies()
            if not self._alive():
                break
            time.sleep(0.05)
        self._refresh()
        if self._alive():
            self._signal_all(signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while self._alive() and time.monotonic() < deadline:
                self._reap_zombies()
                time.sleep(0.02)
        self._reap_zombies()
        for handle in self._handles:
            if isinstance(handle, subprocess.Popen):
                try:
                    handle.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
                for stream in (handle.stdin, handle.stdout, handle.stderr):
                    if stream is not None:
                        stream.close()
            elif hasattr(handle, 'join'):
                handle.join(timeout=1)
        self._procs.clear()
        self._handles.clear()


@pytest.fixture
def proc_reaper():
    """Register processes with ``proc_reaper.add(p)``; none survives the test."""
    reaper = ProcReaper()
    try:
        yield reaper
    finally:
        reaper.reap()


# -- end to end ----------------------------------------------------------------

@pytest.fixture(params=['redis', 'sqlite'])
def e2e(tmp_path, redis_url, redis_db, proc_reaper, request):
    """The end-to-end harness (``pool_harness.E2E``), once per broker: a test
    taking it runs on Redis and on SQLite.  Modules that need another one
    (one broker, a cluster) define their own ``e2e``."""
    from pool_harness import E2E
    harness = E2E(tmp_path, redis_url, redis_db, proc_reaper, request.node.name, request.param)
    try:
        yield harness
    finally:
        harness.close()
