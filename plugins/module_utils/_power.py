# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the power of an allocated slot's VM, behind gpuaas.slice.slot_power.

Stop, start and reboot act on the domain an allocation already runs in, never on its
definition: the domain is looked up, not defined, so a stopped slot keeps its devices on
vfio-pci, its domain (UUID, NVRAM), its network, disk and lease. The slot's lease must be held
by the allocation named, in phase ``running`` or ``stopped``; the lease records the power
state (``stopped`` after a stop, ``running`` after a start).

A stop presses the ACPI power button (again every few seconds) and powers the VM off when
it is still running after ``stop_timeout`` (``shutdown``: ``acpi`` or ``forced``). A reboot
asks libvirt for an ACPI reboot (the power button, then a reset instead of a power-off) and
waits for the domain's reset event; a guest that does not answer within ``stop_timeout``
(no ACPI handler: a guest still booting, or one that ignores the button) is powered off and
started again (``reboot``: ``acpi`` or ``forced``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.gpuaas.slice.plugins.module_utils._domain import domain_facts
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, Step, check_timeout
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import (
    POWER_PHASES, STOPPED, LeaseError, converge, lease_path, read_lease)
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import LIBVIRT_ARGS, Connection
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import Sysfs
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_vm import (
    SHUTDOWN_REPEAT_S, acpi_shutdown, hostdev_problems)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ALLOCATION_ID, GpuaasError, Slot

STATES = ('running', 'stopped', 'rebooted')
MAX_STOP_TIMEOUT = 3600
RUNNING, SHUT_OFF = 'running', 'shut off'


def argument_spec():
    spec = dict(LIBVIRT_ARGS)
    spec.update(
        slot_id=dict(type='str', required=True),
        allocation_id=dict(type='str', required=True),
        state=dict(type='str', choices=list(STATES), required=True),
        lease_dir=dict(type='path', default='/var/lib/gpuaas/node-scheduler/leases'),
        stop_timeout=dict(type='int', default=120),
        sysfs_root=dict(type='path', default='/sys'),
    )
    return spec


class SlotPowerError(GpuaasError):
    """The slot's VM cannot be brought to the wanted power state; the message says why."""


def start_problems(sysfs, xml):
    """What would make a start of the defined domain fail or go wrong (empty when nothing):
    its passed-through devices not on vfio-pci or their IOMMU groups split, its tap gone."""
    facts = domain_facts(xml)
    problems = []
    addresses = [item.split(' ')[0] for item in facts['hostdevs']]
    if addresses:
        problems.extend(hostdev_problems(sysfs, addresses))
    for iface in facts['interfaces']:
        if iface['type'] == 'ethernet' and iface['target'] and not sysfs.exists('class/net/%s' % iface['target']):
            problems.append('tap %s does not exist on this host: the slot network is gone (run allocate again '
                            'with the allocation id, which puts it back)' % iface['target'])
    return problems


class SlotPower(object):
    """Bring one allocated slot's VM to ``params['state']``; :meth:`run` returns the result."""

    def __init__(self, module, connection=Connection, clock=time.monotonic, sleep=time.sleep):
        self.module = module
        self.params = module.params
        self.connection = connection
        self.clock = clock
        self.sleep = sleep
        self.slot = Slot.parse(self.params['slot_id'])
        self.name = self.slot.domain
        ALLOCATION_ID.check(self.params['allocation_id'], 'allocation_id')
        self.timeout = check_timeout(self.params['stop_timeout'], 'stop_timeout', MAX_STOP_TIMEOUT)
        self.conn = self.domain = None
        self.how = {'shutdown': None, 'reboot': None}
        self.timings = {}
        self.warnings = []

    def held_lease(self):
        """The slot's lease, held by the allocation and running or stopped; else SlotPowerError."""
        p = self.params
        path = lease_path(p['lease_dir'], self.slot.slot_id)
        try:
            lease = read_lease(path)
        except LeaseError as exc:
            raise SlotPowerError(str(exc))
        if lease is None:
            raise SlotPowerError('slot %s has no lease (%s): it is not allocated, so there is no VM of '
                                 'allocation %s to stop, start or reboot' % (self.slot.slot_id, path, p['allocation_id']))
        if lease['allocation_id'] != p['allocation_id']:
            raise SlotPowerError('slot %s is held by allocation %s, not %s: its VM is not touched'
                                 % (self.slot.slot_id, lease['allocation_id'], p['allocation_id']))
        if lease['phase'] not in POWER_PHASES:
            raise SlotPowerError('allocation %s on slot %s is in phase %s: only a running or stopped allocation '
                                 'is stopped, started or rebooted' % (p['allocation_id'], self.slot.slot_id, lease['phase']))
        return lease

    def plan(self, lease, active):
        state = self.params['state']
        plan = Plan(self.module, error=SlotPowerError)
        after = RUNNING if state != 'stopped' else SHUT_OFF
        before = RUNNING if active else SHUT_OFF
        if state == 'stopped' and active:
            plan.change('shutdown', self.stop, before=before, after=after, key='domain_state',
                        verify=lambda: self.conn.is_active(self.domain) and 'it still runs')
        elif state == 'running' and not active:
            problems = start_problems(Sysfs(self.params['sysfs_root']), self.conn.inactive_xml(self.domain))
            plan.add(Step('check that %s can start' % self.name, mutates=False, apply=lambda: self.refuse(problems)))
            for problem in problems:
                self.warnings.append('a start would now fail: %s' % problem)
            plan.change('start', self.start, before=before, after=after, key='domain_state',
                        verify=lambda: not self.conn.is_active(self.domain) and 'it is not running')
        elif state == 'rebooted':
            if not active:
                raise SlotPowerError('%s is shut off (allocation %s is %s): start it (state=running); a reboot '
                                     'needs a running VM' % (self.name, self.params['allocation_id'], lease['phase']))
            plan.change('reboot', self.reboot, before=RUNNING, after=RUNNING, key='domain_state',
                        verify=lambda: not self.conn.is_active(self.domain) and 'it is not running after the reboot')
        phase = STOPPED if state == 'stopped' else 'running'
        if lease['phase'] != phase:
            plan.change('record %s in the lease' % phase, lambda: self.record(phase), before=lease['phase'],
                        after=phase, key='lease_phase')
        return plan

    def refuse(self, problems):
        if problems:
            raise SlotPowerError('%s cannot start:\n- %s' % (self.name, '\n- '.join(problems)))

    def record(self, phase):
        p = self.params
        converge(self.module, p['lease_dir'], self.slot.slot_id, p['allocation_id'], phase=phase)

    def _timed(self, key, func, *args):
        started = self.clock()
        value = func(*args)
        self.timings[key] = round(self.clock() - started, 3)
        return value

    def stop(self):
        forced = self._timed('shutdown_s', acpi_shutdown, self.conn, self.domain, self.name, self.timeout,
                             self.clock, self.sleep)
        self.how['shutdown'] = 'forced' if forced else 'acpi'
        if forced:
            self.warnings.append('%s did not answer the ACPI power button within %d s: it was powered off'
                                 % (self.name, self.timeout))

    def start(self):
        self._timed('start_s', self.conn.call, 'starting %s' % self.name, self.domain.create)

    def reboot(self):
        """An ACPI reboot, confirmed by the domain's reset event; else powered off and started."""
        resets = []
        self.conn.on_reboot(self.domain, lambda: resets.append(self.clock()))
        started = self.clock()
        deadline = started + self.timeout
        asked = None
        while not resets and self.clock() < deadline:
            if asked is None or self.clock() - asked >= SHUTDOWN_REPEAT_S:
                self.conn.reboot(self.domain)
                asked = self.clock()
            self.conn.pump()
        if resets:
            self.how['reboot'] = 'acpi'
            self.timings['reboot_s'] = round(resets[0] - started, 3)
            return
        self.warnings.append('%s did not answer the ACPI reboot within %d s: it was powered off and started '
                             'again' % (self.name, self.timeout))
        if self.conn.is_active(self.domain):
            self.conn.call('powering off %s' % self.name, self.domain.destroy)
        self.start()
        self.how['reboot'] = 'forced'
        self.timings['reboot_s'] = round(self.clock() - started, 3)

    def run(self):
        lease = self.held_lease()
        with self.connection(self.params['uri'], events=self.params['state'] == 'rebooted') as self.conn:
            self.domain = self.conn.lookup(self.name)
            if self.domain is None:
                raise SlotPowerError('slot %s has no domain %s although allocation %s holds it (phase %s): run '
                                     'reconcile and allocate again with the allocation id, or release it'
                                     % (self.slot.slot_id, self.name, lease['allocation_id'], lease['phase']))
            active = self.conn.is_active(self.domain)
            plan = self.plan(lease, active)
            plan.execute()
            state = self.params['state']
            return plan.result(
                slot_id=self.slot.slot_id, allocation_id=lease['allocation_id'], name=self.name,
                domain_state=SHUT_OFF if state == 'stopped' else RUNNING,
                phase=STOPPED if state == 'stopped' else 'running',
                shutdown=self.how['shutdown'], reboot=self.how['reboot'], timings=self.timings)
