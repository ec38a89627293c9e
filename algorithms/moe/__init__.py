"""Mixture-of-experts LM (Hunyuan-Large): routing, the model, expert placements and the ``lm.moe`` job."""
