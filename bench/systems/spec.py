"""System names on the bench command line, and what each one means."""

from __future__ import annotations

import re
from dataclasses import dataclass

UELLM_POLICIES = ("slo-odbs", "fcfs", "sjf", "edf", "slo-odbs-paper")

DEFAULT_SYSTEMS = (
    "hf-naive", "hf-static-8", "hf-static-16", "hf-cb", "vllm", "vllm-priority",
    *(f"uellm-{p}" for p in UELLM_POLICIES),
)

DESCRIPTIONS = {
    "hf-naive": "transformers generate, one row at a time, input order",
    "hf-static": "transformers generate, fixed batches in input order, left padding",
    "hf-cb": "transformers continuous batching (ContinuousBatchingManager), FIFO",
    "vllm": "vLLM offline engine on the CPU, FCFS",
    "vllm-priority": "vLLM offline engine, scheduling_policy=priority from deadlines",
    "uellm": "uellm run with its defaults (--engine auto)",
}

HF_CB_DEFAULT_SLOTS = 32


@dataclass(slots=True, frozen=True)
class SystemSpec:
    """One system to run. kind picks the adapter; the rest are its settings."""

    name: str
    kind: str  # "hf" | "vllm" | "uellm"
    mode: str = ""  # hf: naive | static | cb; uellm: the policy
    batch_size: int = 1  # hf-static: rows per batch; hf-cb: concurrent requests
    priority: bool = False  # vllm: deadline-derived priorities
    engine: str = "hf"  # uellm: --engine (hf, vllm, or auto for the `uellm` system)
    replicas: int = 0  # uellm: > 0 runs --backend ray --replicas N (a local Ray)

    @property
    def description(self) -> str:
        if self.kind == "uellm" and self.engine == "auto":
            return DESCRIPTIONS["uellm"]
        if self.kind == "uellm":
            return f"uellm run --policy {self.mode}" + (
                f" --engine {self.engine}" if self.engine != "hf" else "") + (
                f" --backend ray --replicas {self.replicas}" if self.replicas else "")
        if self.mode == "static":
            return f"{DESCRIPTIONS['hf-static']} (batch {self.batch_size})"
        if self.mode == "cb":
            return f"{DESCRIPTIONS['hf-cb']} (up to {self.batch_size} requests at once)"
        return DESCRIPTIONS.get(self.name, self.name)


def parse_system(name: str) -> SystemSpec:
    """`hf-static-8` -> SystemSpec(kind="hf", mode="static", batch_size=8). Raises ValueError."""
    name = name.strip()
    if name == "hf-naive":
        return SystemSpec(name, "hf", "naive", 1)
    m = re.fullmatch(r"hf-static-(\d+)", name)
    if m and int(m.group(1)) > 0:
        return SystemSpec(name, "hf", "static", int(m.group(1)))
    m = re.fullmatch(r"hf-cb(?:-(\d+))?", name)
    if m and (m.group(1) is None or int(m.group(1)) > 0):
        return SystemSpec(name, "hf", "cb", int(m.group(1) or HF_CB_DEFAULT_SLOTS))
    if name in ("vllm", "vllm-priority"):
        return SystemSpec(name, "vllm", "priority" if name.endswith("priority") else "fcfs",
                          priority=name.endswith("priority"))
    if name == "uellm":  # what a user gets: every option at its default
        return SystemSpec(name, "uellm", "slo-odbs", engine="auto")
    m = re.fullmatch(r"uellm-vllm(?:-(.+))?", name)  # uellm-vllm = slo-odbs on the vllm engine
    if m and (m.group(1) or "slo-odbs") in UELLM_POLICIES:
        return SystemSpec(name, "uellm", m.group(1) or "slo-odbs", engine="vllm")
    m = re.fullmatch(r"uellm-ray-(\d+)", name)  # slo-odbs, N replicas as actors on a local Ray
    if m and int(m.group(1)) > 0:
        return SystemSpec(name, "uellm", "slo-odbs", replicas=int(m.group(1)))
    if name.startswith("uellm-") and name[len("uellm-"):] in UELLM_POLICIES:
        return SystemSpec(name, "uellm", name[len("uellm-"):])
    raise ValueError(
        f"unknown system '{name}': use hf-naive, hf-static-N, hf-cb[-N], vllm, vllm-priority, uellm, "
        + ", ".join(f"uellm-{p}" for p in UELLM_POLICIES) + ", uellm-vllm[-POLICY], uellm-ray-N"
    )


def parse_systems(text: str) -> list[SystemSpec]:
    """A comma-separated list, in the order given (the first is the baseline for ratios)."""
    specs = [parse_system(s) for s in text.split(",") if s.strip()]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"system listed twice: {', '.join(dup)}")
    if not specs:
        raise ValueError("no systems given")
    return specs
