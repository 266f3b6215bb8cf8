# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-ins for the commands the device modules run (``ip``, ``nvme``, ``blkdiscard``).

A :class:`FakeTools` instance replaces ``AnsibleModule.run_command`` and
``get_bin_path``: it records every argv (the tests assert the exact lists, as the
openvswitch collection's tests do) and answers the way the real tool does, keeping its
state next to a :class:`~tests.sysfs.kernel_model.KernelModel`:

* ``ip -j [-d] link show dev PF`` prints the PF's ``vfinfo_list`` in iproute2's JSON keys
  (``vf``, ``address``, ``vlan_list``, ``spoofchk``, ``trust``, ``link_state``, ``node
  guid``, ``port guid``; ``vlan_list`` holds one object, ``{}`` for VLAN 0 and ``{"vlan":
  N}`` otherwise, as iproute2 6.1's print_vfinfo prints IFLA_VF_VLAN_LIST); VFs come from the model's tree, and a VF count change resets their properties
  (new VFs start with a zero MAC), as the drivers do;
* ``ip link set dev PF vf N ...`` sets them; a VF index the PF does not have is refused
  (``RTNETLINK answers: Invalid argument``, status 2);
* ``ip -j addr show dev IF`` reports the interface's flags (UP when the tree's operstate
  is up), its addresses and master, from :attr:`addresses` and :attr:`masters`;
* ``nvme format`` and ``blkdiscard`` call the handlers the test sets in :attr:`handlers`;
* ``timeout [--kill-after=N] DURATION CMD...`` (coreutils) runs CMD; a handler that returns
  :data:`HANG` stands for a command that never finishes, which ``timeout`` ends with its
  status 124, as coreutils does.
"""

from __future__ import annotations

import json
import os

ZERO_MAC = '00:00:00:00:00:00'
ZERO_GUID = '00:00:00:00:00:00:00:00'
# A handler's answer for a command that would never finish (only timeout(1) ends it).
HANG = object()
TIMED_OUT = 124


class FakeTools:
    """The fake command runner; ``calls`` lists every argv in order."""

    def __init__(self, model=None, report_guids=True, missing=()):
        self.model = model
        self.report_guids = report_guids
        self.missing = set(missing)
        self.calls = []
        self.addresses = {}   # ifname -> [(address, prefixlen, scope)]
        self.masters = {}     # ifname -> master name
        self.vf_props = {}    # (pf, generation, index) -> dict
        self.handlers = {}    # tool name -> callable(argv) -> (rc, out, err)

    # -- AnsibleModule stand-ins ------------------------------------------------

    def get_bin_path(self, name, required=False, opt_dirs=None):
        if name in self.missing:
            return None
        return '/usr/sbin/%s' % name

    def run_command(self, args, **kwargs):
        argv = list(args)
        self.calls.append(argv)
        limited = os.path.basename(argv[0]) == 'timeout'
        if limited:
            argv = argv[1:]
            while argv and argv[0].startswith('-'):
                argv = argv[1:]
            argv = argv[1:]                     # the duration
        tool = os.path.basename(argv[0])
        if tool in self.handlers:
            answer = self.handlers[tool](argv)
        elif tool == 'ip':
            answer = self._ip(argv[1:])
        else:
            answer = 127, '', '%s: command not found in the fake' % tool
        if answer is HANG:
            if not limited:
                raise AssertionError('%s would hang forever: it was run without timeout(1)' % argv)
            return TIMED_OUT, '', ''
        return answer

    def install(self, monkeypatch):
        """Put this fake in place of AnsibleModule.run_command/get_bin_path."""
        from ansible.module_utils.basic import AnsibleModule
        tools = self
        monkeypatch.setattr(AnsibleModule, 'run_command',
                            lambda module, args, **kw: tools.run_command(args, **kw))
        monkeypatch.setattr(AnsibleModule, 'get_bin_path',
                            lambda module, name, required=False, opt_dirs=None:
                            tools.get_bin_path(name))
        return self

    def commands(self, tool):
        return [c for c in self.calls if os.path.basename(c[0]) == tool]

    def mutations(self):
        """The calls that change something (everything but ``ip -j ... show``)."""
        return [c for c in self.calls if not (os.path.basename(c[0]) == 'ip' and '-j' in c)]

    # -- ip -------------------------------------------------------------------

    def _pf_of(self, ifname):
        net = os.path.realpath(self.model.path('class/net/' + ifname))
        if not os.path.isdir(net):
            return None
        return os.path.basename(os.path.dirname(os.path.dirname(net)))

    def _vf_count(self, pf):
        return self.model.read_int('bus/pci/devices/%s/sriov_numvfs' % pf) or 0

    def _props(self, pf, index):
        key = (pf, self.model.sriov_generation.get(pf, 0), index)
        if key not in self.vf_props:
            self.vf_props[key] = {'mac': ZERO_MAC, 'vlan': 0, 'spoofchk': True, 'trust': False,
                                  'link_state': 'auto', 'node_guid': ZERO_GUID,
                                  'port_guid': ZERO_GUID}
        return self.vf_props[key]

    def _is_ib(self, pf):
        return (self.model.read_int('bus/pci/devices/%s/class' % pf, 16) or 0) >> 8 == 0x0207

    def _ip(self, args):
        if len(args) == 6 and args[:2] == ['-j', '-d']:
            args = args[:1] + args[2:]       # -d adds nothing the fake prints
        if len(args) == 5 and args[:4] == ['-j', 'link', 'show', 'dev']:
            return self._link_show(args[4])
        if len(args) == 5 and args[:4] == ['-j', 'addr', 'show', 'dev']:
            return self._addr_show(args[4])
        if len(args) >= 6 and args[:3] == ['link', 'set', 'dev'] and args[4] == 'vf':
            return self._vf_set(args[3], args[5], args[6:])
        return 255, '', 'Command line is not complete. Try option "help"'

    def _link_show(self, ifname):
        pf = self._pf_of(ifname)
        if pf is None:
            return 1, '', 'Device "%s" does not exist.' % ifname
        vfinfo = []
        ib = self._is_ib(pf)
        for index in range(self._vf_count(pf)):
            p = self._props(pf, index)
            entry = {'vf': index, 'link_type': 'infiniband' if ib else 'ether',
                     'address': p['mac'], 'vlan_list': [{'vlan': p['vlan']} if p['vlan'] else {}],
                     'spoofchk': p['spoofchk'],
                     'link_state': p['link_state'], 'trust': p['trust']}
            if ib and self.report_guids:
                entry['node guid'] = p['node_guid']
                entry['port guid'] = p['port_guid']
            vfinfo.append(entry)
        link = {'ifindex': 3, 'ifname': ifname, 'flags': ['BROADCAST', 'MULTICAST'],
                'operstate': 'DOWN', 'num_vf': len(vfinfo)}
        if vfinfo:
            link['vfinfo_list'] = vfinfo
        return 0, json.dumps([link]), ''

    def _addr_show(self, ifname):
        if not os.path.isdir(self.model.path('class/net/' + ifname)):
            return 1, '', 'Device "%s" does not exist.' % ifname
        up = self.model.read('class/net/%s/operstate' % ifname) == 'up'
        link = {'ifindex': 2, 'ifname': ifname,
                'flags': ['BROADCAST', 'MULTICAST'] + (['UP', 'LOWER_UP'] if up else []),
                'operstate': 'UP' if up else 'DOWN',
                'addr_info': [{'family': 'inet6' if ':' in a else 'inet', 'local': a,
                               'prefixlen': n, 'scope': s}
                              for a, n, s in self.addresses.get(ifname, [])]}
        if ifname in self.masters:
            link['master'] = self.masters[ifname]
        return 0, json.dumps([link]), ''

    def _vf_set(self, ifname, index, rest):
        pf = self._pf_of(ifname)
        if pf is None:
            return 1, '', 'Cannot find device "%s"' % ifname
        if not index.isdigit() or int(index) >= self._vf_count(pf):
            return 2, '', 'RTNETLINK answers: Invalid argument'
        props = self._props(pf, int(index))
        ib = self._is_ib(pf)
        values = {}
        keys = {'mac': 'mac', 'vlan': 'vlan', 'spoofchk': 'spoofchk', 'trust': 'trust', 'state': 'link_state',
                'node_guid': 'node_guid', 'port_guid': 'port_guid'}
        if len(rest) % 2:
            return 255, '', 'Command line is not complete. Try option "help"'
        for key, value in zip(rest[::2], rest[1::2]):
            if key not in keys:
                return 255, '', 'Error: argument "%s" is wrong' % key
            if key in ('spoofchk', 'trust'):
                if value not in ('on', 'off'):
                    return 255, '', 'Error: argument of "%s" must be "on" or "off"' % key
                value = value == 'on'
            if key == 'vlan':
                if not value.isdigit() or int(value) > 4095 or (int(value) and ib):
                    return 2, '', 'RTNETLINK answers: Invalid argument'    # ndo_set_vf_vlan refuses
                value = int(value)
            if key == 'state' and value not in ('auto', 'enable', 'disable'):
                return 255, '', 'Error: argument "%s" is wrong' % value
            values[keys[key]] = value.lower() if isinstance(value, str) else value
        props.update(values)
        return 0, '', ''
