"""The greeter's routes, with their jobs run in immediate mode (conftest.py)."""
from pathlib import Path

import mpqueue


def test_greet_runs_its_job_in_the_apps_context(app, client):
    response = client.post('/greet', query_string={'name': 'Ada'})
    assert response.status_code == 202
    job_id = response.get_json()['job_id']
    # the job ran before push() returned, with this app's config
    assert Path(app.config['GREETINGS_FILE']).read_text() == 'Hi, Ada!\n'
    assert mpqueue.job_info('greetings', job_id) is None     # done; nothing kept (result_ttl 0)
    assert not Path(app.config['GREETINGS_FILE']).parent.joinpath('run').exists()   # no broker


def test_greet_needs_a_name(client):
    response = client.post('/greet')
    assert response.status_code == 400
    assert response.get_json() == {'error': 'name is required'}
