# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """Options shared by every module that reads the host's sysfs."""

    DOCUMENTATION = r'''
options:
  sysfs_root:
    description:
      - Where sysfs is mounted.
      - Only tests and labs change it, to point the module at a sysfs tree laid out as the
        kernel lays out C(/sys).
    type: path
    default: /sys
  proc_root:
    description:
      - Where procfs is mounted; the module reads C(mounts) and C(swaps) there to find the
        block devices the host uses.
    type: path
    default: /proc
'''
