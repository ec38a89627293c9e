"""Model presets by name and the one builder, so a job spec, the in-process reference and the benchmark all build
the same model from the same words.

    model = build_model(model_config("hydit-t/4", depth=8), vocab_size=tok.vocab_size)
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ValidationError

from seraphim.algorithms.dit.backbone import DiTConfig, PatchDiT
from seraphim.algorithms.dit.errors import DiTInputError
from seraphim.algorithms.dit.hunyuan_dit import HunyuanDiT
from seraphim.algorithms.dit.hunyuan_video import HunyuanVideoDiT

FAMILIES: dict[str, type[PatchDiT]] = {"hunyuan_dit": HunyuanDiT, "hunyuan_video": HunyuanVideoDiT}

#: name -> DiTConfig fields; "/4" is the image patch (4x4), "/2x4" the clip patch (2 frames x 4 x 4). The width is
#: 128 because a token's residual stream must carry its patch's noise to the output: at width 64 a 48-value patch
#: (4x4 RGB) left samples grainy after 1000 steps, and 8x8 patches (192 values) at width 96 did not learn at all.
PRESETS: dict[str, dict[str, Any]] = {
    "hydit-t/4": {"family": "hunyuan_dit", "dim": 128, "heads": 4, "depth": 4, "patch": (4, 4), "text_dim": 64},
    "hyvideo-t/4": {"family": "hunyuan_video", "dim": 128, "heads": 4, "double_blocks": 1, "single_blocks": 3,
                    "patch": (4, 4), "text_dim": 64},
    # all single-stream at the parameter count of hyvideo-t/4: a dual-stream block weighs 36 D^2 and a single-stream
    # block (7 + 2 r) D^2 at MLP ratio r, so 5 blocks at r = 4.6 match 1 dual + 3 single at r = 4 (81 D^2)
    "single-t/4": {"family": "hunyuan_video", "dim": 128, "heads": 4, "single_blocks": 5, "mlp_ratio": 4.6,
                   "patch": (4, 4), "text_dim": 64},
    "hyvideo-t/2x4": {"family": "hunyuan_video", "dim": 128, "heads": 4, "double_blocks": 1, "single_blocks": 3,
                      "patch": (2, 4, 4), "channels": 1, "text_dim": 64},
}


def model_config(preset: str, **overrides: Any) -> DiTConfig:
    """A preset's configuration with some fields replaced; DiTInputError names a bad preset or field."""
    if preset not in PRESETS:
        raise DiTInputError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    try:
        return DiTConfig.model_validate({**PRESETS[preset], **overrides})
    except ValidationError as exc:
        raise DiTInputError(f"model preset {preset!r} with overrides {overrides}: {exc}") from None


def build_model(config: DiTConfig, vocab_size: int, device: str = "cpu") -> PatchDiT:
    """The model with its initial weights; on device "meta" only its shapes (a paged worker's, whose weights live
    on the PS)."""
    with torch.device(device):
        return FAMILIES[config.family](config, vocab_size)
