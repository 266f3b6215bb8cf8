# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sampling and verification of the wipe engine."""

from __future__ import annotations

import errno
import os
import random

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _wipe
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import DeviceError


def test_samples_cover_the_first_and_last_block_aligned_and_within_the_device():
    size = 7501476528 * 512
    offsets = _wipe.sample_offsets(size, 64, random.Random(1))
    assert offsets[0] == 0
    assert offsets[-1] == (size // 4096 - 1) * 4096
    assert len(offsets) == 64 and len(set(offsets)) == 64
    assert all(o % 4096 == 0 and o + 4096 <= size for o in offsets)
    # Spread over the device: every sixteenth of it holds a sample.
    assert len(set(o * 16 // size for o in offsets)) == 16


@pytest.mark.parametrize('size, count, expected', [(100, 64, 1), (4096, 64, 1), (8192, 64, 2),
                                                   (40960, 64, 10), (40960, 3, 3)])
def test_small_devices(size, count, expected):
    assert len(_wipe.sample_offsets(size, count, random.Random(2))) == expected


def _engine(policy):
    engine = _wipe.NvmeWipe.__new__(_wipe.NvmeWipe)
    engine.policy = policy
    return engine


class _Target:
    path = '/dev/nvme1n1'


DATA = bytes(range(256)) * 16
ZERO = bytes(4096)
ONES = b'\xff' * 4096


def test_after_zero_every_sample_must_be_zero():
    counts = _engine('zero')._verify(_Target, [0, 4096], None, [ZERO, ZERO])
    assert counts == {'samples': 2, 'zero': 2, 'ones': 0, 'changed': 0, 'passed': True,
                      'failed_offsets': []}
    with pytest.raises(DeviceError) as info:
        _engine('zero')._verify(_Target, [0, 4096], None, [ZERO, ONES])
    assert '1 of 2 sampled blocks are not zero (first at byte 4096)' in str(info.value)


def test_after_a_format_old_data_must_be_gone_in_whatever_form():
    other = bytes(reversed(DATA))
    counts = _engine('nvme-format')._verify(_Target, [0, 1, 2, 3], [DATA, DATA, ZERO, DATA],
                                            [ZERO, ONES, ZERO, other])
    assert (counts['zero'], counts['ones'], counts['changed']) == (2, 1, 1)
    with pytest.raises(DeviceError) as info:
        _engine('blkdiscard')._verify(_Target, [0, 8192], [DATA, DATA], [ZERO, DATA])
    assert 'still hold the data they held before the wipe' in str(info.value)
    assert info.value.details['verification']['failed_offsets'] == [8192]


def _extents(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return _wipe.data_extents(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def test_a_sparse_files_data_extents_and_nothing_of_its_holes(tmp_path):
    path = tmp_path / 'disk.raw'
    with open(path, 'wb') as handle:
        handle.truncate(64 << 20)
        handle.seek(8 << 20)
        handle.write(b'x' * (1 << 20))
        handle.seek((64 << 20) - 4096)
        handle.write(b'y' * 4096)
    assert _extents(str(path)) == [(8 << 20, 9 << 20), ((64 << 20) - 4096, 64 << 20)]
    empty = tmp_path / 'empty.raw'
    with open(empty, 'wb') as handle:
        handle.truncate(1 << 20)
    assert _extents(str(empty)) == []


def test_a_file_system_that_cannot_tell_gets_the_whole_file(tmp_path, monkeypatch):
    path = tmp_path / 'disk.raw'
    path.write_bytes(b'x' * 8192)
    real = os.lseek

    def no_seek_data(fd, offset, whence):
        if whence == os.SEEK_DATA:
            raise OSError(errno.EINVAL, 'Invalid argument')
        return real(fd, offset, whence)
    monkeypatch.setattr(os, 'lseek', no_seek_data)
    assert _extents(str(path)) == [(0, 8192)]
