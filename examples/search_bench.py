#!/usr/bin/env python3
"""Measure what the dashboard's search and live job page cost.

    python examples/search_bench.py                                  # SQLite, 1,000,000 jobs
    python examples/search_bench.py --driver redis --redis-url redis://127.0.0.1:6379/5

With ``--jobs`` N jobs waiting in a queue of its own (pushed with
``push_many``, 10,000 a call, each with a unique key), it times:

  find     ``mpqueue.find_job`` of 200 random jobs by id, then by key; and
           ``GET /api/search`` of the same from a ``mpqueue web`` process
           (which also walks the queue's failed list, empty here; after one
           search that opens its connection to the broker): ms, median and max
  walk     ``count_failed`` over ``--failed`` failed jobs (the walk that lists
           failed jobs by text), of a text that matches none: ms
  progress a real pool runs one job that calls ``mpqueue.progress()`` 1,000
           times in a loop (the calls the 10-a-second rule keeps from the
           broker), then 100 times 0.1 s apart (each one writes): us per call,
           median

Nothing here is written at push for the search: ``find`` reads the job's
record by id, and for a key the unique hold that ``push(key=..., unique=...)``
keeps anyway (``examples/benchmark.py --only push,unique`` measures what that
hold costs a push).  At the end the queue is cleaned and the script checks
that the broker holds nothing of it (Redis: no key under its prefix).
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import mpqueue  # noqa: E402

CHUNK = 10000           # jobs a push_many call
LOOKUPS = 200           # finds of each kind
CONFIG = '''import mpqueue
config = {'basics': {'name': 'searchbench', 'pid_path': %(dir)r, 'driver': %(driver)s},
          'queue': [{'name': %(queue)r, 'worker_number': 1, 'result_ttl': 60}],
          'log': {'path': %(dir)r}}
'''
JOBS = '''import statistics
import time

import mpqueue


def progress_calls(n):
    """[us per progress() call in a loop, us per call 0.1 s apart (each writes)]."""
    spans = []
    for i in range(n):
        began = time.perf_counter()
        mpqueue.progress(i / n, step=i)
        spans.append(time.perf_counter() - began)
    writes = []
    for i in range(n // 10):
        time.sleep(mpqueue.PROGRESS_INTERVAL)
        began = time.perf_counter()
        mpqueue.progress(i / n, step=i)
        writes.append(time.perf_counter() - began)
    return [1e6 * statistics.median(spans), 1e6 * statistics.median(writes)]
'''


def ms(spans):
    return 'median %.2f ms, max %.2f ms' % (1e3 * statistics.median(spans), 1e3 * max(spans))


def timed(func, args):
    """Seconds each ``func(arg)`` took; each must return what it looked for."""
    spans = []
    for arg in args:
        began = time.perf_counter()
        assert func(arg), arg
        spans.append(time.perf_counter() - began)
    return spans


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--driver', choices=('sqlite', 'redis'), default='sqlite')
    p.add_argument('--redis-url', default='redis://127.0.0.1:6379/15')
    p.add_argument('--jobs', type=int, default=1000000)
    p.add_argument('--failed', type=int, default=10000)
    args = p.parse_args()
    wd = tempfile.mkdtemp(prefix='mpqsearch-')
    queue, prefix = 'searchbench-%d' % os.getpid(), 'mpqsearch'
    driver = ('mpqueue.SqliteDriver(%r)' % os.path.join(wd, 'broker.db') if args.driver ==
              'sqlite' else 'mpqueue.RedisDriver(url=%r, prefix=%r)' % (args.redis_url, prefix))
    with open(os.path.join(wd, 'searchbench_config.py'), 'w') as f:
        f.write(CONFIG % {'dir': wd, 'driver': driver, 'queue': queue})
    with open(os.path.join(wd, 'searchbench_jobs.py'), 'w') as f:
        f.write(JOBS)
    sys.path.insert(0, wd)
    import searchbench_config
    import searchbench_jobs
    mpqueue.configure(searchbench_config.config)
    cli = [sys.executable, '-m', 'mpqueue_cli']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), wd]))
    config = ['--config', os.path.join(wd, 'searchbench_config.py')]
    web = None
    try:
        began, ids = time.monotonic(), []
        for start in range(0, args.jobs, CHUNK):
            n = min(CHUNK, args.jobs - start)
            ids += mpqueue.push_many(queue, ['os:getpid'] * n, unique='queued', key=[
                'key-%d' % i for i in range(start, start + n)])
        print('%s: %d jobs pushed in %.0f s' % (args.driver, len(ids), time.monotonic() - began))
        sample = random.sample(range(len(ids)), min(LOOKUPS, len(ids)))
        print('find_job by id:  %s' % ms(timed(lambda i: mpqueue.find_job(queue, ids[i]),
                                              sample)))
        print('find_job by key: %s' % ms(timed(lambda i: mpqueue.find_job(queue, 'key-%d' % i),
                                              sample)))
        web = subprocess.Popen(cli + ['web', '--port', '0'] + config, env=env, cwd=wd,
                               stdout=subprocess.PIPE, text=True)
        url = re.search(r'http://\S+/', web.stdout.readline()).group(0)

        def search(text):
            with urllib.request.urlopen(url + 'api/search?q=' + urllib.parse.quote(text)) as r:
                return json.load(r)['jobs']
        search(ids[0])          # the web process's first call opens its broker connection
        print('GET /api/search by id:  %s' % ms(timed(lambda i: search(ids[i]), sample)))
        print('GET /api/search by key: %s' % ms(timed(lambda i: search('key-%d' % i), sample)))

        # failed jobs, made without a pool: each with a traceback of 12 frames (1.3 KB)
        driver = mpqueue._get_config()['basics']['driver']
        trace = 'Traceback (most recent call last):\n' + ''.join(
            '  File "/srv/app/module_%d.py", line %d, in handler_%d\n    result = step_%d(x)\n'
            % (i, 10 * i, i, i) for i in range(12)) + 'ValueError: bad input %d'
        for start in range(0, args.failed, CHUNK):
            jobs = driver.run(queue, 'pop', min(CHUNK, args.failed - start), 'bench', 'bench')
            driver.execute(queue, [('fail', job['id'], job['attempt'], 1,
                                    json.dumps([trace % i]), '') for i, job in enumerate(jobs)])
        spans = timed(lambda _: mpqueue.count_failed(queue, 'no such text') == 0, range(5))
        print('count_failed over %d failed jobs (none matches): %s' % (args.failed, ms(spans)))

        mpqueue.clean(queue)
        pool = subprocess.Popen(cli + ['worker:start'] + config, env=env, cwd=wd,
                                start_new_session=True, stdout=subprocess.DEVNULL)
        try:
            job = mpqueue.push(queue, searchbench_jobs.progress_calls, args=(1000,))
            loop, writing = mpqueue.result(queue, job, timeout=120)
        finally:
            pool.send_signal(signal.SIGTERM)
            pool.wait(60)
        print('progress(): %.1f us a call in a loop, %.1f us a call that writes' % (
            loop, writing))
    finally:
        if web is not None:
            web.send_signal(signal.SIGTERM)
            web.wait(10)
        mpqueue.clean(queue)
        if args.driver == 'redis':
            import redis
            left = list(redis.Redis.from_url(args.redis_url).scan_iter(
                match='%s:{%s}:*' % (prefix, queue), count=10000))
            print('keys left under %s:{%s}: %d' % (prefix, queue, len(left)))
        shutil.rmtree(wd)


if __name__ == '__main__':
    main()
