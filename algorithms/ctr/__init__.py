"""Click-through-rate models (sparse LR, wide-and-deep) on generated click logs.

`data` generates click logs and reads/writes their CSV form, `models` holds the models and their PS binding,
`train` trains on the PS (`train_worker`, `python -m seraphim.algorithms.ctr.train`), and `reference` trains the
same models in one process with plain torch. `train` and `reference` are not imported here, so that running
`train` as a module does not import it twice.
"""

from seraphim.algorithms.ctr.data import (ClickBatch, ClickLogSpec, CSVFormatError, bayes_auc, eval_batch,
                                          generate_batch, iter_batches, read_csv, roc_auc, worker_batch, write_csv)
from seraphim.algorithms.ctr.models import SparseLR, WideAndDeep, build_model, build_ps_model

__all__ = ["ClickBatch", "ClickLogSpec", "CSVFormatError", "bayes_auc", "eval_batch", "generate_batch", "iter_batches",
           "read_csv", "roc_auc", "worker_batch", "write_csv", "SparseLR", "WideAndDeep", "build_model",
           "build_ps_model"]
