# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot VM for real: libvirtd, QEMU (TCG), a bridge with dnsmasq, a telemetry sink.

slot_image, slot_seed and slot_vm run as a playbook (check mode, apply, apply again), and
the guest built by tests/guest/build_image.py boots from what they made. The guest gets
its fixed address from dnsmasq, takes its host name from the seed, answers ping and
posts a metric with its token. Then stop, replace and removal run, and removal must
leave no domain, no disk, no seed, no tap port and no lease behind. Passthrough is
off (this machine has no IOMMU); the hostdev XML, PCI segment 0001 included, is
still defined in the real libvirt.
"""

from __future__ import annotations

import base64
import json
import os
import hashlib
import secrets
import struct
import subprocess
import sys
import time

import pytest
import yaml

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot
from ansible_collections.gpuaas.slice.plugins.modules import slot_image, slot_seed, slot_vm
from tests.functional.vm import env
from tests.unit.module_runner import run_module

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NODE, INDEX = 'vmtest', 3
SLOT = Slot(NODE, INDEX).slot_id
MAC = Slot(NODE, INDEX).mac
HOSTNAME = 'tenant-vm-7'
ALLOCATION = 'alloc-2f9c'
MIB = 1 << 20


def ssh_key(kind, comment):
    name = kind.encode()
    blob = struct.pack('>I', len(name)) + name + struct.pack('>I', 32) + os.urandom(32)
    return '%s %s %s' % (kind, base64.b64encode(blob).decode(), comment)


@pytest.fixture(scope='module')
def slot(workdir, network, guest, libvirtd):
    """Everything the playbook needs, and a teardown that removes whatever is left."""
    images = os.path.join(workdir, 'images')
    os.makedirs(images)
    magic = 'GPUAAS-TEST-DISK:%s' % secrets.token_hex(4)
    raw = os.path.join(images, 'base.raw')
    with open(raw, 'wb') as handle:
        handle.write(magic.encode() + b'\n')
        handle.truncate(8 * MIB)
    qcow2 = os.path.join(images, 'base.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2], check=True)
    with open(qcow2, 'rb') as handle:
        checksum = 'sha256:' + hashlib.sha256(handle.read()).hexdigest()
    ip = network.ip(INDEX)
    network.add_host(MAC, ip)
    env.destroy_domain(libvirtd.uri, 'gpuaas-' + SLOT)   # left by a run that was killed
    values = {
        'slot_id': SLOT, 'uri': libvirtd.uri, 'ip': ip, 'magic': magic, 'token': secrets.token_urlsafe(24),
        'keys': [ssh_key('ssh-ed25519', 'alice@laptop'), ssh_key('ecdsa-sha2-nistp256', 'bob')],
        'image': {'source': qcow2, 'checksum': checksum, 'source_dirs': [images],
                  'image_dir': os.path.join(workdir, 'disks'), 'size': '64M'},
        'seed_dir': os.path.join(workdir, 'seeds'),
        'console_dir': os.path.join(workdir, 'console'),
        'nvram_dir': os.path.join(workdir, 'nvram'),
    }
    yield values
    env.destroy_domain(libvirtd.uri, 'gpuaas-' + SLOT)


def vm_args(slot, network, guest, **extra):
    args = dict(uri=slot['uri'], slot_id=SLOT, state='running', domain_type='qemu', memory_mib=192,
                cpulist='0-1', vcpus=1, numa_node=0, passthrough=False,
                gpu_address='0001:01:00.0', companions=['0001:01:00.1'], nvme_address='0001:02:00.0',
                fabric_vf_pci_address='0001:03:00.1',
                bridge=network.bridge, bridge_type='linux', console_log_dir=slot['console_dir'],
                kernel=guest['kernel'], initrd=guest['initrd'], kernel_cmdline=guest['cmdline'],
                lease_file=network.lease_file, lease_timeout=120, stop_timeout=30,
                expected_ip=slot['ip'], nvram_dir=slot['nvram_dir'],
                allowed_dirs=[os.path.dirname(slot['console_dir']), os.path.dirname(guest['kernel']),
                              os.path.dirname(guest['initrd'])])
    args.update(extra)
    return args


def playbook(path, slot, network, guest):
    vm = vm_args(slot, network, guest, disk='{{ image.target }}', seed='{{ seed.path }}')
    tasks = [
        {'name': 'image', 'gpuaas.slice.slot_image': dict(slot['image'], slot_id=SLOT), 'register': 'image'},
        {'name': 'seed', 'gpuaas.slice.slot_seed': {
            'slot_id': SLOT, 'allocation_id': ALLOCATION, 'hostname': HOSTNAME,
            'ssh_keys': slot['keys'], 'telemetry_token': slot['token'],
            'telemetry_sink': network.sink.url, 'seed_dir': slot['seed_dir']}, 'register': 'seed'},
        {'name': 'vm', 'gpuaas.slice.slot_vm': vm, 'register': 'vm'},
    ]
    # The registered results are written to a file whatever happened (json is no longer a
    # callback of ansible-core).
    save = {'name': 'save the results', 'check_mode': False, 'diff': False, 'ansible.builtin.copy': {
        'dest': '{{ results_file }}', 'mode': '0600',
        'content': "{{ {'image': image | default(None), 'seed': seed | default(None), "
                   "'vm': vm | default(None)} | to_json }}"}}
    with open(path, 'w') as handle:
        yaml.safe_dump([{'name': 'slot VM', 'hosts': 'localhost', 'connection': 'local',
                         'gather_facts': False, 'tasks': [{'block': tasks, 'always': [save]}]}], handle)
    return path


def run_playbook(path, check=False):
    """ansible-playbook on the playbook; the registered results by task name."""
    results_file = os.path.join(os.path.dirname(path), 'results.json')
    if os.path.exists(results_file):
        os.unlink(results_file)
    argv = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '--diff',
            '-e', 'ansible_python_interpreter=%s' % sys.executable, '-e', 'results_file=%s' % results_file, path]
    if check:
        argv.append('--check')
    environ = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
                   ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build', 'collections'))
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=environ, cwd=REPO, check=False)
    elapsed = time.monotonic() - start
    if not os.path.exists(results_file):
        pytest.fail('ansible-playbook wrote no results (rc %d): %s %s'
                    % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
    with open(results_file) as handle:
        results = json.load(handle)
    failed = {name: r.get('msg') for name, r in results.items() if r and r.get('failed')}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:])
    return results, elapsed


def domain_exists(uri, name):
    import libvirt
    conn = libvirt.open(uri)
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def wait_for_post(sink, token, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for post in sink.posts:
            if post['authorization'] == 'Bearer ' + token:
                return post
        time.sleep(0.2)
    pytest.fail('the guest posted no metric with its token within %d s; posts: %r' % (timeout, sink.posts))


def console(slot):
    path = os.path.join(slot['console_dir'], SLOT + '.log')
    with open(path, 'rb') as handle:
        return handle.read().decode('utf-8', 'replace')


def test_check_mode_apply_idempotence_and_boot(slot, network, guest, workdir, capsys):
    book = playbook(os.path.join(workdir, 'slot.yml'), slot, network, guest)

    # Check mode: every task would change, nothing is created.
    results, _elapsed = run_playbook(book, check=True)
    assert [results[t]['changed'] for t in ('image', 'seed', 'vm')] == [True, True, True]
    assert results['vm']['actions'] == ['create NVRAM directory', 'create console log directory', 'define', 'start']
    assert not domain_exists(slot['uri'], 'gpuaas-' + SLOT)
    for path in (slot['image']['image_dir'], slot['seed_dir'], slot['console_dir'], slot['nvram_dir']):
        assert not os.path.exists(path), path
    assert network.ports() == [] and network.leases() == []

    # Apply: the guest boots, gets its address and reports in.
    results, apply_s = run_playbook(book)
    vm = results['vm']
    assert vm['changed'] and vm['actions'] == ['create NVRAM directory', 'create console log directory', 'define',
                                               'start'], vm
    # UEFI: OVMF without secure boot, the variable store the domain's own, in the node directory.
    nvram = os.path.join(slot['nvram_dir'], SLOT + '_VARS.fd')
    assert (vm['firmware'], vm['nvram'], vm['phys_bits']) == ('uefi', nvram, 40)
    assert os.path.getsize(nvram) > 0
    assert "<os firmware='efi'>" in vm['xml'] and "<feature enabled='no' name='secure-boot'/>" in vm['xml']
    assert vm['ip'] == slot['ip'] and vm['mac'] == MAC and vm['domain_state'] == 'running'
    assert vm['lease']['hostname'] == HOSTNAME
    assert [d['address'] for d in vm['hostdevs_omitted']] == ['0001:01:00.0', '0001:01:00.1', '0001:02:00.0',
                                                              '0001:03:00.1']
    assert vm['diff']['before'] == '' and "<domain type='qemu'" in vm['diff']['after']
    assert any('passthrough=false' in w for w in vm.get('warnings', []))
    assert network.ports() == [vm['tap']]
    post = wait_for_post(network.sink, slot['token'])
    body = post['body']
    assert post['path'] == '/metrics' and post['client'] == slot['ip']
    assert body['hostname'] == HOSTNAME and body['instance_id'] == ALLOCATION and body['ip'] == slot['ip']
    assert body['disk_magic'] == slot['magic'] and body['disk_bytes'] == 64 * MIB
    assert body['ssh_keys'] == 2
    assert (body['firmware'], body['phys_bits']) == ('uefi', 40)
    assert env.ping(slot['ip'])
    log = console(slot)
    assert 'gpuaas-guest: seed hostname=%s instance=%s keys=2' % (HOSTNAME, ALLOCATION) in log
    assert slot['token'] not in json.dumps(results)

    import libvirt
    conn = libvirt.open(slot['uri'])
    dom = conn.lookupByName('gpuaas-' + SLOT)
    assert dom.vcpuPinInfo(0)[0][:2] == (True, False)          # vCPU 0 on CPU 0 only
    assert dom.emulatorPinInfo(0)[:2] == (True, True)
    numa = dom.numaParameters(0)
    assert numa['numa_nodeset'] == '0' and numa['numa_mode'] == libvirt.VIR_DOMAIN_NUMATUNE_MEM_STRICT
    # QEMU made the guest agent's port and libvirt's socket (the test guest runs no agent).
    assert "<target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>" in dom.XMLDesc(0)
    conn.close()
    print('\nslot VM apply (playbook, 3 tasks, boot to lease): %.1f s; guest uptime at lease %.2f s; '
          'slot_vm timings %s' % (apply_s, body['uptime_at_lease'], vm['timings']))

    # Apply again: nothing to do.
    results, again_s = run_playbook(book)
    assert [results[t]['changed'] for t in ('image', 'seed', 'vm')] == [False, False, False], results
    assert results['vm']['diff']['before'] == results['vm']['diff']['after']
    assert results['vm']['ip'] == slot['ip']
    print('slot VM apply again: %.1f s' % again_s)


def test_replace_stop_restart_and_remove_leave_nothing_behind(slot, network, guest, capsys):
    disk = os.path.join(slot['image']['image_dir'], SLOT + '.raw')
    seed = os.path.join(slot['seed_dir'], SLOT + '-seed.iso')
    base = vm_args(slot, network, guest, disk=disk, seed=seed)
    before = run_module(slot_vm, dict(base, state='present'), capsys=capsys)
    assert before['changed'] is False and before['domain_state'] == 'running', before

    # A different definition is refused unless replace=true; the UUID survives a replace.
    other = run_module(slot_vm, dict(base, memory_mib=256), capsys=capsys)
    assert other['failed'] and 'replace=true' in other['msg'] and 'memory_mib' in other['msg']
    replaced = run_module(slot_vm, dict(base, memory_mib=256, replace=True), diff=True, capsys=capsys)
    assert replaced['actions'] == ['destroy', 'redefine', 'start'], replaced
    assert replaced['uuid'] == before['uuid'] and replaced['ip'] == slot['ip']
    assert '262144' in replaced['diff']['after'] and '196608' in replaced['diff']['before']

    # Stop: the ACPI power button shuts the guest down (no forced power-off).
    stopped = run_module(slot_vm, dict(base, memory_mib=256, state='stopped'), capsys=capsys)
    assert stopped['actions'] == ['shutdown'] and stopped['forced_off'] is False, stopped
    assert stopped['domain_state'] == 'shut off' and network.ports() == []
    assert 'power button' in console(slot)

    # Restart never moves a slot (kubevirt/enhancements#344): the same definition starts
    # again, nothing is redefined, and the guest finds the same disk.
    posted = len(network.sink.posts)
    restarted = run_module(slot_vm, dict(base, memory_mib=256), capsys=capsys)
    assert restarted['actions'] == ['start'] and restarted['uuid'] == before['uuid'], restarted
    assert restarted['ip'] == slot['ip'] and restarted['tap'] == before['tap'] and restarted['mac'] == MAC
    assert restarted['xml'] == stopped['xml']
    deadline = time.monotonic() + 60
    while len(network.sink.posts) == posted and time.monotonic() < deadline:
        time.sleep(0.2)
    assert network.sink.posts[posted]['body']['disk_magic'] == slot['magic']

    # Remove everything: check mode first, then for real.
    check = run_module(slot_vm, dict(uri=slot['uri'], slot_id=SLOT, state='absent', bridge=network.bridge,
                                     lease_file=network.lease_file), check_mode=True, capsys=capsys)
    assert check['actions'] == ['destroy', 'undefine', 'release lease']
    assert domain_exists(slot['uri'], 'gpuaas-' + SLOT) and network.ports() == [before['tap']]
    gone = run_module(slot_vm, dict(uri=slot['uri'], slot_id=SLOT, state='absent', bridge=network.bridge,
                                    lease_file=network.lease_file), diff=True, capsys=capsys)
    assert gone['actions'] == ['destroy', 'undefine', 'release lease'] and gone['diff']['after'] == '', gone
    # (warnings pile up across in-process module runs: look only for the lease's)
    assert not [w for w in gone.get('warnings', []) if 'lease' in str(w)], gone['warnings']
    image = run_module(slot_image, dict(slot_id=SLOT, image_dir=slot['image']['image_dir'], state='absent'),
                       capsys=capsys)
    seeded = run_module(slot_seed, dict(slot_id=SLOT, seed_dir=slot['seed_dir'], state='absent'), capsys=capsys)
    assert image['changed'] and seeded['changed']

    assert not domain_exists(slot['uri'], 'gpuaas-' + SLOT)
    assert os.listdir(slot['nvram_dir']) == []          # the variable store went with the domain
    assert os.listdir(slot['image']['image_dir']) == [] and not os.path.exists(disk)
    assert not os.path.exists(seed)
    assert network.ports() == [] and not os.path.exists('/sys/class/net/' + before['tap'])
    assert [lease for lease in network.leases() if MAC in lease] == []
    again = run_module(slot_vm, dict(uri=slot['uri'], slot_id=SLOT, state='absent', bridge=network.bridge,
                                     lease_file=network.lease_file), capsys=capsys)
    assert again['changed'] is False


def test_hostdevs_on_segment_0001_are_accepted_by_libvirt(slot, network, guest, capsys):
    """apache/cloudstack#12960: a device on PCI segment 0001 made invalid domain XML."""
    name = 'vmtest-s9'
    args = vm_args(slot, network, guest, slot_id=name, state='present', passthrough=True)
    try:
        made = run_module(slot_vm, args, capsys=capsys)
        assert made['changed'] and made['actions'][-1] == 'define', made
        xml = made['xml']
        for bus, function in (('0x01', '0x0'), ('0x01', '0x1'), ('0x02', '0x0'), ('0x03', '0x1')):
            assert "<address domain='0x0001' bus='%s' slot='0x00' function='%s'/>" % (bus, function) in xml
        assert run_module(slot_vm, args, capsys=capsys)['changed'] is False
        # Other devices for the same slot are refused, and the definition stays as it was.
        moved = run_module(slot_vm, dict(args, gpu_address='0001:04:00.0'), capsys=capsys)
        assert moved['failed'] and 'replace=true' in moved['msg'] and 'hostdevs:' in moved['msg']
        assert run_module(slot_vm, args, capsys=capsys)['xml'] == xml
        # Starting it is refused before QEMU runs: this host has no IOMMU (or the devices).
        started = run_module(slot_vm, dict(args, state='running'), capsys=capsys)
        assert started['failed'] and 'cannot start' in started['msg']
        assert ('no IOMMU groups' in started['msg']) or ('does not exist on this host' in started['msg'])
    finally:
        removed = run_module(slot_vm, dict(uri=slot['uri'], slot_id=name, state='absent',
                                           lease_file=network.lease_file), capsys=capsys)
        assert removed['actions'] == ['undefine']


def test_libvirt_takes_a_slices_pinning_and_the_emulator_on_the_hosts_cpus(slot, network, guest, capsys):
    """Issue 17: vCPU i on CPU i of the slot's slice, the emulator threads on the host's CPUs."""
    name = 'vmtest-s8'
    args = vm_args(slot, network, guest, slot_id=name, state='present', cpulist='1', host_cpulist='0')
    try:
        made = run_module(slot_vm, args, capsys=capsys)
        assert made['changed'] and made['actions'][-1] == 'define', made
        assert "<vcpupin vcpu='0' cpuset='1'/>" in made['xml'] and "<emulatorpin cpuset='0'/>" in made['xml']
        assert "<memory mode='strict' nodeset='0'/>" in made['xml']
        assert run_module(slot_vm, args, capsys=capsys)['changed'] is False
    finally:
        removed = run_module(slot_vm, dict(uri=slot['uri'], slot_id=name, state='absent',
                                           lease_file=network.lease_file), capsys=capsys)
        assert removed['actions'] == ['undefine']


def test_libvirt_takes_the_guest_agent_channel_and_keeps_a_domain_defined_without_it(slot, network, guest, capsys):
    """The qemu-guest-agent's virtio-serial channel is defined (libvirt adds the controller
    and the socket); a domain defined before the channel existed is left as it is."""
    import libvirt

    name = 'vmtest-s7'
    args = vm_args(slot, network, guest, slot_id=name, state='present')
    conn = libvirt.open(slot['uri'])
    try:
        made = run_module(slot_vm, args, capsys=capsys)
        assert made['changed'] and made['actions'][-1] == 'define', made
        assert "<target type='virtio' name='org.qemu.guest_agent.0'/>" in made['xml']
        assert "<controller type='virtio-serial'" in made['xml']
        assert run_module(slot_vm, args, capsys=capsys)['changed'] is False
        # As a domain defined by the collection before the channel: not redefined for it.
        dom = conn.lookupByName('gpuaas-' + name)
        old = made['xml'].split("<channel type='unix'>", 1)
        old = old[0] + old[1].split('</channel>', 1)[1]
        conn.defineXML(old)
        assert 'org.qemu.guest_agent.0' not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        again = run_module(slot_vm, args, capsys=capsys)
        assert again['changed'] is False and again['differences'] == [], again
        assert 'org.qemu.guest_agent.0' not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
        removed = run_module(slot_vm, dict(uri=slot['uri'], slot_id=name, state='absent',
                                           lease_file=network.lease_file), capsys=capsys)
        assert removed['actions'] == ['undefine']


def test_a_slot_vm_under_ovmf_maps_a_128_gib_bar_behind_its_root_port(slot, network, guest, capsys):
    """Issue 17, item 6: the lab's stand-in (pci-testdev, a 128 GiB 64-bit BAR) is assigned in the guest."""
    name = 'vmtest-s7'
    console_log = os.path.join(slot['console_dir'], name + '.log')
    args = vm_args(slot, network, guest, slot_id=name, lab_standin_bar_gib=128, wait_for_lease=False)
    try:
        started = time.monotonic()
        made = run_module(slot_vm, args, capsys=capsys)
        assert made['changed'] and made['actions'][-1] == 'start', made
        # 128 GiB + the VM's own devices need a 256 GiB window: 41 bits (2 TiB), with 1 GiB pages.
        assert made['firmware'] == 'uefi' and made['phys_bits'] == 41
        assert 'pci-testdev,bus=gpuaas-standin-port,membar=128G' in made['xml']
        line, deadline = None, time.monotonic() + 240
        while line is None and time.monotonic() < deadline:
            with open(console_log, 'rb') as handle:
                text = handle.read().decode('utf-8', 'replace')
            line = next((item for item in text.splitlines() if 'gpuaas-guest: firmware=' in item), None)
            time.sleep(0.2)
        assert line is not None, 'the guest reported no BARs within 240 s:\n' + text[-3000:]
        with capsys.disabled():
            print('\nOVMF slot VM with a 128 GiB BAR: start to the BAR report %.1f s' % (time.monotonic() - started))
        assert 'firmware=uefi phys_bits=41 bar_max_mib=131072' in line, line
        # pci-testdev is 1b36:0005; its BAR 2 sits in the top eighth of the guest's 2 TiB.
        standin = [item for item in text.splitlines() if 'id=0x1b36:0x0005 bar=2' in item]
        assert standin and 'size_mib=131072' in standin[0] \
            and int(standin[0].split('start=')[1].split()[0], 16) >= 7 << 38, standin
        assert run_module(slot_vm, args, capsys=capsys)['changed'] is False
        # Without the stand-in it is another definition: never on by default.
        other = run_module(slot_vm, dict(args, lab_standin_bar_gib=None), capsys=capsys)
        assert other['failed'] and 'qemu_args: ' in other['msg'], other
    finally:
        removed = run_module(slot_vm, dict(uri=slot['uri'], slot_id=name, state='absent',
                                           lease_file=network.lease_file), capsys=capsys)
        assert removed['actions'] == ['destroy', 'undefine']
    assert not os.path.exists(os.path.join(slot['nvram_dir'], name + '_VARS.fd'))


def test_firmware_bios_is_seabios_without_a_variable_store(slot, network, guest, capsys):
    name = 'vmtest-s6'
    args = vm_args(slot, network, guest, slot_id=name, state='present', firmware='bios')
    try:
        made = run_module(slot_vm, args, capsys=capsys)
        assert made['changed'] and made['firmware'] == 'bios' and made['nvram'] is None, made
        assert 'firmware=' not in made['xml'] and '<nvram' not in made['xml'] and '<loader' not in made['xml']
        assert run_module(slot_vm, args, capsys=capsys)['changed'] is False
    finally:
        removed = run_module(slot_vm, dict(uri=slot['uri'], slot_id=name, state='absent',
                                           lease_file=network.lease_file), capsys=capsys)
        assert removed['actions'] == ['undefine']
