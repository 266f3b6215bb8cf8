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
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner, check_timeout
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_path
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import CLASS_ETHERNET, CLASS_INFINIBAND
from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import vf_guids, vf_mac
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import NODE_ID, check_int

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


class FabricVlan:
    """want / have / plan for one fabric VF."""

    def __init__(self, module, vf_address, vlan, node_id=None, sysfs_root='/sys', proc_root='/proc', timeout=10.0):
        self.module = module
        self.vf_address = devctl.check_address(vf_address, 'vf_address')
        self.vlan = check_vlan(vlan)
        self.node_id = NODE_ID.check(node_id, 'node_id') if node_id is not None else None
        self.timeout = check_timeout(timeout)
        self.sysfs = devctl.open_sysfs(check_path(sysfs_root, 'sysfs_root'))
        self.proc_root = check_path(proc_root, 'proc_root')   # the shared device options; not read
        self.runner = Runner(module, devctl.DeviceError)
        self.warnings = []

    def find_vf(self):
        """(PF device, VF index, PF netdev) of the VF, from sysfs."""
        bus = devctl.open_bus(self.sysfs)
        vf = devctl.get_device(self.sysfs, bus, self.vf_address)
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

    def run(self):
        pf, index, netdev = self.find_vf()
        sub = (pf.pci_class or 0) >> 8
        if sub == CLASS_INFINIBAND:
            guid = vf_guids(self.node_id, pf.address, index)[1] if self.node_id else None
            return dict(changed=False, actions=[], kind=INFINIBAND, pf_address=pf.address, vf_index=index,
                        netdev=netdev, port_guid=guid, mac=None, vlan=None)
        if sub != CLASS_ETHERNET:
            raise devctl.DeviceError('%s is not an Ethernet (0x0200) or InfiniBand (0x0207) PF: its VF %s '
                                     'has no fabric segment to set' % (pf.describe(), self.vf_address))
        if netdev is None:
            raise devctl.DeviceError('%s has no network interface (nothing under %s/net): the VF VLAN is '
                                     'set and read through it' % (pf.describe(), self.sysfs.path(pf.rel)))
        want = {'vlan': self.vlan, 'spoofchk': True, 'trust': False}
        have = self.read(netdev, index)
        plan = devctl.DevicePlan(self.module, self.sysfs, self.timeout)
        if have != want:
            plan.run(pf.address, 'put VF %d on VLAN %d, spoof checking on, trust off' % (index, self.vlan),
                     [self.runner.path('ip'), 'link', 'set', 'dev', netdev, 'vf', str(index), 'vlan',
                      str(self.vlan), 'spoofchk', 'on', 'trust', 'off'],
                     key='vf %d' % index, before=have, after=want)
            plan.change('read VF %d of %s back' % (index, netdev), mutates=False,
                        verify=lambda: self.mismatch(netdev, index, want))
        plan.execute()
        mac = vf_mac(self.node_id, pf.address, index) if self.node_id else None
        return plan.result(kind=ETHERNET, pf_address=pf.address, vf_index=index, netdev=netdev,
                           port_guid=None, mac=mac, commands=plan.commands(), **want)

    def mismatch(self, netdev, index, want):
        got = self.read(netdev, index)
        if got != want:
            return 'VF %d of %s holds %s after setting %s' % (index, netdev, got, want)
        return None
