# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_vm in the lab guest: a libvirt domain with a real VFIO hostdev of a stand-in GPU.

libvirtd and virtlogd run in the guest (started by the lab's run script, see
``libvirt_lines`` in lab/kernel/kernel_lab.py). vfio_bind hands the stand-in GPU to the
guest kernel's vfio-pci behind the emulated IOMMU; slot_vm defines and starts a TCG domain
that passes it through, so QEMU in the lab really opens the device's VFIO group. The
domain boots nothing (no disk): the test is that QEMU starts with the device attached.
The slot's NIC is a tap on a Linux bridge of the guest's own.
"""

from __future__ import annotations

import os
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import slot_vm, vfio_bind
from tests.unit.module_runner import run_module

from .conftest import PCI, SHARED_GPU, SHARED_NIC, SLOTS, binding, group_of, write

libvirt = pytest.importorskip('libvirt')

URI = 'qemu:///system'
GPU, _NVME, _PF, NODE = SLOTS[0]
BRIDGE = 'labbr0'
SLOT = 'lab-s0'
NAME = 'gpuaas-' + SLOT
LIBVIRT_WAIT_S = 300


def libvirtd_log():
    try:
        with open('/var/log/libvirt/libvirtd.log') as handle:
            return handle.read()[-3000:]
    except OSError as exc:
        return str(exc)


def daemon_alive():
    try:
        with open('/run/libvirtd.pid') as handle:
            return os.path.exists('/proc/%d' % int(handle.read().strip()))
    except (OSError, ValueError):
        return False


@pytest.fixture(scope='module')
def conn():
    """A connection to the guest's libvirtd, once its QEMU capability probe is done."""
    if not os.path.exists('/usr/sbin/libvirtd'):
        pytest.skip('libvirtd is not installed on this machine (Debian package libvirt-daemon-system)')
    deadline = time.monotonic() + LIBVIRT_WAIT_S
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    while True:
        try:
            connection = libvirt.open(URI)
            break
        except libvirt.libvirtError as exc:
            if not daemon_alive():
                pytest.fail('libvirtd is not running in the lab (the run script starts it): %s\n%s'
                            % (exc, libvirtd_log()))
            if time.monotonic() > deadline:
                pytest.fail('libvirtd in the lab did not answer within %d s: %s\n%s'
                            % (LIBVIRT_WAIT_S, exc, libvirtd_log()))
            time.sleep(1)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture(scope='module')
def bridge():
    subprocess.run(['ip', 'link', 'add', BRIDGE, 'type', 'bridge'], check=True)
    subprocess.run(['ip', 'link', 'set', BRIDGE, 'up'], check=True)
    try:
        yield BRIDGE
    finally:
        subprocess.run(['ip', 'link', 'del', BRIDGE], check=True)


def defined(conn, name=NAME):
    return name in [d.name() for d in conn.listAllDomains()]


def vm(capsys, tmp_path, check_mode=False, **extra):
    args = dict(slot_id=SLOT, uri=URI, state='running', domain_type='qemu', memory_mib=64,
                cpulist='0', numa_node=NODE, gpu_address=GPU, bridge=BRIDGE,
                bridge_type='linux', wait_for_lease=False, stop_timeout=5,
                console_log_dir=str(tmp_path / 'console'), lease_file=str(tmp_path / 'leases'),
                firmware='bios', allowed_dirs=[str(tmp_path)])
    args.update(extra)
    return run_module(slot_vm, args, check_mode=check_mode, diff=True, capsys=capsys)


def bind(capsys, address, state_dir, state='present'):
    return run_module(vfio_bind, dict(address=address, state_dir=state_dir, state=state),
                      capsys=capsys)


def qemu_pid(name=NAME):
    with open('/run/libvirt/qemu/%s.pid' % name) as handle:
        return int(handle.read().strip())


def open_files(pid):
    fd_dir = '/proc/%d/fd' % pid
    found = []
    for fd in os.listdir(fd_dir):
        try:
            found.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            continue
    return found


def test_a_domain_with_a_real_vfio_hostdev_runs_and_gives_the_device_back(
        conn, bridge, capsys, tmp_path):
    state_dir = str(tmp_path / 'vfio')
    before = binding(GPU)
    group = group_of(GPU)
    bound = bind(capsys, GPU, state_dir)
    assert bound['changed'] is True and binding(GPU) == ('vfio-pci', 'vfio-pci')
    try:
        checked = vm(capsys, tmp_path, check_mode=True)
        assert checked['changed'] is True and checked['actions'][-2:] == ['define', 'start']
        assert checked['start_problems'] == [] and not defined(conn)

        started = vm(capsys, tmp_path)
        assert started.get('failed') is not True, '%s\n%s' % (started.get('msg'), libvirtd_log())
        assert started['changed'] is True and started['domain_state'] == 'running'
        assert started['hostdevs'] == [{'role': 'gpu', 'address': GPU}]
        assert conn.lookupByName(NAME).isActive()

        xml = ET.fromstring(subprocess.run(['virsh', '-c', URI, 'dumpxml', NAME], check=True,
                                           capture_output=True, text=True).stdout)
        hostdevs = xml.findall('./devices/hostdev')
        assert len(hostdevs) == 1 and hostdevs[0].get('managed') == 'no'
        address = hostdevs[0].find('./source/address').attrib
        assert (int(address['domain'], 16), int(address['bus'], 16), int(address['slot'], 16),
                int(address['function'], 16)) == (0, 0x21, 0, 0)

        pid = qemu_pid()
        assert '/dev/vfio/%s' % group in open_files(pid)
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            assert b'"host":"%s"' % GPU.encode() in handle.read()
        # While QEMU holds the group, vfio_bind refuses to take the device back.
        held = bind(capsys, GPU, state_dir, state='absent')
        assert held['failed'] is True and 'is open by pid %d' % pid in held['msg']

        again = vm(capsys, tmp_path)
        assert again['changed'] is False and again['actions'] == []

        removed = vm(capsys, tmp_path, state='absent')
        assert removed['changed'] is True and removed['actions'] == ['destroy', 'undefine']
        assert not defined(conn) and not os.path.exists('/proc/%d' % pid)
        assert vm(capsys, tmp_path, state='absent')['changed'] is False
    finally:
        if defined(conn):
            domain = conn.lookupByName(NAME)
            if domain.isActive():
                domain.destroy()
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        released = bind(capsys, GPU, state_dir, state='absent')
    assert released['changed'] is True
    assert binding(GPU) == before
    assert not os.path.exists('/dev/vfio/%s' % group)


def test_a_group_not_wholly_on_vfio_pci_is_refused_before_libvirt_defines_anything(
        conn, bridge, capsys, tmp_path):
    """VFIO takes a group whole: slot_vm checks every function before the domain exists."""
    state_dir = str(tmp_path / 'vfio')
    group = group_of(SHARED_GPU)
    common = dict(gpu_address=SHARED_GPU, numatune=False)
    # The whole group on vfio-pci, but the slot names the GPU alone.
    assert bind(capsys, SHARED_GPU, state_dir)['bindings'] == {SHARED_GPU: 'vfio-pci',
                                                               SHARED_NIC: 'vfio-pci'}
    try:
        alone = vm(capsys, tmp_path, **common)
        assert alone['failed'] is True
        assert 'shares IOMMU group %s with %s' % (group, SHARED_NIC) in alone['msg']
        assert not defined(conn)
    finally:
        assert bind(capsys, SHARED_GPU, state_dir, state='absent')['changed'] is True
    # The GPU alone on vfio-pci (bound by hand), the NIC listed but left without a driver.
    base = '%s/%s' % (PCI, SHARED_GPU)
    write(base + '/driver_override', 'vfio-pci')
    try:
        write('/sys/bus/pci/drivers_probe', SHARED_GPU)
        assert binding(SHARED_GPU)[0] == 'vfio-pci' and binding(SHARED_NIC)[0] is None
        partial = vm(capsys, tmp_path, companions=[SHARED_NIC], **common)
        assert partial['failed'] is True, partial
        assert '%s (' % SHARED_NIC in partial['msg']
        assert 'is bound to no driver, not vfio-pci' in partial['msg']
        assert not defined(conn)
    finally:
        write('/sys/bus/pci/drivers/vfio-pci/unbind', SHARED_GPU)
        write(base + '/driver_override', '\n')
    assert binding(SHARED_GPU) == binding(SHARED_NIC) == (None, '(null)')
