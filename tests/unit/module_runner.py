# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's main() in-process and return what it passed to exit_json/fail_json."""

from __future__ import annotations

import contextlib
import json

import pytest

from ansible.module_utils import _internal
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args


class ModuleResult(dict):
    """The module's JSON result; ``failed`` is True when it called fail_json."""


@contextlib.contextmanager
def module_process(args):
    """What a module's own process has: its arguments, no controller code loaded and no warning
    or deprecation yet. Once a test imported Ansible's controller code (``ansible._internal``
    sets ``is_controller``), a module's warnings would go to the controller's display instead
    of its result; and what code run outside a module warned would land in the next result."""
    controller, _internal.is_controller = _internal.is_controller, False
    warnings._global_warnings.clear()   # pylint: disable=protected-access
    warnings._global_deprecations.clear()   # pylint: disable=protected-access
    try:
        with patch_module_args(args):
            yield
    finally:
        _internal.is_controller = controller


def run_module(module, args, check_mode=False, diff=False, capsys=None):
    """Call ``module.main()`` with ``args``; ``capsys`` is pytest's fixture (required)."""
    args = dict(args)
    if check_mode:
        args['_ansible_check_mode'] = True
    if diff:
        args['_ansible_diff'] = True
    with module_process(args):
        with pytest.raises(SystemExit):
            module.main()
    out = capsys.readouterr().out
    return ModuleResult(json.loads(out))
