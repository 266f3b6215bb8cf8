# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot the real-kernel lab and run tests/kernel_lab inside it (what `make kernel-lab` does):
once in a chroot of the host's tree, once with systemd as PID 1 for host_prep's units."""

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


@pytest.mark.skipif(not shutil.which('qemu-system-x86_64'), reason='QEMU is not installed')
def test_host_prep_units_run_under_systemd_in_the_lab(tmp_path):
    rc = kernel_lab.run_systemd(kernel_lab.SYSTEMD_COMMAND, timeout=900, keep=str(tmp_path))
    output = (tmp_path / 'output.log').read_text() if (tmp_path / 'output.log').exists() else ''
    journal = (tmp_path / 'journal.log').read_text() if (tmp_path / 'journal.log').exists() else ''
    assert rc == 0, output[-4000:] + journal[-4000:]
    # They ran under systemd, not skipped as they are everywhere else.
    summary = output.strip().splitlines()[-1]
    assert ' passed' in summary and 'skipped' not in summary and 'failed' not in summary, output[-4000:]
