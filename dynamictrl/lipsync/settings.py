"""Lip-sync settings (no torch import: the CLI parser and the UI read the defaults)."""

from dataclasses import asdict, dataclass

from ..settings import option
from ..validation import check_fields

PARSING_MODES = ("jaw", "raw", "neck")


@dataclass
class LipSyncSettings:
    """MuseTalk 1.5's knobs. Ranges, choices and help are field metadata, as for the
    generation settings (`dynamictrl.settings`): the checks, the CLI's `lipsync` flags, the
    job schema and the app's sliders read them."""

    bbox_shift: int = option(
        0,
        min=-200,
        max=200,
        step=1,
        flag="--bbox-shift",
        help="px to move the top of the repainted mouth region (positive: down, opens the "
        "mouth more; MuseTalk 1.5 uses 0)",
    )
    extra_margin: int = option(
        10,
        min=0,
        max=200,
        step=1,
        flag="--extra-margin",
        help="px below the chin included in the face crop (MuseTalk 1.5 uses 10)",
    )
    parsing_mode: str = option(
        "jaw",
        choices=PARSING_MODES,
        flag="--parsing-mode",
        help="which face region is blended back (MuseTalk 1.5 uses jaw)",
    )
    left_cheek_width: int = option(
        90, min=0, max=256, step=1, flag="--left-cheek-width", help="width of the blended left cheek region (px)"
    )
    right_cheek_width: int = option(
        90, min=0, max=256, step=1, flag="--right-cheek-width", help="width of the blended right cheek region (px)"
    )
    batch_size: int = option(8, min=1, flag="--batch-size", help="frames per UNet/VAE call")

    def __post_init__(self):
        check_fields(self)

    def avatar_fields(self) -> dict:
        """The settings an avatar depends on (the batch size changes no result)."""
        fields = asdict(self)
        fields.pop("batch_size")
        return fields
