# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""phase_timings, run by Ansible itself.

In a subprocess: importing the controller side of Ansible (ansible.errors) into the test
process changes how modules run in-process report their warnings for the tests after it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import COLLECTIONS, REPO


def render(expression):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible'), 'localhost', '-i', 'localhost,',
                           '-c', 'local',
                           '-e', 'ansible_python_interpreter=%s' % sys.executable,
                           '-m', 'ansible.builtin.debug', '-a', 'msg="%s"' % expression],
                          capture_output=True, text=True, env=env, check=False)
    # 'localhost | SUCCESS => {...}' (or FAILED!): the result is the JSON after the arrow.
    return json.loads(proc.stdout.split('=>', 1)[1])


def test_each_phase_is_the_time_since_the_mark_before_it():
    result = render("{{ {'start': 100.0, 'lease': 100.25, 'image': '103.5', 'vm': 110} | gpuaas.slice.phase_timings }}")
    assert result['msg'] == {'lease': 0.25, 'image': 3.25, 'vm': 6.5, 'total': 10.0}


def test_bad_marks_are_an_error():
    result = render("{{ {'start': 1, 'vm': 'soon'} | gpuaas.slice.phase_timings }}")
    assert 'a time mark is not a number' in result['msg']
