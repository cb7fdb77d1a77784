"""mpqueue on a Redis Cluster (fixture ``redis_cluster``: three masters and
three replicas on 127.0.0.1:7000-7005, see ``redis_cluster.py``).

1. The driver on a cluster: each queue goes to the master of its slot, a
   stale slot map is read again, pushes wait for replicas.  (The driver
   contract suite itself, test_drivers.py, runs on the cluster too: its
   ``driver`` fixture has a ``cluster`` param, marked like this module.)
2. End to end (``python mpqueue_cli.py worker:start``): one queue on each
   master, every job runs exactly once, wake-ups reach idle masters.
3. A master SIGKILLed while a pool drains its queue: its replica is promoted,
   no job is lost and the pool resumes by itself.  The figures (pushed,
   executed, duplicated, lost, time to resume) are printed and appended to
   ``$MPQ_FAULT_REPORT`` like those of test_faults.py.

The pools record executions on the shared test Redis (fixture ``redis_url``),
not on the cluster, so that a failover cannot erase them.  Every key a test
makes on the cluster is deleted afterwards.
"""

import time

import pytest

import mpqueue
from fault_harness import (MODELS, FaultE2E, process_rows, push_tagged, report,
                           tally, wait_all_ran, wait_drained)
from pool_harness import parse_exposition, queue_conf, sample, wait_fleet
from steps import PREFIX, counts, empty, push


pytestmark = pytest.mark.cluster


@pytest.fixture
def driver(redis_cluster):
    """A driver on the cluster (this module's tests need no other broker)."""
    drv = mpqueue.RedisDriver(url=redis_cluster.url, prefix=PREFIX, cluster=True)
    yield drv
    drv.close()


@pytest.fixture
def e2e(tmp_path, redis_url, redis_db, redis_cluster, proc_reaper, request):
    """The fault-test harness with the pools' broker on the cluster, found
    through the list of all its nodes; pushes wait for a replica."""
    yield from FaultE2E.on(redis_cluster, redis_cluster.urls, request, tmp_path, redis_url,
                           redis_db, proc_reaper, cluster=True, wait_replicas=1)


def queue_per_master(cluster):
    """``{master port: queue name}``: one queue whose slot is on each master."""
    masters = cluster.masters()
    found = {}
    for i in range(1000):
        name = 'cq%d' % i
        found.setdefault(cluster.master_of('{%s}' % name), name)
        if len(found) == len(masters):
            return found
    raise AssertionError('no queue names found for every master of %r' % masters)


def waiting_on(cluster, port, name):
    """How many jobs wait in queue ``name`` on node ``port``, asked of that
    node alone (a node that does not hold the queue's slot answers MOVED)."""
    node = cluster.node(port)
    try:
        return node.llen('%s:{%s}:waiting' % (PREFIX, name))
    finally:
        node.close()


def test_the_driver_routes_each_queue_to_its_master(redis_cluster, driver):
    by_master = queue_per_master(redis_cluster)
    assert sorted(by_master) == redis_cluster.masters() and len(by_master) == 3
    try:
        for master, name in by_master.items():
            push(driver, name, 2)
            assert waiting_on(redis_cluster, master, name) == 2
            assert counts(driver, name)['waiting'] == 2
    finally:
        for name in by_master.values():
            empty(driver, name)
    for name in by_master.values():
        assert redis_cluster.keys('%s:{%s}' % (PREFIX, name)) == []


def test_a_stale_slot_map_is_read_again_on_moved(redis_cluster, driver):
    # As after a failover or a resharding seen by nobody yet: the client's map
    # names another master for the queue's slot; that master answers MOVED.
    name = 'cq-moved'
    right = redis_cluster.master_of('{%s}' % name)
    try:
        push(driver, name, 1)
        client = driver._redis()
        slot = client.keyslot('{%s}' % name)
        client.nodes_manager.slots_cache[slot] = [
            next(node for node in client.get_primaries() if node.port != right)]
        push(driver, name, 1)
        assert waiting_on(redis_cluster, right, name) == 2
        assert counts(driver, name)['waiting'] == 2
    finally:
        empty(driver, name)
    assert redis_cluster.keys('%s:{%s}' % (PREFIX, name)) == []


def test_push_waits_for_replicas(redis_cluster):
    name = 'cq-wait'
    drivers = [mpqueue.RedisDriver(url=redis_cluster.url, prefix=PREFIX, cluster=True,
                                   wait_replicas=n, wait_timeout=0.2) for n in (1, 2)]
    try:
        push(drivers[0], name, 1)
        # each master has one replica: a second never confirms
        with pytest.raises(mpqueue.DriverError) as err:
            push(drivers[1], name, 1)
        assert "queue 'cq-wait'" in str(err.value)
        assert 'only 1 of 2 replica(s) confirmed them within 0.2 s' in str(err.value)
        assert '\n' not in str(err.value)
        assert counts(drivers[0], name)['waiting'] == 2    # on the master all the same
    finally:
        empty(drivers[0], name)
        for drv in drivers:
            drv.close()
    assert redis_cluster.keys('%s:{%s}' % (PREFIX, name)) == []


# -- end to end ------------------------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_queues_on_every_master_run_every_job_once(e2e, redis_cluster, model):
    by_master = queue_per_master(redis_cluster)
    names = sorted(by_master.values())
    # sleep_seconds=30: only a wake-up (PUBLISH) makes an idle master look soon
    pool = e2e.pool(*[queue_conf(name=name, model=model, worker_number=2, sleep_seconds=30)
                      for name in names]).start()
    jobs = e2e.import_jobs()
    tags = {name: ['%s-%03d' % (name, i) for i in range(60)] for name in names}
    pushed_at = time.time()
    for name in names:
        push_tagged(jobs, tags[name][:40], queue=name)
        push_tagged(jobs, tags[name][40:], queue=name, delay=0.3)
    everything = [tag for name in names for tag in tags[name]]
    wait_all_ran(e2e, pool, everything, 30)
    first_run = min(when for _, when, _ in e2e.executions())
    for name in names:
        final = wait_drained(pool, name, failed=0)
        assert final['over'] == len(tags[name]), (name, final)
    figures = tally(e2e, everything)
    assert (figures['executed'], figures['duplicated'], figures['lost']) == \
        (len(everything), 0, 0), figures
    assert first_run - pushed_at < 5, 'the idle masters were not woken up'

    # The fleet view and the metrics work on the cluster too: the pool's
    # heartbeat (its queues, the jobs it finished) and every queue's counters.
    beat = wait_fleet(pool, 10, 'the heartbeat to count every job', lambda f: sum(
        q['done'] for q in f.get(pool.name, {}).get('queues', {}).values()) == len(everything))
    assert sorted(beat[pool.name]['queues']) == names
    res = pool.cli('metrics')
    assert res.returncode == 0, res.stderr
    families = parse_exposition(res.stdout)
    for name in names:
        assert sample(families, 'mpqueue_jobs_total', queue=name, state='done') == 60


# -- failover --------------------------------------------------------------------

@pytest.mark.slow
def test_master_failover_under_load(e2e, redis_cluster):
    if not redis_cluster.owned:
        pytest.skip('the Redis Cluster on 127.0.0.1:7000 was not started by the tests: '
                    'its nodes are not theirs to kill')
    master, queue = sorted(queue_per_master(redis_cluster).items())[0]
    stats_key = '%s:{%s}:stats' % (e2e.prefix, queue)
    jobs = e2e.import_jobs()
    # sleep_seconds=30: once it is over, only a wake-up makes the master look soon
    pool = e2e.pool(queue_conf(name=queue, worker_number=4, fail_number=3, fail_expire=0.2,
                               sleep_seconds=30)).start()
    before = process_rows(pool)
    tags = ['job-%04d' % i for i in range(1500)]
    for i in range(0, len(tags), 250):
        push_tagged(jobs, tags[i:i + 250], seconds=0.01, queue=queue)
    pool.wait(lambda: len(e2e.executions()) >= len(tags) // 3, 60, 'a third of the jobs to run')

    killed_at = time.monotonic()
    replica = redis_cluster.kill(master)
    restarted = False
    try:
        # Nothing writes to the slot between the kill and the promotion: what
        # the replica has now is what the new master starts from.
        done_at_kill = int(redis_cluster.read_replica(replica, 'HGET', stats_key, 'done') or 0)
        redis_cluster.wait_promoted(replica)
        promoted_at = time.monotonic()
        new_master = redis_cluster.node(replica)
        try:
            pool.wait(lambda: int(new_master.hget(stats_key, 'done') or 0) > done_at_kill, 60,
                      'the pool to record finished jobs on the promoted replica')
        finally:
            new_master.close()
        resumed_at = time.monotonic()
        wait_all_ran(e2e, pool, tags, 60)
        final = wait_drained(pool, queue, timeout=60, failed=0)
        figures = tally(e2e, tags)
        # The old master comes back as a replica (pushes wait for one), and the
        # master of the queue is woken up through the promoted node.
        restarted = True
        redis_cluster.restart(master)
        later = ['later-%d' % i for i in range(10)]
        pushed_at = time.monotonic()
        push_tagged(jobs, later, queue=queue)
        wait_all_ran(e2e, pool, later, 10)
        woken_in = time.monotonic() - pushed_at
    finally:
        if not restarted:
            redis_cluster.restart(master)   # the cluster whole again for other tests
    after = process_rows(pool)
    report('cluster master SIGKILL, replica promoted', figures, resumed_at - killed_at,
           promotion_s=round(promoted_at - killed_at, 3), status=final,
           processes_unchanged=after == before, woken_after_s=round(woken_in, 3))

    assert figures['lost'] == 0, figures
    assert final['failed'] == 0 and final['over'] >= len(tags), final
    assert woken_in < 5, 'the master was not woken up through the promoted node'
