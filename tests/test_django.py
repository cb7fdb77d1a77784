"""End to end: the Django example (examples/django_project) with a real pool.

The pool runs as ``python mpqueue_cli.py worker:start --config
examples/django_project/mpqueue_config.py``; its workers run ``django.setup()``
in their ``worker_start_handle``.  This process plays the web side: it
migrates a fresh SQLite database, POSTs to the view through Django's test
client, and waits until the row the job wrote through the ORM is there.
Broker: the test Redis, under a key prefix of the test's own.
"""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import redis

from pool_harness import alive, wait_for

django = pytest.importorskip('django')

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / 'mpqueue_cli.py'
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
            _delete_keys(env['MPQ_REDIS_URL'], prefix)


def _delete_keys(url, prefix):
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=prefix + '*', count=1000):
            client.delete(key)
    finally:
        client.close()


def _start_pool(proc_reaper, site):
    env = dict(os.environ)
    env.pop('MPQUEUE_CONFIG', None)
    env.update(site['env'])
    env['PYTHONUNBUFFERED'] = '1'
    out_path = site['tmp'] / 'pool.out'
    with open(out_path, 'ab') as out:
        proc = proc_reaper.popen(
            [sys.executable, str(CLI), 'worker:start', '--config', str(CONFIG)],
            cwd=str(REPO), env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, out_path


def _diagnostics(site, out_path):
    log = Path(site['env']['MPQ_RUN_DIR']) / (POOL_NAME + '.log')
    parts = []
    for label, path in (('output', out_path), ('log', log)):
        try:
            text = path.read_text(errors='replace')
        except OSError:
            text = '(none)'
        parts.append('--- pool %s (%s) ---\n%s' % (label, path, text[-4000:]))
    return '\n'.join(parts)


def _stop_pool(proc, proc_reaper):
    """SIGTERM the manage process (graceful stop) and wait for it; the
    reaper SIGKILLs anything left at teardown."""
    if proc.poll() is not None:
        return
    try:
        proc_reaper.add(psutil.Process(proc.pid))     # remember its masters and workers
    except psutil.NoSuchProcess:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass


def test_view_pushes_job_that_writes_through_the_orm(django_site, proc_reaper):
    import mpqueue
    from django.test import Client
    from notes.models import Note

    proc, out_path = _start_pool(proc_reaper, django_site)
    try:
        text = 'note %s' % uuid.uuid4().hex
        response = Client().post('/notes/?text=%s' % text)
        assert response.status_code == 202, response.content
        job_id = response.json()['job_id']
        assert isinstance(job_id, str) and job_id

        def written():
            if proc.poll() is not None:
                raise AssertionError('the pool exited with %s\n%s' % (
                    proc.returncode, _diagnostics(django_site, out_path)))
            return Note.objects.filter(text=text).first()

        try:
            note = wait_for(written, JOB_DEADLINE, 'the job to write the note')
        except AssertionError as exc:
            raise AssertionError('%s\n%s' % (exc, _diagnostics(django_site, out_path))) from None
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
        _stop_pool(proc, proc_reaper)
        mpqueue.clean(QUEUE)
    assert not alive(proc.pid)


def test_view_rejects_a_post_without_text(django_site):
    from django.test import Client

    response = Client().post('/notes/')
    assert response.status_code == 400
    assert 'error' in response.json()
