"""BeamVQ: physics-aligned space-time forecasting with a VQ code bank, beam search and physics-aware self-training."""
