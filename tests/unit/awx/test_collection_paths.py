# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection search path an AWX job gets with this project's ansible.cfg, on the
ansible-core the project runs (2.21): AWX runs ansible-playbook in the project's directory,
without ANSIBLE_CONFIG, so the project's ansible.cfg is read; AWX 22.4+ sets
ANSIBLE_COLLECTIONS_PATH, older AWX only ANSIBLE_COLLECTIONS_PATHS."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys

from tests.conftest import REPO

AWX_COLLECTIONS = '/runner/requirements_collections'
DEFAULTS = [os.path.expanduser('~/.ansible/collections'), '/usr/share/ansible/collections']


def effective(env_extra):
    """ansible-config's COLLECTIONS_PATHS (value, origin) in the project's directory."""
    env = {key: value for key, value in os.environ.items()
           if key not in ('ANSIBLE_CONFIG', 'ANSIBLE_COLLECTIONS_PATH', 'ANSIBLE_COLLECTIONS_PATHS')}
    env.update(env_extra)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-config'), 'dump', '--format', 'json'],
                          cwd=REPO, env=env, capture_output=True, text=True, check=True)
    settings = {entry['name']: entry for entry in json.loads(proc.stdout) if 'name' in entry}
    assert settings['CONFIG_FILE']['value'] == os.path.join(REPO, 'ansible.cfg')
    return settings['COLLECTIONS_PATHS']['value'], settings['COLLECTIONS_PATHS']['origin']


def test_awx_collections_path_variable_wins():
    awx = ':'.join([AWX_COLLECTIONS] + DEFAULTS)
    value, origin = effective({'ANSIBLE_COLLECTIONS_PATH': awx})
    assert origin == 'env: ANSIBLE_COLLECTIONS_PATH'
    assert value == [AWX_COLLECTIONS] + DEFAULTS


def test_with_only_the_plural_variable_the_project_cfg_still_finds_awx_collections():
    """ansible-core 2.19+ ignores ANSIBLE_COLLECTIONS_PATHS (the origin shows it): the job
    then searches what ansible.cfg says, which must hold AWX's directory."""
    value, origin = effective({'ANSIBLE_COLLECTIONS_PATHS': '/elsewhere'})
    assert origin == os.path.join(REPO, 'ansible.cfg')
    assert '/elsewhere' not in value
    assert value == [AWX_COLLECTIONS] + DEFAULTS


def test_ansible_cfg_names_no_directory_of_the_checkout():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, 'ansible.cfg'))
    paths = cfg['defaults']['collections_path'].split(':')
    assert not [path for path in paths if not path.startswith(('/', '~'))], paths
    assert not [path for path in paths if os.path.abspath(os.path.expanduser(path)).startswith(REPO + os.sep)]
    assert 'collections_paths' not in cfg['defaults']   # the plural key: removed from ansible-core
