"""Example pool configuration: `mpqueue worker:start --config examples/config.py`.

With no `driver`, mpqueue uses its embedded SQLite broker, a file under
`pid_path` named after `basics.name`: nothing to install or run.  To use Redis
(several servers, or more throughput), uncomment the `driver` line.
"""
import logging
import os
import sys

import mpqueue

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)          # so that the workers can import jobs.py

import jobs  # noqa: E402

RUN_DIR = os.environ.get('MPQUEUE_EXAMPLE_DIR', '/tmp/mpqueue-example')

config = {
    'basics': {
        'name': 'example',
        'pid_path': RUN_DIR,
        # 'driver': mpqueue.RedisDriver('127.0.0.1', 6379, prefix='mpq-example'),
    },
    'log': {'path': RUN_DIR, 'level': logging.INFO},
    'queue': [
        {'name': 'default', 'worker_number': 3, 'timeout': 30, 'fail_number': 2,
         'fail_expire': 0.5, 'fail_handle': jobs.on_failure},
        {'name': 'mail', 'worker_number': 1, 'model': mpqueue.MODEL_GRAB},
    ],
}
