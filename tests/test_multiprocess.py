"""`pool.map(scorer, batched=True, with_rank=True, num_proc=k)`: worker processes give the
same scores as one process (on CPU; on CUDA each rank scores on cuda:rank)."""

import datasets
import numpy as np

from tests import tiny
from tov_datasets.scorer import ToVScorer

TEXTS = [" ".join(tiny.WORDS[i:i + 3 + i % 7]) for i in range(0, 60, 3)]


def test_num_proc_2_equals_num_proc_1(tiny_causal_lm, tiny_tokenizer):
    pool = datasets.Dataset.from_dict({"text": TEXTS})
    scorer = ToVScorer(tiny_causal_lm, tiny_tokenizer, batch_size=4)
    one = pool.map(scorer, batched=True, batch_size=5, with_rank=True, num_proc=1)
    two = pool.map(scorer, batched=True, batch_size=5, with_rank=True, num_proc=2)
    np.testing.assert_array_equal(np.asarray(two["tov_num_tokens"]),
                                  np.asarray(one["tov_num_tokens"]))
    np.testing.assert_allclose(two["tov_score"], one["tov_score"], rtol=0, atol=0)
    assert np.count_nonzero(one["tov_score"]) >= len(TEXTS) - 1
