# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_vm's refusals: hostile or wrong input fails before libvirt is even contacted.

The URI points at a socket that does not exist, so a test that got as far as connecting
would fail with 'cannot connect' instead of the refusal it expects.
"""

from __future__ import annotations

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _libvirt
from ansible_collections.gpuaas.slice.plugins.modules import slot_vm
from tests.unit.module_runner import run_module

NO_DAEMON = 'qemu:///system?socket=/nonexistent/libvirt-sock'


def args(tmp_path, **extra):
    base = dict(uri=NO_DAEMON, slot_id='gpu-node-01-s3', memory_mib=1024, cpulist='0-1',
                numatune=False, console_log_dir=str(tmp_path / 'console'), nvram_dir=str(tmp_path / 'nvram'),
                lease_file=str(tmp_path / 'leases'), allowed_dirs=[str(tmp_path)])
    base.update(extra)
    return base


needs_binding = pytest.mark.skipif(not _libvirt.HAS_LIBVIRT, reason='needs libvirt-python')


@needs_binding
@pytest.mark.parametrize('extra,message', [
    ({'slot_id': '../../etc/x-s0'}, 'slot id'),
    ({'slot_id': 'tenant; reboot-s0'}, 'slot id'),
    ({'slot_id': 'x-s0\n'}, 'not a valid slot id'),
    ({'slot_id': "x'><name>evil</name>-s0"}, 'slot id'),
    ({'kernel': '/k', 'kernel_cmdline': 'console=ttyS0\n<evil/>'}, 'control characters'),
    ({'bridge': 'br0;reboot'}, 'not a valid network interface name'),
    ({'bridge': 'a-very-long-bridge-name'}, 'not a valid network interface name'),
    ({'disk': '/var/lib/gpuaas/../../../etc/shadow'}, "without '..'"),
    ({'seed': '/var/lib/gpuaas/seeds/../../../root/x.iso'}, "without '..'"),
    ({'gpu_address': '0000:18:00.0', 'nvme_address': '0000:18:00.0'}, 'listed twice'),
    ({'gpu_address': '18:00.0'}, 'not a full PCI address'),
    ({'gpu_address': "0000:18:00.0'/>"}, 'not a full PCI address'),
    ({'companions': ['0000:18:00.1']}, 'companions were given without gpu_address'),
    ({'cpulist': '0-1; reboot'}, 'not a valid CPU list'),
    ({'vcpus': 3}, 'more than the 2 CPUs'),
    ({'host_cpulist': '1'}, "host_cpulist '1' shares CPUs 1 with the slot cpulist 0-1"),
    ({'host_cpulist': '2;reboot'}, 'not a valid CPU list'),
    ({'machine': 'q35 -device evil'}, 'not a valid machine type'),
    ({'memory_mib': 1}, 'at least 64'),
    ({'initrd': '/i'}, 'missing parameter(s) required by \'initrd\': kernel'),
    ({'memory_mib': None}, 'memory_mib'),
    ({'firmware': 'coreboot'}, "value of firmware must be one of: uefi, bios, got: coreboot"),
    ({'lab_standin_bar_gib': 100}, 'lab_standin_bar_gib must be a power of two from 1 to 1024 (GiB), not 100'),
    ({'lab_standin_bar_gib': 2048}, 'lab_standin_bar_gib must be a power of two'),
    ({'lab_standin_bar_gib': 128, 'machine': 'pc'}, 'lab_standin_bar_gib needs a q35 machine'),
    ({'bar_mib': -1}, 'bar_mib must be a whole number from 0 to 16777216, not -1'),
])
def test_refused_before_libvirt(tmp_path, capsys, extra, message):
    params = args(tmp_path, **extra)
    params = {k: v for k, v in params.items() if v is not None}
    result = run_module(slot_vm, params, capsys=capsys)
    assert result.get('failed') is True, result
    assert message in result['msg'], result['msg']
    assert 'cannot connect' not in result['msg']
    assert not (tmp_path / 'console').exists()


BIG = 2 ** 64


@needs_binding
@pytest.mark.parametrize('extra,message', [
    # Numbers: finite and ranged before anything else happens (issue 16, item 2).
    ({'lease_timeout': 0}, 'lease_timeout must be a finite number from 0.001 to 3600'),
    ({'lease_timeout': -5}, 'lease_timeout must be'),
    ({'lease_timeout': BIG}, 'lease_timeout must be'),
    ({'lease_timeout': 'nan'}, 'lease_timeout'),
    ({'stop_timeout': BIG}, 'stop_timeout must be'),
    ({'stop_timeout': 0.5}, 'stop_timeout'),
    ({'memory_mib': BIG}, 'memory_mib must be a whole number of MiB, at least 64 and at most'),
    ({'memory_mib': -1}, 'memory_mib must be'),
    ({'vcpus': BIG}, 'vcpus must be a positive whole number, at most 256'),
    ({'vcpus': 0}, 'vcpus must be a positive whole number'),
    ({'hugepages': True, 'hugepage_size_kb': BIG}, 'hugepage_size_kb needs hugepages=true and a size in KiB'),
    ({'hugepages': True, 'hugepage_size_kb': 0}, 'hugepage_size_kb needs'),
    ({'numa_node': BIG, 'numatune': True}, 'numa_node must be a whole number from 0 to 1023'),
    # Paths: only inside allowed_dirs, symlinks resolved (issue 16, item 9).
    ({'disk': '/etc/shadow'}, "disk '/etc/shadow' is outside the allowed directories"),
    ({'seed': '/root/seed.iso'}, "seed '/root/seed.iso' is outside the allowed directories"),
    ({'kernel': '/boot/vmlinuz'}, "kernel '/boot/vmlinuz' is outside the allowed directories"),
    ({'kernel': '{tmp}/k', 'initrd': '/boot/initrd.img'}, "initrd '/boot/initrd.img' is outside"),
    ({'console_log_dir': '/var/tmp/console'}, "console_log_dir '/var/tmp/console' is outside"),
    ({'nvram_dir': '/var/lib/libvirt/qemu/nvram'}, "nvram_dir '/var/lib/libvirt/qemu/nvram' is outside"),
    ({'disk': '{tmp}/escape/shadow'}, "it resolves to '/etc/shadow'"),
    ({'allowed_dirs': []}, 'allowed_dirs is empty'),
    ({'allowed_dirs': ['relative/dir']}, 'allowed_dirs'),
])
def test_numbers_and_paths_refused_before_anything_changes(tmp_path, capsys, extra, message):
    (tmp_path / 'escape').symlink_to('/etc')
    params = args(tmp_path, **dict((key, value.format(tmp=tmp_path) if isinstance(value, str) else value)
                                   for key, value in extra.items()))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_module(slot_vm, params, capsys=capsys)
    assert result.get('failed') is True, result
    assert message in result['msg'], result['msg']
    assert 'cannot connect' not in result['msg']
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@needs_binding
def test_a_bios_domain_has_no_nvram_so_its_directory_is_not_checked(tmp_path, capsys):
    # The kernel lab's tests boot SeaBIOS with the default nvram_dir outside their allowed directories.
    result = run_module(slot_vm, args(tmp_path, firmware='bios', nvram_dir='/var/lib/libvirt/qemu/nvram'), capsys=capsys)
    assert result['failed'] and 'cannot connect to libvirt at %s' % NO_DAEMON in result['msg'], result['msg']


@needs_binding
def test_unreachable_daemon_is_reported(tmp_path, capsys):
    result = run_module(slot_vm, args(tmp_path), capsys=capsys)
    assert result['failed'] and 'cannot connect to libvirt at %s' % NO_DAEMON in result['msg']


def test_missing_binding(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_libvirt, 'HAS_LIBVIRT', False)
    monkeypatch.setattr(_libvirt, 'LIBVIRT_IMPORT_ERROR', 'ImportError: No module named libvirt')
    result = run_module(slot_vm, args(tmp_path), capsys=capsys)
    assert result['failed'] and 'libvirt-python' in result['msg']
    assert 'Failed to import the required Python library' in result['msg']


def test_a_guest_the_host_cpu_cannot_address_is_refused_before_libvirt(tmp_path, capsys, monkeypatch):
    """memory_mib + bar_mib (+ a lab stand-in) need more physical address bits than /proc/cpuinfo has."""
    from ansible_collections.gpuaas.slice.plugins.module_utils import _slot_vm
    (tmp_path / 'cpuinfo').write_text('address sizes\t: 40 bits physical, 48 bits virtual\n')
    monkeypatch.setattr(_slot_vm, 'PROC_ROOT', str(tmp_path))
    result = run_module(slot_vm, args(tmp_path, bar_mib=128 * 1024 + 34, gpu_address='0000:18:00.0'), capsys=capsys)
    assert result['failed'] and result['msg'] == (
        "gpuaas-gpu-node-01-s3 cannot be defined: memory_mib 1024 plus the slot's 64-bit BARs (bar_mib 131106 and "
        "1024 MiB for the VM's own devices, a 262144 MiB window) needs 41 physical address bits in the guest "
        '(OVMF keeps the top eighth of the address space for the 64-bit PCI window, RAM and the 4 GiB below the '
        '32-bit hole go under it), but the host CPU has 40: ask for less memory, or use a host whose CPU addresses more'), result['msg']
    # Without passthrough the devices' BARs are not in the VM; a lab stand-in's always is.
    refused = run_module(slot_vm, args(tmp_path, bar_mib=128 * 1024 + 34, passthrough=False,
                                       lab_standin_bar_gib=128), capsys=capsys)
    assert 'bar_mib 131072' in refused['msg'] and 'needs 41' in refused['msg']
    fits = run_module(slot_vm, args(tmp_path, bar_mib=128 * 1024 + 34, passthrough=False,
                                    lab_standin_bar_gib=64), capsys=capsys)
    assert 'cannot connect to libvirt' in fits['msg'], fits['msg']
