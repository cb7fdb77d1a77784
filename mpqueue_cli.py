"""The mpqueue command line: ``mpqueue COMMAND [--config PATH] [options]``.

Also ``python -m mpqueue_cli COMMAND`` (wherever mpqueue is installed) and
``python mpqueue_cli.py COMMAND`` (beside a vendored copy).  The config comes
from ``--config`` (a ``.py`` file that defines ``config``, ``FILE.py:NAME``,
or ``module:attr``), else ``$MPQUEUE_CONFIG``, else ``./mpqueue_config.py``.
A script of your own can also call ``mpqueue_cli.main(config=config)``.

The commands are the table ``COMMANDS`` near the end of this file.  They use
only mpqueue's public functions; a mistake the user can fix is one line on
stderr and a non-zero exit code (``--verbose`` shows the traceback).

The file, top to bottom: loading the config; tables and times; the worker,
queue, job and schedule commands; the one HTTP server that ``metrics
--serve`` and ``web`` both run, each with its own routes; the metrics; the
dashboard's code (the banner "The dashboard: `mpqueue web`"); the table of
commands and ``main``; and last the dashboard's page, its HTML, CSS and
JavaScript (the banner "The dashboard's page").
"""

import argparse
import concurrent.futures
import hashlib
import hmac
import html
import http.server
import importlib
import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import queue as queue_module
import re
import runpy
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse

import mpqueue

#: Exit code of a usage mistake (unknown command, wrong option), as argparse's.
EXIT_USAGE = 2
#: Exit code when stdout is closed early (``mpqueue ... | head -1``): what a
#: shell reports for a tool killed by SIGPIPE (128 + 13).
EXIT_PIPE = 141
#: How long worker:stop and worker:restart wait for the pool's status before
#: stopping it anyway (seconds): the status only says how many jobs it waits for.
STOP_STATUS_WAIT = 2.0
#: How long the pool has, beyond its stop_grace, to be gone after SIGTERM (seconds).
STOP_EXTRA_WAIT = 15


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 1."""

    code = 1


class UsageError(UserError):
    """The command line itself is wrong: exit code 2."""

    code = EXIT_USAGE


def _program():
    """The command as the user typed it: ``mpqueue``, ``python -m mpqueue_cli``
    or ``python path/to/mpqueue_cli.py`` (or a script of their own)."""
    spec = getattr(sys.modules.get('__main__'), '__spec__', None)
    if spec is not None and spec.name == 'mpqueue_cli':
        return 'python -m mpqueue_cli'
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ''
    if not argv0 or argv0.startswith('-'):      # python -c, an embedding program
        return 'mpqueue'
    if argv0.endswith('.py'):
        return 'python ' + argv0
    return os.path.basename(argv0)


# -- loading the config --------------------------------------------------------

CONFIG_FORMS = 'FILE.py, FILE.py:NAME, module or module:NAME'


def _load_config(spec, where='from --config'):
    """Find and load the config: --config, $MPQUEUE_CONFIG, ./mpqueue_config.py.
    Returns the config, where it came from, and the file that defines it."""
    if not spec:
        spec, where = os.environ.get('MPQUEUE_CONFIG'), 'from $MPQUEUE_CONFIG'
    if not spec:
        spec, where = 'mpqueue_config.py', 'in the current directory'
        if not os.path.exists(spec):
            raise UserError('no config: pass --config FILE.py (or %s), set $MPQUEUE_CONFIG, '
                            'or create ./mpqueue_config.py' % CONFIG_FORMS.split(', ', 1)[1])
    source, colon, attr = spec.rpartition(':')
    if not colon or os.path.isfile(spec):
        source, attr = spec, ''
    if source.endswith('.py') or os.path.sep in source:
        return _load_config_file(spec, source, attr or 'config', where), spec, source
    return _load_config_module(spec, source, attr or 'config')


def _load_config_file(spec, path, attr, where):
    if not os.path.isfile(path):
        raise UserError('config file %r (%s) %s; --config takes %s' % (
            path, where, 'is a directory' if os.path.isdir(path) else 'does not exist',
            CONFIG_FORMS))
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        namespace = _run_config_file(path)
    except Exception as exc:
        raise UserError('config file %r failed to load: %s%s: %s' % (
            path, _circular(exc, path, (_stem(path),)), type(exc).__name__,
            _one_line(exc))) from exc
    head, _, rest = attr.partition('.')
    if head not in namespace:
        raise UserError('config file %r does not define `%s`' % (path, head))
    return _attribute(spec, namespace[head], rest)


def _load_config_module(spec, module_name, attr):
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = ''
        if exc.name == module_name.split('.')[0]:
            hint = ('; a file path works from any directory: --config /path/to/%s.py%s'
                    % (module_name.replace('.', '/'), '' if attr == 'config' else ':' + attr))
        raise UserError('config %r failed to load: %s: %s%s' % (
            spec, type(exc).__name__, _one_line(exc), hint)) from exc
    except Exception as exc:
        raise UserError('config %r failed to load: %s%s: %s' % (
            spec, _circular(exc, None, (module_name,)), type(exc).__name__,
            _one_line(exc))) from exc
    return _attribute(spec, module, attr), spec, getattr(module, '__file__', None)


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _run_config_file(path):
    """Run a config file as the module its name says (``cfg.py`` is
    ``cfg``), in sys.modules from the start: code it runs that imports
    another module (the real ``mpqueue_config``, say) gets that module, and
    what the file defines pickles under its true name.  A name that another
    module already holds (or that is no identifier) runs under a name of
    its own.  Returns the file's namespace."""
    name, real = _stem(path), os.path.realpath(path)
    taken = sys.modules.get(name)
    if not name.isidentifier() or (taken is not None and os.path.realpath(
            getattr(taken, '__file__', None) or '') != real):
        return runpy.run_path(path, run_name='__mpqueue_config__')
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return vars(module)


def _circular(exc, path, names):
    """'circular import: ...' when loading the config failed because code
    that ran while it loaded imported it again, and so found it without its
    ``config`` (or ran it a second time); else ''.  The classic case:
    ``django.setup()`` at the top of the config runs ``AppConfig.ready()``,
    which imports the config."""
    seen, real, django = set(), path and os.path.realpath(path), False
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames = traceback.extract_tb(exc.__traceback__)
        django = django or any('%sdjango%s' % (os.sep, os.sep) in f.filename for f in frames)
        again = isinstance(exc, (AttributeError, ImportError)) and any(
            "module '%s'" % name in str(exc) or "from '%s'" % name in str(exc)
            for name in names)
        if real and not again:
            again = sum(1 for f in frames if os.path.realpath(f.filename) == real) > 1
        if again:
            return ('circular import: code that runs while the config loads imports it again, '
                    'before it defines `config`%s: ' % (
                        ' (such as django.setup() at its top, which runs AppConfig.ready(); '
                        'call django.setup() in basics.worker_start_handle instead)'
                        if django else ''))
        exc = exc.__cause__ or exc.__context__
    return ''


def _attribute(spec, obj, dotted):
    for part in filter(None, dotted.split('.')):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError('config %r failed to load: %r has no attribute %r'
                            % (spec, obj, part)) from None
    return obj


def _one_line(exc):
    return ' '.join(str(exc).split()) or type(exc).__name__


# -- output: tables and times -------------------------------------------------


def _table(columns, rows):
    """A table as text, its head the first line: ``columns`` holds a (title,
    width) pair each, a negative width aligning left as in ``%-16s`` (0: no
    padding); the columns are one space apart, the lines have no final newline."""
    line = ' '.join('%%%ds' % width for _, width in columns)
    return '\n'.join(line % tuple(row) for row in [[t for t, _ in columns]] + list(rows))


def _print_rows(args, rows, empty, columns, cells):
    """``rows`` as JSON (``--json``), as the line ``empty`` when there are
    none, or as a table of ``columns`` with ``cells(row)`` per row."""
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(empty)
    else:
        print(_table(columns, (cells(r) for r in rows)))
    return 0


def _when(ts, ms=False):
    """Unix time ``ts`` as local time (with milliseconds: ``ms``); '-' for none."""
    if not ts:
        return '-'
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts)) + (
        '.%03d' % (ts % 1 * 1000) if ms else '')


def _duration(seconds):
    if seconds is None:
        return '-'
    seconds = int(seconds)
    return '%dd%02dh%02dm%02ds' % (seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60,
                                   seconds % 60) if seconds >= 86400 else \
        '%02d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def _dash(value, form='%s'):
    return '-' if value is None else form % value


# -- worker commands -----------------------------------------------------------


def _not_running(cfg):
    return UserError('pool %r is not running (no live pid in %s)' % (
        cfg['basics']['name'], mpqueue.pid_file(cfg)))


def cmd_start(cfg, args):
    if not args.daemon:
        return mpqueue.start_pool(cfg)
    pid = mpqueue.start_pool(cfg, daemon=True)
    print('mpqueue pool %r started in the background (manage pid %d); log in %s' % (
        cfg['basics']['name'], pid, cfg['log']['path']), flush=True)
    if not _warn_if_broker_down(cfg):
        _warn_if_shared(cfg)
    return 0


def _warn_if_shared(cfg):
    """Pools of other applications on our queues and broker: the pool logs
    it, and says it here too, since the log is not on the terminal."""
    try:
        pools = mpqueue.foreign_pools(cfg)
    except mpqueue.MPQueueError:
        return
    for pool in pools:
        print('mpqueue: warning: %s' % pool['warning'], file=sys.stderr)


def _warn_if_broker_down(cfg):
    """The pool waits for a broker that does not answer (and logs it): say it
    here too, since the log is not on the terminal.  True when it did."""
    try:
        mpqueue.depth(cfg['queue'][0]['name'])
    except mpqueue.DriverError as exc:
        print('mpqueue: warning: %s; the pool keeps trying to reach it (see the log in %s)'
              % (_one_line(exc).rstrip('.'), cfg['log']['path']), file=sys.stderr)
        return True
    return False


def cmd_stop(cfg, args, quiet=False):
    name = cfg['basics']['name']
    pid = mpqueue.pool_pid(cfg)
    if not pid:
        raise _not_running(cfg)
    try:
        running = _running_jobs(mpqueue.pool_status(cfg, timeout=STOP_STATUS_WAIT))
    except mpqueue.MPQueueError:
        running = None      # it does not answer: stop it all the same
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        running = 0
    grace = cfg['basics']['stop_grace']
    if running is None:
        what = 'waiting up to %s s for the jobs still running' % grace
    elif running:
        what = '%d job%s still running (up to %s s)' % (running, 's' * (running != 1), grace)
    else:
        what = 'no job running'
    print('stopping pool %r (pid %d): %s' % (name, pid, what), flush=True)
    deadline = time.monotonic() + grace + STOP_EXTRA_WAIT
    while mpqueue.pool_pid(cfg) == pid:
        if time.monotonic() >= deadline:
            raise UserError('pool %r (pid %d) did not stop within %ss' % (
                name, pid, grace + STOP_EXTRA_WAIT))
        time.sleep(0.05)
    if not quiet:
        print('mpqueue pool %r stopped' % name)
    return 0


def _running_jobs(rows):
    """Jobs the workers in ``rows`` (``mpqueue.pool_status``) are running."""
    count = 0
    for row in rows:
        if row.get('type') != 'worker':
            continue
        if row.get('coroutines'):               # 'busy/all' of a coroutine worker
            count += int(row['coroutines'].split('/')[0])
        elif row.get('state') == 'busy':
            count += 1
    return count


def cmd_restart(cfg, args):
    if mpqueue.pool_pid(cfg):
        cmd_stop(cfg, args, quiet=True)
    return cmd_start(cfg, args)


def cmd_reload(cfg, args):
    pid = mpqueue.pool_pid(cfg)
    if not pid:
        raise _not_running(cfg)
    os.kill(pid, signal.SIGUSR1)
    print('reload requested: each worker is replaced after its current job')
    return 0


def cmd_worker_status(cfg, args):
    if args.all:
        return cmd_fleet_status(cfg, args)
    return _print_rows(args, mpqueue.pool_status(cfg), 'no process', (
        ('queue', -16), ('type', -7), ('pid', 8), ('state', -10), ('job', -24), ('done', 7),
        ('rss_mb', 8), ('started', -19), ('uptime', 0)), lambda r: (
        r.get('queue'), r.get('type'), r.get('pid'),
        '%s%s' % (r.get('state'),    # and busy / all coroutines of a coroutine worker
                  ':' + r['coroutines'] if r.get('coroutines') else ''),
        r.get('job_id') or '-', _dash(r.get('done')), _dash(r.get('rss_mb'), '%.1f'),
        _when(r.get('started')), _duration(r.get('uptime'))))


def cmd_fleet_status(cfg, args):
    pools = mpqueue.fleet()
    if args.json:
        print(json.dumps(pools, indent=1))
        return 0
    if not pools:
        print('no pool has sent a heartbeat to %s in the last %ss' % (
            cfg['basics']['driver'].address, mpqueue.HEARTBEAT_TTL))
        return 0
    print(_table((('pool', -20), ('host', -20), ('pid', 8), ('queue', -16), ('workers', 7),
                  ('busy', 5), ('idle', 5), ('done', 7), ('state', -8), ('last seen', 0)), (
        (pool['name'], pool['host'], pool['pid'], queue, q['workers'], q['busy'], q['idle'],
         q['done'], pool['state'], '%.1fs ago' % pool['age'])
        for pool in pools for queue, q in sorted(pool['queues'].items()))))
    return 0


# -- queue commands ------------------------------------------------------------


def _queues(cfg, args, required=False):
    if args.queue:
        mpqueue.queue_config(args.queue)
        return [args.queue]
    if required:
        raise UserError('this command needs --queue (one of: %s)' % ', '.join(
            q['name'] for q in cfg['queue']))
    return [q['name'] for q in cfg['queue']]


def cmd_queue_status(cfg, args):
    if args.watch:
        return cmd_queue_watch(cfg, args)
    stats = {q: dict(mpqueue.status(q), **{k: v for k, v in mpqueue.depth(q).items()
                                           if k in ('cancelled', 'blocked')})
             for q in _queues(cfg, args)}
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    cols = ('all', 'waiting', 'blocked', 'working', 'failed', 'over', 'cancelled', 'expired')
    print(_table([('queue', -20)] + [(c, 9) for c in cols] + [('paused', 0)],
                 ([q] + [s[c] for c in cols] + ['yes' if s['paused'] else 'no']
                  for q, s in stats.items())))
    return 0


_RATES = (('done/s', 'done'), ('failed/s', 'failed_total'))
_RATES_SHOWN = tuple(label for label, _ in _RATES)


def cmd_queue_watch(cfg, args):
    """Redraw the depth of each queue every --interval seconds, like top; on a
    terminal the screen is cleared, elsewhere the frames follow each other
    (one JSON line each with --json).  Ctrl-C stops it (exit 0)."""
    if not args.interval > 0:
        raise UserError('--interval must be a number of seconds > 0, got %r' % args.interval)
    if args.count is not None and args.count < 1:
        raise UserError('--count must be at least 1, got %r' % args.count)
    queues, address = _queues(cfg, args), cfg['basics']['driver'].address
    clear = '\x1b[H\x1b[2J' if sys.stdout.isatty() and not args.json else ''
    previous, frames, due = None, 0, time.monotonic()
    try:
        while True:
            now = time.monotonic()
            depths = {q: mpqueue.depth(q) for q in queues}
            for q, depth in depths.items():
                for label, counter in _RATES:
                    depth[label] = None if previous is None else max(
                        0.0, (depth[counter] - previous[1][q][counter]) / (now - previous[0]))
            previous = (now, depths)
            if args.json:
                text = json.dumps({'time': time.time(), 'queues': depths}) + '\n'
            else:
                text = _watch_frame(address, depths, args.interval) + ('' if clear else '\n')
            sys.stdout.write(clear + text)
            sys.stdout.flush()
            frames += 1
            if args.count and frames >= args.count:
                return 0
            due += args.interval
            time.sleep(max(0.0, due - time.monotonic()))
    except KeyboardInterrupt:
        return 0


def _watch_frame(address, depths, interval):
    return 'mpqueue  %s  %s  every %gs, Ctrl-C to stop\n%s\n' % (
        _when(time.time()), address, interval, _table(
            [('queue', -16)] + [(c, 8) for c in mpqueue.LIVE_STATES + _RATES_SHOWN],
            ([q] + [depth[c] for c in mpqueue.LIVE_STATES] +
             [_dash(depth[label], '%.1f') for label in _RATES_SHOWN]
             for q, depth in depths.items())))


def _every_failed(queue, page=1000):
    """The failed jobs of ``queue``, read a page at a time (by cursor)."""
    after = None
    while True:
        jobs = mpqueue.failed_jobs(queue, 0, page, after)
        yield from jobs
        if len(jobs) < page:
            return
        after = jobs[-1]['id']


def cmd_queue_failed(cfg, args):
    (queue,) = _queues(cfg, args, required=True)
    if args.json:
        print(json.dumps(list(_every_failed(queue)), indent=1, default=str))
        return 0
    shown = 0
    for shown, info in enumerate(_every_failed(queue), 1):
        print('== %s  %s  type=%s  attempts=%s  worker=%s' % (
            info['id'], info['job'], 'timeout' if info['type'] == mpqueue.TYPE_TIMEOUT
            else 'normal', info['exec_number'], info['worker_id']))
        for i, err in enumerate(info['error_info'], 1):
            print('-- error %d:\n%s' % (i, err))
    if not shown:
        print('no failed jobs in queue %r' % queue)
    return 0


#: Jobs per page of queue:jobs when --count does not say.
QUEUED_PAGE = 100


def cmd_queue_jobs(cfg, args):
    (queue,) = _queues(cfg, args, required=True)
    state = args.state or 'waiting'
    if state not in ('waiting', 'delayed'):
        raise UsageError('--state must be waiting or delayed, got %r' % state)
    if args.count is not None and args.count < 1:
        raise UsageError('--count must be at least 1, got %d' % args.count)
    page = mpqueue.queued_jobs(queue, state, args.count or QUEUED_PAGE, args.cursor)
    if args.json:
        print(json.dumps(page, indent=1, default=str))
        return 0
    if not page['jobs'] and not args.cursor:
        print('no %s jobs in queue %r' % (state, queue))
        return 0
    when = 'due_time' if state == 'delayed' else 'create_time'
    print(_table((('id', -22), ('job', -30), ('priority', 8), ('key', -12),
                  ('attempts', 8), ('due' if state == 'delayed' else 'created', 0)), (
        (j['id'], j['job'], j['priority'], j['key'] or '-', j['exec_number'],
         _when(j[when], ms=True)) for j in page['jobs'])))
    if page['cursor']:
        print('more: %s queue:jobs --queue %s --state %s --cursor %s' % (
            _program(), queue, state, page['cursor']))
    return 0


def _job_of(cfg, args, command):
    """The queue and job id a ``job:`` command names."""
    (queue,) = _queues(cfg, args, required=True)
    if not args.id:
        raise UsageError('%s needs --id ID' % command)
    return queue, args.id


def cmd_job_status(cfg, args):
    queue, _ = _job_of(cfg, args, 'job:status')
    info = mpqueue.job_info(queue, args.id)
    if info is None:
        raise UserError('job %r of queue %r is unknown (or its outcome was not kept, or '
                        'expired)' % (args.id, queue))
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    for name in ('id', 'queue', 'job', 'state', 'priority', 'key', 'exec_number', 'worker_id',
                 'create_time', 'start_time', 'end_time', 'cancelled_by', 'cancel_time',
                 'result_repr', 'result_note'):
        value = info.get(name)
        if value is not None:
            print('%-12s %s' % (name, _when(value, ms=True) if name.endswith('_time') else value))
    for i, err in enumerate(info['error_info'], 1):
        print('-- error %d:\n%s' % (i, err))
    return 0


def cmd_job_cancel(cfg, args):
    queue, _ = _job_of(cfg, args, 'job:cancel')
    before = mpqueue.cancel(queue, args.id)
    if before is None:
        raise UserError('job %r of queue %r is unknown: nothing cancelled' % (args.id, queue))
    if before in (mpqueue.DONE, mpqueue.FAILED, mpqueue.CANCELLED):
        print('job %s of queue %r had ended already (%s): nothing changed' % (
            args.id, queue, before))
    elif before == mpqueue.WORKING:
        print('job %s of queue %r is running: its worker is stopped and the job ends '
              'cancelled' % (args.id, queue))
    else:
        print('job %s of queue %r cancelled (it was %s)' % (args.id, queue, before))
    return 0


def cmd_schedule_list(cfg, args):
    rows = mpqueue.schedules(_queues(cfg, args)[0] if args.queue else None)
    return _print_rows(args, rows, 'no schedules in the config', (
        ('queue', -14), ('name', -14), ('expression', -16), ('timezone', -14),
        ('last tick', -19), ('next tick', -19), ('last job', -22), ('state', 0)), lambda r: (
        r['queue'], r['name'], r['expression'], r['timezone'], _when(r['last_tick']),
        _when(r['next_tick']), r['last_job_id'] or '-',
        r['last_job_state'] or ('ended' if r['last_job_id'] else '-')))     # (not kept)


def cmd_limit_list(cfg, args):
    rows = [dict(row, queue=queue) for queue in _queues(cfg, args)
            for row in mpqueue.limits(queue)]
    return _print_rows(args, rows, 'no limits defined or in use', (
        ('queue', -14), ('name', -20), ('limit', -16), ('concurrency', 11), ('rate', 8),
        ('per', 8), ('running', 8), ('waiting', 8)), lambda r: (
        r['queue'], r['name'], r['limit'] or '(undefined)', r['concurrency'] or '-',
        r['rate'] or '-', r['per'] or '-', r['running'], r['waiting']))


def cmd_queue_retry(cfg, args):
    (queue,) = _queues(cfg, args, required=True)
    n = mpqueue.retry_failed(queue, args.id)
    if args.id and not n:
        raise UserError('job %r is not in the failed list of queue %r' % (args.id, queue))
    print('%d job(s) of queue %r put back' % (n, queue))
    return 0


def cmd_queue_pause(cfg, args):
    (queue,) = _queues(cfg, args, required=True)
    if mpqueue.pause(queue):
        print('queue %r paused: no pool starts its jobs until queue:resume (running jobs '
              'finish; pushes and delayed jobs wait)' % queue)
    else:
        print('queue %r was paused already' % queue)
    return 0


def cmd_queue_resume(cfg, args):
    (queue,) = _queues(cfg, args, required=True)
    print(('queue %r resumed' if mpqueue.resume(queue) else 'queue %r was not paused')
          % queue)
    return 0


def cmd_queue_clean(cfg, args):
    for queue in _queues(cfg, args):
        mpqueue.clean(queue)
        print('queue %r emptied' % queue)
    return 0


# -- the HTTP server of `metrics --serve` and `web` ------------------------------

_HTTP_REQUEST_TIMEOUT = 10    # s: a client that sends nothing for this long is dropped
_HTTP_BODY_MAX = 8192         # bytes: no request here needs a bigger body
_HTTP_CONNECTIONS_MAX = 32    # connections served at once (a thread each); more get a 503


class _HTTPError(Exception):
    """An answer other than 200: an HTTP status and one line for the user."""

    def __init__(self, status, message, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra


def _routes(*table):
    """A handler's routes: (method, path pattern, the name of the handler's
    method, or a function of the path's parts), the pattern compiled to match
    the whole path."""
    return [(method, re.compile('^%s$' % pattern), name) for method, pattern, name in table]


class _HTTPServer(http.server.ThreadingHTTPServer):
    """The one HTTP server of ``metrics --serve`` and ``web``: a thread per
    connection, at most _HTTP_CONNECTIONS_MAX at once (more get 503), IPv4
    or IPv6; ``run`` serves until SIGINT or SIGTERM.  What it answers is its
    handler's (a subclass of _Handler, with its routes)."""

    daemon_threads = True
    # nor does a stop wait for them: server_close() would join every thread,
    # and a kept-alive connection's waits up to _HTTP_REQUEST_TIMEOUT
    block_on_close = False

    def __init__(self, address, handler, what):
        if ':' in address[0]:
            self.address_family = socket.AF_INET6
        try:
            super().__init__(address, handler)
        except (OSError, OverflowError) as exc:
            raise UserError('cannot serve %s on %s:%s: %s' % (
                what, address[0], address[1], getattr(exc, 'strerror', None) or exc)) from exc
        self.slots = threading.BoundedSemaphore(_HTTP_CONNECTIONS_MAX)
        self.stopping = threading.Event()       # set first: long answers (streams) end

    def url(self, path):
        host, port = self.server_address[:2]
        return 'http://%s:%d%s' % ('[%s]' % host if ':' in host else host, port, path)

    def run(self, started):
        """Print ``started`` (the first line, which says where it listens),
        then serve until SIGINT or SIGTERM; exit code 0."""
        def stop(signum, frame):    # serve_forever() ends at its next poll
            self.stopping.set()
            threading.Thread(target=self.shutdown, daemon=True).start()
        signal.signal(signal.SIGTERM, stop)
        print(started, flush=True)
        try:
            self.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:   # Ctrl-C
            pass
        finally:
            self.stopping.set()
            self.server_close()
        return 0

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n'
                                b'Connection: close\r\nRetry-After: 1\r\n\r\n')
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        print('mpqueue: error serving %s: %s' % (
            client_address[0], _log_text(_one_line(sys.exc_info()[1]))), file=sys.stderr)


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request to an _HTTPServer: read strictly, answered by ``_answer``
    (which may look its path up in ``routes``); an _HTTPError is answered by
    ``_error``."""

    protocol_version = 'HTTP/1.1'
    server_version = 'mpqueue'
    timeout = _HTTP_REQUEST_TIMEOUT
    # headers and body go out in two writes: with Nagle, a kept-alive client's
    # delayed ACK held the body back 40 ms
    disable_nagle_algorithm = True
    #: (method, compiled pattern, method name), from _routes; path parts are
    #: percent-decoded after matching, so an id may contain an encoded '/'.
    routes = ()

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):
        pass            # quiet: errors are printed by _serve_request

    def do_GET(self):
        self._serve_request('GET')

    def do_HEAD(self):
        self._serve_request('HEAD')

    def do_POST(self):
        self._serve_request('POST')

    def _serve_request(self, method):
        try:
            body = self._body()
            if not self.path.startswith('/') or self.path.startswith('//'):
                self.close_connection = True
                raise _HTTPError(400, 'the request target must be a path (origin-form), got %s'
                                 % ascii(self.path[:100]))
            path, _, query = self.path.partition('#')[0].partition('?')
            self._answer(method, path, query, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True    # the client went away
        except _HTTPError as exc:
            self._error(exc.status, dict(exc.extra, error=str(exc)), method)
        except Exception as exc:
            print('mpqueue: %s %s failed: %s: %s' % (
                method, _log_text(self.path), type(exc).__name__, _log_text(_one_line(exc))),
                file=sys.stderr)
            self._error(500, {'error': 'internal error: %s' % _one_line(exc)}, method)

    def _body(self):
        """The request body (bytes); every request's body is read, so that the
        connection stays usable."""
        if 'Transfer-Encoding' in self.headers:
            self.close_connection = True
            raise _HTTPError(400, 'chunked request bodies are not accepted')
        lengths = self.headers.get_all('Content-Length') or ['0']
        length = lengths[0].strip() or '0'
        if len(lengths) > 1 or not re.fullmatch('[0-9]+', length):
            # the body's end is unknown: reading on would take it for a request
            self.close_connection = True
            raise _HTTPError(400, 'bad Content-Length: %s' % ', '.join(map(ascii, lengths)))
        if int(length) > _HTTP_BODY_MAX:
            self.close_connection = True
            raise _HTTPError(413, 'request body over %d bytes' % _HTTP_BODY_MAX)
        return self.rfile.read(int(length))

    def _route(self, method, path):
        """The handler method of the route ``path`` matches, and the path's parts."""
        allowed = []
        for route_method, pattern, name in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            if route_method != ('GET' if method == 'HEAD' else method):
                allowed.append(route_method)
                continue
            return getattr(self, name) if isinstance(name, str) else name, {
                k: urllib.parse.unquote(v, errors='replace') for k, v in match.groupdict().items()}
        if allowed:
            raise _HTTPError(405, 'method not allowed (use %s)' % ', '.join(allowed))
        raise _HTTPError(404, 'no such path: %s' % path)

    def _send(self, status, body, content_type, method='GET', headers=()):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', 'no-store')
        if self.close_connection:
            self.send_header('Connection', 'close')
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if method != 'HEAD':
            self.wfile.write(body)

    def _error(self, status, fields, method):
        """Answer an error: ``fields`` has its one line as ``error``."""
        self._send(status, json.dumps(fields, default=str), 'application/json', method)


def _log_text(text):
    """``text`` as it may go to a terminal or a log: control and non-ASCII
    characters escaped, as ``ascii()`` does."""
    return ascii(text)[1:-1]


# -- metrics -------------------------------------------------------------------


def metrics_text(queues):
    """The Prometheus text exposition (format 0.0.4) of ``queues`` (names of
    configured queues) and of the pools whose heartbeats the broker holds, on
    the configured broker (call ``mpqueue.configure(config)`` first)."""
    return render_metrics({q: mpqueue.depth(q) for q in queues}, mpqueue.fleet(),
                          [s for s in mpqueue.schedules() if s['queue'] in queues],
                          [dict(row, queue=q) for q in queues for row in mpqueue.limits(q)])


def render_metrics(depths, pools, schedules=(), limits=()):
    """The exposition text of ``depths`` (queue name -> ``mpqueue.depth()``),
    ``pools`` (``mpqueue.fleet()``), ``schedules`` (``mpqueue.schedules()``)
    and ``limits`` (``mpqueue.limits()`` rows, each with its ``queue``)."""
    latest = {}     # a pool restarted within the TTL: its newest heartbeat only
    for pool in pools:
        key = (pool['host'], pool['name'])
        if key not in latest or pool['age'] < latest[key]['age']:
            latest[key] = pool
    pools = [latest[key] for key in sorted(latest)]
    families = [
        ('mpqueue_queue_jobs', 'gauge', 'Jobs in the queue now, by state.',
         [({'queue': q, 'state': s}, d[s]) for q, d in depths.items() for s in mpqueue.LIVE_STATES]),
        ('mpqueue_jobs_total', 'counter',
         'Jobs pushed, done, finally failed, cancelled and expired since the queue was last '
         'cleaned.',
         [({'queue': q, 'state': s}, d[key]) for q, d in depths.items()
          for s, key in (('pushed', 'pushed'), ('done', 'done'), ('failed', 'failed_total'),
                         ('cancelled', 'cancelled'), ('expired', 'expired'))]),
        ('mpqueue_oldest_waiting_seconds', 'gauge',
         'Age of the job at the head of the queue since it was pushed (0: none waits).',
         [({'queue': q}, d['oldest_waiting_seconds']) for q, d in depths.items()]),
        ('mpqueue_queue_paused', 'gauge', '1 while the queue is paused (queue:pause), else 0.',
         [({'queue': q}, int(d['paused'])) for q, d in depths.items()]),
        ('mpqueue_workers', 'gauge', 'Worker processes of each running pool, by state.',
         [({'server': p['host'], 'pool': p['name'], 'queue': q, 'state': s}, counts[s])
          for p in pools for q, counts in sorted(p['queues'].items()) for s in ('busy', 'idle')]),
        ('mpqueue_pool_jobs_finished_total', 'counter',
         'Jobs the workers of each running pool finished (done, retried or failed) since it '
         'started.',
         [({'server': p['host'], 'pool': p['name'], 'queue': q}, counts['done'])
          for p in pools for q, counts in sorted(p['queues'].items())]),
        ('mpqueue_pool_heartbeat_age_seconds', 'gauge',
         'Seconds since each running pool last published its heartbeat.',
         [({'server': p['host'], 'pool': p['name']}, p['age']) for p in pools]),
        ('mpqueue_schedule_last_tick_timestamp', 'gauge',
         'When each schedule last ticked (Unix time; 0: never).',
         [({'queue': s['queue'], 'schedule': s['name']}, s['last_tick'] or 0)
          for s in schedules]),
        ('mpqueue_schedule_skipped_total', 'counter',
         'Ticks each schedule skipped: the job holding its key still waited or ran.',
         [({'queue': s['queue'], 'schedule': s['name']}, s['skipped']) for s in schedules]),
        ('mpqueue_limit_running', 'gauge',
         'Jobs holding a slot of each limit name in use (reserved or working).',
         [({'queue': r['queue'], 'limit': r['name']}, r['running']) for r in limits]),
        ('mpqueue_limit_waiting', 'gauge', 'Jobs waiting for each limit name in use.',
         [({'queue': r['queue'], 'limit': r['name']}, r['waiting']) for r in limits]),
    ]
    out = []
    for name, kind, text, samples in families:
        out.append('# HELP %s %s\n# TYPE %s %s\n' % (name, text, name, kind))
        for labels, value in samples:
            out.append('%s{%s} %s\n' % (name, ','.join(
                '%s="%s"' % (k, _label_value(v)) for k, v in labels.items()),
                repr(float(value)) if isinstance(value, float) else int(value)))
    return ''.join(out)


def _label_value(value):
    return str(value).replace('\\', '\\\\').replace('\n', '\\n').replace('"', '\\"')


class _MetricsHandler(_Handler):
    """``metrics --serve``: the exposition text at /metrics, to anyone who
    can connect (it listens on 127.0.0.1 only); errors as text too."""

    routes = _routes(('GET', '/metrics', 'get_metrics'))
    content_type = 'text/plain; version=0.0.4; charset=utf-8'

    def _answer(self, method, path, query, body):
        self._route(method, path)[0](method)

    def get_metrics(self, method):
        try:
            text = metrics_text(self.server.queues)
        except mpqueue.MPQueueError as exc:
            raise _HTTPError(503, _one_line(exc)) from exc
        self._send(200, text, self.content_type, method)

    def _error(self, status, fields, method):
        if status == 404:
            fields['error'] += ' (the metrics are at /metrics)'
        self._send(status, 'mpqueue: error: %s\n' % fields['error'], self.content_type, method)


def cmd_metrics(cfg, args):
    queues = _queues(cfg, args)
    if args.serve is None:
        sys.stdout.write(metrics_text(queues))
        return 0
    server = _HTTPServer(('127.0.0.1', args.serve), _MetricsHandler, 'metrics')
    server.queues = queues
    return server.run('serving Prometheus metrics on %s (Ctrl-C to stop)'
                      % server.url('/metrics'))


###############################################################################
# The dashboard: `mpqueue web`
###############################################################################
#
# The _HTTPServer above, with the routes of _WebHandler: one page and the
# JSON API the page reads.  The page (HTML, CSS, JS) is the constant
# _WEB_ASSETS at the end of this file.  The server keeps no state of its own:
# every answer comes from the broker, through calls that wait at most
# WEB_BROKER_TIMEOUT.  Nothing is ever unpickled here: job_info carries the
# result's repr, computed by the worker.
#
#   GET  /  /app.js  /app.css  /favicon.svg   the page and its files
#   GET  /login   POST /login   POST /logout  with --token: the cookie
#   GET  /api/...  POST /api/...              the API (_WebHandler.routes)

#: Longest a request waits for the broker (seconds); then it answers 503.
WEB_BROKER_TIMEOUT = 3.0
_WEB_BROKER_THREADS = 4       # broker calls in flight at once; more wait their turn
_WEB_PAGE_MAX = 500           # most jobs (failed, queued) one API call returns
_WEB_TOKEN_MIN = 16           # characters: a token is a password that cannot be typed wrong
_WEB_TOKEN_DISTINCT = 8       # different characters at least: 16 spaces or 'aaaa...' guess fast
_WEB_FAILURE_DELAY = 0.5      # s: wrong tokens wait this long each, one at a time per process
_WEB_SESSION_SECONDS = 12 * 3600   # a login lasts a working day, then the form asks again
_WEB_SESSIONS_MAX = 1000      # signed-in browsers kept; past that the oldest session ends
_WEB_OFFSET_MAX = 10 ** 9     # an offset into the failed list beyond any list a broker keeps
_WEB_RELATIVES_MAX = 100      # parents, children: the most a job's page shows (one lookup each)
_WEB_STREAMS_MAX = 8          # pages sent events at once (a thread each); more poll every 2 s
_WEB_EVENTS_EVERY = 0.2       # s: a stream looks at the broker this often, says if it changed
_WEB_EVENTS_QUIET = 15        # s: and writes at least this often, to find pages that went
_DONE = {'retry': 'retried', 'delete': 'deleted'}    # what an answer calls a verb's jobs
_STREAMED = object()          # what a handler returns that has answered by itself
_WEB_COOKIE = 'mpqueue_session_%d'    # the port is in the names: two dashboards on one host
_WEB_LOGIN_COOKIE = 'mpqueue_login_%d'    # keep their sessions apart
_WEB_LOOPBACK_NAMES = ('localhost', '127.0.0.1', '::1')

_WEB_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_WEB_HEADERS = (('Content-Security-Policy', _WEB_CSP), ('X-Frame-Options', 'DENY'),
                ('X-Content-Type-Options', 'nosniff'), ('Referrer-Policy', 'same-origin'),
                ('Cross-Origin-Opener-Policy', 'same-origin'),
                ('Cross-Origin-Resource-Policy', 'same-origin'))
_WEB_STATIC = {'/app.js': ('app.js', 'text/javascript; charset=utf-8'),
               '/app.css': ('app.css', 'text/css; charset=utf-8'),
               '/favicon.svg': ('favicon.svg', 'image/svg+xml')}

def _is_loopback(host):
    try:
        return host.lower() == 'localhost' or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _BoundedCalls:
    """Runs broker calls on a few threads of its own (daemons: a stop does not
    wait for them) and waits ``timeout`` seconds for each at most, so that a
    broker that does not answer cannot hang a request.  A call that is still
    waiting for a thread when its request gives up is dropped, never run later."""

    def __init__(self, threads, timeout, address):
        self.timeout, self.address = timeout, address
        self.calls = queue_module.SimpleQueue()
        for n in range(threads):
            threading.Thread(target=self._serve, name='mpqueue-web-broker-%d' % n,
                             daemon=True).start()

    def _serve(self):
        while True:
            future, func, args = self.calls.get()
            if future.set_running_or_notify_cancel():     # else its request gave up
                try:
                    future.set_result(func(*args))
                except BaseException as exc:    # handed to the request's thread
                    future.set_exception(exc)

    def __call__(self, func, *args, action=False):
        """``func(*args)``; ``action``: it changes something (said in a timeout's message)."""
        future = concurrent.futures.Future()
        self.calls.put((future, func, args))
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            started = not future.cancel()
            raise _HTTPError(503, 'the broker %s did not answer within %gs%s' % (
                self.address, self.timeout,
                ' (the action may still take effect)' if started and action else '')) from None
        except mpqueue.DriverError as exc:
            raise _HTTPError(503, _one_line(exc)) from exc
        except mpqueue.ConfigError as exc:
            raise _HTTPError(404, _one_line(exc)) from exc


class _WebServer(_HTTPServer):
    """The dashboard's server: its settings, the secrets and the broker calls."""

    def __init__(self, address, cfg, token, read_only):
        super().__init__(address, _WebHandler, 'the dashboard')
        self.driver = cfg['basics']['driver']
        self.queues = [q['name'] for q in cfg['queue']]
        self.token, self.read_only = token, read_only
        self.bind_host = address[0].strip('[]').lower()
        port = self.server_address[1]
        self.cookie, self.login_cookie = _WEB_COOKIE % port, _WEB_LOGIN_COOKIE % port
        # Sessions live here only: session id -> (expiry on the monotonic
        # clock, its CSRF token).  A restart or a logout ends them.
        self.sessions, self.sessions_lock = {}, threading.Lock()
        # Without a token there are no sessions: one CSRF token per process,
        # which the Host and Origin checks keep from other sites' pages.
        self.csrf = secrets.token_urlsafe(32)
        self.secret = secrets.token_bytes(32)       # signs the login form's CSRF tokens
        self.failures = threading.Lock()            # wrong tokens wait their turn here
        self.broker = _BoundedCalls(_WEB_BROKER_THREADS, WEB_BROKER_TIMEOUT,
                                    self.driver.address)
        self.streams = threading.BoundedSemaphore(_WEB_STREAMS_MAX)

    def new_session(self):
        """A new session's (id, CSRF token)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.sessions_lock:
            now = time.monotonic()
            for old in [k for k, (expires, _) in self.sessions.items() if expires <= now]:
                del self.sessions[old]
            while len(self.sessions) >= _WEB_SESSIONS_MAX:
                del self.sessions[min(self.sessions, key=lambda k: self.sessions[k][0])]
            self.sessions[sid] = (now + _WEB_SESSION_SECONDS, csrf)
        return sid, csrf

    def session(self, sid):
        """The CSRF token of the live session ``sid``, or None."""
        with self.sessions_lock:
            expires, csrf = self.sessions.get(sid, (0, None))
            if expires <= time.monotonic():
                self.sessions.pop(sid, None)
                return None
            return csrf

    def end_session(self, sid):
        with self.sessions_lock:
            self.sessions.pop(sid, None)

    def login_csrf(self, nonce):
        """The login form's CSRF token, bound to its pre-login cookie ``nonce``."""
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    def failed_guess(self):
        """A wrong token: wait, one failure at a time in the whole process, so
        that parallel connections do not multiply the guesses."""
        with self.failures:
            time.sleep(_WEB_FAILURE_DELAY)


class _WebHandler(_Handler):
    """One request: authentication, CSRF, routing, and the answer."""

    routes = _routes(
        ('GET', r'/api/queues', 'api_queues'),
        ('GET', r'/api/queues/(?P<queue>[^/]+)/history', mpqueue.history),
        ('GET', r'/api/queues/(?P<queue>[^/]+)/failed', 'api_failed'),
        ('GET', r'/api/queues/(?P<queue>[^/]+)/jobs', 'api_queued'),
        ('GET', r'/api/queues/(?P<queue>[^/]+)/jobs/(?P<job_id>[^/]+)', 'api_job'),
        ('GET', r'/api/queues/(?P<queue>[^/]+)/limits', mpqueue.limits),
        ('GET', r'/api/fleet', mpqueue.fleet),
        ('GET', r'/api/schedules', mpqueue.schedules),
        ('GET', r'/api/search', 'api_search'),
        ('GET', r'/api/events', 'api_events'),
        ('POST', r'/api/queues/(?P<queue>[^/]+)/failed/(?P<verb>retry|delete)', 'api_bulk'),
        ('POST', r'/api/queues/(?P<queue>[^/]+)/failed/(?P<job_id>[^/]+)/(?P<verb>retry|delete)',
         'api_failed_job'),
        ('POST', r'/api/queues/(?P<queue>[^/]+)/jobs/(?P<job_id>[^/]+)/cancel', 'api_cancel'),
        ('POST', r'/api/queues/(?P<queue>[^/]+)/(?P<verb>pause|resume)', 'api_pause'))

    def end_headers(self):
        for name, value in _WEB_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    # -- plumbing --------------------------------------------------------------

    def _redirect(self, location, headers=()):
        """303 to ``location``, relative to this path, so that the dashboard also
        works behind a proxy that serves it under a path of its own."""
        self._send(303, '', 'text/plain', headers=(('Location', location),) + tuple(headers))

    def _answer(self, method, path, query, body):
        hosts = self.headers.get_all('Host') or []
        if len(hosts) != 1:
            self.close_connection = True
            raise _HTTPError(400, 'a request needs one Host header, got %d' % len(hosts))
        if not self._host_allowed(hosts[0]):
            raise _HTTPError(403, 'Host %s is not allowed: without a token the dashboard '
                                 'answers to loopback names with its port only' % ascii(hosts[0]))
        if method == 'POST' and not self._same_origin(hosts[0]):
            raise _HTTPError(403, 'Origin %s is not this dashboard: actions come from its own '
                                 'page' % ascii(self.headers.get('Origin')))
        if path in _WEB_STATIC:
            if method == 'POST':
                raise _HTTPError(405, 'method not allowed')
            name, content_type = _WEB_STATIC[path]
            return self._send(200, _WEB_ASSETS[name], content_type, method)
        if path == '/login':
            return self._login(method, body)
        if path == '/logout' and method == 'POST':
            self._authorized()
            self._check_csrf(urllib.parse.parse_qs(body.decode('utf-8', 'replace')).get(
                'csrf_token', [''])[0], self.csrf)
            self.server.end_session(self._cookies().get(self.server.cookie, ''))
            return self._redirect('login' if self.server.token else './', headers=(
                ('Set-Cookie', self._cookie_header(self.server.cookie, '', 0)),))
        if not self._authorized():
            if path == '/':
                return self._redirect('login')
            return self._send(401, json.dumps({'error': 'this dashboard needs its token: log '
                                                        'in, or send "Authorization: Bearer '
                                                        'TOKEN"'}),
                              'application/json', method,
                              headers=(('WWW-Authenticate', 'Bearer realm="mpqueue"'),))
        if path == '/':
            if method == 'POST':
                raise _HTTPError(405, 'method not allowed')
            return self._send(200, self._page(), 'text/html; charset=utf-8', method)
        if not path.startswith('/api/'):
            return self._send(404, 'not found\n', 'text/plain; charset=utf-8', method)
        handler, params = self._route(method, path)
        if 'queue' in params and params['queue'] not in self.server.queues:
            raise _HTTPError(404, 'queue %r is not in the config (configured queues: %s)'
                             % (params['queue'], ', '.join(self.server.queues)))
        if method == 'POST':
            if self.server.read_only:
                raise _HTTPError(403, 'the dashboard is read-only (started with --read-only)')
            self._check_csrf(self.headers.get('X-CSRF-Token', ''), self.csrf)
        if getattr(handler, '__self__', None) is not self:     # a read of mpqueue's
            value = self.server.broker(handler, *params.values())
        else:
            value = handler(query=urllib.parse.parse_qs(query), **params)
        if value is not _STREAMED:
            self._send(200, json.dumps(value, default=str), 'application/json', method)

    def _host_allowed(self, host):
        """Without a token, only loopback names (or the address bound), with
        the port listened on, are answered: a web page that points its own
        host name at 127.0.0.1 (DNS rebinding) gets nothing."""
        if self.server.token:
            return True
        host = host.strip().lower()
        found = re.fullmatch(r'(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::([0-9]{1,5}))?', host)
        if not found:
            return False
        name, port = found.group(1).strip('[]'), found.group(2)
        return (name in _WEB_LOOPBACK_NAMES or name == self.server.bind_host) and \
            int(port or 80) == self.server.server_address[1]

    def _same_origin(self, host):
        """A POST's ``Origin``, when it has one (browsers send it), is this
        dashboard's (as the browser reached it: ``Host``); a script may send none."""
        origin = self.headers.get('Origin')
        if origin is None:
            return True
        scheme, _, netloc = origin.partition('://')
        return scheme in ('http', 'https') and netloc.lower() == host.strip().lower()

    def _cookies(self):
        """The request's cookies as browsers send them (``a=1; b=2``): each
        pair split at its first ``=``, anything else skipped; the first of a
        name wins (the one of the longest path)."""
        out = {}
        for header in self.headers.get_all('Cookie') or []:
            for pair in header.split(';'):
                name, eq, value = pair.partition('=')
                if eq:
                    out.setdefault(name.strip(), value.strip())
        return out

    def _cookie_header(self, name, value, max_age=None):
        secure = '; Secure' if self.headers.get('X-Forwarded-Proto') == 'https' else ''
        return '%s=%s; Path=/; HttpOnly; SameSite=Strict%s%s' % (
            name, value, '' if max_age is None else '; Max-Age=%d' % max_age, secure)

    def _authorized(self):
        """With a token: a live session's cookie, or the token as a Bearer."""
        server = self.server
        if not server.token:
            self.csrf = server.csrf
            return True
        self.csrf = None
        header = self.headers.get('Authorization', '')
        if header[:7].lower() == 'bearer ':
            if hmac.compare_digest(header[7:].strip().encode(), server.token.encode()):
                self.csrf = server.csrf     # a script, which has the token itself
                return True
            server.failed_guess()
            return False
        self.csrf = server.session(self._cookies().get(server.cookie, ''))
        return self.csrf is not None

    def _check_csrf(self, given, expected):
        """``given`` is ``expected``: the session's token (or the login form's)."""
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise _HTTPError(403, 'missing or wrong CSRF token: reload the page (the dashboard '
                                 'may have restarted, or your session ended)')

    # -- pages -------------------------------------------------------------------

    def _page(self):
        server = self.server
        return _web_render('index.html', csrf_token=self.csrf, settings=json.dumps({
            'queues': server.queues, 'read_only': server.read_only, 'signed_in': bool(
                server.token), 'stale_seconds': 3 * mpqueue.HEARTBEAT_SECONDS}),
            broker=server.driver.address, version=mpqueue.__version__)

    def _login(self, method, body):
        server = self.server
        if not server.token:
            return self._redirect('./')
        # The form's CSRF token is bound to a cookie of its own, set here.
        nonce = self._cookies().get(server.login_cookie, '')

        def page(status, error, headers=()):
            return self._send(status, _web_render('login.html', error=error, csrf_token=
                                                  server.login_csrf(nonce)),
                              'text/html; charset=utf-8', method, headers=headers)
        if method != 'POST':
            if len(nonce) >= 32:
                return page(200, '')
            nonce = secrets.token_urlsafe(32)
            return page(200, '', (('Set-Cookie', self._cookie_header(server.login_cookie,
                                                                      nonce)),))
        form = urllib.parse.parse_qs(body.decode('utf-8', 'replace'))
        self._check_csrf(form.get('csrf_token', [''])[0],
                         server.login_csrf(nonce) if len(nonce) >= 32 else None)
        if hmac.compare_digest(form.get('token', [''])[0].encode(), server.token.encode()):
            sid, _ = server.new_session()
            return self._redirect('./', headers=(
                ('Set-Cookie', self._cookie_header(server.cookie, sid, _WEB_SESSION_SECONDS)),
                ('Set-Cookie', self._cookie_header(server.login_cookie, '', 0))))
        server.failed_guess()
        return page(401, 'Wrong token.')

    # -- the API -------------------------------------------------------------------

    def api_queues(self, query):
        return self.server.broker(lambda: [dict(mpqueue.depth(q), name=q)
                                           for q in self.server.queues])

    def api_failed(self, query, queue):
        offset = _int_param(query, 'offset', 0, 0, _WEB_OFFSET_MAX)
        count = _int_param(query, 'count', 50, 1, _WEB_PAGE_MAX)
        after = query.get('after', [''])[0]     # the last job of the page before
        match, cursor = query.get('match', [None])[0], query.get('cursor', [''])[0]

        def page():     # with `match`: the page by cursor, and how many match in all
            return dict({'total': mpqueue.depth(queue)['failed']}, **(dict(
                mpqueue.search_failed(queue, match, count, cursor),
                matched=mpqueue.count_failed(queue, match)) if match else {
                    'jobs': mpqueue.failed_jobs(queue, offset, count, after)}))
        return self.server.broker(page)

    def api_queued(self, query, queue):
        state = query.get('state', ['waiting'])[0]
        if state not in ('waiting', 'delayed'):
            raise _HTTPError(400, 'state must be waiting or delayed, got %r' % state)
        count = _int_param(query, 'count', 50, 1, _WEB_PAGE_MAX)
        cursor = query.get('cursor', [''])[0]       # the page before gave it
        return self.server.broker(lambda: dict(mpqueue.queued_jobs(queue, state, count, cursor),
                                               total=mpqueue.depth(queue)[state]))

    def api_job(self, query, queue, job_id):
        def states(ids):        # [{id, state}] of the first ids; state None: forgotten
            return [{'id': i, 'state': (mpqueue.job_info(queue, i) or {}).get('state')}
                    for i in ids[:_WEB_RELATIVES_MAX]]

        def job():
            info = mpqueue.job_info(queue, job_id)
            if info is not None:
                info.update(parents=states(info['depends_on']),
                            children=states(info['dependents']))
            return info
        info = self.server.broker(job)
        if info is None:
            raise _HTTPError(404, 'no job %r in queue %r (unknown, or its record expired)'
                            % (job_id, queue))
        return info

    def api_search(self, query):
        text = query.get('q', [''])[0]
        if not text:
            raise _HTTPError(400, 'q: the text to look for (a job id or key, or failed jobs\' '
                                  'text) is missing')

        def search():   # a job by id or key (one lookup each), failed jobs by text (a walk)
            found = [mpqueue.find_job(q, text) for q in self.server.queues]
            return {'jobs': [dict(info, found_by='id' if info['id'] == text else 'key')
                             for info in found if info],
                    'failed': [{'queue': q, 'matched': mpqueue.count_failed(q, text)}
                               for q in self.server.queues]}
        return self.server.broker(search)

    def api_events(self, query):
        """Server-sent events: ``change`` when the counts of a queue (or the job
        ``id`` of ``queue``) changed, looked at every _WEB_EVENTS_EVERY s; the
        page then reads the API.  At most _WEB_STREAMS_MAX at once (more get
        503, and poll), each until its page goes or the server stops."""
        server, (queue, job_id) = self.server, (query.get(n, [''])[0] for n in ('queue', 'id'))
        if queue and queue not in server.queues:
            raise _HTTPError(404, 'queue %r is not in the config' % queue)

        def look():     # what the page shows changes with it: the counts, the job it shows
            try:
                return server.broker(lambda: json.dumps([dict(
                    mpqueue.depth(q), oldest_waiting_seconds=0) for q in server.queues] + [
                        job_id and mpqueue.job_info(queue, job_id)], default=str))
            except _HTTPError as exc:       # the broker is down: the page's calls say so
                return str(exc)
        if self.command != 'GET':
            raise _HTTPError(405, 'method not allowed (use GET)')
        if not server.streams.acquire(blocking=False):
            raise _HTTPError(503, '%d pages have live events already: this one polls'
                             % _WEB_STREAMS_MAX)
        try:
            last, written = look(), time.monotonic()    # what changes after the answer counts
            self.close_connection = True
            self.send_response(200)
            for name, value in (('Content-Type', 'text/event-stream'),
                                ('Cache-Control', 'no-store'), ('Connection', 'close')):
                self.send_header(name, value)
            self.end_headers()
            while not server.stopping.wait(_WEB_EVENTS_EVERY):
                now = look()
                if now != last or time.monotonic() - written > _WEB_EVENTS_QUIET:
                    self.wfile.write(b': quiet\n\n' if now == last else b'data: change\n\n')
                    written, last = time.monotonic(), now
        except OSError:
            pass            # the page went
        finally:
            server.streams.release()
        return _STREAMED

    def api_failed_job(self, query, queue, job_id, verb):
        if not self.server.broker(getattr(mpqueue, verb + '_failed'), queue, job_id,
                                  action=True):
            raise _HTTPError(404, 'job %r is not in the failed list of queue %r' % (job_id, queue))
        return {'ok': True, _DONE[verb]: 1}

    def api_bulk(self, query, queue, verb):
        """Retry every failed job (or those that contain ``match``), or delete
        those that contain ``match`` (there is no "delete all")."""
        match = query.get('match', [None])[0]
        if verb == 'delete' and not match:
            raise _HTTPError(400, 'match: deleting failed jobs takes the text they contain')
        return {'ok': True, _DONE[verb]: self.server.broker(
            getattr(mpqueue, verb + '_failed'), queue, None, match, action=True)}

    def api_cancel(self, query, queue, job_id):
        state = self.server.broker(mpqueue.cancel, queue, job_id, action=True)
        if state is None:
            raise _HTTPError(404, 'no job %r in queue %r' % (job_id, queue))
        return {'ok': True, 'state': state}

    def api_pause(self, query, queue, verb):
        changed = self.server.broker(getattr(mpqueue, verb), queue, action=True)
        return {'ok': True, 'paused': verb == 'pause', 'changed': changed}


def _int_param(query, name, default, low, high):
    text = query.get(name, [str(default)])[0]
    if not re.fullmatch('[0-9]{1,20}', text) or not low <= int(text) <= high:
        raise _HTTPError(400, '%s must be an integer from %d to %d, got %r' % (
            name, low, high, text))
    return int(text)


def _web_render(name, **values):
    """A page of _WEB_ASSETS with its ``{{name}}`` fields filled in, escaped."""
    page = _WEB_ASSETS[name]
    for key, value in values.items():
        page = page.replace('{{%s}}' % key, html.escape(str(value)))
    return page


def _bound_broker_waits(driver, seconds):
    """Make this process's Redis clients give up on a reply after ``seconds``,
    so that the threads of a broker that stopped answering come back (a
    socket_timeout of the user's own is kept)."""
    kwargs = getattr(driver, 'redis_kwargs', None)
    if isinstance(kwargs, dict):
        kwargs.setdefault('socket_timeout', seconds)


def cmd_web(cfg, args):
    """Serve the dashboard until SIGINT or SIGTERM."""
    token = args.token or os.environ.get('MPQUEUE_WEB_TOKEN') or None
    host = args.host or '127.0.0.1'
    args.port = 8080 if args.port is None else args.port
    if token is not None and (len(token.strip()) < _WEB_TOKEN_MIN or
                              len(set(token)) < _WEB_TOKEN_DISTINCT or token != token.strip()):
        raise UserError('the dashboard token must be at least %d characters long, with at '
                        'least %d different ones and no spaces around it, got %d: make one with '
                        'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
                        % (_WEB_TOKEN_MIN, _WEB_TOKEN_DISTINCT, len(token)))
    if not token and not _is_loopback(host):
        raise UserError('refusing to serve the dashboard on %s without a token: pass --token '
                        '(or set $MPQUEUE_WEB_TOKEN), or keep --host 127.0.0.1' % host)
    if not 0 <= args.port <= 65535:
        raise UserError('--port must be from 0 to 65535, got %r' % args.port)
    _bound_broker_waits(cfg['basics']['driver'], WEB_BROKER_TIMEOUT)
    server = _WebServer((host, args.port), cfg, token, args.read_only)
    return server.run('mpqueue dashboard on %s (broker %s%s%s); Ctrl-C to stop' % (
        server.url('/'), server.driver.address, ', read-only' if args.read_only else '',
        ', token required' if token else ''))


# -- the commands and their options ---------------------------------------------

#: The options a command may take, by name: their flags and argparse settings.
#: ``--config``, ``--verbose`` and ``--help`` go with every command.
OPTIONS = {
    'daemon': (('-d', '--daemon'), {'action': 'store_true',
                                    'help': 'run the pool in the background'}),
    'queue': (('-q', '--queue'), {'help': 'the queue to act on'}),
    'id': (('--id',), {'help': 'a job id'}),
    'json': (('--json',), {'action': 'store_true', 'help': 'machine-readable output'}),
    'all': (('--all',), {'action': 'store_true',
                         'help': 'every pool that sends heartbeats to the broker'}),
    'watch': (('--watch',), {'action': 'store_true', 'help': 'redraw every --interval'}),
    'interval': (('--interval',), {'type': float, 'metavar': 'SECONDS',
                                   'help': 'with --watch: seconds between frames (default 1)'}),
    'count': (('--count',), {'type': int, 'metavar': 'N',
                             'help': 'with --watch: stop after N frames; queue:jobs: jobs a '
                                     'page (default %d)' % QUEUED_PAGE}),
    'state': (('--state',), {'help': 'queue:jobs: waiting (default) or delayed'}),
    'cursor': (('--cursor',), {'help': 'queue:jobs: the page after the one that printed it'}),
    'serve': (('--serve',), {'type': int, 'metavar': 'PORT',
                             'help': 'serve on http://127.0.0.1:PORT/metrics (0: any free port)'}),
    'host': (('--host',), {'help': 'web: the address to listen on (default 127.0.0.1; '
                                   'others need a token)'}),
    'port': (('--port',), {'type': int, 'help': 'web: the port to listen on (default 8080; '
                                                '0: any free port)'}),
    'read_only': (('--read-only',), {'action': 'store_true',
                                     'help': 'web: show everything, allow no action'}),
    'token': (('--token',), {'help': 'web: every request needs this token '
                                     '(default $MPQUEUE_WEB_TOKEN)'}),
}

#: Every command: its name, the function that runs it (with the validated
#: config and the parsed arguments), the options it takes, and what it does.
COMMANDS = [
    ('list', None, (), 'list the commands'),
    ('worker:start', cmd_start, ('daemon',), 'start the pool (-d: in the background)'),
    ('worker:stop', cmd_stop, (), 'stop the pool gracefully (workers finish their job)'),
    ('worker:restart', cmd_restart, ('daemon',),
     'stop, then start again (reloads the config; -d: in the background)'),
    ('worker:reload', cmd_reload, (),
     'replace every worker after its current job (reloads code, not config)'),
    ('worker:status', cmd_worker_status, ('json', 'all'),
     'one line per process: queue, type, pid, state, job, done, RSS, uptime (--all: every pool)'),
    ('queue:status', cmd_queue_status, ('queue', 'json', 'watch', 'interval', 'count'),
     'all / waiting / working / failed / over per queue [--queue Q] (--watch: live)'),
    ('queue:failed', cmd_queue_failed, ('queue', 'json'),
     'failed jobs with their info and errors --queue Q'),
    ('queue:jobs', cmd_queue_jobs, ('queue', 'state', 'count', 'cursor', 'json'),
     'jobs that wait to start, a page at a time --queue Q [--state waiting|delayed] '
     '[--count N] [--cursor C]'),
    ('queue:retry', cmd_queue_retry, ('queue', 'id'), 'put failed jobs back --queue Q [--id ID]'),
    ('queue:clean', cmd_queue_clean, ('queue',),
     'empty a queue [--queue Q] (all queues without --queue)'),
    ('queue:pause', cmd_queue_pause, ('queue',),
     'stop every pool starting the jobs of a queue --queue Q (running jobs finish)'),
    ('queue:resume', cmd_queue_resume, ('queue',), 'start the jobs of a paused queue again '
     '--queue Q'),
    ('job:status', cmd_job_status, ('queue', 'id', 'json'),
     'state, times, attempts, errors and result of one job --queue Q --id ID'),
    ('job:cancel', cmd_job_cancel, ('queue', 'id'),
     'cancel one job (a running one is stopped) --queue Q --id ID'),
    ('schedule:list', cmd_schedule_list, ('queue', 'json'),
     'the schedules: expression, last and next tick, last job and its state [--queue Q]'),
    ('limit:list', cmd_limit_list, ('queue', 'json'),
     'the limits in use: definition, running and waiting jobs per name [--queue Q]'),
    ('metrics', cmd_metrics, ('queue', 'serve'),
     'Prometheus metrics of the queues and pools (--serve PORT: over HTTP)'),
    ('web', cmd_web, ('host', 'port', 'read_only', 'token'),
     'the dashboard in a browser [--host H] [--port P] [--read-only] [--token T]'),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):       # one line, not argparse's usage block
        raise UsageError('%s (see "%s -h")' % (message, self.prog))


def _parser(prog=None):
    p = _Parser(
        prog=prog or _program(), add_help=False,
        description='mpqueue: a multi-process job queue.',
        epilog='commands:\n' + '\n'.join('  %-16s %s' % (name, text)
                                         for name, _, _, text in COMMANDS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('command', nargs='?', default='list')
    p.add_argument('-h', '--help', action='store_true', help='show this help')
    p.add_argument('-c', '--config',
                   help='the config: a .py file defining `config`, FILE.py:NAME, or module:NAME')
    for flags, settings in OPTIONS.values():
        p.add_argument(*flags, **settings)
    p.add_argument('-v', '--verbose', action='store_true', help='tracebacks on errors')
    return p


def _check_options(command, takes, args):
    """Refuse an option the command does not take (``queue:clean --id X``
    would otherwise empty the whole queue)."""
    for name, (flags, _) in OPTIONS.items():
        if getattr(args, name) not in (None, False) and name not in takes:
            raise UsageError('%s does not take %s (it takes: %s)' % (
                command, flags[-1], ', '.join(OPTIONS[t][0][-1] for t in takes) or
                'no option but --config'))
    if (args.interval is not None or args.count is not None and 'state' not in takes) \
            and not args.watch:
        raise UsageError('--interval and --count go with --watch')
    if args.interval is None:
        args.interval = 1.0


def main(argv=None, config=None):
    """Run one command; returns (and, from the console script, exits with) its code."""
    return _main(sys.argv[1:] if argv is None else argv, config)


def _main(argv, config, prog=None, default=None):
    """``main``, as ``prog`` (in messages), and with the config ``default``
    (a spec, as --config takes, and where it comes from) when no --config
    is given."""
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(exc)
    try:
        code = _run(parser, args, config, default)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:         # stdout closed early, as by `| head -1`: a quiet exit
        _discard_stdout()
        return EXIT_PIPE
    except (UserError, mpqueue.MPQueueError, OSError) as exc:
        if args.verbose:
            raise
        return _fail(exc)


def _run(parser, args, config, default=None):
    if args.help or args.command in ('list', 'help'):
        sys.stdout.write(parser.format_help())      # print_help() hides a broken pipe
        return 0
    for name, handler, takes, _ in COMMANDS:
        if name == args.command and handler is not None:
            break
    else:
        raise UsageError('unknown command %r (try "%s list")' % (args.command, parser.prog))
    _check_options(name, takes, args)
    if config is not None:
        cfg = mpqueue.configure(config)
    else:
        config, spec, origin = _load_config(*(
            (args.config,) if args.config or not default else default))
        try:
            cfg = mpqueue.configure(config)
        except mpqueue.ConfigError as exc:      # say which file holds the mistake
            raise UserError('in config %r: %s' % (spec, _one_line(exc))) from exc
        if origin and not (config.get('basics') or {}).get('app'):
            # what names the application: the directory of its config
            cfg['basics']['app'] = os.path.dirname(os.path.abspath(origin))
    return handler(cfg, args) or 0


def _fail(exc):
    """Print ``exc`` as the one line of an error; its exit code."""
    try:
        sys.stdout.flush()
    except OSError:                 # the output cannot be written (a full disk...)
        _discard_stdout()
    print('mpqueue: error: %s' % _one_line(exc), file=sys.stderr)
    return exc.code if isinstance(exc, UserError) else 1


def _discard_stdout():
    """Point stdout at /dev/null, so the interpreter's last flush of what is
    left in its buffer does not fail again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


# -- the same commands from Django's manage.py and Flask's flask ------------------
#
# ``python manage.py mpqueue COMMAND`` and ``flask mpqueue COMMAND`` run every
# command above in a process whose framework is set up (Django's settings
# and apps, the Flask app and its app context).  The config: --config, else
# the framework's setting MPQUEUE_CONFIG (a dict, or what --config takes),
# else $MPQUEUE_CONFIG, else the module mpqueue_config (beside manage.py, or
# the Flask app).  Django and Flask are imported when DjangoCommand or
# flask_group is first asked for, never by ``import mpqueue_cli``.

#: The config of ``manage.py mpqueue`` and ``flask mpqueue`` when neither
#: --config, nor the setting MPQUEUE_CONFIG, nor $MPQUEUE_CONFIG names one.
FRAMEWORK_CONFIG = 'mpqueue_config'


def framework_main(argv, setting, prog):
    """Run one command for a framework's command line; its exit code.

    :param argv: the command and its options, e.g. ``['worker:start', '-d']``.
    :param setting: the framework's MPQUEUE_CONFIG: a config dict, a spec as
        --config takes, or None.
    :param prog: the command as the user typed it, for messages.
    """
    if isinstance(setting, dict):
        if any(a in ('-c', '--config') or a.startswith('--config=') for a in argv):
            return _main(argv, None, prog)
        return _main(argv, setting, prog)
    if setting:
        default = (setting, 'from the setting MPQUEUE_CONFIG')
    elif os.environ.get('MPQUEUE_CONFIG'):
        default = (os.environ['MPQUEUE_CONFIG'], 'from $MPQUEUE_CONFIG')
    else:
        default = (FRAMEWORK_CONFIG, 'the default: the module mpqueue_config')
    return _main(argv, None, prog, default)


def _django_command():
    """``DjangoCommand``: a Django management command that runs the commands."""
    from django.core.management.base import BaseCommand, CommandError

    class DjangoCommand(BaseCommand):
        """``python manage.py mpqueue COMMAND [options]``.  A project exposes it
        with one line in ``<app>/management/commands/mpqueue.py``::

            from mpqueue_cli import DjangoCommand as Command

        Before a pool starts (worker:start, worker:restart) it checks that the
        database has every migration (``check_migrations``): the jobs would
        fail on tables that do not exist yet."""

        help = 'Runs an mpqueue command (mpqueue list: which) on this project.'
        check_migrations = True

        def create_parser(self, prog_name, subcommand, **kwargs):
            self.prog = '%s %s' % (_program(), subcommand)
            return super().create_parser(prog_name, subcommand, **kwargs)

        def add_arguments(self, parser):
            parser.add_argument('args', nargs=argparse.REMAINDER,
                                help='an mpqueue command and its options, e.g. worker:start -d')

        def handle(self, *args, **options):
            from django.conf import settings
            from django.db import DEFAULT_DB_ALIAS, connections
            from django.db.migrations.executor import MigrationExecutor

            if self.check_migrations and args and args[0] in ('worker:start', 'worker:restart'):
                executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
                if executor.migration_plan(executor.loader.graph.leaf_nodes()):
                    raise CommandError('the database has unapplied migrations: run '
                                       '"python manage.py migrate" first')
            code = framework_main(list(args), getattr(settings, 'MPQUEUE_CONFIG', None),
                                  getattr(self, 'prog', 'python manage.py mpqueue'))
            if code:
                sys.exit(code)

    return DjangoCommand


def _flask_group():
    """``flask_group``: a click group of every command, for ``app.cli``."""
    import click
    from flask import current_app
    from flask.cli import with_appcontext

    @click.group('mpqueue', help="mpqueue's commands on this app's config (the setting "
                 'MPQUEUE_CONFIG, else $MPQUEUE_CONFIG, else the module mpqueue_config).')
    def group():
        pass

    def command(name, text):
        @with_appcontext
        def run(args):
            code = framework_main([name] + list(args), current_app.config.get('MPQUEUE_CONFIG'),
                                  'flask mpqueue')
            click.get_current_context().exit(code)
        return click.Command(
            name, callback=run, help=text, short_help=text, add_help_option=False,
            params=[click.Argument(['args'], nargs=-1, type=click.UNPROCESSED)],
            context_settings={'ignore_unknown_options': True})

    for name, _, _, text in COMMANDS:
        group.add_command(command(name, text))
    return group


_FRAMEWORK_ENTRIES = {'DjangoCommand': _django_command, 'flask_group': _flask_group}


def __getattr__(name):
    """``DjangoCommand`` and ``flask_group``, made when first asked for."""
    if name not in _FRAMEWORK_ENTRIES:
        raise AttributeError('module %r has no attribute %r' % (__name__, name))
    value = globals()[name] = _FRAMEWORK_ENTRIES[name]()
    return value


###############################################################################
# The dashboard's page, served by `mpqueue web`: its HTML, CSS and JS, and the
# login form.  Fields in {{double braces}} are filled in, escaped, by
# _web_render.  The script puts every string that comes from the broker into
# the page as text (text nodes and attributes, never innerHTML), and the
# Content-Security-Policy allows no inline script.
###############################################################################

_WEB_ASSETS = {
    'index.html': r'''<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{{csrf_token}}">
<meta name="mpq-settings" content="{{settings}}">
<title>mpqueue</title>
<link rel="icon" href="favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="app.css">
<script src="app.js" defer></script>
</head>
<body>
<header class="top">
  <div class="bar">
    <a class="brand" href="#queues"><img class="logo" src="favicon.svg" alt="">mpqueue</a>
    <span class="broker" title="The broker this dashboard reads">{{broker}}</span>
    <span id="read-only" class="badge muted" hidden>read-only</span>
    <form id="search" class="search" role="search">
      <input id="search-text" type="search" placeholder="Job id or key, or error text"
             aria-label="Find a job by id or unique key, or failed jobs by their text"
             autocomplete="off" spellcheck="false">
    </form>
    <span class="spacer"></span>
    <span id="summary" class="summary"></span>
    <span id="live" class="live">connecting&hellip;</span>
    <form id="logout" method="post" action="logout" hidden>
      <input type="hidden" name="csrf_token" value="{{csrf_token}}">
      <button type="submit" class="link">Sign out</button>
    </form>
  </div>
  <nav aria-label="Views"><ul id="nav"></ul></nav>
</header>

<div id="banner" class="banner" role="alert" hidden></div>

<main id="main">
  <noscript><p class="unavailable">This dashboard needs JavaScript.</p></noscript>
</main>

<div id="toast" class="toast" role="status" aria-live="polite" hidden></div>
<footer>mpqueue {{version}} &middot; live by server-sent events, else refreshed every 2 s</footer>
</body>
</html>
''',
    'login.html': r'''<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in &middot; mpqueue</title>
<link rel="icon" href="favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="app.css">
</head>
<body class="login-page">
<main>
  <form class="card login" method="post" action="login">
    <h1><img class="logo" src="favicon.svg" alt="">mpqueue</h1>
    <p class="sub">This dashboard needs its token.</p>
    <p id="login-error" class="error" role="alert">{{error}}</p>
    <label for="token">Token</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required
           autofocus>
    <input type="hidden" name="csrf_token" value="{{csrf_token}}">
    <button type="submit" class="btn primary">Sign in</button>
  </form>
</main>
</body>
</html>
''',
    'app.css': r''':root {
  --bg: #f4f6f9;
  --card: #ffffff;
  --ink: #18212f;
  --muted: #667085;
  --faint: #98a2b3;
  --line: #e4e7ec;
  --head: #101828;
  --head-ink: #e4e7ec;
  --accent: #2563eb;
  --done: #0e9f6e;
  --failed: #d92d20;
  --warn: #b54708;
  --radius: 10px;
  color-scheme: light;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Liberation Sans", sans-serif;
  font-size: 14px;
  line-height: 1.45;
  color: var(--ink);
  background: var(--bg);
}
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: flex; flex-direction: column; }
[hidden] { display: none !important; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre, .mono, .broker, summary { font-family: ui-monospace, "SFMono-Regular", Menlo,
  Consolas, "Liberation Mono", "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; }
:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }

/* -- header ---------------------------------------------------------------- */
.top { background: var(--head); color: var(--head-ink); }
.bar, .top nav ul, main, footer { max-width: 1240px; margin: 0 auto; padding-left: 24px;
  padding-right: 24px; }
.bar { display: flex; align-items: center; gap: 14px; flex-wrap: wrap; padding-top: 12px;
  padding-bottom: 6px; }
.brand { display: flex; align-items: center; gap: 8px; color: #fff; font-weight: 700;
  font-size: 17px; letter-spacing: -.01em; }
.brand:hover { text-decoration: none; }
.logo { width: 22px; height: 22px; display: inline-block; }
.broker { color: #98a2b3; overflow-wrap: anywhere; }
.spacer { flex: 1; }
.summary { color: #cbd5e1; font-size: 13px; }
.live { font-size: 13px; color: #cbd5e1; display: inline-flex; align-items: center; gap: 6px;
  font-variant-numeric: tabular-nums; }
.live::before { content: ""; width: 8px; height: 8px; border-radius: 50%;
  background: var(--faint); }
.live.ok::before { background: #32d583; box-shadow: 0 0 0 3px rgba(50, 213, 131, .2); }
.live.bad::before { background: #f97066; box-shadow: 0 0 0 3px rgba(249, 112, 102, .25); }
.top .link { color: #cbd5e1; }
.search input { width: 270px; background: #1d2939; border-color: #475467; color: #fff; }
.search input::placeholder { color: #98a2b3; }
.top nav ul { list-style: none; display: flex; gap: 4px; margin: 0 auto; padding-top: 4px;
  padding-bottom: 0; overflow-x: auto; }
.top nav a { display: block; padding: 9px 14px 10px; color: #cbd5e1; font-weight: 500;
  border-bottom: 3px solid transparent; white-space: nowrap; }
.top nav a:hover { color: #fff; text-decoration: none; }
.top nav a[aria-current="page"] { color: #fff; border-bottom-color: #60a5fa; }
.count { display: inline-block; min-width: 20px; padding: 0 6px; border-radius: 10px;
  background: var(--failed); color: #fff; font-size: 11.5px; font-weight: 600;
  text-align: center; line-height: 18px; }
.count:empty { display: none; }

/* -- banner, toast --------------------------------------------------------- */
.banner { max-width: 1240px; margin: 16px auto 0; width: calc(100% - 48px); padding: 12px 16px;
  border-radius: var(--radius); background: #fef3f2; border: 1px solid #fecdca;
  color: #912018; display: flex; gap: 10px; flex-wrap: wrap; align-items: baseline; }
.banner .when { color: #b42318; opacity: .8; }
.toast { position: fixed; right: 20px; bottom: 20px; max-width: min(460px, calc(100% - 40px));
  padding: 11px 16px; border-radius: 8px; background: var(--head); color: #fff;
  box-shadow: 0 8px 24px rgba(16, 24, 40, .25); overflow-wrap: anywhere; }
.toast.error { background: #912018; }

/* -- layout ------------------------------------------------------------------ */
main { flex: 1; width: 100%; padding-top: 20px; padding-bottom: 32px; }
main.stale-data .card { opacity: .55; }
.head { display: flex; align-items: baseline; gap: 6px 18px; flex-wrap: wrap; margin: 4px 0 14px; }
h1 { font-size: 22px; margin: 0; letter-spacing: -.015em; }
h2 { font-size: 15px; margin: 0; }
.sub { margin: 0; color: var(--muted); }
.tools { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; margin-left: auto; }
#failed-tools { display: flex; gap: 6px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: var(--radius);
  box-shadow: 0 1px 2px rgba(16, 24, 40, .05); margin-bottom: 18px; }
.card-head { display: flex; align-items: center; gap: 10px 20px; flex-wrap: wrap;
  padding: 14px 18px 4px; }
.scroll { overflow-x: auto; }
footer { width: 100%; color: var(--faint); font-size: 12px; padding-bottom: 18px; }
.empty, .unavailable { margin: 0; padding: 28px 18px; text-align: center; color: var(--muted); }

/* -- tables ------------------------------------------------------------------ */
table.data { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
.data th, .data td { padding: 10px 14px; border-bottom: 1px solid var(--line);
  text-align: left; vertical-align: top; }
.data tbody tr:last-child > * { border-bottom: 0; }
.data thead th, dl.facts dt, .job-card h3 { font-size: 11.5px; font-weight: 600;
  letter-spacing: .04em; text-transform: uppercase; color: var(--muted); }
.data thead th { background: #f9fafb; white-space: nowrap; }
.data tbody th { font-weight: 600; }
.data tbody tr:hover > * { background: #fafbfc; }
.data .num { text-align: right; white-space: nowrap; }
.data td.num { font-size: 14.5px; }
.zero { color: var(--faint); }
.bad { color: var(--failed); font-weight: 600; }
.bad a { color: inherit; }
.warn { color: var(--warn); font-weight: 600; }
tr.stale > * { background: #fffaeb; }
#queues-table tbody th, #queues-table thead tr:last-child th:first-child {
  position: sticky; left: 0; background: var(--card); z-index: 1; }
#queues-table thead tr:last-child th:first-child { background: #f9fafb; }
.group-start > * { border-top: 1px solid var(--line); }

/* -- badges, buttons, fields --------------------------------------------------- */
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
  font-weight: 600; line-height: 20px; white-space: nowrap; background: #f2f4f7; color: #344054; }
.badge.muted { background: #344054; color: #e4e7ec; }
.badge.running, .badge.done { background: #ecfdf3; color: #067647; }
.badge.stopping, .badge.delayed, .badge.reserved { background: #fffaeb; color: #b54708; }
.badge.stale, .badge.failed, .badge.timeout { background: #fef3f2; color: #b42318; }
.badge.waiting { background: #eff8ff; color: #175cd3; }
.badge.working { background: #f4f3ff; color: #5925dc; }
.badge.cancelled { background: #f2f4f7; color: #475467; }
.badge.blocked { background: #fdf2fa; color: #c11574; }
.badge.paused { background: #fffaeb; color: #b54708; }
.btn { font: inherit; font-weight: 600; font-size: 13px; padding: 6px 12px; border-radius: 7px;
  border: 1px solid #d0d5dd; background: #fff; color: #344054; cursor: pointer;
  white-space: nowrap; }
.btn:hover { background: #f9fafb; }
.btn:disabled { opacity: .5; cursor: default; }
.btn.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
.btn.primary:hover { background: #1d4ed8; }
.btn.danger { color: #b42318; border-color: #fda29b; }
.btn.danger:hover { background: #fef3f2; }
.link { font: inherit; background: none; border: 0; padding: 0; color: var(--accent);
  cursor: pointer; }
.field { display: inline-flex; align-items: center; gap: 8px; color: var(--muted);
  font-weight: 500; }
select, input { font: inherit; color: var(--ink); padding: 6px 10px; border: 1px solid #d0d5dd;
  border-radius: 7px; background: #fff; min-width: 0; }
input { font-family: ui-monospace, Menlo, Consolas, "Liberation Mono", monospace; }

/* -- chart --------------------------------------------------------------------- */
.legend { list-style: none; display: flex; gap: 18px; margin: 0 0 0 auto; padding: 0;
  color: var(--muted); font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 12px; height: 3px; border-radius: 2px;
  vertical-align: middle; margin-right: 6px; }
.legend .done .swatch { background: var(--done); }
.legend .failed .swatch { background: var(--failed); }
.chart { padding: 4px 8px 0 4px; min-height: 230px; }
.chart svg { display: block; width: 100%; height: auto; overflow: visible; }
.chart .grid { stroke: #eef0f3; stroke-width: 1; }
.chart .baseline { stroke: #d0d5dd; stroke-width: 1; }
.chart .axis { fill: var(--faint); font-size: 11px; font-variant-numeric: tabular-nums; }
.chart .line { fill: none; stroke-width: 2; stroke-linejoin: round; stroke-linecap: round; }
.chart .series-done { stroke: var(--done); }
.chart .series-failed { stroke: var(--failed); }
.chart .area-done, .chart .dot-done { fill: var(--done); }
.chart .area-done { opacity: .09; stroke: none; }
.chart .dot-failed { fill: var(--failed); }
.chart .waiting { fill: var(--muted); font-size: 13px; }
.note { margin: 0; padding: 2px 18px 14px; color: var(--muted); font-size: 12.5px; }

/* -- failed jobs, job -------------------------------------------------------------- */
table.failed-jobs { table-layout: fixed; min-width: 760px; }
.failed-jobs col.c-job { width: 26%; }
.failed-jobs col.c-attempts { width: 104px; }
.failed-jobs col.c-failed { width: 112px; }
.failed-jobs col.c-actions { width: 172px; }
.failed-jobs .name { font-weight: 600; overflow-wrap: anywhere; }
.failed-jobs .id { color: var(--muted); overflow-wrap: anywhere; }
.failed-jobs td.actions { white-space: nowrap; }
.failed-jobs td.actions .btn + .btn { margin-left: 6px; }
details { border: 1px solid var(--line); border-radius: 7px; background: #fcfcfd; }
details + details { margin-top: 6px; }
summary { cursor: pointer; padding: 6px 10px; overflow-wrap: anywhere; color: #912018; }
summary .n { color: var(--faint); margin-right: 6px; }
details pre { margin: 0; padding: 10px 12px; border-top: 1px solid var(--line); overflow-x: auto;
  white-space: pre; max-height: 420px; color: #344054; background: #fff;
  border-radius: 0 0 7px 7px; }
.pager { display: flex; align-items: center; gap: 14px; padding: 10px 16px;
  border-top: 1px solid var(--line); color: var(--muted); }
.job-card { padding: 18px; }
.job-title { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; margin-bottom: 14px; }
.job-title h2 { font-size: 17px; overflow-wrap: anywhere; }
.job-title .btn { margin-left: auto; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));
  gap: 14px 24px; margin: 0 0 16px; }
dl.facts div { min-width: 0; }
dl.facts dd { margin: 2px 0 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
dl.facts.relatives { grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); }
ul.relatives { margin: 0; padding: 0; list-style: none; max-height: 240px; overflow-y: auto; }
ul.relatives li { padding: 1px 0; }
dl.facts progress { width: 96px; vertical-align: middle; margin-right: 6px; }
.job-card h3 { font-size: 13px; margin: 16px 0 8px; }
pre.result { margin: 0; padding: 10px 12px; border: 1px solid var(--line); border-radius: 7px;
  background: #fcfcfd; overflow-x: auto; white-space: pre-wrap; overflow-wrap: anywhere; }

/* -- login ------------------------------------------------------------------------- */
.login-page main { display: flex; align-items: center; justify-content: center; }
form.login { width: 100%; max-width: 360px; padding: 28px; display: flex; flex-direction: column;
  gap: 10px; }
form.login h1 { display: flex; align-items: center; gap: 10px; }
form.login label { font-weight: 600; margin-top: 6px; }
form.login .btn { margin-top: 8px; padding: 9px; }
.error { margin: 0; color: var(--failed); font-weight: 600; }
.error:empty { display: none; }

/* -- narrow windows ------------------------------------------------------------------ */
@media (max-width: 720px) {
  .bar, .top nav ul, main, footer { padding-left: 12px; padding-right: 12px; }
  .banner { width: calc(100% - 24px); }
  .summary { display: none; }
  .data th, .data td { padding: 8px 10px; }
  .legend { margin-left: 0; }
  .tools { margin-left: 0; }
}
''',
    'app.js': r'''// The mpqueue dashboard.  Everything that comes from the broker is put into
// the page as text (text nodes, attributes), never parsed as HTML.
'use strict';

(function () {
  const REFRESH_MS = 2000;          // one round of API calls every 2 s, without events
  const QUIET_MS = 10000;           // and with them: ages and the chart's right edge move
  const FETCH_TIMEOUT_MS = 8000;    // the server gives up on the broker after 3 s
  const WINDOW_S = 15 * 60;         // the chart's time span
  const RATE_SPAN_S = 10;           // a rate is taken over about this many seconds
  const GAP_S = 60;                 // samples further apart than this leave a gap
  const PAGE_SIZE = 50;             // failed jobs, waiting jobs per page
  const RELATIVES_SHOWN = 100;      // a job's parents, children: as many as the API looks up
  // each view: its tab (none: the search box opens it), its title and what it shows
  const VIEWS = {
    queues: ['Queues', 'Queues', 'Jobs in each state now; totals since the last clean.'],
    fleet: ['Fleet', 'Fleet', 'Every pool whose heartbeat the broker holds. A pool that missed ' +
            'its last heartbeats is marked stale; it drops off once its heartbeat expires.'],
    queued: ['Waiting', 'Waiting jobs', 'Jobs that have not started: waiting ones in the order ' +
             'they will start, delayed ones soonest due first.'],
    limits: ['Limits', 'Limits', 'Each limit name defined or in use: the definition it matched, ' +
             'the jobs holding a slot (reserved or working) and the jobs waiting for one.'],
    failed: ['Failed', 'Failed jobs', ''],
    job: ['Job', 'Job', ''],            // (its box says how to find one)
    search: [null, 'Search', 'In every queue; ASCII letters match in either case.'],
    schedules: ['Schedules', 'Schedules', 'Periodic jobs: each tick pushes exactly one job.'],
  };
  // what a view's address holds after its name: #failed/Q/OFFSET/AFTER/MATCH, ...
  const ADDRESS = {queued: ['queue', 'state', 'cursor'], limits: ['queue'], job: ['queue', 'id'],
                   failed: ['queue', 'offset', 'after', 'match'], search: ['text']};
  const PAGING = ['offset', 'after', 'cursor'];     // a new place shows its first page
  const UNFINISHED = ['waiting', 'delayed', 'reserved', 'working', 'blocked'];
  const QUEUE_COLUMNS = ['Queue', 'Waiting', 'Delayed', 'Reserved', 'Working', 'Failed',
                         'Blocked', 'Cancelled', 'Expired', 'Oldest waiting', 'Pushed', 'Done',
                         'Done/s', 'Failed/s', 'Paused'];
  const FLEET_COLUMNS = ['Pool', 'Host', 'PID', 'State', 'Started', 'Last seen', 'Queue',
                         'Workers', 'Busy', 'Idle', 'Done'];

  const $ = (id) => document.getElementById(id);
  const meta = (name) => document.querySelector('meta[name="' + name + '"]').content;
  const enc = encodeURIComponent;
  const CSRF = meta('csrf-token');
  // the server's settings: {queues, read_only, signed_in, stale_seconds}
  const {queues: QUEUES, read_only: READ_ONLY, signed_in: SIGNED_IN,
         stale_seconds: STALE_S} = JSON.parse(meta('mpq-settings'));

  const state = {
    view: 'queues',
    queues: null,                 // the last /api/queues
    samples: new Map(),           // queue -> [{t, done, failed}] taken by this page
    history: new Map(),           // queue -> the broker's samples (mpqueue.history())
    chartQueue: QUEUES[0],        // (a config has one queue at least)
    // each view's place (ADDRESS) and `key`: what it shows, to redraw only what changed
    failed: {queue: QUEUES[0], offset: 0, after: '', match: '', key: ''},
    queued: {queue: QUEUES[0], state: 'waiting', cursor: '', key: ''},
    limits: {queue: QUEUES[0], key: ''},
    job: {queue: QUEUES[0], id: '', key: ''},
    schedules: {key: ''},
    search: {text: '', key: ''},
    open: new Set(),              // error <details> the user opened: 'id:index'
    lastUpdate: null,
    pushed: false,                // server-sent events come: no poll every 2 s
  };

  // -- DOM: elements and text nodes only -------------------------------------

  const el = (tag, attrs, children) => fill(document.createElement(tag), attrs, children);
  const svg = (tag, attrs, children) => fill(
    document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);

  function fill(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {     // arrays nest; null, undefined and false are none
    for (const child of [].concat(children)) {
      if (Array.isArray(child)) append(node, child);
      else if (child !== null && child !== undefined && child !== false) {
        node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
  }

  // -- formatting ----------------------------------------------------------------

  const NUMBER = new Intl.NumberFormat('en-US');
  const pad = (n) => String(n).padStart(2, '0');

  const fmtInt = (n) => n === null || n === undefined ? '\u2014' : NUMBER.format(n);
  // 0.4 -> '40 %', 0.123 -> '12.3 %'
  const fmtPercent = (fraction) => NUMBER.format(Math.round(fraction * 1000) / 10) + ' %';

  function metaList(meta) {           // a job's progress meta, as text: rows 4, stage load
    return Object.entries(meta).map(([name, value], i) => [i ? ', ' : '',
      el('span', {class: 'mono'}, name), ' ',
      typeof value === 'string' ? value : JSON.stringify(value)]);
  }

  function retryPolicy(policy) {
    // seconds, a list of seconds, or a backoff: {first, factor, max, jitter}
    if (policy === undefined || policy === null) return null;
    if (Array.isArray(policy)) return policy.join(', ') + ' s';
    if (typeof policy === 'object') {
      return 'backoff: ' + policy.first + ' s \u00d7 ' + policy.factor + ', at most ' +
        policy.max + ' s, \u00b1' + Math.round(policy.jitter * 100) + '%';
    }
    return policy + ' s';
  }

  function fmtRate(r) {
    if (r === null || r === undefined || !isFinite(r)) return '\u2014';
    return r >= 100 ? NUMBER.format(Math.round(r)) : r.toFixed(1);
  }

  function fmtAge(s) {
    if (s === null || s === undefined || !isFinite(s)) return '\u2014';
    s = Number(s);
    if (s < 10) return s.toFixed(1) + ' s';
    s = Math.round(s);
    if (s < 60) return s + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + pad(s % 60) + ' s';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + pad(m % 60) + ' min';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }

  function fmtClock(t) {
    const d = new Date(t * 1000);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }

  function timeCell(t) {           // today's as the time of day, others with their date
    const d = new Date(Number(t) * 1000);
    if (!t || isNaN(d)) return '\u2014';
    return el('time', {datetime: d.toISOString(), title: d.toString()}, (
      d.toDateString() === new Date().toDateString() ? '' : d.getFullYear() + '-' +
      pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ') + fmtClock(t));
  }

  function headRow(titles, numeric) {
    // a table's row of column titles; those in `numeric` align right, as their numbers do
    return el('tr', {}, titles.map((h) => el('th', {scope: 'col',
                                                   class: numeric.includes(h) ? 'num' : null}, h)));
  }

  function numCell(value, name, extra) {
    const cls = 'num' + (value === 0 ? ' zero' : '') + (extra ? ' ' + extra : '');
    return el('td', {class: cls, 'data-col': name}, fmtInt(value));
  }

  function dataTable(name, caption, head, numeric, rows, cls) {
    // table #NAME-table (its body #NAME-body) that scrolls sideways in its card: a caption
    // for screen readers, the titles `head` (those in `numeric` align right), the rows
    return el('div', {class: 'scroll'}, el('table', {class: 'data ' + (cls || ''),
                                                     id: name + '-table'}, [
      el('caption', {class: 'sr-only'}, caption),
      el('colgroup', {}, head.map((h) => el('col', {class: 'c-' + h.toLowerCase()}))),
      el('thead', {}, headRow(head, numeric)), el('tbody', {id: name + '-body'}, rows)]));
  }

  // a box that has nothing to show says why
  const say = (box, text) => box.replaceChildren(el('p', {class: 'empty'}, text));

  // -- the API -----------------------------------------------------------------------

  // an answer of the API that is not ok (status 0: the dashboard server did not answer)
  const apiError = (status, message) => Object.assign(new Error(message), {status: status});

  async function api(path, method) {
    let response, body;
    try {
      response = await fetch(path, {
        method: method || 'GET', credentials: 'same-origin', cache: 'no-store',
        signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), headers: Object.assign(
          {'Accept': 'application/json'}, method === 'POST' ? {'X-CSRF-Token': CSRF} : {})});
      body = await response.json().catch(() => null);
    } catch (err) {
      throw apiError(0, err.name === 'TimeoutError'
        ? 'the dashboard server did not answer within ' + FETCH_TIMEOUT_MS / 1000 + ' s'
        : 'the dashboard server cannot be reached');
    }
    if (response.status === 401) {
      window.location.assign('login');
      throw apiError(401, 'signed out');
    }
    if (!response.ok) {
      throw apiError(response.status, (body && body.error) || 'HTTP ' + response.status);
    }
    return body;
  }

  async function fresh(view, path) {
    // the answer to `path` for a view, or null while it is what the view shows already
    const data = await api(path), key = path + '\n' + JSON.stringify(data);
    if (key === state[view].key) return null;
    state[view].key = key;
    return data;
  }

  // -- refreshing ----------------------------------------------------------------------

  let timer = null, running = false, again = false;

  async function tick() {
    if (running) { again = true; return; }
    running = true;
    clearTimeout(timer);
    const results = [];
    try {
      results.push(...await Promise.allSettled([loadQueues(), loadFleet()]));
      results.push(...await Promise.allSettled([loadView()]));
    } finally {
      running = false;
      showHealth(results.filter((r) => r.status === 'rejected').map((r) => r.reason));
      if (again) { again = false; tick(); } else timer = setTimeout(tick, state.pushed ? QUIET_MS
                                                                      : REFRESH_MS);
    }
  }

  function showHealth(errors) {
    const server = errors.find((e) => e.status === 0);
    const broker = errors.find((e) => e.status === 503);
    const other = errors.find((e) => e.status !== 401 && e !== server && e !== broker);
    const problem = server || broker || other;
    const live = $('live');
    if (!problem) {
      state.lastUpdate = Date.now() / 1000;
      $('banner').hidden = true;
      $('main').classList.remove('stale-data');
      live.className = 'live ok';
      live.textContent = 'Live \u00b7 ' + fmtClock(state.lastUpdate);
      live.dataset.mode = state.pushed ? 'events' : 'poll';     // (the footer says both)
      return;
    }
    $('banner').replaceChildren(
      el('strong', {}, server ? 'Dashboard server unreachable' : broker ? 'Broker unreachable'
        : 'Error'), el('span', {}, problem.message), el('span', {class: 'when'}, (
        state.lastUpdate ? 'Showing data from ' + fmtClock(state.lastUpdate) + '; t' : 'T') +
        'rying again every 2 s.'));
    $('banner').hidden = false;
    $('main').classList.toggle('stale-data', Boolean(server || broker));
    live.className = 'live bad';
    live.textContent = server || broker ? 'Offline' : 'Error';
    if (problem.status === undefined) console.error(problem);     // not the API's
  }

  let toastTimer = null;

  function toast(text, error) {
    const box = $('toast');
    box.textContent = text;
    box.className = 'toast' + (error ? ' error' : '');
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, error ? 8000 : 4000);
  }

  function loadView() {
    const load = {queued: loadQueued, limits: loadLimits, failed: loadFailed, job: loadJob,
                  schedules: loadSchedules, search: loadSearch}[state.view];
    return load ? load() : null;
  }

  // -- routing: #VIEW and then its place (ADDRESS), each part URI-encoded

  function route() {
    let parts;
    try {
      parts = window.location.hash.replace(/^#/, '').split('/').map(decodeURIComponent);
    } catch (err) {
      parts = [];
    }
    const view = state.view = VIEWS[parts[0]] ? parts[0] : 'queues';
    if (ADDRESS[view] && (parts[1] || view === 'job' || view === 'search')) {
      ADDRESS[view].forEach((name, i) => {       // a view's queue stays when none is given
        if (name !== 'queue' || parts[i + 1]) state[view][name] = parts[i + 1] || '';
      });
      state[view].key = '';
    }
    state.failed.offset = Math.max(0, parseInt(state.failed.offset, 10) || 0);
    if (state.queued.state !== 'delayed') state.queued.state = 'waiting';
    $('failed-match').value = state.failed.match;
    $('search-text').value = state.search.text;
    for (const name in VIEWS) $('view-' + name).hidden = name !== view;
    for (const link of document.querySelectorAll('.top nav a')) {
      link.setAttribute('aria-current', link.dataset.view === view ? 'page' : 'false');
    }
    document.title = VIEWS[view][1] + ' \u00b7 mpqueue';
    fillSelects();
    listen();
    tick();
  }

  function place(view, changes) {
    // the address of the view's place now, with `changes` (a new place: its first page)
    return ('#' + view + '/' + ADDRESS[view].map((name) => enc(name in changes ? changes[name]
      : PAGING.includes(name) ? '' : state[view][name] || '')).join('/')).replace(/\/+$/, '');
  }

  function go(hash) {
    if (window.location.hash === hash) route();
    else window.location.hash = hash;
  }

  function fillSelects() {           // the pickers show their views' places
    for (const select of document.querySelectorAll('select[data-queue-of]')) {
      const of = select.dataset.queueOf;
      select.value = of === 'chart' ? state.chartQueue : state[of].queue;
    }
    $('queued-state').value = state.queued.state;
  }

  function queuePicker(view, onchange) {      // view: its place; 'chart': the chart's queue
    return el('label', {class: 'field'}, ['Queue ', el('select', {
      id: view + '-queue', 'data-queue-of': view,
      onchange: onchange || ((e) => go(place(view, {queue: e.target.value})))},
      QUEUES.map((name) => el('option', {value: name}, name)))]);
  }

  function buildPage() {
    // the tabs, and each view's section: its title, tools and what it shows, and its box
    const tools = {
      queued: [queuePicker('queued'), el('label', {class: 'field'}, ['State ', el('select', {
        id: 'queued-state', onchange: (e) => go(place('queued', {state: e.target.value}))},
        ['waiting', 'delayed'].map((s) => el('option', {value: s}, s)))])],
      limits: [queuePicker('limits')],
      failed: [queuePicker('failed'), el('form', {id: 'failed-filter', onsubmit: (e) => {
        e.preventDefault();
        go(place('failed', {match: $('failed-match').value.trim()}));
      }}, el('label', {class: 'field'}, ['Containing ', el('input', {
        id: 'failed-match', type: 'search', placeholder: 'name, key or error', autocomplete: 'off',
        spellcheck: 'false'})])), el('span', {id: 'failed-tools'})],
    };
    $('nav').replaceChildren(...Object.entries(VIEWS).filter(([, v]) => v[0]).map(([view, v]) =>
      el('li', {}, el('a', {href: '#' + view, 'data-view': view}, [v[0], view === 'failed'
        ? [' ', el('span', {id: 'failed-count', class: 'count'})] : null]))));
    $('main').append(...Object.entries(VIEWS).map(([view, [, title, sub]]) => el('section', {
      id: 'view-' + view, class: 'view', 'aria-labelledby': 'h-' + view, hidden: true}, [
      el('div', {class: 'head'}, [el('h1', {id: 'h-' + view}, title), tools[view]
        ? el('div', {class: 'tools'}, tools[view]) : sub && el('p', {class: 'sub'}, sub)]),
      tools[view] && sub ? el('p', {class: 'sub'}, sub) : null,
      el('div', {id: view + '-box', class: ['job', 'search'].includes(view) ? '' : 'card'}),
      view === 'queues' ? el('div', {class: 'card chart-card'}, [
        el('div', {class: 'card-head'}, [
          el('h2', {id: 'h-chart'}, 'Throughput, last 15 minutes'),
          queuePicker('chart', (e) => {
            state.chartQueue = e.target.value;
            renderChart();
            tick();
          }),
          el('ul', {class: 'legend'}, ['done', 'failed'].map((key) => el('li', {class: key}, [
            el('span', {class: 'swatch', 'aria-hidden': 'true'}), key + '/s'])))]),
        el('div', {id: 'chart', class: 'chart'}), el('p', {id: 'chart-note', class: 'note'},
          'Rates from the counters the broker samples about every 10 s, and from this ' +
          'page\'s own samples since the last of them.')])
        : null])));
  }

  // -- queues ----------------------------------------------------------------------------

  async function loadQueues() {
    const queues = await api('api/queues');
    const now = Date.now() / 1000;
    state.queues = queues;
    for (const q of queues) {
      const list = state.samples.get(q.name) || [];
      list.push({t: now, done: q.done, failed: q.failed_total});
      while (list.length && list[0].t < now - WINDOW_S - RATE_SPAN_S) list.shift();
      state.samples.set(q.name, list);
    }
    try {
      state.history.set(state.chartQueue, await api('api/queues/' + enc(state.chartQueue) +
                                                    '/history'));
    } finally {
      renderQueues();
      renderChart();
      const failed = queues.reduce((sum, q) => sum + q.failed, 0);
      $('failed-count').textContent = failed ? fmtInt(failed) : '';
    }
  }

  function samplesOf(queue) {
    // The broker's history, then this page's own samples taken since its
    // last point: the chart's right edge moves as the page refreshes.
    const local = state.samples.get(queue) || [];
    const broker = state.history.get(queue) || [];
    const last = broker.length ? broker[broker.length - 1].t : -Infinity;
    return broker.concat(local.filter((s) => s.t > last));
  }

  function rates(samples) {
    // Per-second rates of the counters over a trailing span of about
    // RATE_SPAN_S; {gap: true} where samples are far apart or a counter
    // went back (the queue was cleaned).
    const out = [];
    let j = 0;
    for (let i = 1; i < samples.length; i++) {
      const s = samples[i], prev = samples[i - 1];
      if (s.t - prev.t > GAP_S || s.done < prev.done || s.failed < prev.failed) {
        out.push({gap: true});
        j = i;
        continue;
      }
      while (j + 1 < i && s.t - samples[j + 1].t >= RATE_SPAN_S) j++;
      const p = samples[j], dt = s.t - p.t;
      if (dt > 0) {
        out.push({t: s.t, done: (s.done - p.done) / dt, failed: (s.failed - p.failed) / dt});
      }
    }
    return out;
  }

  function latestRate(queue) {
    const list = rates(samplesOf(queue));
    const last = list[list.length - 1];
    return last && !last.gap ? last : null;
  }

  function renderQueues() {
    const rows = state.queues.map((q) => {
      const rate = latestRate(q.name);
      const linked = (col, href, cls) => q[col]       // a count not 0: a link to its jobs
        ? el('td', {class: 'num ' + cls, 'data-col': col}, el('a', {
          href: href, title: 'Show the ' + col + ' jobs of ' + q.name}, fmtInt(q[col])))
        : numCell(q[col], col);
      const queuedCell = (col) => linked(col, '#queued/' + enc(q.name) + '/' + col, '');
      const age = q.waiting ? q.oldest_waiting_seconds : null;
      return el('tr', {'data-queue': q.name}, [
        el('th', {scope: 'row'}, q.name),
        queuedCell('waiting'), queuedCell('delayed'),
        numCell(q.reserved, 'reserved'), numCell(q.working, 'working'),
        linked('failed', '#failed/' + enc(q.name), 'bad'),
        numCell(q.blocked, 'blocked'), numCell(q.cancelled, 'cancelled'),
        numCell(q.expired, 'expired'),
        el('td', {class: 'num' + (age === null || age === undefined ? ' zero'
                                  : age > 60 ? ' warn' : ''),
                  'data-col': 'oldest_waiting_seconds'}, fmtAge(age)),
        numCell(q.pushed, 'pushed'), numCell(q.done, 'done'),
        el('td', {class: 'num', 'data-col': 'done_rate'}, fmtRate(rate && rate.done)),
        el('td', {class: 'num' + (rate && rate.failed > 0 ? ' bad' : ''),
                  'data-col': 'failed_rate'}, fmtRate(rate && rate.failed)),
        pausedCell(q),
      ]);
    });
    $('queues-box').replaceChildren(dataTable('queues', 'Jobs per queue and state', QUEUE_COLUMNS,
                                              QUEUE_COLUMNS.slice(1), rows));
  }

  function pausedCell(q) {
    // a badge while the queue is paused, and the button that flips it
    const verb = q.paused ? 'Resume' : 'Pause';
    const button = !READ_ONLY && actionButton(
      verb, verb + ' queue ' + q.name, 'api/queues/' + enc(q.name) + '/' + verb.toLowerCase(),
      q.paused ? null : 'Pause queue ' + q.name + '? No pool starts its jobs until it is ' +
      'resumed; running jobs finish.', () => 'Queue ' + q.name + ' ' + verb.toLowerCase() + 'd',
      !q.paused);
    return el('td', {'data-col': 'paused', 'data-paused': q.paused ? 'true' : 'false'}, [
      q.paused ? el('span', {class: 'badge paused'}, 'paused') : null,
      q.paused && button ? ' ' : null, button]);
  }

  function niceCeil(value) {
    if (!(value > 0)) return 1;
    const e = Math.pow(10, Math.floor(Math.log10(value)));
    // tops whose quarters are round numbers: the chart has four grid lines
    for (const f of [1, 1.2, 1.6, 2, 2.4, 3.2, 4, 6, 8, 10]) if (f * e >= value) return f * e;
    return 10 * e;
  }

  function renderChart() {
    const box = $('chart');
    const queue = state.chartQueue;
    const now = Date.now() / 1000, start = now - WINDOW_S;
    const points = rates(samplesOf(queue)).filter((p) => p.gap || p.t >= start);
    const width = Math.max(300, Math.round(box.clientWidth || 900) - 12), height = 230;
    const m = {left: 52, right: 18, top: 12, bottom: 26};
    const pw = width - m.left - m.right, ph = height - m.top - m.bottom;
    let max = 0;
    for (const p of points) if (!p.gap) max = Math.max(max, p.done, p.failed);
    const top = niceCeil(max * 1.1);
    const X = (t) => (m.left + (t - start) / WINDOW_S * pw).toFixed(1);
    const Y = (v) => (m.top + ph - v / top * ph).toFixed(1);
    const parts = [svg('title', {id: 'chart-title'},
      'done/s and failed/s of queue ' + queue + ' over the last 15 minutes')];
    for (let k = 0; k <= 4; k++) {
      const v = top * k / 4, y = Y(v);
      parts.push(svg('line', {class: k ? 'grid' : 'baseline', x1: m.left, x2: width - m.right,
                              y1: y, y2: y}));
      const label = (v >= 100 ? NUMBER.format(Math.round(v)) : String(Number(v.toFixed(2)))) +
        '/s';
      parts.push(svg('text', {class: 'axis', x: m.left - 8, y: Number(y) + 4,
                              'text-anchor': 'end'}, label));
    }
    const step = pw < 500 ? 300 : 180;
    for (let t = Math.ceil(start / step) * step; t <= now; t += step) {
      const d = new Date(t * 1000);
      parts.push(svg('text', {class: 'axis', x: X(t), y: height - 6, 'text-anchor': 'middle'},
                     pad(d.getHours()) + ':' + pad(d.getMinutes())));
    }
    const drawn = [[]];       // the runs of points between gaps
    for (const p of points) {
      if (p.gap) drawn.push([]);
      else drawn[drawn.length - 1].push(p);
    }
    const runs = drawn.filter((s) => s.length), n = points.filter((p) => !p.gap).length;
    const path = (s, key) => s.map((p) => X(p.t) + ',' + Y(p[key])).join('L');
    if (n) {
      parts.push(svg('path', {class: 'area-done', d: runs.map((s) => 'M' + X(s[0].t) + ',' +
        Y(0) + 'L' + path(s, 'done') + 'L' + X(s[s.length - 1].t) + ',' + Y(0) + 'Z').join('')}));
    }
    for (const key of ['done', 'failed']) {
      parts.push(svg('path', {class: 'line series-' + key, 'data-points': n,
                              d: runs.map((s) => 'M' + path(s, key)).join('') || 'M0,0'}));
      const p = n && runs[runs.length - 1][runs[runs.length - 1].length - 1];
      if (p) {
        parts.push(svg('circle', {class: 'dot-' + key, cx: X(p.t), cy: Y(p[key]), r: 3.5},
                       svg('title', {}, key + '/s ' + fmtRate(p[key]) + ' at ' + fmtClock(p.t))));
      }
    }
    if (!n) {
      parts.push(svg('text', {class: 'waiting', x: m.left + pw / 2, y: m.top + ph / 2,
                              'text-anchor': 'middle'},
                     'Collecting: the first rate needs two samples'));
    }
    box.replaceChildren(svg('svg', {viewBox: '0 0 ' + width + ' ' + height, width: width,
                                    height: height, role: 'img',
                                    'aria-labelledby': 'chart-title',
                                    'data-queue': queue || ''}, parts));
  }

  // -- fleet ----------------------------------------------------------------------------------

  async function loadFleet() {
    const pools = await api('api/fleet'), rows = [];
    for (const pool of pools) {
      try {
        fleetRows(pool, rows);
      } catch (err) {     // one heartbeat of another version (or garbage): the others still show
        rows.push(el('tr', {class: 'stale group-start', 'data-pool': String(pool && pool.name)},
                     el('td', {colspan: 11}, 'A heartbeat that cannot be shown: ' + err.message)));
      }
    }
    if (!pools.length) say($('fleet-box'), 'No pool has sent a heartbeat to this broker lately.');
    else {
      $('fleet-box').replaceChildren(dataTable('fleet', 'Pools and their workers per queue',
        FLEET_COLUMNS, ['PID', 'Last seen', 'Workers', 'Busy', 'Idle', 'Done'], rows));
    }
    const queues = pools.flatMap((p) => Object.values((p && p.queues) || {}));
    const sum = (key) => queues.reduce((n, q) => n + (Number(q && q[key]) || 0), 0);
    $('summary').textContent = pools.length ? pools.length + (pools.length === 1 ? ' pool'
      : ' pools') + ' \u00b7 ' + sum('busy') + ' of ' + sum('workers') + ' workers busy'
      : 'no pool running';
  }

  function fleetRows(pool, rows) {
    // the rows of one pool (its own cells span its queues' rows), added to rows once all
    // are made
    const queues = Object.entries(pool.queues || {}).sort((a, b) => a[0] < b[0] ? -1 : 1);
    const stale = pool.age > STALE_S;
    const head = [
      el('th', {scope: 'row'}, pool.name), el('td', {}, pool.host),
      el('td', {class: 'num'}, pool.pid),
      el('td', {'data-col': 'state'}, stale
        ? el('span', {class: 'badge stale', title: 'no heartbeat for ' + fmtAge(pool.age)}, 'stale')
        : el('span', {class: 'badge ' + (pool.state === 'running' ? 'running' : 'stopping')},
             pool.state || '?')),
      el('td', {}, timeCell(pool.started)),
      el('td', {class: 'num' + (stale ? ' bad' : '')}, fmtAge(pool.age) + ' ago')];
    for (const cell of head) cell.rowSpan = Math.max(1, queues.length);
    const attrs = {class: stale ? 'stale' : '', 'data-pool': pool.name,
                   'data-stale': String(stale)};
    const out = queues.length ? queues.map(([name, q], i) => el('tr', attrs, [
      i ? null : head, el('td', {'data-col': 'queue'}, name),
      ['workers', 'busy', 'idle', 'done'].map((col) => numCell(q[col], col))]))
      : [el('tr', attrs, [head, el('td', {colspan: 5}, '\u2014')])];
    out[0].classList.add('group-start');
    rows.push(...out);
  }

  // -- failed jobs -------------------------------------------------------------------------------

  function lastLine(text) {
    const line = String(text).split('\n').map((s) => s.trim()).filter(Boolean).pop() || '(empty)';
    return line.length > 200 ? line.slice(0, 199) + '\u2026' : line;
  }

  function errorList(job) {
    const errors = job.error_info || [];
    if (!errors.length) return el('span', {class: 'zero'}, 'no error recorded');
    return errors.map((text, i) => {
      const key = job.id + ':' + i;       // (one the user opened stays open as the page redraws)
      return el('details', {open: state.open.has(key), 'data-error': i, ontoggle: (e) =>
        state.open[e.target.open ? 'add' : 'delete'](key)}, [
        el('summary', {}, [el('span', {class: 'n'}, '#' + (i + 1)), lastLine(text)]),
        el('pre', {}, text)]);
    });
  }

  function actionButton(label, description, path, question, done, danger) {
    // a button (its data-action: its label) that POSTs `path` as act() does
    return el('button', {type: 'button', class: 'btn' + (danger ? ' danger' : ''),
                         'data-action': label.toLowerCase().replace(' ', '-'),
                         'aria-label': description, title: description,
                         onclick: (e) => act(e.currentTarget, path, question, done)}, label);
  }

  async function act(button, path, question, done) {
    // POST an action; `question` (or what the function `question` returns: false stops
    // it) is asked first; what `done(answer)` returns is said
    if (READ_ONLY) return;
    if (button) button.disabled = true;
    try {
      if (typeof question === 'function') question = await question();
      if (question === false || (question && !window.confirm(question))) return;
      toast(done(await api(path, 'POST')));
    } catch (err) {
      toast(err.message, true);       // (and the refresh below shows the banner)
    } finally {
      if (button) button.disabled = false;
      state.failed.key = state.job.key = state.search.key = '';
      tick();
    }
  }

  function bulkButton(verb, queue, match) {
    // retry (or delete) every failed job of `queue` (that contains `match`): the question
    // says how many, counted first
    const base = 'api/queues/' + enc(queue) + '/failed', what = match
      ? " matching '" + match + "'" : ' of queue ' + queue, done = {retry: 'retried',
                                                                    delete: 'deleted'}[verb];
    const title = verb[0].toUpperCase() + verb.slice(1) + (match ? '' : ' all');
    return actionButton(title + (match ? ' matching' : ''), title + ' the failed jobs' + what,
                        base + '/' + verb + (match ? '?match=' + enc(match) : ''), async () => {
      const page = await api(base + '?count=1' + (match ? '&match=' + enc(match) : ''));
      const n = match ? page.matched : page.total;
      if (!n) toast('No failed job' + what);
      return Boolean(n) && title + ' ' + fmtInt(n) + ' failed job' + (n === 1 ? '' : 's') +
        what + '?' + (verb === 'delete' ? ' This cannot be undone.' : '');
    }, (r) => fmtInt(r[done]) + ' job(s) of queue ' + queue + ' ' + done, verb === 'delete');
  }

  function jobCell(queue, job) {      // a job's name, and its id linked to its page
    return el('td', {class: 'job'}, [
      el('div', {class: 'name', 'data-col': 'name'}, job.job || '(unnamed)'),
      el('a', {class: 'id mono', href: '#job/' + enc(queue) + '/' + enc(job.id),
               title: 'Look this job up'}, job.id)]);
  }

  function pager(what, text, links) {
    // what the page shows, and links [rel, address] to others (null: none there)
    const labels = {first: '\u2190 First page', prev: '\u2190 Previous', next: 'Next \u2192'};
    return el('nav', {class: 'pager', 'aria-label': 'Pages of ' + what}, [
      el('span', {}, text), el('span', {class: 'spacer'}),
      links.map((l) => l && el('a', {rel: l[0], href: l[1]}, labels[l[0]]))]);
  }

  async function loadFailed() {
    // a page by offset (and the id of the job before it), or, filtered by `match`, by cursor
    const box = $('failed-box'), {queue} = state.failed;
    const {offset, after, match} = state.failed, quoted = "'" + match + "'";
    const base = 'api/queues/' + enc(queue) + '/failed';
    const data = await fresh('failed', base + '?count=' + PAGE_SIZE + (match
      ? '&match=' + enc(match) + (after ? '&cursor=' + enc(after) : '')
      : '&offset=' + offset + (after ? '&after=' + enc(after) : '')));
    if (!data) return;
    if (!match && offset && offset >= data.total) {
      // the page emptied (jobs retried or deleted): show the last one that has jobs
      const last = Math.max(0, Math.floor((data.total - 1) / PAGE_SIZE) * PAGE_SIZE);
      return go(place('failed', {offset: last || ''}));
    }
    $('failed-tools').replaceChildren();
    append($('failed-tools'), !READ_ONLY && data.total && [
      bulkButton('retry', queue, match), match && bulkButton('delete', queue, match)]);
    if (!data.jobs.length) {
      return say(box, match ? 'No failed job of queue ' + queue + ' matches ' + quoted + '.'
        : 'No failed jobs in queue ' + queue + '.');
    }
    const rows = data.jobs.map((job) => {
      const jobPath = 'api/queues/' + enc(queue) + '/failed/' + enc(job.id);
      const name = job.job || '(unnamed)';
      const cells = [
        jobCell(queue, job),
        el('td', {class: 'num', 'data-col': 'attempts',
                  title: 'attempts made; the job allowed ' + ((job.fail_number || 0) + 1)},
           fmtInt(job.exec_number)),
        el('td', {}, [
          el('span', {class: 'badge ' + (job.type === 2 ? 'timeout' : 'failed')},
             job.type === 2 ? 'timeout' : 'error'), el('br'), timeCell(job.fail_time)]),
        el('td', {class: 'errors'}, errorList(job)),
      ];
      if (!READ_ONLY) {
        cells.push(el('td', {class: 'actions'}, ['Retry', 'Delete'].map((verb) => actionButton(
          verb, verb + ' job ' + job.id + ' (' + name + ')', jobPath + '/' + verb.toLowerCase(),
          verb === 'Delete' ? 'Delete failed job ' + job.id + ' (' + name + ')? This cannot ' +
          'be undone.' : null, () => 'Job ' + job.id + (verb === 'Delete' ? ' deleted'
            : ' put back in queue ' + queue), verb === 'Delete'))));
      }
      return el('tr', {'data-job-id': job.id}, cells);
    });
    const head = ['Job', 'Attempts', 'Failed', 'Errors'].concat(READ_ONLY ? [] : ['Actions']);
    const last = offset + data.jobs.length, lastId = data.jobs[data.jobs.length - 1].id;
    const next = match ? data.cursor : last < data.total && lastId;     // the page after
    box.replaceChildren(
      dataTable('failed', 'Failed jobs of queue ' + queue, head, ['Attempts'], rows,
                'failed-jobs'),
      pager('failed jobs', fmtInt(offset + 1) + '\u2013' + fmtInt(last) + ' of ' + (match
        ? fmtInt(data.matched) + ' matching ' + quoted : fmtInt(data.total)), [
        offset && match ? ['first', place('failed', {})] : null,
        offset && !match ? ['prev', place('failed', {offset: offset > PAGE_SIZE
          ? offset - PAGE_SIZE : ''})] : null,
        next ? ['next', place('failed', {offset: last, after: next})] : null]));
  }

  // -- waiting and delayed jobs ---------------------------------------------------------

  async function loadQueued() {
    const {cursor} = state.queued, which = state.queued.state;
    const box = $('queued-box'), {queue} = state.queued;
    const data = await fresh('queued', 'api/queues/' + enc(queue) + '/jobs?state=' + which +
                             '&count=' + PAGE_SIZE + (cursor ? '&cursor=' + enc(cursor) : ''));
    if (!data) return;
    if (!data.jobs.length) {
      return say(box, (cursor ? 'No more ' : 'No ') + which + ' jobs in queue ' + queue + '.');
    }
    const when = which === 'delayed' ? 'due_time' : 'create_time';
    const rows = data.jobs.map((job) => el('tr', {'data-job-id': job.id}, [
      jobCell(queue, job), numCell(job.priority, 'priority'),
      el('td', {'data-col': when}, timeCell(job[when])),
      numCell(job.exec_number, 'attempts'),
      el('td', {'data-col': 'key'}, job.key === null || job.key === undefined ? '\u2014'
                                                                            : job.key)]));
    const head = ['Job', 'Priority', which === 'delayed' ? 'Due' : 'Created', 'Attempts', 'Key'];
    box.replaceChildren(
      dataTable('queued', 'The ' + which + ' jobs of queue ' + queue, head,
                ['Priority', 'Attempts'], rows, 'failed-jobs'),
      pager(which + ' jobs', fmtInt(data.jobs.length) + ' shown of ' + fmtInt(data.total) + ' ' +
            which, [cursor ? ['first', place('queued', {})] : null,
                    data.cursor ? ['next', place('queued', {cursor: data.cursor})] : null]));
  }

  // -- limits ----------------------------------------------------------------------------

  async function loadLimits() {
    const box = $('limits-box'), {queue} = state.limits;
    const data = await fresh('limits', 'api/queues/' + enc(queue) + '/limits');
    if (!data) return;
    if (!data.length) return say(box, 'No limit defined or in use in queue ' + queue + '.');
    const head = ['Name', 'Limit', 'Concurrency', 'Rate', 'Running', 'Waiting'];
    const rows = data.map((r) => el('tr', {'data-limit': r.name}, [
      el('th', {scope: 'row', class: 'mono'}, r.name),
      el('td', {class: r.limit === null ? 'mono zero' : 'mono', 'data-col': 'limit'},
         r.limit === null ? '(undefined)' : r.limit),
      numCell(r.concurrency, 'concurrency', r.concurrency ? '' : 'zero'),
      el('td', {class: 'num' + (r.rate ? '' : ' zero'), 'data-col': 'rate'},
         r.rate ? fmtInt(r.rate) + ' per ' + fmtInt(r.per) + ' s' : '\u2014'),
      numCell(r.running, 'running', r.concurrency && r.running >= r.concurrency ? 'warn' : ''),
      numCell(r.waiting, 'waiting')]));
    box.replaceChildren(dataTable('limits', 'The limits of queue ' + queue, head,
                                  ['Concurrency', 'Rate', 'Running', 'Waiting'], rows));
  }

  // -- a job by id ---------------------------------------------------------------------

  function fact(label, value, col) {
    return el('div', {}, [el('dt', {}, label), el('dd', {'data-col': col || null},
      value === null || value === undefined || value === '' ? '\u2014' : value)]);
  }

  function jobLinks(queue, jobs, total) {
    // [{id, state}] as links to their pages with their states (null: the broker no longer
    // knows the job; undefined: not looked up), then how many of `total` are not shown
    return el('ul', {class: 'relatives'}, [
      jobs.map((r) => el('li', {'data-id': r.id}, [
        el('a', {class: 'mono', href: '#job/' + enc(queue) + '/' + enc(r.id)}, r.id),
        r.state === undefined ? null : ' ',
        r.state === null ? el('span', {class: 'badge', title: 'Its record expired'}, 'unknown')
          : r.state ? el('span', {class: 'badge ' + r.state}, r.state) : null])),
      total > jobs.length ? el('li', {class: 'sub'}, 'and ' + fmtInt(total - jobs.length) +
                                                    ' more') : null]);
  }

  function dependencies(queue, info) {
    // a job's parents, the ones it waits for while blocked, its children not ended
    const parents = info.depends_on || [], children = info.dependents || [];
    if (!parents.length && !children.length) return [];
    const known = new Map((info.parents || []).map((r) => [r.id, r.state]));
    const waiting = Array.isArray(info.waiting_for) ? info.waiting_for : [];
    return [el('h3', {}, 'Dependencies'), el('dl', {class: 'facts relatives'}, [
      parents.length ? fact('Depends on', jobLinks(queue, info.parents || [], parents.length),
                            'depends_on') : null,
      parents.length ? fact('On parent failure', info.on_parent_failure || 'cancel',
                            'on_parent_failure') : null,
      waiting.length ? fact('Waiting for', jobLinks(queue, waiting.slice(0, RELATIVES_SHOWN).map(
        (id) => ({id: id, state: known.get(id)})), waiting.length), 'waiting_for') : null,
      children.length ? fact('Dependents', jobLinks(queue, info.children || [], children.length),
                             'dependents') : null])];
  }

  async function loadJob() {
    const {queue, id} = state.job, box = $('job-box');
    if (!id) return say(box, 'No job chosen: find one with the search box above.');
    let info;
    try {
      info = await fresh('job', 'api/queues/' + enc(queue) + '/jobs/' + enc(id));
    } catch (err) {
      if (err.status !== 404) throw err;
      return box.replaceChildren(el('div', {class: 'card'}, el('p', {class: 'empty'},
                                                             err.message)));
    }
    if (!info) return;
    const cancellable = !READ_ONLY && UNFINISHED.includes(info.state);
    const limitLink = (name) => el('a', {class: 'mono', href: '#limits/' + enc(queue),
                                         title: 'Show the limits of queue ' + queue}, name);
    const attempts = fmtInt(info.exec_number) + ' of ' + fmtInt((info.fail_number || 0) + 1);
    const children = [
      el('div', {class: 'job-title'}, [
        el('h2', {}, info.job || '(unnamed)'),
        el('span', {class: 'badge ' + info.state, 'data-col': 'state'}, info.state),
        cancellable ? actionButton('Cancel', 'Cancel job ' + info.id, 'api/queues/' +
          enc(queue) + '/jobs/' + enc(info.id) + '/cancel', 'Cancel job ' + info.id + ' (' +
          (info.job || '') + ')?', (r) => 'Job ' + info.id + ' cancelled (it was ' + r.state +
          ')', true) : null]),
      el('dl', {class: 'facts'}, [
        fact('Id', el('span', {class: 'mono'}, info.id), 'id'),
        fact('Queue', info.queue),
        fact('Created', timeCell(info.create_time)),
        fact('Started', timeCell(info.start_time)),
        fact('Ended', timeCell(info.end_time)),
        fact('Attempts', attempts, 'attempts'),
        fact('Worker', info.worker_id),
        fact('Timeout', info.timeout ? info.timeout + ' s' : 'none'),
        fact('Retry delay', retryPolicy(info.fail_expire)),
        fact('Failure type', info.state === 'failed'
          ? (info.type === 2 ? 'timeout' : 'error') : null),
        fact('Priority', info.priority),
        fact('Key', info.key),
        info.limit ? fact('Limits', info.limit.map((name, i) => [i ? ', ' : '', limitLink(name)]),
                          'limit') : null,
        typeof info.waiting_for === 'string'      // a limit's name; parents: dependencies()
          ? fact('Waiting for', limitLink(info.waiting_for), 'waiting_for') : null,
        typeof info.progress === 'number' ? fact('Progress', [el('progress', {max: 1,
          value: info.progress}), fmtPercent(info.progress)], 'progress') : null,
        info.meta && Object.keys(info.meta).length
          ? fact('Reported', metaList(info.meta), 'meta') : null,
        info.cancel_time ? fact('Cancelled', [
          timeCell(info.cancel_time), info.cancelled_by ? ' by ' + info.cancelled_by : '']) : null,
      ]),
      dependencies(queue, info),
      el('h3', {}, 'Result'),
      info.result_repr !== null && info.result_repr !== undefined
        ? el('pre', {class: 'result', 'data-col': 'result'}, info.result_repr)
        : el('p', {class: 'sub'}, info.state === 'done' ? 'Not kept (the job has no result_ttl).'
          : 'None yet.'),
    ];
    if ((info.error_info || []).length) {
      children.push(el('h3', {}, 'Errors'), errorList(info));
    }
    box.replaceChildren(el('div', {class: 'card job-card', 'data-job-id': info.id}, children));
  }

  // -- schedules -----------------------------------------------------------------------

  async function loadSchedules() {
    const box = $('schedules-box'), data = await fresh('schedules', 'api/schedules');
    if (!data) return;
    if (!data.length) return say(box, 'No schedule in the config.');
    const head = ['Queue', 'Name', 'Expression', 'Timezone', 'Last tick', 'Next tick',
                  'Last job', 'State', 'Skipped'];
    box.replaceChildren(dataTable('schedules', 'Schedules', head, ['Skipped'], data.map(
      (s) => el('tr', {'data-schedule': s.queue + '/' + s.name}, [
        el('td', {}, s.queue), el('th', {scope: 'row'}, s.name),
        el('td', {class: 'mono'}, s.expression), el('td', {}, s.timezone || 'UTC'),
        el('td', {}, timeCell(s.last_tick)), el('td', {}, timeCell(s.next_tick)),
        el('td', {}, s.last_job_id ? el('a', {class: 'mono', href: '#job/' + enc(s.queue) + '/' +
                                             enc(s.last_job_id)}, s.last_job_id) : '\u2014'),
        el('td', {}, s.last_job_state ? el('span', {class: 'badge ' + s.last_job_state},
                                           s.last_job_state) : '\u2014'),
        numCell(s.skipped, 'skipped')]))));
  }

  // -- search: a job by id or unique key in every queue, failed jobs by text -----------

  async function loadSearch() {
    const {text} = state.search, box = $('search-box'), quoted = "'" + text + "'";
    if (!text) return say(box, 'Type a job id or key, or a text of failed jobs, above.');
    const data = await fresh('search', 'api/search?q=' + enc(text));
    if (!data) return;
    const jobs = data.jobs.map((job) => el('tr', {'data-job-id': job.id}, [
      el('td', {'data-col': 'queue'}, job.queue), jobCell(job.queue, job),
      el('td', {'data-col': 'found_by'}, job.found_by),
      el('td', {'data-col': 'state'}, el('span', {class: 'badge ' + job.state}, job.state))]));
    const failed = data.failed.map((f) => el('tr', {'data-queue': f.queue}, [
      el('td', {'data-col': 'queue'}, f.queue), numCell(f.matched, 'matched'),
      el('td', {}, f.matched ? el('a', {href: '#failed/' + enc(f.queue) + '///' + enc(text)},
                                  'Show them') : '\u2014')]));
    const card = (title, table) => el('div', {class: 'card'}, [
      el('h2', {class: 'card-head'}, title + quoted), table]);
    box.replaceChildren(
      card('Id or unique key ', jobs.length ? dataTable('found', 'Jobs found', ['Queue', 'Job',
                                                        'Found by', 'State'], [], jobs)
        : el('p', {class: 'empty'}, 'No queue has a job with this id or unique key (a key is ' +
             'found while a job holds it: see unique in push()).')),
      card('Failed jobs whose name, key or errors contain ', dataTable(
        'matching', 'Failed jobs that contain the text', ['Queue', 'Matching', ''], ['Matching'],
        failed)));
  }

  // -- live: server-sent events when the server sends them, else a poll every 2 s -----

  let events = null;

  function listen() {
    // the events of what the page shows now (its job's, or every queue's counts): each
    // 'change' refreshes it; after an error it tries again by itself, unless refused (CLOSED)
    const url = new URL('api/events?' + new URLSearchParams(state.view === 'job'
      ? {queue: state.job.queue, id: state.job.id} : {}), window.location.href).href;
    if (!window.EventSource || (events && events.readyState !== 2 && events.url === url)) return;
    if (events) events.close();
    state.pushed = false;
    events = Object.assign(new EventSource(url), {
      onopen: () => { state.pushed = true; }, onmessage: () => tick(),
      onerror: () => { state.pushed = false; tick(); }});
  }

  // -- start ---------------------------------------------------------------------------

  function init() {
    buildPage();
    $('read-only').hidden = !READ_ONLY;
    $('logout').hidden = !SIGNED_IN;
    $('search').addEventListener('submit', (e) => {
      e.preventDefault();
      go('#search/' + enc($('search-text').value.trim()));
    });
    window.addEventListener('hashchange', route);
    let resized = null;         // the chart is drawn again once the window stops changing
    window.addEventListener('resize', () => {
      clearTimeout(resized);
      resized = setTimeout(() => state.queues && renderChart(), 150);
    });
    route();
  }

  init();
}());
''',
    'favicon.svg': r'''<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<rect width="32" height="32" rx="7" fill="#2563eb"/>
<rect x="7" y="8" width="18" height="4" rx="2" fill="#fff"/>
<rect x="7" y="14" width="13" height="4" rx="2" fill="#fff" opacity=".85"/>
<rect x="7" y="20" width="8" height="4" rx="2" fill="#fff" opacity=".7"/>
</svg>
''',
}


if __name__ == '__main__':
    sys.exit(main())
