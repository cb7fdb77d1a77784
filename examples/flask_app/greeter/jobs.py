"""Jobs of the greeter app, and the app each worker keeps for them."""
import os

from flask import current_app, has_app_context

import mpqueue

#: The worker's app, built once per worker by ``init_worker`` (its
#: ``worker_start_handle``), not once per job.
app = None


def init_worker():
    global app
    from . import create_app
    app = create_app()


def _app():
    """The app a job runs in: the one of the code that runs it, if any (a
    request whose push ran the job in immediate mode, in a test), else this
    worker's own."""
    if has_app_context():
        return current_app._get_current_object()
    if app is None:        # run outside a pool without an app (handle() called directly)
        init_worker()
    return app


@mpqueue.job('greetings', timeout=30)
def greet(name):
    """Greets someone with the app's ``GREETING`` and appends the line to the
    app's ``GREETINGS_FILE``.  ``greet.push(name)`` queues it; only the name
    travels with the job."""
    # Inside an app context, as in a request: current_app, extensions
    # (a database session, say) and app.config work as in a view.
    with _app().app_context():
        line = '%s, %s!' % (current_app.config['GREETING'], name)
        path = current_app.config['GREETINGS_FILE']
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'a', encoding='utf-8') as f:
            f.write(line + '\n')
