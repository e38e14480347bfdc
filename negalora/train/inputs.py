"""What a run trains on, for its objective: the rejects (or picks) as the token, every pick and
reject with its labels (kto), or preferred pairs (dpo); pre-flighted, with what was refused or left
out and why."""

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from negalora.errors import NegaloraError
from negalora.train.config import PICKS_TOKEN, TrainConfig
from negalora.train.dataset import Refused, TrainImage, collect_rejects, preflight
from negalora.train.preferences import LeftOut, collect_labels, collect_pairs, pair_indices


@dataclass
class TrainingSet:
    config: TrainConfig  # as given, with a picks LoRA's token filled in
    images: list[TrainImage]
    refused: list[Refused] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # dpo: (preferred, rejected) indices into images
    left_out: list[LeftOut] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, int]:
        return {v: sum(i.label == v for i in self.images) for v in ("pick", "reject")}

    def event(self) -> dict:
        """The trainer's ``preflight`` event."""
        objective = self.config.objective
        return {
            "type": "preflight",
            "objective": objective,
            "images": len(self.images),
            "refused": [{"path": str(r.path), "reason": r.reason} for r in self.refused],
            "left_out": [{"what": x.what, "reason": x.reason} for x in self.left_out],
            "warnings": self.warnings,
            **({"labels": self.labels} if objective == "kto" else {}),
            **({"pairs": len(self.pairs)} if objective == "dpo" else {}),
        }

    def check(self) -> None:
        """Refuse a set the objective cannot learn from, saying what to do."""
        objective, labels = self.config.objective, self.labels
        if objective == "dpo" and not self.pairs:
            raise NegaloraError(
                "no pairs for DPO: vote in blind A/B comparisons, or pick and reject images of the same prompt"
            )
        if objective == "kto" and not (labels["pick"] and labels["reject"]):
            counts = f"{labels['pick']} picks, {labels['reject']} rejects"
            raise NegaloraError(f"KTO learns from picks and rejects: {counts}")
        if not self.images:
            what = "pick" if self.config.source == "picks" else "reject"
            raise NegaloraError(f"no training images: {what} some images first (or pass files to train on)")

    def dataset(self, model) -> dict:
        """The run's ``dataset.json``: what it trained on, so a resume trains on the same."""
        return {
            "images": [{**asdict(i), "path": str(i.path)} for i in self.images],
            "refused": [{"path": str(r.path), "reason": r.reason} for r in self.refused],
            "warnings": self.warnings,
            "model": {"name": model.name, "location": model.location, "sha256": model.sha256},
            "pairs": [list(p) for p in self.pairs],
            "left_out": [{"what": x.what, "reason": x.reason} for x in self.left_out],
        }


def collect(store, config: TrainConfig, since: str | None = None, until: str | None = None) -> TrainingSet:
    left, id_pairs = [], []
    if config.objective == "kto":
        candidates, left = collect_labels(store)
    elif config.objective == "dpo":
        candidates, id_pairs, left = collect_pairs(store)
    else:
        if config.source == "picks" and config.token == "wrong":  # the default token is the rejects'
            config = replace(config, token=PICKS_TOKEN)
        verdict = "pick" if config.source == "picks" else "reject"
        extra = [Path(p) for p in config.extra]
        candidates = collect_rejects(
            store, reasons=config.reasons or None, since=since, until=until, extra=extra, verdict=verdict
        )
    report = preflight(candidates, token=config.token, with_reasons=config.captions_with_reasons)
    pairs, lost = pair_indices(report.images, id_pairs)
    return TrainingSet(config, report.images, report.refused, report.warnings, pairs, left + lost)
