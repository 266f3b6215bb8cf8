# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: argument specs shared by several modules."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

SYSFS_ARGS = dict(
    sysfs_root=dict(type='path', default='/sys'),
    proc_root=dict(type='path', default='/proc'),
)


def with_sysfs_args(spec):
    """A module's argument spec extended with the shared sysfs/procfs options."""
    merged = dict(SYSFS_ARGS)
    merged.update(spec)
    return merged
