# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM tests' environment cleans up after a run that was killed (CI runs right after one)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.functional.vm import env

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='making a bridge needs root')


def test_the_bridge_of_a_dead_test_process_is_swept_and_a_live_ones_is_kept():
    dead = subprocess.Popen(['true'])
    dead.wait()
    stale, live = '%s%d' % (env.BRIDGE_PREFIX, dead.pid), '%s%d' % (env.BRIDGE_PREFIX, os.getpid())
    try:
        for name in (stale, live):
            subprocess.run(['ip', 'link', 'add', 'name', name, 'type', 'bridge'], check=True)
        swept = env.sweep_stale_bridges()
        assert stale in swept and live not in swept, swept
        assert not os.path.exists('/sys/class/net/' + stale)
        assert os.path.exists('/sys/class/net/' + live)
    finally:
        for name in (stale, live):
            subprocess.run(['ip', 'link', 'del', name], check=False, capture_output=True)
