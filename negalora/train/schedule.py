"""The seeded batch schedule: which samples, and which variant of each (an image or its mirror), make
the micro-batch of a step for each process and stream, and the generators a run's randomness comes from.

Everything here is a pure function of the run's seed and batch settings, the samples' bucket shapes
and (step, micro, world, rank, stream, epoch), so a resumed run replays it exactly and it can be
checked without a model or a store. torch only lends its generator: the runs depend on its draws.

Streams: 0 is the training images, 1 the class images of prior preservation; each has its own draws.
"""

from collections.abc import Sequence

import torch

# What each use of the seed mixes in, so the uses draw apart; a stream adds STREAM times its number.
ORDER, VARIANT, NOISE = 7, 11, 3
STREAM = 100


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, step, …): resumes replay it exactly."""
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator("cpu").manual_seed(value)


def noise_generator(seed: int, step: int, micro: int, stream: int = 0, rank: int = 0) -> torch.Generator:
    """The generator of a micro-batch's noise and timesteps. Each process draws its own noise (rank 0
    keeps the single-process stream)."""
    return seeded(seed, step, micro, NOISE + STREAM * stream, *((rank,) if rank else ()))


def micro_index(step: int, micro: int, grad_accum: int, world: int, rank: int) -> int:
    """Where (step, micro) of ``rank`` falls in the run's sequence of micro-batches: the processes'
    micro-batches interleave, so together they walk the epochs as one process would."""
    return ((step - 1) * grad_accum + micro) * world + rank


def _by_bucket(shapes: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    by_bucket: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        by_bucket.setdefault(tuple(shape), []).append(i)
    return by_bucket


def batches_per_epoch(shapes: Sequence[tuple[int, ...]], batch: int) -> int:
    """How many batches an epoch has (the same in every epoch): each bucket's images in batches of ``batch``."""
    return sum(-(-len(members) // batch) for members in _by_bucket(shapes).values())


def epoch_batches(shapes: Sequence[tuple[int, ...]], batch: int, seed: int, epoch: int, stream: int = 0):
    """One epoch's batches of sample indices (``shapes``: each sample's latent shape, its bucket): each
    sample once, batches never mixing buckets, all order seeded by (seed, epoch, stream)."""
    by_bucket = _by_bucket(shapes)
    g = seeded(seed, epoch, ORDER + STREAM * stream)
    batches = []
    for shape in sorted(by_bucket):
        members = by_bucket[shape]
        order = [members[int(j)] for j in torch.randperm(len(members), generator=g)]
        batches += [order[k : k + batch] for k in range(0, len(order), batch)]
    return [batches[int(j)] for j in torch.randperm(len(batches), generator=g)]


def variant_pick(seed: int, index: int, position: int, variants: int, stream: int = 0) -> int:
    """Which of a sample's ``variants`` the micro-batch ``index`` uses at ``position`` in its batch."""
    g = seeded(seed, index, position, VARIANT + STREAM * stream)
    return int(torch.randint(variants, (1,), generator=g))


class Schedule:
    """One stream's schedule over a fixed list of samples: ``at`` gives a micro-batch's (sample,
    variant) pairs. Epochs are computed once and the ones behind dropped (a cache: same answers)."""

    def __init__(
        self,
        shapes: Sequence[tuple[int, ...]],
        variants: Sequence[int],
        *,
        batch: int,
        grad_accum: int,
        seed: int,
        stream: int = 0,
    ):
        self.shapes = [tuple(s) for s in shapes]
        self.variants = list(variants)
        self.batch, self.grad_accum, self.seed, self.stream = batch, grad_accum, seed, stream
        self.per_epoch = batches_per_epoch(self.shapes, batch)
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            self._epochs = {e: b for e, b in self._epochs.items() if e >= epoch - 1}  # keep it small
            self._epochs[epoch] = epoch_batches(self.shapes, self.batch, self.seed, epoch, self.stream)
        return self._epochs[epoch]

    def at(self, step: int, micro: int, world: int = 1, rank: int = 0) -> list[tuple[int, int]]:
        """The (sample, variant) pairs of micro-batch ``micro`` of ``step`` on process ``rank`` of ``world``."""
        index = micro_index(step, micro, self.grad_accum, world, rank)
        epoch, pos = divmod(index, self.per_epoch)
        members = self.epoch(epoch)[pos]
        return [(i, variant_pick(self.seed, index, j, self.variants[i], self.stream)) for j, i in enumerate(members)]
