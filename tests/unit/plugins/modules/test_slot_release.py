# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_release on the kernel model (gpu_box): a GPU on vfio-pci, an NVMe namespace holding the
last tenant's data, the slot's token, seed, disk and DHCP entry; libvirt's test driver and an
Open vSwitch without the bridge (the fake ovs-vsctl) and nftables without the table (the fake nft)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import slot_release, vfio_bind
from tests.sysfs import kernel_fixture
from tests.unit.module_runner import run_module

kernel = kernel_fixture.kernel  # the fixture

GPU, AUDIO, NVME = '0000:1b:00.0', '0000:1b:00.1', '0000:1c:00.0'
SLOT, ALLOC = 'itest-s0', 'alloc-1'
SECRET = b'TENANT-1 SECRET ' * 4096
WIPE = "Wipe the slot's NVMe by its policy"
BOOT_WIPE = "Wipe the slot's boot disk file (zeros, verified)"


class Slot:
    """The kernel model plus one allocated slot's state files under the host's state dir."""

    def __init__(self, host, policy):
        self.host = host
        state = host.state
        self.dirs = dict((k, os.path.join(state, k)) for k in ('leases', 'tokens', 'seeds', 'disks', 'hosts', 'vfio',
                                                               'slot-images'))
        for path in self.dirs.values():
            os.makedirs(path, exist_ok=True)
        os.makedirs(host.dev, exist_ok=True)
        self.namespace = os.path.join(host.dev, 'nvme2n1')
        self.files = [os.path.join(self.dirs['tokens'], SLOT + '.json'), os.path.join(self.dirs['seeds'], SLOT + '-seed.iso'),
                      os.path.join(self.dirs['disks'], SLOT + '.raw'), os.path.join(self.dirs['hosts'], SLOT)]
        for path, data in zip(self.files + [self.namespace], [json.dumps({'allocation_id': ALLOC}).encode()] + [SECRET] * 4):
            with open(path, 'wb') as handle:
                handle.write(data)
        self.lease = dict(slot_id=SLOT, allocation_id=ALLOC, phase='running', created_at='2026-12-01T10:00:00Z',
                          updated_at='2026-12-01T10:00:00Z',
                          data=dict(passthrough=True, devices=[GPU, NVME], gpu_address=GPU, companions=[AUDIO],
                                    nvme_address=NVME, destructive_wipe_policy=policy))
        self.disk = self.files[2]
        self.write_lease()
        host.tools.handlers['ovs-vsctl'] = lambda argv: (2, '', '') if 'br-exists' in argv else (1, '', 'no port')
        # nftables without the slot network's table (as nft says it): no SSH port to close.
        host.tools.handlers['nft'] = lambda argv: (1, '', 'Error: No such file or directory; did you mean table '
                                                   '\'gpuaas\' in family ip?\nlist table inet gpuaas\n')

    def write_lease(self, **data):
        self.lease['data'].update(data)
        with open(self.lease_file, 'w') as handle:
            json.dump(self.lease, handle)

    @property
    def lease_file(self):
        return os.path.join(self.dirs['leases'], SLOT + '.json')

    def args(self, **extra):
        d = self.dirs
        args = dict(self.host.args, slot_id=SLOT, allocation_id=ALLOC, uri='test:///default', lease_dir=d['leases'],
                    token_dir=d['tokens'], seed_dir=d['seeds'], disk_dir=d['disks'], hosts_dir=d['hosts'],
                    image_state_dir=d['slot-images'],
                    vfio_state_dir=d['vfio'], dev_root=self.host.dev, wipe_allowed_file_dirs=[self.host.dev],
                    dhcp_lease_file=os.path.join(self.host.base, 'dnsmasq.leases'),
                    dnsmasq_pid_file=os.path.join(self.host.base, 'dnsmasq.pid'),
                    console_log_dir=os.path.join(self.host.base, 'console'))
        args.update(extra)
        return args

    def read_lease(self):
        if not os.path.exists(self.lease_file):
            return None
        with open(self.lease_file) as handle:
            return json.load(handle)

    def data(self):
        with open(self.namespace, 'rb') as handle:
            return handle.read()


@pytest.fixture
def make(kernel, capsys):
    def build(policy='zero', **model):
        host = kernel('gpu_box', model=model)
        slot = Slot(host, policy)
        bound = run_module(vfio_bind, dict(host.args, address=GPU, dev_root=host.dev, state_dir=slot.dirs['vfio']),
                           capsys=capsys)
        assert bound['changed'] and host.driver(AUDIO) == 'vfio-pci', bound
        return slot
    return build


def release(slot, capsys, check_mode=False, **extra):
    return run_module(slot_release, slot.args(**extra), check_mode=check_mode, diff=True, capsys=capsys)


def test_check_mode_reports_every_step_and_changes_nothing(make, capsys):
    slot = make()
    before = slot.host.snapshot()
    result = release(slot, capsys, check_mode=True)
    assert not result.get('failed') and result['changed'], result
    steps = list(dict.fromkeys(action.split(': ', 1)[0] for action in result['actions']))
    assert steps == ["Read the slot's lease and mark it releasing",
                     "Remove the slot's network (DHCP entry, port, flows)", "Revoke the allocation's telemetry token",
                     'Remove the seed', 'Give the devices back to their host drivers',
                     'Reset the GPU', 'Move the lease to wiping', WIPE, BOOT_WIPE,
                     "Remove the slot's disk file and image marker", "Free the slot's lease"], result['actions']
    assert set(result['diff']['before']) == set(steps)
    assert '"phase": "running"' in result['diff']['before']["Free the slot's lease"]
    assert result['diff']['after']["Free the slot's lease"] == ''
    slot.host.assert_unchanged(before)
    assert slot.host.model.resets == []
    assert result['boot_disk']['wiped'] is False and result['boot_disk']['path'] == slot.disk


def test_release_then_nothing_to_do(make, capsys):
    slot = make()
    result = release(slot, capsys)
    assert not result.get('failed') and result['changed'], result
    assert result['had_lease'] is True and result['wipe_policy'] == 'zero' and result['timings']['reset'] >= 0
    assert result['seconds']['Reset the GPU'] >= 0 and "Wipe the slot's NVMe by its policy" in result['seconds']
    assert slot.read_lease() is None
    assert [path for path in slot.files if os.path.exists(path)] == []
    assert slot.host.driver(GPU) == 'nvidia' and slot.host.driver(AUDIO) == 'snd_hda_intel'
    assert slot.host.model.resets == [(GPU, 'flr')]
    assert slot.data() == bytes(len(SECRET))
    again = release(slot, capsys)
    assert not again.get('failed') and again['changed'] is False and again['actions'] == [], again
    assert again['had_lease'] is False and again['wipe_policy'] is None


def test_a_wipe_that_erased_nothing_quarantines_the_slot(make, capsys):
    slot = make(policy='nvme-format')
    slot.host.tools.handlers['nvme'] = lambda argv: (0, 'Success formatting namespace:1', '')
    result = release(slot, capsys)
    assert result['failed'] and result['quarantined'] is True and result['release_step'] == WIPE, result
    assert "release failed at '%s'" % WIPE in result['msg']
    assert result['msg'].endswith('The slot is quarantined until an operator clears it.')
    lease = slot.read_lease()
    assert lease['phase'] == 'quarantined' and "release of alloc-1 failed at '%s'" % WIPE in lease['reason']
    assert 'sampled blocks still hold the data' in lease['reason']
    assert slot.data() == SECRET
    # Not cleared by a second release; an operator who dealt with the drive clears it.
    again = release(slot, capsys)
    assert again['failed'] and 'is quarantined' in again['msg'] and slot.read_lease()['phase'] == 'quarantined'

    def format_that_erases(argv):
        with open(slot.namespace, 'r+b') as handle:
            handle.write(bytes(len(SECRET)))
        return 0, 'Success formatting namespace:1', ''
    slot.host.tools.handlers['nvme'] = format_that_erases
    cleared = release(slot, capsys, clear_quarantine=True)
    assert not cleared.get('failed') and slot.read_lease() is None and slot.data() == bytes(len(SECRET)), cleared


def test_a_gpu_that_fails_to_reset_is_quarantined_and_never_wiped(make, capsys):
    slot = make(reset_faults={GPU: errno.EIO})
    result = release(slot, capsys)
    assert result['failed'] and result['release_step'] == 'Reset the GPU' and result['needs_manual_care'] is True
    assert "failed at 'Reset the GPU'" in slot.read_lease()['reason']
    assert slot.read_lease()['phase'] == 'quarantined' and slot.data() == SECRET


def test_another_failure_keeps_the_lease_releasing_for_a_second_release(make, capsys):
    slot = make()
    slot.host.tools.handlers['ovs-vsctl'] = lambda argv: (1, '', 'database connection failed')
    result = release(slot, capsys)
    assert result['failed'] and result['quarantined'] is False, result
    assert result['msg'].endswith('Run release again; the slot keeps its lease until it succeeds.')
    assert slot.read_lease()['phase'] == 'releasing' and slot.host.driver(GPU) == 'vfio-pci'
    slot.host.tools.handlers['ovs-vsctl'] = lambda argv: (2, '', '') if 'br-exists' in argv else (1, '', '')
    done = release(slot, capsys)
    assert not done.get('failed') and slot.read_lease() is None and slot.host.driver(GPU) == 'nvidia', done


def test_a_slot_without_a_lease_is_cleaned_and_gets_none(make, capsys):
    slot = make()
    os.unlink(slot.lease_file)
    result = release(slot, capsys)
    assert not result.get('failed') and result['had_lease'] is False, result
    assert slot.read_lease() is None and [path for path in slot.files if os.path.exists(path)] == []
    assert slot.host.driver(GPU) == 'vfio-pci'   # what no lease names is not touched


def test_a_lease_of_another_allocation_is_refused(make, capsys):
    slot = make()
    before = slot.host.snapshot()
    result = release(slot, capsys, allocation_id='alloc-2')
    assert result['failed'] and 'held by allocation alloc-1' in result['msg']
    slot.host.assert_unchanged(before)


def read(path):
    with open(path, 'rb') as handle:
        return handle.read()


def test_a_boot_disk_file_is_zeroed_verified_and_only_then_removed(make, capsys):
    slot = make()
    slot.write_lease(boot_disk={'kind': 'file', 'path': slot.disk, 'nvme_address': None})
    # A second name for the file's blocks, outside the disk directory: what release leaves of them.
    blocks = os.path.join(slot.host.base, 'the-blocks')
    os.link(slot.disk, blocks)
    result = release(slot, capsys)
    assert not result.get('failed'), result
    assert not os.path.exists(slot.disk) and read(blocks) == bytes(len(SECRET))
    disk = result['boot_disk']
    assert disk['kind'] == 'file' and disk['path'] == slot.disk and disk['policy'] == 'zero' and disk['wiped'] is True
    assert disk['verification']['passed'] is True and disk['verification']['zero'] == disk['verification']['samples'] > 1
    assert result['seconds'][BOOT_WIPE] >= 0 and slot.read_lease() is None


def test_a_boot_disk_file_only_zeros_its_data_and_keeps_its_holes(make, capsys):
    slot = make()
    with open(slot.disk, 'r+b') as handle:
        handle.truncate(1 << 30)                      # 1 GiB, all but the first 64 KiB a hole
    blocks = os.path.join(slot.host.base, 'the-blocks')
    os.link(slot.disk, blocks)
    result = release(slot, capsys)
    assert not result.get('failed') and result['boot_disk']['verification']['passed'], result
    assert os.stat(blocks).st_blocks * 512 < 1 << 20  # the hole was not written
    with open(blocks, 'rb') as handle:
        assert handle.read(len(SECRET)) == bytes(len(SECRET))


def test_a_boot_disk_file_that_cannot_be_wiped_quarantines_the_slot(make, capsys):
    slot = make()
    slot.write_lease(boot_disk={'kind': 'file', 'path': slot.disk, 'nvme_address': None})
    slot.host.model.hold_open(slot.disk, 4243, 'qemu-system-x86', 9)   # the VM's QEMU never died
    result = release(slot, capsys)
    assert result['failed'] and result['quarantined'] is True and result['release_step'] == BOOT_WIPE, result
    assert '%s is open by pid 4243 (qemu-system-x86)' % slot.disk in result['msg']
    lease = slot.read_lease()
    assert lease['phase'] == 'quarantined' and "failed at '%s'" % BOOT_WIPE in lease['reason']
    assert read(slot.disk) == SECRET                  # neither wiped nor removed: an operator looks at it
    shutil.rmtree(os.path.join(slot.host.proc, '4243'))
    cleared = release(slot, capsys, clear_quarantine=True)
    assert not cleared.get('failed') and not os.path.exists(slot.disk) and slot.read_lease() is None, cleared


def test_a_lease_naming_a_disk_file_outside_the_disk_dir_quarantines_and_it_is_never_written(make, capsys):
    slot = make()
    outside = os.path.join(slot.host.base, 'hosts-own-file')
    with open(outside, 'wb') as handle:
        handle.write(SECRET)
    slot.write_lease(boot_disk={'kind': 'file', 'path': outside, 'nvme_address': None})
    result = release(slot, capsys)
    assert result['failed'] and result['quarantined'] is True and result['release_step'] == BOOT_WIPE, result
    assert 'nor a regular file under allowed_file_dirs' in result['msg']
    assert read(outside) == SECRET and read(slot.disk) == SECRET


def test_a_boot_disk_on_the_nvme_is_wiped_with_it_and_its_image_marker_goes(make, capsys):
    slot = make()
    os.unlink(slot.disk)
    slot.write_lease(boot_disk={'kind': 'nvme', 'path': '/dev/nvme2n1', 'nvme_address': NVME})
    marker = os.path.join(slot.dirs['slot-images'], SLOT + '.image.json')
    with open(marker, 'w') as handle:
        json.dump({'version': 1, 'slot_id': SLOT, 'target': '/dev/nvme2n1'}, handle)
    result = release(slot, capsys)
    assert not result.get('failed'), result
    assert BOOT_WIPE not in result['seconds'] and result['seconds'][WIPE] >= 0
    assert result['boot_disk'] == {'kind': 'nvme', 'path': '/dev/nvme2n1', 'nvme_address': NVME,
                                   'policy': 'zero', 'wiped': True}
    assert slot.data() == bytes(len(SECRET)) and not os.path.exists(marker) and slot.read_lease() is None
