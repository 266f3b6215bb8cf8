# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fabric_partition with the OpenSM backend: partitions.conf kept to exactly the live
memberships, in OpenSM's documented grammar (checked by a reader of that grammar; Debian's
opensm has no option to parse a file without an InfiniBand port, and OpenSM's own parser,
run by tests/integrity/opensm.py, checks the files of the crash tests), check mode, diff,
idempotence, the reload, and every refusal; state=converged (reconcile) for one node's GUIDs."""

from __future__ import annotations

import os
import re

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _subnet_manager as sm
from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import vf_guids
from ansible_collections.gpuaas.slice.plugins.modules import fabric_partition
from tests.unit.module_runner import run_module

GUID_A1 = vf_guids('gpu-node-01', '0000:1a:00.0', 0)[1]
GUID_A2 = vf_guids('gpu-node-02', '0000:1a:00.0', 3)[1]
GUID_B1 = vf_guids('gpu-node-01', '0000:1a:00.0', 1)[1]


def hexguid(guid):
    return '0x' + guid.replace(':', '')


# -- a reader of opensm(8)'s PARTITION CONFIGURATION grammar ---------------------------------

_DEF = re.compile(r'\s*(?P<name>[^=,:;#\s]*)\s*(=\s*(?P<pkey>0x[0-9a-fA-F]+|[0-9]+))?\s*'
                  r'(?P<flags>(,\s*(indx0|ipoib|defmember=(full|limited|both)|(rate|mtu|sl|scope|Q_Key|TClass|FlowLabel)'
                  r'=\w+)\s*)*)\Z')
_PORT = re.compile(r'\s*(?P<guid>0x[0-9a-fA-F]+|[0-9]+|ALL|ALL_CAS|ALL_SWITCHES|ALL_ROUTERS|SELF)\s*'
                   r'(=\s*(?P<member>full|limited|both))?\s*\Z')


def opensm_grammar(text):
    """{pkey: {port: membership}} as OpenSM's grammar reads the file; AssertionError on any
    statement the grammar does not allow."""
    body = '\n'.join(line.split('#', 1)[0] for line in text.splitlines())
    statements = body.split(';')
    assert not statements[-1].strip(), 'text after the last ";": %r' % statements[-1]
    partitions = {}
    for statement in statements[:-1]:
        definition, colon, properties = statement.partition(':')
        assert colon, 'no ":" in %r' % statement
        match = _DEF.match(definition)
        assert match and match.group('pkey'), 'bad partition definition %r' % definition
        pkey = int(match.group('pkey'), 0) & 0x7fff
        members = partitions.setdefault(pkey, {})
        for spec in filter(str.strip, properties.split(',')):
            port = _PORT.match(spec)
            assert port, 'bad port specifier %r' % spec
            members[port.group('guid')] = port.group('member') or 'limited'
    return partitions


# -- the module ------------------------------------------------------------------------------

@pytest.fixture
def conf(tmp_path):
    return str(tmp_path / 'partitions.conf')


def run(capsys, conf, port_guid=GUID_A1, tenant='acme', pkey='0x8100', state='present', check_mode=False, **extra):
    args = dict(dict(port_guid=port_guid, state=state, conf=conf, reload=['/bin/true']), **extra)
    if tenant is not None:
        args.update(tenant=tenant, pkey=pkey)
    return run_module(fabric_partition, args, check_mode=check_mode, diff=True, capsys=capsys)


def test_allocations_join_and_leave_and_the_file_matches_them_exactly(capsys, conf):
    checked = run(capsys, conf, check_mode=True)
    assert checked['changed'] is True and not os.path.exists(conf)
    assert checked['diff'] == {'before': {'partitions': {}},
                               'after': {'partitions': {'0x0100': {'tenant': 'acme', 'port_guids': [hexguid(GUID_A1)]}}}}

    first = run(capsys, conf)
    assert first['changed'] is True and first['commands'] == [['/bin/true']]
    run(capsys, conf, port_guid=GUID_A2)
    run(capsys, conf, port_guid=GUID_B1, tenant='globex', pkey='0x0101')
    text = open(conf).read()
    assert text == (sm.HEADER + 'Default=0x7fff, ipoib : ALL=limited, SELF=full ;\n'
                    'tenant_acme=0x0100, ipoib : %s=full, %s=full ;\n'
                    'tenant_globex=0x0101, ipoib : %s=full ;\n'
                    % tuple(sorted([hexguid(GUID_A1), hexguid(GUID_A2)]) + [hexguid(GUID_B1)]))
    # OpenSM's grammar reads: each tenant's VFs full members of its partition only; every
    # port limited in the default one, the SM's port full.
    assert opensm_grammar(text) == {
        0x7fff: {'ALL': 'limited', 'SELF': 'full'},
        0x0100: {hexguid(GUID_A1): 'full', hexguid(GUID_A2): 'full'},
        0x0101: {hexguid(GUID_B1): 'full'}}
    assert oct(os.stat(conf).st_mode & 0o777) == '0o644'

    again = run(capsys, conf, port_guid=GUID_A2)
    assert again['changed'] is False and again['commands'] == [] and open(conf).read() == text

    # Release: out of every partition, without the tenant or its key; an empty one goes.
    left = run(capsys, conf, port_guid=GUID_B1, tenant=None, state='absent')
    assert left['changed'] is True and '0x0101' not in left['partitions']
    assert set(opensm_grammar(open(conf).read())) == {0x7fff, 0x0100}
    assert run(capsys, conf, port_guid=GUID_B1, tenant=None, state='absent')['changed'] is False


def test_a_guid_moved_to_another_tenant_leaves_the_first(capsys, conf):
    run(capsys, conf)
    moved = run(capsys, conf, tenant='globex', pkey='0x0101')
    assert moved['partitions'] == {'0x0101': {'tenant': 'globex', 'port_guids': [hexguid(GUID_A1)]}}


def test_a_key_held_for_another_tenant_is_refused(capsys, conf):
    run(capsys, conf)
    before = open(conf).read()
    failed = run(capsys, conf, port_guid=GUID_B1, tenant='globex', pkey='0x0100')
    assert failed['failed'] and 'partition key 0x0100 is held by tenant acme' in failed['msg']
    assert open(conf).read() == before


def test_a_file_it_did_not_write_is_refused_not_overwritten(capsys, conf):
    with open(conf, 'w') as handle:
        handle.write('Default=0x7fff : ALL=full ;\n')
    failed = run(capsys, conf)
    assert failed['failed'] and 'was not written by gpuaas.slice' in failed['msg']
    assert open(conf).read() == 'Default=0x7fff : ALL=full ;\n'
    with open(conf, 'w') as handle:
        handle.write(sm.HEADER + 'Default=0x7fff, ipoib : ALL=limited, SELF=full ;\nstorage=0x0200 : ALL=full ;\n')
    failed = run(capsys, conf)
    assert failed['failed'] and 'line 3 is not one gpuaas.slice writes' in failed['msg']


def test_a_reload_that_fails_fails_the_module(capsys, conf):
    failed = run(capsys, conf, reload=['/bin/false'])
    assert failed['failed'] and 'make OpenSM re-read it' in failed['msg']


@pytest.mark.parametrize('field, value, reason', [
    ('pkey', '0x7fff', 'not a tenant partition key'), ('pkey', '0xffff', 'not a tenant partition key'),
    ('pkey', '0x0000', 'not a tenant partition key'), ('pkey', '256', "'0x' and up to 4 hex digits"),
    ('pkey', '0x1ffff', "'0x' and up to 4 hex digits"), ('port_guid', '00:00:00:00:00:00:00:00', 'not zero'),
    ('port_guid', 'e2:ad:1b:cf:24:48:10', 'is not a port GUID'), ('port_guid', '0xe2ad', 'is not a port GUID'),
    ('tenant', 'Acme Corp', 'is not a valid tenant id'),
    ('default_members', 'ALL=full ; evil=0x1 : ALL', 'is not a valid default partition members'),
])
def test_bad_input_is_refused_naming_it_and_changes_nothing(capsys, conf, field, value, reason):
    args = {field: value}
    failed = run(capsys, conf, **args) if field != 'tenant' else run(capsys, conf, tenant=value)
    assert failed['failed'] and reason in failed['msg'] and value in failed['msg'] and field in failed['msg']
    assert not os.path.exists(conf)


def test_present_needs_the_tenant_and_its_key(capsys, conf):
    failed = run(capsys, conf, tenant=None)
    assert failed['failed'] and 'state=present needs the tenant and its pkey' in failed['msg']


def test_the_grammar_reader_refuses_what_opensm_would():
    with pytest.raises(AssertionError):
        opensm_grammar('tenant_a=0x0100, ipoib : 0x01=full')           # no ';'
    with pytest.raises(AssertionError):
        opensm_grammar('tenant_a=0x0100, ipoib 0x01=full ;')           # no ':'
    with pytest.raises(AssertionError):
        opensm_grammar('tenant_a=0x0100, ipoib : 0x01=full 0x02 ;')    # no ','


# -- state=converged: one node's GUIDs in exactly its live leases' partitions -----------------------

GUID_N1 = hexguid(vf_guids('gpu-node-01', '0000:1a:00.0', 2)[1])


def converge(capsys, conf, port_guids, members, check_mode=False):
    return run_module(fabric_partition, dict(state='converged', port_guids=port_guids, members=members, conf=conf,
                                             reload=['/bin/true']), check_mode=check_mode, diff=True, capsys=capsys)


def test_converged_owns_the_node_guids_only_and_reports_each_change(capsys, conf):
    run(capsys, conf, port_guid=GUID_A1)                              # node 01, acme
    run(capsys, conf, port_guid=GUID_A2)                              # node 02, acme: not node 01's
    run(capsys, conf, port_guid=GUID_B1, tenant='globex', pkey='0x0101')
    owned = [GUID_A1, GUID_B1, GUID_N1]
    members = [{'port_guid': GUID_N1, 'tenant': 'globex', 'pkey': '0x8101'},
               {'port_guid': GUID_B1, 'tenant': 'globex', 'pkey': '0x0101'}]
    before = open(conf).read()
    checked = converge(capsys, conf, owned, members, check_mode=True)
    assert checked['changed'] is True and open(conf).read() == before
    assert checked['changes'] == sorted([{'port_guid': hexguid(GUID_A1), 'found': ['0x0100'], 'set': []},
                                         {'port_guid': GUID_N1, 'found': [], 'set': ['0x0101']}],
                                        key=lambda change: change['port_guid'])
    done = converge(capsys, conf, owned, members)
    assert done['changes'] == checked['changes'] and done['port_guids'] == sorted([hexguid(GUID_A1), hexguid(GUID_B1),
                                                                                   GUID_N1])
    assert opensm_grammar(open(conf).read()) == {
        0x7fff: {'ALL': 'limited', 'SELF': 'full'},
        0x0100: {hexguid(GUID_A2): 'full'},
        0x0101: {hexguid(GUID_B1): 'full', GUID_N1: 'full'}}
    again = converge(capsys, conf, owned, members)
    assert again['changed'] is False and again['changes'] == [] and again['actions'] == []
    # No live lease on the node any more: its GUIDs leave; node 02's stays.
    converge(capsys, conf, owned, [])
    assert opensm_grammar(open(conf).read()) == {0x7fff: {'ALL': 'limited', 'SELF': 'full'},
                                                 0x0100: {hexguid(GUID_A2): 'full'}}


def test_converged_refuses_a_damaged_file_and_leaves_it(capsys, conf):
    run(capsys, conf)
    with open(conf) as handle:
        text = handle.read()
    for damaged in (text[:-3], text.replace('=full', '=limited'), text + text.splitlines(True)[-1], ''.join(
            text.splitlines(True)[1:])):
        with open(conf, 'w') as handle:
            handle.write(damaged)
        failed = converge(capsys, conf, [GUID_A1], [])
        assert failed['failed'] and 'gpuaas.slice' in failed['msg'] and open(conf).read() == damaged


@pytest.mark.parametrize('members, reason', [
    ([{'port_guid': GUID_A2, 'tenant': 'acme', 'pkey': '0x0100'}], 'is not one of port_guids'),
    ([{'port_guid': GUID_A1, 'tenant': 'acme', 'pkey': '0x0100'}, {'port_guid': GUID_A1, 'tenant': 'acme',
                                                                   'pkey': '0x0100'}], 'listed twice'),
    ([{'port_guid': GUID_A1, 'tenant': 'acme', 'pkey': '0x7fff'}], 'not a tenant partition key'),
    ([{'port_guid': GUID_A1, 'tenant': '../x', 'pkey': '0x0100'}], 'members[0].tenant'),
    ([{'port_guid': '0x' + '0' * 16, 'tenant': 'acme', 'pkey': '0x0100'}], 'not a port GUID'),
    ([{'port_guid': GUID_A1, 'tenant': 'acme', 'pkey': '0x0101'}, {'port_guid': GUID_B1, 'tenant': 'globex',
                                                                   'pkey': '0x0101'}], 'partition key 0x0101 is held by tenant'),
])
def test_converged_refuses_members_it_cannot_trust_and_changes_nothing(capsys, conf, members, reason):
    failed = converge(capsys, conf, [GUID_A1, GUID_B1], members)
    assert failed['failed'] and reason in failed['msg'] and not os.path.exists(conf)
