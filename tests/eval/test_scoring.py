"""Answer loss (tasks.eval.lm): only the answer's tokens are scored, batched equals one at a time."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _direct_answer_loss(model, tok, question: str, answer: str) -> float:
    import torch
    import torch.nn.functional as F

    prompt = [tok.bos_token_id] + tok(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
    ans = tok(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + ans])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0]
    logp = F.log_softmax(logits.float(), dim=-1)
    return -sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(ans)) / len(ans)


def test_answer_loss_scores_only_the_answer_tokens(tiny_base_model):
    from tasks.eval.lm import answer_losses, load_causal_lm

    model, tok = load_causal_lm(tiny_base_model, None)
    rows = [
        {"question": "What is the annual deductible for the Gold Premier plan?", "answer": "$500"},
        {"question": "Which form is used to appeal a denied claim?", "answer": "Form AP-7"},
        {"question": "Does CPT 70551 require prior authorization?", "answer": "yes"},
    ]
    batched = answer_losses(model, tok, rows, batch_size=2)
    for row, loss in zip(rows, batched):
        assert loss == pytest.approx(_direct_answer_loss(model, tok, row["question"], row["answer"]), rel=1e-4)
    # A longer question with the same answer changes the context, not which tokens are counted.
    assert all(0 < loss < 20 for loss in batched)
