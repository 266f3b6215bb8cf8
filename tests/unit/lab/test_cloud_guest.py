# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parts of the lab's real guest: the cloud image's disk layout, boot entry and cache
key (tests/guest/cloud_image.py), and how the lab reads the guest over SSH (lab/tenant_client.py)
and judges its isolation probe (lab/lab.py). Building and booting the image is make lab's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _seed
from tests.conftest import REPO
from tests.guest import cloud_image

sys.path.insert(0, os.path.join(REPO, 'lab'))
import lab  # noqa: E402  (lab/lab.py)
import tenant_client  # noqa: E402  (lab/tenant_client.py)

KEY = '0123456789abcdef'


def test_the_disk_is_a_gpt_with_an_esp_and_a_root_partition_as_sfdisk_reads_it_back(tmp_path):
    script, ((esp_offset, esp_size), (root_offset, root_size)) = cloud_image.partition_table(KEY)
    disk = tmp_path / 'disk.raw'
    with open(disk, 'wb') as handle:
        handle.truncate(cloud_image.DISK_MIB << 20)
    subprocess.run(['sfdisk', '--quiet', '--no-reread', '--no-tell-kernel', str(disk)], input=script.encode(),
                   check=True)
    table = json.loads(subprocess.run(['sfdisk', '--json', str(disk)], capture_output=True, check=True,
                                      text=True).stdout)['partitiontable']
    assert table['label'] == 'gpt'
    assert table['id'].lower() == cloud_image.derived_uuid(KEY, 'disk')
    esp, root = table['partitions']
    assert (esp['type'], esp['start'] * 512, esp['size'] * 512) == (cloud_image.ESP_TYPE, esp_offset, esp_size)
    assert (root['type'], root['start'] * 512, root['size'] * 512) == (cloud_image.ROOT_TYPE, root_offset, root_size)
    assert root['uuid'].lower() == cloud_image.derived_uuid(KEY, 'root-part')
    # MiB-aligned, one after the other, clear of the backup GPT at the disk's end.
    assert esp_offset == 1 << 20 and root_offset == esp_offset + esp_size
    assert root_offset % (1 << 20) == 0 and root_size % (1 << 20) == 0
    assert root_offset + root_size <= (cloud_image.DISK_MIB << 20) - 33 * 512


def test_the_boot_entry_and_fstab_name_the_root_partition_the_table_gives_it():
    entries = cloud_image.loader_files(KEY, 'vmlinuz-6.1.0-1-cloud-amd64', 'initrd.img-6.1.0-1-cloud-amd64')
    part = cloud_image.derived_uuid(KEY, 'root-part')
    assert 'root=PARTUUID=%s ' % part in entries['loader/entries/debian.conf']
    assert 'linux /vmlinuz-6.1.0-1-cloud-amd64\n' in entries['loader/entries/debian.conf']
    assert 'console=ttyS0' in entries['loader/entries/debian.conf']
    # No menu to wait at.
    assert 'timeout 0\n' in entries['loader/loader.conf']
    assert cloud_image.fstab(KEY).startswith('PARTUUID=%s / ext4 ' % part)
    assert cloud_image.derived_uuid(KEY, 'root-part') != cloud_image.derived_uuid('fedcba9876543210', 'root-part')


def test_the_cache_key_follows_every_input_and_nothing_else():
    versions, sources = {'cloud-init': '22.4.2-1', 'systemd': '252.39-1'}, {'agent.py': b'print(1)\n'}
    key = cloud_image.cache_key(versions, sources)
    assert key == cloud_image.cache_key(dict(reversed(list(versions.items()))), dict(sources))
    assert key != cloud_image.cache_key(dict(versions, systemd='252.40-1'), sources)
    assert key != cloud_image.cache_key(versions, {'agent.py': b'print(2)\n'})


def test_the_image_runs_the_agent_where_the_seed_puts_it_once_cloud_init_wrote_its_settings():
    assert cloud_image.AGENT_PATH == _seed.AGENT_PATH
    assert 'ExecStart=/usr/bin/python3 %s\n' % _seed.AGENT_PATH in cloud_image.AGENT_UNIT
    assert 'After=network-online.target cloud-init.service\n' in cloud_image.AGENT_UNIT
    assert 'ConditionPathExists=%s\n' % _seed.DEFAULT_TELEMETRY_FILE in cloud_image.AGENT_UNIT
    assert 'datasource_list: [NoCloud]' in cloud_image.CLOUD_CFG
    assert 'DefaultTimeoutStartSec=15min' in cloud_image.SYSTEMD_CONF
    for package in ('cloud-init', 'openssh-server', 'qemu-guest-agent', 'python3', 'systemd-sysv', 'systemd-boot-efi'):
        assert package in cloud_image.PACKAGES


def test_the_guest_facts_are_read_from_the_guest_s_lines():
    out = ('hostname=gpu-sample-hgx-s0\ninstance_id=lab-s0-abc123\nfirmware=uefi\nphys_bits=46\n'
           'bar_max_mib=131072\nbar_max=0000:01:00.0 bar0 0x8000000000\nip=10.100.0.10\nagent=active\n'
           'cloud_init=done\ncloud_init_result={"v1": {"datasource": "DataSourceNoCloud", "errors": []}}\n')
    facts = tenant_client.parse_facts(out)
    assert facts['hostname'] == 'gpu-sample-hgx-s0' and facts['instance_id'] == 'lab-s0-abc123'
    assert (facts['phys_bits'], facts['bar_max_mib']) == (46, 131072)
    assert facts['bar_max'] == '0000:01:00.0 bar0 0x8000000000'
    assert tenant_client.cloud_init_errors(facts) == []
    broken = tenant_client.parse_facts(out.replace('"errors": []', '"errors": ["cc_ssh failed"]'))
    assert tenant_client.cloud_init_errors(broken) == ['cc_ssh failed']
    assert tenant_client.cloud_init_errors(tenant_client.parse_facts('cloud_init=running\n')) == [
        'no /run/cloud-init/result.json']


def test_the_tenant_command_is_ssh_with_the_key_to_the_allocation_s_access_from_the_client():
    access = {'ssh_host': '198.51.100.1', 'ssh_port': 22001, 'user': 'gpuaas'}
    assert tenant_client.tenant_command(access, '.build/lab/id_ed25519') == (
        'ip netns exec gpuaas-lab-client ssh -i .build/lab/id_ed25519 -p 22001 gpuaas@198.51.100.1')


def test_the_probe_reports_what_answered_and_ignores_what_was_not_asked():
    targets = ['10.100.0.1', '10.100.0.11', '10.100.0.12']
    found = tenant_client.parse_probe('ip=10.100.0.10\nup=10.100.0.1\ndown=10.100.0.11\nup=10.100.0.99\n', targets)
    assert found == {'ip': '10.100.0.10', 'reachable': ['10.100.0.1'], 'unreachable': ['10.100.0.11']}


@pytest.mark.parametrize('reachable, problem', [
    (['10.100.0.1'], None),
    ([], 'sample-hgx-s0: cannot reach its gateway'),
    # Which other slots it reached is the tenant matrix's to judge: recorded, no problem here.
    (['10.100.0.1', '10.100.0.11'], None),
])
def test_the_isolation_proof_over_ssh_wants_the_gateway_and_records_the_slots_reached(monkeypatch, reachable, problem):
    result = {'address': '10.100.0.10', 'access': {'ssh_host': '198.51.100.1', 'ssh_port': 22000, 'user': 'gpuaas'}}
    targets = lab.isolation_targets(result)
    assert targets[0] == lab.GATEWAY and '10.100.0.10' not in targets and '10.100.0.17' in targets
    monkeypatch.setattr(tenant_client, 'probe', lambda access, key, asked: {
        'ip': '10.100.0.10', 'reachable': [t for t in reachable if t in asked],
        'unreachable': [t for t in asked if t not in reachable]})
    proof, problems = lab.prove_isolation_over_ssh('sample-hgx-s0', result, targets)
    assert problems == ([problem] if problem else [])
    assert proof['gateway_ok'] == (1 if '10.100.0.1' in reachable else 0)
    assert proof['peers_reachable'] == ' '.join(t for t in reachable if t != lab.GATEWAY)
