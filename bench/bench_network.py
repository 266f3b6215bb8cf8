# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slot network: time to bring up and tear down the network of 8 slots.

    python bench/bench_network.py [--slots 8] [--runs 3]

Real Open vSwitch (userspace datapath), private to a network namespace of its own (the
tests' env.Host), so the machine's own switch, 10.100.0.1 and firewall are never touched. Per run: host_network once, then slot_network
present for each slot (a tap port, its flows, its dnsmasq entry), then absent for each,
then host_network absent. Each module runs as Ansible runs it (python module.py args.json),
so the figures include the module's start-up (about 0.1 s) but not Ansible's per-task cost.
Root only. No target: it reports.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import tests.conftest  # noqa: E402,F401  (puts the collection on sys.path)
from tests.functional.network import env  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot  # noqa: E402

BRIDGE = 'br-gpuaas-b'
NODE = 'benchnode'


def timed(host, name, args):
    start = time.monotonic()
    result = host.module(name, args)
    if result.get('failed'):
        raise SystemExit('%s failed: %s' % (name, result.get('msg')))
    return time.monotonic() - start


def one_run(node, work, slots):
    host = dict(bridge=BRIDGE, datapath_type='netdev', dnsmasq_conf=os.path.join(work, 'dnsmasq.conf'),
                hosts_dir=os.path.join(work, 'hosts'), opts_dir=os.path.join(work, 'opts'), lease_file=os.path.join(work, 'leases'),
                nft_file=os.path.join(work, 'gpuaas.nft'), pid_file=os.path.join(work, 'dnsmasq.pid'))
    slot = dict(bridge=BRIDGE, hosts_dir=host['hosts_dir'], dnsmasq_pid_file=host['pid_file'])
    figures = {'host up': timed(node, 'host_network', host)}
    up = [timed(node, 'slot_network', dict(slot, slot_id=Slot(NODE, i).slot_id, hostname='slot-%d' % i))
          for i in range(slots)]
    down = [timed(node, 'slot_network', dict(slot, slot_id=Slot(NODE, i).slot_id, state='absent'))
            for i in range(slots)]
    figures['host down'] = timed(node, 'host_network', dict(host, state='absent'))
    figures['slots up'] = sum(up)
    figures['slots down'] = sum(down)
    figures['per slot up'] = statistics.mean(up)
    figures['per slot down'] = statistics.mean(down)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--slots', type=int, default=8)
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print('bench_network: needs root (Open vSwitch, nftables); skipped')
        return 0
    work = tempfile.mkdtemp(prefix='gpuaas-benchnet-')
    try:
        with env.Host(work, tag='b') as node:
            runs = [one_run(node, work, args.slots) for _ in range(args.runs)]
    except env.EnvironmentMissing as exc:
        print('bench_network: %s; skipped' % exc)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('slot network, %d slots, %d runs (seconds, median [min-max])' % (args.slots, args.runs))
    for key in ('host up', 'slots up', 'per slot up', 'slots down', 'per slot down', 'host down'):
        values = [run[key] for run in runs]
        print('  %-14s %6.2f  [%.2f-%.2f]' % (key, statistics.median(values), min(values), max(values)))
    total = [run['host up'] + run['slots up'] for run in runs]
    teardown = [run['slots down'] + run['host down'] for run in runs]
    print('  bring up %d slots: %.2f s; tear down: %.2f s' % (args.slots, statistics.median(total),
                                                             statistics.median(teardown)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
