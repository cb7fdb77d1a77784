"""Example jobs.  Workers import this module, so it must be importable on the
worker side (a lambda or closure needs no shared code: it travels by value)."""
import asyncio
import os
import time

import mpqueue

RESULTS = os.path.join(os.environ.get('MPQUEUE_EXAMPLE_DIR', '/tmp/mpqueue-example'),
                       'results.txt')


def record(text):
    with open(RESULTS, 'a') as f:
        f.write('%s pid=%d %s\n' % (time.strftime('%H:%M:%S'), os.getpid(), text))


def add(a, b):
    record('add(%r, %r) = %r' % (a, b, a + b))


async def fetch(url):
    await asyncio.sleep(0.1)          # stands for real async I/O
    record('fetched %s' % url)


def flaky(counter_file):
    """Fails on its first attempt, succeeds on the second."""
    attempts = int(open(counter_file).read()) if os.path.exists(counter_file) else 0
    with open(counter_file, 'w') as f:
        f.write(str(attempts + 1))
    if attempts == 0:
        raise RuntimeError('first attempt fails on purpose')
    record('flaky succeeded on attempt %d' % (attempts + 1))


def broken():
    raise ValueError('this job always fails')


def on_failure(job_info, exc):
    """The queue's fail_handle: runs once a job has failed for good."""
    record('failed for good: %s after %d attempts (%s)' % (
        job_info['job'], job_info['exec_number'], type(exc).__name__))


class SendMail(mpqueue.Job):
    timeout = 10
    fail_number = 1

    def __init__(self, to):
        self.to = to

    def handle(self):
        record('mail sent to %s' % self.to)
