"""``python manage.py mpqueue COMMAND [options]``: the mpqueue command line on
this project's config, e.g. ``python manage.py mpqueue worker:start -d``.

Before a pool starts, it checks that the database has every migration: the
workers would fail on tables that do not exist yet.  That is a query, so the
process that forks the pool has an open database connection; mpqueue's
workers drop such inherited connections and open their own.
"""
import argparse
import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor


class Command(BaseCommand):
    help = "Runs an mpqueue command on this project's mpqueue_config.py."

    def add_arguments(self, parser):
        parser.add_argument('args', nargs=argparse.REMAINDER,
                            help='an mpqueue command and its options, e.g. worker:start -d')

    def handle(self, *args, **options):
        import mpqueue_cli
        import mpqueue_config

        if args and args[0] in ('worker:start', 'worker:restart'):
            executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
            if executor.migration_plan(executor.loader.graph.leaf_nodes()):
                raise CommandError('the database has unapplied migrations: run '
                                   '"python manage.py migrate" first')
        code = mpqueue_cli.main(list(args), config=mpqueue_config.config)
        if code:
            sys.exit(code)
