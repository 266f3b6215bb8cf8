# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: an allocation's telemetry token file (telemetry_token, slot_release)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import secrets

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan
from ansible_collections.gpuaas.slice.plugins.module_utils._files import (
    StateFileError, atomic_write, check_dir, ensure_dir, read_json, remove)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ALLOCATION_ID, GpuaasError, Slot, show

# The module's options; slot_release checks a step's options with them too.
ARGUMENT_SPEC = dict(
    slot_id=dict(type='str', required=True),
    allocation_id=dict(type='str'),
    state=dict(type='str', choices=['present', 'absent'], default='present'),
    force=dict(type='bool', default=False),
    token_dir=dict(type='path', default='/var/lib/gpuaas/telemetry/tokens'),
)
RULES = dict(required_if=[('state', 'present', ('allocation_id',)), ('force', False, ('allocation_id',))])


def record(allocation_id, slot_id, ip, token):
    return {'allocation_id': allocation_id, 'slot_id': slot_id, 'ip': ip, 'token': token,
            'token_sha256': hashlib.sha256(token.encode('utf-8')).hexdigest()}


def shown(data):
    """The record as the diff shows it: never the token."""
    if data is None:
        return ''
    return json.dumps(dict((k, v) for k, v in data.items() if k != 'token'), indent=2, sort_keys=True) + '\n'


def engine(module):
    p = module.params
    slot = Slot.parse(p['slot_id'])
    if p['allocation_id'] is not None:
        ALLOCATION_ID.check(p['allocation_id'], 'allocation_id')
    path = slot.file(check_dir(p['token_dir'], 'token_dir'), '.json')
    if p['state'] == 'present' and not module.no_log:
        raise GpuaasError('telemetry_token returns a secret: run the task with no_log: true (nothing was changed)')
    try:
        current, damaged = read_json(path, 'token file'), None
    except StateFileError as exc:
        current, damaged = None, exc
    plan = Plan(module)
    result = {'path': path}
    if p['state'] == 'present':
        if damaged:
            raise GpuaasError('%s: remove it with state=absent force=true, then run again' % damaged)
        token = current.get('token') if current and current.get('allocation_id') == p['allocation_id'] \
            and current.get('ip') == slot.ip and isinstance(current.get('token'), str) else None
        new = record(p['allocation_id'], p['slot_id'], slot.ip, token or secrets.token_urlsafe(32))

        def write():
            ensure_dir(os.path.dirname(path), 0o700)
            atomic_write(module, path, (json.dumps(new, sort_keys=True) + '\n').encode('utf-8'), mode=0o600)
        # The same allocation keeps its token (a file of an older format is only completed).
        if current != new:
            plan.change('write the token file', write, before=shown(current), after=shown(new), key='file')
    elif current is not None and not (p['force'] or current.get('allocation_id') == p['allocation_id']):
        result['msg'] = 'the token of slot %s belongs to allocation %s: left alone' % (
            p['slot_id'], show(current.get('allocation_id')))
    elif damaged and not p['force']:
        result['msg'] = '%s: left alone; remove it with force=true' % damaged
    elif current is not None or damaged:
        plan.change('remove the token file', lambda: remove(path), before=shown(current) or str(damaged), after='',
                    key='file')
    done = plan.execute()
    if p['state'] == 'present':
        # A token that does not exist yet (check mode) is not made up.
        result['token'] = new['token'] if token or done else None
    result.update(plan.result())
    if 'diff' in result:
        result['diff'] = dict((side, value.get('file', '')) for side, value in result['diff'].items())
    return result
