# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the slot VM engine behind gpuaas.slice.slot_vm.

want (the domain XML of :mod:`._domain`), have (the domain libvirt holds, its inactive
XML and whether it runs) and the actions between them. Before a start it checks, on
the host's sysfs, what would otherwise fail inside QEMU or, worse, succeed wrongly:
every passed-through function bound to vfio-pci, and no function of their IOMMU groups
left behind on a host driver (a GPU's audio function, for one). After a start it waits
for the guest's DHCP lease in dnsmasq's lease file.

``state=repaired`` is reconcile's repair of a domain that lost its ``<hostdev>`` elements
(a host reboot, a hand edit): the definition is kept and only the slot's missing hostdevs
are put back. It never creates, starts, stops or destroys a domain, and a running guest
keeps running as it is (a GPU is not hot-plugged under a tenant): the new definition takes
effect at its next start.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat
import time

from ansible_collections.gpuaas.slice.plugins.module_utils import _hugepages as hugepages
from ansible_collections.gpuaas.slice.plugins.module_utils._domain import (
    DomainSpec,
    build_xml,
    differences,
    domain_facts,
    hostdev_report,
    restore_hostdevs,
    slot_hostdevs,
)
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, Runner, Step, check_timeout
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_path, ensure_dir
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import LIBVIRT_ARGS, Connection, LibvirtError
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import PciDevice, Sysfs
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import read_phys_bits
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    LIMITS, ContractError, GpuaasError, Slot, address_space_problem, check_int, guest_phys_bits)

STATES = ('present', 'running', 'stopped', 'absent', 'repaired')
VFIO_DRIVER = 'vfio-pci'
LEASE_POLL_S = 0.1
STOP_POLL_S = 0.2
SHUTDOWN_REPEAT_S = 5
MAX_LEASE_TIMEOUT = 3600
MAX_STOP_TIMEOUT = 3600
MAX_NUMA_NODE = 1023
# The most MiB of 64-bit BARs a slot may declare (16 TiB); the CPU the host reports, read here.
MAX_BAR_MIB = 16 * 1024 * 1024
PROC_ROOT = '/proc'
# Where a slot's disk, seed, boot files and console logs may be, unless allowed_dirs says otherwise.
ALLOWED_DIRS = ['/var/lib/gpuaas', '/var/log/gpuaas']


# The module's options; slot_provision and slot_release check a step's options with them too.
def argument_spec():
    spec = dict(LIBVIRT_ARGS)
    spec.update(
        slot_id=dict(type='str', required=True),
        state=dict(type='str', choices=list(STATES), default='running'),
        domain_type=dict(type='str', choices=['kvm', 'qemu'], default='kvm'),
        machine=dict(type='str', default='q35'),
        memory_mib=dict(type='int', aliases=['memory_mb']),
        cpulist=dict(type='str'),
        host_cpulist=dict(type='str'),
        vcpus=dict(type='int'),
        numa_node=dict(type='int'),
        numatune=dict(type='bool', default=True),
        hugepages=dict(type='bool', default=False),
        hugepage_size_kb=dict(type='int'),
        gpu_address=dict(type='str'),
        companions=dict(type='list', elements='str', default=[]),
        nvme_address=dict(type='str'),
        fabric_vf_pci_address=dict(type='str'),
        passthrough=dict(type='bool', default=True),
        disk=dict(type='path'),
        disk_format=dict(type='str', choices=['raw', 'qcow2'], default='raw'),
        seed=dict(type='path'),
        kernel=dict(type='path'),
        initrd=dict(type='path'),
        kernel_cmdline=dict(type='str'),
        bridge=dict(type='str', default='br-gpuaas'),
        bridge_type=dict(type='str', choices=['openvswitch', 'linux', 'ethernet'], default='openvswitch'),
        console_log_dir=dict(type='path', default='/var/log/gpuaas/console'),
        firmware=dict(type='str', choices=['uefi', 'bios'], default='uefi'),
        nvram_dir=dict(type='path', default='/var/lib/gpuaas/nvram'),
        bar_mib=dict(type='int', default=0),
        lab_standin_bar_gib=dict(type='int'),
        allowed_dirs=dict(type='list', elements='path', default=list(ALLOWED_DIRS)),
        replace=dict(type='bool', default=False),
        wait_for_lease=dict(type='bool', default=True),
        lease_file=dict(type='path', default='/var/lib/misc/dnsmasq.leases'),
        lease_timeout=dict(type='int', default=300),
        expected_ip=dict(type='str'),
        release_lease=dict(type='bool', default=True),
        stop_timeout=dict(type='int', default=120),
        sysfs_root=dict(type='path', default='/sys'),
    )
    return spec


# The rules between options, for slot_vm and for the modules that run its engine.
RULES = dict(required_if=[('state', state, ('memory_mib', 'cpulist')) for state in ('present', 'running', 'stopped')],
             required_by={'initrd': 'kernel', 'kernel_cmdline': 'kernel'})


class SlotVmError(GpuaasError):
    """The slot VM cannot be brought to the wanted state; nothing unsafe was done."""


def read_leases(path):
    """dnsmasq's lease file as [{'expiry', 'mac', 'ip', 'hostname', 'client_id'}]."""
    leases = []
    try:
        with open(path, 'r') as handle:
            lines = handle.read().splitlines()
    except (IOError, OSError):
        return leases
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[0] == 'duid':
            continue
        leases.append({'expiry': fields[0], 'mac': fields[1].lower(), 'ip': fields[2],
                       'hostname': None if fields[3] == '*' else fields[3],
                       'client_id': fields[4] if len(fields) > 4 and fields[4] != '*' else None})
    return leases


def find_lease(path, mac):
    for lease in read_leases(path):
        if lease['mac'] == mac.lower():
            return lease
    return None


def hostdev_problems(sysfs, addresses):
    """Why these functions cannot go to a VM now, as sentences (empty when they can).

    VFIO takes an IOMMU group whole: every function of a passed-through device's group
    must be in the VM too (or be a bridge), and every one must be bound to vfio-pci.
    A GPU's audio function left on snd_hda_intel is the classic case.
    """
    groups = sysfs.listdir('kernel/iommu_groups')
    if not groups:
        return ['the host has no IOMMU groups (IOMMU off, or not supported): no device can be '
                'passed through; enable the IOMMU (intel_iommu=on / amd_iommu=on) or, on a test '
                'host only, set passthrough=false']
    wanted = set(addresses)
    problems = []
    for address in addresses:
        device = PciDevice(sysfs, address)
        if not sysfs.exists(device.rel):
            problems.append('%s does not exist on this host (was the slot approved on other '
                            'hardware?)' % address)
            continue
        if device.driver != VFIO_DRIVER:
            problems.append('%s is bound to %s, not vfio-pci: bind the slot (gpuaas.slice.vfio_bind) '
                            'before starting its VM' % (device.describe(), device.driver or 'no driver'))
        group = device.iommu_group
        if group is None:
            problems.append('%s has no IOMMU group' % device.describe())
            continue
        for member in sysfs.listdir('kernel/iommu_groups/%s/devices' % group):
            if member in wanted:
                continue
            other = PciDevice(sysfs, member)
            if other.is_bridge:
                continue
            problems.append('%s shares IOMMU group %s with %s, which is not part of this slot: '
                            'every function of the group goes to the VM together (add it to '
                            'companions)' % (address, group, other.describe()))
    return problems


def console_tail(path, lines=20):
    """The last lines of the serial console log, for error messages."""
    try:
        with open(path, 'rb') as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            data = handle.read().decode('utf-8', 'replace')
    except (IOError, OSError):
        return ''
    return '\n'.join(data.replace('\r', '').splitlines()[-lines:])


def acpi_shutdown(conn, domain, name, timeout, clock=time.monotonic, sleep=time.sleep):
    """ACPI shutdown, then a hard power-off (destroy) after ``timeout`` s; True when forced.

    The power button is pressed again every SHUTDOWN_REPEAT_S: a guest that was still
    booting (no ACPI handler yet) misses the first press. slot_vm and slot_power share it.
    """
    deadline = clock() + timeout
    pressed = None
    while clock() < deadline:
        if not conn.is_active(domain):
            return False
        if pressed is None or clock() - pressed >= SHUTDOWN_REPEAT_S:
            try:
                conn.call('shutting down %s' % name, domain.shutdown)
            except LibvirtError:
                if not conn.is_active(domain):   # it went off between the two calls
                    return False
                raise
            pressed = clock()
        sleep(STOP_POLL_S)
    if not conn.is_active(domain):
        return False
    conn.call('powering off %s' % name, domain.destroy)
    return True


class SlotVm:
    """Bring one slot's domain to ``params['state']``; :meth:`run` returns the result.

    :meth:`plan` turns have and want into an :class:`_engine.Plan` whose steps are the
    documented actions (create console log directory, destroy, define or redefine, start,
    shutdown, undefine, release lease); the checks before a start and the wait for the
    guest's lease are steps too that change nothing, so check mode skips them with the rest.
    """

    def __init__(self, module, connection=Connection, clock=time.monotonic, sleep=time.sleep):
        self.module = module
        self.params = module.params
        self.connection = connection
        self.clock = clock
        self.sleep = sleep
        self.sysfs = Sysfs(self.params['sysfs_root'])
        self.slot_id = self.params['slot_id']
        self.slot = Slot.parse(self.slot_id)
        self.slot_index, self.name, self.mac = self.slot.index, self.slot.domain, self.slot.mac
        check_timeout(self.params['lease_timeout'], 'lease_timeout', MAX_LEASE_TIMEOUT)
        check_timeout(self.params['stop_timeout'], 'stop_timeout', MAX_STOP_TIMEOUT)
        self.timings = {}
        self.warnings = []
        # What the plan's steps leave behind (read by the result).
        self.conn = self.domain = self.stale = self.lease = None
        self.after_xml = ''
        self.forced = False

    # -- want ---------------------------------------------------------------

    def console_log(self):
        return self.slot.file(self.params['console_log_dir'], '.log')

    def confine(self):
        """Refuse a disk, seed, kernel, initrd, console log directory or (UEFI) NVRAM directory outside
        ``allowed_dirs``."""
        p = self.params
        allowed = [check_path(path, 'allowed_dirs') for path in p['allowed_dirs'] or []]
        if not allowed:
            raise SlotVmError('allowed_dirs is empty: give the directories disks, seeds, boot files and '
                              'console logs may be in')
        for what in ('disk', 'seed', 'kernel', 'initrd', 'console_log_dir', 'nvram_dir'):
            if p[what] is not None and (what != 'nvram_dir' or p['firmware'] == 'uefi'):
                check_path(p[what], what, allowed)

    def wanted_hostdevs(self):
        p = self.params
        return slot_hostdevs(p['gpu_address'], p['companions'], p['nvme_address'],
                             p['fabric_vf_pci_address'])

    def spec(self):
        p = self.params
        hostdevs = self.wanted_hostdevs()
        disk = p['disk']
        disk_is_block = False
        if disk:
            if os.path.exists(disk):
                disk_is_block = stat.S_ISBLK(os.stat(disk).st_mode)
            else:
                disk_is_block = disk.startswith('/dev/')
        numa_node = p['numa_node'] if p['numatune'] else None
        if numa_node is not None:
            check_int(numa_node, 'numa_node', 0, MAX_NUMA_NODE)
        node_dir = 'devices/system/node/node%d' % (numa_node or 0)
        if numa_node is not None and not self.sysfs.isdir(node_dir):
            raise SlotVmError('the host has no NUMA node %d (no %s): the slot\'s memory cannot be '
                              'bound to it; check the slot\'s numa_node, or set numatune=false on '
                              'a test host' % (numa_node, self.sysfs.path(node_dir)))
        phys_bits = self.phys_bits()
        return DomainSpec(
            firmware=p['firmware'], nvram=self.slot.file(p['nvram_dir'], '_VARS.fd'), phys_bits=phys_bits,
            standin_bar_gib=p['lab_standin_bar_gib'],
            slot_id=self.slot_id, memory_mib=p['memory_mib'], cpulist=p['cpulist'],
            vcpus=p['vcpus'], domain_type=p['domain_type'], machine=p['machine'],
            numa_node=numa_node, hugepages=p['hugepages'], hugepage_size_kib=p['hugepage_size_kb'],
            hostdevs=hostdevs if p['passthrough'] else [], bridge=p['bridge'],
            bridge_type=p['bridge_type'], disk=disk, disk_format=p['disk_format'],
            disk_is_block=disk_is_block, seed=p['seed'], kernel=p['kernel'], initrd=p['initrd'],
            cmdline=p['kernel_cmdline'], console_log=self.console_log(), host_cpulist=p['host_cpulist'])

    def phys_bits(self):
        """The guest's physical address bits for memory_mib plus bar_mib (and a lab stand-in's BAR);
        SlotVmError when the host CPU has fewer (/proc/cpuinfo "address sizes")."""
        p = self.params
        memory = p['memory_mib']
        if isinstance(memory, bool) or not isinstance(memory, int) or not 64 <= memory <= LIMITS['memory_mib'][1]:
            return None   # DomainSpec refuses it, naming the value
        # The devices' BARs count where the devices go to the VM; a lab stand-in's always.
        bars = check_int(p['bar_mib'], 'bar_mib', 0, MAX_BAR_MIB) if p['passthrough'] else 0
        bars += (p['lab_standin_bar_gib'] or 0) * 1024
        try:
            problem = address_space_problem(memory, bars, read_phys_bits(PROC_ROOT))
        except ContractError as exc:
            problem = str(exc)
        if problem:
            raise SlotVmError('%s cannot be defined: %s' % (self.name, problem))
        return guest_phys_bits(memory, bars)

    # -- checks before a start ----------------------------------------------

    def start_problems(self, spec):
        problems = []
        for what, path in (('disk', spec.disk), ('seed', spec.seed), ('kernel', spec.kernel),
                           ('initrd', spec.initrd)):
            if path and not os.path.exists(path):
                problems.append('%s %s does not exist%s' % (
                    what, path, {'disk': ' (run gpuaas.slice.slot_image first)',
                                 'seed': ' (run gpuaas.slice.slot_seed first)'}.get(what, '')))
        if spec.hugepages:
            pages = hugepages.problem(self.sysfs, spec.numa_node, spec.hugepage_size_kib, spec.memory_kib // 1024)
            if pages:
                problems.append(pages)
        if spec.bridge_type == 'ethernet':
            if not self.sysfs.exists('class/net/%s' % spec.tap):
                problems.append('tap %s of slot %s does not exist on this host: run '
                                'gpuaas.slice.slot_network first' % (spec.tap, spec.slot_id))
        elif not self.sysfs.exists('class/net/%s' % spec.bridge):
            problems.append('bridge %s does not exist on this host: set up the slot network first'
                            % spec.bridge)
        if self.params['passthrough']:
            problems.extend(hostdev_problems(self.sysfs, [a for _r, a in spec.hostdevs]))
        return problems

    # -- plan ---------------------------------------------------------------

    def plan(self, have_xml, active, want_xml):
        """(plan, mismatches) taking the domain from what it is to what is wanted."""
        p = self.params
        plan = Plan(self.module, error=SlotVmError)
        # What the domain's inactive XML will be (libvirt's own once a define or undefine ran).
        self.after_xml = have_xml
        if p['state'] == 'absent':
            if have_xml:
                self.after_xml = ''
                if active:
                    self.destroy_step(plan)
                plan.change('undefine', self.undefine, verify=lambda: self.conn.lookup(self.name) is not None
                            and 'libvirt still has the domain')
            if p['release_lease'] and find_lease(p['lease_file'], self.mac):
                plan.change('release lease', lambda: self._timed('release_lease_s', self.release_lease))
            return plan, []
        mismatches = []
        define = not have_xml
        if have_xml:
            mismatches = differences(domain_facts(have_xml), domain_facts(want_xml))
            if mismatches:
                if not p['replace']:
                    raise SlotVmError(
                        'domain %s exists with a different definition; set replace=true to '
                        'redefine it (a running domain is destroyed first). Differences:\n- %s'
                        % (self.name, '\n- '.join(mismatches)))
                if active:
                    self.destroy_step(plan)
                    active = False
                define = True
        if p['firmware'] == 'uefi' and (define or p['state'] == 'running') and not os.path.isdir(p['nvram_dir']):
            # QEMU (as libvirt-qemu) opens the variable store itself: the directory is traversable.
            plan.change('create NVRAM directory', lambda: ensure_dir(p['nvram_dir'], 0o711),
                        verify=lambda: not os.path.isdir(p['nvram_dir']) and 'no directory')
        if not os.path.isdir(p['console_log_dir']):
            plan.change('create console log directory', lambda: ensure_dir(p['console_log_dir'], 0o750),
                        verify=lambda: not os.path.isdir(p['console_log_dir']) and 'no directory')
        if define:
            self.after_xml = want_xml
            plan.change('redefine' if have_xml else 'define', lambda: self.define(want_xml),
                        verify=lambda: self.defined_as(want_xml))
        if p['state'] == 'running' and not active:
            plan.change('start', self.start, verify=lambda: not self.conn.is_active(self.domain) and 'it is not running')
        elif p['state'] == 'stopped' and active:
            plan.change('shutdown', self.stop, verify=lambda: self.conn.is_active(self.domain) and 'it still runs')
        return plan, mismatches

    def destroy_step(self, plan):
        plan.change('destroy', lambda: self._timed('destroy_s', self.conn.call, 'destroying %s' % self.name,
                                                   self.domain.destroy),
                    verify=lambda: self.conn.is_active(self.domain) and 'it still runs')

    # -- apply ----------------------------------------------------------------

    def _timed(self, key, func, *args):
        start = self.clock()
        value = func(*args)
        self.timings[key] = round(self.clock() - start, 3)
        return value

    def define(self, xml):
        self.domain = self._timed('define_s', self.conn.define, xml)
        self.after_xml = self.conn.inactive_xml(self.domain)

    def defined_as(self, want_xml):
        """None when libvirt's definition is the wanted one, else how it differs."""
        mismatches = differences(domain_facts(self.after_xml), domain_facts(want_xml))
        return 'libvirt holds another definition: %s' % '; '.join(mismatches) if mismatches else None

    def start(self):
        # The slot's lease from before this start does not count until dnsmasq writes it again.
        self.stale = find_lease(self.params['lease_file'], self.mac)
        self._timed('start_s', self.conn.call, 'starting %s' % self.name, self.domain.create)

    def stop(self):
        self.forced = self._timed('stop_s', self.shutdown, self.conn, self.domain)

    def undefine(self):
        self._timed('undefine_s', self.conn.undefine, self.domain)
        self.domain, self.after_xml = None, ''

    def shutdown(self, conn, domain):
        """ACPI shutdown, then a hard power-off after stop_timeout; True when forced."""
        forced = acpi_shutdown(conn, domain, self.name, self.params['stop_timeout'], self.clock, self.sleep)
        if forced:
            self.warnings.append('%s did not shut down within %d s; it was powered off'
                                 % (self.name, self.params['stop_timeout']))
        return forced

    def release_lease(self):
        """Ask dnsmasq to drop the slot's lease (dhcp_release), then wait for it to go."""
        p = self.params
        lease = find_lease(p['lease_file'], self.mac)
        if lease is None:
            return
        tool = self.module.get_bin_path('dhcp_release')
        if tool is None:
            self.warnings.append('dhcp_release (Debian package dnsmasq-utils) is not installed: the '
                                 'lease of %s for %s stays until it expires' % (lease['ip'], self.mac))
            return
        Runner(self.module, SlotVmError)([tool, p['bridge'], lease['ip'], self.mac], timeout=30)
        deadline = self.clock() + 5
        while self.clock() < deadline:
            if find_lease(p['lease_file'], self.mac) is None:
                return
            self.sleep(LEASE_POLL_S)
        self.warnings.append('dnsmasq still lists the lease of %s for %s in %s after dhcp_release '
                             '(is dnsmasq serving %s?)' % (lease['ip'], self.mac, p['lease_file'], p['bridge']))

    def wait_for_lease(self, conn, domain, stale):
        """The guest's lease once it appears.

        ``stale`` is the slot's lease as it was before this run started the domain: that
        one does not count until dnsmasq writes it again (a new expiry time).
        """
        p = self.params
        deadline = self.clock() + p['lease_timeout']
        next_check = 0
        while True:
            lease = find_lease(p['lease_file'], self.mac)
            if lease and lease != stale:
                return lease
            now = self.clock()
            if now >= next_check:
                if not conn.is_active(domain):
                    raise SlotVmError('%s stopped before it got an address; its console said:\n%s'
                                      % (self.name, console_tail(self.console_log())))
                next_check = now + 1
            if now >= deadline:
                raise SlotVmError(
                    'no DHCP lease for %s (%s) in %s after %d s; is dnsmasq serving %s with a '
                    'dhcp-host entry for the slot? The console said:\n%s'
                    % (self.name, self.mac, p['lease_file'], p['lease_timeout'], p['bridge'],
                       console_tail(self.console_log())))
            self.sleep(LEASE_POLL_S)

    def wait_lease(self):
        p = self.params
        waited = self.clock()
        lease = self.wait_for_lease(self.conn, self.domain, self.stale)
        self.timings['lease_wait_s'] = round(self.clock() - waited, 3)
        expected = p['expected_ip'] or self.slot.ip
        if lease['ip'] != expected:
            raise SlotVmError('dnsmasq gave %s the address %s, but the slot layout says %s: '
                              'fix the dhcp-host entry for %s' % (self.name, lease['ip'], expected, self.mac))
        self.lease = lease

    def result(self, plan, have_xml, **fields):
        """The module's result once ``plan`` ran: the inactive XML before and after as the diff."""
        result = plan.result(name=self.name, mac=self.mac, console_log=self.console_log(),
                             xml=self.after_xml, timings=self.timings, **fields)
        if self.domain is not None and self.params['state'] != 'absent':
            result['uuid'] = self.conn.call('reading the UUID of %s' % self.name, self.domain.UUIDString)
        if self.module._diff:
            result['diff'] = {'before': have_xml, 'after': self.after_xml,
                              'before_header': '%s (inactive XML)' % self.name,
                              'after_header': '%s (inactive XML)' % self.name}
        return result

    def repair(self):
        """state=repaired: give the existing domain back the hostdevs it lacks."""
        hostdevs = self.wanted_hostdevs()
        if not hostdevs:
            raise SlotVmError('state=repaired needs the slot\'s devices (gpu_address, companions, '
                              'nvme_address, fabric_vf_pci_address) to put back')
        with self.connection(self.params['uri']) as self.conn:
            self.domain = self.conn.lookup(self.name)
            if self.domain is None:
                raise SlotVmError('slot %s has no domain %s to repair: its definition is gone; run '
                                  'allocate again with the allocation id, or release the slot'
                                  % (self.slot_id, self.name))
            have_xml = self.conn.inactive_xml(self.domain)
            active = self.conn.is_active(self.domain)
            want_xml, added = restore_hostdevs(have_xml, hostdevs)
            self.after_xml = want_xml
            plan = Plan(self.module, error=SlotVmError)
            if added:
                plan.change('redefine with hostdevs %s' % ', '.join(added), lambda: self.define(want_xml),
                            verify=lambda: self.hostdevs_dropped(hostdevs))
            plan.execute()
            result = self.result(plan, have_xml, restored=added, differences=[], forced_off=False,
                                 domain_state='running' if active else 'shut off',
                                 hostdevs=[{'role': role, 'address': address} for role, address in hostdevs])
        if added and active:
            self.warnings.append('%s runs without %s: its definition has them again, the running '
                                 'guest gets them at its next start' % (self.name, ', '.join(added)))
        return result

    def hostdevs_dropped(self, hostdevs):
        have = [h.split(' ')[0] for h in domain_facts(self.after_xml)['hostdevs']]
        missing = [a for _role, a in hostdevs if a not in have]
        return ('libvirt dropped the hostdevs %s of %s again when it was redefined'
                % (', '.join(missing), self.name)) if missing else None

    def run(self):
        p = self.params
        if p['state'] == 'repaired':
            return self.repair()
        fields = {}
        spec = None
        if p['state'] != 'absent':
            spec = self.spec()
            self.confine()
            fields['tap'] = spec.tap
            fields.update(firmware=spec.firmware, nvram=spec.nvram, phys_bits=spec.phys_bits)
            fields['hostdevs'] = hostdev_report(spec)
            fields['hostdevs_omitted'] = [] if p['passthrough'] else [
                {'role': role, 'address': address} for role, address in self.wanted_hostdevs()]
            if fields['hostdevs_omitted']:
                self.warnings.append('passthrough=false: %s is defined without its devices %s'
                                     % (self.name, ', '.join(d['address'] for d in fields['hostdevs_omitted'])))
        with self.connection(p['uri']) as self.conn:
            self.domain = self.conn.lookup(self.name)
            have_xml = self.conn.inactive_xml(self.domain) if self.domain is not None else ''
            active = self.conn.is_active(self.domain) if self.domain is not None else False
            want_xml = ''
            if spec is not None:
                uuid = self.conn.call('reading the UUID of %s' % self.name, self.domain.UUIDString) \
                    if self.domain is not None else None
                want_xml = build_xml(spec, uuid=uuid)
            plan, mismatches = self.plan(have_xml, active, want_xml)
            if 'start' in plan.actions():
                problems = self.start_problems(spec)
                fields['start_problems'] = problems
                # Checked first when the plan runs; in check mode the tasks before this one (image,
                # seed, vfio binding) did not run for real either, so what they make is missing: a warning.
                plan.steps.insert(0, Step('check that %s can start' % self.name, mutates=False,
                                          apply=lambda: self.refuse(problems)))
                for problem in problems:
                    self.warnings.append('a start would now fail unless earlier tasks fix this: %s' % problem)
            if p['state'] == 'running' and p['wait_for_lease']:
                plan.add(Step('wait for the lease of %s' % self.name, self.wait_lease, mutates=False))
            plan.execute()
            running = p['state'] == 'running' or (active and p['state'] == 'present')
            fields.update(differences=mismatches, forced_off=self.forced,
                          domain_state='absent' if p['state'] == 'absent' else ('running' if running else 'shut off'))
            if self.lease is not None:
                fields.update(ip=self.lease['ip'], lease=self.lease)
            return self.result(plan, have_xml, **fields)

    def refuse(self, problems):
        if problems:
            raise SlotVmError('%s cannot start:\n- %s' % (self.name, '\n- '.join(problems)))
