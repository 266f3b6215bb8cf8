# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The device layer on the engine: sysfs write steps, waits, who holds a device, host use of a NIC."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError
from tests.sysfs import kernel_fixture
from tests.sysfs.fake_tools import FakeTools
from tests.sysfs.kernel_fixture import StubModule

kernel = kernel_fixture.kernel  # the fixture


def test_a_device_plan_runs_in_order_and_reports_only_mutations(kernel):
    host = kernel('workstation')
    plan = devctl.DevicePlan(StubModule(host.tools), host.model, timeout=0.1)
    assert not plan
    plan.write('0000:01:00.0', 'set override', 'bus/pci/devices/0000:01:00.0/driver_override',
               'vfio-pci', readback='vfio-pci')
    plan.wait_for('0000:01:00.0', 'the override', lambda: host.override('0000:01:00.0') == 'vfio-pci',
                  lambda: 'no')
    assert plan
    assert plan.actions() == ["0000:01:00.0: set override: write 'vfio-pci' to %s"
                              % host.model.path('bus/pci/devices/0000:01:00.0/driver_override')]
    assert plan.execute() == plan.actions() + ['0000:01:00.0: wait for the override']


def test_a_failing_write_names_the_step_and_the_errno(kernel):
    host = kernel('workstation')
    plan = devctl.DevicePlan(StubModule(host.tools), host.model)
    plan.write('0000:01:00.0', 'first', 'bus/pci/devices/0000:01:00.0/driver_override', 'x')
    plan.write('0000:01:00.0', 'unbind from the wrong driver', 'bus/pci/drivers/ahci/unbind',
               '0000:01:00.0')
    with pytest.raises(devctl.DeviceError) as info:
        plan.execute()
    assert str(info.value).startswith('step 2 of 2 failed: 0000:01:00.0: unbind from the wrong '
                                      'driver: ')
    assert '(ENODEV)' in str(info.value)
    assert len(info.value.details['completed_steps']) == 1


def test_a_write_the_kernel_does_not_show_back_did_not_take_effect(kernel):
    """driver_override keeps the name up to the first newline: a readback catches the rest."""
    host = kernel('workstation')
    plan = devctl.DevicePlan(StubModule(host.tools), host.model)
    plan.write('0000:01:00.0', 'set override', 'bus/pci/devices/0000:01:00.0/driver_override',
               'vfio-pci\nnvidia', readback='vfio-pci\nnvidia')
    with pytest.raises(devctl.DeviceError) as info:
        plan.execute()
    assert str(info.value).startswith('step 1 of 1 did not take effect: 0000:01:00.0: set override')
    assert "reads 'vfio-pci'" in str(info.value)


def test_a_wait_that_never_comes_true_times_out_with_the_explanation(kernel):
    host = kernel('workstation')
    plan = devctl.DevicePlan(StubModule(host.tools), host.model, timeout=0.05)
    plan.wait_for(None, 'Godot', lambda: False, lambda: 'he is not coming')
    with pytest.raises(devctl.DeviceError) as info:
        plan.execute()
    assert 'wait for Godot: timed out after 0.05 s: he is not coming' in str(info.value)


def test_a_failing_command_says_its_status_and_output(kernel):
    host = kernel('workstation')
    plan = devctl.DevicePlan(StubModule(host.tools), host.model)
    plan.run(None, 'do it', ['/usr/sbin/ip', 'link', 'set', 'dev', 'nope', 'vf', '0'])
    with pytest.raises(devctl.DeviceError) as info:
        plan.execute()
    assert 'failed (exit 1): Cannot find device "nope"' in str(info.value)


@pytest.mark.parametrize('timeout', [float('nan'), float('inf'), -1, 0, 1e308, True, '5'])
def test_a_plan_refuses_a_timeout_that_is_not_a_finite_number_of_seconds(kernel, timeout):
    host = kernel('workstation')
    with pytest.raises(GpuaasError) as info:
        devctl.DevicePlan(StubModule(host.tools), host.model, timeout=timeout)
    assert str(info.value).startswith('timeout must be a finite number from 0.001 to 3600')


def test_open_files_reads_fd_links(tmp_path):
    proc = tmp_path / 'proc'
    for pid, comm, targets in (('100', 'qemu-kvm', ['/dev/vfio/7', '/dev/null']),
                               ('200', 'bash', ['/dev/pts/0']),
                               ('300', 'qemu-system-x86', ['/dev/vfio/devices/vfio0'])):
        (proc / pid / 'fd').mkdir(parents=True)
        (proc / pid / 'comm').write_text(comm + '\n')
        for fd, target in enumerate(targets):
            os.symlink(target, str(proc / pid / 'fd' / str(fd)))
    (proc / 'self').mkdir()
    (proc / '400').mkdir()                                # an fd dir we cannot read
    (proc / 'mounts').write_text('')
    found = devctl.open_files(str(proc), ['/dev/vfio/7', '/dev/vfio/devices/vfio0', '/dev/vfio/8'])
    assert found == {'/dev/vfio/7': [{'pid': 100, 'comm': 'qemu-kvm'}],
                     '/dev/vfio/devices/vfio0': [{'pid': 300, 'comm': 'qemu-system-x86'}]}
    assert devctl.describe_holders(found).startswith('/dev/vfio/7 is open by pid 100 (qemu-kvm)')
    assert devctl.open_files(str(proc), []) == {}


@pytest.mark.parametrize('name, make', [
    ('missing', lambda path: None),
    ('a file', lambda path: path.write_text('')),
    ('no procfs', lambda path: path.mkdir()),                       # an empty directory
    ('mounts a directory', lambda path: (path / 'mounts').mkdir(parents=True)),
])
def test_open_files_that_cannot_see_refuses(tmp_path, name, make):
    """Fail closed: a proc_root that cannot be read never means "nobody holds it"."""
    proc = tmp_path / 'proc'
    make(proc)
    with pytest.raises(devctl.DeviceError) as info:
        devctl.open_files(str(proc), ['/dev/vfio/7'])
    assert str(info.value).startswith('cannot read the processes under proc_root %r' % str(proc))
    assert 'it changes nothing' in str(info.value)


@pytest.mark.parametrize('link, expected', [
    ({'flags': ['UP'], 'addr_info': [{'local': '10.0.0.2', 'prefixlen': 24, 'scope': 'global'}]},
     'interface eth9 is up with address 10.0.0.2/24'),
    ({'flags': ['UP'], 'addr_info': [{'local': 'fe80::1', 'prefixlen': 64, 'scope': 'link'}]},
     None),
    ({'flags': ['BROADCAST'], 'addr_info': [{'local': '10.0.0.2', 'prefixlen': 24,
                                             'scope': 'global'}]}, None),
    ({'flags': ['UP'], 'master': 'bond0'}, 'interface eth9 is enslaved to bond0'),
    ({'flags': ['UP'], 'addr_info': [{'local': 'fd00::5', 'prefixlen': 64, 'scope': 'global'},
                                     {'local': '127.0.0.1', 'prefixlen': 8, 'scope': 'host'}]},
     'interface eth9 is up with address fd00::5/64'),
])
def test_netdev_usage_from_ip_json(link, expected):
    import json

    class Module:
        def get_bin_path(self, name):
            return '/usr/sbin/ip'

        def run_command(self, argv, **kwargs):
            assert argv == ['/usr/sbin/ip', '-j', 'addr', 'show', 'dev', 'eth9']
            assert kwargs['environ_update']['LANG'] == 'C'
            return 0, json.dumps([dict(link, ifname='eth9')]), ''

    assert devctl.NetdevUsage(Runner(Module())).usage('eth9') == expected


def test_netdev_usage_that_cannot_see_fails():
    class Module:
        def get_bin_path(self, name):
            return '/usr/sbin/ip'

        def run_command(self, argv, **kwargs):
            return 0, 'not json', ''
    with pytest.raises(devctl.DeviceError) as info:
        devctl.NetdevUsage(Runner(Module())).usage('eth9')
    assert 'not JSON' in str(info.value)


def test_block_devices_below_a_controller(kernel):
    host = kernel('hgx')
    bus = devctl.open_bus(host.model)
    assert devctl.block_devices(host.model, bus.get('0000:04:00.0')) == ['nvme8n1']
    assert devctl.block_devices(host.model, bus.get('0000:18:00.0')) == []


def test_check_address_names_the_option():
    with pytest.raises(devctl.DeviceError) as info:
        devctl.check_address('0000:1b:00', 'allow_group_members')
    assert str(info.value).startswith('allow_group_members: ')
    assert devctl.check_address('0000:1B:00.0') == '0000:1b:00.0'
    with pytest.raises(devctl.DeviceError):
        devctl.check_address(' 0000:1b:00.0 ')


def test_the_fake_tools_stand_in_for_the_module():
    tools = FakeTools()
    assert StubModule(tools).get_bin_path('ip') == '/usr/sbin/ip'


@pytest.mark.parametrize('rel', [
    'bus/pci/devices/0000:01:00.0/reset',
    'bus/pci/devices/0000:01:00.0/driver_override',
    'bus/pci/devices/0000:03:00.0/sriov_numvfs',
    'bus/pci/devices/0000:01:00.0/remove',
    'bus/pci/devices/0000:01:00.0/rescan',
    'bus/pci/rescan',
    'bus/pci/drivers/nvidia/unbind',
    'bus/pci/drivers/nvidia/bind',
    'bus/pci/drivers_probe',
])
def test_a_write_step_never_leaves_the_tree(kernel, rel):
    """A plan with a write through a symlink out of sysfs is refused when planned, and a step
    made before the link was planted is refused when applied: the outside file keeps its bytes."""
    host = kernel('workstation')
    plan = devctl.DevicePlan(StubModule(host.tools), host.model)
    made_early = devctl.SysfsWrite(host.model, 'early', rel, '1')
    victim = host.divert(rel)
    with pytest.raises(GpuaasError) as info:
        plan.write(None, 'late', rel, '1')
    assert str(info.value) == '%s resolves to %s, outside the sysfs tree %s: refusing to follow it' % (
        host.model.path(rel), victim, host.model.root)
    plan.add(made_early)
    with pytest.raises(devctl.DeviceError) as info:
        plan.execute()
    assert 'outside the sysfs tree' in str(info.value)
    with open(victim) as handle:
        assert handle.read() == '1\n'
    assert host.model.escaped == [] and host.model.writes == []
    with pytest.raises(GpuaasError):
        host.model.read(rel)                      # nor is it read
