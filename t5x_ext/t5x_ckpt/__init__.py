"""Native T5X checkpoints: read, write and convert (`t5x_ext.hf` is the Transformers sibling).

```python
from t5x_ext import t5x_ckpt
ckpt = t5x_ckpt.T5XCheckpoint("ul2/checkpoint_2650000")      # msgpack + zarr, nothing read yet
params = t5x_ckpt.restore_params(path, abstract_params)       # sharded, slice by slice
t5x_ckpt.write_checkpoint(model_dir, step, t5x_ckpt.to_t5x_names(params))  # T5X format v3
```

`python -m t5x_ext.t5x_ckpt.convert --t5x_checkpoint=DIR --output_dir=OUT` writes this
project's layout (params + model.gin); `t5x_ext.training.checkpointing.restore_params` (fine-tuning's
`INITIAL_CHECKPOINT_PATH`, eval's `CHECKPOINT_PATH`) accepts a T5X checkpoint directly.
Name map and namings: `t5x_ext.t5x_ckpt.names`; format: `t5x_ext.t5x_ckpt.t5x_format`;
docs/t5x_checkpoints.md. Nothing is downloaded: users copy released checkpoints themselves.
"""

from t5x_ext.t5x_ckpt.gin_values import GinValues, infer_config
from t5x_ext.t5x_ckpt.names import NAMINGS, ParamMismatchError, plan, source_views, to_t5x_names
from t5x_ext.t5x_ckpt.restore import read_params, restore_params
from t5x_ext.t5x_ckpt.t5x_format import (
  T5XCheckpoint,
  T5XFormatError,
  find_checkpoint_file,
  is_t5x_checkpoint,
  write_checkpoint,
)

__all__ = [
  "NAMINGS",
  "GinValues",
  "ParamMismatchError",
  "T5XCheckpoint",
  "T5XFormatError",
  "find_checkpoint_file",
  "infer_config",
  "is_t5x_checkpoint",
  "plan",
  "read_params",
  "restore_params",
  "source_views",
  "to_t5x_names",
  "write_checkpoint",
]
