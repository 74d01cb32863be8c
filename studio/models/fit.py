"""Will it fit? For the current settings and each model, studio.memory.estimate's peak on a GPU card with gradient
checkpointing off and on, the verdict, and the longest Max sequence length that fits: a table from the one
estimator, not a second one. The cards are the GPU this machine has, else common sizes (8 / 12 / 16 / 24 GB)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import RunConfig
from .catalog import ModelInfo

CARDS_GB = (8, 12, 16, 24)   # the common consumer cards, for a machine without a GPU
GIB = 2 ** 30                # a "24 GB" card holds 24 GiB (25.8e9 bytes); the estimate counts the CUDA context itself
MIN_LEN, MAX_LEN, STEP = 256, 32768, 256  # the max_length search: multiples of 256 from 256 to 32k tokens
FITS, FITS_CKPT, NO_FIT = "fits", "fits with checkpointing", "does not fit"
SHORTER = "fits only with a shorter max length"  # not at the form's max length, but at the longest one shown


@dataclass
class Fit:
    model: str
    card_gb: float
    peak_off_gb: float      # checkpointing off
    peak_on_gb: float       # checkpointing on
    verdict: str            # FITS / FITS_CKPT / SHORTER / NO_FIT
    max_length: int | None  # the longest max_length that fits (checkpointing on); None when not even 256 does
    context: int | None     # the model's own context (max_position_embeddings): the search stops there

    def row(self) -> dict:
        longest = "-" if self.max_length is None else str(self.max_length)
        if self.max_length is not None and self.max_length == min(MAX_LEN, self.context or MAX_LEN):
            longest += "+" if self.max_length == MAX_LEN else " (its context)"
        return {"model": self.model, "card": f"{self.card_gb:g} GB", "no ckpt GB": round(self.peak_off_gb, 1),
                "ckpt GB": round(self.peak_on_gb, 1),
                "verdict": self.verdict, "longest max_length": longest}


def cards() -> list[float]:
    """Card sizes in GB for the table: this machine's GPU (its total memory, in GiB) or, with none, CARDS_GB."""
    from ..env import devices
    if devices.gpus_present() > 0:
        try:
            mem = devices.gpu_memory()
        except Exception:  # a broken CUDA install answers like no GPU
            mem = None
        if mem is not None:
            return [round(mem[1] / GIB, 1)]
    return list(CARDS_GB)


def _peak(cfg: RunConfig, shape: dict, tokens: int) -> float:
    from .. import memory
    return memory.estimate(cfg, "cuda", model_config=shape, row_tokens=tokens).total_gb * 1e9


def longest(cfg: RunConfig, shape: dict, card_bytes: float, context: int | None = None) -> int | None:
    """The largest multiple of STEP in MIN_LEN..min(MAX_LEN, context) whose estimate fits `card_bytes`; None when
    MIN_LEN does not. The estimate grows with the row length, so a bisection finds it in ~7 estimates."""
    hi = max(MIN_LEN, min(MAX_LEN, context or MAX_LEN)) // STEP
    lo = MIN_LEN // STEP
    if _peak(cfg, shape, lo * STEP) > card_bytes:
        return None
    if _peak(cfg, shape, hi * STEP) <= card_bytes:
        return hi * STEP
    while hi - lo > 1:  # invariant: lo fits, hi does not
        mid = (lo + hi) // 2
        if _peak(cfg, shape, mid * STEP) <= card_bytes:
            lo = mid
        else:
            hi = mid
    return lo * STEP


def fit(cfg: RunConfig, model: ModelInfo, card_gb: float) -> Fit:
    """One model on one card under cfg's settings (cfg.model.source is swapped for the model; one process)."""
    base = cfg.replace(model={"source": model.source}, train={"devices": 1, "max_length": MAX_LEN})
    shape = model.shape
    length = cfg.train.max_length
    off = base.replace(train={"gradient_checkpointing": False})
    on = base.replace(train={"gradient_checkpointing": True})
    peak_off, peak_on = _peak(off, shape, length), _peak(on, shape, length)
    card = card_gb * GIB
    verdict = FITS if peak_off <= card else FITS_CKPT if peak_on <= card else NO_FIT
    most = longest(on, shape, card, model.context)
    if verdict == NO_FIT and most is not None:
        verdict = SHORTER
    return Fit(model=model.name, card_gb=card_gb, peak_off_gb=peak_off / 1e9, peak_on_gb=peak_on / 1e9,
               verdict=verdict, max_length=most, context=model.context)


def fit_table(cfg: RunConfig, models: list[ModelInfo], card_sizes: list[float] | None = None) -> list[Fit]:
    """fit() for each model on each card (card_sizes: cards()'s when None); models whose shape cannot be read
    are left out."""
    out = []
    for card in card_sizes or cards():
        for m in models:
            try:
                out.append(fit(cfg, m, card))
            except (KeyError, TypeError, ValueError):
                continue
    return out


def settings_line(cfg: RunConfig, what: str) -> str:
    """What the table sized, and its units: the line above the CLI's table."""
    t = cfg.train
    return (f"{what}: {cfg.model.quantization}, LoRA r {cfg.lora.r}, batch {t.batch_size}, max_length "
            f"{t.max_length}; peaks from studio.memory.estimate in GB of 1e9 bytes; an N GB card holds N GiB "
            f"(24 GB: 25.8e9 bytes)")


def table_text(rows: list[Fit]) -> str:
    """The table as aligned text (the CLI's, and the closing note's)."""
    from .catalog import text_table
    return text_table([r.row() for r in rows])
