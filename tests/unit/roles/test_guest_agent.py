# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest agent's acceptance check and parsers, run on what a real H100 guest recorded
(tests/fixtures/real/h100-passthrough-guest): its sysfs as a tree under tmp_path, its
nvidia-smi -q -x, its baseline."""

from __future__ import annotations

import json
import os

import pytest

from tests.unit.roles.h100_guest import GPU, build_sysfs, fixture, load_agent

agent = load_agent()
APPROVED = {'gpu_model': '10de:2330', 'link_speed': '32.0 GT/s PCIe', 'link_width': 16,
            'nvme': False, 'fabric_vf': False}
MEASURED = {'h2d_GBps_pinned': 53.1, 'd2h_GBps_pinned': 54.0, 'bf16_matmul_TFLOPs_8192': 731.0}


def run_check(tmp_path, approved=None, measured='default', smi='default', **sysfs):
    measured = MEASURED if measured == 'default' else measured
    functions = agent.read_pci(str(build_sysfs(tmp_path / 'sys', **sysfs)))
    if smi == 'default':
        smi = agent.parse_nvidia_smi_xml(fixture('nvidia-smi-q.xml'))
    return agent.check_slot(functions, dict(APPROVED, **(approved or {})), smi, measured)


def by_name(result):
    return {check['name']: check for check in result['checks']}


def test_the_recorded_h100_passes(tmp_path):
    result = run_check(tmp_path)
    checks = by_name(result)
    assert result['status'] == 'passed' and result['failed'] == []
    assert checks['gpu_visible'] == {'name': 'gpu_visible', 'status': 'passed',
                                     'reason': 'GPU 10de:2330 at 0000:00:06.0'}
    assert checks['link_speed']['reason'] == 'link 32.0 GT/s PCIe, approved 32.0 GT/s PCIe'
    assert checks['bars_mapped']['reason'] == 'BARs 0, 2, 4 mapped (16 MiB, 128 GiB, 32 MiB)'
    assert checks['nvme']['status'] == checks['fabric_vf']['status'] == 'skipped'
    assert checks['h2d_GBps_pinned']['status'] == 'passed'
    assert checks['bf16_matmul_TFLOPs_8192']['reason'] == \
        'bf16 8192x8192 matmul 731.0 TFLOP/s, baseline 738.6 TFLOP/s (at least 627.8)'


def test_approved_bar_sizes_are_compared(tmp_path):
    bars = {'0': 16 * 2 ** 20, '2': 128 * 2 ** 30, '4': 32 * 2 ** 20}
    assert run_check(tmp_path / 'a', approved={'bars': bars})['status'] == 'passed'
    result = run_check(tmp_path / 'b', approved={'bars': dict(bars, **{'2': 64 * 2 ** 30})})
    assert by_name(result)['bars_mapped']['reason'] == 'BAR 2 is 128 GiB, approved 64 GiB'


@pytest.mark.parametrize('attrs, name, reason', [
    ({'current_link_speed': '16.0 GT/s PCIe'}, 'link_speed', 'link 16.0 GT/s PCIe, approved 32.0 GT/s PCIe'),
    ({'current_link_width': '8'}, 'link_width', 'link x8, approved x16'),
])
def test_a_link_trained_lower_fails(tmp_path, attrs, name, reason):
    result = run_check(tmp_path, gpu_attrs=attrs)
    assert result['status'] == 'failed' and result['failed'] == [name]
    assert by_name(result)[name]['reason'] == reason


def test_an_unreadable_link_fails(tmp_path):
    build = build_sysfs(tmp_path / 'sys')
    os.unlink(build / 'bus' / 'pci' / 'devices' / GPU / 'current_link_width')
    functions = agent.read_pci(str(build))
    result = agent.check_slot(functions, APPROVED, None, None)
    assert result['failed'] == ['link_width']
    assert by_name(result)['link_width']['reason'] == 'link x unreadable, approved x16'


def test_a_missing_bar_fails(tmp_path):
    lines = fixture('gpu-resource.txt').splitlines(True)
    lines[2] = '0x0000000000000000 0x0000000000000000 0x0000000000000000\n'   # BAR 2 (the 128 GiB aperture)
    result = run_check(tmp_path / 'a', resource=''.join(lines), approved={'bars': {'2': 128 * 2 ** 30}})
    assert result['failed'] == ['bars_mapped']
    assert by_name(result)['bars_mapped']['reason'] == 'BAR 2 is not mapped, approved 128 GiB'
    lines[0] = lines[2]      # BAR 0 too: without approved sizes the rule still sees it
    result = run_check(tmp_path / 'b', resource=''.join(lines))
    assert by_name(result)['bars_mapped']['reason'] == 'BAR 0 (registers) is not mapped'


def test_no_gpu_visible_is_a_failed_check_with_that_reason(tmp_path):
    (tmp_path / 'sys').mkdir()
    result = agent.check_slot(agent.read_pci(str(tmp_path / 'sys')), APPROVED, None, None)
    checks = by_name(result)
    assert result['status'] == 'failed'
    assert checks['gpu_visible'] == {'name': 'gpu_visible', 'status': 'failed',
                                     'reason': 'no GPU visible (approved 10de:2330)'}
    assert checks['link_speed']['status'] == checks['bars_mapped']['status'] == 'failed'
    assert checks['h2d_GBps_pinned'] == {'name': 'h2d_GBps_pinned', 'status': 'skipped',
                                         'reason': 'no GPU with the approved id to measure'}


def test_another_gpu_than_approved_fails(tmp_path):
    result = run_check(tmp_path, approved={'gpu_model': '10de:2331'})
    assert by_name(result)['gpu_visible']['reason'] == 'the visible GPU is 10de:2330, approved 10de:2331'


def test_bandwidth_below_the_baseline_by_more_than_the_tolerance_fails(tmp_path):
    result = run_check(tmp_path, measured=dict(MEASURED, h2d_GBps_pinned=26.4))   # a Gen5 x8 or Gen4 x16 figure
    assert result['failed'] == ['h2d_GBps_pinned']
    assert by_name(result)['h2d_GBps_pinned']['reason'] == \
        'host-to-device bandwidth 26.4 GB/s, baseline 53.7 GB/s (at least 45.6)'
    # Within the tolerance: passes.
    assert run_check(tmp_path / 'b', measured=dict(MEASURED, h2d_GBps_pinned=46.0))['status'] == 'passed'


def test_a_figure_not_measured_fails(tmp_path):
    result = run_check(tmp_path, measured=dict(MEASURED, d2h_GBps_pinned=float('nan')))
    assert by_name(result)['d2h_GBps_pinned']['reason'] == 'device-to-host bandwidth was not measured'


def test_without_cuda_the_measurements_are_skipped_and_said_so(tmp_path):
    result = run_check(tmp_path, measured={'unavailable': 'CUDA is not available in the guest'})
    assert result['status'] == 'passed'
    assert by_name(result)['bf16_matmul_TFLOPs_8192'] == {
        'name': 'bf16_matmul_TFLOPs_8192', 'status': 'skipped', 'reason': 'CUDA is not available in the guest'}
    result = run_check(tmp_path / 'b', smi=None)
    assert by_name(result)['h2d_GBps_pinned']['reason'].startswith('nvidia-smi is not available')


@pytest.mark.parametrize('approved, extra, name, status, reason', [
    ({'nvme': True}, [], 'nvme', 'failed', 'no NVMe controller visible'),
    ({'nvme': True}, ['/x/0000:00:07.0 class=0x010802 vendor=0x144d device=0xa80a'], 'nvme', 'passed',
     'NVMe controller at 0000:00:07.0'),
    # The slot's own virtio NIC (0x1af4, class 0x020000) is not the fabric VF.
    ({'fabric_vf': True}, [], 'fabric_vf', 'failed', 'no fabric network function visible'),
    ({'fabric_vf': '15b3:101e'}, ['/x/0000:00:08.0 class=0x020700 vendor=0x15b3 device=0x101e'], 'fabric_vf',
     'passed', 'fabric network function 15b3:101e at 0000:00:08.0'),
    ({'fabric_vf': '15b3:101e'}, ['/x/0000:00:08.0 class=0x020000 vendor=0x15b3 device=0x1018'], 'fabric_vf',
     'failed', 'no fabric network function 15b3:101e visible'),
])
def test_the_nvme_and_the_fabric_vf_must_be_present_when_approved(tmp_path, approved, extra, name, status, reason):
    result = run_check(tmp_path, approved=approved, extra=extra)
    assert by_name(result)[name] == {'name': name, 'status': status, 'reason': reason}


@pytest.mark.parametrize('approved, message', [
    ({'gpu_model': '10DE-2330'}, "approved gpu_model '10DE-2330' is not 'vendor:device'"),
    ({'link_speed': 'fast'}, "approved link_speed 'fast' is not like '32.0 GT/s PCIe'"),
    ({'link_width': 64}, 'approved link_width 64 is not a width from 1 to 32'),
    ({'link_width': True}, 'approved link_width True is not a width from 1 to 32'),
])
def test_bad_approved_facts_are_refused(approved, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        agent.check_slot([], dict(APPROVED, **approved), None, None)


def test_the_baseline_is_the_recorded_one():
    recorded = json.loads(fixture('acceptance-baseline.json'))
    ours = agent.BASELINES[recorded['gpu']]
    assert ours == {key: recorded[key] for key in ours}


def test_nvidia_smi_xml_of_the_recorded_h100():
    smi = agent.parse_nvidia_smi_xml(fixture('nvidia-smi-q.xml'))
    assert smi['driver_version'] == '580.159.04' and smi['cuda_version'] == '13.0'
    assert smi['gpus'] == [{
        'bus_id': '00000000:00:06.0', 'name': 'NVIDIA H100 80GB HBM3', 'pci_id': '10de:2330',
        'link_gen': 5.0, 'link_width': 16.0, 'utilization_pct': 0.0, 'memory_utilization_pct': 0.0,
        'memory_used_mib': 0.0, 'memory_total_mib': 81559.0, 'temperature_c': 49.0, 'power_w': 77.28,
        'ecc_mode': 'Enabled', 'ecc_volatile': {'corrected': 0, 'uncorrected': 0},
        'ecc_aggregate': {'corrected': 0, 'uncorrected': 0}, 'remapped_rows_pending': 'No'}]
    # The query CSV of the same capture agrees on the name, the bus id and the memory.
    header, row = [line.split(', ') for line in fixture('nvidia-smi-query.csv').splitlines()]
    row = dict(zip(header, row))
    gpu = smi['gpus'][0]
    assert (row['name'], row['pci.bus_id'], row['memory.total [MiB]']) == \
        (gpu['name'], gpu['bus_id'], '%d MiB' % gpu['memory_total_mib'])


def test_ecc_errors_are_counted():
    text = fixture('nvidia-smi-q.xml').replace(
        '<dram_correctable>0</dram_correctable>', '<dram_correctable>3</dram_correctable>', 1).replace(
        '<dram_uncorrectable>0</dram_uncorrectable>', '<dram_uncorrectable>1</dram_uncorrectable>', 1)
    assert agent.parse_nvidia_smi_xml(text)['gpus'][0]['ecc_volatile'] == {'corrected': 3, 'uncorrected': 1}


@pytest.mark.parametrize('text, message', [
    ('not xml', 'is not XML'),
    ('<other/>', "the root element is 'other'"),
])
def test_bad_nvidia_smi_output_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        agent.parse_nvidia_smi_xml(text)


def test_xid_errors_from_the_kernel_log():
    log = ('[  12.1] NVRM: loading NVIDIA UNIX x86_64 Kernel Module\n'
           '[ 301.5] NVRM: Xid (PCI:0000:00:06): 79, pid=\'<unknown>\', name=<unknown>, GPU has fallen off the bus.\n'
           '[ 302.0] NVRM: Xid (PCI:0000:00:06): 48, pid=1234, An uncorrectable double bit error\n')
    assert agent.parse_xids(log) == [{'device': 'PCI:0000:00:06', 'xid': 79},
                                     {'device': 'PCI:0000:00:06', 'xid': 48}]
    assert agent.parse_xids(None) == []


def test_health_reads_proc(tmp_path):
    (tmp_path / 'uptime').write_text('3605.21 7000.00\n')
    (tmp_path / 'loadavg').write_text('0.50 0.25 0.10 1/123 4567\n')
    (tmp_path / 'meminfo').write_text('MemTotal:       16384000 kB\nMemFree:  1000 kB\nMemAvailable:   8192000 kB\n')
    out = agent.health(str(tmp_path), str(tmp_path))
    assert out['uptime_s'] == 3605.2 and out['load'] == [0.5, 0.25, 0.1]
    assert out['memory_mib'] == {'total': 16000, 'available': 8000}
    assert out['disk_gib']['path'] == str(tmp_path) and out['disk_gib']['total'] > 0
    assert agent.health(str(tmp_path / 'none'), str(tmp_path / 'none')) == {
        'uptime_s': None, 'load': None, 'memory_mib': None, 'disk_gib': None}


@pytest.mark.parametrize('text, message', [
    ('GPUAAS_TELEMETRY_SINK=http://10.100.0.1:9110/metrics\nGPUAAS_ALLOCATION_ID=a1\n', 'does not set GPUAAS_TELEMETRY_TOKEN'),
    ('GPUAAS_TELEMETRY_SINK=ftp://x\nGPUAAS_TELEMETRY_TOKEN=t\nGPUAAS_ALLOCATION_ID=a1\n', 'is not an http'),
])
def test_a_bad_env_file_is_refused_without_showing_the_token(tmp_path, text, message):
    path = tmp_path / 'telemetry.env'
    path.write_text(text)
    with pytest.raises(agent.AgentError, match=message) as info:
        agent.read_env(str(path))
    assert '=t' not in str(info.value)
