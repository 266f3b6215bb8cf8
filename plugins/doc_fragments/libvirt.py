# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """The libvirt connection option every libvirt module shares."""

    DOCUMENTATION = r'''
options:
  uri:
    description:
      - The libvirt connection URI.
      - V(qemu:///system) on a GPU host; tests may point at another daemon, for example
        V(qemu:///system?socket=/run/test/libvirt-sock).
    type: str
    default: qemu:///system
requirements:
  - libvirt-python (the Python binding of the libvirt version on the host)
'''
