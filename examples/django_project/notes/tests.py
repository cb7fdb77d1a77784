"""Tests of the notes app: ``python manage.py test``.

The jobs run in immediate mode (``with mpqueue.immediate():``): a push runs
the job in the test's own process before it returns, on the test database
and inside the test's transaction, so no pool and no broker are needed.
"""
import mpqueue
from django.test import TestCase

from .jobs import WriteNote
from .models import Note


class NotesTests(TestCase):

    def test_a_post_writes_the_note_through_its_job(self):
        with mpqueue.immediate():
            response = self.client.post('/notes/?text=hello')
        self.assertEqual(response.status_code, 202)
        self.assertEqual([n.text for n in Note.objects.all()], ['hello'])
        job_id = response.json()['job_id']
        self.assertEqual(mpqueue.result('notes', job_id), Note.objects.get().id)
        self.assertEqual(mpqueue.job_info('notes', job_id)['state'], 'done')

    def test_a_note_without_text_fails_its_job(self):
        with mpqueue.immediate():
            job_id = mpqueue.push('notes', WriteNote('   '))
        with self.assertRaises(mpqueue.JobFailed) as failed:
            mpqueue.result('notes', job_id)
        self.assertEqual(failed.exception.job_info['exec_number'], 1)     # Fail: no retry
        self.assertIn('a note needs some text', failed.exception.job_info['error_info'][-1])
        self.assertFalse(Note.objects.exists())

    def test_the_list_shows_the_notes(self):
        Note.objects.create(text='first')
        self.assertEqual([n['text'] for n in self.client.get('/notes/').json()['notes']],
                         ['first'])
