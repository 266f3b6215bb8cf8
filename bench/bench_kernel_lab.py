# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How long the real-kernel lab takes: building its image, booting it, running its suite.

    python bench/bench_kernel_lab.py [--runs N] [--systemd-runs N] [--suite]

Cold build: the kernel and busybox .debs already downloaded, the initramfs made anew.
Boot: from starting QEMU (TCG) to the guest having run `true` in the host's tree and
powered off, so it includes the kernel's boot, the 9p mounts, the start of libvirtd and
virtlogd (for the slot_vm test) and the power-off.
Suite (--suite): what `make kernel-lab` runs, tests/kernel_lab in the guest, from starting
QEMU to the power-off; it includes libvirtd's QEMU capability probe under TCG (about a
minute, overlapping the first tests) and a nested TCG QEMU that opens a real VFIO group.
systemd boot (--systemd-runs N): the same machine booted into systemd as PID 1 on an
overlay of the host's tree (kernel_lab.py run --systemd), to its lab target's command
(`true`) and the power-off.

On the 2-core development machine (shared with other work, load about 5), December 2026,
`--runs 1 --suite`: image build 17.0 s cold, 7.1 s cached; boot to `true` 67.7 s; the
suite 213.8 s (20 tests in 98 s, the rest the guest's boot and pytest's start, about 55 s
of collecting under TCG). `make kernel-lab` with the image cached: 3 min 32 s, and 2 min 35 s on a quieter moment
(guest 149 s, the tests 64 s). Before the
real-VF and slot_vm tests, and with the host's tree mounted without cache=loose, it took
3 min 8 s for 15 tests.
The systemd boot, same machine, `--runs 1 --systemd-runs 1` (before the slot_vm tests'
libvirtd start in the chroot boot): boot to `true` 44.0 s against 33.8 s for the chroot
boot; its suite (kernel_lab.py run --systemd, tests/kernel_lab/test_systemd_units.py)
401 to 553 s by load, of which about 195 s the reconcile playbook gpuaas-reconcile.service
runs and 40 to 50 s the boot to the lab's service.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'lab', 'kernel'))
import kernel_lab  # noqa: E402


def time_boots(boot, runs, what):
    """Seconds of ``runs`` boots of ``boot`` (kernel_lab.run or run_systemd) to ``true`` and
    power-off; None (and why) when one fails."""
    seconds = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as results:
            start = time.perf_counter()
            rc = boot(['true'], timeout=600, keep=results)
            seconds.append(time.perf_counter() - start)
            if rc != 0:
                print('kernel-lab: %s failed (exit %d)' % (what, rc))
                return None
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--suite', action='store_true',
                        help='also time one run of the whole lab suite (make kernel-lab)')
    parser.add_argument('--systemd-runs', type=int, default=2)
    args = parser.parse_args()
    if not shutil.which('qemu-system-x86_64'):
        print('kernel-lab: qemu-system-x86_64 is not installed')
        return 1
    vmlinuz, _initrd = kernel_lab.build()           # downloads, once
    shutil.rmtree(os.path.dirname(vmlinuz))
    start = time.perf_counter()
    kernel_lab.build()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    kernel_lab.build()
    warm = time.perf_counter() - start
    boots = time_boots(kernel_lab.run, args.runs, 'the guest')
    if boots is None:
        return 1
    kernel_lab.build_systemd()                      # the modules tree, once
    systemd_boots = time_boots(kernel_lab.run_systemd, args.systemd_runs, 'the systemd boot')
    if systemd_boots is None:
        return 1
    print('kernel-lab: image build %.1f s cold, %.1f s cached' % (cold, warm))
    print('kernel-lab: boot to a command and power-off: median %.1f s, min %.1f s, max %.1f s '
          'over %d runs (TCG)' % (statistics.median(boots), min(boots), max(boots), len(boots)))
    if systemd_boots:
        print('kernel-lab: systemd boot to a command and power-off: median %.1f s, min %.1f s, max %.1f s '
              'over %d runs (TCG)' % (statistics.median(systemd_boots), min(systemd_boots), max(systemd_boots),
                                      len(systemd_boots)))
    if args.suite:
        with tempfile.TemporaryDirectory() as results:
            start = time.perf_counter()
            rc = kernel_lab.run(kernel_lab.DEFAULT_COMMAND, timeout=900, keep=results)
            suite = time.perf_counter() - start
            with open(os.path.join(results, 'output.log')) as handle:
                summary = handle.read().strip().splitlines()[-1:]
        print('kernel-lab: the lab suite (tests/kernel_lab): %.1f s, exit %d: %s'
              % (suite, rc, ''.join(summary).strip('= ')))
        if rc != 0:
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
