#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pci_reset
short_description: Reset a PCI function with a method the kernel offers
version_added: 0.1.0
description:
  - Resets the function at O(address) by writing V(1) to its C(reset) attribute; the kernel uses
    the first method of C(reset_method) that works (C(flr), C(pm), C(bus)...).
  - With O(method), only that method is used. The module writes it to C(reset_method) first, as
    the kernel allows, resets, and writes the original list back.
  - "A device that offers no method (C(reset_method) empty, or absent together with C(reset))
    cannot be reset by the host: the module fails with RV(reset_methods=[]) and
    RV(needs_manual_care=true), so that discovery and approval can mark the slot as needing
    manual care. A reset the kernel reports as failed also fails the module with
    RV(needs_manual_care=true): quarantine the slot."
  - It refuses to reset a function the host uses (a mounted block device below it, an up network
    interface with an address, the framebuffer console) or whose C(/dev/vfio) node a process
    holds open (a running VM).
  - A reset is an action, not a state; every run that resets reports C(changed).
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.sysfs
  - gpuaas.slice.device
attributes:
  check_mode:
    support: full
    details: Checks everything and reports the method it would use; resets nothing.
  diff_mode:
    support: partial
    details: Before/after, keyed by the address, say which method reset the device; a reset
      changes no visible state.
  idempotent:
    support: none
    details: Each run resets the device again.
options:
  address:
    description:
      - Full PCI address of the function, for example V(0000:18:00.0).
    type: str
    required: true
  method:
    description:
      - Use only this reset method; it must be one of those the device offers. Unset, the
        kernel tries its methods in order.
    type: str
    choices: [device_specific, acpi, flr, af_flr, pm, bus, cxl_bus]
seealso:
  - module: gpuaas.slice.vfio_bind
  - module: gpuaas.slice.slot_discovery_info
notes:
  - Resetting a GPU bound to a host driver is allowed (the kernel saves and restores its state
    around the reset), but the usual time is after the VM stopped, while it is bound to vfio-pci.
'''

EXAMPLES = r'''
- name: Reset the slot's GPU after its VM stopped
  gpuaas.slice.pci_reset:
    address: "0000:18:00.0"
  register: reset
  failed_when: false

- name: Quarantine a slot whose GPU did not reset
  ansible.builtin.debug:
    msg: "slot needs manual care: {{ reset.msg }}"
  when: reset.needs_manual_care | default(false)

- name: Force a secondary bus reset
  gpuaas.slice.pci_reset:
    address: "0000:18:00.0"
    method: bus
'''

RETURN = r'''
address:
  description: The function's canonical address.
  returned: always
  type: str
  sample: "0000:18:00.0"
reset_methods:
  description: The methods the device offers, in the kernel's order; V([]) when it offers none;
    null on a kernel without C(reset_method).
  returned: always
  type: list
  elements: str
  sample: [flr, bus]
method:
  description: The method used (the first offered one unless O(method) is set).
  returned: success
  type: str
  sample: flr
needs_manual_care:
  description: Whether the host cannot reset the device (no method, or the reset failed).
  returned: always
  type: bool
  sample: false
actions:
  description: The writes made, in order.
  returned: success
  type: list
  elements: str
  sample: ["0000:18:00.0: reset (flr): write '1' to /sys/bus/pci/devices/0000:18:00.0/reset"]
duration_s:
  description: How long the reset took, in seconds (0 in check mode).
  returned: success
  type: float
  sample: 0.112
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import engine_of
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._reset import RESET_METHODS, PciReset

ARGUMENT_SPEC = with_sysfs_args(dict(
    address=dict(type='str', required=True),
    method=dict(type='str', choices=list(RESET_METHODS)),
))


def main():
    run_module(ARGUMENT_SPEC, engine_of(PciReset))


if __name__ == '__main__':
    main()
