# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab node for the playbook tests: this machine after host_prep, with the sample host's
approved slots (lab/inventory.yml), driven by ansible-playbook processes that can be killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import COLLECTIONS, REPO
from tests.functional.network import env as netenv
from tests.functional.vm import env as vmenv

sys.path.insert(0, os.path.join(REPO, 'lab'))
import lab  # noqa: E402  (lab/lab.py)

NODE = lab.NODE
LEASES = '/var/lib/gpuaas/node-scheduler/leases'


class LabNode:
    def __init__(self, extravars, image, checksum, pubkey):
        self.extravars, self.image, self.checksum, self.pubkey = extravars, image, checksum, pubkey
        self.env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
                        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                        ANSIBLE_STDOUT_CALLBACK='default', ANSIBLE_FORCE_COLOR='0', PYTHONUNBUFFERED='1')
        self.bindir = os.path.dirname(sys.executable)

    def allocation(self, slot, allocation_id):
        return dict(lab.allocation(slot, self.image, self.checksum, self.pubkey), id=allocation_id)

    def start(self, playbook, extravars, log):
        path = log + '.vars.json'
        with open(path, 'w') as handle:
            json.dump(dict(self.extravars, gpuaas_hosts=NODE, **extravars), handle)
        return subprocess.Popen(
            [os.path.join(self.bindir, 'ansible-playbook'), '-i', lab.INVENTORY, '-l', NODE, '-e', '@' + path,
             os.path.join(REPO, 'playbooks', playbook)],
            stdout=open(log, 'w'), stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def run(self, playbook, extravars, log, timeout=600):
        proc = self.start(playbook, extravars, log)
        proc.wait(timeout)
        return proc.returncode, open(log).read()

    def allocate(self, slot, allocation_id, log):
        return self.run('allocate.yml', {'gpuaas_slot_id': slot,
                                         'gpuaas_allocation': self.allocation(slot, allocation_id)}, log)

    def release(self, slot, allocation_id, log, **extra):
        return self.run('release.yml', dict({'gpuaas_slot_id': slot, 'gpuaas_allocation_id': allocation_id},
                                            **extra), log)

    def state(self):
        return netenv.module('node_state_info', {'node_id': NODE})

    def lease(self, slot):
        path = os.path.join(LEASES, '%s.json' % slot)
        return json.load(open(path)) if os.path.exists(path) else None


@pytest.fixture(scope='module')
def node():
    """Module-scoped: the slot network it made is gone before the next test module runs."""
    if os.geteuid() != 0:
        pytest.skip('the lab node needs root (libvirt, Open vSwitch, nftables)')
    try:
        import libvirt  # noqa: F401
    except ImportError:
        pytest.skip('libvirt-python is missing')
    if os.path.isdir(LEASES) and any(name.endswith('.json') for name in os.listdir(LEASES)):
        pytest.skip('this machine has slot leases (the lab is up?): make lab-down first')
    vmenv.sweep_stale_bridges()   # a killed VM test run's bridge would hold 10.100.0.1
    if netenv.GATEWAY in netenv.sh('ip', '-4', '-o', 'addr', 'show').stdout \
            and 'br-gpuaas' not in netenv.sh('ip', '-4', '-o', 'addr', 'show').stdout:
        pytest.skip('10.100.0.1 is held by another interface on this machine')
    had_network = netenv.sh('ovs-vsctl', '--timeout=3', 'br-exists', 'br-gpuaas', check=False).returncode == 0
    guest, image, checksum, pubkey = lab.prepare()
    extravars = lab.lab_vars(guest, image)
    books = lab.Playbooks()
    prep = books.run('host_prep.yml', 'this-machine', extravars, 'host_prep')
    if prep['rc'] != 0:
        pytest.fail('host_prep failed: %s' % prep['failures'])
    yield LabNode(extravars, image, checksum, pubkey)
    for name in os.listdir(LEASES) if os.path.isdir(LEASES) else []:
        if name.endswith('.json'):
            held = json.load(open(os.path.join(LEASES, name)))
            books.run('release.yml', NODE, {'gpuaas_slot_id': held['slot_id'],
                                            'gpuaas_allocation_id': held['allocation_id'],
                                            'gpuaas_clear_quarantine': True}, 'release')
    if not had_network:
        lab.stop_network()
