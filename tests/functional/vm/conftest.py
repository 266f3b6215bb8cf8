# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the slot VM functional tests: the guest image, libvirtd, the slot network."""

from __future__ import annotations

import shutil

import pytest

from tests.functional.vm import env
from tests.guest import build_image


@pytest.fixture(scope='module')
def guest():
    if not shutil.which('apt-get') or not shutil.which('dpkg-deb'):
        pytest.skip('building the test guest needs apt-get and dpkg-deb (Debian)')
    return build_image.build()


@pytest.fixture(scope='module')
def libvirtd():
    try:
        with env.Libvirtd() as daemon:
            yield daemon
    except env.EnvironmentMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope='module')
def workdir():
    path = env.workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='module')
def network(workdir, libvirtd):
    try:
        with env.SlotNetwork(workdir) as net:
            yield net
    except env.EnvironmentMissing as exc:
        pytest.skip(str(exc))
