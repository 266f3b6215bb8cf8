# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nvme_wipe: 'zero' on real files, the command policies with a fake nvme/blkdiscard."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import nvme_wipe, vfio_bind
from tests.sysfs import kernel_fixture
from tests.sysfs.fake_tools import HANG
from tests.unit.module_runner import run_module

kernel = kernel_fixture.kernel  # the fixture

FREE_NVME = '0000:02:00.0'     # workstation: nvme1 -> nvme1n1, not used by the host
BOOT_NVME = '0000:06:00.0'     # workstation: nvme0 -> nvme0n1, / and /boot/efi
SIZE = 3 * 1024 * 1024 + 3 * 4096
INVALID_FIELD = ('NVMe status: INVALID_FIELD: A reserved coded value or an unsupported value in '
                 'a defined field(0x4002)')


@pytest.fixture
def ws(kernel):
    host = kernel('workstation')
    os.makedirs(host.dev, exist_ok=True)
    for name in ('nvme1n1', 'nvme0n1'):
        with open(os.path.join(host.dev, name), 'wb') as handle:
            handle.write(os.urandom(SIZE))
    return host


def node(host, name='nvme1n1'):
    return os.path.join(host.dev, name)


def content(path):
    with open(path, 'rb') as handle:
        return handle.read()


def run(host, capsys, target, policy='zero', check_mode=False, **extra):
    args = dict(host.args, target=target, policy=policy, dev_root=host.dev,
                allowed_file_dirs=[host.dev], chunk_size=1024 * 1024, verify_samples=16)
    args.update(extra)
    return run_module(nvme_wipe, args, check_mode=check_mode, diff=True, capsys=capsys)


def limited(seconds, *argv):
    """An argv as the runner runs it: under coreutils timeout, so a hung tool cannot hang the module."""
    return ['/usr/sbin/timeout', '--kill-after=5', '%ds' % seconds] + list(argv)


def fill(path, byte):
    size = os.path.getsize(path)
    with open(path, 'r+b') as handle:
        handle.write(bytes([byte]) * size)


# -- zero --------------------------------------------------------------------------------------


def test_zero_a_file_check_mode_first(ws, capsys, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    image = images / 'slot0.img'
    image.write_bytes(os.urandom(SIZE))
    data = image.read_bytes()
    checked = run(ws, capsys, str(image), allowed_file_dirs=[str(images)], check_mode=True)
    assert checked['changed'] is True and checked['commands'] == []
    assert image.read_bytes() == data

    done = run(ws, capsys, str(image), allowed_file_dirs=[str(images)])
    assert done['changed'] is True
    assert image.read_bytes() == bytes(SIZE)
    report = done['targets'][0]
    assert report['bytes_written'] == SIZE and report['size_bytes'] == SIZE
    assert [p['percent'] for p in report['progress']][-1] == 100
    assert len(report['progress']) >= 4                  # 1 MiB chunks of a 3 MiB file
    assert report['verification']['passed'] is True
    assert report['verification']['zero'] == report['verification']['samples'] == 16
    assert done['duration_s'] >= report['duration_s'] >= 0
    assert done['diff'] == {'before': {str(image): '%d bytes, not wiped' % SIZE},
                            'after': {str(image): '%d bytes, wiped (zero), verified' % SIZE}}


def test_zero_every_namespace_of_a_controller(ws, capsys):
    done = run(ws, capsys, FREE_NVME)
    assert done['controller'] == FREE_NVME
    assert [t['device'] for t in done['targets']] == ['nvme1n1']
    assert content(node(ws)) == bytes(SIZE)


# -- nvme-format ---------------------------------------------------------------------------


def test_nvme_format_falls_back_from_user_data_erase_to_a_plain_format(ws, capsys):
    def nvme(argv):
        if '--ses=1' in argv:
            return 1, '', INVALID_FIELD
        fill(argv[2], 0x00)
        return 0, 'Success formatting namespace:1\n', ''
    ws.tools.handlers['nvme'] = nvme
    path = node(ws)
    done = run(ws, capsys, FREE_NVME, policy='nvme-format')
    assert done['changed'] is True
    assert ws.tools.calls == [
        limited(3660, '/usr/sbin/nvme', 'format', path, '--ses=1', '--force', '--timeout=3600000'),
        limited(3660, '/usr/sbin/nvme', 'format', path, '--ses=0', '--force', '--timeout=3600000'),
    ]
    assert done['targets'][0]['secure_erase_setting'] == 0
    assert 'does not support secure erase setting 1' in str(done['warnings'])
    assert done['targets'][0]['verification']['passed'] is True


def test_nvme_format_check_mode_shows_the_first_command(ws, capsys):
    before = ws.snapshot()
    checked = run(ws, capsys, FREE_NVME, policy='nvme-format', check_mode=True)
    assert checked['commands'] == [['/usr/sbin/nvme', 'format', node(ws), '--ses=1', '--force',
                                    '--timeout=3600000']]
    assert ws.tools.calls == []
    ws.assert_unchanged(before)


def test_a_crypto_erase_that_leaves_cipher_text_passes(ws, capsys):
    def nvme(argv):
        with open(argv[2], 'r+b') as handle:
            handle.write(os.urandom(SIZE))
        return 0, '', ''
    ws.tools.handlers['nvme'] = nvme
    done = run(ws, capsys, FREE_NVME, policy='nvme-format', format_ses=[2])
    assert done['targets'][0]['secure_erase_setting'] == 2
    assert done['targets'][0]['verification']['changed'] == 16


def test_a_format_that_did_not_erase_fails_the_verification(ws, capsys):
    ws.tools.handlers['nvme'] = lambda argv: (0, 'Success formatting namespace:1', '')
    result = run(ws, capsys, FREE_NVME, policy='nvme-format')
    assert result['failed'] is True
    assert 'verification of %s failed: 16 of 16 sampled blocks still hold the data' % node(ws) \
        in result['msg']
    assert result['verification']['passed'] is False


def test_a_format_error_that_is_not_invalid_field_does_not_fall_back(ws, capsys):
    ws.tools.handlers['nvme'] = lambda argv: (1, '', 'NVMe status: ACCESS_DENIED(0x4286)')
    result = run(ws, capsys, FREE_NVME, policy='nvme-format')
    assert result['failed'] and 'ACCESS_DENIED' in result['msg']
    assert len(ws.tools.calls) == 1


def test_no_nvme_cli(kernel, capsys):
    host = kernel('workstation', tools={'missing': ['nvme']})
    os.makedirs(host.dev, exist_ok=True)
    with open(node(host), 'wb') as handle:
        handle.write(os.urandom(8192))
    result = run(host, capsys, FREE_NVME, policy='nvme-format')
    assert result['failed'] and "the 'nvme' command (nvme-cli) is not installed" in result['msg']


# -- blkdiscard ------------------------------------------------------------------------------


def test_blkdiscard_without_force(ws, capsys):
    def blkdiscard(argv):
        fill(argv[-1], 0x00)
        return 0, '', ''
    ws.tools.handlers['blkdiscard'] = blkdiscard
    done = run(ws, capsys, FREE_NVME, policy='blkdiscard')
    assert ws.tools.calls == [limited(3600, '/usr/sbin/blkdiscard', node(ws))]
    assert done['targets'][0]['verification']['zero'] == 16


def test_blkdiscard_unsupported(ws, capsys):
    ws.tools.handlers['blkdiscard'] = lambda argv: (
        1, '', 'blkdiscard: /dev/nvme1n1: BLKDISCARD ioctl failed: Operation not supported')
    result = run(ws, capsys, FREE_NVME, policy='blkdiscard')
    assert result['failed'] and 'use the zero or nvme-format policy' in result['msg']


# -- refusals: the data and the tree stay as they were -----------------------------------------


def test_the_boot_disk_is_refused(ws, capsys):
    before = ws.snapshot()
    result = run(ws, capsys, BOOT_NVME)
    assert result['failed'] is True
    assert "is the host's: nvme0n1p1 is mounted on /boot/efi" in result['msg']
    ws.assert_unchanged(before)


@pytest.mark.parametrize('target, message', [
    ('/dev/../etc/passwd', "contains '..'"),
    ('{dev}/../nvme1n1', "contains '..'"),
    ('{dev}/nvme1n1; rm -rf /', 'neither a full PCI address nor an absolute path'),
    ('{dev}/nvme1n1 $(reboot)', 'neither a full PCI address nor an absolute path'),
    ('{dev}/nvme1n1`id`', 'neither a full PCI address nor an absolute path'),
    ('nvme1n1', 'neither a full PCI address nor an absolute path'),
    ('{dev}//nvme1n1', 'not a normalized path'),
    ('{dev}/nvme9n1', 'does not exist'),
    ('/etc/hostname', 'not a block device'),
    ('0000:7f:00.0', 'no PCI function 0000:7f:00.0'),
    ('0000:01:00.0', 'is not an NVMe controller'),
    ('0000:02:00', 'neither a full PCI address nor an absolute path'),
])
def test_hostile_targets_change_nothing(ws, capsys, target, message):
    before = ws.snapshot()
    result = run(ws, capsys, target.format(dev=ws.dev))
    assert result['failed'] is True
    assert message in result['msg']
    ws.assert_unchanged(before)


def test_a_file_outside_the_allowed_directories_is_refused(ws, capsys, tmp_path):
    other = tmp_path / 'elsewhere.img'
    other.write_bytes(b'data' * 1024)
    result = run(ws, capsys, str(other))
    assert result['failed'] and 'nor a regular file under allowed_file_dirs' in result['msg']
    assert other.read_bytes() == b'data' * 1024


def test_a_symlink_out_of_an_allowed_directory_is_refused(ws, capsys, tmp_path):
    secret = tmp_path / 'secret'
    secret.write_bytes(b'keep me')
    os.symlink(str(secret), os.path.join(ws.dev, 'escape'))
    result = run(ws, capsys, os.path.join(ws.dev, 'escape'))
    assert result['failed'] is True
    assert secret.read_bytes() == b'keep me'


def test_a_file_a_process_holds_open_is_refused(ws, capsys):
    fd_dir = os.path.join(ws.proc, '2024', 'fd')
    os.makedirs(fd_dir)
    with open(os.path.join(ws.proc, '2024', 'comm'), 'w') as handle:
        handle.write('qemu-system-x86\n')
    os.symlink(node(ws), os.path.join(fd_dir, '9'))
    before = ws.snapshot()
    result = run(ws, capsys, FREE_NVME)
    assert result['failed'] is True
    assert '%s is open by pid 2024 (qemu-system-x86)' % node(ws) in result['msg']
    ws.assert_unchanged(before)


def test_nvme_format_of_something_that_is_not_a_namespace(ws, capsys, tmp_path):
    image = tmp_path / 'disk.img'
    image.write_bytes(bytes(8192))
    result = run(ws, capsys, str(image), policy='nvme-format', allowed_file_dirs=[str(tmp_path)])
    assert result['failed'] and 'is not an NVMe namespace' in result['msg']


def test_a_controller_on_vfio_pci_must_be_released_first(ws, capsys):
    run_module(vfio_bind, dict(ws.args, address=FREE_NVME, dev_root=ws.dev, state_dir=ws.state),
               capsys=capsys)
    result = run(ws, capsys, FREE_NVME)
    assert result['failed'] and 'release it first (vfio_bind state=absent)' in result['msg']


def test_option_rules(ws, capsys):
    result = run(ws, capsys, FREE_NVME, chunk_size=1000)
    assert result['failed'] and 'multiple of 4096' in result['msg']
    result = run(ws, capsys, FREE_NVME, policy='nvme-format', format_ses=[3])
    assert result['failed'] and 'format_ses' in result['msg']
    result = run(ws, capsys, FREE_NVME, policy='shred')
    assert result['failed'] and 'policy' in result['msg']


# -- hostile input (issue 16): a clean refusal naming the option, not a byte wiped -------------


def refused(host, capsys, target, *expected, **extra):
    data = content(node(host))
    before = host.snapshot()
    result = run(host, capsys, target, **extra)
    assert result.get('failed') is True, result
    for text in expected:
        assert text in result['msg'], result['msg']
    assert content(node(host)) == data
    host.assert_unchanged(before)
    assert host.tools.calls == []
    return result


@pytest.mark.parametrize('make', [
    shutil.rmtree,
    lambda proc: (shutil.rmtree(proc), open(proc, 'w').close()),
    lambda proc: os.unlink(os.path.join(proc, 'mounts')),
    lambda proc: (os.unlink(os.path.join(proc, 'mounts')), os.mkdir(os.path.join(proc, 'mounts'))),
])
@pytest.mark.parametrize('policy', ['zero', 'nvme-format'])
def test_a_proc_root_that_cannot_be_read_never_means_nothing_is_mounted(ws, capsys, make, policy):
    """Fail closed: the boot NVMe is not offered, nor any other, when /proc cannot be read."""
    make(ws.proc)
    for target in (BOOT_NVME, FREE_NVME, node(ws)):
        refused(ws, capsys, target, 'cannot read', 'proc_root', policy=policy)


@pytest.mark.parametrize('option, value, expected', [
    ('chunk_size', 0, 'chunk_size (a multiple of 4096) must be a whole number from 4096 to 268435456'),
    ('chunk_size', -4096, 'chunk_size (a multiple of 4096) must be a whole number'),
    ('chunk_size', 2 ** 63, 'chunk_size (a multiple of 4096) must be a whole number'),
    ('chunk_size', 10 ** 30, 'chunk_size (a multiple of 4096) must be a whole number'),
    ('chunk_size', 4097, 'chunk_size must be a multiple of 4096'),
    ('verify_samples', 0, 'verify_samples must be a whole number from 1 to 4096'),
    ('verify_samples', 10 ** 9, 'verify_samples must be a whole number from 1 to 4096'),
    ('format_timeout', 0, 'format_timeout must be a whole number from 1 to 82800'),
    ('format_timeout', -1, 'format_timeout must be a whole number'),
    ('format_timeout', 2 ** 40, 'format_timeout must be a whole number'),
    ('format_ses', [], 'format_ses must name at least one'),
    ('allowed_file_dirs', ['relative'], "allowed_file_dirs[0] 'relative' must be an absolute path"),
    ('allowed_file_dirs', ['/tmp', ''], 'allowed_file_dirs[1] must be a non-empty path'),
    ('dev_root', 'dev', "dev_root 'dev' must be an absolute path"),
])
def test_an_option_out_of_range_is_refused_before_anything_is_read(ws, capsys, option, value, expected):
    refused(ws, capsys, FREE_NVME, expected, **{option: value})


@pytest.mark.parametrize('target', ['/dev/nvme1n1\n', '/dev/../etc/passwd', 'nvme1n1',
                                    '/dev/nvme1n1 ; reboot', '0000:02:00.0\n', '/' + 'a' * 5000])
def test_a_target_that_is_neither_an_address_nor_a_clean_path_is_refused(ws, capsys, target):
    refused(ws, capsys, target, 'target ')


@pytest.mark.parametrize('option', ['target', 'allowed_file_dirs'])
def test_a_nul_is_refused_by_name(ws, option):
    """Below Ansible (whose syslog line refuses a NUL first): the engine refuses it by name."""
    from ansible_collections.gpuaas.slice.plugins.module_utils._wipe import NvmeWipe
    from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError
    from tests.sysfs.kernel_fixture import StubModule
    options = dict(ws.args, target=node(ws), policy='zero', allowed_file_dirs=[ws.dev])
    options[option] = node(ws) + '\x00x' if option == 'target' else [ws.dev + '\x00x']
    data = content(node(ws))
    with pytest.raises(GpuaasError) as info:
        NvmeWipe(StubModule(ws.tools), **options).run()
    assert str(info.value).startswith(option)
    assert content(node(ws)) == data


@pytest.mark.parametrize('format_timeout', [3600, 82800])
@pytest.mark.parametrize('policy, tool, grace', [('nvme-format', 'nvme', 60), ('blkdiscard', 'blkdiscard', 0)])
def test_a_tool_that_hangs_is_ended_by_its_time_limit(ws, capsys, policy, tool, grace, format_timeout):
    ws.tools.handlers[tool] = lambda argv: HANG
    seconds = format_timeout + grace
    result = run(ws, capsys, FREE_NVME, policy=policy, format_timeout=format_timeout)
    assert result['failed'] is True
    assert 'did not finish within %d s' % seconds in result['msg']
    assert result['failed_step'] == 'wipe %s with %s and verify it' % (node(ws), policy)
    assert ws.tools.calls[0][:3] == ['/usr/sbin/timeout', '--kill-after=5', '%ds' % seconds]
