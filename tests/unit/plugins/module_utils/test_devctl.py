# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The device-control engine: plans, waits, who holds a device, host use of a NIC."""

from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from tests.sysfs import kernel_fixture
from tests.sysfs.fake_tools import FakeTools
from tests.sysfs.kernel_fixture import StubModule

kernel = kernel_fixture.kernel  # the fixture


def test_a_plan_runs_in_order_and_reports_only_mutations(kernel):
    host = kernel('workstation')
    plan = devctl.Plan(host.model, StubModule(host.tools), timeout=0.1)
    assert not plan
    plan.write('0000:01:00.0', 'set override', 'bus/pci/devices/0000:01:00.0/driver_override',
               'vfio-pci')
    plan.wait('0000:01:00.0', 'the override', lambda: host.override('0000:01:00.0') == 'vfio-pci',
              lambda: 'no')
    assert plan
    assert plan.actions() == ["0000:01:00.0: set override: write 'vfio-pci' to %s"
                              % host.model.path('bus/pci/devices/0000:01:00.0/driver_override')]
    assert len(plan.run()) == 2


def test_a_failing_write_names_the_step_and_the_errno(kernel):
    host = kernel('workstation')
    plan = devctl.Plan(host.model, StubModule(host.tools))
    plan.write('0000:01:00.0', 'first', 'bus/pci/devices/0000:01:00.0/driver_override', 'x')
    plan.write('0000:01:00.0', 'unbind from the wrong driver', 'bus/pci/drivers/ahci/unbind',
               '0000:01:00.0')
    with pytest.raises(devctl.DeviceError) as info:
        plan.run()
    assert str(info.value).startswith('step 2 of 2 failed: 0000:01:00.0: unbind from the wrong '
                                      'driver: ')
    assert '(ENODEV)' in str(info.value)
    assert len(info.value.details['completed_steps']) == 1


def test_a_wait_that_never_comes_true_times_out_with_the_explanation(kernel):
    host = kernel('workstation')
    plan = devctl.Plan(host.model, StubModule(host.tools), timeout=0.05)
    plan.wait(None, 'Godot', lambda: False, lambda: 'he is not coming')
    with pytest.raises(devctl.DeviceError) as info:
        plan.run()
    assert 'wait for Godot: timed out after 0.05 s: he is not coming' in str(info.value)


def test_a_failing_command_says_its_status_and_output(kernel):
    host = kernel('workstation')
    plan = devctl.Plan(host.model, StubModule(host.tools))
    plan.command(None, 'do it', ['/usr/sbin/ip', 'link', 'set', 'dev', 'nope', 'vf', '0'])
    with pytest.raises(devctl.DeviceError) as info:
        plan.run()
    assert 'exited with status 1' in str(info.value) or 'Cannot find device' in str(info.value)


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
    found = devctl.open_files(str(proc), ['/dev/vfio/7', '/dev/vfio/devices/vfio0', '/dev/vfio/8'])
    assert found == {'/dev/vfio/7': [{'pid': 100, 'comm': 'qemu-kvm'}],
                     '/dev/vfio/devices/vfio0': [{'pid': 300, 'comm': 'qemu-system-x86'}]}
    assert devctl.describe_holders(found).startswith('/dev/vfio/7 is open by pid 100 (qemu-kvm)')
    assert devctl.open_files(str(tmp_path / 'nothing'), ['/dev/vfio/7']) == {}


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

    assert devctl.NetdevUsage(Module()).usage('eth9') == expected


def test_netdev_usage_that_cannot_see_fails():
    class Module:
        def get_bin_path(self, name):
            return '/usr/sbin/ip'

        def run_command(self, argv, **kwargs):
            return 0, 'not json', ''
    with pytest.raises(devctl.DeviceError) as info:
        devctl.NetdevUsage(Module()).usage('eth9')
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


def test_oserror_text_carries_the_errno_name():
    assert devctl._oserror(OSError(errno.EBUSY, 'Device or resource busy')) == \
        'Device or resource busy (EBUSY)'


def test_the_fake_tools_stand_in_for_the_module():
    tools = FakeTools()
    assert StubModule(tools).get_bin_path('ip') == '/usr/sbin/ip'
