# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vfio_bind against the kernel model: the group moves together, and back exactly."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import vfio_bind
from tests.sysfs import kernel_fixture
from tests.unit.module_runner import run_module

kernel = kernel_fixture.kernel  # the fixture

GPU = '0000:01:00.0'
AUDIO = '0000:01:00.1'


def args(host, address, **extra):
    out = dict(host.args, address=address, dev_root=host.dev, state_dir=host.state)
    out.update(extra)
    return out


def run(host, capsys, address, check_mode=False, diff=True, **extra):
    return run_module(vfio_bind, args(host, address, **extra), check_mode=check_mode, diff=diff,
                      capsys=capsys)


@pytest.fixture
def ws(kernel):
    return kernel('workstation')


def test_check_mode_then_bind_then_nothing_to_do(ws, capsys):
    before = ws.snapshot()
    checked = run(ws, capsys, GPU, check_mode=True)
    assert checked['changed'] is True
    assert checked['bindings'] == {GPU: 'vfio-pci', AUDIO: 'vfio-pci'}
    ws.assert_unchanged(before)

    bound = run(ws, capsys, GPU)
    assert bound['changed'] is True
    assert bound['actions'] == checked['actions']
    assert bound['functions'] == [GPU, AUDIO]           # the HDMI audio goes with the GPU
    for bdf in (GPU, AUDIO):
        assert ws.driver(bdf) == 'vfio-pci'
        assert ws.override(bdf) == 'vfio-pci'
    group = bound['iommu_group']
    assert bound['vfio_device'] == os.path.join(ws.dev, 'vfio', group)
    assert os.path.exists(bound['vfio_device'])
    assert bound['original_drivers'] == {GPU: 'nvidia', AUDIO: 'snd_hda_intel'}
    assert bound['diff']['before'][GPU] == {'driver': 'nvidia', 'driver_override': None}
    assert bound['diff']['after'][AUDIO] == {'driver': 'vfio-pci', 'driver_override': 'vfio-pci'}

    again = run(ws, capsys, GPU)
    assert again['changed'] is False and again['actions'] == []
    assert again['diff']['before'] == again['diff']['after']


def test_the_kernels_sequence_of_writes(ws, capsys):
    run(ws, capsys, GPU)
    assert ws.model.writes == [
        ('bus/pci/devices/%s/driver_override' % GPU, 'vfio-pci'),
        ('bus/pci/drivers/nvidia/unbind', GPU),
        ('bus/pci/drivers_probe', GPU),
        ('bus/pci/devices/%s/driver_override' % AUDIO, 'vfio-pci'),
        ('bus/pci/drivers/snd_hda_intel/unbind', AUDIO),
        ('bus/pci/drivers_probe', AUDIO),
    ]


def test_the_state_file_records_the_original_drivers(ws, capsys):
    run(ws, capsys, GPU)
    with open(os.path.join(ws.state, GPU + '.json')) as handle:
        record = json.load(handle)
    assert record == {
        'version': 1, 'address': GPU, 'iommu_group': ws.model.link_name(
            'bus/pci/devices/%s/iommu_group' % GPU),
        'functions': {GPU: {'driver': 'nvidia', 'driver_override': None},
                      AUDIO: {'driver': 'snd_hda_intel', 'driver_override': None}}}
    leftovers = [n for n in os.listdir(ws.state) if n not in (GPU + '.json', '.lock')]
    assert leftovers == []                              # no temporary file left behind


def test_absent_restores_the_tree_exactly(ws, capsys):
    original = ws.snapshot()
    run(ws, capsys, GPU)
    checked = run(ws, capsys, GPU, state='absent', check_mode=True)
    assert checked['changed'] is True
    assert checked['bindings'] == {GPU: 'nvidia', AUDIO: 'snd_hda_intel'}
    released = run(ws, capsys, GPU, state='absent')
    assert released['changed'] is True
    assert released['bindings'] == {GPU: 'nvidia', AUDIO: 'snd_hda_intel'}
    assert released['diff']['after'][GPU] == {'driver': 'nvidia', 'driver_override': None}
    assert not os.path.exists(os.path.join(ws.state, GPU + '.json'))
    # Every link, every attribute and /dev/vfio back as they were (the lock file stays).
    after = ws.snapshot()
    after = dict((k, v) for k, v in after.items()
                 if not (k[0] == ws.state))
    expected = dict((k, v) for k, v in original.items() if k[0] != ws.state)
    assert after == expected
    again = run(ws, capsys, GPU, state='absent')
    assert again['changed'] is False and again['actions'] == []


def test_a_bind_cut_short_is_finished_by_the_next_run_and_restored_exactly(ws, capsys):
    """Crash after the GPU moved but before the audio function did."""
    original = ws.snapshot()
    run(ws, capsys, GPU)
    # Put the audio function back by hand, as if the run had died before reaching it.
    m = ws.model
    m.write('bus/pci/devices/%s/driver_override' % AUDIO, '\n')
    m.write('bus/pci/drivers/vfio-pci/unbind', AUDIO)
    m.write('bus/pci/drivers/snd_hda_intel/bind', AUDIO)
    finished = run(ws, capsys, GPU)
    assert finished['changed'] is True
    assert [a.split(':', 3)[-1] for a in finished['actions']] and \
        all(AUDIO in a for a in finished['actions'])
    assert finished['original_drivers'] == {GPU: 'nvidia', AUDIO: 'snd_hda_intel'}
    run(ws, capsys, GPU, state='absent')
    after = dict((k, v) for k, v in ws.snapshot().items() if k[0] != ws.state)
    assert after == dict((k, v) for k, v in original.items() if k[0] != ws.state)


def test_absent_without_a_record_gives_the_group_to_the_kernels_choice(ws, capsys):
    run(ws, capsys, GPU)
    os.unlink(os.path.join(ws.state, GPU + '.json'))
    released = run(ws, capsys, AUDIO, state='absent')
    assert released['changed'] is True
    assert ws.driver(GPU) == 'nvidia' and ws.driver(AUDIO) == 'snd_hda_intel'
    assert ws.override(GPU) == '(null)'


def test_a_pci_segment_0001_device_binds_and_comes_back(kernel, capsys):
    host = kernel('segment1')
    nvme = '0001:02:00.0'
    bound = run(host, capsys, nvme)
    assert bound['changed'] and host.driver(nvme) == 'vfio-pci'
    assert os.path.exists(os.path.join(host.state, nvme + '.json'))
    released = run(host, capsys, nvme, state='absent')
    assert released['bindings'] == {nvme: 'nvme'}


def test_a_device_already_on_vfio_pci_gets_its_override_and_keeps_its_driver(kernel, capsys):
    host = kernel('segment1')
    gpu = '0001:01:00.0'
    bound = run(host, capsys, gpu)
    assert bound['changed'] is True
    assert [w[0] for w in host.model.writes] == ['bus/pci/devices/%s/driver_override' % gpu]
    assert bound['original_drivers'] == {gpu: 'vfio-pci'}
    released = run(host, capsys, gpu, state='absent')
    assert host.driver(gpu) == 'vfio-pci' and host.override(gpu) == '(null)'
    assert released['bindings'] == {gpu: 'vfio-pci'}


def test_an_eight_function_group_moves_together(kernel, capsys):
    host = kernel('gpu_box', functions=8)
    bound = run(host, capsys, '0000:1b:00.3')
    functions = ['0000:1b:00.%d' % f for f in range(8)]
    assert bound['functions'] == functions
    assert all(host.driver(f) == 'vfio-pci' for f in functions)
    assert bound['original_drivers']['0000:1b:00.5'] is None      # a function without a driver
    run(host, capsys, '0000:1b:00.3', state='absent')
    assert host.driver('0000:1b:00.0') == 'nvidia'
    assert host.driver('0000:1b:00.5') is None


# -- refusals: a clear error, and the whole tree as it was ---------------------------


@pytest.mark.parametrize('address', [
    '0000:01:00', '01:00.0', '0000:01:00.8', '0000:01:20.0', 'zzzz:01:00.0',
    '0000:01:00.0; reboot', '$(reboot)', '../../../etc/passwd', '0000:01:00.0/../..', '',
])
def test_a_malformed_address_changes_nothing(ws, capsys, address):
    before = ws.snapshot()
    result = run(ws, capsys, address)
    assert result['failed'] is True
    assert 'not a full PCI address' in result['msg']
    ws.assert_unchanged(before)


def test_a_device_that_does_not_exist(ws, capsys):
    before = ws.snapshot()
    result = run(ws, capsys, '0000:7f:00.0')
    assert result['failed'] and 'no PCI function 0000:7f:00.0' in result['msg']
    ws.assert_unchanged(before)


def test_a_group_shared_with_the_sata_controller_is_refused(ws, capsys):
    before = ws.snapshot()
    result = run(ws, capsys, '0000:05:00.0')
    assert result['failed'] is True
    assert '0000:00:17.0 (SATA controller' in result['msg']
    assert 'driver ahci' in result['msg']
    assert result['functions'] == ['0000:00:17.0', '0000:05:00.0']   # the bridge stays out
    ws.assert_unchanged(before)


def test_the_iommu_off_is_refused(kernel, capsys):
    host = kernel('no_iommu')
    before = host.snapshot()
    result = run(host, capsys, '0000:1b:00.0')
    assert result['failed'] and 'the IOMMU is off' in result['msg']
    assert result['iommu_enabled'] is False
    host.assert_unchanged(before)


def test_vfio_pci_not_loaded_is_refused(kernel, capsys):
    host = kernel('workstation', model={'vfio_pci_loaded': False})
    before = host.snapshot()
    result = run(host, capsys, GPU)
    assert result['failed'] and 'modprobe vfio-pci' in result['msg']
    host.assert_unchanged(before)


def test_the_boot_nvme_is_refused(ws, capsys):
    before = ws.snapshot()
    result = run(ws, capsys, '0000:06:00.0')
    assert result['failed'] is True
    assert 'is in use by the host: nvme0n1p1 is mounted on /boot/efi' in result['msg']
    ws.assert_unchanged(before)


def test_a_nic_that_is_up_with_an_address_is_refused(ws, capsys):
    ws.tools.addresses['enp4s0'] = [('192.0.2.10', 24, 'global'), ('fe80::1', 64, 'link')]
    before = ws.snapshot()
    result = run(ws, capsys, '0000:04:00.0')
    assert result['failed'] is True
    assert 'interface enp4s0 is up with address 192.0.2.10/24' in result['msg']
    assert ws.tools.calls == [['/usr/sbin/ip', '-j', 'addr', 'show', 'dev', 'enp4s0']]
    ws.assert_unchanged(before)


def test_a_nic_in_a_bridge_is_refused_and_a_link_local_address_is_not_use(ws, capsys):
    ws.tools.addresses['enp4s0'] = [('fe80::1', 64, 'link')]
    ws.tools.masters['enp4s0'] = 'br-mgmt'
    result = run(ws, capsys, '0000:04:00.0')
    assert result['failed'] and 'enslaved to br-mgmt' in result['msg']
    del ws.tools.masters['enp4s0']
    assert run(ws, capsys, '0000:04:00.0', check_mode=True)['changed'] is True


def test_without_ip_the_module_cannot_see_and_changes_nothing(kernel, capsys):
    host = kernel('workstation', tools={'missing': ['ip']})
    before = host.snapshot()
    result = run(host, capsys, '0000:04:00.0')
    assert result['failed'] and "'ip' command (iproute2) is not installed" in result['msg']
    host.assert_unchanged(before)


def test_a_pf_with_vfs_is_refused(ws, capsys):
    ws.model.write('bus/pci/devices/0000:03:00.0/sriov_numvfs', '2')
    before = ws.snapshot()
    result = run(ws, capsys, '0000:03:00.0')
    assert result['failed'] and 'has 2 SR-IOV VFs enabled' in result['msg']
    ws.assert_unchanged(before)


def test_the_console_gpu_is_refused(ws, capsys):
    result = run(ws, capsys, '0000:00:02.0')
    assert result['failed'] and 'framebuffer console' in result['msg']


def test_releasing_a_group_a_vm_holds_is_refused(ws, capsys):
    bound = run(ws, capsys, GPU)
    ws.model.open_vfio_group(bound['iommu_group'], pid=31337, comm='qemu-system-x86')
    before = ws.snapshot()
    result = run(ws, capsys, GPU, state='absent')
    assert result['failed'] is True
    assert '/dev/vfio/%s is open by pid 31337 (qemu-system-x86)' % bound['iommu_group'] \
        in result['msg']
    ws.assert_unchanged(before)
    # Bound and held is the normal running state: present has nothing to do.
    assert run(ws, capsys, GPU)['changed'] is False


def test_an_allowed_group_member_moves_with_the_device(kernel, capsys):
    host = kernel('workstation')
    refused = run(host, capsys, '0000:05:00.0')
    assert refused['failed']
    bound = run(host, capsys, '0000:05:00.0', allow_group_members=['0000:00:17.0'])
    assert bound['changed'] and host.driver('0000:00:17.0') == 'vfio-pci'


def test_a_probe_that_fails_says_which_step_and_keeps_the_record(kernel, capsys):
    host = kernel('workstation', model={'probe_faults': {AUDIO: errno.EIO}})
    result = run(host, capsys, GPU, timeout=0.05)
    assert result['failed'] is True
    assert result['msg'].startswith(
        'step 12 of 14 failed: 0000:01:00.1: wait for vfio-pci to bind it: timed out after '
        '0.05 s: it is bound to no driver; vfio-pci refused it or is still probing')
    assert result['failed_step'] == '0000:01:00.1: wait for vfio-pci to bind it'
    # The lock, the record, the GPU's five steps, the audio function's override, unbind,
    # wait and probe; the /dev/vfio wait and the final check were still to come.
    assert len(result['completed_steps']) == 11
    assert host.driver(GPU) == 'vfio-pci'
    assert os.path.exists(os.path.join(host.state, GPU + '.json'))
    # The record lets absent undo the half-done bind.
    host.model.probe_faults.clear()
    released = run(host, capsys, GPU, state='absent')
    assert released['bindings'] == {GPU: 'nvidia', AUDIO: 'snd_hda_intel'}


def test_a_corrupt_state_file_is_reported_not_trusted(ws, capsys):
    os.makedirs(ws.state)
    with open(os.path.join(ws.state, GPU + '.json'), 'w') as handle:
        handle.write('{"functions": ')
    before = ws.snapshot()
    result = run(ws, capsys, GPU)
    assert result['failed'] and 'is not valid JSON' in result['msg']
    ws.assert_unchanged(before)


def test_a_gpu_whose_device_node_a_process_holds_is_refused_before_the_unbind_would_hang(
        ws, capsys):
    info = os.path.join(ws.proc, 'driver', 'nvidia', 'gpus', GPU)
    os.makedirs(info)
    with open(os.path.join(info, 'information'), 'w') as handle:
        handle.write('Model: \t\t NVIDIA GeForce RTX 4090\nIRQ:   \t\t 186\n'
                     'Device Minor: \t 0\nBus Location: \t 0000:01:00.0\n')
    ws.model.hold_open('/dev/nvidia0', 1450, 'nvidia-persiste', 4)
    before = ws.snapshot()
    result = run(ws, capsys, GPU)
    assert result['failed'] is True
    assert '/dev/nvidia0 is open by pid 1450 (nvidia-persiste)' in result['msg']
    assert 'would hang' in result['msg']
    ws.assert_unchanged(before)


@pytest.mark.parametrize('information', [None, 'Model: \t\t NVIDIA H100 80GB HBM3\nBus Location: \t 0000:01:00.0\n'])
def test_a_gpu_whose_minor_cannot_be_read_counts_every_nvidia_node(ws, capsys, information):
    """No information file (or one naming no minor): which /dev/nvidiaN is this GPU's is not
    known, so a process holding any of them refuses the unbind; nobody holding one lets it go."""
    if information is not None:
        info = os.path.join(ws.proc, 'driver', 'nvidia', 'gpus', GPU)
        os.makedirs(info)
        with open(os.path.join(info, 'information'), 'w') as handle:
            handle.write(information)
    held = ws.model.hold_open('/dev/nvidia7', 1450, 'nvidia-persiste', 4)
    before = ws.snapshot()
    result = run(ws, capsys, GPU)
    assert result['failed'] is True and '/dev/nvidia7 is open by pid 1450 (nvidia-persiste)' in result['msg']
    ws.assert_unchanged(before)
    os.unlink(held)
    assert run(ws, capsys, GPU)['changed'] is True


def test_a_drm_render_node_in_use_is_refused(ws, capsys):
    drm = ws.model.path('bus/pci/devices/%s/drm' % GPU)
    os.makedirs(os.path.join(drm, 'card1'))
    os.makedirs(os.path.join(drm, 'renderD128'))
    ws.model.hold_open('/dev/dri/renderD128', 900, 'Xorg', 12)
    result = run(ws, capsys, GPU)
    assert result['failed'] and '/dev/dri/renderD128 is open by pid 900 (Xorg)' in result['msg']


def test_a_foreign_device_no_host_driver_uses_moves_along_with_a_warning(ws, capsys):
    ws.model.write('bus/pci/drivers/ahci/unbind', '0000:00:17.0')
    bound = run(ws, capsys, '0000:05:00.0')
    assert bound['changed'] is True
    assert ws.driver('0000:00:17.0') == 'vfio-pci'
    assert 'another physical device that no host driver uses' in str(bound['warnings'])


# -- hostile input (issue 16): a clean refusal naming the option, and nothing changed ----------


def refused(host, capsys, before, *expected, **extra):
    """Run vfio_bind on the GPU; it must fail naming ``expected`` and leave the host as it was."""
    result = run(host, capsys, extra.pop('address', GPU), **extra)
    assert result.get('failed') is True, result
    for text in expected:
        assert text in result['msg'], result['msg']
    host.assert_unchanged(before)
    assert host.model.writes == [] and host.model.escaped == []
    return result


@pytest.mark.parametrize('timeout', ['nan', 'inf', '-inf', '1e400', -1, 0, 1e308, 86400])
def test_a_timeout_that_is_not_a_finite_bounded_number_is_refused_first(ws, capsys, timeout):
    before = ws.snapshot()
    refused(ws, capsys, before, 'timeout must be a finite number from 0.001 to 3600', timeout=timeout)
    assert not os.path.exists(ws.state)


@pytest.mark.parametrize('rel', [
    'bus/pci/devices/%s/driver_override' % GPU,
    'bus/pci/devices/%s/driver_override' % AUDIO,
    'bus/pci/drivers/nvidia/unbind',
    'bus/pci/drivers/snd_hda_intel/unbind',
    'bus/pci/drivers_probe',
])
def test_an_attribute_that_is_a_symlink_out_of_sysfs_is_refused(ws, capsys, rel):
    victim = ws.divert(rel)
    before = ws.snapshot()
    result = refused(ws, capsys, before, 'outside the sysfs tree %s' % ws.sys, check_mode=False)
    assert victim in result['msg']
    with open(victim) as handle:
        assert handle.read() == '1\n'


def test_a_symlinked_bind_attribute_is_refused_on_release(ws, capsys):
    run(ws, capsys, GPU)
    victim = ws.divert('bus/pci/drivers/nvidia/bind')
    ws.model.writes[:] = []
    before = ws.snapshot()
    refused(ws, capsys, before, 'nvidia/bind resolves to %s' % victim, state='absent')


@pytest.mark.parametrize('make', [
    shutil.rmtree,
    lambda proc: (shutil.rmtree(proc), open(proc, 'w').close()),
    lambda proc: os.unlink(os.path.join(proc, 'mounts')),
])
def test_a_proc_root_that_cannot_be_read_refuses_the_move(ws, capsys, make):
    """Fail closed: not seeing /proc is not "no VM holds the group"."""
    make(ws.proc)
    before = ws.snapshot()
    refused(ws, capsys, before, 'cannot read the processes under proc_root', 'it changes nothing')


@pytest.mark.parametrize('state_dir, expected', [
    ('', 'state_dir must be a non-empty path'),
    ('relative/dir', "state_dir 'relative/dir' must be an absolute path"),
    ('/var/lib/../../etc', "contains a '..' component"),
])
def test_a_state_dir_that_is_not_a_path_is_refused(ws, capsys, state_dir, expected):
    before = ws.snapshot()
    refused(ws, capsys, before, expected, state_dir=state_dir)


def test_a_state_dir_that_is_a_file_is_refused(ws, capsys):
    with open(ws.state, 'w') as handle:
        handle.write('not a directory\n')
    before = ws.snapshot()
    refused(ws, capsys, before, 'state_dir %r is not a directory' % ws.state)


@pytest.mark.parametrize('members', [['0000:00:17.0\x00'], ['0000:00:17.0\n'], ['../../x'], [''], ['0' * 5000]])
def test_a_bad_group_member_is_refused_naming_the_option(ws, capsys, members):
    before = ws.snapshot()
    refused(ws, capsys, before, 'allow_group_members', allow_group_members=members)


@pytest.mark.parametrize('content, expected', [
    (b'', 'is not valid JSON'),
    (b'{"functions": ', 'is not valid JSON'),
    (b'\xff\xfe{}', 'is not valid JSON'),
    (b'[' * 100000 + b']' * 100000, 'is not valid JSON'),
    (b'null', 'holds NoneType, not a dict'),
    (b'[]', 'holds list, not a dict'),
    (b'{"functions": {"0000:01:00.0": []}}', 'does not have the layout'),
    (b'{"functions": {"0000:01:00.0": {"driver": "../../../../tmp/x"}}}', 'which is not a PCI address'),
    (b'{"functions": {"0000:01:00.0": {"driver": 7}}}', 'which is not a PCI address'),
    (b'{"functions": {"/etc/passwd": {"driver": null}}}', 'which is not a PCI address'),
    (b'{"functions": {"0000:01:00.0": {"driver_override": "x\\ny"}}}', 'which is not a PCI address'),
])
@pytest.mark.parametrize('state', ['present', 'absent'])
def test_a_damaged_state_file_is_reported_named_never_used(ws, capsys, content, expected, state):
    os.makedirs(ws.state)
    record = os.path.join(ws.state, GPU + '.json')
    with open(record, 'wb') as handle:
        handle.write(content)
    before = ws.snapshot()
    result = refused(ws, capsys, before, 'the state file %r' % record, expected, state=state)
    assert result['state_file'] == record


def test_a_state_file_that_is_a_directory_is_reported(ws, capsys):
    os.makedirs(os.path.join(ws.state, GPU + '.json'))
    before = ws.snapshot()
    refused(ws, capsys, before, 'the state file %r cannot be read: Is a directory' % os.path.join(ws.state, GPU + '.json'))


def test_a_driver_link_that_leads_out_of_sysfs_is_refused(ws, capsys):
    """The driver a decision rests on is read from a link; one leaving the tree is not the kernel's."""
    link = ws.model.path('bus/pci/devices/%s/driver' % GPU)
    fake = os.path.join(ws.base, 'outside', 'drivers', 'snd_hda_intel')
    os.makedirs(fake)
    os.unlink(os.path.realpath(os.path.dirname(link)) + '/driver')
    os.symlink(fake, os.path.realpath(os.path.dirname(link)) + '/driver')
    before = ws.snapshot()
    refused(ws, capsys, before, 'driver resolves to %s, outside the sysfs tree' % fake)
