"""Fine-tuning from a native T5X checkpoint: `train.train(restore_params_from=T5X dir)`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from t5x_ckpt_util import random_params, write_fixture

from t5x_ext.training import checkpointing
from tests import _train_runner


@pytest.mark.slow  # compiles a train step
def test_finetuning_starts_from_the_t5x_checkpoint(tmp_path):
  model = _train_runner.tiny_model()
  params = random_params(model.config, seed=4)
  step_dir = write_fixture(tmp_path / "t5x", params)
  # No update at the first step (learning rate 0), a real one at the second: the step-1
  # checkpoint must hold the T5X weights bit for bit, and step 2 must move every tensor.
  losses, result = _train_runner.train_losses(
    tmp_path / "run",
    {"data": 1},
    steps=2,
    batch_size=4,
    learning_rate=lambda count: jnp.where(count < 1, 0.0, 0.01),
    restore_params_from=str(step_dir),
    checkpoint_every=1,
    keep_checkpoints=None,
  )
  assert len(losses) == 2 and all(np.isfinite(losses))
  first = jax.device_get(
    checkpointing.restore_params(tmp_path / "run" / "checkpoints" / "1", params)
  )
  jax.tree.map(np.testing.assert_array_equal, first, params)
  final = jax.device_get(result.state.params)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), final, params)
  assert all(jax.tree.leaves(moved)), moved
