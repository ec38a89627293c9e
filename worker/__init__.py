"""The worker side: the PS client, table handles, initializer and optimizer specs, and torch modules."""

from seraphim.worker.client import DenseTable, PSClient, SparseTable, Table, merge_duplicates
from seraphim.worker.specs import (SGD, Adagrad, Adam, AdamW, Constant, Normal, TruncatedNormal, Uniform,
                                   Zeros)

__all__ = ["PSClient", "Table", "SparseTable", "DenseTable", "merge_duplicates", "Zeros", "Constant", "Normal",
           "TruncatedNormal", "Uniform", "SGD", "Adagrad", "Adam", "AdamW"]
