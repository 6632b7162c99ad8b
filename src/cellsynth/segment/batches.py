"""The detector's training batches: augmented crops with their CPN targets, drawn in the
training loop from the sampler's stream or prepared ahead by worker processes, each batch from
its own random stream so a resumed run draws what the uninterrupted one did.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cellsynth.segment.data import CropSampler
from cellsynth.segment.train_config import TrainConfig


def _batch(sampler: CropSampler, config: TrainConfig, samples: int, order: int,
           replay: CropSampler | None = None) -> dict[str, torch.Tensor]:
    """One training batch on the CPU (the loop moves it to the device)."""
    from cellsynth.segment.cpn import collate, training_targets

    items = []
    for _ in range(config.batch):
        # (the extra draw only with replay: runs without it keep their random sequence)
        source = (replay if replay is not None and sampler.rng.random() < config.replay
                  else sampler)
        image, labels = source.sample()
        item = training_targets(labels, samples=samples, order=order, rng=sampler.rng,
                                core=config.core, rim=config.rim)
        item["inputs"] = image
        items.append(item)
    return collate(items)


class _StepBatches(torch.utils.data.Dataset):
    """Batch ``k`` of a run, drawn from its own random stream ``(seed, rank, k)`` (the
    replayed crops from ``(seed, rank, k, 1)``): workers may prepare batches in any order, and
    a resumed run draws what the uninterrupted one did."""

    def __init__(self, sampler: CropSampler, replay: CropSampler | None, config: TrainConfig,
                 samples: int, order: int, rank: int) -> None:
        self.sampler, self.replay, self.config = sampler, replay, config
        self.samples, self.order, self.rank = samples, order, rank

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        self.sampler.rng = np.random.default_rng([self.config.seed, self.rank, k])
        if self.replay is not None:
            self.replay.rng = np.random.default_rng([self.config.seed, self.rank, k, 1])
        return _batch(self.sampler, self.config, self.samples, self.order, self.replay)


def _quiet_worker(_: int) -> None:
    """A batch worker: one thread; Ctrl-C and SIGTERM are the training loop's to handle (it
    stops between steps and checkpoints; the workers end with it)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def _batches(sampler: CropSampler, replay: CropSampler | None, config: TrainConfig,
             samples: int, order: int, *, start: int, rank: int
             ) -> Iterator[dict[str, torch.Tensor]]:
    """The training batches from step ``start`` on, on the CPU: drawn in the loop from the
    sampler's stream (``workers: 0``) or prepared ahead by ``config.workers`` processes."""
    if config.workers == 0:
        while True:
            yield _batch(sampler, config, samples, order, replay)
    import multiprocessing

    from torch.utils.data import DataLoader

    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # (its own generator: the loader's seed draw must not move the training's torch stream,
    # or a resumed run would diverge from the uninterrupted one)
    generator = torch.Generator().manual_seed(config.seed)
    yield from DataLoader(_StepBatches(sampler, replay, config, samples, order, rank),
                          batch_size=None, sampler=range(start, config.steps),
                          num_workers=config.workers, worker_init_fn=_quiet_worker,
                          multiprocessing_context=context, prefetch_factor=4,
                          pin_memory=config.device.startswith("cuda"), generator=generator)
