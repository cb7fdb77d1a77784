from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = 'notes'
    default_auto_field = 'django.db.models.BigAutoField'

    def ready(self):
        # Configure mpqueue once Django is up, so that views (and jobs that
        # push further jobs from a worker) can call mpqueue.push().  Both
        # sides read the same mpqueue_config.py, hence the same broker.
        import mpqueue
        import mpqueue_config

        mpqueue.configure(mpqueue_config.config)
