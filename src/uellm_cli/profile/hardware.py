"""Devices, links and clusters: detected (NVML, CPU) or described by a spec (`4xA100-40GB`).

Spec syntax (documented in docs/profiler.md): groups joined by `+`, each `[N x]NAME[:LINK]`:
`4xA100-40GB`, `2xH100-80GB:nvlink`, `1xA100-80GB+2xL4`, `cpu`, `2xRTX3090:nvlink+cpu`.
A path to a .yaml/.yml/.json file reads the format `cluster_to_dict` writes. No torch here:
NVML (nvidia-ml-py) is imported lazily, the CPU is measured with numpy.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

from uellm_cli.errors import ConfigError
from uellm_cli.profile import catalogue as cat
from uellm_cli.profile.devices import Cluster, Device, Link

NO_GPU_NOTE = "no GPU found"

# ---------------------------------------------------------------------------- specs


def resolve_cluster(spec: str | None) -> Cluster:
    """The cluster to plan for: detected when `spec` is None, else parsed from the spec or file."""
    return detect_cluster() if spec is None else parse_cluster_spec(spec)


def parse_cluster_spec(spec: str) -> Cluster:
    """Parse `4xA100-40GB`, `2xH100-80GB:nvlink`, `1xA100-80GB+2xL4`, `cpu`, or a cluster file."""
    text = spec.strip()
    if not text:
        raise ConfigError("empty cluster spec", hint="e.g. --cluster 4xA100-40GB")
    if text.lower().endswith((".yaml", ".yml", ".json")) or os.path.sep in text or Path(text).is_file():
        return _read_cluster_file(Path(text))
    gpus: list[tuple[cat.GpuSpec, str | None]] = []
    links: dict[tuple[str, str], Link] = {}
    with_cpu = False
    for token in text.split("+"):
        token = token.strip()
        if token.lower() == "cpu":
            if with_cpu:
                raise ConfigError(f"cluster spec {spec!r} names the CPU twice")
            with_cpu = True
            continue
        count, name, link = _parse_group(token, spec)
        if name.lower() == "cpu":
            raise ConfigError(f"cluster spec {spec!r}: there is one CPU device; write `cpu`, not {token!r}")
        gpu = cat.gpu_from_name(name)
        first = len(gpus)
        gpus.extend((gpu, link) for _ in range(count))
        links.update(_group_links(gpu, first, count, link, token))
    devices = [_catalogue_device(f"cuda:{i}", g) for i, (g, _) in enumerate(gpus)]
    # Between groups (and to the CPU): PCIe at the slower of the two generations.
    for i, a in enumerate(devices):
        for b in devices[i + 1:]:
            links.setdefault((a.id, b.id), _pcie(min(a.pcie_gen, b.pcie_gen), "between groups"))
    if with_cpu:
        cpu = detect_cpu()
        devices.append(cpu)
        for d in devices[:-1]:
            links[(d.id, "cpu")] = _pcie(d.pcie_gen, "host to device")
    gens = [d.pcie_gen for d in devices if d.kind == "gpu"]
    cluster = Cluster(devices, links, _pcie(min(gens) if gens else 3, "default"), source="spec")
    if not cluster.has_gpu:
        cluster.notes.append(f"{NO_GPU_NOTE}: the spec {spec!r} names the CPU only")
    return cluster


def _parse_group(token: str, spec: str) -> tuple[int, str, str | None]:
    bad = re.match(r"^\s*([-+]?[\d.]*)\s*[x×*]", token, re.I)
    count = 1
    if bad and not re.match(r"^\d+$", bad.group(1)):
        raise ConfigError(f"bad device count in {token!r} (cluster spec {spec!r})",
                          hint="the count is a whole number >= 1, e.g. 4xA100-40GB")
    m = re.match(r"^\s*(?:(\d+)\s*[x×*]\s*)?([A-Za-z0-9][\w.\- ]*?)\s*(?::\s*([\w\-]+))?\s*$", token)
    if not m:
        raise ConfigError(f"cannot read {token!r} in cluster spec {spec!r}",
                          hint="groups look like NxNAME[:LINK], joined by +, e.g. 2xH100-80GB:nvlink+2xL4")
    if m.group(1) is not None:
        count = int(m.group(1))
        if not 1 <= count <= 4096:
            raise ConfigError(f"bad device count {count} in {token!r}: it must be between 1 and 4096")
    return count, m.group(2), m.group(3)


def _pcie(gen: int, where: str) -> Link:
    spec = cat.pcie_link(gen)
    return Link("pcie", spec.bandwidth, spec.latency, f"{spec.name} x16 {where}")


def _group_links(gpu: cat.GpuSpec, first: int, count: int, link: str | None, token: str) -> dict:
    """Links inside one group: the `:LINK` named after the group, else NVLink through the
    switch for SXM parts (an SXM board always has it: A100-80GB, H100-80GB) and PCIe for
    the rest."""
    ids = [f"cuda:{first + i}" for i in range(count)]
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    name = (link or ("nvlink" if gpu.nvlink_topology == "switch" else "pcie")).lower()
    if name.startswith("nvlink"):
        if not gpu.nvlink_gen:
            raise ConfigError(f"{gpu.name} has no NVLink ({token!r})", hint="use :pcie, or leave the link out")
        gen = int(name[6:]) if name[6:].isdigit() else gpu.nvlink_gen
        per_link = gpu.nvlink_bandwidth / gpu.nvlink_links
        if gen != gpu.nvlink_gen:
            per_link = cat.nvlink_per_link(gen)
        nv = Link("nvlink", per_link * gpu.nvlink_links, cat.LINKS["nvlink4"].latency,
                  f"NV{gpu.nvlink_links} nvlink{gen}" + (" via NVSwitch" if gpu.nvlink_topology == "switch" else " bridge"))
        if gpu.nvlink_topology == "switch":
            return {p: nv for p in pairs}
        # NVLink bridges join cards two by two; the pairs reach each other over PCIe.
        bridged = {(ids[i], ids[i + 1]) for i in range(0, count - 1, 2)}
        return {p: nv if p in bridged else _pcie(gpu.pcie_gen, "between bridged pairs") for p in pairs}
    if name == "pcie":
        return {p: _pcie(gpu.pcie_gen, "within group") for p in pairs}
    spec = cat.link_from_name(name)
    return {p: Link(spec.kind, spec.bandwidth, spec.latency, spec.name) for p in pairs}


def _catalogue_device(device_id: str, gpu: cat.GpuSpec) -> Device:
    return Device(device_id, gpu.name, "gpu", gpu.memory_bytes, gpu.flops, gpu.mem_bandwidth,
                  total_memory_bytes=gpu.memory_bytes, pcie_gen=gpu.pcie_gen, model=gpu.name)


# ---------------------------------------------------------------------------- file format


def cluster_to_dict(cluster: Cluster) -> dict:
    """The cluster file format (version 1): what `uellm profile` writes and specs read back."""
    return {
        "version": 1,
        "source": cluster.source,
        "devices": [asdict(d) for d in cluster.devices],
        "links": [{"a": a, "b": b, **asdict(link)} for (a, b), link in cluster.links.items()],
        "default_link": asdict(cluster.default_link),
        "notes": list(cluster.notes),
    }


def cluster_from_dict(d: dict) -> Cluster:
    """Read the cluster file format. Devices may name a catalogue GPU and leave its numbers out,
    carry `count: N`, and give quantities with units ("80GiB", "2TB/s", "312TFLOPS", "5us")."""
    if not isinstance(d, dict) or not isinstance(d.get("devices"), list) or not d["devices"]:
        raise ConfigError("a cluster file needs a non-empty `devices` list")
    devices: list[Device] = []
    for entry in d["devices"]:
        if not isinstance(entry, dict):
            raise ConfigError(f"cluster file: each device is a mapping, not {entry!r}")
        for _ in range(int(entry.get("count", 1))):
            devices.append(_device_from_dict(entry, sum(x.kind == "gpu" for x in devices)))
    ids = [x.id for x in devices]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"cluster file: duplicate device ids in {ids}")
    links = {}
    for entry in d.get("links") or []:
        a, b = entry.get("a"), entry.get("b")
        if a not in ids or b not in ids:
            raise ConfigError(f"cluster file: link {a!r}-{b!r} names a device that is not listed")
        links[(a, b)] = _link_from_dict(entry)
    default = _link_from_dict(d["default_link"]) if d.get("default_link") else Link("pcie", 16e9, 10e-6)
    return Cluster(devices, links, default, source=str(d.get("source", "file")), notes=list(d.get("notes") or []))


def _device_from_dict(e: dict, gpu_index: int) -> Device:
    kind = str(e.get("kind", "cpu" if str(e.get("name", "")).lower() == "cpu" else "gpu"))
    base = cat.gpu_from_name(str(e.get("catalogue") or e["name"])) if kind == "gpu" and (
        "catalogue" in e or not {"memory_bytes", "flops", "mem_bandwidth"} <= e.keys()) else None
    if kind == "cpu" and not {"memory_bytes", "flops", "mem_bandwidth"} <= e.keys():
        local = detect_cpu()
        return Device(**{**asdict(local), **{k: v for k, v in e.items() if k in ("node",)}})
    defaults = _catalogue_device("", base) if base else None

    def num(key: str, unit: str) -> float:
        if key in e:
            return _quantity(e[key], key, unit)
        if defaults is None:
            raise ConfigError(f"cluster file: device {e.get('name')!r} needs `{key}` (or a catalogue name)")
        return getattr(defaults, key)

    mem = int(num("memory_bytes", "B"))
    return Device(
        id=str(e.get("id") or ("cpu" if kind == "cpu" else f"cuda:{gpu_index}")),
        name=str(e.get("name") or (base.name if base else "gpu")),
        kind=kind, memory_bytes=mem, flops=num("flops", "FLOP/s"), mem_bandwidth=num("mem_bandwidth", "B/s"),
        node=str(e.get("node", "local")),
        total_memory_bytes=int(_quantity(e["total_memory_bytes"], "total_memory_bytes", "B")) if "total_memory_bytes" in e else mem,
        pcie_gen=int(e["pcie_gen"]) if "pcie_gen" in e else (base.pcie_gen if base else 4),
        clock_mhz=float(e.get("clock_mhz", 0.0)), cores=int(e.get("cores", 0)),
        model=str(e.get("model", "")), numbers_from=str(e.get("numbers_from", "catalogue" if base else "file")),
    )


def _link_from_dict(e: dict) -> Link:
    kind = str(e.get("kind", "pcie"))
    if "bandwidth" in e and "latency" in e:
        return Link(kind, _quantity(e["bandwidth"], "bandwidth", "B/s"),
                    _quantity(e["latency"], "latency", "s"), str(e.get("detail", "")))
    spec = cat.link_from_name(str(e.get("link") or ("pcie4" if kind == "pcie" else kind)))
    bw = _quantity(e["bandwidth"], "bandwidth", "B/s") if "bandwidth" in e else spec.bandwidth
    lat = _quantity(e["latency"], "latency", "s") if "latency" in e else spec.latency
    return Link(spec.kind, bw, lat, str(e.get("detail", spec.name)))


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12,
          "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "flops": 1, "flop": 1,
          "gflops": 1e9, "gflop": 1e9, "tflops": 1e12, "tflop": 1e12, "pflops": 1e15, "pflop": 1e15,
          "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _quantity(value, key: str, unit: str) -> float:
    """A number, or a string with a unit: "80GiB", "2TB/s", "312 TFLOPS", "5us"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.match(r"^\s*([0-9.]+(?:e[-+]?\d+)?)\s*([a-zµ]*)(?:/s)?\s*$", str(value), re.I)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"cluster file: cannot read {key}={value!r} (a number in {unit}, or e.g. '80GiB', '2TB/s')")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def _read_cluster_file(path: Path) -> Cluster:
    if not path.is_file():
        raise ConfigError(f"cluster file not found: {path}")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"cannot read cluster file {path}: {str(exc).splitlines()[0]}") from exc
    if isinstance(data, dict) and isinstance(data.get("cluster"), dict):
        data = data["cluster"]  # a whole `uellm profile` JSON works too
    try:
        cluster = cluster_from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"cluster file {path}: bad entry ({exc})") from exc
    if cluster.source in ("spec", ""):
        cluster.source = "file"
    return cluster


# ---------------------------------------------------------------------------- detection


def detect_cluster() -> Cluster:
    """The GPUs NVML sees (with links between every pair) plus the CPU, always."""
    from uellm_cli.profile.nvml_detect import detect_gpus

    gpus, links, note = detect_gpus()
    cpu = detect_cpu()
    devices = [*gpus, cpu]
    for g in gpus:
        links[(g.id, "cpu")] = _pcie(g.pcie_gen, "host to device")
    if not gpus:
        return Cluster(devices, links, _pcie(3, "default"), source="cpu", notes=[f"{NO_GPU_NOTE}: {note}"])
    return Cluster(devices, links, _pcie(min(g.pcie_gen for g in gpus), "default"), source="nvml")


def detect_cpu(*, refresh: bool = False) -> Device:
    """This machine's CPU: cores, memory, and measured bandwidth and FLOP/s (cached in UELLM_HOME)."""
    from uellm_cli.profile.cpu_bench import cpu_info, measured_cpu

    info = cpu_info()
    bench = measured_cpu(info, refresh=refresh)
    return Device("cpu", info["name"], "cpu", info["available_bytes"], bench["flops"], bench["mem_bandwidth"],
                  total_memory_bytes=info["total_bytes"], cores=info["cores"], model=info["name"],
                  numbers_from="measured")
