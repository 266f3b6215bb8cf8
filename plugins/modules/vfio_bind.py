#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: vfio_bind
short_description: Bind a PCI device and its whole IOMMU group to vfio-pci, or give it back
version_added: 0.1.0
description:
  - With O(state=present), moves the function at O(address) and every other function of its
    IOMMU group to C(vfio-pci), so that the group can be passed through to a VM. A GPU's HDMI
    audio or USB-C functions move with it; PCI bridges in the group stay with the host, as vfio
    allows.
  - "It does it the way the kernel expects, function by function: write V(vfio-pci) to
    C(driver_override), write the address to C(drivers/<current driver>/unbind), write it to
    C(bus/pci/drivers_probe) (which then probes vfio-pci only), and wait up to O(timeout) seconds
    for the C(driver) link; then it waits for C(/dev/vfio/<group>)."
  - Before the first write it records each function's original driver and C(driver_override) in
    C(<state_dir>/<address>.json) (written atomically). O(state=absent) restores exactly that;
    it puts the override back, unbinds from vfio-pci and binds the recorded driver (through
    C(drivers/<driver>/bind)), then removes the file. The record survives a crash in the
    middle of either direction, so running the module again finishes the job.
  - Without a record, O(state=absent) releases the functions of the group that are on vfio-pci
    (or have a vfio-pci override) to whatever driver the kernel picks (C(drivers_probe)).
  - "It refuses, changing nothing, when: the address is malformed or no such function exists;
    the IOMMU is off or the device has no IOMMU group; vfio-pci is not loaded; the group holds a
    function of another physical device that a host driver drives (the SATA controller behind a
    chipset port without ACS, for example), unless listed in O(allow_group_members); a function
    is in use by the host (a mounted, swap or device-mapper/md-held block device below it, a
    network interface that is up with a global or site address or enslaved to a bridge or bond,
    a framebuffer console); a function is an SR-IOV PF with VFs; or a process holds the group's
    C(/dev/vfio) node open (a running VM), when the module would have to change its bindings."
  - When a step fails or times out, the module fails and says which step, of how many, and what
    the device is bound to now; the record stays, so O(state=absent) can undo what was done.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.sysfs
  - gpuaas.slice.device
attributes:
  check_mode:
    support: full
    details: Computes and returns the steps it would take; writes nothing, not even the record.
  diff_mode:
    support: full
    details: Returns each function's driver and driver_override before and after.
  idempotent:
    support: full
options:
  address:
    description:
      - Full PCI address (C(domain:bus:device.function), for example V(0000:1b:00.0)) of the
        device; its whole IOMMU group is bound or released with it.
      - Any PCI segment works (V(0001:01:00.0)).
    type: str
    required: true
  state:
    description:
      - V(present) binds the group to vfio-pci; V(absent) gives it back to the drivers it had.
    type: str
    choices: [present, absent]
    default: present
  state_dir:
    description:
      - Directory of the records of original drivers, one C(<address>.json) per bound device,
        and of the lock file that keeps two runs on one host apart.
    type: path
    default: /var/lib/gpuaas/vfio
  timeout:
    description:
      - Seconds to wait for the kernel to finish each unbind and bind (and for C(/dev/vfio/<group>)
        to appear); a finite number from 0.001 to 3600, checked before anything is written.
    type: float
    default: 10
  allow_group_members:
    description:
      - Full PCI addresses of functions of other physical devices in the same IOMMU group that
        may move to vfio-pci with the device, because the host does not need them (the slot's
        own NVMe behind a switch without ACS, for example). They are still checked for use by
        the host.
    type: list
    elements: str
    default: []
  dev_root:
    description:
      - Where devtmpfs is mounted; the module waits for C(<dev_root>/vfio/<group>).
      - Only tests and labs change it.
    type: path
    default: /dev
seealso:
  - module: gpuaas.slice.slot_discovery_info
  - module: gpuaas.slice.pci_reset
  - module: gpuaas.slice.sriov_vfs
notes:
  - Needs root. It reads C(/proc/<pid>/fd) to find processes holding C(/dev/vfio/<group>) or
    C(/dev/vfio/devices/vfioN) open, and runs C(ip -j addr show dev IFNAME) for each network
    interface of a function bound to a host driver.
  - Binding a GPU that drives the host's console is refused; discovery never proposes one.
'''

EXAMPLES = r'''
- name: Give slot 0's GPU (and its HDMI audio function) to vfio-pci
  gpuaas.slice.vfio_bind:
    address: "0000:18:00.0"
  register: gpu

- name: The slot's NVMe and fabric VF too
  gpuaas.slice.vfio_bind:
    address: "{{ item }}"
  loop: ["0000:1c:00.0", "0000:1a:00.1"]

- name: After the VM is gone, give the GPU back to the driver it had
  gpuaas.slice.vfio_bind:
    address: "0000:18:00.0"
    state: absent
'''

RETURN = r'''
address:
  description: The canonical address of the device.
  returned: always
  type: str
  sample: "0000:18:00.0"
state:
  description: The O(state) asked for.
  returned: always
  type: str
  sample: present
iommu_group:
  description: The device's IOMMU group.
  returned: always
  type: str
  sample: "23"
functions:
  description: The functions bound or released together (the group without its bridges).
  returned: always
  type: list
  elements: str
  sample: ["0000:18:00.0", "0000:18:00.1"]
actions:
  description: The writes the module made (or would make in check mode), in order.
  returned: always
  type: list
  elements: str
  sample:
    - "record the original drivers in /var/lib/gpuaas/vfio/0000:18:00.0.json"
    - "0000:18:00.0: set driver_override to vfio-pci: write 'vfio-pci' to
       /sys/bus/pci/devices/0000:18:00.0/driver_override"
    - "0000:18:00.0: unbind from nvidia: write '0000:18:00.0' to /sys/bus/pci/drivers/nvidia/unbind"
    - "0000:18:00.0: probe (binds to vfio-pci through driver_override): write '0000:18:00.0' to
       /sys/bus/pci/drivers_probe"
original_drivers:
  description: The driver each function had before vfio_bind (null when it had none).
  returned: always
  type: dict
  sample: {"0000:18:00.0": "nvidia", "0000:18:00.1": "snd_hda_intel"}
bindings:
  description: The driver each function is bound to now (predicted in check mode).
  returned: always
  type: dict
  sample: {"0000:18:00.0": "vfio-pci", "0000:18:00.1": "vfio-pci"}
vfio_device:
  description: The group's vfio device node, for the VM definition; null for O(state=absent).
  returned: always
  type: str
  sample: /dev/vfio/23
state_file:
  description: The record of the original drivers.
  returned: always
  type: str
  sample: /var/lib/gpuaas/vfio/0000:18:00.0.json
reasons:
  description: Why the module refused to act.
  returned: failure
  type: list
  elements: str
  sample: ["IOMMU group 7 also holds 0000:00:17.0 (SATA controller, class 0x010601, driver ahci), ..."]
failed_step:
  description: The step that failed or timed out.
  returned: failure
  type: str
  sample: "0000:18:00.0: probe (binds to vfio-pci through driver_override): write ..."
completed_steps:
  description: The steps done before the one that failed.
  returned: failure
  type: list
  elements: str
  sample: []
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import engine_of
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._vfio import DEFAULT_STATE_DIR, VfioBind

ARGUMENT_SPEC = with_sysfs_args(dict(
    address=dict(type='str', required=True),
    state=dict(type='str', choices=['present', 'absent'], default='present'),
    state_dir=dict(type='path', default=DEFAULT_STATE_DIR),
    timeout=dict(type='float', default=10.0),
    allow_group_members=dict(type='list', elements='str', default=[]),
    dev_root=dict(type='path', default='/dev'),
))


def main():
    run_module(ARGUMENT_SPEC, engine_of(VfioBind))


if __name__ == '__main__':
    main()
