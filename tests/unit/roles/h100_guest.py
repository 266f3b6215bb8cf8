# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real H100 passthrough guest (tests/fixtures/real/h100-passthrough-guest) as the guest
agent reads it: its /sys/bus/pci/devices rebuilt as a tree from the recorded attribute files,
its nvidia-smi output; and the agent file loaded as a module."""

from __future__ import annotations

import importlib.util
import os

from tests.conftest import REPO

AGENT_FILE = os.path.join(REPO, 'roles', 'host_prep', 'files', 'gpuaas_guest_agent.py')
FIXTURE = os.path.join(REPO, 'tests', 'fixtures', 'real', 'h100-passthrough-guest')
GPU = '0000:00:06.0'


def load_agent():
    """The agent as a module (it is a script the guest runs, not an importable package)."""
    spec = importlib.util.spec_from_file_location('gpuaas_guest_agent', AGENT_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture(name):
    with open(os.path.join(FIXTURE, name), encoding='utf-8') as handle:
        return handle.read()


def recorded_attrs():
    """gpu-attrs.txt as {name: value} (the readable text attributes only)."""
    attrs = {}
    for line in fixture('gpu-attrs.txt').splitlines():
        name, _sep, value = line.partition(': ')
        if value.endswith('|') and not value.startswith(('<binary', 'cat:')) and name != 'resource':
            attrs[name] = value[:-1].replace('|', '\n')
    return attrs


def build_sysfs(root, gpu_attrs=None, resource=None, extra=()):
    """The recorded guest's /sys/bus/pci/devices: every function of pci-attrs.txt, the GPU
    with its recorded attributes and resource file (each overridable)."""
    base = root / 'bus' / 'pci' / 'devices'
    for line in fixture('pci-attrs.txt').splitlines() + list(extra):
        fields = dict(part.split('=', 1) for part in line.split()[1:])
        device = base / os.path.basename(line.split()[0])
        device.mkdir(parents=True)
        for key in ('class', 'vendor', 'device'):
            (device / key).write_text(fields[key] + '\n')
        (device / 'resource').write_text('0x0000000000000000 0x0000000000000000 0x0000000000000000\n' * 7)
    gpu = base / GPU
    if (gpu / 'class').exists():
        for name, value in dict(recorded_attrs(), **(gpu_attrs or {})).items():
            (gpu / name).write_text(value + '\n')
        (gpu / 'resource').write_text(fixture('gpu-resource.txt') if resource is None else resource)
    return root
