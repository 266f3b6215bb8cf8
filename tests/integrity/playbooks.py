# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the collection's playbooks on this machine against a node laid out under a directory.

The node's state (leases, vfio records, disks, seeds, tokens) lives under ``base``; its sysfs
is a sample host's tree. ansible-playbook runs as a process, exactly as AWX runs it, with the
local connection; what the playbook returned through set_stats is read from its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import COLLECTIONS, REPO


class Node:
    """One node's state directories under ``base``, and the variables that point the roles at them."""

    def __init__(self, base, node_id, sys_root=None, proc_root=None, uri='test:///default',
                 bridge='br-gpuaas-itest'):
        self.base = str(base)
        self.node_id = node_id
        self.dirs = {}
        for kind in ('leases', 'vfio', 'disks', 'seeds', 'tokens', 'console', 'dhcp-hosts.d', 'dev'):
            self.dirs[kind] = os.path.join(self.base, kind)
            os.makedirs(self.dirs[kind], exist_ok=True)
        self.vars = {
            'gpuaas_hosts': 'localhost', 'gpuaas_node_id': node_id,
            'gpuaas_sysfs_root': sys_root or '/sys', 'gpuaas_proc_root': proc_root or '/proc',
            'gpuaas_dev_root': self.dirs['dev'], 'gpuaas_libvirt_uri': uri, 'gpuaas_bridge': bridge,
            'gpuaas_lease_dir': self.dirs['leases'], 'gpuaas_vfio_state_dir': self.dirs['vfio'],
            'gpuaas_disk_dir': self.dirs['disks'], 'gpuaas_seed_dir': self.dirs['seeds'],
            'gpuaas_token_dir': self.dirs['tokens'], 'gpuaas_console_log_dir': self.dirs['console'],
            'gpuaas_dhcp_hosts_dir': self.dirs['dhcp-hosts.d'],
            'gpuaas_dhcp_lease_file': os.path.join(self.base, 'dnsmasq.leases'),
        }
        self.path = []   # directories put in front of PATH (stand-ins for host tools)

    def lease_file(self, slot):
        return os.path.join(self.dirs['leases'], '%s.json' % slot)

    def write_lease(self, slot, allocation_id, phase='running', **data):
        with open(self.lease_file(slot), 'w') as handle:
            json.dump({'slot_id': slot, 'allocation_id': allocation_id, 'phase': phase,
                       'created_at': '2026-12-01T10:00:00Z', 'updated_at': '2026-12-01T10:00:00Z',
                       'data': data}, handle)

    def lease(self, slot):
        path = self.lease_file(slot)
        if not os.path.exists(path):
            return None
        with open(path) as handle:
            return json.load(handle)

    def run(self, playbook, check=False, timeout=300, **extravars):
        """(rc, output, stats): ansible-playbook's exit status, its output, what set_stats returned."""
        path = os.path.join(self.base, 'vars.json')
        with open(path, 'w') as handle:
            json.dump(dict(self.vars, **extravars), handle)
        bindir = os.path.dirname(sys.executable)
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
                   ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                   ANSIBLE_STDOUT_CALLBACK='default', ANSIBLE_FORCE_COLOR='0', ANSIBLE_SHOW_CUSTOM_STATS='1',
                   ANSIBLE_LOCALHOST_WARNING='0', ANSIBLE_INVENTORY_UNPARSED_WARNING='0',
                   PATH=os.pathsep.join(self.path + [bindir, os.environ.get('PATH', '')]))
        argv = [os.path.join(bindir, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
                '-e', '@' + path, os.path.join(REPO, 'playbooks', playbook)]
        if check:
            argv.append('--check')
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        output = proc.stdout + proc.stderr
        return proc.returncode, output, custom_stats(output)


def custom_stats(output):
    """The CUSTOM STATS block of the default callback, as {host: data}."""
    marker = 'CUSTOM STATS:'
    if marker not in output:
        return {}
    stats = {}
    for line in output.split(marker, 1)[1].splitlines():
        host, sep, data = line.strip().partition(':')
        if not sep or not data.strip().startswith('{'):
            continue
        try:
            stats[host.strip()] = json.loads(data)
        except ValueError:
            continue
    return stats


def fake_tool(directory, name, script):
    """A stand-in for a host tool: ``script`` is the body of a Python program given argv."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, 'w') as handle:
        handle.write('#!%s\nimport sys\n%s\n' % (sys.executable, script))
    os.chmod(path, 0o755)
    return path
