# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: a slot's fabric VF on its tenant's segment (fabric_vlan).

The VF is found from its PCI address: its PF is the ``physfn`` link, its index the PF's
``virtfnN`` link that points back at it (the same VF ``sriov_vfs`` gave its MAC or GUIDs).

* **Ethernet (RoCE)**: the VF gets the tenant's VLAN, spoof checking on and trust off,
  through the PF where the tenant cannot touch it (``ip link set dev PF vf N vlan V spoofchk
  on trust off``), and the three are read back from the kernel (``ip -j -d link show dev
  PF``, the VF's entry of ``vfinfo_list``). VLAN 0 is the release: the VF leaves every
  tenant's segment (untagged, where the switch ports carry no tenant VLAN). A VF the
  kernel does not report, or reports without spoof checking or trust, cannot be verified:
  the module fails rather than report a VF it cannot see as isolated.
* **InfiniBand**: a VF's isolation is its partition, kept by the subnet manager
  (``_subnet_manager.py``); this module changes nothing and returns the VF's port GUID, the
  one ``sriov_vfs`` set, for the subnet manager's membership.

With a node id it returns the VF's identity as ``sriov_vfs`` derived it (an Ethernet VF's MAC,
an InfiniBand VF's port GUID): the guest finds its fabric interface by it (the seed).

``state=reconciled`` (:class:`NodeFabric`, the reconcile role) converges every fabric VF of
the node's slots (the approved map's, and each live lease's ``data.fabric_vf_pci_address``)
to the node's live leases, which ``_tenant.live_tenants`` reads (phase reserved, provisioning,
running or stopped, a valid tenant): a slot whose live lease has passthrough and a fabric VF gets its
``data.network.vlan`` (0 without one), every other slot's VF VLAN 0, each with spoof checking
on and trust off, read back. An InfiniBand VF is left to the subnet manager: the result lists
the node's port GUIDs and the memberships its live leases ask for (``data.network.pkey``),
for ``fabric_partition state=converged``. A lease that cannot be read, or carries an invalid
VLAN or key, puts its VF on no tenant's segment, and is named in ``problems``; so is a VF
that cannot be found or read (the others are still converged).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner, check_timeout
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_dir, check_path
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import lease_path, read_lease
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import CLASS_ETHERNET, CLASS_INFINIBAND
from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import vf_guids, vf_mac
from ansible_collections.gpuaas.slice.plugins.module_utils._subnet_manager import check_guid, check_pkey
from ansible_collections.gpuaas.slice.plugins.module_utils._tenant import live_tenants
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    NODE_ID, ContractError, GpuaasError, Slot, check_int, show)

ETHERNET = 'ethernet'
INFINIBAND = 'infiniband'
# 802.1Q: 0 is "no VLAN" (the release), 1 the default VLAN, 4095 reserved.
VLAN_MIN, VLAN_MAX = 2, 4094


def check_vlan(value, what='vlan'):
    """0 (none) or an 802.1Q VLAN a tenant may have: 2-4094."""
    vlan = check_int(value, what, 0, VLAN_MAX)
    if vlan == 1:
        raise devctl.DeviceError('%s 1 is the default VLAN, which every untagged port is on: a tenant '
                                 'VLAN is 2-4094 (0: none)' % what)
    return vlan


def vf_vlan(entry):
    """The VLAN of one ``vfinfo_list`` entry as iproute2 prints it: ``vlan_list: [{vlan, qos}]``
    (an empty object for VLAN 0), or ``vlan`` on kernels without IFLA_VF_VLAN_LIST, left out
    when 0."""
    listed = entry.get('vlan_list')
    if isinstance(listed, list):
        first = listed[0] if listed and isinstance(listed[0], dict) else {}
        return first.get('vlan', 0)
    return entry.get('vlan', 0)


def isolated(vlan):
    """What the kernel must report for a VF on ``vlan``."""
    return {'vlan': vlan, 'spoofchk': True, 'trust': False}


class FabricVlan:
    """want / have / plan for one fabric VF (``state=present``)."""

    def __init__(self, module, vf_address=None, vlan=None, node_id=None, sysfs_root='/sys', proc_root='/proc',
                 timeout=10.0, state='present', lease_dir=None, slots=None):
        self.module = module
        self.vf_address = devctl.check_address(vf_address, 'vf_address') if state == 'present' else None
        self.vlan = check_vlan(vlan) if state == 'present' else None
        self.node_id = NODE_ID.check(node_id, 'node_id') if node_id is not None else None
        self.timeout = check_timeout(timeout)
        self.sysfs = devctl.open_sysfs(check_path(sysfs_root, 'sysfs_root'))
        self.proc_root = check_path(proc_root, 'proc_root')   # the shared device options; not read
        self.runner = Runner(module, devctl.DeviceError)
        self.warnings = []

    def find_vf(self, address):
        """(PF device, VF index, PF netdev) of the VF at ``address``, from sysfs."""
        bus = devctl.open_bus(self.sysfs)
        vf = devctl.get_device(self.sysfs, bus, address)
        if not vf.is_vf:
            raise devctl.DeviceError('%s is not an SR-IOV VF (it has no physfn link): give the slot\'s '
                                     'fabric VF' % vf.describe())
        pf = devctl.get_device(self.sysfs, bus, self.sysfs.link_name(vf.rel + '/physfn'))
        index = None
        for entry in self.sysfs.listdir(pf.rel):
            if entry.startswith('virtfn') and entry[6:].isdigit() and \
                    self.sysfs.link_name('%s/%s' % (pf.rel, entry)) == vf.address:
                index = int(entry[6:])
        if index is None:
            raise devctl.DeviceError('%s has no virtfn link to %s: the VF index cannot be known'
                                     % (pf.describe(), vf.address))
        names = devctl.netdevs(self.sysfs, pf)
        return pf, index, names[0] if names else None

    def read(self, netdev, index):
        """{vlan, spoofchk, trust} of VF ``index`` as the kernel reports it; DeviceError when it
        does not report all three (a VF that cannot be seen is not taken as isolated)."""
        ip = devctl.tool(self.runner, 'ip', 'iproute2', 'the VF VLAN is set and read through it')
        argv = [ip, '-j', '-d', 'link', 'show', 'dev', netdev]
        rc, out, err = self.runner(argv, check=False)
        if rc != 0:
            raise devctl.DeviceError('%s failed (status %d): %s' % (' '.join(argv), rc, (err or out).strip()))
        entries = [e for e in devctl.ip_json(argv, out).get('vfinfo_list') or []
                   if isinstance(e, dict) and e.get('vf') == index]
        if not entries or any(key not in entries[0] for key in ('spoofchk', 'trust')):
            raise devctl.DeviceError('the kernel does not report VF %d of %s with its spoof checking and '
                                     'trust (%s): its isolation cannot be verified, so the module refuses'
                                     % (index, netdev, ' '.join(argv)))
        entry = entries[0]
        return {'vlan': vf_vlan(entry), 'spoofchk': bool(entry['spoofchk']), 'trust': bool(entry['trust'])}

    @staticmethod
    def kind(pf, vf_address):
        """ETHERNET or INFINIBAND, from the PF's class."""
        sub = (pf.pci_class or 0) >> 8
        if sub == CLASS_INFINIBAND:
            return INFINIBAND
        if sub != CLASS_ETHERNET:
            raise devctl.DeviceError('%s is not an Ethernet (0x0200) or InfiniBand (0x0207) PF: its VF %s '
                                     'has no fabric segment to set' % (pf.describe(), vf_address))
        return ETHERNET

    def converge(self, plan, pf, index, netdev, vlan, key):
        """Plan VF ``index`` of ``pf`` onto ``vlan``, isolated, read back; (have, want)."""
        if netdev is None:
            raise devctl.DeviceError('%s has no network interface (nothing under %s/net): the VF VLAN is '
                                     'set and read through it' % (pf.describe(), self.sysfs.path(pf.rel)))
        want = isolated(vlan)
        have = self.read(netdev, index)
        if have != want:
            plan.run(pf.address, 'put VF %d on VLAN %d, spoof checking on, trust off' % (index, vlan),
                     [self.runner.path('ip'), 'link', 'set', 'dev', netdev, 'vf', str(index), 'vlan',
                      str(vlan), 'spoofchk', 'on', 'trust', 'off'],
                     key=key, before=have, after=want)
            plan.change('read VF %d of %s back' % (index, netdev), mutates=False,
                        verify=lambda: self.mismatch(netdev, index, want))
        return have, want

    def run(self):
        pf, index, netdev = self.find_vf(self.vf_address)
        if self.kind(pf, self.vf_address) == INFINIBAND:
            guid = vf_guids(self.node_id, pf.address, index)[1] if self.node_id else None
            return dict(changed=False, actions=[], kind=INFINIBAND, pf_address=pf.address, vf_index=index,
                        netdev=netdev, port_guid=guid, mac=None, vlan=None)
        plan = devctl.DevicePlan(self.module, self.sysfs, self.timeout)
        _have, want = self.converge(plan, pf, index, netdev, self.vlan, 'vf %d' % index)
        plan.execute()
        mac = vf_mac(self.node_id, pf.address, index) if self.node_id else None
        return plan.result(kind=ETHERNET, pf_address=pf.address, vf_index=index, netdev=netdev,
                           port_guid=None, mac=mac, commands=plan.commands(), **want)

    def mismatch(self, netdev, index, want):
        got = self.read(netdev, index)
        if got != want:
            return 'VF %d of %s holds %s after setting %s' % (index, netdev, got, want)
        return None


def slot_vfs(slots, node_id):
    """{slot_id: fabric VF address} of the node's slots, from approved map entries
    (``capacity_metadata.fabric_vf_pci_address``) or discovered slots (``fabric_vf_pci_address``)."""
    if not isinstance(slots, list):
        raise devctl.DeviceError('slots must be a list of the node\'s slots, not %s' % show(slots))
    found = {}
    for number, entry in enumerate(slots):
        where = 'slots[%d]' % number
        if not isinstance(entry, dict):
            raise devctl.DeviceError('%s must be a mapping with slot_id, not %s' % (where, show(entry)))
        try:
            slot = Slot.parse(entry.get('slot_id'))
        except ContractError as exc:
            raise devctl.DeviceError('%s: %s' % (where, exc))
        if slot.node_id != node_id:
            raise devctl.DeviceError('%s.slot_id %s is not a slot of node %s' % (where, slot.slot_id, node_id))
        metadata = entry.get('capacity_metadata') or {}
        address = entry.get('fabric_vf_pci_address') or (
            metadata.get('fabric_vf_pci_address') if isinstance(metadata, dict) else None)
        if address:
            found[slot.slot_id] = devctl.check_address(address, '%s fabric_vf_pci_address' % where)
    return found


def leased_fabric(lease_dir, node_id):
    """({slot_id: {vf, tenant, vlan, pkey}}, [problem]): what each live lease of the node with a
    fabric VF asks of it (no VLAN and no key without passthrough: the VF is not the guest's)."""
    # A stopped VM's allocation keeps its segment: slot_power starts it again without allocate.
    tenants, problems = live_tenants(lease_dir, node_id)
    found = {}
    for tenant, entry in sorted(tenants.items()):
        for slot in entry['members']:
            try:
                data = (read_lease(lease_path(lease_dir, slot.slot_id)) or {}).get('data') or {}
                if not data.get('fabric_vf_pci_address'):
                    continue
                vf = devctl.check_address(data['fabric_vf_pci_address'], 'data.fabric_vf_pci_address')
                network = (data.get('network') or {}) if data.get('passthrough') else {}
                if not isinstance(network, dict):
                    raise devctl.DeviceError('data.network is not a mapping')
                pkey = network.get('pkey')
                found[slot.slot_id] = {
                    'vf': vf, 'tenant': tenant, 'vlan': check_vlan(network.get('vlan') or 0, 'data.network.vlan'),
                    'pkey': None if pkey is None else check_pkey(pkey, 'data.network.pkey')}
            except (GpuaasError, IOError, OSError) as exc:
                problems.append('%s: %s; its fabric VF joins no tenant' % (slot.slot_id, exc))
    return found, problems


class NodeFabric(FabricVlan):
    """``state=reconciled``: every fabric VF of the node's slots as its live leases say."""

    def __init__(self, module, node_id=None, lease_dir=None, slots=None, **common):
        super(NodeFabric, self).__init__(module, node_id=node_id, **common)
        if self.node_id is None:
            raise devctl.DeviceError('state=reconciled needs node_id')
        self.lease_dir = check_dir(lease_dir, 'lease_dir')
        self.slots = slot_vfs(slots or [], self.node_id)

    def wanted(self):
        """{slot_id: (vf address, live lease's fabric or None)}, [problem]."""
        leased, problems = leased_fabric(self.lease_dir, self.node_id)
        vfs = dict((slot_id, (vf, None)) for slot_id, vf in self.slots.items())
        vfs.update((slot_id, (want['vf'], want)) for slot_id, want in leased.items())
        holder = {}
        for slot_id, (vf, _want) in sorted(vfs.items()):
            if vf in holder:
                raise devctl.DeviceError('%s and %s both name fabric VF %s (approved map or lease): a VF is one '
                                         'slot\'s; an operator must look' % (holder[vf], slot_id, vf))
            holder[vf] = slot_id
        return vfs, problems

    def run(self):
        vfs, problems = self.wanted()
        plan = devctl.DevicePlan(self.module, self.sysfs, self.timeout)
        found, guids, members = [], {}, []
        for slot_id, (vf, lease) in sorted(vfs.items()):
            try:
                pf, index, netdev = self.find_vf(vf)
                if self.kind(pf, vf) == INFINIBAND:
                    guid = check_guid(vf_guids(self.node_id, pf.address, index)[1])
                    guids[guid] = slot_id
                    if lease and lease['pkey'] is not None:
                        members.append({'slot_id': slot_id, 'port_guid': guid, 'tenant': lease['tenant'],
                                        'pkey': '0x%04x' % lease['pkey']})
                    continue
                have, want = self.converge(plan, pf, index, netdev, lease['vlan'] if lease else 0, slot_id)
            except devctl.DeviceError as exc:
                problems.append('%s: fabric VF %s: %s' % (slot_id, vf, exc))
                continue
            if have != want:
                found.append({'slot_id': slot_id, 'vf_address': vf, 'found': have, 'set': want})
        plan.execute()
        return plan.result(node_id=self.node_id, vlans=found, problems=problems, port_guids=sorted(guids),
                           guid_slots=guids, members=members, commands=plan.commands())


def fabric_lines(vlans, partitions, check_mode=False, known=()):
    """Report lines (reconcile) for the fabric_vlan state=reconciled result and the
    fabric_partition state=converged result (either may be empty: skipped); ``known``: lease
    problems another line already reports (tenant_network's)."""
    done = 'would be set' if check_mode else 'set'
    lines = []
    for item in vlans.get('vlans') or []:
        lines.append('%s: fabric VF %s held %s: %s to VLAN %d, spoof checking on, trust off'
                     % (item['slot_id'], item['vf_address'], describe_vf(item['found']), done, item['set']['vlan']))
    for problem in vlans.get('problems') or []:
        if problem not in known:
            lines.append('%s; operator: look at it' % problem)
    slot_of = vlans.get('guid_slots') or {}
    for change in partitions.get('changes') or []:
        lines.append('%s: InfiniBand VF %s was in partitions %s: %s to %s'
                     % (slot_of.get(change['port_guid'], 'node'), change['port_guid'],
                        ', '.join(change['found']) or 'none', done, ', '.join(change['set']) or 'none'))
    if partitions.get('msg') and 'changes' not in partitions:   # it failed (registered with failed_when: false)
        lines.append('node: the subnet manager\'s partitions were not converged: %s; operator: look at it'
                     % partitions.get('msg'))
    return lines


def describe_vf(found):
    return 'VLAN %d, spoof checking %s, trust %s' % (found['vlan'], 'on' if found['spoofchk'] else 'off',
                                                     'on' if found['trust'] else 'off')
