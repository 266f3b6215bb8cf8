# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the one change engine under every module that changes the host.

A module reads the current state, computes the wanted one and builds a :class:`Plan`: an
ordered list of steps, each saying what it will do (its ``what``, reported as an action in
check mode and after a real run), how to do it (``apply``) and, where the host can tell,
how to know it took effect (``verify``). A step may carry the ``before``/``after`` of
what it changes, which becomes the module's diff. ``changed`` is "the plan has a step
that changes something"; :meth:`Plan.execute` does nothing in check mode, so no module
branches on ``check_mode`` itself.

Commands run through one :class:`Runner`: the tool's path from ``get_bin_path`` (a missing
tool is an error naming it), an argument list (never a shell string), ``LANG=C``/``LC_ALL=C``
so output can be parsed, and an optional time limit.

Every error a module reports is a :class:`GpuaasError` (``contract.py``; the module's own
errors subclass it); its ``details`` go into the failed result. :func:`run_module` is the one ``main()``;
a module whose work is one object (its ``run()`` and ``warnings``) gets its engine from :func:`engine_of`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import decimal
import errno
import sys
import time
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError, check_number, has_control_chars, show

C_LOCALE = {'LANG': 'C', 'LC_ALL': 'C'}
POLL_INTERVAL = 0.02
# coreutils timeout(1) exits with this status when the command ran out of time.
TIMED_OUT = 124
# Timeouts in seconds (check_timeout). Below a millisecond coreutils timeout(1) may round the
# duration to 0, which means "no limit". A wait is for the kernel (a sysfs write answers in
# milliseconds, a probe in seconds), a daemon or a guest: longer than an hour is a typo or a
# hostile value.
MIN_TIMEOUT = 0.001
MAX_WAIT = 3600
MAX_COMMAND_TIME = 86400


def oserror(exc):
    """'Device or resource busy (EBUSY)': an OSError's text with its errno's name."""
    code = getattr(exc, 'errno', None)
    name = errno.errorcode.get(code, '') if code else ''
    text = getattr(exc, 'strerror', None) or str(exc)
    return '%s (%s)' % (text, name) if name else text


def seconds(value):
    return ('%g' % value) if isinstance(value, float) else str(value)


def check_timeout(value, what='timeout', maximum=MAX_WAIT):
    """Seconds: a finite number from MIN_TIMEOUT to ``maximum``, else ContractError naming the option.

    The one timeout check of the collection. A wait (:class:`Wait`, :func:`wait_until`, a
    module's ``timeout`` option) is bounded by :data:`MAX_WAIT`; a command run under
    coreutils ``timeout`` by :data:`MAX_COMMAND_TIME` (a secure erase may take most of a day).
    """
    return check_number(value, what, MIN_TIMEOUT, maximum)


def wait_until(predicate, timeout, interval=POLL_INTERVAL):
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed; its last value."""
    deadline = time.monotonic() + check_timeout(timeout)
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Runner:
    """The one way a module runs a command.

    ``runner(['ovs-vsctl', 'show'])`` resolves ``ovs-vsctl`` with ``get_bin_path`` (once),
    runs the argument list in the C locale and returns ``(rc, out, err)``; with ``check``
    (the default) a non-zero status raises ``error`` naming the command and its output.
    ``timeout`` (seconds) runs the command under coreutils ``timeout``.
    """

    def __init__(self, module, error=GpuaasError):
        self.module = module
        self.error = error
        self.paths = {}

    def path(self, name):
        if name.startswith('/'):
            return name
        if name not in self.paths:
            found = self.module.get_bin_path(name)
            if not found:
                raise self.error("the command '%s' is not installed or not on the PATH, so the module "
                                 'cannot go on; it changed nothing it had not reported' % name)
            self.paths[name] = found
        return self.paths[name]

    def argv(self, args, timeout=None):
        args = [self.path(args[0])] + [str(arg) for arg in args[1:]]
        if timeout is not None:
            args = [self.path('timeout'), '--kill-after=5', '%gs' % check_timeout(timeout, 'timeout', MAX_COMMAND_TIME)] + args
        return args

    def __call__(self, args, check=True, data=None, timeout=None, binary=False, **run_kwargs):
        """``run_kwargs`` go to ``run_command`` as they are (``before_communicate_callback``)."""
        argv = self.argv(args, timeout)
        rc, out, err = self.module.run_command(argv, environ_update=dict(C_LOCALE), data=data,
                                               binary_data=binary, **run_kwargs)
        if timeout is not None and rc == TIMED_OUT:
            raise self.error('%s did not finish within %s s' % (' '.join(args), seconds(timeout)),
                             command=list(args))
        if check and rc != 0:
            text = (err or out)
            text = text.decode('utf-8', 'replace') if isinstance(text, bytes) else text
            raise self.error('%s failed (exit %d): %s' % (' '.join(args), rc, text.strip()),
                             command=list(args), rc=rc)
        return rc, out, err


class Step:
    """One change: ``what`` it does, how to ``apply`` it, how to ``verify`` it took effect.

    ``apply`` and ``verify`` are callables without arguments; ``verify`` returns None when the
    host shows the change, else what it shows instead. ``before``/``after`` (any JSON value)
    are the diff of ``key`` (default: ``what``). A step with ``mutates=False`` is a wait or a
    check: it runs, but is not an action and does not make the module changed.
    """

    def __init__(self, what, apply=None, verify=None, before=None, after=None, key=None,
                 mutates=True):
        self.what = what
        self._apply = apply
        self._verify = verify
        self.before = before
        self.after = after
        self.key = key or what
        self.mutates = mutates

    def __str__(self):
        return self.what

    def apply(self, plan):
        if self._apply is not None:
            self._apply()

    def verify(self, plan):
        return self._verify() if self._verify is not None else None


class Command(Step):
    """Run an argument list through the plan's runner; ``check(rc, out, err)`` may judge it."""

    def __init__(self, what, argv, check=None, timeout=None, **kwargs):
        super(Command, self).__init__(what, **kwargs)
        self.argv = list(argv)
        self.check = check
        self.timeout = timeout

    def apply(self, plan):
        rc, out, err = plan.runner(self.argv, check=self.check is None, timeout=self.timeout)
        if self.check is not None:
            self.check(rc, out, err)


class Wait(Step):
    """Wait until ``predicate()`` is true; ``failure()`` says what the host shows instead."""

    def __init__(self, what, predicate, failure, timeout=None):
        super(Wait, self).__init__('wait for ' + what, mutates=False)
        self.predicate = predicate
        self.failure = failure
        self.timeout = timeout

    def apply(self, plan):
        timeout = plan.timeout if self.timeout is None else self.timeout
        if not wait_until(self.predicate, timeout):
            raise plan.error('timed out after %s s: %s' % (seconds(timeout), self.failure()))


class Plan:
    """The ordered steps a module derived from the wanted and the current state."""

    def __init__(self, module, runner=None, error=GpuaasError, timeout=10.0):
        self.module = module
        self.error = error
        self.runner = runner or Runner(module, error)
        self.timeout = check_timeout(timeout)
        self.steps = []

    def __bool__(self):
        return any(step.mutates for step in self.steps)

    __nonzero__ = __bool__

    def __len__(self):
        return len(self.steps)

    def add(self, step):
        self.steps.append(step)
        return step

    def change(self, what, apply=None, **kwargs):
        return self.add(Step(what, apply, **kwargs))

    def command(self, what, argv, **kwargs):
        return self.add(Command(what, argv, **kwargs))

    def wait(self, what, predicate, failure, timeout=None):
        return self.add(Wait(what, predicate, failure, timeout))

    def actions(self):
        """What the plan changes, in order, as the module reports it."""
        return [str(step) for step in self.steps if step.mutates]

    def commands(self):
        return [list(step.argv) for step in self.steps if isinstance(step, Command)]

    def diff(self):
        before, after = {}, {}
        for step in self.steps:
            if step.mutates and (step.before is not None or step.after is not None):
                before[step.key] = step.before
                after[step.key] = step.after
        return {'before': before, 'after': after}

    def execute(self):
        """Apply and verify every step, unless in check mode; the steps done.

        A failure raises the plan's error naming the step, of how many, and what was done.
        """
        done = []
        if self.module is not None and self.module.check_mode:
            return done
        total = len(self.steps)
        for number, step in enumerate(self.steps, 1):
            try:
                step.apply(self)
                problem = step.verify(self)
            except (IOError, OSError) as exc:
                raise self.error('step %d of %d failed: %s: %s' % (number, total, step, oserror(exc)),
                                 failed_step=str(step), completed_steps=done)
            except GpuaasError as exc:
                details = dict(exc.details)
                details.update(failed_step=str(step), completed_steps=done)
                raise self.error('step %d of %d failed: %s: %s' % (number, total, step, exc), **details)
            if problem:
                raise self.error('step %d of %d did not take effect: %s: %s' % (number, total, step, problem),
                                 failed_step=str(step), completed_steps=done)
            done.append(str(step))
        return done

    def result(self, **fields):
        """The module's result: ``changed``, ``actions`` and, with --diff, the diff."""
        result = dict(fields, changed=bool(self), actions=self.actions())
        if self.module is not None and self.module._diff:
            result['diff'] = self.diff()
        return result


def nul_option(value, where):
    """The first place in an option's value that holds a NUL character ('argv[1]'), or None."""
    if isinstance(value, str):
        return where if '\0' in value else None
    if isinstance(value, dict):
        if any('\0' in str(key) for key in value):
            return where
        items = [('%s.%s' % (where, key if isinstance(key, str) and not has_control_chars(key) else show(key)), item)
                 for key, item in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [('%s[%d]' % (where, index), item) for index, item in enumerate(value)]
    else:
        return None
    for place, item in items:
        found = nul_option(item, place)
        if found:
            return found
    return None


# The largest magnitude a string or float given for an int option may hold (every integer up to
# it is exact as a float; no option of the collection comes near it).
NUMBER_BOUND = 2 ** 53
NUMBER_TYPES = ('int', 'float')


def number_problem(value, kind):
    """Why ansible-core must not convert ``value`` given for a ``kind`` ('int'/'float') option, or None.

    Only what its conversion cannot take: for an int option, a string or float that is not a
    finite number within NUMBER_BOUND (check_type_int raises OverflowError on 'inf' and builds
    a billion-digit integer from '1e999999999'); for a float option, an int beyond a float's
    range (float() raises OverflowError). Anything else goes on to ansible-core, which converts
    it or refuses it by name, and then to the module's own range check, which names the range.
    """
    if isinstance(value, bool):
        return None
    if kind == 'float':
        if isinstance(value, int) and abs(value) > sys.float_info.max:
            return 'must be a number a float can hold (at most %g), not %s' % (sys.float_info.max, show(value))
        return None
    if not isinstance(value, (str, float)):
        return None
    try:
        number = decimal.Decimal(value)
    except decimal.InvalidOperation:
        return None
    # copy_abs(): abs() would round to the context and raise decimal.Overflow on '1e999999999'.
    if number.is_finite() and number.copy_abs() <= NUMBER_BOUND:
        return None
    return 'must be a whole number of at most 2**53 either side of 0, not %s' % show(value)


def number_option_problem(argument_spec, params):
    """The first int/float option (or element of a list of them) whose value :func:`number_problem` refuses."""
    for name, spec in argument_spec.items():
        kind = spec.get('type', 'str')
        if kind == 'list':
            kind = spec.get('elements')
        if kind not in NUMBER_TYPES:
            continue
        for given in [name] + list(spec.get('aliases') or []):
            value = params.get(given)
            if spec.get('type') == 'list':
                # ansible-core splits a string given for a list at commas.
                items = value.split(',') if isinstance(value, str) else value if isinstance(value, list) else []
                places = [('%s[%d]' % (given, index), item) for index, item in enumerate(items)]
            else:
                places = [(given, value)]
            for place, item in places:
                problem = number_problem(item, kind)
                if problem:
                    return '%s %s; nothing was changed' % (place, problem)
    return None


class _Module(AnsibleModule):
    """AnsibleModule that refuses, naming the option, what ansible-core's own checks would trip on.

    A NUL character in any option (the invocation log fails on it) and a number ansible-core's
    conversion of an int/float option raises on or runs away with, before it converts it.
    """

    def _load_params(self):
        super(_Module, self)._load_params()
        problem = number_option_problem(self.argument_spec, self.params)
        if problem:
            # Validation has not run yet: keep the values of no_log options out of the result.
            self.no_log_values.update(str(self.params[given]) for name, spec in self.argument_spec.items()
                                      if spec.get('no_log') for given in [name] + list(spec.get('aliases') or [])
                                      if self.params.get(given) not in (None, ''))
            self.fail_json(msg=problem)

    def _log_invocation(self):
        for name in sorted(self.params):
            where = nul_option(self.params[name], name)
            if where:
                self.fail_json(msg='%s holds a NUL character, which no path, name or command line can '
                                   'carry; nothing was changed' % where)
        super(_Module, self)._log_invocation()


def run_engine(module, engine, prefix=''):
    """``engine.run()``: the result of a module's work done by one object; the ``warnings`` it
    collected (where it has them) go to ``module.warn``, ``prefix`` first, also when it fails."""
    try:
        return engine.run()
    finally:
        for warning in getattr(engine, 'warnings', ()):
            module.warn(prefix + warning)


def engine_of(make, error=None, require=None):
    """:func:`run_module`'s engine for a module whose work is one object: ``make(module)`` (a
    class, say) builds it and :func:`run_engine` runs it.

    ``require(module)`` runs first (``_libvirt.require_libvirt``: fail when a library is missing).
    With ``error``, an OSError the run lets through fails the module as
    ``error('<slot_id>: <what the OS said>')``.
    """
    def engine(module):
        if require is not None:
            require(module)
        target = make(module)
        try:
            return run_engine(module, target)
        except (IOError, OSError) as exc:
            if error is None:
                raise
            raise error('%s: %s' % (module.params['slot_id'], oserror(exc)))
    return engine


def run_module(argument_spec, engine, **module_kwargs):
    """The one ``main()``: the module from its spec, ``engine(module)`` -> result, reported.

    ``engine`` returns the result dict (usually ``plan.result(...)``) and raises
    :class:`GpuaasError` for every known failure, which becomes ``fail_json`` with the
    error's details. Every module supports check mode.
    """
    module = _Module(argument_spec=argument_spec, supports_check_mode=True, **module_kwargs)
    try:
        result = engine(module)
    except GpuaasError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc(), **exc.details)
    module.exit_json(**result)
