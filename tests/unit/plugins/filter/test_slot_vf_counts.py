# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_vf_counts, run by Ansible itself: host_prep's VF count per fabric PF, from the approved slots sharing it.

In a subprocess, as test_phase_timings explains (the controller side of Ansible stays out of the test process).
"""
from __future__ import annotations

from tests.unit.plugins.filter.test_phase_timings import render


def test_each_pf_gets_one_vf_more_than_the_highest_index_of_its_slots():
    result = render("{{ [{'fabric_pf_address': '0000:d5:00.0', 'fabric_vf_index': 3}, "
                    "{'fabric_pf_address': '0000:6a:00.0', 'fabric_vf_index': 0}, "
                    "{'fabric_pf_address': '0000:d5:00.0', 'fabric_vf_index': 1}, "
                    "{'fabric_pf_address': None, 'fabric_vf_index': None}] | gpuaas.slice.slot_vf_counts }}")
    assert result['msg'] == [{'address': '0000:6a:00.0', 'num_vfs': 1}, {'address': '0000:d5:00.0', 'num_vfs': 4}]
    assert render('{{ [] | gpuaas.slice.slot_vf_counts }}')['msg'] == []


def test_anything_else_is_refused_naming_it():
    assert 'slot_vf_counts expects a list of approved slot records' in \
        render("{{ 'p8-s0' | gpuaas.slice.slot_vf_counts }}")['msg']
    assert "slot_vf_counts: fabric_vf_index must be a whole number from 0 to 65534, not 'x'" in \
        render("{{ [{'fabric_pf_address': '0000:6a:00.0', 'fabric_vf_index': 'x'}] | gpuaas.slice.slot_vf_counts }}")['msg']
