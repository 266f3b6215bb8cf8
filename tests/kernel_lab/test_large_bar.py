# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A GPU-sized BAR passed through with VFIO: the lab's pci-testdev stand-in in a nested slot VM.

Runs only in a kernel lab booted with a stand-in (``lab/kernel/kernel_lab.py run
--standin-bar-gib 128 .venv/bin/python -m pytest -v tests/kernel_lab/test_large_bar.py``):
the lab kernel must assign the 128 GiB 64-bit BAR, vfio-pci must take the device behind the
emulated IOMMU, and slot_vm must start a UEFI domain (TCG inside TCG) with it as the slot's
GPU, QEMU mapping the BAR from VFIO. The lab host's CPU has 40 address bits, too few for the
guest to map the BAR as well: slot_vm refuses that, naming the bits (docs/slot-vm.md).
"""

from __future__ import annotations

import glob
import os
import subprocess

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import slot_vm, vfio_bind
from tests.unit.module_runner import run_module

from .conftest import PCI, binding, group_of, read

libvirt = pytest.importorskip('libvirt')

URI = 'qemu:///system'
SLOT = 'lab-s5'
NAME = 'gpuaas-' + SLOT
BRIDGE = 'labbr5'
# QEMU (libvirt-qemu) opens the variable store itself: not under pytest's 0700 tmp_path.
NVRAM_DIR = '/var/lib/gpuaas/nvram'
GUEST = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), '.build', 'guest')


def standin():
    """The pci-testdev (1b36:0005) the lab was booted with, or None."""
    for path in sorted(glob.glob(PCI + '/*')):
        if read(path + '/vendor') == '0x1b36' and read(path + '/device') == '0x0005':
            return os.path.basename(path)
    return None


def bars(address):
    """[(line, start, size)] of the function's assigned memory BARs, from its resource file."""
    found = []
    for line, row in enumerate(read('%s/%s/resource' % (PCI, address)).splitlines()[:6]):
        start, end, flags = (int(x, 16) for x in row.split())
        if flags & 0x200 and end > start:
            found.append((line, start, end - start + 1, bool(flags & 0x00100000)))
    return found


def test_a_128_gib_bar_through_vfio_into_a_uefi_slot_vm(capsys, tmp_path):
    if os.environ.get('GPUAAS_KERNEL_LAB') != '1' or standin() is None:
        pytest.skip('needs the kernel lab booted with --standin-bar-gib')
    address = standin()
    wide = [found for found in bars(address) if found[3]]
    with capsys.disabled():
        print('\nstand-in %s, lab kernel BARs %s' % (address, bars(address)))
    assert wide and wide[0][2] == 128 << 30, bars(address)
    guests = glob.glob(os.path.join(GUEST, '*', 'manifest.json'))
    assert guests, 'build the test guest first (python tests/guest/build_image.py)'
    build = os.path.dirname(guests[0])
    subprocess.run(['ip', 'link', 'add', BRIDGE, 'type', 'bridge'], check=True)
    subprocess.run(['ip', 'link', 'set', BRIDGE, 'up'], check=True)
    state_dir = str(tmp_path / 'vfio')
    args = dict(slot_id=SLOT, uri=URI, state='running', domain_type='qemu', memory_mib=256, cpulist='0', bar_mib=131072,
                numatune=False, gpu_address=address, bridge=BRIDGE, bridge_type='linux', wait_for_lease=False,
                stop_timeout=5, console_log_dir=str(tmp_path / 'console'), nvram_dir=NVRAM_DIR,
                lease_file=str(tmp_path / 'leases'), kernel=os.path.join(build, 'vmlinuz'),
                initrd=os.path.join(build, 'initrd.img'), kernel_cmdline='console=ttyS0 quiet loglevel=3',
                allowed_dirs=[str(tmp_path), build, os.path.dirname(NVRAM_DIR)])
    try:
        bound = run_module(vfio_bind, dict(address=address, state_dir=state_dir), capsys=capsys)
        assert bound.get('failed') is not True, bound
        assert binding(address)[0] == 'vfio-pci' and os.path.exists('/dev/vfio/%s' % group_of(address))
        # The lab host is TCG with -cpu max: 40 physical address bits. A 128 GiB BAR beside the VM's own
        # devices needs 41 in the guest, which this CPU cannot give: slot_vm refuses, naming the bits.
        refused = run_module(slot_vm, args, capsys=capsys)
        assert refused['failed'] and 'needs 41 physical address bits' in refused['msg'] \
            and 'the host CPU has 40' in refused['msg'], refused['msg']
        # Declared without its BARs (40 bits) the domain starts: QEMU maps the 128 GiB VFIO region.
        started = run_module(slot_vm, dict(args, bar_mib=0), capsys=capsys)
        assert started.get('failed') is not True, started.get('msg')
        assert started['domain_state'] == 'running' and started['phys_bits'] == 40, started
        conn = libvirt.open(URI)
        try:
            assert conn.lookupByName(NAME).isActive()
        finally:
            conn.close()
        with capsys.disabled():
            print('nested slot VM with the 128 GiB BAR passed through: running at 40 bits; refused at 41: %s'
                  % refused['msg'][:120])
    finally:
        run_module(slot_vm, dict(args, state='absent'), capsys=capsys)
        run_module(vfio_bind, dict(address=address, state_dir=state_dir, state='absent'), capsys=capsys)
        subprocess.run(['ip', 'link', 'del', BRIDGE], check=False)
