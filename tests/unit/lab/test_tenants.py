# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab/tenants.py: the tenant matrix from what each guest's packets reached."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), 'lab'))
import tenants  # noqa: E402

TENANTS = {'s0': 'a', 's1': 'a', 's2': 'b'}
ADDRESSES = {'s0': '10.100.0.10', 's1': '10.100.0.11', 's2': '10.100.0.12'}


def test_the_right_matrix_has_no_problem():
    rows, problems = tenants.matrix(TENANTS, ADDRESSES, {'s0': {'10.100.0.11'}, 's1': {'10.100.0.10'}, 's2': set()})
    assert problems == []
    assert ('s0', 's1', True, True) in rows and ('s2', 's0', False, False) in rows and len(rows) == 6


@pytest.mark.parametrize('reached, problem', [
    ({'s0': set(), 's1': {'10.100.0.10'}, 's2': set()}, 's0 (tenant a) does not reach s1 of its own tenant at 10.100.0.11'),
    ({'s0': {'10.100.0.11', '10.100.0.12'}, 's1': {'10.100.0.10'}, 's2': set()}, 's0 (tenant a) REACHES s2 of tenant b'),
    ({'s0': {'10.100.0.11'}, 's1': {'10.100.0.10'}, 's2': {'10.100.0.10'}}, 's2 (tenant b) REACHES s0 of tenant a'),
    ({'s0': {'10.100.0.11'}, 's1': {'10.100.0.10'}}, 's2: no probe came back'),
    ({'s0': {'10.100.0.11'}, 's1': {'10.100.0.10'}, 's2': {'10.100.0.17'}}, 's2 REACHES addresses no lab slot has: 10.100.0.17'),
])
def test_every_wrong_cell_is_a_problem(reached, problem):
    _rows, problems = tenants.matrix(TENANTS, ADDRESSES, reached)
    assert any(p.startswith(problem) for p in problems), problems


def test_the_test_guests_text_and_a_list_parse_alike():
    assert tenants.parse_reached('10.100.0.11 10.100.0.12') == tenants.parse_reached(['10.100.0.12', '10.100.0.11'])
    assert tenants.parse_reached('') == set() and tenants.parse_reached(None) is None
    with pytest.raises(ValueError):
        tenants.parse_reached('10.100.0.300')


def test_the_rendered_matrix_marks_what_is_wrong():
    reached = {'s0': {'10.100.0.11', '10.100.0.12'}, 's1': {'10.100.0.10'}, 's2': None}
    rows, _problems = tenants.matrix(TENANTS, ADDRESSES, reached)
    lines = tenants.render(TENANTS, rows)
    assert lines[1].split()[:6] == ['s0', '(a)', '-', 'yes', 'yes', '!']
    assert lines[3].split()[2:] == ['?', '?', '-']
