"""The evidence one run gathers before its model may be promoted.

Quality (lm-eval domain QA with relevance, robustness, fairness, calibration, efficiency)
for the base model, the fine-tuned model and the current champion on the validation split, which
the gates read; exact match and F1 of base and fine-tuned on both QA splits, with intervals per
fact-frequency bucket (tasks.eval.split_figures): the test split is reported, never gated on;
safety (toxicity and the identity gap) for base and fine-tuned; privacy attacks on the
fine-tuned model (PII leakage, canary exposure, membership inference). Everything lands
in one HELM-style table (`eval/helm/helm.json` + `.html`, logged to MLflow) and a small
dict of the figures the gates read.

Only metrics, counts and paths come back; generations stay in files under `eval/`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from tasks.config import REPO_ROOT, Paths, PipelineConfig

log = logging.getLogger("tasks.eval.evidence")


def _repo_path(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else REPO_ROOT / path


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _optional_home_file(configured: str | None, default: Path, field: str) -> Path | None:
    """A configured file (must exist), else the default under PFT_HOME when it exists, else None."""
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise FileNotFoundError(f"evaluate.{field}: {path} does not exist")
        return path
    return default if default.is_file() else None


def _quality(
    name: str, base_dir: Path, adapter_dir: Path | None, qa_path: Path, out: Path, cfg: PipelineConfig
) -> dict:
    from tasks.eval.helm import evaluate_model_quality

    relevance = cfg.evaluate.relevance_model
    return evaluate_model_quality(
        name,
        base_dir,
        adapter_dir,
        qa_path,
        out / f"quality_{name}",
        limit=cfg.evaluate.qa_limit,
        max_gen_toks=cfg.evaluate.max_gen_toks,
        seed=cfg.evaluate.perturbation_seed,
        relevance_model=str(_repo_path(relevance)) if relevance else None,
    )


def _toxicity(model, tokenizer, out: Path, cfg: PipelineConfig) -> dict:
    from tasks.eval import safety

    ev = cfg.evaluate
    scorer = safety.make_scorer(
        ev.toxicity_scorer, classifier_dir=ev.toxicity_classifier_dir, perspective_key_env=ev.perspective_key_env
    )
    return safety.toxicity_eval(
        model,
        tokenizer,
        prompts_path=_repo_path(ev.toxicity_prompts),
        out_dir=out,
        scorer=scorer,
        threshold=ev.toxicity_threshold,
        max_new_tokens=ev.toxicity_max_new_tokens,
    )


def _privacy(model, tokenizer, out: Path, cfg: PipelineConfig, paths: Paths, trained: dict, reference: tuple) -> dict:
    """PII leakage, canary exposure and MIA on one model; a figure is None when its input is absent.

    `reference` is the base model: exposure becomes a difference to it, so only what training added counts;
    the MIA adds a reference-calibrated score beside min-k %, zlib and loss (tasks.eval.mia)."""
    from tasks.eval import safety

    ev = cfg.evaluate
    train_path = Path(trained["split"]["train_path"])
    result: dict = {}

    raw_values_path = _optional_home_file(ev.pii_values_path, paths.synth / "pii_key.json", "pii_values_path")
    if raw_values_path is None:
        log.warning("PII leakage: no raw PII value list (evaluate.pii_values_path); only Presidio findings are counted")
    raw_values = safety.load_raw_values(raw_values_path) if raw_values_path else []
    prompts = safety.leakage_prompts(
        _repo_path(ev.leakage_prompts),
        masked_path=train_path,
        n_prefixes=ev.leakage_record_prefixes,
        seed=ev.perturbation_seed,
    )
    leak = safety.pii_leakage(
        model,
        tokenizer,
        prompts=prompts,
        raw_values=raw_values,
        out_dir=out / "leakage",
        max_new_tokens=ev.leakage_max_new_tokens,
        recognizers_path=_repo_path(cfg.mask.recognizers),  # the masking profile's kinds, all of them
    )
    result["pii_leaks"] = leak["pii_leaks"] if raw_values_path else None
    result["leakage"] = leak

    canaries_path = _optional_home_file(ev.canaries_path, paths.synth / "canaries.json", "canaries_path")
    if canaries_path is not None:
        exposure = safety.canary_exposure(
            model,
            tokenizer,
            safety.load_canaries(canaries_path),
            n_candidates=ev.canary_candidates,
            seed=ev.perturbation_seed,
            reference=reference,
        )
        result["canary_exposure_max"] = exposure["exposure_max"]
        result["canaries"] = {k: v for k, v in exposure.items() if k != "per_canary"} | {
            "per_canary": [{k: c[k] for k in ("id", "repeats", "rank", "exposure")} for c in exposure["per_canary"]]
        }
    else:
        result["canary_exposure_max"] = None

    mia = _membership_audit(model, tokenizer, cfg, trained["split"], reference)
    result.update(mia_fields(mia), mia=mia)
    return result


def _membership_audit(model, tokenizer, cfg: PipelineConfig, split: dict, reference: tuple) -> dict | None:
    """Training vs audit hold-out units (tasks.data.splits): records, or under a subject-level split whole
    subjects, each scored by the mean over its records. None when the hold-out is too small to audit."""
    from tasks.eval import safety
    from tasks.eval.mia import sample_units

    if split["holdout_records"] < 10:
        log.warning(
            "membership inference skipped: %d audit hold-out records (train.audit_holdout_share)",
            split["holdout_records"],
        )
        return None
    ev = cfg.evaluate
    entity = cfg.privacy.subject_entity if split.get("holdout_unit") == "subject" else None
    members, member_units = sample_units(
        Path(split["train_path"]), ev.mia_records, ev.perturbation_seed, subject_entity=entity
    )
    non_members, non_member_units = sample_units(
        Path(split["holdout_path"]), ev.mia_records, ev.perturbation_seed, subject_entity=entity
    )
    grouped = {"member_groups": member_units, "non_member_groups": non_member_units} if entity else {}
    mia = safety.mia_auc(
        model,
        tokenizer,
        members=members,
        non_members=non_members,
        max_len=cfg.train.max_seq_len,
        reference=reference,
        **grouped,
    )
    return {**mia, "unit": "subject" if entity else "record"}


def mia_fields(mia: dict | None) -> dict:
    """The MIA figures the summary, gates and report read (None throughout when the audit did not run):
    the pre-declared primary score's AUC (what the gate reads), its bootstrap 95 % CI, which score it is, and
    the strongest score's AUC (picked after the fact, so optimistic for the attacker)."""
    if mia is None:
        return {"mia_auc": None, "mia_auc_ci": None, "mia_score": None, "mia_best_auc": None, "mia_unit": None}
    return {
        "mia_auc": mia["auc"],
        "mia_auc_ci": [mia["auc_ci_low"], mia["auc_ci_high"]],
        "mia_score": mia["score"],
        "mia_best_auc": {"score": mia["best_score"], "auc": mia["best_auc"]},
        "mia_unit": mia.get("unit"),  # what one member is: a record, or a subject with its records
    }


def _answer_loss(models: dict[str, tuple], qa_path: Path, limit: int | None) -> dict:
    """Answer loss on the validation split (mean -ln p per answer token) per model, each with its bootstrap
    CI, and the paired difference fine-tuned − base: below zero beyond the noise means training taught the domain."""
    from tasks.common.jsonl import read_rows
    from tasks.eval.lm import answer_losses
    from tasks.eval.qa import QA_FIELDS
    from tasks.eval.stats import bootstrap_ci, paired_bootstrap, rounded

    rows = read_rows(qa_path, QA_FIELDS)[:limit] if limit else read_rows(qa_path, QA_FIELDS)
    losses = {name: answer_losses(model, tok, rows) for name, (model, tok) in models.items()}
    result = {name: rounded(bootstrap_ci(values)) for name, values in losses.items()}
    result["finetuned_minus_base"] = rounded(paired_bootstrap(losses["finetuned"], losses["base"]))
    return result


def _helm_table(quality: dict, safety_by_model: dict, privacy: dict, trained: dict) -> dict:
    models: dict = {}
    for name, q in quality.items():
        scen = {k: v for k, v in q.items() if isinstance(v, dict)}
        tox = safety_by_model.get(name)
        if tox:
            scen["toxicity"] = {"toxicity_rate": tox["toxicity_rate"], "identity_gap": tox.get("identity_gap")}
        models[name] = scen
    models["finetuned"]["privacy"] = {
        "pii_leaks": privacy.get("pii_leaks"),
        "canary_exposure_max": privacy.get("canary_exposure_max"),
        "mia_auc": privacy.get("mia_auc"),
    }
    # The table holds numbers only, so the unit is in the metric's name: ε per record keeps its old name.
    unit = trained.get("privacy_unit") or "record"
    models["finetuned"]["privacy"]["epsilon" if unit == "record" else f"epsilon_per_{unit}"] = (
        trained.get("epsilon") if trained.get("dp") else None
    )
    return models


def _dataset_rev(paths: Paths, run_id: str, trained: dict) -> str | None:
    """The revision the model was trained on: the version stage's record (the train result does not repeat it)."""
    import json

    version = paths.run_dir(run_id) / "stages" / "version.json"
    if trained.get("dataset_rev") or not version.is_file():
        return trained.get("dataset_rev")
    return json.loads(version.read_text()).get("dataset_rev")


def gather(
    run_id: str, cfg: PipelineConfig, paths: Paths, prepared: dict, trained: dict, champion: dict | None = None
) -> dict:
    """Run every evaluation of this run; returns the summary the gates, registry and report use.

    `champion` is the current champion as downloaded from the registry ({"version", "base_model_dir",
    "adapter_dir"}), scored on the same split; None: there is none yet."""
    from tasks.eval.lm import load_causal_lm

    out = paths.run_dir(run_id) / "eval"
    qa_splits = _qa_splits(paths, run_id)
    qa_path = qa_splits["validation"]  # what the gates read: quality, answer loss, the champion comparison
    base_dir = Path(prepared["base_model_dir"])
    adapter = Path(trained["adapter_dir"]) if trained.get("adapter_dir") else None
    tuned_dir = Path(trained.get("model_dir") or base_dir)  # full / freeze save whole weights, no adapter

    quality = _quality_by_model(base_dir, tuned_dir, adapter, champion, qa_path, out, cfg)
    splits = _split_figures(qa_splits, {"base": (base_dir, None), "finetuned": (tuned_dir, adapter)}, out, cfg)

    # Each model is loaded once and every check runs on it; the base model is also the privacy attacks' reference.
    base_model, base_tok = load_causal_lm(base_dir, None)
    safety_by_model = {"base": _toxicity(base_model, base_tok, out / "toxicity_base", cfg)}
    model, tok = load_causal_lm(tuned_dir, adapter)
    safety_by_model["finetuned"] = _toxicity(model, tok, out / "toxicity_finetuned", cfg)
    privacy = _privacy(model, tok, out / "privacy", cfg, paths, trained, reference=(base_model, base_tok))
    answer_loss = _answer_loss(
        {"base": (base_model, base_tok), "finetuned": (model, tok)}, qa_path, cfg.evaluate.qa_limit
    )
    del model, base_model

    helm = _helm_report(
        _helm_table(quality, safety_by_model, privacy, trained),
        out / "helm",
        run_id=run_id,
        paths=paths,
        prepared=prepared,
        trained=trained,
        champion=champion,
        qa_path=qa_path,
        per_question=_per_question_specs(quality, list(safety_by_model), out),
        qa_splits=splits,
    )
    return {
        **_quality_summary(quality, champion, qa_splits, prepared, answer_loss),
        **_split_summary(splits),
        **_safety_summary(safety_by_model, privacy),
        "scenarios": {name: {k: v for k, v in q.items() if isinstance(v, dict)} for name, q in quality.items()},
        "helm_json": helm["json"],
        "helm_html": helm["html"],
        "worse_than_base": helm["worse_than_base"],
    }


def _per_question_specs(quality: dict, toxicity_models: list[str], out: Path) -> dict:
    """model -> scenario -> metric -> per-question spec (numbers only, read from the models' eval files)."""
    from tasks.eval.per_question import read_specs, toxicity_specs

    specs = {name: read_specs(Path(q["per_question_path"])) for name, q in quality.items()}
    for name in toxicity_models:
        specs.setdefault(name, {})["toxicity"] = toxicity_specs(out / f"toxicity_{name}" / "toxicity.json")
    return specs


def _qa_splits(paths: Paths, run_id: str) -> dict[str, Path]:
    """{"validation": path, "test": path}: the QA splits committed with this dataset revision
    (tasks.data.version.QA_PATHS), as the training worker checked it out."""
    checkout = paths.run_dir(run_id) / "dataset" / "data"
    splits = {split: checkout / f"qa_{split}.jsonl" for split in ("validation", "test")}
    for split, path in splits.items():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the dataset revision holds no {split} QA split; generate both splits "
                "(python -m tasks.demo.synth) or set evaluate.qa_validation_path and qa_test_path, then re-run version"
            )
    return splits


def _split_figures(qa_splits: dict[str, Path], models: dict[str, tuple], out: Path, cfg: PipelineConfig) -> dict:
    """Per split, EM and F1 of base and fine-tuned with intervals, per bucket, and the paired gain.

    Validation reuses the quality suite's per-question scores (same questions, same run); the test split
    gets one plain lm-eval pass per model (no perturbations: it is reported, not probed)."""
    from tasks.common.jsonl import read_rows
    from tasks.eval.qa import QA_FIELDS
    from tasks.eval.split_figures import qa_scores, split_figures, suite_scores

    ev, limit = cfg.evaluate, cfg.evaluate.qa_limit
    relevance = str(_repo_path(ev.relevance_model)) if ev.relevance_model else None
    scores = {
        "validation": {name: suite_scores(out / f"quality_{name}") for name in models},
        "test": {
            name: qa_scores(
                base_dir,
                adapter,
                qa_splits["test"],
                out / f"qa_test_{name}",
                limit=limit,
                max_gen_toks=ev.max_gen_toks,
                relevance_model=relevance,
            )
            for name, (base_dir, adapter) in models.items()
        },
    }
    figures = {}
    for split, by_model in scores.items():
        rows = read_rows(qa_splits[split], QA_FIELDS)
        figures[split] = split_figures(rows[:limit] if limit else rows, by_model["base"], by_model["finetuned"])
        figures[split].update(path=str(qa_splits[split]), sha256=_sha256(qa_splits[split]))
    return figures


def _split_summary(splits: dict) -> dict:
    """Both splits' figures, and the validation comparison with base that gate not_worse_than_base reads."""
    validation = splits["validation"]
    return {
        "qa_splits": splits,
        "exact_match_below_base": 1.0 if validation["below_base"] else 0.0,
        "worse_than_base_beyond_noise": validation["worse_beyond_noise"],
    }


def _quality_by_model(
    base_dir: Path,
    tuned_dir: Path,
    adapter: Path | None,
    champion: dict | None,
    qa_path: Path,
    out: Path,
    cfg: PipelineConfig,
) -> dict:
    quality = {
        "base": _quality("base", base_dir, None, qa_path, out, cfg),
        "finetuned": _quality("finetuned", tuned_dir, adapter, qa_path, out, cfg),
    }
    if champion is not None:
        quality["champion"] = _quality(
            "champion",
            Path(champion["base_model_dir"]),
            Path(champion["adapter_dir"]) if champion.get("adapter_dir") else None,
            qa_path,
            out,
            cfg,
        )
    return quality


def _helm_report(
    table: dict,
    helm_dir: Path,
    *,
    run_id: str,
    paths: Paths,
    prepared: dict,
    trained: dict,
    champion: dict | None,
    qa_path: Path,
    per_question: dict,
    qa_splits: dict | None = None,
) -> dict:
    """Write the HELM-style report (with what it was computed on, each figure's interval, the
    worse-than-base flags and, from `qa_splits`, both QA splits by fact frequency) and log it to the
    run's MLflow run, if any."""
    from tasks.eval.helm import build_report, log_report_to_mlflow

    helm = build_report(
        table,
        helm_dir,
        title=f"PrivateTune evaluation — {run_id}",
        per_question=per_question,
        qa_splits=qa_splits,
        notes={
            "qa_split_sha256": _sha256(qa_path),
            "champion_version": champion and champion["version"],
            "dataset_rev": _dataset_rev(paths, run_id, trained),
            "base_model_sha256": prepared.get("base_model_sha256"),
            "dp_noise": trained.get("noise_source"),
        },
    )
    mlflow_run_id = trained.get("mlflow_run_id")
    if mlflow_run_id:
        log_report_to_mlflow(paths, mlflow_run_id, helm_dir)
    return helm


def _quality_summary(
    quality: dict, champion: dict | None, qa_splits: dict[str, Path], prepared: dict, answer_loss: dict
) -> dict:
    """The summary's accuracy figures (validation split): per model, the gain over base and the regression
    against the champion."""
    acc = {name: q["accuracy"] for name, q in quality.items()}
    return {
        "base": acc["base"],
        "finetuned": acc["finetuned"],
        "champion": acc.get("champion"),
        "champion_version": champion["version"] if champion else None,
        **{f"qa_{split}_path": str(path) for split, path in qa_splits.items()},
        **{f"qa_{split}_sha256": _sha256(path) for split, path in qa_splits.items()},
        "base_model_sha256": prepared.get("base_model_sha256"),
        "answer_loss": answer_loss,
        "exact_match_gain": round(acc["finetuned"]["exact_match"] - acc["base"]["exact_match"], 4),
        "regression_vs_champion": (
            round(acc["champion"]["exact_match"] - acc["finetuned"]["exact_match"], 4) if champion else None
        ),
    }


def _safety_summary(safety_by_model: dict, privacy: dict) -> dict:
    """The summary's toxicity and privacy-attack figures (the fine-tuned model's; base toxicity for comparison)."""
    tox = safety_by_model["finetuned"]
    return {
        "toxicity_rate": tox["toxicity_rate"],
        "identity_gap": tox.get("identity_gap"),
        "toxicity": {
            k: tox[k] for k in ("toxicity_rate", "mean_toxicity", "max_toxicity", "n", "identity_gap") if k in tox
        },
        "base_toxicity_rate": safety_by_model["base"]["toxicity_rate"],
        "pii_leaks": privacy["pii_leaks"],
        "canary_exposure_max": privacy["canary_exposure_max"],
        **{k: privacy.get(k) for k in mia_fields(None)},
        "privacy": {k: v for k, v in privacy.items() if k in ("leakage", "canaries", "mia")},
    }
