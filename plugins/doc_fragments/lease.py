# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """The options of every module that takes a slot's lease under its lock (``_lease.LEASE_ARGS``)."""

    DOCUMENTATION = r'''
options:
  lease_dir:
    description: The node's lease directory (created with mode 0700 when missing).
    type: path
    default: /var/lib/gpuaas/node-scheduler/leases
  lock_timeout:
    description: Seconds to wait for another process's lock on the slot's lease before failing (1 to 3600).
    type: int
    default: 30
'''
