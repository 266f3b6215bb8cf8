# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: a whole slot release in one module process (slot_release).

Each step is done by the engine of the module an operator would run for it (slot_lease,
slot_vm, slot_network, telemetry_token, slot_seed, vfio_bind, pci_reset, nvme_wipe,
slot_image), in the order the release role ran them as tasks: one process instead of
eleven. A step's engine builds and runs its own plan, so check mode and diff work as in
that module; the release's plan records every step's actions and diff under the step's
name, and that is the module's result.

The lease says what to undo (devices, GPU, NVMe, wipe policy, the boot disk), so a release
works when the slot's approval changed meanwhile, and a second release after a crash
finishes the job. The boot disk (``_boot_disk.py``) is wiped before it is let go: on the
slot's NVMe by the NVMe's wipe; as a file on host storage by zeros over its data, fsynced
and verified by sampling, and only then removed. A step that fails is reported by its name;
a failure to give the devices back, reset the GPU, wipe the drive or wipe the boot disk file
quarantines the slot (the lease stays, with the reason), any other failure leaves the lease
in ``releasing`` for a second release.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.gpuaas.slice.plugins.module_utils import _boot_disk as boot
from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils import _token as token
from ansible_collections.gpuaas.slice.plugins.module_utils._compose import Composite, failure
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import DeviceError
from ansible_collections.gpuaas.slice.plugins.module_utils._image import ARGUMENT_SPEC as IMAGE_SPEC, RULES as IMAGE_RULES, Image
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import require_libvirt
from ansible_collections.gpuaas.slice.plugins.module_utils._reset import PciReset
from ansible_collections.gpuaas.slice.plugins.module_utils._seed import ARGUMENT_SPEC as SEED_SPEC, RULES as SEED_RULES, Seed
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_network import (
    ARGUMENT_SPEC as NETWORK_SPEC, RULES as NETWORK_RULES, SlotNetwork)
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_vm import RULES as VM_RULES, SlotVm, argument_spec as slot_vm_spec
from ansible_collections.gpuaas.slice.plugins.module_utils._vfio import VfioBind
from ansible_collections.gpuaas.slice.plugins.module_utils._wipe import NvmeWipe
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError, Slot

# The steps, by the names operators know from the release role's tasks.
MARK = 'Read the slot\'s lease and mark it releasing'
VM = 'Stop and remove the slot\'s VM'
NETWORK = 'Remove the slot\'s network (DHCP entry, port, flows)'
TOKEN = 'Revoke the allocation\'s telemetry token'
SEED = 'Remove the seed'
DEVICES = 'Give the devices back to their host drivers'
RESET = 'Reset the GPU'
WIPING = 'Move the lease to wiping'
WIPE = 'Wipe the slot\'s NVMe by its policy'
BOOT_WIPE = 'Wipe the slot\'s boot disk file (zeros, verified)'
DISK = 'Remove the slot\'s disk file and image marker'
FREE = 'Free the slot\'s lease'
# A failure here leaves the slot's hardware, or the tenant's data, in a state nobody can vouch
# for: quarantine.
QUARANTINE_STEPS = (DEVICES, RESET, WIPE, BOOT_WIPE)
MAX_REASON = 4096


class ReleaseError(GpuaasError):
    """A release step failed; the message names the step and what happens to the slot."""


class Release(Composite):
    """The release's steps in order; :meth:`run` returns the module's result."""

    def __init__(self, module):
        super(Release, self).__init__(module, ReleaseError)
        self.timings = {'reset': 0}
        self.boot_disk = None

    def run(self):
        p = self.p
        lease = self.step(MARK, lambda: self.lease(phase='releasing', missing_ok=True,
                                                   force=p['clear_quarantine']))['lease']
        data = (lease or {}).get('data') or {}
        try:
            self.undo(data, lease is not None, bool(data.get('passthrough')))
        except (GpuaasError, IOError, OSError) as exc:
            self.fail(exc, lease is not None)
        self.step(FREE, lambda: self.lease(state='absent'))
        return self.plan.result(slot_id=p['slot_id'], allocation_id=p['allocation_id'],
                                had_lease=lease is not None, wipe_policy=data.get('destructive_wipe_policy'),
                                boot_disk=self.boot_disk, timings=self.timings, seconds=self.seconds)

    def undo(self, data, held, passthrough):
        p, module = self.p, self.module
        slot = dict(slot_id=p['slot_id'], state='absent')
        devices = dict(sysfs_root=p['sysfs_root'], proc_root=p['proc_root'])
        require_libvirt(module)
        self.step(VM, lambda: SlotVm(self.part('slot_vm', slot_vm_spec(), VM_RULES, dict(
            slot, uri=p['uri'], lease_file=p['dhcp_lease_file'], console_log_dir=p['console_log_dir'],
            bridge=p['bridge']))))
        self.step(NETWORK, lambda: net.engine(SlotNetwork)(self.part('slot_network', NETWORK_SPEC, NETWORK_RULES, dict(
            slot, bridge=p['bridge'], hosts_dir=p['hosts_dir'], dnsmasq_pid_file=p['dnsmasq_pid_file'],
            ssh_dir=p['ssh_dir'], lease_dir=p['lease_dir']))))
        self.step(TOKEN, lambda: token.engine(self.part('telemetry_token', token.ARGUMENT_SPEC, token.RULES, dict(
            slot, allocation_id=p['allocation_id'], token_dir=p['token_dir']))))
        self.step(SEED, lambda: Seed(self.part('slot_seed', SEED_SPEC, SEED_RULES, dict(slot, seed_dir=p['seed_dir']))))
        for address in (data.get('devices') or []) if passthrough else []:
            self.step(DEVICES, lambda: VfioBind(module, address, state='absent', dev_root=p['dev_root'],
                                                state_dir=p['vfio_state_dir'], **devices))
        if passthrough:
            reset = self.step(RESET, lambda: PciReset(module, data.get('gpu_address'), **devices))
            if reset.get('needs_manual_care'):
                raise DeviceError('%s needs manual care after its reset' % data.get('gpu_address'))
            self.timings['reset'] = reset.get('duration_s', 0)
        files = self.disk_files(data.get('boot_disk') or {})
        if held and (passthrough or files):
            self.step(WIPING, lambda: self.lease(phase='wiping'))
        if passthrough and data.get('nvme_address'):
            self.step(WIPE, lambda: NvmeWipe(module, data['nvme_address'], data.get('destructive_wipe_policy'),
                                             allowed_file_dirs=p['wipe_allowed_file_dirs'],
                                             dev_root=p['dev_root'], **devices))
        for path in files:
            wiped = self.step(BOOT_WIPE, lambda path=path: NvmeWipe(
                module, path, boot.FILE_POLICY, allowed_file_dirs=[p['disk_dir']], dev_root=p['dev_root'], **devices))
            self.boot_disk = dict(kind=boot.FILE, path=path, policy=boot.FILE_POLICY, wiped=not module.check_mode,
                                  verification=(wiped['targets'][0].get('verification') if wiped['targets'] else None))
        disk = data.get('boot_disk') or {}
        if disk.get('kind') == boot.NVME:
            self.boot_disk = dict(disk, policy=data.get('destructive_wipe_policy'), wiped=not module.check_mode)
            self.step(DISK, lambda: Image(self.part('slot_image', IMAGE_SPEC, IMAGE_RULES, dict(
                slot, target_device=disk['path'], state_dir=p['image_state_dir']))))
        self.step(DISK, lambda: Image(self.part('slot_image', IMAGE_SPEC, IMAGE_RULES, dict(slot, image_dir=p['disk_dir']))))

    def disk_files(self, disk):
        """The boot disk files of the slot on host storage that are still there: the lease's, and
        ``{disk_dir}/{slot_id}.raw`` (a lease written before the lease recorded its disk, or none)."""
        paths = [Slot.parse(self.p['slot_id']).file(self.p['disk_dir'], '.raw')]
        if disk.get('kind') == boot.FILE and disk.get('path') not in paths:
            paths.insert(0, disk['path'])
        return [path for path in paths if os.path.lexists(path)]

    def fail(self, exc, held):
        """Quarantine the slot when the failed step leaves it dirty; raise what failed and what now."""
        p, name = self.p, self.current
        why, details = failure(exc)
        quarantine = name in QUARANTINE_STEPS
        if quarantine and held:
            reason = "release of %s failed at '%s': %s" % (p['allocation_id'], name, why)
            self.lease(phase='quarantined', reason=reason[:MAX_REASON])
        details.update(release_step=name, quarantined=quarantine and held)
        raise ReleaseError("slot %s: release failed at '%s': %s%s %s" % (
            p['slot_id'], name, why, '' if why.endswith('.') else '.',
            'The slot is quarantined until an operator clears it.' if quarantine else
            'Run release again; the slot keeps its lease until it succeeds.'), **details)
