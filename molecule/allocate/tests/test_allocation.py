# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra: what an allocation of sample-hgx-s0 leaves on the node."""

import json

SLOT = 'sample-hgx-s0'
MAC = '52:54:f6:df:70:11'
IP = '10.100.0.10'
TAP = 'gs0-41bbd988'


def test_the_domain_runs(host):
    assert host.check_output('virsh -c qemu:///system domstate gpuaas-%s' % SLOT).strip() == 'running'
    xml = host.check_output('virsh -c qemu:///system dumpxml gpuaas-%s' % SLOT)
    assert "<interface type='ethernet'>" in xml and MAC in xml and TAP in xml


def test_the_port_and_its_flows(host):
    assert TAP in host.check_output('ovs-vsctl list-ports br-gpuaas').split()
    ids = host.check_output('ovs-vsctl get Interface %s external_ids:gpuaas-slot' % TAP)
    assert ids.strip().strip('"') == SLOT
    flows = host.check_output('ovs-ofctl -O OpenFlow15 --no-stats dump-flows br-gpuaas cookie=0x6770750000000000/-1')
    assert 'dl_src=%s' % MAC in flows and 'nw_src=%s' % IP in flows


def test_dnsmasq_entry_and_lease(host):
    assert host.file('/var/lib/gpuaas/network/dhcp-hosts.d/%s' % SLOT).content_string.startswith('%s,%s,' % (MAC, IP))
    assert MAC in host.file('/var/lib/gpuaas/network/dnsmasq.leases').content_string


def test_the_slot_lease(host):
    lease = json.loads(host.file('/var/lib/gpuaas/node-scheduler/leases/%s.json' % SLOT).content_string)
    assert lease['allocation_id'] == 'molecule-s0' and lease['phase'] == 'running'
    assert lease['data']['address'] == IP and lease['data']['domain'] == 'gpuaas-%s' % SLOT
