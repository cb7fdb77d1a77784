import mpqueue
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .jobs import WriteNote
from .models import Note


# An API endpoint for scripts and curl, hence no CSRF token; put your own
# authentication in front of it in a real project.
@csrf_exempt
@require_http_methods(['GET', 'POST'])
def notes(request):
    """``POST /notes/?text=...`` queues a WriteNote job and answers with its
    id at once; ``GET /notes/`` lists the notes written so far."""
    if request.method == 'GET':
        return JsonResponse({'notes': [
            {'id': n.id, 'text': n.text, 'created': n.created.isoformat()}
            for n in Note.objects.all()]})
    text = request.GET.get('text') or request.POST.get('text')
    if not text:
        return JsonResponse({'error': 'text is required'}, status=400)
    job_id = mpqueue.push('notes', WriteNote(text))
    return JsonResponse({'job_id': job_id}, status=202)


@require_http_methods(['GET'])
def job(request, job_id):
    """``GET /notes/jobs/<id>/``: what became of a job this app pushed, for a
    page (or a script) to poll: its state and, once done, what it returned
    (the new note's id, as the worker's repr of it: nothing is unpickled
    here).  404 for an id the broker does not know."""
    info = mpqueue.job_info('notes', job_id)
    if info is None:
        return JsonResponse({'error': 'no job %s (unknown, or its record expired)' % job_id},
                            status=404)
    return JsonResponse({'id': job_id, 'state': info['state'], 'result': info.get('result_repr'),
                         'errors': info['error_info'][-1:]})
