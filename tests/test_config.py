"""mpqueue.configure(): defaults, and one clear ConfigError per mistake."""

import copy
import logging
import math

import pytest

import mpqueue


def _noop():
    pass


def make_config(**sections):
    """A small valid config with two queues; ``sections`` replace whole parts."""
    config = {
        'basics': {'name': 'cfg-test', 'driver': mpqueue.RedisDriver(prefix='mpqtest')},
        'queue': [{'name': 'first'}, {'name': 'second'}],
    }
    config.update(sections)
    return config


@pytest.fixture(autouse=True)
def _restore_config(monkeypatch):
    # configure() sets a module global: keep tests independent of each other.
    monkeypatch.setattr(mpqueue, '_config', None)


def assert_config_error(config, path, value=None, check_value=True):
    """configure(config) raises one single-line ConfigError naming ``path`` and ``repr(value)``."""
    with pytest.raises(mpqueue.ConfigError) as info:
        mpqueue.configure(config)
    message = str(info.value)
    assert '\n' not in message, message
    assert path in message, message
    if check_value:
        assert repr(value) in message, message
    assert isinstance(info.value, mpqueue.MPQueueError)
    return message


# -- defaults ------------------------------------------------------------------

def test_every_default_is_filled_in():
    result = mpqueue.configure({'basics': {'name': 'cfg-test'},
                                'queue': [{'name': 'q1'}]})
    basics = result['basics']
    assert basics['name'] == 'cfg-test'
    assert basics['pid_path'] == '/tmp'
    assert basics['worker_start_handle'] is None
    assert basics['secret'] is None
    # Default driver: SQLite under pid_path.
    assert isinstance(basics['driver'], mpqueue.SqliteDriver)
    assert basics['driver'].path.startswith('/tmp/')
    assert result['log'] == {'path': '/tmp', 'level': logging.INFO, 'driver': None}
    [queue] = result['queue']
    expected = {'name': 'q1', 'worker_number': 3, 'memory_limit': 128, 'sleep_seconds': 1,
                'timeout': 120, 'fail_number': 3, 'fail_expire': 3, 'fail_handle': None,
                'worker_start_handle': None, 'model': mpqueue.MODEL_DISTRIBUTE}
    for key, value in expected.items():
        assert queue[key] == value, key


def test_default_driver_lives_under_pid_path(tmp_path):
    result = mpqueue.configure({'basics': {'name': 'pool-a', 'pid_path': str(tmp_path)},
                                'queue': [{'name': 'q1'}]})
    driver = result['basics']['driver']
    assert isinstance(driver, mpqueue.SqliteDriver)
    assert driver.path.startswith(str(tmp_path))


def test_given_values_are_kept():
    handle = _noop
    driver = mpqueue.RedisDriver(prefix='mpqtest')
    config = {
        'basics': {'name': 'pool.b_1-x', 'pid_path': '/var/tmp', 'driver': driver,
                   'worker_start_handle': handle, 'secret': b'k'},
        'log': {'path': '/var/tmp', 'level': logging.DEBUG, 'driver': logging.NullHandler()},
        'queue': [{'name': 'a:b.c-d_e', 'worker_number': 1, 'memory_limit': 0,
                   'sleep_seconds': 0.001, 'timeout': 0.5, 'fail_number': 0,
                   'fail_expire': 0, 'fail_handle': handle, 'worker_start_handle': handle,
                   'model': mpqueue.MODEL_GRAB}],
    }
    result = mpqueue.configure(config)
    assert result['basics']['driver'] is driver
    assert result['basics']['worker_start_handle'] is handle
    assert result['basics']['pid_path'] == '/var/tmp'
    assert result['log']['level'] == logging.DEBUG
    q = result['queue'][0]
    assert (q['worker_number'], q['memory_limit'], q['sleep_seconds'], q['timeout'],
            q['fail_number'], q['fail_expire'], q['model']) == (
                1, 0, 0.001, 0.5, 0, 0, mpqueue.MODEL_GRAB)
    assert q['fail_handle'] is handle


def test_configure_does_not_modify_its_argument():
    config = make_config(basics={'name': 'cfg-test', 'secret': 'text',
                                 'driver': mpqueue.RedisDriver(prefix='mpqtest')})
    before = {k: (copy.copy(v) if isinstance(v, dict) else [dict(q) for q in v])
              for k, v in config.items()}
    mpqueue.configure(config)
    assert config['basics'] == before['basics']
    assert config['queue'] == before['queue']
    assert 'log' not in config


def test_secret_str_becomes_bytes():
    config = make_config()
    config['basics']['secret'] = 's3cret'
    assert mpqueue.configure(config)['basics']['secret'] == b's3cret'
    config['basics']['secret'] = b'raw\x00bytes'
    assert mpqueue.configure(config)['basics']['secret'] == b'raw\x00bytes'


@pytest.mark.parametrize('level, expected', [
    ('debug', logging.DEBUG), ('WARNING', logging.WARNING), (logging.ERROR, logging.ERROR),
])
def test_log_level_names_and_numbers(level, expected):
    config = make_config(log={'level': level})
    assert mpqueue.configure(config)['log']['level'] == expected


def test_log_driver_may_be_a_factory():
    config = make_config(log={'driver': logging.NullHandler})
    assert mpqueue.configure(config)['log']['driver'] is logging.NullHandler


def test_failed_configure_keeps_previous_config():
    good = mpqueue.configure(make_config())
    bad = make_config()
    bad['queue'][0]['worker_number'] = 0
    with pytest.raises(mpqueue.ConfigError):
        mpqueue.configure(bad)
    assert mpqueue._get_config() is good


# -- structure -----------------------------------------------------------------

def test_config_must_be_a_dict():
    assert_config_error([('basics', {})], 'config', [('basics', {})])


def test_missing_basics():
    config = make_config()
    del config['basics']
    assert_config_error(config, 'basics', check_value=False)


def test_missing_pool_name_says_it_is_required():
    config = make_config(basics={'driver': mpqueue.RedisDriver(prefix='mpqtest')})
    message = assert_config_error(config, 'basics.name', check_value=False)
    assert 'is required' in message and 'got None' not in message, message


@pytest.mark.parametrize('given', [{'worker_number': 2}, {'name': None}])
def test_missing_queue_name_says_it_is_required(given):
    config = make_config(queue=[given])
    message = assert_config_error(config, 'queue[0].name', check_value=False)
    assert 'queue[0].name is required' in message and 'got None' not in message, message


@pytest.mark.parametrize('name', ['', 'has space', 'slash/es', 5, b'bytes'])
def test_bad_pool_name(name):
    config = make_config()
    config['basics']['name'] = name
    assert_config_error(config, 'basics.name', name)


@pytest.mark.parametrize('section, value', [
    ('basics', 'not a dict'), ('basics', None), ('log', ['path', '/tmp']), ('log', 3),
])
def test_section_must_be_a_dict(section, value):
    assert_config_error(make_config(**{section: value}), section, value)


@pytest.mark.parametrize('queues', [None, [], {'name': 'q'}, 'q'])
def test_queue_must_be_a_non_empty_list(queues):
    config = make_config()
    if queues is None:
        del config['queue']
    else:
        config['queue'] = queues
    assert_config_error(config, 'queue', queues)


def test_queue_entry_must_be_a_dict():
    config = make_config(queue=[{'name': 'a'}, 'b'])
    assert_config_error(config, 'queue[1]', 'b')


# -- unknown keys at every level ----------------------------------------------

def test_unknown_top_level_key():
    config = make_config()
    config['queues'] = []
    assert_config_error(config, 'config', 'queues')


def test_typo_in_basics_is_named():
    config = make_config()
    config['basics']['dirver'] = mpqueue.RedisDriver(prefix='mpqtest')
    assert_config_error(config, 'basics', 'dirver')


def test_unknown_key_in_log():
    assert_config_error(make_config(log={'levle': 'INFO'}), 'log', 'levle')


def test_unknown_key_in_a_queue():
    config = make_config()
    config['queue'][1]['worker_numbr'] = 2
    assert_config_error(config, 'queue[1]', 'worker_numbr')


def test_non_string_unknown_key():
    config = make_config()
    config['basics'][7] = 'x'
    assert_config_error(config, 'basics', 7)


# -- queue names -----------------------------------------------------------------

@pytest.mark.parametrize('name', ['', 'with space', 'br{ace}', 12, 'x' * 101])
def test_bad_queue_name(name):
    config = make_config()
    if name is None:
        del config['queue'][1]['name']
    else:
        config['queue'][1]['name'] = name
    assert_config_error(config, 'queue[1].name', name)


def test_duplicate_queue_names():
    config = make_config(queue=[{'name': 'a'}, {'name': 'b'}, {'name': 'a'}])
    assert_config_error(config, 'queue[2].name', 'a')


# -- numbers ---------------------------------------------------------------------

@pytest.mark.parametrize('key, value', [
    ('worker_number', 0),
    ('worker_number', -1),
    ('worker_number', 2.5),
    ('worker_number', '3'),
    ('worker_number', True),        # a bool is not an int here
    ('worker_number', None),
    ('memory_limit', -1),
    ('memory_limit', '128M'),
    ('memory_limit', False),
    ('sleep_seconds', 0),
    ('sleep_seconds', 0.0009),
    ('sleep_seconds', -1),
    ('sleep_seconds', True),
    ('timeout', -0.5),
    ('timeout', '120'),
    ('timeout', True),
    ('timeout', math.nan),
    ('fail_number', -1),
    ('fail_number', 1.5),
    ('fail_number', True),
    ('fail_number', None),
    ('fail_expire', -0.001),
    ('fail_expire', []),
    ('fail_expire', [3, -1]),
    ('fail_expire', '3'),
    ('fail_expire', False),
])
def test_bad_queue_numbers(key, value):
    config = make_config()
    config['queue'][1][key] = value
    assert_config_error(config, 'queue[1].%s' % key, value)


def test_sleep_seconds_minimum_is_accepted():
    config = make_config()
    config['queue'][0]['sleep_seconds'] = 0.001
    assert mpqueue.configure(config)['queue'][0]['sleep_seconds'] == 0.001


@pytest.mark.parametrize('key, value', [
    ('max_payload', 0), ('max_payload', 1.5), ('max_payload', True), ('stop_grace', -1),
])
def test_bad_basics_numbers(key, value):
    config = make_config()
    config['basics'][key] = value
    assert_config_error(config, 'basics.%s' % key, value)


# -- other values ------------------------------------------------------------------

@pytest.mark.parametrize('model', ['roundrobin', None, 1, 'GRAB'])
def test_unknown_model(model):
    config = make_config()
    config['queue'][0]['model'] = model
    assert_config_error(config, 'queue[0].model', model)


def test_coroutine_workers_need_the_distribute_model():
    config = make_config()
    config['queue'][0].update(model=mpqueue.MODEL_GRAB, coroutine_number=10)
    assert_config_error(config, 'queue[0].coroutine_number', 'grab')
    config['queue'][0]['model'] = mpqueue.MODEL_DISTRIBUTE
    assert mpqueue.configure(config)['queue'][0]['coroutine_number'] == 10


@pytest.mark.parametrize('key', ['fail_handle', 'worker_start_handle'])
@pytest.mark.parametrize('value', ['module:function', 42])
def test_queue_handles_must_be_callable(key, value):
    config = make_config()
    config['queue'][1][key] = value
    assert_config_error(config, 'queue[1].%s' % key, value)


@pytest.mark.parametrize('value', ['module:function', 42])
def test_basics_worker_start_handle_must_be_callable(value):
    config = make_config()
    config['basics']['worker_start_handle'] = value
    assert_config_error(config, 'basics.worker_start_handle', value)


@pytest.mark.parametrize('level', ['LOUD', '', True, 1.5, None, [logging.INFO]])
def test_bad_log_level(level):
    assert_config_error(make_config(log={'level': level}), 'log.level', level)


@pytest.mark.parametrize('value', ['file', 3])
def test_bad_log_driver(value):
    assert_config_error(make_config(log={'driver': value}), 'log.driver', value)


@pytest.mark.parametrize('path', ['', None, 5])
def test_bad_log_path(path):
    assert_config_error(make_config(log={'path': path}), 'log.path', path)


@pytest.mark.parametrize('path', ['', None, 5])
def test_bad_pid_path(path):
    config = make_config()
    config['basics']['pid_path'] = path
    assert_config_error(config, 'basics.pid_path', path)


@pytest.mark.parametrize('key, value', [
    ('basics.pid_path', 'run'), ('basics.pid_path', './run'), ('log.path', 'logs'),
    ('log.path', '~/logs'),
])
def test_relative_directories_are_refused_with_the_fix(key, value):
    """A daemon runs in / and a pusher from cron or a web server runs in a
    directory of its own: a relative path would name different files for
    each, so it is refused, and the message shows how to build the path."""
    config = make_config()
    section, name = key.split('.')
    config.setdefault(section, {})[name] = value
    message = assert_config_error(config, key, value)
    assert 'absolute' in message, message
    fix = ('os.path.expanduser(%r)' if value.startswith('~') else
           'os.path.join(os.path.dirname(os.path.abspath(__file__)), %r)') % value
    assert fix in message, message


def test_relative_sqlite_file_is_refused_with_the_fix():
    config = make_config()
    config['basics']['driver'] = mpqueue.SqliteDriver('jobs.db')
    message = assert_config_error(config, 'basics.driver', 'jobs.db')
    assert 'absolute' in message, message
    assert "mpqueue.SqliteDriver(os.path.join(os.path.dirname(os.path.abspath(__file__)), " \
        "'jobs.db'))" in message, message


def test_a_sqlite_database_in_memory_is_refused_as_a_pools_broker(tmp_path, monkeypatch):
    config = make_config()
    config['basics']['driver'] = mpqueue.SqliteDriver(':memory:')
    message = assert_config_error(config, 'basics.driver', check_value=False)
    assert "SqliteDriver(':memory:')" in message and 'file path' in message, message
    monkeypatch.chdir(tmp_path)     # in memory: no file, no lock file, here or anywhere
    driver = mpqueue.SqliteDriver(':memory:')
    assert driver.run('q', 'push', 'a', b'x', 0, 'j', 0, 0, '3', 0, '', '', 0, '', '', '', 0) == 'a'
    assert driver.run('q', 'info', 'a', '')['state'] == 'waiting'
    assert list(tmp_path.iterdir()) == []


def test_absolute_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    config = {'basics': {'name': 'abs', 'pid_path': str(tmp_path / 'run')},
              'log': {'path': str(tmp_path / 'log')}, 'queue': [{'name': 'q'}]}
    monkeypatch.chdir(tmp_path)
    here = mpqueue.configure(config)['basics']['driver']
    monkeypatch.chdir('/')
    there = mpqueue.configure(config)['basics']['driver']
    assert here.path == there.path == str(tmp_path / 'run' / 'abs.db')


@pytest.mark.parametrize('secret', ['', b'', 123, ['k']])
def test_bad_secret(secret):
    config = make_config()
    config['basics']['secret'] = secret
    message = assert_config_error(config, 'basics.secret', check_value=False)
    # The bad value is shown (a str secret as the bytes it became).
    shown = secret.encode() if isinstance(secret, str) else secret
    assert repr(shown) in message or repr(secret) in message, message


class NotADriver:
    def execute(self, queue, ops):
        return []

    def __repr__(self):
        return '<NotADriver>'


@pytest.mark.parametrize('driver', [NotADriver(), 'redis://127.0.0.1:6379', {'host': 'x'},
                                    mpqueue.RedisDriver])
def test_basics_driver_must_be_a_driver(driver):
    config = make_config()
    config['basics']['driver'] = driver
    assert_config_error(config, 'basics.driver', driver)


def test_error_messages_are_one_line_even_for_multiline_values():
    config = make_config()
    config['queue'][0]['name'] = 'two\nlines'
    message = assert_config_error(config, 'queue[0].name', 'two\nlines')
    assert '\n' not in message
