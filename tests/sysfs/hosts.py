# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sample hosts as sysfs trees: the fixtures of the unit tests, the lab and the benchmarks.

Each ``build_*`` function takes a directory, creates ``sys/`` (and ``proc/``) under
it and returns ``(sysfs_root, proc_root)``.

* ``hgx``: a two-socket 8-GPU server. Four PCIe switches, each with two H100 SXM
  GPUs, two ConnectX-7 InfiniBand PFs (SR-IOV) and two NVMe drives; four
  NVSwitches (NVIDIA vendor, bridge class 0x0680: not GPUs); an ASPEED BMC VGA
  console; a SATA controller and a boot NVMe holding the root filesystem on LVM.
  56 cores of two threads per socket (CPU c and c + 112 are one core), about 1 TiB a node.
* ``workstation``: one NUMA node that the kernel reports as -1 everywhere; an
  Intel iGPU driving the console (boot_vga = 1); an RTX 4090 with its HDMI audio
  function; an RTX 3090 behind a chipset port without ACS, sharing its IOMMU
  group with the SATA controller; one free NVMe, a boot NVMe and one SR-IOV
  Ethernet PF. 16 cores of two threads (CPU c and c + 16), about 128 GiB.
* ``h100_guest``: the real H100 passthrough guest captured in
  ``tests/fixtures/real/h100-passthrough-guest`` (no IOMMU, virtio devices).
* ``pcie8``: a two-socket PCIe server with 8 GPUs (L40S, a common inference box): each GPU
  behind a root port of its own, with an NVMe drive on the same PCIe root complex; one
  ConnectX-7 InfiniBand PF per socket (SR-IOV, 16 VFs) on a root complex of its own, so the
  four GPUs of a socket share it by NUMA node. 32 cores of two threads per socket (CPU c and
  c + 64 are one core), 512 GiB a node; a boot NVMe on the chipset.
* ``segment1``: a host whose GPU, NVMe and fabric PF live on PCI segment 0001; its
  kernel shows no ``thread_siblings_list``, so each of its 8 CPUs is a core.
"""

from __future__ import annotations

import os
import re

from .builder import SysfsBuilder, _symlink, _write

GEN5 = ('32.0 GT/s PCIe', 16)
GEN4 = ('16.0 GT/s PCIe', 16)

# Copied into the repository from the project's shared/fixtures/real, so a clone anywhere runs.
REAL_FIXTURES = os.environ.get('GPUAAS_REAL_FIXTURES') or os.path.normpath(
    os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'real'))


def _dirs(base):
    sys_root, proc_root = os.path.join(base, 'sys'), os.path.join(base, 'proc')
    return sys_root, proc_root


def build_hgx(base, vfs_per_pf=0, pfs_per_switch=2):
    """The two-socket 8-GPU server (see the module docstring)."""
    sys_root, proc_root = _dirs(base)
    b = SysfsBuilder(sys_root, proc_root=proc_root)
    b.numa_nodes({0: '0-55,112-167', 1: '56-111,168-223'}, smt=112, mem_total_kib=1056348672)

    # Chipset root complex on socket 0: SATA, BMC console, boot NVMe.
    r0 = b.pci_root('0000:00', numa_node=0)
    b.device('0000:00:00.0', r0, 0x060000, '8086', '09a2', reset_method=None, link=None)
    b.device('0000:00:17.0', r0, 0x010601, '8086', 'a182', driver='ahci', link=None)
    b.bridge('0000:00:1c.0', r0, device='a190')
    b.device('0000:03:00.0', '0000:00:1c.0', 0x030000, '1a03', '2000', driver='ast',
             boot_vga=True, reset_method=None, link=('5.0 GT/s PCIe', 1))
    b.bridge('0000:00:1d.0', r0, device='a198')
    b.device('0000:04:00.0', '0000:00:1d.0', 0x010802, '144d', 'a80a', driver='nvme',
             link=GEN4)
    b.nvme('0000:04:00.0', 'nvme8', namespaces=['nvme8n1'],
           partitions={'nvme8n1': ['nvme8n1p1', 'nvme8n1p2']},
           holders={'nvme8n1p2': [('dm-0', 'vg0-root')]})
    b.mounts(['/dev/mapper/vg0-root / ext4 rw,relatime 0 0',
              '/dev/nvme8n1p1 /boot/efi vfat rw 0 0',
              'proc /proc proc rw 0 0'])

    # Four PCIe switches: root port -> switch upstream -> downstream ports.
    switches = [('0000:15', 0, 0x16), ('0000:37', 0, 0x38), ('0000:97', 1, 0x98),
                ('0000:b7', 1, 0xb8)]
    gpu_no = nvme_no = ib_no = 0
    for root_bus, node, up_bus in switches:
        root = b.pci_root(root_bus, numa_node=node)
        domain, bus = root_bus.split(':')
        rp = '%s:%s:01.0' % (domain, bus)
        b.bridge(rp, root, device='352a')
        up = '%s:%02x:00.0' % (domain, up_bus)
        b.bridge(up, rp, vendor='1000', device='c030')
        down_bus = up_bus + 1
        endpoints = (['gpu', 'gpu'] + ['ib'] * pfs_per_switch + ['nvme', 'nvme'])
        for port, kind in enumerate(endpoints):
            dp = '%s:%02x:%02x.0' % (domain, down_bus, port)
            b.bridge(dp, up, vendor='1000', device='c030')
            ep = '%s:%02x:00.0' % (domain, down_bus + 1 + port)
            if kind == 'gpu':
                b.device(ep, dp, 0x030200, '10de', '2330', '10de', '16c1', driver='nvidia',
                         reset_method='bus', link=GEN5, serial='1652%09d' % gpu_no)
                gpu_no += 1
            elif kind == 'ib':
                b.device(ep, dp, 0x020700, '15b3', '1021', '15b3', '0041', driver='mlx5_core',
                         link=GEN5, sriov={'total': 64 if vfs_per_pf else 16, 'offset': 1,
                                           'stride': 1, 'vf_device': '101e'})
                b.infiniband(ep, 'mlx5_%d' % ib_no)
                ib_no += 1
            else:
                b.device(ep, dp, 0x010802, '144d', 'a824', driver='nvme', link=GEN4)
                b.nvme(ep, 'nvme%d' % nvme_no)
                nvme_no += 1
        if vfs_per_pf:
            for port, kind in enumerate(endpoints):
                if kind == 'ib':
                    b.vfs('%s:%02x:00.0' % (domain, down_bus + 1 + port), vfs_per_pf,
                          driver='mlx5_core')

    # NVSwitches: NVIDIA, but bridge class (0x0680), each in its own group.
    root = b.pci_root('0000:5d', numa_node=0)
    b.bridge('0000:5d:01.0', root)
    b.bridge('0000:5e:00.0', '0000:5d:01.0', vendor='1000', device='c030')
    for index in range(4):
        b.bridge('0000:5f:%02x.0' % index, '0000:5e:00.0', vendor='1000', device='c030')
        b.device('0000:%02x:00.0' % (0x60 + index), '0000:5f:%02x.0' % index, 0x068000,
                 '10de', '22a3', driver='nvidia-nvswitch', link=GEN5)
    return sys_root, proc_root


def build_workstation(base):
    """The single-socket workstation (see the module docstring)."""
    sys_root, proc_root = _dirs(base)
    b = SysfsBuilder(sys_root, proc_root=proc_root)
    b.numa_nodes({0: '0-31'}, smt=16, mem_total_kib=131631104)
    r0 = b.pci_root('0000:00', numa_node=-1)
    b.device('0000:00:00.0', r0, 0x060000, '8086', 'a700', reset_method=None, link=None)
    b.device('0000:00:02.0', r0, 0x030000, '8086', 'a780', driver='i915', boot_vga=True,
             link=None)
    os.makedirs(os.path.join(b.dirs['0000:00:02.0'], 'graphics', 'fb0'))
    # x16 slot from the CPU: RTX 4090 + its HDMI audio function (one group).
    b.bridge('0000:00:01.0', r0, device='a70d')
    b.device('0000:01:00.0', '0000:00:01.0', 0x030000, '10de', '2684', '1043', '889d',
             driver='nvidia', boot_vga=False, link=GEN4)
    b.device('0000:01:00.1', '0000:00:01.0', 0x040300, '10de', '22ba', '1043', '889d',
             driver='snd_hda_intel', link=GEN4)
    # Chipset: no ACS, so the port, the SATA controller and the card behind it share a group.
    pch = b.new_group()
    b.device('0000:00:17.0', r0, 0x010601, '8086', '7a62', driver='ahci', group=pch,
             link=None)
    b.bridge('0000:00:1c.4', r0, device='7a3c', group=pch)
    b.device('0000:05:00.0', '0000:00:1c.4', 0x030000, '10de', '2204', driver='nvidia',
             boot_vga=False, group=pch, link=('8.0 GT/s PCIe', 4), max_link=GEN4)
    # NVMe drives on CPU lanes: one free, one holding the root filesystem.
    b.bridge('0000:00:06.0', r0, device='a74d')
    b.device('0000:02:00.0', '0000:00:06.0', 0x010802, '144d', 'a80c', driver='nvme',
             link=GEN4)
    b.nvme('0000:02:00.0', 'nvme1')
    b.bridge('0000:00:1d.0', r0, device='7a36')
    b.device('0000:06:00.0', '0000:00:1d.0', 0x010802, '144d', 'a80a', driver='nvme',
             link=GEN4)
    b.nvme('0000:06:00.0', 'nvme0', partitions={'nvme0n1': ['nvme0n1p1', 'nvme0n1p2']})
    b.mounts(['/dev/nvme0n1p2 / ext4 rw 0 0', '/dev/nvme0n1p1 /boot/efi vfat rw 0 0'])
    # One SR-IOV Ethernet PF (ConnectX-6 Dx) on a CPU port.
    b.bridge('0000:00:06.2', r0, device='a74d')
    b.device('0000:03:00.0', '0000:00:06.2', 0x020000, '15b3', '101d', driver='mlx5_core',
             link=GEN4, sriov={'total': 8, 'offset': 2, 'stride': 1, 'vf_device': '101e'})
    b.netdev('0000:03:00.0', 'enp3s0f0np0', operstate='up')
    # A plain NIC without SR-IOV: never a fabric PF.
    b.bridge('0000:00:1c.2', r0, device='7a3a')
    b.device('0000:04:00.0', '0000:00:1c.2', 0x020000, '8086', '125c', driver='igc',
             link=('5.0 GT/s PCIe', 1))
    b.netdev('0000:04:00.0', 'enp4s0', operstate='up')
    return sys_root, proc_root


def build_segment1(base):
    """A host whose slot devices sit on PCI segment 0001 (and a console on 0000)."""
    sys_root, proc_root = _dirs(base)
    b = SysfsBuilder(sys_root, proc_root=proc_root)
    b.numa_nodes({0: '0-7'})
    r0 = b.pci_root('0000:00', numa_node=0)
    b.device('0000:00:00.0', r0, 0x060000, '8086', '1237', reset_method=None, link=None)
    r1 = b.pci_root('0001:00', numa_node=0)
    b.bridge('0001:00:02.0', r1)
    b.device('0001:01:00.0', '0001:00:02.0', 0x030200, '10de', '20b5', '10de', '1533',
             driver='vfio-pci', link=GEN4)
    b.bridge('0001:00:03.0', r1)
    b.device('0001:02:00.0', '0001:00:03.0', 0x010802, '8086', '0b60', driver='nvme', link=GEN4)
    b.nvme('0001:02:00.0', 'nvme0')
    b.bridge('0001:00:04.0', r1)
    b.device('0001:03:00.0', '0001:00:04.0', 0x020700, '15b3', '101b', driver='mlx5_core',
             link=GEN4, sriov={'total': 4, 'offset': 8, 'stride': 1})
    return sys_root, proc_root


# pcie8: each socket's PCIe root complexes (root bus numbers); the last one holds the fabric PF.
PCIE8_ROOTS = {0: ('0000:15', '0000:2a', '0000:3f', '0000:54', '0000:69'),
               1: ('0000:80', '0000:95', '0000:aa', '0000:bf', '0000:d4')}


def build_pcie8(base, totalvfs=16):
    """The two-socket PCIe 8-GPU server with one fabric PF per socket (see the module docstring)."""
    sys_root, proc_root = _dirs(base)
    b = SysfsBuilder(sys_root, proc_root=proc_root)
    b.numa_nodes({0: '0-31,64-95', 1: '32-63,96-127'}, smt=64,
                 mem_total_kib={0: 527958332, 1: 528445184})
    r0 = b.pci_root('0000:00', numa_node=0)
    b.device('0000:00:00.0', r0, 0x060000, '8086', '09a2', reset_method=None, link=None)
    b.bridge('0000:00:1c.0', r0, device='a190')
    b.device('0000:02:00.0', '0000:00:1c.0', 0x030000, '1a03', '2000', driver='ast',
             boot_vga=True, reset_method=None, link=('5.0 GT/s PCIe', 1))
    b.bridge('0000:00:1d.0', r0, device='a198')
    b.device('0000:03:00.0', '0000:00:1d.0', 0x010802, '144d', 'a80a', driver='nvme', link=GEN4)
    b.nvme('0000:03:00.0', 'nvme8', partitions={'nvme8n1': ['nvme8n1p1', 'nvme8n1p2']})
    b.mounts(['/dev/nvme8n1p2 / ext4 rw,relatime 0 0', '/dev/nvme8n1p1 /boot/efi vfat rw 0 0'])
    gpu_no = 0
    for node, roots in sorted(PCIE8_ROOTS.items()):
        for number, root_bus in enumerate(roots):
            root = b.pci_root(root_bus, numa_node=node)
            domain, bus = root_bus.split(':')
            bus = int(bus, 16)
            if number == len(roots) - 1:
                # The socket's fabric PF, on a root complex of its own.
                b.bridge('%s:%02x:01.0' % (domain, bus), root, device='347a')
                pf = '%s:%02x:00.0' % (domain, bus + 1)
                b.device(pf, '%s:%02x:01.0' % (domain, bus), 0x020700, '15b3', '1021', '15b3', '0041',
                         driver='mlx5_core', link=GEN5,
                         sriov={'total': totalvfs, 'offset': 1, 'stride': 1, 'vf_device': '101e'})
                b.infiniband(pf, 'mlx5_%d' % node)
                continue
            # A GPU behind root port 01.0, its NVMe drive behind root port 03.0.
            b.bridge('%s:%02x:01.0' % (domain, bus), root, device='347a')
            b.device('%s:%02x:00.0' % (domain, bus + 1), '%s:%02x:01.0' % (domain, bus), 0x030200,
                     '10de', '26b9', '10de', '1851', driver='nvidia', reset_method='bus', link=GEN4,
                     serial='1322%09d' % gpu_no)
            b.bridge('%s:%02x:03.0' % (domain, bus), root, device='347c')
            b.device('%s:%02x:00.0' % (domain, bus + 2), '%s:%02x:03.0' % (domain, bus), 0x010802,
                     '144d', 'a824', driver='nvme', link=GEN4)
            b.nvme('%s:%02x:00.0' % (domain, bus + 2), 'nvme%d' % gpu_no)
            gpu_no += 1
    return sys_root, proc_root


def _parse_pci_attrs(path):
    rows = []
    with open(path) as handle:
        for line in handle:
            fields = line.split()
            if not fields:
                continue
            row = {'address': os.path.basename(fields[0])}
            for field in fields[1:]:
                key, _sep, value = field.partition('=')
                row[key] = value
            rows.append(row)
    return rows


def _parse_attrs(path):
    attrs = {}
    with open(path) as handle:
        for line in handle:
            name, sep, value = line.rstrip('\n').partition(': ')
            if not sep or value.startswith('<binary') or value.startswith('cat:'):
                continue
            attrs[name] = '\n'.join(v for v in value.split('|') if v)
    return attrs


def build_h100_guest(base, fixture_dir=None):
    """The captured H100 passthrough guest: every PCI function as the guest kernel saw it."""
    fixture_dir = fixture_dir or os.path.join(REAL_FIXTURES, 'h100-passthrough-guest')
    sys_root, proc_root = _dirs(base)
    b = SysfsBuilder(sys_root, iommu=False, proc_root=proc_root)
    with open(os.path.join(fixture_dir, 'devpath.txt')) as handle:
        devpath = handle.read().strip()
    gpu_address = os.path.basename(devpath)
    root = b.pci_root(re.match(r'/sys/devices/pci(\S+?)/', devpath).group(1))
    gpu_attrs = _parse_attrs(os.path.join(fixture_dir, 'gpu-attrs.txt'))
    for row in _parse_pci_attrs(os.path.join(fixture_dir, 'pci-attrs.txt')):
        driver = os.path.basename(row['drv']) if row.get('drv') else None
        b.device(row['address'], root, int(row['class'], 16), row['vendor'][2:],
                 row['device'][2:], driver=driver, numa_node=int(row['numa']),
                 reset_method=None, link=None)
    gpu_dir = b.dirs[gpu_address]
    for name, value in gpu_attrs.items():
        if name in ('driver_override',) or os.path.islink(os.path.join(gpu_dir, name)):
            continue
        _write(os.path.join(gpu_dir, name), value + '\n')
    # gpu-attrs.txt cut the resource file's last line short: gpu-resource.txt is the whole file.
    with open(os.path.join(fixture_dir, 'gpu-resource.txt')) as handle:
        _write(os.path.join(gpu_dir, 'resource'), handle.read())
    b.numa_nodes({0: gpu_attrs['local_cpulist']})
    _symlink(os.path.join(sys_root, 'bus/pci/drivers/nvidia'), os.path.join(gpu_dir, 'driver'))
    return sys_root, proc_root


HOSTS = {
    'hgx': build_hgx,
    'workstation': build_workstation,
    'h100_guest': build_h100_guest,
    'segment1': build_segment1,
    'pcie8': build_pcie8,
}


def main(argv=None):
    """``python -m tests.sysfs.hosts NAME DIR``: build sample host NAME under DIR (made anew)."""
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument('name', choices=sorted(HOSTS))
    parser.add_argument('directory')
    args = parser.parse_args(argv)
    shutil.rmtree(args.directory, ignore_errors=True)
    sys_root, proc_root = HOSTS[args.name](args.directory)
    print('sysfs_root=%s proc_root=%s' % (sys_root, proc_root))


if __name__ == '__main__':
    main()
