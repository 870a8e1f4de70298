"""How a record becomes tokens: shared by training and by the attacks that must score a record exactly as
it was trained (membership inference, canary exposure)."""

from __future__ import annotations


def tokenize(texts: list[str], tokenizer, max_len: int) -> list[list[int]]:
    """BOS + text + EOS, cut at `max_len` tokens."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    return [
        tokenizer(bos + t + eos, truncation=True, max_length=max_len, add_special_tokens=False)["input_ids"]
        for t in texts
    ]
