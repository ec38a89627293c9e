"""An lm.moe run's trained model back in one process: ``load_moe(RUN_DIR / "model")`` reads the safetensors that
worker 0 wrote (the dense tensors and every routed expert under its own Hunyuan-style name) into a ``MoELM`` whose
routed experts are stacked parameters, for evaluation or generation without the platform."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from seraphim.algorithms.moe.model import EXPERT_SHAPES, MoEConfig, MoELM, expert_tensor_name
from seraphim.algorithms.transformer.export import MOE_CONFIG, ExportError


def load_moe(model_dir: Path) -> MoELM:
    """The model in `model_dir` (moe_config.json and safetensors shards), every tensor checked present."""
    config_path = Path(model_dir) / MOE_CONFIG
    if not config_path.exists():
        raise ExportError(f"{model_dir} holds no lm.moe model ({MOE_CONFIG} is missing): did the job finish?")
    config = MoEConfig(**json.loads(config_path.read_text()))
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(file))
    state = {}
    for layer in range(config.n_layers if config.n_experts else 0):
        for which in EXPERT_SHAPES:
            names = [expert_tensor_name(layer, e, which) for e in range(config.n_experts)]
            missing = [n for n in names if n not in weights]
            if missing:
                raise ExportError(f"{model_dir} lacks routed expert weights such as {missing[0]!r}")
            state[f"model.layers.{layer}.mlp.experts.{which}"] = torch.stack([weights.pop(n) for n in names])
    state.update(weights)
    with torch.device("meta"):
        model = MoELM(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
