"""Settings of the example project: one app, SQLite, nothing else.

Environment variables:

- ``NOTES_DB_PATH``: the SQLite database file (default ``db.sqlite3`` beside
  ``manage.py``).  The web side and the workers must see the same value.
- ``NOTES_DB_URL``: ``postgresql://user@host:port/name`` to use PostgreSQL
  instead (needs ``pip install psycopg``); ``DJANGO_CONN_MAX_AGE``: seconds a
  connection is kept, or ``none`` for ever (default 0).
- ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG`` (``1``/``0``), ``DJANGO_ALLOWED_HOSTS``
  (comma-separated).
"""
import os
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get('DJANGO_SECRET_KEY', 'insecure-example-key-change-me')
DEBUG = os.environ.get('DJANGO_DEBUG', '1') == '1'
ALLOWED_HOSTS = [h for h in os.environ.get('DJANGO_ALLOWED_HOSTS', 'localhost,127.0.0.1').split(',')
                 if h]

INSTALLED_APPS = [
    'notes.apps.NotesConfig',
]

MIDDLEWARE = [
    'django.middleware.security.SecurityMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
]

ROOT_URLCONF = 'mysite.urls'
WSGI_APPLICATION = 'mysite.wsgi.application'

DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.sqlite3',
        'NAME': os.environ.get('NOTES_DB_PATH', str(BASE_DIR / 'db.sqlite3')),
        # The web process and the workers write to the same file: wait for
        # the lock instead of failing at once with "database is locked".
        'OPTIONS': {'timeout': 20},
    },
}
if os.environ.get('NOTES_DB_URL'):         # postgresql://user@host:port/name
    _url = urlsplit(os.environ['NOTES_DB_URL'])
    DATABASES['default'] = {
        'ENGINE': 'django.db.backends.postgresql',
        'NAME': _url.path.lstrip('/'), 'USER': _url.username or '',
        'PASSWORD': _url.password or '', 'HOST': _url.hostname or '', 'PORT': _url.port or '',
    }
# seconds a connection is kept between requests (and jobs); 'none': for ever
_max_age = os.environ.get('DJANGO_CONN_MAX_AGE', '0')
DATABASES['default']['CONN_MAX_AGE'] = None if _max_age == 'none' else int(_max_age)

DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'
USE_TZ = True
TIME_ZONE = 'UTC'
