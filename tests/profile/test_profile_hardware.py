"""Hardware profile: detection through a fake NVML, the CPU-only path, specs, and cluster files."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pytest

from uellm_cli.errors import ConfigError
from uellm_cli.profile import catalogue as cat
from uellm_cli.profile.devices import Cluster, Device, Link
from uellm_cli.profile.hardware import (
    NO_GPU_NOTE,
    cluster_from_dict,
    cluster_to_dict,
    detect_cluster,
    parse_cluster_spec,
    resolve_cluster,
)

GiB = 1 << 30
SWITCH_BUS = "0000:c0:00.0"


class FakeNVMLError(Exception):
    pass


@dataclass
class FakeGpu:
    name: str
    total: int
    free: int
    bus: str
    pcie_gen: int = 4
    sm_clock: int = 1410
    socket: int = 0
    pcie_switch: int = 0  # GPUs on the same switch (and socket) are one hop apart
    nvlinks: list[str] = field(default_factory=list)  # remote bus id per active link
    nvlink_version: int = 4  # NVML_NVLINK_VERSION_3_0
    cores: int = 0


def fake_pynvml(gpus: list[FakeGpu]) -> types.ModuleType:
    """A module with the pynvml functions detection calls, answering from `gpus`."""
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM = 1, 2
    m.NVML_FEATURE_ENABLED, m.NVML_FEATURE_DISABLED = 1, 0
    m.NVML_NVLINK_MAX_LINKS = 18
    m.NVML_TOPOLOGY_INTERNAL, m.NVML_TOPOLOGY_SINGLE, m.NVML_TOPOLOGY_MULTIPLE = 0, 10, 20
    m.NVML_TOPOLOGY_HOSTBRIDGE, m.NVML_TOPOLOGY_NODE, m.NVML_TOPOLOGY_SYSTEM = 30, 40, 50
    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    m.nvmlDeviceGetName = lambda h: h.name
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=h.total, free=h.free, used=h.total - h.free)
    m.nvmlDeviceGetMaxClockInfo = lambda h, kind: h.sm_clock if kind == 1 else 1215
    m.nvmlDeviceGetMaxPcieLinkGeneration = lambda h: h.pcie_gen
    m.nvmlDeviceGetMaxPcieLinkWidth = lambda h: 16
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=h.bus)

    def cores(h):
        if not h.cores:
            raise FakeNVMLError("not supported")
        return h.cores

    m.nvmlDeviceGetNumGpuCores = cores
    m.nvmlDeviceGetMemoryBusWidth = lambda h: 5120

    def link_state(h, link):
        if link >= len(h.nvlinks):
            raise FakeNVMLError("Not Supported")
        return 1

    m.nvmlDeviceGetNvLinkState = link_state
    m.nvmlDeviceGetNvLinkVersion = lambda h, link: h.nvlink_version
    m.nvmlDeviceGetNvLinkRemotePciInfo = lambda h, link: types.SimpleNamespace(busId=h.nvlinks[link])

    def ancestor(a, b):
        if a.socket != b.socket:
            return 50
        if a.pcie_switch == b.pcie_switch:
            return 10
        return 30

    m.nvmlDeviceGetTopologyCommonAncestor = ancestor
    return m


def install(monkeypatch, gpus: list[FakeGpu]) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus))


def bus(i: int) -> str:
    return f"00000000:{0x10 + i:02x}:00.0"


def test_one_gpu_memory_and_catalogue_numbers(monkeypatch):
    install(monkeypatch, [FakeGpu("NVIDIA A10G", 23 * GiB, 20 * GiB, bus(0))])
    cluster = detect_cluster()
    assert cluster.source == "nvml" and cluster.has_gpu and not cluster.notes
    gpu = cluster.device("cuda:0")
    a10g = cat.gpu_from_name("A10G")
    assert (gpu.name, gpu.kind, gpu.model) == ("A10G", "gpu", "NVIDIA A10G")
    assert gpu.memory_bytes == 20 * GiB  # free memory is what a plan can use
    assert gpu.total_memory_bytes == 23 * GiB
    assert gpu.flops == a10g.flops and gpu.mem_bandwidth == a10g.mem_bandwidth
    assert [d.id for d in cluster.devices] == ["cuda:0", "cpu"]  # the CPU is always there
    assert cluster.link("cuda:0", "cpu").kind == "pcie"


def test_two_gpus_joined_by_an_nvlink_bridge(monkeypatch):
    a = FakeGpu("NVIDIA GeForce RTX 3090", 24 * GiB, 23 * GiB, bus(0), nvlinks=[bus(1)] * 4)
    b = FakeGpu("NVIDIA GeForce RTX 3090", 24 * GiB, 24 * GiB, bus(1), nvlinks=[bus(0)] * 4)
    install(monkeypatch, [a, b])
    cluster = detect_cluster()
    link = cluster.link("cuda:0", "cuda:1")
    spec = cat.gpu_from_name("RTX3090")
    assert link.kind == "nvlink"
    assert link.bandwidth == pytest.approx(spec.nvlink_bandwidth)  # all 4 bridge links
    assert "NV4" in link.detail
    assert cluster.link("cuda:1", "cuda:0") == link


def test_four_gpus_nvlink_pairs_pcie_switch_and_sockets(monkeypatch):
    """Two bridged A100 PCIe cards on socket 0 (separate switches), two L4s on one switch on socket 1."""
    gpus = [
        FakeGpu("NVIDIA A100 80GB PCIe", 80 * GiB, 79 * GiB, bus(0), socket=0, pcie_switch=0, nvlinks=[bus(1)] * 12),
        FakeGpu("NVIDIA A100 80GB PCIe", 80 * GiB, 79 * GiB, bus(1), socket=0, pcie_switch=1, nvlinks=[bus(0)] * 12),
        FakeGpu("NVIDIA L4", 23 * GiB, 22 * GiB, bus(2), socket=1, pcie_switch=2),
        FakeGpu("NVIDIA L4", 23 * GiB, 22 * GiB, bus(3), socket=1, pcie_switch=2),
    ]
    install(monkeypatch, gpus)
    c = detect_cluster()
    assert [d.name for d in c.gpus] == ["A100-80GB-PCIe", "A100-80GB-PCIe", "L4", "L4"]
    nv = c.link("cuda:0", "cuda:1")
    assert nv.kind == "nvlink" and nv.bandwidth == pytest.approx(12 * 25e9)
    switch = c.link("cuda:2", "cuda:3")
    assert switch.kind == "pcie" and switch.bandwidth == pytest.approx(cat.LINKS["pcie4"].bandwidth)
    across = c.link("cuda:0", "cuda:3")
    assert across.kind == "sys"
    assert across.bandwidth < switch.bandwidth and across.latency > switch.latency
    assert len([k for k in c.links if "cpu" not in k]) == 6  # every GPU pair has a link


def test_eight_gpus_on_an_nvswitch(monkeypatch):
    gpus = [FakeGpu("NVIDIA A100-SXM4-40GB", 40 * GiB, 39 * GiB, bus(i), nvlinks=[SWITCH_BUS] * 12)
            for i in range(8)]
    install(monkeypatch, gpus)
    c = detect_cluster()
    assert len(c.gpus) == 8 and {d.name for d in c.gpus} == {"A100-40GB"}
    pairs = [(f"cuda:{i}", f"cuda:{j}") for i in range(8) for j in range(i + 1, 8)]
    assert all(c.link(a, b).kind == "nvlink" for a, b in pairs)
    assert c.link("cuda:3", "cuda:6").bandwidth == pytest.approx(cat.gpu_from_name("A100-40GB").nvlink_bandwidth)
    assert "NVSwitch" in c.link("cuda:0", "cuda:7").detail


def test_unknown_gpu_gets_estimated_numbers(monkeypatch):
    install(monkeypatch, [FakeGpu("NVIDIA Mystery 9000", 16 * GiB, 15 * GiB, bus(0), sm_clock=2000, cores=8192)])
    gpu = detect_cluster().device("cuda:0")
    assert gpu.numbers_from == "estimated" and gpu.name == "NVIDIA Mystery 9000"
    assert gpu.flops == pytest.approx(8192 * 2 * 2000e6)
    assert gpu.mem_bandwidth == pytest.approx(5120 / 8 * 1215e6 * 2)


def test_nvml_that_fails_to_start_means_cpu_only(monkeypatch):
    module = fake_pynvml([])

    def broken():
        raise FakeNVMLError("Driver Not Loaded")

    module.nvmlInit = broken
    monkeypatch.setitem(sys.modules, "pynvml", module)
    c = detect_cluster()
    assert [d.id for d in c.devices] == ["cpu"]
    assert c.notes and "Driver Not Loaded" in c.notes[0]


def test_this_machine_reports_the_cpu_and_no_gpu():
    """No NVIDIA driver here: the real pynvml fails to start."""
    c = resolve_cluster(None)
    assert not c.has_gpu and c.source == "cpu"
    assert [d.id for d in c.devices] == ["cpu"]
    assert any(n.startswith(NO_GPU_NOTE) for n in c.notes)
    cpu = c.device("cpu")
    assert cpu.kind == "cpu" and cpu.cores >= 1 and cpu.numbers_from == "measured"
    assert 0 < cpu.memory_bytes <= cpu.total_memory_bytes
    assert cpu.flops > 1e8 and cpu.mem_bandwidth > 1e8


def test_cpu_measurement_is_cached(monkeypatch):
    from uellm_cli.profile import cpu_bench

    first = detect_cluster().device("cpu")
    monkeypatch.setattr(cpu_bench, "benchmark", lambda: pytest.fail("measured twice"))
    second = detect_cluster().device("cpu")
    assert (second.flops, second.mem_bandwidth) == (first.flops, first.mem_bandwidth)


def test_a_reading_taken_under_load_is_measured_again_when_the_machine_is_quieter(monkeypatch):
    """A CPU measured while other work ran reads low, and every forecast would inherit that:
    when the load average has dropped by more than half a core, it is measured again and the
    better reading of each number is kept (never a worse one)."""
    from uellm_cli.profile import cpu_bench

    readings = iter([{"flops": 1e10, "mem_bandwidth": 5e10}, {"flops": 2e11, "mem_bandwidth": 3e10}])
    monkeypatch.setattr(cpu_bench, "benchmark", lambda: next(readings))
    info = cpu_bench.cpu_info()
    monkeypatch.setattr(cpu_bench, "_load_average", lambda: 3.0)  # busy: the first reading
    assert cpu_bench.measured_cpu(info)["flops"] == 1e10
    assert cpu_bench.measured_cpu(info)["flops"] == 1e10  # as busy: the cached reading
    monkeypatch.setattr(cpu_bench, "_load_average", lambda: 0.2)  # quiet now: measured again
    again = cpu_bench.measured_cpu(info)
    assert (again["flops"], again["mem_bandwidth"]) == (2e11, 5e10)
    assert cpu_bench.measured_cpu(info) == again  # and cached (next(readings) would raise)


# ---------------------------------------------------------------------------- specs


def test_spec_counts_and_catalogue_numbers():
    c = parse_cluster_spec("4xA100-40GB")
    a100 = cat.gpu_from_name("A100-40GB")
    assert [d.id for d in c.devices] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert all(d.memory_bytes == 40 * GiB and d.flops == a100.flops for d in c.devices)
    assert c.link("cuda:0", "cuda:3").kind == "nvlink"  # an SXM part sits on an NVSwitch board
    assert c.source == "spec" and not c.notes
    assert parse_cluster_spec("4xA100-40GB:pcie").link("cuda:0", "cuda:3").kind == "pcie"
    assert parse_cluster_spec("2xL4").link("cuda:0", "cuda:1").kind == "pcie"  # no NVLink at all
    bridged = parse_cluster_spec("2xA100-80GB-PCIe")
    assert bridged.link("cuda:0", "cuda:1").kind == "pcie"  # bridges are never assumed


def test_spec_nvlink_and_mixed_groups():
    c = parse_cluster_spec("2xH100-80GB:nvlink")
    assert c.link("cuda:0", "cuda:1").kind == "nvlink"
    assert c.link("cuda:0", "cuda:1").bandwidth == pytest.approx(450e9)
    mixed = parse_cluster_spec("1xA100-80GB+2xL4")
    assert [d.name for d in mixed.devices] == ["A100-80GB", "L4", "L4"]
    assert mixed.device("cuda:1").memory_bytes == 24 * GiB
    assert mixed.link("cuda:0", "cuda:2").kind == "pcie"


def test_bridged_cards_pair_up():
    c = parse_cluster_spec("4xRTX3090:nvlink")
    assert c.link("cuda:0", "cuda:1").kind == "nvlink" and c.link("cuda:2", "cuda:3").kind == "nvlink"
    assert c.link("cuda:1", "cuda:2").kind == "pcie"


def test_spec_cpu_alone_and_added():
    only = parse_cluster_spec("cpu")
    assert [d.id for d in only.devices] == ["cpu"] and only.notes
    both = parse_cluster_spec("2xT4 + cpu")
    assert [d.id for d in both.devices] == ["cuda:0", "cuda:1", "cpu"]
    assert both.link("cuda:1", "cpu").bandwidth == pytest.approx(cat.LINKS["pcie3"].bandwidth)


@pytest.mark.parametrize("spec, words", [
    ("4xB9000", "unknown GPU"),
    ("2xA100", "ambiguous"),
    ("0xT4", "count"),
    ("-2xT4", "count"),
    ("2.5xT4", "count"),
    ("4xT4:nvlink", "no NVLink"),
    ("2xL4:warp", "unknown link"),
    ("2xL4+", "cannot read"),
    ("", "empty"),
    ("cpu+cpu", "twice"),
])
def test_bad_specs_fail_clearly(spec, words):
    with pytest.raises(ConfigError) as err:
        parse_cluster_spec(spec)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        cat.gpu_from_name("Z80")
    assert "H100-80GB" in err.value.hint and "T4" in err.value.hint


def test_catalogue_lookup_by_alias_and_prefix():
    assert cat.gpu_from_name("rtx 4090").name == "RTX4090"
    assert cat.gpu_from_name("h100_sxm").name == "H100-80GB"
    assert cat.gpu_from_name("H20").name == "H200"
    assert cat.gpu_from_nvml("NVIDIA L40S", 48 * GiB).name == "L40S"
    assert cat.gpu_from_nvml("NVIDIA L4", 23 * GiB).name == "L4"
    assert cat.gpu_from_nvml("NVIDIA H100 80GB HBM3", 80 * GiB).name == "H100-80GB"
    assert cat.gpu_from_nvml("Tesla V100-SXM2-32GB", 32 * GiB).name == "V100-32GB"


def test_catalogue_has_the_required_gpus_with_sane_numbers():
    for name in ("V100-16GB", "V100-32GB", "T4", "A10G", "L4", "RTX3090", "RTX4090",
                 "A100-40GB", "A100-80GB", "H100-80GB", "H100-PCIe", "H200"):
        g = cat.gpu_from_name(name)
        assert 8 * GiB <= g.memory_bytes <= 200 * GiB
        assert 10e12 <= g.flops <= 2000e12 and 100e9 <= g.mem_bandwidth <= 10e12
        assert g.source
    order = ["nvlink4", "nvlink3", "pcie5", "pcie4", "pcie3"]
    assert [cat.LINKS[k].bandwidth for k in order] == sorted((cat.LINKS[k].bandwidth for k in order), reverse=True)
    assert cat.LINKS["nvlink3"].latency < cat.LINKS["pcie4"].latency < cat.LINKS["sys"].latency


# ---------------------------------------------------------------------------- files


def test_detected_cluster_round_trips_through_the_file_format(monkeypatch, tmp_path):
    gpus = [FakeGpu("NVIDIA H100 80GB HBM3", 80 * GiB, 78 * GiB, bus(i), pcie_gen=5, nvlinks=[SWITCH_BUS] * 18,
                    nvlink_version=6) for i in range(2)]
    install(monkeypatch, gpus)
    c = detect_cluster()
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster_to_dict(c)))
    back = parse_cluster_spec(str(path))
    assert back.devices == c.devices
    assert back.links == c.links and back.default_link == c.default_link
    assert back.source == "nvml"


def test_spec_round_trips_through_yaml(tmp_path):
    import yaml

    c = parse_cluster_spec("2xH100-80GB:nvlink+1xL4")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cluster_to_dict(c)))
    back = parse_cluster_spec(str(path))
    assert back.devices == c.devices and back.links == c.links


def test_hand_written_file_with_catalogue_names_and_units(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "devices:\n"
        "  - {name: A100-80GB, count: 2}\n"
        "  - {id: cuda:2, name: my-card, memory_bytes: 12GiB, flops: 50TFLOPS, mem_bandwidth: 400GB/s, node: b}\n"
        "links:\n"
        "  - {a: cuda:0, b: cuda:1, kind: nvlink3, bandwidth: 300GB/s}\n"
        "  - {a: cuda:1, b: cuda:2, kind: ib-hdr}\n"
    )
    c = parse_cluster_spec(str(path))
    assert [d.id for d in c.devices] == ["cuda:0", "cuda:1", "cuda:2"]
    assert c.device("cuda:1").flops == cat.gpu_from_name("A100-80GB").flops
    mine = c.device("cuda:2")
    assert (mine.memory_bytes, mine.flops, mine.mem_bandwidth, mine.node) == (12 * GiB, 50e12, 400e9, "b")
    assert c.link("cuda:0", "cuda:1") == Link("nvlink", 300e9, cat.LINKS["nvlink3"].latency, "nvlink3")
    ib = c.link("cuda:2", "cuda:1")
    assert (ib.kind, ib.bandwidth) == ("net", cat.LINKS["ib-hdr"].bandwidth)
    assert c.source == "file"


@pytest.mark.parametrize("text, words", [
    ("devices: []\n", "non-empty"),
    ("devices:\n  - {name: my-card}\n", "unknown GPU"),
    ("devices:\n  - {name: T4}\nlinks:\n  - {a: cuda:0, b: cuda:9}\n", "not listed"),
    ("devices:\n  - {name: x, memory_bytes: lots, flops: 1, mem_bandwidth: 1}\n", "memory_bytes"),
    ("devices: [\n", "cannot read"),
])
def test_bad_cluster_files(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        parse_cluster_spec(str(path))
    assert words in str(err.value)


def test_missing_cluster_file():
    with pytest.raises(ConfigError, match="not found"):
        parse_cluster_spec("nowhere/cluster.yaml")


def test_cluster_dict_is_plain_json():
    c = Cluster([Device("cuda:0", "T4", "gpu", 16 * GiB, 65e12, 320e9)], {})
    d = cluster_to_dict(c)
    assert json.loads(json.dumps(d)) == d
    assert cluster_from_dict(d).devices == c.devices
