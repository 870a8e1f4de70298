"""The MLflow pyfunc that serves a fine-tuned domain QA model (base model + PEFT LoRA adapter).

Logged by `tasks.release.registry` as an MLflow "model from code": MLflow copies this
file into the model artifact and runs it at load time, so a registered model
needs only mlflow, torch, transformers and peft, not this repository. Keep it
self-contained: no `tasks.*` imports.

Input: a pandas DataFrame with a "question" column. Output: one answer string
per row, from the pipeline's QA prompt with greedy decoding, cut at the first
newline (the base model ends each answer with one), at most 24 new tokens.

Inference param `max_new_tokens` (in the signature's params, default 24, at most
MAX_NEW_TOKENS_LIMIT): `model.predict(df, params={"max_new_tokens": 8})`. Versions
logged before the param existed ignore it (MLflow warns) and keep 24.

A prompt longer than the model's positions (max_position_embeddings) less the new
tokens is cut to fit (`fit_prompt`); `prompt_tokens(question, new_tokens)` says by
how much, for callers that report it (tasks.serve.app).
"""

from __future__ import annotations

import numbers

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

PROMPT = "Question: {question}\nAnswer:"
PROMPT_HEAD = "Question:"  # kept, with the tokenizer's BOS if any, when a long prompt is cut
MAX_NEW_TOKENS = 24  # the default; the signature's params carry it too
MAX_NEW_TOKENS_LIMIT = 256  # a caller cannot make one request hold the model for minutes


def max_new_tokens(params: dict | None) -> int:
    """The request's `max_new_tokens` param, checked: an int in [1, MAX_NEW_TOKENS_LIMIT]."""
    value = (params or {}).get("max_new_tokens", MAX_NEW_TOKENS)
    if value is None:
        return MAX_NEW_TOKENS
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_NEW_TOKENS_LIMIT:
        raise ValueError(f"params.max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT}, got {value!r}")
    return int(value)


def first_line(text: str) -> str:
    """The answer is what the model wrote before its first newline, without surrounding spaces."""
    return text.split("\n", 1)[0].strip()


class DomainQAModel(PythonModel):
    """Loads artifacts "base_model" (HF causal-LM dir) and, for PEFT methods, "adapter" (PEFT dir)."""

    def load_context(self, context: PythonModelContext) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

        base_dir, adapter_dir = context.artifacts["base_model"], context.artifacts.get("adapter")
        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        # full / freeze fine-tuning register whole tuned weights as base_model and no adapter
        model = PeftModel.from_pretrained(base, adapter_dir) if adapter_dir else base
        self.max_positions = getattr(base.config, "max_position_embeddings", None)  # None: no known limit
        self.model = model.to(self.device).eval()
        tokenizer = self.tokenizer

        class NewlineStop(StoppingCriteria):
            """Stop as soon as the generated continuation holds a newline (the answer is complete)."""

            def __init__(self, prompt_len: int):
                self.prompt_len = prompt_len

            def __call__(self, input_ids, scores, **kwargs):
                done = ["\n" in tokenizer.decode(row[self.prompt_len :], skip_special_tokens=True) for row in input_ids]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        self._stops = lambda prompt_len: StoppingCriteriaList([NewlineStop(prompt_len)])

    def fit_prompt(self, question: str, new_tokens: int) -> tuple[list[int], int]:
        """(the prompt's token ids, cut to fit the context; the uncut prompt's length).

        The prompt may use the positions the new tokens leave, and at least half of them (the
        new tokens are then cut instead, in _answer). A longer prompt keeps its head ("Question:")
        and its end, and loses the middle: the end holds the question actually asked (after any
        pasted context) and the "Answer:" cue the model was tuned to answer after.
        """
        ids = self.tokenizer(PROMPT.format(question=question))["input_ids"]
        if self.max_positions is None:
            return ids, len(ids)
        limit = max(self.max_positions - new_tokens, self.max_positions // 2)
        if len(ids) <= limit:
            return ids, len(ids)
        head = len(self.tokenizer(PROMPT_HEAD)["input_ids"])
        return ids[:head] + ids[len(ids) - (limit - head) :], len(ids)

    def prompt_tokens(self, question: str, new_tokens: int = MAX_NEW_TOKENS) -> tuple[int, int]:
        """(the prompt's length in tokens, how many of them the model reads)."""
        ids, total = self.fit_prompt(question, new_tokens)
        return total, len(ids)

    def _answer(self, question: str, new_tokens: int = MAX_NEW_TOKENS) -> str:
        ids, _ = self.fit_prompt(question, new_tokens)
        prompt_len = len(ids)
        if self.max_positions is not None:  # never generate past the last position
            new_tokens = min(new_tokens, self.max_positions - prompt_len)
        input_ids = self._torch.tensor([ids], device=self.device)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=self._torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=new_tokens,
                stopping_criteria=self._stops(prompt_len),
                pad_token_id=pad_id,
            )
        return first_line(self.tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True))

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        if "question" not in model_input.columns:
            raise ValueError(f"input needs a 'question' column; got columns {list(model_input.columns)}")
        new_tokens = max_new_tokens(params)
        return [self._answer(str(q), new_tokens) for q in model_input["question"]]


mlflow.models.set_model(DomainQAModel())
