# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX job templates name playbooks that exist, and their surveys give what the roles take."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import yaml

from ansible_collections.gpuaas.slice.plugins.module_utils import _slot_inventory
from tests.conftest import COLLECTIONS, REPO

TEMPLATES = yaml.safe_load(open(os.path.join(REPO, 'docs', 'awx', 'job_templates.yml')))['job_templates']
SURVEY_TYPES = {'text', 'textarea', 'password', 'integer', 'float', 'multiplechoice', 'multiselect'}


def template(playbook):
    return next(t for t in TEMPLATES if t['playbook'] == playbook)


def test_every_template_runs_a_root_playbook_that_imports_the_collections():
    assert {t['playbook'] for t in TEMPLATES} == {'host_prep.yml', 'discover.yml', 'allocate.yml',
                                                  'release.yml', 'reconcile.yml', 'stop.yml', 'start.yml',
                                                  'reboot.yml', 'console.yml'}
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


def test_the_console_survey_becomes_the_slots_the_playbook_reads(tmp_path):
    """The console wrapper's first play turns one slot's answers into gpuaas_console_slots,
    and leaves a gpuaas_console_slots the launch passed as it is."""
    answers = {q['variable']: q.get('default') for q in template('console.yml')['survey_spec']['spec']}
    answers.update(gpuaas_slot_id='gpu-node-01-s0', gpuaas_allocation_id='alloc-1')
    plays = yaml.safe_load(open(os.path.join(REPO, 'console.yml')))[:1]
    plays[0]['hosts'] = 'localhost'
    plays[0]['tasks'].append({'ansible.builtin.copy': {'content': '{{ gpuaas_console_slots | to_json }}',
                                                       'dest': str(tmp_path / 'slots.json'), 'mode': '0600'}})
    (tmp_path / 'play.yml').write_text(yaml.safe_dump(plays))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    passed = [{'slot_id': 'gpu-node-01-s1', 'allocation_id': 'alloc-2'}]
    for extra, expected in ((answers, [{'slot_id': 'gpu-node-01-s0', 'allocation_id': 'alloc-1'}]),
                            ({'gpuaas_console_slots': passed}, passed)):
        (tmp_path / 'answers.yml').write_text(yaml.safe_dump(extra))
        subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,',
                        '-c', 'local', '-e', 'ansible_python_interpreter=%s' % sys.executable,
                        '-e', '@%s' % (tmp_path / 'answers.yml'), str(tmp_path / 'play.yml')],
                       check=True, env=env, capture_output=True)
        assert yaml.safe_load((tmp_path / 'slots.json').read_text()) == expected


# -- the surveys and extra vars against what the playbooks take ------------------------------

VAR_RE = re.compile(r'\b(gpuaas_[a-z0-9_]+)\b')


def _roles(plays):
    """The roles a collection playbook runs (roles:, import_role, include_role)."""
    names = []
    for play in plays:
        names += [r['role'] if isinstance(r, dict) else r for r in play.get('roles', [])]
        for task in play.get('tasks', []):
            for key in ('ansible.builtin.import_role', 'ansible.builtin.include_role'):
                if key in task:
                    names.append(task[key]['name'])
    return [name.split('.')[-1] for name in names]


def _options(role):
    spec = yaml.safe_load(open(os.path.join(REPO, 'roles', role, 'meta', 'argument_specs.yml')))
    return spec['argument_specs']['main']['options']


def inventory_vars():
    """The host vars the gpuaas.slice.slots inventory source gives each node."""
    built = _slot_inventory.build([{'id': 'n1', 'approved_slots': []}], [], details='full')
    return set(built['hosts']['n1'])


def _without_default(mapping):
    """The variables a task's arguments read without a default."""
    text = yaml.safe_dump(mapping)
    return {name for name in VAR_RE.findall(text) if not re.search(r'\b%s\s*\|\s*default\(' % name, text)}


def problems(item):
    """What does not match between a job template and its playbook: a survey or extra var the
    playbook does not use, a variable the playbook needs that nothing gives."""
    root_text = open(os.path.join(REPO, item['playbook'])).read()
    root = yaml.safe_load(root_text)
    collection_text = open(os.path.join(REPO, 'playbooks', item['playbook'])).read()
    collection = yaml.safe_load(collection_text)
    options = {}
    for role in _roles(collection):
        options.update(_options(role))
    used = set(options) | set(VAR_RE.findall(root_text)) | set(VAR_RE.findall(collection_text))
    # What the wrapper's own plays set, and what they read without a default.
    made, needed = set(), set()
    for play in root[:-1]:
        for task in play.get('tasks', []):
            facts = task.get('ansible.builtin.set_fact', {})
            made |= set(facts)
            needed |= _without_default(facts)
    needed |= {name for name, spec in options.items() if spec.get('required')}
    # What the collection playbook's own calls of the collection's modules read without a default.
    for play in collection:
        for task in play.get('tasks', []):
            needed |= set().union(*(_without_default(args) for module, args in task.items()
                                    if module.startswith('gpuaas.slice.')))
    survey = [q['variable'] for q in item['survey_spec']['spec']] if item.get('survey_enabled') else []
    extra = list(item.get('extra_vars', {}))
    given = set(survey) | set(extra) | inventory_vars() | made
    found = ['survey variable %s: the playbook does not use it' % name for name in survey if name not in used]
    found += ['extra var %s: the playbook does not use it' % name for name in extra if name not in used]
    found += ['%s needs %s: no survey question, extra var or inventory var gives it' % (item['playbook'], name)
              for name in sorted(needed - given - made)]
    return found


def test_every_template_gives_what_its_playbook_needs_and_nothing_else():
    assert {t['playbook']: problems(t) for t in TEMPLATES} == {t['playbook']: [] for t in TEMPLATES}


def test_a_survey_that_does_not_match_its_playbook_is_caught():
    allocate = copy.deepcopy(template('allocate.yml'))
    allocate['survey_spec']['spec'].append({'question_name': 'GPUs', 'variable': 'gpuaas_gpus', 'type': 'integer'})
    assert problems(allocate) == ['survey variable gpuaas_gpus: the playbook does not use it']
    allocate['survey_spec']['spec'] = [q for q in allocate['survey_spec']['spec']
                                       if q['variable'] not in ('gpuaas_gpus', 'gpuaas_slot_id', 'gpuaas_tenant')]
    assert problems(allocate) == ['allocate.yml needs gpuaas_slot_id: no survey question, extra var or inventory '
                                  'var gives it',
                                  'allocate.yml needs gpuaas_tenant: no survey question, extra var or inventory '
                                  'var gives it']
    release = copy.deepcopy(template('release.yml'))
    release['survey_enabled'] = False
    release['extra_vars'] = {'gpuaas_slot': 'gpu-node-01-s0'}
    assert problems(release) == [
        'extra var gpuaas_slot: the playbook does not use it',
        'release.yml needs gpuaas_allocation_id: no survey question, extra var or inventory var gives it',
        'release.yml needs gpuaas_slot_id: no survey question, extra var or inventory var gives it']
    discover = dict(template('discover.yml'), extra_vars={'gpuaas_hosts': 'all', 'gpuaas_host': 'x'})
    assert problems(discover) == ['extra var gpuaas_host: the playbook does not use it']
    # The power playbooks call the module themselves: what its arguments read is needed.
    stop = copy.deepcopy(template('stop.yml'))
    stop['survey_spec']['spec'] = [q for q in stop['survey_spec']['spec'] if q['variable'] != 'gpuaas_allocation_id']
    stop['survey_spec']['spec'].append({'question_name': 'Force', 'variable': 'gpuaas_force', 'type': 'text'})
    assert problems(stop) == ['survey variable gpuaas_force: the playbook does not use it',
                              'stop.yml needs gpuaas_allocation_id: no survey question, extra var or inventory '
                              'var gives it']
    console = copy.deepcopy(template('console.yml'))
    console['survey_spec']['spec'] = [q for q in console['survey_spec']['spec'] if q['variable'] != 'gpuaas_slot_id']
    assert problems(console) == ['console.yml needs gpuaas_slot_id: no survey question, extra var or inventory '
                                 'var gives it']


def test_the_inventory_source_is_the_plugin_given_what_it_reads():
    """The project's inventory file names the plugin, and the credential type sets the
    variables the plugin's url and token options read (the token as a secret input)."""
    document = yaml.safe_load(open(os.path.join(REPO, 'docs', 'awx', 'job_templates.yml')))
    (source,) = document['inventory_sources']
    (kind,) = [k for k in document['credential_types'] if k['name'] == source['credential_type']]
    inventory = yaml.safe_load(open(os.path.join(REPO, source['source_path'])))
    assert source['source_path'].endswith('.gpuaas_slots.yml') and inventory['plugin'] == 'gpuaas.slice.slots'
    options = yaml.safe_load(_plugin_documentation())['options']
    assert set(inventory) - {'plugin'} <= set(options)
    env = {name: value.strip('{} ') for name, value in kind['injectors']['env'].items()}
    fields = {field['id']: field for field in kind['inputs']['fields']}
    for option in ('url', 'token'):
        (variable,) = [e['name'] for e in options[option]['env']]
        assert env[variable] in fields and env[variable] in kind['inputs']['required']
    assert fields[env['GPUAAS_API_TOKEN']].get('secret') is True and options['token']['secret'] is True


def _plugin_documentation():
    text = open(os.path.join(REPO, 'plugins', 'inventory', 'slots.py')).read()
    return text.split("DOCUMENTATION = r'''", 1)[1].split("'''", 1)[0]
