"""What a crontab line runs: push one job and exit, no worker code needed here.

    */5 * * * * cd /path/to/project && python examples/cron_push.py

The pushing side needs only the config (for the broker and the queue's
defaults); the job runs in the pool started with `mpqueue worker:start -d`.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mpqueue  # noqa: E402

from config import config  # noqa: E402

if __name__ == '__main__':
    mpqueue.configure(config)
    job_id = mpqueue.push('default', 'jobs:add', args=(int(time.time()), 0))
    print(job_id)
