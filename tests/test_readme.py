"""The README's Python snippets run as written.

Every ```python block of README.md runs in a Python process of its own, with
the package's own dependencies (and Flask for the Flask section, which says
so).  A block whose first line names a file (``# mpqueue_config.py``) is also
saved under that name, and the blocks after it run beside those files, so
that ``from mpqueue_config import config`` finds the config shown above it.
A block right after ``<!-- snippet not run: REASON -->`` is skipped; there
are few, each with its reason.

The snippets run unchanged; only the library's default directory (``/tmp``:
pid file, log, SQLite broker) points at the test's own directory, so that a
snippet never writes into a pool of this machine.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / 'README.md'
MAX_NOT_RUN = 3

FENCE = re.compile(r'^```python\n(.*?)^```', re.S | re.M)
NOT_RUN = re.compile(r'<!-- snippet not run: (.+?) -->\n$')
FILE_LINE = re.compile(r'^# ([\w/]+\.py)\b')

RUNNER = '''\
import runpy
import sys

import mpqueue

mpqueue._BASICS_DEFAULTS['pid_path'] = mpqueue._LOG_DEFAULTS['path'] = sys.argv[2]
sys.path.insert(0, sys.argv[2])
runpy.run_path(sys.argv[1], run_name='__main__')
'''


def snippets():
    """(line, code, file name or None, reason not to run or None) per block."""
    text = README.read_text()
    out = []
    for match in FENCE.finditer(text):
        line = text.count('\n', 0, match.start()) + 1
        before = text[:match.start()]
        skip = NOT_RUN.search(before[before.rfind('\n', 0, len(before) - 1) + 1:])
        name = FILE_LINE.match(match.group(1))
        out.append((line, match.group(1), name.group(1) if name else None,
                    skip.group(1) if skip else None))
    return out


SNIPPETS = snippets()


def test_the_readme_has_snippets_and_few_are_not_run():
    assert len(SNIPPETS) >= 8
    not_run = [(line, why) for line, _, _, why in SNIPPETS if why]
    assert len(not_run) <= MAX_NOT_RUN, not_run
    for line, why in not_run:
        assert len(why.split()) >= 3, 'README.md:%d: give the reason it is not run' % line


@pytest.mark.parametrize('index', [i for i, s in enumerate(SNIPPETS) if not s[3]],
                         ids=lambda i: 'README.md:%d' % SNIPPETS[i][0])
def test_snippet_runs_as_written(index, tmp_path):
    files = {}
    for _, code, name, why in SNIPPETS[:index]:
        if name and not why and '/' not in name:
            files[name] = code
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    line, code, _, _ = SNIPPETS[index]
    block = tmp_path / ('readme_line_%d.py' % line)
    block.write_text(code)
    res = subprocess.run([sys.executable, '-c', RUNNER, str(block), str(tmp_path)],
                         cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=60)
    assert res.returncode == 0, 'README.md:%d does not run:\n%s' % (line, res.stderr)


def test_pip_show_gives_the_library_version_and_the_changelog_names_it(tmp_path):
    """A fresh venv with the package installed from a copy of this tree:
    the metadata pip shows is ``mpqueue.__version__``, and CHANGELOG.md has
    a section for it."""
    import shutil
    import mpqueue
    root = README.parent
    src = tmp_path / 'src'
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(
        '.git', 'tests', 'examples', 'docs', '*.egg-info', 'build', '__pycache__'))
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    pip = [str(venv / 'bin' / 'python'), '-m', 'pip']
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}   # only the venv's own
    install = subprocess.run(pip + ['install', '-q', '--no-deps', str(src)], env=env,
                             capture_output=True, text=True, timeout=240)
    assert install.returncode == 0, install.stdout + install.stderr
    shown = subprocess.run(pip + ['show', 'mpqueue'], env=env, capture_output=True, text=True,
                           check=True)
    assert 'Version: %s\n' % mpqueue.__version__ in shown.stdout, shown.stdout
    changelog = (root / 'CHANGELOG.md').read_text()
    assert '\n## %s\n' % mpqueue.__version__ in changelog


# -- what the README says is what the code does ---------------------------------------------

def section(title):
    """The text of the README section ``## title`` (up to the next ``## ``)."""
    text = README.read_text()
    start = text.index('\n## %s\n' % title)
    end = text.find('\n## ', start + 1)
    return text[start:end if end > 0 else len(text)]


def test_the_command_table_lists_every_command():
    import mpqueue_cli
    table = section('Command line')
    missing = [name for name, *_ in mpqueue_cli.COMMANDS if '\n| `%s' % name not in table]
    assert not missing, 'commands missing from the README table: %s' % missing


def test_the_configuration_table_lists_every_key():
    import mpqueue
    table = section('Configuration')
    keys = ['basics.%s' % k for k in mpqueue._BASICS_DEFAULTS] + \
        ['log.%s' % k for k in mpqueue._LOG_DEFAULTS] + \
        ['queue[i].%s' % k for k in mpqueue._QUEUE_DEFAULTS]
    missing = [key for key in keys if '\n| `%s` |' % key not in table]
    assert not missing, 'keys missing from the README table: %s' % missing


def test_the_fleet_keys_named_are_those_a_heartbeat_writes(redis_url, redis_db):
    import uuid

    import redis
    import mpqueue
    names = set(re.findall(r'`\{prefix\}:(\{fleet\}:\w+)`', section('Fleet view')))
    assert names
    prefix = 'mpqtest-readme-%s' % uuid.uuid4().hex[:8]
    driver = mpqueue.RedisDriver(url='%s/%d' % (redis_url, redis_db), prefix=prefix)
    client = redis.Redis.from_url(redis_url, db=redis_db)
    try:
        driver.heartbeat('pool@host:1', 'q', {'workers': 1}, 10)
        written = {key.decode()[len(prefix) + 1:] for key in client.keys(prefix + ':*')}
        assert written == names
    finally:
        for key in client.keys(prefix + ':*'):
            client.delete(key)
        client.close()


def test_what_the_dashboard_and_immediate_mode_sections_say_holds():
    dashboard, immediate = section('Dashboard'), section('Immediate mode (for tests)')
    # every view works: job lookup, cancel, schedules and the broker's history
    assert '501' not in dashboard and 'no history' not in dashboard
    # a 'queued' key pushed twice runs twice there (tests/test_immediate.py shows it)
    assert 'unique keys\n  de-duplicate' not in immediate and 'which runs too' in immediate


def test_the_django_view_snippet_keeps_the_outcome_as_the_example_does():
    """The job view answers 404 once a job's outcome is gone: the README's
    WriteNote keeps it as long as the example project's does."""
    example = (README.parent / 'examples' / 'django_project' / 'notes' / 'jobs.py').read_text()
    snippet = section('With Django')
    ttl = re.compile(r'^\s+result_ttl = (\d+)', re.M)
    assert ttl.search(example), 'the example keeps its outcomes'
    assert ttl.search(snippet) and ttl.search(snippet).group(1) == ttl.search(example).group(1)
