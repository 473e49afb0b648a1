"""NVIDIA GPUs and the links between them, read through NVML (`pynvml` from nvidia-ml-py).

Per GPU: name, total/free memory, SM clock, PCIe generation/width, matched to the catalogue
for peak FLOP/s and bandwidth (estimated from cores, clocks and bus width when unknown).
Per pair: NVLink links that end on the peer (or on an NVSwitch both reach) give an NVLink
link; otherwise nvmlDeviceGetTopologyCommonAncestor says how far apart the two sit on PCIe.
"""

from __future__ import annotations

import contextlib

from uellm_cli.profile import catalogue as cat
from uellm_cli.profile.devices import Device, Link

# PCIe peer copies lose some bandwidth through a host bridge and most of it across sockets;
# these factors are rough (CUDA p2pBandwidthLatencyTest orders of magnitude).
HOSTBRIDGE_FACTOR = 0.8
SYSTEM_FACTOR = 0.5
_NVLINK_GEN = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 5}  # NVML_NVLINK_VERSION_* -> generation


def detect_gpus() -> tuple[list, dict, str]:
    """Return (GPU devices, links between them, a note on why there are none)."""
    try:
        import pynvml
    except ImportError:
        return [], {}, "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - every NVML failure means "no GPU usable"
        return [], {}, f"NVML is not available ({_msg(exc)}); planning for the CPU only"
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return [], {}, "NVML reports 0 GPUs; planning for the CPU only"
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        infos = [_gpu_info(pynvml, i, h) for i, h in enumerate(handles)]
        links = {}
        for i in range(count):
            for j in range(i + 1, count):
                links[(f"cuda:{i}", f"cuda:{j}")] = _pair_link(pynvml, handles, infos, i, j)
        return [info["device"] for info in infos], links, ""
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _msg(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _try(fn, *args, default=None):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - optional NVML queries differ across drivers and GPUs
        return default


def _gpu_info(nv, index: int, h) -> dict:
    raw = nv.nvmlDeviceGetName(h)
    name = raw.decode() if isinstance(raw, bytes) else str(raw)
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    sm_clock = float(_try(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM, default=0) or 0)
    gen = int(_try(nv.nvmlDeviceGetMaxPcieLinkGeneration, h, default=0) or 0)
    width = int(_try(nv.nvmlDeviceGetMaxPcieLinkWidth, h, default=16) or 16)
    pci = _try(nv.nvmlDeviceGetPciInfo, h)
    bus = _bus_id(pci)
    spec = cat.gpu_from_nvml(name, int(mem.total))
    cores = int(_try(nv.nvmlDeviceGetNumGpuCores, h, default=0) or 0)
    if spec is not None:
        flops, bandwidth, label, source = spec.flops, spec.mem_bandwidth, spec.name, "catalogue"
        gen = gen or spec.pcie_gen
    else:
        flops, bandwidth = _estimate(nv, h, cores, sm_clock)
        label, source = name, "estimated"
    device = Device(
        f"cuda:{index}", label, "gpu", int(mem.free), flops, bandwidth,
        total_memory_bytes=int(mem.total), pcie_gen=gen or 3, clock_mhz=sm_clock, cores=cores,
        model=name, numbers_from=source,
    )
    return {"device": device, "bus": bus, "spec": spec, "width": width}


def _bus_id(pci) -> str:
    if pci is None:
        return ""
    bus = getattr(pci, "busId", "") or getattr(pci, "busIdLegacy", "")
    bus = bus.decode() if isinstance(bus, bytes) else str(bus)
    return bus.lower().removeprefix("0000").lstrip(":")  # 00000000:07:00.0 vs 0000:07:00.0


def _estimate(nv, h, cores: int, sm_clock: float) -> tuple[float, float]:
    """Unknown GPU: CUDA-core FMA rate (a floor: tensor cores are faster) and bus width x memory
    clock x 2 (double data rate), which matches NVML's clocks for HBM and GDDR alike."""
    flops = cores * 2 * sm_clock * 1e6 if cores and sm_clock else 30e12
    bus_bits = _try(nv.nvmlDeviceGetMemoryBusWidth, h, default=0) or 0
    mem_clock = _try(nv.nvmlDeviceGetMaxClockInfo, h, getattr(nv, "NVML_CLOCK_MEM", 2), default=0) or 0
    bandwidth = bus_bits / 8 * mem_clock * 1e6 * 2 if bus_bits and mem_clock else 500e9
    return float(flops), float(bandwidth)


def _nvlinks(nv, h) -> list[tuple[str, int]]:
    """Active NVLink links of one GPU as (remote PCI bus id, NVML version)."""
    out = []
    enabled = getattr(nv, "NVML_FEATURE_ENABLED", 1)
    for link in range(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)):
        state = _try(nv.nvmlDeviceGetNvLinkState, h, link)
        if state is None:
            break  # links are numbered from 0; the first unsupported one ends the list
        if state != enabled:
            continue
        remote = _bus_id(_try(nv.nvmlDeviceGetNvLinkRemotePciInfo, h, link))
        out.append((remote, int(_try(nv.nvmlDeviceGetNvLinkVersion, h, link, default=0) or 0)))
    return out


def _pair_link(nv, handles, infos, i: int, j: int):
    a, b = infos[i], infos[j]
    gpu_buses = {info["bus"] for info in infos}
    links_a, links_b = _nvlinks(nv, handles[i]), _nvlinks(nv, handles[j])
    direct = [v for bus, v in links_a if bus and bus == b["bus"]]
    via = ""
    if not direct:
        # Links ending on something that is not a GPU lead to an NVSwitch (HGX/DGX boards).
        sw_a = [v for bus, v in links_a if bus not in gpu_buses]
        sw_b = [v for bus, v in links_b if bus not in gpu_buses]
        direct = sw_a if len(sw_a) <= len(sw_b) else sw_b
        direct = direct if sw_a and sw_b else []
        via = " via NVSwitch"
    if direct:
        gen = _NVLINK_GEN.get(max(direct), 0) or (a["spec"].nvlink_gen if a["spec"] else 4)
        spec = a["spec"]
        per_link = spec.nvlink_bandwidth / spec.nvlink_links if spec and spec.nvlink_links else cat.nvlink_per_link(gen)
        return Link("nvlink", per_link * len(direct), cat.LINKS[f"nvlink{min(gen, 5)}"].latency,
                    f"NV{len(direct)} nvlink{gen}{via}")
    level = _try(nv.nvmlDeviceGetTopologyCommonAncestor, handles[i], handles[j], default=None)
    gen = min(a["device"].pcie_gen, b["device"].pcie_gen)
    pcie = cat.pcie_link(gen)
    bw = pcie.bandwidth * min(a["width"], b["width"], 16) / 16
    single = getattr(nv, "NVML_TOPOLOGY_SINGLE", 10)
    multiple = getattr(nv, "NVML_TOPOLOGY_MULTIPLE", 20)
    hostbridge = getattr(nv, "NVML_TOPOLOGY_HOSTBRIDGE", 30)
    system = getattr(nv, "NVML_TOPOLOGY_SYSTEM", 50)
    if level is None:
        return Link("pcie", bw, pcie.latency, f"{pcie.name} (topology unknown)")
    if level >= system:
        sys = cat.LINKS["sys"]
        return Link("sys", min(sys.bandwidth, bw * SYSTEM_FACTOR), sys.latency, f"{pcie.name} across CPU sockets")
    if level >= hostbridge:
        return Link("pcie", bw * HOSTBRIDGE_FACTOR, pcie.latency + 2e-6, f"{pcie.name} through the host bridge")
    where = "on one board" if level < single else "via one PCIe switch" if level < multiple else "via PCIe switches"
    return Link("pcie", bw, pcie.latency, f"{pcie.name} {where}")
