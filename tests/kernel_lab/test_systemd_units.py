# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_prep's systemd units, installed from the role and run by a real systemd as PID 1.

This machine has no systemd as PID 1, so elsewhere the units are only checked with
``systemd-analyze verify`` (tests/unit/roles). Here, in the kernel lab's systemd boot
(``kernel_lab.py run --systemd``: Debian's systemd on an overlay of the host's tree, with
the guest kernel's modules), they run for real and are driven through systemctl.

The role's systemd path is replayed, not run by ansible-playbook: under TCG every task
costs a Python start and Ansible's imports (measured: 86 s before the first task, 30-50 s
a task, about 15 minutes for host_prep). The replay takes what it does from the role
itself: its defaults and vars, the arguments of its tasks (rendered by Ansible's own
templating), its templates and its files, and it runs the host_network module as Ansible
does (``python host_network.py args.json``). In the role's order: start and enable
libvirtd and Open vSwitch (kernel datapath), create the node's directories, install the
sink, set up br-gpuaas, its gateway, nftables and dnsmasq's configuration, template the
units into /etc/systemd/system, daemon-reload, enable and start dnsmasq, the sink and the
reconcile timer. Not replayed (nothing of the units depends on them): the IOMMU check,
packages (the guest runs the host's tree, which has them), the vfio modules-load file,
the udev rule for VFs, /dev/kvm's owner. The reconcile unit runs the real
playbooks/reconcile.yml through ansible-playbook: that is what it does on a host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import COLLECTIONS, REPO

from .conftest import IN_LAB

SYSTEMD_LAB = (IN_LAB and os.environ.get('GPUAAS_KERNEL_LAB_MODE') == 'systemd'
               and os.path.isdir('/run/systemd/system'))
pytestmark = pytest.mark.skipif(
    not SYSTEMD_LAB, reason='needs systemd as PID 1: runs only in the kernel lab\'s systemd boot '
    '(kernel_lab.py run --systemd, part of make kernel-lab), where it installs and starts host_prep\'s units')

ROLE = os.path.join(REPO, 'roles', 'host_prep')
NODE = 'lab-guest'
UNIT_DIR = '/etc/systemd/system'
DNSMASQ = 'gpuaas-dnsmasq.service'
SINK = 'gpuaas-telemetry-sink.service'
RECONCILE = 'gpuaas-reconcile.service'
TIMER = 'gpuaas-reconcile.timer'
SINK_URL = 'http://10.100.0.1:9110/healthz'
BINDIR = os.path.dirname(sys.executable)


def systemctl(*args, check=True):
    proc = subprocess.run(['systemctl', '--no-pager'] + list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError('systemctl %s: exit %d\n%s%s\n%s' % (
            ' '.join(args), proc.returncode, proc.stdout, proc.stderr, journal(*[a for a in args if '.' in a])))
    return proc


def show(unit, *properties):
    out = systemctl('show', unit, *['--property=' + p for p in properties]).stdout
    return dict(line.split('=', 1) for line in out.splitlines() if '=' in line)


def journal(*units):
    argv = ['journalctl', '--no-pager', '-o', 'short-monotonic', '-n', '60']
    for unit in units:
        argv += ['-u', unit]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def wait_for(predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError('%s did not happen within %d s' % (what, timeout))


def sink_health():
    with urllib.request.urlopen(SINK_URL, timeout=10) as reply:
        return reply.status, json.loads(reply.read())


def sink_answers():
    try:
        return sink_health()[0] == 200
    except OSError:
        return False


class Role:
    """host_prep's defaults, vars and tasks, templated by Ansible as the role would be."""

    def __init__(self, extra):
        # Imported here: outside the systemd boot nothing of this runs.
        from ansible.parsing.dataloader import DataLoader
        from ansible.template import Templar, trust_as_template

        def trusted(value):
            if isinstance(value, str):
                return trust_as_template(value)
            if isinstance(value, dict):
                return {k: trusted(v) for k, v in value.items()}
            if isinstance(value, list):
                return [trusted(v) for v in value]
            return value
        self._trusted = trusted
        self.loader = DataLoader()
        self.variables = {}
        for part in ('defaults', 'vars'):
            self.variables.update(self.load(part, 'main.yml'))
        self.variables.update(trusted(extra))
        self.templar = Templar(loader=self.loader, variables=self.variables)

    def load(self, *path):
        return self._trusted(self.loader.load_from_file(os.path.join(ROLE, *path)))

    def task(self, tasks_file, name):
        return [t for t in self.load('tasks', tasks_file) if t.get('name') == name][0]

    def render(self, value):
        self.templar.available_variables = self.variables
        return self.templar.template(value)

    def template(self, name):
        with open(os.path.join(ROLE, 'templates', name + '.j2')) as handle:
            return self.render(self._trusted(handle.read()))


def module(name, args):
    """A collection module run as Ansible runs it (python module.py args.json); its result."""
    path = '/run/lab-%s-args.json' % name
    with open(path, 'w') as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': args}, handle)
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'plugins', 'modules', name + '.py'), path],
                          capture_output=True, text=True, check=False, timeout=600,
                          env=dict(os.environ, PYTHONPATH=COLLECTIONS))
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('%s printed no JSON (exit %d): %s %s'
                             % (name, proc.returncode, proc.stdout, proc.stderr)) from None


def enable(*units):
    """The symlinks ansible.builtin.systemd_service makes for enabled: true. It reloads systemd
    after each unit; here one daemon-reload follows (a reload costs 15-30 s under TCG)."""
    systemctl('enable', '--no-reload', *units)


@pytest.fixture(scope='module')
def inventory(tmp_path_factory):
    """The inventory the reconcile unit's playbook runs against: this guest, locally."""
    path = str(tmp_path_factory.mktemp('systemd-units') / 'inventory.json')
    with open(path, 'w') as handle:
        json.dump({'all': {'hosts': {NODE: {'ansible_connection': 'local',
                                            'ansible_python_interpreter': sys.executable}}}}, handle)
    return path


@pytest.fixture(scope='module')
def host_prep(inventory):
    """host_prep's systemd path, replayed from the role (see the module's docstring)."""
    start = time.monotonic()
    reconcile = ' '.join([
        '/usr/bin/env', 'ANSIBLE_CONFIG=%s' % os.path.join(REPO, 'ansible.cfg'),
        'ANSIBLE_COLLECTIONS_PATH=%s' % COLLECTIONS, 'ANSIBLE_FORCE_COLOR=0',
        os.path.join(BINDIR, 'ansible-playbook'), '-i', inventory, '-l', NODE,
        os.path.join(REPO, 'playbooks', 'reconcile.yml')])
    role = Role({'inventory_hostname': NODE, 'inventory_hostname_short': NODE, 'ansible_managed': 'Ansible managed', 'omit': '__omit__',
                 'gpuaas_reconcile_command': reconcile})
    # Start libvirt and Open vSwitch (systemd_base.yml).
    base = role.render(role.task('systemd_base.yml', 'Start libvirt and Open vSwitch (systemd)')['loop'])
    enable(*base)
    systemctl('start', *base)
    # Create the node's directories; install the telemetry sink.
    for item in role.render(role.task('main.yml', "Create the node's directories")['loop']):
        os.makedirs(item['path'], exist_ok=True)
        os.chmod(item['path'], int(item['mode'], 8))
    sink = role.render(role.task('main.yml', 'Install the telemetry sink')['ansible.builtin.copy'])
    shutil.copy(os.path.join(ROLE, 'files', sink['src']), sink['dest'])
    os.chmod(sink['dest'], int(sink['mode'], 8))
    # Set up the slot network: the real module, the role's arguments.
    task = role.task('main.yml', 'Set up the slot network (bridge, gateway, flows, dnsmasq configuration, NAT)')
    args = {k: v for k, v in role.render(task['gpuaas.slice.host_network']).items() if v != '__omit__'}
    network = module('host_network', args)
    assert not network.get('failed'), network
    role.variables[task['register']] = network
    # Install the units, daemon-reload, enable and start them (systemd_slots.yml).
    units = role.render(role.variables['gpuaas_units'])
    for unit in units:
        with open(os.path.join(UNIT_DIR, unit), 'w') as handle:
            handle.write(role.template(unit))
        os.chmod(os.path.join(UNIT_DIR, unit), 0o644)
    started = role.render(role.task('systemd_slots.yml', 'Enable and start dnsmasq and the telemetry sink (systemd)')
                          ['loop'])
    enable(*started)
    systemctl('daemon-reload')
    for unit in started:
        systemctl('start', unit)
    print('host_prep\'s systemd path took %.1f s' % (time.monotonic() - start))
    return {'units': units, 'started': started, 'network': network}


def test_the_role_installs_and_starts_its_units(host_prep):
    assert host_prep['units'] == [DNSMASQ, SINK, RECONCILE, TIMER]
    assert host_prep['started'] == [DNSMASQ, SINK, TIMER]
    for unit in host_prep['units']:
        assert show(unit, 'LoadState', 'FragmentPath') == {'LoadState': 'loaded',
                                                           'FragmentPath': os.path.join(UNIT_DIR, unit)}
    assert host_prep['network']['dnsmasq_argv'][0].endswith('dnsmasq')


def test_dnsmasq_and_the_sink_are_active_enabled_and_run_their_daemons(host_prep):
    for unit, comm in ((DNSMASQ, 'dnsmasq'), (SINK, 'python3')):
        assert systemctl('is-active', unit, check=False).stdout.strip() == 'active', journal(unit)
        assert systemctl('is-enabled', unit, check=False).stdout.strip() == 'enabled'
        pid = show(unit, 'MainPID')['MainPID']
        assert pid != '0', journal(unit)
        with open('/proc/%s/comm' % pid) as handle:
            assert handle.read().strip() == comm
    # dnsmasq serves DHCP on the bridge whose gateway its ExecStartPre put back.
    addresses = subprocess.run(['ip', '-o', 'address', 'show', 'dev', 'br-gpuaas'], capture_output=True,
                               text=True, check=True).stdout
    assert 'inet 10.100.0.1/24' in addresses
    listening = subprocess.run(['ss', '-H', '-lunp', 'sport = :67'], capture_output=True, text=True,
                               check=True).stdout
    assert 'pid=%s,' % show(DNSMASQ, 'MainPID')['MainPID'] in listening, listening


def test_the_sink_answers_on_its_port(host_prep):
    assert sink_health() == (200, {'status': 200, 'message': 'ok'})
    pid = show(SINK, 'MainPID')['MainPID']
    listening = subprocess.run(['ss', '-H', '-ltnp', 'sport = :9110'], capture_output=True, text=True,
                               check=True).stdout
    assert '10.100.0.1:9110' in listening and 'pid=%s,' % pid in listening, listening


def test_reconcile_runs_to_completion_on_the_empty_node(host_prep):
    """Started by hand (the timer may have started it already: then this waits for that run)."""
    start = time.monotonic()
    systemctl('start', RECONCILE)
    seconds = time.monotonic() - start
    state = show(RECONCILE, 'Result', 'ExecMainStatus', 'ActiveState', 'LoadState')
    # A oneshot without RemainAfterExit: done and inactive, its playbook exited 0.
    assert state == {'Result': 'success', 'ExecMainStatus': '0', 'ActiveState': 'inactive',
                     'LoadState': 'loaded'}, journal(RECONCILE)
    log = subprocess.run(['journalctl', '--no-pager', '-o', 'cat', '-u', RECONCILE], capture_output=True,
                         text=True, check=True).stdout
    assert 'PLAY RECAP' in log and 'failed=0' in log, log[-3000:]
    # Nothing to remove on an empty node: no task of the removals ran.
    assert 'changed=0' in log.split('PLAY RECAP')[-1], log[-3000:]
    print('gpuaas-reconcile.service ran for %.1f s' % seconds)


def test_the_reconcile_timer_is_loaded_and_scheduled(host_prep):
    wait_for(lambda: show(RECONCILE, 'ActiveState')['ActiveState'] != 'activating', 'the reconcile run ending',
             timeout=300)
    state = show(TIMER, 'LoadState', 'ActiveState', 'UnitFileState', 'NextElapseUSecMonotonic', 'Triggers')
    assert state['LoadState'] == 'loaded' and state['ActiveState'] == 'active', state
    assert state['UnitFileState'] == 'enabled' and state['Triggers'] == RECONCILE, state
    timers = systemctl('list-timers', '--all', '--no-legend', TIMER).stdout
    assert RECONCILE in timers, timers
    # NEXT is a time, not n/a: the timer is waiting for its next elapse.
    assert not timers.split()[0].startswith('n/a'), timers
    assert state['NextElapseUSecMonotonic'] not in ('', '0', 'infinity'), state


@pytest.mark.parametrize('unit', [SINK, DNSMASQ])
def test_a_unit_killed_with_sigkill_is_restarted(host_prep, unit):
    before = show(unit, 'MainPID', 'NRestarts', 'Restart')
    assert before['Restart'] == 'on-failure' and before['MainPID'] != '0', before
    systemctl('kill', '--signal=SIGKILL', '--kill-whom=main', unit)

    def restarted():
        now = show(unit, 'MainPID', 'NRestarts', 'ActiveState', 'SubState')
        return (now['ActiveState'], now['SubState']) == ('active', 'running') and \
            now['MainPID'] not in ('0', before['MainPID']) and int(now['NRestarts']) == int(before['NRestarts']) + 1
    wait_for(restarted, '%s coming back after SIGKILL' % unit, timeout=60)
    # Both daemons serve again, whichever was killed (the sink Requires= dnsmasq).
    for other in (SINK, DNSMASQ):
        wait_for(lambda other=other: show(other, 'ActiveState')['ActiveState'] == 'active',
                 '%s active after %s was killed' % (other, unit), timeout=60)
    wait_for(sink_answers, 'the sink answering again', timeout=60)


def test_systemd_analyze_verify_passes_on_the_installed_units(host_prep):
    units = [os.path.join(UNIT_DIR, u) for u in (DNSMASQ, SINK, RECONCILE, TIMER)]
    proc = subprocess.run(['systemd-analyze', 'verify', '--man=no'] + units, capture_output=True, text=True,
                          check=False)
    # Here every unit they name exists (libvirtd, openvswitch-switch): nothing may be missing.
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if 'gpuaas' in line], proc.stderr
