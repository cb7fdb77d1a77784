"""Push a few kinds of jobs to the example pool (run it while the pool runs)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mpqueue  # noqa: E402

from config import RUN_DIR, config  # noqa: E402
import jobs  # noqa: E402


def main():
    mpqueue.configure(config)
    ids = [
        mpqueue.push('default', jobs.add, args=(1, 2)),                   # a function
        mpqueue.push('default', lambda: jobs.record('a lambda ran')),     # shipped by value
        mpqueue.push('default', 'jobs:add', args=(40, 2)),                # an import path
        mpqueue.push('default', jobs.fetch, args=('https://example.org',)),   # async def
        mpqueue.push('default', jobs.add, delay=0.5, args=(2, 3)),        # delayed 0.5 s
        mpqueue.push('default', jobs.flaky, args=(os.path.join(RUN_DIR, 'flaky.count'),)),
        mpqueue.push('default', jobs.broken, fail_number=0),              # fails for good
        mpqueue.push('mail', jobs.SendMail('ada@example.org')),           # a Job instance
    ]
    ids += mpqueue.push_many('default', [jobs.add] * 3, args=(10, 10))     # one round trip
    print('pushed %d jobs' % len(ids))
    return ids


if __name__ == '__main__':
    main()
