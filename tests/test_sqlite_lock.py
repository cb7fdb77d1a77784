"""The SQLite driver's write lock (a POSIX lock on ``<path>-lock``, taken
before ``BEGIN IMMEDIATE``): writers of several processes at once all get
through, and a writer killed while it holds the lock does not block the
others, since the kernel lets go of the locks of a dead process."""

import fcntl
import os
import signal
import time

import pytest

import mpqueue
from steps import push, push1

QUEUE = 'q'
PUSHERS, PUSHES = 4, 200


def forked(target):
    """The pid of a child that runs ``target()`` and exits (1 if it raised)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            target()
            code = 0
        finally:
            os._exit(code)
    return pid


def exit_code(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_processes_pushing_at_once_all_succeed_and_nothing_is_lost(tmp_path):
    path = str(tmp_path / 'q.db')
    driver = mpqueue.SqliteDriver(path)
    push1(driver, QUEUE)        # the schema exists before the race

    def pusher():
        mine = mpqueue.SqliteDriver(path)
        for _ in range(PUSHES):
            push1(mine, QUEUE)

    pids = [forked(pusher) for _ in range(PUSHERS)]
    assert [exit_code(pid) for pid in pids] == [0] * PUSHERS
    depth = driver.run(QUEUE, 'depth')
    assert depth['waiting'] == depth['pushed'] == PUSHERS * PUSHES + 1
    assert len(driver.run(QUEUE, 'reserve', 10 ** 6)) == PUSHERS * PUSHES + 1


def test_a_writer_killed_while_it_holds_the_lock_blocks_nobody(tmp_path):
    path = str(tmp_path / 'q.db')
    driver = mpqueue.SqliteDriver(path)
    push1(driver, QUEUE)
    r, w = os.pipe()

    def holder():       # inside its write transaction: tells, then waits to be killed
        mpqueue.SqliteDriver(path)._transaction(lambda conn: (os.write(w, b'1'), time.sleep(60)))

    pid = forked(holder)
    try:
        assert os.read(r, 1) == b'1'
        probe = os.open(path + '-lock', os.O_RDWR)
        with pytest.raises(OSError):        # it holds the lock now
            fcntl.lockf(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)
        os.kill(pid, signal.SIGKILL)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    t0 = time.monotonic()
    push(driver, QUEUE, 2)
    assert time.monotonic() - t0 < 1.0
    assert driver.run(QUEUE, 'depth')['waiting'] == 3
