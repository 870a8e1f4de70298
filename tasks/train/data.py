"""The training data and its loss: masked records (clean zone) → privacy units → token rows → right-padded
batches, and a loss in which every unit weighs the same (token mean per row, then mean over the batch).

The privacy unit (`privacy_unit` in the spec's train settings, docs/privacy.md#the-privacy-unit): a record,
or a data subject. Under `subject`, a subject's records are one unit: each time Poisson sampling draws the
subject, `SubjectDataset` draws up to `subject_max_records` of its records afresh and packs them into one token
row of at most `packed_tokens`, so Opacus clips the subject's whole contribution to a step at max_grad_norm and,
over the epochs, every record can be trained on. A record without a subject is its own unit."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tasks.common.jsonl import read_objects
from tasks.common.tokens import tokenize
from tasks.pii import subject_in_text


def privacy_unit(t: dict) -> str:
    """`record` or `subject`: the unit a run's ε is about (record-level specs carry no key)."""
    return t.get("privacy_unit") or "record"


def load_units(path: Path, t: dict) -> tuple[list[list[str]], dict]:
    """The training units and their counts (never text). `record`: every record alone. `subject`: records
    grouped by their `subject` field (the masker's keyed pseudonym), else by the first placeholder of
    `subject_entity` in their text; a record naming no subject is a unit of its own."""
    rows = list(read_objects(path, fields=("text",), hint="; re-run the version stage"))
    if not rows:
        raise ValueError(f"{path}: the training set is empty")
    if privacy_unit(t) == "record":
        return [[row["text"]] for row in rows], {"privacy_unit": "record", "records": len(rows), "units": len(rows)}
    entity = t.get("subject_entity") or "MEMBER_ID"
    groups: dict[str, list[str]] = {}
    alone: list[list[str]] = []
    for row in rows:
        subject = row.get("subject") or subject_in_text(row["text"], entity)
        if subject:
            groups.setdefault(subject, []).append(row["text"])
        else:
            alone.append([row["text"]])
    units = [*groups.values(), *alone]
    return units, unit_counts(units, subjects=len(groups), k=t.get("subject_max_records") or 1)


def unit_counts(units: list[list[str]], *, subjects: int, k: int) -> dict:
    """Counts for the result and the report: subjects, records without one, the records-per-subject
    distribution (how many subjects have 1, 2, … records) and how many records do not fit one example (k per
    sampling: they train only when a later sampling draws them)."""
    per_subject = Counter(len(u) for u in units[:subjects])
    return {
        "privacy_unit": "subject",
        "records": sum(len(u) for u in units),
        "units": len(units),
        "subjects": subjects,
        "records_without_subject": len(units) - subjects,
        "records_per_subject": {str(n): per_subject[n] for n in sorted(per_subject)},
        "subject_max_records": k,
        "records_beyond_k": sum(max(0, len(u) - k) for u in units),
    }


def packed_tokens(t: dict, positions: int | None) -> int:
    """The token budget of a subject's packed example: `subject_max_tokens`, else the model's positions
    (preflight checks it fits the model and holds one whole record of max_seq_len)."""
    return t.get("subject_max_tokens") or positions or (t.get("subject_max_records") or 1) * t["max_seq_len"]


def pack(records: list[list[int]], cap: int) -> list[int]:
    """Records (already cut at max_seq_len) joined into one row of at most `cap` tokens: whole while they fit,
    the first one that does not is cut to what is left, and the rest wait for another sampling."""
    row: list[int] = []
    for tokens in records:
        row += tokens[: cap - len(row)]
        if len(row) >= cap:
            break
    return row


def make_dataset(units: list[list[str]], tokenizer, t: dict, *, positions: int | None = None, rank: int = 0):
    """The training examples, one per privacy unit. `record`: a TokenDataset of records cut at max_seq_len (as
    before units existed). `subject`: a SubjectDataset that draws up to k of a subject's records afresh each time
    the subject is sampled and packs them into `packed_tokens`."""
    if privacy_unit(t) == "record":
        rows = tokenize([u[0] for u in units], tokenizer, t["max_seq_len"])
        return TokenDataset(sorted(rows, key=len) if t["dp"] else rows)  # why sorted: make_loader
    tokens = [tokenize(texts, tokenizer, t["max_seq_len"]) for texts in units]
    secure = t["dp"] and t.get("secure_noise", True)
    return SubjectDataset(
        tokens,
        k=t.get("subject_max_records") or 1,
        cap=packed_tokens(t, positions),
        seed=None if secure else t["seed"] + rank + _DRAW_SEED_OFFSET,
    )


# The record draw's own stream, apart from the loader's (seed + rank): so the Poisson draws stay what they were.
_DRAW_SEED_OFFSET = 104_729


class TokenDataset:
    """Token rows as long tensors, one per record."""

    def __init__(self, rows: list[list[int]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        return torch.tensor(self.rows[i], dtype=torch.long)


class SubjectDataset:
    """One example per unit: up to k of its records, drawn afresh each time the unit is sampled (so over the
    epochs every record can train, while one sampled subject is still one example, one clipped gradient) and
    packed in file order into at most `cap` tokens. The draw comes from a seeded torch generator (`seed`;
    checkpoints save its state) or, when `seed` is None (secure noise), from the OS CSPRNG like the Poisson
    sampling: which records trained is then as unpredictable as which subjects did."""

    def __init__(self, records: list[list[list[int]]], *, k: int, cap: int, seed: int | None):
        import torch

        self.records, self.k, self.cap = records, k, cap
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.records)

    def draw(self, n: int) -> list[int]:
        """k of n record indices, uniformly without replacement, in file order (all of them when n ≤ k)."""
        import torch

        if n <= self.k:
            return list(range(n))
        if self.generator is None:
            from tasks.train.noise import CSPRNG

            u = CSPRNG.rand(n)
        else:
            u = torch.rand(n, generator=self.generator, dtype=torch.float64)
        return sorted(u.argsort()[: self.k].tolist())

    def __getitem__(self, i: int):
        import torch

        records = self.records[i]
        return torch.tensor(pack([records[j] for j in self.draw(len(records))], self.cap), dtype=torch.long)


def make_collate(pad_id: int, max_len: int):
    """Right-pad to the longest row; labels are -100 on padding. Poisson batches may be empty."""
    import torch

    def collate(rows):
        width = max([len(r) for r in rows], default=1)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            labels[i, : len(r)] = r
        return ids, labels

    return collate


def make_loader(dataset, *, pad_id: int, t: dict, rank: int, world: int):
    """The recipe's DataLoader, with a seeded generator (one stream per rank; rank 0's is the single-process
    one) that checkpoints can rewind. Under DP it only conveys the global sample rate (batch_size / N) to
    make_private, which replaces its sampler with Poisson draws from that generator. Several ranks without
    DP: a DistributedSampler, batch_size / world per rank."""
    import torch
    from torch.utils.data import DataLoader

    if isinstance(dataset, list) and t["dp"]:
        # A Poisson batch lists its records in index order and BatchMemoryManager cuts it in that order, so
        # with the rows sorted by length each physical batch pads to a similar width. Each record's inclusion
        # is still its own draw. make_dataset sorts the records it builds for the same reason.
        dataset = sorted(dataset, key=len)
    dataset = TokenDataset(dataset) if isinstance(dataset, list) else dataset  # token rows, or a built dataset
    collate = make_collate(pad_id, t["max_seq_len"])
    generator = torch.Generator().manual_seed(t["seed"] + rank)
    if world > 1 and not t["dp"]:
        from torch.utils.data import DistributedSampler

        return DataLoader(
            dataset,
            batch_size=t["batch_size"] // world,
            collate_fn=collate,
            generator=generator,
            sampler=DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=t["seed"]),
        )
    return DataLoader(dataset, batch_size=t["batch_size"], shuffle=True, collate_fn=collate, generator=generator)


def per_sample_mean_loss(logits, labels):
    """Token-mean loss per example, then mean over the batch: each record weighs the same."""
    import torch.nn.functional as F

    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
    token_loss = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    mask = (shift_labels != -100).float()
    return ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def ghost_loss(criterion, logits, labels):
    """Opacus's ghost-clipping criterion on per-token logits; with `shape=` and ignore_index it
    reduces each record to its token mean, as `per_sample_mean_loss` does, so each record weighs the same."""
    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
    return criterion(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), shape=tuple(shift_labels.shape)
    )


def batch_loss(logits, labels, criterion=None):
    """The training loss: `per_sample_mean_loss`, or `ghost_loss` through Opacus's ghost-clipping criterion."""
    return per_sample_mean_loss(logits, labels) if criterion is None else ghost_loss(criterion, logits, labels)
