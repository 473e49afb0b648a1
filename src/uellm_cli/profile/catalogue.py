"""Built-in catalogue of accelerators and link kinds, so `uellm plan` works without the hardware.

Numbers are vendor datasheet peaks, dense (no 2:4 sparsity), fp16/bf16 tensor-core FLOP/s with
fp32 accumulation (what PyTorch matmuls use), memory bandwidth in bytes/s and memory in bytes
(marketed GiB; NVML reports a little less). Link bandwidths are per direction. Each entry names
its source; `docs/profiler.md` lists them too. Pure data plus lookups: no torch, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from uellm_cli.errors import ConfigError

GiB = 1 << 30
GB = 1e9
TFLOPS = 1e12


@dataclass(slots=True, frozen=True)
class GpuSpec:
    """One accelerator model: what the planner needs, plus how it connects to its peers.

    nvlink_bandwidth: NVLink bytes/s per direction per GPU (0 = no NVLink);
    nvlink_topology: "switch" (SXM boards: every GPU reaches every other at full rate) or
        "pair" (NVLink bridge between two cards).
    nvml_keys: lower-case words that must all appear in the NVML name for a detected GPU.
    """

    name: str
    memory_bytes: int
    flops: float
    mem_bandwidth: float
    pcie_gen: int
    nvlink_gen: int = 0
    nvlink_links: int = 0
    nvlink_bandwidth: float = 0.0
    nvlink_topology: str = ""
    aliases: tuple[str, ...] = ()
    nvml_keys: tuple[str, ...] = ()
    source: str = ""


GPUS: tuple[GpuSpec, ...] = (
    # NVIDIA Tesla V100 datasheet (SXM2): 125 TFLOPS tensor, 900 GB/s HBM2, NVLink 300 GB/s
    # bidirectional over 6 NVLink2 links, PCIe gen3.
    GpuSpec("V100-16GB", 16 * GiB, 125 * TFLOPS, 900 * GB, 3, 2, 6, 150 * GB, "switch",
            ("v100-sxm2-16gb", "tesla-v100-16gb"), ("v100", "16gb"), "NVIDIA V100 datasheet (SXM2)"),
    GpuSpec("V100-32GB", 32 * GiB, 125 * TFLOPS, 900 * GB, 3, 2, 6, 150 * GB, "switch",
            ("v100-sxm2-32gb", "tesla-v100-32gb"), ("v100", "32gb"), "NVIDIA V100 datasheet (SXM2)"),
    # NVIDIA T4 datasheet: 65 TFLOPS mixed-precision fp16, 320 GB/s GDDR6, 16 GB, PCIe gen3.
    GpuSpec("T4", 16 * GiB, 65 * TFLOPS, 320 * GB, 3, aliases=("tesla-t4",), nvml_keys=("t4",),
            source="NVIDIA T4 datasheet"),
    # A10G (AWS G5): 24 GB GDDR6 at 600 GB/s as the A10; NVIDIA publishes no A10G datasheet,
    # AWS/Baseten's A10 vs A10G comparison gives ~70 TFLOPS fp16 tensor (the A10 has 125).
    GpuSpec("A10G", 24 * GiB, 70 * TFLOPS, 600 * GB, 4, nvml_keys=("a10g",),
            source="AWS G5 instance specs; Baseten 'A10 vs A10G' (no NVIDIA datasheet)"),
    # NVIDIA L4 datasheet: 242 TFLOPS fp16 with sparsity -> 121 dense, 300 GB/s, 24 GB, PCIe gen4.
    GpuSpec("L4", 24 * GiB, 121 * TFLOPS, 300 * GB, 4, nvml_keys=("l4",),
            source="NVIDIA L4 datasheet (242 sparse / 2)"),
    # NVIDIA L40S datasheet: 733 TFLOPS fp16 sparse -> 362 dense, 864 GB/s, 48 GB, PCIe gen4.
    GpuSpec("L40S", 48 * GiB, 362 * TFLOPS, 864 * GB, 4, nvml_keys=("l40s",),
            source="NVIDIA L40S datasheet (733 sparse / 2)"),
    # NVIDIA Ampere GA102 whitepaper: RTX 3090 fp16 tensor with fp32 accumulate 71 TFLOPS dense,
    # 936 GB/s GDDR6X, 24 GB; NVLink3 bridge 112.5 GB/s bidirectional (4 links).
    GpuSpec("RTX3090", 24 * GiB, 71 * TFLOPS, 936 * GB, 4, 3, 4, 56.25 * GB, "pair",
            ("rtx-3090", "geforce-rtx-3090", "3090"), ("3090",), "NVIDIA GA102 whitepaper"),
    # NVIDIA Ada AD102 whitepaper: RTX 4090 fp16 tensor with fp32 accumulate 165.2 TFLOPS dense,
    # 1008 GB/s GDDR6X, 24 GB, PCIe gen4, no NVLink.
    GpuSpec("RTX4090", 24 * GiB, 165.2 * TFLOPS, 1008 * GB, 4,
            aliases=("rtx-4090", "geforce-rtx-4090", "4090"), nvml_keys=("4090",),
            source="NVIDIA Ada whitepaper"),
    # NVIDIA A100 datasheet: 312 TFLOPS bf16/fp16 dense; SXM4 40GB 1555 GB/s, 80GB 2039 GB/s,
    # 80GB PCIe 1935 GB/s; NVLink3 600 GB/s bidirectional (12 links, NVSwitch on HGX; a bridge
    # between two PCIe cards); PCIe gen4.
    GpuSpec("A100-40GB", 40 * GiB, 312 * TFLOPS, 1555 * GB, 4, 3, 12, 300 * GB, "switch",
            ("a100-sxm4-40gb",), ("a100", "40gb"), "NVIDIA A100 datasheet (SXM4 40GB)"),
    GpuSpec("A100-80GB", 80 * GiB, 312 * TFLOPS, 2039 * GB, 4, 3, 12, 300 * GB, "switch",
            ("a100-sxm4-80gb",), ("a100", "80gb"), "NVIDIA A100 datasheet (SXM4 80GB)"),
    GpuSpec("A100-80GB-PCIe", 80 * GiB, 312 * TFLOPS, 1935 * GB, 4, 3, 12, 300 * GB, "pair",
            ("a100-pcie-80gb", "a100-80gb-pcie"), ("a100", "80gb", "pcie"),
            "NVIDIA A100 datasheet (PCIe 80GB)"),
    # NVIDIA H100 datasheet: SXM5 989 TFLOPS bf16 dense (1979 sparse), 3.35 TB/s, NVLink4 900 GB/s
    # bidirectional (18 links), PCIe gen5; PCIe card 756 TFLOPS dense, 2.0 TB/s, NVLink bridge 600.
    GpuSpec("H100-80GB", 80 * GiB, 989 * TFLOPS, 3350 * GB, 5, 4, 18, 450 * GB, "switch",
            ("h100-sxm", "h100-sxm5-80gb", "h100-80gb-hbm3"), ("h100", "hbm3"),
            "NVIDIA H100 datasheet (SXM5)"),
    GpuSpec("H100-PCIe", 80 * GiB, 756 * TFLOPS, 2000 * GB, 5, 4, 12, 300 * GB, "pair",
            ("h100-pcie-80gb", "h100-80gb-pcie"), ("h100", "pcie"), "NVIDIA H100 datasheet (PCIe)"),
    # NVIDIA H200 datasheet: 141 GB HBM3e at 4.8 TB/s, 989 TFLOPS bf16 dense, NVLink4 900 GB/s.
    GpuSpec("H200", 141 * GiB, 989 * TFLOPS, 4800 * GB, 5, 4, 18, 450 * GB, "switch",
            ("h200-141gb", "h200-sxm"), ("h200",), "NVIDIA H200 datasheet (SXM)"),
)


@dataclass(slots=True, frozen=True)
class LinkSpec:
    """A kind of link: per-direction bandwidth (bytes/s) and a typical one-way latency (s)."""

    name: str
    kind: str  # Link.kind: "nvlink" | "pcie" | "sys" | "net"
    bandwidth: float
    latency: float
    source: str = ""


# Latencies are orders of magnitude from CUDA's p2pBandwidthLatencyTest on typical servers, not
# datasheet numbers; the planner only needs NVLink < PCIe < across sockets < network.
LINKS: dict[str, LinkSpec] = {
    # NVLink between two GPUs of a generation's flagship board, per direction (NVIDIA NVLink
    # page: P100 4 links, V100 6, A100 12, H100 18 links of 20/25/25/25 GB/s; B200 18 x 50).
    "nvlink1": LinkSpec("nvlink1", "nvlink", 80 * GB, 2e-6, "NVIDIA NVLink page: P100, 4 x 20 GB/s"),
    "nvlink2": LinkSpec("nvlink2", "nvlink", 150 * GB, 2e-6, "NVIDIA NVLink page: V100, 6 x 25 GB/s"),
    "nvlink3": LinkSpec("nvlink3", "nvlink", 300 * GB, 2e-6, "NVIDIA NVLink page: A100, 12 x 25 GB/s"),
    "nvlink4": LinkSpec("nvlink4", "nvlink", 450 * GB, 2e-6, "NVIDIA NVLink page: H100, 18 x 25 GB/s"),
    "nvlink5": LinkSpec("nvlink5", "nvlink", 900 * GB, 2e-6, "NVIDIA NVLink page: B200, 18 x 50 GB/s"),
    # PCIe x16 per direction: 8/16/32 GT/s * 16 lanes * 128/130 encoding (PCI-SIG).
    "pcie3": LinkSpec("pcie3", "pcie", 15.75 * GB, 10e-6, "PCI-SIG, gen3 x16"),
    "pcie4": LinkSpec("pcie4", "pcie", 31.5 * GB, 8e-6, "PCI-SIG, gen4 x16"),
    "pcie5": LinkSpec("pcie5", "pcie", 63.0 * GB, 8e-6, "PCI-SIG, gen5 x16"),
    # Peer traffic across CPU sockets (UPI/xGMI) is staged through host memory: roughly half a
    # gen4 x16 link and about twice its latency (order of magnitude from p2p tests).
    "sys": LinkSpec("sys", "sys", 16 * GB, 20e-6, "estimate: cross-socket peer copies"),
    # Between machines: InfiniBand HDR 200 Gb/s, NDR 400 Gb/s; 100 Gb Ethernet.
    "ib-hdr": LinkSpec("ib-hdr", "net", 25 * GB, 5e-6, "NVIDIA InfiniBand HDR, 200 Gb/s"),
    "ib-ndr": LinkSpec("ib-ndr", "net", 50 * GB, 5e-6, "NVIDIA InfiniBand NDR, 400 Gb/s"),
    "eth-100g": LinkSpec("eth-100g", "net", 12.5 * GB, 20e-6, "100 Gb Ethernet"),
}



# Shares of peak (compute, memory bandwidth) an in-flight-batching engine reaches on these GPUs,
# for the vLLM engine's roofline (plan/costmodel.py). Fitted by bench/published_runs.py --fit to
# NVIDIA's TensorRT-LLM "Performance Overview", data of v0.13.0 (trtllm-bench, fp16, fixed
# lengths; github.com/NVIDIA/TensorRT-LLM/blob/v0.13.0/docs/source/performance/perf-overview.md):
# Llama-2-7B at 128/128 and 2048/128 output tokens/s on one A100-SXM4-80GB (5,238.68, 560.35) and
# one H100 80GB HBM3 (11,436.31, 1,157.55), with 10 us a layer and 1 ms a step of overhead; and,
# fitted on Llama-2-70B over 4 A100s (2,766.00), all-reduces at half the NVLink rate (comm_eff
# 0.5). Checked on nine runs it was not fitted to (docs/planner.md): within 14.1%. The A100-40GB
# is the same silicon with less bandwidth, so it takes the A100-80GB's shares.
INFLIGHT_BATCHING_EFFICIENCY: dict[str, tuple[float, float]] = {
    "A100-80GB": (0.8, 0.6),
    "A100-40GB": (0.8, 0.6),
    "H100-80GB": (0.7, 0.7),
}

def pcie_link(gen: int) -> LinkSpec:
    """The x16 PCIe link of a generation (unknown generations fall back to gen3)."""
    return LINKS.get(f"pcie{gen}", LINKS["pcie3"])


# One NVLink link, per direction, by generation (NVIDIA NVLink page).
NVLINK_PER_LINK = {1: 20 * GB, 2: 25 * GB, 3: 25 * GB, 4: 25 * GB, 5: 50 * GB}


def nvlink_per_link(gen: int) -> float:
    """Per-direction bandwidth of one NVLink link of generation `gen` (bytes/s)."""
    return NVLINK_PER_LINK.get(gen, NVLINK_PER_LINK[4])


def _norm(name: str) -> str:
    """Lower case, spaces/underscores to dashes, `nvidia`/`tesla`/`geforce` prefixes kept."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def known_gpus() -> list[str]:
    return [g.name for g in GPUS]


def gpu_from_name(name: str) -> GpuSpec:
    """Look up a GPU by catalogue name or alias (case, dashes and spaces ignored).

    Exact matches win; otherwise a unique prefix match (`RTX40` -> RTX4090). Unknown or
    ambiguous names raise ConfigError listing the known (or the matching) names.
    """
    key = _compact(name)
    if not key:
        raise ConfigError("empty GPU name", hint=f"known GPUs: {', '.join(known_gpus())}")
    exact, matches = gpu_matches(name)
    if exact:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(g.name for g in matches)
        raise ConfigError(f"GPU name {name!r} is ambiguous: it matches {names}",
                          hint="write the full name, e.g. " + matches[0].name)
    raise ConfigError(f"unknown GPU {name!r}",
                      hint=f"known GPUs: {', '.join(known_gpus())}; or describe it in a cluster file")


def gpu_matches(name: str) -> tuple[list[GpuSpec], list[GpuSpec]]:
    """Catalogue entries named `name` exactly (or by an alias), and those it is a prefix of
    (case, dashes and spaces ignored)."""
    key = _compact(name)
    exact = [g for g in GPUS if key == _compact(g.name) or key in (_compact(a) for a in g.aliases)]
    prefix = [g for g in GPUS
              if _compact(g.name).startswith(key) or any(_compact(a).startswith(key) for a in g.aliases)]
    return exact, prefix


def gpu_from_nvml(nvml_name: str, total_memory: int) -> GpuSpec | None:
    """Match a detected GPU (NVML name and memory) to the catalogue; None when unknown."""
    norm = _norm(nvml_name)
    words = set(re.split(r"[^a-z0-9]+", norm))
    hits = [g for g in GPUS if g.nvml_keys and all(k in words or k in norm for k in g.nvml_keys)]
    # "l4" must not match "l40s": require whole words for short keys.
    hits = [g for g in hits if all(k in words or len(k) > 3 for k in g.nvml_keys)]
    if not hits:
        return None
    if "pcie" not in words:
        no_pcie = [g for g in hits if "pcie" not in g.nvml_keys]
        hits = no_pcie or hits
    # Prefer the most specific entry, then the one whose memory is closest to what NVML reports.
    hits.sort(key=lambda g: (-len(g.nvml_keys), abs(g.memory_bytes - total_memory)))
    return hits[0]


def link_from_name(name: str) -> LinkSpec:
    """A link kind by name (`nvlink4`, `pcie5`, `sys`, `ib-hdr`...); fails listing the known ones."""
    spec = LINKS.get(_norm(name))
    if spec is None:
        raise ConfigError(f"unknown link kind {name!r}", hint=f"known: {', '.join(LINKS)}")
    return spec
