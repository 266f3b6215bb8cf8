# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_image with the real qemu-img on small images (and a loop device where one can be made)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _image
from ansible_collections.gpuaas.slice.plugins.modules import slot_image
from tests.unit.module_runner import run_module

pytestmark = pytest.mark.skipif(not shutil.which('qemu-img'), reason='needs qemu-img (qemu-utils)')

MAGIC = b'GPUAAS-TEST-DISK:unit'
MIB = 1 << 20


def sha256(path):
    with open(path, 'rb') as handle:
        return 'sha256:' + hashlib.sha256(handle.read()).hexdigest()


def qemu_img(*argv):
    return subprocess.run(['qemu-img'] + list(argv), check=True, capture_output=True, text=True).stdout


def info(path, fmt):
    return json.loads(qemu_img('info', '-f', fmt, '--output=json', path))


@pytest.fixture
def images(tmp_path):
    """A source directory with a 4 MiB raw image (magic at offset 0) and its qcow2 copy."""
    src = tmp_path / 'images'
    src.mkdir()
    raw = src / 'base.raw'
    with open(raw, 'wb') as handle:
        handle.write(MAGIC)
        handle.seek(3 * MIB)
        handle.write(b'tail')
        handle.truncate(4 * MIB)
    qcow2 = src / 'base.qcow2'
    qemu_img('convert', '-f', 'raw', '-O', 'qcow2', str(raw), str(qcow2))
    return src


def args(tmp_path, images, **extra):
    base = dict(slot_id='ws-01-s0', source=str(images / 'base.qcow2'),
                checksum=sha256(images / 'base.qcow2'), source_dirs=[str(images)],
                image_dir=str(tmp_path / 'disks'), size='16M')
    base.update(extra)
    return base


def device_args(tmp_path, images, **extra):
    base = args(tmp_path, images, state_dir=str(tmp_path / 'state'), **extra)
    del base['image_dir']
    return base


def head(path, length=len(MAGIC)):
    with open(path, 'rb') as handle:
        return handle.read(length)


def test_convert_resize_and_idempotence(tmp_path, images, capsys):
    check = run_module(slot_image, args(tmp_path, images), check_mode=True, diff=True, capsys=capsys)
    assert check['changed'] is True, check
    assert check['actions'] == ['convert', 'resize', 'write marker']
    assert not os.path.exists(tmp_path / 'disks')

    progress = tmp_path / 'state' / 'progress.json'   # progress_file lies in state_dir
    first = run_module(slot_image, args(tmp_path, images, progress_file=str(progress), state_dir=str(progress.parent)),
                       diff=True, capsys=capsys)
    assert first['changed'] is True, first
    target = first['target']
    assert target == str(tmp_path / 'disks' / 'ws-01-s0.raw')
    assert info(target, 'raw')['virtual-size'] == 16 * MIB == first['virtual_size']
    assert head(target) == MAGIC
    assert first['convert']['progress'][-1][0] == 100.0
    assert json.loads(progress.read_text())['percent'] == 100.0
    marker = json.loads(open(first['marker']).read())
    assert marker['source_checksum'] == sha256(images / 'base.qcow2')
    assert marker['size'] == 16 * MIB and marker['target_format'] == 'raw'
    assert first['diff']['before'] == {} and first['diff']['after']['virtual_size'] == 16 * MIB
    assert [n for n in os.listdir(tmp_path / 'disks') if n.startswith('.')] == []

    # The guest writes to its disk; a re-run must not read the source or touch the target.
    with open(target, 'r+b') as handle:
        handle.seek(MIB)
        handle.write(b'tenant data')
    os.rename(images / 'base.qcow2', images / 'moved.qcow2')
    with open(images / 'base.qcow2', 'wb') as handle:
        handle.write(b'not the image any more')
    again = run_module(slot_image, args(tmp_path, images, checksum=marker['source_checksum']),
                       diff=True, capsys=capsys)
    assert again['changed'] is False and again['actions'] == [], again
    with open(target, 'rb') as handle:
        handle.seek(MIB)
        assert handle.read(11) == b'tenant data'


def test_other_image_or_size_converts_again(tmp_path, images, capsys):
    run_module(slot_image, args(tmp_path, images), capsys=capsys)
    bigger = run_module(slot_image, args(tmp_path, images, size='32M'), capsys=capsys)
    assert bigger['changed'] is True and bigger['virtual_size'] == 32 * MIB
    raw = run_module(slot_image, args(tmp_path, images, source=str(images / 'base.raw'),
                                      source_format='raw', checksum=sha256(images / 'base.raw')),
                     capsys=capsys)
    assert raw['changed'] is True and head(raw['target']) == MAGIC
    forced = run_module(slot_image, args(tmp_path, images, source=str(images / 'base.raw'),
                                         source_format='raw', checksum=sha256(images / 'base.raw'),
                                         force=True), capsys=capsys)
    assert forced['changed'] is True


def test_qcow2_target_without_size(tmp_path, images, capsys):
    result = run_module(slot_image, args(tmp_path, images, format='qcow2', size=None), capsys=capsys)
    assert result['changed'] is True, result
    assert result['actions'] == ['convert', 'write marker']
    assert result['target'].endswith('ws-01-s0.qcow2')
    assert info(result['target'], 'qcow2')['virtual-size'] == 4 * MIB
    assert run_module(slot_image, args(tmp_path, images, format='qcow2', size=None),
                      capsys=capsys)['changed'] is False


def test_absent_removes_file_and_marker(tmp_path, images, capsys):
    made = run_module(slot_image, args(tmp_path, images), capsys=capsys)
    absent = dict(slot_id='ws-01-s0', image_dir=str(tmp_path / 'disks'), state='absent')
    check = run_module(slot_image, absent, check_mode=True, capsys=capsys)
    assert check['actions'] == ['remove image', 'remove marker'] and os.path.exists(made['target'])
    gone = run_module(slot_image, absent, capsys=capsys)
    assert gone['changed'] is True
    assert os.listdir(tmp_path / 'disks') == []
    assert run_module(slot_image, absent, capsys=capsys)['changed'] is False


def nothing_created(tmp_path):
    return not os.path.exists(tmp_path / 'disks') or os.listdir(tmp_path / 'disks') == []


def test_checksum_mismatch_refused_before_anything_is_created(tmp_path, images, capsys):
    wrong = 'sha256:' + '0' * 64
    for check_mode in (True, False):
        result = run_module(slot_image, args(tmp_path, images, checksum=wrong), check_mode=check_mode,
                            capsys=capsys)
        assert result['failed'] and 'does not match its checksum' in result['msg'], result
        assert nothing_created(tmp_path)


def write_in_place(source):
    with open(source, 'r+b') as handle:
        handle.seek(2 * MIB)
        handle.write(b'swapped after the checksum')


def replace_by_another(source):
    shutil.copy(source, source + '.new')
    os.rename(source + '.new', source)


@pytest.mark.parametrize('change', [write_in_place, replace_by_another])
@pytest.mark.parametrize('device', [False, True])
def test_a_source_changed_after_its_checksum_leaves_no_marker(tmp_path, images, capsys, monkeypatch, request,
                                                              change, device):
    """The checksum is verified once, before the plan; the conversion verifies the source is still that file."""
    source = str(images / 'base.raw')
    extra = dict(source=source, source_format='raw', checksum=sha256(source))
    if device:
        call = device_args(tmp_path, images, target_device=request.getfixturevalue('loop_device'), size=None, **extra)
    else:
        call = args(tmp_path, images, **extra)
    check_source_info = _image.Image.check_source_info

    def then_change(self, path, info):   # runs after the checksum matched, before the plan
        found = check_source_info(self, path, info)
        change(path)
        return found
    check = run_module(slot_image, call, check_mode=True, capsys=capsys)
    assert check['actions'][0] == 'convert' and nothing_created(tmp_path), check
    monkeypatch.setattr(_image.Image, 'check_source_info', then_change)
    result = run_module(slot_image, call, capsys=capsys)
    assert result['failed'] and 'did not take effect: convert: %s changed after its checksum was verified' % source \
        in result['msg'], result
    assert not os.path.exists(result.get('marker') or _marker(tmp_path, device)) and nothing_created(tmp_path)
    assert result['completed_steps'] == []


def _marker(tmp_path, device):
    return tmp_path / ('state/ws-01-s0.image.json' if device else 'disks/ws-01-s0.raw.gpuaas.json')


@pytest.mark.parametrize('extra,message', [
    ({'checksum': 'md5:d41d8cd98f00b204e9800998ecf8427e'}, 'is not'),
    ({'checksum': 'sha256:abc'}, 'is not'),
    ({'source': '/etc/passwd'}, 'outside the allowed directories'),
    ({'size': 'lots'}, 'is not a size'),
    ({'size': '1M'}, 'never shrunk'),
    ({'slot_id': '../x-s0'}, 'slot id'),
    ({'slot_id': 'x-s0/../../y'}, 'slot id'),
    ({'image_dir': '/var/lib/../../tmp'}, "'..'"),
    ({'image_dir': 'relative/dir'}, 'absolute'),
    ({'source_format': 'raw'}, None),  # a qcow2 read as raw is just bytes: allowed, see below
])
def test_hostile_or_wrong_input(tmp_path, images, capsys, extra, message):
    result = run_module(slot_image, args(tmp_path, images, **extra), capsys=capsys)
    if message is None:
        assert result['changed'] is True
        return
    assert result.get('failed') is True, result
    assert message in result['msg'], result['msg']
    assert nothing_created(tmp_path)


def test_dotdot_in_source_refused(tmp_path, images, capsys):
    sneaky = str(images) + '/../images/base.qcow2'
    result = run_module(slot_image, args(tmp_path, images, source=sneaky), capsys=capsys)
    assert result['failed'] and "'..' component" in result['msg']
    assert nothing_created(tmp_path)


def test_symlink_out_of_source_dirs_refused(tmp_path, images, capsys):
    outside = tmp_path / 'secret.raw'
    outside.write_bytes(b'x' * 512)
    os.symlink(str(outside), str(images / 'link.raw'))
    result = run_module(slot_image, args(tmp_path, images, source=str(images / 'link.raw'),
                                         source_format='raw', checksum=sha256(outside)), capsys=capsys)
    assert result['failed'] and 'outside the allowed directories' in result['msg']
    assert 'resolves to' in result['msg']
    assert nothing_created(tmp_path)


def test_backing_file_refused(tmp_path, images, capsys):
    """A qcow2 whose backing file is a host file would let the guest read it."""
    secret = tmp_path / 'host-secret.raw'
    secret.write_bytes(b'root:x:0:0' + b'\0' * 4086)
    evil = images / 'evil.qcow2'
    qemu_img('create', '-f', 'qcow2', '-b', str(secret), '-F', 'raw', str(evil))
    result = run_module(slot_image, args(tmp_path, images, source=str(evil), checksum=sha256(evil)),
                        capsys=capsys)
    assert result['failed'] and 'has a backing file' in result['msg'], result
    assert nothing_created(tmp_path)


def test_declared_qcow2_that_is_raw_refused(tmp_path, images, capsys):
    result = run_module(slot_image, args(tmp_path, images, source=str(images / 'base.raw'),
                                         checksum=sha256(images / 'base.raw')), capsys=capsys)
    assert result['failed'] and 'is source_format right' in result['msg'], result
    assert nothing_created(tmp_path)


def test_device_target_must_be_a_block_device(tmp_path, images, capsys):
    result = run_module(slot_image, device_args(tmp_path, images, target_device='/dev/null'),
                        capsys=capsys)
    assert result['failed'] and 'not a block device' in result['msg']
    result = run_module(slot_image, device_args(tmp_path, images, target_device='/etc/passwd'),
                        capsys=capsys)
    assert result['failed'] and 'not a device under /dev' in result['msg']
    result = run_module(slot_image, device_args(tmp_path, images, format='qcow2',
                                                target_device='/dev/loop0'), capsys=capsys)
    assert result['failed'] and 'set format=raw' in result['msg']
    result = run_module(slot_image, dict(args(tmp_path, images), target_device='/dev/loop0'),
                        capsys=capsys)
    assert result['failed'] and 'mutually exclusive' in result['msg']


@pytest.fixture
def loop_device(tmp_path):
    backing = tmp_path / 'nvme.img'
    with open(backing, 'wb') as handle:
        handle.truncate(24 * MIB)
    if not shutil.which('losetup'):
        pytest.skip('no losetup')
    made = subprocess.run(['losetup', '--find', '--show', str(backing)], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        pytest.skip('cannot make a loop device here: %s' % made.stderr.strip())
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(['losetup', '-d', device], check=False)


def test_block_device_target(tmp_path, images, capsys, loop_device):
    dev_args = device_args(tmp_path, images, target_device=loop_device)
    too_big = run_module(slot_image, dict(dev_args, size='64M'), capsys=capsys)
    assert too_big['failed'] and 'less than the' in too_big['msg']
    first = run_module(slot_image, dev_args, capsys=capsys)
    assert first['changed'] is True, first
    assert first['target_kind'] == 'device' and first['virtual_size'] == 24 * MIB
    assert first['actions'] == ['convert', 'write marker']
    assert head(loop_device) == MAGIC
    assert first['marker'] == str(tmp_path / 'state' / 'ws-01-s0.image.json')
    assert run_module(slot_image, dev_args, capsys=capsys)['changed'] is False
    gone = run_module(slot_image, dict(slot_id='ws-01-s0', target_device=loop_device, state='absent',
                                       state_dir=str(tmp_path / 'state')), capsys=capsys)
    assert gone['actions'] == ['remove marker'] and gone['warnings']
    assert head(loop_device) == MAGIC  # wiping is the release step's job


def test_progress_is_followed_while_copying(tmp_path, capsys):
    images = tmp_path / 'images'
    images.mkdir()
    with open(images / 'noise.raw', 'wb') as handle:
        handle.write(os.urandom(32 * MIB))
    result = run_module(slot_image, dict(slot_id='ws-01-s1', source=str(images / 'noise.raw'), source_format='raw',
                                         checksum=sha256(images / 'noise.raw'), source_dirs=[str(images)],
                                         image_dir=str(tmp_path / 'disks'), format='qcow2'), capsys=capsys)
    steps = [pct for pct, _seconds in result['convert']['progress']]
    assert len(steps) >= 5 and steps == sorted(steps) and steps[-1] == 100.0, steps


def test_progress_parsing():
    out = b'    (0.00/100%)\r    (10.02/100%)\r    (55.5/100%)\r    (100.00/100%)\r\n'
    assert _image.parse_progress(out) == [0.0, 10.02, 55.5, 100.0]


@pytest.mark.parametrize('value,expected', [('20G', 20 << 30), ('512M', 512 << 20), (4096, 4096), (None, None)])
def test_parse_size(value, expected):
    assert _image.parse_size(value) == expected
