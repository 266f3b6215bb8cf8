# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slot VM: time from "define" to "the guest has its IP", and how much of it is not the guest's boot.

    python bench/bench_vm.py [--runs N] [--domain-type qemu|kvm]

Sets up what the functional test uses (libvirtd when none runs, a bridge with dnsmasq, the
telemetry sink, the cached test guest of tests/guest/build_image.py, an image from
slot_image and a seed from slot_seed), then per run calls slot_vm state=running on an
absent domain and state=absent after it. Each run reports:

* total: from the module call to its return with the lease (define + start + wait);
* the guest's own boot: its uptime when udhcpc got the lease, which the guest posts to
  the sink with its metric (kernel start to lease);
* outside the guest: total minus that. It holds the libvirt calls (define, start), QEMU's
  start, firmware and the loading of the kernel and initramfs, and the lease detection;
* lease detection: from dnsmasq writing the lease file to the module noticing it
  (the module polls every 0.1 s).

Root only (libvirtd, a bridge). No target: it reports.
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import tests.conftest  # noqa: E402,F401  (puts the collection on sys.path)
from ansible.module_utils.testing import patch_module_args  # noqa: E402
from tests.functional.vm import env  # noqa: E402
from tests.guest import build_image  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.modules import slot_image, slot_seed, slot_vm  # noqa: E402

NODE, INDEX = 'bench', 5
SLOT = Slot(NODE, INDEX).slot_id
TOKEN = 'bench-token-0123456789abcdef'


def call(module, args):
    """Run a module's main() in this process; its JSON result."""
    out = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(out):
        try:
            module.main()
        except SystemExit:
            pass
    result = json.loads(out.getvalue())
    if result.get('failed'):
        raise SystemExit('bench-vm: %s failed: %s' % (module.__name__, result.get('msg')))
    return result


def prepare(workdir, network, guest, uri):
    images = os.path.join(workdir, 'images')
    os.makedirs(images)
    raw = os.path.join(images, 'base.raw')
    with open(raw, 'wb') as handle:
        handle.write(b'GPUAAS-TEST-DISK:bench\n')
        handle.truncate(8 << 20)
    digest = subprocess.run(['sha256sum', raw], check=True, capture_output=True, text=True).stdout.split()[0]
    image = call(slot_image, dict(slot_id=SLOT, source=raw, source_format='raw', checksum='sha256:' + digest,
                                  source_dirs=[images], image_dir=os.path.join(workdir, 'disks'), size='64M'))
    seed = call(slot_seed, dict(slot_id=SLOT, allocation_id='bench-alloc', hostname='bench-vm',
                                telemetry_token=TOKEN, telemetry_sink=network.sink.url,
                                seed_dir=os.path.join(workdir, 'seeds')))
    network.add_host(Slot(NODE, INDEX).mac, network.ip(INDEX))
    return dict(uri=uri, slot_id=SLOT, state='running', memory_mib=192, cpulist='0-1', vcpus=1,
                numatune=False, passthrough=False, bridge=network.bridge, bridge_type='linux',
                console_log_dir=os.path.join(workdir, 'console'), disk=image['target'], seed=seed['path'],
                kernel=guest['kernel'], initrd=guest['initrd'], kernel_cmdline=guest['cmdline'],
                lease_file=network.lease_file, lease_timeout=120, stop_timeout=10,
                expected_ip=network.ip(INDEX), nvram_dir=os.path.join(workdir, 'nvram'),
                allowed_dirs=[workdir, os.path.dirname(guest['kernel']), os.path.dirname(guest['initrd'])])


def one_run(vm_args, network, domain_type, firmware='uefi'):
    start = time.time()
    result = call(slot_vm, dict(vm_args, domain_type=domain_type, firmware=firmware))
    returned = time.time()
    lease_written = os.stat(network.lease_file).st_mtime
    deadline = time.monotonic() + 60
    post = None
    while post is None and time.monotonic() < deadline:
        posts = [p for p in network.sink.posts if p['time'] >= start and p['authorization'] == 'Bearer ' + TOKEN]
        post = posts[0] if posts else None
        time.sleep(0.1)
    if post is None:
        raise SystemExit('bench-vm: the guest posted no metric')
    call(slot_vm, dict(uri=vm_args['uri'], slot_id=SLOT, state='absent', bridge=network.bridge,
                       lease_file=network.lease_file))
    total = returned - start
    guest_boot = float(post['body']['uptime_at_lease'])
    timings = result['timings']
    return {'total': total, 'guest_boot': guest_boot, 'outside': total - guest_boot,
            'define': timings.get('define_s', 0.0), 'start': timings.get('start_s', 0.0),
            'lease_wait': timings.get('lease_wait_s', 0.0), 'detect': max(0.0, returned - lease_written)}


def summary(name, values, unit='s'):
    return '%-22s median %6.2f %s  min %6.2f  max %6.2f' % (name, statistics.median(values), unit,
                                                              min(values), max(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--domain-type', choices=['qemu', 'kvm'], default='qemu')
    parser.add_argument('--firmware', choices=['uefi', 'bios'], default='uefi')
    args = parser.parse_args()
    guest = build_image.build()
    workdir = env.workdir('gpuaas-bench-vm-')
    runs = []
    try:
        with env.Libvirtd() as daemon, env.SlotNetwork(workdir) as network:
            vm_args = prepare(workdir, network, guest, daemon.uri)
            try:
                for number in range(args.runs):
                    runs.append(one_run(vm_args, network, args.domain_type, args.firmware))
                    print('bench-vm: run %d: %.2f s to IP, guest boot %.2f s, outside %.2f s'
                          % (number + 1, runs[-1]['total'], runs[-1]['guest_boot'], runs[-1]['outside']))
            finally:
                env.destroy_domain(daemon.uri, 'gpuaas-' + SLOT)
    except env.EnvironmentMissing as exc:
        print('bench-vm: SKIPPED: %s' % exc)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print('bench-vm: %d runs, domain type %s, firmware %s, guest %s' % (len(runs), args.domain_type, args.firmware,
                                                                         guest['kernel_package']))
    for key, name in (('total', 'define -> guest has IP'), ('guest_boot', "guest's own boot"),
                      ('outside', 'outside the guest'), ('define', '  defineXML'), ('start', '  create (start)'),
                      ('lease_wait', '  wait for the lease'), ('detect', '  lease detection lag')):
        print('bench-vm: ' + summary(name, [run[key] for run in runs]))
    share = statistics.median([run['outside'] / run['total'] for run in runs]) * 100
    print('bench-vm: %.0f%% of the time to IP is spent outside the guest\'s own boot (median)' % share)
    return 0


if __name__ == '__main__':
    sys.exit(main())
