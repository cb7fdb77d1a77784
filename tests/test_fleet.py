"""Monitoring, end to end on both brokers: the fleet view (``worker:status
--all``, fed by each pool's heartbeat), the live view (``queue:status
--watch``) and the Prometheus metrics (``metrics``, ``metrics --serve``).

Pools are real ``mpqueue_cli.py worker:start`` processes; every wait polls
with a deadline.
"""

import json
import queue as queue_module
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

import mpqueue
import mpqueue_cli
from pool_harness import (CLI, alive, fleet, kill_tree, parse_exposition, queue_conf, sample,
                          wait_fleet)


def workers_of(heartbeat):
    return {q: (c['workers'], c['busy'], c['idle']) for q, c in heartbeat['queues'].items()}


# -- fleet view -------------------------------------------------------------------------

def test_fleet_lists_every_pool_and_a_stopped_one_leaves_at_once(e2e):
    first = e2e.pool(queue_conf('q', worker_number=2), queue_conf('other', worker_number=1),
                     name='server-a').start()
    second = e2e.pool(queue_conf('q', worker_number=1), name='server-b').start()
    pools = wait_fleet(first, 10, 'both pools with their workers', lambda f: {
        name: workers_of(p) for name, p in f.items()} == {
        'server-a': {'q': (2, 0, 2), 'other': (1, 0, 1)}, 'server-b': {'q': (1, 0, 1)}})
    for pool in (first, second):
        beat = pools[pool.name]
        assert beat['pid'] == pool.proc.pid and beat['host'] == mpqueue._HOST
        assert beat['state'] == 'running'
        assert 0 <= beat['age'] <= mpqueue.HEARTBEAT_TTL
        assert abs(beat['last_seen'] - time.time()) <= mpqueue.HEARTBEAT_TTL

    # A job run shows up in `done` of the pool that ran it.
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.ok, args=('counted',))
    wait_fleet(first, 10, 'the job to be counted', lambda f: sum(
        f[name]['queues']['q']['done'] for name in ('server-a', 'server-b')) == 1)

    # The text view: a header, then one line per pool and queue.
    res = first.cli('worker:status', '--all')
    assert res.returncode == 0, res.stderr
    header, *lines = res.stdout.strip().splitlines()
    assert header.split() == ['pool', 'host', 'pid', 'queue', 'workers', 'busy', 'idle',
                              'done', 'state', 'last', 'seen']
    rows = {(f[0], f[3]): f for f in (line.split() for line in lines)}
    assert sorted(rows) == [('server-a', 'other'), ('server-a', 'q'), ('server-b', 'q')]
    assert rows['server-a', 'q'][1:3] == [mpqueue._HOST, str(first.proc.pid)]
    assert rows['server-a', 'other'][4:7] == ['1', '0', '1']
    assert rows['server-b', 'q'][9:] == [rows['server-b', 'q'][9], 'ago']

    # The local view is unchanged: this pool's processes only.
    assert {r['pid'] for r in second.status() if r['type'] == 'manage'} == {second.proc.pid}

    second.stop()
    assert not alive(second.proc.pid)
    assert set(fleet(first)) == {'server-a'}, 'a cleanly stopped pool must leave at once'


def test_killed_pool_drops_off_after_the_ttl(e2e):
    first = e2e.pool(queue_conf('q', worker_number=1), name='server-a').start()
    second = e2e.pool(queue_conf('q', worker_number=1), name='server-b').start()
    wait_fleet(first, 10, 'both pools', lambda f: set(f) == {'server-a', 'server-b'})

    kill_tree(second)
    killed = time.monotonic()
    assert 'server-b' in fleet(first), 'a killed pool stays listed until its heartbeat expires'
    wait_fleet(first, mpqueue.HEARTBEAT_TTL + mpqueue.HEARTBEAT_SECONDS + 5,
               'the killed pool to drop off', lambda f: set(f) == {'server-a'})
    gone = time.monotonic() - killed
    print('killed pool dropped off after %.1fs' % gone)
    assert gone <= mpqueue.HEARTBEAT_TTL + mpqueue.HEARTBEAT_SECONDS + 1


# -- live view --------------------------------------------------------------------------

class Output:
    """The lines a process prints, read by a thread so that every read can
    have a deadline."""

    def __init__(self, proc):
        self.proc, self.lines = proc, queue_module.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip('\n'))
        self.lines.put(None)

    def line(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue_module.Empty:
            raise AssertionError('no output within %ss' % timeout) from None
        assert line is not None, 'the process ended (%s): %s' % (
            self.proc.wait(), self.proc.stderr.read())
        return line

    def frame(self, timeout):
        """The next frame of ``queue:status --watch``: its lines up to a blank one."""
        lines = []
        while True:
            line = self.line(timeout)
            if not line:
                return lines
            lines.append(line)


def popen_cli(e2e, pool, *args):
    return e2e.reaper.popen([sys.executable, str(CLI)] + list(args) + [
        '--config', str(pool.config_path)], cwd=str(CLI.parent), env=e2e.env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def parse_frame(lines):
    """{queue: {column: number or None}} of one text frame."""
    title, header, *rows = lines
    assert title.startswith('mpqueue ') and 'Ctrl-C' in title
    columns = header.split()
    assert columns == ['queue', 'waiting', 'delayed', 'reserved', 'working', 'failed',
                       'blocked', 'done/s', 'failed/s']
    table = {}
    for row in rows:
        name, *values = row.split()
        table[name] = {c: None if v == '-' else float(v) for c, v in zip(columns[1:], values)}
    return table


def test_watch_prints_frames_with_depth_and_rates(e2e):
    pool = e2e.pool(queue_conf('q', worker_number=2, fail_number=0)).start()
    jobs = e2e.import_jobs()
    mpqueue.push_many('q', [jobs.ok, jobs.ok], delay=300, args=('later',))
    interval = 2.0
    proc = popen_cli(e2e, pool, 'queue:status', '--watch', '--interval', str(interval),
                     '--count', '3')
    out = Output(proc)
    first = parse_frame(out.frame(15))
    assert first == {'q': {'waiting': 0, 'delayed': 2, 'reserved': 0, 'working': 0,
                           'failed': 0, 'blocked': 0, 'done/s': None, 'failed/s': None}}
    began = time.monotonic()
    for i in range(4):
        mpqueue.push('q', jobs.ok, args=('now-%d' % i,))
    mpqueue.push('q', jobs.boom, args=('fails',))
    last = {}
    pool.wait(lambda: last.update(mpqueue.status('q')) or (last['over'], last['failed']) == (4, 1),
              10, lambda: 'the jobs to finish (%r)' % last)
    assert time.monotonic() - began < interval, 'the jobs took longer than a frame: too slow'
    raw = [out.frame(interval + 10) for _ in range(2)]
    assert proc.wait(timeout=10) == 0, proc.stderr.read()
    assert not any('\x1b' in line for frame in raw for line in frame), 'no ANSI codes in a pipe'
    frames = [parse_frame(frame)['q'] for frame in raw]
    for frame in frames:
        assert (frame['waiting'], frame['delayed'], frame['working'], frame['failed']) == \
            (0, 2, 0, 1)
    # rates are per second over about one interval: together they add up to the jobs
    assert sum(f['done/s'] for f in frames) * interval == pytest.approx(4, abs=0.5)
    assert sum(f['failed/s'] for f in frames) * interval == pytest.approx(1, abs=0.3)


def test_watch_stops_on_sigint_with_exit_0(e2e):
    pool = e2e.pool(queue_conf('q', worker_number=1))
    proc = popen_cli(e2e, pool, 'queue:status', '--watch', '--interval', '0.2', '--json')
    out = Output(proc)
    frame = json.loads(out.line(15))
    assert frame['queues']['q']['waiting'] == 0 and frame['queues']['q']['done/s'] is None
    assert json.loads(out.line(5))['queues']['q']['done/s'] == 0
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert 'Traceback' not in proc.stderr.read()


# -- Prometheus metrics -------------------------------------------------------------------

def test_metrics_match_the_queues_and_the_pools(e2e):
    pool = e2e.pool(queue_conf('q', worker_number=2, fail_number=0), name='server-a').start()
    # A config with a queue nobody serves: its jobs wait, with a known age.
    viewer = e2e.pool(queue_conf('q'), queue_conf('parked'), name='viewer')
    jobs = e2e.import_jobs()
    first_push = time.time()
    mpqueue.push_many('parked', [jobs.ok, jobs.ok], args=('parked',))
    pushed = time.time()
    mpqueue.pause('parked')
    mpqueue.push_many('q', [jobs.ok] * 3, args=('ok',))
    mpqueue.push('q', jobs.boom, args=('fails',))
    mpqueue.push_many('q', [jobs.ok] * 2, delay=300, args=('later',))
    mpqueue.push('q', jobs.sleeper, args=('busy', 60))
    last = {}
    pool.wait(lambda: last.update(mpqueue.status('q')) or (last['over'], last['failed'],
                                                              last['working']) == (3, 1, 1),
              10, lambda: 'the jobs to settle (%r)' % last)

    def metrics():
        res = viewer.cli('metrics')
        assert res.returncode == 0, res.stderr
        return parse_exposition(res.stdout)
    def busy():
        return sample(metrics(), 'mpqueue_workers', server=mpqueue._HOST, pool='server-a',
                      queue='q', state='busy') == 1
    pool.wait(busy, mpqueue.HEARTBEAT_SECONDS + 10, 'the heartbeat to show the busy worker')
    asked = time.time()
    families = metrics()
    read = time.time()

    assert set(families) == {'mpqueue_queue_jobs', 'mpqueue_jobs_total',
                             'mpqueue_oldest_waiting_seconds', 'mpqueue_queue_paused',
                             'mpqueue_workers',
                             'mpqueue_pool_jobs_finished_total',
                             'mpqueue_pool_heartbeat_age_seconds',
                             'mpqueue_schedule_last_tick_timestamp',
                             'mpqueue_schedule_skipped_total',
                             'mpqueue_limit_running', 'mpqueue_limit_waiting'}
    assert not families['mpqueue_limit_running']['samples']      # no limit in use
    assert families['mpqueue_jobs_total']['type'] == 'counter'
    assert families['mpqueue_queue_jobs']['type'] == 'gauge'
    depth = {(dict(k)['queue'], dict(k)['state']): v
             for k, v in families['mpqueue_queue_jobs']['samples'].items()}
    assert depth == {('q', 'waiting'): 0, ('q', 'delayed'): 2, ('q', 'reserved'): 0,
                     ('q', 'working'): 1, ('q', 'failed'): 1, ('parked', 'waiting'): 2,
                     ('parked', 'delayed'): 0, ('parked', 'reserved'): 0,
                     ('parked', 'working'): 0, ('parked', 'failed'): 0, ('q', 'blocked'): 0,
                     ('parked', 'blocked'): 0}
    totals = {(dict(k)['queue'], dict(k)['state']): v
              for k, v in families['mpqueue_jobs_total']['samples'].items()}
    assert totals == {('q', 'pushed'): 7, ('q', 'done'): 3, ('q', 'failed'): 1,
                      ('q', 'cancelled'): 0, ('parked', 'pushed'): 2, ('parked', 'done'): 0,
                      ('parked', 'failed'): 0, ('parked', 'cancelled'): 0, ('q', 'expired'): 0,
                      ('parked', 'expired'): 0}
    assert sample(families, 'mpqueue_oldest_waiting_seconds', queue='q') == 0
    assert families['mpqueue_queue_paused']['type'] == 'gauge'
    assert {dict(k)['queue']: v for k, v in families['mpqueue_queue_paused']['samples'].items()
            } == {'q': 0, 'parked': 1}
    age = sample(families, 'mpqueue_oldest_waiting_seconds', queue='parked')
    assert asked - pushed - 0.01 <= age <= read - first_push
    assert sample(families, 'mpqueue_workers', server=mpqueue._HOST, pool='server-a',
                  queue='q', state='idle') == 1
    assert {dict(k)['pool'] for k in families['mpqueue_workers']['samples']} == {'server-a'}
    assert sample(families, 'mpqueue_pool_jobs_finished_total', server=mpqueue._HOST,
                  pool='server-a', queue='q') == 4     # 3 done + 1 failed, before the busy one
    assert 0 <= sample(families, 'mpqueue_pool_heartbeat_age_seconds', server=mpqueue._HOST,
                       pool='server-a') <= mpqueue.HEARTBEAT_TTL


def test_metrics_labels_are_escaped():
    depth = dict(dict.fromkeys(mpqueue._DEPTH_FIELDS + ('oldest_waiting_seconds',), 0),
                 paused=False)
    pools = [{'host': 'odd "host"\\n\n', 'name': 'p', 'age': 0.5,
              'queues': {'q': {'busy': 1, 'idle': 2, 'done': 7}}}]
    families = parse_exposition(mpqueue_cli.render_metrics({'q': depth}, pools))
    assert sample(families, 'mpqueue_workers', server='odd "host"\\n\n', pool='p', queue='q',
                  state='idle') == 2
    assert sample(families, 'mpqueue_pool_jobs_finished_total', server='odd "host"\\n\n',
                  pool='p', queue='q') == 7


def test_metrics_serve_answers_http_and_stops_on_sigterm(e2e):
    pool = e2e.pool(queue_conf('q', worker_number=1))
    mpqueue.push('q', 'time:sleep', delay=300, args=(0,))
    proc = popen_cli(e2e, pool, 'metrics', '--serve', '0')
    line = Output(proc).line(15)
    url = re.search(r'http://127\.0\.0\.1:\d+/metrics', line).group(0)
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers['Content-Type'].startswith('text/plain; version=0.0.4')
        families = parse_exposition(resp.read().decode())
    assert sample(families, 'mpqueue_queue_jobs', queue='q', state='delayed') == 1
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.replace('/metrics', '/other'), timeout=10)
    assert err.value.code == 404
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert 'Traceback' not in proc.stderr.read()
