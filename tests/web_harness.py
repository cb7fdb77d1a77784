"""What the dashboard tests share: headless Chromium (installed by
``chromium.py`` when missing), a ``mpqueue web`` process (``Web``), and
polling the page with a deadline.

Chromium and its driver are Debian's (``apt-get install chromium
chromium-driver``, which the tests run themselves as root); selenium is given
the driver's path, so it never looks for one to download.  Without them the
first browser test of a run fails with one line that says what to install,
and the others skip.  A test module imports the fixtures it uses (and
``needs_chromium``, which does that).
"""

import http.client
import json
import queue as queue_module
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

import chromium
from pool_harness import CLI, E2E, wait_for

CHROMIUM, CHROMEDRIVER = chromium.CHROMIUM, chromium.CHROMEDRIVER
CHROMIUM_ARGS = ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
                 '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--window-size=1280,800')
START_TIMEOUT = 20      # s: the web process prints its address
PAGE_TIMEOUT = 20       # s: the page shows a value (it refreshes every 2 s)
POLL = 0.2              # s between two looks at the page


@pytest.fixture(scope='module')
def chromium_missing(tmp_path_factory):
    """None, or the line that says what to install (installed as root)."""
    return chromium.ensure_chromium(chromium.run_dir(tmp_path_factory))


@pytest.fixture(autouse=True)
def needs_chromium(request, tmp_path_factory):
    """Without Chromium, the first browser test of the run fails with one
    line that says what to install, and the others skip: one reason, told
    once (before any pool starts)."""
    if 'browser' not in request.fixturenames:
        return
    chromium_missing = request.getfixturevalue('chromium_missing')
    if chromium_missing:
        if chromium.first_to_report(chromium.run_dir(tmp_path_factory)):
            pytest.fail(chromium_missing, pytrace=False)
        pytest.skip('Chromium is missing: see the failed dashboard test')


@pytest.fixture(scope='module')
def browser(tmp_path_factory, chromium_missing):
    """Headless Chromium (one per module), with a fresh profile; None
    without Chromium (``needs_chromium`` then fails or skips the test)."""
    if chromium_missing:
        yield None
        return
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument('--user-data-dir=%s' % tmp_path_factory.mktemp('chromium-profile'))
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def look(driver, script, *args):
    """Run ``script`` (the body of a function) in the page; its return value."""
    return driver.execute_script(script, *args)


def wait_page(driver, cond, what, timeout=PAGE_TIMEOUT):
    """Poll ``cond()`` against the page until it is truthy; the page's
    banner and the last value are added to a failure."""
    last = []

    def check():
        last[:] = [cond()]
        return last[0]
    try:
        return wait_for(check, timeout, what, interval=POLL)
    except AssertionError as exc:
        banner = look(driver, "const b = document.getElementById('banner');"
                              "return b && !b.hidden ? b.textContent : null;")
        raise AssertionError('%s\nlast value: %r\nbanner: %r' % (exc, last and last[0], banner)) \
            from None


class Web:
    """``python mpqueue_cli.py web --config FILE --port 0 ARGS`` as a child
    process (registered with the reaper); ``url`` is the address it printed."""

    def __init__(self, e2e, config_path, *args, env=None):
        self.err_path = e2e.tmp_path / ('web-%d.err' % time.monotonic_ns())
        with open(self.err_path, 'wb') as err:
            self.proc = e2e.reaper.popen(
                [sys.executable, str(CLI), 'web', '--config', str(config_path), '--port', '0']
                + list(args), cwd=str(CLI.parent), env=env or e2e.env(),
                stdout=subprocess.PIPE, stderr=err, text=True)
        lines = queue_module.Queue()

        def pump():
            for line in self.proc.stdout:
                lines.put(line)
        threading.Thread(target=pump, daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue_module.Empty:
            raise AssertionError('mpqueue web printed nothing within %ss: %s' % (
                START_TIMEOUT, self.stderr())) from None
        match = re.search(r'http://127\.0\.0\.1:(\d+)/', line)
        assert match, (line, self.stderr())
        self.url, self.port = match.group(0), int(match.group(1))
        self.startup = line

    def stderr(self):
        return self.err_path.read_text(errors='replace')

    def request(self, method, path, headers=None, body=None):
        """One HTTP request; returns (status, headers, body bytes)."""
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def json(self, method, path, headers=None):
        status, _, body = self.request(method, path, headers)
        return status, json.loads(body)

    def csrf_token(self, headers=None):
        status, _, body = self.request('GET', '/', headers)
        assert status == 200, status
        return re.search(rb'<meta name="csrf-token" content="([^"]+)">', body).group(1).decode()

    def stop(self):
        """SIGTERM: the server stops at once, with exit code 0 and no traceback."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=10) == 0, self.stderr()
        assert 'Traceback' not in self.stderr(), self.stderr()


@pytest.fixture
def one_broker(tmp_path, redis_url, redis_db, proc_reaper, request):
    """The e2e harness on SQLite only, for tests whose point does not depend
    on the broker (security, read-only)."""
    harness = E2E(tmp_path, redis_url, redis_db, proc_reaper, request.node.name, 'sqlite')
    try:
        yield harness
    finally:
        harness.close()
