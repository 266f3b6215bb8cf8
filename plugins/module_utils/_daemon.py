# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: run a host daemon without a service manager.

Real hosts run the node's daemons (dnsmasq, the telemetry sink, Open vSwitch) as systemd
units that host_prep installs. Hosts without systemd as PID 1 (containers, CI machines, the
local lab) get the same daemons from this engine: one process per pidfile, recognised by its
command line so a stale pidfile whose pid was reused never counts as running, started in a
session of its own with its output in a log file, stopped with SIGTERM then SIGKILL.

A pidfile is only trusted inside the module's run directory (``run_dir``, symlinks resolved)
and a process only counts as the daemon while its ``/proc/<pid>/cmdline`` is the daemon's
command line (the one asked for, or the one recorded beside the pidfile when it was started),
checked again before every signal: no signal goes to any other process (not even another
instance of the same program), and no pidfile outside ``run_dir`` is written or removed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import signal
import subprocess
import time

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, check_timeout
from ansible_collections.gpuaas.slice.plugins.module_utils._files import (
    StateFileError, atomic_write, check_dir, check_path, ensure_dir, read_json, remove)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    DAEMON_NAME, GpuaasError, show)


# A pidfile is taken to have been written for a process that started up to this many seconds
# after it (the start time read from /proc is exact to about a second): doubt fails closed.
PIDFILE_SLACK = 5.0


class DaemonError(GpuaasError):
    pass


def read_pid(pidfile):
    try:
        with open(pidfile) as handle:
            text = handle.read().strip()
    except (IOError, OSError, ValueError):
        return None
    return int(text) if text.isdigit() and 0 < len(text) <= 10 else None


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


def started_at(pid, proc_root='/proc'):
    """When ``pid`` started, in seconds since the epoch (to within a second or so), or None."""
    try:
        with open(os.path.join(proc_root, str(pid), 'stat')) as handle:
            ticks = int(handle.read().rsplit(')', 1)[-1].split()[19])   # field 22, starttime
        with open(os.path.join(proc_root, 'stat')) as handle:
            boot = [int(line.split()[1]) for line in handle if line.startswith('btime ')][0]
    except (IOError, OSError, IndexError, ValueError):
        return None
    return boot + ticks / float(os.sysconf('SC_CLK_TCK'))


def check_argv(argv):
    if not argv:
        raise DaemonError('argv is required with state=started')
    for index, arg in enumerate(argv):
        if '\0' in arg:
            raise DaemonError('argv[%d] %s contains a NUL character, which no command line can carry'
                              % (index, show(arg)))
    if not os.path.isabs(argv[0]):
        raise DaemonError('argv[0] must be an absolute path, not %s' % show(argv[0]))
    return list(argv)


class Daemon:
    """One daemon, the host_daemon ``module``'s parameters."""

    def __init__(self, module, proc_root='/proc', clock=time.monotonic, sleep=time.sleep):
        self.module = module
        self.p = params = module.params
        self.proc_root = proc_root
        self.clock = clock
        self.sleep = sleep
        self.name = DAEMON_NAME.check(params['name'], 'name')
        self.run_dir = check_dir(params['run_dir'], 'run_dir')
        self.pidfile = check_path(params['pidfile'], 'pidfile', allowed_dirs=[self.run_dir])
        self.record = self.pidfile + '.argv'
        self.log_file = params.get('log_file') and check_path(
            params['log_file'], 'log_file', allowed_dirs=[check_dir(params['log_dir'], 'log_dir')])
        self.ready_path = params.get('ready_path') and check_path(params['ready_path'], 'ready_path')
        self.timeout = check_timeout(params['timeout'])
        self.argv = check_argv(params['argv']) if params['state'] == 'started' or params['argv'] else None

    def recorded(self):
        """The command line the module started the daemon with (``{pidfile}.argv``), or None."""
        try:
            argv = read_json(self.record, 'argv record', list)
        except StateFileError:
            return None
        return argv if argv and all(isinstance(a, str) for a in argv) else None

    def known(self):
        """The command lines this daemon runs with: the one asked for and the one it was started with."""
        return [argv for argv in (self.argv, self.recorded()) if argv]

    def ours(self, pid):
        """The argv of ``pid`` when it is this daemon, else None."""
        argv = cmdline(pid, self.proc_root)
        return argv if argv and argv in self.known() else None

    def running(self):
        """(pid, its argv) of the daemon when it runs, else (None, None)."""
        pid = read_pid(self.pidfile)
        argv = self.ours(pid) if pid else None
        return (pid, argv) if argv else (None, None)

    def unproven(self):
        """Refuse when the pidfile names a live process it was written for that is not known to be the daemon.

        Such a process started before the pidfile was last written, so the pidfile was written
        for it; a daemon started by an older version of this module (which kept no record of
        its command line) and run with another argv since looks exactly like this. Stopping it
        could kill a stranger; starting another could leave two daemons: neither is done. A
        process that started after the pidfile was written has a reused pid: that pidfile is
        stale, and the caller warns and goes on.
        """
        pid = read_pid(self.pidfile)
        argv = cmdline(pid, self.proc_root) if pid else None
        if argv is None:
            return   # no pid, or its process is gone
        try:
            written = os.stat(self.pidfile).st_mtime
        except OSError:
            return   # removed since it was read
        start = started_at(pid, self.proc_root)   # unreadable: doubt, which refuses
        if start is not None and start > written + PIDFILE_SLACK:
            return   # started after the pidfile was written: a reused pid, a stale pidfile
        record = self.recorded()
        why = ('its command line is not the recorded %s' % show(record, 4096) if record else
               'there is no record of the command line it was started with (%s: a daemon started by an older '
               'gpuaas.slice has none)' % self.record)
        raise DaemonError(
            '%s names pid %d (%s), which started before the pidfile was written, but %s, so nothing proves it is %s. '
            'The module neither signals it nor starts a second %s. If pid %d is %s, run this task once with argv set '
            'to its command line (the module then records it and manages it from there on) or stop it yourself; '
            'if it is not, remove %s.' % (self.pidfile, pid, show(argv, 4096), why, self.name, self.name, pid,
                                          self.name, self.pidfile), pid=pid, cmdline=argv)

    def run(self):
        module = self.module
        pid, argv = self.running()
        if pid is None:
            self.unproven()
        plan = Plan(module, error=DaemonError, timeout=self.timeout)
        result = {'name': self.name, 'pidfile': self.pidfile, 'pid': pid}
        before = {'running': pid is not None, 'argv': argv}
        if self.p['state'] == 'stopped':
            if pid is not None:
                plan.change('stop pid %d' % pid, lambda: self.stop(pid))
            after = {'running': False, 'argv': None}
        else:
            want = self.argv
            if pid is not None and (argv != want or self.p['restart']):
                plan.change('restart pid %d: %s' % (pid, 'its command line differs' if argv != want
                                                    else 'restart was asked for'), lambda: self.stop(pid))
                result['pid'] = None
            if result['pid'] is None:
                plan.change('start %s' % ' '.join(want), lambda: result.update(pid=self.start(want)))
            elif self.recorded() != want:
                # Known by the argv asked for only (started by an older version): record it, so a
                # later change of argv restarts it instead of leaving it unproven.
                plan.change('record the command line of pid %d' % pid, lambda: self.write_record(want))
            after = {'running': True, 'argv': want}
        other = read_pid(self.pidfile)
        if pid is None and other and alive(other, self.proc_root):
            module.warn('%s names pid %d, which started after the pidfile was written and is not %s (the pid was '
                        'reused): that process is left alone' % (self.pidfile, other, self.name))
        plan.execute()
        result.update(plan.result(running=after['running']))
        if module._diff:
            result['diff'] = {'before': before, 'after': after}
        return result

    def start(self, argv):
        ensure_dir(os.path.dirname(self.pidfile), 0o755)
        if self.log_file:
            ensure_dir(os.path.dirname(self.log_file), 0o755)
        remove(self.pidfile)   # stale: running() said no process of this daemon owns it
        out = open(self.log_file, 'ab') if self.log_file else open(os.devnull, 'wb')
        try:
            # run_command waits for the program; a daemon must outlive the module.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # pylint: disable=ansible-bad-function
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, cwd='/')
        except OSError as exc:
            raise DaemonError('%s: cannot run %s: %s' % (self.name, argv[0], exc))
        finally:
            out.close()
        self.write_record(argv)
        deadline = self.clock() + self.timeout
        if self.p['forks']:
            # The program daemonises and writes the pidfile itself: wait for both.
            while True:
                code = proc.poll()
                pid, _argv = self.running()
                if pid is not None and code is not None:
                    if code != 0:
                        raise DaemonError('%s exited with status %d while daemonising%s'
                                          % (self.name, code, self.log_hint()))
                    break
                if code not in (None, 0):
                    raise DaemonError('%s exited with status %d%s' % (self.name, code, self.log_hint()))
                if self.clock() > deadline:
                    raise DaemonError('%s did not write %s within %s s%s'
                                      % (self.name, self.pidfile, self.timeout, self.log_hint()))
                self.sleep(0.05)
        else:
            pid = proc.pid
            atomic_write(self.module, self.pidfile, ('%d\n' % pid).encode('ascii'), 0o644)
        self.wait_ready(proc, pid, deadline)
        return pid

    def write_record(self, argv):
        atomic_write(self.module, self.record, json.dumps(argv).encode('utf-8'), 0o644)

    def wait_ready(self, proc, pid, deadline):
        """Wait for ready_path (a socket or file the daemon creates), failing if it dies."""
        while True:
            if not alive(pid, self.proc_root):
                if proc.pid == pid:
                    proc.poll()
                raise DaemonError('%s (pid %d) died right after it started%s'
                                  % (self.name, pid, self.log_hint()))
            if not self.ready_path or os.path.exists(self.ready_path):
                return
            if self.clock() > deadline:
                raise DaemonError('%s runs but %s did not appear within %s s%s'
                                  % (self.name, self.ready_path, self.timeout, self.log_hint()))
            self.sleep(0.05)

    def stop(self, pid):
        """SIGTERM (SIGKILL after the timeout) to ``pid`` while it is still this daemon."""
        deadline = self.clock() + self.timeout
        sig = signal.SIGTERM
        while self.ours(pid):
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
        remove(self.pidfile)
        remove(self.record)

    def log_hint(self):
        if not self.log_file or not os.path.exists(self.log_file):
            return ''
        with open(self.log_file, 'rb') as handle:
            handle.seek(max(0, os.path.getsize(self.log_file) - 600))
            tail = handle.read().decode('utf-8', 'replace').strip()
        return '; last lines of %s: %s' % (self.log_file, tail) if tail else ''
