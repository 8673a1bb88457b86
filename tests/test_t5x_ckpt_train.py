"""Fine-tuning from a native T5X checkpoint: `train.train(restore_params_from=T5X dir)`."""

import jax
import numpy as np
import pytest
from t5x_ckpt_util import random_params, write_fixture

from tests import _train_runner


@pytest.mark.slow  # compiles a train step
def test_finetuning_starts_from_the_t5x_checkpoint(tmp_path):
  model = _train_runner.tiny_model()
  params = random_params(model.config, seed=4)
  step_dir = write_fixture(tmp_path / "t5x", params)
  losses, result = _train_runner.train_losses(
    tmp_path / "run", {"data": 1}, steps=2, batch_size=4, restore_params_from=str(step_dir)
  )
  assert len(losses) == 2 and all(np.isfinite(losses))
  # Two small steps away from the written weights; a fresh init is far from them. (Adafactor
  # can move a rarely used embedding row by ~0.15 in two steps: its statistics are tiny.)
  final = jax.tree.map(np.asarray, result.state.params)
  drift = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), final, params)
  assert max(jax.tree.leaves(drift)) < 0.3, drift
  fresh = jax.tree.map(np.asarray, random_params(model.config, seed=5))
  far = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), fresh, params)
  assert max(jax.tree.leaves(far)) > 1.0, far
