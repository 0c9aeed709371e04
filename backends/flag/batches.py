"""Group texts into forward passes by a padded-token budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.padding import length_buckets

__all__ = ["length_sorted_batches", "pad"]


def length_sorted_batches(
    lengths: Sequence[int], max_tokens: int, max_items: int
) -> list[list[int]]:
    """Positions grouped longest first, each group's padded size within ``max_tokens``.

    Sorting by length cuts padding; a group that would still be mostly padding (one
    long text among short ones) is split by :func:`engine.padding.length_buckets`.
    A text longer than the budget still gets a batch of its own rather than being
    refused.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable").tolist()
    batches: list[list[int]] = []
    current: list[int] = []
    for position in order:
        # Longest first, so the group's first item fixes its padded width.
        width = lengths[current[0]] if current else lengths[position]
        if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_items):
            batches.append(current)
            current = []
        current.append(position)
    if current:
        batches.append(current)
    return [
        batch[bucket.start : bucket.stop]
        for batch in batches
        for bucket in length_buckets([lengths[i] for i in batch])
    ]


def pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` tensors on ``device``.

    For a GPU they are built in pinned (page-locked) host memory and copied without
    blocking: the copy is queued on the stream ahead of the forward pass, and the host
    does not wait for it."""
    width = max(len(row) for row in rows)
    on_gpu = device.startswith("cuda")
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, pin_memory=on_gpu)
    mask = torch.zeros((len(rows), width), dtype=torch.long, pin_memory=on_gpu)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    if not on_gpu:
        return ids, mask
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
