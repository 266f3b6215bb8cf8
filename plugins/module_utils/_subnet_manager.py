# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: tenant partitions in the InfiniBand subnet manager (fabric_partition).

InfiniBand isolates by partition, and partitions are where the subnet manager keeps them:
a tenant's partition key (from the control plane) has its slots' VF port GUIDs as full
members, and no other tenant's. The interface every backend implements (:class:`Backend`):

* ``read()``: the tenant partitions the SM holds now, ``{pkey: Partition}``; a
  :class:`SubnetManagerError` when it cannot tell (the module then changes nothing);
* ``plan(plan, wanted)``: add the engine steps that make the SM hold ``wanted``, make it
  apply them, and read them back;
* ``describe()``: where the partitions are kept, for messages;
* ``locked()``: a context held from ``read`` to the end of the plan, so that two slots'
  tasks delegated to the SM host at once do not lose each other's change.

:func:`converge` computes ``wanted`` from what is there, for a set of port GUIDs the caller
owns: each becomes a full member of exactly the partition its member entry names (its tenant's)
or of none, and every GUID the caller does not own (another node's) stays as it is; a partition
left without members is dropped. ``present``/``absent`` (allocate, release) own one GUID;
``converged`` (reconcile) owns every fabric VF of one node's slots, with its live leases'
memberships, so a node converges its own part of a file every node shares. A partition key
that keeps members of another tenant is refused: the control plane never gives one key to two
tenants.

The OpenSM backend (:class:`OpenSM`) owns ``partitions.conf`` (``--Pconfig``, default
``/etc/opensm/partitions.conf``) and writes it whole: the default partition line, then one
line per tenant partition in the documented grammar (opensm(8), PARTITION CONFIGURATION)::

    Default=0x7fff, ipoib : ALL=limited, SELF=full ;
    tenant_acme=0x0100, ipoib : 0xe2ad1bcf2448106c=full, 0x02d54c9b0a1e3f77=full ;

then makes OpenSM re-read it (OpenSM parses the file on every heavy sweep, and a SIGHUP starts
one: ``reload``, by default ``systemctl kill --signal=HUP opensm.service``). A file it did not
write (a line it cannot read back as its own) is refused, not overwritten. A backend for
another SM (UFM's REST API: ``GET/POST /ufmRest/resources/pkeys``) implements the same three
methods.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import fcntl
import os
import re

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan
from ansible_collections.gpuaas.slice.plugins.module_utils._files import atomic_write, check_path
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError, TENANT_ID, Rule, show

HEADER = '# Managed by gpuaas.slice (fabric_partition): edits are refused, not kept.\n'
DEFAULT_PKEY = 0x7fff
PKEY_MIN, PKEY_MAX = 0x0001, 0x7ffe
PREFIX = 'tenant_'
# The default partition's members: limited for every port (they reach the SM and the switches,
# not each other), full for the SM's own port, as OpenSM does without a rule for it.
DEFAULT_MEMBERS = 'ALL=limited, SELF=full'
MEMBERS = Rule('default partition members', r'[A-Z_]+(=(full|limited|both))?(, ?[A-Z_]+(=(full|limited|both))?)*',
               "keywords (ALL, ALL_CAS, ALL_SWITCHES, ALL_ROUTERS, SELF) each with =full, =limited or "
               "=both, separated by ', '")
_GUID_COLON = re.compile(r'[0-9a-f]{2}(:[0-9a-f]{2}){7}\Z')
_GUID_HEX = re.compile(r'0x[0-9a-f]{16}\Z')
_LINE = re.compile(r'(?P<name>%s(?P<tenant>[a-z0-9][a-z0-9_.-]{0,62}))=0x(?P<pkey>[0-9a-f]{4}), ipoib : '
                   r'(?P<members>0x[0-9a-f]{16}=full(, 0x[0-9a-f]{16}=full)*) ;\Z' % PREFIX)


class SubnetManagerError(GpuaasError):
    """The subnet manager's partitions cannot be read or changed as asked."""


def check_guid(value, what='port_guid'):
    """A port GUID as ``0x`` and 16 hex digits (OpenSM's form), from that or colon form."""
    text = value.lower() if isinstance(value, str) else ''
    if _GUID_COLON.match(text):
        text = '0x' + text.replace(':', '')
    if not _GUID_HEX.match(text) or int(text, 16) == 0:
        raise SubnetManagerError('%s %s is not a port GUID: 8 octets, as 02:11:22:33:44:55:66:77 or '
                                 '0x0211223344556677, not zero' % (what, show(value)))
    return text


def check_pkey(value, what='pkey'):
    """The 15-bit partition key of ``0x0101`` or a full member's ``0x8101``; never the default."""
    try:
        number = int(value, 16) if isinstance(value, str) and value.lower().startswith('0x') else None
    except ValueError:
        number = None
    if number is None or not 0 <= number <= 0xffff:
        raise SubnetManagerError("%s %s is not a partition key: '0x' and up to 4 hex digits" % (what, show(value)))
    number &= 0x7fff
    if not PKEY_MIN <= number <= PKEY_MAX:
        raise SubnetManagerError('%s %s is not a tenant partition key: 0x0001-0x7ffe (0x7fff is the default '
                                 'partition every port is in)' % (what, show(value)))
    return number


class Partition:
    def __init__(self, tenant, guids=()):
        self.tenant = tenant
        self.guids = set(guids)

    def __eq__(self, other):
        return isinstance(other, Partition) and (self.tenant, self.guids) == (other.tenant, other.guids)

    def __ne__(self, other):
        return not self == other

    def as_dict(self):
        return {'tenant': self.tenant, 'port_guids': sorted(self.guids)}


def as_dicts(partitions):
    return dict(('0x%04x' % pkey, part.as_dict()) for pkey, part in sorted(partitions.items()))


def converge(have, owned, members):
    """The partitions wanted when the port GUIDs ``owned`` are full members of exactly
    ``members`` ({guid: (tenant, pkey)}, each in ``owned``) and of no other tenant partition;
    every other GUID (another node's) stays where it is; empty partitions are dropped.

    A key that keeps members of another tenant is refused: the control plane never gives a
    key to two tenants, so one of the two is stale and an operator must look.
    """
    owned, wanted = set(owned), {}
    for number, part in have.items():
        guids = part.guids - owned
        if guids:
            wanted[number] = Partition(part.tenant, guids)
    for guid, (tenant, pkey) in sorted(members.items()):
        part = wanted.setdefault(pkey, Partition(tenant))
        if part.tenant != tenant:
            raise SubnetManagerError('partition key 0x%04x is held by tenant %s in the subnet manager, not %s: '
                                     'the control plane never gives a key to two tenants; an operator must look'
                                     % (pkey, part.tenant, tenant))
        part.guids.add(guid)
    return wanted


def memberships(partitions, guids):
    """{guid: [pkey text]} of the tenant partitions each of ``guids`` is in."""
    return dict((guid, ['0x%04x' % number for number, part in sorted(partitions.items()) if guid in part.guids])
                for guid in guids)


class Backend:
    """What a subnet manager backend implements (see the module docstring)."""

    def describe(self):
        raise NotImplementedError

    def locked(self):
        raise NotImplementedError

    def read(self):
        raise NotImplementedError

    def plan(self, plan, wanted):
        raise NotImplementedError


class OpenSM(Backend):
    """partitions.conf, written whole, and a reload command that makes OpenSM re-read it."""

    def __init__(self, module, runner, conf, default_members=DEFAULT_MEMBERS, reload=None):
        self.module = module
        self.runner = runner
        self.conf = check_path(conf, 'conf')
        self.default_members = MEMBERS.check(default_members, 'default_members')
        self.reload = list(reload or [])

    def describe(self):
        return 'OpenSM partitions %s' % self.conf

    @contextlib.contextmanager
    def locked(self):
        """An exclusive flock on ``conf.lock`` (the file itself is replaced, not locked); none
        in check mode, which writes nothing."""
        if self.module.check_mode:
            yield
            return
        try:
            handle = open(self.conf + '.lock', 'a')
        except (IOError, OSError) as exc:
            raise SubnetManagerError('cannot open %s.lock (%s): the partitions are not changed unlocked'
                                     % (self.conf, exc))
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def render(self, partitions):
        lines = [HEADER, 'Default=0x%04x, ipoib : %s ;\n' % (DEFAULT_PKEY, self.default_members)]
        for pkey, part in sorted(partitions.items()):
            lines.append('%s%s=0x%04x, ipoib : %s ;\n' % (PREFIX, part.tenant, pkey, ', '.join(
                '%s=full' % guid for guid in sorted(part.guids))))
        return ''.join(lines)

    def parse(self, text):
        """{pkey: Partition} of a file this backend wrote; SubnetManagerError for anything else."""
        lines = text.splitlines(True)
        if not lines or lines[0] != HEADER:
            raise SubnetManagerError('%s was not written by gpuaas.slice (its first line is not %r): move it '
                                     'away or merge it by hand; it is not overwritten' % (self.conf, HEADER.strip()))
        found = {}
        for number, line in enumerate(lines[1:], 2):
            text_line = line.rstrip('\n')
            if text_line.startswith('Default=0x%04x, ipoib : ' % DEFAULT_PKEY) and text_line.endswith(' ;'):
                continue
            match = _LINE.match(text_line)
            if match is None or int(match.group('pkey'), 16) in found:
                raise SubnetManagerError('%s line %d is not one gpuaas.slice writes: %s'
                                         % (self.conf, number, show(text_line)))
            found[int(match.group('pkey'), 16)] = Partition(TENANT_ID.check(match.group('tenant')), [
                member.split('=')[0] for member in match.group('members').split(', ')])
        return found

    def read(self):
        try:
            with open(self.conf) as handle:
                return self.parse(handle.read())
        except (IOError, OSError) as exc:
            if not os.path.exists(self.conf):
                return {}
            raise SubnetManagerError('cannot read %s (%s): the partitions cannot be known' % (self.conf, exc))

    def plan(self, plan, wanted):
        text = self.render(wanted)
        plan.change('write %s (%d tenant partitions)' % (self.conf, len(wanted)),
                    lambda: atomic_write(self.module, self.conf, text.encode('utf-8'), 0o644),
                    verify=lambda: None if self.read() == wanted else '%s does not hold what was written' % self.conf)
        if self.reload:
            plan.command('make OpenSM re-read it: %s' % ' '.join(self.reload), self.reload)


def apply(module, backend, owned, members, **fields):
    """Converge the subnet manager (:func:`converge`) under the backend's lock: (the result,
    the partitions found)."""
    with backend.locked():
        have = backend.read()
        wanted = converge(have, owned, members)
        plan = Plan(module, error=SubnetManagerError)
        if wanted != have:
            backend.plan(plan, wanted)
            first = plan.steps[0]
            first.key, first.before, first.after = 'partitions', as_dicts(have), as_dicts(wanted)
        plan.execute()
    return plan.result(where=backend.describe(), partitions=as_dicts(wanted), commands=plan.commands(), **fields), have


def run(module, backend, port_guid, state, tenant=None, pkey=None):
    """The module's result for one port GUID's membership (``tenant`` and ``pkey`` are needed
    for ``present`` only: ``absent`` takes the GUID out of whichever partition holds it)."""
    guid = check_guid(port_guid)
    if state == 'present' or tenant is not None or pkey is not None:
        if tenant is None or pkey is None:
            raise SubnetManagerError('state=present needs the tenant and its pkey')
        tenant, number = TENANT_ID.check(tenant, 'tenant'), check_pkey(pkey)
    else:
        number = None
    members = {guid: (tenant, number)} if state == 'present' else {}
    return apply(module, backend, [guid], members, port_guid=guid,
                 pkey=None if number is None else '0x%04x' % number)[0]


def run_node(module, backend, port_guids, members):
    """state=converged: a node's own port GUIDs (``port_guids``, every fabric VF of its slots)
    made full members of exactly ``members`` ([{port_guid, tenant, pkey}], its live leases'),
    and of no other tenant partition; other nodes' GUIDs are left as they are. The result
    names each of the node's GUIDs whose membership changed (``changes``)."""
    if not isinstance(port_guids, list) or not isinstance(members, list):
        raise SubnetManagerError('port_guids and members must be lists')
    owned = set(check_guid(guid, 'port_guids[%d]' % number) for number, guid in enumerate(port_guids))
    wanted = {}
    for number, member in enumerate(members):
        where = 'members[%d]' % number
        if not isinstance(member, dict):
            raise SubnetManagerError('%s must be a mapping {port_guid, tenant, pkey}, not %s' % (where, show(member)))
        guid = check_guid(member.get('port_guid'), where + '.port_guid')
        if guid not in owned:
            raise SubnetManagerError('%s.port_guid %s is not one of port_guids: a node converges its own GUIDs only'
                                     % (where, guid))
        if guid in wanted:
            raise SubnetManagerError('%s.port_guid %s is listed twice: a port is in one tenant partition' % (where, guid))
        wanted[guid] = (TENANT_ID.check(member.get('tenant'), where + '.tenant'), check_pkey(member.get('pkey'), where + '.pkey'))
    result, have = apply(module, backend, owned, wanted, port_guids=sorted(owned))
    before = memberships(have, owned)
    after = dict((guid, ['0x%04x' % wanted[guid][1]] if guid in wanted else []) for guid in owned)
    result['changes'] = [{'port_guid': guid, 'found': before[guid], 'set': after[guid]}
                         for guid in sorted(owned) if before[guid] != after[guid]]
    return result
