# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuaas.slice.reconcile_report: what reconcile found and did, one line per finding."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.gpuaas.slice.plugins.module_utils._fabric_vlan import fabric_lines
from ansible_collections.gpuaas.slice.plugins.module_utils._node_state import report_lines
from ansible_collections.gpuaas.slice.plugins.module_utils._tenant import tenant_lines


def reconcile_report(node, repairs=None, check_mode=False, tenants=None, fabric=None, partitions=None):
    """node_state_info's result (+ the slot_vm state=repaired results, the tenant_network result,
    the fabric_vlan state=reconciled and fabric_partition state=converged results) -> report lines."""
    if not isinstance(node, dict) or 'blind' not in node:
        raise AnsibleFilterError('reconcile_report expects the result of gpuaas.slice.node_state_info')
    by_slot = {}
    for result in (repairs or {}).get('results', []) if isinstance(repairs, dict) else repairs or []:
        item = result.get('item') if isinstance(result, dict) else None
        if isinstance(item, dict) and item.get('slot_id'):
            by_slot[item['slot_id']] = result
    lines = report_lines(node, by_slot, check_mode=bool(check_mode))
    tenants = tenants if isinstance(tenants, dict) else {}
    extra = tenant_lines(tenants, check_mode=bool(check_mode))
    extra += fabric_lines(fabric if isinstance(fabric, dict) else {}, partitions if isinstance(partitions, dict) else {},
                          check_mode=bool(check_mode), known=tenants.get('tenant_problems') or ())
    if extra and lines[-1].startswith('node: agrees with its leases'):
        lines.pop()
    return lines + extra


class FilterModule(object):
    def filters(self):
        return {'reconcile_report': reconcile_report}
