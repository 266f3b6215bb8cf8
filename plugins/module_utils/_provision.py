# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the host side of an allocation in one module process (slot_provision).

Once the slot is checked, leased and has its token, the allocate role's remaining steps run
here in order, each by the engine of its own module (``_compose.py``): the network
(slot_network), the boot disk recorded in the lease, then written (slot_image), the seed
(slot_seed), the devices to vfio-pci (vfio_bind, each device), the VM up to its DHCP lease
(slot_vm), and the lease moved to ``running``.

The boot disk (``_boot_disk.py``): with passthrough and an NVMe of its own, the slot's NVMe
namespace, written while the host's nvme driver has it, before vfio-pci takes it; the VM
boots from the NVMe hostdev and has no disk on host storage. Otherwise a file under the
image's ``image_dir``. Every step converges, so running the module again with the same allocation
after a crash finishes the allocation; a failure names the step and leaves the lease in
``provisioning`` for a release or a second allocate.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuaas.slice.plugins.module_utils import _boot_disk as boot
from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils._compose import Composite, failure
from ansible_collections.gpuaas.slice.plugins.module_utils._image import (
    ARGUMENT_SPEC as IMAGE_SPEC, MARKER_VERSION, RULES as IMAGE_RULES, Image, parse_checksum, parse_size, read_marker)
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import require_libvirt
from ansible_collections.gpuaas.slice.plugins.module_utils._seed import ARGUMENT_SPEC as SEED_SPEC, RULES as SEED_RULES, Seed
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_network import (
    ARGUMENT_SPEC as NETWORK_SPEC, RULES as NETWORK_RULES, SlotNetwork)
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_vm import RULES as VM_RULES, SlotVm, argument_spec as slot_vm_spec
from ansible_collections.gpuaas.slice.plugins.module_utils._vfio import VfioBind
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError, Slot, ssh_access

NETWORK = "Wire the slot's network (DHCP entry, port, flows)"
BOOT_DISK = "Record the slot's boot disk in the lease"
IMAGE = "Put the image on the slot's boot disk"
SEED = 'Write the cloud-init seed'
DEVICES = "Hand the slot's devices to vfio-pci (each with its whole IOMMU group)"
VM = "Define and start the slot's VM and wait for its address"
RUNNING = 'Record the running allocation in the lease'


class ProvisionError(GpuaasError):
    """A provisioning step failed; the message names the step."""


class Provision(Composite):
    """The steps in order; :meth:`run` returns the module's result with each step's own result."""

    def __init__(self, module):
        super(Provision, self).__init__(module, ProvisionError)
        self.results = {}

    def run(self):
        try:
            return self.steps()
        except (GpuaasError, IOError, OSError) as exc:
            why, details = failure(exc)
            details.update(provision_step=self.current)
            raise ProvisionError("slot %s: allocation %s failed at '%s': %s" % (
                self.p['slot_id'], self.p['allocation_id'], self.current, why), **details)

    def record(self, key, name, make):
        result = self.step(name, make)
        self.results[key] = dict((k, v) for k, v in result.items() if k not in ('diff', 'changed'))
        return result

    def steps(self):
        p, module = self.p, self.module
        slot = dict(slot_id=p['slot_id'], state='present')
        # Every step's options are checked before the first step runs.
        # The tenant's flows follow the node's leases, this slot's (taken before this module runs) among them.
        network = self.part('network', NETWORK_SPEC, NETWORK_RULES, dict(p['network'], lease_dir=p['lease_dir'], **slot))
        vm = self.part('vm', slot_vm_spec(), VM_RULES, dict(p['vm'], slot_id=p['slot_id'], state='running'))
        nvme = vm.params['nvme_address'] if vm.params['passthrough'] and vm.params['nvme_address'] in p['devices'] else None
        image = dict(p['image'], **slot)
        if nvme:
            # The namespace is found in sysfs below (boot_disk); dev_root stands in for the check.
            image.pop('image_dir', None)
            image.update(format='raw', target_device=p['dev_root'])
        image = self.part('image', IMAGE_SPEC, IMAGE_RULES, image)
        seed = self.part('seed', SEED_SPEC, SEED_RULES, dict(
            p['seed'], allocation_id=p['allocation_id'], telemetry_token=p['telemetry_token'], **slot))
        # What the tenant logs in with: the slot's public SSH port (slot_network opens it) and the seed's user.
        access = ssh_access(Slot.parse(p['slot_id']), p['ssh_host'], network.params['ssh_port_base'],
                            seed.params['login_user'])
        require_libvirt(module)
        # Where the boot disk goes is checked before anything changes too.
        disk = self.boot_disk(image, nvme)
        written = disk.pop('written', None)
        self.record('network', NETWORK, lambda: net.engine(SlotNetwork)(network))
        self.results['boot_disk'] = disk
        self.step(BOOT_DISK, lambda: self.lease(phase='provisioning', data={'boot_disk': disk}))
        if written:
            self.results['image'] = dict(written, target=disk['path'], target_kind='device')
        else:
            self.record('image', IMAGE, lambda: Image(image))
        path = self.record('seed', SEED, lambda: Seed(seed))['path']
        self.results['devices'] = [self.step(DEVICES, lambda: VfioBind(
            module, address, state_dir=p['vfio_state_dir'], sysfs_root=p['sysfs_root'], proc_root=p['proc_root'],
            dev_root=p['dev_root']))['bindings'] for address in p['devices']]
        # The NVMe hostdev boots a domain without a disk (slot_vm): no disk on host storage then.
        vm.params.update(disk=vm.params['disk'] or (None if nvme else disk['path']), seed=vm.params['seed'] or path)
        name, ip = self.record('vm', VM, lambda: SlotVm(vm))['name'], self.results['vm'].get('ip')
        lease = self.step(RUNNING, lambda: self.lease(phase='running', data={'domain': name, 'address': ip,
                                                                             'access': access}))
        return self.plan.result(lease=lease['lease'], seconds=self.seconds, access=access, **self.results)

    def boot_disk(self, image, nvme):
        """The lease's record of the boot disk; the image part is pointed at it.

        For an NVMe: its one namespace, found in sysfs while the nvme driver has it. A second run
        that finds the controller on vfio-pci already (a crash after the devices step) goes on
        only if slot_image's marker says the whole image was written (``written``); otherwise
        the namespace cannot be seen and the run refuses: release the slot and allocate again.
        """
        p, params = self.p, image.params
        self.current = IMAGE
        if not nvme:
            return boot.record(boot.FILE, Slot.parse(p['slot_id']).file(params['image_dir'], '.' + params['format']))
        sysfs = devctl.open_sysfs(p['sysfs_root'])
        device = boot.nvme_controller(sysfs, nvme)
        if device.driver == devctl.VFIO_DRIVER:
            marker_path = Slot.parse(p['slot_id']).file(params['state_dir'], '.image.json')
            marker = read_marker(marker_path, [])
            want = dict(version=MARKER_VERSION, slot_id=p['slot_id'], source_format=params['source_format'],
                        source_checksum='%s:%s' % parse_checksum(params['checksum']), target_format='raw',
                        size=parse_size(params['size']))
            if boot.image_marker_matches(marker, want):
                return dict(boot.record(boot.NVME, marker['target'], device.address),
                            written={'marker': marker_path, 'source_checksum': want['source_checksum']})
        params['target_device'] = boot.nvme_namespace(sysfs, p['proc_root'], p['dev_root'], device)
        return boot.record(boot.NVME, params['target_device'], device.address)
