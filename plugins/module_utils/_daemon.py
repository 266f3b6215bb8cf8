# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: run a host daemon without a service manager.

Real hosts run the node's daemons (dnsmasq, the telemetry sink, Open vSwitch) as systemd
units that host_prep installs. Hosts without systemd as PID 1 (containers, CI machines, the
local lab) get the same daemons from this engine: one process per pidfile, recognised by its
command line so a stale pidfile whose pid was reused never counts as running, started in a
session of its own with its output in a log file, stopped with SIGTERM then SIGKILL.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import signal
import subprocess
import time
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError

NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z')


class DaemonError(GpuaasError):
    pass


def read_pid(pidfile):
    try:
        with open(pidfile) as handle:
            text = handle.read().strip()
    except (IOError, OSError):
        return None
    return int(text) if text.isdigit() else None


def alive(pid, proc_root='/proc'):
    """Whether ``pid`` is a live process (not a zombie)."""
    try:
        with open(os.path.join(proc_root, str(pid), 'stat')) as handle:
            return handle.read().rsplit(')', 1)[-1].split()[0] != 'Z'
    except (IOError, OSError, IndexError):
        return False


def cmdline(pid, proc_root='/proc'):
    """The argv of a live process ([] while it execs, or for a kernel thread), None when it is gone."""
    if not alive(pid, proc_root):
        return None
    try:
        with open(os.path.join(proc_root, str(pid), 'cmdline'), 'rb') as handle:
            raw = handle.read()
    except (IOError, OSError):
        return None
    return [part.decode('utf-8', 'replace') for part in raw.split(b'\0')[:-1]]


class Daemon:
    """One daemon, ``params`` as the host_daemon module takes them."""

    def __init__(self, params, check_mode=False, proc_root='/proc', clock=time.monotonic,
                 sleep=time.sleep):
        self.p = params
        self.check_mode = check_mode
        self.proc_root = proc_root
        self.clock = clock
        self.sleep = sleep
        if not NAME_RE.match(params['name'] or ''):
            raise DaemonError('name %r is not valid: 1-64 letters, digits, ., _, @ or -' % (params['name'],))
        for key in ('pidfile', 'log_file'):
            value = params.get(key)
            if value and (not os.path.isabs(value) or '\0' in value or '\n' in value):
                raise DaemonError('%s must be an absolute path, not %r' % (key, value))
        if params['state'] == 'started':
            argv = params['argv'] or []
            if not argv:
                raise DaemonError('argv is required with state=started')
            if not os.path.isabs(argv[0]):
                raise DaemonError('argv[0] must be an absolute path, not %r' % (argv[0],))
            if any('\0' in arg for arg in argv):
                raise DaemonError('argv must not contain NUL characters')

    def running(self):
        """(pid, its argv) of the daemon when it runs, else (None, None)."""
        pid = read_pid(self.p['pidfile'])
        if pid is None:
            return None, None
        argv = cmdline(pid, self.proc_root)
        if not argv:
            return None, None
        # The pidfile names this daemon only while its pid runs the same program.
        want = os.path.basename((self.p['argv'] or [argv[0]])[0])
        if os.path.basename(argv[0]) != want:
            return None, None
        return pid, argv

    def run(self):
        pid, argv = self.running()
        result = {'name': self.p['name'], 'pidfile': self.p['pidfile'], 'actions': []}
        before = {'running': pid is not None, 'argv': argv}
        if self.p['state'] == 'stopped':
            if pid is not None:
                result['actions'].append('stop pid %d' % pid)
                if not self.check_mode:
                    self.stop(pid)
            after = {'running': False, 'argv': None}
        else:
            want = list(self.p['argv'])
            if pid is not None and (argv != want or self.p.get('restart')):
                result['actions'].append('restart pid %d: %s' % (
                    pid, 'its command line differs' if argv != want else 'restart was asked for'))
                if not self.check_mode:
                    self.stop(pid)
                pid = None
            if pid is None:
                result['actions'].append('start %s' % ' '.join(want))
                if not self.check_mode:
                    pid = self.start(want)
            after = {'running': True, 'argv': want}
        result.update(changed=bool(result['actions']), pid=pid, running=after['running'],
                      diff={'before': before, 'after': after})
        return result

    def start(self, argv):
        log_file = self.p['log_file']
        for path in (self.p['pidfile'], log_file):
            if path:
                directory = os.path.dirname(path)
                if not os.path.isdir(directory):
                    os.makedirs(directory, 0o755)
        if os.path.lexists(self.p['pidfile']):
            os.unlink(self.p['pidfile'])   # stale: running() said no process owns it
        out = open(log_file, 'ab') if log_file else open(os.devnull, 'wb')
        try:
            # run_command waits for the program; a daemon must outlive the module.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # pylint: disable=ansible-bad-function
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, cwd='/')
        except OSError as exc:
            raise DaemonError('%s: cannot run %s: %s' % (self.p['name'], argv[0], exc))
        finally:
            out.close()
        deadline = self.clock() + self.p['timeout']
        if self.p['forks']:
            # The program daemonises and writes the pidfile itself: wait for both.
            while True:
                code = proc.poll()
                pid, _argv = self.running()
                if pid is not None and code is not None:
                    if code != 0:
                        raise DaemonError('%s exited with status %d while daemonising%s'
                                          % (self.p['name'], code, self.log_hint()))
                    break
                if code not in (None, 0):
                    raise DaemonError('%s exited with status %d%s' % (self.p['name'], code, self.log_hint()))
                if self.clock() > deadline:
                    raise DaemonError('%s did not write %s within %s s%s'
                                      % (self.p['name'], self.p['pidfile'], self.p['timeout'], self.log_hint()))
                self.sleep(0.05)
        else:
            pid = proc.pid
            tmp = self.p['pidfile'] + '.tmp'
            with open(tmp, 'w') as handle:
                handle.write('%d\n' % pid)
            os.rename(tmp, self.p['pidfile'])
        self.wait_ready(proc, pid, deadline)
        return pid

    def wait_ready(self, proc, pid, deadline):
        """Wait for ready_path (a socket or file the daemon creates), failing if it dies."""
        ready = self.p['ready_path']
        while True:
            if not alive(pid, self.proc_root):
                if proc.pid == pid:
                    proc.poll()
                raise DaemonError('%s (pid %d) died right after it started%s'
                                  % (self.p['name'], pid, self.log_hint()))
            if not ready or os.path.exists(ready):
                return
            if self.clock() > deadline:
                raise DaemonError('%s runs but %s did not appear within %s s%s'
                                  % (self.p['name'], ready, self.p['timeout'], self.log_hint()))
            self.sleep(0.05)

    def stop(self, pid):
        deadline = self.clock() + self.p['timeout']
        sig = signal.SIGTERM
        while alive(pid, self.proc_root):
            try:
                os.kill(pid, sig)
            except OSError:
                break
            if self.clock() > deadline:
                sig = signal.SIGKILL
            self.sleep(0.05)
        try:
            os.waitpid(pid, os.WNOHANG)   # reap it if it was our child
        except OSError:
            pass
        if os.path.lexists(self.p['pidfile']):
            os.unlink(self.p['pidfile'])

    def log_hint(self):
        log_file = self.p['log_file']
        if not log_file or not os.path.exists(log_file):
            return ''
        with open(log_file, 'rb') as handle:
            handle.seek(max(0, os.path.getsize(log_file) - 600))
            tail = handle.read().decode('utf-8', 'replace').strip()
        return '; last lines of %s: %s' % (log_file, tail) if tail else ''
