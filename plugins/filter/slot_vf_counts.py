# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuaas.slice.slot_vf_counts: the VFs each fabric PF needs for a node's approved slots."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import vf_counts
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ContractError


def slot_vf_counts(slots):
    """Approved slot records -> [{address: PF, num_vfs: highest fabric_vf_index + 1}], by PF address."""
    if not isinstance(slots, list) or not all(isinstance(slot, dict) for slot in slots):
        raise AnsibleFilterError('slot_vf_counts expects a list of approved slot records (gpuaas_slots), got %r'
                                 % (slots,))
    try:
        return vf_counts(slots)
    except ContractError as exc:
        raise AnsibleFilterError('slot_vf_counts: %s' % exc)


class FilterModule(object):
    def filters(self):
        return {'slot_vf_counts': slot_vf_counts}
