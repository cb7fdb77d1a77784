"""The main job, end to end, with nothing to install or run beforehand:
start a pool in the background on the embedded SQLite broker, push example
jobs, watch them run, show the queue and the failed job, and stop the pool.

    pip install . && python examples/quickstart.py
"""
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault('MPQUEUE_EXAMPLE_DIR', '/tmp/mpqueue-quickstart')
RUN_DIR = os.environ['MPQUEUE_EXAMPLE_DIR']

import mpqueue  # noqa: E402

CONFIG = os.path.join(HERE, 'config.py')


def cli(*args):
    cmd = [sys.executable, '-m', 'mpqueue_cli'] + list(args) + ['--config', CONFIG]
    print('$ mpqueue %s' % ' '.join(args), flush=True)
    subprocess.run(cmd, check=True)


def main():
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    os.makedirs(RUN_DIR)
    cli('worker:start', '-d')
    try:
        import push
        from config import config
        mpqueue.configure(config)
        ids = push.main()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = {q: mpqueue.status(q) for q in ('default', 'mail')}
            finished = sum(s['over'] + s['failed'] for s in done.values())
            if finished >= len(ids):
                break
            time.sleep(0.1)
        print('\n--- what the jobs wrote (%s) ---' % os.path.join(RUN_DIR, 'results.txt'))
        with open(os.path.join(RUN_DIR, 'results.txt')) as f:
            print(f.read())
        cli('queue:status')
        cli('worker:status')
        cli('queue:failed', '--queue', 'default')
    finally:
        cli('worker:stop')


if __name__ == '__main__':
    main()
