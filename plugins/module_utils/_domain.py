# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the slot VM's libvirt domain XML, built and read back.

Nothing here talks to libvirt or touches the host: :class:`DomainSpec` validates what a
slot's domain is made of, :func:`build_xml` turns it into domain XML with
``xml.etree`` (never string templating, so every value is escaped), and
:func:`domain_facts` reads the parts the collection owns back out of any domain XML
(ours, or libvirt's normalised copy), so the two can be compared.

The domain name and the tap device name derive from the slot id only; tenant input
never names anything on the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import xml.etree.ElementTree as ET

from ansible_collections.gpuaas.slice.plugins.module_utils._files import has_control_chars
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import (
    PciError,
    bdf_key,
    bdf_parts,
    format_bdf,
    parse_bdf,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    CPULIST, IFNAME, LIMITS, MACHINE_TYPE, MAX_PHYS_BITS, MIN_PHYS_BITS, ContractError, Slot, format_cpulist,
    parse_cpulist, show)

METADATA_NS = 'https://gpuaas.invalid/xmlns/slot/1'
ET.register_namespace('gpuaas', METADATA_NS)
QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0'
ET.register_namespace('qemu', QEMU_NS)

DOMAIN_TYPES = ('kvm', 'qemu')
BRIDGE_TYPES = ('openvswitch', 'linux', 'ethernet')
DISK_FORMATS = ('raw', 'qcow2')
HOSTDEV_ROLES = ('gpu', 'companion', 'nvme', 'fabric_vf')
# UEFI (OVMF, secure boot off, as the seed platform boots) or SeaBIOS.
FIRMWARES = ('uefi', 'bios')
# The lab's stand-in for a GPU's large BAR: QEMU's pci-testdev with a 64-bit prefetchable
# BAR 2 of this many GiB (a power of two), behind a PCIe root port of its own. Labs only.
STANDIN_BAR_GIB = (1, 1024)
NVRAM_DIR = '/var/lib/gpuaas/nvram'
STANDIN_PORT = 'gpuaas-standin-port'
STANDIN_ARGS = ('-device', 'pcie-root-port,id=%s,bus=pcie.0,addr=0x1e,chassis=200' % STANDIN_PORT,
                '-device', 'pci-testdev,bus=%s,membar=%%dG,id=gpuaas-standin' % STANDIN_PORT)

# The largest values a domain may ask for: the contract's shape limits, 16 GiB huge pages.
MAX_MEMORY_MIB = LIMITS['memory_mib'][1]
MAX_VCPUS = LIMITS['vcpus'][1]
MAX_HUGEPAGE_KIB = 16 * 1024 * 1024

# The virtio-serial port qemu-guest-agent opens (its udev rule starts the service on it).
GUEST_AGENT_CHANNEL = 'org.qemu.guest_agent.0'

ALIAS_RE = re.compile(r'ua-(gpu|companion|nvme|fabric-vf)([0-9]+)')


class DomainError(ContractError):
    """A slot domain that cannot be built as asked; the message says which value and why."""


def slot_hostdevs(gpu_address=None, companions=None, nvme_address=None, fabric_vf_address=None):
    """[(role, address)] of a slot's passthrough devices, validated, in a stable order.

    Every address must be a full PCI address (any PCI domain, 0001 included) and appear
    once: a device listed twice would be handed to the VM twice.
    """
    wanted = []
    if gpu_address:
        wanted.append(('gpu', gpu_address))
    for companion in companions or []:
        wanted.append(('companion', companion))
    if nvme_address:
        wanted.append(('nvme', nvme_address))
    if fabric_vf_address:
        wanted.append(('fabric_vf', fabric_vf_address))
    result, seen = [], {}
    for role, address in wanted:
        try:
            canonical = parse_bdf(address)
        except PciError as exc:
            raise DomainError('%s address: %s' % (role, exc))
        if canonical in seen:
            raise DomainError('%s is listed twice (as %s and as %s): a device goes to the VM once'
                              % (canonical, seen[canonical], role))
        seen[canonical] = role
        result.append((role, canonical))
    if companions and not gpu_address:
        raise DomainError('companions were given without gpu_address: they move with a GPU')
    return result


def _text(value, what, required=False):
    if value is None:
        if required:
            raise DomainError('%s is required' % what)
        return None
    if not isinstance(value, str) or has_control_chars(value):
        raise DomainError('%s %r contains control characters or is not text' % (what, value))
    return value


def _path(value, what):
    value = _text(value, what)
    if value is not None and (not value.startswith('/') or '..' in value.split('/')):
        raise DomainError("%s %r must be an absolute path without '..'" % (what, value))
    return value


class DomainSpec:
    """Everything a slot's domain is made of, validated on construction."""

    def __init__(self, slot_id, memory_mib, cpulist, vcpus=None, domain_type='kvm',
                 machine='q35', numa_node=None, hugepages=False, hugepage_size_kib=None,
                 hostdevs=(), bridge='br-gpuaas', bridge_type='openvswitch', disk=None,
                 disk_format='raw', disk_is_block=False, seed=None, kernel=None, initrd=None,
                 cmdline=None, console_log=None, host_cpulist=None, firmware='uefi', nvram=None,
                 phys_bits=None, standin_bar_gib=None):
        slot = Slot.parse(slot_id)
        self.slot_id = slot.slot_id
        self.slot_index = slot.index
        self.name, self.mac, self.tap = slot.domain, slot.mac, slot.tap
        if domain_type not in DOMAIN_TYPES:
            raise DomainError('domain_type must be one of %s, not %r' % (', '.join(DOMAIN_TYPES), domain_type))
        self.domain_type = domain_type
        self.machine = MACHINE_TYPE.check(machine, 'machine')
        if isinstance(memory_mib, bool) or not isinstance(memory_mib, int) or not 64 <= memory_mib <= MAX_MEMORY_MIB:
            raise DomainError('memory_mib must be a whole number of MiB, at least 64 and at most %d, not %s'
                              % (MAX_MEMORY_MIB, show(memory_mib)))
        self.memory_kib = memory_mib * 1024
        self.cpus = parse_cpulist(cpulist)
        if vcpus is None:
            vcpus = len(self.cpus)
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
            raise DomainError('vcpus must be a positive whole number, at most %d, not %s' % (MAX_VCPUS, show(vcpus)))
        if vcpus > len(self.cpus):
            raise DomainError('vcpus %d is more than the %d CPUs of the slot cpulist %s: each vCPU '
                              'is pinned to a CPU of its own' % (vcpus, len(self.cpus), cpulist))
        self.vcpus = vcpus
        # The emulator (and I/O) threads run on the host's CPUs where given, never on a vCPU's.
        self.emulator_cpus = self.cpus
        if host_cpulist is not None:
            self.emulator_cpus = parse_cpulist(CPULIST.check(host_cpulist, 'host_cpulist'), 'host_cpulist')
            shared = set(self.emulator_cpus) & set(self.cpus)
            if shared:
                raise DomainError('host_cpulist %s shares CPUs %s with the slot cpulist %s: the emulator threads '
                                  "would run on the vCPUs' CPUs" % (show(host_cpulist), format_cpulist(shared),
                                                                    format_cpulist(self.cpus)))
        if numa_node is not None and (isinstance(numa_node, bool) or not isinstance(numa_node, int)
                                      or not 0 <= numa_node < 1024):
            raise DomainError('numa_node must be a NUMA node number, not %r' % (numa_node,))
        self.numa_node = numa_node
        self.hugepages = bool(hugepages)
        if hugepage_size_kib is not None and (not self.hugepages or isinstance(hugepage_size_kib, bool)
                                              or not isinstance(hugepage_size_kib, int)
                                              or not 4 <= hugepage_size_kib <= MAX_HUGEPAGE_KIB):
            raise DomainError('hugepage_size_kb needs hugepages=true and a size in KiB from 4 to %d (2048, 1048576), '
                              'not %s' % (MAX_HUGEPAGE_KIB, show(hugepage_size_kib)))
        self.hugepage_size_kib = hugepage_size_kib
        self.hostdevs = list(hostdevs)
        for role, address in self.hostdevs:
            if role not in HOSTDEV_ROLES:
                raise DomainError('unknown hostdev role %r' % (role,))
            parse_bdf(address)
        self.bridge = IFNAME.check(bridge, 'bridge')
        if bridge_type not in BRIDGE_TYPES:
            raise DomainError('bridge_type must be one of %s, not %r' % (', '.join(BRIDGE_TYPES), bridge_type))
        self.bridge_type = bridge_type
        self.disk = _path(disk, 'disk')
        if disk_format not in DISK_FORMATS:
            raise DomainError('disk_format must be one of %s, not %r' % (', '.join(DISK_FORMATS), disk_format))
        self.disk_format = disk_format
        self.disk_is_block = bool(disk_is_block)
        self.seed = _path(seed, 'seed')
        self.kernel = _path(kernel, 'kernel')
        self.initrd = _path(initrd, 'initrd')
        self.cmdline = _text(cmdline, 'kernel_cmdline')
        if (self.initrd or self.cmdline) and not self.kernel:
            raise DomainError('initrd and kernel_cmdline need kernel')
        self.console_log = _path(console_log, 'console log')
        self._firmware(firmware, nvram, phys_bits, standin_bar_gib)

    def _firmware(self, firmware, nvram, phys_bits, standin_bar_gib):
        """The firmware, its per-domain NVRAM, the guest's physical address bits and the lab's stand-in."""
        if firmware not in FIRMWARES:
            raise DomainError('firmware must be one of %s, not %s' % (', '.join(FIRMWARES), show(firmware)))
        self.firmware = firmware
        # The domain's own OVMF variable store, in a node directory (never libvirt's shared one).
        self.nvram = (_path(nvram, 'nvram') or Slot.parse(self.slot_id).file(NVRAM_DIR, '_VARS.fd')) \
            if firmware == 'uefi' else None
        if phys_bits is not None and (isinstance(phys_bits, bool) or not isinstance(phys_bits, int)
                                      or not MIN_PHYS_BITS <= phys_bits <= MAX_PHYS_BITS):
            raise DomainError('phys_bits must be a whole number from %d to %d, not %s'
                              % (MIN_PHYS_BITS, MAX_PHYS_BITS, show(phys_bits)))
        self.phys_bits = phys_bits
        if standin_bar_gib is not None and (isinstance(standin_bar_gib, bool) or not isinstance(standin_bar_gib, int)
                                            or not STANDIN_BAR_GIB[0] <= standin_bar_gib <= STANDIN_BAR_GIB[1]
                                            or standin_bar_gib & (standin_bar_gib - 1)):
            raise DomainError('lab_standin_bar_gib must be a power of two from %d to %d (GiB), not %s'
                              % (STANDIN_BAR_GIB[0], STANDIN_BAR_GIB[1], show(standin_bar_gib)))
        if standin_bar_gib and 'q35' not in self.machine:
            raise DomainError('lab_standin_bar_gib needs a q35 machine (its PCIe root port), not %s' % self.machine)
        self.standin_bar_gib = standin_bar_gib

    @property
    def boot_hostdev(self):
        """The NVMe is the boot disk when the slot has no disk image of its own."""
        if self.disk:
            return None
        for role, address in self.hostdevs:
            if role == 'nvme':
                return address
        return None


def _sub(parent, tag, text=None, **attrs):
    element = ET.SubElement(parent, tag, dict((k.rstrip('_'), str(v)) for k, v in attrs.items()))
    if text is not None:
        element.text = str(text)
    return element


def build_xml(spec, uuid=None):
    """The domain XML of ``spec`` as a string; ``uuid`` keeps an existing domain's identity."""
    root = ET.Element('domain', {'type': spec.domain_type})
    _sub(root, 'name', spec.name)
    if uuid:
        _sub(root, 'uuid', uuid)
    _sub(root, 'title', 'gpuaas.slice slot %s' % spec.slot_id)
    metadata = _sub(root, 'metadata')
    _sub(metadata, '{%s}slot' % METADATA_NS, id=spec.slot_id, index=spec.slot_index)

    _sub(root, 'memory', spec.memory_kib, unit='KiB')
    _sub(root, 'currentMemory', spec.memory_kib, unit='KiB')
    if spec.hugepages:
        pages = _sub(_sub(root, 'memoryBacking'), 'hugepages')
        if spec.hugepage_size_kib:
            _sub(pages, 'page', size=spec.hugepage_size_kib, unit='KiB')
    _sub(root, 'vcpu', spec.vcpus, placement='static', cpuset=format_cpulist(spec.cpus))
    cputune = _sub(root, 'cputune')
    for vcpu in range(spec.vcpus):
        _sub(cputune, 'vcpupin', vcpu=vcpu, cpuset=spec.cpus[vcpu])
    _sub(cputune, 'emulatorpin', cpuset=format_cpulist(spec.emulator_cpus))
    if spec.numa_node is not None:
        _sub(_sub(root, 'numatune'), 'memory', mode='strict', nodeset=spec.numa_node)

    os_el = _sub(root, 'os')
    _sub(os_el, 'type', 'hvm', arch='x86_64', machine=spec.machine)
    if spec.firmware == 'uefi':
        # libvirt picks OVMF from the ovmf package's firmware descriptors; its variable store
        # is the domain's own, in the node's directory, removed when the domain is undefined.
        os_el.set('firmware', 'efi')
        _sub(_sub(os_el, 'firmware'), 'feature', enabled='no', name='secure-boot')
        _sub(os_el, 'nvram', spec.nvram)
    if spec.kernel:
        _sub(os_el, 'kernel', spec.kernel)
        if spec.initrd:
            _sub(os_el, 'initrd', spec.initrd)
        if spec.cmdline:
            _sub(os_el, 'cmdline', spec.cmdline)
    features = _sub(root, 'features')
    _sub(features, 'acpi')
    _sub(features, 'apic')
    _cpu(root, spec)
    _sub(root, 'clock', offset='utc')
    _sub(root, 'on_poweroff', 'destroy')
    _sub(root, 'on_reboot', 'restart')
    _sub(root, 'on_crash', 'destroy')

    devices = _sub(root, 'devices')
    if spec.disk:
        disk = _sub(devices, 'disk', type='block' if spec.disk_is_block else 'file', device='disk')
        if spec.disk_is_block:
            _sub(disk, 'driver', name='qemu', type=spec.disk_format, cache='none', io='native',
                 discard='unmap')
            _sub(disk, 'source', dev=spec.disk)
        else:
            _sub(disk, 'driver', name='qemu', type=spec.disk_format, discard='unmap')
            _sub(disk, 'source', file=spec.disk)
        _sub(disk, 'target', dev='vda', bus='virtio')
        _sub(disk, 'boot', order=1)
    # No USB controller (libvirt would add one): a slot VM has no USB devices.
    _sub(devices, 'controller', type='usb', model='none')
    if spec.seed:
        _sub(devices, 'controller', type='scsi', index=0, model='virtio-scsi')
        cdrom = _sub(devices, 'disk', type='file', device='cdrom')
        _sub(cdrom, 'driver', name='qemu', type='raw')
        _sub(cdrom, 'source', file=spec.seed)
        _sub(cdrom, 'target', dev='sda', bus='scsi')
        _sub(cdrom, 'readonly')

    if spec.bridge_type == 'ethernet':
        # The slot network made the tap, its bridge port and its flows before the VM: the
        # VM opens that tap and never has a moment on the bridge without its filters.
        iface = _sub(devices, 'interface', type='ethernet')
        _sub(iface, 'mac', address=spec.mac)
        _sub(iface, 'target', dev=spec.tap, managed='no')
        # Open vSwitch's userspace datapath reads the tap with a packet socket and does not
        # complete checksums a guest left to offload: the guest must send whole ones.
        driver = _sub(iface, 'driver')
        _sub(driver, 'host', csum='off')
    else:
        iface = _sub(devices, 'interface', type='bridge')
        _sub(iface, 'mac', address=spec.mac)
        _sub(iface, 'source', bridge=spec.bridge)
        if spec.bridge_type == 'openvswitch':
            _sub(iface, 'virtualport', type='openvswitch')
        _sub(iface, 'target', dev=spec.tap)
    _sub(iface, 'model', type='virtio')
    # No iPXE option ROM: slot VMs never boot from the network, and it costs boot time.
    _sub(iface, 'rom', enabled='no')

    serial = _sub(devices, 'serial', type='pty')
    if spec.console_log:
        _sub(serial, 'log', file=spec.console_log, append='off')
    _sub(serial, 'target', port=0)
    _sub(_sub(devices, 'console', type='pty'), 'target', type='serial', port=0)
    # The QEMU guest agent's virtio-serial port (libvirt adds the controller and the host-side
    # socket), so qemu-guest-agent in the guest starts and libvirt can ask it. Not one of
    # domain_facts: a domain defined before it had the channel is not redefined (nor, running,
    # destroyed) for it; it gets the channel when it is defined again.
    channel = _sub(devices, 'channel', type='unix')
    _sub(channel, 'target', type='virtio', name=GUEST_AGENT_CHANNEL)

    roles = {}
    for role, address in spec.hostdevs:
        _hostdev(devices, role, address, roles, boot=address == spec.boot_hostdev)
    # VFIO pins all guest memory: a balloon could not give any back.
    _sub(devices, 'memballoon', model='none')
    if spec.standin_bar_gib:
        # Labs only (slot_vm's lab_standin_bar_gib): libvirt has no element for pci-testdev.
        commandline = _sub(root, '{%s}commandline' % QEMU_NS)
        for arg in STANDIN_ARGS:
            _sub(commandline, '{%s}arg' % QEMU_NS, value=arg.replace('%dG', '%dG' % spec.standin_bar_gib))
    return ET.tostring(root, encoding='unicode')


def _cpu(root, spec):
    """The guest CPU, its physical address bits covering the slot's RAM and 64-bit BARs.

    KVM: the host's CPU and its address bits (host-passthrough). TCG: QEMU's qemu64 with
    ``phys_bits``; above 40 bits it gets 1 GiB pages too, without which OVMF keeps to 40.
    """
    if spec.domain_type == 'kvm':
        cpu = _sub(root, 'cpu', mode='host-passthrough', check='none', migratable='off')
        if spec.phys_bits:
            _sub(cpu, 'maxphysaddr', mode='passthrough')
    elif spec.phys_bits:
        cpu = _sub(root, 'cpu', mode='custom', match='exact', check='none')
        _sub(cpu, 'model', 'qemu64', fallback='forbid')
        if spec.phys_bits > MIN_PHYS_BITS:
            _sub(cpu, 'feature', policy='require', name='pdpe1gb')
        _sub(cpu, 'maxphysaddr', mode='emulate', bits=spec.phys_bits)


def _hostdev(devices, role, address, roles, boot=False):
    """Append one VFIO <hostdev> for ``address``; ``roles`` counts the aliases per role."""
    domain, bus, slot, function = bdf_parts(address)
    hostdev = _sub(devices, 'hostdev', mode='subsystem', type='pci', managed='no')
    _sub(hostdev, 'driver', name='vfio')
    _sub(_sub(hostdev, 'source'), 'address', domain='0x%04x' % domain, bus='0x%02x' % bus,
         slot='0x%02x' % slot, function='0x%x' % function)
    count = roles.get(role, 0)
    roles[role] = count + 1
    _sub(hostdev, 'alias', name='ua-%s%d' % (role.replace('_', '-'), count))
    if boot:
        _sub(hostdev, 'boot', order=1)
    return hostdev


def restore_hostdevs(xml_text, hostdevs):
    """(xml, added): ``xml_text`` with a <hostdev> for each of ``hostdevs`` it lacks.

    ``hostdevs`` is :func:`slot_hostdevs`' list. Everything else in the definition is kept
    as it is (libvirt's own additions included); the aliases of the added devices are
    numbered after the ones of their role already present, and a restored NVMe boots a domain
    that has no disk image and no other boot device, as in :func:`build_xml` (libvirt's
    default ``<os><boot dev='hd'/>`` is dropped then: the two cannot be combined). ``added`` lists the addresses
    given back, in order; when it is empty the XML is returned unchanged.
    """
    root = ET.fromstring(xml_text)
    devices = root.find('devices')
    if devices is None:
        devices = _sub(root, 'devices')
    have, roles = set(), {}
    for element in devices.findall('hostdev'):
        if element.get('type') == 'pci':
            have.add(_hostdev_address(element))
        alias = element.find('alias')
        match = ALIAS_RE.fullmatch(alias.get('name', '')) if alias is not None else None
        if match:
            role = match.group(1).replace('-', '_')
            roles[role] = max(roles.get(role, 0), int(match.group(2)) + 1)
    # The NVMe boots a slot without a disk image (as build_xml makes it), if no device does.
    # libvirt gives a domain without per-device boot an <os><boot dev='hd'/>, which cannot
    # be combined with one: that default goes when the NVMe gets its boot order back.
    boots = devices.find('disk[@device="disk"]') is None and devices.find('.//boot') is None
    added = []
    for role, address in hostdevs:
        if address in have:
            continue
        nvme_boots = boots and role == 'nvme'
        _hostdev(devices, role, address, roles, boot=nvme_boots)
        if nvme_boots:
            os_el = root.find('os')
            for default in (os_el.findall('boot') if os_el is not None else []):
                os_el.remove(default)
        added.append(address)
    if not added:
        return xml_text, []
    return ET.tostring(root, encoding='unicode'), added


def _int(text, base=10):
    try:
        return int(text, base)
    except (TypeError, ValueError):
        return None


def _kib(element):
    if element is None:
        return None
    value = _int((element.text or '').strip())
    unit = (element.get('unit') or 'KiB').lower()
    scale = {'b': 1.0 / 1024, 'bytes': 1.0 / 1024, 'k': 1, 'kib': 1, 'm': 1024, 'mib': 1024,
             'g': 1 << 20, 'gib': 1 << 20}.get(unit)
    return None if value is None or scale is None else int(value * scale)


def _cpuset(text):
    if not text:
        return None
    try:
        return format_cpulist(parse_cpulist(text.replace('^', '')))
    except ValueError:
        return text


def _hostdev_address(element):
    address = element.find('source/address')
    if address is None:
        return None
    parts = [_int(address.get(key) or '0', 16) for key in ('domain', 'bus', 'slot', 'function')]
    if None in parts:
        return None
    return format_bdf(*parts)


def domain_facts(xml_text):
    """The parts of a domain the collection owns, as plain data, from any domain XML.

    Used on both our XML and libvirt's normalised copy of it, so the same domain gives
    the same facts whichever way it was written (units, hex case, cpuset spelling).
    """
    root = ET.fromstring(xml_text)
    facts = {'type': root.get('type'), 'name': root.findtext('name')}
    slot = root.find('metadata/{%s}slot' % METADATA_NS)
    facts['slot_id'] = slot.get('id') if slot is not None else None
    # In MiB, as every memory size of the collection (a domain made elsewhere may have KiB left over).
    kib = _kib(root.find('memory'))
    facts['memory_mib'] = kib if kib is None else (kib // 1024 if kib % 1024 == 0 else kib / 1024)
    vcpu = root.find('vcpu')
    facts['vcpus'] = _int((vcpu.text or '').strip()) if vcpu is not None else None
    facts['vcpu_cpuset'] = _cpuset(vcpu.get('cpuset')) if vcpu is not None else None
    facts['vcpupin'] = sorted([_int(pin.get('vcpu')), _cpuset(pin.get('cpuset'))]
                              for pin in root.findall('cputune/vcpupin'))
    emulator = root.find('cputune/emulatorpin')
    facts['emulatorpin'] = _cpuset(emulator.get('cpuset')) if emulator is not None else None
    numa = root.find('numatune/memory')
    facts['numatune'] = None if numa is None else '%s:%s' % (numa.get('mode', 'strict'),
                                                             _cpuset(numa.get('nodeset')))
    pages = root.find('memoryBacking/hugepages')
    facts['hugepages'] = None if pages is None else sorted(
        [_kib_attr(page) for page in pages.findall('page')]) or ['default']
    os_el = root.find('os')
    uefi = os_el is not None and (os_el.get('firmware') == 'efi' or root.find('os/loader[@type="pflash"]') is not None)
    facts['firmware'] = 'uefi' if uefi else 'bios'
    facts['nvram'] = root.findtext('os/nvram')
    secure = root.find('os/firmware/feature[@name="secure-boot"]')
    facts['secure_boot'] = None if secure is None else secure.get('enabled')
    phys = root.find('cpu/maxphysaddr')
    facts['maxphysaddr'] = None if phys is None else '%s:%s' % (phys.get('mode'), phys.get('bits', '-'))
    facts['qemu_args'] = [arg.get('value') for arg in root.findall('{%s}commandline/{%s}arg' % (QEMU_NS, QEMU_NS))]
    facts['kernel'] = root.findtext('os/kernel')
    facts['initrd'] = root.findtext('os/initrd')
    facts['cmdline'] = root.findtext('os/cmdline')
    hostdevs = []
    for hostdev in root.findall('devices/hostdev'):
        if hostdev.get('type') == 'pci':
            hostdevs.append('%s managed=%s' % (_hostdev_address(hostdev), hostdev.get('managed', 'no')))
    facts['hostdevs'] = sorted(hostdevs, key=lambda item: bdf_key(item.split(' ')[0]))
    interfaces = []
    for iface in root.findall('devices/interface'):
        source = iface.find('source')
        port = iface.find('virtualport')
        target = iface.find('target')
        mac = iface.find('mac')
        interfaces.append({
            'type': iface.get('type'),
            'mac': mac.get('address', '').lower() if mac is not None else None,
            'bridge': source.get('bridge') if source is not None else None,
            'virtualport': port.get('type') if port is not None else None,
            'target': target.get('dev') if target is not None else None,
        })
    facts['interfaces'] = interfaces
    disks = []
    for disk in root.findall('devices/disk'):
        source = disk.find('source')
        driver = disk.find('driver')
        target = disk.find('target')
        disks.append({
            'device': disk.get('device', 'disk'),
            'source': (source.get('file') or source.get('dev')) if source is not None else None,
            'format': driver.get('type') if driver is not None else None,
            'target': target.get('dev') if target is not None else None,
            'bus': target.get('bus') if target is not None else None,
            'readonly': disk.find('readonly') is not None,
        })
    facts['disks'] = sorted(disks, key=lambda item: item['target'] or '')
    log = root.find('devices/serial/log')
    facts['console_log'] = log.get('file') if log is not None else None
    return facts


def _kib_attr(page):
    element = ET.Element('x', {'unit': page.get('unit') or 'KiB'})
    element.text = page.get('size')
    return _kib(element)


def differences(have, want):
    """['what: have -> want', ...] for every fact that differs (empty when none do)."""
    changes = []
    for key in sorted(want):
        if have.get(key) != want[key]:
            changes.append('%s: %s -> %s' % (key, _show(have.get(key)), _show(want[key])))
    return changes


def _show(value):
    if isinstance(value, list) and not value:
        return 'none'
    return str(value)


def hostdev_report(spec):
    """[{'role', 'address'}] for the module result."""
    return [{'role': role, 'address': address} for role, address in spec.hostdevs]
