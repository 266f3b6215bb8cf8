# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuaas.slice.plugins.filter.phase_timings import phase_timings


def test_each_phase_is_the_time_since_the_mark_before_it():
    marks = {'start': 100.0, 'lease': 100.25, 'image': '103.5', 'vm': 110}
    assert phase_timings(marks) == {'lease': 0.25, 'image': 3.25, 'vm': 6.5, 'total': 10.0}
    assert phase_timings({'start': 5}) == {'total': 0.0}


@pytest.mark.parametrize('marks', [{}, None, [1, 2], {'start': 1, 'vm': 'soon'}])
def test_bad_marks_are_an_error(marks):
    with pytest.raises(AnsibleFilterError):
        phase_timings(marks)
