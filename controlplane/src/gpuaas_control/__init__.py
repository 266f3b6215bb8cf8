# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpuaas.slice control plane.

The slot table is the source of truth: reserving a slot is one transaction (slot UPDATE,
allocation INSERT, outbox row); a worker drains the outbox and runs the collection's
allocate/release playbooks through ansible-runner; an HTTP API and the ``gpuaas`` CLI
drive it.
"""

__version__ = '0.1.0'
