"""What a training run has done and what it leaves behind: its progress (step, loss/ε history, tokens, time),
the train_result.json figures, the adapter or model, the history, the loss/ε curves. Shared by the recipe
and the DeepSpeed loop, so both report the same fields the same way."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.train.dp import noise_source, privacy_marker

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """The loop's running state; a checkpoint carries history, tokens and elapsed seconds across a resume."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    tokens: int = 0
    epsilon: float = 0.0
    elapsed_before: float = 0.0  # seconds trained before a resume
    resumed_from: int | None = None
    started: float | None = None  # perf_counter at the loop's start; None when the clock is stopped

    def start_clock(self) -> None:
        self.started = time.perf_counter()

    def stop_clock(self) -> None:
        self.elapsed_before, self.started = self.elapsed(), None

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def checkpoint_extra(self) -> dict:
        """What a checkpoint stores besides the tensors (read back by `resumed`)."""
        return {"history": self.history, "tokens": self.tokens, "elapsed": self.elapsed()}

    @classmethod
    def resumed(cls, step: int, extra: dict) -> Progress:
        history = extra["history"]
        return cls(
            step=step,
            history=history,
            tokens=extra["tokens"],
            elapsed_before=extra["elapsed"],
            resumed_from=step,
            epsilon=history[-1]["epsilon"] if history else 0.0,
        )


def train_result(
    t: dict,
    progress: Progress,
    *,
    records: int,
    planned_steps: int,
    model_type: str,
    trainable: int,
    total: int,
    world: int,
    out_dir: Path,
    is_peft: bool,
    delta: float | None = None,
    noise: float = 0.0,
    accountant: str | None = None,
    mode: str | None = None,
    changed: float | None = None,
    frozen_moved: int | None = None,
    digests: list[str] | None = None,
    mlflow_run_id: str | None = None,
    warm_start: dict | None = None,
    deepspeed: dict | None = None,
    units: dict | None = None,
) -> dict:
    """train_result.json: the privacy claim and mechanism and its unit, the schedule, what trained, speed, ranks,
    outputs. `records` counts training examples (the privacy units); `units` the records and subjects behind them."""
    epsilon, history, elapsed = progress.epsilon, progress.history, progress.elapsed()
    result = {
        "method": t["method"],
        "dp": t["dp"],
        "privacy": privacy_marker(t, epsilon, delta),
        "noise_source": noise_source(t),
        "epsilon": round(epsilon, 4) if t["dp"] else None,
        "privacy_unit": t.get("privacy_unit") or "record",  # what ε is per: one record, or one data subject
        "target_epsilon": t["target_epsilon"] if t["dp"] else None,
        "delta": delta if t["dp"] else None,
        "noise_multiplier": round(noise, 4),
        "max_grad_norm": t["max_grad_norm"],
        "accountant": accountant,
        "grad_sample_mode": mode,
        "steps": progress.step,
        "planned_steps": planned_steps,
        "epochs": t["epochs"],
        "records": records,
        "batch_size": t["batch_size"],
        "model_type": model_type,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100 * trainable / total, 3),
        "trainable_tensors_changed": changed,
        "frozen_tensors_changed": frozen_moved,
        "final_loss": history[-1]["loss"] if history else None,
        "train_seconds": round(elapsed, 1),
        "tokens_per_s": round(progress.tokens / max(elapsed, 1e-9), 1),
        "world_size": world,
        "resumed_from_step": progress.resumed_from,
        "rank_weight_digests": digests,
        "ranks_in_sync": None if digests is None else len(set(digests)) == 1,
        # PEFT methods save an adapter; freeze (without LoRA) and full save the whole model
        "adapter_dir": str(out_dir / "adapter") if is_peft else None,
        "model_dir": None if is_peft else str(out_dir / "model"),
        "mlflow_run_id": mlflow_run_id,
        "warm_start": warm_start,
    }
    if deepspeed is not None:
        result["deepspeed"] = deepspeed
    if units is not None and units.get("privacy_unit") == "subject":
        result["subjects"] = {k: v for k, v in units.items() if k != "privacy_unit"}  # counts only
    return result


def save_outputs(
    model, tokenizer, out_dir: Path, *, result: dict, history: list[dict], dp: bool, state_dict=None
) -> list[Path]:
    """The adapter (PEFT) or the whole model with its tokenizer, train_history.json, train_result.json and the
    curves; returns the curve files. `state_dict`: ZeRO-3's consolidated weights."""
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    if hasattr(model, "peft_config"):
        model.save_pretrained(out_dir / "adapter", **extra)
    else:
        model.save_pretrained(out_dir / "model", **extra)
        tokenizer.save_pretrained(out_dir / "model")
    (out_dir / "train_history.json").write_text(json.dumps(history))
    (out_dir / "train_result.json").write_text(json.dumps(result, indent=2))
    return save_plots(history, out_dir, dp)


def save_plots(history: list[dict], out_dir: Path, dp: bool) -> list[Path]:
    """Loss and ε curves as PNGs (matplotlib Agg); skipped with a log line when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed; no training plots")
        return []
    steps = [h["step"] for h in history]
    curves = [("loss", "training loss"), *([("epsilon", "privacy spent ε")] if dp else [])]
    paths = []
    for key, title in curves:
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot(steps, [h[key] for h in history], marker="." if len(steps) < 50 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{key}_curve.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def discard_checkpoints(out_dir: Path) -> None:
    """Checkpoints exist to finish an unfinished run. The saved adapter/model supersedes them, and for full
    fine-tuning each one is ~3x the model (weights + optimizer moments): removed once the result is written."""
    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)
