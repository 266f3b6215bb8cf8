#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_console_info
short_description: Read the newest part of allocated slots' serial console logs
version_added: 0.1.0
description:
  - Reads the end (at most O(max_bytes)) of C({console_log_dir}/{slot_id}.log), the serial console log
    libvirt writes for each slot's VM (rewritten at each start), for the allocation each slot is asked for.
  - Read-only. A slot whose lease is not held by the allocation asked gets an entry with C(error) and no
    text; a log last written before that allocation took the slot (its previous tenant's) counts as
    missing. The file name derives from the slot id alone and is opened in O(console_log_dir) without
    following a symlink; anything but a regular file is refused.
  - A tail that starts inside a line drops that partial line.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.attributes.read_only
options:
  slots:
    description: The slots to read (at most 1024), each with the allocation that must hold it.
    type: list
    elements: dict
    required: true
    suboptions:
      slot_id:
        description: The slot.
        type: str
        required: true
      allocation_id:
        description: The allocation whose console is asked for.
        type: str
        required: true
  console_log_dir:
    description: Where libvirt logs the slots' serial consoles.
    type: path
    default: /var/log/gpuaas/console
  lease_dir:
    description: Where the slots' leases are.
    type: path
    default: /var/lib/gpuaas/node-scheduler/leases
  max_bytes:
    description: The most bytes read from the end of each log, from 1 to 65536.
    type: int
    default: 65536
seealso:
  - module: gpuaas.slice.slot_power
'''

EXAMPLES = r'''
- name: The console of allocation alloc-7f3a
  gpuaas.slice.slot_console_info:
    slots:
      - slot_id: gpu-node-01-s0
        allocation_id: alloc-7f3a
  register: console
'''

RETURN = r'''
console:
  description:
    - Per slot id, the tail of its log (C(allocation_id), C(text), C(size), C(offset), C(truncated),
      C(modified_at)), or a mapping with C(missing) true, or one with C(error).
  returned: always
  type: dict
  sample:
    gpu-node-01-s0: {allocation_id: alloc-7f3a, size: 81234, offset: 15698, truncated: true,
                     modified_at: 1764676830.912, text: "[    0.000000] Linux version ..."}
    gpu-node-01-s1: {missing: true}
console_log_dir:
  description: The directory read.
  returned: always
  type: str
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._console import ARGUMENT_SPEC, engine
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module


def main():
    run_module(ARGUMENT_SPEC, engine)


if __name__ == '__main__':
    main()
