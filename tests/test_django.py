"""End to end: the Django example (examples/django_project) with a real pool.

The pool runs as ``python mpqueue_cli.py worker:start --config
examples/django_project/mpqueue_config.py``; its workers run ``django.setup()``
in their ``worker_start_handle``.  This process plays the web side: it
migrates a fresh SQLite database, POSTs to the view through Django's test
client, and waits until the row the job wrote through the ORM is there.
Broker: the test Redis, under a key prefix of the test's own.
"""

import sys
import uuid
from pathlib import Path

import pytest

from pool_harness import ExamplePool, alive, delete_keys, wait_for

django = pytest.importorskip('django')

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / 'examples' / 'django_project'
CONFIG = PROJECT / 'mpqueue_config.py'
POOL_NAME = 'django-notes'          # basics.name in the example's config
QUEUE = 'notes'
JOB_DEADLINE = 30                   # s: pool start-up (django.setup) + one job


@pytest.fixture(scope='module')
def django_site(tmp_path_factory, redis_url, redis_db):
    """Django set up in this process on the example's settings, a fresh SQLite
    database migrated, mpqueue configured by the app; yields the environment
    the pool needs to see the same database and broker."""
    from django.apps import apps
    if apps.ready:
        pytest.skip('Django is already set up in this process with other settings')
    tmp = tmp_path_factory.mktemp('django')
    prefix = 'mpqtest-django-%s' % uuid.uuid4().hex[:10]
    env = {
        'DJANGO_SETTINGS_MODULE': 'mysite.settings',
        'NOTES_DB_PATH': str(tmp / 'notes.sqlite3'),
        'MPQ_RUN_DIR': str(tmp / 'run'),
        'MPQ_REDIS_URL': '%s/%d' % (redis_url, redis_db),
        'MPQ_REDIS_PREFIX': prefix,
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.syspath_prepend(str(PROJECT))
        mp.delitem(sys.modules, 'mpqueue_config', raising=False)

        django.setup()              # NotesConfig.ready() configures mpqueue
        from django.core.management import call_command
        from django.test.utils import setup_test_environment, teardown_test_environment
        call_command('migrate', verbosity=0, interactive=False)
        setup_test_environment()    # lets the test client's host through ALLOWED_HOSTS
        try:
            yield {'tmp': tmp, 'env': env, 'prefix': prefix}
        finally:
            teardown_test_environment()
            from django.db import connections
            connections.close_all()
            delete_keys(env['MPQ_REDIS_URL'], prefix)


def test_view_pushes_job_that_writes_through_the_orm(django_site, proc_reaper):
    import mpqueue
    from django.test import Client
    from notes.models import Note

    pool = ExamplePool(proc_reaper, CONFIG, POOL_NAME, django_site['tmp'], django_site['env']).start()
    proc = pool.proc
    try:
        text = 'note %s' % uuid.uuid4().hex
        response = Client().post('/notes/?text=%s' % text)
        assert response.status_code == 202, response.content
        job_id = response.json()['job_id']
        assert isinstance(job_id, str) and job_id

        def written():
            pool.check_running()
            return Note.objects.filter(text=text).first()

        try:
            note = wait_for(written, JOB_DEADLINE, 'the job to write the note')
        except AssertionError as exc:
            raise AssertionError('%s\n%s' % (exc, pool.diagnostics())) from None
        assert note.created is not None

        # the job ended as a success: counted in 'over', nothing failed
        counts = wait_for(lambda: (lambda s: s if s['over'] >= 1 else None)(
            mpqueue.status(QUEUE)), 5, 'the job to be counted as done')
        assert counts['failed'] == 0, mpqueue.failed_jobs(QUEUE)
        assert Note.objects.count() == 1

        # the view lists it too
        listed = Client().get('/notes/').json()['notes']
        assert [n['text'] for n in listed] == [text]
    finally:
        pool.stop()
        mpqueue.clean(QUEUE)
    assert not alive(proc.pid)


def test_view_rejects_a_post_without_text(django_site):
    from django.test import Client

    response = Client().post('/notes/')
    assert response.status_code == 400
    assert 'error' in response.json()
