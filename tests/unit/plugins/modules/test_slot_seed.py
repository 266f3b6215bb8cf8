# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_seed with the real genisoimage; the ISO is read back with isoinfo -R -x."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess

import pytest
import yaml

from ansible_collections.gpuaas.slice.plugins.module_utils import _seed, contract
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import SSH_KEY_TYPES, Slot
from ansible_collections.gpuaas.slice.plugins.modules import slot_seed
from tests.unit.module_runner import run_module

pytestmark = pytest.mark.skipif(not (shutil.which('genisoimage') or shutil.which('xorriso'))
                                or not shutil.which('isoinfo'),
                                reason='needs genisoimage (or xorriso) and isoinfo')

TOKEN = 'tok_3f9a2b7c1d4e5f60.ABCdef-~+/='


def key(kind='ssh-ed25519', body_len=32, comment='alice@laptop'):
    """An OpenSSH public key line whose blob really holds a key of ``kind``."""
    name = kind.encode()
    blob = struct.pack('>I', len(name)) + name + struct.pack('>I', body_len) + b'\x07' * body_len
    return ('%s %s %s' % (kind, base64.b64encode(blob).decode(), comment)).strip()


def args(tmp_path, **extra):
    base = dict(slot_id='gpu-node-01-s3', allocation_id='alloc-7f3a', hostname='train-01',
                ssh_keys=[key(), key('ssh-rsa', 256, 'bob')],
                telemetry_token=TOKEN, seed_dir=str(tmp_path / 'seeds'))
    base.update(extra)
    return base


def iso_file(path, name):
    return subprocess.run(['isoinfo', '-i', path, '-R', '-x', '/' + name], check=True,
                          capture_output=True).stdout


def iso_labels(path):
    out = subprocess.run(['isoinfo', '-d', '-i', path], check=True, capture_output=True,
                         text=True).stdout
    return dict(line.split(': ', 1) for line in out.splitlines() if ': ' in line)


def test_seed_content_read_back(tmp_path, capsys):
    result = run_module(slot_seed, args(tmp_path), capsys=capsys)
    assert result['changed'] is True, result
    path = result['path']
    assert path == str(tmp_path / 'seeds' / 'gpu-node-01-s3-seed.iso')
    assert oct(os.stat(path).st_mode & 0o777) == '0o600'
    labels = iso_labels(path)
    assert labels['Volume id'] == 'cidata'
    assert labels['Application id'] == 'GPUAAS-SEED-SHA256-' + result['content_hash'].upper()

    meta = yaml.safe_load(iso_file(path, 'meta-data'))
    assert meta == {'instance-id': 'alloc-7f3a', 'local-hostname': 'train-01'}
    network = yaml.safe_load(iso_file(path, 'network-config'))
    assert network == {'version': 2, 'ethernets': {'slot0': {
        'match': {'macaddress': Slot('gpu-node-01', 3).mac}, 'dhcp4': True}}}
    raw_user = iso_file(path, 'user-data').decode()
    assert raw_user.startswith('#cloud-config\n')
    user = yaml.safe_load(raw_user)
    assert user['hostname'] == 'train-01'
    # Real cloud-init (Debian 12's) leaves /etc/hosts without the hostname unless told: sudo then
    # says "unable to resolve host train-01" on every command. The seed tells it.
    assert user['manage_etc_hosts'] is True
    # The keys are the login user's (default gpuaas), never the distribution default user's.
    assert 'ssh_authorized_keys' not in user
    assert user['users'] == [{'name': 'gpuaas', 'ssh_authorized_keys': [key(), key('ssh-rsa', 256, 'bob')],
                              'lock_passwd': True, 'shell': '/bin/bash', 'sudo': 'ALL=(ALL) NOPASSWD:ALL'}]
    telemetry = user['write_files'][-1]
    assert telemetry['path'] == '/etc/gpuaas/telemetry.env'
    assert telemetry['permissions'] == '0600'
    assert telemetry['content'] == ('GPUAAS_TELEMETRY_SINK=http://10.100.0.1:9110/metrics\n'
                                    'GPUAAS_TELEMETRY_TOKEN=%s\nGPUAAS_ALLOCATION_ID=alloc-7f3a\n' % TOKEN)
    # The token is in the seed, never in the result.
    assert TOKEN not in json.dumps(result)


def test_idempotent_check_mode_and_diff(tmp_path, capsys):
    check = run_module(slot_seed, args(tmp_path), check_mode=True, diff=True, capsys=capsys)
    assert check['changed'] is True and check['actions'] == ['write seed']
    assert not os.path.exists(tmp_path / 'seeds')
    assert check['diff']['before'] == {}
    first = run_module(slot_seed, args(tmp_path), capsys=capsys)
    mtime = os.stat(first['path']).st_mtime_ns
    again = run_module(slot_seed, args(tmp_path), diff=True, capsys=capsys)
    assert again['changed'] is False and again['actions'] == []
    assert os.stat(first['path']).st_mtime_ns == mtime
    assert again['diff']['before']['content_hash'] == again['diff']['after']['content_hash']
    changed = run_module(slot_seed, args(tmp_path, hostname='train-02'), diff=True, capsys=capsys)
    assert changed['changed'] is True
    assert changed['diff']['before']['content_hash'] != changed['diff']['after']['content_hash']
    assert yaml.safe_load(iso_file(first['path'], 'meta-data'))['local-hostname'] == 'train-02'


def test_absent(tmp_path, capsys):
    made = run_module(slot_seed, args(tmp_path), capsys=capsys)
    check = run_module(slot_seed, dict(slot_id='gpu-node-01-s3', seed_dir=str(tmp_path / 'seeds'),
                                       state='absent'), check_mode=True, capsys=capsys)
    assert check['changed'] is True and os.path.exists(made['path'])
    gone = run_module(slot_seed, dict(slot_id='gpu-node-01-s3', seed_dir=str(tmp_path / 'seeds'),
                                      state='absent'), capsys=capsys)
    assert gone['changed'] is True and not os.path.exists(made['path'])
    again = run_module(slot_seed, dict(slot_id='gpu-node-01-s3', seed_dir=str(tmp_path / 'seeds'),
                                       state='absent'), capsys=capsys)
    assert again['changed'] is False


def test_user_data_metacharacters_stay_data(tmp_path, capsys):
    """YAML, XML and shell metacharacters in the tenant's user_data come back as the same strings."""
    hostile = {
        'runcmd': ["echo '; rm -rf / #' && `id` $(id) | tee /x", ['sh', '-c', 'a"b\'c\\d']],
        'write_files': [{'path': '/home/t/notes',
                         'content': "key: !!python/object/apply:os.system ['id']\n"
                                    "--- \n... &a *a <x>&amp;</x> %TAG ! x\u2028y"}],
        'bootcmd': ['{{ lookup("pipe", "id") }}', '#not a comment', '- not a list'],
    }
    result = run_module(slot_seed, args(tmp_path, user_data=hostile), capsys=capsys)
    assert result['changed'] is True, result
    raw = iso_file(result['path'], 'user-data')
    raw.decode('ascii')  # non-ASCII is escaped
    user = yaml.safe_load(raw)
    assert user['runcmd'] == hostile['runcmd']
    assert user['bootcmd'] == hostile['bootcmd']
    assert user['write_files'][0] == hostile['write_files'][0]
    assert user['write_files'][-1]['path'] == '/etc/gpuaas/telemetry.env'


@pytest.mark.parametrize('field,value,message', [
    ('hostname', 'evil;reboot', 'not a valid host name'),
    ('hostname', 'a\nb', 'not a valid host name'),
    ('hostname', '-lead', 'not a valid host name'),
    ('hostname', 'x' * 64, 'not a valid host name'),
    ('hostname', 'host.example.com', 'not a valid host name'),
    ('hostname', 'h\u00f6st', 'not a valid host name'),
    ('allocation_id', '../../etc', 'allocation_id'),
    ('allocation_id', 'a b', 'allocation_id'),
    ('telemetry_token', 'short', 'telemetry_token is not valid'),
    ('telemetry_token', 'x' * 20 + '\nruncmd: [reboot]', 'telemetry_token is not valid'),
    ('telemetry_token', 'x' * 20 + '"', 'telemetry_token is not valid'),
    ('telemetry_sink', 'http://10.100.0.1:9110/m?x=1', 'telemetry_sink'),
    ('telemetry_sink', 'file:///etc/shadow', 'telemetry_sink'),
    ('telemetry_sink', 'http://user@10.100.0.1/', 'telemetry_sink'),
    ('telemetry_sink', 'http://10.100.0.1:99999/', 'out of range'),
    ('telemetry_file', '/etc/../root/.bashrc', 'telemetry_file'),
    ('telemetry_file', '/etc/x y', 'telemetry_file'),
    ('slot_id', '../../etc/passwd', 'slot id'),
    ('slot_id', 'node-s1/../../x', 'slot id'),
    ('seed_dir', '/tmp/../etc', "'..'"),
    ('ssh_keys', [key() + '\n' + key()], 'line break'),
    ('ssh_keys', ['command="reboot" ' + key()], 'key options are not accepted'),
    ('ssh_keys', ['ssh-dss AAAAB3NzaC1kc3MAAAA= x'], 'not a key type'),
    ('ssh_keys', ['ssh-ed25519 not*base64 x'], 'not base64'),
    ('ssh_keys', ['ssh-ed25519 ' + key('ssh-rsa').split()[1]], 'does not hold a ssh-ed25519 key'),
    ('ssh_keys', ['ssh-ed25519'], 'not an OpenSSH public key'),
    ('ssh_keys', [key(comment='x\x1b[2J')], 'control character'),
    ('ssh_keys', [key()] * 17, 'ssh_keys must be a list of 0 to 16 public keys'),
    ('user_data', {'ssh_authorized_keys': [key()]}, 'may not set ssh_authorized_keys'),
    ('user_data', {'hostname': 'other'}, 'may not set hostname'),
    ('user_data', {'manage_etc_hosts': False}, 'may not set manage_etc_hosts'),
    ('user_data', {'users': [{'name': 'root', 'ssh_authorized_keys': [key()]}]}, 'may not set users'),
    ('login_user', 'Root', "login_user 'Root' is not a valid login user"),
    ('login_user', 'gpu aas', "login_user 'gpu aas' is not a valid login user"),
    ('login_user', 'gpuaas\n', "login_user 'gpuaas\\n' is not a valid login user"),
    ('login_user', '-gpuaas', "login_user '-gpuaas' is not a valid login user"),
    ('login_user', 'u' * 33, 'is not a valid login user'),
    ('user_data', {'write_files': [{'path': '/etc/gpuaas/telemetry.env', 'content': 'x'}]},
     'holds the telemetry token'),
])
def test_hostile_input_refused_before_anything_is_written(tmp_path, capsys, field, value, message):
    result = run_module(slot_seed, args(tmp_path, **{field: value}), capsys=capsys)
    assert result.get('failed') is True, result
    assert message in result['msg'], result['msg']
    assert not os.path.exists(tmp_path / 'seeds') or not os.listdir(tmp_path / 'seeds')
    assert TOKEN not in result['msg']


def test_the_keys_keep_their_older_option_name(tmp_path, capsys):
    """``ssh_authorized_keys`` (cloud-init's name, the option's before) is an alias of ``ssh_keys``."""
    plain = args(tmp_path)
    older = {('ssh_authorized_keys' if name == 'ssh_keys' else name): value for name, value in plain.items()}
    assert run_module(slot_seed, older, capsys=capsys)['changed'] is True
    assert run_module(slot_seed, plain, capsys=capsys)['changed'] is False


def test_key_normalisation():
    assert contract.check_ssh_key('  %s  ' % key(comment='')) == key(comment='')
    for kind in SSH_KEY_TYPES:
        assert contract.check_ssh_key(key(kind)).startswith(kind + ' ')


def test_content_hash_covers_every_file():
    files, _shown, _mac = _seed.seed_content('n-s0', 'a1', 'h', [], TOKEN, _seed.DEFAULT_SINK)
    base = _seed.content_hash(files)
    for name in files:
        changed = dict(files)
        changed[name] = files[name] + b' '
        assert _seed.content_hash(changed) != base


def test_missing_required_for_present(tmp_path, capsys):
    result = run_module(slot_seed, dict(slot_id='n-s0', seed_dir=str(tmp_path)), capsys=capsys)
    assert result['failed'] and 'allocation_id' in result['msg']


def test_the_login_user_is_the_one_given(tmp_path, capsys):
    result = run_module(slot_seed, args(tmp_path, login_user='tenant_1'), capsys=capsys)
    assert result['changed'], result
    assert [u['name'] for u in yaml.safe_load(iso_file(result['path'], 'user-data').decode())['users']] == ['tenant_1']


AGENT = os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', 'roles', 'host_prep', 'files',
                     'gpuaas_guest_agent.py')
APPROVED = {'gpu_model': '10de:2330', 'link_speed': '32.0 GT/s PCIe', 'link_width': 16,
            'bars': {'0': 16777216, '2': 137438953472}, 'nvme': True, 'fabric_vf': '15b3:101e'}


def test_the_approved_facts_and_the_guest_agent_travel_in_the_user_data(tmp_path, capsys):
    result = run_module(slot_seed, args(tmp_path, approved=APPROVED, guest_agent=AGENT,
                                        user_data={'runcmd': [['touch', '/tmp/tenant']]}), diff=True, capsys=capsys)
    assert result['changed'], result
    user = yaml.safe_load(iso_file(result['path'], 'user-data'))
    files = {item['path']: item for item in user['write_files']}
    assert json.loads(files[_seed.SLOT_FILE]['content']) == APPROVED
    agent = files[_seed.AGENT_PATH]
    assert (agent['permissions'], agent['encoding']) == ('0644', 'b64')
    with open(AGENT, 'rb') as handle:
        assert base64.b64decode(agent['content']) == handle.read()
    assert 'ExecStart=/usr/bin/python3 %s' % _seed.AGENT_PATH in files[_seed.AGENT_UNIT_PATH]['content']
    # The tenant's commands first, then the agent's unit is enabled: argv lists, no shell.
    assert user['runcmd'] == [['touch', '/tmp/tenant'], ['systemctl', 'daemon-reload'],
                              ['systemctl', 'enable', '--now', 'gpuaas-guest-agent.service']]
    shown = {item['path']: item for item in result['files']['user-data']['write_files']}
    assert shown[_seed.AGENT_PATH]['content'].startswith('<gpuaas_guest_agent.py: ')
    assert TOKEN not in json.dumps(result)
    again = run_module(slot_seed, args(tmp_path, approved=APPROVED, guest_agent=AGENT,
                                       user_data={'runcmd': [['touch', '/tmp/tenant']]}), capsys=capsys)
    assert not again['changed']


@pytest.mark.parametrize('extra, message', [
    ({'approved': dict(APPROVED, colour='red')}, 'approved has unknown keys colour'),
    ({'approved': dict(APPROVED, gpu_model='NVIDIA')}, "approved.gpu_model 'NVIDIA' is not a valid GPU model"),
    ({'approved': dict(APPROVED, link_speed='fast')}, "approved.link_speed \"fast\" is not like '32.0 GT/s PCIe'"),
    ({'approved': dict(APPROVED, link_width=0)}, 'approved.link_width must be a whole number from 1 to 32, not 0'),
    ({'approved': dict(APPROVED, bars={'7': 1})}, 'approved.bars has BAR "7": BARs are 0 to 5'),
    ({'approved': dict(APPROVED, nvme='yes')}, "approved.nvme must be true, false or a PCI id 'vendor:device', not \"yes\""),
    ({'approved': APPROVED, 'user_data': {'write_files': [{'path': '/etc/gpuaas/slot.json', 'content': '{}'}]}},
     'user_data.write_files may not write /etc/gpuaas/slot.json: the seed writes it'),
    ({'guest_agent': '/nonexistent/agent.py'}, 'guest_agent /nonexistent/agent.py cannot be read'),
    ({'guest_agent': '/etc/passwd'}, 'guest_agent /etc/passwd is not a Python program'),
])
def test_bad_approved_facts_or_agent_are_refused(tmp_path, capsys, extra, message):
    result = run_module(slot_seed, args(tmp_path, **extra), capsys=capsys)
    assert result['failed'] and message in result['msg'], result['msg']
    assert not (tmp_path / 'seeds').exists()


# -- the fabric interface (docs/operator-guide.md, "Tenant networks") ------------------------

ROCE = {'kind': 'ethernet', 'address': '10.224.0.2/24', 'mac': '96:bf:df:86:c9:f5'}
IPOIB = {'kind': 'infiniband', 'address': '10.224.1.1/24', 'port_guid': 'e2:ad:1b:cf:24:48:10:6c', 'pkey': '0x8101'}


def test_a_roce_vf_gets_its_fabric_address_matched_by_its_mac(tmp_path, capsys):
    result = run_module(slot_seed, args(tmp_path, fabric=ROCE), capsys=capsys)
    network = yaml.safe_load(iso_file(result['path'], 'network-config'))
    assert network['ethernets']['fabric0'] == {'match': {'macaddress': '96:bf:df:86:c9:f5'}, 'dhcp4': False,
                                               'addresses': ['10.224.0.2/24']}
    assert network['ethernets']['slot0']['dhcp4'] is True
    user = yaml.safe_load(iso_file(result['path'], 'user-data'))
    assert 'runcmd' not in user and _seed.FABRIC_SCRIPT_PATH not in {f['path'] for f in user['write_files']}


def test_an_infiniband_vf_gets_an_ipoib_child_on_its_partition(tmp_path, capsys):
    result = run_module(slot_seed, args(tmp_path, fabric=IPOIB), capsys=capsys)
    user = yaml.safe_load(iso_file(result['path'], 'user-data'))
    files = {item['path']: item for item in user['write_files']}
    assert 'ExecStart=/bin/sh %s' % _seed.FABRIC_SCRIPT_PATH in files[_seed.FABRIC_UNIT_PATH]['content']
    assert user['runcmd'] == [['systemctl', 'daemon-reload'], ['systemctl', 'enable', '--now', 'gpuaas-fabric.service']]
    assert 'fabric0' not in yaml.safe_load(iso_file(result['path'], 'network-config'))['ethernets']
    # The script as the guest runs it, on a /sys/class/net of two interfaces and an ip that logs.
    net = tmp_path / 'net'
    for name, kind, address in (('eth0', '1', '52:54:00:12:34:56'),
                                ('ib0', '32', '00:00:10:49:fe:80:00:00:00:00:00:00:11:22:33:44:55:66:77:88'),
                                ('ib1', '32', '00:00:10:49:fe:80:00:00:00:00:00:00:' + IPOIB['port_guid'])):
        (net / name).mkdir(parents=True)
        (net / name / 'type').write_text(kind + '\n')
        (net / name / 'address').write_text(address + '\n')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'ip').write_text('#!/bin/sh\necho "$@" >> %s\n' % (tmp_path / 'ip.log'))
    (bin_dir / 'ip').chmod(0o755)
    script = tmp_path / 'fabric.sh'
    script.write_text(files[_seed.FABRIC_SCRIPT_PATH]['content'].replace('/sys/class/net', str(net)))
    env = dict(os.environ, PATH='%s:%s' % (bin_dir, os.environ['PATH']))
    subprocess.run(['sh', str(script)], check=True, env=env)
    assert (net / 'ib1' / 'create_child').read_text() == '0x8101\n'
    assert not (net / 'ib0' / 'create_child').exists()
    assert (tmp_path / 'ip.log').read_text().splitlines() == [
        'link set dev ib1 up', 'link set dev ib1.8101 up', 'addr replace 10.224.1.1/24 dev ib1.8101']
    # An interface without the VF's GUID: the unit fails, naming it.
    (net / 'ib1' / 'address').write_text('00:00:10:49:fe:80:00:00:00:00:00:00:02:00:00:00:00:00:00:01\n')
    failed = subprocess.run(['sh', str(script)], env=env, capture_output=True, text=True, check=False)
    assert failed.returncode == 1 and 'no IPoIB interface has port GUID e2ad1bcf2448106c' in failed.stderr


@pytest.mark.parametrize('fabric, message', [
    (dict(ROCE, kind='myrinet'), 'fabric.kind must be ethernet or infiniband, not "myrinet"'),
    (dict(ROCE, pkey='0x8101'), 'fabric has keys pkey that a ethernet fabric does not take'),
    (dict(ROCE, address='10.224.0.2'), 'fabric.address "10.224.0.2" is not a host address with its prefix'),
    (dict(ROCE, address='10.224.0.0/24'), 'fabric.address "10.224.0.0/24" is not a host address'),
    (dict(ROCE, address='10.224.0.255/24'), 'fabric.address "10.224.0.255/24" is not a host address'),
    (dict(ROCE, address='10.224.0.2/31'), 'fabric.address "10.224.0.2/31" is not a host address'),
    (dict(ROCE, address='10.0.0.1/24; reboot'), 'fabric.address "10.0.0.1/24; reboot" is not'),
    (dict(ROCE, mac='96:BF:DF:86:C9'), 'fabric.mac "96:BF:DF:86:C9" is not 6 lower-case hex octets'),
    (dict(IPOIB, pkey='0x0101'), "fabric.pkey \"0x0101\" is not a full member's key"),
    (dict(IPOIB, pkey='0xffff'), "fabric.pkey \"0xffff\" is not a full member's key"),
    (dict(IPOIB, pkey='0x8101$(id)'), "fabric.pkey \"0x8101$(id)\" is not"),
    (dict(IPOIB, port_guid='e2ad1bcf2448106c'), 'fabric.port_guid "e2ad1bcf2448106c" is not 8 lower-case hex octets'),
])
def test_a_bad_fabric_is_refused_naming_the_field(tmp_path, capsys, fabric, message):
    result = run_module(slot_seed, args(tmp_path, fabric=fabric), capsys=capsys)
    assert result['failed'] and message in result['msg'], result['msg']
    assert not (tmp_path / 'seeds').exists()
