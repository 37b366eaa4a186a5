"""Lip-sync settings (no torch import: the CLI parser and the UI read the defaults)."""

from dataclasses import asdict, dataclass

PARSING_MODES = ("jaw", "raw", "neck")


@dataclass
class LipSyncSettings:
    bbox_shift: int = 0  # px; moves the top of the repainted half (v1.5 default 0)
    extra_margin: int = 10  # px below the chin included in the crop (v1.5)
    parsing_mode: str = "jaw"  # which face-parsing region is blended back
    left_cheek_width: int = 90
    right_cheek_width: int = 90
    batch_size: int = 8  # frames per UNet/VAE call

    def __post_init__(self):
        if self.parsing_mode not in PARSING_MODES:
            raise ValueError(f"parsing_mode must be one of {', '.join(PARSING_MODES)}, got {self.parsing_mode!r}.")
        if not 0 <= self.extra_margin <= 200:
            raise ValueError(f"extra_margin must be 0..200 px, got {self.extra_margin}.")
        if abs(self.bbox_shift) > 200:
            raise ValueError(f"bbox_shift must be within -200..200 px, got {self.bbox_shift}.")
        for name in ("left_cheek_width", "right_cheek_width"):
            if not 0 <= getattr(self, name) <= 256:
                raise ValueError(f"{name} must be 0..256, got {getattr(self, name)}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")

    def avatar_fields(self) -> dict:
        """The settings an avatar depends on (the batch size changes no result)."""
        fields = asdict(self)
        fields.pop("batch_size")
        return fields
