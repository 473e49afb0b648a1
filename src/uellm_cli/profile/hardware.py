"""Devices, links and clusters: detected (NVML, CPU) or described by a spec (`4xA100-40GB`).

SKELETON: the dataclasses below are the contract other modules use. Detection, the catalogue
and spec parsing are added next to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Device:
    """One accelerator (or the CPU).

    id: the device string torch/accelerate use ("cuda:0", "cpu"); for a planned cluster
        without hardware, "cuda:N" in spec order.
    memory_bytes: usable memory for weights + KV + activations (total, not free, for specs).
    flops: peak dense fp16/bf16 FLOP/s (fp32 for the CPU).
    mem_bandwidth: bytes/s.
    """

    id: str
    name: str
    kind: str  # "gpu" | "cpu"
    memory_bytes: int
    flops: float
    mem_bandwidth: float
    node: str = "local"


@dataclass(slots=True, frozen=True)
class Link:
    """A link between two devices: bandwidth in bytes/s and latency in seconds."""

    kind: str  # "nvlink" | "pcie" | "sys" (across sockets) | "net" | "local"
    bandwidth: float
    latency: float


@dataclass(slots=True)
class Cluster:
    """Devices plus the link between every ordered pair (missing pairs fall back to `default_link`)."""

    devices: list[Device]
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    default_link: Link = field(default_factory=lambda: Link("pcie", 16e9, 10e-6))
    source: str = "spec"  # "nvml" | "cpu" | "spec" | "file" | "ray"

    def link(self, a: str, b: str) -> Link:
        if a == b:
            return Link("local", float("inf"), 0.0)
        return self.links.get((a, b)) or self.links.get((b, a)) or self.default_link

    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)
