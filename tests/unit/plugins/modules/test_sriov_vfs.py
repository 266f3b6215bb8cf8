# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sriov_vfs against the kernel model and a fake ip: counts, properties, exact argv lists."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import vf_guids, vf_mac
from ansible_collections.gpuaas.slice.plugins.modules import sriov_vfs, vfio_bind
from tests.sysfs import kernel_fixture
from tests.sysfs.snapshot import changes, snapshot
from tests.unit.module_runner import run_module

kernel = kernel_fixture.kernel  # the fixture

PF = '0000:03:00.0'            # workstation: Ethernet, 8 VFs, offset 2
NETDEV = 'enp3s0f0np0'
IB_PF = '0000:5e:00.0'         # gpu_box: InfiniBand, 16 VFs, IPoIB ibp94s0
IP = '/usr/sbin/ip'
SHOW = [IP, '-j', 'link', 'show', 'dev', NETDEV]


def run(host, capsys, address=PF, num_vfs=4, check_mode=False, diff=True, **extra):
    args = dict(host.args, address=address, num_vfs=num_vfs, node_id='ws-01')
    args.update(extra)
    return run_module(sriov_vfs, args, check_mode=check_mode, diff=diff, capsys=capsys)


def eth_set(index, node='ws-01', pf=PF, netdev=NETDEV, state='auto'):
    return [IP, 'link', 'set', 'dev', netdev, 'vf', str(index), 'mac', vf_mac(node, pf, index),
            'spoofchk', 'on', 'trust', 'off', 'state', state]


@pytest.fixture
def ws(kernel):
    return kernel('workstation')


def test_check_mode_then_create_then_nothing_to_do(ws, capsys):
    before = ws.snapshot()
    checked = run(ws, capsys, check_mode=True)
    assert checked['changed'] is True
    assert checked['vf_addresses'] == ['0000:03:00.2', '0000:03:00.3', '0000:03:00.4',
                                       '0000:03:00.5']
    assert checked['commands'] == [eth_set(i) for i in range(4)]
    assert ws.tools.mutations() == []
    ws.assert_unchanged(before)

    created = run(ws, capsys)
    assert created['changed'] is True
    assert created['vf_addresses'] == checked['vf_addresses']
    assert ws.model.writes == [('bus/pci/devices/%s/sriov_numvfs' % PF, '4')]
    assert ws.tools.mutations() == [eth_set(i) for i in range(4)]
    for index, vf in enumerate(created['vfs']):
        assert vf['mac'] == vf_mac('ws-01', PF, index)
        assert (vf['spoofchk'], vf['trust'], vf['link_state']) == (True, False, 'auto')
        assert vf['driver'] == 'mlx5_core'
        assert ws.model.link_name('bus/pci/devices/%s/virtfn%d' % (PF, index)) == vf['address']
    # The diff is the plan's: the count, and each VF's properties (new VFs start with none).
    assert created['diff']['before'] == dict({'num_vfs': 0}, **{'vf %d' % i: {} for i in range(4)})
    assert created['diff']['after']['num_vfs'] == 4
    assert created['diff']['after']['vf 3']['mac'] == vf_mac('ws-01', PF, 3)

    ws.tools.calls[:] = []
    again = run(ws, capsys)
    assert again['changed'] is False and again['actions'] == []
    assert ws.tools.calls == [SHOW]                  # one read, and nothing else
    assert again['diff']['before'] == again['diff']['after']


def test_a_changed_count_goes_through_zero(ws, capsys):
    run(ws, capsys, num_vfs=4)
    ws.model.writes[:] = []
    ws.tools.calls[:] = []
    changed = run(ws, capsys, num_vfs=2)
    assert changed['changed'] is True
    numvfs = 'bus/pci/devices/%s/sriov_numvfs' % PF
    assert ws.model.writes == [(numvfs, '0'), (numvfs, '2')]
    assert ws.tools.mutations() == [eth_set(0), eth_set(1)]
    assert changed['vf_addresses'] == ['0000:03:00.2', '0000:03:00.3']


def test_a_property_someone_changed_is_put_back_alone(ws, capsys):
    run(ws, capsys)
    props = ws.tools._props(PF, 2)
    props['trust'] = True                          # a tenant must never get this
    ws.tools.calls[:] = []
    fixed = run(ws, capsys)
    assert fixed['changed'] is True
    assert ws.tools.mutations() == [eth_set(2)]
    assert ws.model.writes[-1] == ('bus/pci/devices/%s/sriov_numvfs' % PF, '4')  # from before


def test_zero_removes_every_vf(ws, capsys):
    before = ws.snapshot()
    run(ws, capsys, num_vfs=3)
    removed = run(ws, capsys, num_vfs=0)
    assert removed['changed'] is True and removed['vfs'] == []
    ws.assert_unchanged(before)


def test_link_state_and_autoprobe(ws, capsys):
    created = run(ws, capsys, num_vfs=2, link_state='disable', drivers_autoprobe=False)
    assert ws.model.writes[0] == ('bus/pci/devices/%s/sriov_drivers_autoprobe' % PF, '0')
    assert ws.tools.mutations() == [eth_set(0, state='disable'), eth_set(1, state='disable')]
    assert [vf['driver'] for vf in created['vfs']] == [None, None]


def test_more_than_the_total_is_refused(ws, capsys):
    before = ws.snapshot()
    result = run(ws, capsys, num_vfs=9)
    assert result['failed'] is True
    assert 'num_vfs 9 is more than 0000:03:00.0 offers: sriov_totalvfs is 8' in result['msg']
    assert result['total_vfs'] == 8
    ws.assert_unchanged(before)


def test_a_negative_count_is_refused(ws, capsys):
    result = run(ws, capsys, num_vfs=-1)
    assert result['failed'] and 'num_vfs must be a whole number from 0 to 65535, not -1' in result['msg']


@pytest.mark.parametrize('address, message', [
    ('0000:03:00.0 ; reboot', 'not a full PCI address'),
    ('../0000:03:00.0', 'not a full PCI address'),
    ('0000:7f:00.0', 'no PCI function 0000:7f:00.0'),
    ('0000:01:00.0', 'does not support SR-IOV'),
    ('0000:04:00.0', 'does not support SR-IOV'),
])
def test_bad_addresses_change_nothing(ws, capsys, address, message):
    before = ws.snapshot()
    result = run(ws, capsys, address=address)
    assert result['failed'] is True and message in result['msg']
    ws.assert_unchanged(before)


def test_a_vf_address_is_refused(ws, capsys):
    run(ws, capsys, num_vfs=2)
    result = run(ws, capsys, address='0000:03:00.2')
    assert result['failed'] and 'is a VF; give the address of its PF (0000:03:00.0)' in result['msg']


def test_a_bad_node_id_is_refused(ws, capsys):
    before = ws.snapshot()
    result = run(ws, capsys, node_id='ws 01; rm -rf /')
    assert result['failed'] and 'node_id' in result['msg']
    ws.assert_unchanged(before)


def test_a_vf_on_vfio_pci_blocks_a_count_change(ws, capsys):
    run(ws, capsys, num_vfs=2)
    vf = '0000:03:00.3'
    bound = run_module(vfio_bind, dict(ws.args, address=vf, dev_root=ws.dev, state_dir=ws.state),
                       capsys=capsys)
    assert bound['changed']
    before = ws.snapshot()
    result = run(ws, capsys, num_vfs=4)
    assert result['failed'] is True
    assert 'VF 1 (0000:03:00.3) is bound to vfio-pci' in result['msg']
    ws.assert_unchanged(before)
    # The count it has is fine: nothing to change.
    assert run(ws, capsys, num_vfs=2)['changed'] is False


def test_a_vf_held_by_a_vm_blocks_a_count_change(ws, capsys):
    run(ws, capsys, num_vfs=2)
    vf = '0000:03:00.2'
    run_module(vfio_bind, dict(ws.args, address=vf, dev_root=ws.dev, state_dir=ws.state),
               capsys=capsys)
    group = ws.model.link_name('bus/pci/devices/%s/iommu_group' % vf)
    ws.model.open_vfio_group(group, pid=777, comm='qemu-kvm')
    result = run(ws, capsys, num_vfs=0)
    assert result['failed'] and 'is open by pid 777 (qemu-kvm)' in result['msg']


def test_a_pf_without_a_driver_is_refused(ws, capsys):
    ws.model.write('bus/pci/drivers/mlx5_core/unbind', PF)
    result = run(ws, capsys)
    assert result['failed'] and 'has no driver bound' in result['msg']


# -- InfiniBand ---------------------------------------------------------------------------


def ib_set(index, netdev='ibp94s0', node='ws-01'):
    node_guid, port_guid = vf_guids(node, IB_PF, index)
    return [IP, 'link', 'set', 'dev', netdev, 'vf', str(index), 'node_guid', node_guid,
            'port_guid', port_guid, 'state', 'auto']


def test_infiniband_guids_through_ip_link(kernel, capsys):
    host = kernel('gpu_box')
    created = run(host, capsys, address=IB_PF, num_vfs=2)
    assert created['kind'] == 'infiniband' and created['method'] == 'ip'
    assert host.tools.mutations() == [ib_set(0), ib_set(1)]
    for index, vf in enumerate(created['vfs']):
        assert (vf['node_guid'], vf['port_guid']) == vf_guids('ws-01', IB_PF, index)
        assert vf['node_guid'] != '00:00:00:00:00:00:00:00'
    host.tools.calls[:] = []
    again = run(host, capsys, address=IB_PF, num_vfs=2)
    assert again['changed'] is False and host.tools.mutations() == []


def test_guids_the_kernel_does_not_report_are_set_every_run_and_said_so(kernel, capsys):
    host = kernel('gpu_box', tools={'report_guids': False})
    first = run(host, capsys, address=IB_PF, num_vfs=1)
    assert first['changed'], first
    assert 'cannot be verified' in str(first.get('warnings')), first
    second = run(host, capsys, address=IB_PF, num_vfs=1)
    assert second['changed'] is True and second['commands'] == [ib_set(0)]


def test_infiniband_guids_through_the_mlx5_sysfs_files(kernel, capsys):
    host = kernel('gpu_box', model={'mlx5_sriov_sysfs': True})
    created = run(host, capsys, address=IB_PF, num_vfs=2, ib_method='sysfs')
    assert created['method'] == 'sysfs' and created['commands'] == []
    base = 'bus/pci/devices/%s/' % IB_PF
    node0, port0 = vf_guids('ws-01', IB_PF, 0)
    assert host.model.writes[:4] == [(base + 'sriov_numvfs', '2'), (base + 'sriov/0/node', node0),
                                     (base + 'sriov/0/port', port0),
                                     (base + 'sriov/0/policy', 'Follow')]
    host.model.writes[:] = []
    again = run(host, capsys, address=IB_PF, num_vfs=2)        # auto finds the sysfs files
    assert again['changed'] is False and again['method'] == 'sysfs'
    assert host.model.writes == []


def test_an_ib_pf_without_ipoib_or_sysfs_files_cannot_take_guids(kernel, capsys):
    host = kernel('gpu_box')
    result = run(host, capsys, address=IB_PF, num_vfs=2, ib_method='ip')
    assert result['changed']                                   # it has ibp94s0
    host2 = kernel('hgx')
    before = host2.snapshot()
    result = run(host2, capsys, address='0000:18:00.0', num_vfs=2)
    assert result['failed'] and 'does not support SR-IOV' in result['msg']
    result = run(host2, capsys, address='0000:1a:00.0', num_vfs=2, ib_method='ip')
    assert result['failed'] and 'has no network interface' in result['msg']
    host2.assert_unchanged(before)


# -- PFs whose VFs carry no MAC or GUID (vf_identity=none) -------------------------------

NVME_PF = '0000:1c:00.0'       # gpu_box: an NVMe controller with 4 VFs at offset 1


@pytest.fixture
def nvme_box(kernel):
    """QEMU's NVMe in the kernel lab: nvme cannot start its offline VFs (see the model)."""
    return kernel('gpu_box', model={'offline_vfs': [NVME_PF]})


def test_a_pf_without_vf_identities_is_refused_unless_the_operator_says_so(nvme_box, capsys):
    before = nvme_box.snapshot()
    result = run(nvme_box, capsys, address=NVME_PF, num_vfs=2)
    assert result['failed'] is True and 'is not an Ethernet (0x0200)' in result['msg']
    assert 'set vf_identity=none to converge only their count' in result['msg']
    nvme_box.assert_unchanged(before)


def test_vf_identity_none_is_refused_on_an_ethernet_or_infiniband_pf(kernel, capsys):
    for name, address, what in (('gpu_box', IB_PF, 'is an InfiniBand PF'),
                                ('workstation', PF, 'is an Ethernet PF')):
        host = kernel(name)
        before = host.snapshot()
        result = run(host, capsys, address=address, num_vfs=2, vf_identity='none')
        assert result['failed'] is True and what in result['msg'], result['msg']
        assert 'vf_identity=none does not apply to it' in result['msg']
        host.assert_unchanged(before)
        assert host.tools.calls == []


def test_vf_identity_none_converges_only_the_count(nvme_box, capsys):
    host = nvme_box
    numvfs = 'bus/pci/devices/%s/sriov_numvfs' % NVME_PF
    before = host.snapshot()
    sys_before = snapshot(host.sys, host.dev)
    checked = run(host, capsys, address=NVME_PF, num_vfs=2, vf_identity='none', check_mode=True)
    assert checked['changed'] is True and checked['kind'] == 'other'
    assert checked['vf_addresses'] == ['0000:1c:00.1', '0000:1c:00.2']
    host.assert_unchanged(before)

    created = run(host, capsys, address=NVME_PF, num_vfs=2, vf_identity='none')
    assert created['changed'] is True and created['method'] is None
    assert host.model.writes == [(numvfs, '2')]
    assert created['vf_addresses'] == checked['vf_addresses']
    assert created['vfs'] == [{'index': 0, 'address': '0000:1c:00.1', 'driver': None},
                              {'index': 1, 'address': '0000:1c:00.2', 'driver': None}]
    assert created['diff'] == {'before': {'num_vfs': 0}, 'after': {'num_vfs': 2}}
    assert host.tools.calls == []                        # nothing is set through ip
    again = run(host, capsys, address=NVME_PF, num_vfs=2, vf_identity='none')
    assert again['changed'] is False and again['actions'] == []

    host.model.writes[:] = []
    more = run(host, capsys, address=NVME_PF, num_vfs=3, vf_identity='none')
    assert more['changed'] is True
    assert host.model.writes == [(numvfs, '0'), (numvfs, '3')]
    assert more['vf_addresses'] == ['0000:1c:00.1', '0000:1c:00.2', '0000:1c:00.3']

    too_many = run(host, capsys, address=NVME_PF, num_vfs=5, vf_identity='none')
    assert too_many['failed'] is True and 'sriov_totalvfs is 4' in too_many['msg']

    bound = run_module(vfio_bind, dict(host.args, address='0000:1c:00.2', dev_root=host.dev,
                                       state_dir=host.state), capsys=capsys)
    assert bound['changed'] is True
    held = host.snapshot()
    refused = run(host, capsys, address=NVME_PF, num_vfs=0, vf_identity='none')
    assert refused['failed'] is True
    assert 'VF 1 (0000:1c:00.2) is bound to vfio-pci' in refused['msg']
    host.assert_unchanged(held)
    run_module(vfio_bind, dict(host.args, address='0000:1c:00.2', dev_root=host.dev,
                               state_dir=host.state, state='absent'), capsys=capsys)

    removed = run(host, capsys, address=NVME_PF, num_vfs=0, vf_identity='none')
    assert removed['changed'] is True and removed['vfs'] == []
    assert not changes(sys_before, snapshot(host.sys, host.dev))   # vfio_bind kept its state dir


def test_online_nvme_vfs_come_up_on_nvme_with_autoprobe(kernel, capsys):
    host = kernel('gpu_box')
    created = run(host, capsys, address=NVME_PF, num_vfs=1, vf_identity='none')
    assert created['vfs'][0]['driver'] == 'nvme'
    fresh = run(host, capsys, address=NVME_PF, num_vfs=2, vf_identity='none',
                drivers_autoprobe=False)
    assert [vf['driver'] for vf in fresh['vfs']] == [None, None]


# -- hostile input (issue 16): a clean refusal naming the option, nothing changed -------------


def refused(host, capsys, *expected, **extra):
    before = host.snapshot()
    result = run(host, capsys, **extra)
    assert result.get('failed') is True, result
    for text in expected:
        assert text in result['msg'], result['msg']
    host.assert_unchanged(before)
    assert host.model.escaped == [] and host.tools.mutations() == []
    return result


@pytest.mark.parametrize('num_vfs', [2 ** 64, 2 ** 16, -1, -2 ** 63])
def test_a_count_beyond_a_u16_is_refused_by_name(ws, capsys, num_vfs):
    refused(ws, capsys, 'num_vfs must be a whole number from 0 to 65535', num_vfs=num_vfs)
    assert ws.model.writes == []


@pytest.mark.parametrize('timeout', ['nan', 'inf', '1e400', -1, 0, 1e308])
def test_a_timeout_that_is_not_finite_and_bounded_is_refused_first(ws, capsys, timeout):
    refused(ws, capsys, 'timeout must be a finite number from 0.001 to 3600', timeout=timeout)
    assert ws.model.writes == []


@pytest.mark.parametrize('attr, extra', [
    ('sriov_numvfs', {}),
    ('sriov_totalvfs', {}),
    ('sriov_drivers_autoprobe', {'drivers_autoprobe': False}),
])
def test_an_sriov_attribute_that_is_a_symlink_out_of_sysfs_is_refused(ws, capsys, attr, extra):
    victim = ws.divert('bus/pci/devices/%s/%s' % (PF, attr))
    refused(ws, capsys, '%s resolves to %s, outside the sysfs tree' % (attr, victim), **extra)
    assert ws.model.writes == []
    with open(victim) as handle:
        assert handle.read() == '1\n'


@pytest.mark.parametrize('make', [
    shutil.rmtree,
    lambda proc: (shutil.rmtree(proc), open(proc, 'w').close()),
    lambda proc: os.unlink(os.path.join(proc, 'mounts')),
])
def test_a_count_change_whose_vf_users_cannot_be_seen_is_refused(ws, capsys, make):
    """Fail closed: not seeing who holds the VFs is not "nobody does"."""
    run(ws, capsys, num_vfs=4)
    ws.model.writes[:] = []
    ws.tools.calls[:] = []
    make(ws.proc)
    refused(ws, capsys, 'cannot read the processes under proc_root', num_vfs=2)
    assert ws.model.writes == []
