#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: telemetry_token
short_description: Create or revoke an allocation's telemetry token
version_added: 0.1.0
description:
  - Each allocation gets its own token for the host-only telemetry sink. The token file
    C({token_dir}/{slot_id}.json) (mode 0600, in a 0700 directory) holds the allocation id, the slot id,
    the slot's IP (from the layout), C(token_sha256) (what the sink compares) and the token itself (so
    a re-run can return it; root only). The sink accepts a sample only with a known token coming from
    that token's slot address.
  - Running it again for the same allocation returns the same token (no change). A new allocation on
    the slot replaces the file, so the previous allocation's token stops working at once.
  - V(absent) revokes the token of O(allocation_id) (a token of another allocation is left alone
    unless O(force=true)).
  - The result's RV(token) is a secret. Ansible cannot hide one key of a module's result, so the task
    must run with C(no_log=true) (as the C(slot_allocate) role does); with O(state=present) the module
    refuses to run without it, before it changes anything. The token never appears in the diff or in
    a message.
  - A token file that cannot be read back (not JSON, not a mapping) is reported naming the file;
    V(present) refuses, V(absent) leaves it alone unless O(force=true).
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
    details: Says whether a token would be created or revoked; writes nothing.
  diff_mode:
    support: full
    details: The token file before and after, without the token.
  idempotent:
    support: full
options:
  slot_id:
    description: The slot, C({node_id}-s{index}).
    type: str
    required: true
  allocation_id:
    description: The allocation. Required unless O(state=absent) with O(force=true).
    type: str
  state:
    description: Whether the allocation has a token.
    type: str
    choices: [present, absent]
    default: present
  force:
    description: With O(state=absent), revoke whatever token the slot has.
    type: bool
    default: false
  token_dir:
    description: Where tokens are kept (root only).
    type: path
    default: /var/lib/gpuaas/telemetry/tokens
'''

EXAMPLES = r'''
- name: A token for the allocation, for its cloud-init seed
  gpuaas.slice.telemetry_token:
    slot_id: gpu-node-01-s3
    allocation_id: alloc-7f3a
  register: token
  no_log: true

- name: Revoke it on release
  gpuaas.slice.telemetry_token:
    slot_id: gpu-node-01-s3
    allocation_id: alloc-7f3a
    state: absent
'''

RETURN = r'''
token:
  description:
    - The allocation's token (only with O(state=present); null in check mode before it exists).
    - A secret, so the task runs with C(no_log=true).
  returned: success
  type: str
path:
  description: The token file.
  returned: always
  type: str
  sample: /var/lib/gpuaas/telemetry/tokens/gpu-node-01-s3.json
actions:
  description: What the module changed (in check mode, would change).
  returned: always
  type: list
  elements: str
  sample: [write the token file]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._token import ARGUMENT_SPEC, RULES, engine


def main():
    run_module(ARGUMENT_SPEC, engine, **RULES)


if __name__ == '__main__':
    main()
