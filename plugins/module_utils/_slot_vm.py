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

from ansible_collections.gpuaas.slice.plugins.module_utils._domain import (
    DomainSpec,
    build_xml,
    differences,
    domain_facts,
    hostdev_report,
    restore_hostdevs,
    slot_hostdevs,
)
from ansible_collections.gpuaas.slice.plugins.module_utils._files import ensure_dir
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import Connection, LibvirtError
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import PciDevice, Sysfs
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError, Slot

STATES = ('present', 'running', 'stopped', 'absent', 'repaired')
VFIO_DRIVER = 'vfio-pci'
LEASE_POLL_S = 0.1
STOP_POLL_S = 0.2
SHUTDOWN_REPEAT_S = 5


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


class SlotVm:
    """Bring one slot's domain to ``params['state']``; :meth:`run` returns the result."""

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
        self.timings = {}
        self.warnings = []

    # -- want ---------------------------------------------------------------

    def console_log(self):
        return self.slot.file(self.params['console_log_dir'], '.log')

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
        node_dir = 'devices/system/node/node%d' % (numa_node or 0)
        if numa_node is not None and not self.sysfs.isdir(node_dir):
            raise SlotVmError('the host has no NUMA node %d (no %s): the slot\'s memory cannot be '
                              'bound to it; check the slot\'s numa_node, or set numatune=false on '
                              'a test host' % (numa_node, self.sysfs.path(node_dir)))
        return DomainSpec(
            slot_id=self.slot_id, memory_mib=p['memory_mb'], cpulist=p['cpulist'],
            vcpus=p['vcpus'], domain_type=p['domain_type'], machine=p['machine'],
            numa_node=numa_node, hugepages=p['hugepages'], hugepage_size_kib=p['hugepage_size_kb'],
            hostdevs=hostdevs if p['passthrough'] else [], bridge=p['bridge'],
            bridge_type=p['bridge_type'], disk=disk, disk_format=p['disk_format'],
            disk_is_block=disk_is_block, seed=p['seed'], kernel=p['kernel'], initrd=p['initrd'],
            cmdline=p['kernel_cmdline'], console_log=self.console_log())

    # -- checks before a start ----------------------------------------------

    def start_problems(self, spec):
        problems = []
        for what, path in (('disk', spec.disk), ('seed', spec.seed), ('kernel', spec.kernel),
                           ('initrd', spec.initrd)):
            if path and not os.path.exists(path):
                problems.append('%s %s does not exist%s' % (
                    what, path, {'disk': ' (run gpuaas.slice.slot_image first)',
                                 'seed': ' (run gpuaas.slice.slot_seed first)'}.get(what, '')))
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

    # -- plan -----------------------------------------------------------------

    def plan(self, have_xml, active, want_xml):
        """(actions, mismatches) taking the domain from what it is to what is wanted."""
        p = self.params
        actions = []
        if p['state'] == 'absent':
            if have_xml:
                if active:
                    actions.append('destroy')
                actions.append('undefine')
            if p['release_lease'] and find_lease(p['lease_file'], self.mac):
                actions.append('release lease')
            return actions, []
        mismatches = []
        if not have_xml:
            actions.append('define')
        else:
            mismatches = differences(domain_facts(have_xml), domain_facts(want_xml))
            if mismatches:
                if not p['replace']:
                    raise SlotVmError(
                        'domain %s exists with a different definition; set replace=true to '
                        'redefine it (a running domain is destroyed first). Differences:\n- %s'
                        % (self.name, '\n- '.join(mismatches)))
                if active:
                    actions.append('destroy')
                    active = False
                actions.append('redefine')
        if not os.path.isdir(p['console_log_dir']):
            actions.insert(0, 'create console log directory')
        if p['state'] == 'running' and not active:
            actions.append('start')
        elif p['state'] == 'stopped' and active:
            actions.append('shutdown')
        return actions, mismatches

    # -- apply ----------------------------------------------------------------

    def _timed(self, key, func, *args):
        start = self.clock()
        value = func(*args)
        self.timings[key] = round(self.clock() - start, 3)
        return value

    def shutdown(self, conn, domain):
        """ACPI shutdown, then a hard power-off after stop_timeout; True when forced.

        The power button is pressed again every SHUTDOWN_REPEAT_S: a guest that was still
        booting (no ACPI handler yet) misses the first press.
        """
        deadline = self.clock() + self.params['stop_timeout']
        pressed = None
        while self.clock() < deadline:
            if not conn.is_active(domain):
                return False
            if pressed is None or self.clock() - pressed >= SHUTDOWN_REPEAT_S:
                try:
                    conn.call('shutting down %s' % self.name, domain.shutdown)
                except LibvirtError:
                    if not conn.is_active(domain):   # it went off between the two calls
                        return False
                    raise
                pressed = self.clock()
            self.sleep(STOP_POLL_S)
        if not conn.is_active(domain):
            return False
        self.warnings.append('%s did not shut down within %d s; it was powered off'
                             % (self.name, self.params['stop_timeout']))
        conn.call('powering off %s' % self.name, domain.destroy)
        return True

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
        rc, out, err = self.module.run_command([tool, p['bridge'], lease['ip'], self.mac],
                                               environ_update={'LANG': 'C'})
        if rc != 0:
            raise SlotVmError('dhcp_release %s %s %s failed (rc %d): %s'
                              % (p['bridge'], lease['ip'], self.mac, rc, (err or out).strip()))
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

    def _apply(self, conn, domain, actions, want_xml):
        """Carry out ``actions``; returns (domain or None, started_at, forced)."""
        p = self.params
        started_at, forced = None, False
        for action in actions:
            if action == 'create console log directory':
                ensure_dir(p['console_log_dir'], 0o750)
            elif action == 'destroy':
                self._timed('destroy_s', conn.call, 'destroying %s' % self.name, domain.destroy)
            elif action in ('define', 'redefine'):
                domain = self._timed('define_s', conn.define, want_xml)
            elif action == 'start':
                started_at = time.time()
                self._timed('start_s', conn.call, 'starting %s' % self.name, domain.create)
            elif action == 'shutdown':
                forced = self._timed('stop_s', self.shutdown, conn, domain)
            elif action == 'undefine':
                self._timed('undefine_s', conn.undefine, domain)
                domain = None
            elif action == 'release lease':
                self._timed('release_lease_s', self.release_lease)
        return domain, started_at, forced

    def repair(self):
        """state=repaired: give the existing domain back the hostdevs it lacks."""
        p = self.params
        hostdevs = self.wanted_hostdevs()
        if not hostdevs:
            raise SlotVmError('state=repaired needs the slot\'s devices (gpu_address, companions, '
                              'nvme_address, fabric_vf_pci_address) to put back')
        result = {'name': self.name, 'mac': self.mac, 'console_log': self.console_log(),
                  'hostdevs': [{'role': role, 'address': address} for role, address in hostdevs]}
        with self.connection(p['uri']) as conn:
            domain = conn.lookup(self.name)
            if domain is None:
                raise SlotVmError('slot %s has no domain %s to repair: its definition is gone; run '
                                  'allocate again with the allocation id, or release the slot'
                                  % (self.slot_id, self.name))
            have_xml = conn.inactive_xml(domain)
            active = conn.is_active(domain)
            want_xml, added = restore_hostdevs(have_xml, hostdevs)
            actions = ['redefine with hostdevs %s' % ', '.join(added)] if added else []
            after_xml = want_xml
            if actions and not self.module.check_mode:
                domain = self._timed('define_s', conn.define, want_xml)
                after_xml = conn.inactive_xml(domain)
                missing = [a for _role, a in hostdevs
                           if a not in [h.split(' ')[0] for h in domain_facts(after_xml)['hostdevs']]]
                if missing:
                    raise SlotVmError('libvirt dropped the hostdevs %s of %s again when it was '
                                      'redefined' % (', '.join(missing), self.name))
            result['uuid'] = conn.call('reading the UUID of %s' % self.name, domain.UUIDString)
        if added and active:
            self.warnings.append('%s runs without %s: its definition has them again, the running '
                                 'guest gets them at its next start' % (self.name, ', '.join(added)))
        result.update(changed=bool(actions), actions=actions, restored=added, differences=[],
                      domain_state='running' if active else 'shut off', forced_off=False,
                      xml=after_xml, timings=self.timings)
        if self.module._diff:
            result['diff'] = {'before': have_xml, 'after': after_xml,
                              'before_header': '%s (inactive XML)' % self.name,
                              'after_header': '%s (inactive XML)' % self.name}
        return result

    def run(self):
        p = self.params
        if p['state'] == 'repaired':
            return self.repair()
        check_mode = self.module.check_mode
        result = {'name': self.name, 'mac': self.mac, 'console_log': self.console_log()}
        spec = None
        if p['state'] != 'absent':
            spec = self.spec()
            result['tap'] = spec.tap
            result['hostdevs'] = hostdev_report(spec)
            result['hostdevs_omitted'] = [] if p['passthrough'] else [
                {'role': role, 'address': address} for role, address in self.wanted_hostdevs()]
            if result['hostdevs_omitted']:
                self.warnings.append('passthrough=false: %s is defined without its devices %s'
                                     % (self.name, ', '.join(d['address'] for d in result['hostdevs_omitted'])))
        with self.connection(p['uri']) as conn:
            domain = conn.lookup(self.name)
            have_xml = conn.inactive_xml(domain) if domain is not None else ''
            active = conn.is_active(domain) if domain is not None else False
            want_xml = ''
            if spec is not None:
                uuid = conn.call('reading the UUID of %s' % self.name, domain.UUIDString) if domain is not None else None
                want_xml = build_xml(spec, uuid=uuid)
            actions, mismatches = self.plan(have_xml, active, want_xml)
            if 'start' in actions:
                problems = self.start_problems(spec)
                result['start_problems'] = problems
                if problems and not check_mode:
                    raise SlotVmError('%s cannot start:\n- %s' % (self.name, '\n- '.join(problems)))
                # In check mode the tasks before this one (image, seed, vfio binding) did not
                # run for real either: what they would have made is missing, so only warn.
                for problem in problems:
                    self.warnings.append('a start would now fail unless earlier tasks fix this: %s' % problem)
            result.update(changed=bool(actions), actions=actions, differences=mismatches)

            stale = find_lease(p['lease_file'], self.mac) if 'start' in actions else None
            forced = False
            if check_mode or not actions:
                after_xml = want_xml if actions else have_xml
                if p['state'] == 'absent':
                    after_xml, running = '', False
                else:
                    running = p['state'] == 'running' or (active and p['state'] == 'present')
            else:
                domain, started_at, forced = self._apply(conn, domain, actions, want_xml)
                after_xml = conn.inactive_xml(domain) if domain is not None else ''
                running = conn.is_active(domain) if domain is not None else False
                if started_at is None:
                    stale = None
            if domain is not None and not (check_mode and 'undefine' in actions):
                result['uuid'] = conn.call('reading the UUID of %s' % self.name, domain.UUIDString)
            result['forced_off'] = forced
            result['domain_state'] = 'absent' if p['state'] == 'absent' else (
                'running' if running else 'shut off')

            if p['state'] == 'running' and p['wait_for_lease'] and not check_mode:
                waited = self.clock()
                lease = self.wait_for_lease(conn, domain, stale)
                self.timings['lease_wait_s'] = round(self.clock() - waited, 3)
                expected = p['expected_ip'] or self.slot.ip
                if lease['ip'] != expected:
                    raise SlotVmError('dnsmasq gave %s the address %s, but the slot layout says %s: '
                                      'fix the dhcp-host entry for %s' % (self.name, lease['ip'], expected, self.mac))
                result['ip'] = lease['ip']
                result['lease'] = lease
        result['xml'] = after_xml
        result['timings'] = self.timings
        if self.module._diff:
            result['diff'] = {'before': have_xml, 'after': after_xml,
                              'before_header': '%s (inactive XML)' % self.name,
                              'after_header': '%s (inactive XML)' % self.name}
        return result
