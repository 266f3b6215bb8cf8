# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the packaging files promise, checked against the code and the project's pins.

hack/packaging.sh (make test's packaging part) runs the tools themselves (galaxy-importer,
ansible-builder, a clean-venv install); these tests pin the rules those files must keep.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO

ROLES = sorted(os.listdir(os.path.join(REPO, 'roles')))


def pins(path):
    """{normalised name: version} of a pip requirements file's `name==version` lines."""
    found = {}
    with open(path, encoding='utf-8') as handle:
        for line in handle:
            line = line.split('#', 1)[0].strip()
            if line:
                req = Requirement(line)
                (spec,) = req.specifier
                assert spec.operator == '==', '%s: %r is not pinned' % (path, line)
                found[norm(req.name)] = spec.version
    return found


def norm(name):
    return re.sub(r'[-_.]+', '-', name).lower()


PROJECT_PINS = pins(os.path.join(REPO, 'requirements.txt'))


def load_yaml(*parts):
    with open(os.path.join(REPO, *parts), encoding='utf-8') as handle:
        return yaml.safe_load(handle)


# --- the execution environment ---------------------------------------------------------------

def test_ee_requirements_are_the_versions_the_project_tests_with():
    ee = pins(os.path.join(REPO, 'meta', 'ee-requirements.txt'))
    assert {'ansible-core', 'ansible-runner'} <= set(ee)
    wrong = {name: (version, PROJECT_PINS.get(name)) for name, version in ee.items()
             if PROJECT_PINS.get(name) != version}
    assert not wrong, 'meta/ee-requirements.txt differs from requirements.txt: %s' % wrong


def test_ee_requirements_hold_ansible_runners_and_ansible_cores_dependencies():
    """The controller's real needs: what ansible-core and ansible-runner import, pinned."""
    ee = pins(os.path.join(REPO, 'meta', 'ee-requirements.txt'))
    for dist in ('ansible-core', 'ansible-runner'):
        for line in importlib.metadata.requires(dist) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({'extra': ''}):
                assert norm(req.name) in ee, '%s needs %s, missing from meta/ee-requirements.txt' % (dist, req.name)


def test_ee_holds_nothing_of_the_nodes():
    """The modules run on the nodes (host_prep installs their packages); a controller image
    that builds libvirt-python or carries QEMU is the mistake the issue reported."""
    for name in ('ee-requirements.txt', 'ee-bindep.txt'):
        with open(os.path.join(REPO, 'meta', name), encoding='utf-8') as handle:
            lines = [line.split('#', 1)[0] for line in handle]
        text = ' '.join(lines).lower()
        for node_thing in ('libvirt', 'qemu', 'openvswitch', 'genisoimage', 'xorriso'):
            assert node_thing not in text, '%s names %s, a node package' % (name, node_thing)


def test_ee_bindep_has_an_ssh_client_and_build_deps_only_in_the_compile_profile():
    with open(os.path.join(REPO, 'meta', 'ee-bindep.txt'), encoding='utf-8') as handle:
        entries = [line.split('#', 1)[0].strip() for line in handle]
    entries = [entry for entry in entries if entry]
    assert 'openssh-clients [platform:rpm]' in entries and 'openssh-client [platform:dpkg]' in entries
    for entry in entries:
        name = entry.split()[0]
        if name == 'gcc' or name.endswith(('-devel', '-dev')):
            assert re.search(r'\[[^]]*\bcompile\b', entry), '%r is a build dependency outside [compile]' % entry


def test_ee_definition_is_version_3_with_paths_relative_to_itself():
    """ansible-builder resolves a definition's paths against the file's directory (the
    mistake of meta/execution-environment.yml used as one)."""
    ee = load_yaml('execution-environment.yml')
    assert ee['version'] == 3
    deps = ee['dependencies']
    for key in ('python', 'system'):
        assert os.path.isfile(os.path.join(REPO, deps[key])), (key, deps[key])
    assert deps['ansible_core'] == {'package_pip': 'ansible-core==%s' % PROJECT_PINS['ansible-core']}
    assert deps['ansible_runner'] == {'package_pip': 'ansible-runner==%s' % PROJECT_PINS['ansible-runner']}
    assert ee['images']['base_image']['name']


def test_collection_ee_metadata_paths_are_relative_to_the_collection_root():
    """ansible-builder's introspection joins these paths to the collection's directory."""
    meta = load_yaml('meta', 'execution-environment.yml')
    assert meta['version'] == 1
    definition = load_yaml('execution-environment.yml')['dependencies']
    for key in ('python', 'system'):
        assert os.path.isfile(os.path.join(REPO, meta['dependencies'][key])), (key, meta['dependencies'][key])
        assert meta['dependencies'][key] == definition[key]


# --- Galaxy ----------------------------------------------------------------------------------

def test_every_role_has_a_readme_and_galaxy_meta():
    assert ROLES
    for role in ROLES:
        with open(os.path.join(REPO, 'roles', role, 'README.md'), encoding='utf-8') as handle:
            readme = handle.read()
        assert readme.startswith('# gpuaas.slice.%s\n' % role)
        assert 'ansible-doc -t role gpuaas.slice.%s' % role in readme
        info = load_yaml('roles', role, 'meta', 'main.yml')['galaxy_info']
        spec = load_yaml('roles', role, 'meta', 'argument_specs.yml')['argument_specs']['main']
        assert info['description'] == spec['short_description'], role
        assert info['license'] == 'GPL-3.0-or-later'


def test_license_is_the_gpl3_text_galaxy_yml_names():
    galaxy = load_yaml('galaxy.yml')
    assert galaxy['license'] == ['GPL-3.0-or-later']
    with open(os.path.join(REPO, 'LICENSE'), encoding='utf-8') as handle:
        text = handle.read()
    assert 'GNU GENERAL PUBLIC LICENSE' in text and 'Version 3, 29 June 2007' in text


def test_galaxy_yml_names_addresses_that_exist():
    """No placeholder domain: the collection's page on Galaxy, its published home."""
    galaxy = load_yaml('galaxy.yml')
    page = 'https://galaxy.ansible.com/ui/repo/published/%s/%s/' % (galaxy['namespace'], galaxy['name'])
    assert galaxy['repository'] == galaxy['homepage'] == page
    assert galaxy['documentation'] == page + 'docs/'
    assert 'issues' not in galaxy
    with open(os.path.join(REPO, 'galaxy.yml'), encoding='utf-8') as handle:
        text = handle.read()
    assert '.invalid' not in text and 'example.' not in text


def test_build_ignore_leaves_out_what_needs_the_repository():
    ignored = set(load_yaml('galaxy.yml')['build_ignore'])
    for needs_checkout in ('tests', 'molecule', 'ansible.cfg', 'collections', 'controlplane', 'lab',
                           'hack', 'bench', 'execution-environment.yml', 'changelogs/fragments', 'inventory'):
        assert needs_checkout in ignored, needs_checkout
    for shipped in ('plugins', 'roles', 'playbooks', 'meta', 'docs', 'LICENSE', 'README.md'):
        assert shipped not in ignored, shipped


# --- the control plane's distribution --------------------------------------------------------

def _pyproject():
    with open(os.path.join(REPO, 'controlplane', 'pyproject.toml'), 'rb') as handle:
        return tomllib.load(handle)['project']


def _imported_top_levels():
    """Top-level modules the control plane's code imports, at module level or in functions."""
    names = set()
    src = os.path.join(REPO, 'controlplane', 'src')
    for root, _dirs, files in os.walk(src):
        for name in files:
            if name.endswith('.py'):
                with open(os.path.join(root, name), encoding='utf-8') as handle:
                    tree = ast.parse(handle.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names.update(alias.name.split('.')[0] for alias in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names.add(node.module.split('.')[0])
    return names


def test_controlplane_declares_every_distribution_it_imports():
    declared = {norm(Requirement(line).name) for line in _pyproject()['dependencies']}
    dists = importlib.metadata.packages_distributions()
    own = {'gpuaas_control', 'ansible_collections', '__future__'}
    missing = {}
    for module in sorted(_imported_top_levels() - own - set(sys.stdlib_module_names)):
        providers = {norm(dist) for dist in dists.get(module, [])}
        assert providers, 'controlplane imports %s, which no installed distribution provides' % module
        if not providers & declared:
            missing[module] = sorted(providers)
    assert not missing, 'controlplane/pyproject.toml does not declare: %s' % missing


def test_controlplane_ranges_admit_the_pinned_versions():
    project = _pyproject()
    requirements = list(project['dependencies'])
    assert list(project['optional-dependencies']) == ['postgresql']
    requirements += project['optional-dependencies']['postgresql']
    assert any(Requirement(line).name == 'psycopg' for line in project['optional-dependencies']['postgresql'])
    for line in requirements:
        req = Requirement(line)
        pinned = PROJECT_PINS.get(norm(req.name))
        assert pinned, '%s is not pinned in requirements.txt' % req.name
        assert req.specifier.contains(pinned), '%s: requirements.txt pins %s' % (line, pinned)
        assert req.specifier, '%s has no version range' % line


def test_a_range_that_excludes_the_pin_is_caught():
    """The check above can fail."""
    req = Requirement('SQLAlchemy>=2.2,<3')
    assert not req.specifier.contains(PROJECT_PINS['sqlalchemy'])


@pytest.mark.parametrize('module, dist', [('yaml', 'pyyaml'), ('swagger_ui_bundle', 'swagger-ui-bundle')])
def test_import_names_map_to_their_distributions(module, dist):
    """The import-to-distribution map the coverage test relies on."""
    assert dist in {norm(name) for name in importlib.metadata.packages_distributions()[module]}
