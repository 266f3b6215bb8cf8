# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The playbooks over real SSH as a non-root user with become, as a fleet runs them.

The test makes a user with a key and a sudoers drop-in and starts its own sshd on a loopback
port (lab/fleet/local_node.py), then runs the discover playbook and a configuring module in
check mode over SSH, with Debian's /usr/bin/python3 on the node. It removes the user, the
drop-in and the sshd after. Under 30 s; it touches no libvirt, Open vSwitch or nftables.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import yaml

from tests.conftest import COLLECTIONS, REPO
from tests.sysfs import hosts

sys.path.insert(0, os.path.join(REPO, 'lab', 'fleet'))
import local_node  # noqa: E402  (lab/fleet/local_node.py)

pytestmark = pytest.mark.slow

USER = 'gpuaas-ssh-test'
NODE_ID = 'sample-hgx'   # the node id lab/host_vars/sample-hgx.yml approved its slots under


@pytest.fixture(scope='module')
def ssh_node(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip('making a user and a sudoers drop-in needs root')
    for tool in (local_node.SSHD, '/usr/bin/sudo', '/usr/bin/python3'):
        if not os.path.exists(tool):
            pytest.skip('%s is missing (make setup installs openssh-server and sudo)' % tool)
    work = tmp_path_factory.mktemp('ssh-node')
    os.chmod(work, 0o755)
    node = local_node.LocalNode(str(work / 'sshd'), USER, str(work / 'id_ed25519'))
    try:
        node.start()
        # The node's root-only directories: a module can only write there as root.
        tree = work / 'hgx'
        hosts.HOSTS['hgx'](str(tree))
        private = work / 'private'
        private.mkdir(mode=0o700)
        yield node, work, tree, private
    finally:
        node.stop()


def playbook(work, node, name, tasks_or_play, extravars=None, check=False, become=True):
    """Run a playbook over SSH against the node with ansible-runner, as the control plane's
    worker runs them; return (rc, {task name: the node's result})."""
    import ansible_runner
    inventory = {'all': {'hosts': {'ssh-node': dict(node.inventory_vars(), ansible_become=become)}}}
    # A private data directory per run: ansible-runner keeps a run's cmdline and vars in it.
    (work / 'runner' / name).mkdir(parents=True)
    inv = work / 'inventory.yml'
    inv.write_text(yaml.safe_dump(inventory))
    path = tasks_or_play if isinstance(tasks_or_play, str) else str(work / ('%s.yml' % name))
    if not isinstance(tasks_or_play, str):
        with open(path, 'w') as handle:
            yaml.safe_dump([{'name': name, 'hosts': 'all', 'gather_facts': False, 'tasks': tasks_or_play}], handle)
    env = {'ANSIBLE_CONFIG': os.path.join(REPO, 'ansible.cfg'), 'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS,
           'PATH': os.pathsep.join([os.path.dirname(sys.executable), os.environ.get('PATH', '')])}
    result = ansible_runner.run(
        private_data_dir=str(work / 'runner' / name), ident=name, playbook=path, inventory=str(inv),
        extravars=extravars or {}, envvars=env, quiet=True, timeout=300,
        cmdline='--check --diff' if check else None)
    found = {}
    for event in result.events:
        if event.get('event') in ('runner_on_ok', 'runner_on_failed', 'runner_on_skipped'):
            data = event['event_data']
            found[data['task']] = dict(data.get('res', {}), failed=event['event'] == 'runner_on_failed')
    return result.rc, found


def test_login_is_the_user_and_become_is_root(ssh_node):
    """ansible_become (an inventory variable, as a fleet sets it) makes tasks run as root."""
    node, work, _tree, _private = ssh_node
    tasks = [{'name': 'who', 'ansible.builtin.command': 'id -un', 'changed_when': False}]
    rc, out = playbook(work, node, 'whoami', tasks, become=False)
    assert rc == 0, out
    assert out['who']['stdout'] == USER
    rc, out = playbook(work, node, 'whoami-become', tasks)
    assert rc == 0, out
    assert out['who']['stdout'] == 'root'


def test_discover_over_ssh_with_become(ssh_node):
    node, work, tree, _private = ssh_node
    with open(os.path.join(REPO, 'lab', 'host_vars', 'sample-hgx.yml')) as handle:
        approved = yaml.safe_load(handle)['gpuaas_approved_slots']
    extravars = {'gpuaas_hosts': 'all', 'gpuaas_node_id': NODE_ID, 'gpuaas_approved_slots': approved,
                 'gpuaas_sysfs_root': str(tree / 'sys'), 'gpuaas_proc_root': str(tree / 'proc'),
                 'gpuaas_require_nvme': True, 'gpuaas_require_fabric': True}
    rc, out = playbook(work, node, 'discover', os.path.join(REPO, 'playbooks', 'discover.yml'), extravars)
    assert rc == 0, json.dumps(out)[-3000:]
    got = out
    discovery = got['Discover the host\'s slots']
    assert discovery['node_id'] == NODE_ID
    assert len(discovery['gpus']) == 8
    approval = got['Check the approved slot map against what is really there']
    assert [slot['slot_id'] for slot in approval['slots']] == ['sample-hgx-s0', 'sample-hgx-s1', 'sample-hgx-s2']


def lease_task(private, phase='provisioning'):
    return [{'name': 'lease', 'gpuaas.slice.slot_lease': {
        'slot_id': 'sample-hgx-s0', 'allocation_id': 'alloc-ssh-1', 'phase': phase,
        'lease_dir': str(private / 'leases'), 'data': {'tenant': 'ssh-test'}}}]


def test_configuring_module_check_mode_over_ssh(ssh_node):
    """slot_lease in check mode with diff: it says what it would write and writes nothing."""
    node, work, _tree, private = ssh_node
    rc, out = playbook(work, node, 'lease-check', lease_task(private), check=True)
    assert rc == 0, json.dumps(out)[-3000:]
    lease = out['lease']
    assert lease['changed'] is True
    assert 'diff' in lease
    assert not os.path.exists(private / 'leases')


def test_without_become_the_user_cannot_write_root_only_paths(ssh_node):
    """The same task without become fails on the root-only directory: become is what works."""
    node, work, _tree, private = ssh_node
    rc, out = playbook(work, node, 'lease-nobecome', lease_task(private), become=False)
    assert rc != 0
    lease = out['lease']
    assert lease.get('failed') is True
    assert 'ermission denied' in json.dumps(lease), lease
    assert not os.path.exists(private / 'leases')


def test_configuring_module_over_ssh_then_second_run_unchanged(ssh_node):
    node, work, _tree, private = ssh_node
    try:
        rc, out = playbook(work, node, 'lease-apply', lease_task(private))
        assert rc == 0, json.dumps(out)[-3000:]
        assert out['lease']['changed'] is True
        lease = private / 'leases' / 'sample-hgx-s0.json'
        assert lease.exists()
        assert lease.stat().st_uid == 0   # written as root, not as the login user
        rc, out = playbook(work, node, 'lease-again', lease_task(private))
        assert rc == 0
        assert out['lease']['changed'] is False
    finally:
        shutil.rmtree(private / 'leases', ignore_errors=True)
