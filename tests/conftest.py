# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make the checkout importable as the collection gpuaas.slice, and shared fixtures."""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, '.build', 'collections')
LINK = os.path.join(COLLECTIONS, 'ansible_collections', 'gpuaas', 'slice')

if not os.path.islink(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(REPO, LINK)
for path in (COLLECTIONS, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)
# What Ansible runs from here (playbooks, the worker's jobs) is this checkout's collection too,
# never a copy installed in ~/.ansible/collections.
os.environ['ANSIBLE_COLLECTIONS_PATH'] = COLLECTIONS


@pytest.fixture
def host_tree(tmp_path):
    """Build one of the sample hosts of tests/sysfs/hosts.py: ``host_tree('hgx')``."""
    from tests.sysfs import hosts

    def build(name, **kwargs):
        return hosts.HOSTS[name](str(tmp_path / name), **kwargs)
    return build


def pytest_sessionfinish(session, exitstatus):
    """In CI (CI=true) a skipped test fails the run: CI has root and every package the
    suite installs, so a skip there means a test did not see what it checks (a leftover
    of an earlier run, a missing install step), and a green run would hide that."""
    if os.environ.get('CI') != 'true' or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin('terminalreporter')
    skipped = reporter.stats.get('skipped', []) if reporter is not None else []
    if skipped:
        reporter.write_sep('=', 'CI: %d test(s) skipped; in CI every test must run' % len(skipped), red=True)
        for report in skipped:
            why = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
            reporter.write_line('  %s: %s' % (report.nodeid, why))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
