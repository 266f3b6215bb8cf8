# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real environment of the slot network tests and benchmark.

The node under test is a network namespace of its own (``Host``) running its own Open
vSwitch (ovsdb-server and ovs-vswitchd with a private database and run directory, the
userspace datapath), its own nftables tables and its own 10.100.0.1: nothing touches the
machine's own switch, addresses or firewall, so the tests run while the lab is up and
beside another run of themselves. Modules run as Ansible runs them
(``python module.py args.json``), inside that namespace.

Slots are network namespaces with one end of a veth pair (the slot's MAC), the other end
on the bridge, standing in for the VM's tap. ``Outside`` is a namespace behind the host's
uplink, standing in for the internet (198.51.100.0/24, TEST-NET-2) and for a private
network behind the host (192.168.77.0/24).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests.conftest import COLLECTIONS, REPO

MODULES = os.path.join(REPO, 'plugins', 'modules')
SINK = os.path.join(REPO, 'roles', 'host_prep', 'files', 'gpuaas_telemetry_sink.py')
GATEWAY = '10.100.0.1'
UPLINK_HOST, UPLINK_OUTSIDE = '198.51.100.1', '198.51.100.2'
PRIVATE_OUTSIDE = '192.168.77.2'
TOOLS = ('ip', 'ovs-vsctl', 'ovs-ofctl', 'ovsdb-server', 'ovs-vswitchd', 'ovsdb-tool', 'nft',
         'dnsmasq', 'busybox', 'ethtool')
SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema'


class EnvironmentMissing(Exception):
    """Something the tests need cannot be had here; they skip with this message."""


def which(tool):
    return shutil.which(tool) or shutil.which(tool, path='/usr/sbin:/sbin')


def sh(*argv, check=True, ns=None, env=None, timeout=60):
    if ns:
        argv = ('ip', 'netns', 'exec', ns) + argv
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout,
                          env=dict(env or os.environ, LANG='C'))


def module(name, args, check_mode=False, diff=False, ns=None, env=None):
    """Run a collection module as Ansible does (in namespace ``ns``, else here); its JSON result."""
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': args}, handle)
    try:
        proc = sh(sys.executable, os.path.join(MODULES, name + '.py'), handle.name, check=False, ns=ns,
                  env=env or dict(os.environ, PYTHONPATH=COLLECTIONS), timeout=300)
    finally:
        os.unlink(handle.name)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('%s printed no JSON (exit %d): %s %s' % (name, proc.returncode, proc.stdout, proc.stderr))


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError('%s did not happen within %d s' % (what, timeout))


def _stop_pid(pid, timeout=5):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Daemon:
    """A foreground daemon started in a namespace (``ip netns exec`` execs it: the pid is its own)."""

    def __init__(self, host, argv, log):
        self.log = log
        self.proc = subprocess.Popen(('ip', 'netns', 'exec', host.ns) + tuple(argv), stdout=open(log, 'ab'),
                                     stderr=subprocess.STDOUT, env=host.env)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Host:
    """A node of its own: a network namespace with a private Open vSwitch in it."""

    def __init__(self, work, tag='h'):
        self.work = work
        self.ns = 'gpuaas-%s%d' % (tag, os.getpid())
        self.run_dir = os.path.join(work, 'ovs-%s' % tag)
        self.env = dict(os.environ, LANG='C', OVS_RUNDIR=self.run_dir, OVS_DBDIR=self.run_dir,
                        OVS_LOGDIR=self.run_dir, PYTHONPATH=COLLECTIONS)
        self.pidfiles = []
        self.made_ns = False

    def sh(self, *argv, check=True, timeout=60):
        return sh(*argv, check=check, ns=self.ns, env=self.env, timeout=timeout)

    def __enter__(self):
        missing = [tool for tool in TOOLS if not which(tool)]
        if missing:
            raise EnvironmentMissing('%s not installed (Debian: openvswitch-switch, nftables, dnsmasq-base, '
                                     'busybox-static, ethtool, iproute2)' % ', '.join(missing))
        if not os.path.exists(SCHEMA):
            raise EnvironmentMissing('the Open vSwitch schema %s is missing' % SCHEMA)
        if os.geteuid() != 0:
            raise EnvironmentMissing('the slot network tests need root (namespaces, Open vSwitch, nftables)')
        try:
            sh('ip', 'netns', 'add', self.ns)
            self.made_ns = True
            self.sh('ip', 'link', 'set', 'lo', 'up')
            os.makedirs(self.run_dir)
            db = os.path.join(self.run_dir, 'conf.db')
            sh('ovsdb-tool', 'create', db, SCHEMA)
            for name, argv in (
                    ('ovsdb-server', [db, '--remote=punix:%s/db.sock' % self.run_dir]),
                    ('ovs-vswitchd', ['unix:%s/db.sock' % self.run_dir])):
                pidfile = os.path.join(self.run_dir, name + '.pid')
                self.sh(which(name), *(argv + ['--pidfile=%s' % pidfile, '--unixctl=%s/%s.ctl' % (self.run_dir, name),
                                               '--detach', '--log-file=%s/%s.log' % (self.run_dir, name)]))
                self.pidfiles.append(pidfile)
                if name == 'ovsdb-server':
                    self.sh('ovs-vsctl', '--no-wait', 'init')
            self.sh('ovs-vsctl', '--timeout=10', 'show')
        except (subprocess.CalledProcessError, OSError) as exc:
            self.__exit__(None, None, None)
            raise EnvironmentMissing('cannot start a private Open vSwitch in namespace %s: %s %s'
                                     % (self.ns, exc, getattr(exc, 'stderr', '')))
        return self

    def __exit__(self, *exc):
        for pidfile in reversed(self.pidfiles):
            try:
                with open(pidfile) as handle:
                    _stop_pid(int(handle.read().strip()))
            except (OSError, ValueError):
                pass
        self.pidfiles = []
        if self.made_ns:
            sh('ip', 'netns', 'del', self.ns, check=False)
            self.made_ns = False
        return False

    def module(self, name, args, check_mode=False, diff=False):
        """Run a collection module in the host namespace, as Ansible does; returns its JSON result."""
        return module(name, args, check_mode, diff, ns=self.ns, env=self.env)

    def flows(self, bridge, cookie=None):
        argv = ['ovs-ofctl', '-O', 'OpenFlow15', '--no-names', '--no-stats', 'dump-flows', bridge]
        if cookie is not None:
            argv.append('cookie=%#x/-1' % cookie)
        return sorted(line.strip() for line in self.sh(*argv).stdout.splitlines() if 'actions=' in line)

    def ports(self, bridge):
        return self.sh('ovs-vsctl', 'list-ports', bridge).stdout.split()

    def http_ok(self, url):
        return self.sh('busybox', 'timeout', '3', 'busybox', 'wget', '-q', '-O', '-', url,
                       check=False).returncode == 0


class Peer:
    """A namespace ``name`` with eth0 (``mac``), the other end (``port``) in the host namespace."""

    def __init__(self, host, name, mac, port):
        self.host, self.ns, self.mac, self.port = host, name, mac, port
        sh('ip', 'netns', 'add', name)
        host.sh('ip', 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name)
        sh('ip', 'link', 'set', 'eth0', 'address', mac, ns=name)
        for dev in ('lo', 'eth0'):
            sh('ip', 'link', 'set', dev, 'up', ns=name)
        # The userspace datapath reads the veth with AF_PACKET: packets left with partial
        # checksums (offload) would reach the gateway corrupt. A VM's virtio NIC is fine.
        sh('ethtool', '-K', 'eth0', 'tx', 'off', ns=name, check=False)
        host.sh('ethtool', '-K', port, 'tx', 'off', check=False)
        host.sh('ip', 'link', 'set', port, 'up')

    def close(self):
        sh('ip', 'netns', 'del', self.ns, check=False)
        self.host.sh('ip', 'link', 'del', self.port, check=False)


class SlotNamespace(Peer):
    """A slot stand-in: DHCP, ping, posts to the sink."""

    def __init__(self, host, name, mac, port, work):
        Peer.__init__(self, host, name, mac, port)
        self.lease_out = os.path.join(work, '%s.lease' % name)
        self.script = os.path.join(work, '%s.udhcpc' % name)
        with open(self.script, 'w') as handle:
            handle.write('#!/bin/sh\ncase "$1" in bound|renew)\n  ip -4 addr flush dev "$interface"\n'
                         '  ip addr add "$ip/${mask:-24}" dev "$interface"\n'
                         '  [ -n "$router" ] && ip route replace default via "${router%%%% *}" dev "$interface"\n'
                         '  echo "$ip $hostname $router" > %s;;\nesac\nexit 0\n' % self.lease_out)
        os.chmod(self.script, 0o755)

    def dhcp(self, tries=3, broadcast=False):
        """(address, host name, router) of the lease udhcpc got, or None; ``broadcast``: the
        request asks for broadcast replies (the BOOTP broadcast flag)."""
        if os.path.exists(self.lease_out):
            os.unlink(self.lease_out)
        proc = sh('busybox', 'udhcpc', '-i', 'eth0', '-n', '-q', '-t', str(tries), '-T', '1', '-A', '1',
                  '-s', self.script, *(['-B'] if broadcast else []), ns=self.ns, check=False)
        if proc.returncode != 0 or not os.path.exists(self.lease_out):
            return None
        with open(self.lease_out) as handle:
            return tuple(handle.read().split())

    def dhcp_options(self, option):
        """The value of DHCP option ``option`` (udhcpc's name for it) in a fresh lease, '' when none came, None without a lease."""
        script = self.script + '.' + option
        with open(script, 'w') as handle:
            handle.write('#!/bin/sh\n[ "$1" = bound ] && echo "${%s}" > %s.%s\nexit 0\n' % (option, self.lease_out, option))
        os.chmod(script, 0o755)
        out = self.lease_out + '.' + option
        if os.path.exists(out):
            os.unlink(out)
        sh('busybox', 'udhcpc', '-i', 'eth0', '-n', '-q', '-t', '3', '-T', '1', '-A', '1', '-O', option, '-s', script,
           ns=self.ns, check=False)
        if not os.path.exists(out):
            return None
        with open(out) as handle:
            return handle.read().strip()

    def address(self):
        out = sh('ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0', ns=self.ns).stdout
        return out.split()[3].split('/')[0] if out.strip() else None

    def set_address(self, address, mac=None):
        sh('ip', '-4', 'addr', 'flush', 'dev', 'eth0', ns=self.ns)
        sh('ip', 'addr', 'add', '%s/24' % address, 'dev', 'eth0', ns=self.ns)
        sh('ip', 'route', 'replace', 'default', 'via', GATEWAY, ns=self.ns, check=False)   # off-net: none
        if mac:
            sh('ip', 'link', 'set', 'eth0', 'address', mac, ns=self.ns)
        sh('ip', 'neigh', 'flush', 'all', ns=self.ns)

    def ping(self, address, count=1):
        return sh('busybox', 'ping', '-c', str(count), '-W', '1', address, ns=self.ns, check=False).returncode == 0

    def get(self, url):
        """The body of an HTTP GET, or None when nothing answers within 2 s."""
        proc = sh('busybox', 'timeout', '2', 'busybox', 'wget', '-q', '-O', '-', url, ns=self.ns, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def post(self, token, body='{"metric": "test"}', port=9110):
        """The HTTP status the sink answers, or None when nothing answers."""
        proc = sh('busybox', 'timeout', '5', 'busybox', 'wget', '-q', '-O', '-', '--header',
                  'Authorization: Bearer %s' % token, '--post-data', body,
                  'http://%s:%d/v1/metrics' % (GATEWAY, port), ns=self.ns, check=False)
        if proc.returncode == 0:
            return 200
        for code in (400, 401, 403, 404, 413):
            if ' %d ' % code in proc.stderr:
                return code
        return None


class Outside(Peer):
    """Behind the host's uplink: the internet (198.51.100.2) and a private network (192.168.77.2)."""

    def __init__(self, host, name):
        Peer.__init__(self, host, name, '02:00:00:00:00:fe', 'up0')
        sh('ip', 'addr', 'add', '%s/24' % UPLINK_OUTSIDE, 'dev', 'eth0', ns=name)
        sh('ip', 'addr', 'add', '%s/24' % PRIVATE_OUTSIDE, 'dev', 'eth0', ns=name)
        host.sh('ip', 'addr', 'add', '%s/24' % UPLINK_HOST, 'dev', 'up0')
        host.sh('ip', 'route', 'add', 'default', 'via', UPLINK_OUTSIDE)

    def serve_once(self, port, timeout=5):
        """A TCP server answering one HTTP request; its stdout is then the client's address."""
        return serve_once(self.ns, '0.0.0.0', port, timeout)


def serve_once(ns, address, port, timeout=5):
    """An HTTP server in ``ns`` answering one request with 'ok'; prints the client's address."""
    code = ('import socket\n'
            's = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n'
            's.bind((%r, %d)); s.listen(1); s.settimeout(%d)\n'
            'print("ready", flush=True)\n'
            'c, a = s.accept(); c.recv(4096)\n'
            'c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n"); c.close()\n'
            'print(a[0], flush=True)\n' % (address, port, timeout))
    proc = subprocess.Popen(['ip', 'netns', 'exec', ns, sys.executable, '-c', code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'ready', proc.stderr.read()
    return proc


# The frames arriving on an interface (sys.argv[2]) for sys.argv[1] seconds, as tcpdump would see
# them (an AF_PACKET socket): each IPv4 frame, as ``frame``, to the code that follows.
CAPTURE_LOOP = """
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[2], 0)); s.settimeout(0.2)
print('ready', flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        frame, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING or len(frame) < 34 or frame[12:14] != b'\\x08\\x00':
        continue
"""
CAPTURE = CAPTURE_LOOP + """
    ihl = (frame[14] & 15) * 4
    ip = frame[14:14 + ihl]
    if ip[9] != 17:
        continue
    udp = frame[14 + ihl:]
    sport, dport = struct.unpack('!HH', udp[:4])
    if dport != 68:
        continue
    bootp = udp[8:]
    print(':'.join('%02x' % b for b in frame[:6]), socket.inet_ntoa(bootp[16:20]),
          ':'.join('%02x' % b for b in bootp[28:34]), flush=True)
"""


class Capture:
    """DHCP replies (UDP to port 68) arriving on eth0 of namespace ``ns`` for ``seconds``:
    (destination MAC, yiaddr, chaddr) of each, by an AF_PACKET socket as tcpdump would."""

    def __init__(self, ns, seconds, code=CAPTURE, iface='eth0'):
        self.proc = subprocess.Popen(['ip', 'netns', 'exec', ns, sys.executable, '-c', code, str(seconds), iface],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == 'ready', self.proc.stderr.read()

    def replies(self):
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return [tuple(line.split()) for line in out.splitlines()]
