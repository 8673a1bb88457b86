"""Logical axis names shared by the networks and the partitioning rules.

Every parameter of `t5x_ext.model.network` is created through `nn.with_logical_partitioning` with
names from this module, and activations get `nn.with_logical_constraint` at block
boundaries. `t5x_ext.training.partitioning` maps these names onto the mesh axes
('data', 'fsdp', 'model'); nothing here knows about a mesh.
"""

# Parameter (and activation) axes.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
VOCAB = "vocab"
RELPOS = "relpos_buckets"
# The stacked-layers axis that `nn.scan` adds in front of every per-layer parameter.
LAYERS = "layers"

# Activation-only axes: the embedding dimension of activations and the key/value length of
# the decoding cache. They are separate names so that the rules can shard parameters'
# `embed` (FSDP) without forcing the same on activations.
ACT_EMBED = "activation_embed"
ACT_MLP = "activation_mlp"
ACT_HEADS = "activation_heads"
ACT_KV = "activation_kv"
ACT_VOCAB = "activation_vocab"
CACHE_LENGTH = "cache_length"

# Common activation layouts.
BLD = (BATCH, LENGTH, ACT_EMBED)  # hidden states [batch, length, d_model]
BLF = (BATCH, LENGTH, ACT_MLP)  # MLP hidden [batch, length, d_ff]
BLHK = (BATCH, LENGTH, ACT_HEADS, ACT_KV)  # queries/keys/values [batch, length, heads, head_dim]
BLV = (BATCH, LENGTH, ACT_VOCAB)  # logits [batch, length, vocab]

ALL_AXES = (
  BATCH,
  LENGTH,
  EMBED,
  MLP,
  HEADS,
  KV,
  VOCAB,
  RELPOS,
  LAYERS,
  ACT_EMBED,
  ACT_MLP,
  ACT_HEADS,
  ACT_KV,
  ACT_VOCAB,
  CACHE_LENGTH,
)
