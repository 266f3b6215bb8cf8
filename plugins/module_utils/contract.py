# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract between a node and the control plane: one set of rules, one slot identity.

Plain Python (no Ansible import): the modules use it, and the control plane imports it as
``ansible_collections.gpuaas.slice.plugins.module_utils.contract``. Every identifier the
two sides exchange is checked by one :class:`Rule` here (``fullmatch``, so a trailing
newline never passes), every number by :func:`check_int`/:func:`check_number` (finite and
ranged before it is used), every SSH key by :func:`check_ssh_key`, and everything about a
slot that follows from its node and index (id, MAC, IP, domain and tap names, OpenFlow
cookie and port, file names) comes from one :class:`Slot`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import hashlib
import ipaddress
import math
import os
import re
import struct


class GpuaasError(Exception):
    """Base of every error gpuaas.slice reports; ``details`` go into a module's result."""

    def __init__(self, msg, **details):
        super(GpuaasError, self).__init__(msg)
        self.details = details


class ContractError(GpuaasError, ValueError):
    """A value the contract refuses; the message names the field and quotes the value."""


def show(value, limit=80):
    """A caller's value, quoted (control characters escaped) and cut short, for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def has_control_chars(text):
    """True when ``text`` holds a C0/C1 control character or a Unicode line separator."""
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7f <= code < 0xa0 or char in u'\u2028\u2029':
            return True
    return False


class Rule:
    """One identifier rule: a pattern matched whole, and what to tell a caller who broke it."""

    def __init__(self, name, pattern, explain, flags=0, lower=False):
        self.name = name
        # Anchored at the end too, so .match() is as safe as .fullmatch().
        self.regex = re.compile(r'(?:%s)\Z' % pattern, flags)
        self.explain = explain
        self.lower = lower

    def matches(self, value):
        return isinstance(value, str) and self.regex.fullmatch(value) is not None

    def check(self, value, what=None):
        """``value`` (lower-cased where the rule says so), or ContractError naming ``what``."""
        if not self.matches(value):
            raise ContractError('%s %s is not a valid %s: %s'
                                % (what or self.name, show(value), self.name, self.explain))
        return value.lower() if self.lower else value


_NAME = "letters, digits, '.', '_' and '-', starting with a letter or digit"
NODE_ID = Rule('node id', r'[A-Za-z0-9][A-Za-z0-9_.-]{0,62}', '1-63 ' + _NAME)
SLOT_ID = Rule('slot id', r'([A-Za-z0-9][A-Za-z0-9_.-]{0,62})-s([0-9]{1,3})',
               "'{node_id}-s{index}', for example gpu-node-01-s3")
ALLOCATION_ID = Rule('allocation id', r'[A-Za-z0-9][A-Za-z0-9._:-]{0,127}',
                     "1-128 letters, digits, '.', '_', ':' and '-', starting with a letter or digit")
TENANT_ID = Rule('tenant id', r'[a-z0-9][a-z0-9_.-]{0,62}',
                 "1-63 lower-case letters, digits, '.', '_' and '-', starting with a letter or digit")
TOKEN_NAME = Rule('token name', r'[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}',
                  "1-63 letters, digits, '.', '_', '@' and '-', starting with a letter or digit")
# One RFC 1123 label; host names are compared and handed out in lower case.
HOSTNAME = Rule('host name', r'[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?',
                '1-63 letters, digits and hyphens, not starting or ending with a hyphen (RFC 1123)',
                lower=True)
# A file in the nodes' image directory: never a path.
IMAGE_NAME = Rule('image name', r'[A-Za-z0-9][A-Za-z0-9._-]{0,127}', '1-128 ' + _NAME + ' (a file name, not a path)')
CHECKSUM = Rule('checksum', r'sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}',
                "'sha256:' and 64 hex digits, or 'sha512:' and 128", flags=re.IGNORECASE, lower=True)
GPU_MODEL = Rule('GPU model', r'[0-9a-f]{4}:[0-9a-f]{4}', "'vendor:device' in hex, for example 10de:2330",
                 flags=re.IGNORECASE, lower=True)
HEX_ID = Rule('PCI id', r'[0-9a-f]{4}', '4 hex digits', flags=re.IGNORECASE, lower=True)
# A full PCI address as the kernel names it: domain (4 hex digits, more on VMD domains),
# bus, device (0-1f) and function (0-7). A short BB:DD.F is ambiguous on multi-segment hosts.
PCI_ADDRESS = Rule('PCI address', r'([0-9a-f]{4,8}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])',
                   "domain:bus:device.function, for example '0000:1b:00.0'", flags=re.IGNORECASE, lower=True)
# Interface names as the kernel allows them (IFNAMSIZ 16, no '/', no white space), never
# starting with '-' (an argv option) and never '.' or '..'.
IFNAME = Rule('network interface name', r'(?!\.\.?\Z)[A-Za-z0-9_.:@][A-Za-z0-9_.:@-]{0,14}',
              "1-15 letters, digits, '_', '.', ':', '@' and '-', not starting with '-'")
# A slot's tap port on the bridge, as Slot.tap names it.
TAP_NAME = Rule('slot tap name', r'gs[0-9]{1,3}-[0-9a-f]{8}', "'gs{index}-' and 8 hex digits")
NFT_TABLE = Rule('nftables table name', r'[a-z][a-z0-9_]{0,31}', "1-32 lower-case letters, digits and '_'")
DAEMON_NAME = Rule('daemon name', r'[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}',
                   "1-64 letters, digits, '.', '_', '@' and '-', starting with a letter or digit")
MACHINE_TYPE = Rule('machine type', r'[A-Za-z0-9_.-]{1,64}', "1-64 letters, digits, '.', '_' and '-'")
TELEMETRY_TOKEN = Rule('telemetry token', r'[A-Za-z0-9._~+/=-]{16,512}',
                       "16-512 letters, digits and '._~+/=-'")
IDEMPOTENCY_KEY = Rule('idempotency key', r'[A-Za-z0-9_-]{1,64}', "1-64 letters, digits, '_' and '-'")
NOTE = Rule('note', r'[^\x00-\x1f\x7f\u2028\u2029]{0,255}', 'at most 255 characters on one line')
GUEST_PATH = Rule('guest path', r'(?!.*(?:^|/)\.\.(?:/|\Z))/[A-Za-z0-9/._-]{1,255}',
                  "an absolute path of letters, digits, '/', '.', '_' and '-', without '..'")
CPULIST = Rule('CPU list', r'[0-9]{1,5}(-[0-9]{1,5})?(,[0-9]{1,5}(-[0-9]{1,5})?){0,1023}',
               "kernel cpulist syntax, for example '0-3,8'")
# A Unix login name as Debian's adduser accepts it by default (NAME_REGEX), at most 32 characters.
LOGIN_USER = Rule('login user', r'[a-z_][a-z0-9_-]{0,31}',
                  "1-32 lower-case letters, digits, '_' and '-', starting with a letter or '_'")
SINK_URL = Rule('telemetry sink URL',
                r'(https?)://([A-Za-z0-9.-]{1,253})(?::([0-9]{1,5}))?(/[A-Za-z0-9/._~-]*)?',
                'http://host[:port][/path] (no query, no user name)')

# The numbers an allocation's shape may take (both sides check them).
LIMITS = {'vcpus': (1, 256), 'memory_mib': (512, 4 * 1024 * 1024), 'disk_gib': (1, 65536)}
# The highest CPU number a cpulist may name (the kernel's NR_CPUS on distribution kernels).
MAX_CPU = 8191


def check_int(value, what, low, high):
    """An int in [low, high] (a bool, float or string is refused), or ContractError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ContractError('%s must be a whole number from %d to %d, not %s' % (what, low, high, show(value)))
    return value


def check_number(value, what, low, high):
    """A finite int or float in [low, high] (NaN, inf and bools refused), or ContractError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise ContractError('%s must be a finite number from %g to %g, not %s' % (what, low, high, show(value)))
    return value


def check_shape(name, value):
    """One of LIMITS' fields (vcpus, memory_mib, disk_gib) checked against its range."""
    low, high = LIMITS[name]
    return check_int(value, name, low, high)


def parse_cpulist(text, what='cpulist', max_cpu=MAX_CPU):
    """The CPUs of a kernel cpulist as sorted ints; every bound is checked before expansion."""
    if isinstance(text, str):
        text = text.strip()
    CPULIST.check(text, what)
    cpus = set()
    for part in text.split(','):
        low, _sep, high = part.partition('-')
        low, high = int(low), int(high or low)
        if low > high:
            raise ContractError('%s %s has a range that runs backwards (%s)' % (what, show(text), part))
        if high > max_cpu:
            raise ContractError('%s %s names CPU %d, beyond the highest possible (%d)'
                                % (what, show(text), high, max_cpu))
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def format_cpulist(cpus):
    """[0, 1, 2, 5] -> '0-2,5'."""
    cpus = sorted(set(cpus))
    parts = []
    index = 0
    while index < len(cpus):
        end = index
        while end + 1 < len(cpus) and cpus[end + 1] == cpus[end] + 1:
            end += 1
        parts.append(str(cpus[index]) if end == index else '%d-%d' % (cpus[index], cpus[end]))
        index = end + 1
    return ','.join(parts)


def split_cores(cores, slots, reserved, what):
    """Split one NUMA node's cores between the host and the node's ``slots`` slots.

    ``cores`` are the node's cores in order, each the sorted list of its CPUs (its sibling
    threads). The first ``reserved`` cores are the host's (the kernel's housekeeping lands on
    the first). The rest are dealt out whole and in order: each slot gets a contiguous run of
    cores, the runs equal to at most one core (the first slots get the extra ones).
    Returns (the host's CPUs, [each slot's CPUs]), or ContractError when a slot would get none.
    """
    free = len(cores) - reserved
    if slots and free < slots:
        raise ContractError('%s has %d cores; host_reserved_cores keeps %d for the host, which leaves %d for '
                            'its %d slots, and each slot needs at least one core of its own: lower '
                            'host_reserved_cores or approve fewer slots' % (what, len(cores), reserved, max(free, 0), slots))
    host = [cpu for core in cores[:reserved] for cpu in core]
    slices, start = [], reserved
    for number in range(slots):
        end = start + free // slots + (1 if number < free % slots else 0)
        slices.append(sorted(cpu for core in cores[start:end] for cpu in core))
        start = end
    return sorted(host), slices


def memory_share_mib(total_mib, reserved_mib, slots, what):
    """Each of ``slots`` slots' memory on a node: (MemTotal - reserved) / slots, in whole GiB."""
    share = (total_mib - reserved_mib) // slots // 1024 * 1024
    if share < 1024:
        raise ContractError('%s has %d MiB of memory; host_reserved_memory_mib keeps %d for the host, which '
                            'leaves less than 1 GiB for each of its %d slots: lower host_reserved_memory_mib'
                            % (what, total_mib, reserved_mib, slots))
    return share


# -- a slot VM's physical address space ----------------------------------------

# The guest's physical address bits: QEMU's default for a TCG CPU is 40, x86 allows 52.
MIN_PHYS_BITS = 40
MAX_PHYS_BITS = 52
# Below 4 GiB a q35 guest keeps its 32-bit PCI hole: RAM beyond it moves above 4 GiB.
LOW_HOLE_MIB = 4 * 1024
# The VM's own devices' 64-bit BARs share the window: the virtio NIC's, disk's and SCSI
# controller's, each behind a PCIe root port whose window is aligned to 1 MiB. (Measured: a
# 128 GiB BAR and a virtio NIC do not fit a 128 GiB window; OVMF leaves the large BAR out.)
DEVICE_HEADROOM_MIB = 1024


def window_mib(bar_mib):
    """The 64-bit PCI window ``bar_mib`` of BARs needs: the next power of two (each BAR is
    aligned to its own size, so a window of the next power of two always holds them)."""
    window = 1
    while window < bar_mib:
        window *= 2
    return window


def guest_phys_bits(memory_mib, bar_mib):
    """The fewest physical address bits (at least 40) a UEFI slot VM needs for its RAM and BARs.

    OVMF puts the 64-bit PCI window in the top eighth of the guest's address space (edk2's
    dynamic MMIO window, Debian 12's 2022.11 included): that eighth must hold the window of
    the slot's 64-bit BARs plus DEVICE_HEADROOM_MIB for the VM's own devices (:func:`window_mib`),
    and the seven eighths below it the RAM plus the 4 GiB under the 32-bit hole.
    """
    need = max(window_mib(bar_mib + DEVICE_HEADROOM_MIB) * 8, (memory_mib + LOW_HOLE_MIB) * 8 // 7 + 1)
    bits = MIN_PHYS_BITS
    while (1 << (bits - 20)) < need:
        bits += 1
    return bits


def address_space_problem(memory_mib, bar_mib, host_bits):
    """Why ``memory_mib`` of RAM plus ``bar_mib`` of 64-bit BARs cannot fit a guest on a host CPU of
    ``host_bits`` physical address bits, or None when they fit."""
    bits = guest_phys_bits(memory_mib, bar_mib)
    limit = min(host_bits, MAX_PHYS_BITS)
    if bits <= limit:
        return None
    return ('memory_mib %d plus the slot\'s 64-bit BARs (bar_mib %d and %d MiB for the VM\'s own devices, a %d MiB '
            'window) needs %d physical address '
            'bits in the guest (OVMF keeps the top eighth of the address space for the 64-bit PCI window, RAM and '
            'the 4 GiB below the 32-bit hole go under it), but the host CPU has %d: ask for less memory, or use '
            'a host whose CPU addresses more' % (
                memory_mib, bar_mib, DEVICE_HEADROOM_MIB, window_mib(bar_mib + DEVICE_HEADROOM_MIB), bits, host_bits))


# -- SSH keys -----------------------------------------------------------------

SSH_KEY_TYPES = ('ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384',
                 'ecdsa-sha2-nistp521', 'sk-ssh-ed25519@openssh.com',
                 'sk-ecdsa-sha2-nistp256@openssh.com')
MAX_SSH_KEYS = 16
MAX_SSH_KEY_LENGTH = 8192
SSH_COMMENT = Rule('SSH key comment', r'[A-Za-z0-9@._+:=-][A-Za-z0-9@._+:= -]{0,255}',
                   "1-256 letters, digits, spaces and '@._+:=-'")


def check_ssh_key(value, what='SSH key'):
    """One OpenSSH public key line 'TYPE BASE64 [COMMENT]', normalised, or ContractError.

    Refused: anything but a known key type first (so no 'command=...' options), a body that
    is not base64 or does not hold a key of the stated type, control characters or line breaks.
    """
    if not isinstance(value, str):
        raise ContractError('%s must be a string, not %s' % (what, show(value)))
    if len(value) > MAX_SSH_KEY_LENGTH:
        raise ContractError('%s is longer than %d characters' % (what, MAX_SSH_KEY_LENGTH))
    if has_control_chars(value):
        raise ContractError('%s contains a line break or control character: give one key per item' % what)
    parts = value.strip().split(None, 2)
    if len(parts) < 2:
        raise ContractError("%s is not an OpenSSH public key ('TYPE BASE64 [COMMENT]')" % what)
    kind, body = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) > 2 else ''
    if kind not in SSH_KEY_TYPES:
        raise ContractError('%s starts with %s, not a key type (%s); key options are not accepted'
                            % (what, show(kind, 40), ', '.join(SSH_KEY_TYPES)))
    try:
        blob = base64.b64decode(body.encode('ascii'), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ContractError('%s: the key body is not base64' % what)
    if len(blob) < 4 or blob[4:4 + struct.unpack('>I', blob[:4])[0]] != kind.encode('ascii'):
        raise ContractError('%s: the key body does not hold a %s key' % (what, kind))
    if comment:
        SSH_COMMENT.check(comment, '%s comment' % what)
    return ' '.join(p for p in (kind, body, comment) if p)


def check_ssh_keys(values, what='ssh_keys', minimum=1):
    """A list of ``minimum``-MAX_SSH_KEYS keys, each checked and normalised."""
    if not isinstance(values, list) or not minimum <= len(values) <= MAX_SSH_KEYS:
        raise ContractError('%s must be a list of %d to %d public keys' % (what, minimum, MAX_SSH_KEYS))
    return [check_ssh_key(key, '%s[%d]' % (what, index)) for index, key in enumerate(values)]


# -- SSH access from outside the node ---------------------------------------

DEFAULT_SSH_PORT_BASE = 22000
DEFAULT_LOGIN_USER = 'gpuaas'
ANY_SOURCE = '0.0.0.0/0'
MAX_SOURCE_CIDRS = 32


def check_ssh_port_base(value, what='ssh_port_base'):
    """The first slot's public SSH port: every slot's port (base + index) must be a port above 1023."""
    return check_int(value, what, 1024, 65535 - MAX_SLOTS)


def check_source_cidrs(values, what='ssh_source_cidrs'):
    """The IPv4 networks a slot's SSH port answers, normalised ('10.0.0.7' -> '10.0.0.7/32');
    None or an empty list is any source (0.0.0.0/0). Host bits set, IPv6 and anything that is not
    an address or a network are refused: the slot's port is forwarded on the node's IPv4 address."""
    if values is None or values == []:
        return [ANY_SOURCE]
    if not isinstance(values, list) or len(values) > MAX_SOURCE_CIDRS:
        raise ContractError('%s must be a list of at most %d IPv4 networks, not %s'
                            % (what, MAX_SOURCE_CIDRS, show(values)))
    result = []
    for index, value in enumerate(values):
        item = '%s[%d]' % (what, index)
        if not isinstance(value, str) or has_control_chars(value) or len(value) > 18:
            raise ContractError('%s %s is not an IPv4 network (203.0.113.0/24)' % (item, show(value)))
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ContractError('%s %s is not an IPv4 network (203.0.113.0/24): %s' % (item, show(value), exc))
        if network.version != 4:
            raise ContractError('%s %s is IPv6: the slot\'s SSH port is forwarded on the node\'s IPv4 '
                                'address only' % (item, show(value)))
        if str(network) not in result:
            result.append(str(network))
    return sorted(result, key=ipaddress.ip_network)


def check_ssh_host(value, what='ssh_host'):
    """The host name or IPv4 address a tenant connects to (dotted RFC 1123 labels, at most 253 characters)."""
    if not isinstance(value, str) or not 0 < len(value) <= 253 or \
            not all(HOSTNAME.matches(label) for label in value.split('.')):
        raise ContractError('%s %s is not a host name or IPv4 address (gpu-node-01.example.com, 203.0.113.10)'
                            % (what, show(value)))
    return value.lower()


def ssh_access(slot, host, base=DEFAULT_SSH_PORT_BASE, user=DEFAULT_LOGIN_USER):
    """What a tenant is told to log in with: ``{ssh_host, ssh_port, user}`` of a slot."""
    return {'ssh_host': check_ssh_host(host), 'ssh_port': slot.ssh_port(base),
            'user': LOGIN_USER.check(user, 'login_user')}


def check_sink_url(value, what='telemetry_sink'):
    """An http(s) URL of a host name or IPv4 address with an optional port and path."""
    match = SINK_URL.regex.fullmatch(value) if isinstance(value, str) else None
    if not match:
        SINK_URL.check(value, what)
    host, port = match.group(2), match.group(3)
    if not all(HOSTNAME.matches(label) for label in host.split('.')):
        raise ContractError('%s %s: %s is not a host name or IPv4 address' % (what, show(value), show(host)))
    if port is not None and not 0 < int(port) < 65536:
        raise ContractError('%s %s: port %s is out of range' % (what, show(value), port))
    return value


# -- the slot layout ----------------------------------------------------------

SLOT_NETWORK = ipaddress.ip_network(u'10.100.0.0/24')
SLOT_GATEWAY = SLOT_NETWORK.network_address + 1
FIRST_HOST_OCTET = 10
# 10 + index must stay a usable host address in the /24 (not .255, the broadcast).
MAX_SLOTS = 254 - FIRST_HOST_OCTET + 1
FIRST_OFPORT = 100
DOMAIN_PREFIX = 'gpuaas-'
# OpenFlow cookies of a slot's flows: 'gpu' in the top bytes, the slot index in the low ones,
# so a slot's flows are found and removed by cookie, and flows of a slot with no lease show.
COOKIE_BASE = 0x6770750000000000
COOKIE_MASK = 0xffffffffffff0000

# A tenant's flows on a node (its slots reaching each other, its overlay): 'gpt' in the top
# bytes, the first 5 bytes of sha256(tenant id) in the others, so one tenant's flows are
# replaced and removed together, and flows of a tenant with no live lease show.
TENANT_COOKIE_BASE = 0x6770740000000000
TENANT_COOKIE_MASK = 0xffffff0000000000
# The overlay's VXLAN network identifiers (24 bits; 0 is never a tenant's).
MAX_VNI = 16777215


def tenant_cookie(tenant):
    """The OpenFlow cookie of a tenant's flows on a node."""
    tenant = TENANT_ID.check(tenant, 'tenant')
    return TENANT_COOKIE_BASE | int(hashlib.sha256(tenant.encode('utf-8')).hexdigest()[:10], 16)


def is_tenant_cookie(cookie):
    return cookie & TENANT_COOKIE_MASK == TENANT_COOKIE_BASE


def check_slot_index(value):
    return check_int(value, 'slot index', 0, MAX_SLOTS - 1)


def cookie_slot_index(cookie):
    """The slot index a flow cookie belongs to, or None for a cookie that is not a slot's."""
    if cookie & COOKIE_MASK != COOKIE_BASE:
        return None
    index = cookie & ~COOKIE_MASK
    return index if index < MAX_SLOTS else None


class Slot:
    """Everything about a slot that follows from its node id and index, computed once.

    ``Slot('gpu-node-01', 3)`` or ``Slot.parse('gpu-node-01-s3')``. MAC = ``52:54:`` + the
    first 4 bytes of sha256('{node_id}:{index}'); IP = 10.100.0.{10 + index}.
    """

    def __init__(self, node_id, index):
        self.node_id = NODE_ID.check(node_id)
        self.index = check_slot_index(index)
        self.slot_id = '%s-s%d' % (node_id, index)
        digest = hashlib.sha256(('%s:%d' % (node_id, index)).encode('utf-8')).digest()
        self.mac = '52:54:' + ':'.join('%02x' % byte for byte in bytearray(digest[:4]))
        self.address = SLOT_NETWORK.network_address + FIRST_HOST_OCTET + index
        self.ip = str(self.address)
        self.gateway = str(SLOT_GATEWAY)
        self.domain = DOMAIN_PREFIX + self.slot_id
        # <= 15 characters; the hash keeps two nodes' slot 0 apart on a host that runs both.
        self.tap = 'gs%d-%s' % (index, hashlib.sha256(self.slot_id.encode('utf-8')).hexdigest()[:8])
        self.cookie = COOKIE_BASE | index
        self.ofport = FIRST_OFPORT + index

    def ssh_port(self, base=DEFAULT_SSH_PORT_BASE):
        """The node's public TCP port forwarded to this slot's port 22: ``base + index``."""
        return check_ssh_port_base(base) + self.index

    @classmethod
    def parse(cls, slot_id, what='slot_id'):
        match = SLOT_ID.regex.fullmatch(slot_id) if isinstance(slot_id, str) else None
        if match is None:
            SLOT_ID.check(slot_id, what)
        index = int(match.group(2))
        if str(index) != match.group(2):
            raise ContractError('%s %s: the index has leading zeros' % (what, show(slot_id)))
        return cls(match.group(1), index)

    def __eq__(self, other):
        return isinstance(other, Slot) and (self.node_id, self.index) == (other.node_id, other.index)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((self.node_id, self.index))

    def __repr__(self):
        return 'Slot(%r, %d)' % (self.node_id, self.index)

    def file(self, directory, suffix=''):
        """``{directory}/{slot_id}{suffix}``: the slot's file in one of the node's directories."""
        return os.path.join(directory, self.slot_id + suffix)

    def layout(self):
        """The slot's layout as the node reports it and the control plane stores it."""
        return {'slot_id': self.slot_id, 'node_id': self.node_id, 'slot_index': self.index,
                'mac': self.mac, 'ip': self.ip}
