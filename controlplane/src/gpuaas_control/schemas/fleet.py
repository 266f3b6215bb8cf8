# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Views of the fleet (operators): nodes, their discovery, slots and the inventory."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from gpuaas_control.schemas.views import Time, View


class InventorySlotState(View):
    """A slot's state: what the inventory's groups and slot counts are made of."""

    id: str
    node_id: str
    slot_index: int
    state: str
    approved: bool
    allocation_id: str | None
    state_reason: str | None
    absent_reason: str | None = Field(None, description="Why the slot's approved GPU is not there (gone from the "
                                      'PCI bus, or replaced); null when it is. An absent slot is never reserved.')
    gpu_model: str
    numa_node: int


class InventorySlot(InventorySlotState):
    """A slot as the inventory holds it (the plugin's host vars)."""

    gpu_address: str
    companions: list[Any]
    cpulist: str | None
    vcpus: int | None = Field(None, description="The slot's CPU slice size: the most vCPUs a reservation of it may ask for.")
    memory_mib: int | None = Field(None, description="The slot's memory share: the most MiB a reservation of it may ask for.")
    host_cpulist: str | None = None
    bar_mib: int | None = Field(None, description="The MiB of 64-bit BARs the slot's devices bring into its VM "
                                                  '(the GPU, its companions, the NVMe and the VF).')
    nvme_address: str | None
    fabric_pf_address: str | None
    fabric_vf_index: int | None = Field(None, description="Which VF of its fabric PF is the slot's (slots may share a PF): "
                                        'the k-th slot paired with a PF has its VF k.')
    fabric_vf_pci_address: str | None
    mac: str
    ip: str
    destructive_wipe_policy: str
    capacity_metadata: dict[str, Any]


class SlotView(InventorySlot):
    """A slot as operators read it: the inventory's fields and who approved it when."""

    approved_by: str | None
    approved_at: Time | None
    updated_at: Time


class SlotList(View):
    slots: list[SlotView]


class ApprovalResult(View):
    node_id: str
    slots: list[SlotView]


class DiscoveredSlot(View):
    slot_id: Any = None
    gpu_address: Any = None
    eligible: Any = None
    reasons: Any = None


class DiscoverySummary(View):
    """What the node's last discovery said (as posted: only its shape was checked)."""

    iommu_enabled: Any = None
    numa_nodes: Any = None
    slots: list[DiscoveredSlot] = []

    @field_validator('slots', mode='before')
    @classmethod
    def _mappings(cls, slots):
        return [slot for slot in slots or [] if isinstance(slot, dict)]


class BlockedCleanup(View):
    """A slot a cleanup keeps blocked: an allocation left it on a node that did not answer, and
    its release (the cleanup) has not run or failed."""

    slot_id: str
    node_id: str
    allocation_id: str = Field(description='The allocation that left the slot (it may run on another slot now).')
    reason: str | None = Field(description="The slot's state reason: why it is blocked, and how the last cleanup failed.")
    node_reachable: bool
    job_id: int = Field(description='The newest cleanup job of the slot.')
    status: str = Field(description='Its status: pending (it runs when the node answers), running, failed (it failed '
                        "every attempt: retry it, or mark the slot clean), cancelled or done.")
    attempts: int
    last_error: str | None
    updated_at: Time


class BlockedCleanupList(View):
    cleanups: list[BlockedCleanup]


class InventoryNodeState(View):
    """A node's drain state and reachability (as the worker last found it)."""

    id: str
    schedulable: bool
    drain_reason: str | None
    reachable: bool = Field(True, description='False while the worker cannot reach the node: reservation skips it, its '
                            'jobs wait, and the worker probes it until it answers.')
    unreachable_since: Time | None = Field(None, description='When a run first could not reach the node; null while it answers.')
    unreachable_error: str | None = Field(None, description='What ansible said the last time the node did not answer.')
    last_probe_at: Time | None = Field(None, description='When the worker last asked the node whether it answers '
                                       '(ansible.builtin.ping); null: never since it was registered.')
    next_probe_at: Time | None = Field(None, description="When the worker next asks the unreachable node whether it answers.")

    @model_validator(mode='after')
    def _reachable(self):
        self.reachable = self.unreachable_since is None
        return self


class NodeView(InventoryNodeState):
    discovered_at: Time | None
    approved_at: Time | None
    discovery: DiscoverySummary | None
    underlay_ip: str | None = Field(None, description="The node's underlay address, where the tenant "
                                    "overlay's tunnels from other nodes end; null: the node is no overlay peer.")

    @field_validator('discovery', mode='before')
    @classmethod
    def _summary(cls, discovery):
        return discovery or None


class NodeSummary(NodeView):
    approved_slots: int = Field(description='Approved slots.')
    free_slots: int = Field(description='Approved slots that are free.')

    @classmethod
    def of(cls, node, approved: int, free: int) -> NodeSummary:
        return cls(**dict(NodeView.model_validate(node)), approved_slots=approved, free_slots=free)


class NodeList(View):
    nodes: list[NodeSummary]


class NodeDetail(NodeView):
    slots: list[SlotView]

    @classmethod
    def of(cls, node, slots) -> NodeDetail:
        return cls(**dict(NodeView.model_validate(node)), slots=slots)


class InventoryNode(InventoryNodeState):
    approved_slots: list[dict[str, Any]] | None


class InventoryStates(View):
    """Every node's and slot's state, without the approved maps and the slots' devices (the
    gpuaas.slice.slots inventory plugin reads it with ``slot_details: none``)."""

    nodes: list[InventoryNodeState]
    slots: list[InventorySlotState]


class Inventory(View):
    """The whole fleet in one answer (the gpuaas.slice.slots inventory plugin reads it)."""

    nodes: list[InventoryNode]
    slots: list[InventorySlot]
