# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The whole telemetry path, every part real: the guest agent posts to the telemetry sink
(both processes from their files), and the control plane collects the sink's summary through
ansible-runner running the collection's own playbooks/telemetry.yml (module telemetry_info)
on the node (here: this machine, ansible_connection=local; the sink's data under tmp_path, so
nothing touches /var/lib/gpuaas)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import yaml
from sqlalchemy import select, update

from gpuaas_control import telemetry
from gpuaas_control.config import Settings
from gpuaas_control.models import AuditEntry, Event, Node, Slot, utcnow
from gpuaas_control.schemas.views import TelemetryView
from tests.conftest import REPO
from tests.controlplane.helpers import OPERATOR, tenant
from tests.functional.telemetry.test_guest_agent_sink import free_port, wait_for_port
from tests.unit.roles.h100_guest import AGENT_FILE, build_sysfs

pytestmark = [pytest.mark.slow, pytest.mark.backends('sqlite')]
SINK = REPO + '/roles/host_prep/files/gpuaas_telemetry_sink.py'
TOKEN = 'collect-token-' + 'q' * 32


def test_a_failed_acceptance_travels_from_the_guest_to_the_api(db, db_url, running_allocation, tmp_path):
    tokens, data = tmp_path / 'tokens', tmp_path / 'data'
    tokens.mkdir()
    (tokens / 'n1-s0.json').write_text(json.dumps({
        'allocation_id': running_allocation.id, 'slot_id': running_allocation.slot_id, 'ip': '127.0.0.1',
        'token_sha256': hashlib.sha256(TOKEN.encode()).hexdigest()}))
    port = free_port()
    sink = subprocess.Popen([sys.executable, SINK, '--listen', '127.0.0.1', '--port', str(port),
                             '--token-dir', str(tokens), '--data-dir', str(data)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        env = tmp_path / 'telemetry.env'
        env.write_text('GPUAAS_TELEMETRY_SINK=http://127.0.0.1:%d/metrics\nGPUAAS_TELEMETRY_TOKEN=%s\n'
                       'GPUAAS_ALLOCATION_ID=%s\n' % (port, TOKEN, running_allocation.id))
        (tmp_path / 'slot.json').write_text(json.dumps({'gpu_model': '10de:2330', 'link_speed': '32.0 GT/s PCIe',
                                                        'link_width': 16, 'nvme': False, 'fabric_vf': False}))
        # The GPU trained at x8: the slot fails acceptance.
        sysfs = build_sysfs(tmp_path / 'sys', gpu_attrs={'current_link_width': '8'})
        agent = subprocess.run([sys.executable, AGENT_FILE, '--env-file', str(env), '--slot-file',
                                str(tmp_path / 'slot.json'), '--state-dir', str(tmp_path / 'state'),
                                '--sysfs', str(sysfs), '--once'],
                               capture_output=True, text=True, timeout=120, env={'PATH': '/usr/bin:/bin'}, check=False)
        assert agent.returncode == 0, agent.stderr
    finally:
        sink.terminate()
        sink.wait(5)

    inventory = tmp_path / 'inventory.yml'
    inventory.write_text(yaml.safe_dump({'all': {'hosts': {'n1': {
        'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
        'gpuaas_telemetry_data_dir': str(data)}}}}))
    settings = Settings(db_url=db_url, project_dir=REPO, inventory=str(inventory), runs_dir=str(tmp_path / 'runs'),
                        acceptance_policy='quarantine')
    assert telemetry.collect(db, settings, OPERATOR) == {
        'n1': {'recorded': 1, 'missing': 0, 'refused': 0, 'acceptance_failed': 1}}

    with db.read() as session:
        allocation, row = telemetry.get(session, tenant('acme'), running_allocation.id)
        view = TelemetryView.of(allocation, row, tenant('acme')).model_dump(mode='json')
        events = [e.message for e in session.execute(select(Event).where(Event.allocation_id == running_allocation.id)).scalars()]
        actions = [a.action for a in session.execute(select(AuditEntry)).scalars()]
        slot = session.get(Slot, running_allocation.slot_id)
        assert (slot.approved, slot.state_reason.startswith('quarantined: slot acceptance failed')) == (False, True)
    assert view['samples'] == 2 and view['health']['gpu'] == {'available': False, 'reason': 'nvidia-smi is not installed'}
    assert view['acceptance']['status'] == 'failed' and view['acceptance']['failed'] == ['link_width']
    assert {'name': 'link_width', 'status': 'failed', 'reason': 'link x8, approved x16'} in view['acceptance']['checks']
    assert 'slot acceptance failed: link_width' in events
    assert actions[-2:] == ['slot.acceptance_failed', 'slot.quarantine']
    assert not list((tmp_path / 'runs').iterdir())       # the run's private directory is gone
    # Collected again: nothing new to report.
    assert telemetry.collect(db, settings, OPERATOR)['n1']['acceptance_failed'] == 0


def test_a_node_that_cannot_be_read_is_reported(db, db_url, running_allocation, tmp_path):
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text(yaml.safe_dump({'all': {'hosts': {'n1': {
        'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
        'gpuaas_telemetry_data_dir': str(tmp_path / 'a-file')}}}}))
    (tmp_path / 'a-file').write_text('')
    settings = Settings(db_url=db_url, project_dir=REPO, inventory=str(inventory), runs_dir=str(tmp_path / 'runs'))
    report = telemetry.collect(db, settings, OPERATOR)
    assert 'is not a directory' in report['n1']['error'] and 'Read the sink' in report['n1']['error']


def test_an_unreachable_node_is_not_read_until_it_answers(db, db_url, running_allocation, tmp_path, monkeypatch):
    """The worker's probe owns an unreachable node: collecting telemetry (or consoles) from it
    would only spend the playbook's timeout every interval."""
    asked = []
    monkeypatch.setattr(telemetry, 'run_playbook', lambda settings, node, ids: asked.append(node) or (None, 'no'))
    settings = Settings(db_url=db_url, project_dir=REPO, inventory=str(tmp_path / 'none.yml'),
                        runs_dir=str(tmp_path / 'runs'))
    db.transact(lambda s: s.execute(update(Node).where(Node.id == 'n1').values(unreachable_since=utcnow())))
    assert telemetry.collect(db, settings, OPERATOR) == {} and asked == []
    db.transact(lambda s: s.execute(update(Node).where(Node.id == 'n1').values(unreachable_since=None)))
    assert telemetry.collect(db, settings, OPERATOR) == {'n1': {'error': 'no'}} and asked == ['n1']
