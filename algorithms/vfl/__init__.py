"""Vertical federated learning: BlindFL's Paillier-encrypted source layers between parties that are workers."""
