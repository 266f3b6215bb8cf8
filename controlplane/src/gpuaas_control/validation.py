# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Strict shapes for everything a client can send, from the collection's contract.

Tenant strings end up in cloud-init seeds, libvirt XML, file names and the playbooks'
variables, so each is held to a pattern that cannot carry shell, XML, YAML or path
syntax, rather than escaped later. The patterns are the node's own (``contract.py``):
what the API accepts, the node accepts too. Each ``*_RE`` is anchored at both ends.
"""

from __future__ import annotations

from gpuaas_control.collection import contract

TENANT_RE = contract.TENANT_ID.regex
TOKEN_NAME_RE = contract.TOKEN_NAME.regex
NODE_ID_RE = contract.NODE_ID.regex
SLOT_ID_RE = contract.SLOT_ID.regex
ALLOCATION_ID_RE = contract.ALLOCATION_ID.regex
IMAGE_RE = contract.IMAGE_NAME.regex
CHECKSUM_RE = contract.CHECKSUM.regex
HOSTNAME_RE = contract.HOSTNAME.regex
GPU_MODEL_RE = contract.GPU_MODEL.regex
IDEMPOTENCY_KEY_RE = contract.IDEMPOTENCY_KEY.regex
PCI_ADDRESS_RE = contract.PCI_ADDRESS.regex
HEX_ID_RE = contract.HEX_ID.regex
CPULIST_RE = contract.CPULIST.regex
NOTE_RE = contract.NOTE.regex

MAX_SSH_KEYS = contract.MAX_SSH_KEYS
IMAGE_FORMATS = ('qcow2', 'raw')
LIMITS = contract.LIMITS
show = contract.show


MAX_SOURCE_CIDRS = contract.MAX_SOURCE_CIDRS


def source_cidrs(values) -> list[str]:
    """The allocation's SSH source networks, normalised (the node's own check); ValueError names the item."""
    try:
        return contract.check_source_cidrs(values)
    except contract.ContractError as exc:
        raise ValueError(str(exc)) from None


def access_problem(access) -> str | None:
    """Why a node's ``access`` ({ssh_host, ssh_port, user}) is not one, or None."""
    if not isinstance(access, dict) or set(access) != {'ssh_host', 'ssh_port', 'user'}:
        return 'access %s is not {ssh_host, ssh_port, user}' % show(access)
    try:
        contract.check_ssh_host(access['ssh_host'], 'access.ssh_host')
        contract.check_int(access['ssh_port'], 'access.ssh_port', 1, 65535)
        contract.LOGIN_USER.check(access['user'], 'access.user')
    except contract.ContractError as exc:
        return str(exc)
    return None


def ssh_key_problem(key) -> str | None:
    """Why ``key`` is not one OpenSSH public key line, or None."""
    try:
        contract.check_ssh_key(key)
    except contract.ContractError as exc:
        return str(exc)
    return None
