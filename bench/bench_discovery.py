# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovery's own time on a synthetic 8-GPU host whose 8 fabric PFs have 64 VFs each.

    python bench/bench_discovery.py [--runs N]

Builds the tree once (tests/sysfs/hosts.py, the two-socket server with every PF's VFs
created: 8 GPUs, 8 PFs, 512 VFs, 16 NVMe) and times Discovery(...).run() alone, each
run from a fresh engine so no attribute cache carries over. Target: under 100 ms.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import tests.conftest  # noqa: E402,F401  (puts the collection on sys.path)
from tests.sysfs.hosts import build_hgx  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery  # noqa: E402

TARGET_MS = 100.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sys_root, proc_root = build_hgx(tmp, vfs_per_pf=64)
        devices = len(os.listdir(os.path.join(sys_root, 'bus/pci/devices')))
        times, result = [], None
        for _ in range(args.runs):
            start = time.perf_counter()
            result = Discovery('bench', sys_root, proc_root).run()
            times.append((time.perf_counter() - start) * 1000)
    eligible = sum(1 for slot in result['slots'] if slot['eligible'])
    median = statistics.median(times)
    print('discovery: %d PCI functions, %d GPUs, %d eligible slots' % (
        devices, len(result['gpus']), eligible))
    print('discovery: median %.1f ms, min %.1f ms, max %.1f ms over %d runs (target < %.0f ms)' % (
        median, min(times), max(times), args.runs, TARGET_MS))
    if median >= TARGET_MS or eligible != 8:
        print('discovery: OVER TARGET' if median >= TARGET_MS else 'discovery: wrong result')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
