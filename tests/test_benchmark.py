"""Smoke test of examples/benchmark.py: a small run per broker, sane numbers.

Only sanity is checked (every job ran once, rates are positive, latencies
are plausible): the figures themselves depend on the machine.
"""

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / 'examples' / 'benchmark.py'
JOBS = 300
WORKERS = 4
DEADLINE = 240          # seconds for one whole benchmark run


def run_benchmark(proc_reaper, *extra):
    cmd = [sys.executable, str(BENCHMARK), '--jobs', str(JOBS), '--idle-seconds', '1',
           '--workers', str(WORKERS), '--json'] + list(extra)
    proc = proc_reaper.popen(cmd, cwd=str(REPO), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)        # the benchmark stops its pool on SIGTERM
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail('benchmark did not finish within %ds\nstdout:\n%s\nstderr:\n%s' % (
            DEADLINE, out, err))
    assert proc.returncode == 0, 'exit status %s\nstdout:\n%s\nstderr:\n%s' % (
        proc.returncode, out, err)
    report = json.loads(out)
    assert report['problems'] == [], err
    return report


def check_report(report):
    results = report['results']
    assert set(results) >= {'push', 'unique', 'push_many', 'drain', 'latency', 'delayed',
                            'handles', 'idle', 'schedules'}

    unique = results['unique']
    assert unique['queued'] == JOBS + 1         # a job per key, and one of the shared key
    assert unique['jobs_per_s'] > 0 and unique['conflicts_per_s'] > 0

    for name in ('push', 'push_many'):
        assert results[name]['jobs'] == JOBS
        assert results[name]['queued'] == JOBS
        assert results[name]['jobs_per_s'] > 0

    drain = results['drain']
    assert drain['jobs'] == JOBS
    assert drain['done'] == JOBS
    assert drain['lost'] == 0
    assert drain['duplicated'] == 0
    assert drain['jobs_per_s'] > 0
    assert drain['wall_jobs_per_s'] > 0
    assert drain['status']['over'] >= JOBS
    assert drain['status']['failed'] == 0

    latency = results['latency']
    assert latency['done'] == latency['jobs'] == 300
    assert 0 < latency['p50_ms'] < 1000
    assert latency['p50_ms'] <= latency['p99_ms'] <= latency['max_ms']

    delayed = results['delayed']
    assert delayed['done'] == delayed['jobs'] == 100
    assert delayed['early'] == 0
    assert 0 <= delayed['p50_ms'] < 1000

    handles = results['handles']
    assert (handles['jobs'], handles['cancels']) == (200, 20)
    for name in ('push_to_result', 'end_to_result', 'cancel_to_exit'):
        assert 0 <= handles[name]['p50_ms'] <= handles[name]['p99_ms'] < 30000, handles

    ticks = results['schedules']['every_1s']
    assert ticks['ticks'] >= 20 and 0 <= ticks['p50_ms'] <= ticks['max_ms'] < 1000, ticks

    idle = results['idle']
    assert idle['cpu_percent'] >= 0
    assert idle['pss_mb'] > 0
    assert idle['processes'] >= WORKERS + 1     # at least the master and its workers

    pool = results['pool']
    assert pool['killed'] == []
    assert pool['exit_status'] == 0


@pytest.mark.slow
def test_benchmark_sqlite(proc_reaper):
    report = run_benchmark(proc_reaper, '--driver', 'sqlite')
    assert report['driver'] == 'sqlite'
    check_report(report)


@pytest.mark.slow
def test_benchmark_scale_sqlite(proc_reaper):
    report = run_benchmark(proc_reaper, '--scale', '--driver', 'sqlite', '--only', 'bulk,delayed',
                           '--delayed-jobs', '200', '--delayed-seconds', '1')
    sqlite = report['drivers']['sqlite']
    assert sqlite['bulk']['seconds'] > 0 and sqlite['bulk']['longest_ms'] > 0
    assert sqlite['delayed']['done'] == sqlite['delayed']['jobs'] == 200
    assert 0 <= sqlite['delayed']['p50_ms'] <= sqlite['delayed']['max_ms'] < 1000


@pytest.mark.slow
def test_benchmark_redis(proc_reaper, redis_url, redis_db):
    prefix = 'mpqtest-bench-%s' % uuid.uuid4().hex[:8]
    report = run_benchmark(proc_reaper, '--driver', 'redis', '--redis-url',
                           '%s/%d' % (redis_url, redis_db), '--redis-prefix', prefix)
    assert report['driver'] == 'redis'
    check_report(report)


@pytest.mark.slow
def test_benchmark_redis_cluster(proc_reaper, redis_cluster):
    prefix = 'mpqtest-bench-%s' % uuid.uuid4().hex[:8]
    report = run_benchmark(proc_reaper, '--driver', 'redis-cluster', '--redis-url',
                           redis_cluster.url, '--redis-prefix', prefix)
    assert report['driver'] == 'redis-cluster'
    check_report(report)
    assert redis_cluster.keys(prefix) == []


@pytest.mark.sentinel
@pytest.mark.slow
def test_benchmark_drain_through_sentinel(proc_reaper, redis_sentinel):
    # the drain only: the other workloads take the same path (see above)
    prefix = 'mpqtest-bench-%s' % uuid.uuid4().hex[:8]
    report = run_benchmark(proc_reaper, '--driver', 'redis-sentinel', '--redis-url',
                           redis_sentinel.url, '--redis-prefix', prefix, '--only', 'drain')
    assert report['driver'] == 'redis-sentinel'
    drain = report['results']['drain']
    assert (drain['jobs'], drain['done'], drain['lost'], drain['duplicated']) == \
        (JOBS, JOBS, 0, 0), drain
    assert drain['jobs_per_s'] > 0 and drain['status']['failed'] == 0
    assert redis_sentinel.keys(prefix) == []
