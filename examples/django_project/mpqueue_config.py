"""mpqueue config of the Django example.

Start the pool from this directory with ``mpqueue worker:start`` (this file is
the default config there), or from anywhere with
``mpqueue worker:start --config examples/django_project/mpqueue_config.py``.
The web side reads the same file (``notes/apps.py``), so both use one broker.

Environment variables (give both sides the same values):

- ``MPQ_RUN_DIR``: pid file, log and, without Redis, the SQLite broker
  (default ``/tmp/mpqueue-django``);
- ``MPQ_REDIS_URL``: use this Redis as the broker instead (``redis://...``),
  with keys under ``MPQ_REDIS_PREFIX`` (default ``mpq-django``);
- ``DJANGO_SETTINGS_MODULE`` (default ``mysite.settings``) and the settings'
  own variables, such as ``NOTES_DB_PATH``.
"""
import logging
import os

import mpqueue

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')

RUN_DIR = os.environ.get('MPQ_RUN_DIR', '/tmp/mpqueue-django')
REDIS_URL = os.environ.get('MPQ_REDIS_URL')


def boot_django():
    """Runs in every worker right after it is forked: load the settings,
    the apps and the models, as ``manage.py`` or the WSGI module would.
    The pool's other processes never import Django code, so a worker always
    has its own database connections, and ``worker:reload`` picks up
    changed code."""
    import django

    django.setup()


config = {
    'basics': {
        'name': 'django-notes',
        'pid_path': RUN_DIR,
        # None: the SQLite broker, {RUN_DIR}/django-notes.db
        'driver': mpqueue.RedisDriver(url=REDIS_URL,
                                      prefix=os.environ.get('MPQ_REDIS_PREFIX', 'mpq-django'))
        if REDIS_URL else None,
        'worker_start_handle': boot_django,
    },
    'log': {'path': RUN_DIR, 'level': logging.INFO},
    'queue': [
        {'name': 'notes', 'worker_number': 2, 'timeout': 60},
    ],
}
