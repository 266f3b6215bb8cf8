# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A slot's 64-bit BARs (bar_mib) and the guest address space they and its memory need.

bar_mib is read from each device's sysfs ``resource`` file (the real H100's among them); the
rule (contract.guest_phys_bits) is OVMF's layout: the 64-bit PCI window in the top eighth of
the guest's physical address space.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import (
    Discovery, bar_mib, read_bars, read_phys_bits)
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import PciDevice, Sysfs
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ContractError, address_space_problem, guest_phys_bits, window_mib)
from tests.sysfs.hosts import REAL_FIXTURES

GIB = 1024
REAL_RESOURCE = os.path.join(REAL_FIXTURES, 'h100-passthrough-guest', 'gpu-resource.txt')


def resource(host, address, text):
    with open(os.path.join(host, 'bus/pci/devices', address, 'resource'), 'w') as handle:
        handle.write(text)


def test_the_real_h100_resource_file_gives_its_three_bars(host_tree):
    sys_root, _proc = host_tree('h100_guest')
    device = PciDevice(Sysfs(sys_root), '0000:00:06.0')
    with open(REAL_RESOURCE) as handle:
        assert open(os.path.join(sys_root, device.rel, 'resource')).read() == handle.read()
    # 16 MiB, 128 GiB, 32 MiB: in that guest all three carry IORESOURCE_MEM_64 (flags 0x14220c).
    assert read_bars(device) == [16 << 20, 128 << 30, 32 << 20]
    assert bar_mib(Sysfs(sys_root), '0000:00:06.0') == 128 * GIB + 48


def test_a_host_h100s_32_bit_bar0_does_not_count_and_the_vf_gets_its_share(host_tree):
    sys_root, _proc = host_tree('hgx')
    sysfs = Sysfs(sys_root)
    gpu, nvme, pf = '0000:18:00.0', '0000:1c:00.0', '0000:1a:00.0'
    lines = open(os.path.join(sys_root, 'bus/pci/devices', gpu, 'resource')).read().splitlines()
    assert len(lines) == 13 and lines[0].endswith('0x0000000000040200')    # BAR0: 16 MiB, 32-bit
    assert bar_mib(sysfs, gpu) == 128 * GIB + 32
    assert bar_mib(sysfs, gpu, nvme_address=nvme) == 128 * GIB + 33        # + 16 KiB, rounded up
    # The PF's VF BAR0 (line 7) is 16 MiB for its 16 VFs: the slot's one VF brings 1 MiB.
    pf_lines = open(os.path.join(sys_root, 'bus/pci/devices', pf, 'resource')).read().splitlines()
    start, end, _flags = (int(x, 16) for x in pf_lines[7].split())
    assert end - start + 1 == 16 << 20
    assert bar_mib(sysfs, gpu, (), nvme, pf) == 128 * GIB + 34      # 32 MiB + 16 KiB + 1 MiB, rounded up


def test_io_rom_and_32_bit_bars_do_not_count_and_a_bad_line_is_refused(host_tree):
    sys_root, _proc = host_tree('hgx')
    sysfs, gpu = Sysfs(sys_root), '0000:18:00.0'
    resource(sys_root, gpu, '0x0000000000001000 0x00000000000010ff 0x0000000000040101\n'     # I/O
                            '0x00000000a0000000 0x00000000afffffff 0x0000000000042208\n'     # 32-bit prefetchable
                            + '0x0000000000000000 0x0000000000000000 0x0000000000000000\n' * 4
                            + '0x0000002000000000 0x0000002fffffffff 0x000000000014220c\n')  # line 6: the ROM
    assert bar_mib(sysfs, gpu) == 0
    resource(sys_root, gpu, '0x0000000000001000 0x00000000000010ff\n')
    with pytest.raises(ContractError, match=r'resource line 1 is .*not "0xSTART 0xEND 0xFLAGS"'):
        bar_mib(sysfs, gpu)
    os.unlink(os.path.join(sys_root, 'bus/pci/devices', gpu, 'resource'))
    with pytest.raises(ContractError, match='0000:18:00.0 has no readable .*resource, so the size of its BARs'):
        bar_mib(sysfs, gpu)
    with pytest.raises(ContractError, match='0000:77:00.0 does not exist'):
        bar_mib(sysfs, '0000:77:00.0')


def test_a_pf_without_totalvfs_cannot_size_its_vf(host_tree):
    sys_root, _proc = host_tree('hgx')
    os.unlink(os.path.join(sys_root, 'bus/pci/devices/0000:1a:00.0/sriov_totalvfs'))
    with pytest.raises(ContractError, match='fabric PF 0000:1a:00.0 reports no sriov_totalvfs'):
        bar_mib(Sysfs(sys_root), '0000:18:00.0', fabric_pf_address='0000:1a:00.0')


def test_vfs_the_kernel_creates_carry_their_share_of_the_pfs_vf_bar(host_tree):
    sys_root, _proc = host_tree('hgx', vfs_per_pf=4)
    sysfs = Sysfs(sys_root)
    first, second = PciDevice(sysfs, '0000:1a:00.1'), PciDevice(sysfs, '0000:1a:00.2')
    assert read_bars(first) == read_bars(second) == [1 << 20]


def test_phys_bits_come_from_cpuinfo_and_fail_closed(tmp_path):
    (tmp_path / 'cpuinfo').write_text('processor\t: 0\naddress sizes\t: 52 bits physical, 57 bits virtual\n')
    assert read_phys_bits(str(tmp_path)) == 52
    (tmp_path / 'cpuinfo').write_text('processor\t: 0\n')
    with pytest.raises(ContractError, match='has no "address sizes : N bits physical" line'):
        read_phys_bits(str(tmp_path))
    with pytest.raises(ContractError, match="cannot read .*missing/cpuinfo .*physical address bits cannot be known"):
        read_phys_bits(str(tmp_path / 'missing'))


@pytest.mark.parametrize('memory_mib, bars, bits', [
    (256, 0, 40),                       # never below QEMU's 40
    (256, 127 * GIB, 40),               # 127 GiB + 1 GiB for the VM's own devices: the top eighth of 1 TiB
    (256, 127 * GIB + 1, 41),           # a MiB more needs a 256 GiB window
    (256, 128 * GIB, 41),               # the lab's stand-in beside a virtio NIC: 2 TiB
    (253 * GIB, 128 * GIB + 34, 41),    # an HGX slot: 247 GiB + the H100, NVMe and VF
    (891 * GIB, 0, 40),                 # 7/8 of 1 TiB is 896 GiB: 891 GiB + the 4 GiB hole fit
    (892 * GIB, 0, 41),                 # ... 892 GiB do not (the window starts there)
    (4 * 1024 * GIB, 8 * 128 * GIB, 44),
])
def test_the_guest_address_bits_rule(memory_mib, bars, bits):
    assert guest_phys_bits(memory_mib, bars) == bits


def test_window_is_the_next_power_of_two():
    assert [window_mib(n) for n in (0, 1, 3, 1024, 1025)] == [1, 1, 4, 1024, 2048]


def test_a_shape_beyond_the_host_cpus_bits_is_refused_with_the_reason():
    assert address_space_problem(256, 127 * GIB, 40) is None
    problem = address_space_problem(256, 128 * GIB, 40)
    assert problem == ("memory_mib 256 plus the slot's 64-bit BARs (bar_mib 131072 and 1024 MiB for the VM's own "
                       'devices, a 262144 MiB window) needs 41 '
                       'physical address bits in the guest (OVMF keeps the top eighth of the address space for the '
                       '64-bit PCI window, RAM and the 4 GiB below the 32-bit hole go under it), but the host CPU '
                       'has 40: ask for less memory, or use a host whose CPU addresses more')


def test_discovery_reports_bar_mib_and_refuses_a_slot_the_cpu_cannot_address(host_tree):
    sys_root, proc_root = host_tree('hgx')
    slot = Discovery('hgx', sys_root, proc_root).run()['slots'][0]
    assert (slot['bar_mib'], slot['memory_mib'], slot['eligible']) == (128 * GIB + 34, 252928, True)
    with open(os.path.join(proc_root, 'cpuinfo'), 'w') as handle:
        handle.write('address sizes\t: 40 bits physical, 48 bits virtual\n')
    slot = Discovery('hgx', sys_root, proc_root).run()['slots'][0]
    assert slot['eligible'] is False and slot['bar_mib'] == 128 * GIB + 34
    assert slot['reasons'] == [address_space_problem(252928, 128 * GIB + 34, 40)]
    os.unlink(os.path.join(sys_root, 'bus/pci/devices/0000:1c:00.0/resource'))
    slot = Discovery('hgx', sys_root, proc_root).run()['slots'][0]
    assert slot['bar_mib'] is None and 'the size of its BARs cannot be known' in slot['reasons'][0]
