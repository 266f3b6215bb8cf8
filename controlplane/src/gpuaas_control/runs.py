# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One claimed job's playbook run through ansible-runner: a fresh private data directory,
``ident`` = the job id, a timeout, and a cancel callback that fires when the allocation's
release is requested, when the worker is asked to stop, or when the lease was lost. A
monitor thread renews the lease. Progress (task starts, failures) becomes allocation events
as it happens: a failed task's name for everyone, what it said (``msg``, ``stderr``) in the
event's ``detail`` for operators.

Secrets stay out of a run's files: the playbooks mark what carries one ``no_log``, and every
event has the values of ``SECRET_KEYS`` replaced before ansible-runner writes it (the
result's telemetry token is kept in memory for the allocation row only). The runs
directory is the worker's alone (0700); a run's directory is removed when it ends, or the
newest ``keep_runs`` are kept for debugging and older ones pruned."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import os
import shutil
import signal
import tempfile
import threading
import time

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from gpuaas_control import service
from gpuaas_control.config import Settings
from gpuaas_control.db import Database
from gpuaas_control.models import (
    JOB_ALLOCATE, JOB_NETWORK, JOB_REBOOT, JOB_START, JOB_STOP, RELEASING, Allocation, OutboxJob, utcnow)

log = logging.getLogger('gpuaas_control.worker')

CANCEL_RELEASE = 'release requested'
CANCEL_STOP = 'worker stopping'
CANCEL_LOST = 'claim lost'
RUN_PREFIX, DONE_PREFIX = 'job-', 'done-'
# Keys whose values are secrets, at any depth of an event: the allocation row keeps them.
SECRET_KEYS = frozenset({'telemetry_token'})
REDACTED = '********'


@dataclasses.dataclass
class Claim:
    """A claimed job and what running it needs (a snapshot: no session is kept open)."""

    job_id: int
    kind: str
    attempts: int
    token: str
    allocation_id: str
    tenant: str
    node_id: str
    slot_id: str
    slot_mac: str
    slot_ip: str
    allocation: dict
    # The approved slot record reserved for the allocation, as the slot table holds it: the node
    # checks this one slot against the host instead of discovering it whole.
    slot: dict
    queued_seconds: float
    # A cleanup (fleet.py): the release of a slot the allocation left on a node that stopped
    # answering, not of the allocation's own slot.
    cleanup: bool = False


@dataclasses.dataclass
class Outcome:
    status: str                  # successful, failed, timeout, canceled
    rc: int | None
    result: dict | None
    error: str | None
    seconds: float
    cancel_reason: str | None = None
    # What ansible said when the claim's node could not be reached (runner_on_unreachable);
    # None when it answered.
    unreachable: str | None = None


def short(text, limit=2000):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + '...'


def node_result(settings: Settings, what: str, playbook: str, node_id: str, extravars: dict,
                timeout: int) -> tuple[dict | None, str | None]:
    """A read-only playbook (telemetry, console) on one node, through ansible-runner in a private
    directory under the runs directory removed after: (its gpuaas_result stat, None), or (None,
    why not)."""
    import ansible_runner  # the API process never needs it

    captured = {}

    def on_event(event):
        data = event.get('event_data') or {}
        if event.get('event') == 'playbook_on_stats':
            captured['result'] = (data.get('artifact_data') or {}).get('gpuaas_result')
        elif event.get('event') in ('runner_on_failed', 'runner_on_unreachable') and not data.get('ignore_errors'):
            captured['error'] = '%s on %s: %s' % (data.get('task') or '?', data.get('host') or '?',
                                                  short((data.get('res') or {}).get('msg') or 'failed', 500))
        return True
    os.makedirs(settings.runs_dir, mode=0o700, exist_ok=True)
    private = tempfile.mkdtemp(prefix=what + '-', dir=settings.runs_dir)
    try:
        runner = ansible_runner.run(
            private_data_dir=private, project_dir=os.path.abspath(settings.project_dir),
            playbook=playbook, inventory=os.path.abspath(settings.inventory),
            extravars=dict(extravars, gpuaas_hosts=node_id),
            event_handler=on_event, timeout=timeout, quiet=True,
            settings={'pexpect_timeout': 0.5, 'suppress_ansible_output': True})
        status = runner.status
    except Exception as exc:  # noqa: BLE001 - ansible-runner raises bare exceptions
        return None, 'ansible-runner: %s' % exc
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if status != 'successful':
        return None, captured.get('error') or 'the %s playbook ended %s' % (what, status)
    result = captured.get('result')
    if not isinstance(result, dict) or result.get('node_id') != node_id:
        return None, 'the %s playbook returned no gpuaas_result for %s' % (what, node_id)
    return result, None


def seconds(value) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def redact(value):
    """``value`` with the value of every SECRET_KEYS key replaced, at any depth (in place)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in SECRET_KEYS and item is not None:
                value[key] = REDACTED
            else:
                redact(item)
    elif isinstance(value, list):
        for item in value:
            redact(item)
    return value


def private_dir(runs_dir: str, job_id: int) -> str:
    """A new private data directory for a run of ``job_id`` in ``runs_dir``, which is made
    the worker's alone (0700) whatever it was before."""
    os.makedirs(runs_dir, mode=0o700, exist_ok=True)
    if os.stat(runs_dir).st_mode & 0o077:
        log.warning('runs directory %s was open to others: made 0700', runs_dir)
        os.chmod(runs_dir, 0o700)
    return tempfile.mkdtemp(prefix='%s%d-' % (RUN_PREFIX, job_id), dir=runs_dir)


def finish(private: str, keep: int) -> None:
    """Remove a finished run's directory, or keep it (renamed ``done-...``) and remove all
    but the ``keep`` newest finished ones; runs still going (other workers') are not touched."""
    if not keep:
        shutil.rmtree(private, ignore_errors=True)
        return
    runs_dir, name = os.path.split(private)
    try:
        done = os.path.join(runs_dir, DONE_PREFIX + name)
        os.rename(private, done)
        os.utime(done)
        with os.scandir(runs_dir) as entries:
            runs = [(entry.stat(follow_symlinks=False).st_mtime, entry.path) for entry in entries
                    if entry.name.startswith(DONE_PREFIX) and entry.is_dir(follow_symlinks=False)]
    except OSError as exc:
        log.warning('could not keep or prune the run directory %s: %s', private, exc)
        return
    for _mtime, path in sorted(runs, reverse=True)[keep:]:
        shutil.rmtree(path, ignore_errors=True)


def extravars(claim: Claim) -> dict:
    """The node contract's extra vars of the claim's playbook."""
    if claim.kind == JOB_ALLOCATE:
        return {'gpuaas_hosts': claim.node_id, 'gpuaas_slot_id': claim.slot_id,
                'gpuaas_allocation': claim.allocation, 'gpuaas_slot': claim.slot}
    if claim.kind == JOB_NETWORK:
        return {'gpuaas_hosts': claim.node_id, 'gpuaas_network': claim.allocation['network']}
    return {'gpuaas_hosts': claim.node_id, 'gpuaas_slot_id': claim.slot_id,
            'gpuaas_allocation_id': claim.allocation_id}


def playbook_of(settings: Settings, kind: str) -> str:
    """The playbook a job of ``kind`` runs."""
    return {JOB_ALLOCATE: settings.allocate_playbook, JOB_STOP: settings.stop_playbook,
            JOB_START: settings.start_playbook, JOB_REBOOT: settings.reboot_playbook,
            JOB_NETWORK: settings.network_playbook}.get(kind, settings.release_playbook)


class Run:
    """One run of ``claim``'s playbook; ``stopping`` is the worker's stop request."""

    def __init__(self, db: Database, settings: Settings, stopping: threading.Event, claim: Claim):
        self.db, self.settings, self.stopping, self.claim = db, settings, stopping, claim

    def execute(self) -> Outcome:
        """Run the playbook; what came back (never raises for a failed run)."""
        import ansible_runner  # imported here: the API process never needs it

        claim = self.claim
        cancel = {'reason': None}
        done = threading.Event()
        monitor = threading.Thread(target=self._monitor, args=(cancel, done), daemon=True)
        captured = {'result': None, 'error': None, 'unreachable': None}

        def on_event(event):
            self._on_event(event, captured)
            redact(event)   # what ansible-runner writes next
            return True

        private = private_dir(self.settings.runs_dir, claim.job_id)
        playbook = playbook_of(self.settings, claim.kind)
        started = time.monotonic()
        monitor.start()
        try:
            runner = ansible_runner.run(
                private_data_dir=private,
                ident=str(claim.job_id),
                project_dir=os.path.abspath(self.settings.project_dir),
                playbook=playbook,
                inventory=os.path.abspath(self.settings.inventory),
                extravars=extravars(claim),
                cancel_callback=lambda: cancel['reason'] is not None,
                event_handler=on_event,
                timeout=self.settings.job_timeout,
                settings={'pexpect_timeout': 0.5, 'suppress_ansible_output': True},
                quiet=True,
            )
            status, rc = runner.status, runner.rc
        except Exception as exc:  # noqa: BLE001 - ansible-runner raises bare exceptions
            # (CallbackError, ConfigurationError, OSError): any is a failed attempt, not a crash.
            log.exception('job %d: ansible-runner failed', claim.job_id)
            status, rc = 'failed', None
            captured['error'] = captured['error'] or 'ansible-runner: %s' % exc
        finally:
            done.set()
            monitor.join()
            _end_leftovers(private)
            finish(private, self.settings.keep_runs)
        seconds = time.monotonic() - started
        error = captured['error']
        if status == 'timeout':
            error = 'the playbook ran past the job timeout (%ds)' % self.settings.job_timeout
        elif status == 'failed' and not error:
            error = 'the playbook failed (rc %s)' % rc
        return Outcome(status=status, rc=rc, result=captured['result'], error=error,
                       seconds=seconds, cancel_reason=cancel['reason'],
                       unreachable=captured['unreachable'])

    def _monitor(self, cancel: dict, done: threading.Event):
        """Renew the lease; cancel the run on a release request, a stop or a lost claim."""
        claim = self.claim
        interval = max(0.2, min(1.0, self.settings.lease_seconds / 3))
        while not done.wait(interval):
            if self.stopping.is_set():
                cancel['reason'] = CANCEL_STOP
                continue
            try:
                with self.db.write() as session:
                    renewed = session.execute(
                        update(OutboxJob).where(OutboxJob.id == claim.job_id,
                                                OutboxJob.claim_token == claim.token)
                        .values(lease_expires_at=utcnow() + seconds(self.settings.lease_seconds))
                        .execution_options(synchronize_session=False)).rowcount
                    state = session.execute(select(Allocation.state).where(
                        Allocation.id == claim.allocation_id)).scalar_one()
            except SQLAlchemyError:
                log.exception('job %d: could not renew the lease', claim.job_id)
                continue
            if not renewed:
                cancel['reason'] = CANCEL_LOST
            elif claim.kind == JOB_ALLOCATE and state == RELEASING:
                cancel['reason'] = CANCEL_RELEASE

    def _on_event(self, event: dict, captured: dict):
        claim = self.claim
        kind = event.get('event')
        data = event.get('event_data') or {}
        message, detail = None, None
        if kind == 'playbook_on_task_start':
            message, level = 'task: %s' % (data.get('task') or data.get('name') or '?'), 'progress'
        elif kind in ('runner_on_failed', 'runner_on_unreachable') and not data.get('ignore_errors'):
            result = data.get('res') or {}
            reason = result.get('msg') or result.get('stderr') or 'failed'
            # The task's name is the tenant's to read; what it said is the operator's.
            message = '%s: %s on %s' % ('unreachable' if kind == 'runner_on_unreachable'
                                        else 'failed', data.get('task') or '?',
                                        data.get('host') or '?')
            level, detail = 'error', short(reason, 500)
            captured['error'] = '%s: %s' % (message, detail)
            if kind == 'runner_on_unreachable' and data.get('host') == claim.node_id:
                captured['unreachable'] = detail
        elif kind == 'playbook_on_stats':
            artifact = data.get('artifact_data') or {}
            captured['result'] = copy.deepcopy(artifact.get('gpuaas_result'))
        if message is None:
            return
        try:
            payload = {'job': claim.job_id, 'attempt': claim.attempts}
            if detail is not None:
                payload['detail'] = detail
            self.db.transact(lambda s: service.add_event(s, claim.allocation_id, level, message, payload))
        except SQLAlchemyError:
            log.exception('job %d: could not record an event', claim.job_id)


def _leftovers(marker: str) -> set:
    """The processes of a run that outlived it. On a cancel or a timeout ansible-runner kills
    ansible-playbook's process group, but ansible-playbook's forked task workers run in a
    session of their own, so they (and the task they run) would carry on. Their command line
    is still ansible-playbook's, naming the run's private data directory; everything they
    started is found through the parent links."""
    table = {}
    try:
        entries = os.listdir('/proc')
    except OSError:
        return set()
    needle = marker.encode()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                cmdline = handle.read()
            with open('/proc/%s/stat' % entry, encoding='ascii', errors='replace') as handle:
                ppid = int(handle.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, needle in cmdline)
    found = {pid for pid, (_ppid, named) in table.items() if named}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _named) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    found.discard(os.getpid())
    return found


def _end_leftovers(marker: str):
    for pid in _leftovers(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            log.warning('killed process %d left over by a run in %s', pid, marker)
        except OSError:
            pass
