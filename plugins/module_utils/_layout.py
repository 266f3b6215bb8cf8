# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the deterministic slot layout (ids, MAC, IP).

The layout is a pure function of the node id and the slot index, so the control
plane, the node and a re-run after a crash all compute the same values.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re

SLOT_NETWORK = '10.100.0.0/24'
SLOT_GATEWAY = '10.100.0.1'
SLOT_PREFIX = '10.100.0.'
FIRST_HOST_OCTET = 10
# 10 + index must stay a usable host address in the /24 (not .255, the broadcast).
MAX_SLOTS = 254 - FIRST_HOST_OCTET + 1

# Node ids end up in slot ids, lease file names and libvirt domain names: keep
# them to characters that are safe in all three.
NODE_ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z')
SLOT_ID_RE = re.compile(r'^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})-s([0-9]{1,3})\Z')


class LayoutError(ValueError):
    """A node id or slot index outside what the layout can express."""


def check_node_id(node_id):
    if not isinstance(node_id, str) or not NODE_ID_RE.match(node_id):
        raise LayoutError(
            'node_id %r is not valid: use 1-63 characters from letters, digits, '
            "'.', '_' and '-', starting with a letter or digit" % (node_id,))
    return node_id


def check_slot_index(slot_index):
    if isinstance(slot_index, bool) or not isinstance(slot_index, int) \
            or not 0 <= slot_index < MAX_SLOTS:
        raise LayoutError('slot index %r is outside the slot network (0-%d)'
                          % (slot_index, MAX_SLOTS - 1))
    return slot_index


def slot_id(node_id, slot_index):
    return '%s-s%d' % (check_node_id(node_id), check_slot_index(slot_index))


def parse_slot_id(value):
    """Split '{node_id}-s{index}' into (node_id, index), or raise LayoutError."""
    match = SLOT_ID_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise LayoutError("slot id %r is not of the form '{node_id}-s{index}'" % (value,))
    index = int(match.group(2))
    check_slot_index(index)
    return match.group(1), index


def slot_mac(node_id, slot_index):
    """52:54: followed by the first four bytes of sha256('{node_id}:{slot_index}')."""
    digest = hashlib.sha256(('%s:%d' % (check_node_id(node_id), check_slot_index(slot_index)))
                            .encode('utf-8')).digest()
    return '52:54:' + ':'.join('%02x' % byte for byte in bytearray(digest[:4]))


def slot_ip(slot_index):
    return SLOT_PREFIX + str(FIRST_HOST_OCTET + check_slot_index(slot_index))


# OpenFlow cookies of a slot's flows: 'gpu' in the top bytes, the slot index in the low ones,
# so a slot's flows are found and removed by cookie, and flows of a slot with no lease show.
COOKIE_BASE = 0x6770750000000000
COOKIE_MASK = 0xffffffffffff0000


def slot_cookie(slot_index):
    return COOKIE_BASE | check_slot_index(slot_index)


def cookie_slot_index(cookie):
    """The slot index a flow cookie belongs to, or None for a cookie that is not a slot's."""
    if cookie & COOKIE_MASK != COOKIE_BASE:
        return None
    index = cookie & ~COOKIE_MASK
    return index if index < MAX_SLOTS else None
