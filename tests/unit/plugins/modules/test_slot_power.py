# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_power's rules: the lease it needs, what each state does to a running or shut-off domain,
check mode, diff, idempotence, and how a stop or reboot ends when the guest ignores ACPI.

libvirt is modelled by a domain that answers the calls slot_power makes the way libvirt's qemu
driver does (shutdown: a power-button press the guest may ignore; reboot: a press followed by
a reset event); the real daemon and guest run in tests/functional/vm/test_slot_power.py.
"""

from __future__ import annotations

import functools
import json

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _domain, _libvirt, _power
from ansible_collections.gpuaas.slice.plugins.modules import slot_power
from tests.unit.module_runner import run_module

pytestmark = pytest.mark.skipif(not _libvirt.HAS_LIBVIRT, reason='needs libvirt-python')

SLOT = 'gpu-node-01-s3'
ALLOC = 'alloc-7f3a'


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Domain:
    """A defined domain: whether it runs, whether its guest answers the ACPI power button."""

    def __init__(self, clock, active=True, acpi=True, answer_after=1.0):
        self.clock, self.active, self.acpi, self.answer_after = clock, active, acpi, answer_after
        self.calls = []
        self.pressed_at = None
        self.reboot_asked_at = None
        self.xml = _domain.build_xml(_domain.DomainSpec(slot_id=SLOT, memory_mib=1024, cpulist='0-1'))

    def name(self):
        return 'gpuaas-' + SLOT

    def isActive(self):  # noqa: N802 (libvirt's name)
        if self.acpi and self.pressed_at is not None and self.clock() - self.pressed_at >= self.answer_after:
            self.active, self.pressed_at = False, None
        return self.active

    def shutdown(self):
        self.calls.append('shutdown')
        if self.pressed_at is None:
            self.pressed_at = self.clock()

    def destroy(self):
        self.calls.append('destroy')
        self.active = False

    def create(self):
        self.calls.append('create')
        self.active = True

    def reboot(self, flags):
        self.calls.append('reboot')
        if self.reboot_asked_at is None:
            self.reboot_asked_at = self.clock()

    def XMLDesc(self, flags):  # noqa: N802
        return self.xml

    def UUIDString(self):  # noqa: N802
        return '4bec8473-e2b4-43ac-b837-079237ce17d3'


class Connection(_libvirt.Connection):
    """_libvirt.Connection over the model: the same calls, no daemon."""

    def __init__(self, domain, clock):
        super().__init__('test:///model')
        self.domain, self.clock, self.reset_callbacks = domain, clock, []

    def __call__(self, uri, events=False):
        self.events = events
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def call(self, what, func, *args):
        return func(*args)

    def lookup(self, name):
        return self.domain if self.domain is not None and name == self.domain.name() else None

    def on_reboot(self, domain, callback):
        assert self.events, 'reset events need a connection opened with events=True'
        self.reset_callbacks.append(callback)

    def pump(self):
        self.clock.sleep(0.1)
        asked = self.domain.reboot_asked_at
        if self.domain.acpi and asked is not None and self.clock() - asked >= self.domain.answer_after:
            self.domain.reboot_asked_at = None
            for callback in self.reset_callbacks:
                callback()


@pytest.fixture
def node(tmp_path, monkeypatch, capsys):
    """Run slot_power against the model: node(domain=..., **args) -> result."""
    lease_dir = tmp_path / 'leases'
    lease_dir.mkdir(mode=0o700)
    clock = Clock()

    def lease(phase='running', holder=ALLOC):
        (lease_dir / (SLOT + '.json')).write_text(json.dumps({
            'slot_id': SLOT, 'allocation_id': holder, 'phase': phase, 'data': {},
            'created_at': '2026-12-01T10:00:00Z', 'updated_at': '2026-12-01T10:00:00Z'}))

    def call(domain, check_mode=False, diff=False, **args):
        conn = Connection(domain, clock)
        monkeypatch.setattr(slot_power, 'SlotPower', functools.partial(
            _power.SlotPower, connection=conn, clock=clock, sleep=clock.sleep))
        params = dict(slot_id=SLOT, allocation_id=ALLOC, lease_dir=str(lease_dir), stop_timeout=30,
                      sysfs_root=str(tmp_path / 'sys'))
        params.update(args)
        return run_module(slot_power, params, check_mode=check_mode, diff=diff, capsys=capsys)

    def phase():
        return json.loads((lease_dir / (SLOT + '.json')).read_text())['phase']

    call.lease, call.phase, call.clock = lease, phase, clock
    lease()
    return call


def test_stop_shuts_down_by_acpi_and_records_it_in_the_lease(node):
    domain = Domain(node.clock)
    check = node(domain, state='stopped', check_mode=True, diff=True)
    assert check['changed'] and check['actions'] == ['shutdown', 'record stopped in the lease']
    assert check['diff'] == {'before': {'domain_state': 'running', 'lease_phase': 'running'},
                             'after': {'domain_state': 'shut off', 'lease_phase': 'stopped'}}
    assert domain.calls == [] and domain.active and node.phase() == 'running'

    stopped = node(domain, state='stopped')
    assert stopped['changed'] and stopped['shutdown'] == 'acpi' and stopped['domain_state'] == 'shut off'
    assert domain.calls == ['shutdown'] and not domain.active and node.phase() == 'stopped'
    assert stopped['timings']['shutdown_s'] >= 1.0

    again = node(domain, state='stopped')
    assert again['changed'] is False and again['actions'] == [] and again['shutdown'] is None
    assert domain.calls == ['shutdown']


def test_a_guest_that_ignores_acpi_is_powered_off_after_the_timeout(node):
    domain = Domain(node.clock, acpi=False)
    stopped = node(domain, state='stopped', stop_timeout=12)
    assert stopped['shutdown'] == 'forced' and not domain.active
    # Pressed again every 5 s while it waits, then destroyed: never redefined.
    assert domain.calls == ['shutdown', 'shutdown', 'shutdown', 'destroy']
    assert any('did not answer the ACPI power button within 12 s' in str(w) for w in stopped['warnings'])


def test_start_runs_the_same_definition_and_records_running(node):
    domain = Domain(node.clock, active=False)
    node.lease('stopped')
    started = node(domain, state='running', diff=True)
    assert started['actions'] == ['start', 'record running in the lease']
    assert domain.calls == ['create'] and node.phase() == 'running'
    assert started['diff']['after'] == {'domain_state': 'running', 'lease_phase': 'running'}
    assert node(domain, state='running')['changed'] is False


def test_a_guest_that_powered_itself_off_is_recorded_stopped_without_a_shutdown(node):
    domain = Domain(node.clock, active=False)
    stopped = node(domain, state='stopped')
    assert stopped['actions'] == ['record stopped in the lease'] and domain.calls == []
    assert node.phase() == 'stopped'


def test_reboot_by_acpi_is_confirmed_by_the_reset_event(node):
    domain = Domain(node.clock, answer_after=2.0)
    check = node(domain, state='rebooted', check_mode=True)
    assert check['changed'] and check['actions'] == ['reboot'] and domain.calls == []
    rebooted = node(domain, state='rebooted')
    assert rebooted['reboot'] == 'acpi' and rebooted['changed'] and domain.active
    assert domain.calls == ['reboot'] and 2.0 <= rebooted['timings']['reboot_s'] < 3
    assert node.phase() == 'running'


def test_a_guest_that_ignores_the_acpi_reboot_is_powered_off_and_started(node):
    domain = Domain(node.clock, acpi=False)
    rebooted = node(domain, state='rebooted', stop_timeout=7)
    assert rebooted['reboot'] == 'forced' and domain.active
    assert domain.calls == ['reboot', 'reboot', 'destroy', 'create']
    assert any('did not answer the ACPI reboot within 7 s' in str(w) for w in rebooted['warnings'])


def test_reboot_of_a_stopped_vm_is_refused(node):
    node.lease('stopped')
    domain = Domain(node.clock, active=False)
    result = node(domain, state='rebooted')
    assert result['failed'] and 'is shut off (allocation alloc-7f3a is stopped): start it' in result['msg']
    assert domain.calls == []


@pytest.mark.parametrize('setup,args,message', [
    (lambda n: (n.lease_file().unlink()), {}, 'slot gpu-node-01-s3 has no lease'),
    (lambda n: n.lease(holder='alloc-other'), {},
     'slot gpu-node-01-s3 is held by allocation alloc-other, not alloc-7f3a: its VM is not touched'),
    (lambda n: n.lease('wiping'), {}, 'allocation alloc-7f3a on slot gpu-node-01-s3 is in phase wiping: '
     'only a running or stopped allocation is stopped, started or rebooted'),
    (lambda n: n.lease('provisioning'), {}, 'is in phase provisioning'),
    (None, {'slot_id': '../etc-s0'}, 'slot id'),
    (None, {'allocation_id': 'a b'}, 'allocation id'),
    (None, {'stop_timeout': 0}, 'stop_timeout must be'),
    (None, {'stop_timeout': 3601}, 'stop_timeout must be'),
])
def test_refusals_change_nothing(node, tmp_path, setup, args, message):
    node.lease_file = lambda: tmp_path / 'leases' / (SLOT + '.json')
    if setup:
        setup(node)
    domain = Domain(node.clock)
    result = node(domain, **dict(dict(state='stopped'), **args))
    assert result['failed'] and message in result['msg'], result['msg']
    assert domain.calls == [] and domain.active


def test_a_damaged_lease_is_refused(node, tmp_path):
    (tmp_path / 'leases' / (SLOT + '.json')).write_text('{not json')
    domain = Domain(node.clock)
    result = node(domain, state='stopped')
    assert result['failed'] and 'treated as held' in result['msg'] and domain.calls == []


def test_a_slot_without_its_domain_is_an_error(node):
    result = node(None, state='running')
    assert result['failed'] and 'slot gpu-node-01-s3 has no domain gpuaas-gpu-node-01-s3 although allocation ' \
        'alloc-7f3a holds it (phase running)' in result['msg']


def test_start_is_refused_when_the_devices_left_vfio_or_the_tap_is_gone(node, tmp_path):
    from tests.sysfs.builder import SysfsBuilder
    SysfsBuilder(str(tmp_path / 'sys'), iommu=False)
    node.lease('stopped')
    domain = Domain(node.clock, active=False)
    domain.xml = _domain.build_xml(_domain.DomainSpec(
        slot_id=SLOT, memory_mib=1024, cpulist='0-1', hostdevs=[('gpu', '0000:18:00.0')], bridge_type='ethernet'))
    check = node(domain, state='running', check_mode=True)
    assert check['actions'] == ['start', 'record running in the lease']
    assert any('no IOMMU groups' in str(w) for w in check['warnings'])
    assert any('tap gs3-' in str(w) and 'does not exist on this host' in str(w) for w in check['warnings'])
    result = node(domain, state='running')
    assert result['failed'] and 'gpuaas-gpu-node-01-s3 cannot start' in result['msg']
    assert domain.calls == [] and node.phase() == 'stopped'
