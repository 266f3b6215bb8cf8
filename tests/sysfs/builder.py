# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build sysfs trees laid out the way the Linux kernel lays out /sys.

A tree built here has what the collection reads on a real host:

* ``devices/pciDDDD:BB/<bridge>/<device>`` directories, one per PCI function,
  nested below the bridges above them, with the kernel's attribute files
  (``class``, ``vendor``, ``numa_node``, ``sriov_*``, ...);
* ``bus/pci/devices/<BDF>`` symlinks into that hierarchy;
* ``bus/pci/drivers/<name>/<BDF>`` and the device's ``driver`` link;
* ``kernel/iommu_groups/<N>/devices/<BDF>`` and the device's ``iommu_group``
  link (only when the host's IOMMU is on);
* ``devices/system/node/nodeN/cpulist`` and ``meminfo``, ``devices/system/cpu/online`` and
  ``devices/system/cpu/cpuN/topology/thread_siblings_list``;
* ``class/net``, ``class/infiniband``, ``class/nvme`` and ``class/block``
  links to the devices' own ``net/``, ``infiniband/``, ``nvme/`` directories;
* optionally a ``proc`` directory beside it with ``mounts``, ``swaps`` and ``cpuinfo``;
* each function's ``resource`` file (its BARs: start, end and flags, see :func:`default_bars`).

Links are relative, as the kernel's are, so a tree can be moved or copied.
"""

from __future__ import annotations

import os
import re
import shutil

# include/linux/ioport.h flags as a BAR's line of ``resource`` carries them.
MEM32 = 0x00040200            # IORESOURCE_MEM | IORESOURCE_SIZEALIGN
MEM64 = MEM32 | 0x00100000    # ... | IORESOURCE_MEM_64
MEM64_PREF = MEM64 | 0x00002000 | 0x0000000c  # ... | IORESOURCE_PREFETCH and the BAR's low bits
IO = 0x00040101               # IORESOURCE_IO | IORESOURCE_SIZEALIGN
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
# The kernel's resource file: 6 BARs, the ROM, 6 SR-IOV VF BARs (CONFIG_PCI_IOV, as on Debian's
# kernels), and for a bridge its 4 windows.
RESOURCE_LINES, BRIDGE_RESOURCE_LINES = 13, 17


def default_bars(pci_class, vendor, device, sriov=None):
    """[(line, size, flags)]: the BARs a function of this kind has on a host (lspci -vv of real ones).

    A data-centre NVIDIA GPU (3D controller, H100/A100): BAR0 16 MiB 32-bit, BAR1 128 GiB and
    BAR3 32 MiB 64-bit prefetchable; a VGA one (RTX) BAR1 256 MiB. NVMe: BAR0 16 KiB 64-bit.
    A ConnectX PF: BAR0 32 MiB 64-bit prefetchable, its VF BAR0 (line 7) 1 MiB a VF for all
    sriov_totalvfs. Anything else: one 32-bit BAR of 64 KiB. Bridges have none.
    """
    if pci_class >> 16 == 0x06:
        return []
    if vendor == '10de' and pci_class >> 8 in (0x0300, 0x0302):
        bar1 = 128 * GIB if pci_class >> 8 == 0x0302 else 256 * MIB
        return [(0, 16 * MIB, MEM32), (1, bar1, MEM64_PREF), (3, 32 * MIB, MEM64_PREF)]
    if pci_class >> 8 == 0x0108:
        return [(0, 16 * KIB, MEM64)]
    if vendor == '15b3':
        bars = [(0, 32 * MIB, MEM64_PREF)]
        if sriov and sriov.get('total'):
            bars.append((7, MIB * sriov['total'], MEM64_PREF))
        return bars
    return [(0, 64 * KIB, MEM32)]


def resource_text(bars, lines, allocate):
    """The ``resource`` file of ``bars`` [(line, size, flags)]; ``allocate(size, flags)`` gives a start."""
    rows = [(0, 0, 0)] * lines
    for line, size, flags in bars:
        start = allocate(size, flags)
        rows[line] = (start, start + size - 1, flags)
    return ''.join('0x%016x 0x%016x 0x%016x\n' % row for row in rows)


BDF_RE = re.compile(r'^([0-9a-f]{4,8}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$')


def _write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(value)


def _cpus(cpulist):
    cpus = set()
    for part in cpulist.split(','):
        low, _sep, high = part.partition('-')
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _symlink(target, link):
    """A relative symlink at ``link`` pointing to the absolute path ``target``."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


class SysfsBuilder:
    """Create a kernel-shaped sysfs tree under ``root`` (the directory standing for /sys)."""

    def __init__(self, root, iommu=True, proc_root=None):
        self.root = os.path.abspath(root)
        self.iommu = iommu
        self.proc_root = proc_root
        self.dirs = {}          # BDF or root name -> absolute device directory
        self.numa = {}          # BDF or root name -> numa node
        self._next_group = 0
        # Where the next BAR goes: 32-bit ones below 4 GiB, 64-bit ones from 0x200000000000 up.
        self._mmio = {False: 0xa0000000, True: 0x200000000000}
        self._auto_groups = {}  # domain:bus:device -> group of its non-bridge functions
        for rel in ('bus/pci/devices', 'bus/pci/drivers', 'kernel/iommu_groups',
                    'devices/system/node', 'devices/system/cpu', 'class/net',
                    'class/infiniband', 'class/nvme', 'class/block', 'devices/virtual/block'):
            os.makedirs(os.path.join(self.root, rel), exist_ok=True)
        if proc_root:
            os.makedirs(proc_root, exist_ok=True)
            self.mounts([])
            self.swaps([])
            self.cpuinfo()

    # -- host-wide ----------------------------------------------------------

    def numa_nodes(self, nodes, smt=None, mem_total_kib=263842536):
        """``{node: cpulist}``; also writes cpu/online as the union, each node's ``meminfo``
        (``mem_total_kib`` a number for every node, or ``{node: kB}``; None: no meminfo) and, unless
        ``smt`` is None, each CPU's ``topology/thread_siblings_list``: CPU c and c + ``smt`` are the
        two threads of one core where both exist (Intel's numbering), ``smt=0`` one thread a core.
        """
        online = set()
        for node, cpulist in nodes.items():
            _write(os.path.join(self.root, 'devices/system/node/node%d/cpulist' % int(node)),
                   cpulist + '\n')
            online.update(_cpus(cpulist))
            total = mem_total_kib.get(node) if isinstance(mem_total_kib, dict) else mem_total_kib
            if total is not None:
                self.node_meminfo(node, total)
        _write(os.path.join(self.root, 'devices/system/cpu/online'),
               ','.join(nodes.values()) + '\n')
        if smt is not None:
            for cpu in online:
                core = sorted({cpu} | ({cpu + smt, cpu - smt} & online if smt else set()))
                self.thread_siblings(cpu, ','.join(str(c) for c in core))

    def thread_siblings(self, cpu, text):
        _write(os.path.join(self.root, 'devices/system/cpu/cpu%d/topology/thread_siblings_list' % cpu),
               text + '\n')

    def node_meminfo(self, node, mem_total_kib, hugepages=0):
        """``nodeN/meminfo`` in the kernel's format (drivers/base/node.c), the lines the collection reads and a few more."""
        free = mem_total_kib * 9 // 10
        lines = [('MemTotal', mem_total_kib), ('MemFree', free), ('MemUsed', mem_total_kib - free),
                 ('Active', 0), ('Inactive', 0), ('FilePages', 0), ('AnonPages', 0), ('Shmem', 0)]
        text = ''.join('Node %d %-15s %8d kB\n' % (int(node), name + ':', value) for name, value in lines)
        text += ''.join('Node %d %s %5d\n' % (int(node), name, value) for name, value in
                        (('HugePages_Total:', hugepages), ('HugePages_Free: ', hugepages), ('HugePages_Surp: ', 0)))
        _write(os.path.join(self.root, 'devices/system/node/node%d/meminfo' % int(node)), text)

    def hugepages(self, size_kib, total, free, node=None):
        """The kernel's hugepage pool of one size: ``nodeN/hugepages/hugepages-SIZEkB/`` (mm/hugetlb.c's
        per-node attributes), or with ``node`` None the host's, ``kernel/mm/hugepages/hugepages-SIZEkB/``."""
        base = 'kernel/mm/hugepages' if node is None else 'devices/system/node/node%d/hugepages' % int(node)
        pool = os.path.join(self.root, base, 'hugepages-%dkB' % size_kib)
        for name, value in (('nr_hugepages', total), ('free_hugepages', free), ('surplus_hugepages', 0)):
            _write(os.path.join(pool, name), '%d\n' % value)

    def cpuinfo(self, phys_bits=46, cpus=1):
        """``proc/cpuinfo`` with the lines the collection reads ("address sizes"; 46 bits: Sapphire Rapids)."""
        text = ''.join('processor\t: %d\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n'
                       'address sizes\t: %d bits physical, 57 bits virtual\n\n' % (cpu, phys_bits)
                       for cpu in range(cpus))
        _write(os.path.join(self.proc_root, 'cpuinfo'), text)

    def allocate_bar(self, size, flags):
        """A start for a BAR of ``size`` bytes, aligned to its size, as a host's firmware assigns it."""
        wide = bool(flags & 0x00100000)
        start = -(-self._mmio[wide] // size) * size
        self._mmio[wide] = start + size
        return start

    def mounts(self, lines):
        _write(os.path.join(self.proc_root, 'mounts'), ''.join(line + '\n' for line in lines))

    def swaps(self, devices):
        header = 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n'
        _write(os.path.join(self.proc_root, 'swaps'),
               header + ''.join('%s\tpartition\t1048572\t0\t-2\n' % d for d in devices))

    def pci_root(self, domain_bus, numa_node=-1):
        """A PCI host bridge directory 'devices/pciDDDD:BB'; returns its name."""
        name = 'pci' + domain_bus
        path = os.path.join(self.root, 'devices', name)
        os.makedirs(path, exist_ok=True)
        self.dirs[name] = path
        self.numa[name] = numa_node
        return name

    # -- devices ------------------------------------------------------------

    def new_group(self):
        group = str(self._next_group)
        self._next_group += 1
        return group

    def device(self, address, parent, pci_class, vendor, device, subsystem_vendor=None,
               subsystem_device=None, driver=None, group='auto', numa_node=None,
               local_cpulist=None, boot_vga=None, reset_method='flr',
               link=('16.0 GT/s PCIe', 16), max_link=None, sriov=None, serial=None,
               extra=None, bars=None):
        """Add one PCI function below ``parent`` (a root name from :meth:`pci_root` or a BDF).

        ``group='auto'`` puts every non-bridge function of one physical device in
        one IOMMU group and each bridge in its own, as the kernel does behind
        ACS-capable ports; pass a group name to share a group on purpose, or None
        for a device without a group.
        """
        if not BDF_RE.match(address):
            raise ValueError('bad BDF %s' % address)
        path = os.path.join(self.dirs[parent], address)
        os.makedirs(path)
        self.dirs[address] = path
        numa = self.numa[parent] if numa_node is None else numa_node
        self.numa[address] = numa
        attrs = {
            'class': '0x%06x' % pci_class,
            'vendor': '0x%s' % vendor,
            'device': '0x%s' % device,
            'subsystem_vendor': '0x%s' % (subsystem_vendor or vendor),
            'subsystem_device': '0x%s' % (subsystem_device or '0000'),
            'revision': '0xa1',
            'numa_node': str(numa),
            'enable': '1',
            'driver_override': '(null)',
            'power_state': 'D0',
            'irq': '0',
        }
        if local_cpulist is not None:
            attrs['local_cpulist'] = local_cpulist
        if pci_class >> 8 == 0x0300 and boot_vga is not None:
            attrs['boot_vga'] = '1' if boot_vga else '0'
        if reset_method is not None:
            attrs['reset_method'] = reset_method
        if link is not None:
            attrs['current_link_speed'], attrs['current_link_width'] = link[0], str(link[1])
            max_link = max_link or link
            attrs['max_link_speed'], attrs['max_link_width'] = max_link[0], str(max_link[1])
        if serial is not None:
            attrs['serial_number'] = serial
        if sriov is not None:
            attrs.update({
                'sriov_totalvfs': str(sriov.get('total', 0)),
                'sriov_numvfs': '0',
                'sriov_offset': str(sriov.get('offset', 1)),
                'sriov_stride': str(sriov.get('stride', 1)),
                'sriov_vf_device': sriov.get('vf_device', device),
                'sriov_drivers_autoprobe': '1',
            })
        if bars is None:
            bars = default_bars(pci_class, vendor, device, sriov)
        attrs['resource'] = resource_text(bars, BRIDGE_RESOURCE_LINES if pci_class >> 16 == 0x06
                                          else RESOURCE_LINES, self.allocate_bar).rstrip('\n')
        attrs.update(extra or {})
        for name, value in attrs.items():
            if value is not None:
                _write(os.path.join(path, name), value + '\n')
        _symlink(os.path.join(self.root, 'bus/pci'), os.path.join(path, 'subsystem'))
        _symlink(path, os.path.join(self.root, 'bus/pci/devices', address))
        if driver:
            self.bind(address, driver)
        if self.iommu and group is not None:
            if group == 'auto':
                key = address.rsplit('.', 1)[0]
                if pci_class >> 16 == 0x06:
                    group = self.new_group()
                else:
                    group = self._auto_groups.get(key) or self.new_group()
                    self._auto_groups[key] = group
            self.join_group(address, group)
        return path

    def bind(self, address, driver):
        path = self.dirs[address]
        drv = os.path.join(self.root, 'bus/pci/drivers', driver)
        for name in ('bind', 'unbind', 'new_id', 'remove_id'):
            if not os.path.exists(os.path.join(drv, name)):
                _write(os.path.join(drv, name), '')
        _symlink(drv, os.path.join(path, 'driver'))
        _symlink(path, os.path.join(drv, address))

    def join_group(self, address, group):
        group_dir = os.path.join(self.root, 'kernel/iommu_groups', str(group))
        os.makedirs(os.path.join(group_dir, 'devices'), exist_ok=True)
        if not os.path.exists(os.path.join(group_dir, 'type')):
            _write(os.path.join(group_dir, 'type'), 'DMA-FQ\n')
        _symlink(self.dirs[address], os.path.join(group_dir, 'devices', address))
        _symlink(group_dir, os.path.join(self.dirs[address], 'iommu_group'))

    def bridge(self, address, parent, vendor='8086', device='0000', pci_class=0x060400, **kw):
        return self.device(address, parent, pci_class, vendor, device, reset_method=None, **kw)

    def netdev(self, address, ifname, operstate='down', mac='00:00:00:00:00:00'):
        net = os.path.join(self.dirs[address], 'net', ifname)
        _write(os.path.join(net, 'operstate'), operstate + '\n')
        _write(os.path.join(net, 'address'), mac + '\n')
        _symlink(net, os.path.join(self.root, 'class/net', ifname))

    def infiniband(self, address, name):
        ib = os.path.join(self.dirs[address], 'infiniband', name)
        _write(os.path.join(ib, 'node_guid'), '0000:0000:0000:0000\n')
        _symlink(ib, os.path.join(self.root, 'class/infiniband', name))

    def nvme(self, address, ctrl, namespaces=None, partitions=None, holders=None):
        """NVMe controller ``ctrl`` at ``address`` with its namespaces' block devices.

        ``partitions`` maps a namespace to its partition names; ``holders`` maps a
        block device to the virtual block devices (dm-N, mdN) stacked on it, each
        given as ``(name, dm_name)``.
        """
        ctrl_dir = os.path.join(self.dirs[address], 'nvme', ctrl)
        _write(os.path.join(ctrl_dir, 'state'), 'live\n')
        _symlink(ctrl_dir, os.path.join(self.root, 'class/nvme', ctrl))
        for ns in namespaces or [ctrl + 'n1']:
            ns_dir = os.path.join(ctrl_dir, ns)
            _write(os.path.join(ns_dir, 'size'), '7501476528\n')
            os.makedirs(os.path.join(ns_dir, 'holders'), exist_ok=True)
            _symlink(ns_dir, os.path.join(self.root, 'class/block', ns))
            for part in (partitions or {}).get(ns, []):
                part_dir = os.path.join(ns_dir, part)
                _write(os.path.join(part_dir, 'partition'), part.rsplit('p', 1)[-1] + '\n')
                os.makedirs(os.path.join(part_dir, 'holders'), exist_ok=True)
                _symlink(part_dir, os.path.join(self.root, 'class/block', part))
        for block, stacked in (holders or {}).items():
            block_dir = os.path.realpath(os.path.join(self.root, 'class/block', block))
            for name, dm_name in stacked:
                virt = os.path.join(self.root, 'devices/virtual/block', name)
                if dm_name:
                    _write(os.path.join(virt, 'dm/name'), dm_name + '\n')
                os.makedirs(os.path.join(virt, 'slaves'), exist_ok=True)
                os.makedirs(os.path.join(virt, 'holders'), exist_ok=True)
                _symlink(virt, os.path.join(self.root, 'class/block', name))
                _symlink(virt, os.path.join(block_dir, 'holders', name))
                _symlink(block_dir, os.path.join(virt, 'slaves', block))

    def vfs(self, pf, count, driver=None, pci_class=None):
        """Create ``count`` VFs of ``pf`` as the kernel does when sriov_numvfs is written."""
        pf_dir = self.dirs[pf]

        def read(name):
            with open(os.path.join(pf_dir, name)) as handle:
                return handle.read().strip()

        offset, stride = int(read('sriov_offset')), int(read('sriov_stride'))
        total = int(read('sriov_totalvfs'))
        # Each VF's BARs are its share of the PF's VF BARs (resource lines 7-12), in VF order.
        vf_bars = []
        for line, row in enumerate(read('resource').splitlines()[7:13]):
            start, end, flags = (int(x, 16) for x in row.split())
            if end > start:
                vf_bars.append((line, start, (end - start + 1) // total, flags))
        domain, bus, dev, fn = (int(x, 16) for x in BDF_RE.match(pf).groups())
        rid = bus << 8 | dev << 3 | fn
        created = []
        for index in range(count):
            vf_rid = rid + offset + stride * index
            vf = '%04x:%02x:%02x.%x' % (domain, vf_rid >> 8, (vf_rid >> 3) & 0x1f, vf_rid & 7)
            parent = os.path.dirname(pf_dir)
            key = [k for k, v in self.dirs.items() if v == parent][0]
            # Each VF gets an IOMMU group of its own, as the kernel gives it.
            self.device(vf, key, pci_class or int(read('class'), 16), read('vendor')[2:],
                        read('sriov_vf_device'), driver=driver, reset_method='flr',
                        group=self.new_group() if self.iommu else None,
                        bars=[(line, size, flags) for line, _start, size, flags in vf_bars])
            rows = [(0, 0, 0)] * RESOURCE_LINES
            for line, start, size, flags in vf_bars:
                rows[line] = (start + size * index, start + size * (index + 1) - 1, flags)
            _write(os.path.join(self.dirs[vf], 'resource'), ''.join('0x%016x 0x%016x 0x%016x\n' % r for r in rows))
            _symlink(pf_dir, os.path.join(self.dirs[vf], 'physfn'))
            _symlink(self.dirs[vf], os.path.join(pf_dir, 'virtfn%d' % index))
            created.append(vf)
        _write(os.path.join(pf_dir, 'sriov_numvfs'), '%d\n' % count)
        return created


def remove_device(root, address):
    """Take PCI function ``address`` off the bus as the kernel does (``pci_stop_and_remove_bus_device``).

    What sysfs shows of a GPU that fell off the bus (Xid 79) once it is removed: its directory
    goes, with its ``bus/pci/devices``, driver and IOMMU group links; a group left empty goes too.
    The bridges above it stay.
    """
    link = os.path.join(root, 'bus/pci/devices', address)
    path = os.path.realpath(link)
    group = os.path.join(path, 'iommu_group')
    if os.path.islink(group):
        group_dir = os.path.realpath(group)
        os.unlink(os.path.join(group_dir, 'devices', address))
        if not os.listdir(os.path.join(group_dir, 'devices')):
            shutil.rmtree(group_dir)
    driver = os.path.join(path, 'driver')
    if os.path.islink(driver):
        os.unlink(os.path.join(os.path.realpath(driver), address))
    os.unlink(link)
    shutil.rmtree(path)


def replace_card(root, address, device, subsystem_device, serial):
    """Another card at ``address``: the same slot of the same board, a different model and serial (what
    sysfs shows after the card was swapped and the host rebooted)."""
    path = os.path.realpath(os.path.join(root, 'bus/pci/devices', address))
    for name, value in (('device', '0x' + device), ('subsystem_device', '0x' + subsystem_device),
                        ('serial_number', serial)):
        _write(os.path.join(path, name), value + '\n')
