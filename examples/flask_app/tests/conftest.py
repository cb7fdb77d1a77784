"""Fixtures of the greeter's tests (``pytest`` in examples/flask_app).

Every test runs with ``mpqueue.immediate()``: a push runs its job in the
test's own process before it returns, so the tests need no pool and no
broker, and see what the jobs did at once.
"""
import os
import sys

import pytest

import mpqueue

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv('MPQ_RUN_DIR', str(tmp_path / 'run'))     # would hold the broker
    from greeter import create_app
    app = create_app({'TESTING': True, 'GREETING': 'Hi',
                      'GREETINGS_FILE': str(tmp_path / 'greetings.txt')})
    with mpqueue.immediate():
        yield app


@pytest.fixture
def client(app):
    return app.test_client()
