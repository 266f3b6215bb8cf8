# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_daemon with real processes: start, idempotence, stale pidfiles, restart, stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._daemon import cmdline, read_pid, started_at
from ansible_collections.gpuaas.slice.plugins.modules import host_daemon
from tests.unit.module_runner import run_module

SLEEP = shutil.which('sleep')


@pytest.fixture
def daemon(tmp_path):
    values = {'name': 'sleeper', 'pidfile': str(tmp_path / 'run' / 'sleeper.pid'), 'run_dir': str(tmp_path / 'run'),
              'log_file': str(tmp_path / 'log' / 'sleeper.log'), 'log_dir': str(tmp_path / 'log'),
              'argv': [SLEEP, '300']}
    yield values
    pid = read_pid(values['pidfile'])
    if pid and cmdline(pid):
        os.kill(pid, signal.SIGKILL)


def run(capsys, check_mode=False, **args):
    return run_module(host_daemon, args, check_mode=check_mode, diff=True, capsys=capsys)


def test_check_mode_then_start_then_nothing_to_do(daemon, capsys):
    checked = run(capsys, check_mode=True, **daemon)
    assert checked['changed'] is True and checked['pid'] is None
    assert not os.path.exists(daemon['pidfile'])

    started = run(capsys, **daemon)
    assert started['changed'] is True and started['running'] is True
    assert cmdline(started['pid']) == daemon['argv']
    assert read_pid(daemon['pidfile']) == started['pid']
    assert started['diff']['before']['running'] is False

    again = run(capsys, **daemon)
    assert again['changed'] is False and again['pid'] == started['pid'] and again['actions'] == []


def written_before(path, pid):
    """Date ``path`` an hour before ``pid`` started: the pidfile of a daemon that died, its pid reused since."""
    started = started_at(pid)
    os.utime(path, (started - 3600, started - 3600))


def test_a_stale_pidfile_of_another_program_does_not_count(daemon, capsys):
    os.makedirs(os.path.dirname(daemon['pidfile']))
    with open(daemon['pidfile'], 'w') as handle:
        handle.write('%d\n' % os.getpid())   # alive, but python, not sleep
    written_before(daemon['pidfile'], os.getpid())
    started = run(capsys, **daemon)
    assert started['changed'] is True and started['pid'] != os.getpid()


@pytest.fixture
def old_daemon(daemon):
    """The daemon as an older host_daemon left it: running, its pidfile written after, no argv record."""
    os.makedirs(daemon['run_dir'])
    proc = subprocess.Popen(daemon['argv'], start_new_session=True)
    with open(daemon['pidfile'], 'w') as handle:
        handle.write('%d\n' % proc.pid)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize('state, argv', [('started', [SLEEP, '301']), ('stopped', None), ('stopped', [SLEEP, '301'])])
def test_a_daemon_without_a_record_that_is_not_recognised_is_neither_signalled_nor_doubled(
        daemon, old_daemon, capsys, state, argv):
    args = dict(daemon, state=state, argv=argv)
    before = sorted(os.listdir(daemon['run_dir'])), open(daemon['pidfile']).read()
    for check_mode in (True, False):
        result = run(capsys, check_mode=check_mode, **args)
        assert result['failed'] and 'names pid %d' % old_daemon.pid in result['msg'], result
        assert 'no record of the command line' in result['msg'] and 'run this task once with argv set' in result['msg']
        assert result['pid'] == old_daemon.pid and result['cmdline'] == daemon['argv']
    assert old_daemon.poll() is None and (sorted(os.listdir(daemon['run_dir'])), open(daemon['pidfile']).read()) == before
    assert [pid for pid in children() if cmdline(pid) == [SLEEP, '301']] == []   # no second daemon


def children():
    """The pids whose parent is this process (the module runs in it, so it is the parent of what it starts)."""
    found = []
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/stat' % entry) as handle:
                if int(handle.read().rsplit(')', 1)[-1].split()[1]) == os.getpid():
                    found.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return found


def test_a_daemon_without_a_record_is_taken_over_by_its_own_command_line(daemon, old_daemon, capsys):
    """The way on from an older version: name the argv it runs with once, then change it."""
    check = run(capsys, check_mode=True, **daemon)
    assert check['changed'] and check['actions'] == ['record the command line of pid %d' % old_daemon.pid], check
    assert not os.path.exists(daemon['pidfile'] + '.argv')
    adopted = run(capsys, **daemon)
    assert adopted['changed'] and adopted['pid'] == old_daemon.pid and old_daemon.poll() is None
    assert json.loads(open(daemon['pidfile'] + '.argv').read()) == daemon['argv']
    assert run(capsys, **daemon)['changed'] is False
    moved = run(capsys, **dict(daemon, argv=[SLEEP, '301']))
    assert moved['actions'][0].startswith('restart pid %d' % old_daemon.pid) and old_daemon.wait(5) is not None
    assert cmdline(moved['pid']) == [SLEEP, '301']


def test_a_changed_command_line_restarts_the_daemon(daemon, capsys):
    first = run(capsys, **daemon)
    changed = run(capsys, **dict(daemon, argv=[SLEEP, '301']))
    assert changed['changed'] is True and changed['pid'] != first['pid']
    assert changed['actions'][0].startswith('restart pid %d' % first['pid'])
    assert cmdline(first['pid']) is None


def test_restart_restarts_a_daemon_whose_command_line_is_the_same(daemon, capsys):
    first = run(capsys, **daemon)
    again = run(capsys, **dict(daemon, restart=True))
    assert again['changed'] is True and again['pid'] != first['pid']
    assert again['actions'][0] == 'restart pid %d: restart was asked for' % first['pid']
    assert cmdline(first['pid']) is None
    assert run(capsys, **daemon)['changed'] is False


def test_stop_and_stop_again(daemon, capsys):
    first = run(capsys, **daemon)
    stopped = run(capsys, name='sleeper', pidfile=daemon['pidfile'], run_dir=daemon['run_dir'], state='stopped')
    assert stopped['changed'] is True and stopped['running'] is False
    assert cmdline(first['pid']) is None and not os.path.exists(daemon['pidfile'])
    again = run(capsys, name='sleeper', pidfile=daemon['pidfile'], run_dir=daemon['run_dir'], state='stopped')
    assert again['changed'] is False


def test_a_self_daemonising_program_and_its_ready_path(daemon, tmp_path, capsys):
    ready = tmp_path / 'ready'
    script = ('import os, sys, time\n'
              'if os.fork(): sys.exit(0)\n'
              'os.setsid()\n'
              'open(sys.argv[1], "w").write(str(os.getpid()))\n'
              'open(sys.argv[2], "w").close()\n'
              'time.sleep(300)\n')
    args = dict(daemon, argv=[sys.executable, '-c', script, daemon['pidfile'], str(ready)], forks=True,
                ready_path=str(ready))
    os.makedirs(os.path.dirname(daemon['pidfile']))
    started = run(capsys, **args)
    assert started['changed'] is True and ready.exists()
    assert cmdline(started['pid'])[0] == sys.executable
    assert run(capsys, **args)['changed'] is False


def test_a_daemon_that_dies_at_once_fails_with_its_log(daemon, capsys):
    false = shutil.which('false')
    result = run(capsys, **dict(daemon, argv=[shutil.which('sh'), '-c', 'echo bad config >&2; exec %s' % false],
                                ready_path=daemon['pidfile'] + '.never'))
    assert result['failed'] is True
    assert 'died right after it started' in result['msg'] and 'bad config' in result['msg']


@pytest.mark.parametrize('args, message', [
    ({'argv': ['sleep', '1']}, 'absolute path'),
    ({'name': 'x; rm -rf /'}, 'name'),
    ({'pidfile': 'relative.pid'}, 'absolute path'),
])
def test_bad_input_is_refused_and_starts_nothing(daemon, capsys, args, message):
    before = subprocess.run(['pgrep', '-c', '-f', 'sleep 300'], capture_output=True, text=True, check=False).stdout
    result = run(capsys, **dict(daemon, **args))
    assert result['failed'] is True and message in result['msg']
    assert not os.path.exists(daemon['pidfile'])
    assert subprocess.run(['pgrep', '-c', '-f', 'sleep 300'], capture_output=True, text=True, check=False).stdout == before


def test_a_process_in_the_middle_of_exec_is_alive(tmp_path):
    """/proc/PID/cmdline is empty for a moment while a child execs: that is not a death.

    Found by the lab: the telemetry sink was reported dead while it listened.
    """
    from ansible_collections.gpuaas.slice.plugins.module_utils import _daemon
    proc = tmp_path / 'proc' / '4242'
    proc.mkdir(parents=True)
    (proc / 'stat').write_text('4242 (python3) S 1 4242 4242 0 -1 4194560 0 0 0 0\n')
    (proc / 'cmdline').write_bytes(b'')
    assert _daemon.alive(4242, str(tmp_path / 'proc'))
    assert _daemon.cmdline(4242, str(tmp_path / 'proc')) == []
    (proc / 'stat').write_text('4242 (python3) Z 1 4242 4242 0 -1 4194560 0 0 0 0\n')
    assert not _daemon.alive(4242, str(tmp_path / 'proc'))
    assert not _daemon.alive(4243, str(tmp_path / 'proc'))
