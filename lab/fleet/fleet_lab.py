# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet lab: the playbooks over SSH against two nodes, each with its own node id, approved
slot map, libvirt, Open vSwitch, dnsmasq and nftables.

    python lab/fleet/fleet_lab.py run [--lock FILE] [--control-plane] [-v]   # make lab-fleet

  fleet-local  this machine, reached through an sshd on a loopback port as a non-root user
               with a sudoers drop-in (lab/fleet/local_node.py), made for the run, removed after
  fleet-vm     a QEMU (TCG) VM with its own Debian kernel and systemd, built from Debian's
               packages (lab/fleet/node_image.py), reached through a forwarded port as the
               same kind of user
  underlay     fleet-vm's second NIC, whose other end is a tap here; lab/fleet/underlay.yml
               puts each node's end and its underlay address on an Open vSwitch bridge

Both are driven as AWX drives a fleet: ansible-runner, inventory lab/fleet/inventory.yml plus
the connection details (.build/fleet/connection.yml), ansible_become, Debian's /usr/bin/python3
on the nodes. Per node, in parallel: stage.yml copies the sample host's sysfs tree, the test
guest and the tenant image to it; host_prep, underlay.yml, discover, allocate (its slots, SLOTS:
tenant lab-a on both nodes, lab-b on fleet-local, each with the overlay plan the control plane
would give); once every node's slots run, probe.yml waits for PROBES isolation probes of each
guest on the node's own sink; release, reconcile. Then this machine's slot network and underlay
bridge are taken down and the VM powered off. The report gives, per slot, its node's kernel, its
address, what the guest saw and reached, the tenant matrix across the nodes (lab/tenants.py) and
the seconds of each phase.

--control-plane: then gpuaas serve and gpuaas worker drive both nodes, fleet-vm stopped in the
middle of a job (lab/fleet/control_plane.py); the fleet-local teardown comes after it.

--lock FILE: hold an flock on FILE while fleet-local's phases (and the control plane's part)
touch this machine's libvirt, Open vSwitch, dnsmasq and nftables (other users of this
machine's services take it too).
"""

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for path in (REPO, os.path.join(REPO, 'lab'), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)
import lab as local_lab  # noqa: E402  (lab/lab.py: the sample host, the test guest, the image)
import local_node  # noqa: E402
import node_image  # noqa: E402
import tenants  # noqa: E402  (lab/tenants.py: the tenant matrix)

BUILD = os.path.join(REPO, '.build', 'fleet')
INVENTORY = os.path.join(HERE, 'inventory.yml')
PROBE = os.path.join(HERE, 'probe.yml')
UNDERLAY_PLAYBOOK = os.path.join(HERE, 'underlay.yml')
CONNECTION = os.path.join(BUILD, 'connection.yml')
KEY = os.path.join(BUILD, 'id_ed25519')
LAB_DIR = '/var/lib/gpuaas-lab'       # the inventory's gpuaas_lab_dir
SINK_DATA = '/var/lib/gpuaas/telemetry/data'
# Per node its slots, each with its tenant: lab-a has one on each node, so its overlay crosses the
# underlay; lab-b one on fleet-local. The guests' own pings prove the matrix (lab/tenants.py).
SLOTS = {'fleet-local': ('fleet-local-s0', 'fleet-local-s2'), 'fleet-vm': ('fleet-vm-s1',)}
TENANTS = {'fleet-local-s0': 'lab-a', 'fleet-local-s2': 'lab-b', 'fleet-vm-s1': 'lab-a'}
# The overlay plan the lab hands the allocations of its playbook phase, as the control plane would.
VNI = {'lab-a': 4096, 'lab-b': 4097}
OVERLAY_MTU = 1450
# The underlay (lab/fleet/underlay.yml): fleet-vm's second NIC, whose other end is a tap on this
# machine; each node's address on an Open vSwitch bridge (TEST-NET-3: this machine's own uplink
# may be in TEST-NET-1).
UNDERLAY = {'fleet-local': '203.0.113.1', 'fleet-vm': '203.0.113.2'}
UNDERLAY_BRIDGE = 'gpuaas-ul'   # underlay.yml's fleet_underlay_bridge
UNDERLAY_TAP = 'gpuaas-ul-vm'
UNDERLAY_MAC = '52:54:00:67:75:01'
# Probes each guest posts after all of the phase's slots run; what they reached is their union.
PROBES = 3
VM_MEMORY_MB = 3072
DISCOVER_TASK = "Discover the host's slots"   # roles/discover: slot_discovery_info's result


def log(message):
    print('fleet-lab: %s' % message, flush=True)


class LabFailed(Exception):
    pass


def run_playbook(playbook, host, extravars, label, verbose=False, keep=None):
    """One playbook against one node through ansible-runner; its stats and failures. ``keep``:
    {task name: None}, filled with those tasks' results."""
    import ansible_runner
    ident = '%s-%s-%s' % (host, label.replace(' ', '-'), time.strftime('%Y%m%dT%H%M%S'))
    data_dir = os.path.join(BUILD, 'runner', ident)
    os.makedirs(data_dir, exist_ok=True)
    started = {}

    def on_event(event):
        data = event.get('event_data', {})
        if event.get('event') == 'runner_on_start':
            started[data.get('task_uuid')] = time.monotonic()
        elif event.get('event') in ('runner_on_ok', 'runner_on_failed'):
            if keep is not None and data.get('task') in keep:
                keep[data['task']] = data.get('res')
            took = time.monotonic() - started.get(data.get('task_uuid'), time.monotonic())
            status = 'FAILED' if 'failed' in event['event'] else (
                'changed' if data.get('res', {}).get('changed') else 'ok')
            if verbose or status == 'FAILED' or took > 5:
                print('  [%s %s] %-55s %-7s %5.1fs' % (host, label, data.get('task', '')[:55], status, took),
                      flush=True)
        return True

    env = {'ANSIBLE_CONFIG': os.path.join(REPO, 'ansible.cfg'),
           'ANSIBLE_COLLECTIONS_PATH': os.path.join(REPO, '.build', 'collections'),
           'PATH': os.pathsep.join([os.path.dirname(sys.executable), os.environ.get('PATH', '')])}
    if not os.path.isabs(playbook):
        playbook = os.path.join(REPO, 'playbooks', playbook)
    start = time.monotonic()
    result = ansible_runner.run(
        private_data_dir=data_dir, ident=ident, playbook=playbook, inventory=[INVENTORY, CONNECTION],
        limit=host, extravars=dict(extravars, gpuaas_hosts=host), envvars=env, quiet=True,
        event_handler=on_event, timeout=3600)
    stats, failures = {}, []
    for event in result.events:
        if event.get('event') == 'playbook_on_stats':
            stats = event['event_data'].get('artifact_data') or {}
        if event.get('event') in ('runner_on_failed', 'runner_on_unreachable') \
                and not event['event_data'].get('ignore_errors'):
            res = event['event_data'].get('res', {})
            failures.append('%s: %s' % (event['event_data'].get('task'), res.get('msg', res)))
    seconds = round(time.monotonic() - start, 1)
    if result.rc != 0:
        for failure in failures:
            log('FAILED [%s] %s' % (host, str(failure)[:2000]))
        raise LabFailed('%s on %s failed (%s); its events are under %s' % (label, host, result.status, data_dir))
    return stats, seconds


def prepare():
    """The sample host (a tarball for the nodes), the test guest, the tenant image, the keys."""
    guest, image, checksum, pubkey = local_lab.prepare()
    os.makedirs(BUILD, exist_ok=True)
    hgx = os.path.join(local_lab.BUILD, 'hgx')
    with open(os.path.join(hgx, '.built-from')) as handle:
        digest = handle.read().strip()
    tarball = os.path.join(BUILD, 'hgx-%s.tar.gz' % digest[:16])
    if not os.path.exists(tarball):
        with tarfile.open(tarball + '.tmp', 'w:gz') as tar:
            tar.add(os.path.join(hgx, 'sys'), 'hgx/sys')
            tar.add(os.path.join(hgx, 'proc'), 'hgx/proc')
            tar.add(os.path.join(hgx, '.built-from'), 'hgx/' + digest[:16])
        os.rename(tarball + '.tmp', tarball)
    if not os.path.exists(KEY):
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'fleet@gpuaas', '-f', KEY], check=True)
    stage_vars = {'fleet_sysfs_tarball': tarball, 'fleet_sysfs_digest': digest[:16],
                  'fleet_guest_kernel': guest['kernel'], 'fleet_guest_initrd': guest['initrd'],
                  'fleet_image': image}
    return guest, checksum, pubkey, stage_vars


class VmNode:
    """The second node: node_image's root booted in QEMU (TCG), SSH on a forwarded local port."""

    def __init__(self):
        self.port = local_node.free_port()
        self.pidfile = os.path.join(BUILD, 'vm.pid')
        self.console = os.path.join(BUILD, 'vm-console.log')

    def start(self, timeout=1200):
        image = node_image.build(KEY + '.pub')
        disk = os.path.join(BUILD, 'vm-run.qcow2')   # each boot starts from the pristine image
        if os.path.exists(disk):
            os.unlink(disk)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', os.path.join(image, 'root.img'),
                        '-F', 'raw', disk], check=True)
        started = time.monotonic()
        subprocess.run([
            'qemu-system-x86_64', '-machine', 'q35', '-accel', 'tcg', '-cpu', 'max', '-smp', '2',
            '-m', '%dM' % VM_MEMORY_MB, '-kernel', os.path.join(image, 'vmlinuz'),
            '-initrd', os.path.join(image, 'initrd.img'),
            '-append', 'root=/dev/vda rw console=ttyS0 quiet systemd.show_status=error mitigations=off',
            '-drive', 'file=%s,if=virtio,format=qcow2' % disk,
            '-netdev', 'user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22' % self.port,
            '-device', 'virtio-net-pci,netdev=n0',
            # The underlay: a second NIC, whose other end is a tap here (lab/fleet/underlay.yml).
            '-netdev', 'tap,id=n1,ifname=%s,script=no,downscript=no' % UNDERLAY_TAP,
            '-device', 'virtio-net-pci,netdev=n1,mac=%s' % UNDERLAY_MAC,
            '-display', 'none', '-serial', 'file:' + self.console,
            '-pidfile', self.pidfile, '-daemonize'], check=True)
        log('fleet-vm booting (TCG, %d MiB, 2 vCPUs); console in %s' % (VM_MEMORY_MB, self.console))
        local_node.wait_port(self.port, timeout=timeout)
        # sshd answers before the user's login works (systemd-user-sessions): wait for a login.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(['ssh', '-q', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
                                   '-o', 'UserKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=20', '-i', KEY,
                                   '-p', str(self.port), '%s@127.0.0.1' % node_image.LAB_USER, 'sudo', '-n', 'true'],
                                  check=False, timeout=120)
            if done.returncode == 0:
                break
            time.sleep(3)
        else:
            raise LabFailed('fleet-vm: no SSH login with sudo within %d s' % timeout)
        log('fleet-vm up in %.0f s' % (time.monotonic() - started))
        return round(time.monotonic() - started, 1)

    def inventory_vars(self):
        return {'ansible_host': '127.0.0.1', 'ansible_port': self.port, 'ansible_user': node_image.LAB_USER,
                'ansible_ssh_private_key_file': KEY}

    def signal(self, number):
        """Send the QEMU process ``number``; False when it is not running."""
        try:
            with open(self.pidfile) as handle:
                os.kill(int(handle.read().strip()), number)
        except (OSError, ValueError):
            return False
        return True

    def pause(self):
        """The node stops answering at once, as one that hangs or drops off the network."""
        if not self.signal(signal.SIGSTOP):
            raise LabFailed('fleet-vm is not running: nothing to stop')

    def resume(self):
        self.signal(signal.SIGCONT)

    def stop(self):
        if self.signal(signal.SIGCONT) and self.signal(signal.SIGTERM):
            os.unlink(self.pidfile)


def write_connection(nodes):
    import yaml
    hosts = {name: node.inventory_vars() for name, node in nodes.items()}
    for name in hosts:
        hosts[name] = {key: value for key, value in hosts[name].items()
                       if key in ('ansible_host', 'ansible_port', 'ansible_user', 'ansible_ssh_private_key_file')}
    with open(CONNECTION, 'w') as handle:
        yaml.safe_dump({'all': {'children': {'fleet': {'hosts': hosts}}}}, handle, default_flow_style=False)


def parse_reports(text, since=None):
    """What a guest posted to its node's sink (JSON lines): its boot facts, its latest probe, and
    the addresses that its probes received at or after ``since`` (the node's clock) reached, their
    union (None when none came)."""
    facts, probe, reached = {}, {}, None
    for line in text.splitlines():
        try:
            sample = json.loads(line)
        except ValueError:
            continue
        data = sample.get('body', sample)
        if data.get('metric') == 'guest_boot':
            facts = data
        elif data.get('metric') == 'probe':
            probe = data
            if since is None or float(sample.get('received_at') or 0) >= since:
                reached = (reached or set()) | tenants.parse_reached(data.get('peers_reachable') or '')
    return facts, probe, reached


def overlay_plan(tenant, host, hosts):
    """The tenant's overlay plan for ``host`` as the control plane gives it: the other nodes of
    the run holding one of its slots are its peers."""
    peers = [{'node_id': other, 'underlay_ip': UNDERLAY[other]} for other in sorted(hosts)
             if other != host and any(TENANTS[slot] == tenant for slot in SLOTS[other])]
    return {'tenant': tenant, 'vni': VNI[tenant], 'mtu': OVERLAY_MTU, 'peers': peers}


def underlay_vars(host):
    """How underlay.yml finds the node's end of the underlay and which address it gets."""
    end = {'fleet_underlay_port': UNDERLAY_TAP} if host == 'fleet-local' else {'fleet_underlay_mac': UNDERLAY_MAC}
    return dict(end, fleet_underlay_address=UNDERLAY[host])


class NodeRun(threading.Thread):
    """One node's whole sequence, in its own thread: stage, host_prep, the underlay, discover,
    allocate its slots, wait (``ready``, a barrier of every node's run) until every node's slots
    run, wait for its guests' probes, release, reconcile (and, on this machine, the teardown)."""

    def __init__(self, host, common, stage_vars, allocs, verbose, lock=None, vm=None, teardown=True, ready=None,
                 underlay=True):
        super().__init__(name=host)
        self.stage_vars, self.vm, self.teardown, self.ready, self.underlay = stage_vars, vm, teardown, ready, underlay
        self.discovery = None
        self.host, self.common, self.allocs, self.verbose, self.lock = host, common, allocs, verbose, lock
        self.result = {'node': host, 'phases': {}, 'slots': [
            {'slot': slot, 'tenant': alloc['tenant'], 'allocation_id': alloc['id']} for slot, alloc in allocs]}
        self.error = None

    def phase(self, name, playbook, extravars, label=None, keep=None):
        """One playbook run; its seconds are added to the phase's (a phase per slot adds up)."""
        stats, seconds = run_playbook(playbook, self.host, dict(self.common, **extravars), label or name, self.verbose,
                                      keep)
        self.result['phases'][name] = round(self.result['phases'].get(name, 0) + seconds, 1)
        log('%s: %s in %.1f s' % (self.host, label or name, seconds))
        return stats

    def run(self):
        held = None
        try:
            if self.lock:
                held = open(self.lock, 'w')
                log('%s: waiting for %s' % (self.host, self.lock))
                fcntl.flock(held, fcntl.LOCK_EX)
            self.sequence()
        except Exception as exc:  # pylint: disable=broad-except
            self.error = exc
        finally:
            if self.ready is not None:
                self.ready.abort()   # a node that ends early must not keep the other waiting
            if held is not None:
                held.close()

    def sequence(self):
        if self.vm is not None:
            self.result['phases']['boot'] = self.vm.start()
        stats = self.phase('stage', os.path.join(HERE, 'stage.yml'), self.stage_vars)
        self.result['kernel'] = stats.get('fleet_kernel')
        self.phase('host_prep', 'host_prep.yml', {})
        if self.underlay:
            self.phase('underlay', UNDERLAY_PLAYBOOK, underlay_vars(self.host))
        keep = {DISCOVER_TASK: None}
        self.phase('discover', 'discover.yml', {}, keep=keep)
        self.discovery = keep[DISCOVER_TASK]   # what the node reported, for the control plane
        tried = []
        try:
            for entry, (slot, alloc) in zip(self.result['slots'], self.allocs):
                tried.append((slot, alloc))
                stats = self.phase('allocate', 'allocate.yml', {'gpuaas_slot_id': slot, 'gpuaas_allocation': alloc},
                                   label='allocate %s' % slot)
                got = stats.get('gpuaas_result') or {}
                entry.update({key: got.get(key) for key in ('address', 'mac', 'timings', 'node_id')})
            if self.ready is not None:
                try:
                    self.ready.wait()
                except threading.BrokenBarrierError:
                    raise LabFailed('%s: the other node ended before its slots ran' % self.host)
            probe_vars = {'fleet_allocation_ids': [alloc['id'] for _slot, alloc in self.allocs],
                          'fleet_sink_data': SINK_DATA, 'fleet_probe_count': PROBES}
            if self.underlay and self.host == 'fleet-local':   # fleet-vm's image has no ping (this machine: busybox's)
                probe_vars['fleet_underlay_peer'] = UNDERLAY['fleet-vm']
            stats = self.phase('probe', PROBE, probe_vars)
            self.result['underlay_ping'] = stats.get('fleet_underlay_ping')
            with open(os.path.join(BUILD, '%s-ovs.txt' % self.host), 'w') as handle:
                handle.write(stats.get('fleet_ovs') or '')   # the node's switch then, for a failed run
            reports = stats.get('fleet_reports') or {}
            for entry in self.result['slots']:
                entry['guest'], entry['probe'], entry['reached'] = parse_reports(
                    reports.get(entry['allocation_id']) or '', stats.get('fleet_since'))
        finally:
            for entry, (slot, alloc) in zip(self.result['slots'], tried):
                stats = self.phase('release', 'release.yml', {
                    'gpuaas_slot_id': slot, 'gpuaas_allocation_id': alloc['id']}, label='release %s' % slot)
                entry['release'] = (stats.get('gpuaas_result') or {}).get('timings', {})
            self.phase('reconcile', 'reconcile.yml', {})
            if self.host == 'fleet-local' and self.teardown:
                teardown(self.phase, self.underlay)


def teardown(phase, underlay):
    """This machine's slot network taken down, and the underlay's bridge here."""
    phase('teardown', os.path.join(REPO, 'lab', 'teardown.yml'), {})
    if underlay:
        phase('teardown', UNDERLAY_PLAYBOOK, {'fleet_underlay_state': 'absent'}, label='teardown underlay')


def problems_of(result):
    problems = []
    for entry in result['slots']:
        probe, guest = entry.get('probe') or {}, entry.get('guest') or {}
        where = '%s %s' % (result['node'], entry['slot'])
        if not probe:
            problems.append('%s: no probe from the guest' % where)
            continue
        if probe.get('ip') != entry.get('address'):
            problems.append('%s: the guest has %s, the layout says %s' % (where, probe.get('ip'), entry.get('address')))
        if probe.get('gateway_ok') != 1:
            problems.append('%s: the guest cannot reach its gateway' % where)
        if not guest.get('firmware'):
            problems.append('%s: the guest reported no boot facts' % where)
    return problems


def tenant_matrix(results):
    """The tenant matrix (lab/tenants.py) over every node's slots: (rows, problems)."""
    entries = [entry for result in results for entry in result['slots']]
    return tenants.matrix({e['slot']: e['tenant'] for e in entries}, {e['slot']: e.get('address') for e in entries},
                          {e['slot']: e.get('reached') for e in entries})


def approval(work, host):
    """The node's approved slot map for the control plane: its first slot only (the scenario's
    placements count on one free slot per node)."""
    import yaml
    with open(os.path.join(HERE, 'host_vars', '%s.yml' % host)) as handle:
        approved = yaml.safe_load(handle)
    approved['gpuaas_approved_slots'] = [s for s in approved['gpuaas_approved_slots'] if s['slot_id'] == SLOTS[host][0]]
    path = os.path.join(work, '%s-approved.yml' % host)
    with open(path, 'w') as handle:
        yaml.safe_dump(approved, handle)
    return path


def control_plane_part(runs, vm, common, checksum, pubkey, verbose):
    """The control plane over both nodes (lab/fleet/control_plane.py); its report lines and
    problems."""
    import control_plane
    from plane import Plane
    work = os.path.join(BUILD, 'control-plane')
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    inventory = control_plane.worker_inventory(os.path.join(work, 'inventory'), INVENTORY, CONNECTION, common)
    policy = os.environ.get('GPUAAS_UNREACHABLE_POLICY', 'reschedule')
    plane = Plane(work, inventory, {
        'GPUAAS_KEEP_RUNS': '20', 'GPUAAS_IMAGE_DIR': '%s/images' % LAB_DIR, 'GPUAAS_UNREACHABLE_POLICY': policy,
        'GPUAAS_PROBE_INTERVAL': '10', 'GPUAAS_POLL_INTERVAL': '0.5', 'GPUAAS_RETRY_BASE': '2',
        'GPUAAS_JOB_TIMEOUT': '1800', 'GPUAAS_TELEMETRY_INTERVAL': '0', 'GPUAAS_CONSOLE_POLL_INTERVAL': '0'})
    discoveries, approvals = {}, {}
    for node_run in runs:
        discoveries[node_run.host] = os.path.join(work, '%s-discovery.json' % node_run.host)
        with open(discoveries[node_run.host], 'w') as handle:
            json.dump(node_run.discovery, handle)
        approvals[node_run.host] = approval(work, node_run.host)

    def probe(ids):
        """{allocation id: what its guest's probes reached} for {node: allocation id}, both nodes at once."""
        reached = {}

        def one(host, ident):
            stats = run_playbook(PROBE, host, dict(common, fleet_allocation_ids=[ident], fleet_sink_data=SINK_DATA,
                                                   fleet_probe_count=PROBES, fleet_probe_timeout=600),
                                 'probe', verbose)[0]
            reached[ident] = parse_reports((stats.get('fleet_reports') or {}).get(ident) or '',
                                           stats.get('fleet_since'))[2]
        threads = [threading.Thread(target=one, args=item) for item in ids.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return reached

    scenario = control_plane.Scenario(plane, ('fleet-local', 'fleet-vm'), vm, 'lab-guest.qcow2', checksum,
                                      pubkey, policy, log, UNDERLAY, probe)
    try:
        scenario.run(discoveries, approvals)
    except (control_plane.Failed, LabFailed) as exc:
        scenario.check(False, str(exc))
        vm.resume()
        scenario.cleanup()
    finally:
        vm.resume()
        plane.stop()
    if scenario.problems or verbose:
        log('the control plane\'s logs and runs are under %s' % work)
    return scenario.lines, scenario.problems


def report(results, total, control_lines=()):
    print()
    print('fleet lab report (%s): %d node(s) over SSH as %s with become (sudo), /usr/bin/python3 on the nodes'
          % (time.strftime('%Y-%m-%d %H:%M:%S'), len(results), node_image.LAB_USER))
    header = ('node', 'kernel', 'slot', 'tenant', 'address', 'mac', 'firmware', 'isolation (the guest\'s own pings)')
    print('  %-12s %-16s %-15s %-6s %-12s %-17s %-8s %s' % header)
    for result in results:
        for entry in result['slots']:
            probe, guest = entry.get('probe') or {}, entry.get('guest') or {}
            print('  %-12s %-16s %-15s %-6s %-12s %-17s %-8s gateway %s, other slots reached: %s' % (
                result['node'], result.get('kernel'), entry['slot'], entry['tenant'], entry.get('address'),
                entry.get('mac'), guest.get('firmware'), 'ok' if probe.get('gateway_ok') == 1 else 'NO',
                '?' if entry.get('reached') is None else ' '.join(sorted(entry['reached'])) or 'none'))
    nodes = [result['node'] for result in results]
    if any('underlay' in result['phases'] for result in results):
        ping = next((r.get('underlay_ping') for r in results if r['node'] == 'fleet-local'), None)
        ping = {0: 'ok', None: '-'}.get(ping, 'NO (rc %s)' % ping)
        addresses = ', '.join('%s %s' % (node, UNDERLAY[node]) for node in nodes)
        print('  underlay: %s (fleet-vm\'s second NIC, a tap on this machine; a bridge on each node holds its '
              'address); fleet-local pinged fleet-vm: %s' % (addresses, ping))
    print('  overlay plans: %s' % '; '.join(
        'tenant %s VNI %d on %s' % (tenant, VNI[tenant], ', '.join(
            n for n in nodes if any(TENANTS[slot] == tenant for slot in SLOTS[n]))) for tenant in sorted(VNI)))
    print('  tenant matrix (did the guest\'s own ping reach the other slot, in its %d probes after every slot ran; '
          '! where that is wrong):' % PROBES)
    entries = [entry for result in results for entry in result['slots']]
    for line in tenants.render({e['slot']: e['tenant'] for e in entries}, tenant_matrix(results)[0]):
        print('  ' + line)
    phases = ['boot', 'stage', 'host_prep', 'underlay', 'discover', 'allocate', 'probe', 'release', 'reconcile',
              'teardown']
    print('  seconds per playbook run (a phase per slot added up; probe: from every slot running until %d probes '
          'of each guest reached the node\'s sink):' % PROBES)
    print('    %-12s ' % 'node' + ' '.join('%9s' % phase for phase in phases))
    for result in results:
        print('    %-12s ' % result['node'] + ' '.join('%9s' % result['phases'].get(phase, '-') for phase in phases))
    print('  allocate as the modules measured it (check, image, vm, total) and release (reset):')
    for result in results:
        for entry in result['slots']:
            timings = entry.get('timings') or {}
            measured = ', '.join('%s %s' % (key, timings.get(key, '-')) for key in ('check', 'image', 'vm', 'total'))
            print('    %-15s %s; reset %s' % (entry['slot'], measured, (entry.get('release') or {}).get('reset', '-')))
    print('  (boot: fleet-vm from QEMU\'s start to an SSH login with sudo); the whole lab took %.0f s' % total)
    if control_lines:
        print('  the control plane over both nodes (gpuaas serve + gpuaas worker, SQLite), seconds from its start:')
        for line in control_lines:
            print('    ' + line)
    print()


def dnsmasq_alive(pidfile='/run/gpuaas/gpuaas-dnsmasq.pid'):
    """Whether fleet-local's dnsmasq (host_daemon's, this machine has no systemd) still runs."""
    try:
        with open(pidfile) as handle, open('/proc/%d/comm' % int(handle.read().strip())) as comm:
            return comm.read().strip() == 'dnsmasq'
    except (OSError, ValueError):
        return False


def remove_underlay(lock):
    """The underlay's bridge on this machine, when a failed run left it (its tap went with the VM)."""
    found = subprocess.run(['ovs-vsctl', '--timeout=10', 'br-exists', UNDERLAY_BRIDGE], check=False,
                           capture_output=True)
    if found.returncode != 0:
        return
    with open(lock or os.devnull, 'w') as held:
        if lock:
            fcntl.flock(held, fcntl.LOCK_EX)
        subprocess.run(['ovs-vsctl', '--timeout=10', '--if-exists', 'del-br', UNDERLAY_BRIDGE], check=False)
    log('removed the underlay bridge %s that the run left on this machine' % UNDERLAY_BRIDGE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('command', choices=['run'])
    parser.add_argument('--lock', help='flock this file while fleet-local runs')
    parser.add_argument('--only', action='append', choices=sorted(SLOTS), help='run on this node only')
    parser.add_argument('--control-plane', action='store_true',
                        help='then drive both nodes through gpuaas serve and worker, fleet-vm stopped mid-job')
    parser.add_argument('-v', '--verbose', action='store_true', help='print every task')
    args = parser.parse_args()
    if os.geteuid() != 0:
        log('the lab makes a user and runs an sshd and libvirt on this machine: run it as root')
        return 2
    for tool in (local_node.SSHD, '/usr/bin/sudo', '/usr/bin/python3', 'mmdebstrap'):
        if shutil.which(tool) is None:
            log('%s is missing: make setup installs it' % tool)
            return 2
    start = time.monotonic()
    guest, checksum, pubkey, stage_vars = prepare()
    vm = VmNode()
    local = local_node.LocalNode(os.path.join(BUILD, 'sshd'), node_image.LAB_USER, KEY)
    results, problems, control_lines = [], [], []
    if args.control_plane and args.only:
        log('--control-plane needs both nodes')
        return 2
    try:
        local.start()
        write_connection({'fleet-local': local, 'fleet-vm': vm})
        common = {'gpuaas_guest_cmdline': guest['cmdline']}
        image = '%s/images/lab-guest.qcow2' % LAB_DIR
        runs = []
        hosts = args.only or ('fleet-vm', 'fleet-local')
        ready = threading.Barrier(len(hosts))
        for host in hosts:
            allocs = []
            for slot in SLOTS[host]:
                alloc = local_lab.allocation(slot, image, checksum, pubkey)
                alloc.update(id=alloc['id'].replace('lab-', 'fleet-', 1), tenant=TENANTS[slot],
                             network=overlay_plan(TENANTS[slot], host, hosts))
                allocs.append((slot, alloc))
            runs.append(NodeRun(host, common, stage_vars, allocs, args.verbose,
                                lock=args.lock if host == 'fleet-local' else None,
                                vm=vm if host == 'fleet-vm' else None, teardown=not args.control_plane, ready=ready,
                                underlay=len(hosts) > 1))
        for node_run in runs:
            node_run.start()
        for node_run in runs:
            node_run.join()
            results.append(node_run.result)
            if node_run.error is not None:
                problems.append('%s: %s' % (node_run.host, node_run.error))
            else:
                problems.extend(problems_of(node_run.result))
        if not problems:
            problems.extend(tenant_matrix(results)[1])
            if problems:
                log('what each node\'s switch held at the probe: %s/*-ovs.txt' % BUILD)
        if not problems and not dnsmasq_alive():
            # This machine has no systemd to start it again: a dead dnsmasq is the product's failure.
            problems.append('fleet-local: dnsmasq died during the playbook phase (dmesg says how)')
        if args.control_plane and not problems:
            with open(args.lock or os.devnull, 'w') as held:   # its jobs touch this machine's services
                if args.lock:
                    fcntl.flock(held, fcntl.LOCK_EX)
                control_lines, failed = control_plane_part(runs, vm, common, checksum, pubkey, args.verbose)
                problems.extend(failed)
                if not dnsmasq_alive():
                    problems.append('fleet-local: dnsmasq died during the control plane\'s part (dmesg says how)')
                local_result = next(r for r in results if r['node'] == 'fleet-local')

                def phase(name, playbook, extravars, label=None):
                    seconds = run_playbook(playbook, 'fleet-local', dict(common, **extravars), label or name,
                                           args.verbose)[1]
                    local_result['phases'][name] = round(local_result['phases'].get(name, 0) + seconds, 1)
                teardown(phase, underlay=True)
    except LabFailed as exc:
        problems.append(str(exc))
    finally:
        local.stop()
        vm.stop()
        remove_underlay(args.lock)
    report(results, time.monotonic() - start, control_lines)
    for problem in problems:
        log('PROBLEM %s' % problem)
    log('%s in %.0f s' % ('FAILED' if problems else 'passed', time.monotonic() - start))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
