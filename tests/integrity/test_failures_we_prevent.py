# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One test per row of docs/failures-we-prevent.md, named after the reported failure.

Each test first builds the condition that caused the failure upstream (a domain holding a
GPU no lease lists, a sysfs that cannot be read, a segment-0001 address, an audio function
left on its host driver, a GPU that cannot be reset, a domain redefined without its hostdevs,
a board swapped under an approved slot, VFs with zero GUIDs, an NVMe that says it formatted
and did not, a second allocation for a leased slot) and then proves the guarantee.

Device behaviour runs on the kernel model (tests/sysfs); the release and reconcile roles run
as ansible-playbook processes, as AWX runs them. The tests decorated with ``system`` use the real
libvirtd (qemu:///system) or read the real Open vSwitch database (they carry the ``slow``
marker): run them under ``flock /tmp/gpuaas-system.lock``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _domain, _slot_vm
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from ansible_collections.gpuaas.slice.plugins.module_utils._domain import DomainSpec, build_xml, domain_facts
from ansible_collections.gpuaas.slice.plugins.module_utils._node_state import NodeState, report_lines
from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import vf_guids
from ansible_collections.gpuaas.slice.plugins.modules import (
    pci_reset, slot_approval, slot_discovery_info, slot_lease, slot_vm, sriov_vfs, vfio_bind)
from tests.integrity.playbooks import Node, fake_tool
from tests.sysfs import device_hosts, hosts, kernel_fixture
from tests.sysfs.fake_tools import ZERO_GUID
from tests.unit.module_runner import run_module

kernel = kernel_fixture.kernel  # the fixture

NODE = 'itest'
GPU, AUDIO, NVME = '0000:1b:00.0', '0000:1b:00.1', '0000:1c:00.0'   # gpu_box
IB_PF = '0000:5e:00.0'


def is_root_with(*tools):
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in tools)


def ovs_running():
    return is_root_with('ovs-vsctl') and subprocess.run(
        ['ovs-vsctl', '--timeout=3', 'show'], capture_output=True, check=False).returncode == 0


def libvirtd_running():
    try:
        import libvirt
    except ImportError:
        return False
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        libvirt.open('qemu:///system').close()
    except libvirt.libvirtError:
        return False
    return os.geteuid() == 0


def system(available, reason):
    """A test of real host services: marked slow (deselect with -m 'not slow'), skipped without them."""
    def mark(func):
        return pytest.mark.slow(pytest.mark.skipif(not available(), reason=reason)(func))
    return mark


needs_ovs = system(ovs_running, 'needs root and a running Open vSwitch')
needs_libvirtd = system(libvirtd_running, 'needs root and libvirtd (qemu:///system)')


def slot_xml(slot, hostdevs=(), domain_type='qemu'):
    return build_xml(DomainSpec(slot_id=slot, memory_mib=256, cpulist='0', domain_type=domain_type,
                                hostdevs=list(hostdevs), bridge='br-gpuaas', bridge_type='linux'))


class NodeDirs:
    """A node's state directories, for NodeState read in-process."""

    def __init__(self, base, sys_root=None, node_id=NODE):
        self.node = Node(base, node_id, sys_root)
        self.sys_root = sys_root
        self.domains = []
        self.libvirt_error = None
        self.tools = {'ovs-vsctl': '/usr/bin/ovs-vsctl', 'ovs-ofctl': '/usr/bin/ovs-ofctl'}

    def vfio_record(self, address, functions, drivers=None):
        with open(os.path.join(self.node.dirs['vfio'], address + '.json'), 'w') as handle:
            json.dump({'version': 1, 'address': address,
                       'functions': dict((f, {'driver': (drivers or {}).get(f, 'nvidia')}) for f in functions)},
                      handle)

    def listed(self):
        if self.libvirt_error:
            raise RuntimeError(self.libvirt_error)
        return self.domains

    def run_command(self, args):
        return 0, '', ''

    def report(self, bridge='br-gpuaas'):
        d = self.node.dirs
        return NodeState(self.run_command, self.node.node_id, d['leases'], d['dhcp-hosts.d'], d['tokens'], d['disks'],
                         d['seeds'], d['vfio'], bridge, self.listed, sysfs_root=self.sys_root,
                         bin_path=self.tools.get).report()


# -- apache/cloudstack#11574, #12910 ----------------------------------------------------------------


def test_cloudstack_11574_reconcile_never_frees_a_gpu_a_running_domain_holds(kernel, tmp_path, capsys):
    host = kernel('gpu_box', functions=2)
    bound = run_module(vfio_bind, dict(host.args, address=GPU, dev_root=host.dev, state_dir=host.state),
                       capsys=capsys)
    assert bound['functions'] == [GPU, AUDIO]
    # The failure: the GPU is on vfio-pci for a running VM, but nothing on the books lists it
    # (the lease is gone), so a reconcile that only compares bindings with leases frees it.
    node = NodeDirs(tmp_path / 'node', host.sys)
    shutil.copy(os.path.join(host.state, GPU + '.json'), node.node.dirs['vfio'])
    assert os.listdir(node.node.dirs['leases']) == []
    node.domains.append(('gpuaas-%s-s3' % NODE, 1, slot_xml('%s-s3' % NODE, [('gpu', GPU), ('companion', AUDIO)])))
    group = host.model.link_name('bus/pci/devices/%s/iommu_group' % GPU)
    host.model.open_vfio_group(group)          # its QEMU holds /dev/vfio/<group>

    state = node.report()
    assert state['devices_to_return'] == [] and state['devices_kept_for_domains'] == [GPU]
    lines = report_lines(state)
    assert 'node: device %s is on vfio-pci with no lease, but a domain holds it: kept' % GPU in '\n'.join(lines)
    # Whoever asks vfio_bind to give it back anyway (by hand, an older reconcile) is refused
    # while a process holds the group, and the GPU stays where the VM has it.
    refused = run_module(vfio_bind, dict(host.args, address=GPU, state='absent', dev_root=host.dev,
                                         state_dir=host.state), capsys=capsys)
    assert refused['failed'] and 'in use' in refused['msg'] and 'qemu-system-x86' in refused['msg']
    assert host.driver(GPU) == 'vfio-pci' and host.driver(AUDIO) == 'vfio-pci'


def _orphan_files(node, slot):
    paths = [os.path.join(node.dirs['disks'], '%s.raw' % slot),
             os.path.join(node.dirs['seeds'], '%s-seed.iso' % slot),
             os.path.join(node.dirs['tokens'], '%s.json' % slot)]
    for path in paths:
        with open(path, 'w') as handle:
            handle.write('{}')
    return paths


@pytest.mark.parametrize('blindness', ['sysfs unreadable', 'ovs-vsctl missing', 'libvirt down'])
def test_cloudstack_12910_a_discovery_that_cannot_see_changes_nothing_and_says_so(tmp_path, blindness):
    sys_root, _proc = device_hosts.build_gpu_box(str(tmp_path / 'host'))
    node = NodeDirs(tmp_path / 'node', sys_root)
    orphans = _orphan_files(node.node, '%s-s1' % NODE)        # a slot with no lease: removable
    node.vfio_record(GPU, [GPU, AUDIO])                       # a GPU no lease lists: returnable
    devices = os.path.join(sys_root, 'bus/pci/devices')
    if blindness == 'sysfs unreadable':
        shutil.rmtree(devices)               # sysfs not mounted there (a container, a chroot)
    elif blindness == 'ovs-vsctl missing':
        node.tools.pop('ovs-vsctl')
    else:
        node.libvirt_error = 'cannot connect to libvirt at qemu:///system: Failed to connect socket'
    state = node.report()
    assert state['blind'] and not state['clean']
    expected = {'sysfs unreadable': "cannot read the host's PCI devices: %s has no bus/pci/devices" % sys_root,
                'ovs-vsctl missing': 'ovs-vsctl is not installed (Open vSwitch',
                'libvirt down': 'cannot list libvirt domains'}[blindness]
    assert expected in state['blind'][0]
    lines = report_lines(state)
    assert lines[0].startswith('node: cannot see: ' + expected)
    assert 'Reconcile removed and repaired NOTHING' in lines[0]
    assert any(line.startswith('%s-s1: has no lease but holds' % NODE) and 'left alone' in line for line in lines)
    assert all(os.path.exists(path) for path in orphans)


def test_cloudstack_12910_reconcile_on_an_unreadable_sysfs_removes_nothing(tmp_path, capsys):
    """The same, through the reconcile playbook and the discovery an allocate runs first."""
    sys_root, proc_root = device_hosts.build_gpu_box(str(tmp_path / 'host'))
    devices = os.path.join(sys_root, 'bus/pci/devices')
    shutil.rmtree(devices)
    with open(devices, 'w') as handle:       # there, but not a directory that can be listed
        handle.write('')
    node = Node(tmp_path / 'node', NODE, sys_root, proc_root, bridge='')
    orphans = _orphan_files(node, '%s-s1' % NODE)
    with open(os.path.join(node.dirs['vfio'], GPU + '.json'), 'w') as handle:
        json.dump({'version': 1, 'address': GPU, 'functions': {GPU: {'driver': 'nvidia'}}}, handle)
    before = sorted(os.listdir(node.dirs['vfio']))
    rc, out, stats = node.run('reconcile.yml')
    assert rc != 0 and 'removes nothing: it cannot see the whole node' in out, out[-3000:]
    report = stats['localhost']['gpuaas_reconcile']['report']
    assert report[0].startswith("node: cannot see: cannot read the host's PCI devices: %s has no "
                                "bus/pci/devices directory" % sys_root), report
    assert all(os.path.exists(path) for path in orphans)
    assert sorted(os.listdir(node.dirs['vfio'])) == before
    # Discovery on the same tree says what it cannot read instead of proposing an empty host.
    found = run_module(slot_discovery_info, {'node_id': NODE, 'sysfs_root': sys_root, 'proc_root': proc_root},
                       capsys=capsys)
    assert found['failed'] and '%s has no bus/pci/devices directory' % sys_root in found['msg']


# -- apache/cloudstack#12960 ------------------------------------------------------------------------


def test_cloudstack_12960_a_pci_segment_0001_slot_works_end_to_end(kernel, tmp_path, capsys):
    host = kernel('segment1')
    found = Discovery('seg', host.sys, host.proc, require_fabric=False).run()
    (slot,) = found['slots']
    gpu, nvme = slot['gpu_address'], slot['nvme_address']
    assert (gpu, nvme) == ('0001:01:00.0', '0001:02:00.0') and slot['eligible'], slot['reasons']
    approved = run_module(slot_approval, {'discovery': found, 'approved_slots': [{
        'slot_id': 'seg-s0', 'gpu_address': gpu, 'destructive_wipe_policy': 'zero',
        'capacity_metadata': slot['capacity_metadata'], 'fingerprint': slot['fingerprint']}]}, capsys=capsys)
    assert [s['gpu_address'] for s in approved['slots']] == [gpu]
    bound = run_module(vfio_bind, dict(host.args, address=nvme, dev_root=host.dev, state_dir=host.state),
                       capsys=capsys)
    assert bound['changed'] and host.driver(nvme) == 'vfio-pci'
    assert _slot_vm.hostdev_problems(host.model, [gpu, nvme]) == []
    xml = slot_xml('seg-s0', _domain.slot_hostdevs(gpu, [], nvme))
    # The failure: the segment was dropped (or mangled) in the hostdev's <address>.
    assert "<address domain=\"0x0001\" bus=\"0x01\" slot=\"0x00\" function=\"0x0\" />" in xml
    assert [h.split(' ')[0] for h in domain_facts(xml)['hostdevs']] == [gpu, nvme]
    node = NodeDirs(tmp_path / 'node', node_id='seg')
    data = dict(passthrough=True, devices=[gpu, nvme], gpu_address=gpu, companions=[], nvme_address=nvme)
    node.node.write_lease('seg-s0', 'alloc-seg', **data)
    node.domains.append(('gpuaas-seg-s0', 1, xml))
    state = node.report(bridge='')
    assert state['mismatches'] == [] and state['hostdev_drift'] == []
    # A domain holding the same bus/slot/function on segment 0000 is not the slot's device.
    wrong = xml.replace('domain="0x0001"', 'domain="0x0000"')
    node.domains[0] = ('gpuaas-seg-s0', 1, wrong)
    state = node.report(bridge='')
    assert state['hostdev_drift'][0]['missing'] == [gpu, nvme]
    restored, added = _domain.restore_hostdevs(wrong, _domain.slot_hostdevs(gpu, [], nvme))
    assert added == [gpu, nvme] and "domain=\"0x0001\"" in restored


# -- kubevirt/kubevirt#6718 -------------------------------------------------------------------------


def test_kubevirt_6718_a_gpu_audio_function_left_on_its_host_driver_is_caught_before_start(kernel, capsys):
    host = kernel('gpu_box', functions=2)
    # The failure: the GPU alone is moved to vfio-pci; its HDMI audio stays on snd_hda_intel.
    model = host.model
    model.write('bus/pci/devices/%s/driver_override' % GPU, 'vfio-pci')
    model.write('bus/pci/drivers/nvidia/unbind', GPU)
    model.write('bus/pci/drivers/vfio-pci/bind', GPU)
    assert host.driver(GPU) == 'vfio-pci' and host.driver(AUDIO) == 'snd_hda_intel'
    problems = _slot_vm.hostdev_problems(model, [GPU])
    assert len(problems) == 1 and 'shares IOMMU group' in problems[0] and AUDIO in problems[0]
    assert 'snd_hda_intel' in problems[0]
    problems = _slot_vm.hostdev_problems(model, [GPU, AUDIO])
    assert problems == ['%s (audio device, class 0x040300, driver snd_hda_intel) is bound to snd_hda_intel, '
                        'not vfio-pci: bind the slot (gpuaas.slice.vfio_bind) before starting its VM' % AUDIO]
    # vfio_bind moves every function of the group, and the check before start passes.
    bound = run_module(vfio_bind, dict(host.args, address=GPU, dev_root=host.dev, state_dir=host.state),
                       capsys=capsys)
    assert bound['functions'] == [GPU, AUDIO] and host.driver(AUDIO) == 'vfio-pci'
    assert _slot_vm.hostdev_problems(model, [GPU, AUDIO]) == []


# -- NVIDIA/open-gpu-kernel-modules#853, gnif/vendor-reset#38 ---------------------------------------


def _passthrough_lease(node, slot, allocation, policy='zero'):
    node.write_lease(slot, allocation, passthrough=True, devices=[GPU, NVME], gpu_address=GPU,
                     companions=[AUDIO], nvme_address=NVME, fabric_vf_pci_address=None,
                     destructive_wipe_policy=policy, tenant='t1')


def _namespace(node):
    """The slot NVMe's namespace (gpu_box: nvme2 -> nvme2n1), holding the last tenant's data."""
    path = os.path.join(node.dirs['dev'], 'nvme2n1')
    with open(path, 'wb') as handle:
        handle.write(b'TENANT-1 SECRET ' * 65536)
    return path


def test_nvidia_853_a_gpu_reset_that_fails_in_the_kernel_asks_for_quarantine(kernel, capsys):
    host = kernel('gpu_box', model={'reset_faults': {GPU: errno.EIO}})
    result = run_module(pci_reset, dict(host.args, address=GPU), capsys=capsys)
    assert result['failed'] and result['needs_manual_care'] is True
    assert 'resetting %s with flr failed' % GPU in result['msg'] and 'quarantine the slot' in result['msg']
    assert host.model.resets == []


@needs_ovs
def test_nvidia_853_a_gpu_that_fails_to_reset_is_quarantined_and_never_allocated(tmp_path, capsys):
    """system: the release playbook reads Open vSwitch (run under the lock)."""
    sys_root, proc_root = device_hosts.build_gpu_box(str(tmp_path / 'host'))
    reset_method = os.path.join(sys_root, 'bus/pci/devices', GPU, 'reset_method')
    with open(reset_method, 'w') as handle:    # the GPU offers no reset the host can do
        handle.write('\n')
    node = Node(tmp_path / 'node', NODE, sys_root, proc_root)
    slot = '%s-s0' % NODE
    _passthrough_lease(node, slot, 'alloc-1')
    data = _namespace(node)
    rc, out, _stats = node.run('release.yml', gpuaas_slot_id=slot, gpuaas_allocation_id='alloc-1',
                               gpuaas_wipe_allowed_file_dirs=[node.dirs['dev']])
    assert rc != 0 and 'after every use. The slot is quarantined until an operator clears it' in out, out[-3000:]
    lease = node.lease(slot)
    assert lease['phase'] == 'quarantined' and lease['allocation_id'] == 'alloc-1'
    assert "failed at 'Reset the GPU'" in lease['reason'] and '%s' % GPU in lease['reason']
    assert 'offers no reset method' in lease['reason']
    assert open(data, 'rb').read(16) == b'TENANT-1 SECRET '       # never wiped, never handed on
    # Never allocated: the next allocation's lease request (allocate's first step) is refused.
    taken = run_module(slot_lease, {'slot_id': slot, 'allocation_id': 'alloc-2', 'lease_dir': node.dirs['leases']},
                       capsys=capsys)
    assert taken['failed'] and 'held by allocation alloc-1' in taken['msg']
    # A release again does not clear it either; it says why.
    rc, out, _stats = node.run('release.yml', gpuaas_slot_id=slot, gpuaas_allocation_id='alloc-1')
    assert rc != 0 and 'is quarantined' in out and node.lease(slot)['phase'] == 'quarantined'
    # The reconcile report tells the operator what failed and what to do.
    rc, out, stats = node.run('reconcile.yml', gpuaas_bridge='')
    assert rc == 0, out[-3000:]
    (line,) = [l for l in stats['localhost']['gpuaas_reconcile']['report'] if l.startswith(slot)]
    assert 'is quarantined since' in line and 'offers no reset method' in line
    assert 'gpuaas_clear_quarantine=true' in line
    # Once the operator has dealt with the GPU (here: it can be reset again), clearing works.
    with open(reset_method, 'w') as handle:
        handle.write('flr\n')
    rc, out, _stats = node.run('release.yml', gpuaas_slot_id=slot, gpuaas_allocation_id='alloc-1',
                               gpuaas_clear_quarantine=True, gpuaas_wipe_allowed_file_dirs=[node.dirs['dev']])
    assert rc == 0, out[-3000:]
    assert node.lease(slot) is None and open(data, 'rb').read() == bytes(os.path.getsize(data))


# -- bigstack-oss/cubecos#1528 ----------------------------------------------------------------------


class FakeDomain:
    def __init__(self, conn, xml, active):
        self.conn, self.xml, self.active = conn, xml, active

    def UUIDString(self):
        return '6f1c3e4a-0000-4000-8000-000000000001'

    def name(self):
        return domain_facts(self.xml)['name']


class FakeConnection:
    """libvirt as the engine sees it: one domain; defineXML replaces its persistent definition."""
    calls = []

    def __init__(self, domain):
        self.domain = domain

    def __call__(self, _uri):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def lookup(self, name):
        return self.domain if self.domain and self.domain.name() == name else None

    def inactive_xml(self, domain):
        return domain.xml

    def is_active(self, domain):
        return domain.active

    def define(self, xml):
        self.calls.append('define')
        self.domain.xml = xml
        return self.domain

    def call(self, what, func, *args):
        self.calls.append(what.split(' ')[0])
        return func(*args)


class StubModule:
    def __init__(self, check_mode=False, **params):
        spec = slot_vm.argument_spec()
        self.params = dict((key, value.get('default')) for key, value in spec.items())
        self.params.update(params)
        self.check_mode = check_mode
        self._diff = True


def test_cubecos_1528_a_running_domain_without_its_hostdevs_gets_them_at_its_next_start_never_now():
    slot = '%s-s0' % NODE
    hostdevs = _domain.slot_hostdevs(GPU, [AUDIO], NVME)
    # The failure: after the reboot the domain came back, running, defined without its hostdevs.
    domain = FakeDomain(None, slot_xml(slot, []), active=True)
    conn = FakeConnection(domain)
    conn.calls = []
    module = StubModule(slot_id=slot, state='repaired', gpu_address=GPU, companions=[AUDIO], nvme_address=NVME)
    engine = _slot_vm.SlotVm(module, connection=conn)
    result = engine.run()
    assert result['changed'] and result['restored'] == [GPU, AUDIO, NVME]
    assert [h.split(' ')[0] for h in domain_facts(domain.xml)['hostdevs']] == [a for _r, a in hostdevs]
    assert conn.calls == ['define', 'reading']          # no destroy, no start, no shutdown
    assert result['domain_state'] == 'running' and domain.active
    assert engine.warnings == ['gpuaas-%s runs without %s, %s, %s: its definition has them again, the running '
                               'guest gets them at its next start' % (slot, GPU, AUDIO, NVME)]
    again = _slot_vm.SlotVm(module, connection=conn).run()
    assert not again['changed'] and again['restored'] == []


@needs_libvirtd
def test_cubecos_1528_a_domain_that_came_back_without_its_hostdevs_is_repaired_by_reconcile(tmp_path):
    """system: real libvirtd (qemu:///system); run under the lock."""
    import libvirt
    sys_root, proc_root = device_hosts.build_gpu_box(str(tmp_path / 'host'))
    node = Node(tmp_path / 'node', NODE, sys_root, proc_root, uri='qemu:///system', bridge='')
    slot, lost, held = '%s-s0' % NODE, '%s-s1' % NODE, '%s-s2' % NODE
    _passthrough_lease(node, slot, 'alloc-0')
    node.write_lease(lost, 'alloc-1', passthrough=True, devices=['0000:1d:00.0'], gpu_address='0000:1d:00.0',
                     companions=[], nvme_address=None, fabric_vf_pci_address=None)
    node.write_lease(held, 'alloc-2', passthrough=True, devices=['0000:1e:00.0'], gpu_address='0000:1e:00.0',
                     companions=[], nvme_address=None, fabric_vf_pci_address=None)
    conn = libvirt.open('qemu:///system')
    names = ['gpuaas-' + slot, 'gpuaas-' + held, 'gpuaas-%s-s3' % NODE]
    try:
        for name in names:
            existing = [d for d in conn.listAllDomains() if d.name() == name]
            assert not existing, 'domain %s exists already on this machine' % name
        # The failure: after the reboot, s0's and s2's domains are defined without their
        # <hostdev>s; s2's GPU is meanwhile in another domain (s3's), so it must not be added.
        conn.defineXML(slot_xml(slot, []))
        conn.defineXML(slot_xml(held, []))
        node.write_lease('%s-s3' % NODE, 'alloc-3', passthrough=False, devices=[])
        conn.defineXML(slot_xml('%s-s3' % NODE, [('gpu', '0000:1e:00.0')]))
        rc, out, stats = node.run('reconcile.yml')
        # The play fails: s0 must still be started, s1 has no domain, s2 could not be repaired (and
        # s3, which holds its GPU, is not running).
        assert rc != 0 and '%s, %s, %s, %s-s3 do not match' % (slot, lost, held, NODE) in out, out[-4000:]
        xml = conn.lookupByName('gpuaas-' + slot).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert [h.split(' ')[0] for h in domain_facts(xml)['hostdevs']] == [GPU, AUDIO, NVME]
        assert conn.lookupByName('gpuaas-' + slot).isActive() == 0       # never started by reconcile
        held_xml = conn.lookupByName('gpuaas-' + held).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert domain_facts(held_xml)['hostdevs'] == []                  # s3 holds it: not added
        result = stats['localhost']['gpuaas_reconcile']
        assert result['hostdevs_restored'] == {slot: [GPU, AUDIO, NVME]}
        report = '\n'.join(result['report'])
        assert ('%s: domain gpuaas-%s (shut off) lacks the hostdevs %s, %s, %s of allocation alloc-0: '
                'redefined with them; operator: run allocate again with allocation alloc-0'
                % (slot, slot, GPU, AUDIO, NVME)) in report
        assert '%s: the lease says running but there is no domain gpuaas-%s' % (lost, lost) in report
        assert ('%s: domain gpuaas-%s (shut off) lacks the hostdevs 0000:1e:00.0 of allocation alloc-2: not '
                'repaired, another domain holds 0000:1e:00.0 (gpuaas-%s-s3)' % (held, held, NODE)) in report
        rc, out, stats = node.run('reconcile.yml')
        assert stats['localhost']['gpuaas_reconcile']['hostdevs_restored'] == {}
        assert conn.lookupByName('gpuaas-' + slot).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == xml
    finally:
        for name in names:
            for domain in conn.listAllDomains():
                if domain.name() == name:
                    if domain.isActive():
                        domain.destroy()
                    domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        conn.close()


# -- kubevirt/enhancements#344 ----------------------------------------------------------------------


def test_kubevirt_enhancements_344_a_restarted_vm_keeps_its_devices():
    slot = '%s-s0' % NODE
    params = dict(slot_id=slot, memory_mib=256, cpulist='0', domain_type='qemu', numatune=False,
                  gpu_address=GPU, companions=[AUDIO], nvme_address=NVME, bridge='br-gpuaas',
                  bridge_type='linux', console_log_dir='/nonexistent-console')
    engine = _slot_vm.SlotVm(StubModule(state='stopped', **params))
    have = build_xml(engine.spec(), uuid='6f1c3e4a-0000-4000-8000-000000000001')
    for state, active, expected in (('stopped', True, ['shutdown']), ('running', False, ['start'])):
        engine = _slot_vm.SlotVm(StubModule(state=state, **params))
        want = build_xml(engine.spec(), uuid='6f1c3e4a-0000-4000-8000-000000000001')
        plan, _diff = engine.plan(have, active, want)
        assert [a for a in plan.actions() if a not in ('create console log directory', 'create NVRAM directory')] \
            == expected
    # The failure: at start the slot's VM is given whatever GPU is free. Here a start with
    # another GPU for the same slot is refused: its devices are its identity.
    moved = dict(params)
    moved.update(gpu_address='0000:1d:00.0', companions=[])
    engine = _slot_vm.SlotVm(StubModule(state='running', **moved))
    with pytest.raises(_slot_vm.SlotVmError, match='(?s)exists with a different definition.*hostdevs.*0000:1d:00.0'):
        engine.plan(have, False, build_xml(engine.spec()))


# -- Proxmox resource mappings ----------------------------------------------------------------------


def test_proxmox_mappings_a_slot_whose_hardware_changed_is_not_allocatable_until_reapproved(tmp_path, capsys):
    sys_root, proc_root = hosts.HOSTS['workstation'](str(tmp_path / 'ws'))
    found = Discovery('ws', sys_root, proc_root).run()
    slot = found['slots'][0]
    entry = {'slot_id': 'ws-s0', 'gpu_address': slot['gpu_address'], 'destructive_wipe_policy': 'nvme-format',
             'capacity_metadata': slot['capacity_metadata'], 'fingerprint': slot['fingerprint']}
    entry.update((key, slot[key]) for key in ('cpulist', 'vcpus', 'memory_mib', 'host_cpulist'))
    assert run_module(slot_approval, {'discovery': found, 'approved_slots': [entry]}, capsys=capsys)['slots']
    # The failure: another board (another subsystem id) now sits at the approved address.
    with open(os.path.join(sys_root, 'bus/pci/devices', slot['gpu_address'], 'subsystem_device'), 'w') as handle:
        handle.write('0x1f00\n')
    changed = Discovery('ws', sys_root, proc_root).run()
    # Approval holds that slot back (absent, with the change); it would approve the host's other slots.
    held = run_module(slot_approval, {'discovery': changed, 'approved_slots': [entry]}, capsys=capsys)
    assert 'failed' not in held and held['slots'] == [] and [a['slot_id'] for a in held['absent']] == ['ws-s0']
    assert 'no longer match the fingerprint taken at approval' in held['absent'][0]['reason']
    assert 'gpu %s: subsystem_device_id %s -> 1f00' % (slot['gpu_address'], slot['fingerprint']['gpu'][
        'subsystem_device_id']) in held['absent'][0]['reason']
    # allocate checks the approval against the host first: it stops before taking a lease.
    node = Node(tmp_path / 'node', 'ws', sys_root, proc_root)
    allocation = {'id': 'alloc-1', 'tenant': 't1', 'image': '/nonexistent.qcow2', 'image_checksum': 'sha256:' + '0' * 64,
                  'ssh_keys': ['ssh-ed25519 AAAA t1'], 'vcpus': 1, 'memory_mib': 256}
    rc, out, _stats = node.run('allocate.yml', gpuaas_slot_id='ws-s0', gpuaas_allocation=allocation,
                               gpuaas_approved_slots=[entry], gpuaas_passthrough=True)
    assert rc != 0 and 'subsystem_device_id' in out and 're-approve' in out, out[-3000:]
    assert os.listdir(node.dirs['leases']) == []
    # Re-approved with the new fingerprint, it is allocatable again.
    entry['fingerprint'] = changed['slots'][0]['fingerprint']
    assert run_module(slot_approval, {'discovery': changed, 'approved_slots': [entry]}, capsys=capsys)['slots']


# -- Mellanox/network-operator#1825 -----------------------------------------------------------------


def test_mellanox_network_operator_1825_ib_vfs_never_keep_a_zero_guid(kernel, capsys):
    host = kernel('gpu_box')
    # The failure: VFs created and left as the driver makes them, with zero GUIDs.
    host.model.write('bus/pci/devices/%s/sriov_numvfs' % IB_PF, '2')
    rc, out, _err = host.tools.run_command(['/usr/sbin/ip', '-j', 'link', 'show', 'dev', 'ibp94s0'])
    assert rc == 0 and [vf['node guid'] for vf in json.loads(out)[0]['vfinfo_list']] == [ZERO_GUID] * 2
    args = dict(host.args, address=IB_PF, num_vfs=2, node_id=NODE)
    done = run_module(sriov_vfs, args, capsys=capsys)
    assert done['changed'] and done['kind'] == 'infiniband'
    for index, vf in enumerate(done['vfs']):
        assert (vf['node_guid'], vf['port_guid']) == vf_guids(NODE, IB_PF, index)
        assert ZERO_GUID not in (vf['node_guid'], vf['port_guid'])
    assert vf_guids(NODE, IB_PF, 0) != vf_guids(NODE, IB_PF, 1) != vf_guids('other', IB_PF, 1)
    # Read back from the kernel, so a second run finds nothing to set.
    assert not run_module(sriov_vfs, args, capsys=capsys)['changed']
    # The driver resets the VFs (a count change): the next run sets the same GUIDs again.
    host.model.write('bus/pci/devices/%s/sriov_numvfs' % IB_PF, '0')
    again = run_module(sriov_vfs, args, capsys=capsys)
    assert [(vf['node_guid'], vf['port_guid']) for vf in again['vfs']] == [vf_guids(NODE, IB_PF, i) for i in (0, 1)]


# -- ROCm/k8s-device-plugin#202 ---------------------------------------------------------------------


@needs_ovs
@pytest.mark.parametrize('wipe', ['the format erased nothing', 'verified'])
def test_rocm_202_a_dirty_nvme_never_reaches_the_next_tenant(tmp_path, wipe):
    """system: the release playbook reads Open vSwitch (run under the lock)."""
    sys_root, proc_root = device_hosts.build_gpu_box(str(tmp_path / 'host'))
    node = Node(tmp_path / 'node', NODE, sys_root, proc_root)
    slot = '%s-s0' % NODE
    data = _namespace(node)
    if wipe == 'the format erased nothing':
        # The failure: the drive acknowledges the format and keeps the data.
        _passthrough_lease(node, slot, 'alloc-1', policy='nvme-format')
        tools = os.path.join(node.base, 'bin')
        fake_tool(tools, 'nvme', "print('Success formatting namespace:1')")
        node.path.insert(0, tools)
    else:
        _passthrough_lease(node, slot, 'alloc-1', policy='zero')
    rc, out, stats = node.run('release.yml', gpuaas_slot_id=slot, gpuaas_allocation_id='alloc-1',
                              gpuaas_wipe_allowed_file_dirs=[node.dirs['dev']])
    if wipe == 'the format erased nothing':
        assert rc != 0, out[-3000:]
        lease = node.lease(slot)
        assert lease['phase'] == 'quarantined'
        assert "failed at 'Wipe the slot's NVMe by its policy'" in lease['reason']
        assert 'sampled blocks still hold the data' in lease['reason']
        assert open(data, 'rb').read(16) == b'TENANT-1 SECRET '
    else:
        assert rc == 0, out[-3000:]
        assert node.lease(slot) is None
        assert open(data, 'rb').read() == bytes(os.path.getsize(data))
        assert stats['RUN']['gpuaas_result']['state'] == 'released', stats


# -- nova-specs pci-device-tracking-in-placement ----------------------------------------------------


def test_nova_placement_a_second_allocation_cannot_take_a_leased_slot(tmp_path, capsys):
    sys_root, proc_root = device_hosts.build_gpu_box(str(tmp_path / 'host'))
    found = Discovery(NODE, sys_root, proc_root).run()
    slot = found['slots'][0]
    node = Node(tmp_path / 'node', NODE, sys_root, proc_root)
    node.write_lease(slot['slot_id'], 'alloc-1', phase='running', devices=[slot['gpu_address']])
    before = open(node.lease_file(slot['slot_id']), 'rb').read()
    approved = [{'slot_id': slot['slot_id'], 'gpu_address': slot['gpu_address'],
                 'destructive_wipe_policy': 'zero', 'capacity_metadata': slot['capacity_metadata'],
                 'fingerprint': slot['fingerprint'], 'cpulist': slot['cpulist'], 'vcpus': slot['vcpus'],
                 'memory_mib': slot['memory_mib'], 'host_cpulist': slot['host_cpulist']}]
    allocation = {'id': 'alloc-2', 'tenant': 't2', 'image': '/nonexistent.qcow2', 'image_checksum': 'sha256:' + '0' * 64,
                  'ssh_keys': ['ssh-ed25519 AAAA t2'], 'vcpus': 1, 'memory_mib': 256}
    # The failure: a second plan for the slot (a scheduler that raced, a retried job) goes ahead.
    rc, out, _stats = node.run('allocate.yml', gpuaas_slot_id=slot['slot_id'], gpuaas_allocation=allocation,
                               gpuaas_approved_slots=approved, gpuaas_passthrough=True)
    assert rc != 0 and 'held by allocation alloc-1' in out, out[-3000:]
    assert "TASK [gpuaas.slice.slot_allocate : Create the allocation's telemetry token]" not in out
    assert open(node.lease_file(slot['slot_id']), 'rb').read() == before
    assert os.listdir(node.dirs['tokens']) == [] and os.listdir(node.dirs['dhcp-hosts.d']) == []
