"""A Redis Cluster for the test suite: six ``redis-server`` nodes on
127.0.0.1:7000-7005, three masters and three replicas.

``LocalCluster().start()`` reuses a cluster that already answers on port 7000
(it is then not ours: the tests do not kill its nodes, ``stop()`` leaves it
running, and if another test run started it, it stops when that run ends).
Otherwise it starts the six nodes (``RedisServer``, each in a temporary
directory of its own), joins them with ``redis-cli --cluster create ...
--cluster-replicas 1`` and waits until every node says ``cluster_state:ok``.
``stop()`` stops, by pid, the nodes it started and removes their directories::

    cluster = LocalCluster().start()
    client = cluster.client()                # a redis.cluster.RedisCluster
    master = cluster.master_of(key)          # port of the master owning key's slot
    replica = cluster.kill(master)           # SIGKILL; returns the replica's port
    cluster.wait_promoted(replica)           # the replica took over the slots
    cluster.restart(master)                  # back, as a replica of its old replica
    cluster.stop()

Node settings, and why (``NODE_OPTIONS``):

- ``cluster-node-timeout 1000``: a dead master is marked FAIL after 1 s and
  its replica is promoted about a second later, so a failover test is quick.
- ``cluster-replica-validity-factor 0``: a replica may always take over, however
  long ago it last heard from its master (the test must not hang on it).
- ``cluster-require-full-coverage no``: while one master is down only its own
  slots stop answering; queues whose slots live on other masters go on.
- ``repl-diskless-sync-delay 0``: a replica gets its first copy at once, not
  after the default 5 s wait for other replicas; ``repl-ping-replica-period 1``:
  CLUSTER SLOTS lists a replica only once its replication offset moved, which
  an idle master otherwise does every 10 s.
- ``appendonly yes``, ``appendfsync always``: a node acknowledges a write only
  once it is on its disk, so a node that crashes and comes back before its
  replica was promoted loses nothing it acknowledged.  Replication is
  asynchronous, though: what a master acknowledged may not have reached its
  replica when the master dies, and the promoted replica would not have it.
  Replicas cannot make that safe by configuration (``min-replicas-to-write``
  only refuses writes when no replica is connected with a small lag; it does
  not wait for any given write), so the tests use the driver's
  ``wait_replicas=1``: a push returns only once a replica has the jobs (WAIT).
  The other steps of a job are not waited for: one that is lost in a failover
  leaves the job in an earlier state, from which it runs again (a duplicate,
  never a loss).
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import redis
from redis.cluster import ClusterNode, RedisCluster

from redis_server import (RedisServer, ask, ensure_redis_server_binary, no_retry,
                          port_in_use, wait_for)

__all__ = ['CLUSTER_PORTS', 'LocalCluster']

CLUSTER_PORTS = tuple(range(7000, 7006))
NODE_TIMEOUT_MS = 1000
NODE_OPTIONS = ('--cluster-enabled', 'yes', '--cluster-node-timeout', NODE_TIMEOUT_MS,
                '--cluster-replica-validity-factor', 0,
                '--cluster-require-full-coverage', 'no', '--repl-diskless-sync-delay', 0,
                '--repl-ping-replica-period', 1,
                '--appendonly', 'yes', '--appendfsync', 'always')
READY_TIMEOUT = 30.0            # creating the cluster, or a node rejoining it
FAILOVER_TIMEOUT = 20.0         # a replica taking over from a dead master


def _redis_cli():
    path = shutil.which('redis-cli')
    if path is None:
        path = os.path.join(os.path.dirname(ensure_redis_server_binary()), 'redis-cli')
    if not os.access(path, os.X_OK):
        raise RuntimeError('redis-cli not found on PATH: it comes with redis-server '
                           '(e.g. apt-get install redis-server)')
    return path


class LocalCluster:
    """Six cluster nodes on ``ports`` (three masters, one replica each)."""

    host = '127.0.0.1'

    def __init__(self, ports=CLUSTER_PORTS):
        self.ports = tuple(ports)
        self.name = 'the Redis Cluster on %s:%d-%d' % (self.host, min(ports), max(ports))
        self.servers = {}       # port -> RedisServer, for the nodes we started
        self.owned = False      # True if we started the cluster (and may kill its nodes)

    @property
    def url(self):
        return 'redis://%s:%d' % (self.host, self.ports[0])

    @property
    def urls(self):
        """Every node, as the comma-separated URL list ``RedisDriver`` takes."""
        return ','.join('redis://%s:%d' % (self.host, port) for port in self.ports)

    # -- clients and cluster state --------------------------------------------

    def node(self, port, timeout=1.0):
        """A plain ``redis.Redis`` on one node (no redirections followed)."""
        return redis.Redis(self.host, port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, retry=no_retry())

    def client(self, **kwargs):
        """A ``redis.cluster.RedisCluster`` knowing every node."""
        nodes = [ClusterNode(self.host, port) for port in self.ports]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    def _ask(self, port, *command):
        """One command to one node; None if the node does not answer."""
        return ask(self.node(port), *command)

    def read_replica(self, port, *command):
        """A read command on a replica (after READONLY: else it redirects to its master)."""
        client = self.node(port)
        try:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command('READONLY')
            pipe.execute_command(*command)
            return pipe.execute()[1]
        finally:
            client.close()

    def info(self, port):
        """``CLUSTER INFO`` of a node as a dict, or None."""
        raw = self._ask(port, 'CLUSTER', 'INFO')
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        return dict(line.split(':', 1) for line in text.split() if ':' in line)

    def _alive_ports(self):
        return [port for port in self.ports if self._ask(port, 'PING')]

    def slots(self):
        """``[(first slot, last slot, master port, [replica ports])]`` as a live
        node sees it."""
        for port in self._alive_ports():
            raw = self._ask(port, 'CLUSTER', 'SLOTS')
            if raw:
                return [(int(r[0]), int(r[1]), int(r[2][1]), [int(n[1]) for n in r[3:]])
                        for r in raw]
        raise RuntimeError('no node of %s answers CLUSTER SLOTS' % self.name)

    def keyslot(self, key):
        for port in self._alive_ports():
            slot = self._ask(port, 'CLUSTER', 'KEYSLOT', key)
            if slot is not None:
                return int(slot)
        raise RuntimeError('no node of %s answers CLUSTER KEYSLOT' % self.name)

    def master_of(self, key):
        """Port of the master owning ``key``'s slot."""
        slot = self.keyslot(key)
        for first, last, master, replicas in self.slots():
            if first <= slot <= last:
                return master
        raise RuntimeError('slot %d of key %r is not served by %s' % (slot, key, self.name))

    def replicas_of(self, master):
        return sorted({port for _, _, m, replicas in self.slots() if m == master
                       for port in replicas})

    def masters(self):
        return sorted({master for _, _, master, _ in self.slots()})

    def healthy(self):
        """Every node answers, says ``cluster_state:ok``, and there are three
        masters with one replica each."""
        infos = [self.info(port) for port in self.ports]
        if not all(i and i.get('cluster_state') == 'ok' and i.get('cluster_known_nodes') ==
                   str(len(self.ports)) for i in infos):
            return False
        layout = self.slots()
        return (len({m for _, _, m, _ in layout}) == len(self.ports) // 2 and
                all(len(replicas) == 1 for _, _, _, replicas in layout))

    # -- life cycle -----------------------------------------------------------

    def start(self):
        """Reuse the cluster answering on the first port, or start one."""
        if port_in_use(self.ports[0]):
            info = self.info(self.ports[0])
            if not info or info.get('cluster_state') != 'ok':
                raise RuntimeError('127.0.0.1:%d answers but is not a healthy Redis Cluster '
                                   'node: stop it to let the tests start their own cluster'
                                   % self.ports[0])
            return self
        busy = [port for port in self.ports if port_in_use(port)]
        if busy:
            raise RuntimeError('cannot start a Redis Cluster on 127.0.0.1:%s: port(s) %s '
                               'already in use' % (','.join(map(str, self.ports)),
                                                   ', '.join(map(str, busy))))
        self.owned = True
        try:
            for port in self.ports:
                server = RedisServer(port, '--cluster-config-file', 'nodes-%d.conf' % port,
                                     *NODE_OPTIONS)
                self.servers[port] = server
                server.start()
            made = subprocess.run([_redis_cli(), '--cluster', 'create'] +
                                  ['%s:%d' % (self.host, port) for port in self.ports] +
                                  ['--cluster-replicas', '1', '--cluster-yes'],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=READY_TIMEOUT)
            if made.returncode != 0:
                raise RuntimeError('redis-cli --cluster create failed (status %d) for %s: %s'
                                   % (made.returncode, self.name,
                                      made.stdout.decode(errors='replace').strip()[-500:]))
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Stop the nodes we started (SIGTERM, then SIGKILL) and remove their files."""
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def kill(self, master):
        """SIGKILL the master node on port ``master``; return its replica's port."""
        if not self.owned:
            raise RuntimeError('%s was not started by the tests: its nodes are not theirs '
                               'to kill' % self.name)
        [replica] = self.replicas_of(master)
        self.servers[master].kill()
        return replica

    def wait_promoted(self, replica, timeout=FAILOVER_TIMEOUT):
        """Until ``replica`` is a master and the cluster is ok again."""
        def promoted():
            info = self.info(replica)
            return (info is not None and info.get('cluster_state') == 'ok' and
                    replica in self.masters())
        wait_for(promoted, timeout, 'replica 127.0.0.1:%d of %s to be promoted'
                 % (replica, self.name))

    def restart(self, port, timeout=READY_TIMEOUT):
        """Start a killed node again on its own files: it rejoins the cluster
        (as the replica of whoever took its slots); wait until all is healthy."""
        self.servers[port].start()

        def synced():
            role = self._ask(port, 'ROLE')
            return role is not None and role[0] == b'slave' and role[3] == b'connected'
        wait_for(synced, timeout, 'node 127.0.0.1:%d to be a replica in sync' % port)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout=READY_TIMEOUT):
        wait_for(self.healthy, timeout, 'every node of %s to say cluster_state:ok, three '
                 'masters with a replica each' % self.name)

    def keys(self, prefix):
        """Every key starting with ``prefix``, on every master."""
        client = self.client()
        try:
            return list(client.scan_iter(match=prefix + '*', count=1000))
        finally:
            client.close()

    def delete_keys(self, prefix):
        """Delete every key starting with ``prefix``."""
        keys = self.keys(prefix)
        client = self.client()
        try:
            for key in keys:
                client.delete(key)
        finally:
            client.close()

    def __repr__(self):
        return '<LocalCluster %s%s>' % (self.urls, '' if self.owned else ' (reused)')


def main():
    """``python tests/redis_cluster.py``: run a test cluster until Ctrl-C or SIGTERM
    (for benchmarks by hand)."""
    cluster = LocalCluster().start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print('Redis Cluster %s%s; Ctrl-C stops it' % (
        cluster.urls, '' if cluster.owned else ' (already running: not ours)'), flush=True)
    try:
        while cluster.owned:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()


if __name__ == '__main__':
    main()
