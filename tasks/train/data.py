"""The training data and its loss: masked records (clean zone) → token rows → right-padded batches, and a
loss in which every record weighs the same (token mean per record, then mean over the batch)."""

from __future__ import annotations

from pathlib import Path

from tasks.common.jsonl import read_objects


def load_texts(path: Path) -> list[str]:
    """The `text` of every record in the versioned training file; an empty file is an error."""
    texts = [row["text"] for row in read_objects(path, fields=("text",), hint="; re-run the version stage")]
    if not texts:
        raise ValueError(f"{path}: the training set is empty")
    return texts


class TokenDataset:
    """Token rows as long tensors, one per record."""

    def __init__(self, rows: list[list[int]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        return torch.tensor(self.rows[i], dtype=torch.long)


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


def make_loader(rows: list[list[int]], *, pad_id: int, t: dict, rank: int, world: int):
    """The recipe's DataLoader, with a seeded generator (one stream per rank; rank 0's is the single-process
    one) that checkpoints can rewind. Under DP it only conveys the global sample rate (batch_size / N) to
    make_private, which replaces its sampler with Poisson draws from that generator. Several ranks without
    DP: a DistributedSampler, batch_size / world per rank."""
    import torch
    from torch.utils.data import DataLoader

    if t["dp"]:
        # A Poisson batch lists its records in index order and BatchMemoryManager cuts it in that order, so
        # with the rows sorted by length each physical batch pads to a similar width (about a fifth fewer
        # tokens at max_seq_len 96). Each record's inclusion is still its own draw: no privacy figure changes.
        rows = sorted(rows, key=len)
    dataset = TokenDataset(rows)
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
