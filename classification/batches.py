"""Batches for training and evaluation: seeded epoch order, rank sharding, augmentation on the device.

Appendix D's augmentation (random crop with 4 pixels of zero padding + random horizontal flip) is applied to a whole
uint8 batch at once on the training device, from a generator seeded by (seed, epoch, rank): the data order and the
augmentation of every epoch are a pure function of those numbers, so a resumed run replays an epoch exactly, and no
per-sample Python transform runs on the CPU. It draws the same distribution as torchvision's
``RandomCrop(size, padding=4)`` + ``RandomHorizontalFlip()``.
"""

from __future__ import annotations

from typing import Iterator

import torch

from classification.datasets import ImageSplit

__all__ = ["epoch_generator", "train_order", "shard_for_eval", "iterate_batches", "random_crop_flip", "Normalize"]


def epoch_generator(seed: int, epoch: int, rank: int = 0, device="cpu") -> torch.Generator:
    """A generator seeded from (seed, epoch, rank) with well-separated integers."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + epoch) * 1_009 + rank)
    return generator


def train_order(n: int, seed: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's training rows for ``epoch``: one seeded permutation shared by all ranks, trimmed to a multiple of
    the world size (every rank runs the same number of steps) and dealt out round-robin."""
    order = torch.randperm(n, generator=epoch_generator(seed, epoch, rank=0))
    per_rank = n // world_size
    if per_rank == 0:
        raise ValueError(f"{n} training images cannot be shared by {world_size} processes")
    return order[: per_rank * world_size][rank::world_size]


def shard_for_eval(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Rows evaluated by this rank: every row exactly once over all ranks (no padding, so metrics are exact)."""
    return torch.arange(rank, n, world_size)


def iterate_batches(split: ImageSplit, rows: torch.Tensor, batch_size: int, device: torch.device, *,
                    num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images [B, C, H, W], int64 labels [B]) on ``device`` for ``rows`` in order."""
    pin = device.type == "cuda"
    if split.images is not None:
        for chunk in rows.split(batch_size):
            images, labels = split.images[chunk], split.labels[chunk]
            if pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images.to(device, non_blocking=pin), labels.to(device, non_blocking=pin)
        return
    loader = torch.utils.data.DataLoader(split.dataset, batch_size=batch_size,
                                         sampler=split.indices[rows].tolist(), num_workers=num_workers,
                                         pin_memory=pin, persistent_workers=False)
    for images, labels in loader:
        yield images.to(device, non_blocking=pin), labels.to(device, non_blocking=pin)


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``H x W`` crops of the zero-padded batch and random horizontal flips, vectorised over the batch."""
    n, _, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        rows = (top[:, None] + torch.arange(h, device=device))[:, None, :, None]       # [N, 1, H, 1]
        cols = (left[:, None] + torch.arange(w, device=device))[:, None, None, :]      # [N, 1, 1, W]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class Normalize:
    """uint8 [B, C, H, W] -> float32 (x / 255 - mean) / std, optionally channels_last."""

    def __init__(self, mean, std, device, channels_last: bool = False):
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(-self.shift, images.float(), self.scale)  # one fused pass: x * s - m / std
        return out.contiguous(memory_format=self.memory_format)
