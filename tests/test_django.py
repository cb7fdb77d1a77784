"""End to end: the Django example (examples/django_project) with a real pool.

The pool runs as ``python mpqueue_cli.py worker:start --config
examples/django_project/mpqueue_config.py``; its workers run ``django.setup()``
in their ``worker_start_handle``.  This process plays the web side: it
migrates a fresh SQLite database, POSTs to the view through Django's test
client, and waits until the row the job wrote through the ORM is there.
Broker: the test Redis, under a key prefix of the test's own.

Also: the example's own tests (``manage.py test``, jobs in immediate mode),
the hint in the error of a worker that lacks ``django.setup()``, and the
command line naming a config that sets Django up at its top a circular
import.  PostgreSQL: test_django_postgres.py.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pool_harness import ExamplePool, FrameworkCommand, alive, delete_keys, wait_for

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

        # the second view shows the job: done, and what it returned (the note's id)
        def shown():
            answer = Client().get('/notes/jobs/%s/' % job_id)
            assert answer.status_code == 200, answer.content
            return answer.json() if answer.json()['state'] == 'done' else None
        status = wait_for(shown, 5, 'the job view to say done')
        assert status == {'id': job_id, 'state': 'done', 'result': str(note.id), 'errors': []}
        assert Client().get('/notes/jobs/nosuchjob/').status_code == 404

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


def test_manage_py_mpqueue_starts_shows_and_stops_a_pool(django_site, proc_reaper):
    """``python manage.py mpqueue ...``: the project's one-line command
    (``from mpqueue_cli import DjangoCommand as Command``) runs mpqueue's
    commands with Django set up, on the module mpqueue_config beside
    manage.py, from any directory."""
    import mpqueue
    from django.test import Client
    from notes.models import Note

    manage = FrameworkCommand(proc_reaper, [sys.executable, str(PROJECT / 'manage.py'), 'mpqueue'],
                              django_site['tmp'], _clean_env(**django_site['env']),
                              Path(django_site['env']['MPQ_RUN_DIR']) / (POOL_NAME + '.pid'))
    pid = manage.start()
    try:
        res = manage.run('worker:status', '--json')
        assert res.returncode == 0, res
        rows = json.loads(res.stdout)
        assert {r['type'] for r in rows} == {'manage', 'master', 'worker'}
        assert [r['pid'] for r in rows if r['type'] == 'manage'] == [pid]
        assert len([r for r in rows if r['type'] == 'worker']) == 2

        text = 'note %s' % uuid.uuid4().hex
        job_id = Client().post('/notes/?text=%s' % text).json()['job_id']
        assert mpqueue.result(QUEUE, job_id, timeout=JOB_DEADLINE) == \
            wait_for(lambda: Note.objects.filter(text=text).first(), 5, 'the note').id
        res = manage.run('job:status', '--queue', QUEUE, '--id', job_id, '--json')
        assert res.returncode == 0 and json.loads(res.stdout)['state'] == 'done', res

        res = manage.run('nosuchcommand')
        assert res.returncode == 2 and 'manage.py mpqueue list' in res.stderr, res
        assert 'already running on pid %d' % pid in manage.run('worker:start', '-d').stderr
        res = manage.stop(pid)
        assert 'stopping pool' in res.stdout, res
        res = manage.run('worker:status')
        assert res.returncode == 1 and 'not running' in res.stderr, res
    finally:
        manage.run('worker:stop')
        mpqueue.clean(QUEUE)
        Note.objects.all().delete()


def _clean_env(**extra):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(('MPQ', 'NOTES_', 'DJANGO_'))}
    env['PYTHONPATH'] = str(REPO)
    env.update(extra)
    return env


def test_the_examples_own_tests_run_the_jobs_in_immediate_mode(tmp_path):
    """``python manage.py test`` in the example: its TestCases push through
    the view inside ``mpqueue.immediate()`` and find the notes the jobs
    wrote, with no pool and no broker (no SQLite broker file appears)."""
    run_dir = tmp_path / 'run'
    res = subprocess.run([sys.executable, 'manage.py', 'test', '--verbosity', '2'],
                         cwd=str(PROJECT), env=_clean_env(MPQ_RUN_DIR=str(run_dir)),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'test_a_post_writes_the_note_through_its_job' in res.stderr
    assert 'Ran 3 tests' in res.stderr and '\nOK' in res.stderr, res.stderr
    assert not run_dir.exists()


NO_SETUP_CONFIG = """\
import runpy
import sys

sys.path.insert(0, %(project)r)         # the workers import notes.jobs
config = runpy.run_path(%(config)r)['config']
config['basics']['worker_start_handle'] = None      # the mistake: no django.setup()
"""


def test_a_worker_without_django_setup_says_to_call_it(django_site, proc_reaper):
    import mpqueue
    from notes.jobs import WriteNote

    config = django_site['tmp'] / 'no_setup_config.py'
    config.write_text(NO_SETUP_CONFIG % {'project': str(PROJECT), 'config': str(CONFIG)})
    pool = ExamplePool(proc_reaper, config, POOL_NAME, django_site['tmp'],
                       django_site['env']).start()
    try:
        job_id = mpqueue.push(QUEUE, WriteNote('never written'))
        error = pool.failed_error(QUEUE, job_id, JOB_DEADLINE)
        assert 'AppRegistryNotReady' in error
        assert error.splitlines()[-1] == (
            'hint: AppRegistryNotReady: Django is not set up in this worker; set '
            'basics.worker_start_handle to a function that sets DJANGO_SETTINGS_MODULE and '
            'calls django.setup()')
        with pytest.raises(mpqueue.JobFailed, match='hint: AppRegistryNotReady'):
            mpqueue.result(QUEUE, job_id, timeout=0)
        assert 'hint: AppRegistryNotReady' in pool.diagnostics()        # and in the log
    finally:
        pool.stop()
        mpqueue.clean(QUEUE)
    assert not alive(pool.proc.pid)


@pytest.mark.parametrize('spec', [None, 'mpqueue_config:config', 'FILE'])
def test_django_setup_at_the_top_of_the_config_is_named_a_circular_import(tmp_path, spec):
    """django.setup() at the top of mpqueue_config.py runs NotesConfig.ready(),
    which imports mpqueue_config before it defines ``config``."""
    project = tmp_path / 'project'
    shutil.copytree(str(PROJECT), str(project),
                    ignore=shutil.ignore_patterns('__pycache__', '*.sqlite3'))
    config = project / 'mpqueue_config.py'
    line = "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
    source = config.read_text()
    assert line in source
    config.write_text(source.replace(line, line + 'import django\ndjango.setup()\n'))
    args = [sys.executable, '-m', 'mpqueue_cli', 'queue:status']
    if spec:
        args += ['--config', str(config) if spec == 'FILE' else spec]
    res = subprocess.run(args, cwd=str(project), env=_clean_env(MPQ_RUN_DIR=str(tmp_path / 'run')),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res
    assert res.stdout == '' and len(res.stderr.splitlines()) == 1, res.stderr
    assert 'circular import' in res.stderr
    assert 'call django.setup() in basics.worker_start_handle instead' in res.stderr


def rename(note):
    """A job that changes the model instance it was given."""
    note.text = 'renamed by the job'
    return note.text


def test_a_pushed_instance_or_queryset_is_a_snapshot(django_site):
    """The README's checklist: a model instance travels as a copy, and a
    QuerySet is fetched when it is pushed (pickling evaluates it)."""
    import mpqueue
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from notes.models import Note

    note = Note.objects.create(text='original')
    job_id = None
    try:
        with mpqueue.immediate():
            renamed = mpqueue.push(QUEUE, rename, args=(note,), result_ttl=60)
        assert mpqueue.result(QUEUE, renamed) == 'renamed by the job'
        assert note.text == 'original' and Note.objects.get(id=note.id).text == 'original'

        with CaptureQueriesContext(connection) as queries:
            job_id = mpqueue.push(QUEUE, len, args=(Note.objects.all(),), delay=3600)
        selects = [q['sql'] for q in queries.captured_queries if 'notes_note' in q['sql']]
        assert len(selects) == 1 and selects[0].startswith('SELECT'), queries.captured_queries
    finally:
        if job_id:
            mpqueue.cancel(QUEUE, job_id)
        mpqueue.clean(QUEUE)
        Note.objects.all().delete()
