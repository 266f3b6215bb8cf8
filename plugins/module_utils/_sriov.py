# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: SR-IOV VF count and the VF properties tenants must not control.

The VF count is ``sriov_numvfs``; the kernel refuses to change a non-zero count to
another non-zero count (EBUSY), so a change goes through 0, which destroys every VF.

Each VF then gets, from the PF side where the tenant cannot touch it:

* Ethernet: a MAC, spoof checking on, trust off and a link state, in one
  ``ip link set dev <pf> vf N mac .. spoofchk on trust off state ..``;
* InfiniBand: a node GUID and a port GUID (never the all-zero GUID that breaks RDMA) and
  a link state, through the mlx5 ``sriov/N/{node,port,policy}`` files where the driver
  has them (MLNX_OFED) or ``ip link set dev <ipoib> vf N node_guid .. port_guid .. state ..``.

The values are a pure function of the node id, the PF's address and the VF index (see
:func:`vf_mac` and :func:`vf_guids`): every run, a re-run after a crash and the control
plane compute the same ones, and two hosts never share one.

A PF of any other class (an NVMe controller, an accelerator) has VFs that carry no MAC or
GUID: there is nothing for the PF side to set, so the module would be converging a count
while claiming to guarantee identities it cannot. It refuses such a PF unless the operator
says so with ``vf_identity='none'``; then only the count is converged. ``none`` is refused
on an Ethernet or InfiniBand PF, whose VFs must always get their MAC or GUID, spoof
checking and trust off (a VF without them lets a tenant pick its own address).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner, check_timeout
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_path
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import (
    CLASS_ETHERNET,
    CLASS_INFINIBAND,
    PciError,
    vf_address,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import NODE_ID, check_int

LINK_STATES = ('auto', 'enable', 'disable')
# mlx5 sysfs policy for each ip-link state.
MLX5_POLICY = {'auto': 'Follow', 'enable': 'Up', 'disable': 'Down'}
ETHERNET = 'ethernet'
INFINIBAND = 'infiniband'
OTHER = 'other'
# vf_identity: 'derived' (each VF gets its MAC or GUIDs, the default) or 'none' (VFs of a PF
# class that has no network identity: only the count is converged).
VF_IDENTITIES = ('derived', 'none')
# sriov_numvfs is a u16 in the kernel (kstrtou16).
MAX_VFS = 0xffff


def _digest(kind, node_id, pf_address, index):
    text = '%s:%s:%s:%d' % (kind, NODE_ID.check(node_id, 'node_id'), pf_address, index)
    return bytearray(hashlib.sha256(text.encode('utf-8')).digest())


def _local_unicast(raw):
    """Set the locally-administered bit and clear the group bit of the first octet."""
    raw[0] = (raw[0] & 0xfc) | 0x02
    return ':'.join('%02x' % b for b in raw)


def vf_mac(node_id, pf_address, index):
    """MAC of VF ``index`` of ``pf_address``: 6 bytes of sha256('vf-mac:{node}:{pf}:{index}').

    The first octet has the locally-administered bit set and the group bit cleared, so
    the MAC is a valid unicast address that never collides with a vendor (OUI) address.
    """
    return _local_unicast(_digest('vf-mac', node_id, pf_address, index)[:6])


def vf_guids(node_id, pf_address, index):
    """(node GUID, port GUID) of an InfiniBand VF, 8 bytes each, from two sha256 digests.

    Same rule as :func:`vf_mac` for the first octet, so neither is ever all zero.
    """
    return (_local_unicast(_digest('vf-node-guid', node_id, pf_address, index)[:8]),
            _local_unicast(_digest('vf-port-guid', node_id, pf_address, index)[:8]))


def _norm(value):
    return value.lower() if isinstance(value, str) else value


class SriovVfs:
    """want / have / actions for one PF's VFs."""

    def __init__(self, module, address, num_vfs, node_id, link_state='auto', drivers_autoprobe=None,
                 ib_method='auto', vf_identity='derived', sysfs_root='/sys', proc_root='/proc',
                 timeout=10.0):
        self.module = module
        self.address = devctl.check_address(address)
        self.num_vfs = check_int(num_vfs, 'num_vfs', 0, MAX_VFS)
        self.node_id = NODE_ID.check(node_id, 'node_id')
        self.timeout = check_timeout(timeout)
        self.link_state = link_state
        self.autoprobe = drivers_autoprobe
        self.ib_method = ib_method
        if vf_identity not in VF_IDENTITIES:
            raise devctl.DeviceError('vf_identity must be one of %s, got %r'
                                     % (', '.join(VF_IDENTITIES), vf_identity))
        self.vf_identity = vf_identity
        self.sysfs = devctl.open_sysfs(check_path(sysfs_root, 'sysfs_root'))
        self.proc_root = check_path(proc_root, 'proc_root')
        self.runner = Runner(module, devctl.DeviceError)
        self.verified = None            # the VF properties read back after a change
        self.warnings = []

    # -- have -------------------------------------------------------------

    def ip(self):
        return devctl.tool(self.runner, 'ip', 'iproute2', 'the VF properties are set and read '
                           'through it')

    def vf_addresses(self):
        """{index: address} of the VFs that exist, from the PF's virtfnN links."""
        found = {}
        for entry in self.sysfs.listdir(self.pf.rel):
            if entry.startswith('virtfn') and entry[6:].isdigit():
                found[int(entry[6:])] = self.sysfs.link_name('%s/%s' % (self.pf.rel, entry))
        return found

    def _ip_vfinfo(self, netdev):
        argv = [self.ip(), '-j', 'link', 'show', 'dev', netdev]
        rc, out, err = self.runner(argv, check=False)
        if rc != 0:
            raise devctl.DeviceError('%s failed (status %d): %s'
                                     % (' '.join(argv), rc, (err or out).strip()))
        link = devctl.ip_json(argv, out)
        props = {}
        for entry in link.get('vfinfo_list') or []:
            if not isinstance(entry, dict) or not isinstance(entry.get('vf'), int):
                continue
            item = {}
            mac = entry.get('address', entry.get('mac'))
            if self.kind == ETHERNET and mac is not None:
                item['mac'] = _norm(mac)
            for key in ('spoofchk', 'trust'):
                if key in entry:
                    item[key] = bool(entry[key])
            if 'link_state' in entry:
                item['link_state'] = entry['link_state']
            for key, name in (('node_guid', 'node guid'), ('port_guid', 'port guid')):
                value = entry.get(name, entry.get(key))
                if value is not None:
                    item[key] = _norm(value)
            props[entry['vf']] = item
        return props

    def _sysfs_vfinfo(self, count):
        props = {}
        inverse = dict((v, k) for k, v in MLX5_POLICY.items())
        for index in range(count):
            base = '%s/sriov/%d/' % (self.pf.rel, index)
            item = {}
            for key, attr in (('node_guid', 'node'), ('port_guid', 'port')):
                value = self.sysfs.read(base + attr)
                if value is not None:
                    item[key] = _norm(value)
            policy = self.sysfs.read(base + 'policy')
            if policy in inverse:
                item['link_state'] = inverse[policy]
            props[index] = item
        return props

    def read_props(self, count):
        if not count:
            return {}
        if self.kind == OTHER:
            return dict((index, {}) for index in range(count))
        if self.method == 'sysfs':
            return self._sysfs_vfinfo(count)
        return self._ip_vfinfo(self.netdev)

    def want_props(self, index):
        if self.kind == OTHER:
            return {}
        if self.kind == ETHERNET:
            return {'mac': vf_mac(self.node_id, self.address, index), 'spoofchk': True,
                    'trust': False, 'link_state': self.link_state}
        node, port = vf_guids(self.node_id, self.address, index)
        return {'node_guid': node, 'port_guid': port, 'link_state': self.link_state}

    # -- checks -----------------------------------------------------------

    def _check_pf(self):
        pf = self.pf
        if pf.is_vf:
            raise devctl.DeviceError('%s is a VF; give the address of its PF (%s)'
                                     % (pf.address, self.sysfs.link_name(pf.rel + '/physfn')))
        total = pf.read_int('sriov_totalvfs')
        if total is None:
            raise devctl.DeviceError('%s does not support SR-IOV (it has no sriov_totalvfs)'
                                     % pf.describe())
        if self.num_vfs > total:
            raise devctl.DeviceError(
                'num_vfs %d is more than %s offers: sriov_totalvfs is %d (the kernel refuses '
                'with ERANGE)' % (self.num_vfs, pf.address, total), total_vfs=total)
        sub = (pf.pci_class or 0) >> 8
        if sub in (CLASS_ETHERNET, CLASS_INFINIBAND):
            self.kind = ETHERNET if sub == CLASS_ETHERNET else INFINIBAND
            if self.vf_identity == 'none':
                raise devctl.DeviceError(
                    '%s is an %s PF: its VFs always get their derived %s, spoof checking on and '
                    'trust off, so vf_identity=none does not apply to it (leave vf_identity at '
                    'derived)' % (pf.describe(), 'Ethernet' if sub == CLASS_ETHERNET else
                                  'InfiniBand', 'MAC' if sub == CLASS_ETHERNET else 'GUIDs'))
        elif self.vf_identity == 'none':
            self.kind = OTHER
        else:
            raise devctl.DeviceError(
                '%s is not an Ethernet (0x0200) or InfiniBand (0x0207) PF: this module sets VF '
                'MACs or GUIDs and knows no other kind. If its VFs carry no MAC or GUID (an NVMe '
                'controller, an accelerator), set vf_identity=none to converge only their '
                'count' % pf.describe())
        if pf.driver is None:
            raise devctl.DeviceError('%s has no driver bound, and only its driver can create VFs '
                                     '(the kernel answers ENOENT): load it' % pf.describe())
        if pf.driver == devctl.VFIO_DRIVER:
            raise devctl.DeviceError('%s is bound to vfio-pci (passed through?); its VFs are the '
                                     'host driver\'s to manage' % pf.describe())
        return total

    def _choose_method(self):
        names = devctl.netdevs(self.sysfs, self.pf)
        self.netdev = names[0] if names else None
        if self.kind == OTHER:
            self.method = None
            return
        if self.kind == ETHERNET:
            self.method = 'ip'
        elif self.ib_method == 'auto':
            has_sysfs = self.sysfs.isdir(self.pf.rel + '/sriov')
            self.method = 'sysfs' if has_sysfs or not self.netdev else 'ip'
        else:
            self.method = self.ib_method
        if self.method == 'ip' and self.num_vfs and not self.netdev:
            raise devctl.DeviceError(
                '%s has no network interface (nothing under %s/net), and the VF %s are set '
                'through one%s' % (self.pf.describe(), self.sysfs.path(self.pf.rel),
                                   'MACs' if self.kind == ETHERNET else 'GUIDs',
                                   '' if self.kind == ETHERNET else
                                   ' (load ib_ipoib, or use a driver with sriov/N sysfs files)'))

    def _check_vfs_free(self, existing):
        reasons = []
        devices = []
        for index in sorted(existing):
            device = self.bus.get(existing[index])
            if device is None:
                continue
            devices.append(device)
            if device.driver == devctl.VFIO_DRIVER:
                reasons.append('VF %d (%s) is bound to vfio-pci' % (index, device.address))
        holders = devctl.open_files(self.proc_root, [n for d in devices
                                                     for n in devctl.vfio_nodes(self.sysfs, d)])
        if holders:
            reasons.append(devctl.describe_holders(holders))
        if reasons:
            raise devctl.DeviceError(
                'refusing to change the VF count of %s from %d to %d: that destroys every VF, and '
                '%s; release them first (vfio_bind state=absent)'
                % (self.address, len(existing), self.num_vfs, '; '.join(reasons)),
                reasons=reasons)

    # -- the plan ---------------------------------------------------------

    def _count_is(self, count):
        return lambda: len(self.vf_addresses()) == count and \
            (self.sysfs.read_int(self.pf.rel + '/sriov_numvfs') or 0) == count

    def _plan(self, plan, current, count_changes, have):
        rel = self.pf.rel
        count = dict(key='num_vfs', before=current, after=self.num_vfs)
        if self.autoprobe is not None:
            now = self.pf.read_int('sriov_drivers_autoprobe')
            if now is None:
                raise devctl.DeviceError('%s has no sriov_drivers_autoprobe attribute'
                                         % self.address)
            if bool(now) != self.autoprobe:
                flag = '1' if self.autoprobe else '0'
                plan.write(self.address, 'set sriov_drivers_autoprobe',
                           rel + '/sriov_drivers_autoprobe', flag, readback=flag,
                           key='drivers_autoprobe', before=bool(now), after=self.autoprobe)
        if count_changes:
            if current:
                plan.write(self.address, 'remove the %d VFs' % current, rel + '/sriov_numvfs', '0',
                           readback='0', **count)
                plan.wait_for(self.address, 'the VFs to go', self._count_is(0),
                              lambda: '%d virtfn links remain' % len(self.vf_addresses()))
            if self.num_vfs:
                plan.write(self.address, 'create %d VFs' % self.num_vfs, rel + '/sriov_numvfs',
                           str(self.num_vfs), readback=str(self.num_vfs), **count)
                plan.wait_for(self.address, 'the %d VFs to appear' % self.num_vfs,
                              self._count_is(self.num_vfs),
                              lambda: '%d virtfn links exist' % len(self.vf_addresses()))
        for index in range(self.num_vfs):
            want = self.want_props(index)
            if not want:
                continue            # vf_identity=none: nothing to set on the VF
            cur = have.get(index, {}) if not count_changes else {}
            if not count_changes and all(cur.get(k, want[k]) == want[k] for k in want) and \
                    not self._unverifiable(cur, want):
                continue
            self._set_vf(plan, index, want, dict(key='vf %d' % index, before=cur, after=want))

    def _unverifiable(self, cur, want):
        """GUIDs the kernel does not report: they cannot be compared, so they are set."""
        return self.kind == INFINIBAND and any(k not in cur for k in ('node_guid', 'port_guid')
                                               if k in want)

    def _set_vf(self, plan, index, want, diff):
        vf = 'VF %d' % index
        if self.kind == ETHERNET:
            plan.run(self.address, 'set %s MAC %s, spoof checking on, trust off, link state %s'
                     % (vf, want['mac'], want['link_state']),
                     [self.ip(), 'link', 'set', 'dev', self.netdev, 'vf', str(index),
                      'mac', want['mac'], 'spoofchk', 'on', 'trust', 'off',
                      'state', want['link_state']], **diff)
        elif self.method == 'ip':
            plan.run(self.address, 'set %s node GUID %s, port GUID %s, link state %s'
                     % (vf, want['node_guid'], want['port_guid'], want['link_state']),
                     [self.ip(), 'link', 'set', 'dev', self.netdev, 'vf', str(index),
                      'node_guid', want['node_guid'], 'port_guid', want['port_guid'],
                      'state', want['link_state']], **diff)
        else:
            base = '%s/sriov/%d/' % (self.pf.rel, index)
            for what, attr, value in (('node GUID', 'node', want['node_guid']),
                                      ('port GUID', 'port', want['port_guid']),
                                      ('policy', 'policy', MLX5_POLICY[want['link_state']])):
                plan.write(self.address, 'set %s %s' % (vf, what), base + attr, value,
                           readback=value.lower() if attr != 'policy' else value, **diff)

    # -- run --------------------------------------------------------------

    def _vf_list(self, addresses, props):
        out = []
        for index in range(self.num_vfs):
            address = addresses.get(index)
            entry = {'index': index, 'address': address,
                     'driver': self.sysfs.link_name('bus/pci/devices/%s/driver' % address)
                     if address else None}
            entry.update(props.get(index, {}))
            out.append(entry)
        return out

    def _predicted_addresses(self):
        offset = self.pf.read_int('sriov_offset')
        stride = self.pf.read_int('sriov_stride')
        if offset is None or stride is None:
            return {}
        try:
            return dict((i, vf_address(self.address, offset, stride, i))
                        for i in range(self.num_vfs))
        except PciError:
            return {}

    def run(self):
        self.bus = devctl.open_bus(self.sysfs)
        self.pf = devctl.get_device(self.sysfs, self.bus, self.address)
        total = self._check_pf()
        self._choose_method()
        current = self.pf.read_int('sriov_numvfs') or 0
        existing = self.vf_addresses()
        count_changes = current != self.num_vfs
        if count_changes and existing:
            self._check_vfs_free(existing)
        have = self.read_props(current)
        plan = devctl.DevicePlan(self.module, self.sysfs, self.timeout)
        self._plan(plan, current, count_changes, have)
        changed = bool(plan)
        if changed:
            plan.change('read the VF properties of %s back' % self.address, verify=self._verify,
                        mutates=False)
        if plan.execute():
            props = self.verified
            addresses = self.vf_addresses()
        else:
            props = dict((i, self.want_props(i)) for i in range(self.num_vfs)) if changed else have
            addresses = self.vf_addresses() if not count_changes else self._predicted_addresses()
        return plan.result(
            address=self.address, kind=self.kind, method=self.method if self.num_vfs else None,
            netdev=self.netdev, num_vfs=self.num_vfs, total_vfs=total,
            vfs=self._vf_list(addresses, props),
            vf_addresses=[addresses.get(i) for i in range(self.num_vfs)], commands=plan.commands())

    def _verify(self):
        """Read every VF's properties back: None when they hold what was set, else what differs."""
        count = self.sysfs.read_int(self.pf.rel + '/sriov_numvfs') or 0
        if count != self.num_vfs:
            return '%s has %d VFs after setting %d' % (self.address, count, self.num_vfs)
        props = self.read_props(count)
        wrong = []
        unreported = set()
        for index in range(count):
            want = self.want_props(index)
            cur = props.get(index, {})
            for key in sorted(want):
                if key not in cur:
                    unreported.add(key)
                elif cur[key] != want[key]:
                    wrong.append('VF %d %s is %s, not %s' % (index, key, cur[key], want[key]))
        if unreported:
            self.warnings.append('the kernel does not report the VFs\' %s on %s, so they were set '
                                 'but cannot be verified' % (', '.join(sorted(unreported)),
                                                             self.netdev or self.address))
        if wrong:
            return 'the VFs of %s do not hold what was set: %s' % (self.address, '; '.join(wrong))
        self.verified = props
        return None
