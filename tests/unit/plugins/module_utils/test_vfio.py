# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vfio engine below the module: records, the lock, the plan in check mode."""

from __future__ import annotations

import json
import os
import threading

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils import _vfio
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError
from tests.sysfs import kernel_fixture
from tests.sysfs.kernel_fixture import StubModule

kernel = kernel_fixture.kernel  # the fixture

GPU = '0000:01:00.0'
AUDIO = '0000:01:00.1'


def engine(host, address=GPU, check_mode=False, **kwargs):
    module = StubModule(host.tools, check_mode=check_mode)
    options = dict(sysfs_root=host.sys, proc_root=host.proc, dev_root=host.dev, state_dir=host.state)
    options.update(kwargs)
    return _vfio.VfioBind(module, address, **options)


def test_the_record_is_written_atomically_and_read_back(tmp_path):
    state = _vfio.StateFile(StubModule(), str(tmp_path / 'vfio'), GPU)
    assert state.load() is None
    data = {'version': 1, 'functions': {GPU: {'driver': 'nvidia', 'driver_override': None}}}
    state.save(data)
    assert state.load() == data
    assert sorted(os.listdir(str(tmp_path / 'vfio'))) == [GPU + '.json']
    assert oct(os.stat(str(tmp_path / 'vfio')).st_mode & 0o777) == '0o700'
    state.remove()
    assert state.load() is None


@pytest.mark.parametrize('text, expected', [
    ('[]', 'holds list, not a dict'),
    ('{"functions": []}', 'does not have the layout vfio_bind writes'),
    ('{"functions": {"x": 1}}', 'does not have the layout vfio_bind writes'),
])
def test_a_record_of_another_shape_is_refused(tmp_path, text, expected):
    (tmp_path / (GPU + '.json')).write_text(text)
    with pytest.raises(devctl.DeviceError) as info:
        _vfio.StateFile(StubModule(), str(tmp_path), GPU).load()
    assert expected in str(info.value)
    assert info.value.details['state_file'] == str(tmp_path / (GPU + '.json'))


def test_check_mode_plans_the_record_first_and_writes_nothing(kernel):
    host = kernel('workstation')
    before = host.snapshot()
    result = engine(host, check_mode=True).run()
    assert result['actions'][0] == 'record the original drivers in %s' % os.path.join(
        host.state, GPU + '.json')
    assert len(result['actions']) == 7
    host.assert_unchanged(before)


def test_a_second_run_waits_for_the_first(kernel):
    """The host-wide lock: a run that starts while another holds it waits, then finds no work."""
    host = kernel('workstation')
    lock = _vfio._Lock(host.state)
    results = []
    with lock:
        worker = threading.Thread(target=lambda: results.append(engine(host).run()))
        worker.start()
        worker.join(0.2)
        assert worker.is_alive()                       # blocked on the lock
        assert host.driver(GPU) == 'nvidia'
    worker.join(5)
    assert results and results[0]['changed'] is True
    assert engine(host).run()['changed'] is False


def test_a_record_from_an_older_run_is_kept_for_functions_it_knows(kernel):
    host = kernel('workstation')
    os.makedirs(host.state)
    # A record that says the audio function came from another driver (a previous owner).
    with open(os.path.join(host.state, GPU + '.json'), 'w') as handle:
        json.dump({'version': 1, 'address': GPU, 'iommu_group': '3', 'functions': {
            AUDIO: {'driver': None, 'driver_override': None}}}, handle)
    result = engine(host).run()
    assert result['original_drivers'] == {GPU: 'nvidia', AUDIO: None}
    released = engine(host, state='absent').run()
    assert released['bindings'] == {GPU: 'nvidia', AUDIO: None}   # unbound, as recorded


def test_releasing_a_function_that_vanished_warns(kernel):
    host = kernel('workstation')
    os.makedirs(host.state)
    with open(os.path.join(host.state, GPU + '.json'), 'w') as handle:
        json.dump({'version': 1, 'functions': {
            '0000:01:00.7': {'driver': 'x', 'driver_override': None}}}, handle)
    bound = engine(host)
    bound.run()
    release = engine(host, state='absent')
    result = release.run()
    assert any('no longer exists' in w for w in release.warnings)
    assert not os.path.exists(result['state_file'])


@pytest.mark.parametrize('option, value', [
    ('state_dir', '/var/lib/gp\x00uaas'), ('sysfs_root', '/s\x00ys'), ('proc_root', '/pr\x00oc'),
    ('dev_root', 'dev'), ('state_dir', None),
])
def test_a_path_option_with_a_nul_or_not_absolute_is_refused_by_name(kernel, option, value):
    """A NUL never reaches os.* (where it would be a ValueError, not a refusal)."""
    host = kernel('workstation')
    with pytest.raises(GpuaasError) as info:
        engine(host, **{option: value})
    assert str(info.value).startswith(option)
