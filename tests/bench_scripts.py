"""What the bench/ script tests share: loading a script as a module, and gin bindings that
shrink gin/models/t5_1_1/tiny.gin further."""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# tiny.gin shrunk further: the benches accept gin bindings after the model file.
SHRINK = [
  "--gin.VOCAB_SIZE=128",
  "--gin.network.TransformerConfig.emb_dim=32",
  "--gin.network.TransformerConfig.num_heads=4",
  "--gin.network.TransformerConfig.head_dim=8",
  "--gin.network.TransformerConfig.mlp_dim=32",
  "--gin.network.TransformerConfig.num_encoder_layers=1",
  "--gin.network.TransformerConfig.num_decoder_layers=1",
]


@contextlib.contextmanager
def bench_module(name: str):
  """Yields bench/<name>.py as a module, with bench/ on sys.path (for `_common`) meanwhile."""
  path = str(REPO / "bench")
  sys.path.insert(0, path)
  try:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.path.remove(path)
