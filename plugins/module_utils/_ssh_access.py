# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: a slot's SSH port on the node's public address (nftables).

Slot ``i`` is reachable from outside on one TCP port of the node, ``ssh_port_base + i``
(``contract.Slot.ssh_port``), forwarded to its port 22 and to nothing else. The table
``inet gpuaas`` (``_network.nft_ruleset``, host_network) holds two verdict maps that start
empty, and each slot adds one element to each and two chains of its own:

* ``ssh_dnat`` (public port -> ``jump ssh_dnat_{slot_id}``), looked up in the nat prerouting
  chain for TCP to the public address from anywhere but the slot network; the slot's chain
  rewrites the destination to the slot's address, port 22, for the allowed sources only;
* ``ssh_forward`` (slot address -> ``jump ssh_fwd_{slot_id}``), looked up in the forward chain
  before everything towards the bridge is dropped; the slot's chain accepts TCP to port 22
  from the allowed sources that came in through the slot's own public port (``ct original
  proto-dst``), nothing else.

A slot's rules are added and removed in one ``nft -f`` transaction each, and kept in
``{ssh_dir}/{slot_id}.nft``, which the table's ruleset includes: host_network rebuilding the
table (delete and create, atomically) brings every leased slot's rules back with it.
Reconcile finds a slot's rules by its chains (``nft -j list table``) and by its file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.gpuaas.slice.plugins.module_utils._files import remove
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import SLOT_ID

DNAT_MAP, FORWARD_MAP = 'ssh_dnat', 'ssh_forward'
DNAT_PREFIX, FORWARD_PREFIX = 'ssh_dnat_', 'ssh_fwd_'
DEFAULT_SSH_DIR = '/etc/gpuaas/ssh.d'
SSH_PORT = 22


def chains(slot):
    """(DNAT chain, forward chain) of a contract.Slot (nft names: letters, digits, '_', '.', '-')."""
    return DNAT_PREFIX + slot.slot_id, FORWARD_PREFIX + slot.slot_id


def slot_rules(table, slot, base, sources):
    """The nft commands giving ``slot`` its public port ``slot.ssh_port(base)`` from ``sources``
    (checked by contract.check_source_cidrs): idempotent, so the file is applied again as it is."""
    dnat, forward = chains(slot)
    port = slot.ssh_port(base)
    allowed = '{ %s }' % ', '.join(sources)
    t = 'inet %s' % table
    return '\n'.join([
        '# Written by gpuaas.slice.slot_network: slot %s on public TCP port %d.' % (slot.slot_id, port),
        'add chain %s %s' % (t, dnat),
        'flush chain %s %s' % (t, dnat),
        'add rule %s %s meta l4proto tcp ip saddr %s dnat ip to %s:%d' % (t, dnat, allowed, slot.ip, SSH_PORT),
        'add chain %s %s' % (t, forward),
        'flush chain %s %s' % (t, forward),
        'add rule %s %s ip saddr %s tcp dport %d ct status dnat ct original proto-dst %d accept'
        % (t, forward, allowed, SSH_PORT, port),
        'add element %s %s { %d : jump %s }' % (t, DNAT_MAP, port, dnat),
        'add element %s %s { %s : jump %s }' % (t, FORWARD_MAP, slot.ip, forward),
    ]) + '\n'


def table_state(run, table, error):
    """What the table holds for SSH: {'chains': {name: rule count}, 'dnat': {port: chain},
    'forward': {address: chain}}; None when there is no such table. A table that cannot be read
    raises ``error``; one without the maps is refused (host_network has not made it)."""
    rc, out, err = run(['nft', '-j', 'list', 'table', 'inet', table], check=False)
    if rc != 0:
        if no_table(err):
            return None
        raise error('nft cannot list table inet %s: %s' % (table, (err or out).strip()))
    return parse_table(out)


def no_table(err):
    """Whether nft's error says the table does not exist."""
    return 'No such file or directory' in (err or '')


def parse_table(out):
    """table_state of what ``nft -j list table`` printed."""
    state = {'chains': {}, 'dnat': None, 'forward': None}
    for item in json.loads(out).get('nftables', []):
        if 'chain' in item:
            state['chains'].setdefault(item['chain']['name'], 0)
        elif 'rule' in item:
            state['chains'][item['rule']['chain']] = state['chains'].get(item['rule']['chain'], 0) + 1
        elif 'map' in item and item['map']['name'] in (DNAT_MAP, FORWARD_MAP):
            state['dnat' if item['map']['name'] == DNAT_MAP else 'forward'] = dict(
                (key, data.get('jump', {}).get('target')) for key, data in item['map'].get('elem', []))
    return state


def slot_chains(state):
    """{slot id: [its SSH chains]} of the chains in a table_state."""
    found = {}
    for name in (state or {}).get('chains', {}):
        for prefix in (DNAT_PREFIX, FORWARD_PREFIX):
            if name.startswith(prefix) and SLOT_ID.matches(name[len(prefix):]):
                found.setdefault(name[len(prefix):], []).append(name)
    return found


def need_table(state, table, error):
    if state is None or state['dnat'] is None or state['forward'] is None:
        raise error('table inet %s has no %s and %s maps: set up the host network first '
                    '(gpuaas.slice.host_network, run by host_prep)' % (table, DNAT_MAP, FORWARD_MAP))


def in_place(state, slot, base):
    """Whether the table forwards the slot's port as slot_rules says (its chains with one rule
    each, both map elements jumping to them)."""
    if state is None:
        return False
    dnat, forward = chains(slot)
    return (state['chains'].get(dnat) == 1 and state['chains'].get(forward) == 1
            and (state['dnat'] or {}).get(slot.ssh_port(base)) == dnat
            and (state['forward'] or {}).get(slot.ip) == forward)


def conflict(state, slot, base):
    """Why the slot's port or address is forwarded to another slot's chain, or None."""
    dnat, forward = chains(slot)
    port = slot.ssh_port(base)
    held = (state['dnat'] or {}).get(port)
    if held not in (None, dnat):
        return ('public port %d is forwarded by %s already: each node on a host needs its own '
                'ssh_port_base' % (port, held))
    held = (state['forward'] or {}).get(slot.ip)
    if held not in (None, forward):
        return 'address %s is forwarded to by %s already' % (slot.ip, held)
    return None


def removal(table, slot, state):
    """The nft commands removing what the table holds of the slot's SSH rules ('' when nothing)."""
    if state is None:
        return ''
    dnat, forward = chains(slot)
    t = 'inet %s' % table
    lines = []
    for name, elements in ((DNAT_MAP, state['dnat']), (FORWARD_MAP, state['forward'])):
        for key, target in sorted((elements or {}).items(), key=lambda kv: str(kv[0])):
            if target in (dnat, forward):
                lines.append('delete element %s %s { %s }' % (t, name, key))
    lines += ['delete chain %s %s' % (t, name) for name in (dnat, forward) if name in state['chains']]
    # A chain with rules cannot be deleted before they are flushed, in the same transaction.
    lines = ['flush chain %s %s' % (t, name) for name in (dnat, forward) if name in state['chains']] + lines
    return '\n'.join(lines) + '\n' if lines else ''


def apply(run, script):
    """Run nft commands in one transaction (``nft -f -``): all of them or none."""
    run(['nft', '-f', '-'], data=script)


def remove_file(path):
    if os.path.exists(path):
        remove(path)
