"""Prompt token ids and output token counting, by the same rules as uellm's HF engine.

Every system gets the ids made here, so they all see exactly the same prompts:
`messages` and plain `prompt` go through the tokenizer's chat template
(add_generation_prompt=True) unless raw_prompt; a model without a chat template gets the
plain text (messages joined as "role: content" lines).
"""

from __future__ import annotations


def encode(tokenizer, row: dict, raw_prompt: bool = False) -> list[int]:
    """Token ids of one bench row ({"prompt": str} or {"messages": [...]})."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    messages = row.get("messages")
    if messages is not None:
        if not has_template:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
            return list(tokenizer(text, add_special_tokens=True)["input_ids"])
        return _as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     tokenize=True))
    if has_template and not raw_prompt:
        msgs = [{"role": "user", "content": row["prompt"]}]
        return _as_ids(tokenizer.apply_chat_template(msgs, add_generation_prompt=True,
                                                     tokenize=True))
    return list(tokenizer(row["prompt"], add_special_tokens=True)["input_ids"])


def _as_ids(encoded) -> list[int]:
    """apply_chat_template returns a list, or a BatchEncoding in newer transformers."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(t) for t in encoded]


def eos_ids(tokenizer, model_config=None, generation_config=None) -> list[int]:
    """Every token id that ends a row: the tokenizer's EOS plus the model's generation EOS."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    for cfg in (generation_config, model_config):
        eos = getattr(cfg, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return sorted(ids)


def cut_at_eos(ids: list[int], eos: list[int] | set[int], cap: int) -> tuple[list[int], str]:
    """Real output: tokens up to and including the first EOS, at most `cap` of them."""
    eos = set(eos)
    ids = list(ids)[:cap]
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1], "stop"
    return ids, "length"
