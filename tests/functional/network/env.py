# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real environment of the slot network tests: Open vSwitch, dnsmasq, the sink, namespaces.

Modules run as Ansible runs them: ``python module.py args.json`` in a subprocess. Slots are
network namespaces, each with one end of a veth pair (the slot's MAC) and the other end on
the bridge, standing in for the VM's tap.
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


class EnvironmentMissing(Exception):
    """Something the tests need cannot be had here; they skip with this message."""


def sh(*argv, check=True, ns=None):
    if ns:
        argv = ('ip', 'netns', 'exec', ns) + argv
    return subprocess.run(argv, check=check, capture_output=True, text=True, env=dict(os.environ, LANG='C'))


def module(name, args, check_mode=False, diff=False):
    """Run a collection module as Ansible does; returns its JSON result."""
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': args}, handle)
    try:
        proc = subprocess.run([sys.executable, os.path.join(MODULES, name + '.py'), handle.name],
                              capture_output=True, text=True, check=False,
                              env=dict(os.environ, PYTHONPATH=COLLECTIONS))
    finally:
        os.unlink(handle.name)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('%s printed no JSON (exit %d): %s %s' % (name, proc.returncode, proc.stdout, proc.stderr))


class OpenVSwitch:
    """Open vSwitch's daemons: used when they answer, else started here and stopped after."""

    def __init__(self):
        self.started = []

    def __enter__(self):
        for tool in ('ovs-vsctl', 'ovsdb-server', 'ovs-vswitchd', 'ovsdb-tool', 'nft', 'dnsmasq', 'busybox'):
            if not shutil.which(tool) and not os.path.exists('/usr/sbin/' + tool):
                raise EnvironmentMissing('%s is not installed (openvswitch-switch, nftables, dnsmasq-base, '
                                         'busybox-static)' % tool)
        if os.geteuid() != 0:
            raise EnvironmentMissing('the slot network tests need root (namespaces, Open vSwitch, nftables)')
        if sh('ovs-vsctl', '--timeout=3', 'show', check=False).returncode == 0:
            return self
        db = '/var/lib/openvswitch/conf.db'
        for path in ('/run/openvswitch', '/var/lib/openvswitch', '/var/log/openvswitch'):
            os.makedirs(path, exist_ok=True)
        if not os.path.exists(db):
            sh('ovsdb-tool', 'create', db, '/usr/share/openvswitch/vswitch.ovsschema')
        sh('ovsdb-server', db, '--remote=punix:/run/openvswitch/db.sock',
           '--pidfile=/run/openvswitch/ovsdb-server.pid', '--detach', '--log-file')
        self.started.append('/run/openvswitch/ovsdb-server.pid')
        sh('ovs-vsctl', '--no-wait', 'init')
        sh('ovs-vswitchd', 'unix:/run/openvswitch/db.sock', '--pidfile=/run/openvswitch/ovs-vswitchd.pid',
           '--detach', '--log-file')
        self.started.append('/run/openvswitch/ovs-vswitchd.pid')
        return self

    def __exit__(self, *exc):
        for pidfile in reversed(self.started):
            try:
                os.kill(int(open(pidfile).read()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


class Daemon:
    def __init__(self, argv, log):
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=open(log, 'ab'), stderr=subprocess.STDOUT)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError('%s did not happen within %d s' % (what, timeout))


class SlotNamespace:
    """A slot stand-in: namespace ``ns`` with eth0 (``mac``); ``port`` is the bridge end."""

    def __init__(self, name, mac, port):
        self.ns, self.mac, self.port = name, mac, port
        sh('ip', 'netns', 'add', name)
        sh('ip', 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name)
        sh('ip', 'link', 'set', 'eth0', 'address', mac, ns=name)
        for dev in ('lo', 'eth0'):
            sh('ip', 'link', 'set', dev, 'up', ns=name)
        # The userspace datapath reads the veth with AF_PACKET: packets left with partial
        # checksums (offload) would reach the gateway corrupt. A VM's virtio NIC is fine.
        sh('ethtool', '-K', 'eth0', 'tx', 'off', ns=name, check=False)
        sh('ip', 'link', 'set', port, 'up')

    def dhcp(self, script, tries=3):
        proc = sh('busybox', 'udhcpc', '-i', 'eth0', '-n', '-q', '-t', str(tries), '-T', '1', '-A', '1',
                  '-s', script, ns=self.ns, check=False)
        return proc.returncode == 0

    def address(self):
        out = sh('ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0', ns=self.ns).stdout
        return out.split()[3].split('/')[0] if out.strip() else None

    def ping(self, address):
        return sh('busybox', 'ping', '-c', '1', '-W', '1', address, ns=self.ns, check=False).returncode == 0

    def post(self, token, body='{"metric": "test"}', port=9110):
        """The HTTP status the sink answers, or None when nothing answers."""
        proc = sh('busybox', 'timeout', '5', 'busybox', 'wget', '-q', '-O', '-', '--header',
                  'Authorization: Bearer %s' % token, '--post-data', body,
                  'http://%s:%d/metrics' % (GATEWAY, port), ns=self.ns, check=False)
        if proc.returncode == 0:
            return 200
        for code in (401, 403, 413, 400):
            if ' %d ' % code in proc.stderr:
                return code
        return None

    def close(self):
        sh('ip', 'netns', 'del', self.ns, check=False)
        sh('ip', 'link', 'del', self.port, check=False)
