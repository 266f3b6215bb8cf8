# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab.Playbooks, which the lab and the benchmarks run playbooks with, finds ansible-playbook
next to its own Python when PATH does not have it (make bench on a fresh machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO


def test_playbooks_run_without_the_venv_on_path(tmp_path):
    playbook = tmp_path / 'ping.yml'
    playbook.write_text('- hosts: localhost\n  gather_facts: false\n  tasks:\n'
                        '    - ansible.builtin.debug: {msg: hi}\n')
    script = textwrap.dedent('''
        import sys
        sys.path.insert(0, sys.argv[1])
        import lab
        lab.BUILD, lab.INVENTORY = sys.argv[3], sys.argv[4]   # this test's, not the lab's
        result = lab.Playbooks().run(sys.argv[2], 'localhost', {}, 'path-test')
        print(result['rc'], result['status'], result['failures'])
        sys.exit(result['rc'])
    ''')
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text('all:\n  hosts:\n    localhost: {ansible_connection: local}\n')
    env = {'HOME': os.environ.get('HOME', str(tmp_path)), 'PATH': '/usr/bin:/bin'}
    proc = subprocess.run([sys.executable, '-c', script, os.path.join(REPO, 'lab'), str(playbook),
                           str(tmp_path / 'build'), str(inventory)],
                          env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[:2] == ['0', 'successful'], proc.stdout
