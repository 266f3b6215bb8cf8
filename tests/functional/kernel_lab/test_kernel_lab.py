# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot the real-kernel lab and run tests/kernel_lab inside it (what `make kernel-lab` does)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(REPO, 'lab', 'kernel'))

import kernel_lab  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.skipif(not shutil.which('qemu-system-x86_64'), reason='QEMU is not installed')
def test_the_kernel_lab_suite_passes_on_a_real_kernel(tmp_path):
    rc = kernel_lab.run(kernel_lab.DEFAULT_COMMAND, timeout=900, keep=str(tmp_path))
    output = (tmp_path / 'output.log').read_text() if (tmp_path / 'output.log').exists() else ''
    assert rc == 0, output[-4000:]
    assert ' passed' in output and 'failed' not in output.splitlines()[-1]
