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
     |    +-- worker  mpq:{queue}:worker   runs jobs
     |    +-- worker
     +-- master       ...

A job moves through the broker like this::

    push --> waiting --reserve--> reserved --start--> working --done--> done
     |        ^   ^                   |                  |
     |        |   +----- 0.5 s -------+                  +--error--> delayed (retry)
     +--> delayed --due--+                               +--last error / timeout-->
                                                               fail handlers --> failed
    cancel: waiting, delayed, reserved --> cancelled
            working --> its worker is stopped --> cancelled

Every transition is one atomic *step* in the broker (a Lua script for Redis,
a ``BEGIN IMMEDIATE`` transaction for SQLite); ``_STEPS`` lists them all, and
a master sends the steps of many jobs in one round trip.  Each start of a job
is an *attempt* with its own number, and every outcome names its attempt: an
outcome of an attempt that is no longer current changes nothing.  A running
job holds a lease that its master renews; when a worker dies its master
recovers the job at once, and when a whole server dies any other server's
master recovers it once the lease (``LEASE_SECONDS``) or the job's timeout
has passed.  Delivery is therefore at-least-once.

Sections, in order:  Imports and constants -- Exceptions -- Helpers --
Configuration -- Jobs and serialization -- Schedules -- Drivers (the step
table, Redis, SQLite) -- Runtime (worker, master, manage) -- Public
functions.

For the command line and other tools (public, not in ``__all__``):
``queue_config(name)`` (under Configuration) and, at the end of the file,
``pid_file(config=None)``, ``pool_pid(config=None)``, ``start_pool(config=None,
daemon=False)``, ``pool_status(config=None, timeout=10)``, ``depth(queue)``,
``fleet()``, ``foreign_pools(config=None)``, ``schedules(queue=None)``,
``history(queue)``, ``queued_jobs(queue, state='waiting', count=100,
cursor=None)``, ``find_job(queue, id_or_key)``, ``search_failed(queue, text,
count=100, cursor=None)`` and ``count_failed(queue, text)``.
"""

###############################################################################
# Imports and constants
###############################################################################

import collections
import contextlib
import contextvars
import errno
import fcntl
import functools
import gc
import importlib
import json
import logging
import logging.handlers
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

__version__ = '0.2.0'

__all__ = [
    'ConfigError', 'DriverError', 'Fail', 'Job', 'JobCancelled', 'JobExpired', 'JobFailed',
    'JobId', 'JobNotFound', 'MODEL_DISTRIBUTE', 'MODEL_GRAB', 'MPQueueError', 'RedisDriver',
    'Retry', 'SerializationError', 'SqliteDriver', 'TYPE_NORMAL', 'TYPE_TIMEOUT', 'backoff',
    'batch', 'cancel', 'chain', 'clean', 'configure', 'current_job', 'delete_failed',
    'failed_jobs', 'immediate', 'job', 'job_info', 'limits', 'pause', 'progress', 'push',
    'push_many', 'result', 'resume', 'retry_failed', 'status',
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

#: Priorities run from 0 (the lowest, and the default) to this, higher first.
MAX_PRIORITY = 9
#: A running job's lease: if nobody renews it for this long, the job's worker
#: (or its whole server) is taken for dead and the job is recovered.
LEASE_SECONDS = 10.0
#: A job handed to a worker but not started within this time goes back to the
#: head of its queue.
RESERVE_SECONDS = 0.5
#: A worker does not start a job that waited in its pipe for more than this
#: share of RESERVE_SECONDS: the broker is about to take it back.
RESERVE_USE = 0.6
#: Under load a master gathers job outcomes for at most this long (seconds)
#: before recording them in one broker round trip ...
FLUSH_DELAY = 0.002
#: ... or until it has gathered this many steps.
FLUSH_STEPS = 256
#: The most jobs one sweep promotes, takes back or recovers.
SWEEP_LIMIT = 1000
#: While jobs are shorter than this (seconds, on average), a busy worker gets
#: jobs queued in its pipe, as many as fit in this much time (at most
#: QUEUED_MAX), so that it never waits for its master.  Pays: drain 8,100 jobs/s
#: against 3,400 with SHORT_JOB = 0 (python examples/benchmark.py --driver sqlite --only
#: drain,latency --jobs 10000; medians of 3 runs each, 2026-12-07).
SHORT_JOB, QUEUED_MAX = 0.01, 8
#: How many times the fail handlers of one job are tried when the worker
#: running them dies, before the job goes to the failed list regardless.
HANDLER_ATTEMPTS = 3
#: A coroutine worker whose job blocks its event loop is killed this long
#: (seconds) after the job's timeout.
COROUTINE_KILL_GRACE = 0.5
#: Every master publishes its part of the pool's heartbeat this often (s).
HEARTBEAT_SECONDS = 2.0
#: A heartbeat older than this (seconds) is dropped from the fleet
#: (``worker:status --all``): its server stopped or lost the broker.
HEARTBEAT_TTL = 10.0
#: How long the manage process waits for its masters' status (SIGUSR2).
STATUS_WAIT = 0.5
#: While the broker is down, calls are tried again after a wait that doubles
#: from BROKER_RETRY_FIRST up to BROKER_RETRY_MAX seconds; a master's wake-up
#: subscription from WAKER_RETRY_FIRST (jobs still flow without it: the
#: master looks every sleep_seconds).
BROKER_RETRY_FIRST, WAKER_RETRY_FIRST, BROKER_RETRY_MAX = 0.1, 0.5, 1.0
#: A process that cannot boot is forked again after a back-off that doubles
#: from BOOT_RETRY_FIRST up to BOOT_RETRY_MAX seconds.
BOOT_RETRY_FIRST, BOOT_RETRY_MAX = 0.5, 60.0
#: A master that ran this long (seconds) before it died is forked again at
#: once, as a master that came up does: it was no crash loop.
MASTER_HEALTHY_SECONDS = 10
#: Jobs that one bulk call (retry_failed, clean) moves per broker step, so
#: that no step holds the broker for long: putting 500 failed jobs back is
#: about 3 ms of Redis or of SQLite's write lock (1000 reached 15 ms under load).
BULK_CHUNK = 500
#: A kept result's repr (shown where nothing may be unpickled) is cut here.
RESULT_REPR_MAX = 1000
#: A running job's progress() writes to the broker at most once per this many
#: seconds; a call sooner is written once the interval has passed (by a
#: timer thread), or at the job's end if that comes first.
PROGRESS_INTERVAL = 0.1
#: A cancelled or expired job's record stays readable at least this long
#: (seconds), whatever its result_ttl: that is news its caller looks for.
CANCELLED_KEEP = 86400
#: Masters sample a queue's counters this often (seconds), keeping the last
#: HISTORY_KEEP samples in the broker: the dashboard's chart.
HISTORY_SECONDS, HISTORY_KEEP = 10, 90
#: Immediate mode's broker (in process memory) keeps at most this many failed
#: jobs per queue, oldest forgotten first (done ones go after their
#: result_ttl, as on any broker): a long test suite does not grow without end.
IMMEDIATE_KEEP = 10000
#: A pid file is stale when the live process it names started more than this
#: many seconds after the file was written: that pid was reused (after the
#: pool died, or after a reboot).  /proc gives the boot time in whole seconds.
PID_START_SLACK = 2.0

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


class JobFailed(MPQueueError):
    """``result()`` of a job that failed for good; ``.job_info`` says how."""

    def __init__(self, message, job_info):
        super().__init__(message)
        self.job_info = job_info


class JobCancelled(MPQueueError):
    """``result()`` of a job that was cancelled."""


class JobExpired(MPQueueError):
    """``result()`` of a job that did not start within its ``expires``."""


class JobNotFound(MPQueueError):
    """``result()`` of an id the broker does not know, or whose outcome it no
    longer keeps (``result_ttl``)."""


class Retry(Exception):
    """Raised by a job: run it again, now or after ``delay`` seconds (default:
    its ``fail_expire``).  It counts as an attempt: once ``fail_number``
    retries are used up, the job fails for good."""

    def __init__(self, delay=None):
        if delay is not None and not (_is_number(delay) and 0 <= delay < float('inf')):
            raise ValueError('Retry(delay): delay must be seconds >= 0 or None, got %r'
                             % (delay,))
        super().__init__('the job asked to be retried' + (
            ' in %ss' % _seconds_text(delay) if delay is not None else ''))
        self.delay = delay


class Fail(Exception):
    """Raised by a job: fail for good now, whatever retries are left; its fail
    handlers run."""


class _StopWorker(BaseException):
    """Raised inside an idle worker to make it exit at once."""


###############################################################################
# Helpers
###############################################################################


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seconds_text(seconds):
    """Seconds as a record shows them: to the millisecond, no trailing zeros."""
    return ('%.3f' % seconds).rstrip('0').rstrip('.')


def _set_title(title):
    if _setproctitle is not None:
        _setproctitle.setproctitle(title)


def _rss_mb(pid):
    """Resident set size of a process in MB (Linux /proc), or None."""
    try:
        with open('/proc/%s/statm' % pid, 'rb') as f:
            return int(f.read().split()[1]) * _PAGE_SIZE / 1048576.0
    except (OSError, ValueError, IndexError):
        return None


def _process_row(queue, kind, pid, state, job_id, done, started):
    """One process as ``pool_status()`` shows it."""
    return {'queue': queue, 'type': kind, 'pid': pid, 'state': state, 'job_id': job_id,
            'done': done, 'rss_mb': _rss_mb(pid), 'started': started,
            'uptime': time.time() - started}


try:
    _PAGE_SIZE = os.sysconf('SC_PAGE_SIZE')
except (ValueError, OSError, AttributeError):  # pragma: no cover
    _PAGE_SIZE = 4096


def _doubled_wait(failures, first=BROKER_RETRY_FIRST, cap=BROKER_RETRY_MAX):
    """The wait before try ``failures + 1``: ``first`` doubled per failure, at most ``cap``."""
    return min(cap, first * 2 ** max(0, failures - 1))


def _kill(pids):
    """SIGKILL each of ``pids`` that is still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class _Restarts:
    """When a process that keeps failing may be forked again: after a wait
    that doubles from BOOT_RETRY_FIRST up to BOOT_RETRY_MAX per failure in a
    row (the first ``free`` of them cost none), at once after one that went
    well."""

    def __init__(self, free=0):
        self.free, self.failures, self.after = free, 0, 0.0

    def failed(self):
        """Count a failure; the wait (seconds) before the next fork."""
        self.failures += 1
        delay = 0.0 if self.failures <= self.free else _doubled_wait(
            self.failures - self.free, BOOT_RETRY_FIRST, BOOT_RETRY_MAX)
        self.after = time.monotonic() + delay
        return delay

    def ok(self):
        self.failures, self.after = 0, 0.0


def _describe_exit(status):
    """A wait status as words, e.g. ``'killed by SIGTERM'``.

    A SIGKILL comes from another process or from the kernel's out-of-memory
    killer; which one is not told here: the kernel log that records OOM kills
    is not readable without privileges in most containers, and its counters
    (``/proc/vmstat``, the memory cgroup) do not name the process killed."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:
            return 'killed by SIGKILL (sent by another process, or by the kernel when out of ' \
                'memory)'
        try:
            return 'killed by %s' % signal.Signals(sig).name
        except ValueError:
            return 'killed by signal %d' % sig
    code = os.WEXITSTATUS(status)
    return {EXIT_OK: 'exited normally',
            EXIT_BOOT_ERROR: 'exited: could not boot (a start hook raised)',
            EXIT_MEMORY: 'exited: over its memory_limit',
            EXIT_ORPHANED: 'exited: its parent went away'}.get(
                code, 'exited with code %d' % code)


def _reap(on_exit):
    """Reap every child that has exited: ``on_exit(pid, status)`` for each."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        on_exit(pid, status)


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
        with contextlib.suppress(BaseException):
            logger.exception('process %d crashed', os.getpid())
    finally:
        try:
            logging.shutdown()
        finally:
            os._exit(code)


def _child_init(close_fds):
    """Child side of a fork: default signal handlers, no wakeup fd, and none
    of the parent's descriptors that the child must not hold."""
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)


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
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._r.recv(4096):
                pass
        signums, self.pending[:] = list(self.pending), []
        return signums

    def close(self):
        signal.set_wakeup_fd(-1)
        self._r.close()
        self._w.close()


def _unregister(selector, fileobj):
    with contextlib.suppress(KeyError, ValueError, OSError):
        selector.unregister(fileobj)


_INSTALL_DIRS = tuple(sorted({os.path.join(os.path.realpath(p), '') for p in (
    sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
    sysconfig.get_paths().get('stdlib', ''), sysconfig.get_paths().get('purelib', ''),
    sysconfig.get_paths().get('platlib', '')) if p}))


def _forget_user_modules():
    """Drop the user's own modules (those outside the Python installation and
    site-packages) from ``sys.modules`` so that jobs import them anew: this is
    what makes ``worker:reload`` load changed code."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, '__file__', None)
        if path and name not in ('__main__', __name__, 'mpqueue', 'mpqueue_cli') and \
                not os.path.realpath(path).startswith(_INSTALL_DIRS):
            del sys.modules[name]
    importlib.invalidate_caches()


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


###############################################################################
# Configuration
###############################################################################

_QUEUE_NAME_RE = re.compile(r'^[A-Za-z0-9_.:-]{1,100}$')
_QUEUE_NAME_CHARS = '"_", ".", ":" or "-"'     # beside letters and digits, for errors
_POOL_NAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,100}$')

_BASICS_DEFAULTS = {
    'name': None, 'pid_path': '/tmp', 'driver': None, 'worker_start_handle': None,
    'secret': None, 'max_payload': 16 * 1024 * 1024, 'stop_grace': 30,
    'app': None, 'immediate': False,
}
_LOG_DEFAULTS = {'path': '/tmp', 'level': logging.INFO, 'driver': None}
_QUEUE_DEFAULTS = {
    'name': None, 'worker_number': 3, 'memory_limit': 128, 'sleep_seconds': 1,
    'timeout': 120, 'fail_number': 3, 'fail_expire': 3, 'fail_handle': None,
    'worker_start_handle': None, 'model': MODEL_DISTRIBUTE, 'coroutine_number': 1,
    'result_ttl': 0, 'expires': 0,
    'schedule': [], 'limits': {},
}
# A limit name: no spaces, no braces (a Redis hash tag), no '*' but at the end
# of a pattern; and the keys of a limit's definition.
_LIMIT_NAME_RE = re.compile(r'^[^\s{}*]{1,200}$')
_LIMIT_KEYS = ('concurrency', 'rate', 'per')

_config = None   # the configuration given to configure(), validated


def _check_number(path, value, minimum, integer=False):
    kind = 'an int' if integer else 'a number'
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else _is_number(value)
    if not ok or value < minimum or value != value or value == float('inf'):
        raise ConfigError('%s must be %s >= %s, got %r' % (path, kind, minimum, value))
    return value


class _Backoff(collections.namedtuple('_Backoff', 'first factor max jitter')):
    """An exponential retry policy, made by :func:`backoff`."""


def backoff(first, factor=2.0, max=3600, jitter=0.1):   # noqa: A002 (the name the user writes)
    """A retry policy for ``fail_expire``: ``first`` seconds before retry 1,
    ``factor`` times longer before each next one, at most ``max`` seconds,
    each give or take ``jitter`` (a fraction) of itself.

    :raises ConfigError: a value out of range, named.
    """
    _check_number('backoff first', first, 0)
    _check_number('backoff factor', factor, 1)
    _check_number('backoff max', max, first)
    _check_number('backoff jitter', jitter, 0)
    if jitter > 1:
        raise ConfigError('backoff jitter must be a fraction from 0 to 1, got %r' % (jitter,))
    return _Backoff(first, factor, max, jitter)


def _check_fail_expire(path, value):
    """A retry policy: seconds, a list of seconds (the delay before retry 1, 2,
    ...; the last one repeats) or ``mpqueue.backoff(...)`` (a tuple too: it
    is checked first)."""
    if isinstance(value, _Backoff):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError('%s must be seconds, a list of seconds or mpqueue.backoff(...), '
                              'not an empty list: %r' % (path, value))
        for i, seconds in enumerate(value):
            if not (_is_number(seconds) and 0 <= seconds < float('inf')):
                raise ConfigError('%s[%d] must be a number >= 0, got %r (in %r)'
                                  % (path, i, seconds, value))
        return list(value)
    if not _is_number(value):
        raise ConfigError('%s must be seconds, a list of seconds or mpqueue.backoff(...), got %r'
                          % (path, value))
    return _check_number(path, value, 0)


#: The settings of a job that a queue, a schedule, a Job class or a push gives.
_JOB_OPTIONS = ('timeout', 'fail_number', 'fail_expire', 'result_ttl', 'expires', 'priority')


def _check_option(path, name, value):
    """One of _JOB_OPTIONS, checked; a retry policy comes back as a job
    record keeps it."""
    if name == 'fail_expire':
        return _check_fail_expire(path, value)
    if name == 'priority':
        if not isinstance(value, int) or isinstance(value, bool) or \
                not 0 <= value <= MAX_PRIORITY:
            raise ConfigError('%s must be an int from 0 (lowest) to %d, got %r'
                              % (path, MAX_PRIORITY, value))
        return value
    return _check_number(path, value, 0, integer=name == 'fail_number')


def _check_callable(path, value):
    if value is not None and not callable(value):
        raise ConfigError('%s must be callable or None, got %r' % (path, value))
    return value


def _absolute_hint(path):
    """Source that makes ``path`` absolute the same way wherever it runs."""
    if path.startswith('~'):
        return 'os.path.expanduser(%r)' % path
    return 'os.path.join(os.path.dirname(os.path.abspath(__file__)), %r)' % path


def _check_dir(path, value):
    """A directory of the config: an absolute path, the same one for the pool
    (a daemon runs in ``/``) and for a pusher started from any directory."""
    if not isinstance(value, str) or not value:
        raise ConfigError('%s must be a directory path, got %r' % (path, value))
    if not os.path.isabs(value):
        raise ConfigError('%s must be an absolute path, got %r (a relative one means another '
                          'directory for a daemon or a pusher started elsewhere); use e.g. %s'
                          % (path, value, _absolute_hint(value)))
    return value


def _check_name(path, value, pattern, chars):
    if value is None:
        raise ConfigError('%s is required: a unique name of letters, digits, %s' % (path, chars))
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError('%s must be a non-empty string of letters, digits, %s, got %r'
                          % (path, chars, value))
    return value


def _check_limits(path, limits):
    """A queue's ``limits``: {name or pattern: (concurrency, rate, per)}, 0 for
    what a definition does not limit."""
    if not isinstance(limits, dict):
        raise ConfigError("%s must be a dict such as {'stripe': {'concurrency': 4}}, got %r"
                          % (path, limits))
    out = {}
    for name, given in limits.items():
        here = '%s[%r]' % (path, name)
        if not isinstance(name, str) or not _LIMIT_NAME_RE.match(
                name[:-1] if name.endswith('*') and len(name) > 1 else name):
            raise ConfigError('%s: a limit name must be a string of 1-200 characters without '
                              'spaces or braces, and a pattern ends in "*" (its only one)'
                              % (here,))
        if not isinstance(given, dict) or not given:
            raise ConfigError("%s must be {'concurrency': N}, {'rate': N, 'per': seconds} or "
                              'both, got %r' % (here, given))
        d = _check_keys(here, given, dict.fromkeys(_LIMIT_KEYS))
        if d['concurrency'] is not None:
            _check_number(here + '.concurrency', d['concurrency'], 1, integer=True)
        if (d['rate'] is None) != (d['per'] is None):
            raise ConfigError("%s: rate and per go together: {'rate': N, 'per': seconds} "
                              '(N starts in any window of that many seconds)' % (here,))
        if d['rate'] is not None:
            _check_number(here + '.rate', d['rate'], 1, integer=True)
            _check_number(here + '.per', d['per'], 0.001)
            if d['per'] > 366 * 86400:
                raise ConfigError('%s.per must be at most a year (%d s), got %r'
                                  % (here, 366 * 86400, d['per']))
        out[name] = (d['concurrency'] or 0, d['rate'] or 0, d['per'] or 0)
    return out


def _limits_text(qconf, limit, path='limit'):
    """The ``limits`` field of a job pushed with ``limit`` (a name, a list of
    names, or None) to queue ``qconf``: '' for none.  Each name is matched
    against the queue's definitions, a name first, then the longest pattern."""
    if limit is None:
        return ''
    names = [limit] if isinstance(limit, str) else limit
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError('%s must be a limit name or a list of them, got %r' % (path, limit))
    defs, out = qconf['limits'], []
    for name in names:
        if not isinstance(name, str) or not _LIMIT_NAME_RE.match(name):
            raise ConfigError('%s: %r is not a limit name (a string of 1-200 characters '
                              'without spaces, braces or "*")' % (path, name))
        pattern = _limit_of(name, defs)
        if pattern is None:
            raise ConfigError('%s: no limit of queue %r matches %r; define it (or a pattern '
                              "such as 'customer:*') in the queue's limits (defined: %s)"
                              % (path, qconf['name'], name, ', '.join(sorted(defs)) or 'none'))
        if name not in (n for n, *_ in out):
            out.append([name, *defs[pattern]])
    return json.dumps(out, separators=(',', ':'))


def _limit_of(name, defs):
    """The definition (its name or pattern) that limit ``name`` matches, or None."""
    if name in defs:
        return name
    return max((p for p in defs if p.endswith('*') and name.startswith(p[:-1])), key=len,
               default=None)


def _check_keys(path, given, defaults):
    if not isinstance(given, dict):
        raise ConfigError('%s must be a dict, got %r' % (path, given))
    unknown = sorted(set(given) - set(defaults), key=str)
    if unknown:
        raise ConfigError('%s has unknown key %r (known keys: %s)' % (
            path, unknown[0], ', '.join(sorted(defaults))))
    return dict(defaults, **given)


def _get_config():
    if _config is None:
        raise MPQueueError('mpqueue is not configured: call mpqueue.configure(config) first')
    return _config


def queue_config(name):
    """The validated config of queue ``name`` (a dict).

    :raises ConfigError: no such queue is configured.
    """
    config = _get_config()
    for q in config['queue']:
        if q['name'] == name:
            return q
    raise ConfigError('queue %r is not in the config (configured queues: %s)' % (
        name, ', '.join(q['name'] for q in config['queue'])))


def _driver(queue):
    """The configured broker, once ``queue`` is found configured."""
    queue_config(queue)
    return _get_config()['basics']['driver']


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
    coroutine function.  ``retry_on`` and ``dont_retry_on`` choose which
    exceptions are retried; one that is not fails the job at once.
    """

    timeout = None
    fail_number = None
    fail_expire = None
    result_ttl = None       # seconds its outcome stays readable (None: the queue's)
    expires = None          # seconds it may wait, once due, before it is too late (None: ...)
    priority = None         # 0 to MAX_PRIORITY, higher first (None: 0)
    limit = None            # a limit name of the queue, or a list of them (None: none)
    retry_on = None         # exception classes that are retried (None: all)
    dont_retry_on = ()      # exception classes that fail the job at once

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
_MAC_SIZE = 32          # HMAC-SHA256


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


# Pays: push 5,000 jobs/s against 3,400 with cloudpickle for every job (python
# examples/benchmark.py --driver sqlite --only push,push_many --jobs 20000;
# medians of 5 interleaved runs each, 2026-12-07).
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


def _seal(body, secret):
    """The wire envelope around pickled ``body``::

        b'MPQ1' + b'S' + HMAC-SHA256(secret, body) + body     (signed)
        b'MPQ1' + b'U' + body                                  (unsigned)
    """
    if secret:
        return b''.join((_MAGIC, b'S', _sign(secret, body), body))
    return b''.join((_MAGIC, b'U', body))


def _unseal(envelope, secret, what='payload'):
    """Check an envelope and unpickle what it holds.  With a secret, the
    signature is checked in constant time *before* anything is unpickled, and
    an unsigned envelope is refused."""
    if not isinstance(envelope, (bytes, bytearray, memoryview)) or envelope[:4] != _MAGIC:
        raise SerializationError('%s is not mpqueue data (corrupt or foreign)' % what)
    flag = envelope[4:5]
    if flag == b'S':
        mac, data = envelope[5:5 + _MAC_SIZE], envelope[5 + _MAC_SIZE:]
        if secret and not _same_digest(mac, _sign(secret, data)):
            raise SerializationError('%s signature does not match basics.secret '
                                     '(tampered, or signed with another secret); not unpickled'
                                     % what)
    elif flag == b'U':
        data = envelope[5:]
        if secret:
            raise SerializationError('%s is not signed but basics.secret is set; '
                                     'not unpickled' % what)
    else:
        raise SerializationError('%s has an unknown envelope flag %r' % (what, flag))
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError('%s cannot be unpickled: %s: %s' % (
            what, type(exc).__name__, exc)) from exc


def _encode(queue, job, args, kwargs, secret, max_payload):
    """Pickle a job into its wire envelope; the body is a dict
    ``{'v': 1, 'job': ..., 'args': ..., 'kwargs': ...}``.  Readers use
    ``dict.get`` with defaults, so older payloads keep decoding."""
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
    return _seal(data, secret)


def _decode(payload, secret):
    """Check and unpickle a job's envelope; return ``(job, args, kwargs)``."""
    body = _unseal(payload, secret)
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


def _is_job(job):
    """A ``mpqueue.Job`` subclass or instance."""
    return isinstance(job, Job) or (isinstance(job, type) and issubclass(job, Job))


def _job_class(job):
    return job if isinstance(job, type) else type(job)


def _job_setting(name, given, job, default):
    """Per-job setting: push argument, else Job attribute, else ``default``."""
    if given is not None:
        return given
    if _is_job(job):
        value = getattr(job, name, None)
        if value is not None:
            return value
    return default


def _policy_text(policy):
    """A retry policy as its record keeps it: JSON."""
    if isinstance(policy, _Backoff):
        return json.dumps(policy._asdict())
    return json.dumps(policy)


def _retry_delay(text, retry):
    """Seconds to wait before retry number ``retry`` (1, 2, ...) under a
    policy as a record keeps it."""
    policy = _fail_expire(text)
    if isinstance(policy, list):
        return policy[min(retry, len(policy)) - 1]
    if isinstance(policy, dict):
        base = min(policy['max'], policy['first'] * policy['factor'] ** (retry - 1))
        return max(0.0, base * (1 + random.uniform(-policy['jitter'], policy['jitter'])))
    return policy if _is_number(policy) else 0


def _fail_expire(text):
    """A stored fail_expire as it was given: seconds, a list, or a backoff
    (as a dict)."""
    try:
        return json.loads(text) if isinstance(text, str) else (text or 0)
    except ValueError:
        return 0


def _retried(job_obj, exc):
    """Whether ``exc`` may be retried at all (``Fail``, ``Job.retry_on`` and
    ``Job.dont_retry_on`` say no).  ``push`` checks both attributes of a Job
    it is given; one it could not check (a Job named by an import path) that
    is not an exception class or a tuple of them counts as not set."""
    if isinstance(exc, Fail):
        return False
    if job_obj is None or isinstance(exc, Retry):
        return True
    try:
        if job_obj.dont_retry_on and isinstance(exc, _classes(job_obj.dont_retry_on)):
            return False
        return job_obj.retry_on is None or isinstance(exc, _classes(job_obj.retry_on))
    except TypeError:
        return True


def _classes(value):
    """``retry_on`` / ``dont_retry_on`` as ``isinstance`` takes them: one class
    or a tuple."""
    return value if isinstance(value, type) else tuple(value)


def _check_classes(path, value):
    """A ``retry_on`` / ``dont_retry_on``: None, an exception class or a tuple
    (or list) of them."""
    if value is None:
        return
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in items):
        raise TypeError('%s must be an exception class, a tuple of them or None, got %r'
                        % (path, value))


def _push_options(job, qconf, **given):
    """Per-job settings: push argument, else Job attribute, else the queue's
    (priority: 0); each checked when it is not the queue's own, and named in
    an error as the push argument (``fail_expire``) or the Job attribute
    (``SendMail.fail_expire``) it came from.  ``fail_expire`` comes as its
    record keeps it (``_policy_text``)."""
    job_class = _job_class(job)
    is_job = _is_job(job)
    out, path = {}, {}
    for name, value in given.items():
        out[name] = _job_setting(name, value, job, qconf.get(name, 0))
        path[name] = '%s.%s' % (job_class.__name__, name) if value is None and is_job else name
    for name in given:
        if name not in qconf or out[name] is not qconf[name]:
            out[name] = _check_option(path[name], name, out[name])
    out['fail_expire'] = _policy_text(out['fail_expire'])
    if is_job:
        _check_classes('%s.retry_on' % job_class.__name__, job.retry_on)
        _check_classes('%s.dont_retry_on' % job_class.__name__, job.dont_retry_on)
    return out


_queue_options = {}     # id(qconf) -> (qconf, its jobs' options when a push gives none)


def _plain_options(qconf, given):
    """``_push_options`` of a job that is no Job: worked out once per queue
    for pushes that give no option."""
    if any(value is not None for value in given.values()):
        return _push_options(None, qconf, **given)
    known = _queue_options.get(id(qconf))
    if known is None or known[0] is not qconf:
        known = _queue_options[id(qconf)] = (qconf, _push_options(None, qconf, **given))
    return known[1]


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
#: ``catch_up='none'`` still pushes a tick this many seconds late (or half its
#: period, if that is less), so that a pool restarting across a tick (a
#: deploy) does not lose it.
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
    'fail_number': None, 'fail_expire': None, 'result_ttl': None, 'expires': None,
    'priority': None, 'key': None, 'unique': None, 'limit': None,
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
        if self.catch_up == 'none':     # only a tick that is not late: a restart's own
            grace = min(SCHEDULE_GRACE, (self.next_after(newest) - newest) / 2)
            return [newest] if now - newest <= grace else [], newest, 0
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


def _check_unique(key, unique, path='key'):
    """The unique mode a push stores: '', 'queued', 'active' or seconds."""
    if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
        raise ConfigError('%s must be a non-empty string of at most 200 characters, got %r'
                          % (path, key))
    if unique is None:
        return ''
    if key is None:
        raise ConfigError('unique=%r needs a key: push(..., key=..., unique=%r)'
                          % (unique, unique))
    if unique in ('queued', 'active'):
        return unique
    if _is_number(unique) and unique > 0 and unique != float('inf'):
        return repr(unique)
    raise ConfigError("unique must be 'queued', 'active' or a number of seconds > 0, got %r"
                      % (unique,))


def _check_schedules(path, qconf, schedules):
    """Validate the ``schedule`` list of queue ``qconf``; return a copy with
    every default filled in, plus ``expression`` (for display) and ``when``
    (its _Schedule) in each entry."""
    if not isinstance(schedules, (list, tuple)):
        raise ConfigError('%s must be a list of schedule dicts, got %r' % (path, schedules))
    queue, checked, seen = qconf['name'], [], set()
    for i, given in enumerate(schedules):
        here = '%s[%d]' % (path, i)
        s = _check_keys(here, given, _SCHEDULE_DEFAULTS)
        _check_name(here + '.name', s['name'], _QUEUE_NAME_RE, _QUEUE_NAME_CHARS)
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
        if not s['overlap'] and s['unique'] is not None:
            raise ConfigError("%s has overlap=False and unique=%r: overlap=False is unique="
                              "'active' on the schedule's key; give one of them"
                              % (here, s['unique']))
        if s['key'] is None:
            s['key'] = 'schedule:' + s['name']
        try:
            s['unique'] = _check_unique(s['key'], s['unique']) or (
                '' if s['overlap'] else 'active')
        except ConfigError as exc:
            raise ConfigError('%s.%s' % (here, exc)) from None
        for option in _JOB_OPTIONS:
            if s[option] is not None:
                s[option] = _check_option('%s.%s' % (here, option), option, s[option])
        s['limits'] = _limits_text(qconf, s['limit'], here + '.limit')
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
# Drivers: the step table
###############################################################################

# A driver is a small state machine per queue.  ``execute(queue, steps)``
# applies a list of steps atomically, in one round trip, and returns one
# Python value per step.  This table is the whole protocol: the drivers
# implement each row, RedisDriver's Lua takes its argument counts from it, and
# ``execute`` checks every step against it.
#
#   name           arguments                   returns (kind)
_PUSH_ARGS = ('id payload delay job timeout fail_number fail_expire priority key unique_mode '
              'result_ttl limits depends_on on_parent_failure expires')
_STEPS = (
    ('push', _PUSH_ARGS, 'text'),
    # store a job, waiting (or delayed by `delay` s); its id, or, when another
    # job holds its unique `key`, that job's id (and nothing is stored).
    # `limits`: '' or the job's limits as _limits_text writes them.
    # `depends_on`: '' or a JSON list of parent ids (see "Dependencies"
    # below); '!' and the first one the broker does not know, and nothing is
    # stored
    ('reserve', 'n', 'jobs'),
    # up to n waiting jobs, highest priority first, reserved for
    # RESERVE_SECONDS; each gets a new attempt number.  A job is its id and
    # at least _WORK_FIELDS (those never set may be left out: 0 or none).
    # A job with limits is handed out only if each admits it (its attempt
    # takes a slot of each); else it is parked (see "Limits" below) and the
    # next one is tried
    ('start', 'id attempt worker owner', 'bool'),
    # a reserved attempt starts: working, under a lease
    ('pop', 'n worker owner', 'jobs'),
    # reserve and start up to n jobs at once (grab model); limits as reserve
    ('renew', 'id attempt', 'text'),
    # extend the lease of a working attempt: 'ok', 'cancel' (the job was
    # cancelled: stop it) or None (not the current attempt)
    ('progress', 'id attempt progress meta', 'bool'),
    # the job's body reports how far it is: its fields progress (a number
    # 0..1, '' for none) and meta (JSON text) are set, and stay to its end and
    # after.  Reserved or working (a worker may begin before its master's
    # start step lands); False: not the current attempt, nothing written
    ('done', 'id attempt result result_repr result_note', 'bool'),
    ('retry', 'id attempt delay error', 'bool'),
    ('fail', 'id attempt type errors job', 'bool'),
    # outcomes of a working attempt: success (the outcome is kept for the job's
    # result_ttl); an error with attempts left (delayed by `delay`); a final
    # failure (to the failed list).  False: not the current attempt, nothing done
    ('lost', 'id attempt error timeout', 'bool'),
    # its worker died (timeout=1: was stopped at its timeout): run it again,
    # run its fail handlers, fail it, or end it cancelled
    ('requeue', 'id attempt', 'bool'),
    # interrupted by mpqueue itself: back to the head, the attempt not counted
    ('recover', 'owner', 'int'),
    # requeue every job a dead master started; how many
    ('sweep', 'limit', 'sweep'),
    # promote due delayed jobs, take back expired reservations, recover
    # expired leases, drop expired outcomes and unique holds; (seconds to the
    # next due time or None, broker time)
    ('cancel', 'id by', 'text'),
    # waiting, delayed, reserved: cancelled now; working: flagged, and its
    # master is told to stop it; the state before, or None for an unknown id
    ('info', 'id watch', 'record'),
    # the job's record, or None; with `watch` (a waiter's address) the job's
    # end notifies that waiter
    ('limits', '', 'limits'),
    # each limit name in use (slots held or jobs waiting): {name: (running, waiting)}
    ('depth', '', 'depth'),
    # jobs per state, the counters, the create time of the oldest waiting job
    ('failed', 'offset count after', 'records'),
    # up to count failed jobs' records, oldest first: those after job `after`
    # while it is failed (a cursor: deep pages cost what the first does), else
    # from the offset-th
    ('listing', 'state count cursor', 'listing'),
    # up to count jobs of `state`, waiting (in the order they will start) or
    # delayed (soonest due first), from `cursor` ('': the first); their
    # records (a delayed one with its due time) and the cursor of the page
    # after ('': none).  A cursor is the broker's own text; each page costs
    # what the first does, at any depth
    ('retry_failed', 'id limit', 'int'),
    # put one failed job (or up to `limit`, oldest first) back; how many
    ('delete_failed', 'id', 'bool'),
    ('find', 'text', 'text'),
    # the id of job `text` if the broker has its record, else of the job that
    # holds unique key `text` now, else None: one lookup each, at any size
    ('match_failed', 'text count cursor limit', 'matches'),
    # walk the failed list from `cursor` ('': the oldest), at most `limit`
    # jobs, for those whose name, key or an error contains `text` (ASCII
    # letters in either case), stopping at the count-th (0: counting only);
    # (how many matched, the records of the first `count`, the cursor after
    # the last job walked: '' at the end).  A walk ends at the jobs that
    # failed by its first step: one failing again meanwhile is not met twice
    ('retry_matching', 'text cursor limit', 'walk'),
    ('delete_matching', 'text cursor limit', 'walk'),
    # retry_failed or delete_failed each matching job of a walk's chunk, as
    # match_failed walks; (how many, the cursor after the chunk)
    ('clean', 'limit', 'int'),
    # forget up to `limit` jobs of the queue, and its counters once none is
    # left; how many jobs (call it again until it returns less than limit)
    ('schedule', 'name fingerprint last tick owner ' + _PUSH_ARGS, 'schedule'),
    # a schedule ticks: if its last tick (ms, '' for never) is still `last`
    # and `tick` has come (broker clock), the last tick becomes `tick` and
    # job `id` is pushed (none when id is ''); (what happened: 'pushed',
    # 'moved', 'skipped' (its unique key is held: overlap, unique), 'stale' or
    # 'early'; and the schedule's record before the step)
    ('schedules', '', 'schedules'),
    # every schedule record of the queue: name, last, fingerprint, owner, job,
    # skipped
    ('history', '', 'history'),
    # the counters sampled every HISTORY_SECONDS by sweep, oldest first
    ('pause', '', 'bool'),
    # the queue is paused: reserve and pop hand out nothing until resume
    # (pushes, delayed jobs and schedule ticks accrue); its masters are told
    # ('p') to put back the jobs they reserved but have not handed out yet.
    # False: it was paused already
    ('resume', '', 'bool'),
    # the queue's jobs are handed out again, its masters woken.  False: it
    # was not paused
    ('paused', '', 'bool'),
    # whether the queue is paused
)
_STEP_ARGS = {name: len(args.split()) for name, args, _ in _STEPS}
_STEP_KIND = {name: kind for name, _, kind in _STEPS}
# the arguments of a schedule step that moves its tick and pushes nothing:
# every push argument after the id, empty
_NO_PUSH = ('',) * (_STEP_ARGS['push'] - 1)
_READ_STEPS = ('depth', 'failed', 'listing', 'schedules', 'history', 'paused', 'limits',
               'find', 'match_failed')

# Limits.  A job's `limits` field (only jobs pushed with limit= have one) is
# JSON: [[name, concurrency, rate, per], ...] (0: no such limit), the
# definitions of the pushing side, as timeout is.  Each attempt of the job
# holds a slot of each name (its id -> its attempt) from the step that hands
# it out to the step that ends that attempt (done, retry, fail, lost,
# requeue, recover, cancel of a reserved job, a reservation or lease that
# expires); those steps are fenced by the attempt, so a stale outcome gives
# back nothing and a recovery gives back the slot.  A job that a
# concurrency limit refuses is *parked*: it stays waiting, with
# `waiting_for` naming the limit, in that name's parked list (FIFO) out of
# the queue's waiting lists; the step that gives back a slot of the name
# moves the head of that list to the head of waiting and wakes the masters.
# A job that a rate limit refuses goes to the delayed set, due when its
# window permits it (the sweep that promotes delayed jobs hands it on).
# Nothing polls, and a waiting job uses no attempt.  Fail handler runs of a
# job take no slot: they do not run its body.

# Dependencies.  A job pushed with `depends_on` (its parents, JSON) and
# `on_parent_failure` waits *blocked* while one of them has not ended: the
# job's set of parents not ended yet is the whole state (no counter, so an
# outcome delivered twice counts once).  The step that ends a parent (done,
# fail for good, cancel, and the lost/sweep paths that end in those) takes
# it out of each child's set; a child whose set is empty is released to
# waiting (or delayed, if its own delay is not over), and a parent that
# did not end done cancels a child unless it runs anyway ('run'), and that
# cancel goes on to the child's own children.  A parent that has already
# ended when its child is pushed is settled at push.  A parent's record
# (its result) stays while a child of it has not ended (its `has_children`
# flag says it may have some), then expires as its result_ttl says.

# Expiry.  A job pushed with `expires` (seconds) gets its `expire_time`
# when it becomes due: at push (after its delay), or when its last parent
# releases it.  A step that would start its first attempt (reserve, pop,
# start) after that time ends it *expired* instead: it never runs, no
# retry, no fail handler, its children settle as for a failed parent.  The
# sweep does the same to waiting and delayed jobs whose time passed, so a
# paused, busy or stopped pool still ends them on time.  Started in time,
# a job has no expire_time any more and runs to its end.

# A job's record: these fields, the same in every driver, with their types.
# job_info() shows the public ones; the others are the lifecycle's own.
_PUBLIC_FIELDS = {
    'job': str, 'state': str, 'create_time': float, 'start_time': float, 'end_time': float,
    'fail_time': float, 'exec_number': int, 'worker_id': str, 'timeout': float,
    'fail_number': int, 'fail_expire': str, 'error_info': json.loads, 'type': int,
    'priority': int, 'key': str, 'result_repr': str, 'result_note': str,
    'cancel_time': float, 'cancelled_by': str, 'waiting_for': str, 'depends_on': json.loads,
    'on_parent_failure': str, 'progress': float, 'meta': str, 'expires': float,
    'expire_time': float,
}
_PRIVATE_FIELDS = {
    'payload': bytes, 'result': bytes, 'attempt': int, 'owner': str, 'deadline': float,
    'phase': str, 'handler_runs': int, 'handler_start': float, 'unique_mode': str,
    'result_ttl': float, 'waiter': str, 'limits': str, 'has_children': int,
}
_FIELDS = dict(_PUBLIC_FIELDS, **_PRIVATE_FIELDS)
_FIELDS_BUT_PAYLOAD = tuple(name for name in _FIELDS if name != 'payload')
# What a worker needs of a job it runs (reserve and pop return these).
_WORK_FIELDS = ('payload', 'attempt', 'exec_number', 'phase', 'job', 'create_time',
                'start_time', 'worker_id', 'timeout', 'fail_number', 'fail_expire',
                'error_info', 'type', 'priority', 'key', 'result_ttl', 'has_children',
                'depends_on', 'expire_time')
# A job's states (the drawing at the top of the file): each move between
# them is one step of the table above.  The Lua library takes them by
# substitution.
WAITING, DELAYED, RESERVED, WORKING = 'waiting', 'delayed', 'reserved', 'working'
DONE, FAILED, CANCELLED, BLOCKED, EXPIRED = 'done', 'failed', 'cancelled', 'blocked', 'expired'
_STATES = (WAITING, DELAYED, RESERVED, WORKING, DONE, FAILED, CANCELLED, BLOCKED, EXPIRED)
#: The states of the jobs a queue counts (depth(), queue:status, metrics).
LIVE_STATES = (WAITING, DELAYED, RESERVED, WORKING, FAILED, BLOCKED)
_ENDED = (DONE, FAILED, CANCELLED, EXPIRED)
_KEPT_STATES = (DONE, CANCELLED, EXPIRED)       # ended, their outcome kept for a time
# A queue's counters: its live jobs per state, then the totals since `clean`.
_DEPTH_FIELDS = LIVE_STATES + ('pushed', DONE, 'failed_total', CANCELLED, EXPIRED)
_SCHEDULE_FIELDS = ('last', 'fingerprint', 'owner', 'job', 'skipped')
_PHASE_HANDLERS = 'handlers'    # phase of a job whose fail handlers are still to run
# A parent's result_note when its worker did not send its value: the child
# came after the job was handed out, and the job keeps no outcome of its own
_UNSENT_RESULT = ('its return value was not kept: a job that depends on it was pushed after it '
                  'had started (give it a result_ttl to keep its value)')


def _public_info(queue, record):
    """``job_info`` of a record: its public fields, every one there (None
    where the job has no value yet)."""
    info = {name: value for name, value in record.items() if name not in _PRIVATE_FIELDS}
    if record.get('limits'):
        info['limit'] = [name for name, *_ in json.loads(record['limits'])]
        if info.get('waiting_for') and info.get('state') == DELAYED:
            info['state'] = WAITING     # its rate limit's window: the timer hands it on
    if info.get('state') == BLOCKED:
        info['waiting_for'] = sorted(json.loads(info['waiting_for']))    # parents not ended
    info.update(queue=queue, exec_number=record.get('exec_number', 0),
                timeout=record.get('timeout', 0), fail_number=record.get('fail_number', 0),
                fail_expire=_fail_expire(record.get('fail_expire')),
                type=record.get('type') or TYPE_NORMAL, job=record.get('job', ''))
    for name in ('start_time', 'worker_id', 'end_time', 'fail_time', 'key', 'progress'):
        info.setdefault(name, None)
    info.setdefault('depends_on', [])
    info['dependents'] = sorted(info.get('dependents') or ())     # its children not ended
    info['meta'] = json.loads(record['meta']) if 'meta' in record else None
    return info


def _decoder(kind):          # int() and float() take bytes as they are
    if kind is str:
        return _text
    if kind is json.loads:
        return lambda value: json.loads(value) or []
    return kind


# field name as a broker gives it (bytes from Redis, str from SQLite) -> (name, decoder)
# (and what the info step adds: a parent's children not ended, `dependents`)
_DECODE = {key: (name, _decoder(kind))
           for name, kind in dict(_FIELDS, dependents=json.loads).items()
           for key in (name, name.encode())}


def _record(pairs):
    """A job record from ``(field, value)`` pairs as a broker stores them:
    values converted to their Python types, empty ones left out."""
    out = {}
    for name, value in pairs:
        name, convert = _DECODE.get(name, (None, None))
        if convert is not None and value is not None and value != b'' and value != '':
            out[name] = convert(value)
    if not isinstance(out.get('error_info'), list):
        out['error_info'] = []
    for name in ('attempt', 'exec_number', 'priority'):     # not stored while 0
        out.setdefault(name, 0)
    return out


class _Driver:
    """What every broker driver offers: the steps of ``_STEPS``, applied in
    batches by ``execute``, a ``waker`` per queue for its masters, and the
    *fleet* (``_fleet``): one heartbeat per (pool, queue), which expires
    ``ttl`` seconds (broker clock) after it was published."""

    _PER_PROCESS = ()       # attributes (sockets, connections) a pickled driver leaves out

    def __getstate__(self):   # drivers travel in pickled configs without their sockets
        return dict(self.__dict__, **dict.fromkeys(self._PER_PROCESS))

    address = '?'

    def execute(self, queue, steps):
        """Apply ``steps`` (tuples: a name of ``_STEPS`` and its arguments) to
        ``queue`` atomically, in order; returns one value per step."""
        for step in steps:
            n = _STEP_ARGS.get(step[0])
            if n is None or len(step) - 1 != n:
                raise ValueError('step %r: not a step of _STEPS, or not %s arguments'
                                 % (step, n))
        return self._execute(queue, steps) if steps else []

    def run(self, queue, name, *args):
        """One step, one round trip: its result."""
        return self.execute(queue, [(name,) + args])[0]

    def waker(self, queue):
        """An object with ``fileno()``, ``drain()`` and ``close()`` that becomes
        readable when a step makes work for the queue's masters; ``drain()``
        returns ``(cancelled, paused)``: the ids of started jobs that were
        cancelled since, and whether the queue was paused since."""
        raise NotImplementedError

    def watch(self, queue):
        """A waiter on the end of jobs of ``queue``: its ``address`` goes with
        the ``info`` step (``watch``), then ``wait(timeout)`` returns when a
        watched job ends (or the time is up); ``close()`` when done."""
        raise NotImplementedError

    def close(self):
        pass

    def preload(self):
        """Import what the driver needs, in the manage process before it forks,
        so that every process of the pool shares those pages."""

    # -- the fleet -------------------------------------------------------------

    def heartbeat(self, pool_id, queue, info, ttl):
        """Publish ``info`` (JSON-able) as the heartbeat of ``queue`` in pool
        ``pool_id``; it expires after ``ttl`` seconds unless published again."""
        self._fleet('beat', '%s|%s' % (pool_id, queue), json.dumps(dict(info, ttl=ttl)), ttl)

    def forget(self, pool_id, queue):
        """Remove a heartbeat at once (its master stopped)."""
        self._fleet('forget', '%s|%s' % (pool_id, queue), '', 0)

    def fleet(self):
        """The live pools: each heartbeat's pool info with ``id``, ``age``
        (seconds since its newest beat, broker clock), ``last_seen`` (this
        clock) and ``queues`` gathered from the beats of its masters."""
        now, beats = self._fleet('read', '', '', 0)
        pools = {}
        for entry_id, raw, expires in beats:
            info = json.loads(raw)
            age = max(0.0, now - (expires - info.pop('ttl', HEARTBEAT_TTL)))
            pool_id = entry_id.rpartition('|')[0]
            pool = pools.setdefault(pool_id, dict(info.pop('pool'), id=pool_id, age=age,
                                                  queues={}))
            pool['queues'][info.pop('queue')] = info
            pool['age'] = min(pool['age'], age)
        for pool in pools.values():
            pool['last_seen'] = time.time() - pool['age']
        return sorted(pools.values(), key=lambda p: (p.get('name', ''), p.get('host', ''),
                                                     p.get('pid', 0)))


###############################################################################
# Drivers: Redis
###############################################################################

# The job lifecycle for Redis: a library of Redis functions (Redis 7), loaded
# once per server.  Its function steps(keys, args) applies steps of _STEPS in
# order.  keys[1] is the queue's key prefix, '{prefix}:{queue}:'; its hash tag
# puts every key of the queue in one Redis Cluster slot.  Below it:
#   waiting, waiting:1 ..  lists: ids ready to run, of priority 0, 1 .. MAX_PRIORITY
#   delayed   zset  id -> due time        working  zset  id -> lease expiry
#   reserved  zset  id -> time it goes    failed   zset  id -> time it failed
#                   back to waiting       kept     zset  id -> time its kept
#   job:<id>  hash  the job's record                       outcome expires
#             (the fields of _FIELDS)
#   stats     hash  pushed, done, failed, cancelled: counters since `clean`
#   unique    hash  unique key -> id of the job holding it
#   unique:ttl zset unique key -> time a hold of <seconds> ends
#   schedules hash  <name>:last (ms), :fingerprint, :owner, :job, :skipped
#   history   list  'time done failed': the counters every HISTORY_SECONDS
#   paused    string there while the queue is paused ('clean' leaves it)
# Channels: notify ('1': work to do; 'c:<id>': a started job was cancelled;
# 'p': the queue was paused) and ended (the id of an ended job somebody waits
# for).  args: lease seconds, reservation seconds, fail handler attempts, how
# long a cancelled job is kept, then the steps, each its name and its
# arguments.  Times are the server's (TIME), so the servers of a pool need
# not agree on the clock.  A library (not a script run with EVALSHA) because
# a script defines its dozens of local functions again at every call: that
# cost 12 µs of the server's time per call.
_LUA_LIBRARY = r"""
-- Loaded once per server (FUNCTION LOAD): these locals live as long as the
-- library; a call sets the ones that describe it (steps(), below).
local NARGS = {%(nargs)s}
-- a job's states, as _STATES names them; the counters in STATS of jobs that
-- ended are named after their state
local S_WAITING, S_DELAYED, S_RESERVED, S_WORKING, S_DONE, S_FAILED, S_CANCELLED,
  S_BLOCKED, S_EXPIRED = %(states)s
local KEYSETS = {}          -- queue prefix -> the names of its keys
local now, P, LEASE, HOLD, HANDLER_ATTEMPTS, CANCELLED_KEEP
local WAITING, DELAYED, RESERVED, WORKING, FAILED, KEPT, STATS, UNIQUE, UNIQUE_TTL, SCHEDULES
local HISTORY, LWAITING, LNAMES, BLOCKED, EXPIRING
local LEVELS, wake, cancels, ended, pushed

local function rec(id) return P .. 'job:' .. id end
-- an ended job; one whose outcome is kept for a time (a failed one stays)
local function over(state)
  return state == S_DONE or state == S_FAILED or state == S_CANCELLED or state == S_EXPIRED
end
local function kept(state) return over(state) and state ~= S_FAILED end
local function waiting(level)
  if level and level ~= '0' and level ~= 0 then return P .. 'waiting:' .. level end
  return WAITING
end
local function add_error(id, err)
  local raw = redis.call('HGET', rec(id), 'error_info')
  local errors = {}
  if raw and raw ~= '' and raw ~= '{}' then errors = cjson.decode(raw) end
  table.insert(errors, err)
  redis.call('HSET', rec(id), 'error_info', cjson.encode(errors))
end

-- into waiting, at the tail of its priority, or delayed by `delay` seconds;
-- returns the state it is in now
local function enqueue(id, delay, level)
  if delay > 0 then
    local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
    if #first == 0 or tonumber(first[2]) > now + delay then wake = true end
    redis.call('ZADD', DELAYED, now + delay, id)
    return S_DELAYED
  end
  level = level or redis.call('HGET', rec(id), 'priority')
  if redis.call('RPUSH', waiting(level), id) == 1 then wake = true end
  return S_WAITING
end

-- true while `holder` holds unique key `key`: a hold of <seconds> until it
-- ends, 'queued' while the job waits, 'active' until the job ends
local function holds(holder, key)
  local ends = redis.call('ZSCORE', UNIQUE_TTL, key)
  if ends then return tonumber(ends) > now end
  local f = redis.call('HMGET', rec(holder), 'state', 'unique_mode')
  if f[1] == S_WAITING or f[1] == S_DELAYED or f[1] == S_BLOCKED then return true end
  return f[2] == 'active' and (f[1] == S_RESERVED or f[1] == S_WORKING)
end
-- a job queued again (a retry, a recovery, retry_failed) holds its unique key
-- again, unless another job took it meanwhile; not one queued to run its fail
-- handlers only: it will not run again
local function hold_again(id)
  local f = redis.call('HMGET', rec(id), 'key', 'unique_mode', 'phase')
  if f[1] and (f[2] == 'queued' or f[2] == 'active') and f[3] ~= '%(PHASE_HANDLERS)s' then
    local holder = redis.call('HGET', UNIQUE, f[1])
    if not holder or (holder ~= id and not holds(holder, f[1])) then
      redis.call('HSET', UNIQUE, f[1], id)
    end
  end
end
local function ready(id, delay)
  redis.call('HSET', rec(id), 'state', enqueue(id, delay))
  hold_again(id)
end
local function to_head(id)
  if redis.call('LPUSH', waiting(redis.call('HGET', rec(id), 'priority')), id) == 1 then
    wake = true
  end
  redis.call('HSET', rec(id), 'state', S_WAITING)
  hold_again(id)
end
-- a job lets go of its unique key: when it is handed out ('queued': its body
-- may begin before its start is recorded) or at its end
local function let_go(id, key, mode, handed_out)
  if key and key ~= '' and (mode == 'queued' or (mode == 'active' and not handed_out))
      and redis.call('HGET', UNIQUE, key) == id then
    redis.call('HDEL', UNIQUE, key)
  end
end

-- Limits (see "Limits" in the step table).  Per limit name:
--   limit:held:<name>    hash  id -> the attempt that holds a slot
--   limit:parked:<name>  list  ids its concurrency refused, oldest first
--   limit:starts:<name>  zset  'id:attempt' -> start time, in its rate window
-- and per queue: limit:waiting (hash: name -> jobs waiting for it) and
-- limit:names (set: the names with slots held or jobs waiting).
local function lkey(kind, name) return P .. 'limit:' .. kind .. ':' .. name end
-- a name is forgotten when no slot is held, no job waits and no start is
-- in its rate window (the limits step forgets those whose window expired)
local function forget_name(name)
  if redis.call('EXISTS', lkey('held', name), lkey('starts', name)) == 0 and
      not redis.call('HGET', LWAITING, name) then
    redis.call('SREM', LNAMES, name)
    return true
  end
end
-- job id waits for limit `name` now (nil: for none), and no more for `was`
local function wait_for(id, name, was)
  if name == was then return end
  if was then
    if redis.call('HINCRBY', LWAITING, was, -1) <= 0 then
      redis.call('HDEL', LWAITING, was)
      forget_name(was)
    end
  end
  if name then
    redis.call('HINCRBY', LWAITING, name, 1)
    redis.call('SADD', LNAMES, name)
    redis.call('HSET', rec(id), 'waiting_for', name)
  else
    redis.call('HDEL', rec(id), 'waiting_for')
  end
end
-- may `attempt` of job id (taken from waiting) start?  Yes (it takes a slot
-- of each of its `limits`), or it is parked on the first limit that refuses it
local function admit(id, limits, attempt, was)
  local defs = cjson.decode(limits)
  for _, d in ipairs(defs) do
    local name, concurrency, rate, per = d[1], d[2], d[3], d[4]
    if concurrency > 0 and redis.call('HLEN', lkey('held', name)) >= concurrency then
      redis.call('RPUSH', lkey('parked', name), id)
      redis.call('HINCRBY', STATS, 'parked', 1)
      wait_for(id, name, was)
      return false
    end
    if rate > 0 then
      local starts = lkey('starts', name)
      redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - per)
      local n = redis.call('ZCARD', starts)
      if n >= rate then      -- due when the start that fills the window leaves it
        local first = redis.call('ZRANGE', starts, n - rate, n - rate, 'WITHSCORES')
        redis.call('HSET', rec(id), 'state', enqueue(id, tonumber(first[2]) + per - now))
        wait_for(id, name, was)
        return false
      end
    end
  end
  for _, d in ipairs(defs) do
    redis.call('HSET', lkey('held', d[1]), id, attempt)
    redis.call('SADD', LNAMES, d[1])
    if d[3] > 0 then
      redis.call('ZADD', lkey('starts', d[1]), now, id .. ':' .. attempt)
      redis.call('PEXPIRE', lkey('starts', d[1]), math.ceil(d[4] * 1000))
    end
  end
  wait_for(id, nil, was)
  return true
end
-- the current attempt of job id ends: it gives back its slots, and the
-- oldest job parked on each name goes to the head of waiting.  `limits`: the
-- job's field (nil: a job without limits, nothing to do)
local function release(id, limits)
  if not limits then return end
  local attempt = redis.call('HGET', rec(id), 'attempt')
  for _, d in ipairs(cjson.decode(limits)) do
    local held = lkey('held', d[1])
    if redis.call('HGET', held, id) == attempt then
      redis.call('HDEL', held, id)
      local nxt = d[2] > 0 and redis.call('LPOP', lkey('parked', d[1]))
      if nxt then
        redis.call('HINCRBY', STATS, 'parked', -1)
        if redis.call('LPUSH', waiting(redis.call('HGET', rec(nxt), 'priority')), nxt) == 1 then
          wake = true
        end
      else
        forget_name(d[1])
      end
    end
  end
end

-- Dependencies (see "Dependencies" above the record's fields).  Per job:
--   job:<id>:parents   set  its parents that have not ended yet
--   job:<id>:children  set  its children that have not ended yet
-- and the queue's `blocked` zset: blocked id -> when it is due (its push
-- time and delay).
local function parents(id) return rec(id) .. ':parents' end
local function children(id) return rec(id) .. ':children' end
local function forget(id) redis.call('DEL', rec(id), parents(id), children(id)) end
-- an outcome kept for children (kept: +inf) expires as its result_ttl says
-- once the last of them ended (a failed job stays in the failed list)
local function keep_for_children(id)
  redis.call('PERSIST', rec(id))
  redis.call('ZADD', KEPT, 'inf', id)
end
-- seconds an ended job's outcome is kept: its result_ttl, a cancel's or an
-- expiry's CANCELLED_KEEP at least
local function keep_seconds(state, result_ttl)
  local ttl = tonumber(result_ttl) or 0
  if state ~= S_DONE and ttl < CANCELLED_KEEP then ttl = CANCELLED_KEEP end
  return ttl
end
local function unkeep(id)
  local f = redis.call('HMGET', rec(id), 'state', 'end_time', 'result_ttl')
  if not kept(f[1]) then return end
  local at = tonumber(f[2]) + keep_seconds(f[1], f[3])
  if at <= now then
    redis.call('DEL', rec(id))
    redis.call('ZREM', KEPT, id)
  else
    redis.call('PEXPIRE', rec(id), math.ceil((at - now) * 1000))
    redis.call('ZADD', KEPT, at, id)
  end
end
-- child id ended: its parents keep their outcome for it no more
local function leave_parents(id, depends_on)
  redis.call('DEL', parents(id))
  for _, parent in ipairs(cjson.decode(depends_on)) do
    if redis.call('SREM', children(parent), id) == 1 and
        redis.call('EXISTS', children(parent)) == 0 then
      unkeep(parent)
    end
  end
end
-- Expiry (see "Expiry" above the record's fields): a job pushed with
-- `expires` gets its expire_time when it is due (at push, or at its
-- release from blocked), in the `expiring` zset until its first start.
local function expire_at(id, due, expires)
  expires = tonumber(expires) or 0
  if expires > 0 then
    redis.call('HSET', rec(id), 'expire_time', due + expires)
    redis.call('ZADD', EXPIRING, due + expires, id)
  end
end
local function release_child(id)
  local due = math.max(now, tonumber(redis.call('ZSCORE', BLOCKED, id)))
  redis.call('ZREM', BLOCKED, id)
  redis.call('HSET', rec(id), 'state', enqueue(id, due - now))
  expire_at(id, due, redis.call('HGET', rec(id), 'expires'))
end

-- the job ended (done, cancelled, expired): its outcome is kept for result_ttl
-- seconds (a cancel or an expiry for CANCELLED_KEEP at least), or while a child of it has
-- not ended, or forgotten at once.  f: its END_FIELDS
local END_FIELDS = {'result_ttl', 'waiter', 'key', 'unique_mode', 'depends_on', 'has_children'}
local settle
local function finish(id, state, f, ...)
  f = f or redis.call('HMGET', rec(id), unpack(END_FIELDS))
  let_go(id, f[3], f[4], false)
  local ttl = keep_seconds(state, f[1])
  local keep = f[6] and redis.call('EXISTS', children(id)) == 1
  if ttl > 0 or keep then
    redis.call('HDEL', rec(id), 'payload')
    redis.call('HSET', rec(id), 'state', state, 'end_time', now, ...)
    if keep then
      keep_for_children(id)
    else
      redis.call('PEXPIRE', rec(id), math.ceil(ttl * 1000))
      redis.call('ZADD', KEPT, now + ttl, id)
    end
  else
    redis.call('DEL', rec(id))
  end
  redis.call('HINCRBY', STATS, state, 1)
  if f[2] then table.insert(ended, id) end
  if f[5] then leave_parents(id, f[5]) end
  if f[6] then settle(id, state) end
end
local function to_failed(id)
  local f = redis.call('HMGET', rec(id), 'waiter', 'key', 'unique_mode', 'depends_on',
                       'has_children')
  let_go(id, f[2], f[3], false)
  redis.call('HSET', rec(id), 'state', S_FAILED, 'phase', '', 'fail_time', now, 'end_time', now)
  redis.call('ZADD', FAILED, now, id)
  redis.call('HINCRBY', STATS, S_FAILED, 1)
  if f[1] then table.insert(ended, id) end
  if f[4] then leave_parents(id, f[4]) end
  if f[5] then settle(id, S_FAILED) end
end
-- a child cancelled because its parent did not end done
local function cancel_child(id, parent, how)
  add_error(id, 'parent ' .. parent .. ' ended ' .. how)
  redis.call('HSET', rec(id), 'cancel_time', now, 'cancelled_by', 'parent ' .. parent)
  finish(id, S_CANCELLED, nil)
end
-- parent id ended in `state`: each child for which it was the last parent
-- not ended is released, and each whose parent did not end done is
-- cancelled unless it runs anyway.  Cancels go down a chain through a list,
-- not by recursion: a chain may be long
local SETTLING
settle = function(id, state)
  if SETTLING then table.insert(SETTLING, {id, state}) return end
  SETTLING = {{id, state}}
  while #SETTLING > 0 do
    local parent, how = unpack(table.remove(SETTLING))
    for _, child in ipairs(redis.call('SMEMBERS', children(parent))) do
      if redis.call('SREM', parents(child), parent) == 1 then
        if how ~= S_DONE and redis.call('HGET', rec(child), 'on_parent_failure') ~= 'run' then
          redis.call('ZREM', BLOCKED, child)
          cancel_child(child, parent, how)
        elseif redis.call('EXISTS', parents(child)) == 0 then
          release_child(child)
        end
      end
    end
  end
  SETTLING = nil
end

-- too late for job id (out of its queue) to start for the first time?  Then it
-- ends expired: it gives back what it waited for (`was`) or holds (`limits`)
local function too_late(id, expire_time, exec_number, was, limits)
  if not expire_time or tonumber(expire_time) > now or (tonumber(exec_number) or 0) > 0 then
    return false
  end
  redis.call('ZREM', EXPIRING, id)
  if was then wait_for(id, nil, was) end
  release(id, limits)
  finish(id, S_EXPIRED, nil)
  return true
end
-- take a waiting or delayed job out of its list or set; false: it is in neither
local function unqueue(id, state, priority, was)
  if state == S_WAITING then
    if was and redis.call('LREM', lkey('parked', was), 1, id) == 1 then
      redis.call('HINCRBY', STATS, 'parked', -1)
      return true
    end
    return redis.call('LREM', waiting(priority), 1, id) == 1
  end
  return state == S_DELAYED and redis.call('ZREM', DELAYED, id) == 1
end

-- an attempt starts.  f: START_FIELDS
local START_FIELDS = {'phase', 'timeout', 'key', 'unique_mode', 'exec_number', 'expire_time',
                      'limits'}
-- what pop reads of a job: its state, START_FIELDS, its waiting_for
local POP_FIELDS = {'state', 'phase', 'timeout', 'key', 'unique_mode', 'exec_number',
                    'expire_time', 'limits', 'waiting_for'}
-- a working attempt's lease ends LEASE from now, or a second after its
-- deadline (0: none) if that is sooner
local function lease_end(deadline)
  if deadline > 0 and deadline + 1 < now + LEASE then return deadline + 1 end
  return now + LEASE
end
local function start(id, f, worker, owner)
  local timeout, deadline = tonumber(f[2]) or 0, 0
  if timeout > 0 then deadline = now + timeout end
  local lease = lease_end(deadline)
  if f[1] == '%(PHASE_HANDLERS)s' then
    redis.call('HSET', rec(id), 'state', S_WORKING, 'owner', owner, 'deadline', deadline,
               'handler_start', now)
  else
    redis.call('HSET', rec(id), 'state', S_WORKING, 'start_time', now, 'worker_id', worker,
               'owner', owner, 'deadline', deadline, 'exec_number', (tonumber(f[5]) or 0) + 1)
    let_go(id, f[3], f[4], true)
    if f[6] then                                           -- started in time
      redis.call('ZREM', EXPIRING, id)
      redis.call('HDEL', rec(id), 'expire_time')
    end
  end
  redis.call('ZADD', WORKING, lease, id)
end
-- up to n ids from the head of waiting, highest priority first
local function take(n)
  local out = {}
  while #out < n do
    local from = WAITING
    if redis.call('EXISTS', unpack(LEVELS)) > 0 then
      for _, list in ipairs(LEVELS) do
        if redis.call('LLEN', list) > 0 then from = list break end
      end
    end
    local ids = redis.call('LPOP', from, n - #out)
    if not ids then break end
    for _, id in ipairs(ids) do table.insert(out, id) end
  end
  return out
end
-- a started attempt whose worker is gone: cancelled, its fail handlers out of
-- tries, timed out, tries left, or failed for good
local function lost(id, err, timeout)
  local f = redis.call('HMGET', rec(id), 'cancel_time', 'phase', 'handler_runs',
                       'exec_number', 'fail_number')
  add_error(id, err)
  if f[1] then
    finish(id, S_CANCELLED, nil)
  elseif f[2] == '%(PHASE_HANDLERS)s' then
    local runs = (tonumber(f[3]) or 0) + 1
    redis.call('HSET', rec(id), 'handler_runs', runs)
    if runs >= HANDLER_ATTEMPTS then
      add_error(id, 'fail handlers did not finish after ' .. runs .. ' attempts')
      to_failed(id)
    else
      to_head(id)
    end
  elseif timeout then
    redis.call('HSET', rec(id), 'type', %(TYPE_TIMEOUT)d, 'phase', '%(PHASE_HANDLERS)s')
    to_head(id)
  elseif (tonumber(f[4]) or 0) <= (tonumber(f[5]) or 0) then
    to_head(id)      -- run again at once: the job did not fail by itself
  else
    redis.call('HSET', rec(id), 'type', %(TYPE_NORMAL)d, 'phase', '%(PHASE_HANDLERS)s')
    to_head(id)
  end
end
local function requeue(id)
  local f = redis.call('HMGET', rec(id), 'state', 'phase', 'cancel_time', 'limits')
  if f[1] == S_WORKING or f[1] == S_RESERVED then release(id, f[4]) end
  if f[1] == S_WORKING then
    redis.call('ZREM', WORKING, id)
    if f[3] then finish(id, S_CANCELLED, nil) return true end
    if f[2] ~= '%(PHASE_HANDLERS)s' then redis.call('HINCRBY', rec(id), 'exec_number', -1) end
  elseif f[1] == S_RESERVED then
    redis.call('ZREM', RESERVED, id)
  else
    return false
  end
  to_head(id)
  return true
end
-- the fields `names` of id's record if `attempt` is its current attempt and
-- it is in `state`, else nil
local function current(id, attempt, state, names)
  local f = redis.call('HMGET', rec(id), 'state', 'attempt', unpack(names or {}))
  if f[1] ~= state or f[2] ~= attempt then return nil end
  table.remove(f, 1)
  table.remove(f, 1)
  return f
end
local function record(id, skip)
  local all = redis.call('HGETALL', rec(id))
  local out = {}
  for i = 1, #all, 2 do
    if all[i] ~= 'payload' and all[i] ~= skip then
      table.insert(out, all[i])
      table.insert(out, all[i + 1])
    end
  end
  return out
end

-- a paused queue hands out nothing (reserve, pop): one EXISTS per call
local function paused() return redis.call('EXISTS', P .. 'paused') == 1 end

local OPS = {}
OPS.push = function(id, payload, delay, job, timeout, fail_number, fail_expire, priority, key,
                    mode, result_ttl, limits, depends_on, on_parent_failure, expires)
  local all, open, ended_as, bad      -- parents: all; not ended; how they ended; first not done
  if depends_on ~= '' then
    all, open, ended_as = cjson.decode(depends_on), {}, {}
    for _, parent in ipairs(all) do
      local state = redis.call('HGET', rec(parent), 'state')
      if not state then return '!' .. parent end
      if over(state) then
        ended_as[parent] = state
        if state ~= S_DONE and not bad then bad = parent end
      else
        table.insert(open, parent)
      end
    end
  end
  if mode ~= '' then
    local holder = redis.call('HGET', UNIQUE, key)
    if holder and holds(holder, key) then return holder end
    redis.call('HSET', UNIQUE, key, id)
    if tonumber(mode) then
      redis.call('ZADD', UNIQUE_TTL, now + tonumber(mode), key)
    else
      redis.call('ZREM', UNIQUE_TTL, key)
    end
  end
  local cancel = bad and on_parent_failure ~= 'run'
  local state = S_BLOCKED
  if open and #open > 0 and not cancel then
    redis.call('ZADD', BLOCKED, now + tonumber(delay), id)
  elseif not cancel then
    state = enqueue(id, tonumber(delay), priority)
    if expires ~= '0' then expire_at(id, now + tonumber(delay), expires) end
  end
  redis.call('HSET', rec(id), 'payload', payload, 'job', job, 'create_time', now,
             'timeout', timeout, 'fail_number', fail_number, 'fail_expire', fail_expire,
             'state', state)
  -- the options a job may leave at their default (absent: 0 or none) are
  -- written only when set: a plain job's record stays small
  if priority ~= '0' then redis.call('HSET', rec(id), 'priority', priority) end
  if key ~= '' then redis.call('HSET', rec(id), 'key', key, 'unique_mode', mode) end
  if result_ttl ~= '0' then redis.call('HSET', rec(id), 'result_ttl', result_ttl) end
  if limits ~= '' then redis.call('HSET', rec(id), 'limits', limits) end
  if expires ~= '0' then redis.call('HSET', rec(id), 'expires', expires) end
  pushed = pushed + 1
  if depends_on == '' then return id end
  redis.call('HSET', rec(id), 'depends_on', depends_on, 'on_parent_failure', on_parent_failure)
  for _, parent in ipairs(all) do
    redis.call('SADD', children(parent), id)
    redis.call('HSET', rec(parent), 'has_children', 1)
    if kept(ended_as[parent]) then
      keep_for_children(parent)
    end
  end
  if cancel then
    cancel_child(id, bad, ended_as[bad])
  elseif #open > 0 then
    redis.call('SADD', parents(id), unpack(open))
  end
  return id
end
-- a job without limits, or running its fail handlers, or admitted by its limits
local function admitted(id, limits, phase, attempt, was)
  return not limits or phase == '%(PHASE_HANDLERS)s' or admit(id, limits, attempt, was)
end
-- jobs from the head of waiting, handed to each(id, i) (i: 1, 2 ...) until it
-- has handed out n: it says false for a job it did not (parked by a limit,
-- or cleaned meanwhile), and more are taken then
local function hand_out(n, each)
  n = tonumber(n)
  local i = 0
  while i < n do
    local want = n - i
    local ids = take(want)
    for _, id in ipairs(ids) do
      if each(id, i + 1) then i = i + 1 end
    end
    if #ids < want then break end       -- waiting is empty
  end
end
OPS.reserve = function(n)
  if paused() then return {} end
  local out = {}
  hand_out(n, function(id, i)
    local f = redis.call('HGETALL', rec(id))       -- (empty: cleaned meanwhile)
    if #f == 0 then return false end
    local attempt, key, mode, limits, phase, was, expire_time, tried = 1
    for j = 1, #f, 2 do
      if f[j] == 'attempt' then attempt = tonumber(f[j + 1]) + 1 f[j + 1] = attempt
      elseif f[j] == 'key' then key = f[j + 1]
      elseif f[j] == 'unique_mode' then mode = f[j + 1]
      elseif f[j] == 'limits' then limits = f[j + 1]
      elseif f[j] == 'phase' then phase = f[j + 1]
      elseif f[j] == 'waiting_for' then was = f[j + 1]
      elseif f[j] == 'expire_time' then expire_time = f[j + 1]
      elseif f[j] == 'exec_number' then tried = f[j + 1] end
    end
    if too_late(id, expire_time, tried, was) then return false end
    if not admitted(id, limits, phase, attempt, was) then return false end
    if attempt == 1 then table.insert(f, 'attempt') table.insert(f, 1) end
    redis.call('HSET', rec(id), 'state', S_RESERVED, 'attempt', attempt)
    let_go(id, key, mode, true)
    -- distinct scores keep queue order when they come back by sweep
    redis.call('ZADD', RESERVED, now + HOLD + i * 0.000001, id)
    table.insert(out, id)
    table.insert(out, f)
    return true
  end)
  return out
end
OPS.start = function(id, attempt, worker, owner)
  local f = current(id, attempt, S_RESERVED, START_FIELDS)
  if not f then return false end
  redis.call('ZREM', RESERVED, id)
  if too_late(id, f[6], f[5], nil, f[7]) then return false end
  start(id, f, worker, owner)
  return true
end
OPS.pop = function(n, worker, owner)
  if paused() then return {} end
  local out = {}
  hand_out(n, function(id)
    local f = redis.call('HMGET', rec(id), unpack(POP_FIELDS))
    if not f[1] or too_late(id, f[7], f[6], f[9]) then return false end
    if f[8] then
      local attempt = redis.call('HGET', rec(id), 'attempt')
      if not admitted(id, f[8], f[2], (tonumber(attempt) or 0) + 1, f[9]) then return false end
    end
    redis.call('HINCRBY', rec(id), 'attempt', 1)
    start(id, {select(2, unpack(f))}, worker, owner)
    table.insert(out, id)
    table.insert(out, redis.call('HGETALL', rec(id)))
    return true
  end)
  return out
end
OPS.renew = function(id, attempt)
  local f = redis.call('HMGET', rec(id), 'state', 'attempt', 'deadline', 'cancel_time')
  if f[1] ~= S_WORKING or f[2] ~= attempt then return false end
  redis.call('ZADD', WORKING, lease_end(tonumber(f[3]) or 0), id)
  if f[4] then return 'cancel' end
  return 'ok'
end
OPS.progress = function(id, attempt, progress, meta)
  local f = redis.call('HMGET', rec(id), 'state', 'attempt')
  if f[2] ~= attempt or (f[1] ~= S_WORKING and f[1] ~= S_RESERVED) then return false end
  redis.call('HSET', rec(id), 'progress', progress, 'meta', meta)
  return true
end
local DONE_FIELDS = {'result_ttl', 'waiter', 'key', 'unique_mode', 'depends_on', 'has_children',
                     'limits'}      -- END_FIELDS and the job's limits
OPS.done = function(id, attempt, result, result_repr, result_note)
  local f = current(id, attempt, S_WORKING, DONE_FIELDS)
  if not f then return false end
  redis.call('ZREM', WORKING, id)
  release(id, f[7])
  if f[6] and result == '' and result_note == '' then result_note = '%(UNSENT_RESULT)s' end
  finish(id, S_DONE, f, 'result', result, 'result_repr', result_repr, 'result_note', result_note)
  return true
end
OPS.retry = function(id, attempt, delay, err)
  local f = current(id, attempt, S_WORKING, {'limits'})
  if not f then return false end
  redis.call('ZREM', WORKING, id)
  release(id, f[1])
  add_error(id, err)
  if redis.call('HGET', rec(id), 'cancel_time') then
    finish(id, S_CANCELLED, nil)
  else
    ready(id, tonumber(delay))
  end
  return true
end
OPS.fail = function(id, attempt, typ, errors, job)
  local f = current(id, attempt, S_WORKING, {'limits'})
  if not f then return false end
  redis.call('ZREM', WORKING, id)
  release(id, f[1])
  for _, e in ipairs(cjson.decode(errors)) do add_error(id, e) end
  if job ~= '' then redis.call('HSET', rec(id), 'job', job) end
  redis.call('HSET', rec(id), 'type', typ)
  if redis.call('HGET', rec(id), 'cancel_time') then
    finish(id, S_CANCELLED, nil)
  else
    to_failed(id)
  end
  return true
end
OPS.lost = function(id, attempt, err, timeout)
  local f = redis.call('HMGET', rec(id), 'state', 'attempt', 'limits')
  if f[2] ~= attempt then return false end
  if f[1] == S_RESERVED then         -- handed out, never started
    redis.call('ZREM', RESERVED, id)
    release(id, f[3])
    to_head(id)
  elseif f[1] == S_WORKING then
    redis.call('ZREM', WORKING, id)
    release(id, f[3])
    lost(id, err, timeout == '1')
  else
    return false
  end
  return true
end
OPS.requeue = function(id, attempt)
  if redis.call('HGET', rec(id), 'attempt') ~= attempt then return false end
  return requeue(id)
end
OPS.recover = function(owner)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', WORKING, 0, -1)) do
    if redis.call('HGET', rec(id), 'owner') == owner and requeue(id) then n = n + 1 end
  end
  return n
end
OPS.sweep = function(limit)
  limit = tonumber(limit)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, limit)) do
    redis.call('ZREM', DELAYED, id)
    ready(id, 0)
  end
  local back = redis.call('ZRANGEBYSCORE', RESERVED, '-inf', now, 'LIMIT', 0, limit)
  for i = #back, 1, -1 do
    redis.call('ZREM', RESERVED, back[i])
    release(back[i], redis.call('HGET', rec(back[i]), 'limits'))
    to_head(back[i])
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', WORKING, '-inf', now, 'LIMIT', 0, limit)) do
    redis.call('ZREM', WORKING, id)
    release(id, redis.call('HGET', rec(id), 'limits'))
    lost(id, 'lease expired: worker ' .. tostring(redis.call('HGET', rec(id), 'worker_id')) ..
         ' or its server stopped while running the job', false)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', EXPIRING, '-inf', now, 'LIMIT', 0, limit)) do
    redis.call('ZREM', EXPIRING, id)      -- (a reserved one: its start step says too late)
    local f = redis.call('HMGET', rec(id), 'state', 'priority', 'waiting_for', 'expire_time',
                         'exec_number')
    if unqueue(id, f[1], f[2], f[3]) then too_late(id, f[4], f[5], f[3]) end
  end
  redis.call('ZREMRANGEBYSCORE', KEPT, '-inf', now)
  local s = redis.call('HMGET', STATS, 'sampled', S_DONE, S_FAILED)
  if (s[2] or s[3]) and now - (tonumber(s[1]) or 0) >= %(HISTORY_SECONDS)d then
    redis.call('HSET', STATS, 'sampled', now)
    redis.call('RPUSH', HISTORY, string.format('%%.3f %%d %%d', now, tonumber(s[2]) or 0,
                                               tonumber(s[3]) or 0))
    redis.call('LTRIM', HISTORY, -%(HISTORY_KEEP)d, -1)
  end
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', UNIQUE_TTL, '-inf', now, 'LIMIT', 0, limit)) do
    redis.call('ZREM', UNIQUE_TTL, key)
    redis.call('HDEL', UNIQUE, key)
  end
  local nxt = -1
  for _, key in ipairs({DELAYED, RESERVED, WORKING, EXPIRING}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first > 0 then
      local d = math.max(0, tonumber(first[2]) - now)
      if nxt < 0 or d < nxt then nxt = d end
    end
  end
  return {tostring(nxt), tostring(now)}
end
OPS.cancel = function(id, by)
  local f = redis.call('HMGET', rec(id), 'state', 'priority', 'cancel_time', 'waiting_for',
                       'limits')
  local state = f[1]
  if not state then return false end
  if state == S_WORKING then
    if not f[3] then redis.call('HSET', rec(id), 'cancel_time', now, 'cancelled_by', by) end
    table.insert(cancels, id)
    return state
  elseif state == S_WAITING or state == S_DELAYED then
    unqueue(id, state, f[2], f[4])
  elseif state == S_BLOCKED then
    redis.call('ZREM', BLOCKED, id)
  elseif state == S_RESERVED then
    redis.call('ZREM', RESERVED, id)
    release(id, f[5])
    table.insert(cancels, id)      -- its master may have handed it out already
  else
    return state                   -- ended already: nothing to change
  end
  if f[4] then wait_for(id, nil, f[4]) end
  redis.call('HSET', rec(id), 'cancel_time', now, 'cancelled_by', by)
  finish(id, S_CANCELLED, nil)
  return state
end
OPS.info = function(id, watch)
  local out = record(id)
  if #out == 0 then return false end
  local state = redis.call('HGET', rec(id), 'state')
  if watch ~= '' and not over(state) then
    redis.call('HSET', rec(id), 'waiter', watch)
  end
  if state == S_BLOCKED then          -- the parents it waits for
    table.insert(out, 'waiting_for')
    table.insert(out, cjson.encode(redis.call('SMEMBERS', parents(id))))
  end
  if redis.call('HEXISTS', rec(id), 'has_children') == 1 then
    table.insert(out, 'dependents')
    table.insert(out, cjson.encode(redis.call('SMEMBERS', children(id))))
  end
  return out
end
OPS.depth = function()
  local n, oldest = 0, false
  for level = 0, %(MAX_PRIORITY)d do
    local len = redis.call('LLEN', waiting(level))
    if len > 0 then
      n = n + len
      local c = redis.call('HGET', rec(redis.call('LINDEX', waiting(level), 0)), 'create_time')
      if c and (not oldest or tonumber(c) < tonumber(oldest)) then oldest = c end
    end
  end
  local s = redis.call('HMGET', STATS, 'pushed', S_DONE, S_FAILED, S_CANCELLED, S_EXPIRED,
                       'parked')
  n = n + (tonumber(s[6]) or 0)     -- parked by their limits: waiting
  return {n, redis.call('ZCARD', DELAYED), redis.call('ZCARD', RESERVED),
          redis.call('ZCARD', WORKING), redis.call('ZCARD', FAILED), redis.call('ZCARD', BLOCKED),
          (tonumber(s[1]) or 0) + pushed, s[2] or 0,       -- + this call's pushes, not saved yet
          s[3] or 0, s[4] or 0, s[5] or 0, oldest or ''}
end
OPS.failed = function(offset, count, after)
  local out = {}
  if tonumber(count) <= 0 then return out end
  offset = tonumber(offset)
  local rank = after ~= '' and redis.call('ZRANK', FAILED, after)
  if rank then offset = rank + 1 end
  for _, id in ipairs(redis.call('ZRANGE', FAILED, offset, offset + tonumber(count) - 1)) do
    table.insert(out, {id, record(id, 'result')})
  end
  return out
end
-- waiting: the cursor is 'level:index:id' (the next job's place, and the
-- id of the job before it, found again nearby if the list moved meanwhile);
-- delayed: 'due:id' of the last job shown.  Any other text: the first page
OPS.listing = function(state, count, cursor)
  local out, n = {}, tonumber(count)
  if n <= 0 then return {out, ''} end
  if state == S_DELAYED then
    local after, id = string.match(cursor, '^([^:]*):(.*)$')
    local start = 0
    if id and tonumber(after) then
      local rank = redis.call('ZRANK', DELAYED, id)
      start = rank and rank + 1 or redis.call('ZCOUNT', DELAYED, '-inf', '(' .. after)
    end
    local due = redis.call('ZRANGE', DELAYED, start, start + n - 1, 'WITHSCORES')
    for i = 1, #due, 2 do table.insert(out, {due[i], record(due[i], 'result'), due[i + 1]}) end
    if start + n >= redis.call('ZCARD', DELAYED) then return {out, ''} end
    return {out, due[#due] .. ':' .. due[#due - 1]}
  end
  local a, b, before = string.match(cursor, '^([0-9]+):([0-9]+):(.*)$')
  local level = math.min(tonumber(a) or %(MAX_PRIORITY)d, %(MAX_PRIORITY)d)
  local index = tonumber(b) or 0
  if before and index > 0 and redis.call('LINDEX', waiting(level), index - 1) ~= before then
    index = (redis.call('LPOS', waiting(level), before, 'MAXLEN', index + n) or -1) + 1
  end
  local last = ''
  while level >= 0 and #out < n do
    local ids = redis.call('LRANGE', waiting(level), index, index + n - #out - 1)
    for _, id in ipairs(ids) do table.insert(out, {id, record(id, 'result')}) end
    if #ids > 0 then
      index = index + #ids
      last = level .. ':' .. index .. ':' .. ids[#ids]
    end
    if #out < n then level, index = level - 1, 0 end
  end
  if redis.call('LINDEX', waiting(level), index) then return {out, last} end
  for below = level - 1, 0, -1 do
    if redis.call('LLEN', waiting(below)) > 0 then return {out, last} end
  end
  return {out, ''}
end
OPS.retry_failed = function(id, limit)
  local ids = {id}
  if id == '' then ids = redis.call('ZRANGE', FAILED, 0, tonumber(limit) - 1) end
  local n = 0
  for _, j in ipairs(ids) do
    if redis.call('ZREM', FAILED, j) == 1 then
      redis.call('HDEL', rec(j), 'handler_runs', 'phase', 'type', 'error_info', 'fail_time',
                 'end_time')
      redis.call('HSET', rec(j), 'exec_number', 0)
      ready(j, 0)
      n = n + 1
    end
  end
  return n
end
OPS.delete_failed = function(id)
  if redis.call('ZREM', FAILED, id) == 0 then return false end
  forget(id)
  return true
end
OPS.find = function(text)
  -- (an id has no ':': job:<id>:parents is not a record)
  if not string.find(text, ':', 1, true) and redis.call('EXISTS', rec(text)) == 1 then
    return text
  end
  local holder = redis.call('HGET', UNIQUE, text)
  if holder and holds(holder, text) then return holder end
  return false
end
-- each(id) for the failed jobs after `cursor`, 'until:score:id' ('': the
-- oldest on; until: the time of the walk's first step), at most `limit` of
-- them, until it says true; the cursor after the last one ('' at the end)
local function walk_failed(cursor, limit, each)
  local bound, score, last = string.match(cursor, '^([^:]+):([^:]+):(.*)$')
  local start = 0
  if last and tonumber(redis.call('ZSCORE', FAILED, last)) == tonumber(score) then
    start = redis.call('ZRANK', FAILED, last) + 1
  elseif last then      -- it left the list: after the jobs before it, ties by id as Redis has them
    start = redis.call('ZCOUNT', FAILED, '-inf', '(' .. score)
    for _, id in ipairs(redis.call('ZRANGE', FAILED, score, score, 'BYSCORE')) do
      if id <= last then start = start + 1 end
    end
  else
    bound = string.format('%%.6f', now)
  end
  local got = redis.call('ZRANGE', FAILED, start, start + limit - 1, 'WITHSCORES')
  for i = 1, #got, 2 do
    if tonumber(got[i + 1]) > tonumber(bound) then return '' end
    if each(got[i]) or i + 1 == 2 * limit then
      return bound .. ':' .. got[i + 1] .. ':' .. got[i]
    end
  end
  return ''
end
-- its name, key or an error contains `needle` (lower case); a needle that JSON
-- writes as it is (printable ASCII but " \ /) is looked for in the stored text
-- first: most jobs do not hold it, and are not decoded
local function matches(id, needle)
  local f = redis.call('HMGET', rec(id), 'job', 'key', 'error_info')
  if not string.find(needle, '[^ -~]') and not string.find(needle, '["/\\]') and not
      string.find(string.lower((f[1] or '') .. '\n' .. (f[2] or '') .. '\n' .. (f[3] or '')),
                  needle, 1, true) then
    return false
  end
  local texts = f[3] and f[3] ~= '' and cjson.decode(f[3]) or {}
  table.insert(texts, f[1] or '')
  table.insert(texts, f[2] or '')
  for _, text in ipairs(texts) do
    if string.find(string.lower(tostring(text)), needle, 1, true) then return true end
  end
  return false
end
OPS.match_failed = function(text, count, cursor, limit)
  local needle, n, out = string.lower(text), 0, {}
  count = tonumber(count)
  local after = walk_failed(cursor, tonumber(limit), function(id)
    if not matches(id, needle) then return false end
    n = n + 1
    if count > 0 then table.insert(out, {id, record(id, 'result')}) end
    return n == count
  end)
  return {n, out, after}
end
local function act_on_matching(text, cursor, limit, act)
  local needle, n = string.lower(text), 0
  local after = walk_failed(cursor, tonumber(limit), function(id)
    if matches(id, needle) and act(id) then n = n + 1 end
  end)
  return {n, after}
end
OPS.retry_matching = function(text, cursor, limit)
  return act_on_matching(text, cursor, limit, function(id) return OPS.retry_failed(id) == 1 end)
end
OPS.delete_matching = function(text, cursor, limit)
  return act_on_matching(text, cursor, limit, OPS.delete_failed)
end
OPS.clean = function(limit)
  limit = tonumber(limit)
  local n = 0
  for _, zset in ipairs({FAILED, DELAYED, RESERVED, WORKING, KEPT, BLOCKED}) do
    while n < limit do
      local ids = redis.call('ZRANGE', zset, 0, limit - n - 1)
      if #ids == 0 then break end
      for _, id in ipairs(ids) do forget(id) end
      redis.call('ZREM', zset, unpack(ids))
      n = n + #ids
    end
  end
  for level = 0, %(MAX_PRIORITY)d do
    while n < limit do
      local ids = redis.call('LPOP', waiting(level), limit - n)
      if not ids then break end
      for _, id in ipairs(ids) do forget(id) end
      n = n + #ids
    end
  end
  local names = redis.call('SMEMBERS', LNAMES)
  for _, name in ipairs(names) do
    while n < limit do
      local ids = redis.call('LPOP', lkey('parked', name), limit - n)
      if not ids then break end
      for _, id in ipairs(ids) do forget(id) end
      redis.call('HINCRBY', STATS, 'parked', -#ids)
      n = n + #ids
    end
  end
  -- UNLINK: the unique holds of a busy queue are big keys, freed in the background
  if n < limit then
    for _, name in ipairs(names) do
      redis.call('UNLINK', lkey('held', name), lkey('starts', name))
    end
    redis.call('UNLINK', STATS, UNIQUE, UNIQUE_TTL, HISTORY, LWAITING, LNAMES, EXPIRING)
    pushed = 0
  end
  return n
end

OPS.schedule = function(name, fp, last, tick, owner, id, ...)
  local f = redis.call('HMGET', SCHEDULES, name .. ':last', name .. ':fingerprint',
                       name .. ':owner')
  local before = {f[1] or '', f[2] or '', f[3] or ''}
  if before[1] ~= last then return {'stale', unpack(before)} end
  if tonumber(tick) > now * 1000 then return {'early', unpack(before)} end
  redis.call('HSET', SCHEDULES, name .. ':last', tick, name .. ':fingerprint', fp,
             name .. ':owner', owner)
  if id == '' then return {'moved', unpack(before)} end
  if OPS.push(id, ...) ~= id then       -- another job holds the key: overlap=False, unique
    redis.call('HINCRBY', SCHEDULES, name .. ':skipped', 1)
    return {'skipped', unpack(before)}
  end
  redis.call('HSET', SCHEDULES, name .. ':job', id)
  return {'pushed', unpack(before)}
end
OPS.limits = function()
  local out = {}
  for _, name in ipairs(redis.call('SMEMBERS', LNAMES)) do
    local running = redis.call('HLEN', lkey('held', name))
    local waiting = tonumber(redis.call('HGET', LWAITING, name)) or 0
    if running + waiting > 0 then
      table.insert(out, {name, running, waiting})
    else
      forget_name(name)
    end
  end
  return out
end
OPS.schedules = function()
  return redis.call('HGETALL', SCHEDULES)
end
OPS.history = function()
  return redis.call('LRANGE', HISTORY, 0, -1)
end
OPS.pause = function()
  if paused() then return false end
  redis.call('HSET', P .. 'paused', 'since', now)
  redis.call('PUBLISH', P .. 'notify', 'p')    -- masters put back what they hold
  return true
end
OPS.resume = function()
  if redis.call('DEL', P .. 'paused') == 0 then return false end
  wake = true
  return true
end
OPS.paused = paused

local function steps(keys, args)
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  P = keys[1]
  local k = KEYSETS[P]
  if not k then
    k = {}
    for _, name in ipairs({'waiting', 'delayed', 'reserved', 'working', 'failed', 'kept',
                           'stats', 'unique', 'unique:ttl', 'schedules', 'history',
                           'limit:waiting', 'limit:names', 'blocked', 'expiring'}) do
      table.insert(k, P .. name)
    end
    k.levels = {}
    for level = %(MAX_PRIORITY)d, 1, -1 do table.insert(k.levels, P .. 'waiting:' .. level) end
    KEYSETS[P] = k
  end
  WAITING, DELAYED, RESERVED, WORKING, FAILED, KEPT, STATS, UNIQUE, UNIQUE_TTL, SCHEDULES,
    HISTORY, LWAITING, LNAMES, BLOCKED, EXPIRING = unpack(k)
  LEVELS = k.levels
  LEASE, HOLD, HANDLER_ATTEMPTS, CANCELLED_KEEP = tonumber(args[1]), tonumber(args[2]),
    tonumber(args[3]), tonumber(args[4])
  wake, cancels, ended, pushed, SETTLING = false, {}, {}, 0, nil
  local out = {}
  local i = 5
  while i <= #args do
    local name = args[i]
    local n = NARGS[name]
    if not n then return redis.error_reply('mpqueue: unknown step ' .. tostring(name)) end
    local result = OPS[name](unpack(args, i + 1, i + n))
    if result == nil then result = false end
    table.insert(out, result)
    i = i + n + 1
  end
  if pushed > 0 then redis.call('HINCRBY', STATS, 'pushed', pushed) end
  if wake then redis.call('PUBLISH', P .. 'notify', '1') end
  for _, id in ipairs(cancels) do redis.call('PUBLISH', P .. 'notify', 'c:' .. id) end
  for _, id in ipairs(ended) do redis.call('PUBLISH', P .. 'ended', id) end
  return out
end

-- The fleet: a heartbeat per (pool, queue).  keys (one hash tag, {fleet}, so
-- it works on a cluster): 1 beats hash (entry -> JSON info), 2 expiry zset
-- (entry -> time its heartbeat expires).  args: 'beat' | 'forget' | 'read',
-- entry, info, ttl.  Expired heartbeats are dropped first; 'read' returns the
-- server time and every live (entry, info, expiry).
local function fleet(keys, args)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', keys[2], '-inf', now)) do
    redis.call('HDEL', keys[1], id)
    redis.call('ZREM', keys[2], id)
  end
  if args[1] == 'beat' then
    redis.call('HSET', keys[1], args[2], args[3])
    return redis.call('ZADD', keys[2], now + tonumber(args[4]), args[2])
  elseif args[1] == 'forget' then
    redis.call('HDEL', keys[1], args[2])
    return redis.call('ZREM', keys[2], args[2])
  end
  local out = {}
  local live = redis.call('ZRANGE', keys[2], 0, -1, 'WITHSCORES')
  for i = 1, #live, 2 do
    table.insert(out, {live[i], redis.call('HGET', keys[1], live[i]) or '{}', live[i + 1]})
  end
  return {tostring(now), out}
end

redis.register_function('NAME_steps', steps)
redis.register_function('NAME_fleet', fleet)
""" % {'nargs': ', '.join('%s = %d' % (name, n) for name, n in _STEP_ARGS.items()),
       'TYPE_TIMEOUT': TYPE_TIMEOUT, 'TYPE_NORMAL': TYPE_NORMAL,
       'PHASE_HANDLERS': _PHASE_HANDLERS, 'MAX_PRIORITY': MAX_PRIORITY,
       'UNSENT_RESULT': _UNSENT_RESULT,
       'states': ', '.join("'%s'" % state for state in _STATES),
       'HISTORY_SECONDS': HISTORY_SECONDS, 'HISTORY_KEEP': HISTORY_KEEP}

def _pairs(flat):
    return zip(flat[::2], flat[1::2])


def _work_items(flat):
    return [dict(_record(_pairs(fields)), id=_text(job_id)) for job_id, fields in _pairs(flat)]


def _id_records(pairs):
    return [dict(_record(_pairs(fields)), id=_text(i)) for i, fields in pairs]


# Redis replies to Python values, by the kind of the step (_STEPS)
_REDIS_REPLY = {
    'text': lambda r: None if r is None else _text(r),
    'bool': bool,
    'int': int,
    'jobs': _work_items,
    'sweep': lambda r: (None if float(r[0]) < 0 else float(r[0]), float(r[1])),
    'record': lambda r: None if r is None else _record(_pairs(r)),
    'records': _id_records,
    'listing': lambda r: ([dict(_record(_pairs(item[1])), id=_text(item[0]), **(
        {'due_time': float(item[2])} if len(item) > 2 else {})) for item in r[0]], _text(r[1])),
    'depth': lambda r: dict(zip(_DEPTH_FIELDS, map(int, r[:-1])),
                            oldest_created=float(r[-1]) if r[-1] else None),
    'schedule': lambda r: (_text(r[0]),) + tuple(_text(v) for v in r[1:]),
    'schedules': lambda r: _schedule_records(
        (_text(k).rpartition(':')[::2], _text(v)) for k, v in _pairs(r)),
    'history': lambda r: [_sample(*_text(x).split()) for x in r],
    'limits': lambda r: {_text(name): (int(running), int(waiting))
                         for name, running, waiting in r},
    'matches': lambda r: (int(r[0]), _id_records(r[1]), _text(r[2])),
    'walk': lambda r: (int(r[0]), _text(r[1])),
}


def _sample(t, done, failed):
    return {'t': float(t), 'done': int(done), 'failed': int(failed)}


def _schedule_records(fields):
    """``[{name, last, fingerprint, owner, job, skipped}, ...]`` from
    ``((name, field), value)`` pairs."""
    out = {}
    for (name, field), value in fields:
        out.setdefault(name, dict(dict.fromkeys(_SCHEDULE_FIELDS), name=name, skipped=0))
        out[name][field] = value
    for record in out.values():
        record['last'] = int(record['last']) if record['last'] else None
        record['skipped'] = int(record['skipped'] or 0)
    return sorted(out.values(), key=lambda r: r['name'])


_UNSHOWN_ADDRESS = '<address not shown: it does not parse>'
_SHOWN_HOST = r'(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]*)(:\d{1,5})?'     # host[:port], no user info
_SHOWN_HOSTS = re.compile(r'^%s(,%s)*$' % (_SHOWN_HOST, _SHOWN_HOST))


def _redacted_address(url):
    """``url`` (a broker URL) as it may be shown: in pages, logs, errors and
    metrics.  Parsed, not pattern-matched: the user info (user and password)
    and every query parameter but ``db`` are dropped, each URL of a
    comma-separated cluster list and each host of a Sentinel list is kept.
    Anything that does not parse as scheme://hosts/path shows as
    ``_UNSHOWN_ADDRESS``, never in part (a password with an unencoded ``/``,
    ``?`` or ``#`` moves the rest of it out of the user info)."""
    from urllib.parse import parse_qsl, urlsplit
    if not isinstance(url, str):
        return _UNSHOWN_ADDRESS
    out = []
    for item in re.split(r',(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)', url):
        try:
            parts = urlsplit(item.strip())
        except ValueError:
            return _UNSHOWN_ADDRESS
        hosts = parts.netloc.rpartition('@')[2]
        db = [v for k, v in parse_qsl(parts.query) if k == 'db']
        shown = '%s://%s%s%s' % (parts.scheme, hosts, parts.path,
                                 '?db=' + db[-1] if db and db[-1].isdigit() else '')
        if not re.match(r'^[A-Za-z][A-Za-z0-9+.-]*$', parts.scheme) or \
                not _SHOWN_HOSTS.match(hosts) or '@' in parts.path or \
                not re.match(r'^[\x20-\x7e]*$', shown):
            return _UNSHOWN_ADDRESS
        out.append(shown)
    return ','.join(out)


class _RedisSubscription:
    """A confirmed subscription to a queue's channel.  As a master's *waker*
    (``notify``) its socket goes in the master's selector: redis-py has no
    public call for a connection's socket, so ``fileno`` reads
    ``PubSub.connection._sock``, which tests/test_drivers.py checks on the
    installed redis-py.  It is made on the master of the queue's slot (on a
    cluster) or the master the sentinels name; when that node dies the socket
    closes and the master subscribes again.  As a *watch* (``ended``) it is
    confirmed before the caller looks at the job, so that no end slips
    between the two; when the server goes away while it waits (a restart, a
    failover), it subscribes again and returns: the caller looks again."""

    address = '1'       # a watch's address for the info step: the channel says the rest

    def __init__(self, driver, channel, queue):
        self._driver, self._channel, self._queue = driver, channel, queue
        self._pubsub = None
        self._subscribe()

    def _subscribe(self):
        import redis
        try:
            self._pubsub = self._driver._redis().pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(self._channel)
            self._pubsub.get_message(timeout=5)     # the confirmation
            if self._driver.service_name is not None:
                self._driver._note_master(self._pubsub.connection)
        except (redis.exceptions.RedisError, OSError) as exc:
            self.close()
            raise self._driver._error(self._queue, exc) from exc

    def fileno(self):
        sock = getattr(self._pubsub.connection, '_sock', None)
        return sock.fileno() if sock is not None else -1

    def drain(self):
        import redis
        cancelled, paused = [], False
        try:
            while True:
                msg = self._pubsub.get_message(timeout=0)
                if msg is None:
                    return cancelled, paused
                data = msg.get('data')
                if isinstance(data, bytes) and data.startswith(b'c:'):
                    cancelled.append(data[2:].decode())
                paused = paused or data == b'p'
        except (redis.exceptions.RedisError, OSError, AttributeError) as exc:
            raise DriverError('lost the Redis connection at %s: %s'
                              % (self._driver.address, exc)) from exc

    def wait(self, timeout):
        import redis
        deadline = time.monotonic() + (timeout if timeout is not None else 3600)
        failures = 0
        while True:
            try:
                if self._pubsub is None:
                    self._subscribe()
                    return
                self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                return
            except (DriverError, redis.exceptions.RedisError, OSError, AttributeError):
                self.close()
                failures += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                time.sleep(min(left, _doubled_wait(failures)))

    def close(self):
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
            self._pubsub = None


def _lua_library():
    """``(source, name)`` of mpqueue's Redis library; its name carries a hash
    of its code, so that pools of two mpqueue versions can share a server."""
    global _LIBRARY
    if _LIBRARY is None:
        name = 'mpqueue_' + _sha1_hex(_LUA_LIBRARY)[:12]
        _LIBRARY = ('#!lua name=%s\n%s' % (name, _LUA_LIBRARY.replace('NAME_', name + '_')),
                    name)
    return _LIBRARY


_LIBRARY = None


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


class RedisDriver(_Driver):
    """The Redis broker: one server, a Redis Cluster, or a master found
    through Redis Sentinel.

    :param host: server host (ignored with ``url`` or ``sentinels``).
    :param port: server port.
    :param password: AUTH password ('' for none); with ``sentinels``, the
        password of the master and its replicas.
    :param database: database number (a cluster has database 0 only).
    :param prefix: first part of every key: ``{prefix}:{queue}:waiting`` ...
        (the queue name is the hash tag, so each queue's keys share a slot).
    :param url: ``redis://[[user]:password@]host:port/db`` or ``rediss://`` (TLS).
        With ``cluster=True`` it may list several nodes to discover the cluster
        from, comma-separated: ``'redis://10.0.0.1:7000,redis://10.0.0.2:7000'``
        (user, password and TLS are taken from the first).  Through Sentinel:
        ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
        (``rediss+sentinel://`` for TLS): the sentinels (port 26379 unless
        given), then the service name of ``sentinel monitor``; user and
        password are those of the master, as in a ``redis://`` URL.
    :param ssl: use TLS with host/port (with ``sentinels``: to the master).
    :param cluster: talk to a Redis Cluster (``redis.cluster.RedisCluster``),
        found through ``host``/``port`` or ``url``.
    :param sentinels: ``[(host, port), ...]`` of the sentinels that watch the
        master (``'host:port'`` strings work too); the master of
        ``service_name`` is asked of them whenever a connection opens.
    :param service_name: the master's name in the sentinels' configuration
        (``sentinel monitor <service_name> ...``); with ``url``, the URL's path.
    :param sentinel_kwargs: redis-py keywords for the connections to the
        sentinels only, e.g. ``{'password': ...}`` when they have one of their
        own (``requirepass`` in sentinel.conf).  The master's password and user
        are not sent to the sentinels; TLS settings are (``rediss+sentinel://``
        or ``ssl=True``: the sentinels use TLS too, with the same ``ssl_*``
        keywords), unless ``sentinel_kwargs`` says otherwise.
    :param wait_replicas: when a call stores new jobs, wait until this many
        replicas have them too (Redis ``WAIT``), for at most ``wait_timeout``
        seconds; if fewer confirm, ``push`` raises DriverError (the jobs are on
        the master, not known to be on a replica).  Replication is asynchronous:
        without this, jobs pushed just before their master dies may be missing on
        the replica that takes over.  0 (the default): do not wait.
    :param wait_timeout: see ``wait_replicas``.
    :param redis_kwargs: passed on to the redis-py client.

    Connections open lazily in each process and are never carried across a
    ``fork()``.  Each call is one FCALL of a function of mpqueue's library
    (``_LUA_LIBRARY``: Redis 7.0 or later), loaded where it is missing.  On a
    cluster, all keys of a queue are in one slot, so a queue lives on one
    master; when its slot moves (a failover: MOVED, or a lost connection) the
    slot map is read again.  Through Sentinel, every connection that opens
    asks the sentinels for the master first (``redis.sentinel``); a master
    that was demoted answers READONLY, which means the call did not run: it
    is sent once more, to the master the sentinels name now.  Either way,
    during a failover the calls raise DriverError until a replica has taken
    over; the runtime retries them with back-off.  Masters are woken by
    PUBLISH, which a cluster passes on to every node.
    """

    _PER_PROCESS = ('_client', '_pid', '_local', '_sentinel', '_master')

    #: Seconds to wait for a sentinel to connect or answer: sentinels answer in
    #: milliseconds, and one that does not is passed over for the next.
    SENTINEL_TIMEOUT = 1.0
    #: Through Sentinel, seconds to wait for a master's reply (plus
    #: ``wait_timeout``) unless ``socket_timeout`` is given: a master whose
    #: host vanished (no TCP reset) must not hold a call for good, since the
    #: sentinels will name another one.  The lifecycle steps take milliseconds.
    SENTINEL_REPLY_TIMEOUT = 5.0

    def __init__(self, host='127.0.0.1', port=6379, password='', database=0, prefix='mpq', *,
                 url=None, ssl=False, cluster=False, sentinels=None, service_name=None,
                 sentinel_kwargs=None, wait_replicas=0, wait_timeout=1.0, **redis_kwargs):
        if not isinstance(prefix, str) or not prefix or '{' in prefix or '}' in prefix:
            raise ConfigError('RedisDriver prefix must be a non-empty string without braces, '
                              'got %r' % (prefix,))
        if cluster and database:
            raise ConfigError('RedisDriver database must be 0 on a Redis Cluster, got %r'
                              % (database,))
        via_sentinel = bool(url) and url.split('://', 1)[0].lower() in self._SENTINEL_SCHEMES
        if url and ',' in url and not cluster and not via_sentinel:
            raise ConfigError('RedisDriver url lists several servers, which needs '
                              'cluster=True (or a redis+sentinel:// URL): %s'
                              % _redacted_address(url))
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
        self.sentinels = self.service_name = self.sentinel_kwargs = None
        self._url_auth = self._url_query = ''
        if via_sentinel or sentinels is not None or service_name is not None \
                or sentinel_kwargs is not None:
            self._init_sentinel(via_sentinel, sentinels, service_name, sentinel_kwargs)
        elif url:
            self.address = _redacted_address(url)
        else:
            self.address = '%s://%s:%s' % ('rediss' if ssl else 'redis', host, port)
            if not cluster:
                self.address += '/%s' % database
        self._pid = self._client = self._sentinel = self._master = None
        self._local = threading.local()

    _SENTINEL_SCHEMES = ('redis+sentinel', 'rediss+sentinel')
    _SENTINEL_PORT = 26379

    def _init_sentinel(self, via_url, sentinels, service_name, sentinel_kwargs):
        """Check and keep the Sentinel settings (from the URL or the keywords)."""
        from urllib.parse import quote, unquote
        if self.cluster:
            raise ConfigError('RedisDriver: Sentinel and cluster=True exclude each other (a '
                              'Redis Cluster fails over by itself)')
        if via_url:
            if sentinels is not None:
                raise ConfigError('RedisDriver: give the sentinels either in the '
                                  'redis+sentinel:// url or as sentinels=, not both')
            scheme, _, rest = self.url.partition('://')
            self.ssl = scheme.lower() == 'rediss+sentinel'
            rest, _, self._url_query = rest.partition('#')[0].partition('?')
            netloc, _, path = rest.partition('/')
            self._url_auth, _, hosts = netloc.rpartition('@')
            sentinels = hosts.split(',')
            parts = [unquote(p) for p in path.split('/')] if path else []
            if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                raise ConfigError('RedisDriver url: the path of a redis+sentinel:// URL is '
                                  '/service_name or /service_name/db, got %s'
                                  % _redacted_address(self.url))
            if _redacted_address(self.url) == _UNSHOWN_ADDRESS:   # shows no piece of it
                raise ConfigError('RedisDriver url: the sentinels must be host[:port], comma-'
                                  'separated: redis+sentinel://[[user]:password@]host[:port]'
                                  '[,host[:port]...]/service_name[/db] (percent-encode / ? # @ '
                                  'in the password)')
            if parts and parts[0]:
                if service_name is not None and service_name != parts[0]:
                    raise ConfigError('RedisDriver: service_name=%r and the url\'s service '
                                      '%r differ' % (service_name, parts[0]))
                service_name = parts[0]
            self.database = int(parts[1]) if len(parts) == 2 else 0
        elif self.url:
            raise ConfigError('RedisDriver: with sentinels=, give no url (or use a '
                              'redis+sentinel:// url alone), got %s'
                              % _redacted_address(self.url))
        self.sentinels = self._sentinel_list(sentinels)
        if not isinstance(service_name, str) or not service_name:
            raise ConfigError('RedisDriver through Sentinel needs the service name of the '
                              'master (its name in "sentinel monitor <name> ..."): '
                              'service_name=... or redis+sentinel://host:26379/<name>')
        if sentinel_kwargs is not None and not isinstance(sentinel_kwargs, dict):
            raise ConfigError('RedisDriver sentinel_kwargs must be a dict of redis-py '
                              'keywords or None, got %r' % (sentinel_kwargs,))
        self.service_name, self.sentinel_kwargs = service_name, sentinel_kwargs
        self.address = '%s://%s/%s/%d' % (
            'rediss+sentinel' if self.ssl else 'redis+sentinel',
            ','.join('[%s]:%d' % hp if ':' in hp[0] else '%s:%d' % hp for hp in self.sentinels),
            quote(service_name, safe=''), self.database)

    @classmethod
    def _sentinel_list(cls, sentinels):
        """``[(host, port), ...]`` from pairs or ``'host[:port]'`` strings."""
        bad = ConfigError('RedisDriver sentinels must be a non-empty list of (host, port) '
                          'pairs or "host:port" strings, got %r' % (sentinels,))
        if isinstance(sentinels, (str, bytes)) or not isinstance(sentinels, (list, tuple)) \
                or not sentinels:
            raise bad
        out = []
        for item in sentinels:
            if isinstance(item, str):
                found = re.match(r'^\s*(\[[^\]]+\]|[^:\[\]\s]+)(?::(\d+))?\s*$', item)
                if not found:
                    raise bad
                item = (found.group(1).strip('[]'), int(found.group(2) or cls._SENTINEL_PORT))
            if not isinstance(item, (list, tuple)) or len(item) != 2 or \
                    not isinstance(item[0], str) or not item[0] or \
                    not isinstance(item[1], int) or not 0 < item[1] < 65536:
                raise bad
            out.append((item[0], item[1]))
        return out

    def __repr__(self):
        cluster = ', cluster=True' if self.cluster else ''
        return 'RedisDriver(%r, prefix=%r%s)' % (self.address, self.prefix, cluster)

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def preload(self):
        try:
            import redis  # noqa: F401
            import redis.backoff  # noqa: F401
            import redis.retry  # noqa: F401
            import encodings.idna  # noqa: F401  (connecting by host name loads it)
            import redis.utils
            # redis-py 8 reads its version from the package metadata (a scan of
            # sys.path) for each client: once here, and not 1.3 MB per master
            redis.utils.get_lib_version = functools.lru_cache(redis.utils.get_lib_version)
            redis.utils.get_lib_version()
            if self.cluster:
                import redis.cluster  # noqa: F401
            if self.service_name is not None:
                import redis.sentinel  # noqa: F401
        except ImportError:
            pass

    # -- clients and connections ------------------------------------------------

    def _redis(self):
        """This process's redis-py client (``Redis`` or ``RedisCluster``)."""
        if self._pid != os.getpid() or self._client is None:
            try:
                client = self._new_client()
            except ValueError:
                if not self.url:
                    raise
                # redis-py's words may quote a piece of the password
                raise ConfigError('RedisDriver url: redis-py cannot read %s (percent-encode '
                                  '/ ? # @ : in the password)' % self.address) from None
            self._client, self._pid = client, os.getpid()
            self._local = threading.local()
        return self._client

    def _new_client(self):
        try:
            import redis
        except ImportError:
            raise DriverError('RedisDriver needs redis-py: run "pip install redis" to '
                              'install it') from None
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        kwargs = dict(self.redis_kwargs)
        kwargs.setdefault('socket_connect_timeout', 5)
        kwargs.setdefault('retry', Retry(NoBackoff(), 0))   # the runtime has its own back-off
        if self.service_name is not None:
            return self._sentinel_client(kwargs)
        if self.cluster:
            from redis.cluster import ClusterNode, RedisCluster
            if not self.url:
                return RedisCluster(host=self.host, port=self.port, ssl=self.ssl,
                                    password=self.password or None, **kwargs)
            first, *others = [u.strip() for u in self.url.split(',') if u.strip()]
            nodes = [ClusterNode(where.get('host', '127.0.0.1'), where.get('port', 6379))
                     for where in map(redis.connection.parse_url, others)]
            return RedisCluster(url=first, startup_nodes=nodes, **kwargs)
        if self.url:
            return redis.Redis.from_url(self.url, **kwargs)
        return redis.Redis(host=self.host, port=self.port, db=self.database,
                           password=self.password or None, ssl=self.ssl, **kwargs)

    def _sentinel_client(self, kwargs):
        """A client of the master that the sentinels name: each connection of
        its pool asks them when it opens (``Sentinel.master_for``)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        if self.url:    # user, password, database and ?options, parsed by redis-py
            options = redis.connection.parse_url('%s://%s%s/%d%s' % (
                'rediss' if self.ssl else 'redis', self._url_auth + '@' if self._url_auth else '',
                'sentinel', self.database, '?' + self._url_query if self._url_query else ''))
            for name in ('host', 'port', 'connection_class'):
                options.pop(name, None)
            kwargs.update(options)
        else:
            kwargs.update(db=self.database, password=self.password or None)
        if self.ssl:
            kwargs['ssl'] = True
        kwargs.setdefault('socket_timeout', self.SENTINEL_REPLY_TIMEOUT + self.wait_timeout)
        to_sentinels = {'socket_connect_timeout': self.SENTINEL_TIMEOUT,
                        'socket_timeout': self.SENTINEL_TIMEOUT, 'retry': Retry(NoBackoff(), 0)}
        if self.ssl:
            to_sentinels.update((k, v) for k, v in kwargs.items() if k.startswith('ssl'))
        to_sentinels.update(self.sentinel_kwargs or {})
        self._sentinel = self._sentinel_type()(self.sentinels, sentinel_kwargs=to_sentinels)
        return self._sentinel.master_for(self.service_name, **kwargs)

    _Sentinel = None

    @classmethod
    def _sentinel_type(cls):
        """redis-py's ``Sentinel``, with a ``discover_master`` that says what
        each sentinel answered when none names a master that is up (redis-py's
        own names each one by its client's repr and the error by its class)."""
        if cls._Sentinel is None:
            from redis.exceptions import AuthenticationError, ConnectionError, TimeoutError
            from redis.sentinel import MasterNotFoundError, Sentinel

            class _Sentinel(Sentinel):
                def discover_master(self, service_name):
                    answers = []
                    for i, sentinel in enumerate(self.sentinels):
                        kwargs = sentinel.connection_pool.connection_kwargs
                        where = '%s:%s' % (kwargs.get('host'), kwargs.get('port'))
                        try:
                            state = sentinel.sentinel_masters().get(service_name)
                        except (ConnectionError, TimeoutError) as exc:
                            answers.append('%s %s%s' % (
                                where, 'authentication failed: '
                                if isinstance(exc, AuthenticationError) else '',
                                ' '.join(str(exc).split()).rstrip('.') or type(exc).__name__))
                            continue
                        if state and self.check_master_state(state, service_name):
                            self.sentinels[0], self.sentinels[i] = sentinel, self.sentinels[0]
                            return state['ip'], state['port']
                        answers.append('%s %s' % (where, 'says master %s:%s is down' % (
                            state['ip'], state['port']) if state else 'knows no such service'))
                    raise MasterNotFoundError('; '.join(answers))
            cls._Sentinel = _Sentinel
        return cls._Sentinel

    # Pays (this call layer: _connection, _call, _load, _read, _pack_command):
    # push 9,400 jobs/s against 6,800 through redis-py's execute_command and
    # its pool (python examples/benchmark.py --driver redis --only push --jobs
    # 10000; medians of 7 interleaved runs each, 2026-12-07).  It also knows
    # what was not sent, and sends only that once more (see _call).
    def _connection(self, key):
        """This thread's connection to the server of ``key`` (on a cluster: the
        master of its slot; through Sentinel: the master it names).  One that
        sat idle is checked first: a server that closed it would make the next
        call's outcome unknown."""
        client = self._redis()
        if self.cluster:
            node = client.get_node_from_key(key)
            name, pool = node.name, client.get_redis_connection(node).connection_pool
        else:
            name, pool = None, client.connection_pool
        conns = self._local.__dict__.setdefault('conns', {})
        conn, used = conns.get(name, (None, 0.0))
        now = time.monotonic()
        if conn is None:
            conn = pool.make_connection()
        elif now - used > 1.0:
            try:
                stale = conn.can_read(timeout=0)
            except (OSError, Exception):
                stale = True
            if stale:
                conn.disconnect()
        conns[name] = (conn, now)
        if self.service_name is not None:
            if getattr(conn, '_sock', None) is None:
                conn.connect()      # asks the sentinels for the master's address first
            self._note_master(conn)
        return conn

    def _note_master(self, conn):
        """Remember where the sentinels sent a connection; when that changes (a
        failover), log it: one line per process and failover."""
        where = (conn.host, conn.port)
        if where != self._master:
            if self._master is not None:
                logger.warning('Redis Sentinel service %r: the master is now %s:%s (was '
                               '%s:%s); reconnected to it', self.service_name, where[0],
                               where[1], self._master[0], self._master[1])
            self._master = where

    def _call(self, function, keys, args, queue=None, wait=0):
        """FCALL ``function`` of mpqueue's library on ``keys``/``args`` (loading
        the library where the server lacks it), then ``WAIT`` for ``wait``
        replicas; the function's reply.

        The commands go through redis-py's public ``Connection`` calls on a
        connection of this thread's own, skipping the client's pool and retry
        layers (the figure is above ``_connection``).

        Sent once more at once, and only when it cannot have run: when it
        could not be sent, after MOVED/ASK (a cluster's slot moved), and after
        READONLY from a master that Sentinel demoted."""
        import redis
        library, name = _lua_library()
        packed = [_pack_command(('FCALL', '%s_%s' % (name, function), len(keys), *keys, *args))]
        if wait:
            packed.append(_pack_command(('WAIT', wait, int(self.wait_timeout * 1000))))
        conn = None
        try:
            for attempt in (1, 2):
                conn = None
                try:
                    conn = self._connection(keys[0])
                    conn.send_packed_command(packed, check_health=False)
                except (redis.exceptions.ConnectionError, OSError):
                    if conn is not None:
                        conn.disconnect()       # nothing was sent: safe to try once more
                    if attempt == 2:
                        raise
                    self._refresh_slots()
                    continue
                try:
                    replies = self._read(conn, len(packed))
                except (redis.exceptions.MovedError, redis.exceptions.AskError):
                    self._refresh_slots()       # it did not run: try on the new master
                    if attempt == 2:
                        raise
                    continue
                except (redis.exceptions.ConnectionError, redis.exceptions.ReadOnlyError) as exc:
                    if attempt == 2 or self.service_name is None or not self._demoted(exc):
                        raise
                    conn.disconnect()           # it did not run: ask the sentinels again
                    continue
                except redis.exceptions.ResponseError as exc:
                    if 'Function not found' not in str(exc):
                        raise
                    self._load(conn, library, queue)    # a new server, or one restarted empty
                    conn.send_packed_command(packed)
                    replies = self._read(conn, len(packed))
                break
        except redis.exceptions.RedisError as exc:
            if conn is not None and not isinstance(exc, redis.exceptions.ResponseError):
                conn.disconnect()
            raise self._error(queue, exc) from exc
        except OSError as exc:
            if conn is not None:
                conn.disconnect()
            raise self._error(queue, exc) from exc
        if wait and replies[1] < wait:
            raise DriverError('%s: jobs pushed to queue %r are on the master, but only %d of '
                              '%d replica(s) confirmed them within %g s' % (
                                  self._where(queue), queue, replies[1], wait,
                                  self.wait_timeout))
        return replies[0]

    def _load(self, conn, library, queue):
        """FUNCTION LOAD mpqueue's library on ``conn``'s server (Redis >= 7)."""
        import redis
        conn.send_packed_command([_pack_command(('FUNCTION', 'LOAD', library))])
        try:
            self._read(conn, 1)
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if 'unknown command' in text.lower() or 'unknown subcommand' in text.lower():
                raise DriverError('%s: mpqueue needs Redis 7.0 or later (Redis functions: '
                                  'FUNCTION LOAD): %s' % (self._where(queue), text)) from None
            if 'already exists' not in text:     # loaded meanwhile by another process
                raise

    @staticmethod
    def _demoted(exc):
        """True for READONLY: the server is a replica now (redis-py's Sentinel
        connection turns it into a ConnectionError)."""
        import redis
        return isinstance(exc, redis.exceptions.ReadOnlyError) or \
            isinstance(exc.__context__, redis.exceptions.ReadOnlyError)

    @staticmethod
    def _read(conn, n):
        """The next ``n`` replies; an error reply is raised once all ``n`` are
        read, so that the connection stays in step."""
        replies, error = [], None
        for _ in range(n):
            try:
                replies.append(conn.read_response())
            except Exception as exc:
                import redis
                if not isinstance(exc, redis.exceptions.ResponseError):
                    raise
                replies.append(exc)
                error = error or exc
        if error is not None:
            raise error
        return replies

    def _refresh_slots(self):
        """A cluster's slot map may be stale: make a new client, which reads it."""
        if self.cluster and self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None

    def _where(self, queue):
        if self.service_name is not None:   # the master the sentinels named last
            named = getattr(getattr(self._client, 'connection_pool', None), 'master_address',
                            None) or self._master
            return 'Redis at %s%s' % (self.address, ' (master %s:%s)' % tuple(named)
                                      if named else '')
        if not self.cluster or queue is None:
            return 'Redis%s at %s' % (' Cluster' if self.cluster else '', self.address)
        return 'Redis Cluster %s (queue %r)' % (self.address, queue)

    def _error(self, queue, exc):
        """A one-line DriverError for a redis-py exception, naming the server."""
        import redis
        text = ' '.join(str(exc).split())
        if self.service_name is not None:
            found = self._sentinel_error(queue, exc, text)
            if found is not None:
                return found
        if isinstance(exc, (redis.exceptions.AuthenticationError,
                            redis.exceptions.AuthorizationError)) or \
                text.startswith(('NOAUTH', 'WRONGPASS', 'NOPERM')) or 'HELLO must be called' in text:
            return DriverError('%s: authentication failed (check the password, the ACL user and '
                               'its permissions): %s' % (self._where(queue), text))
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            redis.exceptions.RedisClusterException, OSError)):
            return DriverError('cannot reach %s: %s' % (self._where(queue), text))
        return DriverError('%s refused the command: %s' % (self._where(queue), text))

    def _sentinel_error(self, queue, exc, text):
        """The DriverError for what only Sentinel causes, or None."""
        from redis.sentinel import MasterNotFoundError
        if isinstance(exc, MasterNotFoundError):
            if 'authentication failed' in text:
                return DriverError(
                    'Redis at %s: the sentinels refused the connection (give them their own '
                    'password or user as sentinel_kwargs={"password": ...}): %s'
                    % (self.address, text))
            return DriverError('cannot reach Redis at %s: no sentinel names a master of service '
                               '%r that is up: %s' % (self.address, self.service_name, text))
        if self._demoted(exc):
            return DriverError('%s: the master was demoted to a replica, and the sentinels '
                               'name no other master yet (a failover under way): %s'
                               % (self._where(queue), text))
        return None

    # -- the steps -------------------------------------------------------------

    def _execute(self, queue, steps):
        args = [LEASE_SECONDS, RESERVE_SECONDS, HANDLER_ATTEMPTS, CANCELLED_KEEP]
        for step in steps:
            args.extend(step)
        wait = 0
        if self.wait_replicas and any(step[0] == 'push' for step in steps):
            wait = self.wait_replicas   # a lost push loses jobs; other steps only repeat
        replies = self._call('steps', ['%s:{%s}:' % (self.prefix, queue)], args, queue, wait)
        return [_REDIS_REPLY[_STEP_KIND[step[0]]](reply) for step, reply in zip(steps, replies)]

    def _fleet(self, op, entry, info, ttl):
        keys = ['%s:{fleet}:%s' % (self.prefix, k) for k in ('beats', 'expiry')]
        reply = self._call('fleet', keys, [op, entry, info, ttl])
        if op == 'read':
            return float(reply[0]), [(_text(e), _text(i), float(x)) for e, i, x in reply[1]]
        return reply

    def waker(self, queue):
        return _RedisSubscription(self, '%s:{%s}:notify' % (self.prefix, queue), queue)

    def watch(self, queue):
        return _RedisSubscription(self, '%s:{%s}:ended' % (self.prefix, queue), queue)

    def close(self):
        if self._pid == os.getpid():
            for conn, _ in getattr(self._local, 'conns', {}).values():
                conn.disconnect()
            if self._client is not None:
                self._client.close()
            if self._sentinel is not None:
                for client in self._sentinel.sentinels:
                    client.close()
        self._local = threading.local()
        self._client = self._pid = self._sentinel = None


###############################################################################
# Drivers: SQLite
###############################################################################

# The lifecycle as SQL: one row per job in mpq_job, its columns the fields of
# _FIELDS.  ``state`` is where the job is and ``score`` orders the jobs of a
# state: waiting, its position (head: lowest); delayed, its due time;
# reserved, when it goes back to waiting; working, when its lease ends;
# failed, when it failed; done and cancelled (kept outcomes), when they
# expire.  ``level`` is a waiting job's priority (0 in every other state), so
# that one index serves every state.  mpq_queue holds each queue's counters
# and its jobs per state, kept in the same transactions that move the jobs,
# so reading them is cheap.  A queue is paused while it has a row in
# mpq_paused (a table of its own: ``clean`` leaves it, and a database of an
# older version gains it).  Times are this server's clock (time.time()):
# the SQLite driver serves one server.
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS mpq_job (
    queue TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL,
    level INTEGER NOT NULL DEFAULT 0, score REAL NOT NULL, %s,
    PRIMARY KEY (queue, id));
CREATE INDEX IF NOT EXISTS mpq_job_state ON mpq_job (queue, state, level DESC, score);
CREATE TABLE IF NOT EXISTS mpq_queue (queue TEXT PRIMARY KEY, %s);
CREATE TABLE IF NOT EXISTS mpq_unique (
    queue TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL, ends REAL,
    PRIMARY KEY (queue, key));
CREATE TABLE IF NOT EXISTS mpq_fleet (id TEXT PRIMARY KEY, info TEXT NOT NULL,
                                      expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mpq_schedule (
    queue TEXT NOT NULL, name TEXT NOT NULL, last INTEGER, fingerprint TEXT, owner TEXT,
    job TEXT, skipped INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (queue, name));
CREATE TABLE IF NOT EXISTS mpq_history (queue TEXT NOT NULL, t REAL NOT NULL,
                                        done INTEGER NOT NULL, failed INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS mpq_history_t ON mpq_history (queue, t);
CREATE TABLE IF NOT EXISTS mpq_paused (queue TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS mpq_limit_held (
    queue TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL, attempt INTEGER NOT NULL,
    PRIMARY KEY (queue, name, id));
CREATE TABLE IF NOT EXISTS mpq_limit_start (queue TEXT NOT NULL, name TEXT NOT NULL,
                                            t REAL NOT NULL);
CREATE INDEX IF NOT EXISTS mpq_limit_start_t ON mpq_limit_start (queue, name, t);
CREATE TABLE IF NOT EXISTS mpq_dep (
    queue TEXT NOT NULL, child TEXT NOT NULL, parent TEXT NOT NULL, open INTEGER NOT NULL,
    PRIMARY KEY (queue, child, parent));
CREATE INDEX IF NOT EXISTS mpq_dep_parent ON mpq_dep (queue, parent);
""" % (', '.join(name for name in _FIELDS if name != 'state'),
       ', '.join('%s INTEGER NOT NULL DEFAULT 0' % name for name in _DEPTH_FIELDS))

# After the columns a database of an older version lacks are added: jobs that
# expire (only those not started have expire_time), and jobs that wait for a
# limit (only those have waiting_for), by name and place.
_SQLITE_EXPIRE_INDEX = ('CREATE INDEX IF NOT EXISTS mpq_job_expire ON mpq_job (queue, '
                        'expire_time) WHERE expire_time IS NOT NULL')
_SQLITE_LIMIT_INDEX = ('CREATE INDEX IF NOT EXISTS mpq_job_waiting_for ON mpq_job '
                       '(queue, waiting_for, level, score) WHERE waiting_for IS NOT NULL')
# `level` of a job parked by a concurrency limit: waiting, but not in line
_SQ_PARKED = -1
# Dependencies: a row (child, parent) while the child has not ended (the
# parent keeps its outcome for it), `open` while the parent has not ended
# either (the child waits for it).  The score of an outcome kept for children
_SQ_KEPT = float('inf')

_SQ_RECORD = ', '.join(_FIELDS_BUT_PAYLOAD)
_SQ_WORK = ', '.join(('id',) + _WORK_FIELDS)
_SQ_INSERT = ('INSERT OR REPLACE INTO mpq_job (queue, id, state, level, score, payload, job, '
              'create_time, timeout, fail_number, fail_expire, priority, key, unique_mode, '
              'result_ttl, limits, attempt, exec_number) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '
              '?, ?, ?, ?, ?, ?, 0, 0)')
_SQ_DUE = ('SELECT id, priority, key FROM mpq_job WHERE queue = ? AND state = ? AND level = 0 '
           'AND score <= ? ORDER BY level DESC, score LIMIT ?')
# (and after the work fields, what the limits need: limits, waiting_for)
_SQ_WAITING = ("SELECT %s, limits, waiting_for FROM mpq_job WHERE queue = ? AND state = '%s' "
               'AND level >= 0 ORDER BY level DESC, score LIMIT ? OFFSET ?' % (_SQ_WORK, WAITING))
_SQ_PHASE, _SQ_ATTEMPT, _SQ_TRIED, _SQ_EXPIRE = (
    1 + _WORK_FIELDS.index(name) for name in ('phase', 'attempt', 'exec_number', 'expire_time'))
_SQ_UNIQUE, _SQ_PARENTS, _SQ_EXPIRES = (1 + _PUSH_ARGS.split().index(name)   # in a push step
                                        for name in ('unique_mode', 'depends_on', 'expires'))
_SQ_COUNT = 'UPDATE mpq_queue SET %s WHERE queue = ?' % ', '.join(
    '%s = %s + ?' % (name, name) for name in _DEPTH_FIELDS)
_SQ_COUNT_FIRST = 'INSERT INTO mpq_queue (queue, %s) VALUES (?%s)' % (
    ', '.join(_DEPTH_FIELDS), ', ?' * len(_DEPTH_FIELDS))
_ASCII_LOWER = {n: n + 32 for n in range(ord('A'), ord('Z') + 1)}
_SQ_CONNECT_LOCK = threading.Lock()
_SQ_WAKE_SLOTS = 4         # masters of one queue that can listen for wake-ups at once
_SQ_SUN_PATH_MAX = 107     # AF_UNIX path bytes, leaving room for the final NUL


def _folded(text):
    """``text`` with its ASCII letters in lower case, as Lua's string.lower
    has them: both brokers match a search alike."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _keep_seconds(state, result_ttl):
    """Seconds an ended job's outcome is kept: its result_ttl, a cancel's or
    an expiry's CANCELLED_KEEP at least (the same rule as the Lua's)."""
    return (result_ttl or 0) if state == DONE else max(result_ttl or 0, CANCELLED_KEEP)


class _SqliteSteps:
    """The steps of ``_STEPS`` as SQL, inside the one transaction of an
    ``execute()``.  The same lifecycle as ``_LUA_LIBRARY``, written as plain
    Python over rows; tests/test_drivers.py holds both to one contract."""

    def __init__(self, conn, queue, now):
        self.conn, self.queue, self.now = conn, queue, now
        self.wake = False
        self.cancels = []       # ids of started jobs cancelled: for the masters
        self.pausing = False    # the queue was paused: its masters put back what they hold
        self.ended = []         # addresses of waiters on jobs that ended
        self.delta = collections.Counter()     # changes to the queue's mpq_queue row
        self.ends = {}          # waiting level -> [head, tail] positions
        self.first_due = ()     # the earliest due time of a delayed job, once read
        self.settling = None    # parents whose children are being settled (settle())

    # -- rows ------------------------------------------------------------------

    def get(self, job_id, *columns):
        return self.conn.execute('SELECT %s FROM mpq_job WHERE queue = ? AND id = ?'
                                 % ', '.join(columns), (self.queue, job_id)).fetchone()

    def update(self, job_id, **fields):
        self.conn.execute('UPDATE mpq_job SET %s WHERE queue = ? AND id = ?' % ', '.join(
            '%s = ?' % name for name in fields), tuple(fields.values()) + (self.queue, job_id))

    def move(self, job_id, old, new, score, level=0, **fields):
        """Put a job in another state (and fields), counting the states."""
        self.update(job_id, state=new, score=score, level=level, **fields)
        self.count(old, -1)
        self.count(new, 1)

    def count(self, name, n):
        if name in _DEPTH_FIELDS:
            self.delta[name] += n

    def current(self, job_id, attempt, state, *columns):
        """``columns`` of a job whose current attempt is ``attempt`` and which is
        in ``state``, else None."""
        row = self.get(job_id, 'state', 'attempt', *columns)
        if row is None or row[0] != state or row[1] != int(attempt):
            return None
        return row[2:]

    def position(self, level, head=False):
        """A place in waiting: before every job of its priority, or after.
        (One end at a time: SQLite finds MIN or MAX in the index at once, but
        scans the whole range for both in one query.)"""
        ends = self.ends.setdefault(level, {})
        if head not in ends:
            end = self.conn.execute("SELECT %s(score) FROM mpq_job WHERE queue = ? AND state = "
                                    "? AND level = ?" % ('MIN' if head else 'MAX'),
                                    (self.queue, WAITING, level)).fetchone()[0]
            if end is None:       # that level was empty: a master may be asleep
                self.wake = True
                ends[True] = ends[False] = 0.0
                return 0.0
            ends[head] = end
        ends[head] += -1 if head else 1
        return ends[head]

    def delayed_until(self, due):
        """Score of a job delayed until ``due``; wakes a master that sleeps longer."""
        if self.first_due == ():
            self.first_due = self.conn.execute(
                'SELECT MIN(score) FROM mpq_job WHERE queue = ? AND state = ? AND level = 0',
                (self.queue, DELAYED)).fetchone()[0]
        if self.first_due is None or self.first_due > due:
            self.wake, self.first_due = True, due
        return due

    def ready(self, job_id, old, delay=0, **fields):
        if delay and delay > 0:
            self.move(job_id, old, DELAYED, self.delayed_until(self.now + delay), **fields)
            self.hold_again(job_id)
        else:
            self.to_tail([(job_id,) + self.get(job_id, 'priority', 'key')], old, **fields)

    def to_tail(self, rows, old, **fields):
        """Jobs ``(id, priority, key)`` to the tail of waiting, in order, in one
        UPDATE: ready() a job at a time made a bulk step of 1000 jobs 25 ms."""
        self.conn.executemany(
            'UPDATE mpq_job SET state = ?, level = ?, score = ?%s WHERE queue = ? AND '
            'id = ?' % ''.join(', %s = ?' % name for name in fields),
            [(WAITING, level or 0, self.position(level or 0)) + tuple(fields.values()) +
             (self.queue, job_id) for job_id, level, _ in rows])
        self.count(old, -len(rows))
        self.count(WAITING, len(rows))
        for job_id, _, key in rows:
            if key:
                self.hold_again(job_id)
        return len(rows)

    def to_head(self, job_id, old, **fields):
        priority = self.get(job_id, 'priority')[0] or 0
        self.move(job_id, old, WAITING, self.position(priority, head=True), priority, **fields)
        self.hold_again(job_id)

    def hold_again(self, job_id):
        """A job queued again holds its unique key again, unless another job
        took it meanwhile; not one queued to run its fail handlers only."""
        key, mode, phase = self.get(job_id, 'key', 'unique_mode', 'phase')
        if key and mode in ('queued', 'active') and phase != _PHASE_HANDLERS and \
                self.holder(key) in (None, job_id):
            self.conn.execute('INSERT OR REPLACE INTO mpq_unique (queue, key, id, ends) VALUES '
                              '(?, ?, ?, NULL)', (self.queue, key, job_id))

    def holder(self, key):
        """The id of the job that holds unique ``key`` now, or None."""
        row = self.conn.execute('SELECT id, ends FROM mpq_unique WHERE queue = ? AND key = ?',
                                (self.queue, key)).fetchone()
        if row is None:
            return None
        if row[1] is not None:
            return row[0] if row[1] > self.now else None
        job = self.get(row[0], 'state', 'unique_mode')
        if job and (job[0] in (WAITING, DELAYED) or
                    (job[1] == 'active' and job[0] in (RESERVED, WORKING))):
            return row[0]
        return None

    def let_go(self, job_id, key, mode, handed_out):
        """A job lets go of its unique key: when it is handed out ('queued':
        its body may begin before its start is recorded) or at its end."""
        if key and (mode == 'queued' or (mode == 'active' and not handed_out)):
            self.conn.execute('DELETE FROM mpq_unique WHERE queue = ? AND key = ? AND id = ?',
                              (self.queue, key, job_id))

    def finish(self, job_id, old, state, **fields):
        """The job ended (done, cancelled): its outcome is kept for its
        result_ttl, or while a child of it has not ended, or forgotten at once."""
        ttl, waiter, key, mode, depends_on, has_children = self.get(
            job_id, 'result_ttl', 'waiter', 'key', 'unique_mode', 'depends_on', 'has_children')
        self.let_go(job_id, key, mode, False)
        ttl = _keep_seconds(state, ttl)
        if has_children and self.conn.execute('SELECT 1 FROM mpq_dep WHERE queue = ? AND '
                                            'parent = ? LIMIT 1', (self.queue, job_id)).fetchone():
            ttl = _SQ_KEPT - self.now
        if ttl:
            self.move(job_id, old, state, self.now + ttl, payload=None, end_time=self.now,
                      **fields)
        else:
            self.conn.execute('DELETE FROM mpq_job WHERE queue = ? AND id = ?',
                              (self.queue, job_id))
            self.count(old, -1)
            self.count(state, 1)
        self.ended_(job_id, state, waiter, depends_on, has_children)

    def to_failed(self, job_id, old, **fields):
        waiter, key, mode, depends_on, has_children = self.get(
            job_id, 'waiter', 'key', 'unique_mode', 'depends_on', 'has_children')
        self.let_go(job_id, key, mode, False)
        self.move(job_id, old, FAILED, self.now, phase=None, fail_time=self.now,
                  end_time=self.now, **fields)
        self.count('failed_total', 1)
        self.ended_(job_id, FAILED, waiter, depends_on, has_children)

    def ended_(self, job_id, state, waiter, depends_on, has_children):
        """What follows a job's end: its waiters are told, its parents keep
        their outcome for it no more, its children are settled."""
        if waiter:
            self.ended += waiter.split('\n')
        if depends_on:
            parents = self.conn.execute('SELECT parent FROM mpq_dep WHERE queue = ? AND '
                                        'child = ?', (self.queue, job_id)).fetchall()
            self.conn.execute('DELETE FROM mpq_dep WHERE queue = ? AND child = ?',
                              (self.queue, job_id))
            for parent, in parents:
                self.unkeep(parent)
        if has_children:
            self.settle(job_id, state)

    # -- dependencies (see "Dependencies" above the record's fields) ----------------

    def unkeep(self, job_id):
        """An outcome kept for children (score _SQ_KEPT) expires as its
        result_ttl says once the last of them ended."""
        row = self.get(job_id, 'state', 'end_time', 'result_ttl', 'score')
        if row and row[0] in _KEPT_STATES and row[3] == _SQ_KEPT and not self.conn.execute(
                'SELECT 1 FROM mpq_dep WHERE queue = ? AND parent = ? LIMIT 1',
                (self.queue, job_id)).fetchone():
            self.update(job_id, score=row[1] + _keep_seconds(row[0], row[2]))   # swept when due

    def settle(self, job_id, state):
        """Parent ``job_id`` ended in ``state``: each child for which it was
        the last parent not ended is released, and each whose parent did not
        end done is cancelled unless it runs anyway.  Cancels go down a chain
        through a list, not by recursion: a chain may be long."""
        if self.settling is not None:
            self.settling.append((job_id, state))
            return
        self.settling = [(job_id, state)]
        while self.settling:
            parent, how = self.settling.pop()
            for child, run in self.conn.execute(
                    'SELECT child, on_parent_failure FROM mpq_dep JOIN mpq_job ON '
                    'mpq_job.queue = mpq_dep.queue AND id = child WHERE mpq_dep.queue = ? AND '
                    'parent = ? AND open = 1', (self.queue, parent)).fetchall():
                self.conn.execute('UPDATE mpq_dep SET open = 0 WHERE queue = ? AND child = ? AND '
                                  'parent = ?', (self.queue, child, parent))
                if how != DONE and run != 'run':
                    self.cancel_child(child, parent, how)
                elif not self.conn.execute('SELECT 1 FROM mpq_dep WHERE queue = ? AND child = ? '
                                           'AND open = 1 LIMIT 1',
                                           (self.queue, child)).fetchone():
                    due = max(self.now, self.get(child, 'score')[0])
                    self.ready(child, BLOCKED, due - self.now)
                    self.expire_at(child, due)
        self.settling = None

    # -- expiry (see "Expiry" above the record's fields) ------------------------------

    def expire_at(self, job_id, due):
        """A job with ``expires`` is due: it expires that long after ``due``."""
        self.conn.execute('UPDATE mpq_job SET expire_time = ? + expires WHERE queue = ? AND '
                          'id = ? AND expires > 0', (due, self.queue, job_id))

    def too_late(self, job_id, old, expire_time, tried, limits=None):
        """Too late for a job (in ``old``) to start for the first time?  Then
        it ends expired, giving back what it holds (``limits``)."""
        if expire_time is None or expire_time > self.now or tried:
            return False
        self.release(job_id, limits)
        self.finish(job_id, old, EXPIRED, waiting_for=None, expire_time=None)
        return True

    def cancel_child(self, job_id, parent, how):
        """A child cancelled because its parent did not end done."""
        by = 'parent %s' % parent
        self.finish(job_id, BLOCKED, CANCELLED, cancel_time=self.now, cancelled_by=by,
                    error_info=self.errors(job_id, '%s ended %s' % (by, how)))

    def errors(self, job_id, *more):
        raw = self.get(job_id, 'error_info')[0]
        return json.dumps((json.loads(raw) if raw else []) + list(more))

    def lease_end(self, deadline):
        """A working attempt's lease ends LEASE_SECONDS from now, or a second
        after its deadline (0: none) if that is sooner."""
        if deadline and deadline + 1 < self.now + LEASE_SECONDS:
            return deadline + 1
        return self.now + LEASE_SECONDS

    def start(self, job_id, old, phase, timeout, key, mode, exec_number, worker, owner):
        deadline = self.now + timeout if timeout else 0
        lease = self.lease_end(deadline)
        if phase == _PHASE_HANDLERS:
            self.move(job_id, old, WORKING, lease, owner=owner, deadline=deadline,
                      handler_start=self.now)
        else:
            self.move(job_id, old, WORKING, lease, start_time=self.now, worker_id=worker,
                      owner=owner, deadline=deadline, exec_number=(exec_number or 0) + 1,
                      expire_time=None)         # started in time
            self.let_go(job_id, key, mode, True)

    def lost(self, job_id, error, timeout):
        """A started attempt whose worker is gone: cancelled, its fail
        handlers out of tries, timed out, tries left, or failed for good."""
        cancelled, phase, runs, tried, fail_number = self.get(
            job_id, 'cancel_time', 'phase', 'handler_runs', 'exec_number', 'fail_number')
        errors = self.errors(job_id, error)
        if cancelled:
            self.finish(job_id, WORKING, CANCELLED, error_info=errors)
        elif phase == _PHASE_HANDLERS:
            runs = (runs or 0) + 1
            if runs >= HANDLER_ATTEMPTS:
                self.to_failed(job_id, WORKING, handler_runs=runs, error_info=self.errors(
                    job_id, error, 'fail handlers did not finish after %d attempts' % runs))
            else:
                self.to_head(job_id, WORKING, handler_runs=runs, error_info=errors)
        elif timeout:
            self.to_head(job_id, WORKING, type=TYPE_TIMEOUT, phase=_PHASE_HANDLERS,
                         error_info=errors)
        elif (tried or 0) <= (fail_number or 0):
            self.to_head(job_id, WORKING, error_info=errors)   # it did not fail by itself
        else:
            self.to_head(job_id, WORKING, type=TYPE_NORMAL, phase=_PHASE_HANDLERS,
                         error_info=errors)

    def requeue(self, job_id):
        state, phase, cancelled, tried, limits = self.get(
            job_id, 'state', 'phase', 'cancel_time', 'exec_number', 'limits')
        if state in (RESERVED, WORKING):
            self.release(job_id, limits)
        if state == WORKING and cancelled:
            self.finish(job_id, state, CANCELLED)
        elif state == WORKING:
            self.to_head(job_id, state, exec_number=tried - 1 if phase != _PHASE_HANDLERS
                         else tried)
        elif state == RESERVED:
            self.to_head(job_id, state)
        else:
            return False
        return True

    def live(self, job_id, *columns):
        """``get``, but None for an outcome kept past its time: the next sweep
        drops it, and Redis has let its key expire already."""
        return self.conn.execute(
            'SELECT %s FROM mpq_job WHERE queue = ? AND id = ? AND NOT (state IN (?, ?, ?) AND '
            'score <= ?)' % ', '.join(columns),
            (self.queue, job_id) + _KEPT_STATES + (self.now,)).fetchone()

    def record(self, job_id):
        row = self.live(job_id, _SQ_RECORD)
        return None if row is None else _record(zip(_FIELDS_BUT_PAYLOAD, row))

    # -- the steps -------------------------------------------------------------

    def push(self, job_id, payload, delay, job, timeout, fail_number, fail_expire, priority,
             key, mode, result_ttl, limits, depends_on, on_parent_failure, expires):
        parents = json.loads(depends_on) if depends_on else []
        ended = {}      # its parents that ended, and how
        for parent in parents:
            row = self.live(parent, 'state')
            if row is None:
                return '!' + parent
            if row[0] in _ENDED:
                ended[parent] = row[0]
        if mode:
            holder = self.holder(key)
            if holder is not None:
                return holder
            ends = self.now + float(mode) if mode not in ('queued', 'active') else None
            self.conn.execute('INSERT OR REPLACE INTO mpq_unique (queue, key, id, ends) '
                              'VALUES (?, ?, ?, ?)', (self.queue, key, job_id, ends))
        bad = next((p for p in parents if ended.get(p, DONE) != DONE), None)
        cancel = bad is not None and on_parent_failure != 'run'
        blocked = cancel or len(ended) < len(parents)
        self.conn.execute(_SQ_INSERT, self.push_row(
            job_id, payload, delay, job, timeout, fail_number, fail_expire, priority, key, mode,
            result_ttl, limits, blocked=blocked))
        if float(expires):
            self.update(job_id, expires=expires)
            if not blocked:
                self.expire_at(job_id, self.now + delay)
        if not parents:
            return job_id
        self.update(job_id, depends_on=depends_on, on_parent_failure=on_parent_failure)
        self.conn.executemany('INSERT OR IGNORE INTO mpq_dep (queue, child, parent, open) '
                              'VALUES (?, ?, ?, ?)', [(self.queue, job_id, p, p not in ended)
                                                      for p in parents])
        for parent in parents:
            self.update(parent, has_children=1)
            if ended.get(parent) in _KEPT_STATES:
                self.update(parent, score=_SQ_KEPT)       # its outcome, kept for this child
        if cancel:
            self.cancel_child(job_id, bad, ended[bad])
        return job_id

    def push_row(self, job_id, payload, delay, job, timeout, fail_number, fail_expire,
                 priority, key, mode, result_ttl, limits, blocked=False):
        if blocked:
            state, score, level = BLOCKED, self.now + delay, 0
        elif delay > 0:
            state, score, level = DELAYED, self.delayed_until(self.now + delay), 0
        else:
            state, score, level = WAITING, self.position(priority), priority
        self.count(state, 1)
        self.count('pushed', 1)
        return (self.queue, job_id, state, level, score, payload, job, self.now, timeout,
                fail_number, fail_expire, priority, key, mode, result_ttl, limits or None)

    # -- limits (see "Limits" in the step table) --------------------------------

    def waiting_rows(self, n):
        """Up to n jobs from the head of waiting that may start now, as rows of
        _SQ_WAITING; those their limits refuse are parked meanwhile."""
        out = []
        while len(out) < n:
            want = n - len(out)
            # those admitted stay at the head (they are reserved after): skip them
            rows = self.conn.execute(_SQ_WAITING, (self.queue, want, len(out))).fetchall()
            out += [row for row in rows if not self.too_late(
                        row[0], WAITING, row[_SQ_EXPIRE], row[_SQ_TRIED]) and (
                    not row[-2] or row[_SQ_PHASE] == _PHASE_HANDLERS or
                    self.admit(row[0], row[-2], row[_SQ_ATTEMPT] + 1, row[-1]))]
            if len(rows) < want:
                break
        self.ends.clear()
        return out

    def admit(self, job_id, limits, attempt, was):
        """May ``attempt`` of a waiting job start?  True (it takes a slot of each
        of its ``limits``), or it is parked on the first limit that refuses it."""
        queue, defs = self.queue, json.loads(limits)
        for name, concurrency, rate, per in defs:
            if concurrency and self.conn.execute(
                    'SELECT COUNT(*) FROM mpq_limit_held WHERE queue = ? AND name = ?',
                    (queue, name)).fetchone()[0] >= concurrency:
                last = self.conn.execute(
                    'SELECT MAX(score) FROM mpq_job WHERE queue = ? AND waiting_for = ? AND '
                    'level = ?', (queue, name, _SQ_PARKED)).fetchone()[0]
                self.update(job_id, level=_SQ_PARKED, score=(last or 0) + 1, waiting_for=name)
                return False
            if rate:
                self.conn.execute('DELETE FROM mpq_limit_start WHERE queue = ? AND name = ? AND '
                                  't <= ?', (queue, name, self.now - per))
                n = self.conn.execute('SELECT COUNT(*) FROM mpq_limit_start WHERE queue = ? AND '
                                      'name = ?', (queue, name)).fetchone()[0]
                if n >= rate:       # due when the start that fills the window leaves it
                    first = self.conn.execute(
                        'SELECT t FROM mpq_limit_start WHERE queue = ? AND name = ? ORDER BY t '
                        'LIMIT 1 OFFSET ?', (queue, name, n - rate)).fetchone()[0]
                    self.move(job_id, WAITING, DELAYED, self.delayed_until(first + per),
                              waiting_for=name)
                    return False
        for name, concurrency, rate, per in defs:
            self.conn.execute('INSERT OR REPLACE INTO mpq_limit_held (queue, name, id, attempt) '
                              'VALUES (?, ?, ?, ?)', (queue, name, job_id, attempt))
            if rate:
                self.conn.execute('INSERT INTO mpq_limit_start (queue, name, t) VALUES '
                                  '(?, ?, ?)', (queue, name, self.now))
        if was:
            self.update(job_id, waiting_for=None)
        return True

    def release(self, job_id, limits):
        """The current attempt of a job ends: it gives back its slots, and the
        oldest job parked on each name goes to the head of waiting."""
        if not limits:
            return
        attempt = self.get(job_id, 'attempt')[0]
        for name, concurrency, _, _ in json.loads(limits):
            if self.conn.execute('DELETE FROM mpq_limit_held WHERE queue = ? AND name = ? AND '
                                 'id = ? AND attempt = ?',
                                 (self.queue, name, job_id, attempt)).rowcount and concurrency:
                row = self.conn.execute(
                    'SELECT id, priority FROM mpq_job WHERE queue = ? AND waiting_for = ? AND '
                    'level = ? ORDER BY score LIMIT 1', (self.queue, name, _SQ_PARKED)).fetchone()
                if row:
                    self.update(row[0], level=row[1] or 0,
                                score=self.position(row[1] or 0, head=True))

    def limits(self):
        out = {}
        for name, n in self.conn.execute('SELECT name, COUNT(*) FROM mpq_limit_held WHERE '
                                         'queue = ? GROUP BY name', (self.queue,)):
            out[name] = (n, 0)
        for name, n in self.conn.execute('SELECT waiting_for, COUNT(*) FROM mpq_job WHERE '
                                         'queue = ? AND waiting_for IS NOT NULL GROUP BY '
                                         'waiting_for', (self.queue,)):
            out[name] = (out.get(name, (0, 0))[0], n)
        return out

    def reserve(self, n):
        if self.paused():
            return []
        rows = self.waiting_rows(n)
        back = self.now + RESERVE_SECONDS
        # distinct scores keep queue order when they come back by sweep
        self.conn.executemany('UPDATE mpq_job SET state = ?, level = 0, score = ?, '
                              'attempt = attempt + 1 WHERE queue = ? AND id = ?',
                              [(RESERVED, back + i * 1e-6, self.queue, row[0])
                               for i, row in enumerate(rows)])
        self.count(WAITING, -len(rows))
        self.count(RESERVED, len(rows))
        jobs = [dict(_record(zip(_WORK_FIELDS, row[1:-2])), id=row[0]) for row in rows]
        for job in jobs:
            job['attempt'] += 1
            if job.get('key'):
                self.let_go(job['id'], job['key'], self.get(job['id'], 'unique_mode')[0], True)
        return jobs

    def start_step(self, job_id, attempt, worker, owner):
        row = self.current(job_id, attempt, RESERVED, 'phase', 'timeout', 'key',
                           'unique_mode', 'exec_number', 'expire_time', 'limits')
        if row is None or self.too_late(job_id, RESERVED, row[5], row[4], row[6]):
            return False
        self.start(job_id, RESERVED, *row[:5], worker, owner)
        return True

    def pop(self, n, worker, owner):
        if self.paused():
            return []
        ids = [row[0] for row in self.waiting_rows(n)]
        jobs = []
        for job_id in ids:
            self.conn.execute('UPDATE mpq_job SET attempt = attempt + 1 WHERE queue = ? AND '
                              'id = ?', (self.queue, job_id))
            self.start(job_id, WAITING, *self.get(job_id, 'phase', 'timeout', 'key',
                                                    'unique_mode', 'exec_number'),
                       worker, owner)
            row = self.get(job_id, _SQ_WORK)
            jobs.append(dict(_record(zip(_WORK_FIELDS, row[1:])), id=job_id))
        return jobs

    def renew(self, job_id, attempt):
        row = self.current(job_id, attempt, WORKING, 'deadline', 'cancel_time')
        if row is None:
            return None
        self.update(job_id, score=self.lease_end(row[0]))
        return 'cancel' if row[1] else 'ok'

    def progress(self, job_id, attempt, progress, meta):
        row = self.get(job_id, 'state', 'attempt')
        if row is None or row[0] not in (RESERVED, WORKING) or row[1] != int(attempt):
            return False
        self.update(job_id, progress=None if progress == '' else progress, meta=meta or None)
        return True

    def done(self, job_id, attempt, result, result_repr, result_note):
        row = self.current(job_id, attempt, WORKING, 'limits', 'has_children')
        if row is None:
            return False
        self.release(job_id, row[0])
        if row[1] and not result and not result_note:
            result_note = _UNSENT_RESULT
        self.finish(job_id, WORKING, DONE, result=result or None,
                    result_repr=result_repr or None, result_note=result_note or None)
        return True

    def retry(self, job_id, attempt, delay, error):
        row = self.current(job_id, attempt, WORKING, 'cancel_time', 'limits')
        if row is None:
            return False
        self.release(job_id, row[1])
        if row[0]:
            self.finish(job_id, WORKING, CANCELLED, error_info=self.errors(job_id, error))
        else:
            self.ready(job_id, WORKING, float(delay), error_info=self.errors(job_id, error))
        return True

    def fail(self, job_id, attempt, type_, errors, job):
        row = self.current(job_id, attempt, WORKING, 'cancel_time', 'job', 'limits')
        if row is None:
            return False
        self.release(job_id, row[2])
        fields = dict(error_info=self.errors(job_id, *json.loads(errors)), type=int(type_),
                      job=job or row[1])
        if row[0]:
            self.finish(job_id, WORKING, CANCELLED, **fields)
        else:
            self.to_failed(job_id, WORKING, **fields)
        return True

    def lost_step(self, job_id, attempt, error, timeout):
        row = self.get(job_id, 'state', 'attempt', 'limits')
        if row is None or row[1] != int(attempt):
            return False
        if row[0] in (RESERVED, WORKING):
            self.release(job_id, row[2])
        if row[0] == RESERVED:            # handed out, never started
            self.to_head(job_id, RESERVED)
        elif row[0] == WORKING:
            self.lost(job_id, error, int(timeout) == 1)
        else:
            return False
        return True

    def requeue_step(self, job_id, attempt):
        row = self.get(job_id, 'attempt')
        return row is not None and row[0] == int(attempt) and self.requeue(job_id)

    def recover(self, owner):
        ids = [row[0] for row in self.conn.execute(
            'SELECT id FROM mpq_job WHERE queue = ? AND state = ? AND owner = ?',
            (self.queue, WORKING, owner)).fetchall()]
        return sum(1 for job_id in ids if self.requeue(job_id))

    def sweep(self, limit):
        queue, now = self.queue, self.now
        self.to_tail(self.conn.execute(_SQ_DUE, (queue, DELAYED, now, limit)).fetchall(),
                     DELAYED)
        self.first_due = ()
        for job_id, _, _ in reversed(self.conn.execute(_SQ_DUE, (queue, RESERVED, now,
                                                                 limit)).fetchall()):
            self.release(job_id, self.get(job_id, 'limits')[0])
            self.to_head(job_id, RESERVED)
        for job_id, _, _ in self.conn.execute(_SQ_DUE, (queue, WORKING, now, limit)).fetchall():
            self.release(job_id, self.get(job_id, 'limits')[0])
            self.lost(job_id, 'lease expired: worker %s or its server stopped while running '
                      'the job' % self.get(job_id, 'worker_id')[0], False)
        for job_id, state, tried in self.conn.execute(
                'SELECT id, state, exec_number FROM mpq_job WHERE queue = ? AND expire_time <= ? '
                'AND state IN (?, ?) LIMIT ?', (queue, now, WAITING, DELAYED, limit)).fetchall():
            self.too_late(job_id, state, now, tried)
        for state in _KEPT_STATES:      # kept outcomes whose time is over
            self.conn.execute('DELETE FROM mpq_job WHERE queue = ? AND state = ? AND level = 0 '
                              'AND score <= ?', (queue, state, now))
        self.conn.execute('DELETE FROM mpq_unique WHERE queue = ? AND ends <= ?', (queue, now))
        sampled = self.conn.execute('SELECT MAX(t) FROM mpq_history WHERE queue = ?',
                                    (queue,)).fetchone()[0]
        counts = self.conn.execute('SELECT done, failed_total FROM mpq_queue WHERE queue = ?',
                                   (queue,)).fetchone()
        if counts and any(counts) and (sampled is None or now - sampled >= HISTORY_SECONDS):
            self.conn.execute('INSERT INTO mpq_history (queue, t, done, failed) VALUES '
                              '(?, ?, ?, ?)', (queue, now, counts[0] + self.delta[DONE],
                                               counts[1] + self.delta['failed_total']))
            self.conn.execute('DELETE FROM mpq_history WHERE queue = ? AND t < ?',
                              (queue, now - HISTORY_SECONDS * (HISTORY_KEEP - 0.5)))
        firsts = [self.conn.execute('SELECT MIN(score) FROM mpq_job WHERE queue = ? AND '
                                    'state = ? AND level = 0', (queue, state)).fetchone()[0]
                  for state in (DELAYED, RESERVED, WORKING)]
        firsts.append(self.conn.execute(
            'SELECT MIN(expire_time) FROM mpq_job WHERE queue = ? AND expire_time IS NOT NULL '
            'AND state IN (?, ?)', (queue, WAITING, DELAYED)).fetchone()[0])
        firsts = [first for first in firsts if first is not None]
        return (max(0.0, min(firsts) - now) if firsts else None), now

    def cancel(self, job_id, by):
        row = self.live(job_id, 'state', 'cancel_time', 'limits')
        if row is None:
            return None
        state = row[0]
        if state == WORKING:
            if not row[1]:
                self.update(job_id, cancel_time=self.now, cancelled_by=by)
            self.cancels.append(job_id)
        elif state in (WAITING, DELAYED, RESERVED, BLOCKED):
            if state == RESERVED:
                self.release(job_id, row[2])
                self.cancels.append(job_id)     # its master may have handed it out already
            self.ends.clear()
            self.finish(job_id, state, CANCELLED, cancel_time=self.now, cancelled_by=by,
                        waiting_for=None)
        return state

    def info(self, job_id, watch):
        found = self.record(job_id)
        if found is None:
            return None
        if watch and found['state'] not in _ENDED:
            waiter = self.get(job_id, 'waiter')[0]
            self.update(job_id, waiter='%s\n%s' % (waiter, watch) if waiter else watch)
        if found['state'] == BLOCKED:       # the parents it waits for
            found['waiting_for'] = json.dumps([p for p, in self.conn.execute(
                'SELECT parent FROM mpq_dep WHERE queue = ? AND child = ? AND open = 1',
                (self.queue, job_id))])
        if found.get('has_children'):
            found['dependents'] = [c for c, in self.conn.execute(
                'SELECT child FROM mpq_dep WHERE queue = ? AND parent = ?', (self.queue, job_id))]
        return found

    def depth(self):
        row = self.conn.execute('SELECT %s FROM mpq_queue WHERE queue = ?' % ', '.join(
            _DEPTH_FIELDS), (self.queue,)).fetchone() or (0,) * len(_DEPTH_FIELDS)
        row = [n + self.delta[name] for name, n in zip(_DEPTH_FIELDS, row)]   # this batch's too
        heads = [row[0] for row in (self.conn.execute(
            'SELECT create_time FROM mpq_job WHERE queue = ? AND state = ? AND level = ? '
            'ORDER BY level DESC, score LIMIT 1', (self.queue, WAITING, level)).fetchone()
            for level in range(MAX_PRIORITY + 1)) if row is not None]
        return dict(zip(_DEPTH_FIELDS, row), oldest_created=min(heads) if heads else None)

    def failed(self, offset, count, after):
        # ties of score (the jobs of one batch fail at one time) go by rowid,
        # as the index has them
        cursor = after and self.conn.execute(
            'SELECT score, rowid FROM mpq_job WHERE queue = ? AND id = ? AND state = ?',
            (self.queue, after, FAILED)).fetchone()
        where, args = ('AND (score, rowid) > (?, ?) ', tuple(cursor)) if cursor else ('', ())
        rows = self.conn.execute(
            'SELECT id, %s FROM mpq_job WHERE queue = ? AND state = ? AND level = 0 %s'
            'ORDER BY level DESC, score, rowid LIMIT ? OFFSET ?' % (_SQ_RECORD, where),
            (self.queue, FAILED) + args + (max(0, count), 0 if cursor else max(0, offset))
        ).fetchall()
        return [dict(_record(zip(_FIELDS_BUT_PAYLOAD, row[1:])), id=row[0]) for row in rows]

    def listing(self, state, count, cursor):
        # the cursor: 'level:score:rowid' of the last job shown (any other
        # text: the first page); a page is read from its level on, then from
        # the levels below it
        count = max(0, count)
        try:
            level, score, rowid = (float(x) for x in cursor.split(':'))
        except ValueError:
            level, score, rowid = MAX_PRIORITY if state == WAITING else 0, float('-inf'), -1
        rows = self.conn.execute(
            'SELECT id, score, rowid, level, %s FROM mpq_job WHERE queue = ? AND state = ? AND '
            'level = ? AND (score, rowid) > (?, ?) ORDER BY level DESC, score, rowid LIMIT ?'
            % _SQ_RECORD, (self.queue, state, level, score, rowid, count + 1)).fetchall()
        if len(rows) <= count:      # one more than the page: is there a page after it?
            rows += self.conn.execute(
                'SELECT id, score, rowid, level, %s FROM mpq_job WHERE queue = ? AND state = ? '
                'AND level < ? ORDER BY level DESC, score, rowid LIMIT ?' % _SQ_RECORD,
                (self.queue, state, level, count + 1 - len(rows))).fetchall()
        jobs = [dict(_record(zip(_FIELDS_BUT_PAYLOAD, row[4:])), id=row[0], **(
            {'due_time': row[1]} if state == DELAYED else {})) for row in rows[:count]]
        last = rows[count - 1] if count > 0 and len(rows) > count else None
        return jobs, last and '%d:%r:%d' % (last[3], last[1], last[2]) or ''

    def retry_failed(self, job_id, limit):
        return self.to_tail(self.conn.execute(
            'SELECT id, priority, key FROM mpq_job WHERE queue = ? AND state = ? AND '
            'level = 0 %s ORDER BY level DESC, score LIMIT ?' % ('AND id = ?' if job_id else ''),
            (self.queue, FAILED) + ((job_id,) if job_id else ()) + (limit,)).fetchall(), FAILED,
            exec_number=0, handler_runs=None, phase=None, type=None, error_info=None,
            fail_time=None, end_time=None)

    def delete_failed(self, job_id):
        cur = self.conn.execute('DELETE FROM mpq_job WHERE queue = ? AND id = ? AND state = ?',
                                (self.queue, job_id, FAILED))
        self.count(FAILED, -cur.rowcount)
        return cur.rowcount > 0

    def find(self, text):
        return text if self.live(text, 'id') else self.holder(text)

    def walk_failed(self, text, cursor, limit, stop=0):
        """The ids of the failed jobs after ``cursor`` ('until:score:rowid';
        '': the oldest on, until now) that match ``text``, among ``limit`` of
        them at most, up to ``stop`` (0: all); and the cursor after the last
        one walked."""
        try:
            until, score, rowid = (float(x) for x in cursor.split(':'))
        except ValueError:
            until, score, rowid = self.now, float('-inf'), -1
        rows = self.conn.execute(
            'SELECT score, rowid, id, job, key, error_info FROM mpq_job WHERE queue = ? AND '
            'state = ? AND level = 0 AND (score, rowid) > (?, ?) AND score <= ? ORDER BY '
            'level DESC, score, rowid LIMIT ?',
            (self.queue, FAILED, score, rowid, until, limit)).fetchall()
        needle, found = _folded(text), []
        plain = not re.search(r'[^ -~]|["\\/]', needle)    # JSON writes it as it is: as Lua
        for i, (score, rowid, job_id, job, key, errors) in enumerate(rows, 1):
            texts = [job or '', key or '']
            if (not plain or needle in _folded('\n'.join(texts + [errors or '']))) and any(
                    needle in _folded(str(t)) for t in texts + (json.loads(errors or '[]') or [])):
                found.append(job_id)
            if (stop and len(found) == stop) or i == limit:
                return found, '%r:%r:%d' % (until, score, rowid)
        return found, ''

    def match_failed(self, text, count, cursor, limit):
        found, after = self.walk_failed(text, cursor, limit, count)
        return len(found), [dict(self.record(job_id), id=job_id)
                            for job_id in found[:count]], after

    def retry_matching(self, text, cursor, limit):
        found, after = self.walk_failed(text, cursor, limit)
        return sum(self.retry_failed(job_id, 1) for job_id in found), after

    def delete_matching(self, text, cursor, limit):
        found, after = self.walk_failed(text, cursor, limit)
        return sum(self.delete_failed(job_id) for job_id in found), after

    def clean(self, limit):
        rows = self.conn.execute('SELECT id, state FROM mpq_job WHERE queue = ? LIMIT ?',
                                 (self.queue, limit)).fetchall()
        self.conn.executemany('DELETE FROM mpq_job WHERE queue = ? AND id = ?',
                              [(self.queue, job_id) for job_id, _ in rows])
        for _, state in rows:
            if state in LIVE_STATES:    # kept outcomes are not counted: their counters stay
                self.count(state, -1)
        self.ends.clear()
        if len(rows) < limit:
            self.delta.clear()
            for table in ('mpq_queue', 'mpq_unique', 'mpq_history', 'mpq_limit_held',
                          'mpq_limit_start', 'mpq_dep'):
                self.conn.execute('DELETE FROM %s WHERE queue = ?' % table, (self.queue,))
        return len(rows)

    def schedule(self, name, fp, last, tick, owner, job_id, *push):
        row = self.conn.execute('SELECT last, fingerprint, owner FROM mpq_schedule WHERE '
                                'queue = ? AND name = ?', (self.queue, name)).fetchone()
        before = tuple('' if v is None else str(v) for v in (row or (None,) * 3))
        if before[0] != str(last):
            return ('stale',) + before
        if int(tick) > self.now * 1000:
            return ('early',) + before
        self.conn.execute('INSERT INTO mpq_schedule (queue, name, last, fingerprint, owner) '
                          'VALUES (?, ?, ?, ?, ?) ON CONFLICT (queue, name) DO UPDATE SET '
                          'last = excluded.last, fingerprint = excluded.fingerprint, '
                          'owner = excluded.owner', (self.queue, name, int(tick), fp, owner))
        if not job_id:
            return ('moved',) + before
        if self.push(job_id, *push) != job_id:      # its previous job holds the key
            self.conn.execute('UPDATE mpq_schedule SET skipped = skipped + 1 WHERE queue = ? '
                              'AND name = ?', (self.queue, name))
            return ('skipped',) + before
        self.conn.execute('UPDATE mpq_schedule SET job = ? WHERE queue = ? AND name = ?',
                          (job_id, self.queue, name))
        return ('pushed',) + before

    def schedules(self):
        return [dict(zip(('name',) + _SCHEDULE_FIELDS, row)) for row in self.conn.execute(
            'SELECT name, %s FROM mpq_schedule WHERE queue = ? ORDER BY name'
            % ', '.join(_SCHEDULE_FIELDS), (self.queue,))]

    def history(self):
        return [_sample(*row) for row in self.conn.execute(
            'SELECT t, done, failed FROM mpq_history WHERE queue = ? ORDER BY t', (self.queue,))]

    def pause(self):
        paused = self.conn.execute('INSERT OR IGNORE INTO mpq_paused (queue) VALUES (?)',
                                   (self.queue,)).rowcount == 1
        self.pausing = self.pausing or paused
        return paused

    def resume(self):
        resumed = self.conn.execute('DELETE FROM mpq_paused WHERE queue = ?',
                                    (self.queue,)).rowcount == 1
        self.wake = self.wake or resumed
        return resumed

    def paused(self):
        return self.conn.execute('SELECT 1 FROM mpq_paused WHERE queue = ?',
                                 (self.queue,)).fetchone() is not None

    # -- a batch ---------------------------------------------------------------

    _METHOD = {'start': 'start_step', 'lost': 'lost_step', 'requeue': 'requeue_step'}

    def run(self, steps):
        """Apply ``steps``; a run of plain pushes (no unique key, no parents,
        no expiry) goes to the database in one ``executemany``."""
        out, i = [], 0
        while i < len(steps):
            j = i
            while j < len(steps) and steps[j][0] == 'push' and not steps[j][_SQ_UNIQUE] and \
                    not steps[j][_SQ_PARENTS] and not steps[j][_SQ_EXPIRES]:
                j += 1
            if j > i:
                self.conn.executemany(_SQ_INSERT, [self.push_row(*s[1:_SQ_PARENTS])
                                                   for s in steps[i:j]])
                out += [s[1] for s in steps[i:j]]
                i = j
                continue
            name = steps[i][0]
            out.append(getattr(self, self._METHOD.get(name, name))(*steps[i][1:]))
            i += 1
        return out

    def save_counts(self):
        if any(self.delta.values()):
            values = [self.delta[name] for name in _DEPTH_FIELDS]
            if self.conn.execute(_SQ_COUNT, values + [self.queue]).rowcount == 0:
                self.conn.execute(_SQ_COUNT_FIRST, [self.queue] + values)


@functools.lru_cache(maxsize=None)
def _sqlite_wake_paths(db_file, queue):
    """The datagram socket paths a queue's masters listen on for wake-ups."""
    base = '%s.%s.wake' % (db_file, queue)
    if len(os.fsencode(base)) + 2 > _SQ_SUN_PATH_MAX:      # + 2: room for '.N'
        digest = _sha1_hex('%s\0%s' % (db_file, queue))[:24]
        base = os.path.join(os.path.dirname(db_file), '.mpq-%s.wake' % digest)
        if len(os.fsencode(base)) + 2 > _SQ_SUN_PATH_MAX:
            base = '/tmp/mpq-%s.wake' % digest
    return [base] + ['%s.%d' % (base, i) for i in range(1, _SQ_WAKE_SLOTS)]


class _SqliteSocket:
    """A Unix datagram socket that ``execute()`` sends to.  A master's *waker*
    listens on one of its queue's paths (up to ``_SQ_WAKE_SLOTS`` masters of a
    queue at once; a socket file left by a dead process is taken over) and
    gets ``1`` when a step makes work, ``c:<id>`` when a started job is
    cancelled and ``p`` when the queue is paused.  A *watch* listens on a path
    of its own, which the ``info`` step stores with the job: the step that
    ends the job sends it a byte."""

    def __init__(self, paths, db_path, queue):
        directory = os.path.dirname(paths[0])
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.address = lock = None
        try:
            os.makedirs(directory, exist_ok=True)
            # serialize the stale-socket check with other masters binding
            with contextlib.suppress(OSError):
                lock = os.open(directory, os.O_RDONLY)
                fcntl.flock(lock, fcntl.LOCK_EX)
            self.address = next((path for path in paths if self._bind(path)), None)
        except OSError as exc:
            self._sock.close()
            raise DriverError('SQLite database %s: cannot listen for wake-ups of queue %r on '
                              '%s: %s' % (db_path, queue, paths[0], exc)) from exc
        finally:
            if lock is not None:
                os.close(lock)     # releases the flock
        if self.address is None:
            self._sock.close()
            raise DriverError('SQLite database %s: %d masters of queue %r already listen for '
                              'wake-ups (%s)' % (db_path, len(paths), queue, paths[0]))
        self._sock.setblocking(False)
        self._ino = os.stat(self.address).st_ino

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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock.bind(path)
        return True

    def fileno(self):
        return self._sock.fileno()

    def drain(self):
        cancelled, paused = [], False
        try:
            while True:
                data = self._sock.recv(256)
                if data.startswith(b'c:'):
                    cancelled.append(data[2:].decode())
                paused = paused or data == b'p'
        except BlockingIOError:
            return cancelled, paused
        except OSError as exc:
            raise DriverError('wake-up socket %s: %s' % (self.address, exc)) from exc

    def wait(self, timeout):
        if select.select([self._sock], [], [], timeout)[0]:
            self._sock.recv(64)

    def close(self):
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError):
            if os.stat(self.address).st_ino == self._ino:    # still ours
                os.unlink(self.address)


class SqliteDriver(_Driver):
    """The embedded broker: one SQLite database file, for a pool on one server.

    :param path: the database file; it and its directory are created on first use.
        ``':memory:'`` (SQLite's name) is a database in this process's memory:
        no other process sees it, so ``basics.driver`` refuses it; immediate
        mode runs on one.

    All queues share the file (a ``queue`` column).  Each ``execute()`` is one
    ``BEGIN IMMEDIATE`` transaction in WAL mode (reads that change nothing take
    no write lock).  Writers queue first for a POSIX lock on a side file
    (``<path>-lock``): they sleep in the kernel and the next one wakes as the
    lock is let go, where SQLite's busy handler would poll in sleeps of up to
    100 ms.  The lock dies with its process.  Each process checkpoints the WAL
    itself, every CHECKPOINT_WRITES of its writes, after letting go of the
    lock, so no writer waits on a checkpoint.  Connections open lazily in
    each process and are never used across a ``fork()``.  A step that makes
    work wakes the queue's masters through Unix datagram sockets next to the
    database.
    """

    _PER_PROCESS = ('_conn', '_pid', '_lock', '_sender', '_lock_fd')
    BUSY_TIMEOUT = 10.0     # seconds a step waits for another process's transaction
    # a process's writes between its WAL checkpoints: a checkpoint's fsyncs cost
    # the same whatever it copies, so every 100 writes took 30 us of a push, every 1000 15
    CHECKPOINT_WRITES = 1000

    _inherited = []         # connections of parent processes: kept, never used or closed

    def __init__(self, path):
        if not isinstance(path, str) or not path:
            raise ConfigError('SqliteDriver path must be a file path, got %r' % (path,))
        self.path = path
        self.address = 'sqlite:' + path
        self._memory = path == ':memory:'     # no file, no writer lock, nobody to wake
        self._file = path if self._memory else os.path.abspath(path)    # daemons chdir('/')
        self._pid = self._conn = self._lock = self._sender = self._lock_fd = None
        self._writes = 0

    def __repr__(self):
        return 'SqliteDriver(%r)' % self.path

    def _error(self, exc):
        return DriverError('SQLite database %s: %s' % (self.path, exc))

    def preload(self):
        import sqlite3  # noqa: F401

    def _connect(self):
        with _SQ_CONNECT_LOCK:
            if self._pid == os.getpid() and self._conn is not None:
                return self._conn
            if self._conn is not None:      # a parent's connection: see close()
                self.close()
            import sqlite3
            self._lock = threading.Lock()
            conn = None
            try:
                if not self._memory:
                    os.makedirs(os.path.dirname(self._file), exist_ok=True)
                conn = sqlite3.connect(self._file, timeout=self.BUSY_TIMEOUT,
                                       isolation_level=None, check_same_thread=False,
                                       cached_statements=64)
                conn.execute('PRAGMA busy_timeout = %d' % int(self.BUSY_TIMEOUT * 1000))
                conn.execute('PRAGMA journal_mode = WAL')
                conn.execute('PRAGMA synchronous = NORMAL')
                conn.execute('PRAGMA wal_autocheckpoint = 0')
                conn.executescript(_SQLITE_SCHEMA)
                for table, names, column in (('mpq_job', _FIELDS, '%s'), (
                        'mpq_queue', _DEPTH_FIELDS, '%s INTEGER NOT NULL DEFAULT 0')):
                    have = {row[1] for row in conn.execute('PRAGMA table_info(%s)' % table)}
                    for name in names:        # a database of an older version
                        if name not in have:
                            conn.execute('ALTER TABLE %s ADD COLUMN %s' % (table, column % name))
                conn.execute(_SQLITE_LIMIT_INDEX)
                conn.execute(_SQLITE_EXPIRE_INDEX)
                if not self._memory:
                    self._lock_fd = os.open(self._file + '-lock', os.O_RDWR | os.O_CREAT, 0o644)
            except (sqlite3.Error, OSError) as exc:
                if conn is not None:
                    conn.close()
                raise self._error(exc) from exc
            self._conn, self._pid = conn, os.getpid()
            return conn

    def _transaction(self, work, write=True):
        """``work(conn)`` inside one transaction (``BEGIN IMMEDIATE`` to write);
        its result."""
        import sqlite3
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._connect()
        locked = write and not self._memory
        with self._lock:
            if locked:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_EX)
            try:
                try:
                    conn.execute('BEGIN IMMEDIATE' if write else 'BEGIN')
                    out = work(conn)
                    conn.execute('COMMIT')
                except BaseException:
                    if conn.in_transaction:
                        try:
                            conn.execute('ROLLBACK')
                        except sqlite3.Error:
                            pass
                    raise
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            finally:
                if locked:
                    fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)
            if write:
                self._writes += 1
                if self._writes % self.CHECKPOINT_WRITES == 0:
                    with contextlib.suppress(sqlite3.Error):    # the steps are committed
                        conn.execute('PRAGMA wal_checkpoint(PASSIVE)')
        return out

    def _execute(self, queue, steps):
        def work(conn):
            batch = _SqliteSteps(conn, queue, time.time())
            out = batch.run(steps)
            batch.save_counts()
            return batch, out
        write = not all(s[0] in _READ_STEPS or (s[0] == 'info' and not s[2]) for s in steps)
        batch, out = self._transaction(work, write)
        if self._memory:
            return out
        if batch.wake or batch.cancels or batch.pausing:
            self._notify(self._paths(queue), [b'1'] * batch.wake + [b'p'] * batch.pausing + [
                b'c:' + job_id.encode() for job_id in batch.cancels])
        if batch.ended:
            self._notify(batch.ended, [b'e'])
        return out

    def _fleet(self, op, entry, info, ttl):
        def work(conn):
            now = time.time()
            if op == 'read':    # writes nothing: a --read-only dashboard reads the fleet
                return now, conn.execute('SELECT id, info, expires FROM mpq_fleet WHERE '
                                         'expires > ? ORDER BY expires', (now,)).fetchall()
            conn.execute('DELETE FROM mpq_fleet WHERE expires <= ?', (now,))
            if op == 'beat':
                conn.execute('INSERT OR REPLACE INTO mpq_fleet (id, info, expires) '
                             'VALUES (?, ?, ?)', (entry, info, now + ttl))
            else:
                conn.execute('DELETE FROM mpq_fleet WHERE id = ?', (entry,))
        return self._transaction(work, write=op != 'read')

    # -- wake-ups --------------------------------------------------------------

    def _paths(self, queue):
        return _sqlite_wake_paths(self._file, queue)

    def _notify(self, paths, messages):
        """Datagrams to whoever listens on ``paths``; nobody listening is fine."""
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            for path in paths:
                for message in messages:
                    try:
                        self._sender.sendto(message, path)
                    except OSError:
                        break
        except OSError:
            pass

    def waker(self, queue):
        return _SqliteSocket(self._paths(queue), self.path, queue)

    def watch(self, queue):
        import tempfile
        return _SqliteSocket([os.path.join(tempfile.gettempdir(), 'mpq-wait-%d-%06x' % (
            os.getpid(), random.getrandbits(24)))], self.path, queue)

    def close(self):
        if self._pid == os.getpid():
            if self._conn is not None:
                self._conn.close()
        elif self._conn is not None:
            # a parent's connection: closing it here could disturb the parent's locks
            SqliteDriver._inherited.append(self._conn)
        if self._sender is not None:
            self._sender.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)     # (a parent's holds no lock of this process)
        self._conn = self._sender = self._pid = self._lock_fd = None


###############################################################################
# Runtime: worker
###############################################################################

# The processes of a pool talk through socketpairs (_Channel), in messages:
# tuples of a name and its fields, handled by the receiver's `_on_<name>`.
#
#   master -> worker  ('job', job, queued_at)   run the job (a dict of
#                                               _WORK_FIELDS); queued_at: the
#                                               time it was queued behind
#                                               another, None if not
#                     ('cancel', job_id)        coroutine worker: cancel its task
#                     ('wake',)                 grab model: look for jobs again
#                     ('stop',)                 exit when idle
#   worker -> master  ('ready',)                booted (its start hooks returned)
#                     ('boot_error', text)      its start hook raised: it exits next
#                     ('begun', job_id)         it started the job queued in its pipe
#                     ('skipped', job_id)       it did not: the job waited too long
#                     ('outcome', step, exit_code, begun)  a job ended: the step that
#                                               records it; exit_code when it exits
#                                               next; begun: 'begun'/'skipped' of
#                                               the job queued behind it, or None
#                     ('run', job_id, attempt, timeout, handlers)  grab model: it runs a
#                                               job (or its fail handlers)
#                     ('ran', job_id, exit_code)    grab model: its outcome is stored
#                     ('idle',)                 grab model: it found nothing to do
#   manage -> master  ('stop', how), ('reload',), ('status',)
#   master -> manage  ('ready',), ('status', rows), ('boot_failed', queue, why)

_LENGTH = struct.Struct('!I')


# Pays: drain 9,400 jobs/s against 7,100 with multiprocessing.connection's
# Connection on the socketpair (python examples/benchmark.py --driver sqlite
# --only drain --jobs 10000; medians of 7 interleaved runs each, 2026-12-07).
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

    def send(self, *msg):
        self.send_all([msg])

    def send_all(self, msgs):
        """Send several messages in one system call."""
        frames = []
        for msg in msgs:
            data = pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
            frames += (_LENGTH.pack(len(data)), data)
        self.sock.sendall(b''.join(frames))

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


def _dispatch_messages(receiver, messages, *context):
    """Hand each message to ``receiver._on_<name>(*context, *fields)``."""
    for msg in messages:
        getattr(receiver, '_on_' + msg[0])(*context, *msg[1:])


def _load(job, secret):
    """The callable of a job record, its arguments and its Job object (or None)."""
    pushed, args, kwargs = _decode(job['payload'], secret)
    func, job_obj = _resolve(pushed)
    return func, args, kwargs, job_obj


def _keep_result(job, value, basics):
    """``(result, result_repr, result_note)`` of a done step: nothing unless
    the job keeps its outcome (result_ttl, or children pushed before it was
    handed out); else its value pickled and signed like a payload, and its
    repr, for those who must not unpickle it."""
    if not job.get('result_ttl') and not job.get('has_children'):
        return '', '', ''
    try:
        text = repr(value)
    except Exception as exc:
        text = '<repr() raised %s>' % type(exc).__name__
    text = text if len(text) <= RESULT_REPR_MAX else text[:RESULT_REPR_MAX - 3] + '...'
    try:
        data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return '', text, 'its result cannot be pickled: %s: %s' % (type(exc).__name__, exc)
    if len(data) > basics['max_payload']:
        return '', text, 'its result is %d bytes, over basics.max_payload (%d)' % (
            len(data), basics['max_payload'])
    return _seal(data, basics['secret']), text, ''


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


def _timeout_error(timeout, handlers=False):
    if handlers:
        return 'its fail handlers ran past the timeout of %gs and were stopped' % timeout
    return 'job ran past its timeout of %gs and was stopped' % timeout


def _format_exc(exc, chain=True):
    return ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__,
                                              chain=chain)).rstrip()


def _hint(exc, loading=False):
    """A last line for an error that a web framework raises when a job runs
    without what it needs in a worker, or (``loading`` the job) for a job
    whose code the worker does not have, saying what to do ('' for others)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name, text = type(exc).__name__, str(exc)
        if loading and isinstance(exc, (AttributeError, ImportError)):
            return ('\nhint: this worker does not have the code the job names: workers run the '
                    'code they loaded when they started; after adding or changing job code, '
                    'run "mpqueue worker:reload" (each worker loads the new code after its '
                    'current job) before pushing jobs that use it')
        if name == 'AttributeError' and "'NoneType' object has no attribute 'app_context'" in text:
            return ('\nhint: the job\'s Flask app is None in this worker: nothing built it; set '
                    'basics.worker_start_handle to a function that builds the app (such as '
                    'boot_flask in docs/django-flask.md, which calls jobs.init_worker())')
        if name == 'AppRegistryNotReady' or (name == 'ImproperlyConfigured'
                                             and 'settings are not configured' in text):
            return ('\nhint: %s: Django is not set up in this worker; set '
                    'basics.worker_start_handle to a function that sets DJANGO_SETTINGS_MODULE '
                    'and calls django.setup()' % name)
        if 'outside of application context' in text:
            return ('\nhint: the job uses Flask outside an app context; build the app once per '
                    'worker in basics.worker_start_handle and run the job\'s code inside '
                    '"with app.app_context():"')
        if 'outside of request context' in text:
            return ('\nhint: a job runs outside any request; read what it needs from the '
                    'request in the view and pass it to the job as arguments')
        exc = exc.__cause__ or exc.__context__
    return ''


def _describe_call(job, args, kwargs):
    parts = [repr(a) for a in args] + ['%s=%r' % kv for kv in kwargs.items()]
    if isinstance(job, functools.partial):
        parts = [repr(a) for a in job.args] + ['%s=%r' % kv for kv in job.keywords.items()] + parts
    text = '%s(%s)' % (_job_name(job), ', '.join(parts))
    return text if len(text) <= 200 else text[:197] + '...'


_inherited_connections = []     # database connections of the process that forked: kept, unused


def _drop_inherited_connections():
    """A worker forked from a process that used Django's database (a
    management command that ran a query, then started the pool) shares that
    connection's socket with it and with every other worker, and processes
    talking on one connection break it for all of them.  Make Django forget
    such connections without a word to the server (closing one would end its
    session for every process that shares it): the worker opens its own at
    its first query.  Nothing to do where Django was not imported."""
    handler = getattr(sys.modules.get('django.db'), 'connections', None)
    if handler is None:
        return
    try:
        try:
            wrappers = handler.all(initialized_only=True)
        except TypeError:               # Django before 4.1
            wrappers = handler.all()
        for wrapper in wrappers:
            if getattr(wrapper, 'connection', None) is not None:
                _inherited_connections.append(wrapper.connection)   # never closed here
                wrapper.connection = None
    except Exception:       # a Django we do not know: the start hook is the user's
        logger.exception('worker %d: could not drop the Django connections inherited from the '
                         'process that started the pool', os.getpid())


class _RunningJob:
    """A job whose body runs here (``with _RunningJob(...):`` around it): the
    job of ``current_job()``, and its progress report on the way to the
    broker.  A report is written at once unless the last write was less than
    PROGRESS_INTERVAL ago; then it waits, replaced by any newer one, for the
    timer thread (``_write_due_progress``) or the body's end.  Writes hold
    _progress_lock, so none overtakes a newer one, and none comes after the
    body's end (the step that records the outcome comes after it)."""

    __slots__ = ('queue', 'job', 'driver', 'parent', 'pending', 'written', 'ended')

    def __init__(self, queue, job, driver):
        self.queue, self.job, self.driver = queue, job, driver
        self.parent = _running_job.get()    # the job this one runs inside of (immediate mode)
        self.pending = None         # (progress or '', meta as JSON) not written yet
        self.written = float('-inf')        # time.monotonic() of the last write
        self.ended = False

    def __enter__(self):
        _running_job.set(self)

    def __exit__(self, *exc_info):
        with _progress_lock:
            if self.pending is not None:
                self.write()
            self.ended = True
            _progress_waiting.discard(self)
        _running_job.set(self.parent)

    def write(self):
        (value, meta), self.pending = self.pending, None
        self.written = time.monotonic()
        try:
            self.driver.run(self.queue, 'progress', self.job['id'], self.job['attempt'], value,
                            meta)
        except DriverError as exc:      # a report is no outcome: the job goes on
            logger.warning('job %s of queue %r: a progress report was not written: %s',
                           self.job['id'], self.queue, exc)


_running_job = contextvars.ContextVar('mpqueue_running_job', default=None)
_progress_lock = threading.Condition()
_progress_waiting = set()   # running jobs whose report waits for the timer thread
_progress_timer = None      # that thread, once started (in this process: see progress())


def _current_job():
    """The job whose body runs in this thread or task, or None.  (A body that
    ended in another context, a coroutine's task, leaves its job here: the
    job it ran inside of, if any, is the one running.)"""
    running = _running_job.get()
    while running is not None and running.ended:
        running = running.parent
    return running


def _write_due_progress():
    """The timer thread: writes each waiting report once its interval has
    passed.  Started by the first report that waits, it stays, idle between
    reports (with its own connection to a Redis broker)."""
    with _progress_lock:
        while True:
            now, wait = time.monotonic(), None
            for running in list(_progress_waiting):
                due = running.written + PROGRESS_INTERVAL
                if running.pending is not None and now < due:
                    wait = due - now if wait is None else min(wait, due - now)
                    continue
                if running.pending is not None:
                    running.write()
                _progress_waiting.discard(running)
            _progress_lock.wait(wait)


class _Worker:
    """A worker process: runs the jobs its master hands it (distribute model)
    or pops them itself (grab model), one at a time, or up to the queue's
    ``coroutine_number`` at once on its event loop."""

    def __init__(self, config, qconf, conn, owner, generation):
        self.config, self.qconf, self.conn = config, qconf, conn
        self.queue = qconf['name']
        self.owner, self.generation = owner, generation
        self.driver = config['basics']['driver']
        self.busy = self.stopping = False
        self.loop = self.id = self.finished = None
        self.tasks = {}             # coroutine workers: job id -> its asyncio task
        self.cancelled = set()      # coroutine workers: ids whose task a cancel stopped
        self.exit_code = EXIT_OK

    def run(self):
        self.id = '%s:%d' % (_HOST, os.getpid())
        _set_title('mpq:%s:worker' % self.queue)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.generation:
            _forget_user_modules()
        _drop_inherited_connections()
        try:
            for hook in (self.config['basics']['worker_start_handle'],
                         self.qconf['worker_start_handle']):
                if hook is not None:
                    hook()
        except BaseException as exc:
            logger.exception('worker %s of queue %r: a worker_start_handle raised; exiting',
                             self.id, self.queue)
            # the master passes it on to a `worker:start -d` that waits
            with contextlib.suppress(OSError):
                self.conn.send('boot_error', ' '.join(''.join(
                    traceback.format_exception_only(type(exc), exc)).split()))
            return EXIT_BOOT_ERROR
        logger.info('worker %s of queue %r started', self.id, self.queue)
        try:
            self.conn.send('ready')
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
        ahead = collections.deque()     # messages read before reporting the last job
        while True:
            msg = ahead.popleft() if ahead else self.conn.recv()
            if msg[0] == 'stop':
                return EXIT_OK
            _, job, queued_at = msg
            if queued_at is not None:           # a queued job, found while idle
                if time.monotonic() - queued_at > RESERVE_SECONDS * RESERVE_USE:
                    self.conn.send('skipped', job['id'])
                    continue
                self.conn.send('begun', job['id'])
            self.busy = True
            step = self._run(job)
            code = self._after_job()
            begun = None
            if code is None and not self.stopping:
                if not ahead and self.conn.poll(0):
                    ahead.extend(self.conn.recv_ready())
                if ahead and ahead[0][0] == 'job' and ahead[0][2] is not None:
                    _, job, queued_at = ahead.popleft()
                    if time.monotonic() - queued_at > RESERVE_SECONDS * RESERVE_USE:
                        begun = 'skipped'
                    else:
                        begun = 'begun'
                        ahead.appendleft(('job', job, None))
            self._report(step, code, begun)
            self.busy = False
            if code is not None:
                return code
            if self.stopping:
                return EXIT_OK

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
        _dispatch_messages(self, messages)

    def _on_job(self, job, queued_at):
        import asyncio
        self.tasks[job['id']] = asyncio.get_running_loop().create_task(self._job_task(job))

    def _on_cancel(self, job_id):
        task = self.tasks.get(job_id)
        if task is not None:
            self.cancelled.add(job_id)
            task.cancel()

    def _stop_when_idle(self, code=None):
        self.stopping = True
        if code is not None:
            self.exit_code = code
        if not self.tasks and not self.finished.done():
            self.finished.set_result(self.exit_code)

    _on_stop = _stop_when_idle      # the master's ('stop',)

    async def _job_task(self, job):
        import asyncio
        job_id, timeout = job['id'], job.get('timeout') or 0
        timer = None
        if timeout:
            timer = asyncio.get_running_loop().call_later(timeout, self.tasks[job_id].cancel)
        try:
            steps = self._attempt(job)
            step = await self._drive(steps, _resume(steps))
        except asyncio.CancelledError:      # the job's timer, or a cancel
            if job_id in self.cancelled:
                self.cancelled.discard(job_id)
                step = ('lost', job_id, job['attempt'], 'cancelled while running', 0)
            else:
                logger.error('job %s of queue %r ran past its timeout of %ss; cancelled',
                             job_id, self.queue, timeout)
                step = ('lost', job_id, job['attempt'],
                        _timeout_error(timeout, job.get('phase') == _PHASE_HANDLERS), 1)
        finally:
            if timer is not None:
                timer.cancel()
        del self.tasks[job_id]
        code = self._after_job()
        try:
            self._report(step, code)
        except EOFError:
            code = EXIT_OK
        if code is not None or self.stopping:
            self._stop_when_idle(code)

    def _report(self, step, code, begun=None):
        """Tell the master how the job ended (and whether the job queued behind
        it has begun); if the master is gone, write the outcome to the broker
        directly so nothing is lost."""
        try:
            self.conn.send('outcome', step, code, begun)
        except OSError:
            self._execute([step])
            raise EOFError() from None

    def _grab_loop(self):
        """Pop, run, repeat.  A job's outcome is recorded in the same broker
        call that pops the next job: one round trip per job."""
        step = None
        while True:
            if self.stopping:
                if step is not None:
                    self._execute([step])
                    self.conn.send('ran', step[1], None)
                return EXIT_OK
            self.busy = True
            got = self._execute(([step] if step else []) + [('pop', 1, self.id, self.owner)])[-1]
            if step is not None:
                self.conn.send('ran', step[1], None)
                step = None
            if not got:
                if self.stopping:
                    return EXIT_OK
                self.busy = False
                self.conn.send('idle')
                if self.conn.recv()[0] == 'stop':       # else 'wake'
                    return EXIT_OK
                continue
            job = got[0]
            self.conn.send('run', job['id'], job['attempt'], job.get('timeout') or 0,
                           job.get('phase') == _PHASE_HANDLERS)
            step = self._run(job)
            code = self._after_job()
            if code is not None:
                self._execute([step])
                self.conn.send('ran', job['id'], code)
                return code

    def _execute(self, steps):
        """Run broker steps, waiting out a broker outage with back-off (one
        log line per outage): a finished job's outcome is never dropped."""
        failures, down_since = 0, None
        while True:
            try:
                out = self.driver.execute(self.queue, steps)
            except DriverError as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    logger.error('worker %s of queue %r: %s; retrying with back-off',
                                 self.id, self.queue, exc)
                failures += 1
                time.sleep(_doubled_wait(failures))
                continue
            if down_since is not None:
                logger.info('worker %s of queue %r: the broker answers again after %.1fs',
                            self.id, self.queue, time.monotonic() - down_since)
            return out

    def _after_job(self):
        limit = self.qconf['memory_limit']
        if limit:       # the peak RSS: one system call, not a file to read per job
            import resource
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            if rss > limit:
                logger.info('worker %s of queue %r is over memory_limit (%.0f MB > %s MB); '
                            'exiting to be replaced', self.id, self.queue, rss, limit)
                return EXIT_MEMORY
        return None

    # -- running one job -----------------------------------------------------

    def _job_info(self, job, name=None):
        """The ``job_info`` its fail handlers get: job_info()'s, as the
        worker knows it."""
        return dict(_public_info(self.queue, job), worker_id=job.get('worker_id') or self.id,
                    job=name or job.get('job', ''), error_info=list(job.get('error_info') or []))

    def _run(self, job):
        """Run one job (or its fail handlers); return the step that records the
        outcome: ``('done', ...)``, ``('retry', ...)`` or ``('fail', ...)``."""
        steps = self._attempt(job)
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

    def _attempt(self, job):
        """The steps of one attempt, as a generator that yields what the job
        awaits and returns the step recording the outcome."""
        job_id, attempt = job['id'], job['attempt']
        if job.get('phase') == _PHASE_HANDLERS:
            return (yield from self._run_fail_handlers_only(job))
        secret = self.config['basics']['secret']
        try:
            func, args, kwargs, job_obj = _load(job, secret)
        except BaseException as exc:
            text = _format_exc(exc) + _hint(exc, loading=True)
            logger.error('job %s (%s) of queue %r cannot be loaded; it goes to the failed '
                         'list:\n%s', job_id, job.get('job'), self.queue, text)
            errors = [text] + (yield from self._fail_handlers(None, self._job_info(job), exc,
                                                              [text]))
            return ('fail', job_id, attempt, TYPE_NORMAL, json.dumps(errors), '')
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('job %s of queue %r started (attempt %s)', job_id, self.queue,
                         job.get('exec_number'))
        try:
            with _RunningJob(self.queue, job, self.driver):
                value = func(*args, **kwargs)
                if _isawaitable(value):
                    value = yield value
        except BaseException as exc:
            text = _format_exc(exc) + _hint(exc)
            name = _describe_call(func, args, kwargs)
            tried, fail_number = job.get('exec_number') or 1, job.get('fail_number') or 0
            if tried <= fail_number and _retried(job_obj, exc):
                delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None else \
                    _retry_delay(job.get('fail_expire'), tried)
                logger.warning('job %s (%s) of queue %r failed (attempt %s of %s); retrying in '
                               '%ss:\n%s', job_id, name, self.queue, tried, fail_number + 1,
                               _seconds_text(delay), text)
                text += '\n(attempt %d of %d; retried after %ss)' % (
                    tried, fail_number + 1, _seconds_text(delay))
                return ('retry', job_id, attempt, delay, text)
            logger.error('job %s (%s) of queue %r failed for good after %s attempts:\n%s',
                         job_id, name, self.queue, tried, text)
            info = self._job_info(job, name)
            info['error_info'].append(text)
            errors = [text] + (yield from self._fail_handlers(job_obj, info, exc,
                                                              info['error_info']))
            return ('fail', job_id, attempt, TYPE_NORMAL, json.dumps(errors), name)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('job %s of queue %r done', job_id, self.queue)
        return ('done', job_id, attempt) + _keep_result(job, value, self.config['basics'])

    def _run_fail_handlers_only(self, job):
        """The job timed out or its worker died for the last time: another
        worker (this one) runs its fail handlers, then files it as failed."""
        last = (job.get('error_info') or ['job failed'])[-1]
        exc = TimeoutError(last) if job.get('type') == TYPE_TIMEOUT else RuntimeError(last)
        job_obj, name, errors = None, job.get('job', ''), []
        try:
            func, args, kwargs, job_obj = _load(job, self.config['basics']['secret'])
            name = _describe_call(func, args, kwargs)
        except BaseException as load_exc:
            errors.append(_format_exc(load_exc) + _hint(load_exc, loading=True))
        logger.error('job %s (%s) of queue %r failed for good: %s', job['id'], name, self.queue,
                     last)
        info = self._job_info(job, name)
        errors += yield from self._fail_handlers(job_obj, info, exc, info['error_info'] + errors)
        return ('fail', job['id'], job['attempt'], job.get('type') or TYPE_NORMAL,
                json.dumps(errors), name)

    def _fail_handlers(self, job_obj, info, exc, error_info):
        """Run ``Job.fail_handle`` then, unless it returned something other than
        False, the queue's ``fail_handle``.  Returns the handlers' own errors
        (a generator like ``_attempt``: it yields what the handlers await)."""
        errors = []
        for handler, whose in ((job_obj and job_obj.fail_handle, 'of the job'),
                               (self.qconf['fail_handle'], 'of queue %r' % self.queue)):
            if handler is None:
                continue
            info['error_info'] = list(error_info) + errors
            try:
                returned = handler(info, exc)
                if _isawaitable(returned):
                    returned = yield returned
            except BaseException as handler_exc:
                errors.append('fail_handle %s raised: %s'
                              % (whose, _format_exc(handler_exc, False)))
                logger.error('job %s: the fail_handle %s raised:\n%s', info['id'], whose,
                             errors[-1])
            else:
                if whose == 'of the job' and returned is not False:
                    break       # the job's handler returned something: the queue's is skipped
        return errors

    def _event_loop(self):
        if self.loop is None:
            import asyncio
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        return self.loop


def _die_with_parent(parent_pid):
    """Ask Linux to SIGKILL this process when its parent dies
    (PR_SET_PDEATHSIG): a worker must not run on unsupervised after its master
    died, since that master's jobs are put back at once."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # 1: PR_SET_PDEATHSIG
    except (ImportError, OSError, AttributeError):
        return
    if os.getppid() != parent_pid:      # it died before we asked
        os._exit(EXIT_ORPHANED)


def _whole_lines():
    """Make each line a job prints reach stdout and stderr in one write().

    The workers of a pool share its stdout and stderr: the terminal, or the
    ``{name}.out`` of -d, opened with O_APPEND, so each write() lands whole.
    Unbuffered (PYTHONUNBUFFERED) print() writes its pieces one by one, and
    block-buffered output goes out in 8 KB chunks cut anywhere: either way
    the lines of workers printing at once got mixed.  Line buffering writes
    what a job printed at each newline (a line longer than the 8 KB buffer
    may still be cut)."""
    for stream in (sys.stdout, sys.stderr):
        # AttributeError, ValueError, OSError: replaced by the user, or closed
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(line_buffering=True, write_through=False)


#: True in a worker of a pool: everything it runs belongs to a job, so
#: ``result()`` there refuses to wait without a timeout.
_in_worker = False


def _worker_main(config, qconf, conn, close_fds, owner, generation, parent_pid):
    global _in_worker
    _in_worker = True
    _die_with_parent(parent_pid)
    _child_init(close_fds)
    _whole_lines()
    return _Worker(config, qconf, conn, owner, generation).run()


###############################################################################
# Runtime: master
###############################################################################

# The states of a worker, as its master sees them:
BOOTING = 'booting'      # forked; its start hooks run
IDLE = 'idle'            # ready for a job (grab model: found no job, waits for a wake)
BUSY = 'busy'            # runs jobs (grab model: pops and runs them by itself)
STOPPING = 'stopping'    # told to stop, or exits by itself after its job

_Run = collections.namedtuple('_Run', 'attempt timeout handlers began deadline')


class _Slot:
    """What a master knows about one of its workers."""

    __slots__ = ('pid', 'id', 'conn', 'capacity', 'state', 'jobs', 'queued', 'started', 'done',
                 'killed_for', 'killed_job', 'woken_at')

    def __init__(self, pid, conn, capacity):
        self.pid, self.conn, self.capacity = pid, conn, capacity   # capacity: coroutine_number
        self.id = '%s:%d' % (_HOST, pid)          # its worker id
        self.state = BOOTING
        self.jobs = {}              # job id -> _Run, for the jobs it runs now
        self.queued = collections.deque()   # (job id, attempt, timeout, handlers) in its pipe
        self.started, self.done = time.time(), 0
        self.killed_for = None      # why the master killed it: 'timeout', 'cancel', 'stop'
        self.killed_job = None      # the job whose timeout or cancel got it killed
        self.woken_at = 0           # grab model: the wake count it last saw


class _Ticker:
    """A master's schedules: when each is due, the steps that tick it, and
    what their results say.  Every master of the queue, on every server,
    ticks them: the schedule step moves a schedule's last tick and pushes its
    job atomically, so one of them pushes each tick and the others find their
    idea of the last tick stale and take the broker's."""

    def __init__(self, config, qconf, pool_id):
        self.queue, self.pool_id = qconf['name'], pool_id
        self.entries = {s['name']: s for s in qconf['schedule']}
        self.last = None            # name -> last tick (ms) or None; None: not read yet
        self.clock = 0.0            # the broker's clock minus this server's
        self.pushes, self.warned = {}, set()
        self.overwrote = set()      # schedules whose other definition this master replaced
        basics = config['basics']
        for name, s in list(self.entries.items()):
            try:        # the push arguments after id, the same for every tick
                options = _push_options(s['job'], qconf, **{k: s[k] for k in _JOB_OPTIONS})
                self.pushes[name] = (
                    _encode(self.queue, s['job'], s['args'], s['kwargs'], basics['secret'],
                            basics['max_payload']), 0, _job_name(s['job']),
                    options['timeout'], options['fail_number'],
                    options['fail_expire'], options['priority'],
                    s['key'], s['unique'], options['result_ttl'], s['limits'], '', '',
                    options['expires'])
            except MPQueueError as exc:
                logger.error('schedule %r of queue %r cannot push its job: %s', name,
                             self.queue, exc)
                del self.entries[name]

    def due_in(self):
        """Seconds (this server's clock) until the next schedule is due, or None."""
        if not self.entries:
            return None
        if self.last is None:
            return 0.0
        now = time.time() + self.clock
        return max(0.0, min(self._next(name) - now for name in self.entries))

    def _next(self, name):
        last = self.last.get(name)
        return 0.0 if last is None else self.entries[name]['when'].next_after(last / 1000.0)

    def steps(self):
        """The steps that tick every schedule now due."""
        if self.last is None:
            return [('schedules',)] if self.entries else []
        now, out = time.time() + self.clock, []
        for name, s in self.entries.items():
            last = self.last.get(name)
            if now < self._next(name):
                continue
            ticks, new_last, dropped = s['when'].due(None if last is None else last / 1000.0,
                                                      now)
            if dropped:
                logger.warning('schedule %r of queue %r missed %d ticks more than catch_up '
                               '"all" pushes (%d): they are skipped', name, self.queue, dropped,
                               SCHEDULE_CATCH_UP_MAX)
            expected = '' if last is None else str(last)
            for tick in ticks:
                out.append(('schedule', name, s['when'].fingerprint, expected, _tick_ms(tick),
                            self.pool_id, _schedule_job_id(self.queue, name, tick))
                           + self.pushes[name])
                expected = str(_tick_ms(tick))
            if not ticks and _tick_ms(new_last) != last:
                out.append(('schedule', name, s['when'].fingerprint, expected,
                            _tick_ms(new_last), self.pool_id, '') + _NO_PUSH)
        return out

    def results(self, steps, results, broker_now, local_now):
        """Take what the schedule steps say; ``local_now``: this server's time
        when the broker read ``broker_now`` (the middle of the round trip)."""
        self.clock = broker_now - local_now
        for step, answer in zip(steps, results):
            if step[0] == 'schedules':
                self.last = {r['name']: r['last'] for r in answer}
                continue
            _, name, fp, _, tick = step[:5]
            what, before_last, before_fp, before_owner = answer
            if what == 'stale':
                self.last[name] = int(before_last) if before_last else None
                continue
            if what == 'early':
                continue
            self.last[name] = tick
            if what == 'skipped':
                logger.info('schedule %r of queue %r skipped a tick: the job holding its key '
                            '%r is still waiting or running (unique=%r)', name, self.queue,
                            self.entries[name]['key'], self.entries[name]['unique'])
            if not before_fp or before_fp == fp or before_owner == self.pool_id:
                continue
            # Once is a changed config replacing what a stopped pool left; twice, turns.
            if name in self.overwrote and name not in self.warned:
                self.warned.add(name)
                logger.warning('schedule %r of queue %r is defined otherwise by pool %s '
                               '(fingerprint %s, this pool %s): the pools take turns with two '
                               'definitions; give them one config', name, self.queue,
                               before_owner, before_fp, fp)
            self.overwrote.add(name)


def _foreign(pools, app, queues):
    """The pools of ``pools`` (``fleet()`` dicts) whose application is not
    ``app`` and that serve one of ``queues``, each with ``shared``.  Pools
    of a version that published no application are left out."""
    out = []
    for pool in pools:
        shared = sorted(set(pool.get('queues') or ()) & set(queues))
        if shared and app and pool.get('app') and pool['app'] != app:
            out.append(dict(pool, shared=shared))
    return out


def _foreign_warning(pool, driver):
    if isinstance(driver, RedisDriver):
        where = '%s, prefix %r' % (driver.address, driver.prefix)
        fix = "a key prefix of its own: RedisDriver(..., prefix='myapp')"
    else:
        where = driver.address
        fix = 'a SQLite file of its own: its own basics.pid_path, or SqliteDriver(path)'
    return ('queue%s %s also served by pool %r of another application on this broker (%s): '
            'host %s, pid %s, app %s (basics.app: by default the directory of its config); '
            'each pool may run the other\'s jobs. Give each application %s; if both are one '
            'application, give them the same basics.app' % (
                's' if len(pool['shared']) > 1 else '',
                ', '.join(repr(q) for q in pool['shared']) + (
                    ' are' if len(pool['shared']) > 1 else ' is'),
                pool.get('name'), where, pool.get('host'), pool.get('pid'), pool.get('app'),
                fix))


class _Master:
    """One per queue: watches the broker, hands jobs to idle workers, enforces
    timeouts, renews leases and recovers jobs, in one ``selectors`` loop."""

    def __init__(self, config, qconf, control, pool, recover):
        self.config, self.qconf, self.control, self.pool = config, qconf, control, pool
        self.queue = qconf['name']
        self.driver = config['basics']['driver']
        self.grab = qconf['model'] == MODEL_GRAB
        self.slots = {}                 # pid -> _Slot
        self.generation = 0             # bumped by each reload
        self.reloading = set()          # pids to replace once idle
        self.restarts, self.ready_sent = _Restarts(), False
        self.boot_error = None          # what the start hook of the last worker raised
        # broker steps waiting for the next round trip: a dead master's jobs first
        self.pending = [('recover', owner) for owner in recover]
        self.pending_since = 0.0
        self.buffer = collections.deque()   # reserved jobs not handed out yet: (job, at)
        self.avg_job = None             # moving average of the jobs' run time (s)
        self.maybe_work, self.wakes = True, 0   # wakes: pushes seen (grab: wake again)
        self.next_sweep = self.next_renew = self.next_beat = 0.0
        self.waker, self.waker_retry = None, 0.0
        self.failures, self.down_since, self.beat_failing = 0, None, False
        self.neighbours_checked = False     # other applications' pools on this queue: looked
        self.stopping = self.stop_deadline = None   # stopping: 'graceful' or 'fast'
        self.owner, self.started, self.done = None, time.time(), 0
        self.ticker = _Ticker(config, qconf, pool['id'])

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
                _reap(self._worker_exited)
                self._check_deadlines()
                self._flush()
                self._beat()
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
            self.next_sweep = 0.0
            self._flush()
            if self.pending:
                time.sleep(_doubled_wait(self.failures))
        if self.pending:
            logger.error('master of queue %r exits with %d unrecorded step(s); their jobs are '
                         'recovered when their leases expire', self.queue, len(self.pending))
        with contextlib.suppress(DriverError):
            self.driver.forget(self.pool['id'], self.queue)

    def _timeout(self):
        now = time.monotonic()
        if self.pending and self.down_since is None:
            if not self.pending_since:
                self.pending_since = now
            return max(0.0, self.pending_since + FLUSH_DELAY - now)
        when = [self.next_sweep, self.next_beat]
        scheduled = self.ticker.due_in()
        if scheduled is not None and not self.stopping:
            when.append(now + scheduled)
        if len(self.slots) < self._target():
            when.append(self.restarts.after)
        if any(s.jobs for s in self.slots.values()):
            when.append(self.next_renew)
        when += [run.deadline for s in self.slots.values() for run in s.jobs.values()
                 if run.deadline is not None]
        if self.stop_deadline is not None:
            when.append(self.stop_deadline)
        if self.waker is None:
            when.append(self.waker_retry)
        return max(0.0, min(when) - now)

    def _target(self):
        return 0 if self.stopping else self.qconf['worker_number']

    def _wait(self, timeout):
        """Wait for events and handle them; while more arrive at once and the
        buffer can serve them, keep going before the next broker round trip,
        so that one round trip records the outcome of many jobs."""
        self._ensure_waker()
        # The selector sleeps whole milliseconds, rounded up: wake a millisecond
        # early and sleep the rest, so a schedule's tick or a delayed job is not 1-2 ms late.
        until = time.monotonic() + timeout
        events = self.sel.select(max(0.0, timeout - 0.001))
        if not events and timeout > 0:
            time.sleep(max(0.0, until - time.monotonic()))
        for _ in range(32):
            if not events:
                return
            for key, _ in events:
                self._handle(key)
            if not self.buffer or len(self.pending) >= FLUSH_STEPS:
                return
            events = self.sel.select(0)

    def _handle(self, key):
        tag = key.data
        if isinstance(tag, _Slot):
            try:
                messages = tag.conn.recv_ready()
            except (EOFError, OSError):
                _unregister(self.sel, tag.conn)
                return
            _dispatch_messages(self, messages, tag)
        elif tag == 'waker':
            try:
                cancelled, paused = self.waker.drain()
                if self.waker.fileno() != key.fd:
                    raise DriverError('the broker connection was replaced')
            except DriverError as exc:
                self._drop_waker(exc)
                return
            self.wakes += 1
            self.maybe_work, self.next_sweep = True, 0.0
            for job_id in cancelled:
                self._cancel(job_id)
            if paused:
                self._put_back()
        elif tag == 'control':
            try:
                messages = self.control.recv_ready()
            except (EOFError, OSError):     # the manage process is gone: nobody would restart us
                _unregister(self.sel, self.control)
                logger.warning('master of queue %r: the manage process went away; stopping',
                               self.queue)
                messages = [('stop', 'graceful')]
            _dispatch_messages(self, messages)
        else:
            for signum in self.signals.drain():
                if signum == signal.SIGTERM:
                    self._on_stop('graceful' if not self.stopping else 'fast')
                elif signum == signal.SIGUSR1:
                    self._on_reload()

    def _ensure_waker(self):
        if self.waker is not None or self.stopping or time.monotonic() < self.waker_retry:
            return
        try:
            self.waker = self.driver.waker(self.queue)
            self.sel.register(self.waker.fileno(), selectors.EVENT_READ, 'waker')
            self.next_sweep = 0.0
        except DriverError as exc:
            self._drop_waker(exc)

    def _drop_waker(self, exc):
        """The waker could not be made, or was lost: made again after a back-off."""
        for key in list(self.sel.get_map().values()):
            if key.data == 'waker':
                _unregister(self.sel, key.fileobj)
        if self.waker is not None:
            self.waker.close()
        self.waker = None
        self._broker_down(exc)
        self.waker_retry = time.monotonic() + _doubled_wait(self.failures, WAKER_RETRY_FIRST)

    # -- messages from the manage process ------------------------------------

    def _on_status(self):
        rows = [_process_row(self.queue, 'master', os.getpid(), 'stopping' if self.stopping
                             else 'running', None, self.done, self.started)]
        for s in self.slots.values():
            row = _process_row(self.queue, 'worker', s.pid, BUSY if s.state == BUSY else IDLE,
                               next(iter(s.jobs), None), s.done, s.started)
            if s.capacity > 1:
                row['coroutines'] = '%d/%d' % (len(s.jobs), s.capacity)    # busy / all
            rows.append(row)
        self.control.send('status', rows)

    def _on_stop(self, how):
        if self.stopping == 'fast':
            return
        self.stopping = how
        grace = self.config['basics']['stop_grace'] if how == 'graceful' else 0
        self.stop_deadline = time.monotonic() + grace
        logger.info('master of queue %r stopping (%s); %d workers busy', self.queue, how,
                    sum(1 for s in self.slots.values() if s.state == BUSY))
        self._put_back()
        for slot in list(self.slots.values()):
            self._stop_worker(slot)

    def _on_reload(self):
        self.generation += 1
        logger.info('master of queue %r reloading: each worker is replaced after its job',
                    self.queue)
        self.reloading = set(self.slots)
        for slot in list(self.slots.values()):
            if slot.state != BUSY:
                self._stop_worker(slot)

    # -- workers -------------------------------------------------------------

    def _stop_worker(self, slot):
        """Ask a worker to exit: at once if idle, after its job if busy (or at
        once, killed, when stopping fast)."""
        if slot.state == STOPPING:
            return
        if slot.jobs or slot.queued:
            if self.stopping == 'fast':
                self._kill(slot, 'stop')
                return
            if not self.grab:
                return      # told once its job ends
        slot.state = STOPPING
        with contextlib.suppress(OSError):
            if self.grab:
                os.kill(slot.pid, signal.SIGTERM)
            else:
                slot.conn.send('stop')

    def _kill(self, slot, why, job_id=None):
        if slot.killed_for is None:
            slot.killed_for, slot.killed_job = why, job_id
        _kill([slot.pid])

    def _spawn_missing(self):
        now = time.monotonic()
        while len(self.slots) < self._target() and now >= self.restarts.after:
            parent_conn, child_conn = _Channel.pair()
            close_fds = [key.fd for key in self.sel.get_map().values()] + [parent_conn.fileno()]
            pid = _fork(_worker_main, self.config, self.qconf, child_conn, close_fds,
                        self.owner, self.generation, os.getpid())
            child_conn.close()
            slot = _Slot(pid, parent_conn, 1 if self.grab else self.qconf['coroutine_number'])
            self.slots[pid] = slot
            self.sel.register(parent_conn, selectors.EVENT_READ, slot)

    def _on_ready(self, slot):
        slot.state = BUSY if self.grab else IDLE
        if self.stopping or slot.pid in self.reloading:
            self._stop_worker(slot)
        if not self.ready_sent and len(self.slots) >= self.qconf['worker_number'] and \
                all(s.state != BOOTING for s in self.slots.values()):
            self.ready_sent = True
            with contextlib.suppress(OSError):
                self.control.send('ready')
        self._dispatch()

    def _on_boot_error(self, slot, text):   # its start hook raised; it exits next
        self.boot_error = text

    def _on_outcome(self, slot, step, exit_code, begun):
        self.pending.append(step)
        self._finished(slot, step[1], exit_code)
        if exit_code is not None:           # over memory_limit: it exits by itself
            slot.state = STOPPING
            self._requeue_queued(slot)      # it will never read those
        elif begun is not None:
            getattr(self, '_on_' + begun)(slot, slot.queued[0][0])
        else:
            self._idle(slot)

    def _on_begun(self, slot, job_id):
        job_id, attempt, timeout, handlers = slot.queued.popleft()
        self._running(slot, job_id, attempt, timeout, handlers)
        self.pending.append(('start', job_id, attempt, slot.id, self.owner))
        self._dispatch()

    def _on_skipped(self, slot, job_id):     # it waited too long: the broker takes it back
        slot.queued.popleft()
        if slot.state == BUSY and not slot.jobs and not slot.queued:
            slot.state = IDLE
        self._idle(slot)

    def _on_run(self, slot, job_id, attempt, timeout, handlers):    # grab: it popped a job
        self._running(slot, job_id, attempt, timeout, handlers)

    def _on_ran(self, slot, job_id, exit_code):     # grab model: it goes on by itself
        self._finished(slot, job_id, exit_code)
        if exit_code is not None:
            slot.state = STOPPING
        elif slot.state != STOPPING:
            slot.state = BUSY

    def _on_idle(self, slot):               # grab model: it found the queue empty
        slot.state = IDLE
        if self.stopping or slot.pid in self.reloading:
            self._stop_worker(slot)
        elif slot.woken_at != self.wakes:
            self._wake_grab(slot)           # a push came after this worker looked
        else:
            self.maybe_work = False

    def _finished(self, slot, job_id, exit_code):
        run = slot.jobs.pop(job_id, None)
        if run is not None:
            took = time.monotonic() - run.began
            self.avg_job = took if self.avg_job is None else 0.8 * self.avg_job + 0.2 * took
        slot.done += 1
        self.done += 1
        if slot.state == BUSY and not slot.jobs and not slot.queued and not self.grab:
            slot.state = IDLE

    def _idle(self, slot):
        if self.stopping or slot.pid in self.reloading:
            self._stop_worker(slot)
        else:
            self._dispatch()

    def _wake_grab(self, slot):
        slot.state, slot.woken_at = BUSY, self.wakes
        with contextlib.suppress(OSError):
            slot.conn.send('wake')

    def _put_back(self):
        """Put the jobs reserved but not handed out back at the head of the
        queue (it stops, or the queue was paused).  Those already queued in a
        busy worker's pipe still start: at most SHORT_JOB of work each."""
        while self.buffer:       # the last first: each goes to the head
            job = self.buffer.pop()[0]
            self.pending.append(('requeue', job['id'], job['attempt']))

    def _requeue_queued(self, slot):
        while slot.queued:
            job_id, attempt = slot.queued.popleft()[:2]
            self.pending.append(('requeue', job_id, attempt))

    def _worker_exited(self, pid, status):
        slot = self.slots.pop(pid, None)
        if slot is None:
            return
        _unregister(self.sel, slot.conn)
        # what it wrote before it died (a job it started, an outcome)
        with contextlib.suppress(EOFError, OSError):
            while True:
                _dispatch_messages(self, slot.conn.recv_ready(), slot)
        slot.conn.close()
        self.reloading.discard(pid)
        how = _describe_exit(status)
        self._requeue_queued(slot)      # handed but never started: back to the head
        for job_id, run in slot.jobs.items():
            if slot.killed_for == 'stop' or (slot.killed_for and job_id != slot.killed_job):
                self.pending.append(('requeue', job_id, run.attempt))
                logger.warning('worker %d of queue %r killed (%s); job %s goes back to the '
                               'queue', pid, self.queue, 'at stop' if slot.killed_for == 'stop'
                               else 'for job %s' % slot.killed_job, job_id)
                continue
            if slot.killed_for == 'timeout':
                error = _timeout_error(run.timeout, run.handlers)
                logger.warning('worker %d of queue %r was killed at the timeout of job %s; %s',
                               pid, self.queue, job_id, 'the job goes to the failed list'
                               if run.handlers else 'the job fails as a timeout, not retried')
            elif slot.killed_for == 'cancel':
                error = 'cancelled while running: worker %s:%d stopped' % (_HOST, pid)
                logger.info('job %s of queue %r was cancelled while running: worker %d stopped',
                            job_id, self.queue, pid)
            else:
                error = 'worker %s:%d %s while running the job' % (_HOST, pid, how)
                logger.error('worker %d of queue %r %s while running job %s; job recovered',
                             pid, self.queue, how, job_id)
            self.pending.append(('lost', job_id, run.attempt, error,
                                 int(slot.killed_for == 'timeout')))
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_ERROR or \
                slot.state == BOOTING and slot.killed_for is None:
            delay = self.restarts.failed()
            logger.error('worker %d of queue %r did not boot (%s%s); backing off %.1fs before '
                         'forking again (failure %d in a row)', pid, self.queue, how,
                         '' if slot.state != BOOTING else ', before it was ready', delay,
                         self.restarts.failures)
            with contextlib.suppress(OSError):  # a manage process starting as a daemon gives up
                self.control.send('boot_failed', self.queue, self.boot_error or how)
            self.boot_error = None
            return
        if slot.state != BOOTING:
            self.restarts.ok()
        reason = {'timeout': "was killed at its job's timeout",
                  'cancel': 'was killed: its job was cancelled',
                  'stop': 'was killed at the end of the stop grace period'}.get(
                      slot.killed_for, how)
        if slot.state == STOPPING and slot.killed_for is None:
            reason = 'stopped' + (' for a reload' if not self.stopping else '')
        logger.info('worker %d of queue %r %s%s', pid, self.queue, reason,
                    '' if self.stopping else '; starting a new one')

    def _check_deadlines(self):
        now = time.monotonic()
        for slot in list(self.slots.values()):
            for job_id, run in slot.jobs.items():
                if run.deadline is not None and now >= run.deadline and slot.killed_for is None:
                    logger.error('job %s of queue %r ran past its timeout; killing worker %d',
                                 job_id, self.queue, slot.pid)
                    self._kill(slot, 'timeout', job_id)
        if self.stop_deadline is not None and now >= self.stop_deadline:
            for slot in list(self.slots.values()):
                self._kill(slot, 'stop')

    def _cancel(self, job_id):
        """A started job was cancelled: stop it wherever it runs here."""
        for item in list(self.buffer):
            if item[0]['id'] == job_id:
                self.buffer.remove(item)        # the broker has already cancelled it
        for slot in self.slots.values():
            if job_id in slot.jobs and slot.capacity > 1:
                slot.conn.send('cancel', job_id)
            elif job_id in slot.jobs or any(queued[0] == job_id for queued in slot.queued):
                logger.info('job %s of queue %r was cancelled; killing worker %d', job_id,
                            self.queue, slot.pid)
                self._kill(slot, 'cancel', job_id)

    # -- the broker ----------------------------------------------------------

    def _broker_down(self, exc):
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.error('master of queue %r: %s; retrying with back-off until it answers',
                         self.queue, exc)

    def _flush(self):
        """One broker round trip: the outcomes and starts gathered so far, a
        sweep (promote / recover), lease renewals when due, and a reservation
        that refills the buffer."""
        now = time.monotonic()
        if self.down_since is not None and now < self.next_sweep:
            return
        while self.buffer and now - self.buffer[0][1] > RESERVE_SECONDS * RESERVE_USE:
            job = self.buffer.popleft()[0]      # not handed out in time: back to the head
            self.pending.append(('requeue', job['id'], job['attempt']))
        sweep = now >= self.next_sweep
        scheduled = self.ticker.steps() if not self.stopping and self.ticker.due_in() == 0 \
            else []
        # a periodic look (a wake-up may have been missed: broker away), or
        # ticks that push jobs this round trip can reserve at once
        if sweep or (scheduled and not self.grab):
            self.maybe_work = True
        want = 0
        if not self.stopping and self.maybe_work:
            if self.grab:
                for slot in [s for s in self.slots.values() if s.state == IDLE]:
                    self._wake_grab(slot)
            else:
                want = max(0, self._room() + self._prefetch() - len(self.buffer))
        renew = now >= self.next_renew and any(s.jobs for s in self.slots.values())
        if not (sweep or renew or scheduled or self._flush_due(now, want)):
            return
        steps, self.pending, self.pending_since = self.pending, [], 0.0
        renewed = [(job_id, run.attempt) for s in self.slots.values()
                   for job_id, run in s.jobs.items()] if renew else []
        n_outcomes = len(steps)
        steps += [('renew', job_id, attempt) for job_id, attempt in renewed] + scheduled
        # a sweep when one is due (its reply says when the next is), or a wake-up
        # asked for it; not every round trip: under load that was a third of
        # the broker's time per job.  Ticks need its broker time
        if sweep or scheduled:
            steps.append(('sweep', SWEEP_LIMIT))
        if want:
            steps.append(('reserve', want))
        sent = time.time()
        try:
            results = self.driver.execute(self.queue, steps)
        except DriverError as exc:
            self.pending = steps[:n_outcomes] + self.pending
            self._broker_down(exc)
            self.next_sweep = now + _doubled_wait(self.failures)
            return
        if self.down_since is not None:
            logger.info('master of queue %r: the broker answers again after %.1fs', self.queue,
                        now - self.down_since)
        self.failures, self.down_since = 0, None
        for step, n in zip(steps, results):
            if step[0] == 'recover' and n:
                logger.warning('%d job(s) of the dead master %s of queue %r went back to the '
                               'queue', n, step[1], self.queue)
        stale = [s for s, ok in zip(steps[:n_outcomes], results) if ok is False]
        if stale and logger.isEnabledFor(logging.DEBUG):
            logger.debug('master of queue %r: %d step(s) for attempts that are no longer '
                         'current changed nothing: %s', self.queue, len(stale),
                         ', '.join('%s %s' % s[:2] for s in stale))
        for (job_id, _), answer in zip(renewed, results[n_outcomes:]):
            if answer == 'cancel':
                self._cancel(job_id)
        if renew:
            self.next_renew = now + LEASE_SECONDS / 3
        if sweep or scheduled:
            due, broker_now = results[n_outcomes + len(renewed) + len(scheduled)]
            if scheduled:
                self.ticker.results(scheduled, results[n_outcomes + len(renewed):], broker_now,
                                    (sent + time.time()) / 2)
            self.next_sweep = now + min(self.qconf['sleep_seconds'],
                                        due if due is not None else 1e9)
            if due == 0:
                self.maybe_work = True
        if want:
            self.maybe_work = len(results[-1]) >= want
            self.buffer.extend((job, now) for job in results[-1])
            self._dispatch()

    def _flush_due(self, now, want):
        """Under load, gather steps for up to FLUSH_DELAY while the buffer still
        feeds every busy worker; otherwise (no worker busy: nothing more is
        coming) go to the broker now."""
        if want and len(self.buffer) < self._room():
            return True
        if not self.pending:
            return bool(want) and not self.buffer
        if not self.pending_since:
            self.pending_since = now
        if self.stopping or len(self.pending) >= FLUSH_STEPS or \
                now - self.pending_since >= FLUSH_DELAY:
            return True
        busy = sum(1 for s in self.slots.values() if s.state == BUSY)
        return not busy or len(self.buffer) < busy

    def _beat(self):
        """Publish this queue's part of the pool's heartbeat (the fleet), when
        due and the broker answers."""
        now = time.monotonic()
        if now < self.next_beat:
            return
        self.next_beat = now + HEARTBEAT_SECONDS
        if self.down_since is not None:
            return
        workers = [s for s in self.slots.values() if s.state != BOOTING]
        busy = sum(1 for s in workers if s.state == BUSY)
        info = {'pool': dict(self.pool, state='stopping' if self.stopping else 'running'),
                'queue': self.queue, 'master': os.getpid(), 'workers': len(workers),
                'busy': busy, 'idle': len(workers) - busy, 'done': self.done}
        try:
            self.driver.heartbeat(self.pool['id'], self.queue, info, HEARTBEAT_TTL)
        except DriverError as exc:
            if not self.beat_failing:
                logger.warning('master of queue %r could not publish its heartbeat (%s); trying '
                               'again every %ss', self.queue, exc, HEARTBEAT_SECONDS)
            self.beat_failing = True
            return
        self.beat_failing = False
        if not self.neighbours_checked:
            self._check_neighbours()

    def _check_neighbours(self):
        """Once, after this master's first heartbeat: warn when a pool of
        another application serves this queue on the same broker (each pool
        would run the other's jobs, with the wrong code and database).  Of
        two such pools starting together, at least the later one sees the
        other: each publishes before it reads."""
        try:
            pools = self.driver.fleet()
        except DriverError:
            return          # the next beat reports the broker
        self.neighbours_checked = True
        for pool in _foreign(pools, self.pool.get('app'), [self.queue]):
            logger.warning('%s', _foreign_warning(pool, self.driver))

    def _room(self, slot=None):
        """How many more jobs a worker (or all of them) can start right now."""
        if slot is None:
            return sum(self._room(s) for s in self.slots.values())
        if slot.state not in (IDLE, BUSY) or slot.queued or self.stopping \
                or slot.pid in self.reloading:
            return 0
        return slot.capacity - len(slot.jobs)

    def _depth(self):
        """How many jobs a busy worker holds in its pipe: as many as it runs in
        SHORT_JOB, while jobs are short; none otherwise."""
        if self.avg_job is None or self.avg_job > SHORT_JOB:
            return 0
        return min(QUEUED_MAX, max(1, int(SHORT_JOB / max(self.avg_job, 1e-6))))

    def _prefetch(self):
        """How many jobs to hold beyond the idle workers' needs: what the busy
        workers' pipes lack, so a worker that finishes gets its next job from
        its pipe at once instead of after a broker round trip."""
        depth = self._depth()
        return sum(max(0, depth - len(s.queued)) for s in self.slots.values()
                   if s.state == BUSY and s.capacity == 1)

    def _dispatch(self):
        """Hand buffered jobs to idle workers (their start steps go to the
        broker with the next round trip) and, while jobs are short, one more
        to each busy worker, queued in its pipe: it starts that one the moment
        it finishes, without waiting for the master.  A queued job counts as
        reserved until its worker starts it; a worker does not start one that
        waited long enough for its reservation to near its end."""
        if not self.buffer or self.stopping:
            return
        sends = collections.defaultdict(list)     # slot -> its jobs: one system call each
        for slot in self.slots.values():
            for _ in range(min(self._room(slot), len(self.buffer))):
                sends[slot].append(self._hand(slot, queued=False))
        depth = self._depth()
        for slot in self.slots.values():
            while self.buffer and slot.state == BUSY and slot.capacity == 1 and \
                    len(slot.queued) < depth and slot.pid not in self.reloading:
                sends[slot].append(self._hand(slot, queued=True))
        for slot, msgs in sends.items():
            try:
                slot.conn.send_all(msgs)
            except OSError:
                pass    # the worker is dying: its exit recovers the jobs

    def _hand(self, slot, queued):
        """The next job of the buffer, given to ``slot``: the message that
        sends it."""
        job, reserved_at = self.buffer.popleft()
        job_id, attempt, timeout = job['id'], job['attempt'], job.get('timeout') or 0
        handlers = job.get('phase') == _PHASE_HANDLERS
        if not handlers:
            job['exec_number'] = job.get('exec_number', 0) + 1
            job['start_time'], job['worker_id'] = time.time(), slot.id
        if queued:
            slot.queued.append((job_id, attempt, timeout, handlers))
        else:
            self._running(slot, job_id, attempt, timeout, handlers)
            self.pending.append(('start', job_id, attempt, slot.id, self.owner))
        return 'job', job, reserved_at if queued else None

    def _running(self, slot, job_id, attempt, timeout, handlers):
        """Track a job its worker runs; it is killed at the job's timeout (a
        coroutine worker cancels the job itself then; the kill, a moment
        later, is for a job that blocks its loop)."""
        now, deadline = time.monotonic(), None
        if timeout:
            deadline = now + timeout + (COROUTINE_KILL_GRACE if slot.capacity > 1 else 0)
        slot.state = BUSY
        slot.jobs[job_id] = _Run(attempt, timeout, handlers, now, deadline)


def _master_main(config, qconf, control, close_fds, pool, recover):
    _child_init(close_fds)
    return _Master(config, qconf, control, pool, recover).run()


###############################################################################
# Runtime: manage
###############################################################################


class _LogHandler(logging.handlers.WatchedFileHandler):
    """A log file shared by every process of the pool, rotated at ``max_bytes``
    under an flock so that only one process rotates; the others reopen it
    when they see that it was replaced (as WatchedFileHandler does)."""

    def __init__(self, path, max_bytes=10 * 1024 * 1024, backups=5):
        super().__init__(path)
        self.max_bytes, self.backups = max_bytes, backups

    def emit(self, record):
        with contextlib.suppress(OSError):
            if self.stream is not None and \
                    os.fstat(self.stream.fileno()).st_size >= self.max_bytes:
                self._rotate()
        super().emit(record)

    def _rotate(self):
        with open(self.baseFilename + '.lock', 'a') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            st, own = os.stat(self.baseFilename), os.fstat(self.stream.fileno())
            if st.st_ino == own.st_ino and st.st_size >= self.max_bytes:   # not rotated yet
                for i in range(self.backups - 1, 0, -1):
                    src = '%s.%d' % (self.baseFilename, i)
                    if os.path.exists(src):
                        os.replace(src, '%s.%d' % (self.baseFilename, i + 1))
                os.replace(self.baseFilename, self.baseFilename + '.1')


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


def _proc_stat(pid):
    """The fields of ``/proc/<pid>/stat`` after the command name, from field 3
    (the state) on; [] where there is no /proc to ask."""
    try:
        with open('/proc/%s/stat' % pid, 'rb') as f:
            return f.read().rsplit(b')', 1)[1].split()
    except (OSError, IndexError):
        return []


def _alive(pid):
    """True while ``pid`` runs (a zombie that nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_stat(pid)[:1] != [b'Z']


def _start_time(pid):
    """When ``pid`` started (seconds since the epoch), read from /proc; None
    where there is no /proc to ask."""
    try:
        ticks = int(_proc_stat(pid)[19])      # field 22: starttime
        with open('/proc/stat', 'rb') as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b'btime '))
        return boot + ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _running_on(pid, path):
    """Why a pool cannot start while the live ``pid`` holds its pid file:
    it runs, when /proc says that pid is the one that wrote the file."""
    started = _start_time(pid)
    if started is None:
        return 'already running on pid %d (or pid file %r is stale)' % (pid, path)
    return ('already running on pid %d, started %s (pid file %r); stop it first'
            % (pid, time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started)), path))


class _PidFile:
    """``{pid_path}/{name}.pid`` holding the manage process's pid, written
    atomically (temp file + rename) and removed only by its owner."""

    def __init__(self, path):
        self.path = path

    def read(self):
        """The pid in the file if that process is alive and is the one that
        wrote the file, else None: a pid that a process started after the
        file was written holds now (``_start_time``) is stale too."""
        try:
            with open(self.path) as f:
                pid = int(f.read().strip() or 0)
                written = os.fstat(f.fileno()).st_mtime
        except (OSError, ValueError):
            return None
        if pid <= 0 or not _alive(pid):
            return None
        started = _start_time(pid)
        if started is not None and started > written + PID_START_SLACK:
            return None
        return pid

    def create(self, pid):
        alive = self.read()
        if alive and alive != pid:
            raise MPQueueError(_running_on(alive, self.path))
        os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
        tmp = '%s.%d.tmp' % (self.path, pid)
        with open(tmp, 'w') as f:
            f.write('%d\n' % pid)
        os.replace(tmp, self.path)

    def remove(self, pid):
        with contextlib.suppress(OSError, ValueError):
            with open(self.path) as f:
                ours = int(f.read().strip() or 0) == pid
            if ours:
                os.unlink(self.path)


def _pool_file(config, suffix):
    basics = (config or _get_config())['basics']
    return os.path.join(basics['pid_path'], basics['name'] + suffix)


class _Manager:
    """The manage process: pid file, one master per queue, restarts, signals.

    Signals: SIGTERM / SIGINT stop gracefully (a second one stops fast),
    SIGUSR1 reloads the workers, SIGUSR2 writes a status snapshot to
    ``{pid_path}/{name}.status.json`` once every master has answered (or
    after STATUS_WAIT).  It never talks to the broker itself: each master
    publishes its part of the pool's heartbeat, and a master that replaces a
    dead one recovers the dead one's jobs.
    """

    def __init__(self, config, ready_fd=None):
        self.config, self.ready_fd = config, ready_fd
        self.pidfile = _PidFile(_pool_file(config, '.pid'))
        self.masters = {}       # pid -> {'queue', 'conn', 'started', 'ready', 'status'}
        self.orphans = {}       # queue -> owner ids of its dead masters, to recover
        self.restarts = collections.defaultdict(lambda: _Restarts(free=1))   # per queue
        self.stopping = self.stop_deadline = self.status_asked = None
        self.started = time.time()
        self.pool = None

    def run(self):
        pid = os.getpid()
        self.pidfile.create(pid)
        self.pool = {'id': '%s@%s:%d' % (self.config['basics']['name'], _HOST, pid),
                     'name': self.config['basics']['name'], 'host': _HOST, 'pid': pid,
                     'started': self.started, 'app': self.config['basics']['app']}
        try:
            return self._run()
        finally:
            self.pidfile.remove(pid)

    def _run(self):
        name = self.config['basics']['name']
        _set_title('mpq:%s:manage' % name)
        self.sel = selectors.DefaultSelector()
        self.signals = _Signals(self.sel, (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                                           signal.SIGUSR2, signal.SIGCHLD, signal.SIGHUP))
        logger.info('manage process of %r started (pid %d, mpqueue %s, queues: %s)', name,
                    os.getpid(), __version__, ', '.join(q['name'] for q in self.config['queue']))
        self.config['basics']['driver'].preload()
        with contextlib.suppress(ImportError):
            import ctypes  # noqa: F401  (used by every worker: load it once, shared)
        while True:
            self._respawn()
            for key, _ in self.sel.select(self._timeout()):
                if key.data is self.signals:
                    for signum in self.signals.drain():
                        self._on_signal(signum)
                else:
                    self._read_master(key.data)
            _reap(self._master_exited)
            self._write_status()
            if self.stopping and not self.masters:
                break
            if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                self._kill_all()
        logger.info('manage process of %r stopped', name)
        self.signals.close()
        return EXIT_OK

    def _timeout(self):
        when = [restarts.after for restarts in self.restarts.values() if restarts.after]
        if self.stop_deadline is not None:
            when.append(self.stop_deadline)
        if self.status_asked is not None:
            when.append(self.status_asked + STATUS_WAIT)
        return max(0.0, min(when) - time.monotonic()) if when else None

    def _spawn(self, qconf):
        parent_conn, child_conn = _Channel.pair()
        close_fds = [k.fd for k in self.sel.get_map().values()] + [parent_conn.fileno()]
        if self.ready_fd is not None:
            close_fds.append(self.ready_fd)
        recover = self.orphans.pop(qconf['name'], [])
        pid = _fork(_master_main, self.config, qconf, child_conn, close_fds, self.pool, recover)
        child_conn.close()
        self.masters[pid] = {'queue': qconf, 'conn': parent_conn, 'started': time.monotonic(),
                             'ready': False, 'status': None}
        self.sel.register(parent_conn, selectors.EVENT_READ, pid)

    def _read_master(self, pid):
        info = self.masters.get(pid)
        if info is None:
            return
        try:
            _dispatch_messages(self, info['conn'].recv_ready(), info)
        except (EOFError, OSError):
            _unregister(self.sel, info['conn'])

    def _on_ready(self, info):
        info['ready'] = True
        self.restarts[info['queue']['name']].ok()
        if self.ready_fd is not None and all(m['ready'] for m in self.masters.values()) \
                and len(self.masters) == len(self.config['queue']):
            self._answer(b'1')

    def _on_status(self, info, rows):
        info['status'] = rows

    def _on_boot_failed(self, info, queue, why):
        if self.ready_fd is None:
            return      # up already: its master backs off and forks again
        why = 'workers of queue %r fail to boot: %s' % (queue, why)
        logger.error('%s; stopping the pool', why)     # -d gets no pool rather than a broken one
        self._answer(b'0' + why.encode(errors='replace')[:1000])
        self._stop('fast')

    def _answer(self, data):
        """Tell the ``worker:start -d`` that waits (``_await_daemon``) whether
        the pool is up: once."""
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, data)
            os.close(self.ready_fd)
        self.ready_fd = None

    def _on_signal(self, signum):
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop('fast' if self.stopping else 'graceful')
        elif signum == signal.SIGUSR1:
            logger.info('reload requested: workers are replaced after their current job')
            self._tell_masters('reload')
        elif signum == signal.SIGUSR2:
            for info in self.masters.values():
                info['status'] = None
            self.status_asked = time.monotonic()
            self._tell_masters('status')

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
        self._tell_masters('stop', how)

    def _tell_masters(self, *msg):
        for info in self.masters.values():
            with contextlib.suppress(OSError):
                info['conn'].send(*msg)

    def _write_status(self):
        """Once the masters answered a SIGUSR2 (or STATUS_WAIT passed), write
        the snapshot that ``pool_status()`` reads."""
        if self.status_asked is None or (
                any(m['status'] is None for m in self.masters.values()) and
                time.monotonic() < self.status_asked + STATUS_WAIT):
            return
        self.status_asked = None
        rows = [_process_row('-', 'manage', os.getpid(), self.stopping and 'stopping' or
                             'running', None, None, self.started)]
        for pid, info in self.masters.items():
            rows += info['status'] or [{'queue': info['queue']['name'], 'type': 'master',
                                        'pid': pid, 'state': 'unresponsive'}]
        path = _pool_file(self.config, '.status.json')
        with open(path + '.tmp', 'w') as f:
            json.dump({'time': time.time(), 'processes': rows}, f)
        os.replace(path + '.tmp', path)

    def _master_exited(self, pid, status):
        info = self.masters.pop(pid, None)
        if info is None:
            return
        _unregister(self.sel, info['conn'])
        info['conn'].close()
        if self.stopping:
            return
        queue = info['queue']['name']
        logger.error('master of queue %r (pid %d) %s; its workers are stopped and a new master '
                     'started, which puts their jobs back', queue, pid, _describe_exit(status))
        _kill(_children_of(pid))     # they would run on unsupervised
        self.orphans.setdefault(queue, []).append('%s:%d' % (_HOST, pid))
        restarts = self.restarts[queue]
        if time.monotonic() - info['started'] > MASTER_HEALTHY_SECONDS:
            restarts.ok()
        delay = restarts.failed()
        if delay:
            logger.error('master of queue %r keeps dying; backing off %.1fs', queue, delay)

    def _respawn(self):
        if self.stopping:
            return
        now = time.monotonic()
        running = {info['queue']['name'] for info in self.masters.values()}
        for qconf in self.config['queue']:
            if qconf['name'] not in running and now >= self.restarts[qconf['name']].after:
                self._spawn(qconf)

    def _kill_all(self):
        logger.warning('stop grace period over: killing what is left')
        self.stop_deadline = None
        self._tell_masters('stop', 'fast')
        for pid in list(self.masters):
            _kill(_children_of(pid))
        deadline = time.monotonic() + 5
        while self.masters and time.monotonic() < deadline:
            _reap(self._master_exited)
            time.sleep(0.05)
        _kill(list(self.masters))
        self.stop_deadline = time.monotonic() + 1


def _children_of(pid):
    """Pids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    try:
        names = os.listdir('/proc')
    except OSError:
        return []
    return [int(name) for name in names
            if name.isdigit() and _proc_stat(name)[1:2] == [b'%d' % pid]]    # field 4: ppid


#: How long ``worker:start -d`` waits for every queue's workers to be up (seconds).
_DAEMON_START_WAIT = 60
#: How long it then waits for a pool that could not start to be gone (seconds).
_DAEMON_STOP_WAIT = 15


def _daemonize(config):
    """Double fork and setsid; return the manage process's pid once every
    queue's workers are up.  A pool that cannot start (a start hook raises,
    or its workers are not up in time) is stopped, and ``MPQueueError`` says
    why: the caller never leaves a pool behind that it reports as not started.

    The daemon tells the caller through a pipe: its pid and a newline, then
    ``1`` (up) or ``0`` and the reason."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        os.waitpid(pid, 0)
        try:
            return _await_daemon(config, r)
        finally:
            os.close(r)
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    code, manager = 1, None
    try:
        os.write(w, b'%d\n' % os.getpid())
        # Nothing may depend on the caller's directory once in '/': '' (python
        # -c) and relative entries (sys.path.append('.') in a config) meant it.
        sys.path[:] = [os.path.abspath(entry) for entry in sys.path]
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
        manager = _Manager(config, ready_fd=w)
        code = manager.run()
    except BaseException as exc:
        if manager is None or manager.ready_fd is not None:    # w is still open: say why
            with contextlib.suppress(OSError):
                os.write(w, b'0' + ' '.join(str(exc).split()).encode(errors='replace')[:1000])
        logger.exception('the manage process failed')
    finally:
        logging.shutdown()
        os._exit(code)


def _await_daemon(config, r):
    """The caller's side of ``_daemonize``: the daemon's pid once it is up."""
    deadline = time.monotonic() + _DAEMON_START_WAIT
    got = b''
    while True:         # up to EOF: the daemon closes its end once it has answered
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([r], [], [], wait)[0]:
            break
        chunk = os.read(r, 1024)
        if not chunk:
            break
        got += chunk
    head, _, answer = got.partition(b'\n')
    pid = int(head) if head.isdigit() else None
    if answer[:1] == b'1' and pid and _PidFile(_pool_file(config, '.pid')).read() == pid:
        return pid
    if answer[:1] == b'0':
        why = answer[1:].decode(errors='replace').strip() or 'its manage process failed'
    elif pid and _alive(pid):
        why = 'its workers were not up within %ss (does a start hook hang?)' % _DAEMON_START_WAIT
    else:
        why = 'its manage process exited at once'
    left = pid if pid and not _stop_daemon(pid) else None
    where = (os.path.join(config['log']['path'], config['basics']['name'] + '.log')
             if config['log']['driver'] is None else 'its log')
    raise MPQueueError('the pool did not start: %s%s; see %s' % (
        why, '; it is still stopping (manage pid %d)' % left if left else '', where))


def _stop_daemon(pid):
    """Stop a daemon that could not start (SIGTERM again each second, the
    second one makes it fast); True once it is gone."""
    deadline = time.monotonic() + _DAEMON_STOP_WAIT
    next_signal = 0.0
    while _alive(pid):
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= next_signal:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return True
            next_signal = now + 1.0
        time.sleep(0.02)
    return True


###############################################################################
# Public functions
###############################################################################


def _default_app():
    """What names the application when ``basics.app`` is not set: the
    directory of the script that runs (``manage.py``, a script of the user's
    that starts the pool), else the current directory.  The command line sets
    it to the directory of the config file it loaded."""
    script = sys.argv[0] if sys.argv else ''
    if script and not script.startswith('-') and os.path.exists(script):
        return os.path.dirname(os.path.abspath(script))
    try:
        return os.getcwd()
    except OSError:         # the directory was removed under us
        return '?'


def _validate(config):
    """Return a validated copy of ``config`` with every default filled in."""
    _check_keys('config', config, dict.fromkeys(('basics', 'log', 'queue')))
    if 'basics' not in config:
        raise ConfigError('config.basics is required')
    basics = _check_keys('basics', config['basics'], _BASICS_DEFAULTS)
    name = _check_name('basics.name', basics['name'], _POOL_NAME_RE, '"_", "." or "-"')
    _check_dir('basics.pid_path', basics['pid_path'])
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
    if basics['app'] is None:
        basics['app'] = _default_app()
    elif not isinstance(basics['app'], str) or not basics['app']:
        raise ConfigError('basics.app must be a non-empty string that names the application, '
                          'got %r' % (basics['app'],))
    if not isinstance(basics['immediate'], bool):
        raise ConfigError('basics.immediate must be True or False, got %r'
                          % (basics['immediate'],))
    if basics['driver'] is None:
        basics['driver'] = SqliteDriver(os.path.join(basics['pid_path'], name + '.db'))
    elif not isinstance(basics['driver'], _Driver):
        raise ConfigError('basics.driver must be a mpqueue.RedisDriver or mpqueue.SqliteDriver, '
                          'got %r' % (basics['driver'],))
    elif isinstance(basics['driver'], SqliteDriver) and basics['driver'].path == ':memory:':
        raise ConfigError("basics.driver: SqliteDriver(':memory:') is one process's own, and a "
                          'pool is many processes; give it a file path (immediate mode, for '
                          'tests, needs none: see basics.immediate)')
    elif isinstance(basics['driver'], SqliteDriver) and not os.path.isabs(basics['driver'].path):
        file = basics['driver'].path
        raise ConfigError('basics.driver: the SqliteDriver path must be absolute, got %r (a '
                          'relative one means another file for a daemon or a pusher started '
                          'elsewhere); use e.g. mpqueue.SqliteDriver(%s)'
                          % (file, _absolute_hint(file)))

    log = _check_keys('log', config.get('log', {}), _LOG_DEFAULTS)
    _check_dir('log.path', log['path'])
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
        raise ConfigError('config.queue must be a non-empty list of queue dicts, got %r'
                          % (queues,))
    checked, seen = [], set()
    for i, given in enumerate(queues):
        path = 'queue[%d]' % i
        q = _check_keys(path, given, _QUEUE_DEFAULTS)
        _check_name(path + '.name', q['name'], _QUEUE_NAME_RE, _QUEUE_NAME_CHARS)
        if q['name'] in seen:
            raise ConfigError('%s.name %r is used by an earlier queue; queue names must be unique'
                              % (path, q['name']))
        seen.add(q['name'])
        _check_number(path + '.worker_number', q['worker_number'], 1, integer=True)
        _check_number(path + '.memory_limit', q['memory_limit'], 0)
        _check_number(path + '.sleep_seconds', q['sleep_seconds'], 0.001)
        for option in _JOB_OPTIONS[:-1]:       # a queue has no priority of its own
            q[option] = _check_option('%s.%s' % (path, option), option, q[option])
        _check_number(path + '.coroutine_number', q['coroutine_number'], 1, integer=True)
        _check_callable(path + '.fail_handle', q['fail_handle'])
        _check_callable(path + '.worker_start_handle', q['worker_start_handle'])
        if q['model'] not in (MODEL_DISTRIBUTE, MODEL_GRAB):
            raise ConfigError('%s.model must be mpqueue.MODEL_DISTRIBUTE or mpqueue.MODEL_GRAB, '
                              'got %r' % (path, q['model']))
        if q['model'] == MODEL_GRAB and q['coroutine_number'] > 1:
            raise ConfigError('%s.coroutine_number > 1 needs the distribute model; queue %r '
                              'has model %r' % (path, q['name'], q['model']))
        q['limits'] = _check_limits(path + '.limits', q['limits'])
        q['schedule'] = _check_schedules(path + '.schedule', q, q['schedule'])
        checked.append(q)
    return {'basics': basics, 'log': log, 'queue': checked}


def configure(config):
    """Validate ``config`` and make it the configuration of this process.

    :param config: the dict described in docs/getting-started.md (``basics``, ``log``,
        ``queue``).
    :returns: the validated config with every default filled in.
    :raises ConfigError: naming the key path and the bad value.
    """
    global _config
    _config = _validate(config)
    return _config


# -- immediate mode ------------------------------------------------------------
#
# With basics.immediate, or inside ``with immediate():``, push and push_many
# run each job in the calling process before they return.  Their broker is
# then an SQLite database in this process's memory, moved by the steps of
# _STEPS as any broker is, so unique keys, priorities, result_ttl and cancels
# follow the broker's rules.  Immediate mode adds two of its own: nothing
# waits (a push's or a retry's delay is made 0), and a job runs here through
# the worker's own code (_Worker._attempt), its payload checked and unpickled
# as a worker does.  Each round trip that makes a job waiting pops it too.

_immediate_block = None     # inside immediate(): True or False; else basics.immediate decides
_immediate_broker = SqliteDriver(':memory:')   # it connects when first used
_immediate_working = set()  # ids of its jobs popped and not ended
_immediate_sweeps = {}       # queue -> when its broker is ticked next
_running_here = threading.local()   # .depth: jobs that run in this thread's call stack


@contextlib.contextmanager
def immediate(enabled=True):
    """Run the jobs pushed inside the block at once, in this process, before
    ``push`` returns (for tests); ``immediate(False)`` sends them to the broker
    again inside a block, or with ``basics.immediate = True``.  It applies to
    the whole process (every thread) while the block runs, and also decorates
    a function: ``@mpqueue.immediate()``.
    """
    global _immediate_block
    before, _immediate_block = _immediate_block, bool(enabled)
    try:
        yield
    finally:
        _immediate_block = before


def _is_immediate(basics):
    return basics['immediate'] if _immediate_block is None else _immediate_block


def _no_wait(step):
    """``step`` with its ``delay`` (push, retry) made 0: immediate mode waits for nothing."""
    names = ['name'] + next(args for name, args, _ in _STEPS if name == step[0]).split()
    return tuple(0 if name == 'delay' else value for name, value in zip(names, step))


def _run_here(config, qconf, steps):
    """``push_many`` in immediate mode: push the jobs and pop the new ones in
    one round trip, then run each here to its end; the round trip recording
    an outcome pops the job's next attempt (a retry), if any.  Returns the
    ids as the push steps gave them."""
    queue, now, sweeps = qconf['name'], time.time(), []
    # a sweep every sleep_seconds, as a master's, drops expired outcomes and holds;
    # never while a job runs here: its lease, renewed by nobody, would look lost
    if now >= _immediate_sweeps.get(queue, 0) and not _immediate_working:
        sweeps, _immediate_sweeps[queue] = [('sweep', SWEEP_LIMIT)], now + qconf['sleep_seconds']
    worker = _Worker(config, qconf, None, None, 0)
    worker.id, worker.driver = '%s:%d' % (_HOST, os.getpid()), _immediate_broker
    *ids, jobs = _immediate_broker.execute(queue, sweeps + [_no_wait(step) for step in steps] + [
        ('pop', len(steps), worker.id, '')])[len(sweeps):]
    _immediate_working.update(job['id'] for job in jobs)
    _running_here.depth = getattr(_running_here, 'depth', 0) + 1
    try:
        while jobs:
            step = _no_wait(_attempt_here(worker, jobs[0]))
            again = _immediate_broker.execute(queue, [step, ('pop', 1, worker.id, '')])[1]
            _immediate_working.discard(jobs.pop(0)['id'])
            _immediate_working.update(job['id'] for job in again)
            jobs[:0] = again
            if step[0] == 'fail':
                _forget_failed(queue)
    finally:
        _immediate_working.difference_update(job['id'] for job in jobs)
        _running_here.depth -= 1
    return ids


def _forget_failed(queue):
    """Delete the oldest failed jobs of immediate mode's broker beyond
    IMMEDIATE_KEEP (delete_failed and clean go to the configured broker)."""
    over = _immediate_broker.run(queue, 'depth')['failed'] - IMMEDIATE_KEEP
    if over > 0:
        _immediate_broker.execute(queue, [('delete_failed', job['id']) for job in
                                          _immediate_broker.run(queue, 'failed', 0, over, '')])


def _attempt_here(worker, job):
    """One attempt of ``job`` in this process; the step recording its outcome.
    A coroutine job runs on an event loop of its own, in a thread of its own
    when this thread's loop is running (it was pushed from a coroutine)."""
    steps = worker._attempt(job)
    resumed = _resume(steps)
    if resumed[0]:
        return resumed[1]
    import asyncio

    def run():
        with contextlib.closing(asyncio.new_event_loop()) as loop:
            return loop.run_until_complete(worker._drive(steps, resumed))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1, 'mpqueue-immediate') as thread:    # current_job() goes along
        return thread.submit(contextvars.copy_context().run, run).result()


def _broker_of(queue, job_id):
    """The broker that knows ``job_id``: immediate mode's while that mode is
    on, and after it for a job that ran there; else the configured one."""
    driver = _driver(queue)
    if _is_immediate(_get_config()['basics']) or (
            _immediate_broker._conn is not None and            # else no job ran here
            _immediate_broker.run(queue, 'info', job_id, '') is not None):
        return _immediate_broker
    return driver


# -- jobs: look one up, cancel it, wait for it, push them ----------------------


def job_info(queue, job_id):
    """What the broker knows of one job: the ``job_info`` of the fail handlers,
    plus ``state`` (waiting, delayed, reserved, working, done, failed,
    cancelled), ``end_time``, ``priority``, ``key``, ``result_repr`` and,
    for a cancelled job, ``cancelled_by`` and ``cancel_time``.  None when the
    id is unknown, or its outcome was not kept (``result_ttl``) or expired."""
    record = _broker_of(queue, job_id).run(queue, 'info', job_id, '')
    return None if record is None else _public_info(queue, dict(record, id=job_id))


def cancel(queue, job_id):
    """Cancel a job.  A waiting, delayed or reserved one is removed at once; a
    running one's worker is stopped (a coroutine job's task is cancelled).
    The job ends ``cancelled``: no retry, no fail handlers.  The flag is in
    the broker, so a recovery after a crash does not run the job again.

    :returns: the state it had, or None for an unknown id (nothing is written).
        A finished job is left as it is.
    """
    by = '%s:%d' % (_HOST, os.getpid())
    return _broker_of(queue, job_id).run(queue, 'cancel', job_id, by)


def result(queue, job_id, timeout=None):
    """The return value of a job, waiting up to ``timeout`` seconds (None: as
    long as it takes; 0: not at all) for it to end.  Waiting listens on the
    broker for the job's end: it does not poll.  Inside a running job
    ``timeout`` must be given: a pool whose workers all wait for jobs that
    need a worker would wait for ever.

    :raises JobFailed: the job failed for good (``.job_info`` says how).
    :raises JobCancelled: it was cancelled.
    :raises JobExpired: it did not start within its ``expires``.
    :raises JobNotFound: the id is unknown, or its outcome was not kept
        (``result_ttl``) or expired.
    :raises TimeoutError: ``timeout`` passed first.
    :raises SerializationError: its result could not be kept, or does not
        pass the signature check (it is never unpickled then).
    :raises MPQueueError: called inside a running job without a timeout.
    """
    driver, secret = _broker_of(queue, job_id), _get_config()['basics']['secret']
    if timeout is None and (_in_worker or getattr(_running_here, 'depth', 0)):
        raise MPQueueError('result() of job %s of queue %r inside a running job needs a '
                           'timeout: a job that waits for another one for ever can hold the '
                           'worker that one needs; pass timeout=SECONDS (0: do not wait)'
                           % (job_id, queue))
    if driver is _immediate_broker:     # immediate mode: it has ended already
        return _outcome(queue, job_id, driver.run(queue, 'info', job_id, ''), secret)
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = driver.watch(queue) if timeout != 0 else None
    try:
        while True:
            record = driver.run(queue, 'info', job_id, watch.address if watch else '')
            state = record and record['state']
            if state is None or state in _ENDED:
                return _outcome(queue, job_id, record, secret)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError('job %s of queue %r has not ended within %gs (it is %s)'
                                   % (job_id, queue, timeout, state))
            watch.wait(left)
    finally:
        if watch is not None:
            watch.close()


def _outcome(queue, job_id, record, secret):
    """``result()`` of a job that ended (or of None: an unknown job)."""
    state = record and record['state']
    if state is None:
        raise JobNotFound('job %s of queue %r is unknown, or it ended and its outcome '
                          'was not kept (result_ttl) or has expired' % (job_id, queue))
    if state == DONE:
        if record.get('result_note'):
            raise SerializationError('job %s of queue %r is done, but %s' % (
                job_id, queue, record['result_note']))
        if 'result' not in record:
            return None
        return _unseal(record['result'], secret, 'result of job %s' % job_id)
    if state == FAILED:
        info = _public_info(queue, dict(record, id=job_id))
        raise JobFailed('job %s of queue %r failed: %s' % (job_id, queue, (
            info['error_info'] or ['?'])[-1].strip().splitlines()[-1]), info)
    if state == EXPIRED:
        raise JobExpired('job %s of queue %r expired: it had not started %s s after it was '
                         'due' % (job_id, queue, _seconds_text(record.get('expires', 0))))
    raise JobCancelled('job %s of queue %r was cancelled by %s' % (
        job_id, queue, record.get('cancelled_by', '?')))


class JobId(str):
    """A job's id as ``push`` returns it: a ``str`` that knows its queue.

    It equals, hashes and JSON-encodes as the plain id, and pickles as the
    plain id too (a ``str``: what is stored does not depend on where this
    file lives); rebuild the handle from a stored id with
    ``JobId(stored_id, queue)``.  ``copy.copy`` keeps the handle.

    :param job_id: the id.
    :param queue: the name of the job's queue.
    """

    def __new__(cls, job_id, queue):
        self = super().__new__(cls, job_id)
        self.queue = queue
        return self

    def __repr__(self):
        return 'JobId(%s, %r)' % (str.__repr__(self), self.queue)

    def __reduce__(self):
        return str, (str(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def info(self):
        """:func:`job_info` of this job: a dict, or None."""
        return job_info(self.queue, self)

    def result(self, timeout=None):
        """:func:`result` of this job: its return value, waiting up to
        ``timeout`` seconds (None: as long as it takes; 0: not at all)."""
        return result(self.queue, self, timeout)

    def cancel(self):
        """:func:`cancel` this job: the state it had, or None."""
        return cancel(self.queue, self)


def push(queue, job, delay=0, *, args=(), kwargs=None, timeout=None, fail_number=None,
         fail_expire=None, result_ttl=None, key=None, unique=None, priority=None, limit=None,
         depends_on=None, on_parent_failure=None, expires=None):
    """Push one job; returns its id, a :class:`JobId` (or, when ``unique``
    refuses it, the id of the job that holds ``key``).

    :param queue: a queue name from the config.
    :param job: a callable (function, lambda, closure, bound method,
        ``functools.partial``), a ``mpqueue.Job`` subclass or instance, or an
        import path ``'pkg.module:attr'`` resolved in the worker.
    :param delay: seconds (ms precision) before the job may start.
    :param args: positional arguments for the callable.
    :param kwargs: keyword arguments for the callable.
    :param timeout: seconds (0: none); default the Job's, else the queue's.
    :param fail_number: retries before final failure; default likewise.
    :param fail_expire: the wait before a retry: seconds, a list of seconds (the
        wait before retry 1, 2, ...; the last repeats) or ``backoff(...)``;
        default likewise.
    :param result_ttl: seconds its outcome (state, result) stays readable after
        it ended; default likewise (the queue's: 0, nothing kept after success).
    :param key: a name for de-duplication (shown in ``job_info``); for
        ``push_many``, one key for every job or a list of keys, one per job
        (None: that job has none).
    :param unique: ``'queued'`` (at most one job with this key waiting or
        delayed), ``'active'`` (... waiting, delayed or running) or seconds (at
        most one push of the key per that many seconds).
    :param priority: 0-9, higher first; default the Job's, else 0.
    :param limit: a limit name of the queue's ``limits`` (or a name a pattern
        there matches), or a list of them: the job starts only when each has
        room; default the Job's, else none.
    :param depends_on: the id of a job of the same queue, or a list of them:
        this one waits ``blocked`` until each has ended (its delay, if any,
        counts from the push).
    :param on_parent_failure: what a parent that ends failed, cancelled or
        expired does to it: ``'cancel'`` (the default: it ends cancelled, and
        so do its own dependents) or ``'run'`` (it runs all the same).
    :param expires: seconds the job may wait once it is due (after its
        delay, or its parents): not started by then, it ends ``expired``
        and never runs (0: never); default the Job's, else the queue's.
    :raises ConfigError: the queue is not configured, or an option is wrong
        (a limit name no definition matches, say).
    :raises JobNotFound: a parent the broker does not know (nothing is written).
    :raises TypeError: ``job`` is not something a worker can run.
    :raises SerializationError: the job cannot be pickled (nothing is written).
    :raises DriverError: the broker cannot be reached.
    """
    if isinstance(key, (list, tuple)):
        raise ConfigError('key must be a string, got %r (a list of keys is for push_many)'
                          % (key,))
    parents = _parents(queue, depends_on)
    return _push_calls(queue, [(job, args, kwargs)], delay, key, unique, limit,
                       dict(timeout=timeout, fail_number=fail_number, fail_expire=fail_expire,
                            result_ttl=result_ttl, priority=priority, expires=expires),
                       parents and [parents], on_parent_failure)[0]


def push_many(queue, jobs, delay=0, *, args=(), kwargs=None, timeout=None, fail_number=None,
              fail_expire=None, result_ttl=None, key=None, unique=None, priority=None,
              limit=None, depends_on=None, on_parent_failure=None, expires=None):
    """Push several jobs in one broker round trip; returns their ids
    (:class:`JobId`) in order.

    Every job is checked and pickled before anything is written, so a bad one
    leaves the broker untouched.  ``key`` is one key for every job or a list
    of keys, one per job; with ``unique``, jobs that share a key are
    de-duplicated within the batch too (each gets the id of the first, or of
    the job in the broker that holds the key).  Parameters as for :func:`push`.
    """
    parents = _parents(queue, depends_on)
    return _push_calls(queue, [(job, args, kwargs) for job in jobs], delay, key, unique, limit,
                       dict(timeout=timeout, fail_number=fail_number, fail_expire=fail_expire,
                            result_ttl=result_ttl, priority=priority, expires=expires),
                       parents and [parents] * len(jobs), on_parent_failure)


def chain(queue, jobs, **push_options):
    """Push ``jobs`` so that each runs after the one before it ended done
    (a failure cancels the rest; with ``on_parent_failure='run'`` they go on),
    in one atomic step.  Their ids (:class:`JobId`) in order.  Options as for
    :func:`push_many` (``depends_on``: the first job's parents)."""
    return _linked(queue, jobs, push_options, lambda i, first: [i - 1] if i else first)


def batch(queue, jobs, then=None, **push_options):
    """Push ``jobs``, and ``then`` (a job, or None) to run once after every
    one of them ended, however it ended, in one atomic step.  Returns
    ``(ids, then_id)`` (``then_id`` None without ``then``).  Options as for
    :func:`push_many`; ``then`` depends on the jobs alone."""
    n = len(jobs)
    ids = _linked(queue, list(jobs) + ([then] if then is not None else []), push_options,
                  lambda i, first: list(range(n)) if i == n else first, last_runs=True)
    return (ids[:n], ids[n]) if then is not None else (ids, None)


#: The options ``push`` takes beside the job and its arguments.
_PUSH_OPTIONS = ('delay',) + tuple(sorted(set(push.__kwdefaults__) - {'args', 'kwargs'}))


def _check_push_options(options):
    unknown = sorted(set(options) - set(_PUSH_OPTIONS))
    if unknown:
        raise TypeError('%r is not a push option (push options: %s)'
                        % (unknown[0], ', '.join(_PUSH_OPTIONS)))


def _linked(queue, jobs, options, parents_of, last_runs=False):
    """chain() and batch(): ``jobs`` pushed at once."""
    _check_push_options(options)
    if options.get('key') is not None or options.get('unique') is not None:
        raise ConfigError('key, unique: chain() and batch() take no unique key (a job left out '
                          'for another that holds its key would leave its dependents without '
                          'a parent)')
    return _push_given(queue, [(job, (), None) for job in jobs], options, parents_of,
                       len(jobs) - 1 if last_runs else None)


def _push_given(queue, calls, options, parents_of=lambda i, given: given, runs_anyway=None):
    """``_push_calls`` with ``options`` as push takes them (a dict); the
    parents of call i are ``parents_of(i, the depends_on given)``."""
    given = dict(dict.fromkeys(_JOB_OPTIONS), **options)
    delay, key, unique, limit, first, opf = (given.pop(name, None) for name in (
        'delay', 'key', 'unique', 'limit', 'depends_on', 'on_parent_failure'))
    first = _parents(queue, first)
    return _push_calls(queue, calls, delay or 0, key, unique, limit, given,
                       [parents_of(i, first) for i in range(len(calls))], opf, runs_anyway)


def _parents(queue, depends_on):
    """The ``depends_on`` option as a list of ids (None: no parents)."""
    if depends_on is None:
        return None
    ids = [depends_on] if isinstance(depends_on, str) else depends_on
    if not isinstance(ids, (list, tuple)) or not ids or \
            not all(isinstance(i, str) and i for i in ids):
        raise ConfigError('depends_on must be a job id or a non-empty list of job ids, got %r'
                          % (depends_on,))
    for i in ids:
        if getattr(i, 'queue', queue) != queue:
            raise ConfigError('depends_on: job %s is of queue %r, not %r (a job depends on jobs '
                              'of its own queue)' % (i, i.queue, queue))
    return [str(i) for i in ids]


def _push_calls(queue, calls, delay, key, unique, limit, given, parents=None,
                on_parent_failure=None, runs_anyway=None):
    """``push_many`` of ``calls``, ``(job, args, kwargs)`` each: their
    :class:`JobId` in order.  ``given``: the options of every job;
    ``parents``: per call, its parents (ids, or the index of a call before
    it); ``runs_anyway``: the index of a call that runs whatever became of
    its parents."""
    config = _get_config()
    qconf = queue_config(queue)
    _check_number('delay', delay, 0)
    if on_parent_failure not in (None, 'cancel', 'run'):
        raise ConfigError("on_parent_failure must be 'cancel' or 'run', got %r"
                          % (on_parent_failure,))
    jobs = [job for job, _, _ in calls]
    if isinstance(key, (list, tuple)):
        if len(key) != len(jobs):
            raise ConfigError('key: %d keys for %d jobs; give one key per job, or one key for '
                              'all of them' % (len(key), len(jobs)))
        keys = list(key)
        modes = [_check_unique(k, None if k is None else unique, 'key[%d]' % i)
                 for i, k in enumerate(keys)]
    else:
        keys = [key] * len(jobs)
        modes = [_check_unique(key, unique)] * len(jobs)
    basics = config['basics']
    # Pays: push_many 92,000 jobs/s against 63,000 working out each job's options
    # (python examples/benchmark.py --driver sqlite --only push,push_many --jobs
    # 20000; medians of 5 interleaved runs each, 2026-12-07).
    plain = _plain_options(qconf, given)        # those of every job that is no Job
    plain_limits = _limits_text(qconf, limit)
    steps, ids = [], [_new_id() for _ in calls]
    for i, ((job, args, kwargs), job_key, mode) in enumerate(zip(calls, keys, modes)):
        _check_job(queue, job)
        options, limits = plain, plain_limits
        if _is_job(job):
            options = _push_options(job, qconf, **given)
            if limit is None and job.limit is not None:
                limits = _limits_text(qconf, job.limit, '%s.limit' % _job_class(job).__name__)
        payload = _encode(queue, job, args, kwargs, basics['secret'], basics['max_payload'])
        mine = parents and parents[i]
        steps.append(('push', ids[i], payload, delay, _job_name(job), options['timeout'],
                      options['fail_number'], options['fail_expire'],
                      options['priority'], job_key or '', mode, options['result_ttl'], limits,
                      json.dumps(list(dict.fromkeys(p if isinstance(p, str) else ids[p]
                                                    for p in mine))) if mine else '',
                      ('run' if i == runs_anyway else on_parent_failure or 'cancel')
                      if mine else '', options['expires']))
    if _is_immediate(basics):
        ids = _run_here(config, qconf, steps)
    else:
        ids = basics['driver'].execute(queue, steps)
    for job_id in ids:
        if job_id.startswith('!'):
            raise JobNotFound(
                'depends_on: queue %r does not know job %s (never pushed, or it ended and its '
                'outcome was not kept: give the parent a result_ttl, or push parent and child '
                'together with chain(), batch() or push_many(); nothing was pushed)'
                % (queue, job_id[1:]))
    return [JobId(job_id, queue) for job_id in ids]


def job(queue, **options):
    """Decorate a function with its queue and push options::

        @mpqueue.job('mail', timeout=30, fail_number=5)
        def send_welcome(to): ...

        send_welcome('ada@example.org')         # a plain call: runs here
        send_welcome.push('ada@example.org')    # a JobId; pushed with the options above
        send_welcome.push_with(args=('bob@example.org',), delay=60)   # per-call options win
        send_welcome.push_many([('a@x.org',), ('b@x.org',)])        # one round trip

    The queue must be in the config when a push happens, not before.  A
    function of an importable module travels as its import path (the worker
    imports it); another one (in ``__main__``, or inside a function) is
    pickled by value, as ``push`` does with it.

    :param queue: the queue's name.
    :param options: any option of :func:`push`: ``delay``, ``timeout``,
        ``fail_number``, ``fail_expire``, ``result_ttl``, ``key``,
        ``unique``, ``priority``.
    :raises TypeError: an option that ``push`` does not take.
    """
    if not isinstance(queue, str):
        raise TypeError("@mpqueue.job needs the queue's name first: "
                        "@mpqueue.job('name', **options), got %r" % (queue,))
    _check_push_options(options)

    def decorate(func):
        if not callable(func) or _is_job(func):
            raise TypeError('@mpqueue.job decorates a function, got %r (push a mpqueue.Job '
                            'as it is: it carries its own settings)' % (func,))
        return _JobFunction(func, queue, options)
    return decorate


class _JobFunction:
    """A function decorated by :func:`job`: calling it calls the function;
    ``push``, ``push_with`` and ``push_many`` push it."""

    def __init__(self, func, queue, options):
        functools.update_wrapper(self, func)
        self.queue, self.options = queue, options

    def __repr__(self):
        return '<mpqueue job %s of queue %r>' % (_job_name(self.__wrapped__), self.queue)

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    def push(self, *args, **kwargs):
        """Push a call of the function with these arguments; its :class:`JobId`."""
        return self.push_with(args=args, kwargs=kwargs)

    def push_with(self, args=(), kwargs=None, **options):
        """Push a call with ``options`` of :func:`push` over the decorator's."""
        _check_push_options(options)
        if isinstance(options.get('key'), (list, tuple)):
            raise ConfigError('key must be a string, got %r (a list of keys is for push_many)'
                              % (options['key'],))
        return self._push([(args, kwargs)], options)[0]

    def push_many(self, calls, **options):
        """Push many calls in one round trip; their :class:`JobId` in order.

        :param calls: one item per job: a tuple of positional arguments, or a
            dict of keyword arguments.
        :param options: options of :func:`push` over the decorator's (``key``
            may be a list, one key per job).
        """
        _check_push_options(options)
        out = []
        for i, call in enumerate(calls):
            if isinstance(call, tuple):
                out.append((call, None))
            elif isinstance(call, dict):
                out.append(((), call))
            else:
                raise TypeError('calls[%d] must be a tuple of arguments or a dict of keyword '
                                'arguments, got %r (one argument x: (x,))' % (i, call))
        return self._push(out, options)

    def _push(self, calls, options):
        target = self._target()
        return _push_given(self.queue, [(target, args, kwargs) for args, kwargs in calls],
                           dict(self.options, **options))

    def _target(self):
        """What is pushed: the import path of this object when a worker can
        import it back (a module-level function of an importable module),
        else the function itself, pickled by value."""
        module, name = self.__module__, self.__qualname__
        found = sys.modules.get(module) if module != '__main__' and '<' not in name else None
        for part in name.split('.'):
            found = getattr(found, part, None)
        return '%s:%s' % (module, name) if found is self else self.__wrapped__


def current_job():
    """What the running job knows of itself, a dict: ``queue``, ``id``,
    ``attempt``, ``depends_on``, ``job``, ``key``, ``exec_number``,
    ``priority``, ``timeout``, ``create_time``, ``start_time``,
    ``worker_id``; None outside a job's body.  Each coroutine job has its own."""
    running = _current_job()
    if running is None:
        return None
    info = _public_info(running.queue, running.job)
    return dict({name: info.get(name) for name in (
        'queue', 'id', 'job', 'key', 'exec_number', 'priority', 'timeout', 'create_time',
        'start_time', 'worker_id', 'depends_on')}, attempt=running.job['attempt'])


def progress(value=None, **meta):
    """Report how far the running job is.  ``job_info()`` shows ``progress``
    and ``meta`` within PROGRESS_INTERVAL (0.1 s), and keeps them after the
    job's end as long as its outcome; the broker gets at most one write per
    interval and job, and the last call always lands.

    :param value: a number from 0 to 1, or None.
    :param meta: JSON-able keywords (``rows=1200``), replacing the last call's.
    :raises ValueError: ``value`` or a keyword is not one of those.
    :raises MPQueueError: no job's body runs here.
    """
    global _progress_timer
    running = _current_job()
    if running is None:
        raise MPQueueError('progress() reports on the running job, and none runs here: call '
                           'it from a job (in a worker, or pushed in immediate mode)')
    if value is not None and not (_is_number(value) and 0 <= value <= 1):
        raise ValueError('progress(value): value must be a number from 0 to 1 or None, got %r'
                         % (value,))
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError):
        for name, item in meta.items():
            try:
                json.dumps(item, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError('progress(%s=...): %s must be JSON-able: %s'
                                 % (name, name, exc)) from None
        raise
    with _progress_lock:
        if running.ended:
            return
        first, running.pending = running.pending is None, ('' if value is None else value, text)
        if time.monotonic() >= running.written + PROGRESS_INTERVAL:
            running.write()
        elif first:                 # for the timer thread, once the interval has passed
            _progress_waiting.add(running)
            if _progress_timer is None or not _progress_timer.is_alive():   # (or forked)
                _progress_timer = threading.Thread(target=_write_due_progress, daemon=True,
                                                   name='mpqueue-progress')
                _progress_timer.start()
            _progress_lock.notify()


def status(queue):
    """Counts of one queue: ``{'all', 'waiting', 'working', 'failed', 'over',
    'expired'}`` (``depth()`` has them per state, and the cancelled jobs), and
    ``paused``."""
    d = depth(queue)
    return {'all': d['pushed'], 'waiting': d['waiting'] + d['delayed'],
            'working': d['reserved'] + d['working'], 'failed': d['failed'], 'over': d['done'],
            'expired': d['expired'], 'paused': d['paused']}


def depth(queue):
    """Jobs of a queue per state now (waiting, delayed, reserved, working,
    failed, blocked), its counters since it was last cleaned (pushed, done,
    failed_total, cancelled, expired), ``oldest_waiting_seconds`` (0: none waits) and
    ``paused`` (True between ``pause`` and ``resume``)."""
    out, paused = _driver(queue).execute(queue, [('depth',), ('paused',)])
    out['paused'] = paused
    oldest = out.pop('oldest_created')
    out['oldest_waiting_seconds'] = max(0.0, time.time() - oldest) if oldest else 0
    return out


def failed_jobs(queue, offset=0, count=100, after=None):
    """The failed jobs of a queue, oldest first, as ``job_info`` dicts.

    :param after: the id of the last job of the page before: the page starts
        after it, as fast at any depth; ``offset`` counts only when that job
        is no longer in the failed list (retried or deleted meanwhile).
    """
    return [_public_info(queue, record) for record in
            _driver(queue).run(queue, 'failed', offset, count, after or '')]


def queued_jobs(queue, state='waiting', count=100, cursor=None):
    """A page of the jobs of a queue that have not started, as ``job_info``
    dicts: ``'waiting'`` ones in the order they will start (highest priority
    first, then first in), or ``'delayed'`` ones soonest due first, each
    with ``due_time``.  Every page costs what the first does, at any depth.

    :param state: ``'waiting'`` or ``'delayed'``.
    :param count: the most jobs of the page.
    :param cursor: the ``cursor`` of the page before (None: the first page).
        A job that starts meanwhile does not disturb the pages after it.
    :returns: ``{'jobs': [...], 'cursor': text or None}``: None when there is
        no page after this one.
    """
    driver = _driver(queue)
    if state not in (WAITING, DELAYED):
        raise ValueError('state must be %r or %r, got %r' % (WAITING, DELAYED, state))
    jobs, after = driver.run(queue, 'listing', state, count, cursor or '')
    return {'jobs': [_public_info(queue, record) for record in jobs], 'cursor': after or None}


def limits(queue):
    """The limits of a queue in use now, and those it defines by name:
    ``[{'name', 'limit', 'concurrency', 'rate', 'per', 'running', 'waiting'},
    ...]`` by name.  ``limit`` is the definition the name matched (a pattern
    such as ``'customer:*'`` for ``'customer:42'``; None when this config
    defines none), its settings None where it sets none; ``running``: jobs
    holding a slot (reserved or working), ``waiting``: jobs waiting for it."""
    defs, used = queue_config(queue)['limits'], _driver(queue).run(queue, 'limits')
    out = []
    for name in sorted(set(used) | {name for name in defs if not name.endswith('*')}):
        pattern = _limit_of(name, defs)
        concurrency, rate, per = defs.get(pattern, (0, 0, 0))
        running, waiting = used.get(name, (0, 0))
        out.append({'name': name, 'limit': pattern, 'concurrency': concurrency or None,
                    'rate': rate or None, 'per': per or None, 'running': running,
                    'waiting': waiting})
    return out


def _bulk(queue, step, *args):
    """Run a bulk step in chunks of BULK_CHUNK until it is done; the total."""
    driver, total = _driver(queue), 0
    while True:
        started = time.monotonic()
        n = driver.run(queue, step, *args, BULK_CHUNK)
        total += n
        if n < BULK_CHUNK:
            return total
        # then as long again for the others: a waiting SQLite writer polls for
        # the lock, and without a pause it found the next chunk there (0.1 s)
        time.sleep(time.monotonic() - started)


def find_job(queue, id_or_key):
    """The ``job_info`` of the job with id ``id_or_key``, else of the job that
    holds unique key ``id_or_key`` now (see ``push``: ``unique``); None when
    neither is known.  One lookup each in the broker, at any size of the queue."""
    queue_config(queue)
    basics, found = _get_config()['basics'], None
    if _is_immediate(basics) or _immediate_broker._conn is not None:    # as job_info
        found = _immediate_broker.run(queue, 'find', id_or_key)
    if found is None and not _is_immediate(basics):
        found = basics['driver'].run(queue, 'find', id_or_key)
    return found and job_info(queue, found)


def _walk(queue, step, *args):
    """Run a step that walks the failed list (match_failed, retry_matching,
    delete_matching) chunk by chunk from its start to its end; the total."""
    driver, total, cursor = _driver(queue), 0, ''
    while True:
        started = time.monotonic()
        reply = driver.run(queue, step, *args, cursor, BULK_CHUNK)
        total, cursor = total + reply[0], reply[-1]
        if not cursor:
            return total
        if step != 'match_failed':      # it writes: as long again for the others (_bulk)
            time.sleep(time.monotonic() - started)


def search_failed(queue, text, count=100, cursor=None):
    """A page of the failed jobs of a queue whose function name, key or an
    error (its whole traceback) contains ``text`` (ASCII letters in either
    case), oldest first, as ``job_info`` dicts.  It walks the failed list
    only, BULK_CHUNK jobs a broker step: no index to keep at push.

    :param cursor: the ``cursor`` of the page before (None: the first page).
    :returns: ``{'jobs': [...], 'cursor': text or None}``: None when the walk
        is over.  A walk ends at the jobs that had failed at its first page.
    """
    driver = _driver(queue)
    if count < 1:
        raise ValueError('count must be 1 or more, got %r' % (count,))
    jobs, cursor = [], cursor or ''
    while len(jobs) < count:
        _, found, cursor = driver.run(queue, 'match_failed', text, count - len(jobs), cursor,
                                      BULK_CHUNK)
        jobs += found
        if not cursor:
            break
    return {'jobs': [_public_info(queue, record) for record in jobs], 'cursor': cursor or None}


def count_failed(queue, text):
    """How many failed jobs of a queue ``search_failed`` finds for ``text``."""
    return _walk(queue, 'match_failed', text, 0)


def retry_failed(queue, job_id=None, match=None):
    """Put one failed job (or all of them, or those ``search_failed`` finds
    for ``match``) back in the queue; returns how many."""
    if job_id:
        return _driver(queue).run(queue, 'retry_failed', job_id, 1)
    if match is not None:
        return _walk(queue, 'retry_matching', match)
    return _bulk(queue, 'retry_failed', '')


def delete_failed(queue, job_id=None, match=None):
    """Delete one failed job (or those ``search_failed`` finds for ``match``);
    returns how many (for one: 1 if it was there, else 0)."""
    if match is not None and not job_id:
        return _walk(queue, 'delete_matching', match)
    if not job_id:
        raise ValueError('delete_failed() deletes one failed job (job_id) or those that '
                         'match a text (match=TEXT; \'\' for every one), got neither')
    return int(_driver(queue).run(queue, 'delete_failed', job_id))


def clean(queue):
    """Empty a queue: waiting, delayed, running records, failed jobs, counters
    (a paused queue stays paused)."""
    _bulk(queue, 'clean')


def pause(queue):
    """Stop handing out the jobs of a queue, on every pool of every server,
    until :func:`resume`: within milliseconds, without polling.  Running jobs
    finish; pushes, delayed jobs and schedule ticks accrue.  The flag is in
    the broker: a pool that restarts finds the queue paused.  (Immediate mode
    runs its jobs regardless: they never reach the broker.)

    :returns: True, or False if the queue was paused already.
    :raises ConfigError: the queue is not configured (nothing is written).
    """
    return _driver(queue).run(queue, 'pause')


def resume(queue):
    """Hand out the jobs of a paused queue again; its masters are woken, so
    what accrued starts at once.

    :returns: True, or False if the queue was not paused.
    :raises ConfigError: the queue is not configured (nothing is written).
    """
    return _driver(queue).run(queue, 'resume')


def schedules(queue=None):
    """The schedules of one configured queue (or of all): per schedule its
    queue, name, expression, timezone, last_tick and next_tick (epoch
    seconds; None before its first tick), last_job_id and that job's state
    (None when the job is unknown or its outcome expired), and skipped (ticks
    skipped because the job holding its key still waited or ran:
    overlap=False, or its unique)."""
    driver, out = _get_config()['basics']['driver'], []
    for qconf in [queue_config(queue)] if queue else _get_config()['queue']:
        if not qconf['schedule']:
            continue
        stored = {r['name']: r for r in driver.run(qconf['name'], 'schedules')}
        for s in qconf['schedule']:
            record = stored.get(s['name'], {})
            last = record.get('last') and record['last'] / 1000.0
            job_id = record.get('job')
            info = job_id and job_info(qconf['name'], job_id)
            out.append({'queue': qconf['name'], 'name': s['name'],
                        'expression': s['expression'], 'timezone': s['timezone'],
                        'last_tick': last, 'next_tick': last and s['when'].next_after(last),
                        'last_job_id': job_id, 'last_job_state': info and info['state'],
                        'skipped': record.get('skipped', 0)})
    return out


def history(queue):
    """A queue's counters sampled every HISTORY_SECONDS over the last
    HISTORY_KEEP samples: ``[{'t', 'done', 'failed'}, ...]``, oldest first
    (``done``, ``failed``: totals since the queue was last cleaned)."""
    return _driver(queue).run(queue, 'history')


def fleet():
    """Every pool whose masters publish heartbeats to the configured broker."""
    return _get_config()['basics']['driver'].fleet()


def foreign_pools(config=None):
    """The pools of *other applications* (another ``basics.app``) that serve
    queues of ``config`` (default: the configured one) on its broker: a pool
    of this application would run their jobs, and they its jobs.  Each is a
    ``fleet()`` dict plus ``shared`` (those queue names) and ``warning`` (one
    line that names the pool and says what to do)."""
    config = config or _get_config()
    driver = config['basics']['driver']
    return [dict(pool, warning=_foreign_warning(pool, driver))
            for pool in _foreign(driver.fleet(), config['basics']['app'],
                                 [q['name'] for q in config['queue']])]


def pid_file(config=None):
    """The path of the pid file of ``config``'s pool (default: the configured one)."""
    return _pool_file(config, '.pid')


def pool_pid(config=None):
    """The pid of the running manage process of ``config``'s pool, or None."""
    return _PidFile(pid_file(config)).read()


def start_pool(config=None, daemon=False):
    """Run the manage process of ``config``'s pool: in this process (returns
    its exit code) or as a daemon (returns once the pool is up, with the
    manage process's pid).

    :raises MPQueueError: the pool is already running, or did not start.
    """
    config = config or _get_config()
    alive = pool_pid(config)
    if alive:
        raise MPQueueError(_already_running(config, alive))
    os.makedirs(config['basics']['pid_path'], exist_ok=True)
    if daemon:
        return _daemonize(config)
    _setup_logging(config, to_stderr=True)
    return _Manager(config).run()


def _already_running(config, pid):
    """Why a pool cannot start while ``pid`` holds its pid file: the same
    pool runs, or (its heartbeat says) a pool of another application that
    has the same basics.name and pid_path, and so the same pid file (and
    the same SQLite file, by default)."""
    basics = config['basics']
    try:
        running = [p for p in basics['driver'].fleet()
                   if p.get('host') == _HOST and p.get('pid') == pid]
    except MPQueueError:
        running = []
    other = running[0].get('app') if running else None
    if other and other != basics['app']:
        return ('pool %r of another application (app %s) already runs on pid %d with the pid '
                'file %s: two applications have basics.name %r and basics.pid_path %r%s; give '
                'this one a basics.pid_path of its own, e.g. os.path.join(HERE, \'run\') beside '
                'its config' % (basics['name'], other, pid, pid_file(config), basics['name'],
                                basics['pid_path'], ' (and so one SQLite broker)'
                                if isinstance(basics['driver'], SqliteDriver) else ''))
    return _running_on(pid, pid_file(config))


def pool_status(config=None, timeout=10):
    """One dict per process of the running pool (manage, masters, workers):
    queue, type, pid, state, job_id, done, rss_mb, started, uptime.

    :raises MPQueueError: the pool is not running or does not answer.
    """
    config = config or _get_config()
    name, pid = config['basics']['name'], pool_pid(config)
    if not pid:
        raise MPQueueError('pool %r is not running (no live pid in %s)'
                           % (name, pid_file(config)))
    path, asked = _pool_file(config, '.status.json'), time.time()
    try:
        os.kill(pid, signal.SIGUSR2)
    except ProcessLookupError:
        raise MPQueueError('pool %r is not running' % name) from None
    except PermissionError:
        raise MPQueueError('pool %r (pid %d) runs as another user: ask as that user'
                           % (name, pid)) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                snapshot = json.load(f)
            if snapshot.get('time', 0) >= asked - 0.001:
                return snapshot['processes']
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise MPQueueError('pool %r (pid %d) did not answer the status request within %ss'
                       % (name, pid, timeout))


if __name__ == '__main__':
    # The command line lives in mpqueue_cli.py: running it from here would load
    # this file twice (as __main__ and as mpqueue), with two of every class.
    import shlex
    _args = shlex.join(sys.argv[1:]) or 'list'
    sys.exit('mpqueue: error: "python -m mpqueue" is the library, not the command line; '
             'run "mpqueue %s" or "python -m mpqueue_cli %s"' % (_args, _args))
