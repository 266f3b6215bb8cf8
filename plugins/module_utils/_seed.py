# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the slot VM's cloud-init NoCloud seed (ISO 9660, volume cidata).

The seed holds three files. meta-data: instance-id (the allocation id) and
local-hostname. user-data: ``#cloud-config`` with the login user and the tenant's SSH keys, and a file
carrying the telemetry sink and token; optionally the slot's approved facts
(/etc/gpuaas/slot.json, what the guest agent's acceptance check compares the slot with)
and the guest agent itself with a systemd unit that runs it (for images that do not
have it). network-config: version 2, DHCP on the NIC matched by the slot's MAC. With a fabric
(:func:`check_fabric`), the slot's fabric VF gets its tenant fabric address: a RoCE VF's netdev
matched by the VF's MAC (the VLAN is the VF's, set on the PF: the guest sees untagged frames),
an InfiniBand VF through a oneshot unit that finds the IPoIB interface by the VF's port GUID,
creates its child on the tenant's partition key and puts the address there. Every file is JSON, which is YAML too: tenant strings are
validated first and then written as JSON strings, so no value can become YAML syntax,
a tag or a shell command. The ISO records the SHA-256 of its content in its
application id, so an unchanged seed is recognised without a side file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import json
import ipaddress
import os
import re
import shutil
import tempfile

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, Runner
from ansible_collections.gpuaas.slice.plugins.module_utils._files import (
    check_dir,
    ensure_dir,
    install,
    remove,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ALLOCATION_ID,
    DEFAULT_LOGIN_USER,
    GPU_MODEL,
    GUEST_PATH,
    HOSTNAME,
    LOGIN_USER,
    TELEMETRY_TOKEN,
    ContractError,
    Slot,
    check_int,
    check_sink_url,
    check_ssh_keys,
)

VOLUME_ID = 'cidata'
APP_ID_PREFIX = 'GPUAAS-SEED-SHA256-'
SEED_FILES = ('meta-data', 'network-config', 'user-data')
DEFAULT_SINK = 'http://10.100.0.1:9110/metrics'
DEFAULT_TELEMETRY_FILE = '/etc/gpuaas/telemetry.env'
REDACTED = '********'
# The guest agent (roles/host_prep/files/gpuaas_guest_agent.py; host_prep installs it on the
# node) and what the seed makes of it in the guest.
SLOT_FILE = '/etc/gpuaas/slot.json'
AGENT_PATH = '/usr/local/lib/gpuaas/gpuaas_guest_agent.py'
AGENT_UNIT_PATH = '/etc/systemd/system/gpuaas-guest-agent.service'
AGENT_UNIT = """[Unit]
Description=gpuaas guest agent (health, GPU metrics, slot acceptance)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/python3 %s
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
""" % AGENT_PATH
AGENT_RUNCMD = [['systemctl', 'daemon-reload'], ['systemctl', 'enable', '--now', 'gpuaas-guest-agent.service']]
MAX_AGENT = 128 * 1024
LINK_SPEED = re.compile(r'[0-9]{1,3}(\.[0-9]{1,2})? GT/s( PCIe)?')

MAX_USER_DATA = 256 * 1024
# cloud-config keys the module sets itself; a tenant's user_data may not override them.
RESERVED_KEYS = ('hostname', 'fqdn', 'preserve_hostname', 'prefer_fqdn_over_hostname', 'manage_etc_hosts',
                 'ssh_authorized_keys', 'users')

# The module's options; slot_provision and slot_release check a step's options with them too.
ARGUMENT_SPEC = dict(
    slot_id=dict(type='str', required=True),
    state=dict(type='str', choices=['present', 'absent'], default='present'),
    allocation_id=dict(type='str'),
    hostname=dict(type='str'),
    ssh_keys=dict(type='list', elements='str', default=[], aliases=['ssh_authorized_keys'], no_log=False),
    telemetry_token=dict(type='str', no_log=True),
    telemetry_sink=dict(type='str', default=DEFAULT_SINK),
    telemetry_file=dict(type='str', default=DEFAULT_TELEMETRY_FILE),
    user_data=dict(type='dict', default={}),
    login_user=dict(type='str', default=DEFAULT_LOGIN_USER),
    approved=dict(type='dict'),
    guest_agent=dict(type='path'),
    fabric=dict(type='dict'),
    seed_dir=dict(type='path', default='/var/lib/gpuaas/seeds'),
)
RULES = dict(required_if=[('state', 'present', ('allocation_id', 'hostname', 'telemetry_token'))])


class SeedError(ContractError):
    """Tenant input or a seed the module refuses; the message says which value and why."""


def check_token(value):
    """The telemetry token, or SeedError that never shows it."""
    if not TELEMETRY_TOKEN.matches(value):
        raise SeedError('telemetry_token is not valid: %s' % TELEMETRY_TOKEN.explain)
    return value


def check_approved(approved):
    """The slot's approved facts for the guest's acceptance check, or SeedError naming the field."""
    if approved is None:
        return None
    known = ('gpu_model', 'link_speed', 'link_width', 'bars', 'nvme', 'fabric_vf')
    unknown = sorted(set(approved) - set(known))
    if unknown:
        raise SeedError('approved has unknown keys %s (known: %s)' % (', '.join(unknown), ', '.join(known)))
    GPU_MODEL.check(approved.get('gpu_model'), 'approved.gpu_model')
    speed = approved.get('link_speed')
    if not isinstance(speed, str) or not LINK_SPEED.fullmatch(speed):
        raise SeedError("approved.link_speed %s is not like '32.0 GT/s PCIe'" % json.dumps(speed)[:80])
    check_int(approved.get('link_width'), 'approved.link_width', 1, 32)
    bars = approved.get('bars') or {}
    if not isinstance(bars, dict):
        raise SeedError('approved.bars must map BAR indexes (0-5) to sizes in bytes')
    for index, size in bars.items():
        if str(index) not in ('0', '1', '2', '3', '4', '5'):
            raise SeedError('approved.bars has BAR %s: BARs are 0 to 5' % json.dumps(index)[:20])
        check_int(size, 'approved.bars[%s]' % index, 1, 2 ** 52)
    for key in ('nvme', 'fabric_vf'):
        value = approved.get(key, False)
        if not isinstance(value, bool) and not GPU_MODEL.matches(value):
            raise SeedError("approved.%s must be true, false or a PCI id 'vendor:device', not %s"
                            % (key, json.dumps(value)[:80]))
    return dict(approved, bars=dict((str(k), v) for k, v in bars.items()))


FABRIC_SCRIPT_PATH = '/usr/local/lib/gpuaas/gpuaas-fabric-ipoib'
FABRIC_UNIT_PATH = '/etc/systemd/system/gpuaas-fabric.service'
FABRIC_UNIT = """[Unit]
Description=gpuaas: the slot's InfiniBand VF on its tenant's partition (IPoIB)
After=systemd-udev-settle.service
Before=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh %s

[Install]
WantedBy=multi-user.target
""" % FABRIC_SCRIPT_PATH
# Every value is validated first (16 hex digits, 0x and 4 hex digits, a.b.c.d/nn): nothing in it
# is tenant text. An IPoIB interface's 20-byte hardware address ends with its port GUID (type 32
# is ARPHRD_INFINIBAND); the kernel names a partition child PARENT.PKEY (create_child).
FABRIC_SCRIPT = """#!/bin/sh
set -eu
guid=%(guid)s
pkey=%(pkey)s
address=%(address)s
parent=
for dev in /sys/class/net/*; do
    [ "$(cat "$dev/type" 2>/dev/null)" = 32 ] || continue
    case "$(tr -d ':' < "$dev/address")" in *"$guid") parent=${dev##*/} ;; esac
done
[ -n "$parent" ] || { echo "gpuaas-fabric: no IPoIB interface has port GUID $guid" >&2; exit 1; }
child=$parent.${pkey#0x}
[ -e "/sys/class/net/$child" ] || echo "$pkey" > "/sys/class/net/$parent/create_child"
ip link set dev "$parent" up
ip link set dev "$child" up
ip addr replace "$address" dev "$child"
"""
FABRIC_RUNCMD = [['systemctl', 'daemon-reload'], ['systemctl', 'enable', '--now', 'gpuaas-fabric.service']]
_FABRIC_GUID = re.compile(r'[0-9a-f]{2}(:[0-9a-f]{2}){7}')
_FABRIC_MAC = re.compile(r'[0-9a-f]{2}(:[0-9a-f]{2}){5}')
_FABRIC_PKEY = re.compile(r'0x[89a-f][0-9a-f]{3}')


def check_fabric(fabric):
    """The slot's fabric for the guest, or SeedError naming the field: ``kind`` (ethernet or
    infiniband), ``address`` (the slot's fabric address, a.b.c.d/nn), for ethernet the VF's
    ``mac``, for infiniband its ``port_guid`` and the tenant's ``pkey`` (full member, 0x8001 style)."""
    if fabric is None:
        return None
    kind = fabric.get('kind')
    known = {'ethernet': ('kind', 'address', 'mac'), 'infiniband': ('kind', 'address', 'port_guid', 'pkey')}
    if kind not in known:
        raise SeedError('fabric.kind must be ethernet or infiniband, not %s' % json.dumps(kind)[:40])
    unknown = sorted(set(fabric) - set(known[kind]))
    if unknown:
        raise SeedError('fabric has keys %s that a %s fabric does not take (%s)'
                        % (', '.join(unknown), kind, ', '.join(known[kind])))
    address = fabric.get('address')
    try:
        interface = ipaddress.IPv4Interface(address if isinstance(address, str) else '')
    except ValueError:
        interface = None
    if interface is None or '/' not in address or str(interface) != address or not 8 <= interface.network.prefixlen <= 30 \
            or interface.ip in (interface.network.network_address, interface.network.broadcast_address):
        raise SeedError("fabric.address %s is not a host address with its prefix, a.b.c.d/8 to /30"
                        % json.dumps(address)[:40])
    for key, rule, explain in (('mac', _FABRIC_MAC, '6 lower-case hex octets'),
                               ('port_guid', _FABRIC_GUID, '8 lower-case hex octets'),
                               ('pkey', _FABRIC_PKEY, "a full member's key, 0x8001 to 0xfffe")):
        if key in known[kind] and not (isinstance(fabric.get(key), str) and rule.fullmatch(fabric[key])
                                       and fabric[key] not in ('0x8000', '0xffff')):
            raise SeedError('fabric.%s %s is not %s' % (key, json.dumps(fabric.get(key))[:40], explain))
    return dict((key, fabric[key]) for key in known[kind])


def read_agent(path):
    """The guest agent's source (bytes) from the node, or SeedError saying how to get it."""
    try:
        with open(path, 'rb') as handle:
            data = handle.read(MAX_AGENT + 1)
    except (IOError, OSError) as exc:
        raise SeedError('guest_agent %s cannot be read (%s): host_prep installs it' % (path, exc.strerror or exc))
    if len(data) > MAX_AGENT:
        raise SeedError('guest_agent %s is larger than %d bytes' % (path, MAX_AGENT))
    try:
        compile(data, path, 'exec')
    except (SyntaxError, ValueError):
        raise SeedError('guest_agent %s is not a Python program' % path)
    return data


def _check_user_data(user_data, telemetry_file, protected=()):
    if user_data is None:
        return {}
    if not isinstance(user_data, dict):
        raise SeedError('user_data must be a mapping of cloud-config keys')
    reserved = sorted(set(user_data) & set(RESERVED_KEYS))
    if reserved:
        raise SeedError('user_data may not set %s: the module sets them from hostname and '
                        'ssh_keys' % ', '.join(reserved))
    files = user_data.get('write_files', [])
    if not isinstance(files, list) or not all(isinstance(item, dict) for item in files):
        raise SeedError('user_data.write_files must be a list of mappings')
    for item in files:
        path = item.get('path')
        if isinstance(path, str) and os.path.normpath('/' + path.lstrip('/')) == os.path.normpath(telemetry_file):
            raise SeedError('user_data.write_files may not write %s: it holds the telemetry '
                            'token' % telemetry_file)
        if isinstance(path, str) and os.path.normpath('/' + path.lstrip('/')) in protected:
            raise SeedError('user_data.write_files may not write %s: the seed writes it' % path)
    try:
        json.dumps(user_data, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SeedError('user_data cannot be written as data: %s' % exc)
    return user_data


def _dump(value):
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True) + '\n'


def seed_content(slot_id, allocation_id, hostname, ssh_keys, token, sink,
                 telemetry_file=DEFAULT_TELEMETRY_FILE, user_data=None, login_user=DEFAULT_LOGIN_USER,
                 approved=None, agent=None, fabric=None):
    """The seed as (files {name: bytes}, shown {name: data with the token redacted}, mac).

    ``approved`` (the slot's approved facts) becomes SLOT_FILE; ``agent`` (the guest agent's
    source, bytes) is written to AGENT_PATH with a systemd unit that runs it."""
    mac = Slot.parse(slot_id).mac
    ALLOCATION_ID.check(allocation_id, 'allocation_id')
    hostname = HOSTNAME.check(hostname, 'hostname')
    keys = check_ssh_keys(ssh_keys or [], minimum=0)
    check_token(token)
    check_sink_url(sink, 'telemetry_sink')
    GUEST_PATH.check(telemetry_file, 'telemetry_file')
    login_user = LOGIN_USER.check(login_user, 'login_user')
    approved = check_approved(approved)
    fabric = check_fabric(fabric)
    ipoib = fabric is not None and fabric['kind'] == 'infiniband'
    protected = tuple(path for path, wanted in ((SLOT_FILE, approved is not None), (AGENT_PATH, agent is not None),
                                                (AGENT_UNIT_PATH, agent is not None), (FABRIC_SCRIPT_PATH, ipoib),
                                                (FABRIC_UNIT_PATH, ipoib)) if wanted)
    extra = _check_user_data(user_data, telemetry_file, protected)
    ours = []
    if approved is not None:
        ours.append({'path': SLOT_FILE, 'owner': 'root:root', 'permissions': '0644',
                     'content': json.dumps(approved, sort_keys=True) + '\n'})
    if agent is not None:
        ours.append({'path': AGENT_PATH, 'owner': 'root:root', 'permissions': '0644', 'encoding': 'b64',
                     'content': base64.b64encode(agent).decode('ascii')})
        ours.append({'path': AGENT_UNIT_PATH, 'owner': 'root:root', 'permissions': '0644', 'content': AGENT_UNIT})
    if ipoib:
        script = FABRIC_SCRIPT % {'guid': fabric['port_guid'].replace(':', ''), 'pkey': fabric['pkey'],
                                  'address': fabric['address']}
        ours.append({'path': FABRIC_SCRIPT_PATH, 'owner': 'root:root', 'permissions': '0755', 'content': script})
        ours.append({'path': FABRIC_UNIT_PATH, 'owner': 'root:root', 'permissions': '0644', 'content': FABRIC_UNIT})

    meta = {'instance-id': allocation_id, 'local-hostname': hostname}
    network = {'version': 2, 'ethernets': {'slot0': {'match': {'macaddress': mac}, 'dhcp4': True}}}
    if fabric is not None and fabric['kind'] == 'ethernet':
        network['ethernets']['fabric0'] = {'match': {'macaddress': fabric['mac']}, 'dhcp4': False,
                                           'addresses': [fabric['address']]}

    def cloud_config(secret, shown=False):
        # One KEY=value per line; every value is validated to a charset that needs no
        # quoting, so the guest can source the file.
        env = 'GPUAAS_TELEMETRY_SINK=%s\nGPUAAS_TELEMETRY_TOKEN=%s\nGPUAAS_ALLOCATION_ID=%s\n' % (
            sink, secret, allocation_id)
        config = dict(extra)
        config.update({
            'hostname': hostname,
            'preserve_hostname': False,
            # The hostname in /etc/hosts (127.0.1.1): real cloud-init leaves it out otherwise, and
            # sudo then cannot resolve the guest's own name.
            'manage_etc_hosts': True,
            # The tenant logs in as the node's login user (sudo without a password), with the keys.
            'users': [{'name': login_user, 'ssh_authorized_keys': keys, 'lock_passwd': True,
                       'shell': '/bin/bash', 'sudo': 'ALL=(ALL) NOPASSWD:ALL'}],
            'write_files': list(extra.get('write_files', [])) + [{
                'path': telemetry_file, 'owner': 'root:root', 'permissions': '0600',
                'content': env}] + [_shown(item) if shown else item for item in ours],
        })
        ours_runcmd = (AGENT_RUNCMD if agent is not None else []) + (FABRIC_RUNCMD if ipoib else [])
        if ours_runcmd:
            runcmd = extra.get('runcmd', [])
            config['runcmd'] = (list(runcmd) if isinstance(runcmd, list) else [runcmd]) + ours_runcmd
        return config

    def _shown(item):
        if item['path'] != AGENT_PATH:
            return item
        return dict(item, content='<%s: %d bytes, sha256 %s>' % (
            os.path.basename(AGENT_PATH), len(agent), hashlib.sha256(agent).hexdigest()))

    user = '#cloud-config\n' + _dump(cloud_config(token))
    if len(user) > MAX_USER_DATA:
        raise SeedError('user-data would be %d bytes, more than %d' % (len(user), MAX_USER_DATA))
    files = {'meta-data': _dump(meta).encode('ascii'),
             'network-config': _dump(network).encode('ascii'),
             'user-data': user.encode('ascii')}
    shown = {'meta-data': meta, 'network-config': network, 'user-data': cloud_config(REDACTED, shown=True)}
    return files, shown, mac


def content_hash(files):
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode('ascii') + b'\0' + str(len(files[name])).encode('ascii') + b'\0')
        digest.update(files[name])
    return digest.hexdigest()


def read_iso_labels(path):
    """(volume id, application id) from an ISO 9660 primary volume descriptor, or None."""
    try:
        with open(path, 'rb') as handle:
            handle.seek(16 * 2048)
            pvd = handle.read(2048)
    except (IOError, OSError):
        return None
    if len(pvd) < 702 or pvd[0:1] != b'\x01' or pvd[1:6] != b'CD001':
        return None
    volume = pvd[40:72].decode('ascii', 'replace').strip()
    application = pvd[574:702].decode('ascii', 'replace').strip()
    return volume, application


def iso_tool_argv(module, output, source_dir, app_id):
    """genisoimage (or xorriso in its mkisofs mode) argv writing ``source_dir`` as a cidata ISO."""
    args = ['-quiet', '-output', output, '-volid', VOLUME_ID, '-appid', app_id, '-joliet',
            '-rock', '-input-charset', 'utf-8']
    files = [os.path.join(source_dir, name) for name in SEED_FILES]
    genisoimage = module.get_bin_path('genisoimage')
    if genisoimage:
        return [genisoimage] + args + files
    xorriso = module.get_bin_path('xorriso')
    if xorriso:
        return [xorriso, '-as', 'mkisofs'] + args + files
    raise SeedError('neither genisoimage nor xorriso is installed (Debian packages genisoimage '
                    'or xorriso): the seed ISO cannot be made')


class Seed:
    """Bring one slot's seed ISO to ``params['state']``; :meth:`run` returns the result."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.runner = Runner(module, SeedError)

    def path(self):
        p = self.params
        return Slot.parse(p['slot_id']).file(check_dir(p['seed_dir'], 'seed_dir'), '-seed.iso')

    def write(self, path, files, app_id):
        directory = os.path.dirname(path)
        ensure_dir(directory, 0o711)
        work = tempfile.mkdtemp(dir=directory, prefix='.%s.' % os.path.basename(path))
        try:
            source = os.path.join(work, 'files')
            os.mkdir(source, 0o700)
            for name in SEED_FILES:
                with open(os.path.join(source, name), 'wb') as handle:
                    handle.write(files[name])
            output = os.path.join(work, 'seed.iso')
            self.runner(iso_tool_argv(self.module, output, source, app_id))
            os.chmod(output, 0o600)
            install(self.module, output, path, 0o600)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def run(self):
        p = self.params
        path = self.path()
        labels = read_iso_labels(path)
        have_hash = None
        if labels and labels[0] == VOLUME_ID and labels[1].startswith(APP_ID_PREFIX):
            have_hash = labels[1][len(APP_ID_PREFIX):].lower()
        exists = os.path.lexists(path)
        result = {'path': path, 'volume_id': VOLUME_ID}
        before = {'path': path, 'content_hash': have_hash} if exists else {}
        plan = Plan(self.module, error=SeedError)
        if p['state'] == 'absent':
            after = {}
            if exists:
                plan.change('remove seed', lambda: remove(path))
        else:
            files, shown, mac = seed_content(
                p['slot_id'], p['allocation_id'], p['hostname'], p['ssh_keys'],
                p['telemetry_token'], p['telemetry_sink'], p['telemetry_file'], p['user_data'], p['login_user'],
                p['approved'], read_agent(p['guest_agent']) if p['guest_agent'] else None, p['fabric'])
            want_hash = content_hash(files)
            after = {'path': path, 'content_hash': want_hash, 'files': shown}
            result.update(content_hash=want_hash, mac=mac, files=shown)
            if have_hash != want_hash:
                plan.change('write seed', lambda: self.write(path, files, APP_ID_PREFIX + want_hash.upper()))
        plan.execute()
        result.update(plan.result())
        if self.module._diff:
            result['diff'] = {'before': before, 'after': after}
        return result
