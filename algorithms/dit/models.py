"""Model presets by name and the one builder, so a job spec, the in-process reference and the benchmark all build
the same model from the same words.

    model = build_model(model_config("hydit-t/4", depth=8), vocab_size=tok.vocab_size)
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from seraphim.algorithms.dit.backbone import DiTConfig, PatchDiT
from seraphim.algorithms.dit.errors import DiTInputError
from seraphim.algorithms.dit.hunyuan_dit import HunyuanDiT
from seraphim.algorithms.dit.hunyuan_video import HunyuanVideoDiT

FAMILIES: dict[str, type[PatchDiT]] = {"hunyuan_dit": HunyuanDiT, "hunyuan_video": HunyuanVideoDiT}

#: name -> DiTConfig fields; "/4" is the image patch (4x4), "/2x4" the video patch (2 frames x 4 x 4)
PRESETS: dict[str, dict[str, Any]] = {
    "hydit-t/4": {"family": "hunyuan_dit", "dim": 128, "heads": 4, "depth": 6, "patch": (4, 4)},
    "hyvideo-t/4": {"family": "hunyuan_video", "dim": 128, "heads": 4, "double_blocks": 2, "single_blocks": 4,
                    "patch": (4, 4)},
    # all single-stream at the parameter count of hyvideo-t/4 (2 dual-stream blocks weigh as much as 5 single)
    "single-t/4": {"family": "hunyuan_video", "dim": 128, "heads": 4, "single_blocks": 9, "patch": (4, 4)},
    "hyvideo-t/2x4": {"family": "hunyuan_video", "dim": 128, "heads": 4, "double_blocks": 2, "single_blocks": 4,
                      "patch": (2, 4, 4)},
}


def model_config(preset: str, **overrides: Any) -> DiTConfig:
    """A preset's configuration with some fields replaced; DiTInputError names a bad preset or field."""
    if preset not in PRESETS:
        raise DiTInputError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    try:
        return DiTConfig.model_validate({**PRESETS[preset], **overrides})
    except ValidationError as exc:
        raise DiTInputError(f"model preset {preset!r} with overrides {overrides}: {exc}") from None


def build_model(config: DiTConfig, vocab_size: int) -> PatchDiT:
    return FAMILIES[config.family](config, vocab_size)
