"""A Redis Sentinel setup for the test suite: one master, one replica and
three sentinels, each a ``redis-server`` of its own on a free port of
127.0.0.1 (so that several test runs can share a machine).

``LocalSentinel().start()`` starts the master, then the replica (and waits
until it is in sync), then the sentinels, and waits until each sentinel knows
the master, the replica and the two other sentinels (a failover needs them to
agree).  ``stop()`` stops every process, by pid, and removes their
directories::

    setup = LocalSentinel().start()
    setup.url                        # redis+sentinel://127.0.0.1:P1,...:P3/mpqtest
    client = setup.master_client()   # a redis.Redis on the current master
    old, new = setup.kill_master()   # SIGKILL the master; ports (old, replica)
                                     # (or freeze_master(): SIGSTOP)
    setup.wait_promoted(new)         # every sentinel names the replica now
    setup.restore(old)               # the old master back, as the new one's replica
    setup.stop()

Settings, and why:

- ``down-after-milliseconds 2000``: a master that does not answer for 2 s is
  down for a sentinel; with a quorum of 2 and the election that follows, the
  replica is promoted 3-4 s after the master dies.  Not less: a sentinel pings
  every second, and a master just promoted (busy with the pools that rush to
  it and with the copy for a returning replica) that missed one second would
  be failed over again, to a replica still copying.
- ``failover-timeout 3000``: bounds each phase of a failover, and the wait
  before a sentinel tries a failover of the same master again (twice it).
- ``repl-diskless-sync-delay 0``, ``repl-ping-replica-period 1``: a replica
  gets its first copy at once, and its offset moves every second.
- No persistence: the killed master comes back empty, so ``restore`` starts
  it as a replica of the new master at once (``--replicaof``); started as a
  master it would hand its empty data set to anybody who asked it before the
  sentinels turned it into a replica.
"""

import os
import signal
import sys
import time

import redis

from redis_server import RedisServer, ask, free_port, no_retry, wait_for

__all__ = ['LocalSentinel', 'SentinelServer', 'SERVICE']

SERVICE = 'mpqtest'
QUORUM = 2
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 3000
DATA_OPTIONS = ('--repl-diskless-sync-delay', 0, '--repl-ping-replica-period', 1)
READY_TIMEOUT = 30.0        # the setup up, or a node back, with every sentinel agreeing
FAILOVER_TIMEOUT = 20.0     # the replica promoted after the master died


def _fields(state):
    """A sentinel's description of an instance as a dict (redis-py parses
    some replies already, depending on its version and protocol)."""
    return state if isinstance(state, dict) else dict(zip(state[::2], state[1::2]))


def _flags(state):
    flags = state.get('flags', '')
    return set(flags.split(',')) if isinstance(flags, str) else set(flags)


class SentinelServer(RedisServer):
    """One ``redis-server --sentinel`` on ``port``, from a config file it
    writes into its directory (sentinels rewrite their file as they learn).

    With ``tls``, it serves TLS only and reaches the master over TLS too,
    trusting the certificates in ``trust`` besides its own; ``ca_file`` is
    then a bundle of all of them, for clients of the whole setup."""

    def __init__(self, port, conf_lines, tls=False, trust=()):
        super().__init__(port, tls=tls)
        self.conf_lines = list(conf_lines)
        self.trust = list(trust)

    def command(self):
        conf = os.path.join(self.dir, 'sentinel.conf')
        if not os.path.exists(conf):
            with open(conf, 'w') as fh:
                fh.write('\n'.join(self.conf_lines) + '\n')
        args = [super().command()[0], conf, '--sentinel', '--port', str(self.port),
                '--bind', self.host, '--daemonize', 'no', '--dir', self.dir, '--logfile', '']
        if self.tls:
            args += self._make_certificate()
            bundle = os.path.join(self.dir, 'bundle.pem')
            with open(bundle, 'w') as out:
                for path in [self.ca_file] + self.trust:
                    with open(path) as cert:
                        out.write(cert.read())
            self.ca_file = bundle
            args += ['--tls-ca-cert-file', bundle, '--tls-replication', 'yes']
        return args


class LocalSentinel:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels on free ports.

    :param data_args: more redis-server arguments for the master and replicas
        (``--requirepass`` is honoured by ``master_client``; give
        ``--masterauth`` too, and ``sentinel_conf`` the matching
        ``sentinel auth-pass``).
    :param sentinel_conf: more lines for each sentinel's config file.
    :param sentinel_password: the sentinels' own ``requirepass`` (they then
        authenticate to each other with it too).
    :param tls: every server serves TLS only (no replicas then); the last
        sentinel's ``ca_file`` trusts them all.
    """

    host = '127.0.0.1'

    def __init__(self, replicas=1, sentinels=3, quorum=QUORUM, data_args=(),
                 sentinel_conf=(), sentinel_password=None, service=SERVICE, tls=False):
        if tls and replicas:
            raise ValueError('a TLS setup has no replicas here (they would need a CA of their own)')
        self.service, self.tls = service, tls
        self.n_replicas, self.n_sentinels, self.quorum = replicas, sentinels, quorum
        self.data_args = [str(a) for a in DATA_OPTIONS + tuple(data_args)]
        self.sentinel_conf = list(sentinel_conf)
        self.sentinel_password = sentinel_password
        self.data = {}          # port -> RedisServer (master and replicas)
        self.sentinels = []     # SentinelServer, in order
        self.master_port = None

    # -- addresses and clients ---------------------------------------------------

    @property
    def url(self):
        """``redis+sentinel://`` URL of the setup (``rediss+sentinel://`` with
        TLS; no password, database 0)."""
        return '%s://%s/%s' % ('rediss+sentinel' if self.tls else 'redis+sentinel',
            ','.join('%s:%d' % (self.host, s.port) for s in self.sentinels), self.service)

    @property
    def sentinel_addresses(self):
        return [(self.host, s.port) for s in self.sentinels]

    def sentinel_client(self, sentinel, timeout=1.0):
        return redis.Redis(socket_timeout=timeout, socket_connect_timeout=timeout,
                           retry=no_retry(), decode_responses=True, **sentinel.client_kwargs())

    def _ask(self, sentinel, *command):
        """One command to one sentinel; None if it does not answer."""
        return ask(self.sentinel_client(sentinel), *command)

    def named_master(self):
        """The master's port as every sentinel names it, or None while they differ."""
        named = set()
        for sentinel in self.sentinels:
            addr = self._ask(sentinel, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', self.service)
            named.add(int(addr[1]) if addr else None)
        return named.pop() if len(named) == 1 else None

    def node(self, port, timeout=1.0, **kwargs):
        """A plain ``redis.Redis`` on one data node."""
        return self.data[port].client(socket_timeout=timeout, socket_connect_timeout=timeout,
                                      retry=no_retry(), **kwargs)

    def master_client(self, **kwargs):
        """A ``redis.Redis`` on the current master (database 0 unless ``db=``)."""
        self._follow()
        return self.data[self.master_port].client(**kwargs)

    def _follow(self):
        """Take the master the sentinels name as ours (should they have failed
        over by themselves, on a machine too busy to answer them in time)."""
        named = self.named_master()
        if named in self.data:
            self.master_port = named

    def replica_ports(self):
        return sorted(port for port in self.data if port != self.master_port)

    def _role(self, port):
        client = self.node(port)
        try:
            return client.execute_command('ROLE')
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    def _in_sync(self, port):
        """A replica of the current master, its link up."""
        role = self._role(port)
        return (role is not None and role[0] == b'slave' and int(role[2]) == self.master_port
                and role[3] == b'connected')

    # -- health ------------------------------------------------------------------------

    def healthy(self):
        """Every sentinel names the master, knows the others and sees every
        replica up and linked to it."""
        if self.named_master() != self.master_port:
            return False
        want_replicas = set(self.replica_ports())
        for sentinel in self.sentinels:
            state = self._ask(sentinel, 'SENTINEL', 'MASTER', self.service)
            if not state:
                return False
            state = _fields(state)
            if int(state.get('num-other-sentinels', -1)) != len(self.sentinels) - 1 or \
                    _flags(state) != {'master'}:
                return False
            good = set()
            for entry in map(_fields, self._ask(sentinel, 'SENTINEL', 'REPLICAS', self.service)
                             or []):
                if _flags(entry) == {'slave'} and entry.get('master-link-status') == 'ok' \
                        and int(entry.get('master-port', 0)) == self.master_port:
                    good.add(int(entry['port']))
            if not want_replicas <= good:
                return False
        return all(self._in_sync(port) for port in want_replicas)

    def wait_healthy(self, timeout=READY_TIMEOUT):
        wait_for(self.healthy, timeout, lambda: 'the Sentinel setup %r to be whole (master '
                 '%s, replicas %s; the sentinels name %s)\n%s' % (
                     self.url, self.master_port, self.replica_ports(), self.named_master(),
                     self.logs()), interval=0.1)

    def logs(self, lines=25):
        """The end of each sentinel's log, for failure messages."""
        return '\n'.join('--- sentinel 127.0.0.1:%d ---\n%s' % (s.port, s.log_tail(lines))
                         for s in self.sentinels)

    # -- life cycle ----------------------------------------------------------------------

    def start(self):
        try:
            self.master_port = free_port()
            self.data[self.master_port] = RedisServer(self.master_port, *self.data_args,
                                                      tls=self.tls).start()
            for _ in range(self.n_replicas):
                port = free_port()
                self.data[port] = RedisServer(port, *self._replica_args()).start()
            for port in self.replica_ports():
                wait_for(lambda: self._in_sync(port), READY_TIMEOUT,
                         'replica 127.0.0.1:%d to be in sync' % port)
            lines = ['sentinel monitor %s %s %d %d' % (self.service, self.host,
                                                       self.master_port, self.quorum),
                     'sentinel down-after-milliseconds %s %d' % (self.service, DOWN_AFTER_MS),
                     'sentinel failover-timeout %s %d' % (self.service, FAILOVER_TIMEOUT_MS),
                     'sentinel parallel-syncs %s 1' % self.service] + self.sentinel_conf
            if self.sentinel_password:
                lines += ['requirepass %s' % self.sentinel_password,
                          'sentinel sentinel-pass %s' % self.sentinel_password]
            trust = [server.ca_file for server in self.data.values() if server.tls]
            for _ in range(self.n_sentinels):
                server = SentinelServer(free_port(), lines, tls=self.tls, trust=trust)
                server.password = self.sentinel_password     # for its PING when starting
                self.sentinels.append(server)
                server.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _replica_args(self):
        return self.data_args + ['--replicaof', self.host, str(self.master_port)]

    def stop(self):
        """Stop every process we started (SIGTERM, then SIGKILL) and remove their files."""
        for server in self.sentinels + list(self.data.values()):
            server.stop()
        self.sentinels, self.data = [], {}

    def kill_master(self):
        """SIGKILL the master; return ``(its port, the replica's port)``."""
        self._follow()
        self.wait_healthy()
        old = self.master_port
        [replica] = self.replica_ports()
        self.data[old].kill()
        return old, replica

    def freeze_master(self):
        """SIGSTOP the master (a host that vanished: connections stay open but
        nothing answers); return ``(its port, the replica's port)``.
        ``restore`` kills it first."""
        self._follow()
        self.wait_healthy()
        old = self.master_port
        [replica] = self.replica_ports()
        os.kill(self.data[old].pid, signal.SIGSTOP)
        return old, replica

    def wait_promoted(self, replica, timeout=FAILOVER_TIMEOUT):
        """Until every sentinel names ``replica`` and it says it is a master."""
        def promoted():
            role = self._role(replica)
            return role is not None and role[0] == b'master' and self.named_master() == replica
        wait_for(promoted, timeout, lambda: 'the sentinels to promote replica 127.0.0.1:%d '
                 '(they name %s)\n%s' % (replica, self.named_master(), self.logs()),
                 interval=0.05)
        self.master_port = replica

    def restore(self, port, timeout=READY_TIMEOUT):
        """Start the killed node ``port`` again, as a replica of the current
        master, and wait until the setup is whole (a next failover can
        promote it)."""
        server = self.data[port]
        server.kill()           # if it is still there (frozen)
        server.extra_args = self._replica_args()
        server.start()
        self.wait_healthy(timeout)

    def keys(self, prefix, db=0):
        client = self.master_client(db=db)
        try:
            return list(client.scan_iter(match=prefix + '*', count=1000))
        finally:
            client.close()

    def delete_keys(self, prefix, db=0):
        client = self.master_client(db=db)
        try:
            for key in client.scan_iter(match=prefix + '*', count=1000):
                client.delete(key)
        finally:
            client.close()

    def __repr__(self):
        return '<LocalSentinel %s master=%s replicas=%s>' % (
            self.url, self.master_port, self.replica_ports())


def main():
    """``python tests/redis_sentinel.py``: run a test Sentinel setup until Ctrl-C
    or SIGTERM (for benchmarks by hand); prints its URL and its master."""
    setup = LocalSentinel().start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print('Redis Sentinel %s (master redis://127.0.0.1:%d, replica %s); Ctrl-C stops it'
          % (setup.url, setup.master_port, setup.replica_ports()), flush=True)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        setup.stop()


if __name__ == '__main__':
    main()
