"""Sequence likelihoods of a causal LM: the shared scoring primitive of the evaluation.

`token_nll` sums -ln p over the predicted tokens of many token rows in padded batches; the
privacy attacks (canary exposure, membership inference) and the QA answer loss all build on it.
`answer_losses` is the held-out QA figure that moves smoothly with training: the mean -ln p per
token of each gold answer after its question, in the lm-eval prompt format. Exact match moves
one whole question at a time; on a small split a real gain in answer likelihood can leave EM
unchanged, so the answer loss is what tells whether a run learned the domain at all.
"""

from __future__ import annotations

from pathlib import Path

from tasks.common import offline

QA_PROMPT = "Question: {question}\nAnswer:"  # the domain_qa task's doc_to_text (include/lm_eval_tasks)


def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return "cpu"


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0  # pragma: no cover


def token_nll(
    model, rows: list[list[int]], *, pad_id: int, batch_size: int = 64, starts: list[int] | None = None
) -> list[tuple[float, int]]:
    """(sum of -ln p, number of predicted tokens) per token row.

    Every token after the first is predicted, or with `starts` only the tokens at positions
    >= starts[i] (the answer after its prompt). Rows are sorted by length so a batch pads
    little; right padding, masked out of the loss.
    """
    per_token = token_nlls(model, rows, pad_id=pad_id, batch_size=batch_size, starts=starts)
    return [(float(sum(values)), len(values)) for values in per_token]


def token_nlls(
    model, rows: list[list[int]], *, pad_id: int, batch_size: int = 64, starts: list[int] | None = None
) -> list[list[float]]:
    """-ln p of each predicted token, per token row (the same tokens `token_nll` sums).

    Per-token values are what min-k % scoring needs: a memorised record has few surprising tokens."""
    import torch
    import torch.nn.functional as F

    device = _device(model)
    out: list[list[float]] = [[] for _ in rows]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(rows[i]) for i in idx)
            if width < 2:
                continue
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
                mask[j, : len(rows[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").cpu()
            for j, i in enumerate(idx):
                # position p of `nll` predicts token p + 1; score tokens from max(1, start) to the row's end
                first = max(1, starts[i] if starts else 1)
                out[i] = nll[j, first - 1 : len(rows[i]) - 1].tolist()
    finally:
        model.train(was_training)
    return out


def answer_losses(model, tokenizer, qa_rows: list[dict], *, batch_size: int = 64) -> list[float]:
    """Mean -ln p per token of " <answer>" after "Question: <question>\\nAnswer:", one per QA row.

    The prompt is tokenised alone and the answer appended, so the boundary is exact whatever the
    tokenizer merges; BOS leads, as in training (tasks.common.tokens.tokenize).
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows, starts = [], []
    for qa in qa_rows:
        prompt = bos + tokenizer(QA_PROMPT.format(question=qa["question"]), add_special_tokens=False)["input_ids"]
        answer = tokenizer(" " + qa["answer"], add_special_tokens=False)["input_ids"]
        rows.append(prompt + answer)
        starts.append(len(prompt))
    scores = token_nll(model, rows, pad_id=pad_id(tokenizer), batch_size=batch_size, starts=starts)
    return [total / n if n else float("nan") for total, n in scores]


def load_causal_lm(base_model_dir: Path, adapter_dir: Path | None):
    """Load (model, tokenizer) once, CPU float32, adapter applied when given."""
    offline.apply()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def generate_greedy(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 8
) -> list[str]:
    """Greedy continuations (new text only), batched with left padding."""
    import torch

    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row continues from its last token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        with torch.inference_mode():
            generated = model.generate(
                # Only ids and mask: some tokenizers also return token_type_ids, which Llama rejects.
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
            )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return outputs
