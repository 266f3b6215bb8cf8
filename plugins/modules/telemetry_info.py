#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: telemetry_info
short_description: Read the telemetry sink's per-allocation summaries
version_added: 0.1.0
description:
  - The node's telemetry sink keeps, per allocation, C({data_dir}/{allocation_id}.summary.json)
    (the sample count, the first and last time, the last health sample and the guest agent's
    slot acceptance result). This module reads them for the allocations named, so the control
    plane collects them through a playbook (C(gpuaas.slice.telemetry)) instead of reaching into the
    node's files.
  - Read-only; it never changes anything. An allocation whose guest has posted nothing yet gets a
    mapping with C(missing) true; a summary that cannot be used one with C(error) naming the file, so a
    damaged file is never mistaken for a missing one.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
    details: Reads the same in check mode.
  diff_mode:
    support: none
    details: Nothing changes.
  idempotent:
    support: full
options:
  allocation_ids:
    description: The allocations to read (at most 1024 ids).
    type: list
    elements: str
    required: true
  data_dir:
    description: The sink's data directory.
    type: path
    default: /var/lib/gpuaas/telemetry/data
'''

EXAMPLES = r'''
- name: The running allocations' telemetry
  gpuaas.slice.telemetry_info:
    allocation_ids: [alloc-7f3a, alloc-81c2]
  register: telemetry
'''

RETURN = r'''
telemetry:
  description: Per allocation id, the sink's summary, or a mapping with C(missing) true, or one with C(error).
  returned: always
  type: dict
  sample:
    alloc-7f3a:
      allocation_id: alloc-7f3a
      slot_id: gpu-node-01-s3
      samples: 42
      first_at: 1764675600.2
      last_at: 1764676830.9
      health: {received_at: 1764676830.9, sample: {kind: health, health: {uptime_s: 1230.5}}}
      acceptance: {received_at: 1764675600.2, result: {kind: acceptance, status: passed, checks: []}}
    alloc-81c2: {missing: true}
data_dir:
  description: The directory read.
  returned: always
  type: str
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._telemetry import ARGUMENT_SPEC, engine


def main():
    run_module(ARGUMENT_SPEC, engine)


if __name__ == '__main__':
    main()
