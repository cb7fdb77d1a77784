"""Chromium and its driver for the dashboard's browser tests.

Debian's ``chromium`` and ``chromium-driver``, found at their packaged
paths (``$MPQTEST_CHROMIUM`` and ``$MPQTEST_CHROMEDRIVER`` name others).
When they are missing the tests install them with apt if they run as root,
as ``redis_server.ensure_redis_server_binary`` does for Redis: one process
at a time (pytest-xdist runs several), the others then find them installed.
Without root or apt, one line says what to install.
"""

import fcntl
import os
import shutil
import subprocess

CHROMIUM = os.environ.get('MPQTEST_CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('MPQTEST_CHROMEDRIVER', '/usr/bin/chromedriver')
INSTALL = 'apt-get install chromium chromium-driver'


def missing():
    return [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]


def ensure_chromium(run_dir):
    """None once Chromium and its driver are there, installing them as root;
    else the one line that says what to install.  ``run_dir`` is shared by
    the test processes of one run: it holds the lock, and the note that apt
    was tried already (so that a failed install is not tried by each)."""
    if not missing():
        return None
    with open(os.path.join(run_dir, 'chromium.lock'), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tried = os.path.join(run_dir, 'chromium.apt-tried')
        if missing() and os.geteuid() == 0 and shutil.which('apt-get') \
                and not os.path.exists(tried):
            open(tried, 'w').close()
            env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
            subprocess.run('apt-get update -qq && apt-get install -y -qq chromium chromium-driver',
                           shell=True, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gone = missing()
    if not gone:
        return None
    return ('%s not found%s: the dashboard tests need Chromium and its driver; run "%s" as root '
            '(the tests do it themselves when they run as root), or point $MPQTEST_CHROMIUM and '
            '$MPQTEST_CHROMEDRIVER at them' % (
                ' and '.join(gone), ' after apt-get failed' if os.geteuid() == 0 and
                shutil.which('apt-get') else '', INSTALL))


def run_dir(tmp_path_factory):
    """A directory of this test run that its pytest-xdist processes share."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base)


def first_to_report(run_dir):
    """True for the first test process of the run that asks: it reports the
    missing browser as a failure, the others skip their browser tests."""
    try:
        os.close(os.open(os.path.join(run_dir, 'chromium.reported'),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
