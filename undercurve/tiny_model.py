"""A tiny random Qwen2 model with a byte-level BPE tokenizer trained on the fly.

Offline stand-in for a real base model: same architecture family and chat template as the
paper's Qwen models, small enough to score, sample and fine-tune on a CPU in seconds.
Head dim 32 because vLLM's CPU attention only supports a fixed set of head sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE (no unknown tokens) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def build_tiny_qwen2(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    seed: int = 0,
) -> Path:
    """Write a random tiny Qwen2 model + tokenizer to ``out_dir`` (idempotent: a model already
    there is returned without importing torch, which costs a nightly run seconds)."""
    out = Path(out_dir)
    if (out / "config.json").exists():  # moved in last, so the model is complete
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=32768,
        tie_word_embeddings=False,  # a tied head predicts the input token with p ~ 1
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        # The default std 0.02 gives near-uniform next-token distributions (entropy ~ log2 V
        # everywhere); 0.3 spreads them over ~2-6 bits, closer to a real model's.
        model.lm_head.weight.normal_(0.0, 0.3)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for p in sorted(tmp.iterdir(), key=lambda f: f.name == "config.json"):  # config.json last
        p.replace(out / p.name)
    tmp.rmdir()
    return out
