# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the slot network on Open vSwitch, dnsmasq and nftables.

The bridge runs with ``fail_mode=secure``: without flows it forwards nothing, so a
restarted switch or a port nobody configured gets no traffic. Every packet that moves
does so because a flow says it may:

* host flows (cookie ``HOST_COOKIE``): default drop; DHCP replies broadcast by dnsmasq are
  dropped: a DHCP reply reaches only the slot it answers. nftables clears the broadcast flag
  of every DHCP request from the bridge (and the UDP checksum, which the change voids and
  which IPv4 allows to be 0), so dnsmasq sends each reply to the asker's MAC (``chaddr``),
  and only the flows of the slot with that MAC deliver it. A slot that claims another's MAC
  in ``chaddr`` gets nothing: the reply goes to that other slot's port. (The group
  ``DHCP_GROUP`` of earlier versions flooded the broadcast replies to every slot port;
  host_network removes it.)
* slot flows (cookie ``Slot.cookie``): from the slot's port only its own MAC with
  its own IP (ARP included), and only to the gateway's services (DHCP, ICMP, the
  telemetry sink) or past the slot network (NAT); towards the slot's port only what the
  gateway sends to its MAC or asks about its IP.

* tenant flows (cookie ``contract.tenant_cookie``, ``_tenant.py``): between the slots of
  one tenant, and through the tenant's overlay.

Two slots of different tenants never exchange a frame: no flow outputs from one slot port to
another unless both slots' leases name the same tenant.

A slot port is also a device of the host's kernel, which sees every frame on it: with the
userspace datapath Open vSwitch reads the port with a packet socket and the kernel still
handles the frame itself. Left alone, the host would answer ARP for its addresses there and
accept and route what the slot sends to that device's MAC, past both the flows and the nft
rules about the bridge. ``PORT_SYSCTLS`` cut the port off the host's own stack: strict
reverse-path filtering (no route leads to the port, so nothing from it is accepted), no ARP
answers, no IPv6 (so the host sends nothing on the port by itself either).
dnsmasq reads a *new* file in its dhcp-hostsdir by inotify, but keeps serving the record
of a file that was changed or deleted until it gets SIGHUP: a slot whose entry changes or
goes sends it one (``reload_dnsmasq``), through the pid file the configuration names.
An entry never sets a dnsmasq tag (``set:``): dnsmasq 2.90 (Debian 12) chains an entry's tags
onto the tag list of each reply it builds, on its stack, and on SIGHUP frees that chain with the
entry, which kills it at the first reload after it answered such a slot. A slot's tag
(``slot_tag``, for its options in the dhcp-optsdir) comes from ``dhcp-mac`` lines in the
configuration instead, which dnsmasq never frees.
nftables (table ``inet gpuaas``) guards the host side: slots reach only DHCP, ICMP echo
and the sink on the host, never another slot through the host's routing, nor private
networks behind the host; their egress is masqueraded.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import os
import re
import signal
import tempfile

from ansible_collections.gpuaas.slice.plugins.module_utils._daemon import cmdline, read_pid
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner
from ansible_collections.gpuaas.slice.plugins.module_utils._files import (
    atomic_write, check_dir, check_file, ensure_dir, has_control_chars)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import COOKIE_BASE, MAX_SLOTS, SLOT_NETWORK, GpuaasError, Slot

HOST_COOKIE = COOKIE_BASE | 0xffff
DHCP_GROUP = 0x677075     # 'gpu'
# Seconds an ovs-vsctl or ovs-ofctl call may take: a stuck ovsdb-server or ovs-vswitchd must not
# hang the play. The tools' own --timeout (SIGALRM) costs nothing; coreutils timeout(1) around
# each call cost about 10 ms a call, a third of a slot's time.
OVS_TIMEOUT = 30
VSCTL = ['ovs-vsctl', '--timeout=%d' % OVS_TIMEOUT]
OFCTL = ['ovs-ofctl', '--timeout=%d' % OVS_TIMEOUT, '-O', 'OpenFlow15', '--no-names']
MAC_BROADCAST = 'ff:ff:ff:ff:ff:ff'
LOCAL_OFPORT = 65534
# (path under /proc/sys/net with {port}, value) that keep the host's own stack off a slot port.
PORT_SYSCTLS = (
    ('ipv4/conf/{port}/rp_filter', '1'),
    ('ipv4/conf/{port}/arp_ignore', '8'),
    ('ipv6/conf/{port}/disable_ipv6', '1'),
)
# /run itself, not a directory under it: /run is empty after a reboot and dnsmasq refuses to
# start when it cannot write its pid file.
DNSMASQ_PID_FILE = '/run/gpuaas-dnsmasq.pid'
# Where slots may never go through the host, NAT or not: the host's own networks, link-local
# (cloud metadata services), carrier-grade NAT. The slot network itself is handled apart.
DEFAULT_BLOCKED = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16', '100.64.0.0/10']


class NetworkError(GpuaasError, ValueError):
    """A network request refused or a command that failed; the message says which and why."""


def runner(module):
    """The engine's runner, failing with NetworkError."""
    return Runner(module, NetworkError)


def report(plan, **fields):
    """The module's result: the plan's actions are its ``changes``."""
    result = plan.result(**fields)
    result['changes'] = result.pop('actions')
    return result


def engine(cls):
    """The engine of a network module: ``cls(module)`` plans its ``present()`` or ``absent()``,
    and its ``result()`` runs the plan and reports."""
    def run(module):
        target = cls(module)
        getattr(target, module.params['state'])()
        return target.result()
    return run


def read_text(path):
    """A text file's content, or None when there is none."""
    if not os.path.exists(path):
        return None
    with open(path, 'rb') as handle:
        return handle.read().decode('utf-8', 'replace')


def write_text(module, path, content, mode=0o644):
    """Write a text file atomically, making its directory first."""
    ensure_dir(os.path.dirname(path), 0o755)
    atomic_write(module, path, content.encode('utf-8'), mode=mode)


def file_step(plan, module, path, content, what=None, then=None):
    """A step writing ``content`` to ``path`` when it differs (and calling ``then`` when it
    rewrote a file), verified by reading it back; None when the file holds it already."""
    before = read_text(path)
    if before == content:
        return None

    def apply():
        write_text(module, path, content)
        if before is not None and then is not None:
            then()
    return plan.change(what or path, apply,
                       verify=lambda: None if read_text(path) == content else '%s holds something else' % path,
                       before=before or '', after=content)


# -- validation ---------------------------------------------------------------

def check_port(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise NetworkError('%s must be a TCP/UDP port number, not %r' % (what, value))
    return value


def gateway_interface(gateway):
    """The gateway as an IPv4Interface inside the slot network, or NetworkError."""
    try:
        iface = ipaddress.ip_interface(u'%s' % gateway)
    except ValueError:
        raise NetworkError('gateway %r is not an address with a prefix (10.100.0.1/24)' % (gateway,))
    if iface.network != SLOT_NETWORK:
        raise NetworkError('gateway %s is not on the slot network %s' % (gateway, SLOT_NETWORK))
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise NetworkError('gateway %s is the network or broadcast address' % gateway)
    return iface


def check_address(value, what):
    """An IPv4 address (not a network, not a name) as text, None when unset, or NetworkError."""
    if value is None or value == '':
        return None
    try:
        address = ipaddress.IPv4Address(u'%s' % value)
    except ValueError:
        raise NetworkError('%s %r is not an IPv4 address (203.0.113.10)' % (what, value))
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise NetworkError('%s %s is not an address packets from outside arrive on' % (what, address))
    return str(address)


def check_networks(values, what):
    result = []
    for value in values:
        try:
            result.append(str(ipaddress.ip_network(u'%s' % value, strict=True)))
        except ValueError:
            raise NetworkError('%s: %r is not a network (10.0.0.0/8)' % (what, value))
    return result


# -- commands -----------------------------------------------------------------

def ovs_available(run):
    rc, _out, err = run(['ovs-vsctl', '--timeout=5', 'show'], check=False)
    if rc != 0:
        raise NetworkError('Open vSwitch does not answer (%s): start ovsdb-server and ovs-vswitchd '
                           '(host_prep does)' % err.strip())


def bridge_info(run, bridge):
    """{'datapath_type', 'fail_mode'} of an existing bridge, or None."""
    rc, _out, _err = run(VSCTL + ['br-exists', bridge], check=False)
    if rc == 2:
        return None
    if rc != 0:
        raise NetworkError('ovs-vsctl br-exists %s failed' % bridge)
    _rc, out, _err = run(VSCTL + ['--format=json', '--columns=datapath_type,fail_mode', 'list', 'Bridge', bridge])
    row = json.loads(out)['data'][0]
    values = [value if isinstance(value, str) else '' for value in row]   # ["set", []] is unset
    return {'datapath_type': values[0] or 'system', 'fail_mode': values[1]}


def bridge_ofport(run, bridge):
    """The OpenFlow port of the bridge's own interface: 65534 once the switch has made it.

    ovs-vsctl succeeds even when ovs-vswitchd cannot open the bridge's datapath (the kernel
    datapath without the openvswitch module); the interface then has no OpenFlow port.
    """
    _rc, out, _err = run(VSCTL + ['--format=json', '--columns=ofport,error', 'list', 'Interface', bridge])
    rows = json.loads(out)['data']
    if not rows:
        return None, ''
    ofport, error = rows[0]
    return (ofport if isinstance(ofport, int) else None), (error if isinstance(error, str) else '')


def interface_addresses(run, name):
    """(IPv4 addresses with prefix, up) of a network device, ([], False) when there is none."""
    rc, out, _err = run(['ip', '-j', 'address', 'show', 'dev', name], check=False)
    info = json.loads(out or '[]') if rc == 0 else []
    if not info:
        return [], False
    found = ['%s/%s' % (a['local'], a['prefixlen']) for a in info[0].get('addr_info', []) if a.get('family') == 'inet']
    return found, 'UP' in info[0].get('flags', [])


def port_sysctls(port, proc_net='/proc/sys/net'):
    """{path: (have, want)} of the port's isolation settings that differ from what they must be."""
    wrong = {}
    for template, want in PORT_SYSCTLS:
        path = os.path.join(proc_net, template.format(port=port))
        try:
            with open(path) as handle:
                have = handle.read().strip()
        except (IOError, OSError):
            have = None
        if have != want:
            wrong[path] = (have, want)
    return wrong


def isolate_port(port, proc_net='/proc/sys/net'):
    for path, (_have, want) in sorted(port_sysctls(port, proc_net).items()):
        try:
            with open(path, 'w') as handle:
                handle.write(want + '\n')
        except (IOError, OSError) as exc:
            raise NetworkError('cannot set %s to %s, which keeps the host off slot port %s: %s'
                               % (path, want, port, exc))


def device_exists(name):
    return os.path.exists('/sys/class/net/%s' % name)


def is_tap(name):
    return os.path.exists('/sys/class/net/%s/tun_flags' % name)


def link_up(name):
    try:
        with open('/sys/class/net/%s/flags' % name) as handle:
            return int(handle.read().strip(), 16) & 1 == 1
    except (IOError, OSError, ValueError):
        return False


def port_row(run, port):
    """(bridge the port is on or None, ofport, external_ids) of an Open vSwitch port."""
    rc, out, _err = run(VSCTL + ['port-to-br', port], check=False)
    if rc != 0:
        return None, None, {}
    _rc, row, _err = run(VSCTL + ['--format=json', '--columns=ofport,external_ids', 'list', 'Interface', port])
    data = json.loads(row)['data'][0]
    return out.strip(), data[0], dict(data[1][1])


def ofport_holder(run, bridge, port, ofport):
    """Another interface on ``bridge`` than ``port`` that has OpenFlow port ``ofport``, or None."""
    _rc, out, _err = run(VSCTL + ['--format=json', '--columns=name', 'find', 'Interface', 'ofport=%d' % ofport])
    for (name,) in json.loads(out)['data']:
        if name == port:
            continue
        rc, on, _err = run(VSCTL + ['port-to-br', name], check=False)
        if rc == 0 and on.strip() == bridge:
            return name
    return None


def check_slot_port(run, port, bridge, slot_id, tap, on_bridge, ids):
    """Refuse, before any change, a port that is not slot ``slot_id``'s to use or remove."""
    if on_bridge is not None and on_bridge != bridge:
        raise NetworkError('port %s is on bridge %s, not %s' % (port, on_bridge, bridge))
    owner = ids.get('gpuaas-slot')
    if on_bridge is not None and owner not in (None, slot_id):
        raise NetworkError('port %s belongs to slot %s, not %s: release that slot first' % (port, owner, slot_id))
    if device_exists(port):
        if tap and not is_tap(port):
            raise NetworkError('port %s exists and is not a tap device: give port_type=existing for a '
                               'device made elsewhere' % port)
        addresses, _up = interface_addresses(run, port)
        if addresses:
            raise NetworkError('port %s has the IPv4 address(es) %s: a host interface, never a slot port'
                               % (port, ', '.join(addresses)))


# -- flows --------------------------------------------------------------------

def canonical_flow(text):
    """A flow as (cookie, priority, match tokens, actions), the same for our text and OVS's dump."""
    text = text.strip()
    if ' actions=' in text:
        head, actions = text.split(' actions=', 1)
    else:
        head, actions = text.split('actions=', 1)
    tokens = set()
    cookie = priority = None
    for token in head.replace(' ', '').split(','):
        if not token:
            continue
        key, _sep, value = token.partition('=')
        if key == 'cookie':
            cookie = int(value, 16)
        elif key == 'priority':
            priority = int(value)
        elif key in ('duration', 'n_packets', 'n_bytes', 'idle_age', 'hard_age', 'table', 'reset_counts'):
            continue
        else:
            tokens.add(token.lower())
    return cookie, priority if priority is not None else 32768, frozenset(tokens), actions.strip().lower()


def dump_flows(run, bridge, cookie):
    _rc, out, _err = run(OFCTL + ['dump-flows', bridge, 'cookie=%#x/-1' % cookie])
    flows = set()
    for line in out.splitlines():
        if 'actions=' in line and 'cookie=' in line:
            flows.add(canonical_flow(line))
    return flows


def install_flows(run, bridge, cookie, flows):
    """Replace the flows with ``cookie`` by ``flows`` (one add-flow batch, from stdin)."""
    run(OFCTL + ['del-flows', bridge, 'cookie=%#x/-1' % cookie])
    if flows:
        run(OFCTL + ['add-flows', bridge, '-'], data=('\n'.join(flows) + '\n').encode('ascii'), binary=True)


def flows_step(plan, run, bridge, cookie, flows, what, force=False):
    """A step giving the flows with ``cookie`` exactly ``flows`` (verified by dumping them); None when they are.

    ``force``: the bridge does not exist yet, so there is nothing to read.
    """
    want = set(canonical_flow(flow) for flow in flows)
    have = set() if force else dump_flows(run, bridge, cookie)
    if have == want:
        return None

    def verify():
        found = dump_flows(run, bridge, cookie)
        return None if found == want else '%d of the %d flows with cookie %#x are there' % (
            len(found & want), len(want), cookie)
    return plan.change(what, lambda: install_flows(run, bridge, cookie, flows), verify=verify,
                       before=len(have), after=len(want))


def host_flows(gateway_ip):
    c = 'cookie=%#x' % HOST_COOKIE
    return [
        # Everything not allowed by a slot's own flows stops here.
        '%s,priority=0 actions=drop' % c,
        # A broadcast DHCP reply would tell every slot another's address and host name: never
        # sent on. nftables clears the broadcast flag of the slots' requests (nft_ruleset), so
        # dnsmasq answers each to its own MAC, which only that slot's flows deliver.
        '%s,priority=150,udp,in_port=LOCAL,dl_dst=%s,nw_src=%s,tp_src=67,tp_dst=68 actions=drop'
        % (c, MAC_BROADCAST, gateway_ip),
    ]


def slot_flows(slot, gateway_ip, sink_port):
    """The flows of one slot (a contract.Slot): its cookie, port, MAC and IP."""
    c = 'cookie=%#x' % slot.cookie
    ofport, mac, ip = slot.ofport, slot.mac, slot.ip
    src = 'in_port=%d,dl_src=%s' % (ofport, mac)
    net = SLOT_NETWORK
    return [
        # From the slot: ARP only about its own address, asking only for the gateway.
        '%s,priority=200,arp,%s,arp_spa=%s,arp_sha=%s,arp_tpa=%s actions=LOCAL' % (c, src, ip, mac, gateway_ip),
        # DHCP before the slot has its address, and afterwards (renewal to the server).
        '%s,priority=200,udp,%s,nw_src=0.0.0.0,nw_dst=255.255.255.255,tp_src=68,tp_dst=67 actions=LOCAL' % (c, src),
        '%s,priority=200,udp,%s,nw_src=%s,tp_src=68,tp_dst=67 actions=LOCAL' % (c, src, ip),
        # The gateway's services: ping and the telemetry sink.
        '%s,priority=200,icmp,%s,nw_src=%s,nw_dst=%s actions=LOCAL' % (c, src, ip, gateway_ip),
        '%s,priority=200,tcp,%s,nw_src=%s,nw_dst=%s,tp_dst=%d actions=LOCAL' % (c, src, ip, gateway_ip, sink_port),
        # Nothing else on the slot network (other slots, its broadcast address, the host's other ports).
        '%s,priority=190,ip,%s,nw_src=%s,nw_dst=%s actions=drop' % (c, src, ip, net),
        # Past the slot network: to the host, which routes and masquerades it (nftables).
        '%s,priority=180,ip,%s,nw_src=%s actions=LOCAL' % (c, src, ip),
        # Towards the slot: what the gateway sends to its MAC, and ARP asking for its address.
        '%s,priority=200,in_port=LOCAL,dl_dst=%s actions=output:%d' % (c, mac, ofport),
        '%s,priority=200,arp,in_port=LOCAL,dl_dst=%s,arp_tpa=%s actions=output:%d' % (c, MAC_BROADCAST, ip, ofport),
    ]


def group_buckets(run, bridge):
    """{bucket_id: actions} of the DHCP broadcast group, or None when the group is missing."""
    _rc, out, _err = run(OFCTL + ['dump-groups', bridge, 'group_id=%d' % DHCP_GROUP])
    for line in out.splitlines():
        if 'group_id=%d,' % DHCP_GROUP in line:
            return dict((int(m.group(1)), m.group(2)) for m in
                        re.finditer(r'bucket=bucket_id:(\d+),actions=([^,]+(?:,(?!bucket=)[^,]+)*)', line))
    return None


def bucket(run, bridge, ofport):
    """The actions of the DHCP broadcast group's bucket ``ofport``, or None."""
    return (group_buckets(run, bridge) or {}).get(ofport)


def remove_bucket(run, bridge, ofport):
    run(OFCTL + ['remove-buckets', bridge, 'group_id=%d,command_bucket_id=%d' % (DHCP_GROUP, ofport)])


def set_bucket(run, bridge, ofport, replace):
    """Give the DHCP broadcast group the bucket ``ofport`` (output to that port), replacing one."""
    if replace:
        remove_bucket(run, bridge, ofport)
    run(OFCTL + ['insert-buckets', bridge, 'group_id=%d,command_bucket_id=last,bucket=bucket_id:%d,actions=output:%d'
                 % (DHCP_GROUP, ofport, ofport)])


# -- nftables -----------------------------------------------------------------

def nft_ruleset(table, bridge, gateway, sink_port, nat, uplink, blocked, ssh_address=None, ssh_dir=None,
                ssh_ports=None):
    """The table as nft source: created, deleted and created again, so applying it is atomic.

    The slots' SSH ports (``_ssh_access``): two verdict maps each slot adds an element to, looked
    up for TCP to ``ssh_address`` (any address of the host's own when None) from off the slot
    network, and before anything towards the bridge is dropped; then every slot's own file in
    ``ssh_dir``, so rebuilding the table keeps the leased slots' ports. The node's range of SSH
    ports ``ssh_ports`` (first, last) is dropped on the host itself: a port no slot has (released,
    or asked from a source the slot does not allow) answers nothing, not even a reset.
    """
    to_host = 'ip daddr %s' % ssh_address if ssh_address else 'fib daddr type local'
    net = str(gateway.network)
    gw = str(gateway.ip)
    lines = [
        '# Written by gpuaas.slice.host_network: the slot network %s on %s.' % (net, bridge),
        'table inet %s' % table,
        'delete table inet %s' % table,
        'table inet %s {' % table,
        '  chain input {',
        '    type filter hook input priority filter - 1; policy accept;',
        # A slot address arrives on the bridge or nowhere (not on a slot port's own device).
        '    ip saddr %s iifname != { "%s", "lo" } drop' % (net, bridge),
        '    iifname "%s" ct state established,related accept' % bridge,
        '    iifname "%s" udp dport 67 accept' % bridge,
        '    iifname "%s" ip daddr %s icmp type echo-request accept' % (bridge, gw),
        '    iifname "%s" ip daddr %s tcp dport %d accept' % (bridge, gw, sink_port),
        '    iifname "%s" drop' % bridge,
    ]
    if ssh_ports:
        lines.append('    iifname != "%s" %s tcp dport %d-%d drop' % (bridge, to_host, ssh_ports[0], ssh_ports[1]))
    lines += [
        '  }',
        '  map ssh_dnat {',
        '    type inet_service : verdict;',
        '  }',
        '  map ssh_forward {',
        '    type ipv4_addr : verdict;',
        '  }',
        '  chain prerouting {',
        '    type nat hook prerouting priority dstnat; policy accept;',
        '    iifname != "%s" ip saddr != %s %s tcp dport vmap @ssh_dnat' % (bridge, net, to_host),
        '  }',
        '  chain dhcp_unicast {',
        '    type filter hook prerouting priority mangle; policy accept;',
        # The broadcast flag (bit 0 of BOOTP flags, 10 bytes into the message) cleared, and the
        # UDP checksum with it (0: none, which IPv4 allows): dnsmasq answers the asker's MAC only.
        '    iifname "%s" udp sport 68 udp dport 67 @th,144,1 1 @th,144,16 set 0x0 @th,48,16 set 0x0' % bridge,
        '  }',
        '  chain forward {',
        '    type filter hook forward priority filter - 1; policy accept;',
        '    ip saddr %s iifname != "%s" drop' % (net, bridge),
        '    iifname "%s" oifname "%s" drop' % (bridge, bridge),
        '    oifname "%s" ct state established,related accept' % bridge,
        # A new SSH connection to a slot, through its public port only (the slot's chain says).
        '    oifname "%s" ct state new ip daddr vmap @ssh_forward' % bridge,
        '    oifname "%s" drop' % bridge,
        # The slot's answers on those connections, whatever the tenant's address.
        '    iifname "%s" ct direction reply ct status dnat ct state established accept' % bridge,
    ]
    if blocked:
        lines.append('    iifname "%s" ip daddr { %s } drop' % (bridge, ', '.join(blocked)))
    if nat:
        lines.append('    iifname "%s" ip saddr %s %saccept' % (
            bridge, net, 'oifname "%s" ' % uplink if uplink else ''))
    lines.append('    iifname "%s" drop' % bridge)
    lines.append('  }')
    if nat:
        # Not the host's own traffic from the gateway address to itself (lo).
        out = 'oifname "%s"' % uplink if uplink else 'oifname != { "%s", "lo" }' % bridge
        lines += [
            '  chain postrouting {',
            '    type nat hook postrouting priority srcnat; policy accept;',
            '    ip saddr %s %s masquerade' % (net, out),
            '  }',
        ]
    lines.append('}')
    if ssh_dir:
        lines.append('include "%s/*.nft"' % ssh_dir.rstrip('/'))
    return '\n'.join(lines) + '\n'


# -- dnsmasq ------------------------------------------------------------------

def dnsmasq_conf(bridge, gateway, hosts_dir, lease_file, dns_servers, pid_file=DNSMASQ_PID_FILE, opts_dir=None,
                 node_ids=()):
    """dnsmasq's configuration; every slot the nodes ``node_ids`` can have is tagged by its MAC
    (``slot_tag``), so that a file in ``opts_dir`` can give one slot its own options."""
    net = gateway.network
    lines = [
        '# Written by gpuaas.slice.host_network: DHCP for the slot network %s only.' % net,
        '# Fixed addresses only (one file per slot in dhcp-hostsdir, read by inotify); no DNS.',
        'interface=%s' % bridge,
        'bind-interfaces',
        'except-interface=lo',
        'port=0',
        'dhcp-range=%s,static,%s,12h' % (net.network_address, net.netmask),
        'dhcp-hostsdir=%s' % hosts_dir,
        'dhcp-leasefile=%s' % lease_file,
        # Its own pid file: the distribution's dnsmasq service owns the default one.
        'pid-file=%s' % pid_file,
        'dhcp-option=option:router,%s' % gateway.ip,
        'dhcp-authoritative',
        'dhcp-no-override',
        'no-resolv',
        'no-hosts',
    ]
    if dns_servers:
        lines.append('dhcp-option=option:dns-server,%s' % ','.join(dns_servers))
    if opts_dir:
        # Per-slot options (a tenant overlay's MTU), each file read by inotify like the hosts.
        lines.append('dhcp-optsdir=%s' % opts_dir)
    for node_id in node_ids:
        # Tags from here, not from the entries (set:), which dnsmasq 2.90 frees with what a reply chained on.
        lines.append('# Each slot of node %s tagged by its MAC, for its own options in the dhcp-optsdir.' % node_id)
        lines += [dhcp_mac_line(Slot(node_id, index)) for index in range(MAX_SLOTS)]
    return '\n'.join(lines) + '\n'


def slot_tag(slot):
    """The dnsmasq tag of a slot (its id), which the configuration's ``dhcp-mac`` lines set."""
    return slot.slot_id


def dhcp_mac_line(slot):
    """The dnsmasq.conf line that tags ``slot`` by its MAC (``slot_tag``)."""
    return 'dhcp-mac=set:%s,%s' % (slot_tag(slot), slot.mac)


def running_dnsmasq(pid_file, proc_root='/proc'):
    """(pid, argv) of the dnsmasq of ``pid_file``, or None: none runs, or the pid is not a dnsmasq's."""
    pid = read_pid(pid_file)
    argv = cmdline(pid, proc_root) if pid else None
    if not argv or os.path.basename(argv[0]) != 'dnsmasq':
        return None
    return pid, argv


def reload_dnsmasq(pid_file, proc_root='/proc'):
    """SIGHUP the dnsmasq of ``pid_file`` so it drops changed or removed dhcp-hostsdir entries.

    True when a dnsmasq got the signal; False when none runs (it reads everything when it
    starts). A pid file whose process is not dnsmasq is left alone.
    """
    running = running_dnsmasq(pid_file, proc_root)
    if running is None:
        return False
    try:
        os.kill(running[0], signal.SIGHUP)
    except OSError:
        return False
    return True


def dnsmasq_conf_file(pid_file, proc_root='/proc'):
    """The configuration file the dnsmasq of ``pid_file`` runs with (``--conf-file``, ``-C``), or
    None when none runs. One that runs with its built-in default reads /etc/dnsmasq.conf."""
    running = running_dnsmasq(pid_file, proc_root)
    if running is None:
        return None
    argv = running[1]
    for index, arg in enumerate(argv):
        if arg.startswith('--conf-file='):
            return arg[len('--conf-file='):]
        if arg in ('--conf-file', '-C') and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith('-C') and len(arg) > 2:
            return arg[2:]
    return '/etc/dnsmasq.conf'


def apply_nft(module, run, path, ruleset):
    """Load ``ruleset`` with nft -f, then keep it at ``path``: a ruleset nft refuses is never recorded."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(path))
    try:
        with os.fdopen(handle, 'wb') as out:
            out.write(ruleset.encode('utf-8'))
        run(['nft', '-f', tmp])
        os.chmod(tmp, 0o644)
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# The tag an entry of an earlier version set (``,set:mtu-1450``), which host_network removes.
TAGGED_ENTRY = re.compile(r',(?:set|net):[^,\n]*')


def dhcp_host_line(mac, ip, hostname):
    """A dhcp-hostsdir entry. It sets no tag (the module docstring says why)."""
    return '%s,%s,%s\n' % (mac, ip, hostname)


def dhcp_mtu_line(slot, mtu):
    """A dhcp-optsdir entry: the interface MTU (option 26) for ``slot`` (its ``slot_tag``)."""
    return 'tag:%s,option:mtu,%d\n' % (slot_tag(slot), mtu)


def config_path(path, what, directory=False):
    path = (check_dir if directory else check_file)(path, what)
    if has_control_chars(path) or ',' in path or ' ' in path:
        raise NetworkError('%s %r may not hold spaces or commas (dnsmasq reads it)' % (what, path))
    return path
