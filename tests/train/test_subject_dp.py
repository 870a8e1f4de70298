"""Subject-level DP-SGD: records grouped by subject (field or text), one packed example per subject, Poisson
sampling over subjects, the accountant over subjects, and a subject's whole per-step contribution ≤ C."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.config import PipelineConfig, TrainConfig, train_settings
from tasks.train.data import SubjectDataset, load_units, make_collate, make_dataset, make_loader, pack
from tasks.train.dp import dp_mechanism, make_private
from tasks.train.preflight import check_packed_length
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
    t = _subject_t(secure_noise=False)
    units = [[SENTENCES[i % len(SENTENCES)] for i in range(7)], [SENTENCES[0]]]
    data = make_dataset(units, tok, t, positions=128)
    big, small = data[0].tolist(), data[1].tolist()
    assert big.count(tok.bos_token_id) == 3 and small.count(tok.bos_token_id) == 1  # k = 3 of its 7 records
    assert len(big) <= 128 and len(data) == 2
    again = make_dataset(units, tok, t, positions=128)
    assert [again[0].tolist() for _ in range(5)] == [big] + [data[0].tolist() for _ in range(4)]  # seeded: replays
    record_t = TrainConfig(max_seq_len=24).model_dump()
    from tasks.common.tokens import tokenize

    assert make_dataset([[s] for s in SENTENCES[:3]], tok, record_t).rows == tokenize(SENTENCES[:3], tok, 24)


@pytest.mark.parametrize("seed", [5, None], ids=["seeded", "csprng"])
def test_the_draw_varies_across_samplings_and_reaches_every_record(seed):
    records = [[100 + r] for r in range(9)]  # one token per record: the example names the records drawn
    data = SubjectDataset([records, [[7]]], k=2, cap=64, seed=seed)
    draws = [tuple(data[0].tolist()) for _ in range(200)]
    assert all(len(d) == 2 and d[0] < d[1] for d in draws)  # k records, in file order, each sampling
    assert len(set(draws)) > 10  # drawn afresh each time the subject is sampled
    assert {tok for d in draws for tok in d} == {100 + r for r in range(9)}  # every record trains eventually
    assert data[1].tolist() == [7]  # a subject with ≤ k records: all of them, every time
    if seed is not None:
        twin = SubjectDataset([records, [[7]]], k=2, cap=64, seed=seed)
        assert [tuple(twin[0].tolist()) for _ in range(200)] == draws  # the seeded stream replays


def test_the_packed_example_fills_a_token_cap_not_k_times_max_seq_len(tiny):
    assert pack([[1] * 5, [2] * 5, [3] * 5], 12) == [1] * 5 + [2] * 5 + [3] * 2  # whole while they fit, then cut
    assert pack([[1] * 5, [2] * 5], 20) == [1] * 5 + [2] * 5
    model = {"max_position_embeddings": 128}
    t = _subject_t(max_seq_len=128, subject_max_records=3, secure_noise=False)
    check_packed_length(t, model)  # k × max_seq_len = 384 > 128 positions: fine, the cap is 128 tokens
    _, tok, _ = tiny
    long_text = " ".join(SENTENCES * 6)  # over 128 tokens: cut at max_seq_len, then at the cap
    row = make_dataset([[long_text, SENTENCES[0], SENTENCES[1]]], tok, t, positions=128)[0].tolist()
    assert len(row) == 128 and row.count(tok.bos_token_id) == 1
    cap64 = make_dataset([[SENTENCES[0]] * 8], tok, {**t, "max_seq_len": 24, "subject_max_tokens": 40})[0]
    assert len(cap64) == 40  # a configured cap below the model's positions
    with pytest.raises(ValueError, match=r"subject_max_tokens .200. exceeds the model's 128 positions"):
        check_packed_length({**t, "subject_max_tokens": 200}, model)
    with pytest.raises(ValueError, match="could not hold one whole record"):
        check_packed_length({**t, "subject_max_tokens": 64}, model)
    with pytest.raises(ValueError, match=r"the model.s positions .128. is shorter than train.max_seq_len .192."):
        check_packed_length({**t, "max_seq_len": 192}, model)
    check_packed_length({**t, "privacy_unit": None, "max_seq_len": 192}, model)  # record level: no packing


def test_the_accountant_counts_subjects_and_delta_follows_them():
    t = TrainConfig(batch_size=16, epochs=1.0).model_dump()
    by_records, by_subjects = dp_mechanism(t, 4000), dp_mechanism(t, 1000)  # 4,000 records of 1,000 subjects
    assert by_subjects["sample_rate"] == pytest.approx(1 / 63)  # Opacus's 1 / ceil(1000 / 16), not 16 / 1000
    assert by_subjects["delta"] == pytest.approx(1 / (10 * 1000))
    assert by_subjects["noise"] > by_records["noise"]  # fewer units, larger sample rate: more noise for the same ε


def _private(tiny, units, *, max_grad_norm, batch_size):
    from tasks.train.methods import apply_method

    path, tok, auto = tiny
    t = _subject_t(max_grad_norm=max_grad_norm, batch_size=batch_size, physical_batch_size=batch_size)
    torch.manual_seed(0)
    model = apply_method(auto.from_pretrained(path, dtype=torch.float32), {"train": t}, "llama")
    model.train()
    t["secure_noise"] = False
    data = make_dataset(units, tok, t, positions=128)
    rows = [data[i].tolist() for i in range(len(data))]
    loader = make_loader(data, pad_id=tok.pad_token_id, t=t, rank=0, world=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
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
    # 20 units at batch 3: Opacus samples at 1 / ceil(20 / 3) = 1/7, not 3/20. The ε the run reports must be
    # the ε charged to the ledger (a clean-clone CI caught 7.80 vs 7.99 at 6,940 units before this was so).
    t = _subject_t(batch_size=3, physical_batch_size=3, epochs=1.0, target_epsilon=4.0, secure_noise=False)
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
    charged = dp_mechanism(t, 20)
    assert charged["sample_rate"] == pytest.approx(1 / 7)
    assert result["epsilon"] == round(charged["epsilon"], 4) and 0 < result["epsilon"] <= 4.0


def test_a_run_handed_a_mechanism_at_another_sample_rate_refuses_to_train(tmp_path, tiny):
    """A mechanism charged at B/N (the old rule) while Opacus samples at 1/ceil(N/B): the recipe stops before
    the first step instead of reporting an ε the ledger was not charged."""
    from tasks.train.dp import DP_INPUTS
    from tasks.train.recipe import train

    rows = [{"text": SENTENCES[i % len(SENTENCES)]} for i in range(20)]
    t = _subject_t(batch_size=3, physical_batch_size=3, epochs=1.0, target_epsilon=4.0, secure_noise=False)
    stale = {**dp_mechanism(t, 20), "sample_rate": 3 / 20}
    spec = {
        "train": t,
        "base_model_dir": str(tiny[0]),
        "out_dir": str(tmp_path / "out"),
        "data_path": str(_write(tmp_path / "train.jsonl", rows)),
        "dp_mechanism": {"units": 20, "inputs": {k: t.get(k) for k in DP_INPUTS}, "mechanism": stale},
    }
    with pytest.raises(RuntimeError, match=r"samples at 0\.1428.*accountant was given 0\.15"):
        train(spec)


class _Stop(Exception):
    """A simulated crash right after a checkpoint."""


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "non-private"])
def test_a_stopped_subject_level_run_resumes_to_the_uninterrupted_result(tmp_path, tiny, monkeypatch, dp):
    """The record draw has its own generator: the checkpoint keeps its state (Poisson: where it stands; a
    shuffled non-DP epoch: at the epoch start, replayed with the skipped batches), so a resumed run draws
    the same records and ends with the same weights, bit for bit, as one never stopped."""
    from tasks.train import checkpoint
    from tasks.train.recipe import train

    rows = [{"subject": f"<MEMBER_ID_{i % 6:08x}>", "text": f"{SENTENCES[i % len(SENTENCES)]} #{i}"} for i in range(36)]
    t = _subject_t(batch_size=2, physical_batch_size=2, epochs=3.0, target_epsilon=8.0, secure_noise=False, dp=dp)
    data = _write(tmp_path / "train.jsonl", rows)  # 6 subjects × 6 records, k = 3: 3 steps an epoch, 9 in all

    def spec(name: str, every: int) -> dict:
        out = str(tmp_path / name)
        return {
            "train": {**t, "checkpoint_every": every},
            "base_model_dir": str(tiny[0]),
            "out_dir": out,
            "data_path": str(data),
        }

    reference = train(spec("ref", 0))
    save = checkpoint.Checkpointer.maybe_save

    def crash_at_5(self, step, **objects):
        path = save(self, step, **objects)
        if step == 5:
            raise _Stop
        return path

    monkeypatch.setattr(checkpoint.Checkpointer, "maybe_save", crash_at_5)
    with pytest.raises(_Stop):
        train(spec("ckpt", 2))
    saved = torch.load(tmp_path / "ckpt" / "checkpoints" / "step-00000004" / "rank-0.pt", weights_only=True)
    assert "draw_state" in saved["sampler"]  # mid-epoch 2: where the record draws stood
    monkeypatch.setattr(checkpoint.Checkpointer, "maybe_save", save)
    resumed = train(spec("ckpt", 2))
    assert resumed["steps"] == reference["steps"] == 9
    from safetensors.torch import load_file

    weights = [load_file(tmp_path / n / "adapter" / "adapter_model.safetensors") for n in ("ref", "ckpt")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    history = [json.loads((tmp_path / n / "train_history.json").read_text()) for n in ("ref", "ckpt")]
    assert [h["loss"] for h in history[1]] == pytest.approx([h["loss"] for h in history[0]], nan_ok=True, rel=0, abs=0)
    if dp:
        assert resumed["epsilon"] == reference["epsilon"]
