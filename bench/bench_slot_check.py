# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What allocate's one-slot check costs against whole-host discovery, on every sample host.

    python bench/bench_slot_check.py [--runs N]

For each sample host of tests/sysfs/hosts.py (the two-socket server with 64 VFs on each of its
8 fabric PFs, the workstation, the segment-1 host, and the captured H100 passthrough guest, a
real tree), times Discovery(...).run() (what allocate used to run) and SlotCheck(...).run()
on the host's first slot, its record being what approval makes of discovery; each run from
a fresh engine, so no attribute cache carries over. The H100 guest has no IOMMU: its check
is a refusal, timed all the same. Target: on the 8-GPU server, the check under a tenth of
discovery (on the small hosts both take a few milliseconds; they are reported).
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
from tests.sysfs import hosts  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_check import SlotCheck, SlotCheckError  # noqa: E402

BUILDS = [('hgx, 512 VFs', lambda base: hosts.build_hgx(base, vfs_per_pf=64)),
          ('workstation', hosts.build_workstation), ('segment1', hosts.build_segment1),
          ('h100 guest (real)', hosts.build_h100_guest)]


def timed(runs, function):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def check(node, record, sys_root, proc_root):
    try:
        return SlotCheck(node, record['slot_id'], record, sys_root, proc_root).run() and 'passes'
    except SlotCheckError as exc:
        return 'refused (%s)' % exc.details['problems'][0][:40]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=30)
    args = parser.parse_args()
    server = None
    print('%-20s %8s %11s %9s %6s  %s' % ('host', 'devices', 'discovery', 'check', 'ratio', 'check result'))
    for name, build in BUILDS:
        with tempfile.TemporaryDirectory() as tmp:
            sys_root, proc_root = build(tmp)
            devices = len(os.listdir(os.path.join(sys_root, 'bus/pci/devices')))
            found = Discovery('bench', sys_root, proc_root).run()
            record = dict(found['slots'][0], destructive_wipe_policy='zero')
            for key in ('eligible', 'reasons', 'capacity_metadata'):
                record.pop(key)
            outcome = check('bench', record, sys_root, proc_root)
            discovery_ms = timed(args.runs, lambda: Discovery('bench', sys_root, proc_root).run())
            check_ms = timed(args.runs, lambda: check('bench', record, sys_root, proc_root))
        server = server if server is not None else check_ms / discovery_ms
        print('%-20s %8d %8.2f ms %6.2f ms %5.1f%%  %s' % (name, devices, discovery_ms, check_ms,
                                                          100 * check_ms / discovery_ms, outcome))
    print('slot check on the 8-GPU server: %.1f%% of discovery (target < 10%%): %s'
          % (100 * server, 'met' if server < 0.1 else 'NOT met'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
