# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the host side of an allocation in one module process (slot_provision).

Once the slot is checked, leased and has its token, the allocate role's remaining steps run
here in order, each by the engine of its own module (``_compose.py``): the network
(slot_network), the boot disk (slot_image), the seed (slot_seed), the devices to vfio-pci
(vfio_bind, each device), the VM up to its DHCP lease (slot_vm), and the lease moved to
``running``. Every step converges, so running the module again with the same allocation
after a crash finishes the allocation; a failure names the step and leaves the lease in
``provisioning`` for a release or a second allocate.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils._compose import Composite, failure
from ansible_collections.gpuaas.slice.plugins.module_utils._image import ARGUMENT_SPEC as IMAGE_SPEC, RULES as IMAGE_RULES, Image
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import require_libvirt
from ansible_collections.gpuaas.slice.plugins.module_utils._seed import ARGUMENT_SPEC as SEED_SPEC, RULES as SEED_RULES, Seed
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_network import (
    ARGUMENT_SPEC as NETWORK_SPEC, RULES as NETWORK_RULES, SlotNetwork)
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_vm import RULES as VM_RULES, SlotVm, argument_spec as slot_vm_spec
from ansible_collections.gpuaas.slice.plugins.module_utils._vfio import VfioBind
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError, Slot, ssh_access

NETWORK = "Wire the slot's network (DHCP entry, port, flows)"
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
        network = self.part('network', NETWORK_SPEC, NETWORK_RULES, dict(p['network'], **slot))
        image = self.part('image', IMAGE_SPEC, IMAGE_RULES, dict(p['image'], **slot))
        seed = self.part('seed', SEED_SPEC, SEED_RULES, dict(
            p['seed'], allocation_id=p['allocation_id'], telemetry_token=p['telemetry_token'], **slot))
        vm = self.part('vm', slot_vm_spec(), VM_RULES, dict(p['vm'], slot_id=p['slot_id'], state='running'))
        # What the tenant logs in with: the slot's public SSH port (slot_network opens it) and the seed's user.
        access = ssh_access(Slot.parse(p['slot_id']), p['ssh_host'], network.params['ssh_port_base'],
                            seed.params['login_user'])
        require_libvirt(module)
        self.record('network', NETWORK, lambda: net.engine(SlotNetwork)(network))
        target = self.record('image', IMAGE, lambda: Image(image))['target']
        path = self.record('seed', SEED, lambda: Seed(seed))['path']
        self.results['devices'] = [self.step(DEVICES, lambda: VfioBind(
            module, address, state_dir=p['vfio_state_dir'], sysfs_root=p['sysfs_root'], proc_root=p['proc_root'],
            dev_root=p['dev_root']))['bindings'] for address in p['devices']]
        vm.params.update(disk=vm.params['disk'] or target, seed=vm.params['seed'] or path)
        name, ip = self.record('vm', VM, lambda: SlotVm(vm))['name'], self.results['vm'].get('ip')
        lease = self.step(RUNNING, lambda: self.lease(phase='running', data={'domain': name, 'address': ip,
                                                                             'access': access}))
        return self.plan.result(lease=lease['lease'], seconds=self.seconds, access=access, **self.results)
