"""Subject-level DP-SGD: records grouped by subject (field or text), one packed example per subject, Poisson
sampling over subjects, the accountant over subjects, and a subject's whole per-step contribution ≤ C."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.config import PipelineConfig, TrainConfig, train_settings
from tasks.train.data import load_units, make_collate, make_loader, pack_rows
from tasks.train.dp import dp_mechanism, make_private
from tests.helpers import SENTENCES, random_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALICE, BOB = "<MEMBER_ID_0000000a>", "<MEMBER_ID_0000000b>"


def _subject_t(**overrides) -> dict:
    cfg = PipelineConfig(privacy={"unit": "subject", "subject_max_records": 3})
    t = train_settings(cfg)
    t.update({"batch_size": 4, "physical_batch_size": 4, "max_seq_len": 24, "lora_r": 4, "lora_alpha": 8})
    return {**t, **overrides}


def _write(path, rows):
    path.write_text(
        "".join(
            json.dumps({"record_id": f"R-{i}", "record_type": "claim_note", **r}) + "\n" for i, r in enumerate(rows)
        )
    )
    return path


def test_train_settings_carry_the_unit_only_for_subject():
    assert train_settings(PipelineConfig()) == TrainConfig().model_dump()  # record level: the spec is unchanged
    t = _subject_t()
    assert t["privacy_unit"] == "subject" and t["subject_entity"] == "MEMBER_ID" and t["subject_max_records"] == 3


def test_grouping_by_the_subject_field_and_by_the_placeholder_in_the_text(tmp_path):
    rows = [
        {"subject": ALICE, "text": f"Claim one for {ALICE}."},
        {"subject": BOB, "text": "Letter to the member."},  # the field alone names Bob
        {"text": f"Ticket from member {ALICE} about a form."},  # no field: the placeholder names Alice
        {"text": "Plan summary, no one named."},  # no subject: its own unit
        {"text": f"Second ticket, {BOB}."},
        {"text": "Another plan summary."},
    ]
    units, counts = load_units(_write(tmp_path / "t.jsonl", rows), _subject_t())
    assert sorted(len(u) for u in units) == [1, 1, 2, 2]
    assert {frozenset(u) for u in units if len(u) == 2} == {
        frozenset({rows[0]["text"], rows[2]["text"]}),
        frozenset({rows[1]["text"], rows[4]["text"]}),
    }
    assert counts["subjects"] == 2 and counts["records_without_subject"] == 2 and counts["units"] == 4
    assert counts["records"] == 6 and counts["records_per_subject"] == {"2": 2}
    record_units, record_counts = load_units(tmp_path / "t.jsonl", TrainConfig().model_dump())
    assert len(record_units) == 6 and record_counts == {"privacy_unit": "record", "records": 6, "units": 6}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = random_llama(tmp_path_factory.mktemp("base"))
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM


def test_packing_keeps_at_most_k_records_per_subject(tiny):
    _, tok, _ = tiny
    t = _subject_t()
    units = [[SENTENCES[i % len(SENTENCES)] for i in range(7)], [SENTENCES[0]]]
    big, small = pack_rows(units, tok, t)
    assert big.count(tok.bos_token_id) == 3 and small.count(tok.bos_token_id) == 1  # k = 3 of its 7 records
    assert len(big) <= 3 * t["max_seq_len"]
    assert pack_rows(units, tok, t) == [big, small]  # the seeded choice is reproducible
    record_t = TrainConfig(max_seq_len=24).model_dump()
    from tasks.common.tokens import tokenize

    assert pack_rows([[s] for s in SENTENCES[:3]], tok, record_t) == tokenize(SENTENCES[:3], tok, 24)


def test_the_accountant_counts_subjects_and_delta_follows_them():
    t = TrainConfig(batch_size=16, epochs=1.0).model_dump()
    by_records, by_subjects = dp_mechanism(t, 4000), dp_mechanism(t, 1000)  # 4,000 records of 1,000 subjects
    assert by_subjects["sample_rate"] == pytest.approx(16 / 1000)
    assert by_subjects["delta"] == pytest.approx(1 / (10 * 1000))
    assert by_subjects["noise"] > by_records["noise"]  # fewer units, larger sample rate: more noise for the same ε


def _private(tiny, units, *, max_grad_norm, batch_size):
    from tasks.train.methods import apply_method

    path, tok, auto = tiny
    t = _subject_t(max_grad_norm=max_grad_norm, batch_size=batch_size, physical_batch_size=batch_size)
    torch.manual_seed(0)
    model = apply_method(auto.from_pretrained(path, dtype=torch.float32), {"train": t}, "llama")
    model.train()
    rows = pack_rows(units, tok, t)
    loader = make_loader(rows, pad_id=tok.pad_token_id, t=t, rank=0, world=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    t["secure_noise"] = False
    _engine, model, opt, loader, _ = make_private(
        model, opt, loader, t=t, noise=0.0, accountant="prv", mode="hooks", world=1
    )
    return model, opt, loader, rows, tok


def test_poisson_sampling_draws_subjects_at_the_expected_rate(tiny):
    units = [[SENTENCES[i % len(SENTENCES)]] * (1 + i % 5) for i in range(40)]  # 40 subjects, 1..5 records each
    _, _, loader, rows, _ = _private(tiny, units, max_grad_norm=1.0, batch_size=8)
    assert len(rows) == 40 and loader.sample_rate == pytest.approx(8 / 40)
    sizes = [len(ids) for _ in range(15) for ids, _ in loader]  # every draw is a batch of whole subjects
    assert sum(sizes) / len(sizes) == pytest.approx(8, rel=0.15)


def _clipped_sum_norm(model, opt, rows, tok) -> float:
    """One real DP-SGD step's summed clipped gradient (noise 0) for a batch of these rows: a unit's contribution."""
    from tasks.train.data import batch_loss

    ids, labels = make_collate(tok.pad_token_id, 0)([torch.tensor(r) for r in rows])
    opt.zero_grad(set_to_none=True)
    batch_loss(model(input_ids=ids, attention_mask=(labels != -100).long()).logits, labels).backward()
    opt.clip_and_accumulate()
    return torch.sqrt(sum(p.summed_grad.pow(2).sum() for p in opt.params)).item()


def test_a_subject_with_many_records_contributes_at_most_c_per_step(tiny):
    c = 1e-3  # far below every example's gradient norm: every example is clipped
    many = [SENTENCES[i % len(SENTENCES)] for i in range(12)]
    model, opt, _, rows, tok = _private(tiny, [many, [SENTENCES[0]]], max_grad_norm=c, batch_size=1)
    subject = _clipped_sum_norm(model, opt, rows[:1], tok)
    assert c * 0.999 <= subject <= c * (1 + 1e-4)  # the subject, sampled: one row, clipped to exactly C
    # The same records as record-level units: each clipped to C, together well past it. That is the gap.
    model, opt, _, rows, tok = _private(tiny, [[r] for r in many], max_grad_norm=c, batch_size=1)
    assert _clipped_sum_norm(model, opt, rows, tok) > 2 * c


def test_a_subject_level_run_reports_epsilon_per_subject(tmp_path, tiny):
    from tasks.train.recipe import train

    rows = [{"subject": f"<MEMBER_ID_{i % 12:08x}>", "text": SENTENCES[i % len(SENTENCES)]} for i in range(48)]
    rows += [{"text": SENTENCES[i % len(SENTENCES)]} for i in range(8)]  # no subject: 8 units of their own
    t = _subject_t(batch_size=4, epochs=1.0, target_epsilon=4.0, secure_noise=False)
    spec = {
        "train": t,
        "base_model_dir": str(tiny[0]),
        "out_dir": str(tmp_path / "out"),
        "data_path": str(_write(tmp_path / "train.jsonl", rows)),
    }
    result = train(spec)
    assert result["privacy_unit"] == "subject" and "per subject" in result["privacy"]
    assert result["records"] == 20  # 12 subjects + 8 records without one: the accountant's N
    assert result["delta"] == pytest.approx(1 / (10 * 20))
    assert result["subjects"]["subjects"] == 12 and result["subjects"]["records_without_subject"] == 8
    assert result["subjects"]["records_per_subject"] == {"4": 12} and result["subjects"]["records_beyond_k"] == 12
    assert 0 < result["epsilon"] <= 4.0
