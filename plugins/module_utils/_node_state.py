# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: what a node holds for its slots, compared with its leases.

Reconcile reads everything a slot leaves on a node (libvirt domain, OVS port and flows,
dnsmasq host entry, telemetry token, boot disk, seed, vfio-pci binding records) and
compares it with the leases. Anything of a slot that has no lease is an orphan; a device
on vfio-pci that no lease lists and no domain holds goes back to its host driver; a leased,
running slot whose domain is gone or holds other devices is a mismatch for an operator.
Whatever cannot be read makes the node *blind*: the caller then removes nothing, because
cleaning what it cannot see is how a GPU in use gets handed out twice.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

from ansible_collections.gpuaas.slice.plugins.module_utils._domain import domain_facts, tap_name
from ansible_collections.gpuaas.slice.plugins.module_utils._layout import (
    LayoutError, MAX_SLOTS, cookie_slot_index, parse_slot_id, slot_id as make_slot_id)
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import LeaseError, read_lease

DOMAIN_PREFIX = 'gpuaas-'
TAP_RE = re.compile(r'^gs[0-9]{1,3}-[0-9a-f]{8}$')
COOKIE_RE = re.compile(r'cookie=(0x[0-9a-f]+)')
INCOMPLETE_PHASES = ('reserved', 'provisioning', 'releasing', 'wiping', 'quarantined')


def _slot_of(name, suffix=''):
    """The slot id a file called ``{slot_id}{suffix}`` belongs to, or None."""
    if not name.endswith(suffix):
        return None
    candidate = name[:len(name) - len(suffix)] if suffix else name
    try:
        parse_slot_id(candidate)
    except LayoutError:
        return None
    return candidate


class NodeState(object):
    def __init__(self, run_command, node_id, lease_dir, hosts_dir, token_dir, disk_dir, seed_dir,
                 vfio_state_dir, bridge, libvirt_domains):
        """``libvirt_domains`` is a callable returning [(name, active, xml)] or raising."""
        self.run_command = run_command
        self.node_id = node_id
        self.dirs = dict(lease=lease_dir, dhcp_host=hosts_dir, token=token_dir, disk=disk_dir,
                         seed=seed_dir, vfio=vfio_state_dir)
        self.bridge = bridge
        self.libvirt_domains = libvirt_domains
        self.blind = []

    def _list(self, kind):
        path = self.dirs[kind]
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            if not os.path.exists(path):
                return []   # never created: nothing of that kind on this node
            self.blind.append('cannot list %s (%s): %s' % (path, kind, exc.strerror))
            return []

    def _slots_in(self, kind, suffixes):
        found = set()
        for name in self._list(kind):
            for suffix in suffixes:
                slot = _slot_of(name, suffix)
                if slot:
                    found.add(slot)
        return found

    def leases(self):
        leases, damaged = {}, []
        for name in self._list('lease'):
            slot = _slot_of(name, '.json')
            if not slot:
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
            domains[slot] = {'name': name, 'active': bool(active),
                             'hostdevs': [item.split(' ')[0] for item in facts.get('hostdevs', [])]}
        return domains

    def _ovs(self, args):
        rc, out, err = self.run_command(args)
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
        taps = dict((tap_name(slot), slot) for slot in
                    (make_slot_id(self.node_id, index) for index in range(MAX_SLOTS)))
        ports = {}
        for port in listed.split():
            if TAP_RE.match(port):
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
                slots.add(make_slot_id(self.node_id, index))
        return slots

    def vfio_records(self):
        records = {}
        for name in self._list('vfio'):
            if not name.endswith('.json') or name.startswith('.'):
                continue
            path = os.path.join(self.dirs['vfio'], name)
            try:
                with open(path) as handle:
                    record = json.load(handle)
                records[name[:-5]] = sorted(record.get('functions', {}))
            except (IOError, OSError, ValueError) as exc:
                self.blind.append('cannot read the vfio record %s: %s' % (path, exc))
        return records

    def report(self):
        leases, damaged = self.leases()
        domains = self.domains()
        artefacts = {
            'domain': set(domains),
            'dhcp_host': self._slots_in('dhcp_host', ('',)),
            'token': self._slots_in('token', ('.json',)),
            'disk': self._slots_in('disk', ('.raw', '.qcow2', '.image.json')),
            'seed': self._slots_in('seed', ('-seed.iso',)),
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
        for domain in domains.values():
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
        mismatches, incomplete = [], []
        for slot, lease in sorted(leases.items()):
            data = lease.get('data') or {}
            phase = lease.get('phase')
            if phase in INCOMPLETE_PHASES:
                incomplete.append({'slot_id': slot, 'allocation_id': lease.get('allocation_id'),
                                   'phase': phase, 'since': lease.get('updated_at'),
                                   'reason': lease.get('reason')})
            if phase != 'running':
                continue
            domain = domains.get(slot)
            if domain is None:
                mismatches.append({'slot_id': slot, 'problem': 'the lease says running but there is '
                                   'no domain %s%s' % (DOMAIN_PREFIX, slot)})
                continue
            if not domain['active']:
                mismatches.append({'slot_id': slot, 'problem': 'domain %s is defined but not running'
                                   % domain['name']})
            if data.get('passthrough'):
                want = set(data.get('devices') or [])
                have = set(domain['hostdevs'])
                if not want <= have:
                    mismatches.append({'slot_id': slot, 'problem': 'domain %s lacks the hostdevs %s '
                                       'its lease lists' % (domain['name'], ', '.join(sorted(want - have)))})
        return dict(
            leases=leases, damaged_leases=damaged, domains=domains,
            orphans=orphans, orphan_slots=sorted(orphans),
            unknown_ports=sorted(port for port, slot in ports.items() if not slot),
            devices_to_return=devices_to_return, devices_kept_for_domains=kept_for_domain,
            mismatches=mismatches, incomplete=incomplete, blind=self.blind,
            clean=not (orphans or devices_to_return or mismatches or damaged or self.blind
                       or any(not slot for slot in ports.values())))
