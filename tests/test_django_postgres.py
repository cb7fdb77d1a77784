"""The Django example (examples/django_project) on PostgreSQL, with real
processes: a PostgreSQL server of the tests' own (``pg_server.py``), a
database per test, ``CONN_MAX_AGE = None`` (connections kept for ever).

The pool is started as a project would start it from a management command:
``python manage.py mpqueue worker:start`` checks the migrations (queries the
database) and then calls ``mpqueue_cli.main(config=...)``, so the process
that forks the pool holds an open connection.  Every job must still run on
its first attempt: each worker opens a connection of its own.
"""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pool_harness import wait_for
from pg_server import PostgresServer

pytest.importorskip('django')
pytest.importorskip('psycopg')

import mpqueue  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / 'examples' / 'django_project'
POOL_NAME = 'django-notes'          # basics.name in the example's config
QUEUE = 'notes'
JOBS = 20
JOB_DEADLINE = 60                   # s: pool start-up (django.setup) + the jobs
STOP_WAIT = 30


@pytest.fixture(scope='module')
def postgres():
    server = PostgresServer()
    if not server.available:
        pytest.skip('the PostgreSQL server programs (initdb, postgres) are not installed')
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def project(postgres, tmp_path):
    """The environment of the example project on a new database of its own,
    and ``manage(*args)`` that runs ``python manage.py ARGS`` in it."""
    name = 'notes_%s' % uuid.uuid4().hex[:10]
    postgres.create_database(name)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(('MPQ', 'NOTES_', 'DJANGO_'))}
    env.update({
        'NOTES_DB_URL': 'postgresql://%s@%s:%d/%s' % (postgres.user, postgres.host,
                                                      postgres.port, name),
        'DJANGO_CONN_MAX_AGE': 'none',
        'MPQ_RUN_DIR': str(tmp_path / 'run'),
        'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')])),
        'PYTHONUNBUFFERED': '1',
    })

    def manage(*args, timeout=120):
        res = subprocess.run([sys.executable, 'manage.py'] + list(args), cwd=str(PROJECT),
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=timeout)
        assert res.returncode == 0, 'manage.py %s: exit %s\n%s\n%s' % (
            ' '.join(args), res.returncode, res.stdout, res.stderr)
        return res.stdout, res.stderr

    yield {'env': env, 'manage': manage, 'db': name, 'tmp': tmp_path}


def test_workers_started_after_a_query_open_connections_of_their_own(project, postgres,
                                                                      proc_reaper):
    manage, tmp = project['manage'], project['tmp']
    manage('migrate', '--verbosity', '0')
    out_path = tmp / 'pool.out'
    with open(out_path, 'ab') as out:
        pool = proc_reaper.popen([sys.executable, 'manage.py', 'mpqueue', 'worker:start'],
                                 cwd=str(PROJECT), env=project['env'], stdout=out,
                                 stderr=subprocess.STDOUT)
    driver = mpqueue.SqliteDriver(str(tmp / 'run' / (POOL_NAME + '.db')))

    def output():
        log = tmp / 'run' / (POOL_NAME + '.log')
        return '\n'.join('--- %s ---\n%s' % (p, p.read_text(errors='replace')[-4000:])
                         for p in (out_path, log) if p.exists())

    try:
        ids = json.loads(manage('shell', '-c', (
            'import json, mpqueue; from notes.jobs import WriteNote; '
            'print(json.dumps(mpqueue.push_many("notes", '
            '[WriteNote("note %%d" %% i) for i in range(%d)])))' % JOBS))[0].splitlines()[-1])
        assert len(ids) == JOBS

        def ended():
            assert pool.poll() is None, 'the pool exited with %s\n%s' % (pool.returncode,
                                                                          output())
            depth = driver.run(QUEUE, 'depth')
            return depth['done'] + depth['failed_total'] >= JOBS and depth

        depth = wait_for(ended, JOB_DEADLINE, lambda: 'the %d jobs to end\n%s' % (JOBS, output()))
        records = [driver.run(QUEUE, 'info', job_id, '') for job_id in ids]
        first_try = [r for r in records if r['state'] == 'done' and r['exec_number'] == 1
                     and not r['error_info']]
        assert len(first_try) == JOBS, 'jobs that did not succeed at once:\n%s' % '\n'.join(
            '%s after %s attempts: %s' % (r['state'], r['exec_number'], r['error_info'])
            for r in records if r not in first_try)
        assert depth['failed_total'] == 0

        with postgres.connect(project['db']) as conn:
            rows = conn.execute('SELECT text FROM notes_note').fetchall()
        assert sorted(text for text, in rows) == sorted('note %d' % i for i in range(JOBS))
    finally:
        if pool.poll() is None:
            pool.send_signal(signal.SIGTERM)
            try:
                pool.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                pass
        driver.close()
    assert pool.returncode == 0, output()


def test_the_examples_own_tests_pass_on_postgres(project):
    """``manage.py test``: the jobs run in immediate mode inside each
    TestCase's transaction, which the job's connection handling leaves
    alone."""
    _, err = project['manage']('test', 'notes', '--verbosity', '2')
    assert 'test_a_post_writes_the_note_through_its_job' in err and '\nOK' in err, err
    assert not (project['tmp'] / 'run').exists()      # no broker was touched
