# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the telemetry sink's per-allocation summaries, read (telemetry_info).

The sink (roles/host_prep/files/gpuaas_telemetry_sink.py) rewrites
``{data_dir}/{allocation_id}.summary.json`` after every stored sample: the sample count, the
first and last time, the last health sample and the acceptance result. This reads them for
the control plane, which collects them through a playbook (it never reads the node's files
itself). Reading changes nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.gpuaas.slice.plugins.module_utils._files import StateFileError, check_dir, read_json
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ALLOCATION_ID, GpuaasError

ARGUMENT_SPEC = dict(
    allocation_ids=dict(type='list', elements='str', required=True),
    data_dir=dict(type='path', default='/var/lib/gpuaas/telemetry/data'),
)
MAX_IDS = 1024
# The sink's summary holds two samples of at most 64 KiB each and a few numbers.
MAX_SUMMARY = 256 * 1024


def read_summary(data_dir, allocation_id):
    """The summary of one allocation: the sink's record, ``{'missing': True}`` when the guest
    has posted nothing yet, or ``{'error': why}`` when the file cannot be used."""
    path = os.path.join(data_dir, '%s.summary.json' % allocation_id)
    try:
        if os.path.getsize(path) > MAX_SUMMARY:
            return {'error': 'the summary %s is larger than %d bytes' % (path, MAX_SUMMARY)}
    except OSError:
        return {'missing': True}
    try:
        summary = read_json(path, 'telemetry summary')
    except StateFileError as exc:
        return {'error': str(exc)}
    if summary is None:
        return {'missing': True}
    if summary.get('allocation_id') != allocation_id:
        return {'error': 'the summary %s names allocation %r' % (path, summary.get('allocation_id'))}
    return summary


def engine(module):
    p = module.params
    ids = p['allocation_ids']
    if len(ids) > MAX_IDS:
        raise GpuaasError('allocation_ids has %d ids, at most %d' % (len(ids), MAX_IDS))
    for index, allocation_id in enumerate(ids):
        ALLOCATION_ID.check(allocation_id, 'allocation_ids[%d]' % index)
    data_dir = check_dir(p['data_dir'], 'data_dir')
    return {'changed': False, 'data_dir': data_dir,
            'telemetry': dict((allocation_id, read_summary(data_dir, allocation_id)) for allocation_id in ids)}
