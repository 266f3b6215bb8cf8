# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An allocation's lifecycle for real (issue 18, item 5): libvirtd, QEMU (TCG), the busybox
test guest on a bridge with dnsmasq.

The guest is booted by slot_vm with its seed and lease, then slot_power stops it (the guest's
acpid answers the ACPI power button), starts the same definition again, and reboots it
(libvirt's ACPI reboot, confirmed by the domain's reset event); slot_console_info reads the
newest part of its console log. A second guest whose PID 1 is ``sleep`` has no ACPI handler
at all: its stop and its reboot end with a power-off, and the results say so.
"""

from __future__ import annotations

import os
import time

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot
from ansible_collections.gpuaas.slice.plugins.modules import slot_console_info, slot_lease, slot_power, slot_seed, slot_vm
from tests.functional.vm import env
from tests.unit.module_runner import run_module

pytestmark = pytest.mark.slow

NODE = 'vmpower'
SLOT, DEAF = Slot(NODE, 2).slot_id, Slot(NODE, 5).slot_id
ALLOCATION = 'alloc-power-1'


@pytest.fixture(scope='module')
def dirs(workdir):
    paths = {name: os.path.join(workdir, name) for name in ('leases', 'seeds', 'console', 'nvram')}
    os.makedirs(paths['leases'], mode=0o700)
    return paths


def vm_args(dirs, network, guest, libvirtd, slot_id, **extra):
    args = dict(uri=libvirtd.uri, slot_id=slot_id, state='running', domain_type='qemu', memory_mib=192,
                cpulist='0-1', vcpus=1, numatune=False, passthrough=False, firmware='bios',
                bridge=network.bridge, bridge_type='linux', console_log_dir=dirs['console'],
                kernel=guest['kernel'], initrd=guest['initrd'], kernel_cmdline=guest['cmdline'],
                lease_file=network.lease_file, lease_timeout=180, stop_timeout=30, nvram_dir=dirs['nvram'],
                allowed_dirs=[os.path.dirname(dirs['console']), os.path.dirname(guest['kernel'])])
    args.update(extra)
    return args


def console(dirs, slot_id):
    with open(os.path.join(dirs['console'], slot_id + '.log'), 'rb') as handle:
        return handle.read().decode('utf-8', 'replace')


def wait_console(dirs, slot_id, text, count=1, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if console(dirs, slot_id).count(text) >= count:
            return
        time.sleep(0.2)
    pytest.fail('%r did not appear %d times on the console of %s within %d s:\n%s'
                % (text, count, slot_id, timeout, console(dirs, slot_id)[-3000:]))


def domain_state(uri, slot_id):
    import libvirt
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName('gpuaas-' + slot_id)
        return bool(dom.isActive()), dom.UUIDString(), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()


def power(dirs, libvirtd, slot_id, state, capsys, **extra):
    args = dict(uri=libvirtd.uri, slot_id=slot_id, allocation_id=ALLOCATION, state=state,
                lease_dir=dirs['leases'], stop_timeout=30)
    args.update(extra)
    check_mode = args.pop('check_mode', False)
    return run_module(slot_power, args, check_mode=check_mode, diff=True, capsys=capsys)


def phase(dirs, slot_id, capsys):
    found = run_module(slot_lease, dict(slot_id=slot_id, lease_dir=dirs['leases'], state='query'), capsys=capsys)
    return found['lease']['phase']


@pytest.fixture(scope='module')
def booted(dirs, network, guest, libvirtd):
    """Yields a function that allocates a slot (lease, seed, running VM); removes them all at the end."""
    made = []

    def boot(slot_id, capsys, **extra):
        env.destroy_domain(libvirtd.uri, 'gpuaas-' + slot_id)   # left by a run that was killed
        made.append(slot_id)
        taken = run_module(slot_lease, dict(slot_id=slot_id, allocation_id=ALLOCATION, phase='running',
                                            lease_dir=dirs['leases']), capsys=capsys)
        assert taken['changed'], taken
        index = Slot.parse(slot_id).index
        network.add_host(Slot.parse(slot_id).mac, network.ip(index))
        seed = run_module(slot_seed, dict(slot_id=slot_id, allocation_id=ALLOCATION, hostname='power-%d' % index,
                                          ssh_keys=[], telemetry_token='t' * 32, telemetry_sink=network.sink.url,
                                          seed_dir=dirs['seeds']), capsys=capsys)
        assert seed['changed'], seed
        args = vm_args(dirs, network, guest, libvirtd, slot_id, seed=seed['path'], expected_ip=network.ip(index),
                       **extra)
        vm = run_module(slot_vm, args, capsys=capsys)
        assert vm.get('changed') and vm.get('domain_state') == 'running', vm
        return vm

    yield boot
    for slot_id in made:
        env.destroy_domain(libvirtd.uri, 'gpuaas-' + slot_id)


def test_stop_start_reboot_and_console_of_a_guest_that_answers_acpi(dirs, booted, libvirtd, capsys):
    vm = booted(SLOT, capsys)
    wait_console(dirs, SLOT, 'gpuaas-guest: seed hostname=power-2')   # acpid runs from here on
    _active, uuid, xml = domain_state(libvirtd.uri, SLOT)

    # Stop: check mode first (nothing happens), then the ACPI power button.
    check = power(dirs, libvirtd, SLOT, 'stopped', capsys, check_mode=True)
    assert check['changed'] and check['actions'] == ['shutdown', 'record stopped in the lease'], check
    assert domain_state(libvirtd.uri, SLOT)[0] and phase(dirs, SLOT, capsys) == 'running'
    stopped = power(dirs, libvirtd, SLOT, 'stopped', capsys)
    assert stopped['shutdown'] == 'acpi' and stopped['domain_state'] == 'shut off', stopped
    assert stopped['diff']['after'] == {'domain_state': 'shut off', 'lease_phase': 'stopped'}
    assert 'gpuaas-guest: power button, powering off' in console(dirs, SLOT)
    active, same_uuid, same_xml = domain_state(libvirtd.uri, SLOT)
    assert not active and same_uuid == uuid and same_xml == xml         # the definition stays
    assert phase(dirs, SLOT, capsys) == 'stopped'
    again = power(dirs, libvirtd, SLOT, 'stopped', capsys)
    assert again['changed'] is False and again['actions'] == [], again
    refused = power(dirs, libvirtd, SLOT, 'rebooted', capsys)
    assert refused['failed'] and 'is shut off' in refused['msg']

    # Start: the same definition, the same UUID; the console log starts over.
    started = power(dirs, libvirtd, SLOT, 'running', capsys)
    assert started['actions'] == ['start', 'record running in the lease'], started
    active, same_uuid, same_xml = domain_state(libvirtd.uri, SLOT)
    assert active and same_uuid == uuid and same_xml == xml and phase(dirs, SLOT, capsys) == 'running'
    assert power(dirs, libvirtd, SLOT, 'running', capsys)['changed'] is False
    wait_console(dirs, SLOT, 'gpuaas-guest: seed hostname=power-2')
    assert 'power button' not in console(dirs, SLOT)

    # Reboot: libvirt's ACPI reboot; the guest powers off, libvirt resets it, it boots again
    # in the same QEMU (the log is not rewritten: two boots in it).
    rebooted = power(dirs, libvirtd, SLOT, 'rebooted', capsys)
    assert rebooted['reboot'] == 'acpi' and rebooted['changed'] and rebooted['actions'] == ['reboot'], rebooted
    wait_console(dirs, SLOT, 'gpuaas-guest: init uptime=', count=2)
    assert 'gpuaas-guest: power button, powering off' in console(dirs, SLOT)
    assert domain_state(libvirtd.uri, SLOT)[0] and phase(dirs, SLOT, capsys) == 'running'
    with capsys.disabled():
        print('\nslot_power on the busybox guest: stop %s, start %s, reboot %s'
              % (stopped['timings'], started['timings'], rebooted['timings']))

    # The console's newest part, for this allocation only.
    read = run_module(slot_console_info, dict(slots=[{'slot_id': SLOT, 'allocation_id': ALLOCATION}],
                                              console_log_dir=dirs['console'], lease_dir=dirs['leases'],
                                              max_bytes=4096), capsys=capsys)
    entry = read['console'][SLOT]
    assert entry['allocation_id'] == ALLOCATION and 'gpuaas-guest:' in entry['text'], entry
    assert len(entry['text'].encode()) <= 4096 and entry['size'] == os.path.getsize(
        os.path.join(dirs['console'], SLOT + '.log'))
    other = run_module(slot_console_info, dict(slots=[{'slot_id': SLOT, 'allocation_id': 'alloc-other'}],
                                               console_log_dir=dirs['console'], lease_dir=dirs['leases']),
                       capsys=capsys)
    assert 'text' not in other['console'][SLOT] and 'not held by allocation' in other['console'][SLOT]['error']
    assert vm['uuid'] == uuid


def test_a_guest_without_an_acpi_handler_is_powered_off(dirs, booted, guest, libvirtd, capsys):
    """PID 1 is sleep: no acpid, no button driver. A stop and a reboot wait, then power off."""
    booted(DEAF, capsys, kernel_cmdline='console=ttyS0 rdinit=/bin/sleep 3600', wait_for_lease=False)
    stopped = power(dirs, libvirtd, DEAF, 'stopped', capsys, stop_timeout=6)
    assert stopped['shutdown'] == 'forced' and stopped['domain_state'] == 'shut off', stopped
    assert any('did not answer the ACPI power button within 6 s' in str(w) for w in stopped['warnings'])
    assert not domain_state(libvirtd.uri, DEAF)[0] and phase(dirs, DEAF, capsys) == 'stopped'
    assert power(dirs, libvirtd, DEAF, 'running', capsys)['actions'] == ['start', 'record running in the lease']
    rebooted = power(dirs, libvirtd, DEAF, 'rebooted', capsys, stop_timeout=6)
    assert rebooted['reboot'] == 'forced' and domain_state(libvirtd.uri, DEAF)[0], rebooted
    assert any('did not answer the ACPI reboot within 6 s' in str(w) for w in rebooted['warnings'])
    assert 6 <= rebooted['timings']['reboot_s'] < 30
