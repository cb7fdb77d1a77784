"""Async jobs on one coroutine worker: a pool with ONE worker process whose
queue has ``coroutine_number = 100`` runs up to 100 ``async def`` jobs at
once on its event loop.  This script starts such a pool, pushes 1,000 jobs
that each ``await asyncio.sleep(0.01)`` (an I/O wait), and times how long
the pool takes to run them all; then stops the pool.

    python examples/async_jobs.py                    # embedded SQLite broker
    python examples/async_jobs.py --redis redis://127.0.0.1:6379/15
    python examples/async_jobs.py --coroutines 1     # the same, one at a time

The file is also the pool's config (``config`` below):
``mpqueue worker:start --config examples/async_jobs.py``.
"""
import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)          # so that the workers can import this module

import mpqueue  # noqa: E402

RUN_DIR = os.environ.get('MPQUEUE_ASYNC_DIR') or tempfile.mkdtemp(prefix='mpqueue-async-')
os.environ['MPQUEUE_ASYNC_DIR'] = RUN_DIR        # the pool reads the same settings
COROUTINES = int(os.environ.get('MPQUEUE_ASYNC_COROUTINES', '100'))
REDIS_URL = os.environ.get('MPQUEUE_ASYNC_REDIS', '')


async def io_bound(seconds):
    """Stands for a job that waits on the network: an HTTP call, a query."""
    await asyncio.sleep(seconds)


config = {
    'basics': {
        'name': 'async-example',
        'pid_path': RUN_DIR,
        'driver': (mpqueue.RedisDriver(url=REDIS_URL, prefix='mpq-async-example')
                   if REDIS_URL else mpqueue.SqliteDriver(os.path.join(RUN_DIR, 'broker.db'))),
    },
    'log': {'path': RUN_DIR, 'level': logging.WARNING},
    'queue': [
        {'name': 'io', 'worker_number': 1, 'coroutine_number': COROUTINES, 'timeout': 30},
    ],
}


def cli(*args):
    cmd = [sys.executable, '-m', 'mpqueue_cli'] + list(args) + ['--config', __file__]
    subprocess.run(cmd, check=True, cwd=os.path.dirname(HERE))


def run_once(jobs, seconds):
    """Push ``jobs`` sleeping jobs at once; seconds until every one is done."""
    mpqueue.clean('io')
    t0 = time.perf_counter()
    from async_jobs import io_bound as job   # by import path, not this __main__'s copy
    mpqueue.push_many('io', [job] * jobs, args=(seconds,))
    deadline = time.monotonic() + 120
    while mpqueue.status('io')['over'] < jobs:
        if time.monotonic() > deadline:
            raise SystemExit('the jobs did not finish within 120 s: %r' % mpqueue.status('io'))
        time.sleep(0.002)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--jobs', type=int, default=1000)
    parser.add_argument('--sleep', type=float, default=0.01, help='each job awaits this long')
    parser.add_argument('--coroutines', type=int, default=100, help='coroutine_number')
    parser.add_argument('--repeat', type=int, default=3, help='runs; the median is shown')
    parser.add_argument('--redis', default='', help='Redis URL (default: embedded SQLite)')
    args = parser.parse_args()
    os.environ['MPQUEUE_ASYNC_COROUTINES'] = str(args.coroutines)
    os.environ['MPQUEUE_ASYNC_REDIS'] = args.redis
    config['queue'][0]['coroutine_number'] = args.coroutines
    if args.redis:
        config['basics']['driver'] = mpqueue.RedisDriver(url=args.redis,
                                                         prefix='mpq-async-example')
    mpqueue.configure(config)

    cli('worker:start', '-d')
    try:
        took = [run_once(args.jobs, args.sleep) for _ in range(args.repeat)]
    finally:
        cli('worker:stop')
        mpqueue.clean('io')
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    best = args.jobs * args.sleep / args.coroutines
    print('%d jobs awaiting %.3fs each, 1 worker, coroutine_number %d, %s broker' % (
        args.jobs, args.sleep, args.coroutines, 'Redis' if args.redis else 'SQLite'))
    print('runs: %s s' % ', '.join('%.3f' % t for t in took))
    median = statistics.median(took)
    print('median %.3f s = %.0f jobs/s (the sleeps alone, %d at a time: %.2f s)' % (
        median, args.jobs / median, args.coroutines, best))


if __name__ == '__main__':
    main()
