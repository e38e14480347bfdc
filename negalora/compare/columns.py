"""The columns of a comparison: what varies between them, and nothing else.

Every column renders the same prompt and seed with the same settings; a column only says whether
the negative token is used and which LoRA (if any) acts, at what scale, on which guidance passes, and
which second LoRA (if any) acts on the negative pass beside it.
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
    negative_lora_path: str = ""  # a second LoRA, on the negative pass only ("" for none)
    negative_lora_scale: float = 1.0
    negative_step: int | None = None  # the run checkpoint the second LoRA comes from

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SecondLora:
    """A second LoRA for the negative pass beside the compared one (a `wrong` LoRA beside a liked one)."""

    path: str
    scale: float = 1.0
    step: int | None = None
    name: str = "2nd LoRA"  # the grid header's name for it


def _lora_label(scale: float, passes: str, with_token: bool = True) -> str:
    if passes in (NEGATIVE, POSITIVE):
        return f"LoRA {scale:g} on {passes} pass"
    return f"LoRA {scale:g} + negative" if with_token else f"LoRA {scale:g} on both passes"


def _other_passes(passes: str, liked: bool) -> str:
    """The fourth column's passes: both beside one pass; beside both, the kind's own pass."""
    if passes != BOTH:
        return BOTH
    return POSITIVE if liked else NEGATIVE


def three_way(
    lora_path: str,
    scale: float,
    token: str,
    passes: str,
    negative_pass_column: bool,
    step=None,
    second: SecondLora | None = None,
    liked: bool = False,
):
    """Woolf's three columns (base; negative token; LoRA + negative token), plus optionally the LoRA
    on the other passes, and with ``second`` the LoRA beside a second LoRA on the negative pass (with
    the token). ``passes`` is how the third column applies the LoRA. The LoRA of what is liked
    (``liked``: KTO, DPO, picks) keeps the prompt unchanged, no token, the way it was measured
    (docs/efficacy_preference.md)."""
    with_token = not liked
    columns = [
        Column("base", "base", with_token=False),
        Column("negative", f"negative: {token}", with_token=True),
        Column(
            "lora",
            _lora_label(scale, passes, with_token),
            with_token=with_token,
            lora_path=lora_path,
            lora_scale=scale,
            lora_passes=passes,
            step=step,
        ),
    ]
    if negative_pass_column:
        other = _other_passes(passes, liked)
        columns.append(
            Column(
                "lora_" + other,
                _lora_label(scale, other, with_token) + (" (both passes)" if other == BOTH and with_token else ""),
                with_token=with_token,
                lora_path=lora_path,
                lora_scale=scale,
                lora_passes=other,
                step=step,
            )
        )
    if second is not None:
        columns.append(
            Column(
                "two_loras",
                f"{_lora_label(scale, passes)} + {second.name} {second.scale:g} on negative pass",
                with_token=True,
                lora_path=lora_path,
                lora_scale=scale,
                lora_passes=passes,
                step=step,
                negative_lora_path=second.path,
                negative_lora_scale=second.scale,
                negative_step=second.step,
            )
        )
    return columns


def _pass_note(passes: str) -> str:
    return f" ({passes} pass)" if passes in (NEGATIVE, POSITIVE) else ""


def scale_sweep(
    lora_path: str, scales: tuple[float, ...], token: str, passes: str, step=None, liked: bool = False
) -> list[Column]:
    """A1111's X/Y plot over LoRA strength, every cell with the negative token (a liked LoRA's without)."""
    return [
        Column(
            f"scale:{s:g}",
            f"scale {s:g}" + _pass_note(passes),
            with_token=not liked,
            lora_path=lora_path,
            lora_scale=s,
            lora_passes=passes,
            step=step,
        )
        for s in scales
    ]


def checkpoint_sweep(
    checkpoints: list[tuple[int, str]], scale: float, token: str, passes: str, liked: bool = False
) -> list[Column]:
    """The negative-token baseline (a liked LoRA's: the base), then one column per checkpoint (the last
    one is not always best)."""
    first = Column("base", "base", with_token=False) if liked else Column("negative", f"negative: {token}", True)
    columns = [first]
    columns += [
        Column(
            f"step:{step}",
            f"step {step}" + _pass_note(passes),
            with_token=not liked,
            lora_path=path,
            lora_scale=scale,
            lora_passes=passes,
            step=step,
        )
        for step, path in checkpoints
    ]
    return columns
