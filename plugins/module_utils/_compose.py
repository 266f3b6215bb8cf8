# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: several modules' engines run as the steps of one module.

A task is a process of its own (about 0.35 s on an idle node); the allocate and release
paths run their steps in one process instead (slot_provision, slot_release). Each step is
done by the engine of the module an operator runs for it alone, given that module's own
options, validated by that module's argument spec (defaults, types, choices, rules), so a
step behaves exactly as the module does. A step's engine builds and runs its own plan (check
mode and diff as in that module); :class:`Composite` records every step's actions and diff
in one plan, keyed by the step's name, and that plan is the module's result.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, number_option_problem, oserror, run_engine
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import converge
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError


class Part(object):
    """The module as one step's engine sees it: that step's own options, all else the module's."""

    def __init__(self, module, params):
        self._module = module
        self.params = params

    def __getattr__(self, name):
        return getattr(self._module, name)


class Composite:
    """One module made of steps; :meth:`step` runs one and records what it changed and its time.

    The module has the options ``slot_id``, ``allocation_id``, ``lease_dir`` and ``lock_timeout``.
    """

    def __init__(self, module, error):
        self.module = module
        self.p = module.params
        self.error = error
        self.plan = Plan(module, error=error)
        self.current = None
        self.seconds = {}

    def lease(self, **kwargs):
        """The slot's lease changed as ``kwargs`` say (``_lease.converge``); its result."""
        p = self.p
        return converge(self.module, p['lease_dir'], p['slot_id'], p['allocation_id'],
                        timeout=p['lock_timeout'], **kwargs)

    def part(self, what, spec, rules, params):
        """A :class:`Part` whose params are ``params`` checked by another module's spec and rules."""
        problem = number_option_problem(spec, params)
        if problem:
            raise self.error('%s: %s' % (what, problem))
        checked = ArgumentSpecValidator(spec, **rules).validate(params)
        if checked.error_messages:
            raise self.error('%s: %s' % (what, '; '.join(checked.error_messages)))
        self.module.no_log_values.update(checked._no_log_values)
        return Part(self.module, checked.validated_parameters)

    def step(self, name, make):
        """Run one step: ``make()`` gives its result, or an engine whose run() does."""
        self.current, start = name, time.monotonic()
        engine = make()
        if isinstance(engine, dict):
            result = engine
        else:
            result = run_engine(self.module, engine, '%s: ' % name)
        self.seconds[name] = round(self.seconds.get(name, 0) + time.monotonic() - start, 3)
        diff = result.get('diff') or {}
        for action in result.get('actions', result.get('changes')) or []:
            self.plan.change('%s: %s' % (name, action), key=name,
                             before=diff.get('before'), after=diff.get('after'))
        return result


def failure(exc):
    """(message, details) of a failed step's exception."""
    if isinstance(exc, GpuaasError):
        return str(exc), dict(exc.details)
    return oserror(exc), {}
