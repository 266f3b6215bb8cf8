# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rows of docs/failures-we-prevent.md on the lab guest's real kernel.

tests/integrity/test_failures_we_prevent.py proves each row against the kernel model; here
the same row runs against the guest's /sys, where the kernel itself refuses what the model
only imitates.

NVIDIA/open-gpu-kernel-modules#853 (gnif/vendor-reset#38): a GPU the kernel cannot reset.
Writing an empty line to ``reset_method`` disables every reset method of a device ("All
device reset methods disabled by user"): the kernel then refuses a reset exactly as it does
for a GPU with no working reset, and ``default`` gives the methods back. The release
role's steps run module by module on the real kernel (vfio-pci, the reset, the lease);
with GPUAAS_KERNEL_LAB_PLAYBOOKS=1 the release playbook itself runs (ansible-playbook, local
connection; minutes under TCG). What the guest has no daemon for is pointed elsewhere: libvirt
at its in-process test driver (no slot VM exists to remove), and Open vSwitch at a
stand-in ``ovs-vsctl`` that answers as a switch without the slot's bridge or port does.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import pci_reset, slot_lease, vfio_bind
from tests.integrity.playbooks import Node, fake_tool
from tests.unit.module_runner import run_module

from .conftest import PCI, SLOTS, binding, namespace_of, read, write

GPU, NVME, _PF, _NODE = SLOTS[0]
SLOT = 'lab-s0'
PLAYBOOK_TIMEOUT_S = 900      # ansible-playbook under TCG: 6 to 9 minutes on a shared 2-core host

# ovs-vsctl of a switch that has neither the slot's bridge nor its port (exit statuses as
# ovs-vsctl's: br-exists 2 for "no such bridge", port-to-br 1 for "no port named").
NO_SWITCH = '''
if sys.argv[1:2] == ['br-exists']:
    sys.exit(2)
if sys.argv[1:2] == ['port-to-br']:
    sys.stderr.write('ovs-vsctl: no port named %s\\n' % sys.argv[2])
    sys.exit(1)
sys.stderr.write('ovs-vsctl stand-in: unexpected call %r\\n' % (sys.argv[1:],))
sys.exit(1)
'''


def kernel_reset(address):
    """What the kernel answers to ``echo 1 > reset``: None when it reset, else the errno."""
    path = '%s/%s/reset' % (PCI, address)
    if not os.path.exists(path):
        return errno.ENOENT
    try:
        write(path, '1')
    except OSError as exc:
        return exc.errno
    return None


@pytest.fixture(scope='module')
def dev_shm():
    """ansible-playbook's multiprocessing needs /dev/shm, which the lab's init does not mount."""
    if os.path.ismount('/dev/shm'):
        yield
        return
    made = not os.path.isdir('/dev/shm')
    if made:
        os.mkdir('/dev/shm')
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'mode=1777,size=16m', 'tmpfs', '/dev/shm'], check=True)
    try:
        yield
    finally:
        subprocess.run(['umount', '/dev/shm'], check=True)
        if made:
            os.rmdir('/dev/shm')


@pytest.fixture
def node(tmp_path, monkeypatch):
    # The guest's /root is the host's, read-only: the module files go under the test's tmp.
    monkeypatch.setenv('ANSIBLE_REMOTE_TMP', str(tmp_path / 'ansible-tmp'))
    node = Node(tmp_path / 'node', 'lab', uri='test:///default', bridge='br-lab')
    fake_tool(str(tmp_path / 'bin'), 'ovs-vsctl', NO_SWITCH)
    node.path.append(str(tmp_path / 'bin'))
    return node


@pytest.fixture
def unresettable_gpu(node, capsys):
    """The slot's GPU with every reset method disabled; restored, and off vfio-pci, afterwards."""
    reset_method = '%s/%s/reset_method' % (PCI, GPU)
    before = {GPU: binding(GPU), NVME: binding(NVME)}
    methods = read(reset_method)
    assert methods, 'the stand-in GPU %s offers no reset method to begin with' % GPU
    write(reset_method, '\n')      # echo '' > reset_method (a write of no bytes changes nothing)
    try:
        yield reset_method
    finally:
        write(reset_method, 'default')
        for address in (GPU, NVME):
            if binding(address)[0] == 'vfio-pci':
                run_module(vfio_bind, {'address': address, 'state': 'absent',
                                       'state_dir': node.dirs['vfio']}, capsys=capsys)
        assert read(reset_method) == methods
        assert {GPU: binding(GPU), NVME: binding(NVME)} == before


def allocated_slot(node, capsys):
    """The slot as allocate leaves it: GPU and NVMe on vfio-pci, the lease running, the
    tenant's data on the namespace; the GPU's reset refused by the kernel itself."""
    assert read('%s/%s/reset_method' % (PCI, GPU)) == ''
    assert kernel_reset(GPU) in (errno.ENOTTY, errno.ENOENT), 'the kernel reset %s anyway' % GPU
    with open('/dev/' + namespace_of(NVME), 'r+b') as handle:
        handle.write(b'TENANT-1 SECRET ' * 4096)
    for address in (GPU, NVME):
        bound = run_module(vfio_bind, {'address': address, 'state_dir': node.dirs['vfio']}, capsys=capsys)
        assert bound['changed'] is True and binding(address) == ('vfio-pci', 'vfio-pci'), bound
    node.write_lease(SLOT, 'alloc-1', passthrough=True, devices=[GPU, NVME], gpu_address=GPU,
                     companions=[], nvme_address=NVME, fabric_vf_pci_address=None,
                     destructive_wipe_policy='zero', tenant='t1')


def assert_quarantined_and_never_allocated(node, capsys):
    lease = node.lease(SLOT)
    assert lease['phase'] == 'quarantined' and lease['allocation_id'] == 'alloc-1', lease
    reason = lease['reason']
    assert "release of alloc-1 failed at 'Reset the GPU'" in reason and GPU in reason, reason
    assert 'offers no reset method (its reset_method is empty)' in reason, reason
    assert 'needs manual care' in reason, reason
    # The devices went back to the host before the reset; the wipe never ran, so nothing
    # about the slot says it is clean.
    assert binding(GPU)[0] != 'vfio-pci' and binding(NVME) == ('nvme', '(null)')
    with open('/dev/' + namespace_of(NVME), 'rb') as handle:
        assert handle.read(16) == b'TENANT-1 SECRET '
    # Never allocated: the next allocation's lease request (allocate's first step) is refused.
    taken = run_module(slot_lease, {'slot_id': SLOT, 'allocation_id': 'alloc-2', 'phase': 'provisioning',
                                    'lease_dir': node.dirs['leases']}, capsys=capsys)
    assert taken['failed'] is True and 'held by allocation alloc-1' in taken['msg'], taken
    assert node.lease(SLOT)['phase'] == 'quarantined'


def test_nvidia_853_a_gpu_the_kernel_cannot_reset_is_quarantined_on_a_real_kernel(
        node, unresettable_gpu, capsys):
    """The release role's steps from the device hand-back on, module by module (seconds under TCG)."""
    allocated_slot(node, capsys)
    releasing = run_module(slot_lease, {'slot_id': SLOT, 'allocation_id': 'alloc-1', 'phase': 'releasing',
                                        'lease_dir': node.dirs['leases']}, capsys=capsys)
    assert releasing['changed'] is True, releasing
    for address in (GPU, NVME):      # Give the devices back to their host drivers
        released = run_module(vfio_bind, {'address': address, 'state': 'absent',
                                          'state_dir': node.dirs['vfio']}, capsys=capsys)
        assert released['changed'] is True, released
    reset = run_module(pci_reset, {'address': GPU}, capsys=capsys)      # Reset the GPU
    assert reset['failed'] is True and reset['needs_manual_care'] is True, reset
    assert reset['reset_methods'] == [] and GPU in reset['msg']
    # The role's rescue: the reason it writes (roles/slot_release/tasks/main.yml).
    quarantined = run_module(slot_lease, {
        'slot_id': SLOT, 'allocation_id': 'alloc-1', 'phase': 'quarantined',
        'reason': "release of alloc-1 failed at 'Reset the GPU': %s" % reset['msg'],
        'lease_dir': node.dirs['leases']}, capsys=capsys)
    assert quarantined['changed'] is True, quarantined
    assert_quarantined_and_never_allocated(node, capsys)


@pytest.mark.skipif(os.environ.get('GPUAAS_KERNEL_LAB_PLAYBOOKS') != '1',
                    reason='the release playbook takes minutes under TCG: '
                    'kernel_lab.py run --timeout 1200 -- env GPUAAS_KERNEL_LAB_PLAYBOOKS=1 .venv/bin/python -m pytest ...')
def test_nvidia_853_the_release_playbook_quarantines_a_gpu_the_kernel_cannot_reset(
        node, unresettable_gpu, dev_shm, capsys):
    """The whole release playbook, as AWX runs it, on the real kernel (6 to 9 minutes under TCG)."""
    allocated_slot(node, capsys)
    rc, out, _stats = node.run('release.yml', timeout=PLAYBOOK_TIMEOUT_S, gpuaas_slot_id=SLOT,
                               gpuaas_allocation_id='alloc-1')
    assert rc != 0, out[-3000:]
    assert "release failed at 'Reset the GPU'" in out, out[-3000:]
    assert 'The slot is quarantined until an operator clears it' in out, out[-3000:]
    assert_quarantined_and_never_allocated(node, capsys)


def test_a_gpu_whose_reset_methods_are_restored_resets_on_a_real_kernel(node, unresettable_gpu, capsys):
    """The opposite: once the methods are back (``default``), pci_reset resets the same GPU."""
    refused = run_module(pci_reset, {'address': GPU}, capsys=capsys)
    assert refused['failed'] is True and refused['needs_manual_care'] is True
    assert refused['reset_methods'] == []
    write(unresettable_gpu, 'default')
    methods = read(unresettable_gpu).split()
    assert methods
    reset = run_module(pci_reset, {'address': GPU}, capsys=capsys)
    assert reset['changed'] is True, reset
    assert reset['method'] == methods[0] and reset['reset_methods'] == methods
    assert reset['needs_manual_care'] is False
    assert kernel_reset(GPU) is None
