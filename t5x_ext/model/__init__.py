"""The networks and what is computed with them: never imports TensorFlow, seqio or `tasks`.

Modules:
  axes.py      logical axis names (the constants every parameter and activation carries)
  masks.py     attention masks from segment ids, positions and causal/prefix flags
  layers.py    Flax blocks: dense, attention (with the decoding cache), MLP, relative bias
  attention.py which kernel a full attention call runs on (XLA, cuDNN, TPU Pallas) and the calls
  network.py   `TransformerConfig` and the encoder-decoder / decoder-only Flax modules
  losses.py    cross entropy with z-loss and label smoothing, per-token losses
  models.py    `EncoderDecoderModel` / `DecoderOnlyModel`: loss, score, predict, FLOPs
  decoding.py  greedy, sampling and beam search over a KV cache

Gin files bind `t5x_ext.network` and `t5x_ext.models` (and `t5x_ext.losses`): those top-level
names re-export these modules.
"""
