r"""mpqueue: a multi-process job queue for Python, in one file.

This file is the whole library.  It depends on ``cloudpickle`` and, for the
Redis driver, ``redis``; everything else is the standard library, so the file
can be copied ("vendored") into a project as it is.

A pool is a tree of processes, all forked from the one that runs
``mpqueue worker:start``::

    manage            mpq:{name}:manage    pid file, signals, restarts masters
     |
     +-- master       mpq:{queue}:master   one per queue: watches the broker,
     |    |                                hands jobs to idle workers, enforces
     |    |                                timeouts, renews leases, recovers
     |    +-- worker  mpq:{queue}:worker   runs jobs, one at a time
     |    +-- worker
     +-- master       ...

A job moves through the broker like this::

    push --> waiting --reserve--> reserved --start--> working --done--> (over)
      \          ^                   |                   |
       \         +---- 0.5 s --------+                   +--error--> delayed (retry)
        +--> delayed --due--> waiting                    +--last error/timeout-->
                                                              fail handlers --> failed

Every transition is one atomic step in the broker (a Lua script for Redis, a
``BEGIN IMMEDIATE`` transaction for SQLite), and a master batches the steps of
many jobs into one round trip.  A running job holds a lease that its master
renews; when a worker dies its master recovers the job at once, and when a
whole server dies any other server's master recovers it once the lease
(``LEASE_SECONDS``) or the job's timeout has passed.  Delivery is therefore
at-least-once.

Sections, in order:  Imports and constants -- Exceptions -- Helpers --
Configuration -- Jobs and serialization -- Drivers (Redis, SQLite) --
Runtime (worker, master, manage) -- Public functions.
"""

###############################################################################
# Imports and constants
###############################################################################

import collections
import errno
import fcntl
import functools
import gc
import importlib
import json
import logging
import os
import pickle
import random
import re
import select
import selectors
import signal
import socket
import struct
import sys
import sysconfig
import threading
import time
import traceback
import types

import cloudpickle

try:  # optional: nicer process names in ps/top
    import setproctitle as _setproctitle
except ImportError:  # pragma: no cover - depends on the environment
    _setproctitle = None

try:  # optional: packs Redis commands in C
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - depends on the environment
    _hiredis_pack = None

__version__ = '0.1.0'

__all__ = [
    'ConfigError', 'DriverError', 'Job', 'MODEL_DISTRIBUTE', 'MODEL_GRAB',
    'MPQueueError', 'RedisDriver', 'SerializationError', 'SqliteDriver',
    'TYPE_NORMAL', 'TYPE_TIMEOUT', 'clean', 'configure', 'delete_failed',
    'failed_jobs', 'push', 'push_many', 'retry_failed', 'status',
]

logger = logging.getLogger('mpqueue')
logger.addHandler(logging.NullHandler())

#: ``job_info['type']`` of a job that failed by raising an exception.
TYPE_NORMAL = 1
#: ``job_info['type']`` of a job that ran past its timeout and was stopped.
TYPE_TIMEOUT = 2

#: The master pops as many jobs as it has idle workers and hands them out.
MODEL_DISTRIBUTE = 'distribute'
#: Each worker pops its own jobs from the broker.
MODEL_GRAB = 'grab'

#: A running job's lease: if nobody renews it for this long, the job's worker
#: (or its whole server) is taken for dead and the job is recovered.
LEASE_SECONDS = 10.0
#: A job handed to a worker but not started within this time goes back to the
#: head of its queue.
RESERVE_SECONDS = 0.5
#: Under load a master gathers job outcomes for at most this long (seconds)
#: before recording them in one broker round trip.
FLUSH_DELAY = 0.002
#: How many times the fail handlers of one job are tried when the worker
#: running them dies, before the job goes to the failed list regardless.
COROUTINE_KILL_GRACE = 0.5     # s after a job's timeout a coroutine worker is killed
HANDLER_ATTEMPTS = 3
#: Every manage process publishes a heartbeat to the broker this often
#: (seconds): its pool's queues with their workers, busy and idle.
HEARTBEAT_SECONDS = 2.0
#: A pool whose last heartbeat is older than this (seconds) is dropped from
#: the fleet (``worker:status --all``): its server stopped or lost the broker.
HEARTBEAT_TTL = 10.0
#: The longest one fleet call may wait for the broker (seconds), so that a
#: broker that does not answer cannot stall a manage process.
FLEET_TIMEOUT = 1.0
_BEAT_ANSWER_WAIT = 0.5     # how long a heartbeat waits for the masters' status

# Exit codes of mpqueue's own processes, read by their parents.
EXIT_OK = 0
EXIT_BOOT_ERROR = 3      # a start hook raised: back off before forking again
EXIT_MEMORY = 4          # over memory_limit after a job: replace at once
EXIT_ORPHANED = 5        # the parent went away

_HOST = socket.gethostname()


# hashlib/hmac (OpenSSL), sqlite3 and asyncio are imported when first needed:
# every process of a pool pays for what it imports, in memory.

def _sha1_hex(text):
    import hashlib
    return hashlib.sha1(text.encode()).hexdigest()


def _sign(secret, data):
    import hashlib
    import hmac
    return hmac.new(secret, data, hashlib.sha256).digest()


def _same_digest(a, b):
    import hmac
    return hmac.compare_digest(a, b)


def _isawaitable(obj):
    return hasattr(type(obj), '__await__')

###############################################################################
# Exceptions
###############################################################################


class MPQueueError(Exception):
    """Root of every error mpqueue raises on purpose."""


class ConfigError(MPQueueError):
    """The configuration is wrong; the message names the key path."""


class DriverError(MPQueueError):
    """The broker could not be reached or refused a command; the message names
    the broker address."""


class SerializationError(MPQueueError):
    """A job could not be pickled, or a stored payload could not be trusted or
    decoded."""


class _StopWorker(BaseException):
    """Raised inside an idle worker to make it exit at once."""


###############################################################################
# Helpers
###############################################################################


def _set_title(title):
    if _setproctitle is not None:
        _setproctitle.setproctitle(title)


def _rss_mb(pid='self'):
    """Resident set size of a process in MB (Linux /proc), or None."""
    try:
        with open('/proc/%s/statm' % pid, 'rb') as f:
            return int(f.read().split()[1]) * _PAGE_SIZE / 1048576.0
    except (OSError, ValueError, IndexError):
        return None


try:
    _PAGE_SIZE = os.sysconf('SC_PAGE_SIZE')
except (ValueError, OSError, AttributeError):  # pragma: no cover
    _PAGE_SIZE = 4096


def _describe_exit(status):
    """A wait status as words, e.g. ``'killed by SIGKILL (perhaps out of memory?)'``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = 'signal %d' % sig
        if sig == signal.SIGKILL:
            return 'killed by SIGKILL (perhaps out of memory?)'
        return 'killed by %s' % name
    code = os.WEXITSTATUS(status)
    return {EXIT_OK: 'exited normally',
            EXIT_BOOT_ERROR: 'exited: could not boot (a start hook raised)',
            EXIT_MEMORY: 'exited: over its memory_limit',
            EXIT_ORPHANED: 'exited: its parent went away'}.get(
                code, 'exited with code %d' % code)


def _fork(target, *args):
    """Fork a child that runs ``target(*args)`` and exits with its return value.

    mpqueue forks with ``os.fork()`` itself, never ``spawn`` or ``forkserver``
    whatever the platform's multiprocessing default is, so that reaping with
    ``waitpid(-1, WNOHANG)`` stays the parent's alone.  Returns the child's pid.
    """
    gc.freeze()     # objects alive now are never collected in the child: fewer copied pages
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = target(*args) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        try:
            logger.exception('process %d crashed', os.getpid())
        except BaseException:
            pass
    finally:
        try:
            logging.shutdown()
        finally:
            os._exit(code)


class _Signals:
    """Signal handlers that only record: the signal number goes into a list and
    a byte into a socketpair whose read end sits in the selector (the pattern
    asyncio and gunicorn use), so the main loop wakes and does the work."""

    def __init__(self, selector, signums, ignore=()):
        self.pending = []
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        selector.register(self._r, selectors.EVENT_READ, self)
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, self._record)
        for signum in ignore:
            signal.signal(signum, signal.SIG_IGN)

    def _record(self, signum, frame):
        self.pending.append(signum)

    def drain(self):
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        signums, self.pending[:] = list(self.pending), []
        return signums

    def close(self):
        signal.set_wakeup_fd(-1)
        self._r.close()
        self._w.close()


def _reset_signals():
    """Child side of a fork: default handlers, no wakeup fd."""
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _is_stdlib_or_installed(module):
    path = getattr(module, '__file__', None)
    if not path:
        return True
    return os.path.realpath(path).startswith(_INSTALL_DIRS)


_INSTALL_DIRS = tuple(sorted({os.path.join(os.path.realpath(p), '') for p in (
    sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
    sysconfig.get_paths().get('stdlib', ''), sysconfig.get_paths().get('purelib', ''),
    sysconfig.get_paths().get('platlib', '')) if p}))


def _forget_user_modules():
    """Drop the user's own modules (those outside the Python installation and
    site-packages) from ``sys.modules`` so that jobs import them anew: this is
    what makes ``worker:reload`` load changed code."""
    for name, module in list(sys.modules.items()):
        if name in ('__main__', __name__, 'mpqueue', 'mpqueue_cli') or module is None:
            continue
        if not _is_stdlib_or_installed(module):
            del sys.modules[name]
    importlib.invalidate_caches()


###############################################################################
# Configuration
###############################################################################

_QUEUE_NAME_RE = re.compile(r'^[A-Za-z0-9_.:-]{1,100}$')
_POOL_NAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,100}$')

_BASICS_DEFAULTS = {
    'name': None, 'pid_path': '/tmp', 'driver': None, 'worker_start_handle': None,
    'secret': None, 'max_payload': 16 * 1024 * 1024, 'stop_grace': 30,
}
_LOG_DEFAULTS = {'path': '/tmp', 'level': logging.INFO, 'driver': None}
_QUEUE_DEFAULTS = {
    'name': None, 'worker_number': 3, 'memory_limit': 128, 'sleep_seconds': 1,
    'timeout': 120, 'fail_number': 3, 'fail_expire': 3, 'fail_handle': None,
    'worker_start_handle': None, 'model': MODEL_DISTRIBUTE, 'coroutine_number': 1,
    'schedule': [],
}

_config = None   # the configuration given to configure(), validated


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(path, value, minimum, integer=False):
    kind = 'an int' if integer else 'a number'
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else _is_number(value)
    if not ok or value < minimum or value != value or value == float('inf'):
        raise ConfigError('%s must be %s >= %s, got %r' % (path, kind, minimum, value))
    return value


def _check_callable(path, value):
    if value is not None and not callable(value):
        raise ConfigError('%s must be callable or None, got %r' % (path, value))
    return value


def _check_keys(path, given, defaults):
    if not isinstance(given, dict):
        raise ConfigError('%s must be a dict, got %r' % (path, given))
    unknown = sorted(set(given) - set(defaults), key=str)
    if unknown:
        raise ConfigError('%s has unknown key %r (known keys: %s)' % (
            path, unknown[0], ', '.join(sorted(defaults))))
    merged = dict(defaults)
    merged.update(given)
    return merged


def _validate(config):
    """Return a validated copy of ``config`` with every default filled in."""
    if not isinstance(config, dict):
        raise ConfigError('config must be a dict, got %r' % (config,))
    unknown = sorted(set(config) - {'basics', 'log', 'queue'}, key=str)
    if unknown:
        raise ConfigError('config has unknown key %r (known keys: basics, log, queue)'
                          % (unknown[0],))
    if 'basics' not in config:
        raise ConfigError('config.basics is required')
    basics = _check_keys('basics', config['basics'], _BASICS_DEFAULTS)
    name = basics['name']
    if not isinstance(name, str) or not _POOL_NAME_RE.match(name):
        raise ConfigError('basics.name must be a non-empty string of letters, digits, '
                          '"_", "." or "-", got %r' % (name,))
    if not isinstance(basics['pid_path'], str) or not basics['pid_path']:
        raise ConfigError('basics.pid_path must be a directory path, got %r' % (basics['pid_path'],))
    _check_callable('basics.worker_start_handle', basics['worker_start_handle'])
    secret = basics['secret']
    if secret is not None:
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise ConfigError('basics.secret must be non-empty bytes or str, got %r' % (secret,))
        basics['secret'] = secret
    _check_number('basics.max_payload', basics['max_payload'], 1, integer=True)
    _check_number('basics.stop_grace', basics['stop_grace'], 0)
    if basics['driver'] is None:
        basics['driver'] = SqliteDriver(os.path.join(basics['pid_path'], name + '.db'))
    elif not isinstance(basics['driver'], _Driver):
        raise ConfigError('basics.driver must be a mpqueue.RedisDriver or mpqueue.SqliteDriver, '
                          'got %r' % (basics['driver'],))

    log = _check_keys('log', config.get('log', {}), _LOG_DEFAULTS)
    if not isinstance(log['path'], str) or not log['path']:
        raise ConfigError('log.path must be a directory path, got %r' % (log['path'],))
    level = log['level']
    if isinstance(level, str) and isinstance(logging.getLevelName(level.upper()), int):
        log['level'] = logging.getLevelName(level.upper())
    elif not (isinstance(level, int) and not isinstance(level, bool)):
        raise ConfigError('log.level must be a logging level such as logging.INFO or "DEBUG", '
                          'got %r' % (level,))
    if log['driver'] is not None and not (isinstance(log['driver'], logging.Handler)
                                          or callable(log['driver'])):
        raise ConfigError('log.driver must be a logging.Handler or a callable returning one, '
                          'got %r' % (log['driver'],))

    queues = config.get('queue')
    if not isinstance(queues, list) or not queues:
        raise ConfigError('config.queue must be a non-empty list of queue dicts, got %r' % (queues,))
    checked, seen = [], set()
    for i, given in enumerate(queues):
        path = 'queue[%d]' % i
        q = _check_keys(path, given, _QUEUE_DEFAULTS)
        if not isinstance(q['name'], str) or not _QUEUE_NAME_RE.match(q['name']):
            raise ConfigError('%s.name must be a non-empty string of letters, digits, "_", ".", '
                              '":" or "-", got %r' % (path, q['name']))
        if q['name'] in seen:
            raise ConfigError('%s.name %r is used by an earlier queue; queue names must be unique'
                              % (path, q['name']))
        seen.add(q['name'])
        _check_number(path + '.worker_number', q['worker_number'], 1, integer=True)
        _check_number(path + '.memory_limit', q['memory_limit'], 0)
        _check_number(path + '.sleep_seconds', q['sleep_seconds'], 0.001)
        _check_number(path + '.timeout', q['timeout'], 0)
        _check_number(path + '.fail_number', q['fail_number'], 0, integer=True)
        _check_number(path + '.fail_expire', q['fail_expire'], 0)
        _check_number(path + '.coroutine_number', q['coroutine_number'], 1, integer=True)
        _check_callable(path + '.fail_handle', q['fail_handle'])
        _check_callable(path + '.worker_start_handle', q['worker_start_handle'])
        if q['model'] not in (MODEL_DISTRIBUTE, MODEL_GRAB):
            raise ConfigError('%s.model must be mpqueue.MODEL_DISTRIBUTE or mpqueue.MODEL_GRAB, '
                              'got %r' % (path, q['model']))
        if q['model'] == MODEL_GRAB and q['coroutine_number'] > 1:
            raise ConfigError('%s.coroutine_number > 1 needs the distribute model; queue %r '
                              'has model %r' % (path, q['name'], q['model']))
        q['schedule'] = _check_schedules(path + '.schedule', q['name'], q['schedule'])
        checked.append(q)
    return {'basics': basics, 'log': log, 'queue': checked}


def configure(config):
    """Validate ``config`` and make it the configuration of this process.

    :param config: the dict described in the README (``basics``, ``log``, ``queue``).
    :returns: the validated config with every default filled in.
    :raises ConfigError: naming the key path and the bad value.
    """
    global _config
    _config = _validate(config)
    return _config


def _get_config():
    if _config is None:
        raise MPQueueError('mpqueue is not configured: call mpqueue.configure(config) first')
    return _config


def _queue_config(name):
    config = _get_config()
    for q in config['queue']:
        if q['name'] == name:
            return q
    raise ConfigError('queue %r is not in the config (configured queues: %s)' % (
        name, ', '.join(q['name'] for q in config['queue'])))


###############################################################################
# Jobs and serialization
###############################################################################


class Job:
    """Base class for jobs that carry their own settings and fail handler.

    Subclass it, set the class attributes you need and write ``handle()``::

        class SendMail(mpqueue.Job):
            timeout = 30          # None: the queue's; 0: no timeout
            fail_number = 5
            fail_expire = 0.5
            def __init__(self, to):
                self.to = to
            def handle(self):
                ...

    Push an instance (pickled with its attributes) or the class itself
    (instantiated with no arguments in the worker).  ``handle`` may be a
    coroutine function.
    """

    timeout = None
    fail_number = None
    fail_expire = None

    def handle(self):
        raise NotImplementedError('%s.handle() is not written' % type(self).__name__)

    def fail_handle(self, job_info, exc):
        """Called once the job has failed for good (after its last retry, or at
        its timeout).  Return anything but ``False`` to skip the queue's
        ``fail_handle``.

        :param job_info: dict with id, queue, create_time, start_time,
            exec_number, worker_id, timeout, fail_number, fail_expire,
            error_info, type and job.
        :param exc: the exception of the last failure (``TimeoutError`` for a
            timeout).
        """
        return False


_IMPORT_PATH_RE = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$')
_MAGIC = b'MPQ1'
_WIRE_VERSION = 1


def _job_name(job):
    """A short, cheap name for a job, shown in logs and by ``queue:failed``."""
    if isinstance(job, str):
        return job
    if isinstance(job, functools.partial):
        return _job_name(job.func)
    if isinstance(job, Job):
        job = type(job)
    name = getattr(job, '__qualname__', None) or type(job).__qualname__
    module = getattr(job, '__module__', None)
    return '%s.%s' % (module, name) if module else name


def _check_job(queue, job):
    """Raise TypeError unless ``job`` is something a worker can run."""
    if isinstance(job, str):
        if not _IMPORT_PATH_RE.match(job):
            raise TypeError('job for queue %r must be a callable, a mpqueue.Job or an import '
                            'path "pkg.module:attr", got the string %r' % (queue, job))
    elif not (callable(job) or isinstance(job, Job)):
        raise TypeError('job for queue %r must be a callable, a mpqueue.Job or an import path '
                        '"pkg.module:attr", got %r' % (queue, job))


_PLAIN = frozenset((int, float, str, bytes, bool, type(None)))


def _by_reference(job, args, kwargs):
    """True when the standard pickle gives the same bytes as cloudpickle (and
    is several times faster): an import path, or a module-level function of an
    importable module, with arguments of plain types."""
    if not (isinstance(job, str) or (type(job) is types.FunctionType and '<' not in
                                     job.__qualname__ and job.__module__ != '__main__'
                                     and job.__module__ in sys.modules)):
        return False
    return all(type(a) in _PLAIN for a in args) and \
        (not kwargs or all(type(v) in _PLAIN for v in kwargs.values()))


def _encode(queue, job, args, kwargs, secret, max_payload):
    """Pickle a job into its wire envelope::

        b'MPQ1' + b'S' + HMAC-SHA256(secret, body) + body     (signed)
        b'MPQ1' + b'U' + body                                  (unsigned)

    where body is a pickled dict ``{'v': 1, 'job': ..., 'args': ..., 'kwargs': ...}``.
    Readers use ``dict.get`` with defaults, so older payloads keep decoding.
    """
    body = {'v': _WIRE_VERSION, 'job': job}
    if args:
        body['args'] = tuple(args)
    if kwargs:
        body['kwargs'] = dict(kwargs)
    try:
        if _by_reference(job, args, kwargs):
            data = pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            data = cloudpickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError('job %s for queue %r cannot be pickled: %s: %s' % (
            _job_name(job), queue, type(exc).__name__, exc)) from exc
    if len(data) > max_payload:
        raise SerializationError('job %s for queue %r is %d bytes, over basics.max_payload (%d)'
                                 % (_job_name(job), queue, len(data), max_payload))
    if secret:
        return b''.join((_MAGIC, b'S', _sign(secret, data), data))
    return b''.join((_MAGIC, b'U', data))


def _decode(payload, secret):
    """Check and unpickle an envelope; return ``(job, args, kwargs)``.

    With a secret, the signature is checked in constant time *before*
    anything is unpickled, and an unsigned payload is refused.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)) or payload[:4] != _MAGIC:
        raise SerializationError('payload is not an mpqueue job (corrupt or foreign data)')
    flag = payload[4:5]
    if flag == b'S':
        mac, data = payload[5:37], payload[37:]
        if secret and not _same_digest(mac, _sign(secret, data)):
            raise SerializationError('payload signature does not match basics.secret '
                                     '(tampered, or signed with another secret); not unpickled')
    elif flag == b'U':
        data = payload[5:]
        if secret:
            raise SerializationError('payload is not signed but basics.secret is set; '
                                     'not unpickled')
    else:
        raise SerializationError('payload has an unknown envelope flag %r' % (flag,))
    try:
        body = pickle.loads(data)
    except Exception as exc:
        raise SerializationError('payload cannot be unpickled: %s: %s' % (
            type(exc).__name__, exc)) from exc
    if not isinstance(body, dict) or 'job' not in body:
        raise SerializationError('payload has no job in it')
    return body['job'], body.get('args', ()), body.get('kwargs') or {}


def _resolve(job):
    """Turn what was pushed into something to call: import paths are imported,
    Job classes instantiated.  Returns ``(callable, job_object_or_None)``."""
    if isinstance(job, str):
        module_name, _, attr = job.partition(':')
        obj = importlib.import_module(module_name)
        for part in attr.split('.'):
            obj = getattr(obj, part)
        job = obj
    if isinstance(job, type) and issubclass(job, Job):
        job = job()
    if isinstance(job, Job):
        return job.handle, job
    return job, None


def _job_setting(name, given, job, qconf):
    """Per-job setting: push argument, else Job attribute, else queue config."""
    if given is not None:
        return given
    if isinstance(job, Job) or (isinstance(job, type) and issubclass(job, Job)):
        value = getattr(job, name, None)
        if value is not None:
            return value
    return qconf[name]


_id_counter = iter(range(1 << 62))


def _new_id():
    """Job ids sort by creation time within a process: 12 hex digits of
    milliseconds, 4 of a per-process counter, then 6 random ones."""
    return '%012x%04x%06x' % (int(time.time() * 1000), next(_id_counter) & 0xffff,
                              random.getrandbits(24))


###############################################################################
# Schedules
###############################################################################

# A queue's ``schedule`` entries push one job per tick.  This section is the
# pure part: when the ticks fall, which ones a check pushes, the id of a tick's
# job, and the checks of the config.  The broker step that moves a schedule's
# last tick and pushes the job in one atomic step calls _Schedule.due().
#
# Ticks are epoch seconds.  ``every: N`` ticks at the multiples of N seconds
# since the epoch (counted in whole milliseconds), so every server computes the
# same ticks.  ``cron`` reads 5 fields as Vixie cron and cronie do: lists,
# ranges and steps (``1,5``, ``1-5``, ``*/15``, ``1-30/5``; ``5/15`` means
# ``5-59/15``), names ``jan``-``dec`` and ``sun``-``sat`` in any case, and 7 for
# Sunday too.  When day-of-month and day-of-week are both restricted (neither
# field starts with ``*``), a day matches if either does.  The fields are read
# in the schedule's time zone.  When clocks spring forward, a local time that
# does not exist runs once, at the first minute after the gap; when they fall
# back, a local time that happens twice runs once, at its first occurrence.
# So ``0 * * * *`` ticks every real hour on the spring day (02:00 and 03:00
# are one instant) and skips the repeated hour in autumn; what must tick every
# real hour uses ``every: 3600``.  datetime and zoneinfo are imported when
# first needed, like hashlib above.

#: ``catch_up='all'`` pushes at most this many missed ticks, the newest ones.
SCHEDULE_CATCH_UP_MAX = 100
#: ``catch_up='none'`` still pushes a tick this many seconds late, so that a
#: pool restarting across a tick (a deploy) does not lose it.
SCHEDULE_GRACE = 60.0

_CRON_FIELDS = (('minute', 0, 59), ('hour', 0, 23), ('day-of-month', 1, 31),
                ('month', 1, 12), ('day-of-week', 0, 7))
_CRON_NAMES = {
    'month': {n: i for i, n in enumerate(
        'jan feb mar apr may jun jul aug sep oct nov dec'.split(), 1)},
    'day-of-week': {n: i for i, n in enumerate('sun mon tue wed thu fri sat'.split())},
}
_CRON_ALIASES = {'@hourly': '0 * * * *', '@daily': '0 0 * * *', '@midnight': '0 0 * * *',
                 '@weekly': '0 0 * * 0', '@monthly': '0 0 1 * *', '@yearly': '0 0 1 1 *',
                 '@annually': '0 0 1 1 *'}
_SCHEDULE_DEFAULTS = {
    'name': None, 'cron': None, 'every': None, 'job': None, 'args': (), 'kwargs': None,
    'timezone': 'UTC', 'catch_up': 'latest', 'overlap': True, 'timeout': None,
    'fail_number': None, 'fail_expire': None, 'result_ttl': None, 'priority': None,
}


def _cron_field(text, name, low, high):
    """The set of values one cron field allows; ValueError names the bad part."""
    names = _CRON_NAMES.get(name, {})
    values = set()
    for part in text.split(','):
        span, slash, step = part.partition('/')
        first, dash, last = span.partition('-')
        bounds = [low, high] if span == '*' else [
            int(v) if v.isdecimal() else names.get(v.lower()) for v in (first, last or first)]
        if None in bounds or (dash and not last):
            raise ValueError('%s field %r is not valid: use *, N or N-M%s, each with an optional '
                             '/STEP, separated by commas'
                             % (name, part, ' or names' if names else ''))
        if slash and (not step.isdecimal() or int(step) < 1):
            raise ValueError('%s field %r has a bad step: use /N with N >= 1' % (name, part))
        if slash and not dash:
            bounds[1] = high                    # 5/15 means 5-59/15
        if not low <= bounds[0] <= high or not low <= bounds[1] <= high:
            raise ValueError('%s field %r out of range %d-%d' % (name, part, low, high))
        if bounds[0] > bounds[1]:
            raise ValueError('%s field %r runs backwards: write the lower end first'
                             % (name, part))
        values.update(range(bounds[0], bounds[1] + 1, int(step) if slash else 1))
    return values


def _month_days(year, month):
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _tick_ms(ts):
    return int(round(ts * 1000))


def _time_zone(name):
    """The tzinfo of an IANA time zone name; 'UTC' needs no tz database."""
    import datetime
    if name == 'UTC':
        return datetime.timezone.utc
    try:
        import zoneinfo
    except ImportError:
        raise ValueError('time zone %r needs Python 3.9 or later (zoneinfo); on this Python '
                         'only "UTC" works' % (name,)) from None
    try:
        return zoneinfo.ZoneInfo(name)
    except (TypeError, ValueError, LookupError, OSError):
        raise ValueError('unknown time zone %r: use an IANA name such as "Europe/Berlin" '
                         '(pip install tzdata where the system has no tz database)'
                         % (name,)) from None


class _Schedule:
    """When one schedule ticks, and which ticks a check pushes.

    :param cron: a 5-field cron expression or an alias such as ``'@daily'``;
        None when ``every`` is given.
    :param every: the period in seconds (>= 1), when ``cron`` is None.
    :param timezone: the IANA time zone that ``cron`` is read in.
    :param catch_up: ``'latest'``, ``'all'`` or ``'none'``; see :meth:`due`.
    :raises ValueError: a bad expression or time zone, or a cron expression
        that matches no date at all (``0 0 30 2 *``).
    """

    def __init__(self, cron=None, every=None, timezone='UTC', catch_up='latest'):
        self.timezone, self.catch_up = timezone, catch_up
        self.tz = _time_zone(timezone)
        if cron is None:
            self.period_ms = _tick_ms(every)
            self.expression = 'every %ss' % (int(every) if every == int(every) else every)
            return
        self.period_ms, self.expression = None, cron
        fields = _CRON_ALIASES.get(cron.strip().lower(), cron).split()
        if len(fields) != 5:
            raise ValueError('%r is not a cron expression: it needs 5 fields (minute hour '
                             'day-of-month month day-of-week) or is one of %s'
                             % (cron, ', '.join(_CRON_ALIASES)))
        minutes, hours, self.days, self.months, weekdays = (
            _cron_field(text, *spec) for text, spec in zip(fields, _CRON_FIELDS))
        self.weekdays = {d % 7 for d in weekdays}
        self.times = tuple(h * 60 + m for h in sorted(hours) for m in sorted(minutes))
        self.either = not fields[2].startswith('*') and not fields[4].startswith('*')
        if self._match(2000, 1, 1, 0, 1) is None:
            raise ValueError('%r never matches: none of its months has such a day' % (cron,))

    @property
    def fingerprint(self):
        """A short hash of what decides the ticks: expression and time zone."""
        return _sha1_hex('%s|%s' % (self.expression, self.timezone))[:12]

    def next_after(self, ts):
        """The first tick strictly after ``ts`` (epoch seconds)."""
        return self._seek(ts, 1)

    def latest(self, now):
        """The last tick at or before ``now`` (epoch seconds)."""
        return self._seek(now, -1)

    def due(self, last, now):
        """The ticks that a check at ``now`` (broker clock) pushes, given the
        schedule's last recorded tick ``last`` (None: it never ticked).

        A schedule seen for the first time pushes nothing for the past.
        Otherwise, of the ticks after ``last`` and at or before ``now``,
        ``'latest'`` pushes the newest; ``'none'`` pushes the newest only if it
        is at most SCHEDULE_GRACE seconds old; ``'all'`` pushes every one,
        oldest first, but at most the newest SCHEDULE_CATCH_UP_MAX (counting
        the rest of a cron schedule takes time in proportion to their number).

        :returns: ``(ticks, new_last, dropped)``: the ticks to push, the tick
            to record as the last (the latest at or before ``now``, never
            earlier than ``last``), and how many ticks ``'all'`` left out.
        """
        newest = self.latest(now)
        if last is None:
            return [], newest, 0
        if newest <= last:
            return [], last, 0
        if self.catch_up == 'latest':
            return [newest], newest, 0
        if self.catch_up == 'none':
            return [newest] if now - newest <= SCHEDULE_GRACE else [], newest, 0
        ticks, tick = [], newest
        while tick > last and len(ticks) < SCHEDULE_CATCH_UP_MAX:
            ticks.append(tick)
            tick = self.latest(tick - 0.001)
        if self.period_ms:
            dropped = max(0, _tick_ms(tick) // self.period_ms - _tick_ms(last) // self.period_ms)
        else:
            dropped = 0
            while tick > last:
                dropped, tick = dropped + 1, self.latest(tick - 0.001)
        return ticks[::-1], newest, dropped

    def _seek(self, ts, step):
        if self.period_ms:
            return (_tick_ms(ts) // self.period_ms + (step > 0)) * self.period_ms / 1000.0
        import datetime
        local = datetime.datetime.fromtimestamp(ts, self.tz)
        if step < 0:    # in the second pass through a repeated hour, all of the first is past
            local = local.replace(tzinfo=None) + (local.replace(fold=0).utcoffset()
                                                  - local.utcoffset())
        wall = (local.year, local.month, local.day, local.hour * 60 + local.minute)
        while True:
            wall = self._match(*wall, step)
            tick = self._instant(wall)
            if (tick > ts) if step > 0 else (tick <= ts):
                return tick
            wall = wall[:3] + (wall[3] + step,)

    def _day_matches(self, year, month, day):
        in_month = day in self.days
        if in_month == self.either:     # OR: a matching day decides; AND: a failing one does
            return in_month
        import datetime
        return (datetime.date(year, month, day).weekday() + 1) % 7 in self.weekdays

    def _match(self, year, month, day, minute, step):
        """The first local wall time ``(year, month, day, minute of the day)``
        that the fields match at or after the given one (``step=1``), or at or
        before it (``step=-1``).  None when there is none within 400 years: the
        Gregorian calendar repeats every 400 years, so then there is none."""
        import bisect
        for _ in range(400 * 12 + 1):
            if month in self.months:
                size = _month_days(year, month)
                for d in range(day, size + 1) if step > 0 else range(min(day, size), 0, -1):
                    if self._day_matches(year, month, d):
                        i = (bisect.bisect_left(self.times, minute) if step > 0
                             else bisect.bisect_right(self.times, minute) - 1)
                        if 0 <= i < len(self.times):
                            return year, month, d, self.times[i]
                    minute = 0 if step > 0 else 1439
            year, month = divmod(year * 12 + month - 1 + step, 12)
            month, day, minute = month + 1, (1 if step > 0 else 31), (0 if step > 0 else 1439)
        return None

    def _instant(self, wall):
        """The epoch time of a local wall time: its first occurrence when it
        happens twice, the first minute after the gap when it does not exist."""
        import datetime
        local = datetime.datetime(wall[0], wall[1], wall[2], wall[3] // 60, wall[3] % 60)
        while True:
            ts = local.replace(tzinfo=self.tz).timestamp()    # fold=0: the first occurrence
            if datetime.datetime.fromtimestamp(ts, self.tz).replace(tzinfo=None) == local:
                return ts
            local += datetime.timedelta(minutes=1)


def _schedule_job_id(queue, name, tick):
    """The id of the job a schedule pushes for one tick, the same on every
    server.  Shaped like _new_id(): 12 hex digits of the tick's milliseconds
    (ids sort by tick), then 10 of a hash of queue and schedule name."""
    return '%012x%s' % (_tick_ms(tick), _sha1_hex('%s/%s' % (queue, name))[:10])


def _check_schedules(path, queue, schedules):
    """Validate the ``schedule`` list of queue ``queue``; return a copy with
    every default filled in, plus ``expression`` (for display) and ``when``
    (its _Schedule) in each entry."""
    if not isinstance(schedules, (list, tuple)):
        raise ConfigError('%s must be a list of schedule dicts, got %r' % (path, schedules))
    checked, seen = [], set()
    for i, given in enumerate(schedules):
        here = '%s[%d]' % (path, i)
        s = _check_keys(here, given, _SCHEDULE_DEFAULTS)
        if not isinstance(s['name'], str) or not _QUEUE_NAME_RE.match(s['name']):
            raise ConfigError('%s.name must be a non-empty string of letters, digits, "_", ".", '
                              '":" or "-", got %r' % (here, s['name']))
        if s['name'] in seen:
            raise ConfigError('%s.name %r is used by an earlier schedule of queue %r; schedule '
                              'names must be unique in their queue' % (here, s['name'], queue))
        seen.add(s['name'])
        if (s['cron'] is None) == (s['every'] is None):
            raise ConfigError('%s needs exactly one of cron (an expression such as "0 3 * * *") '
                              'or every (seconds)' % (here,))
        if s['cron'] is not None and not isinstance(s['cron'], str):
            raise ConfigError('%s.cron must be a string such as "0 3 * * *", got %r'
                              % (here, s['cron']))
        if s['every'] is not None:
            _check_number(here + '.every', s['every'], 1)
        try:
            _check_job(queue, s['job'])
        except TypeError as exc:
            raise ConfigError('%s.job: %s' % (here, exc)) from None
        if not isinstance(s['args'], (tuple, list)):
            raise ConfigError('%s.args must be a tuple or list, got %r' % (here, s['args']))
        if s['kwargs'] is not None and not isinstance(s['kwargs'], dict):
            raise ConfigError('%s.kwargs must be a dict, got %r' % (here, s['kwargs']))
        s['args'], s['kwargs'] = tuple(s['args']), dict(s['kwargs'] or {})
        if s['catch_up'] not in ('latest', 'all', 'none'):
            raise ConfigError('%s.catch_up must be "latest", "all" or "none", got %r'
                              % (here, s['catch_up']))
        if not isinstance(s['overlap'], bool):
            raise ConfigError('%s.overlap must be True or False, got %r' % (here, s['overlap']))
        for key, integer in (('timeout', False), ('fail_number', True),
                             ('fail_expire', False), ('result_ttl', False)):
            if s[key] is not None:
                _check_number('%s.%s' % (here, key), s[key], 0, integer)
        priority = s['priority']
        if priority is not None and (type(priority) is not int or not 0 <= priority <= 9):
            raise ConfigError('%s.priority must be an int from 0 to 9, got %r' % (here, priority))
        try:
            _time_zone(s['timezone'])
        except ValueError as exc:
            raise ConfigError('%s.timezone: %s' % (here, exc)) from None
        try:
            s['when'] = _Schedule(s['cron'], s['every'], s['timezone'], s['catch_up'])
        except ValueError as exc:
            raise ConfigError('%s.cron: %s' % (here, exc)) from None
        s['expression'] = s['when'].expression
        checked.append(s)
    return checked


###############################################################################
# Drivers
###############################################################################


class _Driver:
    """What every broker driver offers.  A driver is a small state machine per
    queue whose steps are applied in batches: ``execute(queue, ops)`` runs a
    list of steps atomically, in one round trip, and returns one result per
    step.  The steps (``ops``) are:

    ============================  ===============================================
    ``('push', id, meta, payload, delay)``   store a job; waiting, or delayed by
                                             ``delay`` seconds
    ``('reserve', n)``            pop up to n waiting jobs into *reserved*; returns
                                  ``[id, meta, payload, ...]``
    ``('start', id, worker, owner)``   reserved -> working: exec_number + 1, start
                                  time, worker, deadline, lease; returns 1/0
    ``('pop', worker, owner)``    reserve + start one job (grab model); returns
                                  ``[id, meta, payload]`` or ``[]``
    ``('renew', id)``             extend the lease of a working job
    ``('done', id)``              success: forget the job, ``over`` + 1
    ``('retry', id, delay, error)``   failed attempt: delayed again
    ``('fail', id, type, errors, name)``   final failure: to the failed list
    ``('lost', id, error, timeout)``   its worker died (or was killed at its
                                  timeout): retry, fail handlers, or back
                                  to the head if it never started
    ``('requeue', id)``           interrupted by mpqueue itself (stop): back to
                                  the head, the attempt not counted
    ``('recover_owner', owner, error)``   ``requeue`` every job of a dead master
    ``('tick', limit)``           promote due delayed jobs, take back expired
                                  reservations, recover expired leases; returns
                                  seconds until the next due time (or -1)
    ``('depth',)``                jobs per state, the counters and the meta of
                                  the job at the head of waiting (monitoring)
    ============================  ===============================================

    ``meta`` is a JSON object: ``c`` create time, ``t`` timeout, ``f``
    fail_number, ``e`` fail_expire, ``n`` job name, ``x`` exec_number, ``s``
    start time, ``w`` worker id, ``o`` owner (master) id, ``d`` deadline, ``y``
    type, ``r`` error list, ``p`` phase (``"f"``: fail handlers to run), ``h``
    fail handler attempts.

    Besides the queues, a driver keeps the *fleet*: one heartbeat per running
    pool, which expires ``ttl`` seconds (broker clock) after it was published.
    ``_fleet_op`` applies ``('beat', pool_id, info_json, ttl)``,
    ``('forget', pool_id)`` or ``('read',)`` atomically, dropping expired
    heartbeats first; ``read`` returns ``[now, id, info_json, expiry, ...]``.
    """

    address = '?'

    def execute(self, queue, ops):
        raise NotImplementedError

    def waker(self, queue):
        """An object with ``fileno()``, ``drain()`` and ``close()`` that becomes
        readable when a push or a retry makes work for the queue's master."""
        raise NotImplementedError

    def close(self):
        pass

    def preload(self):
        """Import what the driver needs, in the manage process before it forks,
        so that every process of the pool shares those pages."""

    # -- conveniences over execute(): one step, one round trip ---------------

    def push(self, queue, entries):
        """Store jobs: ``entries`` is a list of ``(id, meta_json, payload, delay)``."""
        self.execute(queue, [('push',) + tuple(e) for e in entries])

    def reserve(self, queue, n):
        flat = self.execute(queue, [('reserve', n)])[0]
        return [(_text(flat[i]), _meta_dict(flat[i + 1]), flat[i + 2])
                for i in range(0, len(flat), 3)]

    def pop(self, queue, worker, owner):
        got = self.execute(queue, [('pop', worker, owner)])[0]
        return (_text(got[0]), _meta_dict(got[1]), got[2]) if got else None

    def start(self, queue, job_id, worker, owner):
        return self.execute(queue, [('start', job_id, worker, owner)])[0]

    def done(self, queue, job_id):
        return self.execute(queue, [('done', job_id)])[0]

    def retry(self, queue, job_id, delay, error):
        return self.execute(queue, [('retry', job_id, delay, error)])[0]

    def fail(self, queue, job_id, type_, errors, name=''):
        return self.execute(queue, [('fail', job_id, type_, json.dumps(list(errors)), name)])[0]

    def lost(self, queue, job_id, error, timeout=False):
        return self.execute(queue, [('lost', job_id, error, 1 if timeout else 0)])[0]

    def requeue(self, queue, job_id):
        return self.execute(queue, [('requeue', job_id)])[0]

    def renew(self, queue, job_ids):
        return self.execute(queue, [('renew', j) for j in job_ids])

    def recover_owner(self, queue, owner, error):
        return self.execute(queue, [('recover_owner', owner, error)])[0]

    def tick(self, queue, limit=1000):
        """Promote, take back and recover; seconds to the next due time or None."""
        due = float(self.execute(queue, [('tick', limit)])[0])
        return None if due < 0 else due

    def job_meta(self, queue, job_id):
        """The stored meta of one job as a dict, or None (for tests and tools)."""
        raw = self.execute(queue, [('meta', job_id)])[0]
        return _meta_dict(raw) if raw else None

    def status(self, queue):
        """``{'all', 'waiting', 'working', 'failed', 'over'}`` counts of a queue."""
        values = self.execute(queue, [('status',)])[0]
        return dict(zip(('all', 'waiting', 'working', 'failed', 'over'), map(int, values)))

    def failed(self, queue, offset=0, count=100):
        """``[(id, meta_dict), ...]`` of failed jobs, oldest first."""
        flat = self.execute(queue, [('failed', offset, count)])[0]
        return [(_text(flat[i]), _meta_dict(flat[i + 1])) for i in range(0, len(flat), 2)]

    def retry_failed(self, queue, job_id=None):
        """Put one failed job (or all) back in the queue; returns how many."""
        return self.execute(queue, [('retry_failed', job_id or '')])[0]

    def delete_failed(self, queue, job_id):
        return self.execute(queue, [('delete_failed', job_id)])[0]

    def clean(self, queue):
        self.execute(queue, [('clean',)])

    def depth(self, queue):
        """Jobs of a queue per state now (``waiting``, ``delayed``, ``reserved``,
        ``working``, ``failed``), its counters since it was last cleaned
        (``pushed``, ``done``, ``failed_total``) and ``oldest_created``: the
        create time of the job at the head of waiting (None when none waits)."""
        values = self.execute(queue, [('depth',)])[0]
        out = dict(zip(_DEPTH_FIELDS, map(int, values[:-1])))
        out['oldest_created'] = _meta_dict(values[-1]).get('c') if values[-1] else None
        return out

    # -- the fleet -------------------------------------------------------------

    def _fleet_op(self, *op):
        raise NotImplementedError

    def heartbeat(self, pool_id, info, ttl):
        """Publish ``info`` (a JSON-able dict) as the heartbeat of ``pool_id``;
        it expires after ``ttl`` seconds unless published again."""
        self._fleet_op('beat', pool_id, json.dumps(dict(info, ttl=ttl)), ttl)

    def forget(self, pool_id):
        """Remove the heartbeat of ``pool_id`` (its pool stopped)."""
        self._fleet_op('forget', pool_id)

    def fleet(self):
        """The live heartbeats, as their info dicts plus ``id``, ``age`` (seconds
        since the last beat, broker clock) and ``last_seen`` (this clock)."""
        flat = self._fleet_op('read')
        now, pools = float(flat[0]), []
        for i in range(1, len(flat), 3):
            info = json.loads(flat[i + 1])
            age = max(0.0, now - (float(flat[i + 2]) - info.get('ttl', 0)))
            info.update(id=_text(flat[i]), age=age, last_seen=time.time() - age)
            pools.append(info)
        pools.sort(key=lambda p: (p.get('name', ''), p.get('host', ''), p.get('pid', 0)))
        return pools


_DEPTH_FIELDS = ('waiting', 'delayed', 'reserved', 'working', 'failed', 'pushed', 'done',
                 'failed_total')

def _meta_dict(raw):
    """Decode stored meta, tolerating missing fields and Lua's ``{}`` for ``[]``."""
    meta = json.loads(raw) if raw else {}
    if not isinstance(meta.get('r'), list):
        meta['r'] = []
    return meta


# -- Redis -----------------------------------------------------------------

# The whole job lifecycle for Redis as one script applying a batch of steps.
# KEYS (all share the queue's hash tag, so the script is Redis Cluster safe):
#   1 waiting   list  job ids ready to run, oldest first
#   2 delayed   zset  job id -> due time (delayed pushes and retries)
#   3 reserved  zset  job id -> time it goes back to the head of waiting
#   4 working   zset  job id -> lease expiry (or deadline + 1 s)
#   5 job       hash  job id -> payload (the pickled envelope)
#   6 meta      hash  job id -> JSON meta (see _Driver)
#   7 failed    zset  job id -> time of final failure
#   8 stats     hash  all / over / failed counters
# ARGV: 1 notify channel, 2 lease seconds, 3 reserve seconds, then the steps,
#   each as its name followed by its arguments (counts in NARGS).
# Returns one result per step.  Times are Redis server time (TIME), so the
# servers of a pool need not agree on the clock.
_LUA_OPS = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local channel, lease, hold = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local K_WAIT, K_DELAY, K_RES, K_WORK, K_JOB, K_META, K_FAIL, K_STAT =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local wake = false

local function getmeta(id)
  local raw = redis.call('HGET', K_META, id)
  if not raw then return nil end
  local m = cjson.decode(raw)
  if type(m.r) ~= 'table' then m.r = {} end
  return m
end
local function setmeta(id, m)
  if #m.r == 0 then m.r = nil end
  redis.call('HSET', K_META, id, cjson.encode(m))
  if m.r == nil then m.r = {} end
end
local function lease_score(m)
  local s = now + lease
  if m.d and m.d > 0 and m.d + 1 < s then s = m.d + 1 end
  return s
end
local function ready(id, delay)
  if delay and delay > 0 then
    local first = redis.call('ZRANGE', K_DELAY, 0, 0, 'WITHSCORES')
    redis.call('ZADD', K_DELAY, now + delay, id)
    if #first == 0 or tonumber(first[2]) > now + delay then wake = true end
  elseif redis.call('RPUSH', K_WAIT, id) == 1 then
    wake = true
  end
end
local function to_head(id)
  if redis.call('LPUSH', K_WAIT, id) == 1 then wake = true end
end
local function start(id, m, worker, owner)
  if m.p ~= 'f' then m.x = (m.x or 0) + 1 end
  m.s = now
  m.w = worker
  m.o = owner
  if (m.t or 0) > 0 then m.d = now + m.t else m.d = 0 end
  setmeta(id, m)
  redis.call('ZADD', K_WORK, lease_score(m), id)
end
local function to_failed(id, m)
  m.p = nil
  m.ft = now
  setmeta(id, m)
  redis.call('ZADD', K_FAIL, now, id)
  redis.call('HINCRBY', K_STAT, 'failed', 1)
end
-- a started job whose worker is gone: another attempt, its fail handlers, or failed
local function lost(id, m, err, timeout)
  table.insert(m.r, err)
  if m.p == 'f' then
    m.h = (m.h or 0) + 1
    if m.h >= tonumber(ARGV[4]) then
      table.insert(m.r, 'fail handlers did not finish after ' .. m.h .. ' attempts')
      to_failed(id, m)
    else
      setmeta(id, m)
      to_head(id)
    end
  elseif timeout then
    m.y = 2
    m.p = 'f'
    setmeta(id, m)
    to_head(id)
  elseif (m.x or 0) <= (m.f or 0) then
    setmeta(id, m)
    to_head(id)      -- run again at once: the job did not fail by itself
  else
    m.y = 1
    m.p = 'f'
    setmeta(id, m)
    to_head(id)
  end
end
local function requeue(id)
  if redis.call('ZREM', K_WORK, id) == 1 then
    local m = getmeta(id)
    if m and m.p ~= 'f' and (m.x or 0) > 0 then m.x = m.x - 1 ; setmeta(id, m) end
  elseif redis.call('ZREM', K_RES, id) == 0 then
    return 0
  end
  to_head(id)
  return 1
end

local OPS = {}
OPS.push = function(id, meta, payload, delay)
  redis.call('HSET', K_JOB, id, payload)
  redis.call('HSET', K_META, id, meta)
  redis.call('HINCRBY', K_STAT, 'all', 1)
  ready(id, tonumber(delay))
  return 1
end
OPS.reserve = function(n)
  local ids = redis.call('LPOP', K_WAIT, tonumber(n))
  local out = {}
  if not ids then return out end
  for i, id in ipairs(ids) do
    local payload = redis.call('HGET', K_JOB, id)
    if payload then
      -- distinct scores keep queue order when they come back by tick
      redis.call('ZADD', K_RES, now + hold + i * 0.000001, id)
      table.insert(out, id)
      table.insert(out, redis.call('HGET', K_META, id))
      table.insert(out, payload)
    end
  end
  return out
end
OPS.start = function(id, worker, owner)
  if redis.call('ZREM', K_RES, id) == 0 then return 0 end
  local m = getmeta(id)
  if not m then return 0 end
  start(id, m, worker, owner)
  return 1
end
OPS.pop = function(worker, owner)
  while true do
    local id = redis.call('LPOP', K_WAIT)
    if not id then return {} end
    local m = getmeta(id)
    local payload = redis.call('HGET', K_JOB, id)
    if m and payload then
      start(id, m, worker, owner)
      return {id, cjson.encode(m), payload}
    end
  end
end
OPS.renew = function(id)
  if not redis.call('ZSCORE', K_WORK, id) then return 0 end
  local m = getmeta(id)
  redis.call('ZADD', K_WORK, lease_score(m), id)
  return 1
end
-- take a job out of every place but working/reserved (rare: it was recovered
-- elsewhere while its worker was still running it)
local function unqueue(id)
  if redis.call('ZREM', K_DELAY, id) == 0 and redis.call('ZREM', K_FAIL, id) == 0 then
    redis.call('LREM', K_WAIT, 1, id)
  end
end
OPS.done = function(id)
  if redis.call('ZREM', K_WORK, id) == 0 and redis.call('ZREM', K_RES, id) == 0 then
    unqueue(id)
  end
  redis.call('HDEL', K_JOB, id)
  if redis.call('HDEL', K_META, id) == 1 then redis.call('HINCRBY', K_STAT, 'over', 1) end
  return 1
end
OPS.retry = function(id, delay, err)
  if redis.call('ZREM', K_WORK, id) == 0 then return 0 end
  local m = getmeta(id)
  table.insert(m.r, err)
  setmeta(id, m)
  ready(id, tonumber(delay))
  return 1
end
OPS.fail = function(id, typ, errs, name)
  local m = getmeta(id)
  if not m then return 0 end
  if redis.call('ZREM', K_WORK, id) == 0 and redis.call('ZREM', K_RES, id) == 0 then
    if redis.call('ZSCORE', K_FAIL, id) then return 0 end
    unqueue(id)
  end
  for _, e in ipairs(cjson.decode(errs)) do table.insert(m.r, e) end
  m.y = tonumber(typ)
  if name ~= '' then m.n = name end
  to_failed(id, m)
  return 1
end
OPS.lost = function(id, err, timeout)
  if redis.call('ZREM', K_WORK, id) == 0 then
    if redis.call('ZREM', K_RES, id) == 1 then to_head(id) return 2 end
    return 0
  end
  local m = getmeta(id)
  if not m then return 0 end
  lost(id, m, err, timeout == '1')
  return 1
end
OPS.requeue = function(id)
  return requeue(id)
end
OPS.recover_owner = function(owner, err)
  -- only started jobs carry their owner; reservations come back by tick
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', K_WORK, 0, -1)) do
    local m = getmeta(id)
    if m and m.o == owner then n = n + requeue(id) end
  end
  return n
end
OPS.tick = function(limit)
  limit = tonumber(limit)
  local due = redis.call('ZRANGEBYSCORE', K_DELAY, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', K_DELAY, id)
    ready(id, 0)
  end
  local back = redis.call('ZRANGEBYSCORE', K_RES, '-inf', now, 'LIMIT', 0, limit)
  for i = #back, 1, -1 do
    redis.call('ZREM', K_RES, back[i])
    to_head(back[i])
  end
  local dead = redis.call('ZRANGEBYSCORE', K_WORK, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(dead) do
    redis.call('ZREM', K_WORK, id)
    local m = getmeta(id)
    if m then lost(id, m, 'lease expired: worker ' .. tostring(m.w) ..
                  ' or its server stopped while running the job', false) end
  end
  local nxt = -1
  for _, key in ipairs({K_DELAY, K_RES, K_WORK}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first > 0 then
      local d = tonumber(first[2]) - now
      if d < 0 then d = 0 end
      if nxt < 0 or d < nxt then nxt = d end
    end
  end
  return tostring(nxt)
end
OPS.status = function()
  local s = redis.call('HMGET', K_STAT, 'all', 'over')
  return {tonumber(s[1] or 0), redis.call('LLEN', K_WAIT) + redis.call('ZCARD', K_DELAY),
          redis.call('ZCARD', K_RES) + redis.call('ZCARD', K_WORK),
          redis.call('ZCARD', K_FAIL), tonumber(s[2] or 0)}
end
OPS.depth = function()
  local s = redis.call('HMGET', K_STAT, 'all', 'over', 'failed')
  local head = redis.call('LINDEX', K_WAIT, 0)
  return {redis.call('LLEN', K_WAIT), redis.call('ZCARD', K_DELAY), redis.call('ZCARD', K_RES),
          redis.call('ZCARD', K_WORK), redis.call('ZCARD', K_FAIL), tonumber(s[1] or 0),
          tonumber(s[2] or 0), tonumber(s[3] or 0), head and redis.call('HGET', K_META, head) or ''}
end
OPS.failed = function(offset, count)
  if tonumber(count) <= 0 then return {} end
  local ids = redis.call('ZRANGE', K_FAIL, tonumber(offset), tonumber(offset) + tonumber(count) - 1)
  local out = {}
  for _, id in ipairs(ids) do
    table.insert(out, id)
    table.insert(out, redis.call('HGET', K_META, id) or '{}')
  end
  return out
end
OPS.meta = function(id)
  return redis.call('HGET', K_META, id) or ''
end
OPS.retry_failed = function(id)
  local ids
  if id == '' then ids = redis.call('ZRANGE', K_FAIL, 0, -1) else ids = {id} end
  local n = 0
  for _, j in ipairs(ids) do
    if redis.call('ZREM', K_FAIL, j) == 1 then
      local m = getmeta(j)
      if m then
        m.x = 0 ; m.h = nil ; m.p = nil ; m.y = nil ; m.r = {} ; m.ft = nil
        setmeta(j, m)
        ready(j, 0)
        n = n + 1
      end
    end
  end
  return n
end
OPS.delete_failed = function(id)
  if redis.call('ZREM', K_FAIL, id) == 0 then return 0 end
  redis.call('HDEL', K_JOB, id)
  redis.call('HDEL', K_META, id)
  return 1
end
OPS.clean = function()
  return redis.call('DEL', K_WAIT, K_DELAY, K_RES, K_WORK, K_JOB, K_META, K_FAIL, K_STAT)
end

local NARGS = {push = 4, reserve = 1, start = 3, pop = 2, renew = 1, done = 1, retry = 3,
               fail = 4, lost = 3, requeue = 1, recover_owner = 2, tick = 1, status = 0,
               depth = 0, failed = 2, meta = 1, retry_failed = 1, delete_failed = 1, clean = 0}
local out = {}
local i = 5
while i <= #ARGV do
  local name = ARGV[i]
  local n = NARGS[name]
  if not n then return redis.error_reply('mpqueue: unknown step ' .. tostring(name)) end
  table.insert(out, OPS[name](unpack(ARGV, i + 1, i + n)))
  i = i + n + 1
end
if wake then redis.call('PUBLISH', channel, '1') end
return out
"""

_STEP_ARGS = {'push': 4, 'reserve': 1, 'start': 3, 'pop': 2, 'renew': 1, 'done': 1,
              'retry': 3, 'fail': 4, 'lost': 3, 'requeue': 1, 'recover_owner': 2, 'tick': 1,
              'status': 0, 'depth': 0, 'failed': 2, 'meta': 1, 'retry_failed': 1,
              'delete_failed': 1, 'clean': 0}

# The fleet: a heartbeat per running pool.  KEYS (one hash tag, {fleet}, so the
# script is Redis Cluster safe; no queue has keys of these names):
#   1 pools    hash  pool id -> JSON info
#   2 expiry   zset  pool id -> time its heartbeat expires
# ARGV: 'beat', id, info, ttl  |  'forget', id  |  'read'
# Expired heartbeats are dropped first.  'read' returns the broker time, then
# id, info, expiry of each live pool.
_LUA_FLEET = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
if ARGV[1] == 'beat' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  return redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
elseif ARGV[1] == 'forget' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  return redis.call('ZREM', KEYS[2], ARGV[2])
end
local out = {tostring(now)}
local live = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  table.insert(out, live[i])
  table.insert(out, redis.call('HGET', KEYS[1], live[i]) or '{}')
  table.insert(out, live[i + 1])
end
return out
"""


class RedisDriver(_Driver):
    """The Redis broker, on one server or on a Redis Cluster.

    :param host: server host (ignored with ``url``).
    :param port: server port.
    :param password: AUTH password ('' for none).
    :param database: database number (a cluster has database 0 only).
    :param prefix: first part of every key: ``{prefix}:{queue}:waiting`` ...
        (the queue name is the hash tag, so each queue's keys share a slot).
    :param url: ``redis://[[user]:password@]host:port/db`` or ``rediss://`` (TLS).
        With ``cluster=True`` it may list several nodes to discover the cluster
        from, comma-separated: ``'redis://10.0.0.1:7000,redis://10.0.0.2:7000'``
        (user, password and TLS are taken from the first).
    :param ssl: use TLS with host/port.
    :param cluster: talk to a Redis Cluster (``redis.cluster.RedisCluster``),
        found through ``host``/``port`` or ``url``.
    :param wait_replicas: when a call stores new jobs, wait until this many
        replicas have them too (Redis ``WAIT``), for at most ``wait_timeout``
        seconds; if fewer confirm, ``push`` raises DriverError (the jobs are on
        the master, not known to be on a replica).  Replication is asynchronous:
        without this, jobs pushed just before their master dies may be missing on
        the replica that takes over.  0 (the default): do not wait.
    :param wait_timeout: see ``wait_replicas``.
    :param redis_kwargs: passed on to the redis-py client.

    Connections open lazily in each process and are never carried across a
    ``fork()``.  The lifecycle script is loaded once per connection pool and run
    with EVALSHA (reloaded on NOSCRIPT).  The fleet's heartbeats live under
    ``{prefix}:{fleet}:`` and go through a client of their own whose calls time
    out after ``FLEET_TIMEOUT``.

    On a cluster, all keys of a queue are in one slot, so a queue lives on one
    master and each call is one EVALSHA sent to that master.  When its slot
    moves (a failover, a resharding: MOVED, or a connection error) the slot map
    is read again.  During a failover the queue's calls raise DriverError until
    a replica has taken over; the runtime retries them with back-off.  Masters
    are woken by PUBLISH, which a cluster passes on to every node.
    """

    def __init__(self, host='127.0.0.1', port=6379, password='', database=0, prefix='mpq', *,
                 url=None, ssl=False, cluster=False, wait_replicas=0, wait_timeout=1.0,
                 **redis_kwargs):
        if not isinstance(prefix, str) or not prefix or '{' in prefix or '}' in prefix:
            raise ConfigError('RedisDriver prefix must be a non-empty string without braces, '
                              'got %r' % (prefix,))
        if cluster and database:
            raise ConfigError('RedisDriver database must be 0 on a Redis Cluster, got %r'
                              % (database,))
        if url and ',' in url and not cluster:
            raise ConfigError('RedisDriver url lists several servers, which needs '
                              'cluster=True: %r' % (url,))
        if not isinstance(wait_replicas, int) or wait_replicas < 0:
            raise ConfigError('RedisDriver wait_replicas must be an integer >= 0, got %r'
                              % (wait_replicas,))
        if not _is_number(wait_timeout) or wait_timeout <= 0:
            raise ConfigError('RedisDriver wait_timeout must be a number > 0, got %r'
                              % (wait_timeout,))
        self.host, self.port, self.password, self.database = host, port, password, database
        self.prefix, self.url, self.ssl, self.cluster = prefix, url, ssl, cluster
        self.wait_replicas, self.wait_timeout = wait_replicas, wait_timeout
        self.redis_kwargs = redis_kwargs
        if url:
            self.address = re.sub(r'//[^@/,]*@', '//', url)   # never show a password
        else:
            self.address = '%s://%s:%s' % ('rediss' if ssl else 'redis', host, port)
            if not cluster:
                self.address += '/%s' % database
        self._pid = None
        self._client = None
        self._fleet_script = None     # (pid, redis-py Script on a client with timeouts)
        self._sha = None
        self._keys = {}
        self._local = threading.local()

    def __repr__(self):
        cluster = ', cluster=True' if self.cluster else ''
        return 'RedisDriver(%r, prefix=%r%s)' % (self.address, self.prefix, cluster)

    def __getstate__(self):   # drivers travel in pickled configs without their sockets
        state = dict(self.__dict__)
        state['_client'] = state['_pid'] = state['_local'] = state['_fleet_script'] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def preload(self):
        try:
            import redis  # noqa: F401
            import redis.backoff  # noqa: F401
            import redis.retry  # noqa: F401
            import encodings.idna  # noqa: F401  (connecting by host name loads it)
            if self.cluster:
                import redis.cluster  # noqa: F401
        except ImportError:
            pass
        self._sha = _sha1_hex(_LUA_OPS)

    def _redis(self):
        if self._pid != os.getpid() or self._client is None:
            self._client, self._pid = self._new_client(), os.getpid()
        return self._client

    def _new_client(self, **overrides):
        """A redis-py client for this driver's server; ``overrides`` win over
        the driver's own keyword arguments."""
        try:
            import redis
        except ImportError:
            raise DriverError('RedisDriver needs redis-py: run "pip install redis" to '
                              'install it') from None
        kwargs = dict(self.redis_kwargs)
        kwargs.setdefault('socket_connect_timeout', 5)
        if 'retry' not in kwargs:   # fail fast; the runtime has its own back-off
            from redis.backoff import NoBackoff
            from redis.retry import Retry
            kwargs['retry'] = Retry(NoBackoff(), 1)
        kwargs.update(overrides)
        if self.cluster:
            return self._cluster_client(kwargs)
        if self.url:
            return redis.Redis.from_url(self.url, **kwargs)
        return redis.Redis(host=self.host, port=self.port, db=self.database,
                           password=self.password or None, ssl=self.ssl, **kwargs)

    def _cluster_client(self, kwargs):
        """A ``RedisCluster``; it reads the slot map from the first node that answers."""
        from redis.cluster import ClusterNode, RedisCluster
        from redis.connection import parse_url
        if not self.url:
            return RedisCluster(host=self.host, port=self.port, password=self.password or None,
                                ssl=self.ssl, **kwargs)
        first, *others = [u.strip() for u in self.url.split(',') if u.strip()]
        nodes = []
        for url in others:
            where = parse_url(url)
            nodes.append(ClusterNode(where.get('host', '127.0.0.1'), where.get('port', 6379)))
        return RedisCluster(url=first, startup_nodes=nodes, **kwargs)

    def _keys_of(self, queue):
        keys = self._keys.get(queue)
        if keys is None:
            base = '%s:{%s}:' % (self.prefix, queue)
            keys = [base + k for k in ('waiting', 'delayed', 'reserved', 'working', 'job',
                                       'meta', 'failed', 'stats')]
            self._keys[queue] = keys
        return keys

    def _channel(self, queue):
        return '%s:{%s}:notify' % (self.prefix, queue)

    def execute(self, queue, ops):
        args = [self._channel(queue), LEASE_SECONDS, RESERVE_SECONDS, HANDLER_ATTEMPTS]
        for op in ops:
            if len(op) - 1 != _STEP_ARGS[op[0]]:
                raise ValueError('step %r takes %d arguments' % (op[0], _STEP_ARGS[op[0]]))
            args.extend(op)
        wait = 0
        if self.wait_replicas and any(op[0] == 'push' for op in ops):
            wait = self.wait_replicas   # a lost push loses jobs; other steps only repeat
        return self._eval(queue, self._keys_of(queue), args, wait)

    def _eval(self, queue, keys, args, wait=0):
        """EVALSHA the lifecycle script (loading it on NOSCRIPT), followed by
        ``WAIT`` for ``wait`` replicas if ``wait``.  The commands are packed here
        and written on a connection of this thread's own (on a cluster: to the
        master of the queue's slot), which halves the client-side cost of a
        round trip."""
        import redis
        if self._sha is None:
            self._sha = _sha1_hex(_LUA_OPS)
        packed = _pack_command(('EVALSHA', self._sha, len(keys)) + tuple(keys) + tuple(args))
        if wait:
            packed += _pack_command(('WAIT', wait, int(self.wait_timeout * 1000)))
        try:
            if self.cluster:
                replies = self._call_cluster(keys[0], packed, 2 if wait else 1)
            else:
                replies = self._call(self._redis().connection_pool, packed, 2 if wait else 1)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException,
                OSError) as exc:
            raise self._error(queue, exc, getattr(self._local, 'node', None)) from exc
        if wait and replies[1] < wait:
            raise DriverError('%s: jobs pushed to queue %r are on the master, but only %d of '
                              '%d replica(s) confirmed them within %g s' % (
                                  self._where(queue), queue, replies[1], wait,
                                  self.wait_timeout))
        return replies[0]

    def _fleet_op(self, *op):
        import redis
        try:
            if self._fleet_script is None or self._fleet_script[0] != os.getpid():
                from redis.backoff import NoBackoff
                from redis.retry import Retry
                client = self._new_client(socket_timeout=FLEET_TIMEOUT,
                                          socket_connect_timeout=FLEET_TIMEOUT,
                                          retry=Retry(NoBackoff(), 0))
                self._fleet_script = (os.getpid(), client.register_script(_LUA_FLEET))
            keys = ['%s:{fleet}:%s' % (self.prefix, k) for k in ('pools', 'expiry')]
            return self._fleet_script[1](keys=keys, args=op)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(None, exc) from exc

    def _where(self, queue, node=None):
        if not self.cluster or queue is None:
            return 'Redis%s at %s' % (' Cluster' if self.cluster else '', self.address)
        # name the node: a failover concerns the queues of one master
        return 'Redis Cluster %s (queue %r%s)' % (self.address, queue,
                                                  ' on node %s' % node if node else '')

    def _error(self, queue, exc, node=None):
        """A one-line DriverError for a redis-py exception, naming the server."""
        import redis
        text = ' '.join(str(exc).split())
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            redis.exceptions.RedisClusterException, OSError)):
            return DriverError('cannot reach %s: %s' % (self._where(queue, node), text))
        return DriverError('%s refused the command: %s' % (self._where(queue, node), text))

    def _call_cluster(self, key, packed, replies):
        """``_call`` on the master of ``key``'s slot.  MOVED (the slot has another
        master now) or a lost connection make the slot map be read again.  The
        call is made once more, on the new master, if it did not run: after
        MOVED, or when the old master could not even be written to (a failover
        is then resumed as soon as the replica has taken over)."""
        import redis
        self._local.node = None
        client = self._redis()
        for attempt in (1, 2):
            node = _master_of(client, key)
            self._local.node = node.name
            conn = self._connection(client.get_redis_connection(node).connection_pool,
                                    node.name)
            try:
                self._send(conn, packed)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                _reload_slots(client)
                if attempt == 2 or _master_of(client, key).name == node.name:
                    raise
                continue
            try:
                return self._receive(conn, packed, replies)
            except redis.exceptions.MovedError:
                _reload_slots(client)
                if attempt == 2:
                    raise
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    redis.exceptions.ClusterDownError, OSError):
                _reload_slots(client)
                raise

    def _call(self, pool, packed, replies=1):
        """Write ``packed`` on this thread's connection to the server of ``pool``;
        return the list of the next ``replies`` replies."""
        conn = self._connection(pool)
        self._send(conn, packed)
        return self._receive(conn, packed, replies)

    def _connection(self, pool, name=None):
        """This thread's connection made by ``pool`` (one per cluster node ``name``)."""
        local = self._local
        if getattr(local, 'pid', None) != os.getpid():
            local.pid, local.conns, local.used, local.reader = os.getpid(), {}, {}, _new_reader()
        conn = local.conns.get(name)
        if conn is None:
            conn = local.conns[name] = pool.make_connection()
        elif time.monotonic() - local.used[name] > 1.0 and conn._sock is not None and \
                select.select([conn._sock], [], [], 0)[0]:
            self._drop(conn)            # the server closed it while it was idle: reconnect
        local.used[name] = time.monotonic()
        return conn

    def _send(self, conn, packed):
        import redis
        try:
            self._send_packed(conn, packed)
        except (redis.exceptions.ConnectionError, OSError):
            self._drop(conn)            # nothing was sent: safe to try once more
            self._send_packed(conn, packed)

    def _receive(self, conn, packed, replies):
        """The replies to ``packed``, sent on ``conn``; on NOSCRIPT the script is
        loaded and ``packed`` sent again."""
        import redis
        try:
            return self._read_replies(conn, replies)
        except redis.exceptions.NoScriptError:
            self._send_packed(conn, _pack_command(('SCRIPT', 'LOAD', _LUA_OPS)))
            self._read(conn)
            self._send_packed(conn, packed)
            return self._read_replies(conn, replies)
        except BaseException:
            self._drop(conn)
            raise

    @staticmethod
    def _send_packed(conn, packed):
        if conn._sock is None:
            conn.connect()              # AUTH, SELECT, TLS: redis-py's business
        conn._sock.sendall(packed)

    def _drop(self, conn):
        conn.disconnect()
        self._local.reader = _new_reader()

    def _read_replies(self, conn, n):
        """The next ``n`` replies; an error reply is raised once all ``n`` are
        read, so that the connection stays in step."""
        import redis
        replies, error = [], None
        for _ in range(n):
            try:
                replies.append(self._read(conn))
            except redis.exceptions.ResponseError as exc:
                replies.append(exc)
                error = error or exc
        if error is not None:
            raise error
        return replies

    def _read(self, conn):
        """The reply to the command just sent: hiredis parsing the socket
        directly when it is installed, else redis-py's own parser."""
        import redis
        reader = self._local.reader
        if reader is None:
            return conn.read_response()
        while True:
            reply = reader.gets()
            if reply is not False:
                break
            chunk = conn._sock.recv(65536)
            if not chunk:
                raise redis.exceptions.ConnectionError('Connection closed by server.')
            reader.feed(chunk)
        if isinstance(reply, Exception):
            raise _response_error(str(reply))
        return reply

    def waker(self, queue):
        return _RedisWaker(self, queue)

    def close(self):
        local = self._local
        if getattr(local, 'pid', None) == os.getpid():
            for conn in local.conns.values():
                conn.disconnect()
        self._local = threading.local()
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        if self._fleet_script is not None and self._fleet_script[0] == os.getpid():
            self._fleet_script[1].registered_client.close()
        self._client = self._fleet_script = None


def _reload_slots(client):
    """Read a cluster's slot map again.  Best effort: if no node answers now,
    the next call fails and tries again."""
    try:
        client.nodes_manager.initialize()
    except Exception:
        pass


def _master_of(client, key):
    """The master of ``key``'s slot in a cluster client's map (a ``ClusterNode``)."""
    return client.nodes_manager.get_node_from_slot(client.keyslot(key))


def _response_error(text):
    """The redis-py exception for an error reply (as redis-py's parser raises it)."""
    import redis
    code, _, rest = text.partition(' ')
    if code == 'NOSCRIPT':
        return redis.exceptions.NoScriptError(text)
    if code == 'MOVED':
        return redis.exceptions.MovedError(rest)
    return redis.exceptions.ResponseError(text)


def _new_reader():
    try:
        import hiredis
    except ImportError:
        return None
    return hiredis.Reader()


def _pack_command(args):
    """A command in the Redis protocol (RESP), as one bytes object."""
    if _hiredis_pack is not None:
        return _hiredis_pack(args)
    out = [b'*%d\r\n' % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif not isinstance(arg, (bytes, bytearray, memoryview)):
            arg = repr(arg).encode()
        out.append(b'$%d\r\n' % len(arg))
        out.append(arg)
        out.append(b'\r\n')
    return b''.join(out)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


class _RedisWaker:
    """A pub/sub subscription to the queue's notify channel; its socket goes in
    the master's selector.  On a cluster it is made on the master of the queue's
    slot; when that node dies the socket closes and the master subscribes again."""

    def __init__(self, driver, queue):
        import redis
        try:
            self._pubsub = driver._redis().pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(driver._channel(queue))
            self._pubsub.get_message(timeout=0)   # make sure the connection is up
            # no silent reconnect on another socket: the master re-subscribes itself
            from redis.backoff import NoBackoff
            from redis.retry import Retry
            self._pubsub.connection.retry = Retry(NoBackoff(), 0)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.RedisClusterException, OSError) as exc:
            raise driver._error(queue, exc) from exc
        self._address = driver.address

    def fileno(self):
        sock = getattr(self._pubsub.connection, '_sock', None)
        return sock.fileno() if sock is not None else -1

    def drain(self):
        import redis
        try:
            while self._pubsub.get_message(timeout=0) is not None:
                pass
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
                AttributeError) as exc:
            raise DriverError('lost the Redis connection at %s: %s' % (self._address, exc)) from exc

    def close(self):
        try:
            self._pubsub.close()
        except Exception:
            pass


# -- SQLite ----------------------------------------------------------------


# The same lifecycle as _LUA_OPS, as SQL.  One row per job in mpq_jobs; its
# ``state`` says which Redis structure it would be in and ``score`` is that
# structure's score:
#   waiting   position in the queue (tail = max + 1, head = min - 1)
#   delayed   due time
#   reserved  time it goes back to the head of waiting
#   working   lease expiry (or deadline + 1 s)
#   failed    time of final failure
# Ties in the sorted states are broken by id, like the members of a Redis zset.
# Times are this server's clock (time.time()): the SQLite driver serves one server.

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS mpq_jobs (
    queue   TEXT NOT NULL,
    id      TEXT NOT NULL,
    state   TEXT NOT NULL,
    score   REAL NOT NULL,
    meta    TEXT NOT NULL,
    payload BLOB,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS mpq_jobs_state ON mpq_jobs (queue, state, score, id);
CREATE TABLE IF NOT EXISTS mpq_stats (
    queue    TEXT PRIMARY KEY,
    n_all    INTEGER NOT NULL DEFAULT 0,
    n_over   INTEGER NOT NULL DEFAULT 0,
    n_failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS mpq_fleet (
    id      TEXT PRIMARY KEY,
    info    TEXT NOT NULL,
    expires REAL NOT NULL
);
"""

_SQ_INSERT = ('INSERT OR REPLACE INTO mpq_jobs (queue, id, state, score, meta, payload) '
              'VALUES (?, ?, ?, ?, ?, ?)')
_SQ_MAX = "SELECT MAX(score) FROM mpq_jobs WHERE queue = ? AND state = 'waiting'"
_SQ_MIN = 'SELECT MIN(score) FROM mpq_jobs WHERE queue = ? AND state = ?'
_SQ_FIRST = ('SELECT rowid, id, meta, payload FROM mpq_jobs WHERE queue = ? AND '
             "state = 'waiting' ORDER BY score LIMIT ?")
_SQ_ROW = 'SELECT rowid, state, meta FROM mpq_jobs WHERE queue = ? AND id = ?'
_SQ_DUE = ('SELECT rowid, id, meta FROM mpq_jobs WHERE queue = ? AND state = ? AND score <= ? '
           'ORDER BY score, id LIMIT ?')
_SQ_ALL_IN = ('SELECT rowid, id, meta FROM mpq_jobs WHERE queue = ? AND state = ? '
              'ORDER BY score, id')
_SQ_MOVE = 'UPDATE mpq_jobs SET state = ?, score = ? WHERE rowid = ?'
_SQ_MOVE_META = 'UPDATE mpq_jobs SET state = ?, score = ?, meta = ? WHERE rowid = ?'
_SQ_SCORE = 'UPDATE mpq_jobs SET score = ? WHERE rowid = ?'
_SQ_STATS_ADD = ('UPDATE mpq_stats SET n_all = n_all + ?, n_over = n_over + ?, '
                 'n_failed = n_failed + ? WHERE queue = ?')
_SQ_STATS_NEW = 'INSERT INTO mpq_stats (queue, n_all, n_over, n_failed) VALUES (?, ?, ?, ?)'

_SQ_CONNECT_LOCK = threading.Lock()
_SQ_UNKNOWN = object()     # a cached bound not read from the database yet
_SQ_WAKE_SLOTS = 4         # masters of one queue that can listen for wake-ups at once
_SQ_SUN_PATH_MAX = 107     # AF_UNIX path bytes, leaving room for the final NUL


def _sq_num(value):
    """``tonumber()``: a number from a step argument (None if it is not one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        number = float(_text(value))
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else number


def _sq_str(value):
    """``tostring()`` of a meta value, as Lua spells it."""
    if value is None:
        return 'nil'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return '%.14g' % value
    return str(value)


def _sq_dump(meta):
    """Encode meta as the Lua ``setmeta`` stores it: no ``r`` while it is empty."""
    if meta.get('r'):
        return json.dumps(meta, separators=(',', ':'))
    meta.pop('r', None)
    raw = json.dumps(meta, separators=(',', ':'))
    meta['r'] = []
    return raw


def _sqlite_wake_paths(db_file, queue):
    """The datagram socket paths a queue's masters listen on for wake-ups."""
    base = '%s.%s.wake' % (db_file, queue)
    if len(os.fsencode(base)) + 2 > _SQ_SUN_PATH_MAX:      # + 2: room for '.N'
        digest = _sha1_hex('%s\0%s' % (db_file, queue))[:24]
        base = os.path.join(os.path.dirname(db_file), '.mpq-%s.wake' % digest)
        if len(os.fsencode(base)) + 2 > _SQ_SUN_PATH_MAX:
            base = '/tmp/mpq-%s.wake' % digest
    return [base] + ['%s.%d' % (base, i) for i in range(1, _SQ_WAKE_SLOTS)]


class _SqliteBatch:
    """The steps of one ``execute()`` inside one transaction: the Lua helpers
    with a few bounds of the queue cached for the length of the batch."""

    def __init__(self, conn, queue, now):
        self.conn, self.queue, self.now = conn, queue, now
        self.wake = False
        self.wmin = self.wmax = self.dmin = _SQ_UNKNOWN   # None: that state is empty
        self.d_all = self.d_over = self.d_failed = 0

    def forget(self):
        """Rows may have left waiting or delayed: read the bounds again."""
        self.wmin = self.wmax = self.dmin = _SQ_UNKNOWN

    def one(self, sql, args):
        return self.conn.execute(sql, args).fetchone()

    def flush_stats(self):
        if self.d_all or self.d_over or self.d_failed:
            args = (self.d_all, self.d_over, self.d_failed, self.queue)
            if self.conn.execute(_SQ_STATS_ADD, args).rowcount == 0:
                self.conn.execute(_SQ_STATS_NEW, (self.queue,) + args[:3])
            self.d_all = self.d_over = self.d_failed = 0

    # -- the Lua helpers -----------------------------------------------------

    def tail(self):
        high = self.wmax
        if high is _SQ_UNKNOWN:
            high = self.one(_SQ_MAX, (self.queue,))[0]
        if high is None:                       # RPUSH into an empty list
            self.wake = True
            self.wmin = self.wmax = 0.0
            return 0.0
        self.wmax = high + 1
        return self.wmax

    def head(self):
        low = self.wmin
        if low is _SQ_UNKNOWN:
            low = self.one(_SQ_MIN, (self.queue, 'waiting'))[0]
        if low is None:                        # LPUSH into an empty list
            self.wake = True
            self.wmin = self.wmax = 0.0
            return 0.0
        self.wmin = low - 1
        return self.wmin

    def ready(self, delay):
        """``ready()``: (state, score) of a job that becomes waiting or delayed."""
        if delay and delay > 0:
            due = self.now + delay
            first = self.dmin
            if first is _SQ_UNKNOWN:
                first = self.one(_SQ_MIN, (self.queue, 'delayed'))[0]
            if first is None or first > due:
                self.wake = True
                first = due
            self.dmin = first
            return 'delayed', due
        return 'waiting', self.tail()

    def lease_score(self, meta):
        score = self.now + LEASE_SECONDS
        deadline = meta.get('d')
        if deadline and deadline > 0 and deadline + 1 < score:
            score = deadline + 1
        return score

    def start(self, rowid, meta, worker, owner):
        if meta.get('p') != 'f':
            meta['x'] = (meta.get('x') or 0) + 1
        meta['s'] = self.now
        meta['w'] = worker
        meta['o'] = owner
        timeout = meta.get('t') or 0
        meta['d'] = self.now + timeout if timeout > 0 else 0
        self.conn.execute(_SQ_MOVE_META, ('working', self.lease_score(meta), _sq_dump(meta),
                                          rowid))

    def to_failed(self, rowid, meta):
        meta.pop('p', None)
        meta['ft'] = self.now
        self.conn.execute(_SQ_MOVE_META, ('failed', self.now, _sq_dump(meta), rowid))
        self.d_failed += 1

    def to_head(self, rowid, meta=None):
        if meta is None:
            self.conn.execute(_SQ_MOVE, ('waiting', self.head(), rowid))
        else:
            self.conn.execute(_SQ_MOVE_META, ('waiting', self.head(), _sq_dump(meta), rowid))

    def lost(self, rowid, meta, error, timeout):
        """A started job whose worker is gone: another attempt, its fail
        handlers, or failed."""
        meta['r'].append(error)
        if meta.get('p') == 'f':
            meta['h'] = (meta.get('h') or 0) + 1
            if meta['h'] >= HANDLER_ATTEMPTS:
                meta['r'].append('fail handlers did not finish after %s attempts'
                                 % _sq_str(meta['h']))
                self.to_failed(rowid, meta)
            else:
                self.to_head(rowid, meta)
        elif timeout:
            meta['y'] = TYPE_TIMEOUT
            meta['p'] = 'f'
            self.to_head(rowid, meta)
        elif (meta.get('x') or 0) <= (meta.get('f') or 0):
            self.to_head(rowid, meta)       # run again at once: the job did not fail itself
        else:
            meta['y'] = TYPE_NORMAL
            meta['p'] = 'f'
            self.to_head(rowid, meta)

    def requeue(self, job_id):
        row = self.one(_SQ_ROW, (self.queue, job_id))
        if row is None:
            return 0
        rowid, state, raw = row
        if state == 'working':
            meta = _meta_dict(raw)
            if meta.get('p') != 'f' and (meta.get('x') or 0) > 0:
                meta['x'] -= 1
                self.to_head(rowid, meta)
            else:
                self.to_head(rowid)
        elif state == 'reserved':
            self.to_head(rowid)
        else:
            return 0
        return 1

    # -- the steps -----------------------------------------------------------

    def run(self, ops):
        out = []
        i, count = 0, len(ops)
        while i < count:
            name = ops[i][0]
            if name == 'push':
                j = i + 1
                while j < count and ops[j][0] == 'push':
                    j += 1
                self.push(ops[i:j])
                out.extend([1] * (j - i))
                i = j
                continue
            out.append(getattr(self, 'op_' + name)(*ops[i][1:]))
            i += 1
        return out

    def push(self, ops):
        rows = []
        for _, job_id, meta, payload, delay in ops:
            if type(delay) not in (int, float):
                delay = _sq_num(delay)
            state, score = self.ready(delay)
            if isinstance(payload, str):
                payload = payload.encode()
            rows.append((self.queue, _text(job_id), state, score, _text(meta), payload))
        if len(rows) == 1:
            self.conn.execute(_SQ_INSERT, rows[0])
        else:
            self.conn.executemany(_SQ_INSERT, rows)
        self.d_all += len(rows)

    def op_reserve(self, n):
        n = int(_sq_num(n) or 0)
        if n <= 0:
            return []
        rows = self.conn.execute(_SQ_FIRST, (self.queue, n)).fetchall()
        if not rows:
            return []
        self.forget()
        back = self.now + RESERVE_SECONDS
        # distinct scores keep queue order when they come back by tick
        self.conn.executemany(_SQ_MOVE, [('reserved', back + i * 1e-6, r[0])
                                         for i, r in enumerate(rows)])
        out = []
        for _, job_id, raw, payload in rows:
            out += (job_id, raw, payload)
        return out

    def op_start(self, job_id, worker, owner):
        row = self.one(_SQ_ROW, (self.queue, _text(job_id)))
        if row is None or row[1] != 'reserved':
            return 0
        self.start(row[0], _meta_dict(row[2]), worker, owner)
        return 1

    def op_pop(self, worker, owner):
        row = self.one(_SQ_FIRST, (self.queue, 1))
        if row is None:
            return []
        self.forget()
        rowid, job_id, raw, payload = row
        meta = _meta_dict(raw)
        self.start(rowid, meta, worker, owner)
        return [job_id, json.dumps(meta, separators=(',', ':')), payload]

    def op_renew(self, job_id):
        row = self.one(_SQ_ROW, (self.queue, _text(job_id)))
        if row is None or row[1] != 'working':
            return 0
        self.conn.execute(_SQ_SCORE, (self.lease_score(_meta_dict(row[2])), row[0]))
        return 1

    def op_done(self, job_id):
        # whatever state it is in (recovered elsewhere meanwhile), it must not run again
        cur = self.conn.execute('DELETE FROM mpq_jobs WHERE queue = ? AND id = ?',
                                (self.queue, _text(job_id)))
        if cur.rowcount > 0:
            self.d_over += 1
            self.forget()
        return 1

    def op_retry(self, job_id, delay, error):
        row = self.one(_SQ_ROW, (self.queue, _text(job_id)))
        if row is None or row[1] != 'working':
            return 0
        meta = _meta_dict(row[2])
        meta['r'].append(error)
        state, score = self.ready(_sq_num(delay))
        self.conn.execute(_SQ_MOVE_META, (state, score, _sq_dump(meta), row[0]))
        return 1

    def op_fail(self, job_id, type_, errors, name):
        row = self.one(_SQ_ROW, (self.queue, _text(job_id)))
        if row is None or row[1] == 'failed':
            return 0
        if row[1] in ('waiting', 'delayed'):
            self.forget()
        meta = _meta_dict(row[2])
        meta['r'].extend(json.loads(errors) if isinstance(errors, (str, bytes)) else errors)
        meta['y'] = _sq_num(type_)
        if name != '' and name != b'':
            meta['n'] = _text(name)
        self.to_failed(row[0], meta)
        return 1

    def op_lost(self, job_id, error, timeout):
        row = self.one(_SQ_ROW, (self.queue, _text(job_id)))
        if row is None:
            return 0
        if row[1] == 'working':
            flag = _text(timeout) == '1' if isinstance(timeout, (str, bytes)) else timeout == 1
            self.lost(row[0], _meta_dict(row[2]), error, flag)
            return 1
        if row[1] == 'reserved':
            self.to_head(row[0])
            return 2
        return 0

    def op_requeue(self, job_id):
        return self.requeue(_text(job_id))

    def op_recover_owner(self, owner, error):
        # only started jobs carry their owner; reservations come back by tick
        owner, n = _text(owner), 0
        for _, job_id, raw in self.conn.execute(_SQ_ALL_IN, (self.queue, 'working')).fetchall():
            if _meta_dict(raw).get('o') == owner:
                n += self.requeue(job_id)
        return n

    def op_tick(self, limit):
        limit, now, queue = int(_sq_num(limit) or 0), self.now, self.queue
        due = self.conn.execute(_SQ_DUE, (queue, 'delayed', now, limit)).fetchall()
        if due:
            self.dmin = _SQ_UNKNOWN
            self.conn.executemany(_SQ_MOVE, [('waiting', self.tail(), r[0]) for r in due])
        back = self.conn.execute(_SQ_DUE, (queue, 'reserved', now, limit)).fetchall()
        for row in reversed(back):
            self.to_head(row[0])
        dead = self.conn.execute(_SQ_DUE, (queue, 'working', now, limit)).fetchall()
        for rowid, _, raw in dead:
            meta = _meta_dict(raw)
            self.lost(rowid, meta, 'lease expired: worker %s or its server stopped while '
                      'running the job' % _sq_str(meta.get('w')), False)
        nxt = -1
        for state in ('delayed', 'reserved', 'working'):
            first = self.one(_SQ_MIN, (queue, state))[0]
            if first is not None:
                wait = max(first - now, 0)
                if nxt < 0 or wait < nxt:
                    nxt = wait
        return '%.14g' % nxt

    def counts(self):
        """Jobs per state, and the counters (n_all, n_over, n_failed)."""
        self.flush_stats()
        counts = collections.Counter(dict(self.conn.execute(
            'SELECT state, COUNT(*) FROM mpq_jobs WHERE queue = ? GROUP BY state',
            (self.queue,)).fetchall()))
        stats = self.one('SELECT n_all, n_over, n_failed FROM mpq_stats WHERE queue = ?',
                         (self.queue,)) or (0, 0, 0)
        return counts, stats

    def op_status(self):
        counts, stats = self.counts()
        return [stats[0], counts['waiting'] + counts['delayed'],
                counts['reserved'] + counts['working'], counts['failed'], stats[1]]

    def op_depth(self):
        counts, stats = self.counts()
        head = self.one("SELECT meta FROM mpq_jobs WHERE queue = ? AND state = 'waiting' "
                        'ORDER BY score LIMIT 1', (self.queue,))
        return [counts[state] for state in _DEPTH_FIELDS[:5]] + list(stats) + [
            head[0] if head else '']

    def op_failed(self, offset, count):
        offset, count = int(_sq_num(offset) or 0), int(_sq_num(count) or 0)
        if count <= 0:
            return []
        out = []
        for job_id, raw in self.conn.execute(
                "SELECT id, meta FROM mpq_jobs WHERE queue = ? AND state = 'failed' "
                'ORDER BY score, id LIMIT ? OFFSET ?', (self.queue, count, max(offset, 0))):
            out += (job_id, raw)
        return out

    def op_meta(self, job_id):
        row = self.one('SELECT meta FROM mpq_jobs WHERE queue = ? AND id = ?',
                       (self.queue, _text(job_id)))
        return row[0] if row else ''

    def op_retry_failed(self, job_id):
        job_id = _text(job_id)
        if job_id == '':
            rows = self.conn.execute(_SQ_ALL_IN, (self.queue, 'failed')).fetchall()
        else:
            rows = self.conn.execute("SELECT rowid, id, meta FROM mpq_jobs WHERE queue = ? "
                                     "AND id = ? AND state = 'failed'",
                                     (self.queue, job_id)).fetchall()
        for rowid, _, raw in rows:
            meta = _meta_dict(raw)
            meta['x'] = 0
            for key in ('h', 'p', 'y', 'ft'):
                meta.pop(key, None)
            meta['r'] = []
            self.conn.execute(_SQ_MOVE_META, ('waiting', self.tail(), _sq_dump(meta), rowid))
        return len(rows)

    def op_delete_failed(self, job_id):
        return self.conn.execute("DELETE FROM mpq_jobs WHERE queue = ? AND id = ? AND "
                                 "state = 'failed'", (self.queue, _text(job_id))).rowcount

    def op_clean(self):
        """Empty the queue; returns how many Redis keys that would have deleted."""
        self.flush_stats()
        states = [r[0] for r in self.conn.execute(
            'SELECT DISTINCT state FROM mpq_jobs WHERE queue = ?', (self.queue,))]
        n = len(states) + (2 if states else 0)
        n += self.conn.execute('DELETE FROM mpq_stats WHERE queue = ?', (self.queue,)).rowcount
        self.conn.execute('DELETE FROM mpq_jobs WHERE queue = ?', (self.queue,))
        self.forget()
        return n


class SqliteDriver(_Driver):
    """The embedded broker: one SQLite database file, for a pool on one server.

    :param path: the database file; it and its directory are created on first use.

    All queues share the file (a ``queue`` column).  Each ``execute()`` is one
    ``BEGIN IMMEDIATE`` transaction in WAL mode, so the processes of a pool
    serialize their steps through SQLite's write lock.  Connections open lazily
    in each process and are never used across a ``fork()``.  A push wakes the
    queue's master through a Unix datagram socket next to the database.
    """

    BUSY_TIMEOUT = 10.0     # seconds a step waits for another process's transaction

    _inherited = []         # connections of parent processes: kept, never used or closed

    def __init__(self, path):
        if not isinstance(path, str) or not path:
            raise ConfigError('SqliteDriver path must be a file path, got %r' % (path,))
        self.path = path
        self.address = 'sqlite:' + path
        self._file = os.path.abspath(path)    # daemons chdir('/'): fix the path now
        self._pid = None
        self._conn = None
        self._lock = None
        self._sender = None
        self._wake_paths = {}

    def __repr__(self):
        return 'SqliteDriver(%r)' % self.path

    def __getstate__(self):   # drivers travel in pickled configs without their connection
        state = dict(self.__dict__)
        state['_conn'] = state['_pid'] = state['_lock'] = state['_sender'] = None
        return state

    def _error(self, exc):
        return DriverError('SQLite database %s: %s' % (self.path, exc))

    def _connect(self):
        with _SQ_CONNECT_LOCK:
            if self._pid == os.getpid() and self._conn is not None:
                return self._conn
            return self._open()

    def preload(self):
        import sqlite3  # noqa: F401

    def _open(self):
        if self._conn is not None and self._pid != os.getpid():
            # a parent's connection: closing it here could disturb the parent's locks
            SqliteDriver._inherited.append(self._conn)
            self._conn = None
            if self._sender is not None:
                self._sender.close()
            self._sender = None
        import sqlite3
        self._lock = threading.Lock()
        conn = None
        try:
            os.makedirs(os.path.dirname(self._file), exist_ok=True)
            conn = sqlite3.connect(self._file, timeout=self.BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False, cached_statements=64)
            conn.execute('PRAGMA busy_timeout = %d' % int(self.BUSY_TIMEOUT * 1000))
            conn.execute('PRAGMA journal_mode = WAL')
            conn.execute('PRAGMA synchronous = NORMAL')
            conn.executescript(_SQLITE_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise self._error(exc) from exc
        self._conn, self._pid = conn, os.getpid()
        return conn

    def execute(self, queue, ops):
        for op in ops:
            if len(op) - 1 != _STEP_ARGS[op[0]]:
                raise ValueError('step %r takes %d arguments' % (op[0], _STEP_ARGS[op[0]]))
        if not ops:
            return []

        def run(conn):
            batch = _SqliteBatch(conn, queue, time.time())
            out = batch.run(ops)
            batch.flush_stats()
            return batch.wake, out
        wake, out = self._transaction(run)
        if wake:
            self._wake(queue)
        return out

    def _transaction(self, work, busy_timeout=None):
        """``work(conn)`` inside one ``BEGIN IMMEDIATE`` transaction; its result.
        ``busy_timeout`` (seconds) shortens the wait for another writer."""
        import sqlite3
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._connect()
        with self._lock:
            try:
                if busy_timeout is not None:
                    conn.execute('PRAGMA busy_timeout = %d' % int(busy_timeout * 1000))
                try:
                    conn.execute('BEGIN IMMEDIATE')
                    out = work(conn)
                    conn.execute('COMMIT')
                except BaseException:
                    if conn.in_transaction:
                        try:
                            conn.execute('ROLLBACK')
                        except sqlite3.Error:
                            pass
                    raise
                finally:
                    if busy_timeout is not None:
                        conn.execute('PRAGMA busy_timeout = %d' % int(self.BUSY_TIMEOUT * 1000))
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
        return out

    def _fleet_op(self, *op):
        def run(conn):
            now = time.time()
            conn.execute('DELETE FROM mpq_fleet WHERE expires <= ?', (now,))
            if op[0] == 'beat':
                _, pool_id, info, ttl = op
                conn.execute('INSERT OR REPLACE INTO mpq_fleet (id, info, expires) '
                             'VALUES (?, ?, ?)', (pool_id, info, now + ttl))
                return 1
            if op[0] == 'forget':
                return conn.execute('DELETE FROM mpq_fleet WHERE id = ?', (op[1],)).rowcount
            out = [now]
            for row in conn.execute('SELECT id, info, expires FROM mpq_fleet ORDER BY expires'):
                out.extend(row)
            return out
        return self._transaction(run, busy_timeout=FLEET_TIMEOUT)

    # -- wake-ups --------------------------------------------------------------

    def _paths(self, queue):
        paths = self._wake_paths.get(queue)
        if paths is None:
            paths = self._wake_paths[queue] = _sqlite_wake_paths(self._file, queue)
        return paths

    def _wake(self, queue):
        """One datagram to every master listening; nobody listening is fine."""
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            for path in self._paths(queue):
                try:
                    self._sender.sendto(b'1', path)
                except OSError:
                    pass
        except OSError:
            pass

    def waker(self, queue):
        return _SqliteWaker(self._paths(queue), self.path, queue)

    def close(self):
        if self._pid == os.getpid():
            if self._conn is not None:
                self._conn.close()
            if self._sender is not None:
                self._sender.close()
        elif self._conn is not None:
            SqliteDriver._inherited.append(self._conn)
        self._conn = self._sender = None
        self._pid = None


class _SqliteWaker:
    """A Unix datagram socket that a queue's master selects on; ``execute()``
    sends it a byte when a batch makes work.  Up to ``_SQ_WAKE_SLOTS`` masters
    of one queue can listen (each on its own path); a socket file left by a
    dead process is taken over."""

    def __init__(self, paths, db_path, queue):
        directory = os.path.dirname(paths[0])
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._path = None
        lock = None
        try:
            os.makedirs(directory, exist_ok=True)
            try:   # serialize the stale-socket check with other masters binding
                lock = os.open(directory, os.O_RDONLY)
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError:
                pass
            for path in paths:
                if self._bind(path):
                    self._path = path
                    break
        except OSError as exc:
            self._sock.close()
            raise DriverError('SQLite database %s: cannot listen for wake-ups of queue %r on '
                              '%s: %s' % (db_path, queue, paths[0], exc)) from exc
        finally:
            if lock is not None:
                os.close(lock)     # releases the flock
        if self._path is None:
            self._sock.close()
            raise DriverError('SQLite database %s: %d masters of queue %r already listen for '
                              'wake-ups (%s)' % (db_path, len(paths), queue, paths[0]))
        self._sock.setblocking(False)
        self._ino = os.stat(self._path).st_ino

    def _bind(self, path):
        """Bind to path; False if a live socket holds it.  A stale one is replaced."""
        try:
            self._sock.bind(path)
            return True
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(path)
            return False                                # somebody listens there
        except (ConnectionRefusedError, FileNotFoundError):
            pass
        finally:
            probe.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._sock.bind(path)
        return True

    def fileno(self):
        return self._sock.fileno()

    def drain(self):
        try:
            while self._sock.recv(256):
                pass
        except BlockingIOError:
            pass
        except OSError as exc:
            raise DriverError('wake-up socket %s: %s' % (self._path, exc)) from exc

    def close(self):
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        try:
            if os.stat(self._path).st_ino == self._ino:    # still ours
                os.unlink(self._path)
        except OSError:
            pass


###############################################################################
# Runtime: worker
###############################################################################


_LENGTH = struct.Struct('!I')


class _Channel:
    """One end of a socketpair between two mpqueue processes, carrying pickled
    messages, each framed by a 4-byte length.  Reads are buffered: one
    ``recv()`` takes every message that has arrived, so a master serving many
    workers makes one system call for several of them."""

    __slots__ = ('sock', 'buf')

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    @classmethod
    def pair(cls):
        a, b = socket.socketpair()
        return cls(a), cls(b)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def send(self, msg):
        data = pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(_LENGTH.pack(len(data)) + data)

    def _frame(self):
        """The next whole message in the buffer, or None."""
        buf = self.buf
        if len(buf) < 4:
            return None
        end = 4 + _LENGTH.unpack_from(buf)[0]
        if len(buf) < end:
            return None
        msg = pickle.loads(bytes(buf[4:end]))
        del buf[:end]
        return msg

    def _fill(self):
        chunk = self.sock.recv(262144)
        if not chunk:
            raise EOFError('the other process closed the channel')
        self.buf += chunk

    def recv(self):
        """The next message, waiting for it."""
        while True:
            msg = self._frame()
            if msg is not None:
                return msg
            self._fill()

    def recv_ready(self):
        """Every message that can be read now: the whole ones already buffered,
        else what one read brings (call it when the socket is readable)."""
        msg = self._frame()
        if msg is None:
            self._fill()
            out = []
        else:
            out = [msg]
        while True:
            msg = self._frame()
            if msg is None:
                return out
            out.append(msg)

    def poll(self, timeout=0):
        """True when a message (or part of one) is waiting."""
        if len(self.buf) >= 4 and len(self.buf) >= 4 + _LENGTH.unpack_from(self.buf)[0]:
            return True
        return bool(select.select([self.sock], [], [], timeout)[0])


def _send(conn, msg):
    conn.send(msg)


def _recv(conn):
    return conn.recv()


class _Worker:
    """A worker process: runs the jobs its master hands it (distribute model)
    or pops them itself (grab model), one at a time, or up to the queue's
    ``coroutine_number`` at once on its event loop."""

    def __init__(self, config, qconf, conn, owner, generation):
        self.config = config
        self.qconf = qconf
        self.queue = qconf['name']
        self.conn = conn
        self.owner = owner
        self.generation = generation
        self.driver = config['basics']['driver']
        self.secret = config['basics']['secret']
        self.busy = False
        self.stopping = False
        self.loop = None
        self.id = None
        self.tasks = {}             # coroutine workers: job id -> its asyncio task
        self.finished = None        # coroutine workers: resolves to the exit code
        self.exit_code = EXIT_OK

    def run(self):
        self.id = '%s:%d' % (_HOST, os.getpid())
        _set_title('mpq:%s:worker' % self.queue)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.generation:
            _forget_user_modules()
        try:
            for hook in (self.config['basics']['worker_start_handle'],
                         self.qconf['worker_start_handle']):
                if hook is not None:
                    hook()
        except BaseException:
            logger.exception('worker %s of queue %r: a worker_start_handle raised; exiting',
                             self.id, self.queue)
            return EXIT_BOOT_ERROR
        logger.info('worker %s of queue %r started', self.id, self.queue)
        try:
            _send(self.conn, ('ready',))
            if self.qconf['model'] == MODEL_GRAB:
                return self._grab_loop()
            if self.qconf['coroutine_number'] > 1:
                return self._event_loop().run_until_complete(self._coroutine_loop())
            return self._distribute_loop()
        except (_StopWorker, EOFError, BrokenPipeError, ConnectionResetError):
            return EXIT_OK

    def _on_sigterm(self, signum, frame):
        self.stopping = True
        if not self.busy:
            raise _StopWorker()

    def _distribute_loop(self):
        ahead = None            # the next job, read before reporting the last one
        while True:
            msg, ahead = (ahead or _recv(self.conn)), None
            if msg[0] == 'stop':
                return EXIT_OK
            if msg[4] is not None:          # a queued job, found while idle
                if self._too_old(msg):
                    _send(self.conn, ('skipped', msg[1]))
                    continue
                _send(self.conn, ('begun', msg[1]))
            self.busy = True
            result = self._run(msg[1], msg[2], msg[3])
            code = self._after_job()
            begun = None
            if code is None and not self.stopping and self.conn.poll(0):
                ahead = _recv(self.conn)
                if ahead[0] == 'job' and ahead[4] is not None:
                    if self._too_old(ahead):
                        begun, ahead = ('skipped', ahead[1]), None
                    else:
                        begun, ahead = ahead[1], ahead[:4] + (None,)
            self._report(result, code, begun)
            self.busy = False
            if code is not None:
                return code
            if self.stopping:
                return EXIT_OK

    @staticmethod
    def _too_old(msg):
        """A job queued behind a slow one is not started once its reservation
        nears its end: the broker gives it back to the queue instead."""
        return time.monotonic() - msg[4] > RESERVE_SECONDS * 0.6

    async def _coroutine_loop(self):
        """Distribute model with ``coroutine_number`` > 1: each job the master
        hands over becomes a task on this worker's loop, so async jobs that
        wait overlap.  A task is cancelled at its job's timeout; a job that
        blocks the loop instead is killed with the worker by the master."""
        import asyncio
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        loop.add_reader(self.conn.fileno(), self._on_master_messages)
        loop.add_signal_handler(signal.SIGTERM, self._stop_when_idle)
        try:
            return await self.finished
        finally:
            loop.remove_reader(self.conn.fileno())
            loop.remove_signal_handler(signal.SIGTERM)

    def _on_master_messages(self):
        import asyncio
        try:
            messages = self.conn.recv_ready()
        except (EOFError, OSError):         # the master is gone
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            messages = [('stop',)]
        for msg in messages:
            if msg[0] == 'stop':
                self._stop_when_idle()
            else:
                task = asyncio.get_running_loop().create_task(self._job_task(*msg[1:4]))
                self.tasks[msg[1]] = task

    def _stop_when_idle(self, code=None):
        self.stopping = True
        if code is not None:
            self.exit_code = code
        if not self.tasks and not self.finished.done():
            self.finished.set_result(self.exit_code)

    async def _job_task(self, job_id, meta, payload):
        import asyncio
        timeout = meta.get('t') or 0
        timer = None
        if timeout:
            timer = asyncio.get_running_loop().call_later(timeout, self.tasks[job_id].cancel)
        try:
            steps = self._attempt(job_id, meta, payload)
            result = await self._drive(steps, _resume(steps))
        except asyncio.CancelledError:      # only the timer cancels a job's task
            logger.error('job %s of queue %r ran past its timeout of %ss; cancelled', job_id,
                         self.queue, timeout)
            result = ('lost', job_id, _timeout_error(timeout), 1)
        finally:
            if timer is not None:
                timer.cancel()
        del self.tasks[job_id]
        code = self._after_job()
        try:
            self._report(result, code)
        except EOFError:
            code = EXIT_OK
        if code is not None or self.stopping:
            self._stop_when_idle(code)

    def _report(self, result, code, begun=None):
        """Tell the master how the job ended (and whether the job queued behind
        it has begun); if the master is gone, write the result to the broker
        directly so nothing is lost."""
        try:
            _send(self.conn, result + (code, begun))
        except OSError:
            self._execute([result])
            raise EOFError() from None

    def _grab_loop(self):
        """Pop, run, repeat.  A job's outcome is recorded in the same broker
        call that pops the next job: one round trip per job."""
        result = None
        while True:
            if self.stopping:
                if result is not None:
                    self._execute([result])
                    _send(self.conn, ('ran', result[1], None))
                return EXIT_OK
            self.busy = True
            steps = [result] if result is not None else []
            got = self._execute(steps + [('pop', self.id, self.owner)])[-1]
            if result is not None:
                _send(self.conn, ('ran', result[1], None))
                result = None
            if not got:
                if self.stopping:
                    return EXIT_OK
                self.busy = False
                _send(self.conn, ('idle',))
                msg = _recv(self.conn)          # 'wake' or 'stop'
                if msg[0] == 'stop':
                    return EXIT_OK
                continue
            job_id, meta, payload = _text(got[0]), _meta_dict(got[1]), got[2]
            _send(self.conn, ('run', job_id, meta.get('t') or 0))
            result = self._run(job_id, meta, payload)
            code = self._after_job()
            if code is not None:
                self._execute([result])
                _send(self.conn, ('ran', job_id, code))
                return code

    def _execute(self, steps):
        """Run broker steps, waiting out a broker outage with back-off (one
        log line per outage): a finished job's outcome is never dropped."""
        delay, down_since = 0.1, None
        while True:
            try:
                out = self.driver.execute(self.queue, steps)
            except DriverError as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    logger.error('worker %s of queue %r: %s; retrying with back-off',
                                 self.id, self.queue, exc)
                time.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            if down_since is not None:
                logger.info('worker %s of queue %r: the broker answers again after %.1fs',
                            self.id, self.queue, time.monotonic() - down_since)
            return out

    def _after_job(self):
        limit = self.qconf['memory_limit']
        if limit:
            rss = _rss_mb()
            if rss is not None and rss > limit:
                logger.info('worker %s of queue %r is over memory_limit (%.0f MB > %s MB); '
                            'exiting to be replaced', self.id, self.queue, rss, limit)
                return EXIT_MEMORY
        return None

    # -- running one job -----------------------------------------------------

    def _job_info(self, job_id, meta, name=None):
        return {
            'id': job_id, 'queue': self.queue, 'create_time': meta.get('c'),
            'start_time': meta.get('s'), 'exec_number': meta.get('x', 0),
            'worker_id': meta.get('w') or self.id, 'timeout': meta.get('t', 0),
            'fail_number': meta.get('f', 0), 'fail_expire': meta.get('e', 0),
            'error_info': list(meta.get('r') or []), 'type': meta.get('y') or TYPE_NORMAL,
            'job': name or meta.get('n', ''),
        }

    def _run(self, job_id, meta, payload):
        """Run one job (or its fail handlers); return the step that records the
        outcome: ``('done', id)``, ``('retry', ...)`` or ``('fail', ...)``."""
        steps = self._attempt(job_id, meta, payload)
        resumed = _resume(steps)            # a sync job ends here, with no event loop
        if resumed[0]:
            return resumed[1]
        return self._event_loop().run_until_complete(self._drive(steps, resumed))

    @staticmethod
    async def _drive(steps, resumed):
        """Run the rest of a job's steps (``_attempt``, a generator that yields
        what the job awaits) on the worker's event loop.  Cancellation (the
        job's timeout, on a coroutine worker) is not the job's to catch."""
        import asyncio
        finished, got = resumed
        while not finished:
            try:
                value, error = await got, None
            except asyncio.CancelledError as exc:
                if _cancel_requested():
                    steps.close()
                    raise
                value, error = None, exc        # the job's own: an ordinary failure
            except BaseException as exc:
                value, error = None, exc
            finished, got = _resume(steps, value, error)
        return got

    def _attempt(self, job_id, meta, payload):
        if meta.get('p') == 'f':
            return (yield from self._run_fail_handlers_only(job_id, meta, payload))
        try:
            job, args, kwargs = _decode(payload, self.secret)
            func, job_obj = _resolve(job)
        except BaseException as exc:
            text = _format_exc(exc)
            logger.error('job %s of queue %r cannot be decoded; it goes to the failed list:\n%s',
                         job_id, self.queue, text)
            errors = [text] + (yield from self._fail_handlers(None, self._job_info(job_id, meta),
                                                              exc, [text]))
            return ('fail', job_id, TYPE_NORMAL, json.dumps(errors), '<undecodable job>')
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('job %s of queue %r started (attempt %s)', job_id, self.queue,
                         meta.get('x'))
        try:
            result = func(*args, **kwargs)
            if _isawaitable(result):
                result = yield result
        except BaseException as exc:
            text = _format_exc(exc)
            name = _describe_call(job, args, kwargs)
            if meta.get('x', 1) <= meta.get('f', 0):
                logger.warning('job %s (%s) of queue %r failed (attempt %s of %s); retrying in '
                               '%ss:\n%s', job_id, name, self.queue, meta.get('x'),
                               meta.get('f', 0) + 1, meta.get('e', 0), text)
                return ('retry', job_id, meta.get('e', 0), text)
            logger.error('job %s (%s) of queue %r failed for good after %s attempts:\n%s',
                         job_id, name, self.queue, meta.get('x'), text)
            info = self._job_info(job_id, meta, name)
            info['error_info'].append(text)
            errors = [text] + (yield from self._fail_handlers(job_obj, info, exc,
                                                              info['error_info']))
            return ('fail', job_id, TYPE_NORMAL, json.dumps(errors), name)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('job %s of queue %r done', job_id, self.queue)
        return ('done', job_id)

    def _run_fail_handlers_only(self, job_id, meta, payload):
        """The job timed out or its worker died for the last time: another
        worker (this one) runs its fail handlers, then files it as failed."""
        last = (meta.get('r') or ['job failed'])[-1]
        exc = TimeoutError(last) if meta.get('y') == TYPE_TIMEOUT else RuntimeError(last)
        job_obj, name, errors = None, meta.get('n', ''), []
        try:
            job, args, kwargs = _decode(payload, self.secret)
            name = _describe_call(job, args, kwargs)
            _, job_obj = _resolve(job)
        except BaseException as decode_exc:
            errors.append(_format_exc(decode_exc))
        logger.error('job %s (%s) of queue %r failed for good: %s', job_id, name, self.queue,
                     last)
        info = self._job_info(job_id, meta, name)
        errors += yield from self._fail_handlers(job_obj, info, exc, info['error_info'] + errors)
        return ('fail', job_id, meta.get('y') or TYPE_NORMAL, json.dumps(errors), name)

    def _fail_handlers(self, job_obj, info, exc, error_info):
        """Run ``Job.fail_handle`` then, unless it returned something other than
        False, the queue's ``fail_handle``.  Returns the handlers' own errors
        (a generator like ``_attempt``: it yields what the handlers await)."""
        errors = []
        info['error_info'] = list(error_info)
        run_queue_handler = True
        if job_obj is not None:
            try:
                returned = job_obj.fail_handle(info, exc)
                if _isawaitable(returned):
                    returned = yield returned
                run_queue_handler = returned is False
            except BaseException as handler_exc:
                errors.append('fail_handle of the job raised: ' + _format_exc(handler_exc, False))
                logger.error('job %s: its fail_handle raised:\n%s', info['id'], errors[-1])
        handler = self.qconf['fail_handle']
        if run_queue_handler and handler is not None:
            info['error_info'] = list(error_info) + errors
            try:
                returned = handler(info, exc)
                if _isawaitable(returned):
                    yield returned
            except BaseException as handler_exc:
                errors.append('fail_handle of queue %r raised: %s' % (
                    self.queue, _format_exc(handler_exc, False)))
                logger.error('job %s: the fail_handle of queue %r raised:\n%s', info['id'],
                             self.queue, errors[-1])
        return errors

    def _event_loop(self):
        if self.loop is None:
            import asyncio
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        return self.loop


def _cancel_requested():
    """True when the running task was cancelled (its job's timeout), not when
    the job itself raised CancelledError (before Python 3.11 one cannot tell
    them apart: it counts as cancelled)."""
    import asyncio
    task = asyncio.current_task()
    cancelling = getattr(task, 'cancelling', None)
    return cancelling is None or cancelling() > 0


def _resume(steps, value=None, error=None):
    """Resume a job's steps with what its last awaitable gave (or raised):
    ``(True, outcome)`` once they return, else ``(False, next awaitable)``."""
    try:
        return False, (steps.send(value) if error is None else steps.throw(error))
    except StopIteration as stop:
        return True, stop.value


def _timeout_error(timeout):
    return 'job ran past its timeout of %ss and was stopped' % timeout


def _format_exc(exc, chain=True):
    return ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__,
                                              chain=chain)).rstrip()


def _describe_call(job, args, kwargs):
    parts = [repr(a) for a in args] + ['%s=%r' % kv for kv in kwargs.items()]
    if isinstance(job, functools.partial):
        parts = [repr(a) for a in job.args] + ['%s=%r' % kv for kv in job.keywords.items()] + parts
    text = '%s(%s)' % (_job_name(job), ', '.join(parts))
    return text if len(text) <= 200 else text[:197] + '...'


def _die_with_parent(parent_pid):
    """Ask Linux to SIGKILL this process when its parent dies
    (PR_SET_PDEATHSIG): a worker must not run on unsupervised after its master
    died, since the manage process puts that master's jobs back at once."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # 1: PR_SET_PDEATHSIG
    except (ImportError, OSError, AttributeError):
        return
    if os.getppid() != parent_pid:      # it died before we asked
        os._exit(EXIT_ORPHANED)


def _worker_main(config, qconf, conn, close_fds, owner, generation, parent_pid):
    _die_with_parent(parent_pid)
    _reset_signals()
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    return _Worker(config, qconf, conn, owner, generation).run()


###############################################################################
# Runtime: master
###############################################################################


class _Slot:
    """What a master knows about one of its workers."""

    __slots__ = ('pid', 'conn', 'capacity', 'state', 'jobs', 'started', 'done', 'stop_sent',
                 'killed_for', 'timed_out', 'woken_at', 'queued')

    def __init__(self, pid, conn, capacity):
        self.pid = pid
        self.conn = conn
        self.capacity = capacity    # jobs it runs at once (coroutine_number)
        self.state = 'booting'      # booting -> idle <-> busy -> stopping
        self.jobs = {}              # running job id -> (timeout, began, deadline to kill it)
        self.started = time.time()
        self.done = 0
        self.stop_sent = False
        self.killed_for = None      # 'timeout' / 'stop' when the master killed it
        self.timed_out = None       # the job whose timeout got it killed
        self.woken_at = 0
        self.queued = None          # (job id, timeout) sent to it, not started yet


class _Master:
    """One per queue: watches the broker, hands jobs to idle workers, enforces
    timeouts, renews leases and recovers jobs, in one ``selectors`` loop."""

    def __init__(self, config, qconf, control):
        self.config = config
        self.qconf = qconf
        self.queue = qconf['name']
        self.control = control
        self.driver = config['basics']['driver']
        self.grab = qconf['model'] == MODEL_GRAB
        self.slots = {}                 # pid -> _Slot
        self.pending = []               # steps waiting for the next broker call
        self.buffer = collections.deque()   # reserved jobs not yet handed out
        self.pending_since = 0.0        # when the oldest unsent step was added
        self.wakes = 0                  # pushes seen (grab model: wake idle workers again)
        self.avg_job = None             # moving average of job run time (s)
        self.stopping = None            # None, 'graceful' or 'fast'
        self.stop_deadline = None
        self.generation = 0
        self.reloading = set()          # pids to replace once idle
        self.maybe_work = True          # the queue may hold ready jobs
        self.next_tick = 0.0
        self.next_renew = 0.0
        self.backoff = 0.0              # broker back-off while it is down
        self.broker_down_since = None
        self.waker = None
        self.waker_retry = 0.0
        self.boot_failures = 0
        self.spawn_after = 0.0
        self.ready_sent = False
        self.owner = None
        self.started = time.time()
        self.done = 0                   # jobs its workers finished, replaced ones too
        self.beat_failing = False       # publishing the pool's heartbeat fails

    # -- process life --------------------------------------------------------

    def run(self):
        self.owner = '%s:%d' % (_HOST, os.getpid())
        _set_title('mpq:%s:master' % self.queue)
        self.sel = selectors.DefaultSelector()
        self.signals = _Signals(self.sel, (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1),
                                ignore=(signal.SIGINT, signal.SIGUSR2, signal.SIGHUP))
        self.sel.register(self.control, selectors.EVENT_READ, 'control')
        logger.info('master of queue %r started (pid %d, %d workers, %s model)', self.queue,
                    os.getpid(), self.qconf['worker_number'], self.qconf['model'])
        try:
            while True:
                self._spawn_missing()
                if self.stopping and not self.slots:
                    break
                self._wait(self._timeout())
                self._reap()
                self._check_deadlines()
                self._flush()
            self._flush_before_exit()
        finally:
            if self.waker is not None:
                self.waker.close()
        logger.info('master of queue %r stopped', self.queue)
        return EXIT_OK

    def _flush_before_exit(self):
        """Record the last outcomes; if the broker is down, keep trying for the
        stop grace period (what is not recorded is recovered by lease expiry)."""
        deadline = time.monotonic() + self.config['basics']['stop_grace']
        while self.pending and time.monotonic() < deadline:
            self.next_tick = 0.0
            self._flush()
            if self.pending:
                time.sleep(min(1.0, max(0.1, self.backoff)))
        if self.pending:
            logger.error('master of queue %r exits with %d unrecorded step(s); their jobs are '
                         'recovered when their leases expire', self.queue, len(self.pending))

    def _timeout(self):
        now = time.monotonic()
        if self.pending and self.broker_down_since is None:
            if not self.pending_since:
                self.pending_since = now
            return max(0.0, self.pending_since + FLUSH_DELAY - now)
        when = [self.next_tick, self.spawn_after if len(self.slots) < self._target() else None]
        if any(s.jobs for s in self.slots.values()):
            when.append(self.next_renew)
        when += [run[2] for s in self.slots.values() for run in s.jobs.values()]
        if self.stop_deadline is not None:
            when.append(self.stop_deadline)
        if self.waker is None:
            when.append(self.waker_retry)
        when = [w for w in when if w is not None]
        return max(0.0, min(when) - now) if when else None

    def _target(self):
        return 0 if self.stopping else self.qconf['worker_number']

    def _wait(self, timeout):
        """Wait for events and handle them; while more arrive at once and the
        buffer can serve them, keep going before the next broker round trip,
        so that one round trip records the outcome of many jobs."""
        self._ensure_waker()
        events = self.sel.select(timeout)
        for _ in range(32):
            if not events:
                return
            self._handle(events)
            if not self.buffer or len(self.pending) >= 256:
                return
            events = self.sel.select(0)

    def _handle(self, events):
        for key, _ in events:
            tag = key.data
            if isinstance(tag, _Slot):
                self._read_worker(tag)
            elif tag == 'waker':
                try:
                    self.waker.drain()
                    if self.waker.fileno() != key.fd:
                        raise DriverError('the broker connection was replaced')
                    self.wakes += 1
                    self.maybe_work = True
                    self.next_tick = 0.0
                except DriverError as exc:
                    self._drop_waker(exc)
            elif tag == 'control':
                self._read_control()
            else:
                for signum in self.signals.drain():
                    self._on_signal(signum)

    def _ensure_waker(self):
        if self.waker is not None or self.stopping or time.monotonic() < self.waker_retry:
            return
        try:
            self.waker = self.driver.waker(self.queue)
            self.sel.register(self.waker.fileno(), selectors.EVENT_READ, 'waker')
            self.next_tick = 0.0
        except DriverError as exc:
            self.waker = None
            self._broker_down(exc)
            self.waker_retry = time.monotonic() + max(self.backoff, 0.5)

    def _drop_waker(self, exc):
        try:
            self.sel.unregister(self.waker.fileno())
        except (KeyError, ValueError, OSError, AttributeError):
            self._unregister_stale()
        self.waker.close()
        self.waker = None
        self._broker_down(exc)
        self.waker_retry = time.monotonic() + max(self.backoff, 0.5)

    def _unregister_stale(self):
        for key in list(self.sel.get_map().values()):
            if key.data == 'waker':
                self.sel.unregister(key.fileobj)

    def _on_signal(self, signum):
        if signum == signal.SIGTERM:
            self._stop('graceful' if not self.stopping else 'fast')
        elif signum == signal.SIGUSR1:
            self._reload()

    def _read_control(self):
        try:
            messages = self.control.recv_ready()
        except (EOFError, OSError):
            # the manage process is gone: stop gracefully, nobody would restart us
            self.sel.unregister(self.control)
            logger.warning('master of queue %r: the manage process went away; stopping', self.queue)
            self._stop('graceful')
            return
        for msg in messages:
            self._on_control(msg)

    def _on_control(self, msg):
        if msg[0] == 'stop':
            self._stop(msg[1])
        elif msg[0] == 'reload':
            self._reload()
        elif msg[0] == 'status':
            _send(self.control, ('status', self._status()))
        elif msg[0] == 'beat' and self.broker_down_since is None:
            # the manage process's heartbeat, to publish (not while the broker is away)
            _fleet_call(self, 'publish the heartbeat', 'heartbeat', msg[1], msg[2], HEARTBEAT_TTL)

    def _status(self):
        now = time.time()
        rows = [{'queue': self.queue, 'type': 'master', 'pid': os.getpid(), 'state':
                 'stopping' if self.stopping else 'running', 'job_id': None, 'done':
                 self.done, 'rss_mb': _rss_mb(),
                 'started': self.started, 'uptime': now - self.started}]
        for s in self.slots.values():
            row = {'queue': self.queue, 'type': 'worker', 'pid': s.pid,
                   'state': 'busy' if s.state in ('busy', 'handed') else 'idle',
                   'job_id': next(iter(s.jobs), None), 'done': s.done, 'rss_mb': _rss_mb(s.pid),
                   'started': s.started, 'uptime': now - s.started}
            if s.capacity > 1:
                row['coroutines'] = '%d/%d' % (len(s.jobs), s.capacity)    # busy / all
            rows.append(row)
        return rows

    def _stop(self, how):
        if self.stopping == 'fast':
            return
        self.stopping = how
        grace = self.config['basics']['stop_grace'] if how == 'graceful' else 0
        self.stop_deadline = time.monotonic() + grace
        logger.info('master of queue %r stopping (%s); %d workers busy', self.queue, how,
                    sum(1 for s in self.slots.values() if s.state == 'busy'))
        while self.buffer:
            self.pending.append(('requeue', self.buffer.popleft()[0]))
        for slot in list(self.slots.values()):
            self._stop_worker(slot)

    def _reload(self):
        self.generation += 1
        logger.info('master of queue %r reloading: each worker is replaced after its job',
                    self.queue)
        self.reloading = set(self.slots)
        for slot in list(self.slots.values()):
            if slot.state != 'busy':
                self._stop_worker(slot)

    def _stop_worker(self, slot):
        """Ask a worker to exit: at once if idle, after its job if busy (or at
        once, killed, when stopping fast)."""
        if slot.state in ('gone', 'stopping'):
            return
        slot.stop_sent = True
        if slot.state in ('busy', 'handed'):
            if self.stopping == 'fast':
                self._kill(slot, 'stop')
            return
        slot.state = 'stopping'
        try:
            if self.grab:
                os.kill(slot.pid, signal.SIGTERM)
            else:
                _send(slot.conn, ('stop',))
        except OSError:
            pass

    def _kill(self, slot, why):
        slot.killed_for = why
        try:
            os.kill(slot.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _spawn_missing(self):
        now = time.monotonic()
        while len(self.slots) < self._target() and now >= self.spawn_after:
            self._spawn()

    def _spawn(self):
        parent_conn, child_conn = _Channel.pair()
        close_fds = [s.conn.fileno() for s in self.slots.values()]
        close_fds += [parent_conn.fileno(), self.control.fileno()]
        close_fds += [key.fd for key in self.sel.get_map().values()
                      if key.data not in ('control',) and not isinstance(key.data, _Slot)]
        pid = _fork(_worker_main, self.config, self.qconf, child_conn, close_fds, self.owner,
                    self.generation, os.getpid())
        child_conn.close()
        slot = _Slot(pid, parent_conn, 1 if self.grab else self.qconf['coroutine_number'])
        self.slots[pid] = slot
        self.sel.register(parent_conn, selectors.EVENT_READ, slot)

    def _read_worker(self, slot):
        try:
            messages = slot.conn.recv_ready()
        except (EOFError, OSError):
            self._forget_conn(slot)
            return
        for msg in messages:
            if slot.state != 'gone':
                self._on_message(slot, msg)

    def _on_message(self, slot, msg):
        kind = msg[0]
        if kind == 'ready':
            slot.state = 'idle'
            if self.stopping or slot.pid in self.reloading:
                self._stop_worker(slot)
            self._maybe_ready()
            self._dispatch()
        elif kind in ('done', 'retry', 'fail', 'lost'):
            self.pending.append(msg[:-2])
            self._job_finished(slot, msg[1], exiting=msg[-2] is not None, begun=msg[-1])
        elif kind == 'begun':               # it started the job queued in its pipe
            self._queued_begun(slot, time.monotonic())
        elif kind == 'skipped':             # too old to start: the broker takes it back
            slot.queued, slot.state = None, 'idle'
            self._idle(slot)
        elif kind == 'run':                 # grab model: the worker popped a job
            self._running(slot, msg[1], msg[2], time.monotonic())
        elif kind == 'ran':                 # grab model: it goes on popping by itself
            self._job_finished(slot, msg[1], exiting=msg[2] is not None)
            if slot.state == 'idle':
                slot.state = 'busy-grab'
        elif kind == 'idle':               # grab model: the worker found the queue empty
            slot.state = 'idle'
            if self.stopping or slot.pid in self.reloading:
                self._stop_worker(slot)
            elif slot.woken_at != self.wakes:
                self._wake_grab(slot)       # a push came after this worker looked
            else:
                self.maybe_work = False

    def _job_finished(self, slot, job_id, exiting=False, begun=None):
        self.boot_failures = 0          # workers can boot and run jobs: no back-off
        now = time.monotonic()
        run = slot.jobs.pop(job_id, None)
        if run is not None:
            took = now - run[1]
            self.avg_job = took if self.avg_job is None else 0.8 * self.avg_job + 0.2 * took
        slot.done += 1
        self.done += 1
        if slot.state == 'stopping':    # a coroutine worker finishing its last jobs
            return
        slot.state = 'busy' if slot.jobs else 'idle'
        if exiting:                     # over memory_limit: it exits by itself
            slot.state, slot.stop_sent = 'stopping', True
            if slot.queued is not None:     # it will never read that one
                self.pending.append(('requeue', slot.queued[0]))
                slot.queued = None
        elif isinstance(begun, str):
            self._queued_begun(slot, now)
        elif begun is not None:         # ('skipped', id): the broker takes it back
            slot.queued = None
            self._idle(slot)
        elif slot.queued is not None:   # not read yet: 'begun' or 'skipped' follows
            slot.state = 'handed'
        else:
            self._idle(slot)    # a coroutine worker with jobs left has room for one more

    def _queued_begun(self, slot, now):
        job_id, timeout = slot.queued
        slot.queued = None
        self._started(slot, job_id, timeout, now)

    def _idle(self, slot):
        if self.stopping or slot.pid in self.reloading:
            self._stop_worker(slot)
        else:
            self._dispatch()

    def _wake_grab(self, slot):
        slot.state = 'busy-grab'
        slot.woken_at = self.wakes
        try:
            _send(slot.conn, ('wake',))
        except OSError:
            pass

    def _maybe_ready(self):
        if not self.ready_sent and all(s.state != 'booting' for s in self.slots.values()) \
                and len(self.slots) >= self.qconf['worker_number']:
            self.ready_sent = True
            try:
                _send(self.control, ('ready', self.queue))
            except OSError:
                pass

    def _forget_conn(self, slot):
        try:
            self.sel.unregister(slot.conn)
        except (KeyError, ValueError):
            pass

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.slots.pop(pid, None)
            if slot is None:
                continue
            self._forget_conn(slot)
            self._read_last_words(slot)
            slot.conn.close()
            self.reloading.discard(pid)
            self._worker_gone(slot, status)

    def _read_last_words(self, slot):
        """What a dead worker wrote before it died (a job it started, a result)
        is still in the channel: read it, so its job is recovered at once."""
        try:
            while True:
                for msg in slot.conn.recv_ready():
                    self._on_message(slot, msg)
        except (EOFError, OSError):
            pass

    def _worker_gone(self, slot, status):
        how = _describe_exit(status)
        if slot.queued is not None:     # handed but never started: back to the head
            self.pending.append(('requeue', slot.queued[0]))
            slot.queued = None
        for job_id, (timeout, _, _) in slot.jobs.items():
            if slot.killed_for == 'stop' or (slot.killed_for == 'timeout'
                                             and job_id != slot.timed_out):
                self.pending.append(('requeue', job_id))
                logger.warning('worker %d of queue %r killed (%s); job %s goes back to the '
                               'queue', slot.pid, self.queue, 'at stop' if slot.killed_for ==
                               'stop' else 'for the timeout of job %s' % slot.timed_out, job_id)
            else:
                timed_out = slot.killed_for == 'timeout'
                error = (_timeout_error(timeout) if timed_out else
                         'worker %s:%d %s while running the job' % (_HOST, slot.pid, how))
                self.pending.append(('lost', job_id, error, 1 if timed_out else 0))
                logger.error('worker %d of queue %r %s while running job %s; job recovered',
                             slot.pid, self.queue, 'was killed at the timeout' if timed_out
                             else how, job_id)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        short_lived = time.time() - slot.started < 2 and slot.killed_for is None and \
            code not in (EXIT_OK, EXIT_MEMORY) and not slot.jobs
        if code == EXIT_BOOT_ERROR or short_lived or (slot.state == 'booting'
                                                       and not slot.stop_sent):
            self.boot_failures += 1
            delay = min(60.0, 0.5 * 2 ** (self.boot_failures - 1))
            self.spawn_after = time.monotonic() + delay
            logger.error('worker of queue %r could not boot or died at once (%s); backing off '
                         '%.1fs before forking again (failure %d in a row)', self.queue, how,
                         delay, self.boot_failures)
        else:
            reason = {'timeout': 'was killed at its job\'s timeout',
                      'stop': 'was killed at the end of the stop grace period'}.get(
                          slot.killed_for, how)
            if slot.stop_sent and slot.killed_for is None:
                reason = 'stopped' + (' for a reload' if not self.stopping else '')
            logger.info('worker %d of queue %r %s%s', slot.pid, self.queue, reason,
                        '' if self.stopping else '; starting a new one')

    def _check_deadlines(self):
        now = time.monotonic()
        for slot in list(self.slots.values()):
            for job_id, (_, _, deadline) in slot.jobs.items():
                if deadline is not None and now >= deadline and slot.killed_for is None:
                    logger.error('job %s of queue %r ran past its timeout; killing worker %d',
                                 job_id, self.queue, slot.pid)
                    slot.timed_out = job_id
                    self._kill(slot, 'timeout')
        if self.stop_deadline is not None and now >= self.stop_deadline:
            for slot in list(self.slots.values()):
                if slot.killed_for is None:
                    self._kill(slot, 'stop')

    # -- the broker ----------------------------------------------------------

    def _broker_down(self, exc):
        self.backoff = min(5.0, max(0.1, self.backoff * 2))
        if self.broker_down_since is None:
            self.broker_down_since = time.monotonic()
            logger.error('master of queue %r: %s; retrying with back-off until it answers',
                         self.queue, exc)

    def _broker_up(self):
        if self.broker_down_since is not None:
            logger.info('master of queue %r: the broker answers again after %.1fs', self.queue,
                        time.monotonic() - self.broker_down_since)
        self.broker_down_since = None
        self.backoff = 0.0

    def _flush(self):
        """One broker round trip: the results and starts gathered so far, a
        tick (promote / recover), lease renewals when due, and a reservation
        that refills the buffer."""
        now = time.monotonic()
        if self.broker_down_since is not None and now < self.next_tick:
            return
        self._expire_buffer(now)
        tick = now >= self.next_tick
        if tick:        # a periodic look: a wake-up may have been missed (broker away)
            self.maybe_work = True
        want = 0
        if not self.stopping and self.maybe_work:
            if self.grab:
                for slot in [s for s in self.slots.values() if s.state == 'idle']:
                    self._wake_grab(slot)
            else:
                want = max(0, self._room() + self._prefetch() - len(self.buffer))
        renew = now >= self.next_renew and any(s.jobs for s in self.slots.values())
        if not (tick or renew or self._flush_due(now, want)):
            return
        ops = self.pending
        self.pending = []
        self.pending_since = 0.0
        if renew:
            ops += [('renew', job_id) for s in self.slots.values() for job_id in s.jobs]
        n_tick = len(ops)
        ops.append(('tick', 1000))
        if want:
            ops.append(('reserve', want))
        try:
            results = self.driver.execute(self.queue, ops)
        except DriverError as exc:
            self.pending = ops[:n_tick] + self.pending
            self._broker_down(exc)
            self.next_tick = now + self.backoff
            return
        self._broker_up()
        if renew:
            self.next_renew = now + LEASE_SECONDS / 3
        due = float(results[n_tick])
        cap = self.qconf['sleep_seconds']
        self.next_tick = now + (cap if due < 0 else min(due, cap))
        if due == 0:
            self.maybe_work = True
        if want:
            flat = results[-1]
            self.maybe_work = len(flat) >= 3 * want
            for i in range(0, len(flat), 3):
                self.buffer.append((_text(flat[i]), flat[i + 1], flat[i + 2], now))
            self._dispatch()

    def _flush_due(self, now, want):
        """Under load, gather steps for up to FLUSH_DELAY while the buffer still
        feeds every worker; otherwise go to the broker now."""
        if want and len(self.buffer) < self._room():
            return True
        if not self.pending:
            return bool(want) and not self.buffer
        if not self.pending_since:
            self.pending_since = now
        if self.stopping or len(self.pending) >= 256 or now - self.pending_since >= FLUSH_DELAY:
            return True
        return len(self.buffer) < sum(1 for s in self.slots.values() if s.state == 'busy')

    def _room(self, slot=None):
        """How many more jobs a worker (or all of them) can start right now."""
        if slot is None:
            return sum(self._room(s) for s in self.slots.values())
        if slot.state not in ('idle', 'busy') or slot.stop_sent or slot.pid in self.reloading:
            return 0
        return slot.capacity - len(slot.jobs)

    def _prefetch(self):
        """How many jobs to hold beyond the idle workers' needs: one per busy
        worker while jobs are short, so a worker that finishes gets its next
        job from the master at once instead of after a broker round trip."""
        if self.avg_job is None or self.avg_job > 0.05:
            return 0
        per_worker = min(8, max(1, int(0.01 / max(self.avg_job, 1e-6))))
        return per_worker * sum(1 for s in self.slots.values() if s.state == 'busy')

    def _expire_buffer(self, now):
        """Reserved jobs not handed out in time go back to the head of the queue."""
        while self.buffer and now - self.buffer[0][3] > RESERVE_SECONDS * 0.6:
            job_id = self.buffer.popleft()[0]
            self.pending.append(('requeue', job_id))

    def _dispatch(self):
        """Hand buffered jobs to idle workers (their start steps go to the
        broker with the next round trip) and, while jobs are short, one more
        to each busy worker, queued in its pipe: it starts that one the moment
        it finishes, without waiting for the master.  A queued job counts as
        reserved until its worker starts it; a worker does not start one that
        waited long enough for its reservation to near its end."""
        if not self.buffer or self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots.values():
            for _ in range(self._room(slot)):
                self._hand(slot, now, queued=False)
                if not self.buffer:
                    return
        if self.avg_job is None or self.avg_job > 0.01:
            return
        for slot in self.slots.values():
            if slot.state == 'busy' and slot.capacity == 1 and slot.queued is None \
                    and slot.pid not in self.reloading:
                self._hand(slot, now, queued=True)
                if not self.buffer:
                    return

    def _hand(self, slot, now, queued):
        job_id, raw_meta, payload, reserved_at = self.buffer.popleft()
        meta = _meta_dict(raw_meta)
        if meta.get('p') != 'f':
            meta['x'] = meta.get('x', 0) + 1
        meta['s'], meta['w'] = time.time(), '%s:%d' % (_HOST, slot.pid)
        if queued:
            slot.queued = (job_id, meta.get('t') or 0)
        else:
            self._started(slot, job_id, meta.get('t') or 0, now)
        try:
            _send(slot.conn, ('job', job_id, meta, payload, reserved_at if queued else None))
        except OSError:
            pass    # the worker is dying: _reap() will recover the job

    def _started(self, slot, job_id, timeout, now):
        self._running(slot, job_id, timeout, now)
        self.pending.append(('start', job_id, '%s:%d' % (_HOST, slot.pid), self.owner))

    def _running(self, slot, job_id, timeout, now):
        """Track a job its worker runs; it is killed at the job's timeout (a
        coroutine worker cancels the job itself then; the kill, a moment
        later, is for a job that blocks its loop)."""
        deadline = None
        if timeout:
            deadline = now + timeout + (COROUTINE_KILL_GRACE if slot.capacity > 1 else 0)
        slot.state = 'busy'
        slot.jobs[job_id] = (timeout, now, deadline)


def _master_main(config, qconf, control, close_fds):
    _reset_signals()
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    return _Master(config, qconf, control).run()


###############################################################################
# Runtime: manage
###############################################################################


class _LogHandler(logging.FileHandler):
    """A log file shared by every process of the pool, rotated at ``max_bytes``
    under an flock so that only one process rotates, and reopened by the
    others when they see that the file was replaced."""

    def __init__(self, path, max_bytes=10 * 1024 * 1024, backups=5):
        super().__init__(path, delay=False)
        self.max_bytes, self.backups = max_bytes, backups

    def emit(self, record):
        try:
            self._maybe_rotate()
        except OSError:
            pass
        super().emit(record)

    def _maybe_rotate(self):
        if self.stream is None:
            return
        try:
            st = os.stat(self.baseFilename)
        except FileNotFoundError:
            st = None
        own = os.fstat(self.stream.fileno())
        if st is None or st.st_ino != own.st_ino:
            self._reopen()
            return
        if st.st_size < self.max_bytes:
            return
        with open(self.baseFilename + '.lock', 'a') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            st = os.stat(self.baseFilename)
            if st.st_ino == own.st_ino and st.st_size >= self.max_bytes:
                for i in range(self.backups - 1, 0, -1):
                    src = '%s.%d' % (self.baseFilename, i)
                    if os.path.exists(src):
                        os.replace(src, '%s.%d' % (self.baseFilename, i + 1))
                os.replace(self.baseFilename, self.baseFilename + '.1')
            self._reopen()

    def _reopen(self):
        self.stream.close()
        self.stream = self._open()


def _setup_logging(config, to_stderr):
    log = config['log']
    root = logging.getLogger('mpqueue')
    root.setLevel(log['level'])
    for handler in list(root.handlers):
        if not isinstance(handler, logging.NullHandler):
            root.removeHandler(handler)
    driver = log['driver']
    if isinstance(driver, logging.Handler):
        handler = driver
    elif driver is not None:
        handler = driver()
    else:
        os.makedirs(log['path'], exist_ok=True)
        handler = _LogHandler(os.path.join(log['path'], config['basics']['name'] + '.log'))
    fmt = logging.Formatter('%(asctime)s %(levelname)s [%(process)d] %(message)s')
    if handler.formatter is None:
        handler.setFormatter(fmt)
    root.addHandler(handler)
    if to_stderr:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        root.addHandler(stream)
    return handler


class _PidFile:
    """``{pid_path}/{name}.pid`` holding the manage process's pid, written
    atomically (temp file + rename) and removed only by its owner."""

    def __init__(self, path):
        self.path = path

    def read(self):
        """The pid in the file if that process is alive, else None."""
        try:
            with open(self.path) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def create(self, pid):
        alive = self.read()
        if alive and alive != pid:
            raise MPQueueError('already running on pid %d (or pid file %r is stale)'
                               % (alive, self.path))
        os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
        tmp = '%s.%d.tmp' % (self.path, pid)
        with open(tmp, 'w') as f:
            f.write('%d\n' % pid)
        os.replace(tmp, self.path)

    def remove(self, pid):
        try:
            with open(self.path) as f:
                if int(f.read().strip() or 0) != pid:
                    return
            os.unlink(self.path)
        except (OSError, ValueError):
            pass


def _pid_path(config):
    basics = config['basics']
    return os.path.join(basics['pid_path'], basics['name'] + '.pid')


def _status_path(config):
    basics = config['basics']
    return os.path.join(basics['pid_path'], basics['name'] + '.status.json')


def _fleet_call(process, what, method, *args):
    """A fleet call on the driver (heartbeats) that never raises: the first
    failure of a run of them is logged, and the next beat tries again.
    ``process`` is the manage process or a master (``config``, ``beat_failing``)."""
    driver, name = process.config['basics']['driver'], process.config['basics']['name']
    try:
        getattr(driver, method)(*args)
    except Exception as exc:
        if not process.beat_failing:
            logger.warning('pool %r could not %s (%s); trying again every %ss', name, what,
                           ' '.join(str(exc).split()) or type(exc).__name__, HEARTBEAT_SECONDS)
            process.beat_failing = True
        return
    if process.beat_failing:
        logger.info('pool %r reaches %s again for its heartbeat', name, driver.address)
        process.beat_failing = False


class _Manager:
    """The manage process: pid file, one master per queue, restarts, signals.

    Signals: SIGTERM / SIGINT stop gracefully (a second one stops fast),
    SIGUSR1 reloads the workers, SIGUSR2 writes a status snapshot to
    ``{pid_path}/{name}.status.json``.

    Every ``HEARTBEAT_SECONDS`` it asks its masters for their status, without
    waiting for them, and has what it knows published as the pool's heartbeat
    (by a master, see ``_publish_beat``) once they have all answered (or after
    ``_BEAT_ANSWER_WAIT``); a clean stop removes the heartbeat.
    """

    def __init__(self, config, ready_fd=None):
        self.config = config
        self.ready_fd = ready_fd
        self.pidfile = _PidFile(_pid_path(config))
        self.masters = {}       # pid -> {'queue', 'conn', 'started', 'ready'}
        self.stopping = None
        self.stop_deadline = None
        self.backoff = {}       # queue -> (failures, spawn_after)
        self.status_wanted = []
        self.started = time.time()
        self.pool_id = None
        self.next_beat = 0.0        # monotonic time to ask the masters for their status
        self.beat_asked = None      # monotonic time they were asked, until published
        self.beat_failing = False

    def run(self):
        pid = os.getpid()
        self.pidfile.create(pid)
        self.pool_id = '%s@%s:%d' % (self.config['basics']['name'], _HOST, pid)
        try:
            return self._run()
        finally:
            _fleet_call(self, 'remove the heartbeat', 'forget', self.pool_id)
            self.pidfile.remove(pid)

    def _run(self):
        name = self.config['basics']['name']
        _set_title('mpq:%s:manage' % name)
        self.sel = selectors.DefaultSelector()
        self.signals = _Signals(self.sel, (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                                           signal.SIGUSR2, signal.SIGCHLD, signal.SIGHUP))
        logger.info('manage process of %r started (pid %d, mpqueue %s, queues: %s)', name,
                    os.getpid(), __version__, ', '.join(q['name'] for q in self.config['queue']))
        driver = self.config['basics']['driver']
        driver.preload()
        try:
            import ctypes  # noqa: F401  (used by every worker: load it once, shared)
        except ImportError:
            pass
        # The first beat (no workers yet) goes before the fork, and its
        # connection is closed: what it allocated and loaded is shared with
        # the children instead of copied into this process later on.
        _fleet_call(self, 'publish the heartbeat', 'heartbeat', self.pool_id, self._beat_info(),
                    HEARTBEAT_TTL)
        driver.close()
        for qconf in self.config['queue']:
            self._spawn(qconf)
        while True:
            timeout = self._timeout()
            for key, _ in self.sel.select(timeout):
                if key.data is self.signals:
                    for signum in self.signals.drain():
                        self._on_signal(signum)
                else:
                    self._read_master(key.data)
            self._reap()
            self._respawn()
            self._heartbeat()
            if self.stopping and not self.masters:
                break
            if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                self._kill_all()
        logger.info('manage process of %r stopped', name)
        self.signals.close()
        return EXIT_OK

    def _timeout(self):
        when = [after for _, after in self.backoff.values()]
        if self.stop_deadline is not None:
            when.append(self.stop_deadline)
        when.append(self.next_beat if self.beat_asked is None
                    else self.beat_asked + _BEAT_ANSWER_WAIT)
        return max(0.0, min(when) - time.monotonic())

    def _spawn(self, qconf):
        parent_conn, child_conn = _Channel.pair()
        close_fds = [m['conn'].fileno() for m in self.masters.values()]
        close_fds += [parent_conn.fileno()] + [k.fd for k in self.sel.get_map().values()]
        if self.ready_fd is not None:
            close_fds.append(self.ready_fd)
        pid = _fork(_master_main, self.config, qconf, child_conn, close_fds)
        child_conn.close()
        self.masters[pid] = {'queue': qconf, 'conn': parent_conn, 'started': time.monotonic(),
                             'ready': False}
        self.sel.register(parent_conn, selectors.EVENT_READ, pid)

    def _read_master(self, pid):
        info = self.masters.get(pid)
        if info is None:
            return
        try:
            messages = info['conn'].recv_ready()
        except (EOFError, OSError):
            try:
                self.sel.unregister(info['conn'])
            except (KeyError, ValueError):
                pass
            return
        for msg in messages:
            self._on_master_message(info, msg)

    def _on_master_message(self, info, msg):
        if msg[0] == 'ready':
            info['ready'] = True
            self.backoff.pop(info['queue']['name'], None)
            if self.ready_fd is not None and all(m['ready'] for m in self.masters.values()) \
                    and len(self.masters) == len(self.config['queue']):
                try:
                    os.write(self.ready_fd, b'1')
                    os.close(self.ready_fd)
                except OSError:
                    pass
                self.ready_fd = None
        elif msg[0] == 'status':
            info['status'] = msg[1]
            info['status_time'] = time.monotonic()

    def _on_signal(self, signum):
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop('fast' if self.stopping else 'graceful')
        elif signum == signal.SIGUSR1:
            logger.info('reload requested: workers are replaced after their current job')
            self._tell_masters(('reload',))
        elif signum == signal.SIGUSR2:
            self._write_status()

    def _stop(self, how):
        self.stopping = how
        grace = self.config['basics']['stop_grace']
        if how == 'graceful':
            logger.info('stopping: workers finish their current job (up to %ss); '
                        'send the signal again to stop fast', grace)
            self.stop_deadline = time.monotonic() + grace + 5
        else:
            logger.info('stopping fast: running jobs are interrupted and go back to their queue')
            self.stop_deadline = time.monotonic() + 5
        self._tell_masters(('stop', how))

    def _tell_masters(self, msg):
        for info in self.masters.values():
            try:
                _send(info['conn'], msg)
            except OSError:
                pass

    def _write_status(self):
        rows = [{'queue': '-', 'type': 'manage', 'pid': os.getpid(), 'state': self.stopping
                 and 'stopping' or 'running', 'job_id': None, 'done': None, 'rss_mb': _rss_mb(),
                 'started': self.started, 'uptime': time.time() - self.started}]
        for pid, info in list(self.masters.items()):
            info.pop('status', None)
            try:
                _send(info['conn'], ('status',))
            except OSError:
                continue
            deadline = time.monotonic() + 2
            while 'status' not in info and time.monotonic() < deadline:
                if info['conn'].poll(max(0.0, deadline - time.monotonic())):
                    self._read_master(pid)
                else:
                    break
            rows += info.get('status') or [{'queue': info['queue']['name'], 'type': 'master',
                                            'pid': pid, 'state': 'unresponsive'}]
        path = _status_path(self.config)
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump({'time': time.time(), 'processes': rows}, f)
        os.replace(tmp, path)

    # -- the heartbeat -------------------------------------------------------------

    def _heartbeat(self):
        """Ask the masters for their status when a beat is due; publish once
        they all answered, or when the wait for them is over."""
        now = time.monotonic()
        if self.beat_asked is None:
            if now < self.next_beat:
                return
            self.beat_asked, self.next_beat = now, now + HEARTBEAT_SECONDS
            self._tell_masters(('status',))
        answered = all(info.get('status_time', -1.0) >= self.beat_asked
                       for info in self.masters.values())
        if answered or now >= self.beat_asked + _BEAT_ANSWER_WAIT:
            self.beat_asked = None
            self._publish_beat()

    def _publish_beat(self):
        """Hand the heartbeat to a master to publish: masters use the broker
        client all the time, while this process using it would copy pages it
        shares with its children (some 1.5 MB).  With no master, publish here."""
        info = self._beat_info()
        for master in self.masters.values():
            try:
                _send(master['conn'], ('beat', self.pool_id, info))
                return
            except OSError:
                continue
        _fleet_call(self, 'publish the heartbeat', 'heartbeat', self.pool_id, info, HEARTBEAT_TTL)

    def _beat_info(self):
        """The heartbeat: this pool and, per queue, its workers as the last
        status its master sent counts them."""
        queues = {q['name']: {'master': None, 'workers': 0, 'busy': 0, 'idle': 0, 'done': 0}
                  for q in self.config['queue']}
        for pid, info in self.masters.items():
            rows = info.get('status') or []
            workers = [r for r in rows if r.get('type') == 'worker']
            busy = sum(1 for r in workers if r.get('state') == 'busy')
            queues[info['queue']['name']] = {
                'master': pid, 'workers': len(workers), 'busy': busy,
                'idle': len(workers) - busy,
                'done': sum(r.get('done') or 0 for r in rows if r.get('type') == 'master')}
        return {'name': self.config['basics']['name'], 'host': _HOST, 'pid': os.getpid(),
                'started': self.started, 'state': 'stopping' if self.stopping else 'running',
                'queues': queues}

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            info = self.masters.pop(pid, None)
            if info is None:
                continue
            try:
                self.sel.unregister(info['conn'])
            except (KeyError, ValueError):
                pass
            info['conn'].close()
            qconf = info['queue']
            if self.stopping:
                continue
            how = _describe_exit(status)
            logger.error('master of queue %r (pid %d) %s; its workers are stopped, their jobs '
                         'recovered, and a new master started', qconf['name'], pid, how)
            self._recover_orphans(qconf['name'], pid)
            failures = self.backoff.get(qconf['name'], (0, 0))[0]
            if time.monotonic() - info['started'] > 10:
                failures = 0
            delay = 0 if failures == 0 else min(60.0, 0.5 * 2 ** (failures - 1))
            if delay:
                logger.error('master of queue %r keeps dying; backing off %.1fs', qconf['name'],
                             delay)
            self.backoff[qconf['name']] = (failures + 1, time.monotonic() + delay)

    def _recover_orphans(self, queue, master_pid):
        """A master died: kill its workers (they would run on unsupervised) and
        put their jobs back at the head of the queue."""
        for pid in _children_of(master_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            n = self.config['basics']['driver'].recover_owner(
                queue, '%s:%d' % (_HOST, master_pid), 'its master died')
            if n:
                logger.warning('%d job(s) of the dead master of queue %r went back to the queue',
                               n, queue)
        except DriverError as exc:
            logger.error('could not recover the jobs of the dead master of queue %r now (%s); '
                         'their leases expire within %ss and any master recovers them then',
                         queue, exc, LEASE_SECONDS)

    def _respawn(self):
        if self.stopping:
            return
        now = time.monotonic()
        running = {info['queue']['name'] for info in self.masters.values()}
        for qconf in self.config['queue']:
            if qconf['name'] in running:
                continue
            after = self.backoff.get(qconf['name'], (0, 0))[1]
            if now >= after:
                self._spawn(qconf)

    def _kill_all(self):
        logger.warning('stop grace period over: killing what is left')
        self.stop_deadline = None
        self._tell_masters(('stop', 'fast'))
        for pid in list(self.masters):
            for child in _children_of(pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while self.masters and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in list(self.masters):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop_deadline = time.monotonic() + 1


def _children_of(pid):
    """Pids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    out = []
    try:
        names = os.listdir('/proc')
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name, 'rb') as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(b')') + 2:].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == pid:
            out.append(int(name))
    return out


def _run_pool(config, daemon=False, to_stderr=True):
    """Run the manage process of ``config`` in this process (foreground) or as
    a daemon.  Returns the exit code (foreground) or the daemon's pid."""
    pidfile = _PidFile(_pid_path(config))
    alive = pidfile.read()
    if alive:
        raise MPQueueError('already running on pid %d (or pid file %r is stale)'
                           % (alive, pidfile.path))
    os.makedirs(config['basics']['pid_path'], exist_ok=True)
    if not daemon:
        _setup_logging(config, to_stderr)
        return _Manager(config).run()
    return _daemonize(config)


def _daemonize(config):
    """Double fork and setsid; the caller returns once the pool is up."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 60
        got = b''
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 64)
            if not chunk:
                break
            got += chunk
            if got.startswith(b'1'):
                break
        os.close(r)
        pid = _PidFile(_pid_path(config)).read()
        if not got.startswith(b'1') or not pid:
            detail = got[1:].decode(errors='replace').strip() if got[:1] == b'0' else ''
            raise MPQueueError('the pool did not start%s; see the log in %s' % (
                ': ' + detail if detail else '', config['log']['path']))
        return pid
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    code = 1
    try:
        os.chdir('/')
        log_dir = config['log']['path']
        os.makedirs(log_dir, exist_ok=True)
        out = os.open(os.path.join(log_dir, config['basics']['name'] + '.out'),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        _setup_logging(config, to_stderr=False)
        code = _Manager(config, ready_fd=w).run()
    except BaseException as exc:
        try:
            os.write(w, b'0' + str(exc).encode()[:500])
        except OSError:
            pass
        logger.exception('the manage process failed')
    finally:
        logging.shutdown()
        os._exit(code)


###############################################################################
# Public functions
###############################################################################


def push(queue, job, delay=0, *, args=(), kwargs=None, timeout=None, fail_number=None,
         fail_expire=None):
    """Push one job; returns its id.

    :param queue: a queue name from the config.
    :param job: a callable (function, lambda, closure, bound method,
        ``functools.partial``), a ``mpqueue.Job`` subclass or instance, or an
        import path ``'pkg.module:attr'`` resolved in the worker.
    :param delay: seconds (ms precision) before the job may start.
    :param args: positional arguments for the callable.
    :param kwargs: keyword arguments for the callable.
    :param timeout: seconds (0: none); default the Job's, else the queue's.
    :param fail_number: retries before final failure; default likewise.
    :param fail_expire: seconds between retries; default likewise.
    :raises ConfigError: the queue is not configured.
    :raises TypeError: ``job`` is not something a worker can run.
    :raises SerializationError: the job cannot be pickled (nothing is written).
    :raises DriverError: the broker cannot be reached.
    """
    return push_many(queue, [job], delay, args=args, kwargs=kwargs, timeout=timeout,
                     fail_number=fail_number, fail_expire=fail_expire)[0]


def push_many(queue, jobs, delay=0, *, args=(), kwargs=None, timeout=None, fail_number=None,
              fail_expire=None):
    """Push several jobs in one broker round trip; returns their ids in order.

    Every job is checked and pickled before anything is written, so a bad one
    leaves the broker untouched.  Parameters as for :func:`push`.
    """
    config = _get_config()
    qconf = _queue_config(queue)
    _check_number('delay', delay, 0)
    basics = config['basics']
    now = time.time()
    entries = []
    for job in jobs:
        _check_job(queue, job)
        settings = [_job_setting(name, given, job, qconf) for name, given in (
            ('timeout', timeout), ('fail_number', fail_number), ('fail_expire', fail_expire))]
        if settings != [qconf['timeout'], qconf['fail_number'], qconf['fail_expire']]:
            _check_number('timeout', settings[0], 0)
            _check_number('fail_number', settings[1], 0, integer=True)
            _check_number('fail_expire', settings[2], 0)
        meta = '{"c":%r,"n":%s,"x":0,"t":%r,"f":%d,"e":%r}' % (
            now, json.dumps(_job_name(job)), settings[0], settings[1], settings[2])
        payload = _encode(queue, job, args, kwargs, basics['secret'], basics['max_payload'])
        entries.append((_new_id(), meta, payload, delay))
    if entries:
        basics['driver'].push(queue, entries)
    return [e[0] for e in entries]


def status(queue):
    """Counts of one queue: ``{'all', 'waiting', 'working', 'failed', 'over'}``."""
    _queue_config(queue)
    return _get_config()['basics']['driver'].status(queue)


def failed_jobs(queue, offset=0, count=100):
    """The failed jobs of a queue, oldest first, as ``job_info`` dicts."""
    _queue_config(queue)
    out = []
    for job_id, meta in _get_config()['basics']['driver'].failed(queue, offset, count):
        out.append({'id': job_id, 'queue': queue, 'create_time': meta.get('c'),
                    'start_time': meta.get('s'), 'exec_number': meta.get('x', 0),
                    'worker_id': meta.get('w'), 'timeout': meta.get('t', 0),
                    'fail_number': meta.get('f', 0), 'fail_expire': meta.get('e', 0),
                    'error_info': meta.get('r') or [], 'type': meta.get('y') or TYPE_NORMAL,
                    'job': meta.get('n', ''), 'fail_time': meta.get('ft')})
    return out


def retry_failed(queue, job_id=None):
    """Put one failed job (or all of them) back in the queue; returns how many."""
    _queue_config(queue)
    return _get_config()['basics']['driver'].retry_failed(queue, job_id)


def delete_failed(queue, job_id):
    """Delete one failed job; returns 1 if it was there, else 0."""
    _queue_config(queue)
    return _get_config()['basics']['driver'].delete_failed(queue, job_id)


def clean(queue):
    """Empty a queue: waiting, delayed, running records, failed jobs, counters."""
    _queue_config(queue)
    _get_config()['basics']['driver'].clean(queue)
