"""Periodic jobs: a queue with two schedules, ticked by two pools at once.

Each tick pushes exactly one job however many pools run the queue: the
broker moves the schedule's last tick and pushes the job in one atomic step.
This starts two pools (as two servers would), lets a few ticks pass, shows
`schedule:list` and how many times each tick ran, and stops both pools.

    pip install . && python examples/schedules.py

It is also the config of the pools (``config`` below, used with --config).
"""
import collections
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_DIR = os.environ.setdefault('MPQUEUE_EXAMPLE_DIR', '/tmp/mpqueue-schedules')
LOG = os.path.join(RUN_DIR, 'ticks.txt')

import mpqueue  # noqa: E402


def report(name):
    """The scheduled job: appends its schedule's name and the time."""
    with open(LOG, 'a') as f:
        f.write('%s %.3f %d\n' % (name, time.time(), os.getpid()))


def pool_config(name):
    return {
        'basics': {'name': name, 'pid_path': RUN_DIR,
                   'driver': mpqueue.SqliteDriver(os.path.join(RUN_DIR, 'broker.db'))},
        'log': {'path': RUN_DIR},
        'queue': [{'name': 'reports', 'worker_number': 1, 'schedule': [
            {'name': 'every-2s', 'every': 2, 'job': 'schedules:report', 'args': ('every-2s',)},
            {'name': 'each-minute', 'cron': '* * * * *', 'timezone': 'Europe/Berlin',
             'job': 'schedules:report', 'args': ('each-minute',), 'overlap': False},
        ]}],
    }


config = pool_config(os.environ.get('MPQUEUE_EXAMPLE_POOL', 'schedules-a'))


def cli(pool, *args):
    env = dict(os.environ, MPQUEUE_EXAMPLE_POOL=pool,
               PYTHONPATH=os.pathsep.join([HERE] + sys.path))
    cmd = [sys.executable, '-m', 'mpqueue_cli'] + list(args) + ['--config', __file__]
    print('$ mpqueue %s   (pool %s)' % (' '.join(args), pool), flush=True)
    subprocess.run(cmd, check=True, env=env)


def main():
    os.makedirs(RUN_DIR, exist_ok=True)
    for name in ('broker.db', 'broker.db-wal', 'broker.db-shm', 'ticks.txt'):
        try:
            os.unlink(os.path.join(RUN_DIR, name))
        except FileNotFoundError:
            pass
    pools = ('schedules-a', 'schedules-b')
    for pool in pools:
        cli(pool, 'worker:start', '-d')
    try:
        time.sleep(7)       # a demo: let a few ticks of 2 s pass
        cli(pools[0], 'schedule:list')
        ticks = collections.Counter()
        with open(LOG) as f:
            for line in f:
                name, when, _ = line.split()
                if name == 'every-2s':
                    ticks[int(float(when) // 2 * 2)] += 1
        print('\nruns per tick of every-2s:', dict(sorted(ticks.items())))
        assert ticks and set(ticks.values()) == {1}, 'a tick ran twice or not at all'
    finally:
        for pool in pools:
            cli(pool, 'worker:stop')


if __name__ == '__main__':
    main()
