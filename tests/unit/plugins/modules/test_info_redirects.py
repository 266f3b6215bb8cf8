# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The read-only modules carry *_info names; their old names are deprecated redirects that
ansible-core resolves to the same module (meta/runtime.yml)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.conftest import COLLECTIONS, REPO

RENAMED = {'node_state': 'node_state_info', 'slot_check': 'slot_check_info',
           'slot_discovery': 'slot_discovery_info', 'telemetry_read': 'telemetry_info'}


def _runtime():
    with open(os.path.join(REPO, 'meta', 'runtime.yml'), encoding='utf-8') as handle:
        return yaml.safe_load(handle)


def test_every_old_name_is_a_deprecated_redirect_to_its_info_module():
    routing = _runtime()['plugin_routing']['modules']
    assert set(routing) == set(RENAMED)
    for old, new in RENAMED.items():
        assert routing[old]['redirect'] == 'gpuaas.slice.' + new
        assert routing[old]['deprecation']['removal_version'] == '1.0.0'
        assert 'gpuaas.slice.' + new in routing[old]['deprecation']['warning_text']
        assert os.path.exists(os.path.join(REPO, 'plugins', 'modules', new + '.py'))
        assert not os.path.exists(os.path.join(REPO, 'plugins', 'modules', old + '.py'))
    group = _runtime()['action_groups']['slice']
    assert set(RENAMED.values()) <= set(group) and not set(RENAMED) & set(group)


def test_read_only_modules_are_info_modules_with_full_check_mode():
    """Every module documented as changing nothing has an *_info name, and supports check mode."""
    for name in sorted(os.listdir(os.path.join(REPO, 'plugins', 'modules'))):
        with open(os.path.join(REPO, 'plugins', 'modules', name), encoding='utf-8') as handle:
            text = handle.read()
        if name.endswith('_info.py'):
            doc = yaml.safe_load(text.split("DOCUMENTATION = r'''", 1)[1].split("'''", 1)[0])
            fragments = doc.get('extends_documentation_fragment', [])
            check_mode = doc.get('attributes', {}).get('check_mode', {}).get('support')
            assert 'gpuaas.slice.attributes.read_only' in fragments or check_mode == 'full', name


def test_ansible_resolves_an_old_name_with_a_deprecation_warning():
    code = ('from ansible.plugins.loader import init_plugin_loader, module_loader\n'
            'init_plugin_loader()\n'
            'found = module_loader.find_plugin_with_context("gpuaas.slice.slot_check")\n'
            'print(found.resolved_fqcn, found.deprecated, found.removal_version)\n'
            'print(found.deprecation_warnings[0] if found.deprecation_warnings else "")\n')
    done = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS),
                          capture_output=True, text=True, check=True)
    first, warning = done.stdout.splitlines()[:2]
    assert first == 'gpuaas.slice.slot_check_info True 1.0.0'
    assert 'gpuaas.slice.slot_check_info' in warning
