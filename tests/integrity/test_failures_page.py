# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docs/failures-we-prevent.md stays true: every test it names exists."""

from __future__ import annotations

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGE = os.path.join(REPO, 'docs', 'failures-we-prevent.md')
DEF = re.compile(r'^\s*(?:async\s+)?def (test_\w+)\(', re.M)


def test_every_test_the_page_names_exists():
    with open(PAGE) as handle:
        page = handle.read()
    files, defined = {}, {}
    for root, _dirs, names in os.walk(os.path.join(REPO, 'tests')):
        for name in names:
            if name.startswith('test_') and name.endswith('.py'):
                path = os.path.join(root, name)
                with open(path, errors='replace') as handle:
                    found = set(DEF.findall(handle.read()))
                files.setdefault(name, []).append(found)
                defined.setdefault(name[:-3], set())
                for test in found:
                    defined.setdefault(test, set()).add(name)
    missing = []
    # `file.py::test_name` (with or without a path): the test is in a file of that name.
    for name, test in re.findall(r'([\w/]*test_\w+\.py)::(test_\w+)', page):
        if not any(test in found for found in files.get(os.path.basename(name), [])):
            missing.append('%s::%s' % (name, test))
    for path in re.findall(r'(tests/[\w/]+\.py)', page):
        if not os.path.exists(os.path.join(REPO, path)):
            missing.append(path)
    # Any other name: a test function or a test file somewhere under tests/.
    for test in set(re.findall(r'\b(test_\w+)\b', page)):
        if test not in defined:
            missing.append(test)
    assert not missing, 'docs/failures-we-prevent.md names tests that do not exist: %s' % ', '.join(sorted(missing))
