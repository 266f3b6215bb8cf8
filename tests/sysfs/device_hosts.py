# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small hosts for the device modules' tests and benchmark (beside the sample hosts of hosts.py).

* ``gpu_box``: one GPU with ``functions`` functions in one IOMMU group (an 8-function
  device is the worst case vfio_bind meets), a free NVMe (with SR-IOV, as the kernel
  lab's QEMU NVMe has), an Ethernet PF with SR-IOV
  (``total_vfs`` VFs, its interface up without addresses) and an InfiniBand PF with an
  IPoIB interface.
* ``no_iommu``: the same GPU on a host booted without the IOMMU.

Each ``build_*`` takes a directory and returns ``(sysfs_root, proc_root)``.
"""

from __future__ import annotations

import os

from .builder import SysfsBuilder

GEN5 = ('32.0 GT/s PCIe', 16)
# Classes of the extra functions of a multi-function GPU: HDMI audio, USB-C (xHCI), UCSI
# serial bus, then more audio/serial functions up to eight.
EXTRA_FUNCTIONS = [(0x040300, '22ba', 'snd_hda_intel'), (0x0c0330, '1ad8', 'xhci_hcd'),
                   (0x0c8000, '1ad9', 'nvidia-gpu'), (0x040300, '22bb', 'snd_hda_intel'),
                   (0x0c8000, '1ada', None), (0x040300, '22bc', None), (0x0c8000, '1adb', None)]


def _dirs(base):
    return os.path.join(base, 'sys'), os.path.join(base, 'proc')


def _gpu(b, root, functions, reset_method='flr'):
    b.bridge('0000:00:01.0', root, device='a70d')
    b.device('0000:1b:00.0', '0000:00:01.0', 0x030200, '10de', '2330', '10de', '16c1',
             driver='nvidia', link=GEN5, reset_method=reset_method)
    for index, (pci_class, device, driver) in enumerate(EXTRA_FUNCTIONS[:functions - 1], 1):
        b.device('0000:1b:00.%d' % index, '0000:00:01.0', pci_class, '10de', device, '10de',
                 '16c1', driver=driver, link=GEN5)


def build_gpu_box(base, functions=2, total_vfs=64):
    sys_root, proc_root = _dirs(base)
    b = SysfsBuilder(sys_root, proc_root=proc_root)
    b.numa_nodes({0: '0-31'})
    root = b.pci_root('0000:00', numa_node=0)
    b.device('0000:00:00.0', root, 0x060000, '8086', '09a2', reset_method=None, link=None)
    _gpu(b, root, functions)
    b.bridge('0000:00:02.0', root)
    b.device('0000:1c:00.0', '0000:00:02.0', 0x010802, '144d', 'a824', driver='nvme',
             sriov={'total': 4, 'offset': 1, 'stride': 1})
    b.nvme('0000:1c:00.0', 'nvme2')
    b.bridge('0000:00:03.0', root)
    b.device('0000:3b:00.0', '0000:00:03.0', 0x020000, '15b3', '101d', driver='mlx5_core',
             link=GEN5, sriov={'total': total_vfs, 'offset': 1, 'stride': 1,
                               'vf_device': '101e'})
    b.netdev('0000:3b:00.0', 'enp59s0f0np0', operstate='up', mac='b8:3f:d2:00:10:00')
    b.bridge('0000:00:04.0', root)
    b.device('0000:5e:00.0', '0000:00:04.0', 0x020700, '15b3', '1021', driver='mlx5_core',
             link=GEN5, sriov={'total': 16, 'offset': 1, 'stride': 1, 'vf_device': '101e'})
    b.infiniband('0000:5e:00.0', 'mlx5_0')
    b.netdev('0000:5e:00.0', 'ibp94s0', operstate='up')
    return sys_root, proc_root


def build_no_iommu(base):
    sys_root, proc_root = _dirs(base)
    b = SysfsBuilder(sys_root, iommu=False, proc_root=proc_root)
    b.numa_nodes({0: '0-7'})
    root = b.pci_root('0000:00', numa_node=0)
    _gpu(b, root, 2)
    return sys_root, proc_root


HOSTS = {'gpu_box': build_gpu_box, 'no_iommu': build_no_iommu}
