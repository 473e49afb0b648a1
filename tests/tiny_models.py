"""Tiny random models with a tokenizer trained here on embedded text, saved with save_pretrained.

Tests load them through uellm's own loading path, so nothing needs the network.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = """
The quick brown fox jumps over the lazy dog. A deadline is a time by which a job must finish.
Large language models generate text one token at a time. Batches of prompts run together.
What is the capital of France? Paris is the capital of France. List three colours: red, green, blue.
Write a short poem about the sea. The sea is wide and blue and deep. Explain why the sky is blue.
Summarise this paragraph in one word. Hello world! How are you today? I am fine, thank you.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) [ ] { } " ' - _ / \\ @ # % & *
"""

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(arch: str, vocab: int, eos_id: int, pad_id: int, bos_id: int, max_pos: int):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=bos_id)
    if arch == "llama":
        return LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=max_pos, tie_word_embeddings=False,
            **common,
        )
    if arch == "qwen2":
        return Qwen2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=max_pos, tie_word_embeddings=True,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=max_pos, **common)
    raise ValueError(arch)


def build_tiny_model(out: Path, arch: str = "llama", seed: int = 0, max_pos: int = 512) -> Path:
    """Save a tiny random model of `arch` plus the test tokenizer into `out`; return `out`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = build_tokenizer()
    eos, pad, bos = tok.eos_token_id, tok.pad_token_id, tok.bos_token_id
    cfg = _config(arch, len(tok), eos, pad, bos, max_pos)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=bos)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
