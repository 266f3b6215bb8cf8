# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""node_state_info: orphans, devices to return, mismatches, and blindness that blocks cleaning."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._domain import DomainSpec, build_xml
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot
from ansible_collections.gpuaas.slice.plugins.module_utils._node_state import NodeState

NODE = 'gpu-node-01'


def domain(slot, hostdevs=()):
    spec = DomainSpec(slot_id=slot, memory_mib=1024, cpulist='0-1', domain_type='qemu',
                      hostdevs=[('gpu', address) for address in hostdevs])
    return build_xml(spec)


class Node:
    def __init__(self, tmp_path):
        self.root = tmp_path
        self.dirs = {kind: tmp_path / kind for kind in ('lease', 'hosts', 'token', 'disk', 'seed', 'vfio')}
        for path in self.dirs.values():
            path.mkdir()
        self.domains = []
        self.ports = []
        self.cookies = []
        self.ovs_rc = 0
        self.libvirt_error = None

    def lease(self, slot, phase='running', devices=(), passthrough=True):
        (self.dirs['lease'] / ('%s.json' % slot)).write_text(json.dumps(dict(
            slot_id=slot, allocation_id='a-' + slot, phase=phase, updated_at='t',
            data=dict(devices=list(devices), passthrough=passthrough))))

    def slot_files(self, slot):
        (self.dirs['hosts'] / slot).write_text('x')
        (self.dirs['token'] / ('%s.json' % slot)).write_text('{}')
        (self.dirs['disk'] / ('%s.raw' % slot)).write_text('')
        (self.dirs['seed'] / ('%s-seed.iso' % slot)).write_text('')
        self.ports.append(Slot.parse(slot).tap)
        self.cookies.append(Slot.parse(slot).cookie)

    def vfio(self, address, functions):
        (self.dirs['vfio'] / ('%s.json' % address)).write_text(json.dumps(
            dict(version=1, address=address, functions={f: {'driver': 'nvidia'} for f in functions})))

    def run_command(self, args):
        if self.ovs_rc:
            return self.ovs_rc, '', 'ovs-vsctl: unix:/run/openvswitch/db.sock: database connection failed'
        if args[0] == 'ovs-vsctl':
            return 0, '\n'.join(self.ports) + '\n', ''
        return 0, ''.join(' cookie=%#x, table=0, priority=100 actions=drop\n' % c for c in self.cookies), ''

    def listed(self):
        if self.libvirt_error:
            raise RuntimeError(self.libvirt_error)
        return self.domains

    def report(self):
        d = self.dirs
        return NodeState(self.run_command, NODE, str(d['lease']), str(d['hosts']), str(d['token']),
                         str(d['disk']), str(d['seed']), str(d['vfio']), 'br-gpuaas', self.listed).report()


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def test_a_node_that_agrees_with_its_leases_is_clean(node):
    node.lease('gpu-node-01-s0', devices=['0000:18:00.0'])
    node.slot_files('gpu-node-01-s0')
    node.domains.append(('gpuaas-gpu-node-01-s0', 1, domain('gpu-node-01-s0', ['0000:18:00.0'])))
    node.vfio('0000:18:00.0', ['0000:18:00.0', '0000:18:00.1'])
    report = node.report()
    assert report['clean'] and not report['orphans'] and not report['devices_to_return']


def test_everything_of_a_slot_without_lease_is_an_orphan(node):
    node.lease('gpu-node-01-s0', devices=['0000:18:00.0'])
    node.slot_files('gpu-node-01-s0')
    node.domains.append(('gpuaas-gpu-node-01-s0', 1, domain('gpu-node-01-s0', ['0000:18:00.0'])))
    node.slot_files('gpu-node-01-s1')                       # a crashed allocate's leftovers
    node.domains.append(('gpuaas-gpu-node-01-s1', 0, domain('gpu-node-01-s1')))
    node.domains.append(('someone-elses-vm', 1, domain('gpu-node-01-s5')))
    node.ports.append('vnet0')
    node.ports.append(Slot.parse('other-node-s0').tap)            # not this node's: reported only
    report = node.report()
    assert report['orphans'] == {'gpu-node-01-s1': ['dhcp_host', 'disk', 'domain', 'flows', 'port', 'seed', 'token']}
    assert report['unknown_ports'] == [Slot.parse('other-node-s0').tap]
    assert not report['clean']


def test_devices_go_back_only_when_no_lease_lists_them_and_no_domain_holds_them(node):
    node.lease('gpu-node-01-s0', devices=['0000:18:00.0'])
    node.vfio('0000:18:00.0', ['0000:18:00.0'])             # leased
    node.vfio('0000:19:00.0', ['0000:19:00.0', '0000:19:00.1'])  # no lease, no domain
    node.vfio('0000:1a:00.0', ['0000:1a:00.0', '0000:1a:00.1'])  # no lease, but a domain holds its audio
    node.domains.append(('gpuaas-gpu-node-01-s7', 1, domain('gpu-node-01-s7', ['0000:1a:00.1'])))
    report = node.report()
    assert report['devices_to_return'] == ['0000:19:00.0']
    assert report['devices_kept_for_domains'] == ['0000:1a:00.0']


def test_mismatches_and_incomplete_leases(node):
    node.lease('gpu-node-01-s0', devices=['0000:18:00.0'])   # running, no domain
    node.lease('gpu-node-01-s1', devices=['0000:19:00.0'])   # domain lost its hostdev
    node.domains.append(('gpuaas-gpu-node-01-s1', 1, domain('gpu-node-01-s1')))
    node.lease('gpu-node-01-s2', phase='provisioning')
    node.lease('gpu-node-01-s3', devices=['0000:1b:00.0'], passthrough=False)  # lab: no hostdevs wanted
    node.domains.append(('gpuaas-gpu-node-01-s3', 0, domain('gpu-node-01-s3')))
    report = node.report()
    problems = {m['slot_id']: m['problem'] for m in report['mismatches']}
    assert 'no domain gpuaas-gpu-node-01-s0' in problems['gpu-node-01-s0']
    assert 'lacks the hostdevs 0000:19:00.0' in problems['gpu-node-01-s1']
    assert 'not running' in problems['gpu-node-01-s3']
    assert [i['slot_id'] for i in report['incomplete']] == ['gpu-node-01-s2']


def test_a_stopped_allocation_is_a_shut_off_domain_with_its_devices(node):
    """Issue 18, item 5: a stopped slot keeps its domain and devices; reconcile agrees with it."""
    node.lease('gpu-node-01-s0', phase='stopped', devices=['0000:18:00.0'])
    node.slot_files('gpu-node-01-s0')
    node.domains.append(('gpuaas-gpu-node-01-s0', 0, domain('gpu-node-01-s0', ['0000:18:00.0'])))
    node.vfio('0000:18:00.0', ['0000:18:00.0'])
    report = node.report()
    assert report['clean'] and not report['incomplete'] and not report['devices_to_return'], report
    # One that runs while its lease says stopped, or that lost its domain, is a mismatch.
    node.domains[0] = ('gpuaas-gpu-node-01-s0', 1, domain('gpu-node-01-s0', ['0000:18:00.0']))
    node.lease('gpu-node-01-s1', phase='stopped', devices=['0000:19:00.0'])
    problems = {m['slot_id']: m['problem'] for m in node.report()['mismatches']}
    assert problems == {'gpu-node-01-s0': 'domain gpuaas-gpu-node-01-s0 runs, but the lease says its allocation '
                                          'stopped it',
                        'gpu-node-01-s1': 'the lease says stopped but there is no domain gpuaas-gpu-node-01-s1'}


def test_a_damaged_lease_holds_its_slot(node):
    (node.dirs['lease'] / 'gpu-node-01-s4.json').write_text('{not json')
    node.slot_files('gpu-node-01-s4')
    report = node.report()
    assert report['orphans'] == {} and report['damaged_leases'][0]['slot_id'] == 'gpu-node-01-s4'
    assert not report['clean']


@pytest.mark.parametrize('blind', ['libvirt', 'ovs'])
def test_what_cannot_be_read_is_reported_as_blind(node, blind):
    node.slot_files('gpu-node-01-s1')
    if blind == 'libvirt':
        node.libvirt_error = 'cannot connect to libvirt at qemu:///system'
    else:
        node.ovs_rc = 1
    report = node.report()
    assert report['blind'] and not report['clean']
    assert ('libvirt' if blind == 'libvirt' else 'database connection failed') in report['blind'][0]


def test_another_nodes_slots_on_the_same_host_are_never_this_nodes_orphans(node):
    """A lab host runs several nodes' slots on one libvirt: reconcile of one removed the other's VM."""
    node.domains.append(('gpuaas-sample-hgx-s0', 1, domain('sample-hgx-s0', ['0000:1a:00.0'])))
    (node.dirs['disk'] / 'sample-hgx-s0.raw').write_text('')              # (its own bridge: no flows here)
    (node.dirs['seed'] / 'sample-hgx-s0-seed.iso').write_text('')
    node.vfio('0000:1a:00.0', ['0000:1a:00.0'])
    (node.dirs['lease'] / 'sample-hgx-s1.json').write_text('{not json')   # not this node's either
    report = node.report()
    assert report['orphans'] == {} and report['domains'] == {} and report['damaged_leases'] == []
    assert report['other_nodes_domains'] == ['gpuaas-sample-hgx-s0']
    assert report['devices_to_return'] == [] and report['devices_kept_for_domains'] == ['0000:1a:00.0']


def test_hostdev_drift_is_reported_with_what_a_repair_needs(node):
    slot = 'gpu-node-01-s0'
    (node.dirs['lease'] / ('%s.json' % slot)).write_text(json.dumps(dict(
        slot_id=slot, allocation_id='a0', phase='running', updated_at='t', data=dict(
            passthrough=True, devices=['0000:18:00.0', '0000:19:00.0'], gpu_address='0000:18:00.0',
            nvme_address='0000:19:00.0', fabric_vf_pci_address=None))))
    node.vfio('0000:18:00.0', ['0000:18:00.0', '0000:18:00.1'])   # a lease without companions: the record has them
    node.domains.append(('gpuaas-%s' % slot, 0, domain(slot, ['0000:19:00.0'])))
    (drift,) = node.report()['hostdev_drift']
    assert drift['missing'] == ['0000:18:00.0', '0000:18:00.1'] and drift['repairable']
    assert drift['companions'] == ['0000:18:00.1'] and drift['nvme_address'] == '0000:19:00.0'
    assert drift['active'] is False and drift['allocation_id'] == 'a0'


def test_the_report_is_one_line_per_finding_grouped_by_slot(node):
    from ansible_collections.gpuaas.slice.plugins.module_utils._node_state import report_lines
    node.lease('gpu-node-01-s0', devices=['0000:18:00.0'])                  # running, no domain
    node.lease('gpu-node-01-s2', phase='quarantined')
    node.slot_files('gpu-node-01-s1')                                       # orphan
    node.vfio('0000:19:00.0', ['0000:19:00.0'])                             # to return
    lines = report_lines(node.report())
    assert lines == [
        'gpu-node-01-s0: the lease says running but there is no domain gpuaas-gpu-node-01-s0: left as it is; '
        'operator: run allocate again with allocation a-gpu-node-01-s0, or release it',
        'gpu-node-01-s1: has no lease but held dhcp_host, disk, flows, port, seed, token: removed',
        'gpu-node-01-s2: is quarantined since t (allocation a-gpu-node-01-s2): no reason recorded; it is never '
        'allocated; operator: deal with that, then run release with gpuaas_clear_quarantine=true',
        'node: device 0000:19:00.0 was on vfio-pci with no lease and no domain holding it: given back to its '
        'host driver',
    ]
    assert report_lines(node.report(), check_mode=True)[1].endswith(': would be removed')


# Issue 16, item 1: state files read back damaged are reported by name, never a crash, and the
# node's report then lets reconcile remove nothing on their word.
DAMAGED_LEASES = [
    ('{not json', 'not valid JSON'),
    ('\xff\xfe', 'not valid JSON'),
    ('[1, 2]', 'holds list'),
    ('"a string"', 'holds str'),
    ('{"phase": "running"}', 'has no allocation_id'),
    ('{"allocation_id": 7, "phase": "running"}', 'has no allocation_id'),
    ('{"allocation_id": "a", "phase": "gone"}', 'unknown phase'),
    ('{"allocation_id": "a", "phase": ["running"]}', 'unknown phase'),
    ('{"allocation_id": "a", "phase": "running", "data": []}', 'data that is not a mapping'),
    ('{"allocation_id": "a", "phase": "running", "data": {"devices": "0000:18:00.0"}}', 'data.devices'),
    ('{"allocation_id": "a", "phase": "running", "data": {"devices": [{"x": 1}]}}', 'data.devices'),
    ('{"allocation_id": "a", "phase": "running", "data": {"companions": [null]}}', 'data.companions'),
    ('{"allocation_id": "a", "phase": "running", "data": {"passthrough": true, "gpu_address": ["x"]}}',
     'data.gpu_address'),
    ('{"allocation_id": "a", "phase": "running", "data": {"nvme_address": "../../dev/sda"}}', 'data.nvme_address'),
]


@pytest.mark.parametrize('text, problem', DAMAGED_LEASES)
def test_a_damaged_lease_is_named_and_its_slot_held(node, text, problem):
    path = node.dirs['lease'] / 'gpu-node-01-s4.json'
    path.write_bytes(text.encode('latin-1'))
    node.slot_files('gpu-node-01-s4')
    node.domains.append(('gpuaas-gpu-node-01-s4', 1, domain('gpu-node-01-s4', ['0000:18:00.0'])))
    node.vfio('0000:18:00.0', ['0000:18:00.0'])
    report = node.report()
    (damaged,) = report['damaged_leases']
    assert damaged['slot_id'] == 'gpu-node-01-s4' and damaged['path'] == str(path)
    assert problem in damaged['problem'] and str(path) in damaged['problem']
    assert report['orphans'] == {} and report['devices_to_return'] == [] and not report['clean']


DAMAGED_VFIO = [
    ('0000:19:00.0.json', '{not json'),
    ('0000:19:00.0.json', '[]'),
    ('0000:19:00.0.json', '{"functions": ["0000:19:00.0"]}'),
    ('0000:19:00.0.json', '{"functions": {"../../x": {}}}'),
    ('0000:19:00.0.json', '{"version": 1}'),
    ('not-an-address.json', '{"functions": {"0000:19:00.0": {}}}'),
]


@pytest.mark.parametrize('name, text', DAMAGED_VFIO)
def test_a_damaged_vfio_record_blinds_the_node(node, name, text):
    (node.dirs['vfio'] / name).write_text(text)
    node.vfio('0000:1a:00.0', ['0000:1a:00.0'])          # a good record, no lease: would be returned
    node.slot_files('gpu-node-01-s1')                     # an orphan: would be removed
    report = node.report()
    assert any(name in problem for problem in report['blind']), report['blind']
    assert not report['clean']
    from ansible_collections.gpuaas.slice.plugins.module_utils._node_state import report_lines
    lines = report_lines(report)
    assert lines[0].startswith('node: cannot see: ') and 'removed and repaired NOTHING' in lines[0]
    assert all(not line.endswith(': removed') and 'given back' not in line for line in lines)


@pytest.mark.parametrize('kind, name', [('token', 'gpu-node-01-s0.json'), ('disk', 'gpu-node-01-s0.raw.gpuaas.json'),
                                        ('disk', 'gpu-node-01-s0.image.json')])
@pytest.mark.parametrize('text', ['{not json', '[]', '\0\0\0'])
def test_damaged_tokens_and_image_markers_never_stop_the_report(node, kind, name, text):
    """node_state_info judges tokens and image markers by their names; their content cannot crash it."""
    node.lease('gpu-node-01-s0', devices=['0000:18:00.0'])
    node.domains.append(('gpuaas-gpu-node-01-s0', 1, domain('gpu-node-01-s0', ['0000:18:00.0'])))
    (node.dirs[kind] / name).write_text(text)
    report = node.report()
    assert report['orphans'] == {} and report['blind'] == [] and report['damaged_leases'] == []


def test_a_leased_gpu_that_fell_off_the_bus_is_reported(node, tmp_path):
    from ansible_collections.gpuaas.slice.plugins.module_utils._node_state import report_lines
    from tests.sysfs import hosts
    from tests.sysfs.builder import remove_device

    sys_root, _proc = hosts.build_hgx(str(tmp_path / 'hgx'))
    remove_device(sys_root, '0000:18:00.0')
    for slot, gpu in (('gpu-node-01-s0', '0000:18:00.0'), ('gpu-node-01-s1', '0000:19:00.0')):
        (node.dirs['lease'] / ('%s.json' % slot)).write_text(json.dumps(dict(
            slot_id=slot, allocation_id='a-' + slot, phase='running', updated_at='t',
            data=dict(passthrough=True, devices=[gpu], gpu_address=gpu))))
        node.domains.append(('gpuaas-%s' % slot, 1, domain(slot, [gpu])))
    d = node.dirs
    state = NodeState(node.run_command, NODE, str(d['lease']), str(d['hosts']), str(d['token']), str(d['disk']),
                      str(d['seed']), str(d['vfio']), 'br-gpuaas', node.listed, sysfs_root=sys_root).report()
    assert state['lost_gpus'] == [{'slot_id': 'gpu-node-01-s0', 'allocation_id': 'a-gpu-node-01-s0',
                                   'phase': 'running', 'gpu_address': '0000:18:00.0'}]
    assert state['clean'] is False and state['blind'] == []
    assert report_lines(state) == [
        'gpu-node-01-s0: its GPU 0000:18:00.0 is not on the PCI bus (it fell off the bus, e.g. Xid 79, or was '
        'removed) while allocation a-gpu-node-01-s0 holds it (phase running): the VM has lost it; left as it is; '
        'operator: release the allocation; the slot is absent until the GPU is back (discover and approve again)']
    # Without sysfs to look at, nothing is claimed lost.
    assert node.report()['lost_gpus'] == []


class SshNode(Node):
    """A node whose slots have SSH rules: files in ssh_dir and chains in table inet gpuaas."""

    def __init__(self, tmp_path):
        Node.__init__(self, tmp_path)
        self.dirs['ssh'] = tmp_path / 'ssh'
        self.dirs['ssh'].mkdir()
        self.chains = []
        self.nft = None   # (rc, err) when nft fails

    def run_command(self, args):
        if args[0] != 'nft':
            return Node.run_command(self, args)
        assert args[1:] == ['-j', 'list', 'table', 'inet', 'gpuaas']
        if self.nft:
            return self.nft[0], '', self.nft[1]
        items = [{'table': {'family': 'inet', 'name': 'gpuaas'}}] + [
            {'chain': {'family': 'inet', 'table': 'gpuaas', 'name': name}} for name in ['forward'] + self.chains]
        return 0, json.dumps({'nftables': items}), ''

    def report(self):
        d = self.dirs
        return NodeState(self.run_command, NODE, str(d['lease']), str(d['hosts']), str(d['token']),
                         str(d['disk']), str(d['seed']), str(d['vfio']), 'br-gpuaas', self.listed,
                         ssh_dir=str(d['ssh']), nft_table='gpuaas').report()


def test_ssh_rules_no_lease_explains_are_orphans_by_chain_or_file(tmp_path):
    node = SshNode(tmp_path)
    node.lease('gpu-node-01-s0', passthrough=False)
    node.domains.append(('gpuaas-gpu-node-01-s0', 1, domain('gpu-node-01-s0')))
    node.chains += ['ssh_dnat_gpu-node-01-s0', 'ssh_fwd_gpu-node-01-s0', 'ssh_dnat_gpu-node-01-s2',
                    'ssh_fwd_other-node-s1', 'ssh_fwd_not-a-slot']
    (node.dirs['ssh'] / 'gpu-node-01-s0.nft').write_text('x')
    (node.dirs['ssh'] / 'gpu-node-01-s3.nft').write_text('x')
    state = node.report()
    # s2 by its chain, s3 by its file; another node's chain and a chain that names no slot are not this node's.
    assert state['orphans'] == {'gpu-node-01-s2': ['ssh'], 'gpu-node-01-s3': ['ssh']}
    assert not state['blind']


def test_no_table_holds_no_ssh_rules_and_an_nft_that_fails_blinds_the_node(tmp_path):
    node = SshNode(tmp_path)
    node.nft = (1, 'Error: No such file or directory\nlist table inet gpuaas\n')
    assert node.report()['clean']
    node.nft = (1, 'Error: Operation not permitted')
    state = node.report()
    assert state['blind'] == ['nft -j list table inet gpuaas failed: Error: Operation not permitted']
    assert not state['clean']
