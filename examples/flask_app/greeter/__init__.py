"""A minimal Flask app that hands work to mpqueue.

``create_app()`` is the usual app factory.  Settings come from defaults, then
``FLASK_*`` environment variables (``FLASK_GREETING=Bonjour``), then the
``config`` dict given to the factory.  The workers build their own app with
the same factory (see ``mpqueue_config.py``), so they see the same settings.
"""
import os
import tempfile

from flask import Flask, jsonify, request

import mpqueue


def create_app(config=None):
    app = Flask(__name__)
    app.config.from_mapping(
        GREETING='Hello',
        # where the greet job appends the greetings it made
        GREETINGS_FILE=os.path.join(tempfile.gettempdir(), 'mpqueue-flask', 'greetings.txt'),
    )
    app.config.from_prefixed_env()          # FLASK_GREETING, FLASK_GREETINGS_FILE ...
    if config:
        app.config.update(config)

    # The pushing side and the pool read one config file: one broker.
    import mpqueue_config
    mpqueue.configure(mpqueue_config.config)
    # flask --app greeter mpqueue worker:start -d (and every other command)
    from mpqueue_cli import flask_group
    app.cli.add_command(flask_group)

    from .jobs import greet as greet_job

    @app.post('/greet')
    def greet():
        name = request.args.get('name') or request.form.get('name')
        if not name:
            return jsonify(error='name is required'), 400
        # Only the name travels with the job: the greeting comes from the
        # worker's own app config.
        job_id = greet_job.push(name)       # a mpqueue.JobId: the id, a str
        return jsonify(job_id=job_id), 202

    return app
