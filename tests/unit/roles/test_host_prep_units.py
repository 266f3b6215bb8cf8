# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_prep's systemd units and udev rule, rendered by Ansible and checked by systemd itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import COLLECTIONS, REPO

ROLE = os.path.join(REPO, 'roles', 'host_prep')
UNITS = ['gpuaas-dnsmasq.service', 'gpuaas-telemetry-sink.service', 'gpuaas-reconcile.service',
         'gpuaas-reconcile.timer']


def render(tmp_path, **extra):
    """Render the role's templates with its own defaults and vars through ansible-playbook."""
    play = [{
        'hosts': 'localhost', 'gather_facts': False,
        'vars_files': [os.path.join(ROLE, 'defaults', 'main.yml'), os.path.join(ROLE, 'vars', 'main.yml')],
        'tasks': [{'ansible.builtin.template': {
            'src': os.path.join(ROLE, 'templates', '{{ item }}.j2'),
            'dest': str(tmp_path / '{{ item }}'), 'mode': '0644'},
            'loop': UNITS + ['70-gpuaas-sriov.rules']}],
    }]
    # Extra vars, so that they win over the role's defaults loaded as vars_files.
    (tmp_path / 'vars.yml').write_text(yaml.safe_dump({
        'gpuaas_host_network': {'dnsmasq_argv': ['/usr/sbin/dnsmasq', '--keep-in-foreground',
                                                 '--conf-file=/etc/gpuaas/dnsmasq.conf']},
        'gpuaas_reconcile_command': '/usr/bin/python3 -c "print(\'reconcile\')"',
        **dict({'gpuaas_sriov_pfs': [{'address': '0000:1a:00.0', 'num_vfs': 4}]}, **extra),
    }))
    playbook = tmp_path / 'render.yml'
    playbook.write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    bindir = os.path.dirname(sys.executable)
    subprocess.run([os.path.join(bindir, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
                    '-e', 'ansible_python_interpreter=%s' % sys.executable,
                    '-e', '@%s' % (tmp_path / 'vars.yml'), str(playbook)],
                   check=True, env=env, capture_output=True, text=True)


@pytest.mark.skipif(not shutil.which('systemd-analyze'), reason='needs systemd-analyze (Debian package systemd)')
def test_units_pass_systemd_analyze_verify(tmp_path):
    render(tmp_path)
    proc = subprocess.run(['systemd-analyze', 'verify', '--man=no']
                          + [str(tmp_path / unit) for unit in UNITS],
                          capture_output=True, text=True, check=False)
    # Units this machine does not have (openvswitch-switch, libvirtd) are someone else's.
    problems = [line for line in proc.stderr.splitlines()
                if line.strip() and 'not found' not in line and 'not loaded' not in line]
    assert proc.returncode == 0 or not problems, proc.stderr
    assert not problems, proc.stderr
    dnsmasq = (tmp_path / 'gpuaas-dnsmasq.service').read_text()
    assert 'ExecStart=/usr/sbin/dnsmasq --keep-in-foreground --conf-file=/etc/gpuaas/dnsmasq.conf' in dnsmasq
    assert 'ExecStartPre=/usr/sbin/ip address replace 10.100.0.1/24 dev br-gpuaas' in dnsmasq
    sink = (tmp_path / 'gpuaas-telemetry-sink.service').read_text()
    assert '--listen 10.100.0.1 --port 9110' in sink
    rules = (tmp_path / '70-gpuaas-sriov.rules').read_text()
    assert 'KERNEL=="0000:1a:00.0", ATTR{sriov_numvfs}="4"' in rules


def test_a_broken_unit_fails_verification(tmp_path):
    """The check above can fail: systemd-analyze rejects a unit with a relative ExecStart."""
    if not shutil.which('systemd-analyze'):
        pytest.skip('needs systemd-analyze (Debian package systemd)')
    unit = tmp_path / 'broken.service'
    unit.write_text('[Service]\nExecStart=dnsmasq-not-a-path --x\n')
    proc = subprocess.run(['systemd-analyze', 'verify', '--man=no', str(unit)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0 or proc.stderr.strip()


def test_the_udev_rule_gives_each_pf_the_vfs_its_approved_slots_need(tmp_path):
    """Without gpuaas_sriov_pfs, the counts come from the approved slots: highest fabric_vf_index + 1 per PF."""
    slots = [{'slot_id': 'p8-s%d' % i, 'fabric_pf_address': pf, 'fabric_vf_index': k}
             for i, (pf, k) in enumerate([('0000:6a:00.0', 0), ('0000:6a:00.0', 1), ('0000:6a:00.0', 2),
                                          ('0000:d5:00.0', 0), ('0000:d5:00.0', 1)])]
    slots.append({'slot_id': 'p8-s5', 'fabric_pf_address': None, 'fabric_vf_index': None})
    render(tmp_path, gpuaas_sriov_pfs=[], gpuaas_slots=slots)
    rules = (tmp_path / '70-gpuaas-sriov.rules').read_text()
    assert [line for line in rules.splitlines() if line.startswith('ACTION')] == [
        'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:6a:00.0", ATTR{sriov_numvfs}="3"',
        'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:d5:00.0", ATTR{sriov_numvfs}="2"']
    # The operator's list, when given, is what counts.
    render(tmp_path, gpuaas_sriov_pfs=[{'address': '0000:6a:00.0', 'num_vfs': 16}], gpuaas_slots=slots)
    rules = (tmp_path / '70-gpuaas-sriov.rules').read_text()
    assert [line for line in rules.splitlines() if line.startswith('ACTION')] == [
        'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:6a:00.0", ATTR{sriov_numvfs}="16"']
