# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot domain XML, built without libvirt and read back with xml.etree."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _domain
from ansible_collections.gpuaas.slice.plugins.module_utils._domain import DomainError, DomainSpec
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ContractError, Slot


def spec(**extra):
    base = dict(slot_id='gpu-node-01-s3', memory_mib=4096, cpulist='8-11,120-123', domain_type='kvm',
                numa_node=1, hostdevs=_domain.slot_hostdevs('0000:18:00.0', ['0000:18:00.1'],
                                                            '0000:1c:00.0', '0000:1a:00.1'),
                disk='/var/lib/gpuaas/disks/gpu-node-01-s3.raw', seed='/var/lib/gpuaas/seeds/s3.iso',
                console_log='/var/log/gpuaas/console/gpu-node-01-s3.log')
    base.update(extra)
    return DomainSpec(**base)


def tree(value):
    return ET.fromstring(_domain.build_xml(value))


def addresses(root):
    result = []
    for hostdev in root.findall('devices/hostdev'):
        assert hostdev.get('mode') == 'subsystem' and hostdev.get('type') == 'pci'
        assert hostdev.get('managed') == 'no'
        address = hostdev.find('source/address')
        result.append(dict(address.attrib))
    return result


@pytest.mark.parametrize('bdf,attrs', [
    ('0000:18:00.0', {'domain': '0x0000', 'bus': '0x18', 'slot': '0x00', 'function': '0x0'}),
    ('0001:1b:00.0', {'domain': '0x0001', 'bus': '0x1b', 'slot': '0x00', 'function': '0x0'}),
    ('0001:01:1f.7', {'domain': '0x0001', 'bus': '0x01', 'slot': '0x1f', 'function': '0x7'}),
    ('ffff:ff:1f.7', {'domain': '0xffff', 'bus': '0xff', 'slot': '0x1f', 'function': '0x7'}),
    ('10000:e1:00.0', {'domain': '0x10000', 'bus': '0xe1', 'slot': '0x00', 'function': '0x0'}),
    ('0002:AB:03.1', {'domain': '0x0002', 'bus': '0xab', 'slot': '0x03', 'function': '0x1'}),
])
def test_every_pci_domain(bdf, attrs):
    root = tree(spec(hostdevs=_domain.slot_hostdevs(bdf)))
    assert addresses(root) == [attrs]
    # and it reads back to the same canonical address
    assert _domain.domain_facts(_domain.build_xml(spec(hostdevs=_domain.slot_hostdevs(bdf))))['hostdevs'] \
        == ['%s managed=no' % bdf.lower()]


def test_segment_0001_slot_with_companions():
    hostdevs = _domain.slot_hostdevs('0001:01:00.0', ['0001:01:00.1', '0001:01:00.2'], '0001:02:00.0',
                                     '0001:03:00.1')
    root = tree(spec(hostdevs=hostdevs))
    assert [(a['domain'], a['bus'], a['function']) for a in addresses(root)] == [
        ('0x0001', '0x01', '0x0'), ('0x0001', '0x01', '0x1'), ('0x0001', '0x01', '0x2'),
        ('0x0001', '0x02', '0x0'), ('0x0001', '0x03', '0x1')]
    aliases = [h.find('alias').get('name') for h in root.findall('devices/hostdev')]
    assert aliases == ['ua-gpu0', 'ua-companion0', 'ua-companion1', 'ua-nvme0', 'ua-fabric-vf0']
    for hostdev in root.findall('devices/hostdev'):
        assert hostdev.find('driver').get('name') == 'vfio'


def test_hostdevs_left_out():
    root = tree(spec(hostdevs=[]))
    assert root.findall('devices/hostdev') == []


def test_nvme_is_the_boot_disk_without_a_disk_image():
    root = tree(spec(disk=None))
    boots = [(h.find('alias').get('name'), h.find('boot').get('order'))
             for h in root.findall('devices/hostdev') if h.find('boot') is not None]
    assert boots == [('ua-nvme0', '1')]
    assert root.findall('devices/disk[@device="disk"]') == []
    with_disk = tree(spec())
    assert [h for h in with_disk.findall('devices/hostdev') if h.find('boot') is not None] == []
    assert with_disk.find('devices/disk[@device="disk"]/boot').get('order') == '1'


@pytest.mark.parametrize('hostdevs,message', [
    ((None, None, '0000:18:00.0', '0000:18:00.0'), 'listed twice'),
    (('0000:18:00.0', ['0000:18:00.0'], None, None), 'listed twice'),
    (('18:00.0', None, None, None), 'not a full PCI address'),
    (('0000:18:00.8', None, None, None), 'not a full PCI address'),
    (("0000:18:00.0'/><hostdev", None, None, None), 'not a full PCI address'),
    ((None, ['0000:18:00.1'], None, None), 'companions were given without gpu_address'),
])
def test_bad_hostdevs(hostdevs, message):
    with pytest.raises(DomainError, match=message):
        _domain.slot_hostdevs(*hostdevs)


def test_cpu_pinning_and_numatune():
    root = tree(spec(vcpus=6))
    assert root.find('vcpu').text == '6'
    assert root.find('vcpu').get('cpuset') == '8-11,120-123'
    pins = [(p.get('vcpu'), p.get('cpuset')) for p in root.findall('cputune/vcpupin')]
    assert pins == [('0', '8'), ('1', '9'), ('2', '10'), ('3', '11'), ('4', '120'), ('5', '121')]
    assert root.find('cputune/emulatorpin').get('cpuset') == '8-11,120-123'
    memory = root.find('numatune/memory')
    assert (memory.get('mode'), memory.get('nodeset')) == ('strict', '1')
    assert tree(spec(numa_node=None)).find('numatune') is None
    assert len(tree(spec()).findall('cputune/vcpupin')) == 8


def test_a_slices_vcpus_pin_to_its_cpus_and_the_emulator_to_the_hosts():
    # Slot 0 of the sample 8-GPU host: CPUs 1-14,113-126; the host keeps 0,56,112,168.
    root = tree(spec(cpulist='1-14,113-126', vcpus=4, host_cpulist='0,56,112,168'))
    pins = [(p.get('vcpu'), p.get('cpuset')) for p in root.findall('cputune/vcpupin')]
    assert pins == [('0', '1'), ('1', '2'), ('2', '3'), ('3', '4')]
    assert root.find('vcpu').get('cpuset') == '1-14,113-126'
    assert root.find('cputune/emulatorpin').get('cpuset') == '0,56,112,168'
    memory = root.find('numatune/memory')
    assert (memory.get('mode'), memory.get('nodeset')) == ('strict', '1')
    facts = _domain.domain_facts(ET.tostring(root, encoding='unicode'))
    assert facts['emulatorpin'] == '0,56,112,168' and facts['vcpupin'][3] == [3, '4']


@pytest.mark.parametrize('host_cpulist, message', [
    ('0,8', "host_cpulist '0,8' shares CPUs 8 with the slot cpulist 8-11,120-123"),
    ('0-3\n', 'not a valid CPU list'),
    ('0;reboot', 'not a valid CPU list'),
])
def test_a_host_cpulist_on_the_vcpus_cpus_or_malformed_is_refused(host_cpulist, message):
    with pytest.raises(ContractError, match=message):
        spec(host_cpulist=host_cpulist)


@pytest.mark.parametrize('cpulist,vcpus,message', [
    ('8-11', 5, 'more than the 4 CPUs'),
    ('0-3;reboot', None, 'not a valid CPU list'),
    ('3-1', None, 'runs backwards'),
    ('', None, 'not a valid CPU list'),
    ('99999', None, 'beyond'),
    ('0-3', 0, 'positive'),
])
def test_bad_cpus(cpulist, vcpus, message):
    with pytest.raises(ContractError, match=message):
        spec(cpulist=cpulist, vcpus=vcpus)


def test_memory_and_hugepages():
    root = tree(spec(memory_mib=2048))
    assert root.find('memory').text == str(2048 * 1024) and root.find('memory').get('unit') == 'KiB'
    assert root.find('memoryBacking') is None
    assert tree(spec(hugepages=True)).find('memoryBacking/hugepages') is not None
    page = tree(spec(hugepages=True, hugepage_size_kib=1048576)).find('memoryBacking/hugepages/page')
    assert (page.get('size'), page.get('unit')) == ('1048576', 'KiB')
    with pytest.raises(DomainError, match='needs hugepages=true'):
        spec(hugepage_size_kib=2048)
    with pytest.raises(DomainError, match='at least 64'):
        spec(memory_mib=1)


def test_network_interface_openvswitch_and_linux():
    root = tree(spec())
    iface = root.find('devices/interface')
    assert iface.get('type') == 'bridge'
    assert iface.find('mac').get('address') == Slot('gpu-node-01', 3).mac
    assert iface.find('source').get('bridge') == 'br-gpuaas'
    assert iface.find('virtualport').get('type') == 'openvswitch'
    assert iface.find('model').get('type') == 'virtio'
    tap = iface.find('target').get('dev')
    assert tap == Slot.parse('gpu-node-01-s3').tap and len(tap) <= 15
    linux = tree(spec(bridge='br-test', bridge_type='linux')).find('devices/interface')
    assert linux.find('virtualport') is None and linux.find('source').get('bridge') == 'br-test'
    # ethernet: the VM opens the tap the slot network made (and filtered) beforehand.
    eth = tree(spec(bridge_type='ethernet')).find('devices/interface')
    assert eth.get('type') == 'ethernet' and eth.find('source') is None
    assert eth.find('virtualport') is None
    assert eth.find('target').get('dev') == tap and eth.find('target').get('managed') == 'no'
    assert eth.find('mac').get('address') == Slot('gpu-node-01', 3).mac
    # The guest sends whole checksums (the userspace datapath does not complete them).
    assert eth.find('driver/host').get('csum') == 'off'
    for bridge in ('br0;reboot', 'a' * 16, 'br 0', 'br/0', ''):
        with pytest.raises(ContractError, match='not a valid network interface name'):
            spec(bridge=bridge)


def test_names_derive_from_the_slot_id_only():
    value = spec()
    assert value.name == 'gpuaas-gpu-node-01-s3'
    assert tree(value).findtext('name') == 'gpuaas-gpu-node-01-s3'
    # The longest node id and the highest index still give a tap name the kernel accepts.
    long_id = 'n' * 63 + '-s244'
    assert len(Slot.parse(long_id).tap) <= 15
    assert Slot.parse('a-s0').tap != Slot.parse('b-s0').tap
    for hostile in ('../../x-s0', 'x-s0<y>', "x'-s0", 'x-s0; reboot', 'x-s0\n', 'tenant name-s0', 'x-s999'):
        with pytest.raises(ContractError):
            spec(slot_id=hostile)
    # DomainSpec has no parameter a tenant string could come through for a name.
    assert 'hostname' not in DomainSpec.__init__.__code__.co_varnames


def test_seed_cdrom_serial_log_and_disk_kinds():
    root = tree(spec())
    cdrom = root.find('devices/disk[@device="cdrom"]')
    assert cdrom.find('source').get('file') == '/var/lib/gpuaas/seeds/s3.iso'
    assert cdrom.find('target').attrib == {'dev': 'sda', 'bus': 'scsi'}
    assert cdrom.find('readonly') is not None
    assert root.find('devices/controller[@type="scsi"]').get('model') == 'virtio-scsi'
    log = root.find('devices/serial/log')
    assert log.get('file') == '/var/log/gpuaas/console/gpu-node-01-s3.log'
    assert root.find('devices/console/target').get('type') == 'serial'
    disk = root.find('devices/disk[@device="disk"]')
    assert disk.get('type') == 'file' and disk.find('source').get('file').endswith('.raw')
    block = tree(spec(disk='/dev/nvme3n1', disk_is_block=True)).find('devices/disk[@device="disk"]')
    assert block.get('type') == 'block' and block.find('source').get('dev') == '/dev/nvme3n1'
    assert block.find('driver').get('cache') == 'none'
    assert tree(spec(seed=None)).find('devices/disk[@device="cdrom"]') is None


def test_domain_type_and_cpu_model():
    assert tree(spec()).get('type') == 'kvm'
    assert tree(spec()).find('cpu').get('mode') == 'host-passthrough'
    assert tree(spec()).find('cpu/maxphysaddr') is None
    qemu = tree(spec(domain_type='qemu'))
    assert qemu.get('type') == 'qemu' and qemu.find('cpu') is None
    with pytest.raises(DomainError, match='domain_type'):
        spec(domain_type='xen')


def test_direct_kernel_boot():
    root = tree(spec(kernel='/srv/vmlinuz', initrd='/srv/initrd.img', cmdline='console=ttyS0 quiet'))
    assert root.findtext('os/kernel') == '/srv/vmlinuz'
    assert root.findtext('os/initrd') == '/srv/initrd.img'
    assert root.findtext('os/cmdline') == 'console=ttyS0 quiet'
    with pytest.raises(DomainError, match='need kernel'):
        spec(initrd='/srv/initrd.img')


HOSTILE = '''a&b<c>d"e'f]]>g</os><devices><hostdev/></devices>$(reboot);`id`|x\\y'''


def test_everything_is_escaped():
    value = spec(disk='/var/lib/x/%s.raw' % HOSTILE.replace('/', '_'), seed='/s/%s' % HOSTILE.replace('/', '_'),
                 kernel='/k/' + HOSTILE.replace('/', '_'), initrd='/i/' + HOSTILE.replace('/', '_'),
                 cmdline=HOSTILE, console_log='/l/' + HOSTILE.replace('/', '_'))
    text = _domain.build_xml(value)
    root = ET.fromstring(text)   # well-formed
    assert root.findtext('os/cmdline') == HOSTILE
    assert root.findtext('os/kernel') == '/k/' + HOSTILE.replace('/', '_')
    assert len(root.findall('devices/hostdev')) == 4   # none injected
    facts = _domain.domain_facts(text)
    assert facts['cmdline'] == HOSTILE
    assert '/s/' + HOSTILE.replace('/', '_') in [d['source'] for d in facts['disks']]


@pytest.mark.parametrize('field', ['cmdline', 'disk', 'seed', 'kernel', 'console_log'])
@pytest.mark.parametrize('bad', ['a\nb', 'a\x00b', 'a\x1bb', 'a\u2028b', 'a\x7fb'])
def test_control_characters_refused(field, bad):
    value = bad if field == 'cmdline' else '/x/' + bad
    extra = {field: value}
    if field == 'cmdline':
        extra['kernel'] = '/k'
    with pytest.raises(DomainError, match='control characters'):
        spec(**extra)


@pytest.mark.parametrize('field', ['disk', 'seed', 'kernel', 'initrd', 'console_log'])
def test_paths_must_be_absolute_without_dotdot(field):
    extra = {field: '/var/lib/../../etc/shadow'}
    if field == 'initrd':
        extra['kernel'] = '/k'
    with pytest.raises(DomainError, match="without '..'"):
        spec(**extra)
    extra[field] = 'relative/path'
    with pytest.raises(DomainError, match='absolute'):
        spec(**extra)


def test_the_guest_agent_has_its_channel_and_a_domain_without_it_is_not_redefined():
    root = tree(spec())
    (channel,) = root.findall('devices/channel')
    assert channel.get('type') == 'unix' and channel.find('source') is None   # libvirt picks the socket
    assert channel.find('target').attrib == {'type': 'virtio', 'name': 'org.qemu.guest_agent.0'}
    # A domain defined before the channel existed reads back the same: no redefine for it.
    before = ET.fromstring(_domain.build_xml(spec()))
    before.find('devices').remove(before.find('devices/channel'))
    assert _domain.differences(_domain.domain_facts(ET.tostring(before, encoding='unicode')),
                               _domain.domain_facts(_domain.build_xml(spec()))) == []


def test_facts_and_differences():
    base = _domain.domain_facts(_domain.build_xml(spec()))
    assert base['memory_mib'] == 4096
    assert base['vcpupin'][:2] == [[0, '8'], [1, '9']]
    assert base['numatune'] == 'strict:1'
    assert base['slot_id'] == 'gpu-node-01-s3'
    assert _domain.differences(base, base) == []
    other = _domain.domain_facts(_domain.build_xml(spec(memory_mib=8192, hostdevs=[])))
    changes = _domain.differences(base, other)
    assert any(c.startswith('memory_mib: ') for c in changes)
    assert any(c.startswith('hostdevs: ') and c.endswith('-> none') for c in changes)


def test_facts_read_libvirts_normalised_spelling():
    """libvirt writes cpusets, units and hex its own way; the facts do not change."""
    ours = _domain.domain_facts(_domain.build_xml(spec(vcpus=2)))
    theirs = _domain.build_xml(spec(vcpus=2)).replace('<memory unit="KiB">4194304</memory>',
                                                      '<memory unit="MiB">4096</memory>')
    theirs = theirs.replace('cpuset="8-11,120-123"', 'cpuset="8,9,10,11,120-123"')
    theirs = theirs.replace("bus=\"0x18\"", "bus=\"0x18\"").replace('domain="0x0000"', 'domain="0x0"')
    assert _domain.differences(_domain.domain_facts(theirs), ours) == []
    # In MiB, without losing what does not make a whole MiB.
    odd = _domain.domain_facts(theirs.replace('<memory unit="MiB">4096</memory>', '<memory unit="KiB">4194305</memory>'))
    assert _domain.differences(odd, ours) == ['memory_mib: 4096.0009765625 -> 4096']


def test_uuid_is_kept():
    root = ET.fromstring(_domain.build_xml(spec(), uuid='4bec8473-e2b4-43ac-b837-079237ce17d3'))
    assert root.findtext('uuid') == '4bec8473-e2b4-43ac-b837-079237ce17d3'
    assert tree(spec()).find('uuid') is None


def test_format_cpulist():
    assert _domain.format_cpulist([5, 0, 1, 2, 8, 9]) == '0-2,5,8-9'
    assert _domain.format_cpulist([3]) == '3'


def _hostdev_lines(xml):
    return [h.split(' ')[0] for h in _domain.domain_facts(xml)['hostdevs']]


def test_restore_hostdevs_puts_back_only_what_is_missing_and_keeps_the_rest():
    spec = _domain.DomainSpec(slot_id='gpu-node-01-s0', memory_mib=1024, cpulist='0-1', disk='/var/lib/gpuaas/disks/s0.raw',
                              hostdevs=[('gpu', '0000:1b:00.0')])
    have = _domain.build_xml(spec, uuid='6f1c3e4a-0000-4000-8000-000000000001')
    wanted = _domain.slot_hostdevs('0000:1b:00.0', ['0000:1b:00.1'], '0001:1c:00.0')
    xml, added = _domain.restore_hostdevs(have, wanted)
    assert added == ['0000:1b:00.1', '0001:1c:00.0']
    assert _hostdev_lines(xml) == ['0000:1b:00.0', '0000:1b:00.1', '0001:1c:00.0']
    assert 'ua-companion0' in xml and 'ua-nvme0' in xml and xml.count('ua-gpu0') == 1
    assert '<boot order="1" />' in xml and xml.count('<boot ') == 1          # the disk boots, not the NVMe
    before = dict(_domain.domain_facts(have), hostdevs=None)
    assert dict(_domain.domain_facts(xml), hostdevs=None) == before
    assert _domain.restore_hostdevs(xml, wanted) == (xml, [])


def test_a_restored_nvme_boots_a_diskless_slot_instead_of_libvirts_default():
    spec = _domain.DomainSpec(slot_id='gpu-node-01-s0', memory_mib=1024, cpulist='0-1')
    # libvirt's normalised copy of a domain without per-device boot has <os><boot dev='hd'/>.
    have = _domain.build_xml(spec).replace("</type>", "</type><boot dev='hd' />")
    xml, added = _domain.restore_hostdevs(have, _domain.slot_hostdevs('0000:1b:00.0', [], '0000:1c:00.0'))
    assert added == ['0000:1b:00.0', '0000:1c:00.0']
    assert "dev='hd'" not in xml and 'dev="hd"' not in xml
    nvme = [h for h in xml.split('<hostdev ') if '0x1c' in h][0]
    assert '<boot order="1" />' in nvme


def test_uefi_is_ovmf_without_secure_boot_and_a_variable_store_of_the_domains_own():
    root = tree(spec())
    os_el = root.find('os')
    assert os_el.get('firmware') == 'efi'
    assert [(f.get('name'), f.get('enabled')) for f in os_el.findall('firmware/feature')] == [('secure-boot', 'no')]
    assert os_el.findtext('nvram') == '/var/lib/gpuaas/nvram/gpu-node-01-s3_VARS.fd'
    assert tree(spec(nvram='/srv/nvram/s3.fd')).findtext('os/nvram') == '/srv/nvram/s3.fd'
    bios = tree(spec(firmware='bios'))
    assert bios.find('os').get('firmware') is None and bios.find('os/nvram') is None
    assert bios.find('os/firmware') is None
    facts = _domain.domain_facts(_domain.build_xml(spec()))
    assert (facts['firmware'], facts['secure_boot'], facts['nvram']) == (
        'uefi', 'no', '/var/lib/gpuaas/nvram/gpu-node-01-s3_VARS.fd')
    changes = _domain.differences(facts, _domain.domain_facts(_domain.build_xml(spec(firmware='bios'))))
    assert 'firmware: uefi -> bios' in changes
    # libvirt's copy may name the loader instead of the firmware attribute: still UEFI.
    theirs = _domain.build_xml(spec(firmware='bios')).replace(
        '<os>', '<os><loader readonly="yes" type="pflash">/usr/share/OVMF/OVMF_CODE_4M.fd</loader>')
    assert _domain.domain_facts(theirs)['firmware'] == 'uefi'


@pytest.mark.parametrize('extra, message', [
    ({'firmware': 'coreboot'}, "firmware must be one of uefi, bios, not 'coreboot'"),
    ({'nvram': 'relative.fd'}, "nvram 'relative.fd' must be an absolute path"),
    ({'nvram': '/var/lib/gpuaas/../x.fd'}, "without '..'"),
    ({'phys_bits': 39}, 'phys_bits must be a whole number from 40 to 52, not 39'),
    ({'phys_bits': 53}, 'phys_bits must be a whole number from 40 to 52'),
    ({'phys_bits': True}, 'phys_bits must be'),
    ({'standin_bar_gib': 3}, 'lab_standin_bar_gib must be a power of two from 1 to 1024 (GiB), not 3'),
    ({'standin_bar_gib': 0.5}, 'lab_standin_bar_gib must be a power of two'),
    ({'standin_bar_gib': 128, 'machine': 'pc-i440fx-7.2'}, 'lab_standin_bar_gib needs a q35 machine'),
])
def test_firmware_cpu_and_stand_in_refusals(extra, message):
    with pytest.raises(DomainError) as caught:
        spec(**extra)
    assert message in str(caught.value)


def test_the_guest_cpu_addresses_the_slots_memory_and_bars():
    kvm = tree(spec(phys_bits=41)).find('cpu')
    assert kvm.get('mode') == 'host-passthrough'
    assert kvm.find('maxphysaddr').attrib == {'mode': 'passthrough'}
    tcg = tree(spec(domain_type='qemu', phys_bits=40)).find('cpu')
    assert (tcg.get('mode'), tcg.findtext('model'), tcg.find('feature')) == ('custom', 'qemu64', None)
    assert tcg.find('maxphysaddr').attrib == {'mode': 'emulate', 'bits': '40'}
    # Above 40 bits OVMF needs 1 GiB pages to use them.
    wide = tree(spec(domain_type='qemu', phys_bits=42)).find('cpu')
    assert wide.find('feature').attrib == {'policy': 'require', 'name': 'pdpe1gb'}
    assert wide.find('maxphysaddr').get('bits') == '42'
    facts = _domain.domain_facts(_domain.build_xml(spec(domain_type='qemu', phys_bits=42)))
    assert facts['maxphysaddr'] == 'emulate:42'
    assert _domain.differences(facts, _domain.domain_facts(_domain.build_xml(
        spec(domain_type='qemu', phys_bits=41)))) == ['maxphysaddr: emulate:42 -> emulate:41']


def test_the_lab_stand_in_is_a_pci_testdev_behind_its_own_root_port_and_only_when_asked():
    assert tree(spec()).find('{%s}commandline' % _domain.QEMU_NS) is None
    root = tree(spec(standin_bar_gib=128))
    args = [a.get('value') for a in root.findall('{%s}commandline/{%s}arg' % (_domain.QEMU_NS, _domain.QEMU_NS))]
    assert args == ['-device', 'pcie-root-port,id=gpuaas-standin-port,bus=pcie.0,addr=0x1e,chassis=200',
                    '-device', 'pci-testdev,bus=gpuaas-standin-port,membar=128G,id=gpuaas-standin']
    facts = _domain.domain_facts(_domain.build_xml(spec(standin_bar_gib=128)))
    assert facts['qemu_args'] == args
    assert _domain.differences(facts, _domain.domain_facts(_domain.build_xml(spec())))[0].startswith('qemu_args: ')
