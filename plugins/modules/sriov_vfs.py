#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: sriov_vfs
short_description: Set an SR-IOV PF's VF count and the VF properties tenants must not control
version_added: 0.1.0
description:
  - Converges the running state of the SR-IOV PF at O(address) to O(num_vfs) VFs, each with a
    deterministic MAC (Ethernet) or node and port GUID (InfiniBand), spoof checking on, trust
    off and the link state O(link_state). It returns the VFs' PCI addresses.
  - The count is C(sriov_numvfs). The kernel refuses to change a non-zero count to another
    non-zero count, so a change goes through 0, which destroys every VF; the module refuses
    that while a VF is bound to vfio-pci or a process holds its C(/dev/vfio) node. It refuses
    more than C(sriov_totalvfs) VFs, a VF's address, a PF without a driver or bound to vfio-pci,
    and, unless O(vf_identity=none), PFs that are neither Ethernet (class 0x0200) nor
    InfiniBand (0x0207).
  - "VFs of other PFs (an NVMe controller, an accelerator) carry no MAC or GUID. With
    O(vf_identity=none) the module converges only their count; nothing is set on the VFs, and
    RV(kind) is V(other)."
  - "Ethernet VFs are set in one command each, from the PF's interface:
    C(ip link set dev <pf> vf N mac <mac> spoofchk on trust off state <link_state>)."
  - "InfiniBand VFs are set through the mlx5 C(sriov/N/node), C(sriov/N/port) and
    C(sriov/N/policy) files of the PF where the driver has them (MLNX_OFED), otherwise with
    C(ip link set dev <ipoib> vf N node_guid <guid> port_guid <guid> state <link_state>)
    (see O(ib_method)). Where the kernel does not report VF GUIDs back, they are set on every
    run and a warning says they could not be verified."
  - "The values are derived, not chosen: the MAC is 6 bytes of
    C(sha256(\"vf-mac:{node_id}:{pf_address}:{vf_index}\")), the node and port GUIDs 8 bytes of
    C(sha256(\"vf-node-guid:...\")) and C(sha256(\"vf-port-guid:...\")), each with the first octet's
    locally-administered bit set and group bit cleared (so never all zero). The approved slot
    map ties a slot to its VF's address, so a slot's VF MAC/GUID follows from the layout."
  - After setting them, the module reads every VF back and fails if one holds another value.
  - Persisting VFs across reboots is the host_prep role's job; this module only converges the
    running state.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.sysfs
  - gpuaas.slice.device
attributes:
  check_mode:
    support: full
    details: Returns the writes and commands it would run, and the VF addresses the kernel will
      give the new VFs (from C(sriov_offset) and C(sriov_stride)).
  diff_mode:
    support: full
    details: The plan's changes before and after, by key; V(num_vfs) for the VF count and
      C(vf N) for the properties of each VF that is set.
  idempotent:
    support: partial
    details: Fully idempotent where the kernel reports the VF properties back (Ethernet, and
      InfiniBand through the mlx5 sysfs files); InfiniBand GUIDs set through C(ip link) on a kernel
      that does not report them are set again on every run.
options:
  address:
    description:
      - Full PCI address of the PF, for example V(0000:1a:00.0).
    type: str
    required: true
  num_vfs:
    description:
      - The number of VFs the PF must have; V(0) removes them all.
      - 0 to 65535 (the kernel's C(sriov_numvfs) is a 16-bit number), and at most the PF's
        C(sriov_totalvfs); anything else is refused before the module reads or writes sysfs.
    type: int
    required: true
  node_id:
    description:
      - The host's node id (as for M(gpuaas.slice.slot_discovery_info)); the VF MACs and GUIDs are
        derived from it, the PF address and the VF index.
    type: str
    required: true
  link_state:
    description:
      - The VFs' link state. V(auto) follows the PF's link, V(enable) and V(disable) force it.
    type: str
    choices: [auto, enable, disable]
    default: auto
  drivers_autoprobe:
    description:
      - Set C(sriov_drivers_autoprobe) before creating VFs. V(false) leaves new VFs without a
        driver, so they go to vfio-pci without first appearing as host interfaces.
      - Unset, it is left as it is.
    type: bool
  ib_method:
    description:
      - How InfiniBand VF GUIDs are set. V(auto) uses the mlx5 C(sriov/N/) files when the PF has
        them and C(ip link) otherwise.
    type: str
    choices: [auto, sysfs, ip]
    default: auto
  vf_identity:
    description:
      - V(derived) gives every VF its derived MAC (Ethernet) or node and port GUID (InfiniBand), and
        refuses a PF of any other class.
      - "V(none) says the PF's VFs carry no MAC or GUID (NVMe controllers, accelerators): only their
        count is converged. It is refused on an Ethernet or InfiniBand PF, whose VFs always get
        their identity, spoof checking and trust off."
    type: str
    choices: [derived, none]
    default: derived
  timeout:
    description:
      - Seconds to wait for the kernel to create or remove the VFs; a finite number from
        0.001 to 3600 (V(nan), V(inf) and the like are refused before anything is written).
    type: float
    default: 30
seealso:
  - module: gpuaas.slice.vfio_bind
  - module: gpuaas.slice.slot_discovery_info
notes:
  - Needs root and, for Ethernet and for InfiniBand without the mlx5 sysfs files, C(ip) from
    iproute2.
  - With C(sriov_drivers_autoprobe) on, the PF driver probes each new VF. An NVMe controller keeps
    its VFs offline until its Virtualization Management command brings them online (QEMU's do),
    and nvme's probe of an offline VF fails shortly after the module returns, leaving it without
    a driver (RV(vfs) may still show V(nvme) for it). For VFs that go to vfio-pci, set
    O(drivers_autoprobe=false).
'''

EXAMPLES = r'''
- name: Eight VFs on the slot fabric PF, MACs/GUIDs from the layout
  gpuaas.slice.sriov_vfs:
    address: "0000:1a:00.0"
    num_vfs: 8
    node_id: "{{ inventory_hostname_short }}"
  register: fabric

- name: Hand VF 0 to vfio-pci for slot 0
  gpuaas.slice.vfio_bind:
    address: "{{ fabric.vf_addresses[0] }}"

- name: Two VFs of an SR-IOV NVMe controller (no MAC or GUID), left without a host driver
  gpuaas.slice.sriov_vfs:
    address: "0000:1c:00.0"
    num_vfs: 2
    node_id: ws-01
    vf_identity: none
    drivers_autoprobe: false

- name: VFs that come up without a host driver
  gpuaas.slice.sriov_vfs:
    address: "0000:03:00.0"
    num_vfs: 4
    node_id: ws-01
    drivers_autoprobe: false
'''

RETURN = r'''
address:
  description: The PF's canonical address.
  returned: always
  type: str
  sample: "0000:1a:00.0"
kind:
  description: V(ethernet) or V(infiniband), from the PF's class; V(other) with O(vf_identity=none).
  returned: always
  type: str
  sample: infiniband
method:
  description: How the VF properties were set (V(ip) or V(sysfs)); null without VFs and with
    O(vf_identity=none).
  returned: always
  type: str
  sample: sysfs
netdev:
  description: The PF's network interface, or null when it has none.
  returned: always
  type: str
  sample: ibp26s0
num_vfs:
  description: The VF count now.
  returned: always
  type: int
  sample: 8
total_vfs:
  description: The PF's C(sriov_totalvfs).
  returned: always
  type: int
  sample: 16
vf_addresses:
  description: The VFs' PCI addresses, by VF index (predicted in check mode).
  returned: always
  type: list
  elements: str
  sample: ["0000:1a:00.1", "0000:1a:00.2"]
vfs:
  description: Every VF with its index, address, driver and properties.
  returned: always
  type: list
  elements: dict
  sample:
    - {index: 0, address: "0000:1a:00.1", driver: mlx5_core, node_guid: "8e:0d:d4:c1:fd:dc:38:a4",
       port_guid: "e2:ad:1b:cf:24:48:10:6c", link_state: auto}
actions:
  description: The writes and commands, in order.
  returned: always
  type: list
  elements: str
  sample: ["0000:1a:00.0: create 8 VFs: write '8' to /sys/bus/pci/devices/0000:1a:00.0/sriov_numvfs"]
commands:
  description: The argv of every command the module ran (or would run).
  returned: always
  type: list
  elements: list
  sample: [["/usr/sbin/ip", "link", "set", "dev", "enp3s0f0np0", "vf", "0", "mac",
            "96:bf:df:86:c9:f5", "spoofchk", "on", "trust", "off", "state", "auto"]]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import engine_of
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import (
    LINK_STATES,
    VF_IDENTITIES,
    SriovVfs,
)

ARGUMENT_SPEC = with_sysfs_args(dict(
    address=dict(type='str', required=True),
    num_vfs=dict(type='int', required=True),
    node_id=dict(type='str', required=True),
    link_state=dict(type='str', choices=list(LINK_STATES), default='auto'),
    drivers_autoprobe=dict(type='bool'),
    ib_method=dict(type='str', choices=['auto', 'sysfs', 'ip'], default='auto'),
    vf_identity=dict(type='str', choices=list(VF_IDENTITIES), default='derived'),
    timeout=dict(type='float', default=30.0),
))


def main():
    run_module(ARGUMENT_SPEC, engine_of(SriovVfs))


if __name__ == '__main__':
    main()
