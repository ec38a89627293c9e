"""The DiT's pieces against their definitions: patches, RoPE, adaLN-Zero, the objectives' conventions, samplers,
guidance and EMA."""

from __future__ import annotations

import pytest
import torch

from seraphim.algorithms.dit.diffusion import FlowMatching, VPrediction, guided, shift_time
from seraphim.algorithms.dit.ema import EMA
from seraphim.algorithms.dit.errors import DiTInputError
from seraphim.algorithms.dit.hunyuan_dit import CrossAttentionBlock
from seraphim.algorithms.dit.hunyuan_video import DoubleStreamBlock, SingleStreamBlock
from seraphim.algorithms.dit.layers import patchify, unpatchify
from seraphim.algorithms.dit.models import PRESETS, build_model, model_config
from seraphim.algorithms.dit.rope import apply_rope, rope_angles, rope_split, sincos_embedding

TINY = {"dim": 32, "heads": 2, "text_dim": 16, "text_heads": 2, "text_depth": 1, "max_text_len": 6}


@pytest.mark.parametrize("shape, patch", [((2, 3, 8, 12), (4, 4)), ((2, 3, 4, 8, 12), (2, 4, 4))])
def test_patchify_round_trips_and_keeps_each_patch_together(shape, patch):
    x = torch.randn(shape)
    tokens, grid = patchify(x, patch)
    assert grid == tuple(s // p for s, p in zip(shape[2:], patch))
    assert tokens.shape == (2, torch.Size(grid).numel(), torch.Size(patch).numel() * 3)
    assert torch.equal(unpatchify(tokens, grid, patch, 3), x)
    # token 1 is the patch at grid (0, 1) (images) or (0, 0, 1) (clips); its first value is that patch's corner, red
    corner = (0, 0, *([0] * (len(patch) - 1)), patch[-1])
    assert tokens[corner[0], 1, 0] == x[corner]


def test_patchify_names_a_size_that_is_not_a_multiple_of_the_patch():
    with pytest.raises(DiTInputError, match=r"spatial shape \(10, 12\) cannot be cut into patches \(4, 4\)"):
        patchify(torch.zeros(1, 3, 10, 12), (4, 4))


def test_rope_scores_depend_only_on_the_offset_between_positions():
    torch.manual_seed(0)
    dims = rope_split(32, 3)
    q, k = torch.randn(32), torch.randn(32)

    def score(m: list[int], n: list[int]) -> torch.Tensor:
        angles = rope_angles((1, 1, 1), dims, positions=torch.tensor([m, n]))
        rq, rk = apply_rope(torch.stack([q, k]), angles)  # q at m, k at n
        return rq @ rk

    assert torch.allclose(score([0, 2, 5], [1, 0, 3]), score([4, 9, 11], [5, 7, 9]), atol=1e-4)  # same m - n
    assert not torch.allclose(score([0, 2, 5], [1, 0, 3]), score([0, 2, 5], [1, 0, 4]), atol=1e-3)
    assert torch.allclose(score([3, 3, 3], [3, 3, 3]), q @ k, atol=1e-4)  # equal positions: the plain dot product


def test_rope_splits_a_head_over_the_axes_into_even_parts_that_sum_to_it():
    for head_dim in (16, 32, 64, 128):
        for axes in (2, 3):
            parts = rope_split(head_dim, axes)
            assert sum(parts) == head_dim and len(parts) == axes and all(p % 2 == 0 and p > 0 for p in parts)
    assert rope_split(32, 3) == (8, 12, 12)
    with pytest.raises(DiTInputError, match="head_dim 18 must be a multiple of 4"):
        rope_split(18, 2)


def test_absolute_position_embedding_tells_every_token_of_a_grid_apart():
    for grid, dim in (((8, 8), 64), ((4, 8, 8), 96)):
        emb = sincos_embedding(grid, dim)
        assert emb.shape == (torch.Size(grid).numel(), dim)
        distances = torch.cdist(emb, emb) + torch.eye(len(emb)) * 1e3
        assert distances.min() > 0.1


def _randomize(module: torch.nn.Module, keep_zero_init: bool = True) -> None:
    """Random values everywhere, but (keep_zero_init) in the adaLN-Zero layers and long skips, as initialize_weights
    leaves them."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not keep_zero_init or ("modulation" not in name and not name.startswith("skip")):
                p.normal_(0, 0.5)


@pytest.mark.parametrize("preset", ["hydit-t/4", "hyvideo-t/4"])
def test_adaln_zero_makes_every_block_the_identity_at_init(preset):
    torch.manual_seed(0)
    model = build_model(model_config(preset, **TINY), vocab_size=20)
    x, text, c = torch.randn(2, 16, 32), torch.randn(2, 6, 32), torch.randn(2, 32)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    angles = rope_angles((4, 4), model.rope_dims)
    joint = torch.cat([angles, torch.zeros(6, angles.shape[1])])
    blocks = [*getattr(model, "blocks", []), *getattr(model, "double_blocks", []), *getattr(model, "single_blocks", [])]
    assert blocks
    for block in blocks:
        _randomize(block)  # the identity must come from adaLN-Zero alone, not from small weights
        if isinstance(block, CrossAttentionBlock):
            out = block(x, c, text, mask, angles, torch.randn_like(x) if block.takes_skip else None)
            assert torch.equal(out, x)
        elif isinstance(block, DoubleStreamBlock):
            out, text_out = block(x, text, c, torch.cat([torch.ones(2, 16, dtype=torch.bool), mask], 1), joint)
            assert torch.equal(out, x) and torch.equal(text_out, text)
        else:
            assert isinstance(block, SingleStreamBlock)
            joined = torch.cat([x, text], 1)
            assert torch.equal(block(joined, c, torch.cat([torch.ones(2, 16, dtype=torch.bool), mask], 1), joint),
                               joined)
    if preset == "hydit-t/4":  # depth 4: block 0 saves its output, block 3 takes it back
        assert [b.takes_skip for b in blocks] == [False, False, False, True]


def test_presets_build_and_predict_the_input_shape_at_zero():
    ids = torch.tensor([[2, 5, 6, 0, 0, 0]])
    for name in PRESETS:
        config = model_config(name, **TINY)
        model = build_model(config, vocab_size=20)
        shape = (1, config.channels, 8, 16, 16) if len(config.patch) == 3 else (1, config.channels, 16, 16)
        out = model(torch.randn(shape), torch.tensor([500.0]), ids)
        assert out.shape == shape and torch.equal(out, torch.zeros(shape))  # the final layer starts at zero
    # dual-then-single and all-single are built at (nearly) equal parameter counts
    both, single = (build_model(model_config(n, **TINY), 20).num_parameters() for n in ("hyvideo-t/4", "single-t/4"))
    assert abs(both - single) / both < 0.03


def test_a_caption_word_moves_its_encoded_token_by_more_than_the_token_norm_at_init():
    # the word embeddings start at the scale of the encoder layers' outputs, so a one-word change (a 3 for a 4) is
    # not drowned by the context those layers mix in (at N(0, 0.02) it moved the token by about half its norm, and
    # the trained model then ignored the digit word)
    torch.manual_seed(0)
    model = build_model(model_config("hydit-t/4", dim=64, text_dim=64, text_depth=2), vocab_size=30)
    ids = torch.tensor([[2, 3, 15, 19, 5, 7, 9, 11, 6, 3, 10, 4], [2, 3, 15, 20, 5, 7, 9, 11, 6, 3, 10, 4]])
    tokens, _, _ = model.cond.text(ids)  # (2, 12, 64)
    assert (tokens[0, 3] - tokens[1, 3]).norm() > tokens[0, 3].norm()


def test_flow_matching_convention_data_at_zero_noise_at_one_and_velocity_eps_minus_x0():
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    fm = FlowMatching()
    assert torch.equal(fm.noisy(x0, eps, torch.zeros(4)), x0)
    assert torch.equal(fm.noisy(x0, eps, torch.ones(4)), eps)
    t = torch.rand(4)
    # the target is the time derivative of the path x_t = (1 - t) x0 + t eps
    h = 1e-3
    numeric = (fm.noisy(x0, eps, t + h) - fm.noisy(x0, eps, t - h)) / (2 * h)
    assert torch.allclose(fm.target(x0, eps, t), numeric, atol=1e-2)
    assert torch.equal(fm.target(x0, eps, t), eps - x0)


def test_time_shift_keeps_the_ends_and_spends_steps_at_high_noise():
    t = torch.linspace(0, 1, 11)
    for s in (1.0, 3.0, 7.0):
        shifted = shift_time(t, s)
        assert shifted[0] == 0 and shifted[-1] == 1
        assert torch.allclose(shifted, s * t / (1 + (s - 1) * t))
    assert torch.equal(shift_time(t, 1.0), t)
    assert (shift_time(t[1:-1], 3.0) > t[1:-1]).all()
    times = FlowMatching.times(10, 3.0)
    assert times[0] == 1 and times[-1] == 0 and (times.diff() < 0).all()  # Euler integrates from 1 to 0


def test_v_prediction_target_and_schedule():
    vp = VPrediction()
    x0, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    step = torch.tensor([0, 500, 999])
    alpha, sigma = vp.alpha_sigma(step)
    assert torch.allclose(alpha ** 2 + sigma ** 2, torch.ones(3))
    assert alpha[0] > 0.999 and alpha[2] < 0.01  # step 0 nearly clean, step T-1 nearly pure noise
    a, s = alpha[:, None, None, None], sigma[:, None, None, None]
    assert torch.allclose(vp.target(x0, eps, step), a * eps - s * x0)
    assert torch.allclose(vp.noisy(x0, eps, step), a * x0 + s * eps)
    assert vp.timesteps(4).tolist() == [999, 749, 499, 249, -1]


def _single_point_oracle(objective, point: torch.Tensor):
    """The exact prediction for a data distribution that is the single point `point`."""

    def model(x: torch.Tensor, timestep: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(objective, FlowMatching):
            t = (timestep / 1000).reshape(-1, 1, 1, 1)
            return (x - point) / t  # eps - x0 with eps = (x - (1 - t) x0) / t
        alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in objective.alpha_sigma(timestep.long()))
        eps = (x - alpha * point) / sigma
        return alpha * eps - sigma * point

    return model


@pytest.mark.parametrize("objective, options", [(FlowMatching(), {"shift": 1.0}), (FlowMatching(), {"shift": 5.0}),
                                                (VPrediction(), {"eta": 0.0}), (VPrediction(), {"eta": 1.0})])
@pytest.mark.parametrize("steps", [1, 4, 25])
def test_a_perfect_predictor_makes_the_sampler_return_the_data_point(objective, options, steps):
    point = torch.randn(1, 3, 4, 4)
    noise = torch.randn(5, 3, 4, 4)
    ids = torch.ones(5, 4, dtype=torch.long)
    out = objective.sample(_single_point_oracle(objective, point), noise, ids, ids[:1] * 0, steps, guidance=3.0,
                           **options)
    assert torch.allclose(out, point.expand_as(out), atol=1e-4)


def test_guidance_scale_one_is_the_conditional_prediction_and_zero_the_unconditional():
    torch.manual_seed(0)
    model = build_model(model_config("hydit-t/4", **TINY), vocab_size=20)
    _randomize(model, keep_zero_init=False)  # a model whose output depends on the caption
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([100.0, 500.0, 900.0])
    ids = torch.tensor([[2, 5, 6, 7, 0, 0]] * 3)
    null = torch.tensor([[2, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        cond, uncond = model(x, t, ids), model(x, t, null.expand(3, -1))
        assert not torch.allclose(cond, uncond, atol=1e-3)
        assert torch.allclose(guided(model, x, t, ids, null, 1.0), cond, rtol=1e-4, atol=1e-4)
        assert torch.allclose(guided(model, x, t, ids, null, 0.0), uncond, rtol=1e-4, atol=1e-4)
        assert torch.allclose(guided(model, x, t, ids, null, 4.0), uncond + 4 * (cond - uncond), rtol=1e-4,
                              atol=1e-3)


def test_ema_moves_towards_the_weights_by_one_minus_the_warmed_up_decay():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the first update is mostly the weights
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.1 * 1.0 + 0.9 * 3.0))
    for _ in range(1000):
        ema.update(model)
    assert ema.current_decay() == 0.99 and torch.allclose(ema.model.weight, torch.full((1, 2), 3.0))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_an_update_from_named_weights_stands_for_its_steps():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    ema.updates = 1000  # past the warm-up: the decay is 0.9
    start = ema.model.weight.clone()
    target = {"weight": torch.full((1, 2), 5.0), "bias": torch.zeros(1)}
    ema.update_from(target.items(), steps=3)
    assert torch.allclose(ema.model.weight, 0.9 ** 3 * start + (1 - 0.9 ** 3) * 5.0)
    assert ema.updates == 1003


@pytest.mark.parametrize("preset", ["hydit-t/4", "hyvideo-t/4"])
def test_paged_units_hold_every_parameter_once_and_run_in_the_listed_order(preset):
    model = build_model(model_config(preset, **TINY), vocab_size=20)
    units = model.paged_units()
    owned = [id(p) for unit in units for p in unit.parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters()) and len(set(owned)) == len(owned)
    ran: list[int] = []
    for unit in units:
        unit.register_forward_pre_hook(lambda module, _args: ran.append(id(module)))
    model(torch.randn(1, 3, 16, 16), torch.tensor([500.0]), torch.tensor([[2, 5, 6, 0, 0, 0]]))
    assert ran == [id(unit) for unit in units]  # the runtime's trace follows this order; each unit runs once


def test_a_meta_model_has_the_shapes_and_no_storage():
    config = model_config("hydit-t/4", **TINY)
    meta, real = build_model(config, 20, device="meta"), build_model(config, 20)
    assert all(p.is_meta for p in meta.parameters())
    assert [(n, p.shape) for n, p in meta.named_parameters()] == [(n, p.shape) for n, p in real.named_parameters()]
