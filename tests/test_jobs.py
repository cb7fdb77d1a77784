"""push / push_many against a real Redis, and the payload envelope."""

import functools
import hashlib
import hmac
import json
import os
import pickle
import threading
import time
import uuid

import cloudpickle
import pytest

import mpqueue
from redis_server import RedisServer, free_port
from steps import PREFIX, RedisStore, counts, info, reserve, zero_counts

MAX_PAYLOAD = 64 * 1024


# -- jobs used by the tests (module level: importable in any process) --------

def add(a, b):
    return a + b


def make_adder(n):
    def adder(x):
        return x + n
    return adder


class SendMail(mpqueue.Job):
    timeout = 30
    fail_number = 5
    fail_expire = 0.5

    def __init__(self, to='someone@example.com'):
        self.to = to

    def handle(self):
        return self.to


class NoTimeoutJob(mpqueue.Job):
    timeout = 0          # 0 means "no timeout", not "use the queue's"

    def handle(self):
        pass


class DefaultsJob(mpqueue.Job):
    def handle(self):
        pass


class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting

    def greet(self, name):
        return '%s, %s' % (self.greeting, name)


class CreatesFile:
    """Unpickling this runs ``open(path, 'w')``: it leaves a file behind."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


# -- fixtures ------------------------------------------------------------------

def _queue_name(tag):
    return 'jobs-%s-%s' % (tag, uuid.uuid4().hex[:10])


def _configure(driver, queues, **basics):
    config = {'basics': dict({'name': 'jobs-test', 'driver': driver,
                              'max_payload': MAX_PAYLOAD}, **basics),
              'queue': queues}
    return mpqueue.configure(config)


@pytest.fixture
def driver(redis_db_url):
    drv = mpqueue.RedisDriver(url=redis_db_url, prefix=PREFIX)
    yield drv
    drv.close()


@pytest.fixture
def store(redis_client):
    """The keys on the test database (emptied before and after the test)."""
    return RedisStore(redis_client)


@pytest.fixture
def queues(driver, store, monkeypatch):
    """Configure two queues with distinct settings; clean them afterwards."""
    monkeypatch.setattr(mpqueue, '_config', None)
    main, other = _queue_name('main'), _queue_name('other')
    _configure(driver, [
        {'name': main, 'timeout': 50, 'fail_number': 4, 'fail_expire': 2.5},
        {'name': other},
    ])
    yield main, other
    for name in (main, other):
        mpqueue.clean(name)
        assert counts(driver, name) == zero_counts()
        assert store.leftovers(name) == []


@pytest.fixture
def queue(queues):
    return queues[0]


def assert_nothing_written(queue):
    assert mpqueue.status(queue) == {'all': 0, 'waiting': 0, 'working': 0, 'failed': 0,
                                     'over': 0, 'expired': 0, 'paused': False}


# -- push ------------------------------------------------------------------------

def test_push_returns_an_id_and_status_counts_it(queue, driver):
    job_id = mpqueue.push(queue, add, args=(1, 2))
    assert isinstance(job_id, str) and job_id
    assert mpqueue.status(queue) == {'all': 1, 'waiting': 1, 'working': 0, 'failed': 0,
                                     'over': 0, 'expired': 0, 'paused': False}
    record = info(driver, queue, job_id)
    assert record['state'] == 'waiting' and record['exec_number'] == 0
    assert record['job'].endswith('add')
    [got] = reserve(driver, queue, 10)
    assert got['id'] == job_id
    job, args, kwargs = mpqueue._decode(got['payload'], None)
    assert job(*args, **kwargs) == 3


def test_push_ids_are_unique(queue):
    ids = [mpqueue.push(queue, add, args=(i, i)) for i in range(50)]
    assert len(set(ids)) == 50
    assert mpqueue.status(queue)['all'] == 50


def test_push_with_delay_counts_as_waiting_but_is_not_ready(queue, driver):
    job_id = mpqueue.push(queue, add, delay=30, args=(1, 1))
    assert mpqueue.status(queue)['waiting'] == 1
    assert info(driver, queue, job_id)['state'] == 'delayed'
    assert reserve(driver, queue, 1) == []


def test_push_many_returns_ids_in_order(queue, driver):
    jobs = [functools.partial(add, i, i) for i in range(20)]
    ids = mpqueue.push_many(queue, jobs)
    assert len(ids) == 20 and len(set(ids)) == 20
    assert mpqueue.status(queue)['all'] == 20
    reserved = reserve(driver, queue, 100)
    assert [got['id'] for got in reserved] == ids
    results = []
    for got in reserved:
        job, args, kwargs = mpqueue._decode(got['payload'], None)
        results.append(job(*args, **kwargs))
    assert results == [2 * i for i in range(20)]


def test_push_many_of_nothing_writes_nothing(queue):
    assert mpqueue.push_many(queue, []) == []
    assert_nothing_written(queue)


def _commandstats(client):
    return {name: stats['calls'] for name, stats in client.info('commandstats').items()}


# The FCALL itself, INFO of the spy, and what the lifecycle library calls.
_SCRIPT_COMMANDS = {'cmdstat_' + c for c in (
    'fcall', 'info', 'time', 'hset', 'hget', 'hincrby', 'rpush', 'lpush', 'zadd',
    'zrange', 'publish')}


def test_push_many_is_one_round_trip(monkeypatch):
    # A private server, so that no other client's commands are counted.
    monkeypatch.setattr(mpqueue, '_config', None)
    with RedisServer(free_port()) as server:
        drv = mpqueue.RedisDriver(url=server.url + '/3', prefix=PREFIX)
        name = _queue_name('trip')
        _configure(drv, [{'name': name}])
        mpqueue.status(name)     # connect and load the script first
        spy = server.client(db=3)
        before = _commandstats(spy)
        ids = mpqueue.push_many(name, [functools.partial(add, i, 1) for i in range(200)],
                                delay=0)
        after = _commandstats(spy)
        assert len(ids) == 200
        assert after.get('cmdstat_fcall', 0) - before.get('cmdstat_fcall', 0) == 1
        # Commands run inside the script are counted too: one RPUSH per job
        # from a single FCALL. Nothing else reached the server.
        assert after['cmdstat_rpush'] - before.get('cmdstat_rpush', 0) == 200
        others = {k: after[k] - before.get(k, 0) for k in after
                  if k not in _SCRIPT_COMMANDS and after[k] != before.get(k, 0)}
        assert others == {}, others
        assert mpqueue.status(name)['all'] == 200
        mpqueue.clean(name)
        drv.close()
        spy.close()


# -- per-job settings ----------------------------------------------------------------

def _settings(driver, queue, job_id):
    record = info(driver, queue, job_id)
    return record['timeout'], record['fail_number'], json.loads(record['fail_expire'])


def test_settings_default_to_the_queue_config(queue, driver):
    job_id = mpqueue.push(queue, add, args=(1, 2))
    assert _settings(driver, queue, job_id) == (50, 4, 2.5)
    job_id = mpqueue.push(queue, DefaultsJob())
    assert _settings(driver, queue, job_id) == (50, 4, 2.5)


def test_settings_of_another_queue_are_its_own(queues, driver):
    _, other = queues
    job_id = mpqueue.push(other, add, args=(1, 2))
    assert _settings(driver, other, job_id) == (120, 3, 3)


def test_job_attributes_beat_queue_config(queue, driver):
    instance_id = mpqueue.push(queue, SendMail('a@example.com'))
    class_id = mpqueue.push(queue, SendMail)
    assert _settings(driver, queue, instance_id) == (30, 5, 0.5)
    assert _settings(driver, queue, class_id) == (30, 5, 0.5)


def test_job_attribute_zero_is_not_none(queue, driver):
    job_id = mpqueue.push(queue, NoTimeoutJob())
    assert _settings(driver, queue, job_id) == (0, 4, 2.5)


def test_push_arguments_beat_job_attributes(queue, driver):
    job_id = mpqueue.push(queue, SendMail(), timeout=7, fail_number=1, fail_expire=0.25)
    assert _settings(driver, queue, job_id) == (7, 1, 0.25)
    # 0 given at push time is a value, not "unset".
    job_id = mpqueue.push(queue, SendMail(), timeout=0, fail_number=0, fail_expire=0)
    assert _settings(driver, queue, job_id) == (0, 0, 0)
    job_id = mpqueue.push(queue, add, args=(1, 1), timeout=9)
    assert _settings(driver, queue, job_id) == (9, 4, 2.5)


def test_push_many_settings_apply_per_job(queue, driver):
    ids = mpqueue.push_many(queue, [SendMail(), add, NoTimeoutJob], fail_number=2)
    assert [_settings(driver, queue, i) for i in ids] == [(30, 2, 0.5), (50, 2, 2.5),
                                                          (0, 2, 2.5)]


def test_the_record_has_create_time_and_name(queue, driver):
    before = time.time()
    job_id = mpqueue.push(queue, SendMail())
    record = info(driver, queue, job_id)
    assert before - 1 <= record['create_time'] <= time.time() + 1
    assert record['job'].endswith('SendMail')
    assert record['exec_number'] == 0


@pytest.mark.parametrize('kwargs', [
    {'timeout': -1}, {'fail_number': -1}, {'fail_number': '3'}, {'fail_expire': 'soon'},
    {'timeout': True},
])
def test_bad_push_settings_are_refused(queue, kwargs):
    with pytest.raises((mpqueue.MPQueueError, TypeError, ValueError)):
        mpqueue.push(queue, add, args=(1, 2), **kwargs)
    assert_nothing_written(queue)


@pytest.mark.parametrize('delay', [-1, 'soon', None])
def test_bad_delay_is_refused(queue, delay):
    with pytest.raises(mpqueue.ConfigError) as info:
        mpqueue.push(queue, add, delay=delay, args=(1, 2))
    assert repr(delay) in str(info.value)
    assert_nothing_written(queue)


# -- bad jobs write nothing ------------------------------------------------------------

@pytest.mark.parametrize('job', [42, None, 'not an import path', 'pkg.mod', ':attr',
                                 b'pkg.mod:attr', ['pkg.mod:attr']])
def test_non_callable_job_is_a_type_error(queue, job):
    with pytest.raises(TypeError) as info:
        mpqueue.push(queue, job)
    assert queue in str(info.value)
    assert_nothing_written(queue)


def test_non_callable_in_push_many_writes_nothing(queue):
    with pytest.raises(TypeError):
        mpqueue.push_many(queue, [add, 'os.path:join', 42])
    assert_nothing_written(queue)


def test_import_path_is_accepted(queue, driver):
    job_id = mpqueue.push(queue, 'os.path:join', args=('a', 'b'))
    [got] = reserve(driver, queue, 1)
    assert got['id'] == job_id
    job, args, _ = mpqueue._decode(got['payload'], None)
    assert job == 'os.path:join'
    func, obj = mpqueue._resolve(job)
    assert func(*args) == os.path.join('a', 'b') and obj is None


def test_unpicklable_job_is_a_serialization_error(queue):
    lock = threading.Lock()
    job = lambda: lock.acquire()  # noqa: E731
    with pytest.raises(mpqueue.SerializationError) as info:
        mpqueue.push(queue, job)
    assert queue in str(info.value)
    assert '\n' not in str(info.value)
    assert_nothing_written(queue)


def test_unpicklable_argument_is_a_serialization_error(queue):
    with pytest.raises(mpqueue.SerializationError):
        mpqueue.push(queue, add, args=(threading.Lock(), 1))
    assert_nothing_written(queue)


def test_one_unpicklable_job_in_push_many_writes_nothing(queue):
    lock = threading.Lock()
    with pytest.raises(mpqueue.SerializationError):
        mpqueue.push_many(queue, [add, SendMail(), lambda: lock.locked()])
    assert_nothing_written(queue)


def test_unknown_queue_is_a_config_error_naming_it(queue):
    with pytest.raises(mpqueue.ConfigError) as info:
        mpqueue.push('no-such-queue', add, args=(1, 2))
    assert "'no-such-queue'" in str(info.value)
    assert queue in str(info.value)      # the configured queues are listed
    with pytest.raises(mpqueue.ConfigError):
        mpqueue.push_many('no-such-queue', [add])
    assert_nothing_written(queue)


def test_oversized_payload_writes_nothing(queue):
    with pytest.raises(mpqueue.SerializationError) as info:
        mpqueue.push(queue, add, args=(b'x' * (MAX_PAYLOAD + 1), b''))
    assert 'max_payload' in str(info.value)
    assert queue in str(info.value)
    with pytest.raises(mpqueue.SerializationError):
        mpqueue.push_many(queue, [add, functools.partial(add, 'y' * (MAX_PAYLOAD + 1))])
    assert_nothing_written(queue)


def test_payload_just_under_the_limit_is_accepted(queue):
    mpqueue.push(queue, add, args=(b'x' * (MAX_PAYLOAD - 1024), b''))
    assert mpqueue.status(queue)['all'] == 1


# -- the envelope ----------------------------------------------------------------------

def roundtrip(job, args=(), kwargs=None, secret=None):
    payload = mpqueue._encode('q', job, args, kwargs, secret, 1 << 20)
    assert isinstance(payload, bytes)
    return mpqueue._decode(payload, secret)


def test_roundtrip_lambda():
    job, args, kwargs = roundtrip(lambda x, k=0: x * 10 + k, (4,), {'k': 2})
    assert (args, kwargs) == ((4,), {'k': 2})
    assert job(*args, **kwargs) == 42


def test_roundtrip_closure():
    job, args, kwargs = roundtrip(make_adder(5), (1,))
    assert job(*args, **kwargs) == 6


def test_roundtrip_lambda_defined_inside_a_test():
    base = {'n': 7}
    job, args, kwargs = roundtrip(lambda: base['n'] * 6)
    assert (args, kwargs) == ((), {})
    assert job() == 42


def test_roundtrip_partial():
    job, args, kwargs = roundtrip(functools.partial(pow, 2), (10,))
    assert job(*args, **kwargs) == 1024


def test_roundtrip_bound_method():
    job, args, _ = roundtrip(Greeter('hello').greet, ('bob',))
    assert job(*args) == 'hello, bob'


def test_roundtrip_job_instance_and_class():
    job, _, _ = roundtrip(SendMail('x@example.com'))
    assert isinstance(job, SendMail) and job.to == 'x@example.com'
    func, obj = mpqueue._resolve(job)
    assert func() == 'x@example.com' and obj is job
    job, _, _ = roundtrip(SendMail)
    assert job is SendMail


def test_roundtrip_import_path():
    job, args, kwargs = roundtrip('os.path:join', ('a', 'b'))
    assert job == 'os.path:join'
    assert mpqueue._resolve(job)[0] is os.path.join


def test_roundtrip_signed():
    payload = mpqueue._encode('q', add, (2, 3), None, b'key', 1 << 20)
    job, args, kwargs = mpqueue._decode(payload, b'key')
    assert job(*args, **kwargs) == 5


def _unsigned(body_bytes):
    return mpqueue._MAGIC + b'U' + body_bytes


def _signed(body_bytes, key):
    return mpqueue._MAGIC + b'S' + hmac.new(key, body_bytes, hashlib.sha256).digest() + body_bytes


def _evil_body(marker):
    return pickle.dumps({'v': 1, 'job': CreatesFile(str(marker))})


def test_tampered_payload_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / 'unpickled'
    good = mpqueue._encode('q', add, (1, 1), None, b'right key', 1 << 20)
    mac = good[5:37]
    evil = _evil_body(marker)
    candidates = [
        mpqueue._MAGIC + b'S' + mac + evil,                  # body swapped, old signature
        _signed(evil, b'wrong key'),                         # signed with another secret
        _unsigned(evil),                                     # not signed at all
        good[:-1] + bytes([good[-1] ^ 1]),                   # one bit flipped
        mpqueue._MAGIC + b'S' + evil,                        # no signature room
    ]
    for payload in candidates:
        with pytest.raises(mpqueue.SerializationError) as info:
            mpqueue._decode(payload, b'right key')
        assert '\n' not in str(info.value)
        assert not marker.exists(), 'a payload was unpickled before its signature was checked'
    # Control: the same body does create the file when nothing guards it.
    mpqueue._decode(_unsigned(evil), None)
    assert marker.exists()


def test_unsigned_payload_refused_when_secret_set():
    payload = mpqueue._encode('q', add, (1, 1), None, None, 1 << 20)
    with pytest.raises(mpqueue.SerializationError) as info:
        mpqueue._decode(payload, b'key')
    assert 'sign' in str(info.value)
    # Without a secret it decodes.
    job, args, _ = mpqueue._decode(payload, None)
    assert job(*args) == 2


@pytest.mark.parametrize('payload', [
    b'', b'garbage', None, 'MPQ1U', 12, b'MPQ1', b'MPQ1X' + pickle.dumps({'job': add}),
    b'MPQ1U' + b'not a pickle', b'MPQ1U' + pickle.dumps([1, 2, 3]),
    b'MPQ1U' + pickle.dumps({'v': 1, 'args': ()}),
    b'MPQ1U' + pickle.dumps({'v': 1, 'job': add})[:-3],
])
def test_garbage_is_a_serialization_error(payload):
    with pytest.raises(mpqueue.SerializationError):
        mpqueue._decode(payload, None)


def test_envelope_without_args_and_kwargs_decodes():
    job, args, kwargs = mpqueue._decode(_unsigned(cloudpickle.dumps({'v': 1, 'job': add})),
                                        None)
    assert job is add and args == () and kwargs == {}


def test_envelope_from_a_newer_version_decodes():
    body = cloudpickle.dumps({'v': 99, 'job': add, 'args': (1, 2), 'future': {'x': 1}})
    job, args, kwargs = mpqueue._decode(_unsigned(body), None)
    assert job(*args, **kwargs) == 3
    job, args, kwargs = mpqueue._decode(_signed(body, b'k'), b'k')
    assert job(*args, **kwargs) == 3


def test_pushed_payload_is_signed_when_secret_set(driver, monkeypatch):
    monkeypatch.setattr(mpqueue, '_config', None)
    name = _queue_name('signed')
    _configure(driver, [{'name': name}], secret='s3cret')
    try:
        mpqueue.push(name, add, args=(20, 22))
        [got] = reserve(driver, name, 1)
        with pytest.raises(mpqueue.SerializationError):
            mpqueue._decode(got['payload'], b'another')
        job, args, _ = mpqueue._decode(got['payload'], b's3cret')
        assert job(*args) == 42
    finally:
        mpqueue.clean(name)


# -- broker down -------------------------------------------------------------------------

def test_broker_down_at_push_names_the_address(monkeypatch):
    monkeypatch.setattr(mpqueue, '_config', None)
    port = free_port()
    name = _queue_name('down')
    _configure(mpqueue.RedisDriver(port=port, prefix=PREFIX), [{'name': name}])
    with pytest.raises(mpqueue.DriverError) as info:
        mpqueue.push(name, add, args=(1, 2))
    assert '127.0.0.1:%d' % port in str(info.value)
    assert '\n' not in str(info.value)


def test_broker_down_url_address_hides_the_password(monkeypatch):
    monkeypatch.setattr(mpqueue, '_config', None)
    port = free_port()
    name = _queue_name('down')
    _configure(mpqueue.RedisDriver(url='redis://:hunter2@127.0.0.1:%d/2' % port,
                                   prefix=PREFIX), [{'name': name}])
    with pytest.raises(mpqueue.DriverError) as info:
        mpqueue.push_many(name, [add, add])
    assert '127.0.0.1:%d' % port in str(info.value)
    assert 'hunter2' not in str(info.value)


def test_push_before_configure_is_an_error(monkeypatch):
    monkeypatch.setattr(mpqueue, '_config', None)
    with pytest.raises(mpqueue.MPQueueError):
        mpqueue.push('anything', add)


def test_the_record_holds_fields_of_the_table_only(queue, driver):
    job_id = mpqueue.push(queue, add, args=(1, 2))
    record = info(driver, queue, job_id)
    assert set(record) <= set(mpqueue._FIELDS) - {'payload'}
    assert set(record) >= {'job', 'state', 'create_time', 'exec_number', 'timeout',
                           'fail_number', 'fail_expire', 'priority'}
    assert json.loads(json.dumps(record)) == record
