"""BeamVQ's model: the forecast never goes through the code bank; candidates move the state along code differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seraphim.algorithms.beamvq.backbones import FrameShape, build_backbone
from seraphim.algorithms.beamvq.codebank import CodeBank, LocalStore
from seraphim.algorithms.beamvq.model import BeamVQModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = FrameShape(t_in=2, t_out=2, channels=2, size=8)


def model_and_inputs(name: str, branch_weight: float = 0.0, commitment: float = 0.0) -> tuple[BeamVQModel, torch.Tensor]:
    torch.manual_seed(0)
    backbone = build_backbone(name, SHAPE, **({"modes": 3} if name == "fno" else {}))
    x = torch.randn(3, SHAPE.t_in, SHAPE.channels, SHAPE.size, SHAPE.size)
    bank = CodeBank(LocalStore(codes=16, dim=4), commitment=commitment)
    with torch.no_grad():
        bank.initialize(backbone.encode(x), seed=0)
    return BeamVQModel(backbone, bank, branch_weight).eval(), x


@pytest.mark.parametrize("name", ["simvp", "fno"])
def test_the_forecast_is_the_backbones_own_and_by_default_the_bank_adds_nothing_to_the_loss(name):
    model, x = model_and_inputs(name)
    out = model(x)
    with torch.no_grad():
        alone = model.backbone(x)
    torch.testing.assert_close(out.forecast, alone)
    torch.testing.assert_close(model.predict(x), alone)
    assert out.quantized is None and out.index is not None  # the bank still assigns codes, for its EMA step
    y = torch.randn_like(alone)
    torch.testing.assert_close(out.loss(y), ((alone - y) ** 2).mean())


@pytest.mark.parametrize("name", ["simvp", "fno"])
def test_the_public_scripts_coupling_adds_the_decoded_codes_error_and_the_commitment(name):
    model, x = model_and_inputs(name, branch_weight=0.5, commitment=0.25)
    out = model(x)
    with torch.no_grad():
        alone = model.backbone(x)
        z = model.backbone.encode(x)
        from_codes = model.backbone.decode(model.bank.code_state(model.bank.nearest(z, 1)[:, 0], z), x)
    torch.testing.assert_close(out.forecast, alone)
    torch.testing.assert_close(out.quantized, from_codes)
    assert not torch.allclose(out.forecast, out.quantized)  # 16 codes cannot carry the state: the paths differ
    assert out.aux_loss.item() > 0
    y = torch.randn_like(alone)
    expected = ((alone - y) ** 2).mean() + 0.5 * ((from_codes - y) ** 2).mean() + out.aux_loss
    torch.testing.assert_close(out.loss(y), expected)
    with pytest.raises(ValueError, match="branch_weight must be >= 0"):
        BeamVQModel(model.backbone, model.bank, -1.0)


def test_candidates_start_with_the_forecast_and_move_the_state_by_spread_toward_the_other_codes():
    model, x = model_and_inputs("fno")  # FNO's decoder is linear in the state only up to its GELUs: compare states
    spread = 0.25
    cands = model.candidates(x, top_k=3, spread=spread)
    assert cands.shape == (3, 3, SHAPE.t_out, SHAPE.channels, SHAPE.size, SHAPE.size)
    torch.testing.assert_close(cands[:, 0], model.predict(x))
    with torch.no_grad():
        z = model.backbone.encode(x)
        index = model.bank.nearest(z, 3)
        codes = model.bank.codes.numpy()
        for k in (1, 2):
            step = codes[index[:, k].numpy()] - codes[index[:, 0].numpy()]  # per code vector
            moved = z.movedim(1, -1).reshape(-1, 4).numpy() + spread * step
            state = torch.from_numpy(moved.astype(np.float32)).reshape(3, SHAPE.size, SHAPE.size, -1).movedim(-1, 1)
            torch.testing.assert_close(cands[:, k], model.backbone.decode(state, x))
    assert not torch.allclose(cands[:, 1], cands[:, 0])
    with pytest.raises(ValueError, match="candidates need a code bank"):
        BeamVQModel(model.backbone).candidates(x, top_k=2, spread=0.1)
