# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet lab's control-plane part (``fleet_lab.py run --control-plane``): ``gpuaas serve``
and ``gpuaas worker`` (SQLite) over the lab's two nodes, reached as the lab reaches them (the
worker's inventory is the fleet inventory with the connection details).

What it proves, on the nodes the playbook phases prepared:
  1. both nodes registered (their discovery, their approved slot maps: one slot each) with
     their underlay addresses (PUT /v1/nodes/{id}/underlay);
  2. two allocations at once, one on each node: the worker runs both allocate jobs in parallel;
  3. fleet-vm stopped mid-job (its QEMU process SIGSTOPped while its allocate runs): the job
     fails cleanly, the node is marked unreachable, the allocation is moved or failed by
     GPUAAS_UNREACHABLE_POLICY, the slot it leaves is blocked, nothing else is left half done;
  4. the node resumed (SIGCONT): the worker's probe marks it reachable and the left slot's
     cleanup release runs there, freeing it;
  5. drain through the API (a new allocation does not land there), undrain (it does);
  6. with the tenant's allocations running on both nodes, the overlay the control plane
     planned: fleet-local got the tenant's new peers by a network job (audited
     tenant_network.peers), and each guest's own pings reach the other's slot across the
     underlay (lab/fleet/probe.yml on each node);
  7. everything released; the audit chain verifies.
Each step's time and what the API said is kept for the report.
"""

import json
import os
import shutil
import time

from plane import Failed  # lab/plane.py: serve and worker as their own processes

HERE = os.path.dirname(os.path.abspath(__file__))


# The allocate task during which fleet-vm is stopped, and how long after it started.
STOP_IN = 'task: Wire, image, seed and start the slot'
STOP_AFTER = 30


def worker_inventory(directory, inventory, connection, extravars):
    """The fleet inventory with each node's connection details and the lab's extra variables
    (the worker passes the playbooks only the allocation), beside the nodes' host_vars."""
    import yaml
    with open(inventory) as handle:
        merged = yaml.safe_load(handle)
    with open(connection) as handle:
        reach = yaml.safe_load(handle)['all']['children']['fleet']['hosts']
    for host, variables in merged['all']['children']['fleet']['hosts'].items():
        variables.update(reach[host])
    merged['all']['vars'].update(extravars)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'inventory.yml')
    with open(path, 'w') as handle:
        yaml.safe_dump(merged, handle, default_flow_style=False, sort_keys=False)
    shutil.copytree(os.path.join(HERE, 'host_vars'), os.path.join(directory, 'host_vars'), dirs_exist_ok=True)
    return path


class Scenario:
    """The steps above; ``lines`` is what the report prints, ``problems`` what failed."""

    def __init__(self, plane, nodes, vm, image, checksum, pubkey, policy, log, underlay, probe):
        """``underlay``: {node id: its underlay address}; ``probe({node id: allocation id})``:
        {allocation id: the addresses its guest's probes reached from then on, or None}."""
        self.plane, self.nodes, self.vm, self.log = plane, nodes, vm, log
        self.underlay, self.probe = underlay, probe
        self.request = {'image': image, 'image_checksum': checksum, 'ssh_keys': [pubkey], 'vcpus': 1,
                        'memory_mib': 512, 'disk_gib': 1}
        self.policy = policy
        self.start = time.monotonic()
        self.lines, self.problems = [], []
        self.operator = self.tenant = None
        self.created = []

    def say(self, text):
        line = '%6.0f s  %s' % (time.monotonic() - self.start, text)
        self.lines.append(line)
        self.log('control plane: ' + line)

    def check(self, ok, text):
        if not ok:
            self.problems.append('control plane: ' + text)
            self.say('PROBLEM ' + text)
        return ok

    def api(self, method, path, body=None, token=None, want=(200, 201, 202)):
        status, data = self.plane.http(method, path, token or self.operator, body)
        if status not in want:
            raise Failed('%s %s: %s %s' % (method, path, status, data))
        return data

    def allocation(self, ident):
        return self.api('GET', '/v1/allocations/%s' % ident, token=self.tenant)

    def node(self, node_id):
        return self.api('GET', '/v1/nodes/%s' % node_id)

    def slots(self):
        return {slot['id']: slot for slot in self.api('GET', '/v1/slots')['slots']}

    def wait(self, what, test, timeout, every=2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = test()
            if value:
                return value
            time.sleep(every)
        raise Failed('%s: not within %d s' % (what, timeout))

    def create(self, node_id=None, want=(201, 202)):
        body = dict(self.request, node_id=node_id) if node_id else dict(self.request)
        status, data = self.plane.http('POST', '/v1/allocations', self.tenant, body)
        if status < 400:
            self.created.append(data['id'])
        if want is None:
            return status, data
        if status not in want:
            raise Failed('POST /v1/allocations: %s %s' % (status, data))
        return data

    def cleanup(self, timeout=1200):
        """After a failure: release what is still allocated, so that no slot VM stays behind."""
        left = [ident for ident in self.created if self.allocation(ident)['state'] not in ('released', 'failed')]
        for ident in left:
            self.plane.http('DELETE', '/v1/allocations/%s' % ident, self.tenant)
        for ident in left:
            try:
                self.state(ident, ('released', 'failed'), timeout)
            except Failed as exc:
                self.check(False, str(exc))

    def state(self, ident, states, timeout):
        return self.wait('allocation %s %s' % (ident, '/'.join(states)),
                         lambda: (lambda a: a if a['state'] in states else None)(self.allocation(ident)), timeout)

    def tasks_seen(self, ident):
        """The playbook tasks its job has run so far (the allocation's events)."""
        status, raw = self.plane.http('GET', '/v1/allocations/%s/events?follow=false' % ident, self.tenant)
        if status != 200:
            return []
        messages = [json.loads(line[5:])['message'] for line in raw.splitlines() if line.startswith('data:')]
        return [message for message in messages if message.startswith('task: ')]

    def run(self, discoveries, approvals):
        plane = self.plane
        plane.gpuaas('db', 'upgrade')
        self.operator, self.tenant = plane.token('operator'), plane.token('tenant', 'fleet-a')
        plane.up()
        for node_id in self.nodes:
            plane.gpuaas('node', 'discovery', node_id, discoveries[node_id], token=self.operator)
            plane.gpuaas('node', 'approve', node_id, approvals[node_id], token=self.operator)
            self.api('PUT', '/v1/nodes/%s/underlay' % node_id, {'underlay_ip': self.underlay[node_id]})
        free = sorted(s['id'] for s in self.slots().values() if s['approved'] and s['state'] == 'free')
        self.say('serve + worker up (SQLite, policy %s); nodes registered, approved free slots: %s; underlay: %s'
                 % (self.policy, ', '.join(free), ', '.join('%s %s' % (n, self.underlay[n]) for n in self.nodes)))
        local_id, vm_id = self.nodes

        # Two at once: one named to fleet-local, one placed by reservation (fleet-vm's slot is
        # the only other free one).
        first = self.create(node_id=local_id)['id']
        second = self.create()['id']
        placed = {ident: self.allocation(ident) for ident in (first, second)}
        self.say('allocations %s -> %s, %s -> %s' % (
            first, placed[first]['node_id'], second, placed[second]['node_id']))
        self.check(placed[second]['node_id'] == vm_id, 'the second allocation did not land on %s' % vm_id)
        self.state(second, ('provisioning',), 600)
        other = self.allocation(first)['state']
        self.say('%s provisioning on %s while %s is %s on %s' % (second, vm_id, first, other, local_id))
        self.check(other == 'provisioning', 'the two allocate jobs did not run at once')

        # fleet-vm stopped mid-job: while its allocate's longest task (the VM's build and boot)
        # runs on an established SSH session. (Stopped during an SSH handshake instead, the
        # client would wait without a bound: its keepalive starts after the handshake.)
        tasks = self.wait('allocate on %s in its VM build' % vm_id, lambda: (
            lambda seen: seen if seen and seen[-1].startswith(STOP_IN) else None)(self.tasks_seen(second)), 1200)
        time.sleep(STOP_AFTER)
        self.vm.pause()
        stopped = time.monotonic()
        self.say('%s STOPPED (SIGSTOP to its QEMU) %d s into its allocate\'s task %r'
                 % (vm_id, STOP_AFTER, tasks[-1].replace('task: ', '')))
        ended = self.wait('the stopped node\'s job to end', lambda: (
            lambda a: a if a['state'] != 'provisioning' or a['node_id'] != vm_id else None)(self.allocation(second)),
            900, every=3)
        node = self.node(vm_id)
        slot = self.slots()[placed[second]['slot_id']]
        self.say('after %.0f s: allocation %s %s (node %s): %s' % (
            time.monotonic() - stopped, second, ended['state'], ended['node_id'], ended.get('error')))
        self.say('node %s reachable=%s since %s: %s' % (
            vm_id, node['reachable'], node.get('unreachable_since'), (node.get('unreachable_error') or '')[:160]))
        self.say('slot %s %s: %s' % (slot['id'], slot['state'], slot.get('state_reason')))
        self.check(not node['reachable'], '%s is not marked unreachable' % vm_id)
        expected = ('failed',) if self.policy == 'fail' else ('failed', 'requested', 'provisioning')
        self.check(ended['state'] in expected, 'allocation %s is %s under policy %s' % (
            second, ended['state'], self.policy))
        self.check(slot['state'] == 'blocked', 'the slot the job left is %s, not blocked' % slot['state'])
        running = self.state(first, ('running', 'failed'), 1200)
        self.say('meanwhile on %s: allocation %s %s at %s' % (local_id, first, running['state'],
                                                              running.get('address')))
        self.check(running['state'] == 'running', 'the allocation on %s is %s' % (local_id, running['state']))

        # fleet-vm answers again: the probe marks it reachable, the cleanup frees the slot.
        self.vm.resume()
        resumed = time.monotonic()
        self.say('%s RESUMED (SIGCONT)' % vm_id)
        self.wait('%s reachable again' % vm_id, lambda: self.node(vm_id)['reachable'], 900, every=3)
        self.say('%s reachable again after %.0f s (the worker\'s probe)' % (vm_id, time.monotonic() - resumed))
        self.wait('slot %s cleaned up' % slot['id'], lambda: self.slots()[slot['id']]['state'] == 'free', 1800,
                  every=5)
        self.say('slot %s free again after %.0f s: the cleanup release ran on %s' % (
            slot['id'], time.monotonic() - resumed, vm_id))
        if self.allocation(second)['state'] != 'failed':   # moved: it waits for a slot
            self.api('DELETE', '/v1/allocations/%s' % second, token=self.tenant)
            self.state(second, ('released', 'failed'), 1800)

        # Drain: nothing new lands on fleet-vm (a request for it is refused); undrain: it does.
        self.api('POST', '/v1/nodes/%s/drain' % vm_id, {'reason': 'fleet lab: drain test'})
        status, refused = self.create(node_id=vm_id, want=None)
        self.say('%s drained; a new allocation for it: %s %s' % (vm_id, status, str(refused)[:160]))
        self.check(status >= 400, 'a drained node took an allocation: %s' % refused)
        if status < 400:
            self.api('DELETE', '/v1/allocations/%s' % refused['id'], token=self.tenant)
        self.api('POST', '/v1/nodes/%s/undrain' % vm_id)
        mark = self.audit_head()
        third = self.create(node_id=vm_id)['id']
        landed = self.allocation(third)
        self.say('%s undrained; the same request %s lands on %s' % (vm_id, third, landed['node_id']))
        self.check(landed['node_id'] == vm_id, 'the allocation after undrain went to %s' % landed['node_id'])
        done = self.state(third, ('running', 'failed'), 1800)
        self.say('allocation %s on %s %s at %s' % (third, vm_id, done['state'], done.get('address')))
        self.check(done['state'] == 'running', 'allocation %s on %s is %s' % (third, vm_id, done['state']))
        if done['state'] == 'running':
            self.overlay({local_id: self.allocation(first), vm_id: done}, mark)

        # Both released at once; nothing left behind on the control plane.
        for ident in (first, third):
            self.api('DELETE', '/v1/allocations/%s' % ident, token=self.tenant)
        for ident in (first, third):
            self.say('allocation %s %s' % (ident, self.state(ident, ('released', 'failed'), 1800)['state']))
        slots = self.slots()
        left = {sid: s['state'] for sid, s in slots.items() if s['state'] != 'free'}
        self.check(not left, 'slots not free at the end: %s' % left)
        verify = self.api('GET', '/v1/audit/verify')
        self.say('end: all slots free: %s; audit chain: %s' % (not left, 'ok' if verify.get('ok') else verify))
        self.check(verify.get('ok'), 'the audit chain does not verify: %s' % verify)
        self.per_node()

    def audit_head(self):
        entries = self.api('GET', '/v1/audit?limit=1000')['entries']
        return entries[-1]['seq'] if entries else 0

    def overlay(self, placed, since):
        """The tenant's allocations on both nodes (``placed``: {node id: its allocation}): the node
        that had the tenant first takes the new peer by a network job (audited after ``since``);
        then each guest's own pings reach the other's address through the tunnel."""
        local_id, vm_id = self.nodes
        tenant = placed[local_id]['tenant']

        def told():
            entries = self.api('GET', '/v1/audit?after=%d&limit=1000' % since)['entries']
            mine = [e['after'] for e in entries if e['action'] == 'tenant_network.peers' and e['target_id'] == tenant
                    and (e['after'] or {}).get('node_id') == local_id]
            return mine and mine[-1]['peers'] == [vm_id] and mine[-1]
        started = time.monotonic()
        applied = self.wait('%s applying tenant %s\'s new peers' % (local_id, tenant), told, 900, every=3)
        self.say('%s took tenant %s\'s plan by a network job: VNI %s, peers %s, leases updated %s (%.0f s)' % (
            local_id, tenant, applied['vni'], ', '.join(applied['peers']), ', '.join(applied['leases_updated']) or
            'none', time.monotonic() - started))
        ids = {node_id: allocation['id'] for node_id, allocation in placed.items()}
        reached = self.probe(ids)
        for node_id, allocation in placed.items():
            other = placed[vm_id if node_id == local_id else local_id]
            got = reached.get(allocation['id'])
            self.say('overlay: %s on %s (%s) reaches %s on %s (%s): %s; its probes reached: %s' % (
                allocation['id'], node_id, allocation.get('address'), other['id'], other['node_id'],
                other.get('address'), 'yes' if got and other.get('address') in got else 'NO',
                'no probe' if got is None else ' '.join(sorted(got)) or 'none'))
            self.check(got is not None and other.get('address') in got,
                       'the guest of %s on %s does not reach %s of its tenant on %s' % (
                           allocation['id'], node_id, other['id'], other['node_id']))
            self.check(got is None or got <= {other.get('address')},
                       'the guest of %s reaches what is no slot of its tenant: %s' % (allocation['id'], got))

    def per_node(self):
        """Per node: its allocations and how they ended, what was audited of it, its state now."""
        allocations = self.api('GET', '/v1/allocations?limit=500')['allocations']
        audited = {}
        for entry in self.api('GET', '/v1/audit?limit=1000')['entries']:
            if entry['target_type'] == 'node' and entry['action'] not in ('node.discovery', 'node.approve'):
                audited.setdefault(entry['target_id'], []).append(entry['action'])
        self.lines.append('per node:')
        for node_id in self.nodes:
            node = self.node(node_id)
            mine = ['%s %s%s' % (a['id'], a['state'], ' (%s)' % a['error'] if a.get('error') else '')
                    for a in sorted(allocations, key=lambda a: a['created_at']) if a['node_id'] == node_id]
            self.lines.append('%-12s allocations: %s; audited: %s; now %s, %s' % (
                node_id, ', '.join(mine) or 'none', ', '.join(audited.get(node_id, [])) or 'nothing',
                'reachable' if node['reachable'] else 'UNREACHABLE',
                'schedulable' if node['schedulable'] else 'drained'))
