#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_seed
short_description: Write a slot VM's cloud-init NoCloud seed ISO
version_added: 0.1.0
description:
  - Writes C({seed_dir}/{slot_id}-seed.iso), an ISO 9660 image with volume id C(cidata) that
    cloud-init's NoCloud data source reads from the VM's CD-ROM.
  - C(meta-data) holds C(instance-id) (the allocation id, so a new allocation is a new instance
    to cloud-init) and C(local-hostname).
  - C(user-data) is C(#cloud-config) with the hostname (also in C(/etc/hosts), C(manage_etc_hosts), so that
    the guest resolves its own name), the tenant's SSH keys and a root-only file
    (O(telemetry_file)) holding the telemetry sink URL, token and allocation id as C(KEY=value)
    lines the guest's agent can source. O(user_data) adds the tenant's own cloud-config keys.
  - C(network-config) (version 2) turns on DHCP on the NIC whose MAC is the slot's; dnsmasq hands
    out the slot's fixed address.
  - Every file is written as JSON (which is YAML) from validated values; no tenant string is
    templated into YAML or a shell command. Refused before anything is written are host names
    that are not one RFC 1123 label, SSH keys of an unknown type or whose base64 body does not hold
    a key of that type, and any line break or control character in a key. Key options
    (C(command=...)) are refused too, and so are O(user_data) keys that the module sets itself.
  - The ISO records the SHA-256 of its content in its application id; a seed whose content would
    not change is not rewritten.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The seed's path and content hash before and after, and the new content (token redacted).
  idempotent:
    support: full
options:
  slot_id:
    description: The slot, C({node_id}-s{slot_index}); it names the ISO and gives the MAC.
    type: str
    required: true
  state:
    description: V(present) writes the seed; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  allocation_id:
    description:
      - The allocation, cloud-init's C(instance-id). 1-128 letters, digits, C(.), C(_), C(:) or C(-).
      - Required when O(state=present).
    type: str
  hostname:
    description: The VM's host name, one RFC 1123 label. Required when O(state=present).
    type: str
  ssh_keys:
    description:
      - The tenant's OpenSSH public keys, one per item (C(type base64 [comment])); the
        allocation's own name for them. They become the C(ssh_authorized_keys) of O(login_user).
    aliases: [ssh_authorized_keys]
    type: list
    elements: str
    default: []
  telemetry_token:
    description:
      - The allocation's telemetry token (16-512 characters from letters, digits and C(._~+/=-)).
      - Required when O(state=present).
    type: str
  telemetry_sink:
    description: The host-only telemetry sink the guest posts to.
    type: str
    default: http://10.100.0.1:9110/metrics
  telemetry_file:
    description: Where cloud-init writes the telemetry settings in the guest (mode 0600).
    type: str
    default: /etc/gpuaas/telemetry.env
  user_data:
    description:
      - Extra cloud-config keys from the tenant (C(packages), C(runcmd), C(write_files)...), written
        as data. C(hostname), C(fqdn), C(preserve_hostname), C(prefer_fqdn_over_hostname), C(manage_etc_hosts),
        C(ssh_authorized_keys) and C(users) are refused, and so is a C(write_files) entry for O(telemetry_file).
    type: dict
    default: {}
  login_user:
    description:
      - The user the tenant logs in as, made by cloud-init (C(users)) with O(ssh_keys), a locked password,
        C(/bin/bash) and sudo without a password. No distribution default user is made.
      - 1-32 lower-case letters, digits, C(_) and C(-), starting with a letter or C(_).
    type: str
    default: gpuaas
  approved:
    description:
      - The slot's approved facts, written to C(/etc/gpuaas/slot.json) in the guest for the guest agent's
        first-boot acceptance check. Keys C(gpu_model) (C(vendor:device)), C(link_speed) (C(32.0 GT/s PCIe)),
        C(link_width) (1-32), optional C(bars) (BAR index 0-5 to its size in bytes), C(nvme) and C(fabric_vf)
        (V(true), V(false) or a C(vendor:device) id). Unknown keys are refused.
      - When set, O(user_data) may not write that file.
    type: dict
  guest_agent:
    description:
      - The guest agent on the node (host_prep installs it as C({gpuaas_lib_dir}/guest/gpuaas_guest_agent.py)). When
        set, the seed delivers it for images that do not have it installed, as C(/usr/local/lib/gpuaas/gpuaas_guest_agent.py)
        (base64 in C(write_files)), a systemd unit C(gpuaas-guest-agent.service), and C(runcmd) entries (argv lists,
        after the tenant's) that enable and start it. The diff shows the agent's size and SHA-256, not its text.
    type: path
  fabric:
    description:
      - The slot's fabric interface in the guest, from the control plane's C(network.fabric.address)
        (docs/operator-guide.md, "Tenant networks").
      - "C(kind=ethernet) (RoCE) with C(address) (V(a.b.c.d/nn)) and C(mac), the VF's MAC: network-config
        gets C(fabric0), matched by that MAC, with the static address and no DHCP. The VLAN is the VF's,
        set on the PF (M(gpuaas.slice.fabric_vlan)): the guest sees untagged frames."
      - "C(kind=infiniband) with C(address), C(port_guid) (the VF's, colon form) and C(pkey) (the tenant's
        full-member key, V(0x8001) style): the seed writes C(/usr/local/lib/gpuaas/gpuaas-fabric-ipoib) and a
        oneshot unit C(gpuaas-fabric.service) (enabled and started by C(runcmd)) that finds the IPoIB
        interface whose hardware address ends with the port GUID, creates its child on the partition
        key (C(create_child), named C(PARENT.PKEY)) and puts the address on the child, at every boot."
      - Every value is checked first (an address with a prefix from /8 to /30, not the subnet's network
        or broadcast address; hex octets; a full member's key) and refused naming the field.
    type: dict
  seed_dir:
    description: The directory of the seed ISOs (created mode 0711 when missing).
    type: path
    default: /var/lib/gpuaas/seeds
requirements:
  - genisoimage or xorriso on the host
seealso:
  - module: gpuaas.slice.slot_vm
notes:
  - The seed holds the telemetry token; it is written mode 0600 (libvirt gives it to QEMU while the
    VM runs).
'''

EXAMPLES = r'''
- name: Seed the VM of slot gpu-node-01-s0
  gpuaas.slice.slot_seed:
    slot_id: gpu-node-01-s0
    allocation_id: "{{ allocation.id }}"
    hostname: "{{ allocation.hostname }}"
    ssh_keys: "{{ allocation.ssh_keys }}"
    telemetry_token: "{{ allocation.telemetry_token }}"
  register: seed

- name: Pass the seed to the VM
  gpuaas.slice.slot_vm:
    slot_id: gpu-node-01-s0
    seed: "{{ seed.path }}"
    memory_mib: 245760
    cpulist: "8-27,120-139"

- name: Tenant extras, written as data
  gpuaas.slice.slot_seed:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
    hostname: train-01
    telemetry_token: "{{ token }}"
    user_data:
      packages: [nvidia-driver]
      runcmd: [[nvidia-smi, -pm, "1"]]

- name: Remove the seed after release
  gpuaas.slice.slot_seed:
    slot_id: gpu-node-01-s0
    state: absent
'''

RETURN = r'''
path:
  description: The seed ISO.
  returned: always
  type: str
  sample: /var/lib/gpuaas/seeds/gpu-node-01-s0-seed.iso
volume_id:
  description: The ISO's volume id, always C(cidata).
  returned: always
  type: str
  sample: cidata
content_hash:
  description: SHA-256 of the seed's files, as recorded in the ISO.
  returned: when O(state=present)
  type: str
  sample: 0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0
mac:
  description: The slot's MAC, which network-config matches.
  returned: when O(state=present)
  type: str
  sample: "52:54:4f:3c:9e:0a"
files:
  description: The content of meta-data, network-config and user-data (the token redacted).
  returned: when O(state=present)
  type: dict
  sample:
    meta-data: {"instance-id": "alloc-7f3a", "local-hostname": "train-01"}
    network-config: {"version": 2, "ethernets": {"slot0": {"match": {"macaddress": "52:54:4f:3c:9e:0a"},
                                                           "dhcp4": true}}}
    user-data: {"hostname": "train-01", "preserve_hostname": false, "manage_etc_hosts": true,
                "users": [{"name": "gpuaas", "ssh_authorized_keys": [], "lock_passwd": true, "shell": "/bin/bash",
                           "sudo": "ALL=(ALL) NOPASSWD:ALL"}],
                "write_files": [{"path": "/etc/gpuaas/telemetry.env", "permissions": "0600",
                                 "owner": "root:root", "content": "GPUAAS_TELEMETRY_TOKEN=********"}]}
actions:
  description: What was done (or would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [write seed]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._seed import ARGUMENT_SPEC, RULES, Seed


def main():
    run_module(ARGUMENT_SPEC, lambda module: Seed(module).run(), **RULES)


if __name__ == '__main__':
    main()
