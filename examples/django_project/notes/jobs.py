"""Jobs of the notes app.  Workers import this module when they unpickle a
job, after ``django.setup()`` ran in their ``worker_start_handle``."""
from django.db import close_old_connections, connection

import mpqueue

from .models import Note


def _drop_old_connections():
    """What Django does around each request, for a job: drop connections that
    broke or outlived CONN_MAX_AGE, since a worker lives for many jobs as a
    web process lives for many requests.  Not inside a transaction (a test's,
    when the job runs in immediate mode), which closing would end."""
    if not connection.in_atomic_block:
        close_old_connections()


class WriteNote(mpqueue.Job):
    """Writes one ``Note`` through the ORM; returns its id."""

    timeout = 30
    fail_number = 2
    fail_expire = 1
    result_ttl = 3600       # mpqueue.result() can read the id for an hour

    def __init__(self, text):
        self.text = text    # the text, not a Note: a model instance would travel as a snapshot

    def handle(self):
        if not self.text.strip():
            raise mpqueue.Fail('a note needs some text')     # no retry: it would fail again
        _drop_old_connections()
        try:
            return Note.objects.create(text=self.text).id
        finally:
            _drop_old_connections()
