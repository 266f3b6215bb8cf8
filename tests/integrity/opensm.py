# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""partitions.conf read by OpenSM's own parser (``opensm_parser``, a pytest fixture).

Debian's opensm parses partitions.conf only in a heavy sweep, which needs an InfiniBand port.
tests/fixtures/opensm/parse_partitions.c, preloaded into /usr/sbin/opensm, runs the parser
opensm exports (osm_prtn_config_parse_file) on a subnet of stand-in ports, prints the
partitions it built and exits before opensm's main(). It is built once per test session with
gcc against libopensm-dev (hack/setup.sh installs opensm, libopensm-dev and libibumad-dev);
without them ``opensm_parser`` is None and ``opensm_required`` skips, naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

OPENSM = '/usr/sbin/opensm'
SOURCE = os.path.join(REPO, 'tests', 'fixtures', 'opensm', 'parse_partitions.c')
HEADERS = '/usr/include/infiniband/opensm/osm_partition.h'


def parse(library, path, ports):
    """{pkey: {guid: 'full' | 'limited'}} of every partition OpenSM built from ``path``, with
    ``ports`` (0x GUIDs) as the subnet's ports; AssertionError on a PARSE ERROR, a GUID that
    is no port of the subnet, or a parser that did not finish."""
    env = dict(os.environ, LD_PRELOAD=library, GPUAAS_OSM_PARSE=path, GPUAAS_OSM_PORTS=' '.join(sorted(ports)))
    proc = subprocess.run([OPENSM], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, 'OpenSM did not parse %s (status %d): %s' % (path, proc.returncode, proc.stderr)
    assert 'PARSE ERROR' not in proc.stderr, proc.stderr
    # SELF is the SM's own port, which this subnet has not got (GUID 0).
    unknown = [line for line in proc.stderr.splitlines() if 'not found' in line and 'port 0x0 not found' not in line]
    assert not unknown, 'OpenSM found GUIDs that are no port: %s' % unknown
    partitions = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        limited = words.index('limited')
        members = dict((guid, 'full') for guid in words[3:limited])
        members.update((guid, 'limited') for guid in words[limited + 1:])
        partitions[int(words[1], 16)] = members
    return partitions


@pytest.fixture(scope='session')
def opensm_parser(tmp_path_factory):
    """``opensm_parser(path, ports)`` -> {pkey: {guid: membership}}, as OpenSM itself reads the
    file; None where OpenSM or what builds the parser is missing (``opensm_required`` skips)."""
    if missing():
        return None
    library = str(tmp_path_factory.mktemp('opensm') / 'parse_partitions.so')
    subprocess.run(['gcc', '-shared', '-fPIC', '-I/usr/include/infiniband', '-o', library, SOURCE, '-losmcomp',
                    '-lopensm'], check=True, capture_output=True, text=True)
    return lambda path, ports: parse(library, path, ports)


@pytest.fixture
def opensm_required(opensm_parser):
    """``opensm_parser``, or the test is skipped naming what is missing."""
    if opensm_parser is None:
        pytest.skip('OpenSM\'s parser needs %s (hack/setup.sh installs them)' % ', '.join(missing()))
    return opensm_parser


def missing():
    return [what for what, there in ((OPENSM, os.path.exists(OPENSM)), ('gcc', shutil.which('gcc')),
                                     (HEADERS + ' (libopensm-dev)', os.path.exists(HEADERS))) if not there]
