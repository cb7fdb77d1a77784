"""Fault injection, end to end: real pools (``python mpqueue_cli.py
worker:start``), real ``redis-server`` processes, real signals.

Every scenario injects its fault for real and measures what happened to the
jobs: how many were pushed, how many executions finished (each job appends
one line per finished execution to a list on the shared test Redis, which
survives whatever happens to the broker), how many ran more than once
(at-least-once delivery allows it; the number is reported), how many were lost
(never finished and not in the failed list: must be 0) and how long the pool
took to recover.  Each scenario prints one summary line (``pytest -s`` shows
it) and, when ``$MPQ_FAULT_REPORT`` names a file, appends it there as a JSON
line.

Brokers that get killed are private ``redis-server`` processes on ports of
their own (``RedisServer``); the executions are recorded on the shared test
Redis (fixture ``redis_url``), under the test's key prefix, so that a broker
crash cannot erase them.  Every wait polls with a deadline; every process is
stopped by pid at teardown and every key is deleted.

Scenarios: 1. the broker killed and restarted under load; 2. no broker when
the pool starts; 3. process faults under load (a worker, a master or the
manage process SIGKILLed or SIGSTOPped; a job that calls ``os._exit()`` or
``sys.exit()``, kills its own process, or raises KeyboardInterrupt or a bare
BaseException); 4. a whole server lost while another pool shares the queue;
5. a secured Redis (``requirepass``, an ACL user with the smallest rule set,
TLS).

CLI behaviour with a missing or broken config file is covered by
``test_cli.py::test_bad_config_file_one_line_naming_it``.
"""

import os
import re
import signal
import time

import psutil
import pytest
import redis

import mpqueue
from fault_harness import (FAULT_JOBS, MODELS, MPQ_ACL_RULES, FaultE2E, Pusher, full_strength,
                           log_lines, process_rows, push_tagged, report, tally, wait_all_ran,
                           wait_drained)
from pool_harness import STOP_GRACE, Src, alive, kill_tree, queue_conf, wait_for
from redis_server import RedisServer, free_port


@pytest.fixture
def e2e(tmp_path, redis_url, redis_db, proc_reaper, request):
    harness = FaultE2E(tmp_path, redis_url, redis_db, proc_reaper, request.node.name)
    harness.write_jobs(FAULT_JOBS)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def servers():
    """``servers(*args, **kwargs)`` starts a private ``RedisServer`` on a free
    port; all of them are stopped (data directory removed) at teardown."""
    made = []

    def make(*args, port=None, start=True, **kwargs):
        server = RedisServer(port or free_port(), *args, **kwargs)
        made.append(server)
        if start:
            server.start()
        return server
    try:
        yield make
    finally:
        for server in made:
            server.stop()


# -- 1. the broker is killed and restarted under load ------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('model', MODELS)
def test_broker_killed_and_restarted_under_load(e2e, servers, model):
    broker = servers('--appendonly', 'yes', '--appendfsync', 'always')
    e2e.broker_url = broker.url
    pool = e2e.pool(queue_conf(model=model, worker_number=4, fail_number=3,
                               fail_expire=0.2)).start()
    jobs = e2e.import_jobs()
    before = process_rows(pool)
    tags = ['job-%04d' % i for i in range(2000)]
    pusher = Pusher(jobs, tags, seconds=0.01, batch=100, pause=0.1)
    pusher.start()

    outages = []
    for fraction in (0.2, 0.6):
        pool.wait(lambda: len(e2e.executions()) >= fraction * len(tags), 60,
                  '%d%% of the jobs to run' % (fraction * 100))
        killed = time.monotonic()
        broker.kill()
        # the pool sees the broker gone for a while: long enough for every
        # process to hit the outage, short enough to keep the test quick
        time.sleep(1.5)
        broker.start()
        up = time.monotonic()
        over_at_up = broker.client().hget(
            '%s:{q}:stats' % e2e.prefix, 'done')
        over_at_up = int(over_at_up or 0)

        def pool_writes_again():
            got = broker.client().hget('%s:{q}:stats' % e2e.prefix, 'done')
            return int(got or 0) > over_at_up
        pool.wait(pool_writes_again, 30, 'the pool to record finished jobs again')
        outages.append({'down_s': round(up - killed, 2),
                        'recovery_s': round(time.monotonic() - up, 3)})

    pusher.join(120)
    assert not pusher.is_alive(), 'the pusher did not finish'
    assert pusher.error is None, pusher.error
    assert sorted(pusher.pushed) == tags
    wait_all_ran(e2e, pool, tags, 60)
    final = wait_drained(pool, timeout=30, failed=0)
    figures = tally(e2e, tags)
    broker_errors = log_lines(pool, r'broker|reach|redis|connect')
    crashed = log_lines(pool, r'crashed|Traceback')
    after = process_rows(pool)
    report('broker SIGKILL+restart x2 (%s)' % model, figures,
           max(o['recovery_s'] for o in outages), outages=outages,
           push_refused=pusher.refused, log_errors=len(broker_errors), status=final)

    assert figures['lost'] == 0, figures
    assert final['failed'] == 0
    assert after == before, 'processes changed across broker outages: %r -> %r' % (
        before, after)
    assert not crashed, '\n'.join(crashed[:20])
    # one line per process and outage at most (the master, the manage process
    # for its heartbeat, and in the grab model each worker, which talks to the
    # broker itself), not one per retry
    talkers = 2 + (4 if model == 'grab' else 0)
    assert len(broker_errors) <= (talkers + 1) * len(outages), \
        '%d broker error lines for %d outages:\n%s' % (
            len(broker_errors), len(outages), '\n'.join(broker_errors[:30]))


# -- 2. no broker when the pool starts ------------------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_broker_absent_at_start_pool_waits_then_runs(e2e, servers, model):
    broker = servers('--appendonly', 'yes', start=False)
    e2e.broker_url = broker.url
    pool = e2e.pool(queue_conf(model=model, worker_number=2, sleep_seconds=1)).start()
    jobs = e2e.import_jobs()

    t0 = time.monotonic()
    with pytest.raises(mpqueue.DriverError) as err:
        push_tagged(jobs, ['too-early'])
    assert time.monotonic() - t0 < 2
    assert '127.0.0.1:%d' % broker.port in str(err.value)

    pool.wait(lambda: log_lines(pool, r'retrying|back-off|reach'), 10,
              'the pool to log that it waits for the broker')
    before = process_rows(pool)
    # the pool keeps running without a broker for a while
    wait_for(lambda: time.monotonic() - t0 >= 2, 3, 'two seconds without a broker')
    assert process_rows(pool) == before

    broker.start()
    up = time.monotonic()
    tags = ['late-%d' % i for i in range(20)]
    push_tagged(jobs, tags)
    wait_all_ran(e2e, pool, tags, 15)
    recovery = time.monotonic() - up
    final = wait_drained(pool, failed=0)
    figures = tally(e2e, tags)
    waits = log_lines(pool, r'broker|reach|redis|connect')
    crashed = log_lines(pool, r'crashed|Traceback')
    report('broker absent at start (%s)' % model, figures, recovery,
           log_errors=len(waits), status=final)
    assert figures['lost'] == 0
    assert process_rows(pool) == before
    assert not crashed, '\n'.join(crashed[:20])
    # one line per process that talks to the broker: the master, the manage
    # process (its heartbeat) and, in the grab model, each worker
    assert len(waits) <= 2 + (2 if model == 'grab' else 0), '\n'.join(waits[:30])


# -- 3. process faults under load ------------------------------------------------------

ON_FAIL = Src('jobs.queue_fail_handle')     # records ('queue_fail', tag=job id, info)


def starts(e2e, tag):
    """The ``start`` records of job ``tag``, first attempt first."""
    return sorted(e2e.records('start', tag=tag), key=lambda r: r.get('n') or 0)


def started(e2e, pool, tags, attempts=1, timeout=10):
    """Wait until every job of ``tags`` started ``attempts`` times; ``{tag: records}``."""
    def check():
        got = {t: starts(e2e, t) for t in tags}
        return all(len(runs) >= attempts for runs in got.values()) and got
    return pool.wait(check, timeout, 'jobs %r to start %d time(s)' % (list(tags), attempts))


def some_ran(e2e, pool, n, timeout=20):
    pool.wait(lambda: len(e2e.executions()) >= n, timeout, '%d executions' % n)


def ran_between(e2e, t0, t1):
    """Executions that finished between ``t0`` and ``t1`` (``time.time()``)."""
    return sum(1 for _, when, _ in e2e.executions() if t0 <= when <= t1)


def failed_entry(pool, job_id, timeout=10):
    """Wait for ``job_id`` in the failed list (its fail handlers have run); its job_info."""
    def find():
        for info in mpqueue.failed_jobs('q'):
            if info['id'] == job_id:
                return info
        return None
    return pool.wait(find, timeout, 'job %s to be in the failed list' % job_id)


def start_load(jobs, n, prefix='load', seconds=0.01, batch=50, pause=0.05):
    """A ``Pusher`` of ``n`` short jobs, started."""
    pusher = Pusher(jobs, ['%s-%04d' % (prefix, i) for i in range(n)], seconds,
                    batch=batch, pause=pause)
    pusher.start()
    return pusher


def finish_load(e2e, pool, pusher, extra=(), failed_ok=(), timeout=60):
    """Wait for the pusher, then for every pushed job and ``extra`` to have run
    (those in ``failed_ok`` to be in the failed list instead) and the queue to
    drain; return ``(tags, final status)``."""
    pusher.join(timeout)
    assert not pusher.is_alive(), 'the pusher did not finish'
    assert pusher.error is None, pusher.error
    assert sorted(pusher.pushed) == sorted(pusher.tags)
    tags = list(pusher.tags) + list(extra)
    wait_all_ran(e2e, pool, tags, timeout, failed_ok)
    final = wait_drained(pool, timeout=30, failed=len(failed_ok))
    assert final['failed'] == len(failed_ok), final
    return tags, final


def back_to_full_strength(pool, gone=(), timeout=15):
    """Wait for the master and every worker (none of ``gone``); ``{pid: type}``."""
    pool.wait(full_strength(pool, gone=gone), timeout,
              'the pool to be back to full strength without %r' % sorted(gone))
    return process_rows(pool)


def worker_set(rows):
    return {pid for pid, kind in rows.items() if kind == 'worker'}


@pytest.mark.parametrize('model', MODELS)
def test_busy_worker_sigkilled_under_load(e2e, model):
    # fail_expire (1 s) is the delay after a job *raised*.  A job whose worker
    # was killed runs again at once; the death counts as an attempt, so with
    # fail_number=0 the second victim goes to its fail handlers and the failed list.
    pool = e2e.pool(queue_conf(model=model, worker_number=3, timeout=30, fail_number=1,
                               fail_expire=1.0, fail_handle=ON_FAIL)).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.long_once, args=('victim', 30))
    last_id = mpqueue.push('q', jobs.long_once, args=('victim-last', 30), fail_number=0)
    pusher = start_load(jobs, 600)
    first = started(e2e, pool, ['victim', 'victim-last'])
    some_ran(e2e, pool, 50)

    killed = {runs[0]['pid'] for runs in first.values()}
    killed_at = time.time()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    runs = started(e2e, pool, ['victim'], attempts=2)['victim']
    recovery = runs[1]['time'] - killed_at
    info = failed_entry(pool, last_id)
    tags, final = finish_load(e2e, pool, pusher, extra=['victim', 'victim-last'],
                              failed_ok=['victim-last'])
    rows = back_to_full_strength(pool, gone=killed)
    figures = tally(e2e, tags, failed_ok=['victim-last'])
    report('worker SIGKILL (%s)' % model, figures, recovery, status=final)

    assert figures['lost'] == 0, figures
    assert recovery < 0.9, 'job re-run %.3fs after its worker was killed' % recovery
    assert runs[1]['pid'] not in killed and runs[1]['pid'] in worker_set(rows)
    assert (info['type'], info['exec_number']) == (mpqueue.TYPE_NORMAL, 1), info
    assert any('SIGKILL' in err for err in info['error_info']), info['error_info']
    assert e2e.records('queue_fail', tag=last_id), 'the fail handler did not run'
    assert 'victim-last' not in {tag for tag, _, _ in e2e.executions()}


#: how a job misbehaves -> (its worker dies, text expected in its error_info)
IN_JOB_FAULTS = {
    'os_exit': (True, 'exited with code 7'),
    'sigkill_self': (True, 'killed by SIGKILL'),
    'sys_exit': (False, 'SystemExit: 7'),
    'keyboard_interrupt': (False, 'KeyboardInterrupt: from the job'),
    'base_exception': (False, 'BaseException: from the job'),
}


@pytest.mark.parametrize('how', sorted(IN_JOB_FAULTS))
@pytest.mark.parametrize('model', MODELS)
def test_job_kills_its_worker_or_raises_under_load(e2e, model, how):
    # A job that ends its own process is like a SIGKILLed worker: run again
    # at once, the death counted as an attempt.  SystemExit, KeyboardInterrupt
    # and a bare BaseException are ordinary failures: retried after
    # fail_expire by the same, surviving worker processes.
    dies, text = IN_JOB_FAULTS[how]
    pool = e2e.pool(queue_conf(model=model, worker_number=3, fail_number=1, fail_expire=1.0,
                               fail_handle=ON_FAIL)).start()
    jobs = e2e.import_jobs()
    before = worker_set(process_rows(pool))
    pusher = start_load(jobs, 400)
    some_ran(e2e, pool, 50)
    mpqueue.push('q', jobs.fault_once, args=('victim', how))
    last_id = mpqueue.push('q', jobs.fault_once, args=('victim-last', how), fail_number=0)

    runs = started(e2e, pool, ['victim'], attempts=2)['victim']
    info = failed_entry(pool, last_id)
    faulty = {runs[0]['pid'], starts(e2e, 'victim-last')[0]['pid']}
    tags, final = finish_load(e2e, pool, pusher, extra=['victim', 'victim-last'],
                              failed_ok=['victim-last'])
    after = worker_set(back_to_full_strength(pool, gone=faulty if dies else ()))
    figures = tally(e2e, tags, failed_ok=['victim-last'])
    rerun_after = runs[1]['time'] - runs[0]['time']
    report('job %s (%s)' % (how, model), figures, rerun_after, status=final,
           workers_replaced=len(before - after))

    assert figures['lost'] == 0, figures
    if dies:
        assert rerun_after < 0.9, 'job re-run %.3fs after it killed its worker' % rerun_after
        assert not faulty & after
    else:
        assert rerun_after >= 0.95, 'retried %.3fs after failing (fail_expire 1 s)' % rerun_after
        assert after == before, 'workers were replaced: %r -> %r' % (before, after)
    assert (info['type'], info['exec_number']) == (mpqueue.TYPE_NORMAL, 1), info
    assert any(text in err for err in info['error_info']), info['error_info']
    assert e2e.records('queue_fail', tag=last_id), 'the fail handler did not run'


@pytest.mark.parametrize('model', MODELS)
def test_stopped_worker_killed_at_timeout_queue_keeps_running(e2e, model):
    # A worker SIGSTOPped in a job with a timeout is killed by its master at the
    # deadline (TYPE_TIMEOUT, fail handlers run); the other workers go on.
    pool = e2e.pool(queue_conf(model=model, worker_number=3, fail_number=2, fail_expire=0.2,
                               fail_handle=ON_FAIL)).start()
    jobs = e2e.import_jobs()
    stalled_id = mpqueue.push('q', jobs.stall, args=('stalled', 30), timeout=2)
    (first,) = started(e2e, pool, ['stalled'])['stalled']
    victim = first['pid']
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.time()
    pusher = start_load(jobs, 400, batch=25, pause=0.1)

    info = failed_entry(pool, stalled_id)
    failed_at = info['fail_time']           # the broker's clock: the same host
    during = ran_between(e2e, stopped_at, failed_at)
    tags, final = finish_load(e2e, pool, pusher, extra=['stalled'], failed_ok=['stalled'])
    back_to_full_strength(pool, gone={victim})
    figures = tally(e2e, tags, failed_ok=['stalled'])
    report('worker SIGSTOP in a 2s-timeout job (%s)' % model, figures, failed_at - stopped_at,
           failed_after_start_s=round(failed_at - first['time'], 3), ran_meanwhile=during,
           status=final)

    assert figures['lost'] == 0, figures
    assert info['type'] == mpqueue.TYPE_TIMEOUT, info
    assert any('timeout' in err for err in info['error_info']), info['error_info']
    assert 1.9 <= failed_at - first['time'] < 4.0, failed_at - first['time']
    assert during > 0, 'no other job ran while the worker was stopped'
    (handled,) = e2e.records('queue_fail', tag=stalled_id)
    assert handled['info']['type'] == mpqueue.TYPE_TIMEOUT
    assert not alive(victim)
    assert 'stalled' not in {tag for tag, _, _ in e2e.executions()}


@pytest.mark.parametrize('model', MODELS)
def test_master_sigkilled_under_load(e2e, model):
    # fail_number=0: a job recovered from the dead master would go to the
    # failed list if that recovery counted as an attempt.
    pool = e2e.pool(queue_conf(model=model, worker_number=3, fail_number=0,
                               fail_handle=ON_FAIL)).start()
    jobs = e2e.import_jobs()
    (master,) = pool.masters('q')
    workers = pool.worker_pids('q')
    long_tags = ['long-0', 'long-1']
    for tag in long_tags:
        mpqueue.push('q', jobs.long_once, args=(tag, 30))
    pusher = start_load(jobs, 600)
    started(e2e, pool, long_tags)
    some_ran(e2e, pool, 50)

    killed_at = time.time()
    os.kill(master['pid'], signal.SIGKILL)
    pool.wait(lambda: not any(alive(pid) for pid in workers), 3,
              'the workers of the dead master to die with it')
    orphans_gone = time.time() - killed_at
    reruns = started(e2e, pool, long_tags, attempts=2)
    recovery = max(runs[1]['time'] for runs in reruns.values()) - killed_at
    rows = back_to_full_strength(pool, gone={master['pid']} | workers)
    full_after = time.time() - killed_at
    tags, final = finish_load(e2e, pool, pusher, extra=long_tags)
    figures = tally(e2e, tags)
    report('master SIGKILL (%s)' % model, figures, recovery,
           workers_gone_s=round(orphans_gone, 3), full_strength_s=round(full_after, 3),
           status=final)

    assert figures['lost'] == 0, figures
    assert recovery < 3.0, 'jobs of the dead master re-ran %.3fs after the kill' % recovery
    assert [p for p, kind in rows.items() if kind == 'master'] != [master['pid']]
    assert log_lines(pool, r'master of queue .q. \(pid %d\) killed by SIGKILL' % master['pid'])


@pytest.mark.parametrize('model', MODELS)
def test_master_sigstopped_jobs_wait_then_carry_on(e2e, model):
    # While its master is stopped, a distribute pool starts no job (the master
    # hands them out): they wait in the broker.  Grab workers pop their own
    # and go on until they find the queue empty.  worker:status shows the
    # master as unresponsive.  Once SIGCONT'd, the pool carries on.
    pool = e2e.pool(queue_conf(model=model, worker_number=3)).start()
    jobs = e2e.import_jobs()
    before = process_rows(pool)
    (master,) = pool.masters('q')
    pusher = start_load(jobs, 600)
    some_ran(e2e, pool, 50)

    stopped_at = time.time()
    os.kill(master['pid'], signal.SIGSTOP)
    try:
        rows = pool.status()
        wait_for(lambda: time.time() - stopped_at >= 2.5, 5, 'the master to stay stopped')
    finally:
        os.kill(master['pid'], signal.SIGCONT)
    resumed_at = time.time()
    meanwhile = ran_between(e2e, stopped_at + 0.5, resumed_at)
    pool.wait(lambda: ran_between(e2e, resumed_at, time.time() + 1), 10,
              'a job to run after SIGCONT')
    recovery = min(when for _, when, _ in e2e.executions() if when >= resumed_at) - resumed_at
    tags, final = finish_load(e2e, pool, pusher)
    after = process_rows(pool)
    figures = tally(e2e, tags)
    state = {r['pid']: r.get('state') for r in rows}
    report('master SIGSTOP 2.5s (%s)' % model, figures, recovery, ran_while_stopped=meanwhile,
           status_while_stopped=state.get(master['pid']), status=final)

    assert figures['lost'] == 0, figures
    assert state.get(master['pid']) == 'unresponsive', rows
    if model == mpqueue.MODEL_DISTRIBUTE:
        assert meanwhile == 0, '%d jobs ran while the master was stopped' % meanwhile
    assert after == before, 'processes changed: %r -> %r' % (before, after)


@pytest.mark.parametrize('model', MODELS)
def test_manage_sigkilled_masters_drain_then_a_new_pool_runs_the_rest(e2e, model):
    q = queue_conf(model=model, worker_number=4, fail_number=0)
    pool = e2e.pool(q).start()
    jobs = e2e.import_jobs()
    old = set(process_rows(pool))
    long_tags = ['long-%d' % i for i in range(3)]
    for tag in long_tags:
        mpqueue.push('q', jobs.long_once, args=(tag, 2.0))
    first = started(e2e, pool, long_tags)
    backlog = ['load-%04d' % i for i in range(600)]
    for i in range(0, len(backlog), 100):
        push_tagged(jobs, backlog[i:i + 100], 0.01)
    some_ran(e2e, pool, 20)

    killed_at = time.time()
    os.kill(pool.proc.pid, signal.SIGKILL)
    pool.proc.wait(5)
    pool.wait(lambda: not any(alive(pid) for pid in old), 15,
              'the masters and workers of the killed manage process to stop')
    drained = time.time() - killed_at
    left = mpqueue.status('q')
    noticed = log_lines(pool, r'manage process went away')
    for tag in long_tags:       # running when the manage process died: they finished
        assert len(starts(e2e, tag)) == 1, tag
        assert [pid for t, _, pid in e2e.executions() if t == tag] == [first[tag][0]['pid']]

    again = e2e.pool(q, name=pool.name).start()       # a stale pid file is replaced
    restarted_at = time.time()
    wait_all_ran(e2e, again, backlog + long_tags, 60)
    ran_rest = time.time() - restarted_at
    final = wait_drained(again, failed=0)
    figures = tally(e2e, backlog + long_tags)
    report('manage SIGKILL (%s)' % model, figures, drained, left_waiting=left['waiting'],
           new_pool_ran_rest_s=round(ran_rest, 3), status=final)

    assert figures['lost'] == 0, figures
    assert figures['duplicated'] == 0, figures
    assert left['working'] == 0 and left['waiting'] > 0, left
    assert len(noticed) == 1, noticed       # one master, one line
    assert drained < STOP_GRACE + 2, 'the orphaned pool took %.1fs to stop' % drained


@pytest.mark.parametrize('model', MODELS)
def test_manage_sigstopped_pool_keeps_running(e2e, model):
    pool = e2e.pool(queue_conf(model=model, worker_number=3)).start()
    jobs = e2e.import_jobs()
    before = process_rows(pool)
    manage = pool.proc.pid
    os.kill(manage, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        pusher = start_load(jobs, 400)
        pusher.join(60)
        wait_all_ran(e2e, pool, pusher.tags, 30)
    finally:
        os.kill(manage, signal.SIGCONT)
    resumed_at = time.time()
    meanwhile = ran_between(e2e, stopped_at, resumed_at)

    def answers():
        try:
            return pool.status()
        except AssertionError:
            return None
    pool.wait(answers, 15, 'worker:status to answer after SIGCONT')
    recovery = time.time() - resumed_at
    tags, final = finish_load(e2e, pool, pusher)
    after = process_rows(pool)
    figures = tally(e2e, tags)
    report('manage SIGSTOP (%s)' % model, figures, recovery, ran_while_stopped=meanwhile,
           status=final)

    assert figures['lost'] == 0, figures
    assert meanwhile == len(tags), 'only %d of %d jobs ran while manage was stopped' % (
        meanwhile, len(tags))
    assert after == before, 'processes changed: %r -> %r' % (before, after)


def test_grab_worker_dies_while_its_master_lags(e2e):
    # After each pop a grab worker sends its master two messages: 'ran' (the
    # last job) and 'run' (the next).  If it dies in that next job before the
    # master has read both (a master busy for a moment under load; made certain
    # here by stopping it), the master must still recover the job at once.
    pool = e2e.pool(queue_conf(model=mpqueue.MODEL_GRAB, worker_number=2, fail_number=1,
                               fail_expire=0.2)).start()
    jobs = e2e.import_jobs()
    (master,) = pool.masters('q')
    mpqueue.push('q', jobs.long_once, args=('first', 1.0))
    worker = started(e2e, pool, ['first'])['first'][0]['pid']
    os.kill(master['pid'], signal.SIGSTOP)
    try:
        mpqueue.push('q', jobs.fault_once, args=('victim', 'os_exit'))
        pool.wait(lambda: starts(e2e, 'victim') and not alive(worker), 10,
                  'the worker that ran "first" to die in "victim"')
    finally:
        os.kill(master['pid'], signal.SIGCONT)
    resumed_at = time.time()
    runs = started(e2e, pool, ['victim'], attempts=2, timeout=mpqueue.LEASE_SECONDS + 5)['victim']
    recovery = runs[1]['time'] - resumed_at
    final = wait_drained(pool, failed=0)
    back_to_full_strength(pool, gone={worker})
    figures = tally(e2e, ['first', 'victim'])
    report('grab worker os._exit, master lagging', figures, recovery, status=final)

    assert figures['lost'] == 0, figures
    assert runs[0]['pid'] == worker
    assert recovery < 1.0, ('the job of the dead worker ran again %.2fs after its master '
                            'resumed (lease expiry, not at once)' % recovery)


# -- 4. a whole server is lost; another pool recovers its jobs ------------------------

@pytest.mark.slow
@pytest.mark.parametrize('model', MODELS)
def test_server_lost_other_pool_recovers_in_flight_jobs(e2e, model):
    # Two pools (two "servers") on one broker and one queue.  Every process of
    # pool A is killed at once under load, with jobs in flight that have a
    # timeout shorter than the lease, a long timeout, and none.  Pool B
    # recovers them all as ordinary attempts: the short-timeout one at its
    # deadline + 1 s, the others when their lease expires.
    short = 4.0
    assert short + 1 < mpqueue.LEASE_SECONDS
    q = dict(model=model, fail_number=2, fail_expire=0.2)
    a = e2e.pool(queue_conf(worker_number=5, **q), name='server-a').start()
    jobs = e2e.import_jobs()
    victims = {'timeout-short': short, 'timeout-60': 60, 'timeout-0': 0}
    for tag, timeout in victims.items():
        mpqueue.push('q', jobs.long_once, args=(tag, 60), timeout=timeout)
    first = {t: runs[0] for t, runs in started(e2e, a, list(victims)).items()}
    a_tree = {p.pid for p in [psutil.Process(a.proc.pid)] + psutil.Process(a.proc.pid).children(recursive=True)}
    assert {r['pid'] for r in first.values()} <= a_tree
    b = e2e.pool(queue_conf(worker_number=3, **q), name='server-b').start()
    b_before = process_rows(b)
    pusher = start_load(jobs, 800, batch=40, pause=0.05)
    some_ran(e2e, b, 100)

    kill_tree(a)
    lost_at = time.time()
    in_flight = lost_at - first['timeout-short']['time']
    assert in_flight < short, 'the machine is too slow: pool A was killed %.1fs after ' \
        'the %ss-timeout job started, past its timeout' % (in_flight, short)

    reruns = started(e2e, b, list(victims), attempts=2,
                     timeout=mpqueue.LEASE_SECONDS + 10)
    recovered = {t: round(runs[1]['time'] - lost_at, 3) for t, runs in reruns.items()}
    tags, final = finish_load(e2e, b, pusher, extra=list(victims))
    figures = tally(e2e, tags)
    b_pids = set(b_before)
    due = first['timeout-short']['time'] + short + 1
    report('server lost, other pool recovers (%s)' % model, figures, max(recovered.values()),
           recovered_s=recovered, short_job_age_at_loss_s=round(in_flight, 3),
           short_rerun_vs_deadline_plus_1_s=round(reruns['timeout-short'][1]['time'] - due, 3),
           status=final)

    assert figures['lost'] == 0, figures
    assert figures['executed'] == figures['pushed'] + figures['duplicated']
    assert final['failed'] == 0, mpqueue.failed_jobs('q')
    for tag, runs in reruns.items():
        assert runs[1]['pid'] in b_pids, (tag, runs)
    assert due - 0.3 <= reruns['timeout-short'][1]['time'] <= due + 1.5, (
        'the %ss-timeout job re-ran %.2fs after its deadline + 1 s' % (
            short, reruns['timeout-short'][1]['time'] - due))
    for tag in ('timeout-60', 'timeout-0'):
        assert recovered[tag] <= mpqueue.LEASE_SECONDS + 2, (tag, recovered)
    assert process_rows(b) == b_before


# -- 5. a secured Redis: password, ACL user, TLS ----------------------------------------

def push_refused(jobs, driver):
    """Push through ``driver``; the DriverError raised and the seconds it took."""
    mpqueue.configure({'basics': {'name': 'probe', 'driver': driver}, 'queue': [{'name': 'q'}]})
    t0 = time.monotonic()
    with pytest.raises(mpqueue.DriverError) as err:
        push_tagged(jobs, ['never-pushed'])
    return str(err.value), time.monotonic() - t0


def run_through(e2e, pool, jobs, n=100):
    """Push ``n`` short jobs to the pool and wait for them; the tally."""
    tags = ['job-%03d' % i for i in range(n)]
    t0 = time.monotonic()
    push_tagged(jobs, tags)
    wait_all_ran(e2e, pool, tags, 30)
    took = time.monotonic() - t0
    final = wait_drained(pool, failed=0)
    return tags, final, took


def idle_latency(e2e, pool, jobs, tag='wake-probe'):
    """Seconds from a push into the idle pool to its execution (the wake-up
    channel works when it is far below sleep_seconds)."""
    time.sleep(0.3)
    pushed = time.time()
    push_tagged(jobs, [tag])
    wait_all_ran(e2e, pool, [tag], 15)
    return next(when for t, when, _ in e2e.executions() if t == tag) - pushed


def check_secured_run(e2e, pool, tags, scenario, took, latency, refusals, address):
    """The common end of the secured-broker tests: every job ran once, a push
    woke the idle pool at once, and each refused connection failed fast with
    an error naming the broker address."""
    e2e.configure(pool)
    final = wait_drained(pool, failed=0)
    figures = tally(e2e, tags)
    report(scenario, figures, None, run_s=round(took, 3), idle_latency_s=round(latency, 4),
           refused_in_s={k: round(v[1], 3) for k, v in refusals.items()}, status=final)
    assert figures['lost'] == 0 and figures['duplicated'] == 0, figures
    assert latency < 1.0, latency
    for what, (message, seconds) in refusals.items():
        assert address in message and seconds < 2.0, (what, message, seconds)


def test_redis_requirepass(servers, e2e):
    broker = servers('--requirepass', 'pass-word-1')
    e2e.broker_url = broker.url                     # redis://:pass-word-1@127.0.0.1:PORT
    pool = e2e.pool(queue_conf(worker_number=2, sleep_seconds=5)).start()
    jobs = e2e.import_jobs()
    tags, final, took = run_through(e2e, pool, jobs)
    latency = idle_latency(e2e, pool, jobs)
    # the host/port/password form of the driver pushes to the same pool
    mpqueue.configure({'basics': {'name': 'pusher', 'driver': mpqueue.RedisDriver(
        '127.0.0.1', broker.port, password='pass-word-1', prefix=e2e.prefix)},
        'queue': [{'name': 'q'}]})
    push_tagged(jobs, ['by-host-port'])
    wait_all_ran(e2e, pool, ['by-host-port'], 15)
    tags += ['wake-probe', 'by-host-port']

    address = '127.0.0.1:%d' % broker.port
    refusals = {}
    for what, driver in (
            ('wrong password', mpqueue.RedisDriver(url='redis://:wrong-pass@%s' % address,
                                                   prefix=e2e.prefix)),
            ('no password', mpqueue.RedisDriver(url='redis://%s' % address, prefix=e2e.prefix)),
            ('wrong password (host/port)', mpqueue.RedisDriver(
                '127.0.0.1', broker.port, password='wrong-pass', prefix=e2e.prefix))):
        refusals[what] = push_refused(jobs, driver)
    check_secured_run(e2e, pool, tags, 'redis requirepass', took, latency, refusals, address)
    for what, (message, _) in refusals.items():
        assert 'wrong-pass' not in message and 'pass-word-1' not in message, (what, message)
    assert broker.client().dbsize() > 0     # the jobs really went through this server


def test_redis_authentication_failure_says_so(servers):
    """A server that was reached but refused the password (or its absence)
    is an authentication failure, not "cannot reach"."""
    broker = servers('--requirepass', 'pass-word-9')
    address = '127.0.0.1:%d' % broker.port
    for what, driver in (
            ('no password', mpqueue.RedisDriver(url='redis://%s/0' % address)),
            ('wrong password', mpqueue.RedisDriver(url='redis://:wrong-pass@%s/0' % address)),
            ('wrong password (host/port)', mpqueue.RedisDriver('127.0.0.1', broker.port,
                                                               password='wrong-pass'))):
        mpqueue.configure({'basics': {'name': 'probe', 'driver': driver},
                           'queue': [{'name': 'q'}]})
        with pytest.raises(mpqueue.DriverError) as err:
            mpqueue.push('q', 'time:sleep', args=(0,))
        message = str(err.value)
        assert address in message, (what, message)
        assert 'cannot reach' not in message, (what, message)
        assert 'authentication' in message.lower(), (what, message)
        assert 'wrong-pass' not in message and 'pass-word-9' not in message, (what, message)
    assert broker.client().dbsize() == 0


def test_the_minimal_rules_allow_every_command_of_the_library():
    called = set(re.findall(r"redis\.call\('([A-Z]+)'", mpqueue._LUA_LIBRARY))
    assert called and not {'+' + c.lower() for c in called} - set(MPQ_ACL_RULES.split())


def test_redis_acl_user_with_the_minimal_rules(servers, e2e):
    broker = servers('--requirepass', 'admin-pass')
    admin = broker.client()
    admin.execute_command('ACL', 'SETUSER', 'mpq', 'on', '>mpq-pass', *MPQ_ACL_RULES.split())
    e2e.broker_url = 'redis://mpq:mpq-pass@127.0.0.1:%d/0' % broker.port
    e2e.broker_prefix = 'mpq'
    pool = e2e.pool(queue_conf(worker_number=2, sleep_seconds=5, fail_handle=ON_FAIL)).start()
    jobs = e2e.import_jobs()
    tags, _, took = run_through(e2e, pool, jobs)
    latency = idle_latency(e2e, pool, jobs)
    tags.append('wake-probe')
    # every step of the lifecycle: a retry, a final failure and its handler, a
    # timeout, a delayed job, then the inspection calls
    mpqueue.push('q', jobs.fault_once, args=('retried', 'sys_exit'), fail_number=1)
    failed_id = mpqueue.push('q', jobs.fault_once, args=('failed', 'sys_exit'), fail_number=0)
    timed_out_id = mpqueue.push('q', jobs.stall, args=('timed-out', 30), timeout=1)
    push_tagged(jobs, ['delayed'], delay=0.3)
    failed_entry(pool, failed_id)
    failed_entry(pool, timed_out_id)
    tags += ['retried', 'failed', 'timed-out', 'delayed']
    wait_all_ran(e2e, pool, tags, 15, failed_ok=['failed', 'timed-out'])
    assert mpqueue.retry_failed('q', failed_id) == 1
    wait_all_ran(e2e, pool, ['failed'], 15)
    assert mpqueue.delete_failed('q', timed_out_id) == 1
    final = wait_drained(pool, failed=0)
    res = pool.cli('queue:status', '--json')
    assert res.returncode == 0, res.stderr

    denied = [entry for entry in admin.acl_log()
              if entry.get('object') not in ('client|setinfo', 'client')]
    user = broker.client(username='mpq', password='mpq-pass')
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.get('other:key')
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.set('mpq:x', 1)
    figures = tally(e2e, tags, failed_ok=['timed-out'])
    report('redis ACL user (minimal rules)', figures, None, run_s=round(took, 3),
           idle_latency_s=round(latency, 4), acl_denials=len(denied), status=final)

    assert figures['lost'] == 0, figures
    assert not denied, denied
    assert latency < 1.0, latency
    assert not log_lines(pool, r'refused|permission|NOPERM'), log_lines(pool, '.')
    assert admin.keys('mpq:*'), 'nothing was written under the mpq prefix'


def test_redis_tls(servers, e2e):
    broker = servers(tls=True)
    e2e.broker_url = broker.url                             # rediss://127.0.0.1:PORT
    e2e.broker_kwargs = {'ssl_ca_certs': broker.ca_file}
    pool = e2e.pool(queue_conf(worker_number=2, sleep_seconds=5)).start()
    jobs = e2e.import_jobs()
    tags, final, took = run_through(e2e, pool, jobs)
    latency = idle_latency(e2e, pool, jobs)
    tags.append('wake-probe')

    address = '127.0.0.1:%d' % broker.port
    refusals = {
        'plain TCP to the TLS port': push_refused(
            jobs, mpqueue.RedisDriver(url='redis://%s' % address, prefix=e2e.prefix)),
        'TLS without the CA': push_refused(
            jobs, mpqueue.RedisDriver(url='rediss://%s' % address, prefix=e2e.prefix)),
    }
    check_secured_run(e2e, pool, tags, 'redis TLS (rediss://)', took, latency, refusals,
                      address)
    assert 'certificate' in refusals['TLS without the CA'][0].lower()


# -- 6. a worker's boot: only a worker that did not boot backs off -----------------------

BOOT_JOBS = '''
BOOT_FAULTS = %r        # how boot n fails: {n: 'raise' | 'sigkill'}; others boot fine


def boot_hook():
    """The queue's worker_start_handle: records each boot, and fails as told."""
    n = attempt('boot')
    record('boot', n=n)
    how = BOOT_FAULTS.get(n)
    if how == 'raise':
        raise RuntimeError('boot %%d fails' %% n)
    if how == 'sigkill':
        os.kill(os.getpid(), signal.SIGKILL)
'''


def boots(e2e):
    """The ``boot`` records of the workers, first boot first."""
    return sorted(e2e.records('boot'), key=lambda r: r['n'])


def test_young_worker_killed_after_it_booted_is_replaced_at_once(e2e):
    # A worker that booted (its start hooks returned; it ran a job) and is
    # SIGKILLed while young is not a boot failure: no back-off, and the log
    # says what happened without calling it a boot failure.
    e2e.write_jobs(FAULT_JOBS + BOOT_JOBS % {})
    pool = e2e.pool(queue_conf(worker_number=1,
                               worker_start_handle=Src('jobs.boot_hook'))).start()
    jobs = e2e.import_jobs()
    gaps, ages, victims = [], [], []
    for i in range(3):
        boot = pool.wait(lambda: len(boots(e2e)) > i and boots(e2e)[i], 10,
                         'boot %d' % (i + 1))
        tag = 'probe-%d' % i
        push_tagged(jobs, [tag])
        wait_all_ran(e2e, pool, [tag], 10)
        (ran,) = [pid for t, _, pid in e2e.executions() if t == tag]
        assert ran == boot['pid']
        ages.append(time.time() - boot['time'])
        killed_at = time.time()
        os.kill(ran, signal.SIGKILL)
        victims.append(ran)
        nxt = pool.wait(lambda: len(boots(e2e)) > i + 1 and boots(e2e)[i + 1], 10,
                        'the replacement of worker %d' % ran)
        gaps.append(nxt['time'] - killed_at)
    back_to_full_strength(pool, gone=victims)
    print('\n[fault] young booted worker SIGKILLed x3: age at the kill %s s, replacement '
          'booted after %s s' % ([round(a, 3) for a in ages], [round(g, 3) for g in gaps]))

    assert max(ages) < 2.0, 'the workers were not young when killed: %r' % ages
    # a boot failure backs off at least 0.5 s before forking again
    assert max(gaps) < 0.5, 'replacements came %r s after the kills' % gaps
    refused = r'did not boot|backing off|back-off'
    assert not log_lines(pool, refused), log_lines(pool, refused)
    for pid in victims:
        assert log_lines(pool, r'worker %d of queue .q. killed by SIGKILL \(sent by another '
                         r'process, or by the kernel when out of memory\); starting a new one'
                         % pid, levels=('INFO',)), pool.log_tail()
    assert not log_lines(pool, r'perhaps', levels=('INFO', 'WARNING', 'ERROR'))


@pytest.mark.parametrize('how', ['raise', 'sigkill'])
def test_worker_that_does_not_boot_backs_off(e2e, how):
    # A start hook that raises (EXIT_BOOT_ERROR) or a worker that dies before
    # it is ready: its replacement is forked after a back-off that doubles,
    # 0.5 s, 1 s, 2 s, and the log says so.
    e2e.write_jobs(FAULT_JOBS + BOOT_JOBS % {1: how, 2: how, 3: how})
    pool = e2e.pool(queue_conf(worker_number=1,
                               worker_start_handle=Src('jobs.boot_hook'))).start()
    jobs = e2e.import_jobs()
    push_tagged(jobs, ['after-boot'])
    wait_all_ran(e2e, pool, ['after-boot'], 10)
    times = [r['time'] for r in boots(e2e)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    print('\n[fault] start hook %s x3: boots %.3f s apart' % (how, gaps[0]),
          [round(g, 3) for g in gaps])

    assert len(times) == 4, boots(e2e)
    for gap, delay in zip(gaps, (0.5, 1.0, 2.0)):
        assert delay - 0.05 <= gap < delay + 1.0, 'boots %r s apart, expected ~0.5, 1, 2' % gaps
    backoffs = log_lines(pool, r'worker \d+ of queue .q. did not boot \(.*\); backing off')
    assert len(backoffs) == 3, backoffs
    why = 'could not boot (a start hook raised)' if how == 'raise' else \
        'killed by SIGKILL (sent by another process, or by the kernel when out of memory), ' \
        'before it was ready'
    assert all(why in line for line in backoffs), backoffs


# -- 7. a master killed while the broker is down ---------------------------------------

@pytest.mark.parametrize('model', MODELS)
def test_master_killed_while_broker_down_jobs_back_when_it_answers(e2e, servers, model):
    # The master that replaces the dead one cannot put its jobs back while the
    # broker is down; it tries again until the broker answers, so the jobs run
    # again at once rather than when their leases expire (LEASE_SECONDS).
    # fail_number=0: a recovery by lease expiry counts as an attempt and would
    # send the jobs to the failed list; putting them back does not.
    broker = servers('--appendonly', 'yes', '--appendfsync', 'always')
    e2e.broker_url = broker.url
    pool = e2e.pool(queue_conf(model=model, worker_number=2, fail_number=0)).start()
    jobs = e2e.import_jobs()
    (master,) = pool.masters('q')
    tags = ['busy-0', 'busy-1']
    for tag in tags:
        mpqueue.push('q', jobs.long_once, args=(tag, 30))
    first = started(e2e, pool, tags)

    broker.kill()
    os.kill(master['pid'], signal.SIGKILL)
    pool.wait(lambda: log_lines(pool, r"\[(?!%d\])\d+\] master of queue 'q': cannot reach"
                                % master['pid']), 10,
              'the new master to fail to reach the broker while it is down')
    broker.start()
    answers = time.time()
    reruns = started(e2e, pool, tags, attempts=2, timeout=mpqueue.LEASE_SECONDS + 5)
    recovery = max(runs[1]['time'] for runs in reruns.values()) - answers
    lease_left = min(runs[0]['time'] for runs in first.values()) + mpqueue.LEASE_SECONDS \
        - answers
    wait_all_ran(e2e, pool, tags, 10)
    final = wait_drained(pool, failed=0)
    figures = tally(e2e, tags)
    report('master SIGKILL, broker down (%s)' % model, figures, recovery,
           lease_left_at_return_s=round(lease_left, 3), status=final)

    assert figures['lost'] == 0 and figures['duplicated'] == 0, figures
    assert final['failed'] == 0, mpqueue.failed_jobs('q')
    assert lease_left > 3, 'the broker came back too late to tell: %.1fs of lease left' % (
        lease_left)
    assert recovery < 1.5, 'the jobs of the dead master ran again %.2fs after the broker ' \
        'answered' % recovery
    assert log_lines(pool, r'2 job\(s\) of the dead master \S+:%d of queue .q. went back'
                     % master['pid']), pool.log_tail()
