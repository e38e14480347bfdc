"""The columns of a comparison: what varies between them, and nothing else.

Every column renders the same prompt and seed with the same settings; a column only says whether
the negative token is used and which LoRA (if any) acts, at what scale, on which guidance passes.
"""

from dataclasses import asdict, dataclass

from negalora.lora_passes import BOTH, NEGATIVE, POSITIVE


@dataclass(frozen=True)
class Column:
    key: str  # stable id: base | negative | lora | lora_negative_pass | scale:0.5 | step:250
    label: str  # what the grid header says
    with_token: bool  # the negative token is in the negative prompt
    lora_path: str = ""  # "" for no LoRA
    lora_scale: float = 1.0
    lora_passes: str = BOTH
    step: int | None = None  # the run checkpoint this column's LoRA comes from

    def to_dict(self) -> dict:
        return asdict(self)


def _lora_label(scale: float, passes: str) -> str:
    if passes in (NEGATIVE, POSITIVE):
        return f"LoRA {scale:g} on {passes} pass"
    return f"LoRA {scale:g} + negative"


def three_way(lora_path: str, scale: float, token: str, passes: str, negative_pass_column: bool, step=None):
    """Woolf's three columns (base; negative token; LoRA + negative token), plus optionally the LoRA
    on the negative pass only. ``passes`` is how the third column applies the LoRA."""
    columns = [
        Column("base", "base", with_token=False),
        Column("negative", f"negative: {token}", with_token=True),
        Column(
            "lora",
            _lora_label(scale, passes),
            with_token=True,
            lora_path=lora_path,
            lora_scale=scale,
            lora_passes=passes,
            step=step,
        ),
    ]
    if negative_pass_column:
        other = NEGATIVE if passes == BOTH else BOTH  # a negative or positive LoRA beside both passes
        columns.append(
            Column(
                "lora_" + other,
                _lora_label(scale, other) + (" (both passes)" if other == BOTH else ""),
                with_token=True,
                lora_path=lora_path,
                lora_scale=scale,
                lora_passes=other,
                step=step,
            )
        )
    return columns


def scale_sweep(lora_path: str, scales: tuple[float, ...], token: str, passes: str, step=None) -> list[Column]:
    """A1111's X/Y plot over LoRA strength, every cell with the negative token."""
    return [
        Column(
            f"scale:{s:g}",
            f"scale {s:g}" + (" (negative pass)" if passes == NEGATIVE else ""),
            with_token=True,
            lora_path=lora_path,
            lora_scale=s,
            lora_passes=passes,
            step=step,
        )
        for s in scales
    ]


def checkpoint_sweep(checkpoints: list[tuple[int, str]], scale: float, token: str, passes: str) -> list[Column]:
    """The negative-token baseline, then one column per checkpoint (the last one is not always best)."""
    columns = [Column("negative", f"negative: {token}", with_token=True)]
    columns += [
        Column(
            f"step:{step}",
            f"step {step}" + (" (negative pass)" if passes == NEGATIVE else ""),
            with_token=True,
            lora_path=path,
            lora_scale=scale,
            lora_passes=passes,
            step=step,
        )
        for step, path in checkpoints
    ]
    return columns
