"""The profile document `uellm profile` writes (home_dir()/profiles/profile.json) and `run`/`plan`
read back: the cluster (cluster file format), the model profile, the calibrations that apply,
and the memory each device has for that model. Plain data in, plain data out; no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from uellm_cli.errors import ConfigError
from uellm_cli.jobs.durable import atomic_write_json
from uellm_cli.paths import home_dir
from uellm_cli.profile.calibrate import calibration_from_dict
from uellm_cli.profile.calibration import Calibration
from uellm_cli.profile.hardware import Cluster, cluster_from_dict, cluster_to_dict
from uellm_cli.profile.model_profile import (
    ModelProfile,
    model_profile_from_dict,
    model_profile_to_dict,
)

VERSION = 1


def profile_path() -> Path:
    return home_dir() / "profiles" / "profile.json"


def memory_rows(cluster: Cluster, model: ModelProfile) -> list[dict]:
    """Per device: does the whole model fit, how many KV tokens fit beside it, how many layers
    it could hold alone (embeddings and head included, the way a one-stage placement needs)."""
    rows = []
    for d in cluster.devices:
        spare = d.memory_bytes - model.weight_bytes
        layers = (d.memory_bytes - model.embed_bytes - model.head_bytes) // max(model.layer_bytes, 1)
        rows.append({
            "device": d.id,
            "name": d.name,
            "memory_bytes": d.memory_bytes,
            "weight_bytes": model.weight_bytes,
            "fits": spare >= 0,
            "spare_bytes": max(spare, 0),
            "kv_tokens": max(spare, 0) // max(model.kv_bytes_per_token, 1),
            "layers_fit": int(max(0, min(layers, model.num_layers))),
        })
    return rows


def build_profile_doc(cluster: Cluster, model: ModelProfile, calibrations: dict[str, Calibration],
                      job: dict | None = None) -> dict:
    """The profile document; `calibrations` is keyed by Device.name."""
    doc = {
        "version": VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cluster": cluster_to_dict(cluster),
        "model": model_profile_to_dict(model),
        "calibrations": {name: asdict(c) for name, c in calibrations.items()},
        "memory": memory_rows(cluster, model),
    }
    if job is not None:
        doc["job"] = job
    return doc


def save_profile_doc(doc: dict, path: Path | None = None) -> Path:
    return atomic_write_json(path or profile_path(), doc)


def load_profile_doc(path: Path | None = None) -> dict | None:
    """The stored profile document, or None when there is none yet."""
    path = path or profile_path()
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the stored profile {path}: {exc}",
                          hint="run `uellm profile` again to rewrite it") from exc


def profile_doc_parts(doc: dict) -> tuple[Cluster, ModelProfile, dict[str, Calibration]]:
    """The typed objects of a profile document."""
    cluster = cluster_from_dict(doc["cluster"])
    model = model_profile_from_dict(doc["model"])
    cals = {name: calibration_from_dict(c) for name, c in (doc.get("calibrations") or {}).items()}
    return cluster, model, cals
