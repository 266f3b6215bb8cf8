# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Strict shapes for everything a client can send. Tenant strings end up in cloud-init
seeds, libvirt XML, file names and the playbooks' variables, so each is held to a pattern
that cannot carry shell, XML, YAML or path syntax, rather than escaped later."""

from __future__ import annotations

import base64
import binascii
import re
import struct

from gpuaas_control.collection import layout

TENANT_RE = re.compile(r'^[a-z0-9][a-z0-9_.-]{0,62}\Z')
TOKEN_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}\Z')
NODE_ID_RE = layout.NODE_ID_RE
SLOT_ID_RE = layout.SLOT_ID_RE
ALLOCATION_ID_RE = re.compile(r'^alloc-[0-9a-f]{20}\Z')
# A file in the nodes' image directory: never a path.
IMAGE_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z')
CHECKSUM_RE = re.compile(r'^sha256:[0-9a-f]{64}\Z')
HOSTNAME_RE = re.compile(r'^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z')
GPU_MODEL_RE = re.compile(r'^[0-9a-f]{4}:[0-9a-f]{4}\Z')
IDEMPOTENCY_KEY_RE = re.compile(r'^[A-Za-z0-9_-]{1,64}\Z')
PCI_ADDRESS_RE = re.compile(r'^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z')
HEX_ID_RE = re.compile(r'^[0-9a-f]{4}\Z')
CPULIST_RE = re.compile(r'^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*\Z')
NOTE_RE = re.compile(r'^[^\x00-\x1f\x7f]{0,255}\Z')
SSH_COMMENT_RE = re.compile(r'^[A-Za-z0-9@._+:=-]{1,128}\Z')

SSH_KEY_TYPES = ('ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384',
                 'ecdsa-sha2-nistp521', 'sk-ssh-ed25519@openssh.com',
                 'sk-ecdsa-sha2-nistp256@openssh.com')
MAX_SSH_KEYS = 16
MAX_SSH_KEY_LENGTH = 8192

IMAGE_FORMATS = ('qcow2', 'raw')
LIMITS = {'vcpus': (1, 256), 'memory_mib': (512, 4 * 1024 * 1024), 'disk_gib': (1, 65536)}


def show(value, limit=80) -> str:
    """A client's value, quoted and cut short, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def ssh_key_problem(key) -> str | None:
    """Why ``key`` is not one OpenSSH public key line, or None."""
    if not isinstance(key, str):
        return 'an SSH key must be a string'
    if len(key) > MAX_SSH_KEY_LENGTH:
        return 'an SSH key is longer than %d characters' % MAX_SSH_KEY_LENGTH
    parts = key.split(' ')
    if len(parts) not in (2, 3):
        return ("an SSH key must be 'TYPE BASE64 [COMMENT]' on one line, with single spaces "
                '(no options, no newlines)')
    kind, blob = parts[0], parts[1]
    if kind not in SSH_KEY_TYPES:
        return 'SSH key type %s is not one of %s' % (show(kind, 40), ', '.join(SSH_KEY_TYPES))
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return 'the SSH key of type %s is not valid base64' % kind
    if len(raw) < 4:
        return 'the SSH key of type %s is too short' % kind
    (length,) = struct.unpack('>I', raw[:4])
    if raw[4:4 + length] != kind.encode('ascii'):
        return 'the SSH key says %s but its key data is of another type' % kind
    if len(parts) == 3 and not SSH_COMMENT_RE.match(parts[2]):
        return ('an SSH key comment may hold letters, digits and @._+:=- only (1-128 '
                'characters): %s' % show(parts[2], 40))
    return None
