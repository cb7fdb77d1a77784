"""``python manage.py mpqueue COMMAND [options]``: the mpqueue command line
with this project's settings loaded, e.g. ``python manage.py mpqueue
worker:start -d``.  Its config is the module ``mpqueue_config`` beside
manage.py (or the setting ``MPQUEUE_CONFIG``); before a pool starts, it
checks that the database has every migration."""
from mpqueue_cli import DjangoCommand as Command  # noqa: F401
