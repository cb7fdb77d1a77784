"""End to end: the Flask example (examples/flask_app) with a real pool.

The pool runs as ``python mpqueue_cli.py worker:start --config
examples/flask_app/mpqueue_config.py``; each worker builds the app once in
its ``worker_start_handle`` and runs jobs inside ``app.app_context()``.  This
process builds the app with the same factory and environment, POSTs through
``app.test_client()``, and waits until the greeting the job recorded carries
the app's configured GREETING, which only the job's app config can supply
(the job itself carries just the name).  Broker: the test Redis, under a key
prefix of the test's own.

Also: the example's own tests (``pytest`` in examples/flask_app, jobs in
immediate mode) and the hint in the error of a job that uses Flask outside
an app context.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pool_harness import ExamplePool, FrameworkCommand, alive, delete_keys, wait_for

flask = pytest.importorskip('flask')

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / 'examples' / 'flask_app'
CONFIG = APP_DIR / 'mpqueue_config.py'
POOL_NAME = 'flask-greeter'         # basics.name in the example's config
QUEUE = 'greetings'
JOB_DEADLINE = 30                   # s: pool start-up + one job


@pytest.fixture
def site(tmp_path, redis_url, redis_db, monkeypatch):
    """The environment shared by this process and the pool: a unique
    greeting, a greetings file and a run dir under tmp_path, the test Redis
    under a unique prefix.  Yields it with the app built from it."""
    prefix = 'mpqtest-flask-%s' % uuid.uuid4().hex[:10]
    env = {
        'FLASK_GREETING': 'Bonjour %s' % uuid.uuid4().hex[:8],
        'FLASK_GREETINGS_FILE': str(tmp_path / 'greetings.txt'),
        'MPQ_RUN_DIR': str(tmp_path / 'run'),
        'MPQ_REDIS_URL': '%s/%d' % (redis_url, redis_db),
        'MPQ_REDIS_PREFIX': prefix,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(APP_DIR))
    for name in ('mpqueue_config', 'greeter', 'greeter.jobs'):
        monkeypatch.delitem(sys.modules, name, raising=False)

    from greeter import create_app
    app = create_app({'TESTING': True})     # configures mpqueue from mpqueue_config.py
    try:
        yield {'tmp': tmp_path, 'env': env, 'app': app}
    finally:
        delete_keys(env['MPQ_REDIS_URL'], prefix)


def test_route_pushes_job_that_runs_in_the_app_context(site, proc_reaper):
    import mpqueue

    app = site['app']
    greeting = app.config['GREETING']
    assert greeting == site['env']['FLASK_GREETING']      # the app took it from FLASK_*
    greetings_file = Path(app.config['GREETINGS_FILE'])

    pool = ExamplePool(proc_reaper, CONFIG, POOL_NAME, site['tmp'], site['env']).start()
    proc = pool.proc
    try:
        name = 'Ada %s' % uuid.uuid4().hex[:6]
        response = app.test_client().post('/greet', query_string={'name': name})
        assert response.status_code == 202, response.data
        job_id = response.get_json()['job_id']
        assert isinstance(job_id, str) and job_id

        def recorded():
            pool.check_running()
            try:
                return greetings_file.read_text(encoding='utf-8').splitlines()
            except FileNotFoundError:
                return None

        try:
            lines = wait_for(recorded, JOB_DEADLINE, 'the job to record its greeting')
        except AssertionError as exc:
            raise AssertionError('%s\n%s' % (exc, pool.diagnostics())) from None
        assert lines == ['%s, %s!' % (greeting, name)]
        recorded_greeting = lines[0].rsplit(', ', 1)[0]
        assert recorded_greeting == app.config['GREETING']

        counts = wait_for(lambda: (lambda s: s if s['over'] >= 1 else None)(
            mpqueue.status(QUEUE)), 5, 'the job to be counted as done')
        assert counts['failed'] == 0, mpqueue.failed_jobs(QUEUE)
    finally:
        pool.stop()
        mpqueue.clean(QUEUE)
    assert not alive(proc.pid)


def test_flask_mpqueue_starts_shows_and_stops_a_pool(site, proc_reaper):
    """``flask --app greeter mpqueue ...``: the app adds mpqueue_cli's click
    group to ``app.cli``; its commands run with the app built (and so
    mpqueue configured by create_app), on the module mpqueue_config."""
    import mpqueue

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(('MPQ', 'FLASK_'))}
    env.update(site['env'], PYTHONPATH=str(REPO))
    flask_cli = FrameworkCommand(
        proc_reaper, [sys.executable, '-m', 'flask', '--app', 'greeter', 'mpqueue'], APP_DIR,
        env, Path(site['env']['MPQ_RUN_DIR']) / (POOL_NAME + '.pid'))
    res = flask_cli.run('--help')
    assert res.returncode == 0 and 'worker:start' in res.stdout and 'queue:jobs' in res.stdout
    pid = flask_cli.start()
    try:
        res = flask_cli.run('worker:status', '--json')
        assert res.returncode == 0, res
        rows = json.loads(res.stdout)
        assert [r['pid'] for r in rows if r['type'] == 'manage'] == [pid]
        assert len([r for r in rows if r['type'] == 'worker']) == 2

        name = 'Grace %s' % uuid.uuid4().hex[:6]
        job_id = site['app'].test_client().post('/greet', query_string={'name': name}).get_json()[
            'job_id']
        greetings = Path(site['app'].config['GREETINGS_FILE'])
        wait_for(lambda: greetings.exists() and name in greetings.read_text(), JOB_DEADLINE,
                 'the job to greet')
        res = flask_cli.run('queue:status', '--queue', QUEUE, '--json')
        assert res.returncode == 0 and json.loads(res.stdout)[QUEUE]['over'] == 1, res
        res = flask_cli.run('job:cancel', '--queue', QUEUE, '--id', job_id)
        assert res.returncode == 1 and 'unknown' in res.stderr, res    # done, not kept
        res = flask_cli.run('queue:status', '--bogus')
        assert res.returncode == 2 and 'flask mpqueue -h' in res.stderr, res
        res = flask_cli.stop(pid)
        assert 'stopping pool' in res.stdout, res
    finally:
        flask_cli.run('worker:stop')
        mpqueue.clean(QUEUE)


def test_route_rejects_a_post_without_name(site):
    response = site['app'].test_client().post('/greet')
    assert response.status_code == 400
    assert 'error' in response.get_json()


def test_the_examples_own_tests_run_the_jobs_in_immediate_mode(tmp_path):
    """``pytest`` in examples/flask_app, as its developers run it: the
    fixture pushes inside ``mpqueue.immediate()``, so the greeting is in
    the file when the route returns, with no pool and no broker."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(('MPQ', 'FLASK_', 'PYTEST_'))}
    env['PYTHONPATH'] = str(REPO)
    res = subprocess.run([sys.executable, '-m', 'pytest', '-v', '-p', 'no:cacheprovider'],
                         cwd=str(APP_DIR), env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'test_greet_runs_its_job_in_the_apps_context PASSED' in res.stdout, res.stdout
    assert '2 passed' in res.stdout


def failed_error(site, proc_reaper, job):
    """The error of ``job`` run once by the example's pool."""
    import mpqueue
    pool = ExamplePool(proc_reaper, CONFIG, POOL_NAME, site['tmp'], site['env']).start()
    try:
        return pool.failed_error(QUEUE, mpqueue.push(QUEUE, job, fail_number=0), JOB_DEADLINE)
    finally:
        pool.stop()
        mpqueue.clean(QUEUE)
        assert not alive(pool.proc.pid)


def test_a_job_whose_app_was_never_built_says_what_to_do(site, proc_reaper):
    def greet():            # the README's job_app() where no start hook built the app
        from flask import current_app, has_app_context
        app = None
        job_app = current_app._get_current_object() if has_app_context() else app
        with job_app.app_context():
            return current_app.config['GREETING']

    error = failed_error(site, proc_reaper, greet)
    assert "'NoneType' object has no attribute 'app_context'" in error
    assert error.splitlines()[-1].startswith('hint: ') and \
        'basics.worker_start_handle' in error.splitlines()[-1], error


def test_a_job_outside_an_app_context_says_what_to_do(site, proc_reaper):
    def greeting():         # the mistake: current_app with no app context around it
        from flask import current_app
        return current_app.config['GREETING']

    error = failed_error(site, proc_reaper, greeting)
    assert 'Working outside of application context' in error
    assert error.splitlines()[-1] == (
        'hint: the job uses Flask outside an app context; build the app once per worker '
        'in basics.worker_start_handle and run the job\'s code inside '
        '"with app.app_context():"')
