# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile input to the node modules: a clean refusal naming the option, nothing changed.

One table per class of docs/failures-we-prevent.md's "Hostile input" rows (issue 16, items 1,
5, 6, 8, 9): each row gives a module real state directories under ``tmp_path`` and one bad
value. The module must answer with ``failed`` (a Python exception escaping ``main()`` fails
the test), its message must name the option or field, a value carrying a line break must not
start a line of its own in the message, and the directory tree must be exactly as it was
(same entries, types, modes, sizes and modification times).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import shutil
import signal
import stat
import subprocess

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._daemon import cmdline, started_at
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from ansible_collections.gpuaas.slice.plugins import modules
from ansible_collections.gpuaas.slice.plugins.module_utils import _engine
from ansible_collections.gpuaas.slice.plugins.modules import (
    host_daemon, host_network, node_state_info, slot_approval, slot_discovery_info, slot_image, slot_lease, slot_network,
    slot_seed, telemetry_token)
from tests.unit.module_runner import run_module

FORGED = '\nFORGED line'
SLOT = 'gpu-node-01-s0'
SLEEP = shutil.which('sleep')
KEY = ('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ2cGJ1c3R1cmUtdGVzdC1rZXktMDEyMzQ1Njc4OWFi alice@example')


def snapshot(root):
    """Every entry under ``root``: (type, mode, size, mtime), links not followed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            found[os.path.relpath(path, str(root))] = (stat.S_IFMT(info.st_mode), info.st_mode & 0o7777,
                                                       info.st_size, info.st_mtime_ns)
    return found


def assert_refused(result, name):
    assert result.get('failed') is True, result
    msg = result['msg']
    assert name in msg, msg
    lines = msg.split('\n')
    # Only slot_approval lists problems, one per line, each starting with '- '.
    assert all(line.startswith('- ') for line in lines[1:]), msg
    assert not any(line.lstrip('- ').startswith('FORGED') for line in lines), msg
    for problem in result.get('problems') or []:
        assert '\n' not in problem


class Tree:
    """The node's state directories under tmp_path, with a few files in them."""

    def __init__(self, root):
        self.root = root
        for name in ('leases', 'tokens', 'run', 'log', 'images', 'disks', 'state', 'seeds', 'hosts', 'vfio'):
            (root / name).mkdir()
        (root / 'a-file').write_text('not a directory\n')
        (root / 'outside').mkdir()
        image = root / 'images' / 'base.raw'
        image.write_bytes(b'\0' * 65536)
        self.image_sum = 'sha256:' + hashlib.sha256(image.read_bytes()).hexdigest()
        (root / 'leases' / ('%s.json' % SLOT)).write_text(json.dumps(
            {'slot_id': SLOT, 'allocation_id': 'held', 'phase': 'running', 'data': {}}))

    def __call__(self, name):
        return str(self.root / name)


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


def lease_args(t):
    return dict(slot_id='gpu-node-01-s1', allocation_id='a1', lease_dir=t('leases'))


def token_args(t):
    return dict(slot_id='gpu-node-01-s1', allocation_id='a1', token_dir=t('tokens'), _ansible_no_log=True)


def daemon_args(t):
    return dict(name='sleeper', argv=[SLEEP, '300'], pidfile=t('run/sleeper.pid'), run_dir=t('run'),
                log_file=t('log/sleeper.log'), log_dir=t('log'))


def node_args(t):
    return dict(node_id='gpu-node-01', bridge='', lease_dir=t('leases'), hosts_dir=t('hosts'),
                token_dir=t('tokens'), disk_dir=t('disks'), seed_dir=t('seeds'), vfio_state_dir=t('vfio'),
                sysfs_root=t('outside'))


def image_args(t):
    return dict(slot_id='gpu-node-01-s1', source=t('images/base.raw'), source_format='raw', checksum=t.image_sum,
                source_dirs=[t('images')], image_dir=t('disks'), state_dir=t('state'), size='1M')


def seed_args(t):
    return dict(slot_id='gpu-node-01-s1', allocation_id='a1', hostname='vm1', telemetry_token='t' * 24,
                ssh_keys=[KEY], seed_dir=t('seeds'))


def host_network_args(t):
    return dict(dnsmasq_conf=t('net/dnsmasq.conf'), hosts_dir=t('net/hosts'), lease_file=t('net/leases'),
                nft_file=t('net/gpuaas.nft'), pid_file=t('net/dnsmasq.pid'))


def slot_network_args(t):
    return dict(slot_id='gpu-node-01-s1', hostname='vm1', hosts_dir=t('net/hosts'),
                dnsmasq_pid_file=t('net/dnsmasq.pid'))


def link(target, name):
    """Set up a symlink ``name`` -> ``target`` (both under the tree) before the call."""
    def make(t):
        os.symlink(t(target), t(name))
    return make


def write(name, text):
    def make(t):
        with open(t(name), 'w') as handle:
            handle.write(text)
    return make


def replace_by_a_directory(name):
    def make(t):
        os.unlink(t(name))
        os.mkdir(t(name))
    return make


def _t(*parts):
    """A path under the tree, filled in when the case runs."""
    return lambda t: t('/'.join(parts))


# (module, base args, bad values (callables take the tree), name the message must hold, setup)
CASES = [
    # item 1: bad paths and values reach no Python exception
    (slot_lease, lease_args, dict(lease_dir=''), 'lease_dir', None),
    (slot_lease, lease_args, dict(lease_dir=_t('a-file')), 'lease_dir', None),
    (slot_lease, lease_args, dict(lease_dir='/var/lib/gpuaas\0/leases'), 'lease_dir', None),
    (slot_lease, lease_args, dict(lease_dir='/var/lib/gpuaas' + FORGED), 'lease_dir', None),
    (slot_lease, lease_args, dict(slot_id=SLOT + FORGED), 'slot_id', None),
    (slot_lease, lease_args, dict(allocation_id='a1' + FORGED), 'allocation_id', None),
    (slot_lease, lease_args, dict(allocation_id='a1\0'), 'allocation_id', None),
    (slot_lease, lease_args, dict(lock_timeout=0), 'lock_timeout', None),
    (slot_lease, lease_args, dict(lock_timeout=-5), 'lock_timeout', None),
    (slot_lease, lease_args, dict(lock_timeout=10 ** 12), 'lock_timeout', None),
    (slot_lease, lease_args, dict(data={'key' + FORGED: 1}), 'data key', None),
    (slot_lease, lease_args, dict(reason='x\x1b[2J'), 'reason', None),
    (slot_lease, lease_args, dict(data={'n': float('nan')}), 'data', None),
    (slot_lease, lease_args, dict(data={'n': [float('inf')]}), 'data', None),
    (slot_lease, lease_args, dict(slot_id=SLOT), 'not valid JSON', write('leases/%s.json' % SLOT, '{"allocation_id": ')),
    (slot_lease, lease_args, dict(slot_id=SLOT), 'holds list', write('leases/%s.json' % SLOT, '[1, 2]')),
    (slot_lease, lease_args, dict(slot_id=SLOT), 'has no allocation_id', write('leases/%s.json' % SLOT, '{"phase": 1}')),
    (slot_lease, lease_args, dict(slot_id=SLOT), 'unknown phase',
     write('leases/%s.json' % SLOT, '{"allocation_id": "a1", "phase": "gone\\nFORGED"}')),
    (slot_lease, lease_args, dict(slot_id=SLOT), 'data.devices',
     write('leases/%s.json' % SLOT, '{"allocation_id": "a1", "phase": "running", "data": {"devices": [1]}}')),
    (slot_lease, lease_args, dict(slot_id=SLOT), 'data.gpu_address',
     write('leases/%s.json' % SLOT, '{"allocation_id": "a1", "phase": "running", "data": {"gpu_address": []}}')),
    (slot_lease, lease_args, dict(slot_id=SLOT), 'Is a directory', replace_by_a_directory('leases/%s.json' % SLOT)),
    (telemetry_token, token_args, dict(token_dir=_t('a-file')), 'token_dir', None),
    (telemetry_token, token_args, dict(token_dir=''), 'token_dir', None),
    (telemetry_token, token_args, dict(token_dir='/var/lib\0/tokens'), 'token_dir', None),
    (telemetry_token, token_args, dict(token_dir='relative/tokens'), 'token_dir', None),
    (telemetry_token, token_args, dict(allocation_id='a1' + FORGED), 'allocation_id', None),
    (telemetry_token, token_args, dict(slot_id='gpu-node-01-s1' + FORGED), 'slot_id', None),
    (telemetry_token, token_args, dict(), 'token file', write('tokens/gpu-node-01-s1.json', '{"token": ')),
    (telemetry_token, token_args, dict(), 'token file', write('tokens/gpu-node-01-s1.json', '"just a string"')),
    (telemetry_token, token_args, dict(_ansible_no_log=False), 'no_log', None),
    # a file option given a directory, a directory option given a file
    (host_network, host_network_args, dict(hosts_dir=_t('a-file')), 'hosts_dir', None),
    (slot_network, slot_network_args, dict(hosts_dir=_t('a-file')), 'hosts_dir', None),
    (slot_network, slot_network_args, dict(dnsmasq_pid_file=_t('outside')), 'dnsmasq_pid_file', None),
] + [
    (host_network, host_network_args, {option: _t('outside')}, option, None)
    for option in ('dnsmasq_conf', 'lease_file', 'nft_file', 'pid_file')
] + [
    (node_state_info, node_args, dict(node_id='gpu-node-01' + FORGED), 'node_id', None),
    (node_state_info, node_args, dict(bridge='br0\0'), 'bridge', None),
    (node_state_info, node_args, dict(sysfs_root=''), 'sysfs_root', None),
] + [
    (node_state_info, node_args, {option: value}, option, None)
    for option in ('lease_dir', 'hosts_dir', 'token_dir', 'disk_dir', 'seed_dir', 'vfio_state_dir')
    for value in ('', _t('a-file'), '/var/lib/gpuaas\0', 'relative')
] + [
    (slot_seed, seed_args, dict(seed_dir=''), 'seed_dir', None),
    (slot_seed, seed_args, dict(seed_dir=_t('a-file')), 'seed_dir', None),
    (slot_seed, seed_args, dict(seed_dir='/var/lib\0/seeds'), 'seed_dir', None),
    (slot_seed, seed_args, dict(ssh_keys=[KEY, KEY + '\0']), 'ssh_keys[1]', None),
    (slot_seed, seed_args, dict(ssh_keys=[KEY + FORGED]), 'ssh_keys[0]', None),
    (slot_seed, seed_args, dict(hostname='vm1' + FORGED), 'hostname', None),
    (slot_seed, seed_args, dict(hostname='vm1\0'), 'hostname', None),
    (slot_seed, seed_args, dict(telemetry_sink='http://10.100.0.1/x' + FORGED), 'telemetry_sink', None),
    (slot_seed, seed_args, dict(telemetry_file='/etc/../root/.ssh/authorized_keys'), 'telemetry_file', None),
    (slot_seed, seed_args, dict(user_data={'write_files': ['not a mapping']}), 'user_data.write_files', None),
    (slot_seed, seed_args, dict(user_data={'write_files': [{'path': '//etc/gpuaas/./telemetry.env'}]}),
     'user_data.write_files', None),
    (slot_seed, seed_args, dict(allocation_id='a1' + FORGED), 'allocation_id', None),
    (slot_seed, seed_args, dict(user_data={'n': float('-inf')}), 'user_data', None),
    (slot_discovery_info, None, dict(gpu_vendors=['10de\0']), 'gpu_vendors', None),
    (slot_discovery_info, None, dict(gpu_vendors=['10de' + FORGED]), 'gpu_vendors', None),
    (slot_discovery_info, None, dict(fabric_classes=['02' + FORGED]), 'fabric_classes', None),
    (slot_discovery_info, None, dict(sysfs_root=''), 'sysfs_root', None),
    (slot_discovery_info, None, dict(proc_root=''), 'proc_root', None),
    (slot_discovery_info, None, dict(proc_root=_t('a-file')), 'proc_root', None),
    (slot_discovery_info, None, dict(node_id='ws' + FORGED), 'node_id', None),
    # item 8: process management stays in its run directory, bounded
    (host_daemon, daemon_args, dict(pidfile='/tmp/elsewhere.pid'), 'pidfile', None),
    (host_daemon, daemon_args, dict(pidfile=_t('run/../outside/x.pid')), 'pidfile', None),
    (host_daemon, daemon_args, dict(pidfile=_t('run/escape/x.pid')), 'pidfile', link('outside', 'run/escape')),
    (host_daemon, daemon_args, dict(run_dir=''), 'run_dir', None),
    (host_daemon, daemon_args, dict(run_dir=_t('a-file')), 'run_dir', None),
    (host_daemon, daemon_args, dict(log_file=_t('outside/sleeper.log')), 'log_file', None),
    (host_daemon, daemon_args, dict(log_file='/etc/passwd'), 'log_file', None),
    (host_daemon, daemon_args, dict(argv=[SLEEP, '300\0']), 'argv[1]', None),
    (host_daemon, daemon_args, dict(argv=['sleep', '300']), 'argv[0]', None),
    (host_daemon, daemon_args, dict(name='sleeper' + FORGED), 'name', None),
] + [
    (host_daemon, daemon_args, dict(timeout=value), 'timeout', None)
    for value in (float('nan'), float('inf'), 'nan', '-inf', '1e400', 10 ** 400, 0, -1, 1e9)
] + [
    # item 9: every path option confined, symlinks resolved
    (slot_image, image_args, dict(progress_file='/etc/passwd'), 'progress_file', None),
    (slot_image, image_args, dict(progress_file=_t('outside/progress.json')), 'progress_file', None),
    (slot_image, image_args, dict(progress_file=_t('state/escape/progress.json')), 'progress_file',
     link('outside', 'state/escape')),
    (slot_image, image_args, dict(progress_file=_t('state/p.json'), state_dir=''), 'state_dir', None),
    (slot_image, image_args, dict(image_dir=''), 'image_dir', None),
    (slot_image, image_args, dict(image_dir=_t('a-file')), 'image_dir', None),
    (slot_image, image_args, dict(image_dir='/var/lib\0/disks'), 'image_dir', None),
    (slot_image, image_args, dict(source_dirs=['']), 'source_dirs[0]', None),
    (slot_image, image_args, dict(source_dirs=['/var/lib/gpuaas/images\0']), 'source_dirs[0]', None),
    (slot_image, image_args, dict(source=_t('outside/base.raw')), 'source', None),
    (slot_image, image_args, dict(source=_t('images/escape/base.raw')), 'source', link('outside', 'images/escape')),
    (slot_image, image_args, dict(size='99999999999T'), 'size', None),
    (slot_image, image_args, dict(size='-1G'), 'size', None),
    (slot_image, image_args, dict(checksum='sha256:' + '0' * 64 + '\n'), 'checksum', None),
    (slot_image, image_args, dict(target_device='/dev/../etc/passwd', image_dir=None), 'target_device', None),
    (slot_image, image_args, dict(slot_id='gpu-node-01-s1' + FORGED), 'slot_id', None),
]


def fill(value, t):
    if callable(value):
        return value(t)
    if isinstance(value, list):
        return [fill(item, t) for item in value]
    return value


@pytest.mark.parametrize('module, base, bad, name, setup', CASES,
                         ids=['%s-%d' % (case[0].__name__.rsplit('.', 1)[-1], n) for n, case in enumerate(CASES)])
def test_a_bad_value_is_refused_by_name_and_changes_nothing(tree, host_tree, capsys, module, base, bad, name, setup):
    if setup:
        setup(tree)
    if base is None:   # slot_discovery_info reads a sample host
        sysfs, proc = host_tree('workstation')
        args = dict(node_id='ws', sysfs_root=sysfs, proc_root=proc)
    else:
        args = base(tree)
    args.update((key, fill(value, tree)) for key, value in bad.items())
    args = dict((key, value) for key, value in args.items() if value is not None)
    before = snapshot(tree.root)
    for check_mode in (True, False):
        assert_refused(run_module(module, args, check_mode=check_mode, capsys=capsys), name)
    assert snapshot(tree.root) == before
    assert 't' * 24 not in capsys.readouterr().out


# -- item 5: check mode and state=query create nothing -------------------------------------------

@pytest.mark.parametrize('state, check_mode', [('present', True), ('absent', True), ('query', False),
                                               ('query', True)])
def test_lease_check_mode_and_query_create_no_lock_file(tree, capsys, state, check_mode):
    for lease_dir in (tree('leases'), tree('leases/new')):
        before = snapshot(tree.root)
        result = run_module(slot_lease, dict(slot_id=SLOT, allocation_id='held', state=state, lease_dir=lease_dir,
                                             phase='running'), check_mode=check_mode, capsys=capsys)
        assert not result.get('failed'), result
        assert snapshot(tree.root) == before
        assert not [name for name in os.listdir(tree('leases')) if name.endswith('.lock')]


# -- item 6: a forged discovery is refused naming the field --------------------------------------

def forge(path, value):
    def change(found):
        target = found
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


DELETE = object()
S0 = ('slots', 0)
FORGERIES = [
    (forge(S0 + ('slot_id',), 'ws-s5'), 'discovery.slots[0].slot_id'),
    (forge(S0 + ('slot_id',), 'other-s0'), 'discovery.slots[0].slot_id'),
    (forge(S0 + ('slot_id',), 'ws-s0' + FORGED), 'discovery.slots[0].slot_id'),
    (forge(S0 + ('slot_index',), 10 ** 9), 'discovery.slots[0].slot_index'),
    (forge(S0 + ('slot_index',), '0'), 'discovery.slots[0].slot_index'),
    (forge(S0 + ('slot_index',), float('inf')), 'discovery.slots[0].slot_index'),
    (forge(S0 + ('slot_index',), 10 ** 400), 'discovery.slots[0].slot_index'),
    (forge(S0 + ('numa_node',), float('nan')), 'discovery.slots[0].numa_node'),
    (forge(S0 + ('numa_node',), 'inf'), 'discovery.slots[0].numa_node'),
    (forge(S0 + ('mac',), '52:54:00:00:00:01'), 'discovery.slots[0].mac'),
    (forge(S0 + ('ip',), '10.100.0.99'), 'discovery.slots[0].ip'),
    (forge(S0 + ('ip',), DELETE), 'discovery.slots[0].ip'),
    (forge(S0 + ('gpu_address',), '../../../etc/passwd'), 'discovery.slots[0].gpu_address'),
    (forge(S0 + ('gpu_address',), '0000:01:00.0' + FORGED), 'discovery.slots[0].gpu_address'),
    (forge(S0 + ('gpu_address',), None), 'discovery.slots[0].gpu_address'),
    (forge(S0 + ('companions',), ['0000:01:00.1; reboot']), 'discovery.slots[0].companions'),
    (forge(S0 + ('companions',), '0000:01:00.1'), 'discovery.slots[0].companions'),
    (forge(S0 + ('nvme_address',), '/dev/nvme0n1'), 'discovery.slots[0].nvme_address'),
    (forge(S0 + ('fabric_pf_address',), 7), 'discovery.slots[0].fabric_pf_address'),
    (forge(S0 + ('fabric_vf_pci_address',), '0000:03:00.2\n'), 'discovery.slots[0].fabric_vf_pci_address'),
    (forge(S0 + ('numa_node',), 10 ** 9), 'discovery.slots[0].numa_node'),
    (forge(S0 + ('numa_node',), 'zero'), 'discovery.slots[0].numa_node'),
    (forge(S0 + ('cpulist',), '0-4000000000'), 'discovery.slots[0].cpulist'),
    (forge(S0 + ('cpulist',), '0-3' + FORGED), 'discovery.slots[0].cpulist'),
    (forge(S0 + ('eligible',), 'yes'), 'discovery.slots[0].eligible'),
    (forge(S0 + ('reasons',), ['ok' + FORGED]), 'discovery.slots[0].reasons'),
    (forge(S0 + ('fingerprint',), 'trust me'), 'discovery.slots[0].fingerprint'),
    (forge(S0 + ('fingerprint', 'gpu', 'address'), '0000:01:00.0/../x'), 'discovery.slots[0].fingerprint.gpu.address'),
    (forge(S0 + ('fingerprint', 'gpu', 'vendor_id'), 'nvidia'), 'discovery.slots[0].fingerprint.gpu.vendor_id'),
    (forge(S0 + ('fingerprint', 'gpu', 'serial'), 'SN1' + FORGED), 'discovery.slots[0].fingerprint.gpu.serial'),
    (forge(S0 + ('fingerprint', 'gpu', 'pcie_path'), 'pci0000:00' + FORGED),
     'discovery.slots[0].fingerprint.gpu.pcie_path'),
    (forge(S0 + ('fingerprint', 'gpu', 'pcie_path'), 'pci0000:00/../../etc/passwd'),
     'discovery.slots[0].fingerprint.gpu.pcie_path'),
    (forge(S0 + ('fingerprint', 'nvme', 'subsystem_device_id'), 12345), 'discovery.slots[0].fingerprint.nvme.subsystem'),
    (forge(S0 + ('fingerprint', 'gpu'), ['a list']), 'discovery.slots[0].fingerprint.gpu'),
    (forge(S0 + ('capacity_metadata',), None), 'discovery.slots[0].capacity_metadata'),
    (forge(('slots', 0), 'ws-s0'), 'discovery.slots[0]'),
    (forge(('slots', 1), None), 'discovery.slots[1]'),
    (lambda found: found['slots'].append(['not', 'a', 'slot']), 'discovery.slots[2]'),
    (forge(('node_id',), 'ws' + FORGED), 'discovery.node_id'),
]


@pytest.mark.parametrize('change, field', FORGERIES, ids=[field + '-%d' % n for n, (_c, field) in enumerate(FORGERIES)])
def test_a_forged_discovery_is_refused_naming_the_field(host_tree, capsys, change, field):
    sysfs, proc = host_tree('workstation')
    found = Discovery('ws', sysfs, proc).run()
    entry = {'slot_id': 'ws-s0', 'gpu_address': found['slots'][0]['gpu_address'], 'destructive_wipe_policy': 'zero',
             'capacity_metadata': dict(found['slots'][0]['capacity_metadata'])}
    assert run_module(slot_approval, {'discovery': found, 'approved_slots': [entry]}, capsys=capsys)['slots']
    forged = copy.deepcopy(found)
    change(forged)
    result = run_module(slot_approval, {'discovery': forged, 'approved_slots': [entry]}, capsys=capsys)
    assert_refused(result, field)
    assert 'slots' not in result


ENTRY_FORGERIES = [
    (5, 'approved_slots[0]'),
    ('slot_id=ws-s0', 'approved_slots[0]'),
    (None, 'approved_slots[0]'),
    ({'slot_id': 'ws-s0' + FORGED}, 'approved_slots[0]'),
    ({'slot_id': 'ws-s0', 'approved_by': 'alice' + FORGED}, 'approved_by'),
    ({'slot_id': 'ws-s0', 'note': 'x' * 300}, 'note'),
    ({'slot_id': 'ws-s0', 'fingerprint': 'same as before'}, 'fingerprint'),
    ({'slot_id': 'ws-s0', 'destructive_wipe_policy': 'zero' + FORGED}, 'destructive_wipe_policy'),
    ({'slot_id': 'ws-s0', 'gpu_address': '0000:01:00.0' + FORGED}, 'gpu_address'),
    ({'slot_id': 'ws-s0', 'unknown' + FORGED: 1}, 'unknown keys'),
]


@pytest.mark.parametrize('bad, field', ENTRY_FORGERIES, ids=[f + '-%d' % n for n, (_b, f) in enumerate(ENTRY_FORGERIES)])
def test_a_bad_approved_slot_entry_is_refused_naming_the_field(host_tree, capsys, bad, field):
    sysfs, proc = host_tree('workstation')
    found = Discovery('ws', sysfs, proc).run()
    if isinstance(bad, dict) and len(bad) > 1:
        entry = {'slot_id': 'ws-s0', 'gpu_address': found['slots'][0]['gpu_address'],
                 'destructive_wipe_policy': 'zero', 'capacity_metadata': dict(found['slots'][0]['capacity_metadata'])}
        entry.update(bad)
        bad = entry
    result = run_module(slot_approval, {'discovery': found, 'approved_slots': [bad]}, capsys=capsys)
    assert_refused(result, field)


# -- item 8: only the daemon it manages ----------------------------------------------------------

@pytest.fixture
def stranger():
    """A process that is not the daemon: the same program with other arguments."""
    proc = subprocess.Popen([SLEEP, '299'])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize('state, with_argv', [('stopped', True), ('stopped', False), ('started', True)])
def test_a_pidfile_naming_another_process_never_gets_it_signalled(tree, capsys, stranger, state, with_argv):
    args = daemon_args(tree)
    if not with_argv:
        del args['argv']
    with open(args['pidfile'], 'w') as handle:
        handle.write('%d\n' % stranger.pid)
    # The pidfile of a daemon that died, written before its pid was reused (a pidfile written
    # after the process started is refused outright: test_host_daemon's old_daemon tests).
    old = started_at(stranger.pid) - 3600
    os.utime(args['pidfile'], (old, old))
    result = run_module(host_daemon, dict(args, state=state), capsys=capsys)
    try:
        assert not result.get('failed'), result
        assert stranger.poll() is None and cmdline(stranger.pid) == [SLEEP, '299']
        assert 'is not sleeper' in json.dumps(result.get('warnings')), result
        if state == 'stopped':
            assert result['changed'] is False and open(args['pidfile']).read() == '%d\n' % stranger.pid
        else:
            assert result['pid'] != stranger.pid and cmdline(result['pid']) == [SLEEP, '300']
    finally:
        if state == 'started' and result.get('pid'):
            os.kill(result['pid'], signal.SIGKILL)


def test_a_pidfile_outside_run_dir_is_neither_trusted_nor_removed(tree, capsys):
    args = daemon_args(tree)
    started = run_module(host_daemon, args, capsys=capsys)
    try:
        outside = tree('outside/sleeper.pid')
        shutil.copy(args['pidfile'], outside)
        before = snapshot(tree.root)
        for state in ('stopped', 'started'):
            result = run_module(host_daemon, dict(args, pidfile=outside, state=state), capsys=capsys)
            assert_refused(result, 'pidfile')
        assert snapshot(tree.root) == before and cmdline(started['pid']) == [SLEEP, '300']
        stopped = run_module(host_daemon, dict(args, state='stopped'), capsys=capsys)
        assert stopped['changed'] and cmdline(started['pid']) is None
    finally:
        if cmdline(started['pid']):
            os.kill(started['pid'], signal.SIGKILL)


def test_the_token_is_in_no_diff_and_no_message(tree, capsys):
    made = run_module(telemetry_token, token_args(tree), diff=True, capsys=capsys)
    assert made['token'] and made['token'] not in json.dumps(made['diff'])
    gone = run_module(telemetry_token, dict(token_args(tree), state='absent'), diff=True, capsys=capsys)
    assert gone['changed'] and made['token'] not in json.dumps(gone)


def test_slot_seed_keeps_its_token_out_of_its_result(tree, capsys):
    assert slot_seed.ARGUMENT_SPEC['telemetry_token']['no_log'] is True
    result = run_module(slot_seed, seed_args(tree), check_mode=True, diff=True, capsys=capsys)
    assert not result.get('failed') and 't' * 24 not in json.dumps(result)


# -- item 1: numbers ansible-core's conversion cannot take ----------------------------------------

MODULES = [importlib.import_module('ansible_collections.gpuaas.slice.plugins.modules.' + name)
           for name in sorted(os.path.splitext(entry)[0] for entry in os.listdir(modules.__path__[0])
                              if entry.endswith('.py') and not entry.startswith('_'))]


def spec_of(module):
    """The argument spec (and other keywords) ``module.main()`` hands to run_module."""
    seen = {}

    def capture(argument_spec, engine, **kwargs):
        seen.update(argument_spec)
        raise SystemExit(0)
    original = module.run_module
    module.run_module = capture
    try:
        with pytest.raises(SystemExit):
            module.main()
    finally:
        module.run_module = original
    return seen


def number_options(module):
    """(name given, 'int' or 'float', is a list) for every int/float option of ``module`` and its aliases."""
    found = []
    for name, spec in sorted(spec_of(module).items()):
        listed = spec.get('type') == 'list'
        kind = spec.get('elements') if listed else spec.get('type')
        if kind in ('int', 'float'):
            found += [(given, kind, listed) for given in [name] + list(spec.get('aliases') or [])]
    return found


NUMBER_OPTIONS = [(module, name, kind, listed) for module in MODULES for name, kind, listed in number_options(module)]
# What ansible-core's conversion raises on or runs away with, by the option's type. Any other
# number reaches the module's own range check (the modules' tests and the CASES above).
UNCONVERTIBLE = {
    'int': ['inf', '-inf', 'Infinity', ' inf ', 'nan', 'NaN', 'sNaN', '1e400', '-1e400', '9' * 400,
            '-' + '9' * 400, '1e999999999', float('inf'), float('-inf'), float('nan'), 1e300],
    'float': [10 ** 400, -10 ** 400, 2 ** 1024],
}


def test_the_table_covers_the_modules_number_options():
    """The table is read from the modules' specs; these are options known to take numbers."""
    names = set((module.__name__.rsplit('.', 1)[-1], name) for module, name, _kind, _listed in NUMBER_OPTIONS)
    assert {('slot_lease', 'lock_timeout'), ('host_daemon', 'timeout'), ('slot_vm', 'memory_mb'),
            ('nvme_wipe', 'format_ses'), ('sriov_vfs', 'num_vfs'), ('slot_network', 'telemetry_port')} <= names


def paths_in(module, tree):
    """Every path option of ``module`` pointed into the tree: a refusal that came late would stay there."""
    args = {}
    for name, spec in spec_of(module).items():
        if spec.get('type') == 'path':
            args[name] = tree('outside')
        elif spec.get('type') == 'list' and spec.get('elements') == 'path':
            args[name] = [tree('outside')]
    return args


@pytest.mark.parametrize('module, name, kind, listed', NUMBER_OPTIONS,
                         ids=['%s-%s' % (m.__name__.rsplit('.', 1)[-1], n) for m, n, _k, _l in NUMBER_OPTIONS])
def test_a_number_option_refuses_what_ansible_core_cannot_convert(tree, capsys, module, name, kind, listed):
    base = paths_in(module, tree)
    before = snapshot(tree.root)
    for value in UNCONVERTIBLE[kind]:
        given = [1, value] if listed else value
        place = name + '[1]' if listed else name
        for check_mode in (True, False):
            result = run_module(module, dict(base, **{name: given}), check_mode=check_mode, capsys=capsys)
            assert_refused(result, place)
            assert result['msg'].startswith(place + ' must be a '), result
            assert 'Traceback' not in json.dumps(result) and len(result['msg']) < 300, result
    if listed and kind == 'int':   # a string given for a list is split at commas
        assert_refused(run_module(module, dict(base, **{name: '1,inf'}), capsys=capsys), name + '[1]')
    assert snapshot(tree.root) == before


@pytest.mark.parametrize('module, name, kind, listed', NUMBER_OPTIONS,
                         ids=['%s-%s' % (m.__name__.rsplit('.', 1)[-1], n) for m, n, _k, _l in NUMBER_OPTIONS])
def test_a_number_option_still_takes_a_number_written_as_a_string(module, name, kind, listed):
    """Templated values arrive as strings ('30', '1e3'): the check leaves them to ansible-core and the module."""
    spec = spec_of(module)
    for value in ('30', '1e3', '-2', '2.5', str(2 ** 53), 'thirty', 10 ** 30, 1e15):
        assert _engine.number_option_problem(spec, {name: [value] if listed else value}) is None
