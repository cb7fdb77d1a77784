"""Jobs of the notes app.  Workers import this module when they unpickle a
job, after ``django.setup()`` ran in their ``worker_start_handle``."""
from django.db import close_old_connections

import mpqueue

from .models import Note


class WriteNote(mpqueue.Job):
    """Writes one ``Note`` through the ORM."""

    timeout = 30
    fail_number = 2
    fail_expire = 1

    def __init__(self, text):
        self.text = text

    def handle(self):
        # A worker lives for many jobs, as a web process lives for many
        # requests: drop connections that broke or outlived CONN_MAX_AGE
        # before the job, and after it, as Django does around each request.
        close_old_connections()
        try:
            Note.objects.create(text=self.text)
        finally:
            close_old_connections()
