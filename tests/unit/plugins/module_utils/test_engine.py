# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one change engine: plans, check mode, failures by step, the Runner, run_module.

The Runner is tested with a real AnsibleModule running real commands (coreutils ``env``,
``sleep``, ``timeout``, ``false``): what it promises (argv lists, the C locale, a time
limit) is about the process it starts, which only a real process shows.
"""

from __future__ import annotations

import errno
import json
import time

import pytest

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl, _engine
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError
from tests.unit.module_runner import module_process


class Module:
    """What the engine reads of a module when it plans: check mode and diff."""

    def __init__(self, check_mode=False, diff=False):
        self.check_mode = check_mode
        self._diff = diff


def real_module():
    with module_process({}):
        return AnsibleModule(argument_spec={})


def recording_plan(log, check_mode=False, steps=3):
    plan = _engine.Plan(Module(check_mode))
    for number in range(1, steps + 1):
        plan.change('step %d' % number, lambda n=number: log.append(n), before=number - 1, after=number,
                    key='value %d' % number)
    return plan


# -- the plan --------------------------------------------------------------------------------


def test_a_plan_applies_its_steps_in_order_and_reports_what_it_did():
    log = []
    plan = recording_plan(log)
    plan.wait('the log to fill', lambda: len(log) == 3, lambda: 'it has %d entries' % len(log))
    assert plan and len(plan) == 4
    assert plan.actions() == ['step 1', 'step 2', 'step 3']          # a wait is not an action
    assert plan.execute() == ['step 1', 'step 2', 'step 3', 'wait for the log to fill']
    assert log == [1, 2, 3]


def test_check_mode_runs_nothing_but_reports_the_same_actions_and_diff():
    log = []
    checked = recording_plan(log, check_mode=True)
    assert checked.execute() == [] and log == []
    real = recording_plan(log)
    real.execute()
    assert checked.actions() == real.actions()
    assert checked.diff() == real.diff() == {
        'before': {'value 1': 0, 'value 2': 1, 'value 3': 2},
        'after': {'value 1': 1, 'value 2': 2, 'value 3': 3}}


def test_a_plan_of_checks_only_changes_nothing():
    plan = _engine.Plan(Module())
    plan.change('look', verify=lambda: None, mutates=False)
    assert not plan and plan.actions() == []
    assert plan.result(x=1) == {'x': 1, 'changed': False, 'actions': []}


def test_the_result_carries_the_diff_only_when_asked():
    plan = recording_plan([], steps=1)
    assert 'diff' not in plan.result()
    plan.module = Module(diff=True)
    assert plan.result()['diff'] == {'before': {'value 1': 0}, 'after': {'value 1': 1}}


@pytest.mark.parametrize('failure, expected', [
    (OSError(errno.EBUSY, 'Device or resource busy'), 'Device or resource busy (EBUSY)'),
    (GpuaasError('the kernel said no', rc=3), 'the kernel said no'),
])
def test_a_failing_step_names_itself_of_how_many_and_what_was_done(failure, expected):
    log = []
    plan = recording_plan(log)

    def fail():
        raise failure
    plan.steps.insert(2, _engine.Step('the bad one', fail))
    with pytest.raises(GpuaasError) as info:
        plan.execute()
    assert str(info.value) == 'step 3 of 4 failed: the bad one: %s' % expected
    assert info.value.details['failed_step'] == 'the bad one'
    assert info.value.details['completed_steps'] == ['step 1', 'step 2']
    assert log == [1, 2]                                   # nothing after the failure ran
    if isinstance(failure, GpuaasError):
        assert info.value.details['rc'] == 3               # the step's own details travel along


def test_a_step_whose_verify_sees_otherwise_did_not_take_effect():
    state = {'value': 'old'}
    plan = _engine.Plan(Module())
    plan.change('set the value', lambda: state.update(value='new'),
                verify=lambda: None if state['value'] == 'newer' else 'it reads %r' % state['value'])
    plan.change('never reached', lambda: state.update(value='x'))
    with pytest.raises(GpuaasError) as info:
        plan.execute()
    assert str(info.value) == "step 1 of 2 did not take effect: set the value: it reads 'new'"
    assert info.value.details == {'failed_step': 'set the value', 'completed_steps': []}
    assert state['value'] == 'new'


def test_a_wait_that_never_comes_true_times_out_naming_what_it_sees():
    plan = _engine.Plan(Module(), timeout=0.05)
    plan.wait('Godot', lambda: False, lambda: 'the road is empty')
    start = time.monotonic()
    with pytest.raises(GpuaasError) as info:
        plan.execute()
    assert time.monotonic() - start < 2
    assert str(info.value) == 'step 1 of 1 failed: wait for Godot: timed out after 0.05 s: the road is empty'


@pytest.mark.parametrize('timeout', [float('nan'), float('inf'), -1, 0, 1e-6, 3600.5, 1e308, True, None, '1'])
def test_no_wait_can_spin_forever(timeout):
    with pytest.raises(GpuaasError) as info:
        _engine.Plan(Module(), timeout=timeout)
    assert str(info.value).startswith('timeout must be a finite number from 0.001 to 3600, not ')
    with pytest.raises(GpuaasError):
        _engine.wait_until(lambda: False, timeout)


# -- the runner ------------------------------------------------------------------------------


def test_the_runner_runs_an_argv_list_in_the_c_locale(monkeypatch):
    monkeypatch.setenv('LANG', 'de_DE.UTF-8')
    monkeypatch.setenv('LC_ALL', 'de_DE.UTF-8')
    rc, out, _err = _engine.Runner(real_module())(['env'])
    assert rc == 0
    env = dict(line.split('=', 1) for line in out.splitlines() if '=' in line)
    assert env['LANG'] == 'C' and env['LC_ALL'] == 'C'


def test_the_runner_resolves_the_tool_once_and_never_uses_a_shell():
    runner = _engine.Runner(real_module())
    rc, out, _err = runner(['echo', 'a;b', '$(id)', '|', 'c'])
    assert out == 'a;b $(id) | c\n'
    assert runner.paths['echo'].startswith('/') and runner.argv(['echo'])[0] == runner.paths['echo']


def test_a_missing_tool_is_an_error_naming_it():
    with pytest.raises(GpuaasError) as info:
        _engine.Runner(real_module())(['gpuaas-no-such-tool', '--help'])
    assert str(info.value).startswith("the command 'gpuaas-no-such-tool' is not installed or not on the PATH")


def test_a_non_zero_status_is_an_error_with_the_command_and_its_output():
    runner = _engine.Runner(real_module())
    with pytest.raises(GpuaasError) as info:
        runner(['ls', '/gpuaas-nonexistent'])
    assert str(info.value).startswith('ls /gpuaas-nonexistent failed (exit 2): ')
    assert 'No such file or directory' in str(info.value)              # the C locale's words
    assert info.value.details == {'command': ['ls', '/gpuaas-nonexistent'], 'rc': 2}
    assert runner(['false'], check=False)[0] == 1                      # or judged by the caller


def test_a_command_that_hangs_is_ended_by_coreutils_timeout():
    runner = _engine.Runner(real_module())
    assert runner.argv(['sleep', '5'], timeout=0.2)[1:3] == ['--kill-after=5', '0.2s']
    start = time.monotonic()
    with pytest.raises(GpuaasError) as info:
        runner(['sleep', '30'], timeout=0.2)
    assert time.monotonic() - start < 5
    assert str(info.value) == 'sleep 30 did not finish within 0.2 s'
    assert runner(['true'], timeout=5)[0] == 0


@pytest.mark.parametrize('timeout', [float('nan'), float('inf'), -1, 0, 1e-6, 86401, 10 ** 9])
def test_a_time_limit_that_is_no_limit_is_refused(timeout):
    with pytest.raises(GpuaasError) as info:
        _engine.Runner(real_module())(['true'], timeout=timeout)
    assert str(info.value).startswith('timeout must be a finite number from 0.001 to 86400, not ')


def test_one_timeout_check_with_the_bound_each_caller_names():
    """Waits end within the hour, commands (a secure erase) within the day; one function checks both."""
    assert _engine.check_timeout(3600) == 3600 and _engine.check_timeout(0.001) == 0.001
    assert _engine.Runner(real_module()).argv(['true'], timeout=23 * 3600 + 60)[2] == '82860s'
    with pytest.raises(GpuaasError) as info:
        _engine.check_timeout(3601, 'lease_timeout')
    assert str(info.value) == 'lease_timeout must be a finite number from 0.001 to 3600, not 3601'
    assert not hasattr(devctl, 'check_timeout')


def test_a_command_step_runs_through_the_plans_runner():
    plan = _engine.Plan(real_module())
    seen = []
    plan.command('say hello', ['echo', 'hello'], check=lambda rc, out, err: seen.append((rc, out)))
    plan.command('fail', ['false'])
    assert plan.commands() == [['echo', 'hello'], ['false']]
    with pytest.raises(GpuaasError) as info:
        plan.execute()
    assert seen == [(0, 'hello\n')]
    assert str(info.value).startswith('step 2 of 2 failed: fail: false failed (exit 1)')


# -- run_module ------------------------------------------------------------------------------


def run(engine, capsys, **args):
    with module_process(args):
        with pytest.raises(SystemExit):
            _engine.run_module({'name': {'type': 'str', 'default': 'x'}}, engine)
    return json.loads(capsys.readouterr().out)


def test_run_module_reports_the_engines_result(capsys):
    def engine(module):
        plan = _engine.Plan(module)
        plan.change('rename to %s' % module.params['name'], before='x', after=module.params['name'],
                    key='name')
        plan.execute()
        return plan.result(name=module.params['name'])
    result = run(engine, capsys, name='y', _ansible_check_mode=True, _ansible_diff=True)
    assert result['changed'] is True and result['actions'] == ['rename to y']
    assert result['diff'] == {'before': {'name': 'x'}, 'after': {'name': 'y'}}


def test_run_module_turns_a_gpuaas_error_into_fail_json_with_its_details(capsys):
    def engine(module):
        raise GpuaasError('refusing: it is in use', reasons=['pid 7 holds it'], failed_step='s')
    result = run(engine, capsys)
    assert result['failed'] is True and result['msg'] == 'refusing: it is in use'
    assert result['reasons'] == ['pid 7 holds it'] and result['failed_step'] == 's'


class Work:
    """A module's work done by one object: ``run()`` warns, then returns or raises ``failure``."""

    def __init__(self, module, failure=None):
        self.module = module
        self.failure = failure
        self.warnings = []

    def run(self):
        self.warnings.append('%s looks odd' % self.module.params['slot_id'])
        if self.failure is not None:
            raise self.failure
        return {'changed': False, 'slot_id': self.module.params['slot_id']}


def run_object(engine, capsys):
    with module_process({'slot_id': 'n1-s0'}):
        with pytest.raises(SystemExit):
            _engine.run_module({'slot_id': {'type': 'str', 'required': True}}, engine)
    return json.loads(capsys.readouterr().out)


def test_engine_of_runs_the_object_and_passes_its_warnings_on(capsys):
    result = run_object(_engine.engine_of(Work), capsys)
    assert result['slot_id'] == 'n1-s0' and result['changed'] is False
    assert [warning['event']['msg'] for warning in result['warnings']] == ['n1-s0 looks odd']


def test_engine_of_passes_the_warnings_on_when_the_object_fails(capsys):
    result = run_object(_engine.engine_of(lambda module: Work(module, GpuaasError('it broke', step='x'))), capsys)
    assert result['failed'] is True and result['msg'] == 'it broke' and result['step'] == 'x'
    assert [warning['event']['msg'] for warning in result['warnings']] == ['n1-s0 looks odd']


def test_engine_of_names_the_slot_of_an_os_error_and_checks_what_it_requires_first(capsys):
    order = []

    def make(module):
        order.append('make')
        return Work(module, OSError(errno.ENOENT, 'No such file or directory'))
    result = run_object(_engine.engine_of(make, GpuaasError, lambda module: order.append('require')), capsys)
    assert order == ['require', 'make']
    assert result['failed'] is True
    assert result['msg'] == 'n1-s0: No such file or directory (ENOENT)'


def test_engine_of_without_an_error_class_lets_an_os_error_through():
    with module_process({'slot_id': 'n1-s0'}):
        with pytest.raises(OSError):
            _engine.run_module({'slot_id': {'type': 'str', 'required': True}},
                               _engine.engine_of(lambda module: Work(module, OSError(errno.EIO, 'I/O error'))))
