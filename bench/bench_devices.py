# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The device engines' own time against the kernel model: an 8-function group, 64 VFs.

    python bench/bench_devices.py [--runs N]

Each run builds a fresh host (tests/sysfs/device_hosts.py: a GPU with 8 functions in one
IOMMU group, an Ethernet PF offering 64 VFs) wrapped in the kernel model, then times,
each alone:

* vfio_bind present: the 8 functions from their host drivers to vfio-pci (record, 40 sysfs
  writes, the waits), and absent: back to the recorded drivers;
* sriov_vfs: 0 -> 64 VFs (the model creates 64 VF directories and IOMMU groups) and each
  VF's MAC / spoof checking / trust / link state through 64 fake `ip link set` commands,
  with the read-back verification; then 64 -> 0; then a run with 64 VFs already right.

The figures are the Python side (plan, checks, writes, verification); on a real host the
kernel's own work (driver probe, VF creation by the firmware) comes on top.
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
from tests.sysfs.device_hosts import build_gpu_box  # noqa: E402
from tests.sysfs.fake_tools import FakeTools  # noqa: E402
from tests.sysfs.kernel_fixture import StubModule  # noqa: E402
from tests.sysfs.kernel_model import KernelModel  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import SriovVfs  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils._vfio import VfioBind  # noqa: E402

GPU = '0000:1b:00.0'
PF = '0000:3b:00.0'
FUNCTIONS = 8
VFS = 64


def one_run(base):
    sys_root, proc_root = build_gpu_box(base, functions=FUNCTIONS, total_vfs=VFS)
    dev_root, state_dir = os.path.join(base, 'dev'), os.path.join(base, 'state')
    model = KernelModel(sys_root, dev_root=dev_root, proc_root=proc_root)
    kernel_ms = [0.0]
    write = model.write

    def write_timed(rel, value):
        start = time.perf_counter()
        try:
            return write(rel, value)
        finally:
            kernel_ms[0] += (time.perf_counter() - start) * 1000
    model.write = write_timed
    _devctl.open_sysfs = lambda root: model
    module = StubModule(FakeTools(model))
    times = {}

    def timed(name, func):
        kernel_ms[0] = 0.0
        start = time.perf_counter()
        result = func()
        total = (time.perf_counter() - start) * 1000
        times[name] = (total, kernel_ms[0])
        return result

    def vfio(state):
        return VfioBind(module, GPU, state=state, sysfs_root=sys_root, proc_root=proc_root,
                        dev_root=dev_root, state_dir=state_dir).run()

    def sriov(count):
        return SriovVfs(module, PF, count, 'bench-node', sysfs_root=sys_root,
                        proc_root=proc_root).run()

    bound = timed('vfio_bind present (8 functions)', lambda: vfio('present'))
    assert bound['changed'] and len(bound['functions']) == FUNCTIONS
    assert all(driver == 'vfio-pci' for driver in bound['bindings'].values())
    released = timed('vfio_bind absent (8 functions)', lambda: vfio('absent'))
    assert released['bindings']['0000:1b:00.0'] == 'nvidia'
    created = timed('sriov_vfs 0 -> 64 VFs', lambda: sriov(VFS))
    assert len(created['vf_addresses']) == VFS and len(created['commands']) == VFS
    removed = timed('sriov_vfs 64 -> 0 VFs', lambda: sriov(0))
    assert removed['num_vfs'] == 0
    sriov(VFS)
    again = timed('sriov_vfs 64 VFs, nothing to do', lambda: sriov(VFS))
    assert again['changed'] is False
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=15)
    args = parser.parse_args()
    samples = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, value in one_run(os.path.join(tmp, str(run))).items():
                samples.setdefault(name, []).append(value)
    width = max(len(name) for name in samples)
    print('devices: %d runs against the kernel model (%d-function group, %d VFs); medians in ms'
          % (args.runs, FUNCTIONS, VFS))
    print('%-*s  %8s  %8s  %8s  %8s  %8s' % (width, 'operation', 'total', 'engine', 'model',
                                             'min', 'max'))
    for name, values in samples.items():
        totals = [t for t, _k in values]
        engine = [t - k for t, k in values]
        model = [k for _t, k in values]
        print('%-*s  %8.1f  %8.1f  %8.1f  %8.1f  %8.1f' % (
            width, name, statistics.median(totals), statistics.median(engine),
            statistics.median(model), min(totals), max(totals)))
    print('engine: the collection\'s code (plan, checks, waits, fake ip, verification); '
          'model: the simulated kernel writing the tree (VF directories, links)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
