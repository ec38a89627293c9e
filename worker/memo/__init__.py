"""MEMO: token-wise activation swapping and recomputation, the slower tier it swaps to, and its α."""
