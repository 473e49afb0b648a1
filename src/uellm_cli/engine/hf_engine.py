"""The transformers engine: static, left-padded batches through `model.generate`.

It alone honours HELR layer maps exactly (accelerate dispatches the layers where the plan put
them). Tokens after EOS and padding are never counted as output.
"""

from __future__ import annotations

from uellm_cli.engine.base import BatchOutput, Generated
from uellm_cli.jobs.schema import Row, Sampling


class HFEngine:
    """Tokenises rows (chat template where it applies) and generates a batch at a time."""

    name = "hf"

    def __init__(self, tokenizer, model=None, *, raw_prompt: bool = False):
        self.tokenizer = tokenizer
        self.model = model
        self.raw_prompt = raw_prompt
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_cfg = getattr(self.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
        return ids

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, row: Row) -> list[int]:
        """Token ids of a row's prompt. `messages` always go through the chat template;
        a plain `prompt` does too when the model has one, unless --raw-prompt or the row is a
        completion prompt (OpenAI /v1/completions)."""
        tok = self.tokenizer
        if row.messages is not None:
            if not self.has_chat_template:
                text = "\n".join(f"{m['role']}: {m['content']}" for m in row.messages)
                return tok(text, add_special_tokens=True)["input_ids"]
            return list(_as_ids(tok.apply_chat_template(
                row.messages, add_generation_prompt=True, tokenize=True
            )))
        if self.has_chat_template and not (self.raw_prompt or row.raw_prompt):
            msgs = [{"role": "user", "content": row.prompt}]
            return list(_as_ids(tok.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=True
            )))
        return tok(row.prompt, add_special_tokens=True)["input_ids"]

    def generate(
        self, prompts: list[list[int]], *, max_new_tokens: list[int], sampling: Sampling
    ) -> BatchOutput:
        """Generate one static batch. All rows share `sampling` (the scheduler guarantees it);
        each row keeps at most its own `max_new_tokens` (greedy output is a prefix, so a row
        capped inside a wider batch equals the row run alone)."""
        import torch

        model, tok = self.model, self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_ids))
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        device = _input_device(model)
        kwargs: dict = dict(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max(max_new_tokens),
            pad_token_id=pad,
            eos_token_id=sorted(self.eos_ids) or None,
        )
        if sampling.is_greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        with torch.inference_mode():
            out = model.generate(**kwargs)
        gen = out[:, width:].tolist()
        return BatchOutput(
            generated=[self._decode(ids[:cap], sampling) for ids, cap in zip(gen, max_new_tokens, strict=False)],
            steps=len(gen[0]) if gen else 0,
            prompt_width=width,
        )

    def _decode(self, ids: list[int], sampling: Sampling) -> Generated:
        """Count real tokens: up to and including the first EOS; the rest is padding."""
        n = len(ids)
        finish = "length"
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                n, finish = i + 1, "stop"
                break
        text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        if sampling.stop:
            cut = min((text.find(s) for s in sampling.stop if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                # generate stops on the stop string; tokens after it are padding
                n = min(n, _trim_to_text(self.tokenizer, ids[:n], text))
        return Generated(text=text, output_tokens=n, finish_reason=finish)


def _trim_to_text(tok, ids: list[int], text: str) -> int:
    """Smallest prefix of `ids` whose decoding covers `text` (the stop string included)."""
    for k in range(1, len(ids) + 1):
        if len(tok.decode(ids[:k], skip_special_tokens=True)) > len(text):
            return k
    return len(ids)


def _as_ids(encoded) -> list[int]:
    """apply_chat_template returns a list, or a BatchEncoding in newer transformers."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(t) for t in encoded]


def _input_device(model):
    """Where input ids go: the device of the input embeddings (first stage of a layer split)."""
    try:
        return model.get_input_embeddings().weight.device
    except Exception:  # noqa: BLE001
        return "cpu"
