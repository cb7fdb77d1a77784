"""mpqueue config of the Flask example.

Start the pool from this directory with ``mpqueue worker:start``, or from
anywhere with ``mpqueue worker:start --config examples/flask_app/mpqueue_config.py``.
``create_app()`` reads the same file, so the app and the pool share a broker.

Environment variables (give both sides the same values):

- ``MPQ_RUN_DIR``: pid file, log and, without Redis, the SQLite broker
  (default ``/tmp/mpqueue-flask``);
- ``MPQ_REDIS_URL``: use this Redis as the broker instead (``redis://...``),
  with keys under ``MPQ_REDIS_PREFIX`` (default ``mpq-flask``);
- the app's own ``FLASK_*`` settings, such as ``FLASK_GREETING``.
"""
import logging
import os

import mpqueue

RUN_DIR = os.environ.get('MPQ_RUN_DIR', '/tmp/mpqueue-flask')
REDIS_URL = os.environ.get('MPQ_REDIS_URL')


def boot_flask():
    """Runs in every worker right after it is forked: build the app once and
    keep it for the jobs.  The import is inside the function so that, after
    ``worker:reload``, the worker builds its app from the new code."""
    from greeter import jobs

    jobs.init_worker()


config = {
    'basics': {
        'name': 'flask-greeter',
        'pid_path': RUN_DIR,
        # None: the SQLite broker, {RUN_DIR}/flask-greeter.db
        'driver': mpqueue.RedisDriver(url=REDIS_URL,
                                      prefix=os.environ.get('MPQ_REDIS_PREFIX', 'mpq-flask'))
        if REDIS_URL else None,
        'worker_start_handle': boot_flask,
    },
    'log': {'path': RUN_DIR, 'level': logging.INFO},
    'queue': [
        {'name': 'greetings', 'worker_number': 2, 'timeout': 30},
    ],
}
