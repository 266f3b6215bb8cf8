# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """What every device module (vfio_bind, sriov_vfs, pci_reset, nvme_wipe) promises."""

    DOCUMENTATION = r'''
options: {}
notes:
  - "Fail closed: when the module cannot read what it checks (a O(proc_root) that is missing,
    not a procfs or unreadable), it refuses instead of taking the device for unused."
  - A sysfs attribute that resolves outside O(sysfs_root) (a symlink planted in the tree) is
    neither read nor written; a plan with such a write is refused before its first step.
  - Numeric options are checked (finite, in range) before anything is read or written, and
    every command runs as an argument list in the C locale; a tool that can hang runs under
    coreutils C(timeout).
'''
