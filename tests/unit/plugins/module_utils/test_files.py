# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""State files are read defensively: a damaged one is named, never a traceback."""

from __future__ import annotations

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._files import StateFileError, read_json


@pytest.mark.parametrize('content', [b'{', b'[]', b'"x"', b'\xff\xfe', b'[' * 100000 + b']' * 100000,
                                     b'{"a":' * 50000 + b'1' + b'}' * 50000])
def test_a_damaged_state_file_is_named(tmp_path, content):
    path = tmp_path / 'slot.json'
    path.write_bytes(content)
    with pytest.raises(StateFileError) as info:
        read_json(str(path), 'lease')
    assert str(path) in str(info.value)


def test_a_missing_file_is_none_and_a_record_is_read(tmp_path):
    assert read_json(str(tmp_path / 'none.json'), 'lease') is None
    (tmp_path / 'ok.json').write_text('{"a": 1}')
    assert read_json(str(tmp_path / 'ok.json'), 'lease') == {'a': 1}
