# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX job templates name playbooks that exist, and their surveys give what the roles take."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.conftest import COLLECTIONS, REPO

TEMPLATES = yaml.safe_load(open(os.path.join(REPO, 'docs', 'awx', 'job_templates.yml')))['job_templates']
SURVEY_TYPES = {'text', 'textarea', 'password', 'integer', 'float', 'multiplechoice', 'multiselect'}


def template(playbook):
    return next(t for t in TEMPLATES if t['playbook'] == playbook)


def test_every_template_runs_a_root_playbook_that_imports_the_collections():
    assert {t['playbook'] for t in TEMPLATES} == {'host_prep.yml', 'discover.yml', 'allocate.yml',
                                                  'release.yml', 'reconcile.yml'}
    for item in TEMPLATES:
        plays = yaml.safe_load(open(os.path.join(REPO, item['playbook'])))
        name = item['playbook'][:-4]
        assert plays[-1]['ansible.builtin.import_playbook'] == 'gpuaas.slice.' + name
        assert os.path.exists(os.path.join(REPO, 'playbooks', item['playbook']))


def test_surveys_are_well_formed():
    for item in TEMPLATES:
        if not item.get('survey_enabled'):
            continue
        names = [q['variable'] for q in item['survey_spec']['spec']]
        assert len(names) == len(set(names))
        for question in item['survey_spec']['spec']:
            assert question['type'] in SURVEY_TYPES and question['question_name']
            if question['type'] == 'multiplechoice':
                assert question.get('default') in question['choices']


def test_the_allocate_survey_becomes_the_allocation_the_role_takes(tmp_path):
    """Run the wrapper's first play with the survey's answers and read gpuaas_allocation back."""
    answers = {q['variable']: q.get('default') for q in template('allocate.yml')['survey_spec']['spec']}
    answers.update(gpuaas_slot_id='gpu-node-01-s0', gpuaas_allocation_id='alloc-1', gpuaas_tenant='acme',
                   gpuaas_image='ubuntu.qcow2', gpuaas_image_checksum='sha256:' + 'a' * 64,
                   gpuaas_ssh_keys='ssh-ed25519 AAAAC3Nza alice\n\n  ssh-ed25519 AAAAC3Nzb bob  \n')
    plays = yaml.safe_load(open(os.path.join(REPO, 'allocate.yml')))[:1]
    plays[0]['hosts'] = 'localhost'
    plays[0]['tasks'].append({'ansible.builtin.copy': {'content': '{{ gpuaas_allocation | to_json }}',
                                                       'dest': str(tmp_path / 'allocation.json'), 'mode': '0600'}})
    (tmp_path / 'play.yml').write_text(yaml.safe_dump(plays))
    (tmp_path / 'answers.yml').write_text(yaml.safe_dump(answers))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,',
                    '-c', 'local', '-e', 'ansible_python_interpreter=%s' % sys.executable,
                    '-e', '@%s' % (tmp_path / 'answers.yml'), str(tmp_path / 'play.yml')],
                   check=True, env=env, capture_output=True)
    allocation = yaml.safe_load((tmp_path / 'allocation.json').read_text())
    assert allocation == {'id': 'alloc-1', 'tenant': 'acme', 'image': 'ubuntu.qcow2',
                          'image_checksum': 'sha256:' + 'a' * 64, 'image_format': 'qcow2',
                          'ssh_keys': ['ssh-ed25519 AAAAC3Nza alice', 'ssh-ed25519 AAAAC3Nzb bob'],
                          'vcpus': 8, 'memory_mib': 65536, 'disk_gib': 100}
