"""Beam search over rollouts keeps the cheapest candidates; without the filter it keeps them all."""

from __future__ import annotations

import pytest
import torch

from seraphim.algorithms.beamvq.beam_search import BeamConfig, beam_search

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def propose(x: torch.Tensor, top_k: int) -> torch.Tensor:
    """Candidate k of a window: its last frame plus k + 1, two frames long, so paths are sums of chosen k's."""
    last = x[:, -1:]
    return torch.stack([(last + k + 1).expand(-1, 2, -1, -1, -1) for k in range(top_k)], dim=1)


def cost_to(target: float):
    """Cost of a candidate: its distance from ``target`` (the value each step should reach)."""
    def score(cands: torch.Tensor, context: torch.Tensor, truth: torch.Tensor | None) -> torch.Tensor:
        goal = truth[:, 0, 0, 0, 0] if truth is not None else torch.full((len(cands),), target)
        return (cands[:, 0, 0, 0, 0] - goal).abs()
    return score


def test_beam_search_keeps_the_top_scored_candidates_at_every_step():
    x = torch.zeros(3, 2, 1, 1, 1)  # three inputs, two frames of one value
    x[1] += 10.0
    config = BeamConfig(width=2, top_k=3, horizon=2, keep=1)
    truth = torch.stack([x[:, -1, 0, 0, 0] + 2, x[:, -1, 0, 0, 0] + 2, x[:, -1, 0, 0, 0] + 5,
                         x[:, -1, 0, 0, 0] + 5], dim=1)[..., None, None, None]  # reach +2, then +5 (i.e. +3 more)
    result = beam_search(propose, x, config, cost_to(0.0), truth)
    # step 1: candidates +1, +2, +3 -> +2 is exact; step 2 from the best beams (+2 and +1): +2+3 = +5 is exact
    start = x[:, -1, 0, 0, 0]
    assert result.targets.shape == (6, 2, 1, 1, 1) and result.inputs.shape == (6, 2, 1, 1, 1)
    torch.testing.assert_close(result.targets[:3, 0, 0, 0, 0], start + 2)
    torch.testing.assert_close(result.targets[3:, 0, 0, 0, 0], start + 5)
    torch.testing.assert_close(result.inputs[3:, -1, 0, 0, 0], start + 2)  # forecast from the kept beam's frames
    torch.testing.assert_close(result.costs, torch.zeros(6, dtype=torch.float64))
    assert result.origin.tolist() == [0, 1, 2, 0, 1, 2]  # each kept pair names the input whose beam it continues
    torch.testing.assert_close(result.best[:, :, 0, 0, 0], torch.stack([start + 2] * 2 + [start + 5] * 2, dim=1))


def test_the_beam_carries_the_cheapest_paths_not_the_cheapest_last_step():
    x = torch.zeros(1, 1, 1, 1, 1)
    truth = torch.tensor([1.0, 1.0, 3.6, 3.6])[None, :, None, None, None]
    # 1 then 3 costs 0 + 0.6; 2 then 4 has the cheapest last step (0.4) but costs 1 + 0.4 in all
    result = beam_search(propose, x, BeamConfig(width=2, top_k=2, horizon=2, keep=1), cost_to(0.0), truth)
    torch.testing.assert_close(result.best[0, :, 0, 0, 0], torch.tensor([1.0, 1.0, 3.0, 3.0]))
    torch.testing.assert_close(result.costs, torch.tensor([0.0, 0.6], dtype=torch.float64))


def test_without_the_filter_every_candidate_is_kept_and_nothing_is_scored():
    x = torch.zeros(2, 2, 1, 1, 1)
    config = BeamConfig(width=2, top_k=3, horizon=2, keep=1, filter=False)
    result = beam_search(propose, x, config, generator=torch.Generator().manual_seed(0))
    assert len(result.targets) == 2 * 3 + 2 * 2 * 3  # step 1: one beam x 3; step 2: two beams x 3, per input
    assert torch.isnan(result.costs).all()
    firsts = sorted(result.targets[:6, 0, 0, 0, 0].tolist())
    assert firsts == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert result.origin.tolist() == [0] * 3 + [1] * 3 + [0] * 6 + [1] * 6
    with pytest.raises(ValueError, match="needs a score function"):
        beam_search(propose, x, BeamConfig())
    with pytest.raises(ValueError, match=r"beam.keep \(3\) cannot exceed beam.width \(2\)"):
        BeamConfig(width=2, keep=3)
    with pytest.raises(ValueError, match=r"beam.spread must be > 0, got 0.0"):
        BeamConfig(spread=0.0)


def test_every_rollout_step_is_scored_against_the_real_input_not_the_beams_last_forecast():
    x = torch.full((2, 2, 1, 1, 1), 7.0)
    contexts = []

    def score(cands: torch.Tensor, context: torch.Tensor, truth: torch.Tensor | None) -> torch.Tensor:
        contexts.append(context[:, 0, 0, 0].clone())
        return (cands[:, 0, 0, 0, 0] - context[:, 0, 0, 0] - 1).abs()  # the input's value + 1 costs nothing

    result = beam_search(propose, x, BeamConfig(width=2, top_k=3, horizon=3, keep=1), score)
    assert len(contexts) == 3 and all(torch.equal(c, torch.full_like(c, 7.0)) for c in contexts)
    # the best path climbs 8, 9, 10: held to the real 7 its steps cost 0, 1, 2 (held to its own last frame: 0, 0, 0)
    torch.testing.assert_close(result.best[:, ::2, 0, 0, 0], torch.tensor([[8.0, 9.0, 10.0]] * 2))
    torch.testing.assert_close(result.costs, torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64))
