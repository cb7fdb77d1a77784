"""End to end: the Flask example (examples/flask_app) with a real pool.

The pool runs as ``python mpqueue_cli.py worker:start --config
examples/flask_app/mpqueue_config.py``; each worker builds the app once in
its ``worker_start_handle`` and runs jobs inside ``app.app_context()``.  This
process builds the app with the same factory and environment, POSTs through
``app.test_client()``, and waits until the greeting the job recorded carries
the app's configured GREETING, which only the job's app config can supply
(the job itself carries just the name).  Broker: the test Redis, under a key
prefix of the test's own.
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

flask = pytest.importorskip('flask')

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / 'mpqueue_cli.py'
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
        client = redis.Redis.from_url(env['MPQ_REDIS_URL'])
        try:
            for key in client.scan_iter(match=prefix + '*', count=1000):
                client.delete(key)
        finally:
            client.close()


def _start_pool(proc_reaper, site):
    env = dict(os.environ)       # already holds site['env'] (monkeypatch)
    env.pop('MPQUEUE_CONFIG', None)
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


def test_route_pushes_job_that_runs_in_the_app_context(site, proc_reaper):
    import mpqueue

    app = site['app']
    greeting = app.config['GREETING']
    assert greeting == site['env']['FLASK_GREETING']      # the app took it from FLASK_*
    greetings_file = Path(app.config['GREETINGS_FILE'])

    proc, out_path = _start_pool(proc_reaper, site)
    try:
        name = 'Ada %s' % uuid.uuid4().hex[:6]
        response = app.test_client().post('/greet', query_string={'name': name})
        assert response.status_code == 202, response.data
        job_id = response.get_json()['job_id']
        assert isinstance(job_id, str) and job_id

        def recorded():
            if proc.poll() is not None:
                raise AssertionError('the pool exited with %s\n%s' % (
                    proc.returncode, _diagnostics(site, out_path)))
            try:
                return greetings_file.read_text(encoding='utf-8').splitlines()
            except FileNotFoundError:
                return None

        try:
            lines = wait_for(recorded, JOB_DEADLINE, 'the job to record its greeting')
        except AssertionError as exc:
            raise AssertionError('%s\n%s' % (exc, _diagnostics(site, out_path))) from None
        assert lines == ['%s, %s!' % (greeting, name)]
        recorded_greeting = lines[0].rsplit(', ', 1)[0]
        assert recorded_greeting == app.config['GREETING']

        counts = wait_for(lambda: (lambda s: s if s['over'] >= 1 else None)(
            mpqueue.status(QUEUE)), 5, 'the job to be counted as done')
        assert counts['failed'] == 0, mpqueue.failed_jobs(QUEUE)
    finally:
        _stop_pool(proc, proc_reaper)
        mpqueue.clean(QUEUE)
    assert not alive(proc.pid)


def test_route_rejects_a_post_without_name(site):
    response = site['app'].test_client().post('/greet')
    assert response.status_code == 400
    assert 'error' in response.get_json()
