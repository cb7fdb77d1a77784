"""The manual (README.md and the guide in docs/) runs as written and says
what the code does.

Every ```python block of every page runs in a Python process of its own,
with the package's own dependencies (and Flask for the Flask section, which
says so).  A block whose first line names a file (``# mpqueue_config.py``) is
also saved under that name, and the blocks after it on the same page run
beside those files, so that ``from mpqueue_config import config`` finds the
config shown above it.  A block right after ``<!-- snippet not run: REASON
-->`` is skipped; there are few, each with its reason.

The snippets run unchanged; only the library's default directory (``/tmp``:
pid file, log, SQLite broker) points at the test's own directory, so that a
snippet never writes into a pool of this machine.

Then: every internal link and image finds its file and anchor (on a code
host and in the mkdocs site), the reference (docs/reference.md) has an entry
for every public name of ``mpqueue`` with its signature or value and for
every command of the command line with its options, the tables of commands
and keys are whole, and ``mkdocs build --strict`` passes.
"""

import configparser
import fcntl
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

from docs_pages import (DOCS, PAGES, README, ROOT, anchors, headings, links, name,
                        python_blocks, section)

MAX_NOT_RUN = 3
REFERENCE = DOCS / 'reference.md'

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
    """(page, line, code, file name or None, reason not to run or None) per
    block, page after page."""
    out = []
    for page in PAGES:
        lines = page.read_text().split('\n')
        for line, code in python_blocks(page):
            before = lines[line - 2] + '\n' if line >= 2 else ''
            skip = NOT_RUN.search(before)
            file_name = FILE_LINE.match(code)
            out.append((page, line, code, file_name.group(1) if file_name else None,
                        skip.group(1) if skip else None))
    return out


SNIPPETS = snippets()


def test_the_pages_have_snippets_and_few_are_not_run():
    assert sum(1 for s in SNIPPETS if s[0] == README) >= 2       # the quick start
    assert len(SNIPPETS) >= 30
    not_run = [(name(page), line, why) for page, line, _, _, why in SNIPPETS if why]
    assert len(not_run) <= MAX_NOT_RUN, not_run
    for page, line, why in not_run:
        assert len(why.split()) >= 3, '%s:%d: give the reason it is not run' % (page, line)


@pytest.mark.parametrize('index', [i for i, s in enumerate(SNIPPETS) if not s[4]],
                         ids=lambda i: '%s:%d' % (name(SNIPPETS[i][0]), SNIPPETS[i][1]))
def test_snippet_runs_as_written(index, tmp_path):
    page, line, code, _, _ = SNIPPETS[index]
    files = {}
    for other, _, earlier, file_name, why in SNIPPETS[:index]:
        if other == page and file_name and not why and '/' not in file_name:
            files[file_name] = earlier
    for file_name, earlier in files.items():
        (tmp_path / file_name).write_text(earlier)
    block = tmp_path / ('%s_line_%d.py' % (page.stem.replace('-', '_'), line))
    block.write_text(code)
    res = subprocess.run([sys.executable, '-c', RUNNER, str(block), str(tmp_path)],
                         cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=60)
    assert res.returncode == 0, '%s:%d does not run:\n%s' % (name(page), line, res.stderr)


def test_pip_show_gives_the_library_version_and_the_changelog_names_it(tmp_path):
    """A fresh venv with the package installed from a copy of this tree:
    the metadata pip shows is ``mpqueue.__version__``, and CHANGELOG.md has
    a section for it."""
    import shutil
    import mpqueue
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        '.git', 'tests', 'examples', 'docs', 'site', '*.egg-info', 'build', '__pycache__'))
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
    changelog = (ROOT / 'CHANGELOG.md').read_text()
    assert '\n## %s\n' % mpqueue.__version__ in changelog


# -- the pages hold together ----------------------------------------------------------------

def test_every_internal_link_and_image_finds_its_file_and_anchor():
    """On a code host and in the site: a link to a page of the guide finds
    the heading it names; the guide links only within docs/ (the site has
    nothing else), the README anywhere in the repository."""
    wrong = []
    for page in PAGES:
        for line, is_image, target in links(page):
            if re.match(r'[a-z][a-z+.-]*:', target):        # https:, mailto:
                continue
            where = '%s:%d: %s' % (name(page), line, target)
            path, _, anchor = target.partition('#')
            goal = (page.parent / path).resolve() if path else page
            if not goal.exists():
                wrong.append('%s: no such file' % where)
            elif page.parent == DOCS and DOCS not in goal.parents:
                wrong.append('%s: outside docs/, so not in the site' % where)
            elif anchor and (goal.suffix != '.md' or anchor not in anchors(goal)):
                wrong.append('%s: no heading of %s has this anchor' % (where, name(goal)))
            elif is_image and goal.suffix not in ('.png', '.svg', '.jpg'):
                wrong.append('%s: not an image' % where)
    assert not wrong, '\n'.join(wrong)


def test_headings_are_unique_within_a_page():
    """Anchors of repeated headings differ between GitHub and mkdocs."""
    for page in PAGES:
        titles = [title for _, title, _ in headings(page)]
        assert len(titles) == len(set(titles)), name(page)
        assert [level for level, _, _ in headings(page)][:1] == [1], \
            '%s: starts with its title' % name(page)


def test_every_page_is_in_the_site_and_the_readme_contents():
    nav = re.findall(r'^\s+- [^:\n]+: (\S+\.md)\s*$', (ROOT / 'mkdocs.yml').read_text(), re.M)
    pages = sorted(p.name for p in DOCS.glob('*.md'))
    assert sorted(nav) == pages and len(set(nav)) == len(nav)
    for page in DOCS.glob('*.md'):      # GitHub needs it in a table, the site shows it
        assert '\\|' not in page.read_text(), '%s: write the cell without a "|"' % name(page)
    listed = {target.partition('#')[0] for _, _, target in links(README)}
    assert not {'docs/' + p for p in pages if p != 'index.md'} - listed
    assert len(README.read_text().splitlines()) <= 300


def test_the_quick_start_of_the_guide_is_the_readmes():
    assert python_blocks_of(section('Quick start', README)) == \
        python_blocks_of(section('Quick start', DOCS / 'getting-started.md'))


def python_blocks_of(text):
    return re.findall(r'^```python\n(.*?)^```', text, re.S | re.M)


def test_the_readmes_figures_are_those_of_the_performance_page():
    rows = [line for line in section('Why mpqueue', README).splitlines()
            if line.startswith('| ') and '---' not in line][1:]
    figures = {f for row in rows for f in re.findall(r'\d[\d,.]*\d|\d', row)}
    assert len(rows) >= 3 and figures
    performance = (DOCS / 'performance.md').read_text()
    missing = sorted(f for f in figures if not re.search(r'(?<![\d,.])%s(?![\d,])' % re.escape(f),
                                                         performance))
    assert not missing, 'README figures not on docs/performance.md: %s' % missing


def test_the_readme_keeps_the_command_ci_runs():
    """.ci/run runs the README's test command, verbatim."""
    commands = re.findall(r'^```sh\n(.*?)\n```', section('Two commands', README), re.S | re.M)
    assert commands == ["pip install . && python examples/quickstart.py",
                        "pip install -e '.[test]' && python -m pytest"]
    assert commands[1] + ' || status=$?' in (ROOT / '.ci' / 'run').read_text()


# -- the reference names everything ---------------------------------------------------------

def public_names():
    """Every public name of mpqueue: not ``_private``, no module, no function
    or class it imports from elsewhere."""
    import mpqueue
    out = {}
    for attr in dir(mpqueue):
        value = getattr(mpqueue, attr)
        if attr.startswith('_') or isinstance(value, types.ModuleType):
            continue
        if (inspect.isfunction(value) or inspect.isclass(value)) and \
                value.__module__ != 'mpqueue':
            continue
        out[attr] = value
    return out


def entries(text):
    """The names that have an entry: a heading ``### `name` `` or the first
    cell of a table row ``| `name` |``."""
    return set(re.findall(r'^#{2,4} `([^`]+)`\s*$', text, re.M)) | \
        set(re.findall(r'^\| `([^`]+)` \|', text, re.M))


def test_the_reference_has_every_public_name_with_its_signature():
    import mpqueue
    text = REFERENCE.read_text()
    have = entries(text)
    names = public_names()
    assert set(mpqueue.__all__) <= set(names)
    missing = sorted(set(names) - have)
    assert not missing, 'public names missing from docs/reference.md: %s' % missing
    wrong = []
    for attr, value in names.items():
        if inspect.isfunction(value) or inspect.isclass(value):
            try:
                signature = '`%s%s`' % (attr, inspect.signature(value))
            except ValueError:          # an exception class of the builtins' kind
                continue
            if signature not in text:
                wrong.append('%s: %s' % (attr, signature))
        elif not callable(value) and isinstance(value, (int, float, str, tuple)):
            if not re.search(r'^\| `%s` \| `%s` \|' % (re.escape(attr), re.escape(repr(value))),
                             text, re.M):
                wrong.append('%s = %r' % (attr, value))
    assert not wrong, 'docs/reference.md does not give these as the code has them:\n' + \
        '\n'.join(wrong)


def test_the_reference_has_every_command_with_its_options():
    import mpqueue_cli
    text = REFERENCE.read_text()
    rows = dict(re.findall(r'^\| `([\w:]+)` \|([^|]*)\|', text, re.M))
    wrong = []
    for command, _, takes, _ in mpqueue_cli.COMMANDS:
        if command not in rows:
            wrong.append('%s: missing' % command)
            continue
        named = set(re.findall(r'(?<![\w-])(--[\w-]+)', rows[command]))
        expected = {mpqueue_cli.OPTIONS[option][0][-1] for option in takes}
        if named != expected:
            wrong.append('%s: says %s, takes %s' % (command, sorted(named), sorted(expected)))
    for flags, _ in mpqueue_cli.OPTIONS.values():
        for flag in flags + ('--config', '-c', '--verbose', '-v', '--help', '-h'):
            if '`%s' % flag not in text:
                wrong.append('option %s: missing' % flag)
    for attr in ('main', 'metrics_text', 'DjangoCommand', 'flask_group'):
        if attr not in entries(text):
            wrong.append('mpqueue_cli.%s: missing' % attr)
    for attr in ('main', 'metrics_text'):
        signature = '`%s%s`' % (attr, inspect.signature(getattr(mpqueue_cli, attr)))
        if signature not in text:
            wrong.append('mpqueue_cli.%s: not %s' % (attr, signature))
    assert not wrong, '\n'.join(wrong)


# -- what the manual says is what the code does ---------------------------------------------

def test_the_command_table_lists_every_command():
    import mpqueue_cli
    table = section('Command line')
    missing = [name for name, *_ in mpqueue_cli.COMMANDS if '\n| `%s' % name not in table]
    assert not missing, 'commands missing from the table of docs/command-line.md: %s' % missing


def test_the_configuration_table_lists_every_key():
    import mpqueue
    table = section('Configuration')
    keys = ['basics.%s' % k for k in mpqueue._BASICS_DEFAULTS] + \
        ['log.%s' % k for k in mpqueue._LOG_DEFAULTS] + \
        ['queue[i].%s' % k for k in mpqueue._QUEUE_DEFAULTS]
    missing = [key for key in keys if '\n| `%s` |' % key not in table]
    assert not missing, 'keys missing from the configuration table: %s' % missing


def test_the_schedule_table_lists_every_key():
    import mpqueue
    rows = [line for line in section('Schedules').splitlines() if line.startswith('| `')]
    missing = [key for key in mpqueue._SCHEDULE_DEFAULTS
               if not any('`%s`' % key in row.split(' | ')[0] for row in rows)]
    assert not missing, 'schedule keys missing from the table of docs/schedules.md: %s' % missing


def test_the_metrics_table_lists_every_metric():
    import mpqueue_cli
    names = set(re.findall(r"\('(mpqueue_\w+)', '(?:gauge|counter)'",
                           inspect.getsource(mpqueue_cli.render_metrics)))
    assert len(names) >= 10
    table = section('Prometheus metrics')
    missing = sorted(n for n in names if '\n| `%s` |' % n not in table)
    assert not missing, 'metrics missing from the table of docs/command-line.md: %s' % missing


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
    """The job view answers 404 once a job's outcome is gone: the guide's
    WriteNote keeps it as long as the example project's does."""
    example = (ROOT / 'examples' / 'django_project' / 'notes' / 'jobs.py').read_text()
    snippet = section('With Django')
    ttl = re.compile(r'^\s+result_ttl = (\d+)', re.M)
    assert ttl.search(example), 'the example keeps its outcomes'
    assert ttl.search(snippet) and ttl.search(snippet).group(1) == ttl.search(example).group(1)


def test_the_acl_rule_is_the_one_the_fault_tests_run_with():
    """tests/test_faults.py checks that these rules allow every command of
    the library, and runs a pool as such a user."""
    from fault_harness import MPQ_ACL_RULES
    assert 'ACL SETUSER mpq on >PASSWORD %s\n' % MPQ_ACL_RULES in section('Security')


# -- the site --------------------------------------------------------------------------------

def mkdocs_command():
    """How to run mkdocs here: ``(argv, env)``.  Without it in this Python,
    root installs the ``docs`` extra's mkdocs (setup.cfg) into a directory of
    its own, once per machine, as other tests install what they need;
    anyone else skips."""
    if importlib.util.find_spec('mkdocs') is not None:
        return [sys.executable, '-m', 'mkdocs'], dict(os.environ)
    extras = configparser.ConfigParser()
    extras.read(ROOT / 'setup.cfg')
    spec = extras['options.extras_require']['docs'].split()[0]
    target = Path(tempfile.gettempdir()) / ('mpqueue-test-mkdocs-py%d.%d' % sys.version_info[:2])
    env = dict(os.environ, PYTHONPATH=str(target))
    with open(str(target) + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / 'mkdocs').is_dir():
            if os.geteuid() != 0:
                pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
            res = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--target',
                                  str(target), spec], capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                pytest.skip('pip could not install %s: %s' % (
                    spec, (res.stderr.strip().splitlines() or ['?'])[-1]))
    return [sys.executable, '-m', 'mkdocs'], env


def test_mkdocs_builds_the_site_strictly(tmp_path):
    """No warning: every page in the nav, every link and anchor found."""
    argv, env = mkdocs_command()
    res = subprocess.run(argv + ['build', '--strict', '--config-file', str(ROOT / 'mkdocs.yml'),
                                 '--site-dir', str(tmp_path / 'site')],
                         cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / 'site' / 'reference' / 'index.html').exists()
    assert (tmp_path / 'site' / 'dashboard.png').exists()
