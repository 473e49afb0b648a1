"""Devices, the links between them, and clusters: the hardware types every layer above shares.

Pure data (no detection, no I/O): `profile/hardware.py` detects and parses them,
`profile/nvml_detect.py` reads GPUs into them, the planner and the cost model consume them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Device:
    """One accelerator (or the CPU).

    id: the device string torch/accelerate use ("cuda:0", "cpu"); for a planned cluster
        without hardware, "cuda:N" in spec order.
    memory_bytes: usable memory for weights + KV + activations (total, not free, for specs;
        free memory for detected GPUs, available memory for the CPU).
    flops: peak dense fp16/bf16 FLOP/s (fp32 for the CPU).
    mem_bandwidth: bytes/s.
    numbers_from: where flops/mem_bandwidth come from: "catalogue" | "measured" | "estimated" | "file".
    """

    id: str
    name: str
    kind: str  # "gpu" | "cpu"
    memory_bytes: int
    flops: float
    mem_bandwidth: float
    node: str = "local"
    total_memory_bytes: int = 0
    pcie_gen: int = 0
    clock_mhz: float = 0.0
    cores: int = 0
    model: str = ""  # the raw name the hardware reports (NVML name, /proc/cpuinfo model name)
    numbers_from: str = "catalogue"


@dataclass(slots=True, frozen=True)
class Link:
    """A link between two devices: bandwidth in bytes/s and latency in seconds."""

    kind: str  # "nvlink" | "pcie" | "sys" (across sockets) | "net" | "local"
    bandwidth: float
    latency: float
    detail: str = ""  # e.g. "NV12 nvlink3", "pcie4 x16 via PCIe switch"


@dataclass(slots=True)
class Cluster:
    """Devices plus the link between every ordered pair (missing pairs fall back to `default_link`)."""

    devices: list[Device]
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    default_link: Link = field(default_factory=lambda: Link("pcie", 16e9, 10e-6))
    source: str = "spec"  # "nvml" | "cpu" | "spec" | "file" | "ray"
    notes: list[str] = field(default_factory=list)  # plain sentences for the user ("no GPU found")

    def link(self, a: str, b: str) -> Link:
        if a == b:
            return Link("local", float("inf"), 0.0)
        return self.links.get((a, b)) or self.links.get((b, a)) or self.default_link

    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)

    @property
    def gpus(self) -> list[Device]:
        return [d for d in self.devices if d.kind == "gpu"]

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)
