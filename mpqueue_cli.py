"""The mpqueue command line: ``mpqueue COMMAND [--config PATH] [options]``.

Also ``python -m mpqueue_cli COMMAND`` (wherever mpqueue is installed) and
``python mpqueue_cli.py COMMAND`` (beside a vendored copy).  The config comes
from ``--config`` (a ``.py`` file that defines ``config``, ``FILE.py:NAME``,
or ``module:attr``), else ``$MPQUEUE_CONFIG``, else ``./mpqueue_config.py``.
A script of your own can also call ``mpqueue_cli.main(config=config)``.

The commands are the table ``COMMANDS`` at the end of this file.  They use
only mpqueue's public functions; a mistake the user can fix is one line on
stderr and a non-zero exit code (``--verbose`` shows the traceback).
"""

import argparse
import importlib
import json
import os
import runpy
import signal
import sys
import time

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


def _load_config(spec):
    """Find and load the config: --config, $MPQUEUE_CONFIG, ./mpqueue_config.py.
    Returns the config and where it came from."""
    where = 'from --config'
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
        return _load_config_file(spec, source, attr or 'config', where), spec
    return _load_config_module(spec, source, attr or 'config'), spec


def _load_config_file(spec, path, attr, where):
    if not os.path.isfile(path):
        raise UserError('config file %r (%s) %s; --config takes %s' % (
            path, where, 'is a directory' if os.path.isdir(path) else 'does not exist',
            CONFIG_FORMS))
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        namespace = runpy.run_path(path, run_name='mpqueue_config')
    except Exception as exc:
        raise UserError('config file %r failed to load: %s: %s' % (
            path, type(exc).__name__, _one_line(exc))) from exc
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
        raise UserError('config %r failed to load: %s: %s' % (
            spec, type(exc).__name__, _one_line(exc))) from exc
    return _attribute(spec, module, attr)


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
    _warn_if_broker_down(cfg)
    return 0


def _warn_if_broker_down(cfg):
    """The pool waits for a broker that does not answer (and logs it): say it
    here too, since the log is not on the terminal."""
    try:
        mpqueue.depth(cfg['queue'][0]['name'])
    except mpqueue.DriverError as exc:
        print('mpqueue: warning: %s; the pool keeps trying to reach it (see the log in %s)'
              % (_one_line(exc).rstrip('.'), cfg['log']['path']), file=sys.stderr)


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
    rows = mpqueue.pool_status(cfg)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print('%-16s %-7s %8s %-10s %-24s %7s %8s %-19s %s' % (
        'queue', 'type', 'pid', 'state', 'job', 'done', 'rss_mb', 'started', 'uptime'))
    for r in rows:
        state = r.get('state')
        if r.get('coroutines'):         # busy / all coroutines of a coroutine worker
            state = '%s:%s' % (state, r['coroutines'])
        print('%-16s %-7s %8s %-10s %-24s %7s %8s %-19s %s' % (
            r.get('queue'), r.get('type'), r.get('pid'), state, r.get('job_id') or '-',
            '-' if r.get('done') is None else r['done'],
            '-' if r.get('rss_mb') is None else '%.1f' % r['rss_mb'],
            time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['started']))
            if r.get('started') else '-', _duration(r.get('uptime'))))
    return 0


def cmd_fleet_status(cfg, args):
    pools = mpqueue.fleet()
    if args.json:
        print(json.dumps(pools, indent=1))
        return 0
    if not pools:
        print('no pool has sent a heartbeat to %s in the last %ss' % (
            cfg['basics']['driver'].address, mpqueue.HEARTBEAT_TTL))
        return 0
    line = '%-20s %-20s %8s %-16s %7s %5s %5s %7s %-8s %s'
    print(line % ('pool', 'host', 'pid', 'queue', 'workers', 'busy', 'idle', 'done', 'state',
                  'last seen'))
    for pool in pools:
        for queue, q in sorted(pool['queues'].items()):
            print(line % (pool['name'], pool['host'], pool['pid'], queue, q['workers'], q['busy'],
                          q['idle'], q['done'], pool['state'], '%.1fs ago' % pool['age']))
    return 0


def _duration(seconds):
    if seconds is None:
        return '-'
    seconds = int(seconds)
    return '%dd%02dh%02dm%02ds' % (seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60,
                                   seconds % 60) if seconds >= 86400 else \
        '%02d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60, seconds % 60)


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
    stats = {q: mpqueue.status(q) for q in _queues(cfg, args)}
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    cols = ('all', 'waiting', 'working', 'failed', 'over')
    print('%-20s' % 'queue' + ''.join('%10s' % c for c in cols))
    for q, s in stats.items():
        print('%-20s' % q + ''.join('%10d' % s[c] for c in cols))
    return 0


_DEPTH_COLUMNS = ('waiting', 'delayed', 'reserved', 'working', 'failed')
_RATES = (('done/s', 'done'), ('failed/s', 'failed_total'))


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
    lines = ['mpqueue  %s  %s  every %gs, Ctrl-C to stop' % (
        time.strftime('%Y-%m-%d %H:%M:%S'), address, interval),
        '%-16s' % 'queue' + ''.join('%9s' % c for c in _DEPTH_COLUMNS + tuple(
            label for label, _ in _RATES))]
    for q, depth in depths.items():
        lines.append('%-16s' % q + ''.join('%9d' % depth[c] for c in _DEPTH_COLUMNS) + ''.join(
            '%9s' % ('-' if depth[label] is None else '%.1f' % depth[label])
            for label, _ in _RATES))
    return '\n'.join(lines) + '\n'


def cmd_queue_failed(cfg, args):
    (queue,) = _queues(cfg, args, required=True)
    jobs = mpqueue.failed_jobs(queue, 0, 1000)
    if args.json:
        print(json.dumps(jobs, indent=1, default=str))
        return 0
    if not jobs:
        print('no failed jobs in queue %r' % queue)
    for info in jobs:
        print('== %s  %s  type=%s  attempts=%s  worker=%s' % (
            info['id'], info['job'], 'timeout' if info['type'] == mpqueue.TYPE_TIMEOUT
            else 'normal', info['exec_number'], info['worker_id']))
        for i, err in enumerate(info['error_info'], 1):
            print('-- error %d:\n%s' % (i, err))
    return 0


def cmd_queue_retry(cfg, args):
    (queue,) = _queues(cfg, args, required=True)
    n = mpqueue.retry_failed(queue, args.id)
    if args.id and not n:
        raise UserError('job %r is not in the failed list of queue %r' % (args.id, queue))
    print('%d job(s) of queue %r put back' % (n, queue))
    return 0


def cmd_queue_clean(cfg, args):
    for queue in _queues(cfg, args):
        mpqueue.clean(queue)
        print('queue %r emptied' % queue)
    return 0


# -- metrics -------------------------------------------------------------------


def cmd_metrics(cfg, args):
    queues = _queues(cfg, args)
    if args.serve is None:
        sys.stdout.write(metrics_text(queues))
        return 0
    return _serve_metrics(queues, args.serve)


def metrics_text(queues):
    """The Prometheus text exposition (format 0.0.4) of ``queues`` (names of
    configured queues) and of the pools whose heartbeats the broker holds, on
    the configured broker (call ``mpqueue.configure(config)`` first)."""
    return render_metrics({q: mpqueue.depth(q) for q in queues}, mpqueue.fleet())


def render_metrics(depths, pools):
    """The exposition text of ``depths`` (queue name -> ``mpqueue.depth()``)
    and ``pools`` (``mpqueue.fleet()``)."""
    latest = {}     # a pool restarted within the TTL: its newest heartbeat only
    for pool in pools:
        key = (pool['host'], pool['name'])
        if key not in latest or pool['age'] < latest[key]['age']:
            latest[key] = pool
    pools = [latest[key] for key in sorted(latest)]
    families = [
        ('mpqueue_queue_jobs', 'gauge', 'Jobs in the queue now, by state.',
         [({'queue': q, 'state': s}, d[s]) for q, d in depths.items() for s in _DEPTH_COLUMNS]),
        ('mpqueue_jobs_total', 'counter',
         'Jobs pushed, done and finally failed since the queue was last cleaned.',
         [({'queue': q, 'state': s}, d[key]) for q, d in depths.items()
          for s, key in (('pushed', 'pushed'), ('done', 'done'), ('failed', 'failed_total'))]),
        ('mpqueue_oldest_waiting_seconds', 'gauge',
         'Age of the job at the head of the queue since it was pushed (0: none waits).',
         [({'queue': q}, d['oldest_waiting_seconds']) for q, d in depths.items()]),
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


def _serve_metrics(queues, port):
    """Serve the metrics on http://127.0.0.1:PORT/metrics until SIGINT or SIGTERM."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10        # a client that connects and says nothing is dropped

        def do_GET(self):
            if self.path.split('?')[0] != '/metrics':
                self.send_error(404, 'the metrics are at /metrics')
                return
            try:
                code, body = 200, metrics_text(queues)
            except mpqueue.MPQueueError as exc:
                code, body = 503, 'mpqueue: error: %s\n' % _one_line(exc)
            body = body.encode()
            self.send_response(code)
            self.send_header('Content-Type', 'text/plain; version=0.0.4; charset=utf-8')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    try:
        server = http.server.HTTPServer(('127.0.0.1', port), Handler)
    except (OSError, OverflowError) as exc:
        raise UserError('cannot serve metrics on 127.0.0.1:%s: %s' % (
            port, getattr(exc, 'strerror', None) or exc)) from exc

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    print('serving Prometheus metrics on http://127.0.0.1:%d/metrics (Ctrl-C to stop)'
          % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


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
                             'help': 'with --watch: stop after N frames'}),
    'serve': (('--serve',), {'type': int, 'metavar': 'PORT',
                             'help': 'serve on http://127.0.0.1:PORT/metrics (0: any free port)'}),
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
    ('queue:retry', cmd_queue_retry, ('queue', 'id'), 'put failed jobs back --queue Q [--id ID]'),
    ('queue:clean', cmd_queue_clean, ('queue',),
     'empty a queue [--queue Q] (all queues without --queue)'),
    ('metrics', cmd_metrics, ('queue', 'serve'),
     'Prometheus metrics of the queues and pools (--serve PORT: over HTTP)'),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):       # one line, not argparse's usage block
        raise UsageError('%s (see "%s -h")' % (message, self.prog))


def _parser():
    p = _Parser(
        prog=_program(), add_help=False,
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
    if (args.interval is not None or args.count is not None) and not args.watch:
        raise UsageError('--interval and --count go with --watch')
    if args.interval is None:
        args.interval = 1.0


def main(argv=None, config=None):
    """Run one command; returns (and, from the console script, exits with) its code."""
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        return _fail(exc)
    try:
        code = _run(parser, args, config)
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


def _run(parser, args, config):
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
        config, spec = _load_config(args.config)
        try:
            cfg = mpqueue.configure(config)
        except mpqueue.ConfigError as exc:      # say which file holds the mistake
            raise UserError('in config %r: %s' % (spec, _one_line(exc))) from exc
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


if __name__ == '__main__':
    sys.exit(main())
