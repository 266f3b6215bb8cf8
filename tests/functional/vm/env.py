# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real environment of the slot VM tests and benchmark: libvirtd, a bridge with dnsmasq,
and a telemetry sink. Each piece starts only what is not already there and stops only
what it started, in reverse order, also when the test fails.

Nothing here uses the collection's own network modules: a plain Linux bridge (or the
layout's subnet on it), dnsmasq with one dhcp-host line per slot MAC, and a small HTTP
server on the bridge address that records every POST.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

DEFAULT_URI = 'qemu:///system'
LAYOUT_NET = '10.100.0.0/24'
FALLBACK_NET = '10.213.0.0/24'   # when something on this machine already holds 10.100.0.1


class EnvironmentMissing(Exception):
    """A part of the environment cannot be had on this machine; the tests skip with this."""


def _run(argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True,
                          env=dict(os.environ, LANG='C'))


def workdir(prefix='gpuaas-vmtest-'):
    """A directory QEMU (user libvirt-qemu under qemu:///system) can reach: 0755, not under /tmp's 0700 dirs."""
    path = tempfile.mkdtemp(prefix=prefix, dir='/var/tmp')
    os.chmod(path, 0o755)
    return path


def _socket_alive(path):
    """True when something accepts connections on the Unix socket ``path``."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


class Libvirtd:
    """libvirtd (and virtlogd) for ``uri``: used when running, else started here as root."""

    def __init__(self, uri=None, state_dir=None):
        self.uri = uri or os.environ.get('GPUAAS_TEST_LIBVIRT_URI') or DEFAULT_URI
        self.state_dir = state_dir
        self.started = []   # (name, pid) we started, stopped in reverse order
        self.start_seconds = 0.0

    def _reachable(self):
        import libvirt
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            libvirt.open(self.uri).close()
            return True
        except libvirt.libvirtError:
            return False

    @staticmethod
    def kvm_node_for_libvirt():
        """Give /dev/kvm the owner and mode udev gives it (root:kvm 0660) when no udev ran.

        Where udev does not run (containers, this CI machine) /dev/kvm stays root:root 0600.
        QEMU still finds KVM when libvirt probes it, but libvirt's own check, as the
        libvirt-qemu user, does not; libvirt then throws its capabilities cache away and
        probes QEMU again on every call (about 50 s per domain definition here).
        Returns True when the node was changed.
        """
        import grp
        import stat
        try:
            info = os.stat('/dev/kvm')
            kvm_gid = grp.getgrnam('kvm').gr_gid
        except (OSError, KeyError):
            return False
        if info.st_gid == kvm_gid or os.geteuid() != 0 or not stat.S_ISCHR(info.st_mode):
            return False
        os.chown('/dev/kvm', 0, kvm_gid)
        os.chmod('/dev/kvm', 0o660)
        return True

    def __enter__(self):
        try:
            import libvirt  # noqa: F401
        except ImportError:
            raise EnvironmentMissing('libvirt-python is not installed in this Python')
        self.kvm_fixed = self.kvm_node_for_libvirt()
        if self._reachable():
            return self
        if self.uri != DEFAULT_URI:
            raise EnvironmentMissing('no libvirt daemon answers at %s' % self.uri)
        if os.geteuid() != 0:
            raise EnvironmentMissing('no libvirtd runs and only root may start one for qemu:///system')
        for name in ('virtlogd', 'libvirtd'):
            if not shutil.which(name):
                raise EnvironmentMissing('%s is not installed (Debian package libvirt-daemon-system)' % name)
        start = time.monotonic()
        run_dir = self.state_dir or tempfile.mkdtemp(prefix='gpuaas-libvirtd-')
        if not _socket_alive('/run/libvirt/virtlogd-sock'):
            self._daemon('virtlogd', run_dir)
        self._daemon('libvirtd', run_dir)
        deadline = time.monotonic() + 30
        while not self._reachable():
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise EnvironmentMissing('libvirtd started but %s does not answer' % self.uri)
            time.sleep(0.1)
        self.start_seconds = time.monotonic() - start
        return self

    def _daemon(self, name, run_dir):
        pidfile = os.path.join(run_dir, name + '.pid')
        _run([shutil.which(name), '--daemon', '--pid-file', pidfile])
        deadline = time.monotonic() + 10
        while not os.path.exists(pidfile) or not open(pidfile).read().strip():
            if time.monotonic() > deadline:
                raise EnvironmentMissing('%s did not write %s' % (name, pidfile))
            time.sleep(0.05)
        self.started.append((name, int(open(pidfile).read().strip())))

    def __exit__(self, *exc):
        for name, pid in reversed(self.started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        self.started = []
        return False


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length)
        try:
            data = json.loads(body.decode('utf-8'))
        except ValueError:
            data = None
        self.server.posts.append({'time': time.time(), 'path': self.path, 'client': self.client_address[0],
                                  'authorization': self.headers.get('Authorization'), 'body': data,
                                  'raw': body.decode('utf-8', 'replace')})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Sink:
    """The host-only telemetry sink: records every POST (path, Authorization, JSON body)."""

    def __init__(self, host, port=9110):
        try:
            self.server = http.server.ThreadingHTTPServer((host, port), _SinkHandler)
        except OSError:
            self.server = http.server.ThreadingHTTPServer((host, 0), _SinkHandler)
        self.server.posts = []
        self.url = 'http://%s:%d/metrics' % (host, self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def posts(self):
        return list(self.server.posts)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


BRIDGE_PREFIX = 'gsvt'   # + the PID of the test process that made it


def sweep_stale_bridges():
    """Delete the test bridges of test processes that are gone (a run that was killed).

    A killed run leaves its bridge holding the layout's gateway address; the next run would
    then fall back to another subnet, and the lab tests would skip. Returns the names deleted.
    """
    gone = []
    for name in os.listdir('/sys/class/net'):
        owner = name[len(BRIDGE_PREFIX):]
        if name.startswith(BRIDGE_PREFIX) and owner.isdigit() and not os.path.exists('/proc/%s' % owner) \
                and os.path.isdir('/sys/class/net/%s/bridge' % name):
            if _run(['ip', 'link', 'del', name], check=False).returncode == 0:
                gone.append(name)
    return gone


def _address_in_use(address):
    out = _run(['ip', '-o', '-4', 'addr', 'show'], check=False).stdout
    return any(' %s/' % address in line for line in out.splitlines())


class SlotNetwork:
    """A Linux bridge, dnsmasq serving fixed MAC -> IP leases on it, and the sink."""

    def __init__(self, workdir_path, name=None):
        self.dir = workdir_path
        self.bridge = name or '%s%d' % (BRIDGE_PREFIX, os.getpid())   # at most 11 of IFNAMSIZ's 15
        if os.geteuid() == 0:
            sweep_stale_bridges()
        net = LAYOUT_NET if not _address_in_use('10.100.0.1') else FALLBACK_NET
        self.network = ipaddress.ip_network(net)
        self.gateway = str(self.network.network_address + 1)
        self.layout = net == LAYOUT_NET
        self.lease_file = os.path.join(self.dir, 'dnsmasq.leases')
        self.hosts_file = os.path.join(self.dir, 'dnsmasq.hosts')
        self.log_file = os.path.join(self.dir, 'dnsmasq.log')
        self.dnsmasq = None
        self.sink = None
        self.made_bridge = False

    def ip(self, slot_index):
        return str(self.network.network_address + 10 + slot_index)

    def __enter__(self):
        for tool in ('ip', 'dnsmasq'):
            if not shutil.which(tool):
                raise EnvironmentMissing('%s is not installed' % tool)
        if os.geteuid() != 0:
            raise EnvironmentMissing('making a bridge needs root')
        try:
            _run(['ip', 'link', 'add', 'name', self.bridge, 'type', 'bridge'])
            self.made_bridge = True
            _run(['ip', 'addr', 'add', '%s/%d' % (self.gateway, self.network.prefixlen), 'dev', self.bridge])
            _run(['ip', 'link', 'set', self.bridge, 'up'])
            open(self.hosts_file, 'w').close()
            with open(self.log_file, 'w') as log:
                self.dnsmasq = subprocess.Popen([
                    shutil.which('dnsmasq'), '--keep-in-foreground', '--conf-file=/dev/null', '--port=0',
                    '--bind-interfaces', '--interface=%s' % self.bridge, '--except-interface=lo',
                    '--listen-address=%s' % self.gateway,
                    '--dhcp-range=%s,static,%s,10m' % (self.network.network_address, self.network.netmask),
                    '--dhcp-hostsfile=%s' % self.hosts_file, '--dhcp-leasefile=%s' % self.lease_file,
                    '--dhcp-authoritative', '--log-dhcp', '--log-facility=%s' % self.log_file,
                    '--pid-file=', '--user=root', '--group=root'], stdout=log, stderr=subprocess.STDOUT)
            time.sleep(0.2)
            if self.dnsmasq.poll() is not None:
                raise EnvironmentMissing('dnsmasq exited at once: %s' % open(self.log_file).read())
            self.sink = Sink(self.gateway)
        except (subprocess.CalledProcessError, OSError) as exc:
            self.__exit__(None, None, None)
            raise EnvironmentMissing('cannot set up the test bridge %s: %s %s'
                                     % (self.bridge, exc, getattr(exc, 'stderr', '')))
        return self

    def add_host(self, mac, ip):
        """A dhcp-host line (MAC -> fixed address), as the network module writes them."""
        with open(self.hosts_file, 'a') as handle:
            handle.write('%s,%s\n' % (mac, ip))
        self.dnsmasq.send_signal(signal.SIGHUP)
        time.sleep(0.1)

    def ports(self):
        """The interfaces enslaved to the bridge."""
        try:
            return sorted(os.listdir('/sys/class/net/%s/brif' % self.bridge))
        except OSError:
            return []

    def leases(self):
        try:
            with open(self.lease_file) as handle:
                return [line.split() for line in handle if line.strip()]
        except OSError:
            return []

    def __exit__(self, *exc):
        if self.sink is not None:
            self.sink.stop()
            self.sink = None
        if self.dnsmasq is not None:
            self.dnsmasq.terminate()
            try:
                self.dnsmasq.wait(10)
            except subprocess.TimeoutExpired:
                self.dnsmasq.kill()
                self.dnsmasq.wait()
            self.dnsmasq = None
        if self.made_bridge:
            _run(['ip', 'link', 'del', self.bridge], check=False)
            self.made_bridge = False
        return False


def ping(address, count=2, timeout=2):
    """True when ``address`` answers ICMP echo (ping, or busybox's)."""
    tool = shutil.which('ping')
    argv = [tool] if tool else ([shutil.which('busybox'), 'ping'] if shutil.which('busybox') else None)
    if argv is None:
        raise EnvironmentMissing('no ping and no busybox to ping with')
    return subprocess.run(argv + ['-c', str(count), '-W', str(timeout), address],
                          capture_output=True, check=False).returncode == 0


def destroy_domain(uri, name):
    """Remove a domain whatever state it is in (teardown after a failed test)."""
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)   # a UEFI domain keeps its NVRAM otherwise
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()
