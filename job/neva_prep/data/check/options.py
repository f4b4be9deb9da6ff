"""What `data check` checks against: the training config's template, tokenizer, lengths and media tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from neva_prep.data.check.templates import TEMPLATES, media_positions
from neva_prep.data.records import MEDIA
from neva_prep.errors import BadInput


@dataclass(frozen=True)
class CheckOptions:
    """The NeVA / VideoNeVA settings a dataset is checked for (`model.data.*`, `model.encoder_seq_length`).

    Tokens per image are `media_tokens` when given, else (crop_size // patch_size)^2 as NeMo's dataset
    computes them from the processed image (`(H // 14) * (W // 14)`)."""

    template: str
    media: str
    tokenizer: str
    seq_length: int
    crop_size: int = 224
    patch_size: int = 14
    media_tokens: int | None = None
    num_frames: int | None = None
    media_root: str | None = None
    decode: bool = False

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise BadInput(f"--template must be one of {', '.join(TEMPLATES)}, got {self.template!r}")
        if self.media not in MEDIA:
            raise BadInput(f"--media must be one of {', '.join(MEDIA)}, got {self.media!r}")
        if self.seq_length < 1:
            raise BadInput(f"--seq-length must be at least 1, got {self.seq_length}")
        if self.media_tokens is not None and self.media_tokens < 1:
            raise BadInput(f"--media-tokens must be at least 1, got {self.media_tokens}")
        if self.crop_size < 1 or self.patch_size < 1 or self.crop_size < self.patch_size:
            raise BadInput(f"--crop-size {self.crop_size} / --patch-size {self.patch_size} give no patches")
        if self.media == "video" and (self.num_frames is None or self.num_frames < 1):
            raise BadInput(
                "--media video needs --num-frames F >= 1 (model.data.num_frames: a video takes F x the tokens"
                " of an image; NeMo gives 0 patch tokens when it is unset)"
            )
        if self.media == "image" and self.num_frames is not None:
            raise BadInput("--num-frames is for --media video")
        if self.decode and not self.media_root:
            raise BadInput("--decode needs --media-root (where the media files are)")

    @property
    def tokens_per_image(self) -> int:
        if self.media_tokens is not None:
            return self.media_tokens
        return (self.crop_size // self.patch_size) ** 2

    @property
    def positions(self) -> int:
        """Positions each placeholder takes in an item's `tokens`."""
        return media_positions(self.tokens_per_image, self.num_frames or 1, self.media)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
