# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small builders shared by the control plane tests."""

from __future__ import annotations

import base64
import struct

from gpuaas_control import audit, service

OPERATOR = audit.Actor('test-operator', 'operator')


def tenant(name):
    return audit.Actor('test-%s' % name, 'tenant', name)


def ssh_key(kind='ssh-ed25519', comment='alice@example'):
    blob = struct.pack('>I', len(kind)) + kind.encode() + struct.pack('>I', 32) + b'\x01' * 32
    return '%s %s %s' % (kind, base64.b64encode(blob).decode(), comment)


def request(**overrides):
    values = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
              'ssh_keys': [ssh_key()], 'vcpus': 4, 'memory_mib': 8192}
    values.update(overrides)
    return service.AllocationRequest(**values)


def add_node(db, discovery, entries, node_id=None):
    node_id = node_id or discovery['node_id']
    db.transact(service.record_discovery, OPERATOR, node_id, discovery)
    return db.transact(service.approve, OPERATOR, node_id, entries)


def add_tenant(db, name, max_gpus=-1):
    db.transact(service.set_quota, OPERATOR, name, max_gpus)


def make_token(db, role, tenant_name=None):
    token, _row = db.transact(service.create_token, OPERATOR, role, tenant_name)
    return {'Authorization': 'Bearer %s' % token}
