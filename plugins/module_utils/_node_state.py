# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: what a node holds for its slots, compared with its leases.

Reconcile reads everything a slot leaves on a node (libvirt domain, OVS port and flows,
dnsmasq host entry, telemetry token, boot disk, seed, vfio-pci binding records) and
compares it with the leases. Anything of a slot that has no lease is an orphan; a device
on vfio-pci that no lease lists and no domain holds goes back to its host driver; a leased,
running slot whose domain is gone or holds other devices is a mismatch for an operator.
A leased slot whose domain lacks some of the slot's hostdevs (a host reboot that brought it
back without them) is *hostdev drift*, which reconcile repairs (``slot_vm state=repaired``)
unless another domain holds the device. A leased slot whose GPU is no longer on the PCI bus
(it fell off the bus, Xid 79) is a *lost GPU*: reported for the operator, nothing removed.
Whatever cannot be read makes the node *blind*: a missing tool (ovs-vsctl), libvirt down,
a state directory or the host's PCI devices in sysfs that cannot be listed. The caller then
removes nothing, because cleaning what it cannot see is how a GPU in use gets handed out twice.

:func:`report_lines` turns what reconcile found and did into one line per finding, grouped
by slot, each saying what was found, what was done and what the operator must do.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.gpuaas.slice.plugins.module_utils import _ssh_access as ssh
from ansible_collections.gpuaas.slice.plugins.module_utils._domain import (
    DomainError, domain_facts, slot_hostdevs)
from ansible_collections.gpuaas.slice.plugins.module_utils._files import StateFileError, read_json
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import POWER_PHASES, LeaseError, read_lease
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import PciBus, PciError, Sysfs
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ContractError,
    DOMAIN_PREFIX,
    MAX_SLOTS,
    PCI_ADDRESS,
    TAP_NAME,
    Slot,
    cookie_slot_index,
    show,
)

COOKIE_RE = re.compile(r'cookie=(0x[0-9a-f]+)')
INCOMPLETE_PHASES = ('reserved', 'provisioning', 'releasing', 'wiping', 'quarantined')
TOOLS = {'ovs-vsctl': 'Open vSwitch, Debian package openvswitch-switch',
         'ovs-ofctl': 'Open vSwitch, Debian package openvswitch-switch'}


def _slot_of(name, suffix=''):
    """The slot id a file called ``{slot_id}{suffix}`` belongs to, or None."""
    if not name.endswith(suffix):
        return None
    candidate = name[:len(name) - len(suffix)] if suffix else name
    try:
        Slot.parse(candidate)
    except ContractError:
        return None
    return candidate


class NodeState(object):
    def __init__(self, run_command, node_id, lease_dir, hosts_dir, token_dir, disk_dir, seed_dir,
                 vfio_state_dir, bridge, libvirt_domains, sysfs_root=None, bin_path=None, ssh_dir=None,
                 nft_table=None):
        """``libvirt_domains`` is a callable returning [(name, active, xml)] or raising.

        ``bin_path(name)`` finds a tool (AnsibleModule.get_bin_path), None when it is not
        installed; ``sysfs_root``, when given, is where the host's PCI devices must be readable.
        ``ssh_dir`` and ``nft_table``, when given, are where the slots' SSH rules are (their files,
        their chains in table inet ``nft_table``).
        """
        self.run_command = run_command
        self.node_id = node_id
        self.dirs = dict(lease=lease_dir, dhcp_host=hosts_dir, token=token_dir, disk=disk_dir,
                         seed=seed_dir, vfio=vfio_state_dir, ssh=ssh_dir)
        self.nft_table = nft_table
        self.bridge = bridge
        self.libvirt_domains = libvirt_domains
        self.sysfs_root = sysfs_root
        self.bin_path = bin_path
        self.blind = []
        self.foreign_domains = {}
        self._tools = {}

    def _list(self, kind):
        path = self.dirs[kind]
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            if not os.path.exists(path):
                return []   # never created: nothing of that kind on this node
            self.blind.append('cannot list %s (%s): %s' % (path, kind, exc.strerror))
            return []

    def _own(self, slot):
        """Whether ``slot`` is one of this node's (a lab host can carry several nodes' slots)."""
        return Slot.parse(slot).node_id == self.node_id

    def _slots_in(self, kind, suffixes):
        found = set()
        for name in self._list(kind):
            for suffix in suffixes:
                slot = _slot_of(name, suffix)
                if slot and self._own(slot):
                    found.add(slot)
        return found

    def leases(self):
        leases, damaged = {}, []
        for name in self._list('lease'):
            slot = _slot_of(name, '.json')
            if not slot or not self._own(slot):
                continue
            path = os.path.join(self.dirs['lease'], name)
            try:
                lease = read_lease(path)
            except (LeaseError, IOError, OSError) as exc:
                damaged.append({'slot_id': slot, 'path': path, 'problem': str(exc)})
                continue
            if lease is not None:
                leases[slot] = lease
        return leases, damaged

    def domains(self):
        try:
            listed = self.libvirt_domains()
        except Exception as exc:  # pylint: disable=broad-except
            self.blind.append('cannot list libvirt domains: %s' % exc)
            return {}
        domains = {}
        for name, active, xml in listed:
            if not name.startswith(DOMAIN_PREFIX):
                continue
            slot = _slot_of(name[len(DOMAIN_PREFIX):])
            if not slot:
                continue
            facts = domain_facts(xml)
            entry = {'name': name, 'active': bool(active),
                     'hostdevs': [item.split(' ')[0] for item in facts.get('hostdevs', [])]}
            if self._own(slot):
                domains[slot] = entry
            else:
                # Another node's slot on the same libvirt: never this node's orphan, but
                # what it holds is held.
                self.foreign_domains[slot] = entry
        return domains

    def _tool(self, name):
        """The path of ``name``, or None (and the node is blind) when it is not installed."""
        if self.bin_path is None:
            return name
        if name not in self._tools:
            self._tools[name] = self.bin_path(name)
            if self._tools[name] is None:
                self.blind.append('%s is not installed (%s): the slot ports and flows on %s cannot '
                                  'be read' % (name, TOOLS.get(name, 'a host tool'), self.bridge))
        return self._tools[name]

    def _ovs(self, args):
        tool = self._tool(args[0])
        if tool is None:
            return None
        rc, out, err = self.run_command([tool] + list(args[1:]))
        if rc != 0:
            self.blind.append('%s failed: %s' % (' '.join(args[:2]), (err or out).strip()))
            return None
        return out

    def ports(self):
        """{port: slot id or None} for the bridge's slot ports (taps named gs{index}-{hash}).

        A tap whose name is no slot of this node's (another node's lab slot, a hand-made
        port) maps to None and is reported, never removed.
        """
        listed = self._ovs(['ovs-vsctl', 'list-ports', self.bridge])
        if listed is None:
            return {}
        taps = dict((slot.tap, slot.slot_id) for slot in
                    (Slot(self.node_id, index) for index in range(MAX_SLOTS)))
        ports = {}
        for port in listed.split():
            if TAP_NAME.matches(port):
                ports[port] = taps.get(port)
        return ports

    def flow_slots(self):
        out = self._ovs(['ovs-ofctl', '-O', 'OpenFlow13', 'dump-flows', self.bridge])
        if out is None:
            return set()
        slots = set()
        for match in COOKIE_RE.finditer(out):
            index = cookie_slot_index(int(match.group(1), 16))
            if index is not None:
                slots.add(Slot(self.node_id, index).slot_id)
        return slots

    def ssh_slots(self):
        """This node's slots with SSH rules: a file in ssh_dir, or a chain in the table."""
        found = self._slots_in('ssh', ('.nft',)) if self.dirs['ssh'] else set()
        if not self.nft_table:
            return found
        tool = self.bin_path('nft') if self.bin_path else 'nft'
        if tool is None:
            self.blind.append('nft is not installed (Debian package nftables): the slots\' SSH rules in table '
                              'inet %s cannot be read' % self.nft_table)
            return found
        rc, out, err = self.run_command([tool, '-j', 'list', 'table', 'inet', self.nft_table])
        if rc != 0:
            if not ssh.no_table(err):
                self.blind.append('nft -j list table inet %s failed: %s' % (self.nft_table, (err or out).strip()))
            return found
        try:
            chains = ssh.slot_chains(ssh.parse_table(out))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.blind.append('nft -j list table inet %s printed what is not its JSON: %s' % (self.nft_table, exc))
            return found
        return found | set(slot for slot in chains if self._own(slot))

    def vfio_records(self):
        """{GPU address: [its functions]} from vfio_bind's records; one that cannot be read blinds the node."""
        records = {}
        for name in self._list('vfio'):
            if not name.endswith('.json') or name.startswith('.'):
                continue
            path = os.path.join(self.dirs['vfio'], name)
            try:
                record = read_json(path, 'the vfio record')
            except StateFileError as exc:
                self.blind.append(str(exc))
                continue
            functions = record.get('functions') if record is not None else None
            if not PCI_ADDRESS.matches(name[:-5]) or not isinstance(functions, dict) \
                    or not all(PCI_ADDRESS.matches(address) for address in functions):
                self.blind.append('the vfio record %s is not the layout vfio_bind writes (named after a PCI '
                                  'address, "functions" keyed by PCI addresses)' % show(path, 4096))
                continue
            records[name[:-5]] = sorted(functions)
        return records

    def pci_devices(self):
        """The host's PCI addresses in sysfs, or None (and the node is blind) when unreadable."""
        if not self.sysfs_root:
            return None
        try:
            return set(PciBus(Sysfs(self.sysfs_root)).addresses())
        except PciError as exc:
            self.blind.append('cannot read the host\'s PCI devices: %s' % exc)
            return None

    @staticmethod
    def wanted_hostdevs(data, records):
        """[(role, address)] a passthrough lease's domain must hold (DomainError if unusable).

        The companions are the lease's (allocate records them); a lease written before they
        were recorded has them in the GPU's vfio_bind record (its group's other functions).
        """
        gpu = data.get('gpu_address')
        if 'companions' in data:
            companions = data.get('companions') or []
        else:
            companions = [f for f in records.get(gpu, []) if f != gpu]
        return slot_hostdevs(gpu, companions, data.get('nvme_address'),
                             data.get('fabric_vf_pci_address'))

    def report(self):
        leases, damaged = self.leases()
        domains = self.domains()
        present = self.pci_devices()
        artefacts = {
            'domain': set(domains),
            'dhcp_host': self._slots_in('dhcp_host', ('',)),
            'token': self._slots_in('token', ('.json',)),
            'disk': self._slots_in('disk', ('.raw', '.qcow2', '.image.json')),
            'seed': self._slots_in('seed', ('-seed.iso',)),
            'ssh': self.ssh_slots(),
        }
        if self.bridge:
            artefacts['flows'] = self.flow_slots()
        ports = self.ports() if self.bridge else {}
        artefacts['port'] = set(slot for slot in ports.values() if slot)
        held = set(leases) | set(d['slot_id'] for d in damaged)
        orphans = {}
        for kind, slots in sorted(artefacts.items()):
            for slot in slots - held:
                orphans.setdefault(slot, []).append(kind)
        for slot in orphans:
            orphans[slot].sort()
        leased_devices = set()
        for lease in leases.values():
            leased_devices.update((lease.get('data') or {}).get('devices') or [])
        in_domains = set()
        for domain in list(domains.values()) + list(self.foreign_domains.values()):
            in_domains.update(domain['hostdevs'])
        records = self.vfio_records()
        devices_to_return, kept_for_domain = [], []
        for address, functions in sorted(records.items()):
            if address in leased_devices:
                continue
            if in_domains.intersection([address] + functions):
                kept_for_domain.append(address)   # never free what a domain holds
            else:
                devices_to_return.append(address)
        holder_of = {}
        for other in list(domains.values()) + list(self.foreign_domains.values()):
            for address in other['hostdevs']:
                holder_of.setdefault(address, other['name'])
        mismatches, incomplete, drift = [], [], []
        for slot, lease in sorted(leases.items()):
            data = lease.get('data') or {}
            phase = lease.get('phase')
            if phase in INCOMPLETE_PHASES:
                incomplete.append({'slot_id': slot, 'allocation_id': lease.get('allocation_id'),
                                   'phase': phase, 'since': lease.get('updated_at'),
                                   'reason': lease.get('reason')})
            if phase not in POWER_PHASES:
                continue
            domain = domains.get(slot)
            if domain is None:
                mismatches.append({'slot_id': slot, 'problem': 'the lease says %s but there is '
                                   'no domain %s%s' % (phase, DOMAIN_PREFIX, slot)})
                continue
            if domain['active'] != (phase == 'running'):
                mismatches.append({'slot_id': slot, 'problem': 'domain %s is defined but not running' % domain['name']
                                   if phase == 'running' else 'domain %s runs, but the lease says its allocation '
                                   'stopped it' % domain['name']})
            if data.get('passthrough'):
                entry = self._drift(slot, lease, domain, records, holder_of)
                if entry:
                    drift.append(entry)
                    mismatches.append({'slot_id': slot, 'problem': 'domain %s lacks the hostdevs %s '
                                       'its lease lists' % (domain['name'], ', '.join(entry['missing']))})
        lost = lost_gpus(leases, present)
        return dict(
            lost_gpus=lost,
            leases=leases, damaged_leases=damaged, domains=domains,
            other_nodes_domains=sorted(d['name'] for d in self.foreign_domains.values()),
            orphans=orphans, orphan_slots=sorted(orphans),
            unknown_ports=sorted(port for port, slot in ports.items() if not slot),
            devices_to_return=devices_to_return, devices_kept_for_domains=kept_for_domain,
            mismatches=mismatches, incomplete=incomplete, hostdev_drift=drift, blind=self.blind,
            clean=not (orphans or devices_to_return or mismatches or damaged or self.blind or lost
                       or any(not slot for slot in ports.values())))

    def _drift(self, slot, lease, domain, records, holder_of):
        """The slot's hostdev drift (what its domain lacks, and whether reconcile may repair it)."""
        data = lease.get('data') or {}
        entry = {'slot_id': slot, 'allocation_id': lease.get('allocation_id'), 'domain': domain['name'],
                 'active': domain['active'], 'gpu_address': data.get('gpu_address'), 'companions': [],
                 'nvme_address': data.get('nvme_address'),
                 'fabric_vf_pci_address': data.get('fabric_vf_pci_address'), 'repairable': False}
        try:
            wanted = self.wanted_hostdevs(data, records)
        except DomainError as exc:
            wanted = [('device', address) for address in data.get('devices') or []]
            entry['blocked'] = 'the lease does not say which devices the domain holds: %s' % exc
        missing = [address for _role, address in wanted if address not in domain['hostdevs']]
        # A lease written before its GPU and companions were recorded still lists its devices.
        missing += [a for a in sorted(data.get('devices') or []) if a not in domain['hostdevs']
                    and a not in missing]
        if not missing:
            return None
        entry['missing'] = missing
        entry['companions'] = [address for role, address in wanted if role == 'companion']
        held = dict((address, holder_of[address]) for address in missing
                    if holder_of.get(address) not in (None, domain['name']))
        if held:
            entry['blocked'] = 'another domain holds %s' % ', '.join(
                '%s (%s)' % (address, name) for address, name in sorted(held.items()))
        elif 'blocked' not in entry and not all(a in [w for _r, w in wanted] for a in missing):
            entry['blocked'] = 'the lease lists %s, which is not one of the slot\'s gpu, companions, ' \
                'nvme or fabric VF' % ', '.join(a for a in missing if a not in [w for _r, w in wanted])
        entry['repairable'] = 'blocked' not in entry
        return entry


def lost_gpus(leases, present):
    """The passthrough leases whose GPU is not among the host's PCI devices ``present`` (None: unreadable)."""
    if present is None:
        return []
    lost = []
    for slot, lease in sorted(leases.items()):
        data = lease.get('data') or {}
        gpu = data.get('gpu_address')
        if data.get('passthrough') and PCI_ADDRESS.matches(gpu) and gpu not in present:
            lost.append({'slot_id': slot, 'allocation_id': lease.get('allocation_id'), 'phase': lease.get('phase'),
                         'gpu_address': gpu})
    return lost


def _join(items):
    return ', '.join(str(item) for item in items) or 'none'


def report_lines(state, repairs=None, check_mode=False):
    """What reconcile found and did on one node, for a person: one line per finding.

    ``state`` is node_state_info's result; ``repairs`` maps a slot id to the result of its
    ``slot_vm state=repaired`` task (``restored``, or ``failed``/``msg``). Lines about a
    slot start with the slot id, lines about the node with ``node``; each says what was
    found, what was done (or, in check mode, would be) and what the operator must do.
    """
    repairs = repairs or {}
    blind = state.get('blind') or []
    done = 'would be ' if check_mode else ''
    lines = []
    for what in blind:
        lines.append('node: cannot see: %s. Reconcile removed and repaired NOTHING; operator: fix '
                     'this and run reconcile again' % what)
    by_slot = {}

    def add(slot, text):
        by_slot.setdefault(slot, []).append(text)

    for slot, kinds in sorted((state.get('orphans') or {}).items()):
        if blind:
            add(slot, 'has no lease but holds %s: left alone (the node cannot be seen whole)' % _join(kinds))
        else:
            add(slot, 'has no lease but held %s: %sremoved' % (_join(kinds), done))
    for damaged in state.get('damaged_leases') or []:
        add(damaged['slot_id'], 'lease %s cannot be read (%s): the slot counts as held; operator: look '
            'at the file, then free it (gpuaas.slice.slot_lease state=absent force=true)'
            % (damaged['path'], damaged['problem']))
    for item in state.get('lost_gpus') or []:
        add(item['slot_id'], 'its GPU %s is not on the PCI bus (it fell off the bus, e.g. Xid 79, or was removed) '
            'while allocation %s holds it (phase %s): the VM has lost it; left as it is; operator: release the '
            'allocation; the slot is absent until the GPU is back (discover and approve again)'
            % (item['gpu_address'], item.get('allocation_id'), item.get('phase')))
    drift = dict((entry['slot_id'], entry) for entry in state.get('hostdev_drift') or [])
    for slot, entry in sorted(drift.items()):
        found = 'domain %s (%s) lacks the hostdevs %s of allocation %s' % (
            entry['domain'], 'running' if entry['active'] else 'shut off', _join(entry['missing']),
            entry['allocation_id'])
        result = repairs.get(slot)
        if blind:
            add(slot, '%s: not repaired (the node cannot be seen whole)' % found)
        elif not entry.get('repairable'):
            add(slot, '%s: not repaired, %s; operator: release the allocation, or free the device and '
                'run reconcile again' % (found, entry.get('blocked')))
        elif result is None or result.get('skipped'):
            add(slot, '%s: not repaired (reconcile did not try); operator: run reconcile again' % found)
        elif result.get('failed') or 'restored' not in result:
            add(slot, '%s: the repair failed: %s; operator: run allocate again with allocation %s, or '
                'release it' % (found, result.get('msg', 'see the job log'), entry['allocation_id']))
        elif entry['active']:
            add(slot, '%s: its definition %s them again; the guest runs WITHOUT them until it is '
                'restarted; operator: restart the VM when its tenant allows (shut it down, then run '
                'allocate again with allocation %s)' % (found, 'would get' if check_mode else 'has',
                                                        entry['allocation_id']))
        else:
            add(slot, '%s: %sredefined with them; operator: run allocate again with allocation %s, which '
                'binds the devices to vfio-pci and starts it' % (found, done, entry['allocation_id']))
    for mismatch in state.get('mismatches') or []:
        if mismatch['slot_id'] in drift and 'lacks the hostdevs' in mismatch['problem']:
            continue
        lease = (state.get('leases') or {}).get(mismatch['slot_id']) or {}
        add(mismatch['slot_id'], '%s: left as it is; operator: run allocate again with allocation %s, '
            'or release it' % (mismatch['problem'], lease.get('allocation_id')))
    for item in state.get('incomplete') or []:
        if item['phase'] == 'quarantined':
            add(item['slot_id'], 'is quarantined since %s (allocation %s): %s; it is never allocated; '
                'operator: deal with that, then run release with gpuaas_clear_quarantine=true'
                % (item.get('since'), item.get('allocation_id'), item.get('reason') or 'no reason recorded'))
        else:
            add(item['slot_id'], 'allocation %s stopped in phase %s (since %s): left as it is; operator '
                'or control plane: run %s again with that allocation id, or release it'
                % (item.get('allocation_id'), item['phase'], item.get('since'),
                   'release' if item['phase'] in ('releasing', 'wiping') else 'allocate'))
    for slot in sorted(by_slot):
        lines.extend('%s: %s' % (slot, text) for text in by_slot[slot])
    for address in state.get('devices_to_return') or []:
        lines.append('node: device %s was on vfio-pci with no lease and no domain holding it: %s'
                     % (address, 'left alone (the node cannot be seen whole)' if blind else
                        '%sgiven back to its host driver' % done))
    for address in state.get('devices_kept_for_domains') or []:
        lines.append('node: device %s is on vfio-pci with no lease, but a domain holds it: kept; operator: '
                     'find out whose VM that is (virsh dumpxml) before releasing anything' % address)
    for port in state.get('unknown_ports') or []:
        lines.append('node: tap port %s belongs to no slot of this node: reported, not removed; operator: '
                     'remove it by hand if nothing uses it' % port)
    if not lines:
        lines.append('node: agrees with its leases (%d leased slot(s)): nothing to do'
                     % len(state.get('leases') or {}))
    return lines
