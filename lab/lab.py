# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local lab: the whole product on this machine, driven like AWX drives it.

    python lab/lab.py run     # make lab: prepare, discover, allocate three slots (two tenants), prove, release
    python lab/lab.py up      # make lab-up: the same, leaving the allocations running
    python lab/lab.py down    # make lab-down: release them, reconcile, stop the lab's daemons

The playbooks run through ansible-runner, as the control plane's worker runs them. This
machine has no GPU and no IOMMU: the node is the bundled sample host (a sysfs tree of a
two-socket 8-GPU server, lab/inventory.yml), its slots s0, s1 and s2 are approved
(lab/host_vars/sample-hgx.yml), and the VMs run under TCG without their hostdevs, which the
report says. Everything else is real: libvirt and QEMU, Open vSwitch (userspace datapath),
dnsmasq, nftables, the telemetry sink.

The VMs boot a real Debian 12 cloud image (tests/guest/cloud_image.py, ``--guest cloud``, the
default) under UEFI: cloud-init reads the NoCloud seed, the tenant logs in from a client
namespace outside the node (lab/tenant_client.py) at the allocation's ``access`` with its key, and
the guest agent posts its samples and acceptance result to the sink. ``--guest busybox`` boots
the fast test guest (tests/guest/build_image.py) instead. Either proves isolation with the
guests' own packets: each pings its gateway and every other slot address (the busybox guest
posts what answered to the sink with its token; the real one is asked over SSH). s0 and s1 are
tenant lab-a's, s2 lab-b's (TENANTS): the report shows the tenant matrix (lab/tenants.py) those
answers prove.
"""

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import tenants  # noqa: E402  lab/tenants.py: the tenant matrix, whatever collects the probes
import tenant_client  # noqa: E402  (lab/tenant_client.py)

BUILD = os.path.join(REPO, '.build', 'lab')
INVENTORY = os.path.join(HERE, 'inventory.yml')
NODE = 'sample-hgx'
# Two slots of one tenant and one of another: the guests' own packets prove the tenant matrix.
TENANTS = {'sample-hgx-s0': 'lab-a', 'sample-hgx-s1': 'lab-a', 'sample-hgx-s2': 'lab-b'}
SLOTS = sorted(TENANTS)
STATE = os.path.join(BUILD, 'allocations.json')
KEY = os.path.join(BUILD, 'id_ed25519')
GATEWAY = '10.100.0.1'
SINK_DATA = '/var/lib/gpuaas/telemetry/data'
VARS_ONLY = 'vars' in sys.argv[1:2]
# lab/inventory.yml gives each sample-hgx slot VM a pci-testdev with a BAR of this size.
STANDIN_BAR_MIB = 128 * 1024
# The real guest under TCG: what Debian, cloud-init and the agent need, and how long its first
# boot (OVMF, systemd, cloud-init's four stages) may take on a busy two-core machine.
CLOUD_MEMORY_MIB = 384
CLOUD_BOOT_TIMEOUT = 900


def log(message):
    print('lab: %s' % message, file=sys.stderr if VARS_ONLY else sys.stdout, flush=True)


class Playbooks:
    """ansible-runner over the collection's playbooks, printing one line per finished task."""

    def __init__(self, verbose=False):
        self.verbose = verbose
        self.lock = threading.Lock()

    def run(self, playbook, hosts, extravars, label):
        import ansible_runner
        ident = '%s-%s' % (label.replace(' ', '-'), time.strftime('%Y%m%dT%H%M%S'))
        data_dir = os.path.join(BUILD, 'runner')
        os.makedirs(data_dir, exist_ok=True)
        started = {}

        def on_event(event):
            data = event.get('event_data', {})
            if event.get('event') == 'runner_on_start':
                started[data.get('task_uuid')] = time.monotonic()
            elif event.get('event') in ('runner_on_ok', 'runner_on_failed', 'runner_item_on_failed'):
                took = time.monotonic() - started.get(data.get('task_uuid'), time.monotonic())
                status = 'FAILED' if 'failed' in event['event'] else (
                    'changed' if data.get('res', {}).get('changed') else 'ok')
                if self.verbose or status != 'ok' or took > 1:
                    with self.lock:
                        print('  [%s] %-60s %-7s %5.1fs' % (label, data.get('task', '')[:60], status, took),
                              flush=True)
            return True

        env = {'ANSIBLE_CONFIG': os.path.join(REPO, 'ansible.cfg'),
               'ANSIBLE_COLLECTIONS_PATH': os.path.join(REPO, '.build', 'collections'),
               'ANSIBLE_PYTHON_INTERPRETER': sys.executable,
               # ansible-runner runs ansible-playbook from PATH: this Python's, whoever started it.
               'PATH': os.pathsep.join([os.path.dirname(sys.executable), os.environ.get('PATH', '')])}
        if not os.path.isabs(playbook):
            playbook = os.path.join(REPO, 'playbooks', playbook)
        start = time.monotonic()
        result = ansible_runner.run(
            private_data_dir=data_dir, ident=ident, playbook=playbook,
            inventory=INVENTORY, limit=hosts, extravars=dict(extravars, gpuaas_hosts=hosts),
            envvars=env, quiet=True, event_handler=on_event, timeout=1800)
        stats = {}
        failures = []
        for event in result.events:
            if event.get('event') == 'playbook_on_stats':
                stats = event['event_data'].get('artifact_data') or {}
            if event.get('event') == 'runner_on_failed' and not event['event_data'].get('ignore_errors'):
                res = event['event_data'].get('res', {})
                failures.append('%s: %s' % (event['event_data'].get('task'), res.get('msg', res)))
        return {'rc': result.rc, 'status': result.status, 'seconds': round(time.monotonic() - start, 1),
                'stats': stats, 'failures': failures, 'ident': ident}


def lab_vars(guest, image):
    """What the lab adds to lab/inventory.yml: the test guest (none for the cloud image, which
    boots from its disk) and where its image lies."""
    if guest is None:
        return {'gpuaas_image_dirs': [os.path.dirname(image)], 'gpuaas_vm_boot_timeout': CLOUD_BOOT_TIMEOUT}
    return {'gpuaas_guest_kernel': guest['kernel'], 'gpuaas_guest_initrd': guest['initrd'],
            'gpuaas_guest_cmdline': guest['cmdline'], 'gpuaas_image_dirs': [os.path.dirname(image)]}


def worker_inventory(directory, extravars):
    """Write the lab's inventory for the control plane's worker into ``directory``; return it.

    The worker (``gpuaas worker``) passes the playbooks only the allocation: what the lab adds
    to every run (the test guest, where images are) goes into the inventory, beside the
    node's approved slot map (host_vars), and paths relative to lab/ become absolute."""
    import yaml
    with open(INVENTORY) as handle:
        text = handle.read().replace('{{ inventory_dir | dirname }}', REPO).replace('{{ inventory_dir }}', HERE)
    inventory = yaml.safe_load(text)
    inventory['all']['vars'].update(extravars, ansible_python_interpreter=sys.executable)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'inventory.yml')
    with open(path, 'w') as handle:
        yaml.safe_dump(inventory, handle, default_flow_style=False, sort_keys=False)
    shutil.copytree(os.path.join(HERE, 'host_vars'), os.path.join(directory, 'host_vars'),
                    dirs_exist_ok=True)
    return path


def _digest(directory):
    """sha256 of the Python files of ``directory``."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name.endswith('.py'):
            with open(os.path.join(directory, name), 'rb') as handle:
                digest.update(name.encode() + b'\0' + handle.read())
    return digest.hexdigest()


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def prepare(kind='busybox'):
    """The sample host, the guest (``kind`` busybox: the test guest and a blank disk image; cloud:
    the Debian cloud image, guest None) and an SSH key; all cached in .build/."""
    from tests.guest import build_image, cloud_image
    from tests.sysfs import hosts
    os.makedirs(BUILD, exist_ok=True)
    # The sample host is rebuilt when the code that builds it changed (a new sysfs file the
    # modules read, such as a node's meminfo), not only when it is missing.
    hgx, made = os.path.join(BUILD, 'hgx'), _digest(os.path.join(REPO, 'tests', 'sysfs'))
    stamp = os.path.join(hgx, '.built-from')
    if not os.path.isdir(os.path.join(hgx, 'sys')) or _read(stamp) != made:
        log('building the sample host (two-socket 8-GPU server) under .build/lab/hgx')
        shutil.rmtree(hgx, ignore_errors=True)
        hosts.HOSTS['hgx'](hgx)
        with open(stamp, 'w') as handle:
            handle.write(made)
    key = os.path.join(BUILD, 'id_ed25519')
    if not os.path.exists(key):
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'lab@gpuaas', '-f', key], check=True)
    with open(key + '.pub') as handle:
        pubkey = handle.read().strip()
    if kind == 'cloud':
        manifest = cloud_image.build()
        log('cloud guest %s (%s, built in %s s%s)' % (manifest['image'], manifest['kernel'], manifest['build_seconds'],
                                                      ', cached' if manifest['cached'] else ''))
        return None, manifest['image'], 'sha256:' + manifest['sha256'], pubkey
    guest = build_image.build()
    images = os.path.join(BUILD, 'images')
    image = os.path.join(images, 'lab-guest.qcow2')
    if not os.path.exists(image):
        os.makedirs(images, exist_ok=True)
        raw = os.path.join(images, 'lab-guest.raw')
        with open(raw, 'wb') as handle:
            handle.write(b'GPUAAS-LAB-DISK\n')
            handle.truncate(64 << 20)
        subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, image], check=True)
        os.unlink(raw)
    with open(image, 'rb') as handle:
        checksum = 'sha256:' + hashlib.sha256(handle.read()).hexdigest()
    return guest, image, checksum, pubkey


def allocation(slot, image, checksum, pubkey, kind='busybox'):
    alloc = {'id': 'lab-%s-%s' % (slot.rsplit('-', 1)[1], secrets.token_hex(3)), 'tenant': TENANTS.get(slot, 'lab-a'),
             'image': image, 'image_checksum': checksum, 'image_format': 'qcow2',
             'ssh_keys': [pubkey], 'vcpus': 1, 'memory_mib': 256, 'disk_gib': 1}
    if kind == 'cloud':
        alloc.update(memory_mib=CLOUD_MEMORY_MIB, disk_gib=2, approved_facts=approved_facts(slot))
    return alloc


def approved_facts(slot):
    """What the guest agent checks the slot against, as the control plane derives it
    (gpuaas_control.telemetry.approved_facts): the approved GPU model and its link as the
    sample host's sysfs shows it, and whether the slot has its NVMe and fabric VF."""
    import yaml
    with open(os.path.join(HERE, 'host_vars', NODE + '.yml')) as handle:
        approved = next(s for s in yaml.safe_load(handle)['gpuaas_approved_slots'] if s['slot_id'] == slot)
    gpu = approved['fingerprint']['gpu']
    device = os.path.join(BUILD, 'hgx', 'sys', 'bus', 'pci', 'devices', gpu['address'])
    return {'gpu_model': '%s:%s' % (gpu['vendor_id'], gpu['device_id']),
            'link_speed': _read(os.path.join(device, 'max_link_speed')).strip(),
            'link_width': int(_read(os.path.join(device, 'max_link_width'))),
            'nvme': approved['fingerprint'].get('nvme') is not None,
            'fabric_vf': bool(approved['capacity_metadata'].get('fabric_vf_pci_address'))}


def sink_samples(allocation_id):
    path = os.path.join(SINK_DATA, '%s.jsonl' % allocation_id)
    samples = []
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                try:
                    samples.append(json.loads(line))
                except ValueError:
                    pass
    return samples


def body(sample):
    return sample.get('body', sample)


def guest_facts(allocation_id):
    """What the guest reported at boot (tests/guest/init): its firmware, address bits, largest 64-bit BAR."""
    for sample in sink_samples(allocation_id):
        data = body(sample)
        if data.get('metric') == 'guest_boot':
            return data
    return {}


def prove_firmware(results, facts_of=None):
    """Each guest booted UEFI and sees the stand-in's BAR assigned, or why not. ``facts_of(result)``
    is what the guest said of itself (default: the busybox guest's boot metric at the sink)."""
    problems = []
    for slot, result in results.items():
        facts = facts_of(result) if facts_of else guest_facts(result['allocation_id'])
        result['guest'] = {key: facts.get(key) for key in ('firmware', 'phys_bits', 'bar_max_mib', 'bar_max')}
        if facts.get('firmware') != 'uefi':
            problems.append('%s: the guest booted %s, not UEFI' % (slot, facts.get('firmware')))
        if facts.get('bar_max_mib') != STANDIN_BAR_MIB:
            problems.append('%s: the guest\'s largest assigned 64-bit BAR is %s MiB, not the stand-in\'s %d'
                            % (slot, facts.get('bar_max_mib'), STANDIN_BAR_MIB))
    return problems


def prove(results, since, timeout=240):
    """Wait until each guest has posted a probe taken after all were running; check it."""
    log('waiting for every guest to post an isolation probe (gateway and the other slot addresses)')
    deadline = time.monotonic() + timeout
    proofs = {}
    while time.monotonic() < deadline and len(proofs) < len(results):
        for slot, result in results.items():
            alloc = result['allocation_id']
            for sample in sink_samples(alloc):
                data = body(sample)
                if data.get('metric') == 'probe' and float(sample.get('received_at', since)) >= since:
                    proofs[slot] = data
        time.sleep(1)
    problems = []
    for slot, result in results.items():
        proof = proofs.get(slot)
        if proof is None:
            problems.append('%s: no probe reached the sink within %d s' % (slot, timeout))
            continue
        if proof.get('ip') != result['address']:
            problems.append('%s: the guest has %s, the layout says %s' % (slot, proof.get('ip'), result['address']))
        if proof.get('gateway_ok') != 1:
            problems.append('%s: cannot reach its gateway' % slot)
    problems.extend(tenant_matrix(results, proofs)[1])
    return proofs, problems


def tenant_matrix(results, proofs):
    """The tenant matrix (lab/tenants.py) from the probes: each slot's reached addresses."""
    slots = dict((slot, TENANTS.get(slot, 'lab-a')) for slot in results)
    addresses = dict((slot, result.get('address')) for slot, result in results.items())
    reached = dict((slot, tenants.parse_reached(proofs[slot].get('peers_reachable')) if slot in proofs else None)
                   for slot in results)
    return tenants.matrix(slots, addresses, reached)


# -- the real guest, seen by its tenant (lab/tenant_client.py) -------------------------------------

def isolation_targets(result):
    """What a slot's isolation probe pings: its gateway and every other slot address of the node."""
    return [GATEWAY] + ['10.100.0.%d' % n for n in range(10, 18) if '10.100.0.%d' % n != result.get('address')]


def prove_isolation_over_ssh(slot, result, targets, key=None):
    """The isolation probe of one real guest, run in it over SSH: the proof the busybox guest
    posts to the sink ({'ip', 'gateway_ok', 'peers_reachable'}) and the problems it shows."""
    found = tenant_client.probe(result['access'], key or KEY, targets)
    if 'error' in found:
        return {'error': found['error']}, ['%s: %s' % (slot, found['error'])]
    peers = [t for t in found['reachable'] if t != GATEWAY]
    proof = {'ip': found['ip'], 'gateway_ok': 1 if GATEWAY in found['reachable'] else 0,
             'peers_reachable': ' '.join(peers), 'targets': len(targets)}
    problems = []
    if proof['ip'] != result.get('address'):
        problems.append('%s: the guest has %s, the layout says %s' % (slot, proof['ip'], result.get('address')))
    if GATEWAY in targets and proof['gateway_ok'] != 1:
        problems.append('%s: cannot reach its gateway' % slot)
    # Which other slots it may reach is the tenant matrix's to judge (tenant_matrix).
    return proof, problems


def agent_samples(allocation_id, timeout):
    """The guest agent's first health sample and its acceptance result at the sink (waited for)."""
    deadline = time.monotonic() + timeout
    found = {}
    while True:
        for sample in sink_samples(allocation_id):
            data = body(sample)
            if data.get('kind') in ('health', 'acceptance') and data['kind'] not in found:
                found[data['kind']] = dict(data, received_at=sample.get('received_at'))
        if len(found) == 2 or time.monotonic() > deadline:
            return found
        time.sleep(2)


def prove_cloud(allocations):
    """Each real guest from its tenant's side: SSH at the allocation's access lands in that
    slot's guest (hostname, instance id, address), which booted under UEFI, whose cloud-init is
    done without errors and whose agent posted its samples; then the isolation probes."""
    problems, proofs = [], {}
    for slot, result in allocations.items():
        access = result.get('access') or {}
        log('%s: the tenant logs in: %s' % (slot, tenant_client.tenant_command(access, os.path.relpath(KEY, REPO))))
        facts = tenant_client.guest_facts(access, KEY, timeout=CLOUD_BOOT_TIMEOUT)
        result['login'] = facts
        if 'error' in facts:
            problems.append('%s: %s' % (slot, facts['error']))
            continue
        log('%s: SSH answered after %s s, cloud-init %s after %s s' % (
            slot, facts['ssh_seconds'], facts.get('cloud_init'), facts['seconds']))
        result['guest'] = dict((k, facts.get(k)) for k in ('firmware', 'phys_bits', 'bar_max_mib', 'bar_max'))
        for what, seen, want in (('hostname', facts.get('hostname'), result.get('hostname')),
                                 ('instance id', facts.get('instance_id'), result['allocation_id']),
                                 ('address', facts.get('ip'), result.get('address'))):
            if seen != want:
                problems.append('%s: port %s landed in a guest with %s %s, not %s' % (
                    slot, access.get('ssh_port'), what, seen, want))
        errors = tenant_client.cloud_init_errors(facts)
        if facts.get('cloud_init') != 'done' or errors:
            problems.append('%s: cloud-init is %s (errors: %s)' % (slot, facts.get('cloud_init'), errors or 'none'))
    for slot, result in allocations.items():
        if 'error' in result.get('login', {}):
            continue
        proofs[slot], found = prove_isolation_over_ssh(slot, result, isolation_targets(result))
        problems.extend(found)
        result['agent'] = agent_samples(result['allocation_id'], timeout=120)
        for kind in ('health', 'acceptance'):
            if kind not in result['agent']:
                problems.append('%s: no %s sample from the guest agent at the sink' % (slot, kind))
    problems.extend(tenant_matrix(allocations, proofs)[1])
    problems.extend(prove_firmware(allocations, facts_of=lambda result: result.get('guest') or {}))
    return proofs, problems


def prove_released(allocations, releases):
    """After release, nothing answers on a released slot's public port (from the client)."""
    problems = []
    for slot, result in allocations.items():
        if slot in releases and result.get('access'):
            seen = tenant_client.port_silent(result['access'])
            releases[slot]['port_after_release'] = seen
            if seen not in ('silent', 'refused'):
                problems.append('%s: port %s still answers after release (%s)' % (slot, result['access']['ssh_port'], seen))
    return problems


def report_tenant(allocations, releases):
    """The real guests as their tenant saw them (prove_cloud), per slot."""
    if not any('login' in result for result in allocations.values()):
        return
    print('  the tenant (client namespace %s, %s, key %s) at each allocation\'s access:'
          % (tenant_client.CLIENT_NS, tenant_client.CLIENT_ADDRESS, os.path.relpath(KEY, REPO)))
    print('    %-15s %-20s %-8s %-18s %-32s %s' % (
        'slot', 'access', 'firmware', 'cloud-init', 'SSH landed in (hostname, instance)', 'released port'))
    for slot, result in allocations.items():
        login, access = result.get('login') or {}, result.get('access') or {}
        errors = tenant_client.cloud_init_errors(login) if 'error' not in login else ['-']
        print('    %-15s %-20s %-8s %-18s %-32s %s' % (
            slot, '%s:%s' % (access.get('ssh_host'), access.get('ssh_port')), login.get('firmware', '-'),
            '%s, %d errors' % (login.get('cloud_init'), len(errors)) if 'error' not in login else 'NO ANSWER',
            '%s, %s' % (login.get('hostname'), login.get('instance_id')),
            (releases.get(slot) or {}).get('port_after_release', '(still allocated)')))
    print('    %-15s %-9s %-9s %s' % ('slot', 'ssh s', 'done s', 'guest agent: first health sample; acceptance'))
    for slot, result in allocations.items():
        login, agent = result.get('login') or {}, result.get('agent') or {}
        health = agent.get('health', {}).get('health') or {}
        acceptance = agent.get('acceptance') or {}
        failed = ['%s (%s)' % (c['name'], c['reason']) for c in acceptance.get('checks', []) if c.get('status') == 'failed']
        print('    %-15s %-9s %-9s health: %s; acceptance: %s' % (
            slot, login.get('ssh_seconds', '-'), login.get('seconds', '-'),
            json.dumps(health, sort_keys=True)[:90] if health else 'NONE',
            '%s%s' % (acceptance.get('status', 'NONE'), ': ' + '; '.join(failed) if failed else '')))
    for slot, result in allocations.items():
        if result.get('access'):
            print('  log in to %s as its tenant: %s' % (slot, tenant_client.tenant_command(result['access'], os.path.relpath(KEY, REPO))))


def report(allocations, releases, proofs):
    phases = ['check', 'image', 'vm', 'total']
    print()
    print('lab report (%s, node %s)' % (time.strftime('%Y-%m-%d %H:%M:%S'), NODE))
    if allocations:
        print('  %-15s %-13s %-17s %s' % ('slot', 'address', 'mac', 'isolation (from the guest)'))
        for slot, result in allocations.items():
            proof = proofs.get(slot, {})
            print('  %-15s %-13s %-17s gateway %s, other slots reachable: %s (tenant %s)' % (
                slot, result.get('address'), result.get('mac'), 'ok' if proof.get('gateway_ok') == 1 else 'NO',
                proof.get('peers_reachable') or 'none', TENANTS.get(slot, 'lab-a')))
        print('  tenant matrix (did the guest\'s own ping reach the other slot; ! where that is wrong):')
        for line in tenants.render(dict((slot, TENANTS.get(slot, 'lab-a')) for slot in allocations),
                                   tenant_matrix(allocations, proofs)[0]):
            print('  ' + line)
        print("  each slot's CPU slice and memory share, its devices' 64-bit BARs; what its VM got, as the guest saw it:")
        print('    %-15s %-11s %13s %8s | %5s %12s %-8s %5s %s' % ('slot', 'cpu slice', 'memory_mib', 'bar_mib', 'vcpus',
                                                                 'vm memory', 'firmware', 'bits', 'largest 64-bit BAR'))
        for slot, result in allocations.items():
            share, guest = result.get('slice') or {}, result.get('guest') or {}
            print('    %-15s %-11s %13s %8s | %5s %12s %-8s %5s %s MiB at %s' % (
                slot, share.get('cpulist'), share.get('slot_memory_mib'), share.get('bar_mib'), share.get('vcpus'),
                share.get('memory_mib'), guest.get('firmware'), guest.get('phys_bits'), guest.get('bar_max_mib'),
                guest.get('bar_max') or '-'))
        print('  (the largest BAR is the stand-in, QEMU pci-testdev with a %d MiB BAR, lab/inventory.yml)' % STANDIN_BAR_MIB)
        omitted = sorted(set(a for r in allocations.values() for a in r.get('hostdevs_omitted', [])))
        print('  passthrough: hostdevs NOT attached (this machine has no IOMMU); on a GPU host they would be: %s'
              % (', '.join(omitted) or '-'))
        print('  allocate, seconds (the check, image copy and VM as the modules measured them; the whole run):')
        print('    %-15s ' % 'slot' + ' '.join('%8s' % p for p in phases))
        for slot, result in allocations.items():
            timings = result.get('timings', {})
            print('    %-15s ' % slot + ' '.join('%8s' % timings.get(p, '-') for p in phases))
    if releases:
        print('  release, seconds (the reset as pci_reset measured it; the whole playbook):')
        print('    %-15s %8s %8s' % ('slot', 'reset', 'playbook'))
        for slot, result in releases.items():
            print('    %-15s %8s %8s' % (slot, result.get('timings', {}).get('reset', '-'), result.get('wall_seconds', '-')))
    print()


def up(books, kind='cloud', slots=None):
    guest, image, checksum, pubkey = prepare(kind)
    extravars = lab_vars(guest, image)
    if kind == 'cloud':
        log('the tenant\'s client: namespace %s at %s, the node\'s public address %s'
            % (tenant_client.CLIENT_NS, tenant_client.CLIENT_ADDRESS, tenant_client.PUBLIC_ADDRESS))
        tenant_client.client_up()
    log('host_prep on this machine (libvirt, Open vSwitch, br-gpuaas 10.100.0.1/24, dnsmasq, nftables, sink)')
    prep = books.run('host_prep.yml', 'this-machine', extravars, 'host_prep')
    check(prep, 'host_prep')
    log('host_prep: %.1f s' % prep['seconds'])
    log('discovering slots on this machine and on the sample host')
    found = books.run('discover.yml', 'lab', extravars, 'discover')
    check(found, 'discover')
    allocations = {}
    for slot in slots or SLOTS:
        alloc = allocation(slot, image, checksum, pubkey, kind)
        # Recorded before the playbook runs, so lab-down releases even an allocation that failed.
        allocations[slot] = {'allocation_id': alloc['id']}
        with open(STATE, 'w') as handle:
            json.dump(allocations, handle, indent=2)
        log('allocating %s to %s (%s guest, TCG)' % (slot, alloc['id'], kind))
        done = books.run('allocate.yml', NODE, dict(extravars, gpuaas_slot_id=slot, gpuaas_allocation=alloc),
                         'allocate ' + slot)
        check(done, 'allocate %s' % slot)
        result = done['stats'].get('gpuaas_result') or {}
        result['wall_seconds'] = done['seconds']
        allocations[slot] = result
        with open(STATE, 'w') as handle:
            json.dump(allocations, handle, indent=2)
        log('%s: running at %s (%s) in %.1f s' % (slot, result.get('address'), result.get('mac'), done['seconds']))
    if kind == 'cloud':
        proofs, problems = prove_cloud(allocations)
        return allocations, proofs, problems
    since = time.time()
    proofs, problems = prove(allocations, since)
    problems.extend(prove_firmware(allocations))
    return allocations, proofs, problems


def down(books):
    releases = {}
    allocations = {}
    if os.path.exists(STATE):
        with open(STATE) as handle:
            allocations = json.load(handle)
    for slot, result in allocations.items():
        log('releasing %s (%s)' % (slot, result.get('allocation_id')))
        done = books.run('release.yml', NODE, dict(gpuaas_slot_id=slot,
                                                   gpuaas_allocation_id=result['allocation_id']),
                         'release ' + slot)
        check(done, 'release %s' % slot)
        releases[slot] = dict(done['stats'].get('gpuaas_result') or {}, wall_seconds=done['seconds'])
    log('reconcile: the node must agree with its (now empty) leases')
    rec = books.run('reconcile.yml', NODE, {}, 'reconcile')
    check(rec, 'reconcile')
    if os.path.exists(STATE):
        os.unlink(STATE)
    return releases


def stop_network(books=None):
    """Stop the lab's dnsmasq and sink and remove br-gpuaas, the nftables table and the client."""
    books = books or Playbooks()
    tenant_client.client_down()
    log('taking the slot network down (dnsmasq, sink, br-gpuaas, nftables)')
    check(books.run(os.path.join(HERE, 'teardown.yml'), 'this-machine', {}, 'teardown'), 'teardown')


class LabFailed(Exception):
    pass


def check(result, what):
    if result['rc'] != 0:
        for failure in result['failures']:
            log('FAILED %s' % failure)
        raise LabFailed('%s failed (%s); its events are under .build/lab/runner/artifacts/%s'
                        % (what, result['status'], result['ident']))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('command', choices=['run', 'up', 'down', 'vars'],
                        help='vars: print the extra vars of an allocation of --slot (for molecule)')
    parser.add_argument('--slot', default=SLOTS[0])
    parser.add_argument('--allocation-id', default='lab-allocation')
    parser.add_argument('--guest', choices=['cloud', 'busybox'], default='cloud',
                        help='cloud: the Debian cloud image (tests/guest/cloud_image.py); busybox: the fast test guest')
    parser.add_argument('--slots', type=int, choices=range(1, len(SLOTS) + 1), default=len(SLOTS),
                        help='how many of the sample host\'s slots to allocate, in order (s0, s1 of tenant lab-a, '
                        's2 of lab-b); fewer for a busy machine')
    parser.add_argument('-v', '--verbose', action='store_true', help='print every task')
    args = parser.parse_args()
    if args.command == 'vars':
        guest, image, checksum, pubkey = prepare()
        alloc = dict(allocation(args.slot, image, checksum, pubkey), id=args.allocation_id)
        print(json.dumps(dict(lab_vars(guest, image), gpuaas_slot_id=args.slot, gpuaas_allocation=alloc)))
        return 0
    if os.geteuid() != 0:
        log('the lab runs libvirt, Open vSwitch and nftables on this machine: run it as root')
        return 2
    if shutil.which('ovs-vsctl') is None:
        log('Open vSwitch is missing: run make lab (it installs what the lab needs)')
        return 2
    books = Playbooks(verbose=args.verbose)
    start = time.monotonic()
    try:
        if args.command == 'down':
            releases = down(books)
            stop_network(books)
            report({}, releases, {})
            return 0
        try:
            allocations, proofs, problems = up(books, args.guest, SLOTS[:args.slots])
        except LabFailed:
            if args.command == 'run':
                log('cleaning up after the failure')
                down(books)
                tenant_client.client_down()
            raise
        releases = {}
        if args.command == 'run':
            releases = down(books)
            if args.guest == 'cloud':
                problems.extend(prove_released(allocations, releases))
            stop_network(books)
    except LabFailed as exc:
        log(str(exc))
        return 1
    report(allocations, releases, proofs)
    report_tenant(allocations, releases)
    for problem in problems:
        log('PROBLEM %s' % problem)
    log('%s in %.0f s%s' % ('FAILED' if problems else 'passed', time.monotonic() - start,
                            '' if args.command == 'run' else '; the allocations are running: '
                            'virsh list, ovs-ofctl dump-flows br-gpuaas; make lab-down ends them'))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
