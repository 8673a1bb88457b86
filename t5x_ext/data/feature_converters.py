"""SeqIO feature converters that also carry each target token's denoiser.

The Mixture-of-Denoisers preprocessor tags each example with a scalar `denoiser_id` (the
index of its denoiser). After packing, several examples share a row, so the trainer needs
the id per token: these converters add

  `decoder_denoiser_ids` int32, same shape as `decoder_target_tokens`:
    0 on padding (and, for decoder-only layouts, on the `inputs` part of each example),
    `denoiser_id + 1` on every target token of the example.

Examples without a `denoiser_id` feature (fine-tuning tasks) count as denoiser
`default_denoiser_id` (0 unless given), so their target tokens carry 1.

Tiny example (EncDec, packed, lengths inputs=8 targets=6):

  [{"inputs": [5, 6, 1], "targets": [7, 1], "denoiser_id": 2},
   {"inputs": [8, 1], "targets": [9, 9, 1], "denoiser_id": 0}]
  -> decoder_target_tokens [7, 1, 9, 9, 1, 0]
     decoder_denoiser_ids  [3, 3, 1, 1, 1, 0]

The id is packed as a per-token feature alongside `targets` (same length), so SeqIO's packing
places it exactly where the target tokens go.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

from t5x_ext.errors import UserError

DENOISER_IDS = "decoder_denoiser_ids"
_TOKEN_IDS = "denoiser_ids"  # per-token id, packed alongside the targets
_SPEC = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)


def _denoiser_value(features: Mapping[str, tf.Tensor], default_id: int) -> tf.Tensor:
  if "denoiser_id" in features:
    return tf.cast(tf.reshape(features["denoiser_id"], []), tf.int32) + 1
  return tf.constant(default_id + 1, tf.int32)


def _add_token_ids(default_id: int, keep: tuple[str, ...]):
  def fn(features):
    n = tf.size(features["targets"])
    out = {k: features[k] for k in keep}
    # Only the packed features go on: SeqIO's packing warns about (and drops) any others.
    out[_TOKEN_IDS] = tf.fill([n], _denoiser_value(features, default_id))
    return out

  return fn


class _TargetIdsMixin:
  """Adds `decoder_denoiser_ids` [LT], packed alongside `targets`, to a SeqIO converter whose
  decoder features have the targets' length (encoder-decoder, targets-only LM)."""

  def __init__(self, default_denoiser_id: int = 0, **kwargs):
    self._default_denoiser_id = default_denoiser_id
    super().__init__(**kwargs)

  def _convert_example(self, features):
    d = dict(super()._convert_example(features))
    d[DENOISER_IDS] = features[_TOKEN_IDS]
    return d

  def _convert_features(self, ds, task_feature_lengths):
    add = _add_token_ids(self._default_denoiser_id, tuple(task_feature_lengths))
    ds = ds.map(add, num_parallel_calls=tf.data.AUTOTUNE)
    lengths = {**task_feature_lengths, _TOKEN_IDS: task_feature_lengths["targets"]}
    ds = self._pack_or_pad(ds, lengths)
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths[DENOISER_IDS] = task_feature_lengths["targets"]
    return lengths


class EncDecFeatureConverter(_TargetIdsMixin, seqio.EncDecFeatureConverter):
  """`seqio.EncDecFeatureConverter` plus `decoder_denoiser_ids` [LT].

  Args:
    default_denoiser_id: the id given to examples without `denoiser_id`.
    **kwargs: passed to `seqio.EncDecFeatureConverter` (`pack`, `bos_id`, ...).
  """

  MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES, DENOISER_IDS: _SPEC}


class LMFeatureConverter(_TargetIdsMixin, seqio.LMFeatureConverter):
  """`seqio.LMFeatureConverter` (targets only) plus `decoder_denoiser_ids` [LT].

  Args:
    default_denoiser_id: the id given to examples without `denoiser_id`.
    **kwargs: passed to `seqio.LMFeatureConverter`.
  """

  MODEL_FEATURES = {**seqio.LMFeatureConverter.MODEL_FEATURES, DENOISER_IDS: _SPEC}


class PrefixLMFeatureConverter(seqio.PrefixLMFeatureConverter):
  """`seqio.PrefixLMFeatureConverter` plus `decoder_denoiser_ids` [LI + LT].

  The ids are 0 on each example's `inputs` part (which carries no loss by default) and
  `denoiser_id + 1` on its targets part.

  Args:
    default_denoiser_id: the id given to examples without `denoiser_id`.
    **kwargs: passed to `seqio.PrefixLMFeatureConverter` (`loss_on_targets_only`, `pack`).
  """

  MODEL_FEATURES = {**seqio.PrefixLMFeatureConverter.MODEL_FEATURES, DENOISER_IDS: _SPEC}

  def __init__(self, default_denoiser_id: int = 0, **kwargs):
    self._default_denoiser_id = default_denoiser_id
    super().__init__(**kwargs)

  def _concat_and_add_masks(self, features):
    d = dict(super()._concat_and_add_masks(features))
    n_inputs = tf.size(features["inputs"])
    # The parent pads empty targets to one token; keep the ids aligned with what it built.
    n_targets = tf.size(d["targets"]) - n_inputs
    value = _denoiser_value(features, self._default_denoiser_id)
    # SeqIO's packing measures each feature by its count of non-zero entries, so the inputs
    # part carries -value (non-zero) here and becomes 0 after packing.
    d[_TOKEN_IDS] = tf.concat([tf.fill([n_inputs], -value), tf.fill([n_targets], value)], axis=0)
    return d

  def _concat_task_feature_lengths(self, task_feature_lengths):
    lengths = dict(super()._concat_task_feature_lengths(task_feature_lengths))
    lengths[_TOKEN_IDS] = lengths["targets"]
    return lengths

  def _convert_example(self, features):
    d = dict(super()._convert_example(features))
    d[DENOISER_IDS] = tf.maximum(features[_TOKEN_IDS], 0)
    return d

  def get_model_feature_lengths(self, task_feature_lengths):
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths[DENOISER_IDS] = lengths["decoder_target_tokens"]
    return lengths


class DecoderFeatureConverter(seqio.DecoderFeatureConverter):
  """`seqio.DecoderFeatureConverter` (LM or prefix LM by the lengths given) with denoiser ids.

  With `inputs` in `task_feature_lengths` it behaves as `PrefixLMFeatureConverter` above,
  otherwise as `LMFeatureConverter`; prefix+suffix LM is not supported.

  Args:
    default_denoiser_id: the id given to examples without `denoiser_id`.
    loss_on_targets_only: as in SeqIO.
    **kwargs: `pack`, `use_custom_packing_ops`, `apply_length_check`, `bos_id`.
  """

  MODEL_FEATURES = {**seqio.DecoderFeatureConverter.MODEL_FEATURES, DENOISER_IDS: _SPEC}

  def __init__(self, default_denoiser_id: int = 0, loss_on_targets_only: bool = True, **kwargs):
    super().__init__(loss_on_targets_only=loss_on_targets_only, **kwargs)
    self.prefixlm_feature_converter = PrefixLMFeatureConverter(
      default_denoiser_id=default_denoiser_id, loss_on_targets_only=loss_on_targets_only, **kwargs
    )
    self.strictlm_feature_converter = LMFeatureConverter(
      default_denoiser_id=default_denoiser_id, **kwargs
    )

  def __call__(self, ds, task_feature_lengths):
    if "suffixes" in task_feature_lengths:
      raise UserError(
        "DecoderFeatureConverter with denoiser ids does not support 'suffixes' "
        f"(task_feature_lengths={dict(task_feature_lengths)})"
      )
    return super().__call__(ds, task_feature_lengths)


FEATURE_CONVERTERS = {
  "EncDecFeatureConverter": EncDecFeatureConverter,
  "PrefixLMFeatureConverter": PrefixLMFeatureConverter,
  "DecoderFeatureConverter": DecoderFeatureConverter,
  "LMFeatureConverter": LMFeatureConverter,
}


def get_feature_converter(name: str, *, pack: bool = True, **kwargs) -> seqio.FeatureConverter:
  """Builds one of this module's converters by its SeqIO class name.

  Args:
    name: "EncDecFeatureConverter", "PrefixLMFeatureConverter", "DecoderFeatureConverter" or
      "LMFeatureConverter" (the names `model.feature_converter_name` uses).
    pack: whether to pack several examples per row.
    **kwargs: further constructor arguments (`default_denoiser_id`, `bos_id`, ...).

  Returns:
    A feature converter that adds `decoder_denoiser_ids`.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in FEATURE_CONVERTERS:
    raise UserError(f"feature_converter_name={name!r} is not one of {sorted(FEATURE_CONVERTERS)}")
  return FEATURE_CONVERTERS[name](pack=pack, **kwargs)
