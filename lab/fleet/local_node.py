# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""This machine as a node reached over SSH: a private sshd on a loopback port and a non-root
operator user with a key and a sudoers drop-in, made for the fleet lab and the SSH functional
test and removed after them.

Nothing of the machine's own SSH set-up is used or changed: the sshd runs from its own config
and host key in ``workdir``, with ``UsePAM no``; the user's password field is ``*`` (no
password, not locked, which sshd would refuse); sudo lets the user become root without one.
"""

import os
import pwd
import shutil
import socket
import subprocess
import time

SSHD = '/usr/sbin/sshd'


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_port(port, timeout=30.0, host='127.0.0.1'):
    """Wait until something answers on ``port`` with an SSH banner; raise when nothing does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                if sock.recv(64).startswith(b'SSH-'):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError('nothing answered SSH on %s:%d within %.0f s' % (host, port, timeout))


class LocalNode:
    """Create with ``start()``, remove with ``stop()``; ``inventory_vars()`` for Ansible."""

    def __init__(self, workdir, user, key):
        self.workdir, self.user, self.key = workdir, user, key
        self.port = None
        self.proc = None
        self.sudoers = '/etc/sudoers.d/%s' % user

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        if not os.path.exists(self.key):
            subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', self.user, '-f', self.key],
                           check=True)
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            subprocess.run(['useradd', '--create-home', '--shell', '/bin/sh', self.user], check=True)
        subprocess.run(['usermod', '-p', '*', self.user], check=True)
        home = pwd.getpwnam(self.user).pw_dir
        ssh_dir = os.path.join(home, '.ssh')
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        shutil.copy(self.key + '.pub', os.path.join(ssh_dir, 'authorized_keys'))
        subprocess.run(['chown', '-R', '%s:' % self.user, ssh_dir], check=True)
        os.chmod(os.path.join(ssh_dir, 'authorized_keys'), 0o600)
        tmp = self.sudoers + '.tmp'
        with open(tmp, 'w') as handle:
            handle.write('%s ALL=(ALL) NOPASSWD: ALL\n' % self.user)
        os.chmod(tmp, 0o440)
        subprocess.run(['visudo', '-c', '-q', '-f', tmp], check=True)
        os.rename(tmp, self.sudoers)
        host_key = os.path.join(self.workdir, 'ssh_host_ed25519_key')
        if not os.path.exists(host_key):
            subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', host_key], check=True)
        self.port = free_port()
        config = os.path.join(self.workdir, 'sshd_config')
        with open(config, 'w') as handle:
            handle.write('\n'.join([
                'ListenAddress 127.0.0.1', 'Port %d' % self.port, 'HostKey %s' % host_key,
                'PidFile %s' % os.path.join(self.workdir, 'sshd.pid'), 'UsePAM no',
                'PasswordAuthentication no', 'KbdInteractiveAuthentication no', 'PermitRootLogin no',
                'AllowUsers %s' % self.user, 'Subsystem sftp internal-sftp', '']))
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)   # sshd's privilege separation directory
        log = open(os.path.join(self.workdir, 'sshd.log'), 'w')
        self.proc = subprocess.Popen([SSHD, '-D', '-e', '-f', config], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def inventory_vars(self):
        return {'ansible_host': '127.0.0.1', 'ansible_port': self.port, 'ansible_user': self.user,
                'ansible_ssh_private_key_file': self.key, 'ansible_become': True,
                'ansible_python_interpreter': '/usr/bin/python3',
                'ansible_ssh_common_args': '-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'}

    def _sessions(self):
        """The pids of the sshd's session processes (its children), which outlive it."""
        children = []
        for entry in os.listdir('/proc'):
            if entry.isdigit():
                try:
                    with open('/proc/%s/stat' % entry) as handle:
                        fields = handle.read().rsplit(')', 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid:
                    children.append(int(entry))
        return children

    def stop(self):
        """Stop the sshd and its sessions, remove the user (with its home) and its sudoers drop-in."""
        if self.proc is not None:
            for pid in self._sessions():
                try:
                    os.kill(pid, 15)
                except OSError:
                    pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if os.path.exists(self.sudoers):
            os.unlink(self.sudoers)
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            return
        for _attempt in range(10):   # a session's last process may still be exiting
            done = subprocess.run(['userdel', '--remove', self.user], check=False, capture_output=True, text=True)
            if done.returncode in (0, 12):   # 12: the home directory could not be removed entirely
                return
            time.sleep(0.5)
        raise RuntimeError('userdel %s: %s' % (self.user, done.stderr.strip()))
