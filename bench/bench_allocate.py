# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""allocate and release through the playbooks against a plain shell script doing the same.

    python bench/bench_allocate.py [--runs 3]

On the lab node (this machine after host_prep, as make lab leaves it up), slot s0 of the
sample host is allocated and released with ansible-playbook (gpuaas.slice.allocate and
release, as an operator or AWX runs them) and with bench/allocate_plain.sh, which does
the same host operations (lease, token, dnsmasq entry, tap, port, flows, image, seed,
domain, wait for the DHCP lease) with none of the checks, idempotence or crash safety.
Both include the test guest's boot under TCG up to its DHCP lease. Reports the medians and
the ratio playbook/script (the aim: allocate and release within 1.5x). Root only. It
reports; it asserts nothing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'lab'))
import tests.conftest  # noqa: E402,F401  (puts the collection on sys.path)
import lab  # noqa: E402
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot  # noqa: E402

SLOT = 'sample-hgx-s0'


def playbook(name, extravars, work):
    path = os.path.join(work, 'vars.json')
    with open(path, 'w') as handle:
        json.dump(dict(extravars, gpuaas_hosts=lab.NODE), handle)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build', 'collections'))
    start = time.monotonic()
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', lab.INVENTORY,
                           '-l', lab.NODE, '-e', '@' + path, os.path.join(REPO, 'playbooks', name)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit('%s failed:\n%s' % (name, proc.stdout[-3000:]))
    return time.monotonic() - start


def script(action, env):
    start = time.monotonic()
    proc = subprocess.run([os.path.join(HERE, 'allocate_plain.sh'), action], capture_output=True, text=True,
                          env=dict(os.environ, **env), check=False)
    if proc.returncode:
        raise SystemExit('allocate_plain.sh %s failed: %s' % (action, proc.stderr))
    return time.monotonic() - start


def plain_env(image, checksum, guest, pubkey, slot_id=SLOT):
    """allocate_plain.sh's environment for ``slot_id`` (its layout from the contract's Slot)."""
    slot = Slot.parse(slot_id)
    return {'SLOT': slot_id, 'MAC': slot.mac, 'IP': slot.ip, 'TAP': slot.tap,
            'OFPORT': str(slot.ofport), 'COOKIE': '%#x' % slot.cookie, 'IMAGE': image, 'CHECKSUM': checksum,
            'KERNEL': guest['kernel'], 'INITRD': guest['initrd'], 'CMDLINE': guest['cmdline'], 'PUBKEY': pubkey}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print('bench_allocate: needs root (libvirt, Open vSwitch); skipped')
        return 0
    had_network = subprocess.run(['ovs-vsctl', '--timeout=3', 'br-exists', 'br-gpuaas'], check=False).returncode == 0
    guest, image, checksum, pubkey = lab.prepare()
    extravars = lab.lab_vars(guest, image)
    prep = lab.Playbooks().run('host_prep.yml', 'this-machine', extravars, 'host_prep')
    if prep['rc']:
        raise SystemExit('host_prep failed: %s' % prep['failures'])
    work = os.path.join(REPO, '.build', 'bench')
    os.makedirs(work, exist_ok=True)
    env = plain_env(image, checksum, guest, pubkey)
    figures = {'playbook allocate': [], 'playbook release': [], 'script allocate': [], 'script release': []}
    for run in range(args.runs):
        alloc = dict(lab.allocation(SLOT, image, checksum, pubkey), id='bench-%d' % run)
        figures['playbook allocate'].append(playbook('allocate.yml', dict(
            extravars, gpuaas_slot_id=SLOT, gpuaas_allocation=alloc), work))
        figures['playbook release'].append(playbook('release.yml', dict(
            gpuaas_slot_id=SLOT, gpuaas_allocation_id=alloc['id']), work))
        figures['script allocate'].append(script('allocate', dict(env, ALLOC='plain-%d' % run)))
        figures['script release'].append(script('release', dict(env, ALLOC='plain-%d' % run)))
    if not had_network:
        lab.stop_network()
    print('allocate/release of %s, %d runs (seconds, median [min-max]), test guest under TCG'
          % (SLOT, args.runs))
    for key, values in figures.items():
        print('  %-18s %6.2f  [%.2f-%.2f]' % (key, statistics.median(values), min(values), max(values)))
    for action in ('allocate', 'release'):
        ratio = statistics.median(figures['playbook ' + action]) / statistics.median(figures['script ' + action])
        print('  %s: playbook / script = %.2fx' % (action, ratio))
    return 0


if __name__ == '__main__':
    sys.exit(main())
