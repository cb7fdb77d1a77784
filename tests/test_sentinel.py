"""mpqueue through Redis Sentinel (fixture ``redis_sentinel``: a master, its
replica and three sentinels on free ports, see ``redis_sentinel.py``).

1. The settings: the ``redis+sentinel://`` URL and the keywords, checked
   when the driver is made (no server needed).
2. The driver finds the master through the sentinels (the contract suite,
   test_drivers.py, runs there too: its ``driver`` fixture has a ``sentinel``
   param); a master demoted under a live connection answers READONLY, and the
   call goes to the new master instead of failing; passwords of the data
   nodes, an ACL user and the sentinels' own password; clear errors.
3. End to end: two pools share a queue while 5,000 jobs are pushed and run;
   the master is SIGKILLed mid-drain; the sentinels promote the replica and
   every process goes on by itself.  Every job is counted, with and without
   ``wait_replicas``, in both models; the figures (pushed, executed,
   duplicated, lost, pause) are printed and appended to ``$MPQ_FAULT_REPORT``
   like those of test_faults.py.

The pools record executions on the shared test Redis (fixture ``redis_url``),
not on the Sentinel setup, so that a failover cannot erase them.  Every key a
test makes is deleted afterwards, and every process it starts is stopped.
"""

import logging
import os
import re
import socket
import threading
import time

import pytest

import mpqueue
from fault_harness import (MODELS, MPQ_ACL_RULES, FaultE2E, Pusher, process_rows,
                           push_tagged, report, tally, wait_all_ran, wait_drained)
from pool_harness import queue_conf, wait_for
from redis_sentinel import SERVICE, LocalSentinel
from redis_server import free_port
from steps import PREFIX, counts, empty, push

FAILOVER_JOBS = 5000
NEW_MASTER_LINE = re.compile(r"\[(\d+)\] Redis Sentinel service '%s': the master is now "
                             r"127\.0\.0\.1:(\d+) \(was 127\.0\.0\.1:(\d+)\)" % SERVICE)


# -- 1. settings ------------------------------------------------------------------

def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database():
    drv = mpqueue.RedisDriver(url='redis+sentinel://app:s3cret@10.0.0.1,10.0.0.2:26380,'
                                  '[::1]:26381/my%20master/3')
    assert drv.sentinels == [('10.0.0.1', 26379), ('10.0.0.2', 26380), ('::1', 26381)]
    assert (drv.service_name, drv.database, drv.ssl) == ('my master', 3, False)
    assert drv.address == ('redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,[::1]:26381/'
                           'my%20master/3')
    assert 's3cret' not in repr(drv) and 's3cret' not in drv.address
    tls = mpqueue.RedisDriver(url='rediss+sentinel://h1/svc')
    assert (tls.ssl, tls.database, tls.address) == (True, 0, 'rediss+sentinel://h1:26379/svc/0')
    keywords = mpqueue.RedisDriver(sentinels=[('h1', 26379), 'h2:26380'], service_name='svc',
                                   database=2, password='pw')
    assert keywords.sentinels == [('h1', 26379), ('h2', 26380)]
    assert keywords.address == 'redis+sentinel://h1:26379,h2:26380/svc/2'


@pytest.mark.parametrize('kwargs, says', [
    ({'url': 'redis+sentinel://h1:26379'}, 'needs the service name'),
    ({'url': 'redis+sentinel://h1:26379/svc/x'}, '/service_name or /service_name/db'),
    ({'url': 'redis+sentinel://h1:26379/svc/0/1'}, '/service_name or /service_name/db'),
    ({'url': 'redis+sentinel://h1:port/svc'}, 'sentinels must be'),
    ({'url': 'redis+sentinel://h1/svc', 'service_name': 'other'}, "service_name='other'"),
    ({'url': 'redis+sentinel://h1/svc', 'sentinels': [('h2', 1)]}, 'not both'),
    ({'url': 'redis+sentinel://h1/svc', 'cluster': True}, 'exclude each other'),
    ({'url': 'redis://h1:6379/0', 'sentinels': [('h2', 1)], 'service_name': 's'},
     'give no url'),
    ({'sentinels': [('h1', 26379)]}, 'needs the service name'),
    ({'sentinels': 'h1:26379', 'service_name': 's'}, 'sentinels must be'),
    ({'sentinels': [], 'service_name': 's'}, 'sentinels must be'),
    ({'sentinels': [('h1', 0)], 'service_name': 's'}, 'sentinels must be'),
    ({'sentinels': [('h1', 1)], 'service_name': 's', 'sentinel_kwargs': 'pw'},
     'sentinel_kwargs must be a dict'),
    ({'url': 'redis://:pw@h1:6379,redis://h2:6379'}, 'needs cluster=True'),
])
def test_bad_sentinel_settings_are_one_clear_config_error(kwargs, says):
    with pytest.raises(mpqueue.ConfigError) as err:
        mpqueue.RedisDriver(**kwargs)
    assert says in str(err.value)
    assert '\n' not in str(err.value) and 'pw@' not in str(err.value)


# -- 2. the driver through the sentinels -----------------------------------------------

def peer_port(waker):
    """The port at the other end of a waker's socket."""
    probe = socket.socket(fileno=os.dup(waker.fileno()))
    try:
        return probe.getpeername()[1]
    finally:
        probe.close()


@pytest.mark.sentinel
@pytest.mark.parametrize('form', ['url', 'keywords'])
def test_the_driver_reaches_the_master_the_sentinels_name(redis_sentinel, form):
    if form == 'url':
        drv = mpqueue.RedisDriver(url=redis_sentinel.url + '/2', prefix=PREFIX)
    else:
        drv = mpqueue.RedisDriver(sentinels=redis_sentinel.sentinel_addresses,
                                  service_name=SERVICE, database=2, prefix=PREFIX)
    name = 'sq-%s' % form
    master = redis_sentinel.master_client(db=2)
    waker = drv.waker(name)
    try:
        push(drv, name, 2)
        assert master.llen('%s:{%s}:waiting' % (PREFIX, name)) == 2
        assert counts(drv, name)['waiting'] == 2
        assert peer_port(waker) == redis_sentinel.master_port
    finally:
        waker.close()
        empty(drv, name)
        drv.close()
        master.close()
    assert redis_sentinel.keys('%s:{%s}' % (PREFIX, name), db=2) == []


@pytest.fixture
def lone_sentinel():
    """A master, a replica and a single sentinel (quorum 1), for a test that
    changes the master behind the sentinel's back."""
    setup = LocalSentinel(replicas=1, sentinels=1, quorum=1).start()
    try:
        yield setup
    finally:
        setup.stop()


def readonly_errors(node):
    stats = node.info('errorstats')
    return int(stats.get('errorstat_READONLY', {}).get('count', 0))


@pytest.mark.sentinel
def test_a_demoted_master_answers_readonly_and_the_call_goes_to_the_new_one(lone_sentinel,
                                                                            caplog):
    setup = lone_sentinel
    drv = mpqueue.RedisDriver(url=setup.url, prefix=PREFIX)
    name = 'sq-readonly'
    old, [new] = setup.master_port, setup.replica_ports()
    old_node, new_node = setup.node(old), setup.node(new)
    try:
        push(drv, name, 1)              # the driver's connection is now open on `old`
        waiting = '%s:{%s}:waiting' % (PREFIX, name)
        wait_for(lambda: new_node.llen(waiting) == 1, 10, 'the replica to have the job')
        # An operator's switch that leaves the clients of the old master
        # connected (no CLIENT KILL): the replica becomes the master, the old
        # master its replica, and the sentinel is told about the new one.
        new_node.execute_command('REPLICAOF', 'NO', 'ONE')
        old_node.execute_command('REPLICAOF', setup.host, new)
        setup.master_port = new
        wait_for(lambda: setup._in_sync(old), 20, 'the old master to replicate the new one')
        sentinel = setup.sentinel_client(setup.sentinels[0])
        try:
            sentinel.execute_command('SENTINEL', 'REMOVE', SERVICE)
            sentinel.execute_command('SENTINEL', 'MONITOR', SERVICE, setup.host, new, 1)
        finally:
            sentinel.close()
        assert readonly_errors(old_node) == 0
        with caplog.at_level(logging.WARNING, logger='mpqueue'):
            push(drv, name, 1)          # no DriverError: READONLY, then the new master
        assert readonly_errors(old_node) == 1
        assert new_node.llen(waiting) == 2
        lines = [r.getMessage() for r in caplog.records if 'the master is now' in r.getMessage()]
        assert lines == ["Redis Sentinel service '%s': the master is now 127.0.0.1:%d (was "
                         "127.0.0.1:%d); reconnected to it" % (SERVICE, new, old)]
        empty(drv, name)
        assert setup.keys('%s:{%s}' % (PREFIX, name)) == []
    finally:
        drv.close()
        old_node.close()
        new_node.close()


@pytest.mark.sentinel
def test_a_call_to_a_master_that_stopped_answering_gives_up_and_the_next_goes_to_the_new_one(
        redis_sentinel, monkeypatch):
    # A host that vanished sends no reset: without a reply timeout a call
    # would wait for good.  Through Sentinel the driver waits at most
    # SENTINEL_REPLY_TIMEOUT + wait_timeout (made short here).
    monkeypatch.setattr(mpqueue.RedisDriver, 'SENTINEL_REPLY_TIMEOUT', 1.0)
    setup = redis_sentinel
    drv = mpqueue.RedisDriver(url=setup.url, prefix=PREFIX, wait_replicas=1, wait_timeout=0.5)
    name = 'sq-frozen'
    try:
        push(drv, name, 1)
        old, new = setup.freeze_master()
        try:
            started = time.monotonic()
            with pytest.raises(mpqueue.DriverError) as err:
                counts(drv, name)
            assert time.monotonic() - started < 1.5 + 1.0, 'the call waited too long'
            assert 'master 127.0.0.1:%d' % old in str(err.value)

            def answers():
                try:
                    return counts(drv, name)
                except mpqueue.DriverError:
                    return None
            assert wait_for(answers, 30, 'a call to reach the promoted replica')['waiting'] == 1
            setup.wait_promoted(new)
        finally:
            setup.restore(old)
        empty(drv, name)
    finally:
        drv.close()
    assert setup.keys('%s:{%s}' % (PREFIX, name)) == []


ACL_PASSWORD = 'mpq-user-pw'
DATA_PASSWORD = 'data-pw'
SENTINEL_PASSWORD = 'sentinel-pw'


@pytest.fixture
def secured_sentinel():
    """A master with a password and an ACL user holding only what mpqueue
    needs (the README's rule), watched by a sentinel with a password of its own."""
    setup = LocalSentinel(replicas=0, sentinels=1, quorum=1,
                          data_args=('--requirepass', DATA_PASSWORD),
                          sentinel_conf=['sentinel auth-pass %s %s' % (SERVICE, DATA_PASSWORD)],
                          sentinel_password=SENTINEL_PASSWORD).start()
    admin = setup.master_client()
    try:
        admin.execute_command(
            'ACL', 'SETUSER', 'mpq', 'on', '>' + ACL_PASSWORD,
            *MPQ_ACL_RULES.replace('mpq:*', PREFIX + ':*').split())
        yield setup
    finally:
        admin.close()
        setup.stop()


def pushes_and_empties(drv, name):
    """One job pushed through ``drv``, counted and cleaned away; ``drv`` closed."""
    try:
        push(drv, name, 1)
        assert counts(drv, name)['waiting'] == 1
        empty(drv, name)
    finally:
        drv.close()


@pytest.mark.sentinel
def test_passwords_acl_user_and_the_sentinels_own_password(secured_sentinel):
    setup = secured_sentinel
    hosts = ','.join('%s:%d' % hp for hp in setup.sentinel_addresses)
    good = mpqueue.RedisDriver(url='redis+sentinel://mpq:%s@%s/%s' % (ACL_PASSWORD, hosts, SERVICE),
                               prefix=PREFIX, sentinel_kwargs={'password': SENTINEL_PASSWORD})
    name = 'sq-auth'
    pushes_and_empties(good, name)

    def error_of(**kwargs):
        drv = mpqueue.RedisDriver(prefix=PREFIX, **kwargs)
        try:
            with pytest.raises(mpqueue.DriverError) as err:
                counts(drv, name)
        finally:
            drv.close()
        text = str(err.value)
        assert '\n' not in text and ACL_PASSWORD not in text and SENTINEL_PASSWORD not in text
        return text

    # no password for the sentinels
    text = error_of(url='redis+sentinel://mpq:%s@%s/%s' % (ACL_PASSWORD, hosts, SERVICE))
    assert 'redis+sentinel://%s/%s/0' % (hosts, SERVICE) in text
    assert 'sentinel_kwargs' in text
    # a wrong one for the master's user
    text = error_of(url='redis+sentinel://mpq:wrong@%s/%s' % (hosts, SERVICE),
                    sentinel_kwargs={'password': SENTINEL_PASSWORD})
    assert 'authentication failed' in text and 'master 127.0.0.1:%d' % setup.master_port in text
    # a service the sentinels do not know
    text = error_of(url='redis+sentinel://%s/nope' % hosts,
                    sentinel_kwargs={'password': SENTINEL_PASSWORD})
    assert "no sentinel names a master of service 'nope'" in text
    # no sentinel answers
    nobody = free_port()
    text = error_of(sentinels=[('127.0.0.1', nobody)], service_name=SERVICE)
    assert 'cannot reach Redis at redis+sentinel://127.0.0.1:%d/%s/0' % (nobody, SERVICE) in text
    assert '127.0.0.1:%d' % nobody in text.split(': ', 2)[-1]
    assert setup.keys(PREFIX) == []


@pytest.fixture
def tls_sentinel():
    """A master and a sentinel that serve TLS only; the sentinel reaches the
    master over TLS too."""
    setup = LocalSentinel(replicas=0, sentinels=1, quorum=1, tls=True).start()
    try:
        yield setup
    finally:
        setup.stop()


@pytest.mark.sentinel
def test_tls_to_the_sentinels_and_to_the_master(tls_sentinel):
    setup = tls_sentinel
    assert setup.url.startswith('rediss+sentinel://')
    ca = setup.sentinels[-1].ca_file        # trusts the master's certificate and its own
    drv = mpqueue.RedisDriver(url=setup.url, prefix=PREFIX, ssl_ca_certs=ca)
    name = 'sq-tls'
    pushes_and_empties(drv, name)
    # the sentinels reached without TLS (sentinel_kwargs wins) do not answer
    plain = mpqueue.RedisDriver(url=setup.url, prefix=PREFIX, ssl_ca_certs=ca,
                                sentinel_kwargs={'ssl': False})
    try:
        with pytest.raises(mpqueue.DriverError) as err:
            counts(plain, name)
    finally:
        plain.close()
    assert 'cannot reach Redis at rediss+sentinel://127.0.0.1:%d/%s/0' % (
        setup.sentinels[0].port, SERVICE) in str(err.value)
    assert '\n' not in str(err.value)
    assert setup.keys(PREFIX) == []


# -- 3. end to end: the master killed under load ---------------------------------------

@pytest.fixture
def e2e(tmp_path, redis_url, redis_db, redis_sentinel, proc_reaper, request):
    """The fault-test harness with the pools' broker found through the
    sentinels."""
    yield from FaultE2E.on(redis_sentinel, redis_sentinel.url, request, tmp_path, redis_url,
                           redis_db, proc_reaper)


def new_master_lines(pool):
    """``{pid: [(new port, old port)]}`` of the failover lines in a pool's log."""
    out = {}
    for found in NEW_MASTER_LINE.finditer(pool.log_file.read_text(errors='replace')):
        out.setdefault(int(found.group(1)), []).append((int(found.group(2)),
                                                        int(found.group(3))))
    return out


@pytest.mark.sentinel
@pytest.mark.slow
@pytest.mark.parametrize('wait_replicas', [1, 0], ids=['wait_replicas=1', 'no_wait'])
@pytest.mark.parametrize('model', MODELS)
def test_master_killed_mid_drain_the_pools_go_on_with_the_promoted_replica(
        e2e, redis_sentinel, model, wait_replicas):
    setup = redis_sentinel
    if wait_replicas:
        e2e.broker_kwargs = {'wait_replicas': wait_replicas}
    stats_key = '%s:{q}:stats' % e2e.prefix
    # sleep_seconds=30: only a wake-up makes an idle master look soon
    pools = [e2e.pool(queue_conf(model=model, worker_number=2, fail_number=3,
                                 fail_expire=0.2, sleep_seconds=30),
                      name='pool-%s-%s' % (side, e2e.prefix[-6:])).start() for side in 'ab']
    assert len({pool.manage_pid() for pool in pools}) == 2
    jobs = e2e.import_jobs()
    before = [process_rows(pool) for pool in pools]
    tags = ['job-%04d' % i for i in range(FAILOVER_JOBS)]
    pusher = Pusher(jobs, tags, seconds=0, batch=100, pause=0.02)
    pusher.start()
    # mid-drain, and mid-push: without wait_replicas, what a push returned
    # just before the kill may not be on the replica yet
    pools[0].wait(lambda: pusher.error or (len(pusher.pushed) >= 0.4 * len(tags) and
                                           len(e2e.executions()) >= 0.2 * len(tags)), 60,
                  'a fifth of the jobs to run while pushing goes on')
    waiter = None
    if wait_replicas:   # a result() waiting across the failover, on a job due after it
        [late] = push_tagged(jobs, ['late'], delay=4, result_ttl=60)
        outcome = {}
        waiter = threading.Thread(target=lambda: outcome.update(
            value=_catch(mpqueue.result, 'q', late, timeout=40)), daemon=True)
        waiter.start()
        time.sleep(0.2)

    old, new = setup.kill_master()
    killed_at = time.monotonic()
    # nothing writes to the replica until it is promoted: what it has now
    # is what the new master starts from
    replica = setup.node(new)
    try:
        done_at_kill = int(replica.hget(stats_key, 'done') or 0)
    finally:
        replica.close()
    setup.wait_promoted(new)
    promoted_at = time.monotonic()
    new_master = setup.node(new)
    try:
        pools[0].wait(lambda: int(new_master.hget(stats_key, 'done') or 0) > done_at_kill, 30,
                      'the pools to record finished jobs on the promoted replica')
    finally:
        new_master.close()
    resumed_at = time.monotonic()
    setup.restore(old)      # pushes that wait for a replica need one again
    pusher.join(120)
    assert pusher.error is None, pusher.error
    pushed = list(pusher.pushed) + (['late'] if waiter is not None else [])
    wait_all_ran(e2e, pools[0], pushed, 60)
    final = wait_drained(pools[0], 'q', timeout=60, failed=0)
    figures = tally(e2e, pushed)

    # The masters are woken up through the new master (sleep_seconds=30),
    # and the command line works through the sentinels.
    later = ['later-%d' % i for i in range(10)]
    pushed_at = time.monotonic()
    push_tagged(jobs, later)
    wait_all_ran(e2e, pools[0], later, 10)
    woken_in = time.monotonic() - pushed_at
    res = pools[1].cli('queue:status')
    assert res.returncode == 0 and 'q' in res.stdout, res.stderr
    if waiter is not None:
        waiter.join(30)
        assert outcome == {'value': None}, outcome

    after = [process_rows(pool) for pool in pools]
    logged = [new_master_lines(pool) for pool in pools]
    report('sentinel master SIGKILL (%s, wait_replicas=%d)' % (model, wait_replicas),
           figures, resumed_at - killed_at, promotion_s=round(promoted_at - killed_at, 3),
           refused_pushes=pusher.refused, pushed_twice=final['all'] - figures['pushed'],
           status=final,
           processes_unchanged=after == before, woken_after_s=round(woken_in, 3),
           processes_logging_failover=sum(len(by_pid) for by_pid in logged))

    if wait_replicas:
        assert figures['lost'] == 0, figures
    assert final['failed'] == 0, final
    assert after == before, 'a process was restarted'
    assert woken_in < 5, 'the masters were not woken up through the new master'
    for pool, by_pid, rows in zip(pools, logged, after):
        masters = [pid for pid, kind in rows.items() if kind == 'master']
        assert all(by_pid.get(pid) == [(new, old)] for pid in masters), (by_pid, masters)
        assert all(lines == [(new, old)] for lines in by_pid.values()), by_pid


def _catch(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as exc:     # reported by the test
        return exc
