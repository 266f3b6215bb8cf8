# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's tenant matrix: which slot must reach which, checked against what the guests reached.

Independent of how the guests' probes are collected (the test guest posts them to the sink;
a Debian guest may be asked over SSH): the input is, per slot, the addresses its own packets
reached, or None when no probe came back.
"""

import ipaddress


def expected(tenants):
    """{(src, dst): True when src and dst are slots of one tenant} for every ordered pair of slots."""
    return dict(((src, dst), tenants[src] == tenants[dst]) for src in sorted(tenants) for dst in sorted(tenants)
                if src != dst)


def parse_reached(value):
    """Addresses a probe reported as reached: a list, or the test guest's space-separated text."""
    if value is None:
        return None
    items = value.split() if isinstance(value, str) else list(value)
    return set(str(ipaddress.IPv4Address(u'%s' % item)) for item in items)


def matrix(tenants, addresses, reached):
    """(rows, problems) of the tenant matrix.

    ``tenants``: {slot: tenant}; ``addresses``: {slot: its address}; ``reached``: {slot: the set of
    addresses its packets reached, or None (no probe)}. A row is (src, dst, must_reach, reached or
    None when src sent no probe). A problem: no probe, a slot of the same tenant not reached, a slot
    of another tenant reached, or an address reached that is no slot of the lab.
    """
    rows, problems = [], []
    known = set(addresses.values())
    for (src, dst), must in sorted(expected(tenants).items()):
        got = reached.get(src)
        hit = None if got is None else addresses[dst] in got
        rows.append((src, dst, must, hit))
        if hit is None:
            continue
        if must and not hit:
            problems.append('%s (tenant %s) does not reach %s of its own tenant at %s'
                            % (src, tenants[src], dst, addresses[dst]))
        elif hit and not must:
            problems.append('%s (tenant %s) REACHES %s of tenant %s at %s'
                            % (src, tenants[src], dst, tenants[dst], addresses[dst]))
    for src in sorted(tenants):
        if reached.get(src) is None:
            problems.append('%s: no probe came back, the matrix is unproven for it' % src)
            continue
        stray = sorted(reached[src] - known)
        if stray:
            problems.append('%s REACHES addresses no lab slot has: %s' % (src, ', '.join(stray)))
    return rows, problems


def render(tenants, rows):
    """The matrix as report lines: one row per source slot, 'yes'/'no' per destination, '!' where wrong."""
    slots = sorted(tenants)
    width = max(len(slot) for slot in slots) + 2
    lines = ['  %-*s %s' % (width + 10, 'from \\ to', ' '.join('%-*s' % (width, slot) for slot in slots))]
    cells = dict(((src, dst), (must, hit)) for src, dst, must, hit in rows)
    for src in slots:
        out = []
        for dst in slots:
            if src == dst:
                out.append('%-*s' % (width, '-'))
                continue
            must, hit = cells[(src, dst)]
            text = '?' if hit is None else ('yes' if hit else 'no')
            out.append('%-*s' % (width, text + ('' if hit is None or hit == must else ' !')))
        lines.append('  %-*s %s' % (width + 10, '%s (%s)' % (src, tenants[src]), ' '.join(out)))
    return lines
