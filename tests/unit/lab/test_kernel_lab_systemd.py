# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel lab's systemd boot: its target, service and setup script, checked without booting.

The boot itself runs in tests/functional/kernel_lab; these catch a broken unit or a setup
script that would reach outside the guest's overlay before a slow TCG boot does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'lab', 'kernel'))
import kernel_lab  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.skipif(not shutil.which('systemd-analyze'), reason='needs systemd-analyze (Debian package systemd)')
def test_the_lab_target_and_service_pass_systemd_analyze_verify(tmp_path):
    units = kernel_lab.systemd_units(600)
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run(['systemd-analyze', 'verify', '--man=no'] + [str(tmp_path / name) for name in units],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    service = units[kernel_lab.SYSTEMD_SERVICE]
    # The command's end, success or not, powers the guest off.
    assert 'SuccessAction=poweroff-force' in service and 'FailureAction=poweroff-force' in service
    assert 'ExecStart=/bin/sh /mnt/run.sh' in service
    target = units[kernel_lab.SYSTEMD_TARGET]
    assert 'Requires=%s' % kernel_lab.SYSTEMD_SERVICE in target and 'JobTimeoutSec=600' in target


def test_the_setup_script_stays_inside_the_overlay_and_starts_from_an_empty_node():
    script = kernel_lab.systemd_setup('/repo/.build/kernel-lab/modules-x/lib/modules')
    lines = script.splitlines()
    assert lines[0] == 'set -e'
    assert 'mount --bind /repo/.build/kernel-lab/modules-x/lib/modules /lib/modules' in lines
    assert 'rm -rf /etc/systemd/system/*.target.wants' in lines
    assert 'rm -f /.dockerenv /run/.containerenv' in lines
    # What it removes (in the overlay's upper layer) is the host's state of host_prep's
    # services, named absolutely, never a whole top-level directory.
    for path in kernel_lab.SYSTEMD_FRESH:
        assert path.startswith('/') and path.count('/') >= 2 and '..' not in path, path
    assert '/var/lib/gpuaas' in kernel_lab.SYSTEMD_FRESH and '/etc/openvswitch/conf.db' in kernel_lab.SYSTEMD_FRESH


def test_the_systemd_boot_is_the_same_machine_starting_the_lab_target_only():
    plain = kernel_lab.qemu_argv('vmlinuz', 'initrd', '/results')
    argv = kernel_lab.systemd_qemu_argv('vmlinuz', 'initrd', '/results')
    append = argv.index('-append') + 1
    assert argv[:append] + argv[append + 1:] == plain[:append] + plain[append + 1:]
    assert argv[append].startswith(plain[append] + ' ')
    added = argv[append][len(plain[append]):].split()
    assert added == ['systemd.unit=gpuaas-lab.target', 'systemd.firstboot=off', 'systemd.show_status=error']
