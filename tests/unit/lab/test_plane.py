# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab/plane.py, the labs' driver of the control plane: the real ``gpuaas serve`` and
``gpuaas worker`` come up on a database of their own, answer with the tokens it makes, and
are gone after stop()."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'lab'))
import plane  # noqa: E402  (lab/plane.py)

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(plane.BIN, 'gpuaas')),
                                reason='the control plane is not installed in this virtualenv')


def test_serve_and_worker_come_up_answer_and_stop(tmp_path):
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text('all:\n  hosts: {}\n')
    procs = plane.Plane(tmp_path, str(inventory), {'GPUAAS_POLL_INTERVAL': '0.3'})
    try:
        procs.gpuaas('db', 'upgrade')
        operator, tenant = procs.token('operator'), procs.token('tenant', 'acme')
        procs.up()
        assert procs.http('GET', '/v1/slots', operator) == (200, {'slots': []})
        assert procs.http('GET', '/v1/slots', tenant)[0] == 403
        assert procs.http('GET', '/v1/slots', 'not-a-token')[0] == 401
        assert procs.gpuaas('node', 'show', 'no-such-node', token=operator, check=False).returncode != 0
        with pytest.raises(plane.Failed, match="404: no node 'no-such-node'"):
            procs.gpuaas('node', 'show', 'no-such-node', token=operator)
        assert all(proc.poll() is None for proc in procs.procs), procs.log('worker')
    finally:
        procs.stop()
    assert all(proc.returncode is not None for proc in procs.procs)
    assert os.path.exists(tmp_path / 'serve.log') and os.path.exists(tmp_path / 'worker.log')
    shutil.rmtree(tmp_path / 'runs', ignore_errors=True)
