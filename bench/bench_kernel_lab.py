# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How long the real-kernel lab takes: building its image, and booting it to a command.

    python bench/bench_kernel_lab.py [--runs N]

Cold build: the kernel and busybox .debs already downloaded, the initramfs made anew.
Boot: from starting QEMU (TCG) to the guest having run `true` in the host's tree and
powered off, so it includes the kernel's boot, the 9p mounts and the power-off.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
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
    boots = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as results:
            start = time.perf_counter()
            rc = kernel_lab.run(['true'], timeout=600, keep=results)
            boots.append(time.perf_counter() - start)
            if rc != 0:
                print('kernel-lab: the guest failed (exit %d)' % rc)
                return 1
    print('kernel-lab: image build %.1f s cold, %.1f s cached' % (cold, warm))
    print('kernel-lab: boot to a command and power-off: median %.1f s, min %.1f s, max %.1f s '
          'over %d runs (TCG)' % (statistics.median(boots), min(boots), max(boots), len(boots)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
