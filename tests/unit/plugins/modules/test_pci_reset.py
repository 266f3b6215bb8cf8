# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pci_reset against the kernel model: methods offered, forced, missing and failing."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import pci_reset, vfio_bind
from tests.sysfs import kernel_fixture
from tests.unit.module_runner import run_module

kernel = kernel_fixture.kernel  # the fixture

GPU = '0000:01:00.0'


def run(host, capsys, address=GPU, check_mode=False, **extra):
    args = dict(host.args, address=address)
    args.update(extra)
    return run_module(pci_reset, args, check_mode=check_mode, diff=True, capsys=capsys)


@pytest.fixture
def ws(kernel):
    return kernel('workstation')


def test_check_mode_resets_nothing_then_a_reset_is_a_change(ws, capsys):
    before = ws.snapshot()
    checked = run(ws, capsys, check_mode=True)
    assert checked['changed'] is True and checked['method'] == 'flr'
    assert checked['reset_methods'] == ['flr']
    ws.assert_unchanged(before)
    assert ws.model.resets == []

    done = run(ws, capsys)
    assert done['changed'] is True and done['needs_manual_care'] is False
    assert ws.model.resets == [(GPU, 'flr')]
    assert ws.model.writes == [('bus/pci/devices/%s/reset' % GPU, '1')]
    assert done['diff'] == {'before': {GPU: 'not reset'}, 'after': {GPU: 'reset by flr'}}
    assert done['duration_s'] >= 0
    run(ws, capsys)
    assert len(ws.model.resets) == 2                  # an action: every run resets


def test_a_device_with_no_method_needs_manual_care(kernel, capsys):
    host = kernel('hgx')
    before = host.snapshot()
    console = '0000:03:00.0'                          # the ASPEED BMC: no reset method
    result = run(host, capsys, address=console)
    assert result['failed'] is True
    assert result['reset_methods'] == [] and result['needs_manual_care'] is True
    assert 'offers no reset method (its reset_method is missing)' in result['msg']
    host.assert_unchanged(before)
    checked = run(host, capsys, address=console, check_mode=True)
    assert checked['failed'] and checked['needs_manual_care'] is True


def test_all_methods_disabled_is_no_method_too(ws, capsys):
    ws.model.write('bus/pci/devices/%s/reset_method' % GPU, '\n')
    result = run(ws, capsys)
    assert result['failed'] and result['reset_methods'] == []
    assert 'its reset_method is empty' in result['msg']


def test_a_forced_method_is_written_first_and_the_list_restored(kernel, capsys):
    host = kernel('workstation')
    rel = 'bus/pci/devices/%s/' % GPU
    host.model.reset_supported[GPU] = ['flr', 'bus']
    host.model.write(rel + 'reset_method', 'flr bus')
    host.model.writes[:] = []
    done = run(host, capsys, method='bus')
    assert done['method'] == 'bus'
    assert host.model.writes == [(rel + 'reset_method', 'bus'), (rel + 'reset', '1'),
                                 (rel + 'reset_method', 'flr bus')]
    assert host.model.resets == [(GPU, 'bus')]
    assert host.model.read(rel + 'reset_method') == 'flr bus'


def test_a_method_the_device_does_not_offer_is_refused(ws, capsys):
    before = ws.snapshot()
    result = run(ws, capsys, method='bus')
    assert result['failed'] and 'method bus is not offered by 0000:01:00.0 (reset_method: flr)' \
        in result['msg']
    assert result['needs_manual_care'] is False
    ws.assert_unchanged(before)


def test_a_failed_reset_asks_for_quarantine(kernel, capsys):
    host = kernel('workstation', model={'reset_faults': {GPU: errno.ENOTTY}})
    result = run(host, capsys)
    assert result['failed'] is True and result['needs_manual_care'] is True
    assert 'resetting 0000:01:00.0 with flr failed' in result['msg']
    assert 'quarantine the slot' in result['msg']
    assert host.model.resets == []


def test_a_failed_forced_reset_still_restores_the_methods(kernel, capsys):
    host = kernel('workstation', model={'reset_faults': {GPU: errno.EIO}})
    rel = 'bus/pci/devices/%s/' % GPU
    host.model.reset_supported[GPU] = ['flr', 'bus']
    host.model.write(rel + 'reset_method', 'flr bus')
    result = run(host, capsys, method='bus')
    assert result['failed'] and result['needs_manual_care'] is True
    assert host.model.read(rel + 'reset_method') == 'flr bus'


def test_the_host_nvme_and_a_running_vm_are_not_reset(ws, capsys):
    before = ws.snapshot()
    result = run(ws, capsys, address='0000:06:00.0')
    assert result['failed'] and 'in use by the host' in result['msg']
    ws.assert_unchanged(before)
    bound = run_module(vfio_bind, dict(ws.args, address=GPU, dev_root=ws.dev, state_dir=ws.state),
                       capsys=capsys)
    ws.model.open_vfio_group(bound['iommu_group'])
    result = run(ws, capsys)
    assert result['failed'] and 'a VM holds it' in result['msg']
    assert ws.model.resets == []


@pytest.mark.parametrize('address', ['0000:01:00', '0000:01:00.0\n1', '/sys/bus/pci/devices/x'])
def test_malformed_addresses(ws, capsys, address):
    before = ws.snapshot()
    result = run(ws, capsys, address=address)
    assert result['failed'] and 'not a full PCI address' in result['msg']
    ws.assert_unchanged(before)


def test_a_missing_device(ws, capsys):
    result = run(ws, capsys, address='0000:7f:00.0')
    assert result['failed'] and 'no PCI function' in result['msg']


def test_an_old_kernel_without_reset_method_resets_by_its_default(ws, capsys):
    import os
    os.unlink(ws.model.path('bus/pci/devices/%s/reset_method' % GPU))
    ws.model.reset_supported[GPU] = ['flr']
    result = run(ws, capsys, check_mode=True)
    assert result['reset_methods'] is None and result['method'] == 'kernel default'
    forced = run(ws, capsys, method='flr')
    assert forced['failed'] and 'no reset_method attribute' in forced['msg']


# -- hostile input (issue 16): a clean refusal, nothing reset, nothing written ----------------


def refused(host, capsys, *expected, **extra):
    before = host.snapshot()
    result = run(host, capsys, **extra)
    assert result.get('failed') is True, result
    for text in expected:
        assert text in result['msg'], result['msg']
    assert result['needs_manual_care'] is False
    host.assert_unchanged(before)
    assert host.model.resets == [] and host.model.escaped == []
    return result


@pytest.mark.parametrize('attr', ['reset', 'reset_method'])
def test_a_reset_attribute_that_is_a_symlink_out_of_sysfs_is_refused(ws, capsys, attr):
    victim = ws.divert('bus/pci/devices/%s/%s' % (GPU, attr))
    ws.model.writes[:] = []
    refused(ws, capsys, '%s resolves to %s, outside the sysfs tree' % (attr, victim))
    assert ws.model.writes == []
    with open(victim) as handle:
        assert handle.read() == '1\n'


def test_a_symlinked_reset_method_is_refused_before_a_forced_method_is_written(kernel, capsys):
    host = kernel('workstation')
    host.model.reset_supported[GPU] = ['flr', 'bus']
    host.model.write('bus/pci/devices/%s/reset_method' % GPU, 'flr bus')
    host.divert('bus/pci/devices/%s/reset' % GPU)
    host.model.writes[:] = []
    refused(host, capsys, 'outside the sysfs tree', method='bus')
    assert host.model.writes == []            # reset_method was not narrowed first


@pytest.mark.parametrize('address, expected', [
    ('0000:06:00.0', 'so the module cannot see what the host has mounted'),   # the boot NVMe
    (GPU, 'cannot read the processes under proc_root'),                       # on vfio-pci
])
@pytest.mark.parametrize('make', [
    shutil.rmtree,
    lambda proc: (shutil.rmtree(proc), open(proc, 'w').close()),
    lambda proc: (os.unlink(os.path.join(proc, 'mounts')), os.mkdir(os.path.join(proc, 'mounts'))),
])
def test_a_proc_root_that_cannot_be_read_refuses_the_reset(ws, capsys, address, expected, make):
    """Fail closed: a device whose users the module cannot see is not reset."""
    if address == GPU:
        run_module(vfio_bind, dict(ws.args, address=GPU, dev_root=ws.dev, state_dir=ws.state),
                   capsys=capsys)
    make(ws.proc)
    refused(ws, capsys, expected, address=address)
