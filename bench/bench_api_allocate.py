# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""API request to guest address: POST /v1/allocations until the allocation's address is known.

    python bench/bench_api_allocate.py [--runs 2]

On the lab node (this machine after host_prep; make lab's set-up), ``gpuaas serve`` (on
127.0.0.1 only) and ``gpuaas worker`` run on a SQLite database of their own, the sample
host's discovery and approved map are stored, and a tenant asks for a slot over HTTP. Timed:
from the POST to the first GET that shows the allocation's address (the worker ran
allocate.yml through ansible-runner and the test guest booted cold under TCG and took its
DHCP lease). Compared with bench/allocate_plain.sh's allocate of the same slot plus 2 s (the
target). Each allocation is released through the API; the processes, the database and the
slot network (when this started it) are gone afterwards. Root only. Reports; asserts nothing.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
import tests.conftest  # noqa: E402,F401  (puts the collection on sys.path)
from tests.functional.lab.test_control_plane import ControlPlane  # noqa: E402
import bench_allocate  # noqa: E402
import lab  # noqa: E402  (lab/lab.py, on sys.path through the imports above)
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery  # noqa: E402

TARGET_MARGIN = 2.0


def wait_for(plane, ident, ready, timeout):
    """Poll the allocation until ``ready(view)``; the view, or SystemExit naming what it shows."""
    deadline = time.monotonic() + timeout
    view = {}
    while time.monotonic() < deadline:
        _status, view = plane.http('GET', '/v1/allocations/%s' % ident, plane.tenant)
        if ready(view):
            return view
        if view.get('state') in ('failed', 'released'):
            break
        time.sleep(0.05)
    raise SystemExit('allocation %s: %s\nworker:\n%s' % (ident, json.dumps(view)[:2000], plane.log('worker')[-3000:]))


def start_plane(tmp, image, extravars):
    inventory = lab.worker_inventory(os.path.join(tmp, 'inventory'), extravars)
    plane = ControlPlane(pathlib.Path(tmp), inventory, os.path.dirname(image))
    plane.gpuaas('db', 'upgrade')
    plane.operator = plane.gpuaas('token', 'create', '--role', 'operator').stdout.strip()
    plane.tenant = plane.gpuaas('token', 'create', '--role', 'tenant', '--tenant', 'bench').stdout.strip()
    plane.start('serve', 'serve', '--host', '127.0.0.1', '--port', plane.url.rsplit(':', 1)[1], '--no-access-log')
    plane.wait_healthy()
    plane.start('worker', 'worker')
    hgx = os.path.join(lab.BUILD, 'hgx')
    path = os.path.join(tmp, 'discovery.json')
    with open(path, 'w') as handle:
        json.dump(Discovery(lab.NODE, os.path.join(hgx, 'sys'), os.path.join(hgx, 'proc')).run(), handle)
    plane.gpuaas('node', 'discovery', lab.NODE, path, token=plane.operator)
    plane.gpuaas('node', 'approve', lab.NODE, os.path.join(lab.HERE, 'host_vars', '%s.yml' % lab.NODE),
                 token=plane.operator)
    return plane


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=2)
    parser.add_argument('--timeout', type=float, default=600.0, help='seconds one allocation may take')
    args = parser.parse_args()
    if os.geteuid() != 0:
        print('bench_api_allocate: needs root (libvirt, Open vSwitch); skipped')
        return 0
    had_network = subprocess.run(['ovs-vsctl', '--timeout=3', 'br-exists', 'br-gpuaas'],
                                 capture_output=True, check=False).returncode == 0
    guest, image, checksum, pubkey = lab.prepare()
    extravars = lab.lab_vars(guest, image)
    prep = lab.Playbooks().run('host_prep.yml', 'this-machine', extravars, 'host_prep')
    if prep['rc']:
        raise SystemExit('host_prep failed: %s' % prep['failures'])
    env = bench_allocate.plain_env(image, checksum, guest, pubkey)
    api, plain = [], []
    with tempfile.TemporaryDirectory(prefix='bench-api-') as tmp:
        plane = start_plane(tmp, image, extravars)
        try:
            for run in range(args.runs):
                body = {'image': os.path.basename(image), 'image_checksum': checksum, 'ssh_keys': [pubkey],
                        'vcpus': 1, 'memory_mib': 512, 'disk_gib': 1, 'node_id': lab.NODE}
                start = time.monotonic()
                status, created = plane.http('POST', '/v1/allocations', plane.tenant, body)
                if status != 201:
                    raise SystemExit('POST /v1/allocations: %s %s' % (status, created))
                view = wait_for(plane, created['id'], lambda v: v.get('address'), args.timeout)
                api.append(time.monotonic() - start)
                print('  api run %d: %s at %s in %.2f s (node: %s)' % (run, view['slot_id'], view['address'],
                                                                      api[-1], view['timings'].get('node')))
                plane.http('DELETE', '/v1/allocations/%s' % created['id'], plane.tenant)
                wait_for(plane, created['id'], lambda v: v.get('state') == 'released', args.timeout)
                plain.append(bench_allocate.script('allocate', dict(env, ALLOC='plain-api-%d' % run)))
                bench_allocate.script('release', dict(env, ALLOC='plain-api-%d' % run))
        finally:
            plane.stop()
    if not had_network:
        lab.stop_network()
    api_median, plain_median = statistics.median(api), statistics.median(plain)
    print('API request to guest address, %d runs (seconds, median [min-max]), test guest under TCG' % args.runs)
    print('  %-22s %6.2f  [%.2f-%.2f]' % ('API + worker', api_median, min(api), max(api)))
    print('  %-22s %6.2f  [%.2f-%.2f]' % ('script allocate', plain_median, min(plain), max(plain)))
    print('  API - script = %+.2f s (target: at most %+.1f s): %s' % (
        api_median - plain_median, TARGET_MARGIN,
        'met' if api_median <= plain_median + TARGET_MARGIN else 'NOT met'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
