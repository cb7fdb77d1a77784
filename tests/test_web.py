"""The dashboard, ``mpqueue web``, end to end in a real browser.

Each test starts real pools (``mpqueue_cli.py worker:start``) and a real
``python mpqueue_cli.py web --config FILE --port 0`` process, and looks at
the page in headless Chromium driven by selenium: one browser for the whole
module.  Chromium and its driver are Debian's (``apt-get install chromium
chromium-driver``, which the tests run themselves as root: see
``chromium.py``); selenium is given the driver's path, so it never looks for
one to download.  Without them the first test fails with one line that says
what to install, and the others skip.

Every wait polls with a deadline; the page refreshes itself every 2 s.
Screenshots go under each test's ``tmp_path``.
"""

import functools
import json
import os
import re
import signal
import socket
import time
import urllib.parse

import pytest
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By

import mpqueue
import mpqueue_cli
from pool_harness import Src, queue_conf, wait_for
from redis_server import RedisServer, free_port
from test_options import OPTION_JOBS
from web_harness import (  # noqa: F401 (fixtures)
    PAGE_TIMEOUT, POLL, Web, browser, chromium_missing, look, needs_chromium, one_broker,
    wait_page)

XSS_NAME = '<script>alert(1)</script>'
XSS_ERROR = '<img src=x onerror=alert(2)><b>bold</b>'

#: Jobs added to each test's jobs module: one whose name and error are markup.
WEB_JOBS = '''
def markup_job(tag):
    n = attempt(tag)
    record('start', tag=tag, n=n)
    raise ValueError(%r)


markup_job.__qualname__ = %r
markup_job.__module__ = None     # its name is exactly the markup above
''' % (XSS_ERROR, XSS_NAME)


# -- the browser ------------------------------------------------------------------------

def click(driver, css, what):
    """Click the element ``css`` once it is there (the page redraws itself)."""
    def attempt():
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True
        except WebDriverException:
            return False
    wait_for(attempt, PAGE_TIMEOUT, what, interval=POLL)


def accept_confirm(driver, *words):
    """Accept the confirm() dialog the last click opened; return its text."""
    def dialog():
        try:
            return driver.switch_to.alert
        except NoAlertPresentException:
            return None
    alert = wait_for(dialog, 10, 'a confirm dialog', interval=POLL)
    text = alert.text
    for word in words:
        assert word in text, (word, text)
    alert.accept()
    return text


def assert_no_alert(driver):
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    raise AssertionError('a dialog opened: %r' % text)


def table_rows(driver, rows, attr):
    """The table rows ``rows`` (CSS) as {their data-``attr``: {column: text}}."""
    return look(driver, """
        const out = {};
        for (const tr of document.querySelectorAll(arguments[0])) {
          const row = {};
          for (const td of tr.querySelectorAll('td[data-col]')) {
            row[td.dataset.col] = td.textContent;
          }
          out[tr.dataset[arguments[1]]] = row;
        }
        return out;""", rows, attr)


def queue_table(driver):
    """The queues view as {queue: {column: text}}."""
    return table_rows(driver, '#queues-body tr[data-queue]', 'queue')


def limit_table(driver):
    """The limits view as {name: {column: text}}."""
    return table_rows(driver, '#limits-table tbody tr[data-limit]', 'limit')


def failed_rows(driver):
    """The failed jobs shown, as {id: {'name', 'attempts', 'errors': [summary]}}."""
    return look(driver, """
        const out = {};
        for (const tr of document.querySelectorAll('#failed-table tbody tr[data-job-id]')) {
          const name = tr.querySelector('[data-col=name]');
          out[tr.dataset.jobId] = {
            name: name.textContent, name_elements: name.children.length,
            attempts: tr.querySelector('[data-col=attempts]').textContent,
            errors: Array.from(tr.querySelectorAll('summary'), (s) => s.textContent),
          };
        }
        return out;""")


def search(browser, text):
    """Type ``text`` in the search box; once the page shows what it found:
    {'jobs': {id: {column: text}}, 'failed': {queue: {column: text}}}."""
    field = browser.find_element(By.ID, 'search-text')
    field.clear()
    field.send_keys(text)
    field.submit()

    def results():
        heading = look(browser, "const h = document.querySelector('#search-box h2');"
                                "return h && h.textContent;")
        return heading == "Id or unique key '%s'" % text and {
            'jobs': table_rows(browser, '#found-body tr', 'jobId'),
            'failed': table_rows(browser, '#matching-body tr', 'queue')}
    return wait_page(browser, results, 'what the search for %r found' % text)


def banner(driver):
    return look(driver, "const b = document.getElementById('banner');"
                        "return b.hidden ? null : b.textContent;")


def assert_fits(driver, what):
    """The page is no wider than the window: wide tables scroll in their card."""
    width, inner = look(driver, 'return [document.documentElement.scrollWidth, innerWidth];')
    assert width <= inner, '%s: the page is %dpx wide in a %dpx window' % (what, width, inner)


def number(text):
    return int(text.replace(',', ''))


def screenshot(driver, tmp_path, name):
    path = tmp_path / ('%s.png' % name)
    driver.save_screenshot(str(path))
    print('screenshot: %s' % path)
    return path


# -- the web process ------------------------------------------------------------------------

def settle(pool, queue, what, **expected):
    """Wait until ``mpqueue.status(queue)`` has the ``expected`` counts."""
    last = {}
    pool.wait(lambda: last.update(mpqueue.status(queue)) or all(
        last[k] == v for k, v in expected.items()), 20, lambda: '%s (%r)' % (what, last))


def failed_pool(e2e, **options):
    """A running pool on queue 'q' that does not retry, and the jobs module
    (with ``markup_job``)."""
    e2e.write_jobs(WEB_JOBS)
    pool = e2e.pool(queue_conf('q', worker_number=2, fail_number=0, **options)).start()
    return pool, e2e.import_jobs()


# -- what the page shows -----------------------------------------------------------------------

def test_queues_and_fleet_match_the_cli_and_the_chart_has_points(e2e, browser, tmp_path):
    pool = e2e.pool(queue_conf('q', worker_number=2, fail_number=0), name='server-a').start()
    # The dashboard reads a config with a queue that no pool serves: its jobs wait.
    viewer = e2e.pool(queue_conf('q'), queue_conf('parked'), name='viewer')
    jobs = e2e.import_jobs()
    mpqueue.push_many('parked', [jobs.ok] * 2, args=('parked',))
    mpqueue.push_many('q', [jobs.ok] * 3, args=('ok',))
    mpqueue.push_many('q', [jobs.ok] * 2, delay=300, args=('later',))
    mpqueue.push('q', jobs.sleeper, args=('busy', 120))
    mpqueue.push('q', jobs.boom, args=('fails',))
    settle(pool, 'q', 'the jobs to settle', over=3, failed=1, working=1)

    web = Web(e2e, viewer.config_path)
    browser.get(web.url)
    res = viewer.cli('queue:status', '--json')
    assert res.returncode == 0, res.stderr
    expected = json.loads(res.stdout)

    def matches():
        table = queue_table(browser)
        if set(table) != {'q', 'parked'}:
            return False
        for name, counts in expected.items():
            row = {k: number(v) for k, v in table[name].items()
                   if k not in ('oldest_waiting_seconds', 'done_rate', 'failed_rate',
                                'paused')}
            shown = {'all': row['pushed'], 'waiting': row['waiting'] + row['delayed'],
                     'working': row['reserved'] + row['working'], 'failed': row['failed'],
                     'over': row['done'], 'cancelled': row['cancelled'],
                     'blocked': row['blocked'], 'expired': row['expired'],
                     'paused': table[name]['paused'].startswith('paused')}
            if shown != counts:
                return False
        return table
    table = wait_page(browser, matches, 'the page to show what queue:status says (%r)' % expected)
    assert expected['q'] == {'all': 7, 'waiting': 2, 'working': 1, 'failed': 1, 'over': 3,
                             'cancelled': 0, 'blocked': 0, 'expired': 0, 'paused': False}
    assert (table['q']['delayed'], table['q']['working'], table['q']['cancelled']) == \
        ('2', '1', '0')
    assert table['parked']['waiting'] == '2'
    assert re.fullmatch(r'\d+\.\d s|\d+ s', table['parked']['oldest_waiting_seconds']), table
    assert table['q']['oldest_waiting_seconds'] == '\u2014', 'nothing waits in q'
    assert banner(browser) is None

    # Jobs done while the page is open: the chart draws their rate.
    mpqueue.push_many('q', [jobs.ok] * 6, args=('more',))
    settle(pool, 'q', 'the new jobs to run', over=9)

    def chart():
        return look(browser, """
            const done = document.querySelector('#chart path.series-done');
            if (!done) return null;
            return {points: Number(done.dataset.points), height: done.getBBox().height,
                    queue: document.querySelector('#chart svg').dataset.queue,
                    note: document.getElementById('chart-note').textContent};""")
    drawn = wait_page(browser, lambda: (lambda c: c if c and c['points'] >= 2 and
                                        c['height'] > 0 else None)(chart()),
                      'the chart to draw a done/s line above zero')
    assert drawn['queue'] == 'q'
    assert_fits(browser, 'queues at 1280x800')
    screenshot(browser, tmp_path, 'queues')
    # A narrow window: everything is still there, the tables scroll sideways.
    browser.set_window_size(480, 900)
    try:
        def narrow():
            return look(browser, """return innerWidth <= 480 &&
                document.querySelector('#chart svg').width.baseVal.value <= innerWidth;""")
        wait_page(browser, narrow, 'a narrow window, and the chart drawn for it')
        assert_fits(browser, 'queues in a narrow window')
        assert look(browser, """const s = document.querySelector('#view-queues .scroll');
                                return s.scrollWidth > s.clientWidth;"""), 'the table scrolls'
        screenshot(browser, tmp_path, 'queues-narrow')
    finally:
        browser.set_window_size(1280, 800)

    # The fleet view: the pool, its workers per queue, one busy with the sleeper.
    click(browser, 'nav a[data-view=fleet]', 'the Fleet tab')

    def pool_row():
        return look(browser, """
            const tr = document.querySelector('#fleet-body tr[data-pool="server-a"]');
            if (!tr) return null;
            const cell = (c) => tr.querySelector('[data-col=' + c + ']').textContent;
            return {queue: cell('queue'), workers: cell('workers'), busy: cell('busy'),
                    idle: cell('idle'), state: cell('state'), stale: tr.dataset.stale};""")
    fleet = wait_page(browser, lambda: (lambda row: row and row['busy'] == '1' and row)(
        pool_row()), 'the pool with its busy worker in the fleet view',
        timeout=mpqueue.HEARTBEAT_SECONDS + PAGE_TIMEOUT)
    assert (fleet['queue'], fleet['workers'], fleet['state'], fleet['stale']) == \
        ('q', '2', 'running', 'false'), fleet
    assert_fits(browser, 'fleet at 1280x800')
    screenshot(browser, tmp_path, 'fleet')
    web.stop()


def test_failed_jobs_show_tracebacks_as_text_and_retry_delete_work(e2e, browser, tmp_path):
    pool, jobs = failed_pool(e2e)
    flaky_a, flaky_b = (mpqueue.push('q', jobs.flaky, args=(tag, 1)) for tag in ('A', 'B'))
    boom = mpqueue.push('q', jobs.boom, args=('C',))
    markup = mpqueue.push('q', jobs.markup_job, args=('D',))
    settle(pool, 'q', 'four failed jobs', failed=4)

    web = Web(e2e, pool.config_path)
    browser.get(web.url + '#failed/q')
    rows = wait_page(browser, lambda: (lambda r: len(r) == 4 and r)(failed_rows(browser)),
                     'four failed jobs on the page')
    assert rows[flaky_a]['name'].startswith(e2e.jobs_name + '.flaky'), rows[flaky_a]
    assert rows[flaky_a]['attempts'] == '1'
    assert rows[flaky_a]['errors'] == ['#1ValueError: flaky A attempt 1']

    # The traceback is collapsed; opened, it shows in full.
    pre = '#failed-table tr[data-job-id="%s"] details pre' % flaky_a
    assert not browser.find_element(By.CSS_SELECTOR, pre).is_displayed()
    click(browser, '#failed-table tr[data-job-id="%s"] summary' % flaky_a, 'the error summary')
    text = wait_page(browser, lambda: browser.find_element(By.CSS_SELECTOR, pre).text,
                     'the traceback to show')
    assert text.startswith('Traceback (most recent call last):'), text
    assert 'ValueError: flaky A attempt 1' in text and 'in flaky' in text, text

    # Markup in a job's name and in its error is shown as text, never run.
    assert rows[markup]['name'].startswith(XSS_NAME) and rows[markup]['name_elements'] == 0
    assert rows[markup]['errors'] == ['#1ValueError: ' + XSS_ERROR]
    assert_no_alert(browser)
    assert look(browser, "return [document.querySelectorAll('script').length,"
                         " document.querySelectorAll('#failed-box img, #failed-box b').length];"
                ) == [1, 0]
    assert_fits(browser, 'failed jobs at 1280x800')
    assert look(browser, """const b = document.querySelector('button[data-action=retry]');
        const r = b.getBoundingClientRect();
        return r.right <= innerWidth && r.width > 0;"""), 'Retry is visible without scrolling'
    screenshot(browser, tmp_path, 'failed')

    # Retry one: it runs again (and succeeds), and leaves the list.
    click(browser, 'tr[data-job-id="%s"] button[data-action=retry]' % flaky_a, 'Retry of A')
    pool.wait(lambda: e2e.records('end', tag='A', n=2), 15, 'job A to run again')
    wait_page(browser, lambda: flaky_a not in failed_rows(browser), 'A to leave the page')

    # Delete one, after a confirmation.
    click(browser, 'tr[data-job-id="%s"] button[data-action=delete]' % boom, 'Delete of C')
    accept_confirm(browser, boom)
    wait_page(browser, lambda: set(failed_rows(browser)) == {flaky_b, markup},
              'C to leave the page')
    assert {job['id'] for job in mpqueue.failed_jobs('q')} == {flaky_b, markup}

    # Retry all: B runs and succeeds, the markup job fails again.
    click(browser, 'button[data-action=retry-all]', 'Retry all')
    accept_confirm(browser, '2 failed jobs', 'queue q')
    pool.wait(lambda: e2e.records('end', tag='B', n=2), 15, 'job B to run again')
    pool.wait(lambda: e2e.records('start', tag='D', n=2), 15, 'job D to run again')
    settle(pool, 'q', 'D to fail again', failed=1, working=0, waiting=0)
    wait_page(browser, lambda: list(failed_rows(browser)) == [markup], 'only D on the page')
    assert_no_alert(browser)
    web.stop()


def test_the_next_page_of_failed_jobs_reads_after_the_last_job_shown(one_broker, browser):
    pool, jobs = failed_pool(one_broker)
    mpqueue.push_many('q', [functools.partial(jobs.boom, 'page-%d' % i) for i in range(53)])
    settle(pool, 'q', '53 failed jobs', failed=53)
    order = [job['id'] for job in mpqueue.failed_jobs('q')]
    web = Web(one_broker, pool.config_path)
    status, body = web.json('GET', '/api/queues/q/failed?count=2&after=' + order[1])
    assert status == 200 and [job['id'] for job in body['jobs']] == order[2:4], body
    browser.get(web.url + '#failed/q')
    wait_page(browser, lambda: set(failed_rows(browser)) == set(order[:50]), 'the first page')
    link = browser.find_element(By.CSS_SELECTOR, '.pager a[rel=next]')
    assert link.get_attribute('href').endswith('#failed/q/50/' + order[49])
    link.click()
    wait_page(browser, lambda: set(failed_rows(browser)) == set(order[50:]), 'the next page')
    web.stop()


def test_a_job_is_looked_up_by_id_and_cancelled(e2e, browser, tmp_path):
    pool = e2e.pool(queue_conf('q', worker_number=1, fail_number=0)).start()
    jobs = e2e.import_jobs()
    done = mpqueue.push('q', jobs.ok, args=('looked-up',), result_ttl=60)
    settle(pool, 'q', 'the job to be done', over=1)
    running = mpqueue.push('q', jobs.sleeper, args=('long', 120), result_ttl=60)
    pool.wait(lambda: e2e.records('start', tag='long'), 15, 'the sleeper to start')

    web = Web(e2e, pool.config_path)
    status, api = web.json('GET', '/api/queues/q/jobs/' + done)
    assert status == 200 and api['key'] is None and api['end_time'] >= api['start_time'], api
    browser.get(web.url + '#job')
    assert 'search box' in browser.find_element(By.ID, 'job-box').text
    assert search(browser, done)['jobs'] == {done: {'queue': 'q', 'found_by': 'id',
                                                    'state': 'done'}}
    click(browser, '#found-table a.id', 'the link to the job')

    def shown():
        return look(browser, """
            const card = document.querySelector('#job-box [data-job-id]');
            if (!card) return null;
            const col = (c) => { const e = card.querySelector('[data-col=' + c + ']');
                                 return e ? e.textContent : null; };
            return {id: card.dataset.jobId, state: col('state'), result: col('result'),
                    cancel: Boolean(card.querySelector('button[data-action=cancel]'))};""")
    job = wait_page(browser, lambda: (lambda j: j and j['id'] == done and j)(shown()),
                    'the done job')
    assert job == {'id': done, 'state': 'done', 'result': "'looked-up'", 'cancel': False}

    browser.get(web.url + '#job/q/' + running)
    job = wait_page(browser, lambda: (lambda j: j and j['id'] == running and j)(shown()),
                    'the running job')
    assert job['state'] == 'working' and job['cancel'], job
    screenshot(browser, tmp_path, 'job')
    click(browser, '#job-box button[data-action=cancel]', 'Cancel')
    accept_confirm(browser, running)
    wait_page(browser, lambda: (shown() or {}).get('state') == 'cancelled', 'the job cancelled')

    browser.get(web.url + '#job/q/no-such-job')
    wait_page(browser, lambda: "no job 'no-such-job' in queue 'q'" in browser.find_element(
        By.ID, 'job-box').text, 'the unknown id to be reported')
    web.stop()


def job_card(browser, *cols):
    """The job page's card: its id and the text of each of ``cols`` (its
    ``data-col``), or None while there is none."""
    return look(browser, """
        const card = document.querySelector('#job-box [data-job-id]');
        if (!card) return null;
        const out = {id: card.dataset.jobId};
        for (const c of arguments[0]) {
            const e = card.querySelector('[data-col=' + c + ']');
            out[c] = e ? e.textContent : null;
        }
        return out;""", list(cols))


PROGRESS_JOBS = '''
def reports(tag):
    """Reports its progress between two gates (tags tag-before, tag-after)."""
    gated(tag + '-before')
    mpqueue.progress(0.4, rows=4, note=%r)
    gated(tag + '-after')
''' % XSS_ERROR


def test_a_running_jobs_progress_shows_on_its_page_as_it_comes(e2e, browser, tmp_path):
    e2e.write_jobs(OPTION_JOBS + PROGRESS_JOBS)
    pool = e2e.pool(queue_conf('q', worker_number=1, result_ttl=60)).start()
    jobs = e2e.import_jobs()
    job_id = mpqueue.push('q', jobs.reports, args=('p',))
    pool.wait(lambda: e2e.records('start', tag='p-before'), 15, 'the job to start')
    web = Web(e2e, pool.config_path)
    browser.get(web.url + '#job/q/' + job_id)

    def shown():
        card = job_card(browser, 'state', 'progress', 'meta')
        return card and dict(card, **look(browser, """
            const bar = document.querySelector('#job-box [data-col=progress] progress');
            return {bar: bar ? bar.value : null, markup: document.querySelectorAll(
                '#job-box [data-col=meta] img, #job-box [data-col=meta] b').length};"""))
    job = wait_page(browser, lambda: (lambda j: j and j['state'] == 'working' and j)(shown()),
                    'the running job')
    assert (job['progress'], job['meta'], job['bar']) == (None, None, None)   # no report yet
    e2e.redis.set('%s:gate:p-before' % e2e.key, 1)
    job = wait_page(browser, lambda: (lambda j: j and j['progress'] and j)(shown()),
                    'the report to show')
    assert job == {'id': job_id, 'state': 'working', 'progress': '40 %', 'bar': 0.4,
                   'markup': 0, 'meta': 'rows 4, note ' + XSS_ERROR}, job
    screenshot(browser, tmp_path, 'job-progress')
    e2e.redis.set('%s:gate:p-after' % e2e.key, 1)
    job = wait_page(browser, lambda: (lambda j: j and j['state'] == 'done' and j)(shown()),
                    'the job to end')
    assert (job['progress'], job['meta']) == ('40 %', 'rows 4, note ' + XSS_ERROR)
    web.stop()


def dependencies(browser):
    """The job page's id, state and cancel button, and its Dependencies: each
    list as [[id, state shown]], other facts as text; None while there is no card."""
    return look(browser, """
        const card = document.querySelector('#job-box [data-job-id]');
        if (!card) return null;
        const out = {id: card.dataset.jobId,
                     state: card.querySelector('[data-col=state]').textContent,
                     cancel: Boolean(card.querySelector('button[data-action=cancel]'))};
        for (const dd of card.querySelectorAll('dl.relatives dd[data-col]')) {
            out[dd.dataset.col] = dd.querySelector('ul') ? Array.from(
                dd.querySelectorAll('li[data-id]'), (li) => [li.dataset.id,
                    li.querySelector('.badge') && li.querySelector('.badge').textContent])
                : dd.textContent;
        }
        return out;""")


def test_a_jobs_page_shows_its_parents_and_dependents_with_their_states(e2e, browser,
                                                                        tmp_path):
    """A working parent and two blocked children: each page links the others
    with their states; a blocked child is cancelled from its page; once the
    parent ends the other child runs, and its page follows."""
    e2e.write_jobs(OPTION_JOBS)
    pool = e2e.pool(queue_conf('q', worker_number=1, result_ttl=60)).start()
    jobs = e2e.import_jobs()
    parent = mpqueue.push('q', jobs.gated, args=('parent',))
    runs = mpqueue.push('q', jobs.ok, args=('runs',), depends_on=parent, on_parent_failure='run')
    dropped = mpqueue.push('q', jobs.ok, args=('dropped',), depends_on=parent)
    pool.wait(lambda: e2e.records('start', tag='parent'), 15, 'the parent to start')
    children = sorted([[runs, 'blocked'], [dropped, 'blocked']])

    web = Web(e2e, pool.config_path)
    status, api = web.json('GET', '/api/queues/q/jobs/' + parent)
    assert status == 200 and (api['parents'], api['children']) == (
        [], [{'id': i, 'state': s} for i, s in children]), api
    browser.get(web.url + '#job/q/' + parent)
    assert wait_page(browser, lambda: (lambda j: j and j['id'] == parent and j)(
        dependencies(browser)), 'the parent') == {
            'id': parent, 'state': 'working', 'cancel': True, 'dependents': children}

    # A child: its parent, working, and that it waits for it; it is cancelled here.
    browser.get(web.url + '#job/q/' + dropped)
    job = wait_page(browser, lambda: (lambda j: j and j['id'] == dropped and j)(
        dependencies(browser)), 'a child')
    assert job == {'id': dropped, 'state': 'blocked', 'cancel': True,
                   'depends_on': [[parent, 'working']], 'on_parent_failure': 'cancel',
                   'waiting_for': [[parent, 'working']]}, job
    screenshot(browser, tmp_path, 'job-dependencies')
    click(browser, '#job-box button[data-action=cancel]', 'Cancel')
    accept_confirm(browser, dropped)
    job = wait_page(browser, lambda: (lambda j: j['state'] == 'cancelled' and j)(
        dependencies(browser)), 'the child cancelled')
    assert job == {'id': dropped, 'state': 'cancelled', 'cancel': False,
                   'depends_on': [[parent, 'working']], 'on_parent_failure': 'cancel'}, job

    # Its parent's link: one dependent left; the queues view counts it blocked.
    click(browser, '#job-box [data-col=depends_on] a', 'the link to the parent')
    wait_page(browser, lambda: (dependencies(browser) or {}).get('dependents') == [
        [runs, 'blocked']], 'the parent with one dependent left')
    assert browser.current_url.endswith('#job/q/' + parent)
    browser.get(web.url + '#queues')
    wait_page(browser, lambda: queue_table(browser).get('q', {}).get('blocked') == '1',
              'one blocked job in the queues view')
    status, api = web.json('GET', '/api/queues')
    assert status == 200 and api[0]['blocked'] == 1, api

    # The parent ends: the other child runs, and its page shows both done.
    browser.get(web.url + '#job/q/' + runs)
    job = wait_page(browser, lambda: (lambda j: j and j['id'] == runs and j)(
        dependencies(browser)), 'the other child')
    assert (job['state'], job['on_parent_failure'], job['waiting_for']) == (
        'blocked', 'run', [[parent, 'working']]), job
    e2e.redis.set('%s:gate:parent' % e2e.key, 1)
    job = wait_page(browser, lambda: (lambda j: j['state'] == 'done' and j)(
        dependencies(browser)), 'the other child done')
    assert job == {'id': runs, 'state': 'done', 'cancel': False,
                   'depends_on': [[parent, 'done']], 'on_parent_failure': 'run'}, job

    # A hundred dependents are shown, and how many more there are; a parent
    # the broker forgot (no result_ttl, its children ended) is unknown.
    many = mpqueue.push('q', jobs.gated, args=('many',), result_ttl=0)
    kids = mpqueue.push_many('q', [jobs.ok] * 102, args=('kid',), depends_on=many)
    pool.wait(lambda: e2e.records('start', tag='many'), 15, 'the parent of many to start')
    status, api = web.json('GET', '/api/queues/q/jobs/' + many)
    assert status == 200 and len(api['dependents']) == 102 and api['children'] == [
        {'id': i, 'state': 'blocked'} for i in sorted(kids)[:100]], api
    browser.get(web.url + '#job/q/' + many)
    wait_page(browser, lambda: look(browser, """
        const dd = document.querySelector('#job-box [data-col=dependents]');
        return dd && [dd.querySelectorAll('li[data-id]').length,
                      dd.querySelector('li:not([data-id])').textContent];""") == [
        100, 'and 2 more'], 'a hundred dependents and 2 more')
    e2e.redis.set('%s:gate:many' % e2e.key, 1)
    browser.get(web.url + '#job/q/' + kids[0])
    wait_page(browser, lambda: (dependencies(browser) or {}).get('depends_on') == [
        [many, 'unknown']], 'a dependent whose parent was forgotten')
    assert dependencies(browser)['state'] == 'done'
    web.stop()


def test_a_queue_is_paused_and_resumed_from_the_dashboard(e2e, browser, tmp_path):
    pool = e2e.pool(queue_conf('q', worker_number=1, sleep_seconds=30)).start()
    jobs = e2e.import_jobs()
    web = Web(e2e, pool.config_path)
    browser.get(web.url)

    def paused_cell():
        return look(browser, """
            const td = document.querySelector('#queues-body tr[data-queue="q"] td[data-col=paused]');
            if (!td) return null;
            const button = td.querySelector('button[data-action]');
            return {paused: td.dataset.paused, badge: Boolean(td.querySelector('.badge.paused')),
                    button: button ? button.dataset.action : null};""")
    assert wait_page(browser, paused_cell, 'the queue row') == {
        'paused': 'false', 'badge': False, 'button': 'pause'}
    click(browser, '#queues-body button[data-action=pause]', 'Pause')
    accept_confirm(browser, 'Pause queue q')
    wait_page(browser, lambda: paused_cell() == {'paused': 'true', 'badge': True,
                                                 'button': 'resume'}, 'the queue shown paused')
    assert mpqueue.status('q')['paused'] is True
    status, api = web.json('GET', '/api/queues')
    assert status == 200 and [q['paused'] for q in api if q['name'] == 'q'] == [True]
    mpqueue.push('q', jobs.ok, args=('accrued',))
    time.sleep(1.0)                                 # a paused pool starts nothing
    assert e2e.records('start') == []
    screenshot(browser, tmp_path, 'paused')

    click(browser, '#queues-body button[data-action=resume]', 'Resume')
    settle(pool, 'q', 'the accrued job to run after resume', over=1, paused=False)
    wait_page(browser, lambda: (paused_cell() or {}).get('button') == 'pause',
              'the queue shown running')
    assert_no_alert(browser)

    # The API: CSRF as for every action; an unknown queue is a 404 that names it.
    token = web.csrf_token()
    assert web.json('POST', '/api/queues/q/pause', {})[0] == 403
    assert mpqueue.status('q')['paused'] is False
    assert web.json('POST', '/api/queues/q/pause', {'X-CSRF-Token': token}) == (
        200, {'ok': True, 'paused': True, 'changed': True})
    assert web.json('POST', '/api/queues/q/pause', {'X-CSRF-Token': token}) == (
        200, {'ok': True, 'paused': True, 'changed': False})
    assert web.json('POST', '/api/queues/q/resume', {'X-CSRF-Token': token}) == (
        200, {'ok': True, 'paused': False, 'changed': True})
    status, body = web.json('POST', '/api/queues/nope/pause', {'X-CSRF-Token': token})
    assert status == 404 and "'nope'" in body['error'], body
    web.stop()


# -- search, filtered bulk actions, live updates ------------------------------------------

def test_the_search_box_finds_a_job_by_id_or_key_and_failed_jobs_by_text(e2e, browser,
                                                                          tmp_path):
    e2e.write_jobs(OPTION_JOBS + WEB_JOBS)
    pool = e2e.pool(queue_conf('q', worker_number=2, fail_number=0),
                    queue_conf('other', worker_number=1, fail_number=0)).start()
    jobs = e2e.import_jobs()
    held = mpqueue.push('q', jobs.gated, args=('held',), key='report:2024', unique='active')
    flaky = mpqueue.push('q', jobs.flaky, args=('F', 1))
    mpqueue.push('q', jobs.boom, args=('B',))
    markup = mpqueue.push('q', jobs.markup_job, args=('M',))
    mpqueue.push('other', jobs.flaky, args=('O', 1))
    settle(pool, 'q', 'three failures and one running', failed=3, working=1)
    settle(pool, 'other', 'one failure', failed=1)
    web = Web(e2e, pool.config_path)

    status, body = web.json('GET', '/api/search?q=report:2024')
    assert status == 200 and [(j['queue'], j['id'], j['found_by'], j['state']) for j in
                              body['jobs']] == [('q', held, 'key', 'working')], body
    assert body['failed'] == [{'queue': 'q', 'matched': 0}, {'queue': 'other', 'matched': 0}]
    assert web.json('GET', '/api/search')[0] == 400
    assert mpqueue.find_job('q', 'report:2024')['id'] == held
    assert mpqueue.find_job('q', held)['id'] == held and mpqueue.find_job('other', held) is None
    assert mpqueue.count_failed('q', 'VALUEERROR') == 2
    assert [j['id'] for j in mpqueue.search_failed('q', 'valueerror', 1)['jobs']] == [flaky]

    browser.get(web.url)
    found = search(browser, 'report:2024')
    assert browser.current_url.endswith('#search/report%3A2024')
    assert found['jobs'] == {held: {'queue': 'q', 'found_by': 'key', 'state': 'working'}}, found
    assert browser.find_element(By.CSS_SELECTOR, '#found-table .name').text == \
        e2e.jobs_name + '.gated'
    click(browser, '#found-table a.id', 'the link to the job')
    wait_page(browser, lambda: (job_card(browser, 'state') or {}).get('id') == held, 'its page')

    assert search(browser, held)['jobs'][held]['found_by'] == 'id'
    found = search(browser, 'valueerror')
    assert found['jobs'] == {} and {q: row['matched'] for q, row in found['failed'].items()} == \
        {'q': '2', 'other': '1'}, found
    assert 'No queue has a job with this id or unique key' in browser.find_element(
        By.ID, 'search-box').text
    assert_fits(browser, 'search at 1280x800')
    screenshot(browser, tmp_path, 'search')
    click(browser, '#matching-table tr[data-queue=q] a', 'Show them')
    wait_page(browser, lambda: set(failed_rows(browser)) == {flaky, markup}, 'the two of q')
    assert browser.current_url.endswith('#failed/q///valueerror')
    assert look(browser, "return document.getElementById('failed-match').value") == 'valueerror'
    assert "1\u20132 of 2 matching 'valueerror'" in browser.find_element(By.ID, 'failed-box').text

    # markup typed into the box is text: searched for, shown, never run
    assert search(browser, XSS_ERROR)['failed']['q']['matched'] == '1'
    assert XSS_ERROR in browser.find_element(By.ID, 'search-box').text
    assert look(browser, "return document.querySelectorAll('#search-box img, #search-box b')"
                         ".length") == 0
    assert_no_alert(browser)
    e2e.redis.set('%s:gate:held' % e2e.key, 1)
    web.stop()


def test_failed_jobs_that_contain_a_text_are_retried_or_deleted_together(e2e, browser,
                                                                         tmp_path):
    pool, jobs = failed_pool(e2e)
    flaky = [mpqueue.push('q', jobs.flaky, args=(tag, 1)) for tag in 'ABC']
    boom = [mpqueue.push('q', jobs.boom, args=(tag,)) for tag in 'DE']
    markup = mpqueue.push('q', jobs.markup_job, args=('F',))
    settle(pool, 'q', 'six failed jobs', failed=6)
    web = Web(e2e, pool.config_path)
    browser.get(web.url + '#failed/q')
    wait_page(browser, lambda: len(failed_rows(browser)) == 6, 'six failed jobs')
    field = browser.find_element(By.ID, 'failed-match')
    field.send_keys('FLAKY')
    field.submit()
    wait_page(browser, lambda: set(failed_rows(browser)) == set(flaky), 'the flaky ones')
    assert "1\u20133 of 3 matching 'FLAKY'" in browser.find_element(By.ID, 'failed-box').text
    screenshot(browser, tmp_path, 'failed-filtered')

    click(browser, 'button[data-action=retry-matching]', 'Retry matching')
    assert accept_confirm(browser) == "Retry 3 failed jobs matching 'FLAKY'?"
    for tag in 'ABC':
        pool.wait(lambda: e2e.records('end', tag=tag, n=2), 15, 'job %s to run again' % tag)
    wait_page(browser, lambda: "No failed job of queue q matches 'FLAKY'." in
              browser.find_element(By.ID, 'failed-box').text, 'none left that matches')

    browser.get(web.url + '#failed/q///boom-')
    wait_page(browser, lambda: set(failed_rows(browser)) == set(boom), 'the booms')
    click(browser, 'button[data-action=delete-matching]', 'Delete matching')
    assert accept_confirm(browser) == ("Delete 2 failed jobs matching 'boom-'? This cannot be "
                                       "undone.")
    wait_page(browser, lambda: 'matches' in browser.find_element(By.ID, 'failed-box').text,
              'none left that matches')
    assert [job['id'] for job in mpqueue.failed_jobs('q')] == [markup]
    assert mpqueue.status('q')['failed'] == 1

    # The API: the count first, CSRF as for every action, no "delete all"
    status, body = web.json('GET', '/api/queues/q/failed?count=1&match=onerror')
    assert status == 200 and (body['matched'], body['total'], len(body['jobs'])) == (1, 1, 1)
    token = web.csrf_token()
    for path, headers, code in (('/api/queues/q/failed/delete?match=x', {}, 403),
                                ('/api/queues/q/failed/delete', {'X-CSRF-Token': token}, 400),
                                ('/api/queues/nope/failed/delete?match=x',
                                 {'X-CSRF-Token': token}, 404)):
        assert web.json('POST', path, headers)[0] == code, path
    assert web.json('POST', '/api/queues/q/failed/retry?match=nothing',
                    {'X-CSRF-Token': token}) == (200, {'ok': True, 'retried': 0})
    assert mpqueue.status('q')['failed'] == 1
    assert_no_alert(browser)
    web.stop()


def test_bulk_actions_by_text_work_in_chunks_past_bulk_chunk(e2e):
    """1,100 failed jobs (more than two chunks): a text matches half, the
    count says so, and retry and delete act on exactly those."""
    from steps import push_step
    pool = e2e.pool(queue_conf('q'))            # never started
    driver = mpqueue._get_config()['basics']['driver']
    n = 2 * mpqueue.BULK_CHUNK + 100
    ids = driver.execute('q', [push_step() for _ in range(n)])
    jobs = driver.run('q', 'pop', n, 'w', 'o')
    driver.execute('q', [('fail', job['id'], job['attempt'], 1,
                          json.dumps(['ValueError: %s' % ('even' if i % 2 else 'odd')]), 'f')
                         for i, job in enumerate(jobs)])
    web = Web(e2e, pool.config_path)
    status, body = web.json('GET', '/api/queues/q/failed?count=50&match=EVEN')
    assert status == 200 and (body['matched'], body['total']) == (n // 2, n), body
    assert [j['id'] for j in body['jobs']] == ids[1:100:2] and body['cursor']
    status, more = web.json('GET', '/api/queues/q/failed?count=50&match=EVEN&cursor=' +
                            urllib.parse.quote(body['cursor']))
    assert [j['id'] for j in more['jobs']] == ids[101:200:2]
    token = {'X-CSRF-Token': web.csrf_token()}
    assert web.json('POST', '/api/queues/q/failed/retry?match=even', token) == (
        200, {'ok': True, 'retried': n // 2})
    assert web.json('POST', '/api/queues/q/failed/delete?match=odd', token) == (
        200, {'ok': True, 'deleted': n // 2})
    counts = mpqueue.depth('q')
    assert (counts['failed'], counts['waiting']) == (0, n // 2), counts
    web.stop()


LIVE_JOBS = '''
def steps(tag, n):
    # reports its progress after each of n gates (tag-1 .. tag-n)
    for i in range(1, n + 1):
        gated('%s-%d' % (tag, i))
        mpqueue.progress(i / n, step=i)
'''


def test_the_job_page_follows_progress_by_server_sent_events_or_by_polling(e2e, browser):
    e2e.write_jobs(OPTION_JOBS + LIVE_JOBS)
    pool = e2e.pool(queue_conf('q', worker_number=1, result_ttl=60)).start()
    jobs = e2e.import_jobs()
    job_id = mpqueue.push('q', jobs.steps, args=('s', 5))
    pool.wait(lambda: e2e.records('start', tag='s-1'), 15, 'the job to start')
    web = Web(e2e, pool.config_path)
    browser.get(web.url + '#job/q/' + job_id)

    def live():
        return look(browser, "return document.getElementById('live').dataset.mode;")
    wait_page(browser, lambda: (job_card(browser, 'state') or {}).get('state') == 'working' and
              live() == 'events', 'the running job, with events')
    reads = "return performance.getEntriesByType('resource').filter((e) => " \
            "e.name.includes('/jobs/')).length;"
    before = look(browser, reads)
    time.sleep(4.5)                 # nothing changes: no poll every 2 s
    assert look(browser, reads) - before <= 1
    seconds = []
    for i in (1, 2, 3):
        began = time.monotonic()
        e2e.redis.set('%s:gate:s-%d' % (e2e.key, i), 1)
        text = '%d %%' % (i * 20)
        wait_page(browser, lambda: (job_card(browser, 'progress') or {}).get('progress') == text,
                  'progress %s' % text)
        seconds.append(time.monotonic() - began)
    print('%s: the job page showed each progress() after %s s' % (
        e2e.driver, ', '.join('%.2f' % s for s in seconds)))
    assert sorted(seconds)[1] < 1.5, seconds
    assert job_card(browser, 'meta')['meta'] == 'step 3'

    # Without EventSource (or when the server refuses a stream) the page polls
    added = browser.execute_cdp_cmd('Page.addScriptToEvaluateOnNewDocument',
                                    {'source': 'delete window.EventSource;'})
    try:
        browser.refresh()           # a new document, without EventSource
        wait_page(browser, lambda: (job_card(browser, 'progress') or {}).get('progress') ==
                  '60 %' and live() == 'poll', 'the job page, polling')
        e2e.redis.set('%s:gate:s-4' % e2e.key, 1)
        wait_page(browser, lambda: (job_card(browser, 'progress') or {}).get('progress') ==
                  '80 %', 'progress by polling')
    finally:
        browser.execute_cdp_cmd('Page.removeScriptToEvaluateOnNewDocument',
                                {'identifier': added['identifier']})
    e2e.redis.set('%s:gate:s-5' % e2e.key, 1)
    settle(pool, 'q', 'the job to end', over=1)
    web.stop()


def open_stream(web, query='view=queues'):
    """A raw GET /api/events; the socket, and what came up to the headers' end."""
    sock = socket.create_connection(('127.0.0.1', web.port), timeout=10)
    sock.sendall(b'GET /api/events?%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n'
                 % (query.encode(), web.port))
    head = b''
    while b'\r\n\r\n' not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def test_event_streams_are_capped_say_what_changed_and_end_with_the_server(one_broker):
    pool = one_broker.pool(queue_conf('q'))
    jobs = one_broker.import_jobs()
    web = Web(one_broker, pool.config_path)
    streams = []
    try:
        for _ in range(mpqueue_cli._WEB_STREAMS_MAX):
            sock, head = open_stream(web)
            assert head.startswith(b'HTTP/1.1 200 ') and b'text/event-stream' in head, head
            streams.append(sock)
        sock, head = open_stream(web)
        assert head.startswith(b'HTTP/1.1 503 '), head
        sock.close()
        assert web.json('GET', '/api/queues')[0] == 200         # the others are answered
        mpqueue.push('q', jobs.ok, args=('seen',))
        for sock in streams:
            got = b''
            while b'data: change' not in got:
                got += sock.recv(4096)
        assert open_stream(web, 'view=job&queue=nope&id=x')[1].startswith(b'HTTP/1.1 404 ')
        began = time.monotonic()
        web.stop()
        assert time.monotonic() - began < 3, 'the streams held the server'
        for sock in streams:
            assert sock.recv(4096) == b''
    finally:
        for sock in streams:
            sock.close()


# -- security -----------------------------------------------------------------------------

def test_read_only_shows_no_actions_and_refuses_posts(one_broker, browser):
    pool, jobs = failed_pool(one_broker)
    failed = mpqueue.push('q', jobs.boom, args=('ro',))
    settle(pool, 'q', 'the job to fail', failed=1)
    web = Web(one_broker, pool.config_path, '--read-only')
    browser.get(web.url + '#failed/q')
    wait_page(browser, lambda: set(failed_rows(browser)) == {failed}, 'the failed job')
    assert look(browser, "return document.getElementById('read-only').hidden") is False
    actions = look(browser, """return Array.from(document.querySelectorAll('button'))
        .filter((b) => b.offsetParent !== null).map((b) => b.textContent);""")
    assert actions == [], 'read-only pages show no buttons but %r' % actions
    assert look(browser, "return document.querySelectorAll('[data-action]').length") == 0

    token = web.csrf_token()
    for path in ('/api/queues/q/failed/%s/retry' % failed, '/api/queues/q/failed/retry',
                 '/api/queues/q/failed/%s/delete' % failed, '/api/queues/q/failed/delete?match=r',
                 '/api/queues/q/jobs/%s/cancel' % failed, '/api/queues/q/pause'):
        status, body = web.json('POST', path, {'X-CSRF-Token': token})
        assert status == 403 and 'read-only' in body['error'], (path, status, body)
    assert [job['id'] for job in mpqueue.failed_jobs('q')] == [failed]
    assert mpqueue.status('q')['paused'] is False
    web.stop()


def session_cookies(driver):
    return [c for c in driver.get_cookies() if c['name'].startswith('mpqueue_session')]


def test_token_login_and_bearer(one_broker, browser, tmp_path):
    token = 'correct-horse-battery-staple-%d' % os.getpid()
    pool = one_broker.pool(queue_conf('q'))
    env = dict(one_broker.env(), MPQUEUE_WEB_TOKEN=token)
    web = Web(one_broker, pool.config_path, env=env)

    # The API: 401 without the token or with a wrong one, 200 with it.
    assert web.json('GET', '/api/queues')[0] == 401
    assert web.json('GET', '/api/queues', {'Authorization': 'Bearer wrong-' + token})[0] == 401
    status, body = web.json('GET', '/api/queues', {'Authorization': 'Bearer ' + token})
    assert status == 200 and [q['name'] for q in body] == ['q']
    status, headers, _ = web.request('GET', '/')
    # to the login form, by a relative address (the dashboard may sit under a proxy's path)
    assert (status, headers['Location']) == (303, 'login')

    browser.get(web.url)
    browser.delete_all_cookies()
    browser.get(web.url)
    wait_page(browser, lambda: browser.current_url.endswith('/login'), 'the login form')
    field = browser.find_element(By.ID, 'token')
    field.send_keys('wrong-' + token)
    field.submit()
    wait_page(browser, lambda: browser.find_element(By.ID, 'login-error').text == 'Wrong token.',
              'the wrong token to be refused')
    assert not session_cookies(browser)
    screenshot(browser, tmp_path, 'login')

    field = browser.find_element(By.ID, 'token')
    field.send_keys(token)
    field.submit()
    wait_page(browser, lambda: 'q' in queue_table(browser), 'the dashboard after login')
    (cookie,) = browser.get_cookies()
    assert cookie['httpOnly'] and cookie['sameSite'] == 'Strict', cookie
    assert token not in cookie['value']
    # the cookie works for the API too; a forged one does not
    session = '%s=%s' % (cookie['name'], cookie['value'])
    assert web.json('GET', '/api/fleet', {'Cookie': session})[0] == 200
    assert web.json('GET', '/api/fleet', {'Cookie': session[:-1] + 'x'})[0] == 401

    click(browser, '#logout button', 'Sign out')
    wait_page(browser, lambda: browser.current_url.endswith('/login'), 'the login form again')
    assert not session_cookies(browser)
    web.stop()


def test_posts_need_the_csrf_token_and_every_answer_has_the_headers(one_broker):
    pool, jobs = failed_pool(one_broker)
    failed = mpqueue.push('q', jobs.boom, args=('csrf',))
    settle(pool, 'q', 'the job to fail', failed=1)
    web = Web(one_broker, pool.config_path)
    delete = '/api/queues/q/failed/%s/delete' % failed
    for headers in ({}, {'X-CSRF-Token': 'forged'}):
        status, body = web.json('POST', delete, headers)
        assert status == 403 and 'CSRF' in body['error'], (headers, status, body)
    assert [job['id'] for job in mpqueue.failed_jobs('q')] == [failed]
    status, body = web.json('POST', delete, {'X-CSRF-Token': web.csrf_token()})
    assert (status, body) == (200, {'ok': True, 'deleted': 1})
    assert mpqueue.failed_jobs('q') == []
    status, body = web.json('POST', delete, {'X-CSRF-Token': web.csrf_token()})
    assert status == 404 and failed in body['error']

    for path in ('/', '/app.js', '/app.css', '/api/queues', '/nope'):
        status, headers, _ = web.request('GET', path)
        csp = headers['Content-Security-Policy']
        assert "script-src 'self'" in csp and 'unsafe-inline' not in csp, csp
        assert headers['X-Frame-Options'] == 'DENY' and \
            headers['X-Content-Type-Options'] == 'nosniff', (path, headers)
    status, headers, page = web.request('GET', '/')
    assert re.findall(rb'<script[^>]*>', page) == [b'<script src="app.js" defer>'], \
        'no inline script'
    assert not re.findall(rb'(?:src|href|action)="/', page), 'relative addresses only'

    # Unknown paths are 404, whatever they look like; wrong input is 4xx.
    for path in ('/nope', '/tests/', '/app.js/..', '/../mpqueue.py', '/%2e%2e/etc/passwd',
                 '/api/nope', '/api/queues/q/nope', '/api/queues/nope/failed'):
        assert web.request('GET', path)[0] == 404, path
    assert web.json('GET', '/api/queues/q/failed?count=many')[0] == 400
    assert web.json('GET', '/api/queues/q/failed?offset=-1')[0] == 400
    assert web.json('GET', '/api/queues/q/failed/retry')[0] == 405
    # Without a token only loopback host names are answered (DNS rebinding).
    assert web.request('GET', '/api/queues', {'Host': 'evil.example:%d' % web.port})[0] == 403
    assert web.request('GET', '/api/queues', {'Host': 'localhost:%d' % web.port})[0] == 200

    # Malformed requests get an error and the server goes on.
    for raw in (b'GARBAGE\r\n\r\n', b'GET /api/queues HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                b'Content-Length: x\r\n\r\n', b'POST /api/queues/q/failed/retry HTTP/1.1\r\n'
                b'Host: 127.0.0.1\r\nContent-Length: 99999999\r\n\r\n', b'\x00\xff' * 100 +
                b'\r\n\r\n', b'GET /' + b'a' * 70000 + b' HTTP/1.1\r\n\r\n'):
        with socket.create_connection(('127.0.0.1', web.port), timeout=15) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(100)
        # an error status (or, to a request line without a version, HTTP/0.9's bare error page)
        assert answer == b'' or re.match(rb'HTTP/1\.[01] [45]\d\d |<!DOCTYPE HTML>', answer), \
            (raw[:40], answer)
    with socket.create_connection(('127.0.0.1', web.port), timeout=15) as sock:
        sock.sendall(b'GET /api/queues HTTP/1.1\r\nHost: 127.0.0.1\r\n')   # and nothing more
    assert web.json('GET', '/api/queues')[0] == 200
    web.stop()


def test_a_token_is_needed_beyond_loopback(one_broker):
    pool = one_broker.pool(queue_conf('q'))
    config = str(pool.config_path)
    for args, words in ((('--host', '0.0.0.0'), ('refusing', '0.0.0.0', '--token')),
                        (('--host', '::'), ('refusing', '--token')),
                        (('--host', '0.0.0.0', '--token', 'short'), ('at least 16',)),
                        (('--port', '70000'), ('--port',))):
        res = one_broker.cli('web', '--config', config, *args, timeout=30)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and 'Traceback' not in res.stderr, res.stderr
        for word in words:
            assert word in lines[0], (word, lines[0])
    web = Web(one_broker, pool.config_path)
    res = one_broker.cli('web', '--config', config, '--port', str(web.port), timeout=30)
    assert res.returncode == 1 and 'cannot serve the dashboard' in res.stderr, res.stderr
    web.stop()


# -- a broker that stops answering --------------------------------------------------------

def test_a_slow_or_dead_broker_shows_a_banner_not_a_hung_page(one_broker, browser, tmp_path):
    server = RedisServer(free_port())
    server.start()
    stopped = False
    try:
        config = tmp_path / 'outage_config.py'
        config.write_text('import mpqueue\nconfig = %r\n' % {
            'basics': {'name': 'outage', 'pid_path': str(tmp_path),
                       'driver': Src('mpqueue.RedisDriver(url=%r, prefix="mpqtest-web")'
                                     % (server.url + '/0'))},
            'queue': [{'name': 'q'}]}, encoding='utf-8')
        web = Web(one_broker, config)
        browser.get(web.url)
        wait_page(browser, lambda: 'q' in queue_table(browser) and banner(browser) is None,
                  'the queues with the broker up')

        os.kill(server.pid, signal.SIGSTOP)          # a broker that does not answer
        stopped = True
        began = time.monotonic()
        status, body = web.json('GET', '/api/queues')
        took = time.monotonic() - began
        assert status == 503, (status, body)
        assert 'did not answer' in body['error'] or 'cannot reach' in body['error'], body
        assert took < mpqueue_cli.WEB_BROKER_TIMEOUT + 1.5, took
        text = wait_page(browser, lambda: banner(browser), 'the broker-unreachable banner')
        assert text.startswith('Broker unreachable'), text
        # the page itself still answers: another view opens at once
        click(browser, 'nav a[data-view=fleet]', 'the Fleet tab')
        wait_page(browser, lambda: look(browser, "return !document.getElementById('view-fleet')"
                                                 ".hidden"), 'the fleet view', timeout=2)
        screenshot(browser, tmp_path, 'broker-unreachable')

        os.kill(server.pid, signal.SIGCONT)
        stopped = False
        wait_page(browser, lambda: banner(browser) is None, 'the banner to go away')

        server.kill()                                 # a broker that is gone
        text = wait_page(browser, lambda: banner(browser), 'the banner for a dead broker')
        assert text.startswith('Broker unreachable') and 'cannot reach' in text, text
        status, body = web.json('GET', '/api/fleet')
        assert status == 503 and body['error'], (status, body)
        web.stop()
    finally:
        if stopped:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


# -- waiting and delayed jobs ---------------------------------------------------------------

def queued_rows(driver):
    return look(driver, "return Array.from(document.querySelectorAll("
                        "'#queued-table tbody tr')).map((r) => r.dataset.jobId);")


@pytest.mark.slow
def test_waiting_and_delayed_jobs_page_by_cursor_with_100000_waiting(e2e, browser, tmp_path):
    """100,000 waiting jobs (no pool runs them): the API answers a page of 50
    at any depth in under 50 ms, and the page shows it and the next one."""
    from steps import push_step
    pool = e2e.pool(queue_conf('q'))            # never started: the jobs wait
    driver = mpqueue._get_config()['basics']['driver']
    ids = []
    for _ in range(20):
        ids += driver.execute('q', [push_step() for _ in range(5000)])
    delayed = driver.execute('q', [push_step(delay=600 + i) for i in range(60)])
    cursor, deep = None, 99000                  # the cursor of the page at that depth
    for _ in range(deep // 500):
        cursor = mpqueue.queued_jobs('q', 'waiting', 500, cursor)['cursor']

    web = Web(e2e, pool.config_path)
    seconds = {}
    for where, after in (('first', ''), ('deep', cursor)):
        for _ in range(20):
            started = time.perf_counter()
            status, page = web.json('GET', '/api/queues/q/jobs?state=waiting&count=50' + (
                '&cursor=' + urllib.parse.quote(after) if after else ''))
            seconds.setdefault(where, []).append(time.perf_counter() - started)
            assert status == 200, page
        start = deep if after else 0
        assert [j['id'] for j in page['jobs']] == ids[start:start + 50]
        assert page['total'] == 100000 and page['cursor']
    medians = {where: 1000 * sorted(t)[len(t) // 2] for where, t in seconds.items()}
    print('%s: GET a page of 50 of 100,000 waiting jobs, median of 20: first %.1f ms, '
          'at 99,000 %.1f ms' % (driver.address, medians['first'], medians['deep']))
    assert medians['first'] < 50 and medians['deep'] < 50, medians

    browser.get(web.url + '#queued/q/waiting/' + urllib.parse.quote(cursor, safe=''))
    wait_page(browser, lambda: queued_rows(browser) == ids[deep:deep + 50], 'the deep page')
    assert '50 shown of 100,000 waiting' in browser.find_element(By.ID, 'queued-box').text
    click(browser, '#queued-box .pager a[rel=next]', 'Next')
    wait_page(browser, lambda: queued_rows(browser) == ids[deep + 50:deep + 100], 'the page after')
    # the page reads its page again as the queue changes (a job pushed every
    # 0.5 s here): the median of five reads
    def reads():
        driver.execute('q', [push_step()])
        time.sleep(0.3)
        return (lambda d: len(d) >= 5 and d)(look(
            browser, "return performance.getEntriesByType('resource').filter("
                     "(e) => e.name.includes('/jobs?')).map((e) => e.duration);"))
    fetched = wait_page(browser, reads, 'five reads')
    print('%s: the page fetched %d pages of waiting jobs, median %.1f ms' % (
        driver.address, len(fetched), sorted(fetched)[len(fetched) // 2]))
    assert sorted(fetched)[len(fetched) // 2] < 50, fetched
    screenshot(browser, tmp_path, 'queued')

    browser.get(web.url + '#queued/q/delayed')
    wait_page(browser, lambda: queued_rows(browser) == delayed[:50], 'the delayed jobs')
    click(browser, '#queued-box .pager a[rel=next]', 'Next')
    wait_page(browser, lambda: queued_rows(browser) == delayed[50:], 'the last delayed jobs')
    assert not browser.find_elements(By.CSS_SELECTOR, '#queued-box .pager a[rel=next]')
    status, body = web.json('GET', '/api/queues/q/jobs?state=failed')
    assert status == 400 and 'waiting or delayed' in body['error'], body
    status, body = web.json('GET', '/api/queues/nope/jobs')
    assert status == 404, body
    web.stop()


# -- limits -----------------------------------------------------------------------------------

def test_the_limits_view_shows_running_and_waiting_per_name_as_limits_does(e2e, browser,
                                                                            tmp_path):
    """One job holds the only slot of 'solo' and three wait for it: the Limits
    view, its API and the job page say so; once the holder ends all drain."""
    e2e.write_jobs(OPTION_JOBS)
    pool = e2e.pool(queue_conf('q', worker_number=2, limits={
        'solo': {'concurrency': 1}, 'api': {'rate': 5000, 'per': 3600}})).start()
    jobs = e2e.import_jobs()
    mpqueue.push('q', jobs.gated, args=('holder',), limit='solo')
    pool.wait(lambda: e2e.records('start', tag='holder'), 15, 'the holder to start')
    waiter = mpqueue.push_many('q', [jobs.ok] * 3, args=('waiter',), limit=['solo', 'api'])[0]
    pool.wait(lambda: [(r['name'], r['running'], r['waiting']) for r in mpqueue.limits('q')] ==
              [('api', 0, 0), ('solo', 1, 3)], 15, lambda: 'three jobs to wait for solo (%r)'
              % mpqueue.limits('q'))

    web = Web(e2e, pool.config_path)
    assert web.json('GET', '/api/queues/q/limits') == (200, mpqueue.limits('q'))
    browser.get(web.url + '#limits/q')

    def counts():
        return {name: (row['running'], row['waiting']) for name, row in
                limit_table(browser).items()}

    def as_limits_says():
        return {r['name']: ('{:,}'.format(r['running']), '{:,}'.format(r['waiting']))
                for r in mpqueue.limits('q')}

    def wait_counts(solo, what):
        # the page shows (running, waiting) ``solo`` for solo, as limits() does
        expected = {'api': ('0', '0'), 'solo': solo}
        wait_page(browser, lambda: counts() == as_limits_says() == expected,
                  lambda: '%s: %r (page %r, limits() %r)' % (what, expected, counts(),
                                                             as_limits_says()))
    wait_counts(('1', '3'), 'running 1 and waiting 3 for solo')
    assert limit_table(browser) == {
        'api': {'limit': 'api', 'concurrency': '\u2014', 'rate': '5,000 per 3,600 s',
                'running': '0', 'waiting': '0'},
        'solo': {'limit': 'solo', 'concurrency': '1', 'rate': '\u2014', 'running': '1',
                 'waiting': '3'}}
    assert banner(browser) is None
    assert_fits(browser, 'limits at 1280x800')
    screenshot(browser, tmp_path, 'limits')

    # The job page names the limits a job carries and the one it waits for.
    browser.get(web.url + '#job/q/' + waiter)

    def job_limits():
        return look(browser, """
            const card = document.querySelector('#job-box [data-job-id]');
            const col = (c) => { const e = card && card.querySelector('[data-col=' + c + ']');
                                 return e ? e.textContent : null; };
            return card && {state: col('state'), limit: col('limit'),
                            waiting_for: col('waiting_for')};""")
    assert wait_page(browser, job_limits, 'the waiting job') == {
        'state': 'waiting', 'limit': 'solo, api', 'waiting_for': 'solo'}
    assert mpqueue.job_info('q', waiter)['waiting_for'] == 'solo'
    click(browser, '#job-box [data-col=waiting_for] a', 'the limit the job waits for')
    wait_page(browser, lambda: browser.current_url.endswith('#limits/q'), 'the limits view')
    wait_counts(('1', '3'), 'the limits view again')

    # The holder ends: the waiters run, and the view follows.
    e2e.redis.set('%s:gate:holder' % e2e.key, 1)
    settle(pool, 'q', 'the four jobs to end', over=4)
    wait_counts(('0', '0'), 'nothing running or waiting')
    assert web.json('GET', '/api/queues/q/limits') == (200, mpqueue.limits('q'))

    # An unknown queue is a 404 that names it, on the page too.
    status, body = web.json('GET', '/api/queues/nope/limits')
    assert status == 404 and "'nope'" in body['error'], body
    browser.get(web.url + '#limits/nope')
    text = wait_page(browser, lambda: banner(browser), 'the error banner')
    assert "'nope' is not in the config" in text, text
    web.stop()

    # Read-only: the same view, no buttons.
    web = Web(e2e, pool.config_path, '--read-only')
    browser.get(web.url + '#limits/q')
    wait_counts(('0', '0'), 'the limits view, read-only')
    assert look(browser, "return document.querySelectorAll('[data-action]').length") == 0
    web.stop()
