# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``kernel`` pytest fixture: a sample host whose sysfs is the kernel model.

Import it into a test module (``from tests.sysfs.kernel_fixture import kernel``) and call
``kernel('workstation')``: it builds the host under ``tmp_path``, wraps it in a
:class:`~tests.sysfs.kernel_model.KernelModel`, points ``_devctl.open_sysfs`` at the model
(and fails the test if a module opens any other sysfs root), puts a
:class:`~tests.sysfs.fake_tools.FakeTools` in place of ``run_command``/``get_bin_path``,
and returns a :class:`KernelHost`.
"""

from __future__ import annotations

import os

import pytest

from . import device_hosts, hosts
from .fake_tools import FakeTools
from .kernel_model import KernelModel
from .snapshot import changes, snapshot

BUILDERS = dict(hosts.HOSTS)
BUILDERS.update(device_hosts.HOSTS)


class KernelHost:
    """A built host: paths, the model, the fake tools and a whole-tree snapshot."""

    def __init__(self, base, name, model_kwargs, tools_kwargs, build_kwargs):
        self.base = base
        self.sys, self.proc = BUILDERS[name](base, **build_kwargs)
        self.dev = os.path.join(base, 'dev')
        self.state = os.path.join(base, 'state')
        self.model = KernelModel(self.sys, dev_root=self.dev, proc_root=self.proc, **model_kwargs)
        self.tools = FakeTools(self.model, **tools_kwargs)

    @property
    def args(self):
        """The module options that point a module at this host."""
        return {'sysfs_root': self.sys, 'proc_root': self.proc}

    def snapshot(self):
        """Every path, file and link of sys/, proc/, dev/ and the state directory."""
        return snapshot(self.sys, self.proc, self.dev, self.state)

    def assert_unchanged(self, before):
        diff = changes(before, self.snapshot())
        assert not diff, 'the tree changed:\n' + '\n'.join(diff[:40])

    def divert(self, rel):
        """Make the attribute ``rel`` a symlink to a file outside the tree; that file's path.

        The hostile host of issue 16: a module that follows the link writes the outside file
        (the model does what open() does there) or trusts what it reads from it.
        """
        victim = os.path.join(self.base, 'outside', rel.replace('/', '_'))
        os.makedirs(os.path.dirname(victim), exist_ok=True)
        with open(victim, 'w') as handle:
            handle.write('1\n')
        real = os.path.realpath(self.model.path(rel))
        if os.path.lexists(real):
            os.unlink(real)
        os.symlink(victim, real)
        return victim

    def driver(self, address):
        return self.model.link_name('bus/pci/devices/%s/driver' % address)

    def override(self, address):
        return self.model.read('bus/pci/devices/%s/driver_override' % address)


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """``kernel(name, model=..., tools=..., **build_kwargs)`` -> KernelHost."""
    from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl

    built = []

    def open_sysfs(root):
        for host in built:
            if os.path.abspath(root) == host.model.root:
                return host.model
        raise AssertionError('a module opened sysfs at %s, not the model\'s tree' % root)

    def make(name, model=None, tools=None, **build_kwargs):
        host = KernelHost(str(tmp_path / name), name, model or {}, tools or {}, build_kwargs)
        built.append(host)
        monkeypatch.setattr(_devctl, 'open_sysfs', open_sysfs)
        host.tools.install(monkeypatch)
        return host
    return make


class StubModule:
    """What the engines use of AnsibleModule, for engine-level tests and the benchmark."""

    def __init__(self, tools=None, check_mode=False, diff=False):
        self.tools = tools
        self.check_mode = check_mode
        self._diff = diff
        self.warnings = []

    def atomic_move(self, src, dest):
        os.replace(src, dest)

    def run_command(self, args, **kwargs):
        return self.tools.run_command(args, **kwargs)

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return self.tools.get_bin_path(name)

    def warn(self, message):
        self.warnings.append(message)
