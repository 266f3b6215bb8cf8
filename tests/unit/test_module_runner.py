# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The in-process module runner runs a module as Ansible does, in a process of its own."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

from tests.unit.module_runner import module_process, run_module


class Warns:
    """A module that warns, then exits."""

    @staticmethod
    def main():
        module = AnsibleModule(argument_spec={'name': {'type': 'str'}})
        module.warn('%s looks odd' % module.params['name'])
        module.exit_json(changed=False)


def test_a_modules_warnings_reach_its_result_after_controller_code_was_imported(capsys):
    """Once anything in the test process imported Ansible's controller code (the worker's
    collection check reads Ansible's configuration), module.warn would go to the controller's
    display instead of the result, as it never does in a module's own process."""
    import ansible.config.manager  # noqa: F401  (controller code)
    from ansible.module_utils import _internal
    assert _internal.is_controller
    result = run_module(Warns, {'name': 'n1-s0'}, capsys=capsys)
    assert [warning['event']['msg'] for warning in result['warnings']] == ['n1-s0 looks odd']
    assert _internal.is_controller   # put back for the controller code of the other tests


def test_a_modules_result_holds_only_its_own_warnings(capsys):
    """What code run outside a module warned (an engine tested on its own) is not the next
    module's: a module's own process starts with none."""
    from ansible.module_utils.common import warnings
    with module_process({}):
        warnings.warn('left by code that ran outside a module')
        warnings.deprecate('left too', version='1.0.0', collection_name='gpuaas.slice')
    result = run_module(Warns, {'name': 'n1-s0'}, capsys=capsys)
    assert [warning['event']['msg'] for warning in result['warnings']] == ['n1-s0 looks odd']
    assert 'deprecations' not in result
