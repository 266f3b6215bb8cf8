# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot VM engine's own logic: pre-start device checks on sample sysfs trees, the lease
file, and the plan from have to want (libvirt itself runs in tests/functional/vm)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _domain, _slot_vm
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import Sysfs
from ansible_collections.gpuaas.slice.plugins.modules import slot_vm, vfio_bind
from tests.sysfs import kernel_fixture
from tests.sysfs.builder import SysfsBuilder
from tests.unit.module_runner import run_module

kernel = kernel_fixture.kernel  # the fixture


def problems(sys_root, addresses):
    return _slot_vm.hostdev_problems(Sysfs(sys_root), addresses)


def test_gpu_audio_function_left_behind_is_caught(host_tree):
    """kubevirt#6718: the GPU's audio function stays on snd_hda_intel, the group is not viable."""
    sys_root, _proc = host_tree('workstation')
    found = problems(sys_root, ['0000:01:00.0'])
    text = '\n'.join(found)
    assert 'is bound to nvidia, not vfio-pci' in text
    assert 'shares IOMMU group' in text and '0000:01:00.1 (audio device' in text
    assert 'add it to companions' in text


def _bind(sys_root, address, driver):
    link = os.path.join(sys_root, 'bus/pci/devices', address, 'driver')
    os.unlink(link)
    target = os.path.join(sys_root, 'bus/pci/drivers', driver)
    os.makedirs(target, exist_ok=True)
    os.symlink(os.path.relpath(target, os.path.dirname(os.path.realpath(link))),
               os.path.join(os.path.dirname(os.path.realpath(link)), 'driver'))


def test_group_moves_together_only_when_all_bound(host_tree):
    sys_root, _proc = host_tree('workstation')
    _bind(sys_root, '0000:01:00.0', 'vfio-pci')
    # GPU bound, audio listed as companion but still on the host driver.
    found = problems(sys_root, ['0000:01:00.0', '0000:01:00.1'])
    assert len(found) == 1 and '0000:01:00.1 (audio device' in found[0] and 'snd_hda_intel' in found[0]
    _bind(sys_root, '0000:01:00.1', 'vfio-pci')
    assert problems(sys_root, ['0000:01:00.0', '0000:01:00.1']) == []


def test_group_shared_with_host_storage(host_tree):
    """The 3090 behind the chipset shares its group with the SATA controller (the bridge is fine)."""
    sys_root, _proc = host_tree('workstation')
    found = problems(sys_root, ['0000:05:00.0'])
    assert any('0000:00:17.0 (SATA controller' in p for p in found)
    assert not any('0000:00:1c.4' in p for p in found)


def test_segment_0001(host_tree):
    sys_root, _proc = host_tree('segment1')
    assert problems(sys_root, ['0001:01:00.0']) == []
    assert 'bound to nvme' in problems(sys_root, ['0001:01:00.0', '0001:02:00.0'])[0]


def test_no_iommu_and_missing_devices(tmp_path, host_tree):
    SysfsBuilder(str(tmp_path / 'sys'), iommu=False)
    assert 'no IOMMU groups' in problems(str(tmp_path / 'sys'), ['0000:18:00.0'])[0]
    sys_root, _proc = host_tree('segment1')
    assert 'does not exist on this host' in problems(sys_root, ['0002:01:00.0'])[0]


def test_read_leases(tmp_path):
    path = tmp_path / 'leases'
    path.write_text('1764000000 52:54:AA:bb:cc:dd 10.100.0.10 train-01 01:52:54:aa:bb:cc:dd\n'
                    '0 52:54:00:00:00:01 10.100.0.11 * *\n'
                    'duid 00:01:00:01:2c:aa:bb:cc\n'
                    'garbage\n')
    leases = _slot_vm.read_leases(str(path))
    assert leases[0] == {'expiry': '1764000000', 'mac': '52:54:aa:bb:cc:dd', 'ip': '10.100.0.10',
                         'hostname': 'train-01', 'client_id': '01:52:54:aa:bb:cc:dd'}
    assert leases[1]['hostname'] is None and leases[1]['client_id'] is None
    assert len(leases) == 2
    assert _slot_vm.find_lease(str(path), '52:54:aa:BB:cc:dd')['ip'] == '10.100.0.10'
    assert _slot_vm.find_lease(str(path), '52:54:00:00:00:02') is None
    assert _slot_vm.read_leases(str(tmp_path / 'missing')) == []


class Module:
    """The two attributes of AnsibleModule the plan reads."""

    def __init__(self, tmp_path, **params):
        defaults = {spec_key: spec.get('default') for spec_key, spec in slot_vm.argument_spec().items()}
        defaults.update(slot_id='gpu-node-01-s3', memory_mib=1024, cpulist='0-1',
                        lease_file=str(tmp_path / 'leases'), console_log_dir=str(tmp_path), nvram_dir=str(tmp_path),
                        sysfs_root=str(tmp_path / 'sys'), allowed_dirs=[str(tmp_path)])
        defaults.update(params)
        self.params = defaults
        self.check_mode = False
        self._diff = False


def engine(tmp_path, **params):
    return _slot_vm.SlotVm(Module(tmp_path, **params))


def xml(**extra):
    base = dict(slot_id='gpu-node-01-s3', memory_mib=1024, cpulist='0-1')
    base.update(extra)
    return _domain.build_xml(_domain.DomainSpec(**base))


@pytest.mark.parametrize('state,have,active,expected', [
    ('running', False, False, ['define', 'start']),
    ('present', False, False, ['define']),
    ('stopped', False, False, ['define']),
    ('running', True, True, []),
    ('running', True, False, ['start']),
    ('present', True, True, []),
    ('stopped', True, True, ['shutdown']),
    ('stopped', True, False, []),
    ('absent', True, True, ['destroy', 'undefine']),
    ('absent', True, False, ['undefine']),
    ('absent', False, False, []),
])
def test_plan(tmp_path, state, have, active, expected):
    want = xml()
    plan, differences = engine(tmp_path, state=state).plan(want if have else '', active,
                                                           '' if state == 'absent' else want)
    assert plan.actions() == expected and differences == []


def test_plan_absent_releases_the_lease(tmp_path):
    mac = engine(tmp_path).mac
    (tmp_path / 'leases').write_text('1764000000 %s 10.100.0.13 h *\n' % mac)
    assert engine(tmp_path, state='absent').plan('', False, '')[0].actions() == ['release lease']
    assert engine(tmp_path, state='absent', release_lease=False).plan('', False, '')[0].actions() == []


def test_plan_refuses_a_different_domain_unless_replace(tmp_path):
    have = xml(memory_mib=2048)
    with pytest.raises(_slot_vm.SlotVmError) as caught:
        engine(tmp_path).plan(have, True, xml())
    assert 'replace=true' in str(caught.value) and 'memory_mib: 2048 -> 1024' in str(caught.value)
    plan, differences = engine(tmp_path, replace=True).plan(have, True, xml())
    assert plan.actions() == ['destroy', 'redefine', 'start'] and differences
    plan, _differences = engine(tmp_path, replace=True, state='present').plan(have, False, xml())
    assert plan.actions() == ['redefine']


def test_plan_notices_lost_hostdevs(tmp_path):
    """cubecos#1528: a domain that came back without its hostdevs is not 'the same domain'."""
    want = xml(hostdevs=_domain.slot_hostdevs('0001:01:00.0'))
    with pytest.raises(_slot_vm.SlotVmError, match='hostdevs: none -> '):
        engine(tmp_path).plan(xml(), False, want)


def test_plan_creates_the_console_log_directory(tmp_path):
    plan, _differences = engine(tmp_path, console_log_dir=str(tmp_path / 'console')).plan('', False, xml())
    assert plan.actions() == ['create console log directory', 'define', 'start']


def test_numa_node_must_exist(tmp_path, host_tree):
    sys_root, _proc = host_tree('segment1')
    with pytest.raises(_slot_vm.SlotVmError, match='no NUMA node 3'):
        engine(tmp_path, numa_node=3, sysfs_root=sys_root).spec()
    assert engine(tmp_path, numa_node=3, numatune=False, sysfs_root=sys_root).spec().numa_node is None
    assert engine(tmp_path, numa_node=0, sysfs_root=sys_root).spec().numa_node == 0


def test_start_problems(tmp_path, host_tree):
    sys_root, _proc = host_tree('segment1')
    vm = engine(tmp_path, sysfs_root=sys_root, disk=str(tmp_path / 'nope.raw'), seed=str(tmp_path / 'seed.iso'),
                gpu_address='0001:01:00.0', nvme_address='0001:02:00.0')
    found = vm.start_problems(vm.spec())
    text = '\n'.join(found)
    assert 'nope.raw does not exist (run gpuaas.slice.slot_image first)' in text
    assert 'seed.iso does not exist (run gpuaas.slice.slot_seed first)' in text
    assert 'bridge br-gpuaas does not exist' in text
    assert '0001:02:00.0 (NVMe controller' in text and 'bound to nvme' in text
    vm = engine(tmp_path, sysfs_root=sys_root, gpu_address='0001:01:00.0', nvme_address='0001:02:00.0',
                passthrough=False)
    assert vm.spec().hostdevs == [] and not any('vfio' in p for p in vm.start_problems(vm.spec()))


def test_console_tail(tmp_path):
    log = tmp_path / 'c.log'
    log.write_bytes(b'\r\n'.join(b'line %d' % n for n in range(100)))
    assert _slot_vm.console_tail(str(log), 3) == 'line 97\nline 98\nline 99'
    assert _slot_vm.console_tail(str(tmp_path / 'missing')) == ''


class NoDomainConnection:
    """A libvirt without the slot's domain that records every call the engine makes."""

    calls = []

    def __init__(self, uri):
        self.uri = uri

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def lookup(self, name):
        self.calls.append(('lookup', name))
        return None

    def define(self, xml):
        self.calls.append(('define', xml))
        raise AssertionError('the domain was defined although its devices cannot start')


def test_a_group_vfio_bind_moved_is_refused_whole_or_not_at_all(kernel, capsys, tmp_path):
    """vfio_bind moves the GPU's group (with its audio function) to vfio-pci on the kernel
    model; a slot naming the GPU alone is refused before libvirt defines anything."""
    host = kernel('workstation')
    bound = run_module(vfio_bind, dict(host.args, address='0000:01:00.0', dev_root=host.dev,
                                       state_dir=host.state), capsys=capsys)
    assert bound['bindings'] == {'0000:01:00.0': 'vfio-pci', '0000:01:00.1': 'vfio-pci'}
    NoDomainConnection.calls = []
    vm = _slot_vm.SlotVm(Module(tmp_path, sysfs_root=host.sys, numatune=False,
                                gpu_address='0000:01:00.0'), connection=NoDomainConnection)
    with pytest.raises(_slot_vm.SlotVmError) as refused:
        vm.run()
    group = host.model.link_name('bus/pci/devices/0000:01:00.0/iommu_group')
    assert 'shares IOMMU group %s with 0000:01:00.1 (audio device' % group in str(refused.value)
    assert 'bound to' not in str(refused.value)          # both are on vfio-pci: only the group
    assert NoDomainConnection.calls == [('lookup', 'gpuaas-gpu-node-01-s3')]
    whole = _slot_vm.SlotVm(Module(tmp_path, sysfs_root=host.sys, numatune=False,
                                   gpu_address='0000:01:00.0', companions=['0000:01:00.1']))
    assert _slot_vm.hostdev_problems(whole.sysfs, [a for _r, a in whole.spec().hostdevs]) == []
