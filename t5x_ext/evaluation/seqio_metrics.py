"""A task's SeqIO metrics on decoded predictions and scores, over one process or many.

`seqio_metrics(trainer, params, provider, lengths, ...)` decodes (and/or scores) the split of
every task of `provider` that has metric functions, each process its own shard in lockstep
(`t5x_ext.training.hosts`), gathers every shard's results on every process once, and applies
the task's postprocessor and metric functions. The command `t5x_ext.eval` and evaluation
during training use it.
"""

from __future__ import annotations

from t5x_ext.training import hosts, memory_plan, partitioning


def seqio_metrics(
  trainer,
  params,
  provider,
  lengths,
  *,
  split,
  batch_size,
  decode_len,
  max_examples,
  seed,
  shard: tuple[int, int] | None = None,
) -> dict[str, float]:
  """The tasks' SeqIO metrics; each process decodes its shard, the metrics see all shards.

  Args:
    trainer: the `Trainer`.
    params: the sharded params.
    provider: the task or mixture (each task with metric functions is evaluated).
    lengths: TASK_FEATURE_LENGTHS.
    split: the split.
    batch_size: global rows per decoding step.
    decode_len: decoding length.
    max_examples: examples decoded per task over all processes (None: the whole split).
    seed: seed of the task's random preprocessors.
    shard: `(shard_id, num_shards)` of this process; default from the trainer's mesh.

  Returns:
    `{"<task>/<metric>": value}`, the same on every process.
  """
  from t5x_ext.data import pipeline
  from t5x_ext.data import providers as run_data

  shard_id, num_shards = shard or partitioning.process_batch_shard(trainer.mesh)
  rows = batch_size // num_shards
  out: dict[str, float] = {}
  for task in getattr(provider, "tasks", None) or [provider]:
    predict_fns = list(getattr(task, "predict_metric_fns", []) or [])
    score_fns = list(getattr(task, "score_metric_fns", []) or [])
    if not (predict_fns or score_fns) or split not in task.splits:
      continue
    vocab = run_data.vocabulary_of(task)
    # A shard that runs out first decodes zero rows while the others finish (one global
    # decode per step); its padding is dropped below.
    zeros = hosts.zero_batch(memory_plan.abstract_batch(trainer.model, lengths, rows, pack=False))
    pairs = pipeline.get_infer_batches(
      task.name,
      lengths,
      split=split,
      batch_size=rows,
      feature_converter_name=trainer.model.feature_converter_name,
      seed=seed,
      shard_id=shard_id,
      num_shards=num_shards,
      max_examples=hosts.shard_share(max_examples, shard_id, num_shards),
    )
    targets, predictions, scores = [], [], []
    for examples, batch in hosts.lockstep(pairs, lambda z=zeros: ([], z)):
      pred, sc = hosts.predict(
        trainer,
        params,
        batch,
        decode=bool(predict_fns),
        with_scores=bool(score_fns),
        decode_len=decode_len,
      )
      for i, ex in enumerate(examples):
        target_text = ex.get("targets_pretokenized", "")
        targets.append(task.postprocess_fn(target_text, example=ex, is_target=True))
        if predict_fns:
          text = run_data.decode_ids(vocab, pred[i])
          predictions.append(task.postprocess_fn(text, example=ex, is_target=False))
        if score_fns:
          scores.append(float(sc[i]))
    # Every process gets every shard's results once, and computes the same metrics.
    targets, predictions, scores = (
      [x for part in parts for x in part]
      for parts in zip(*hosts.gather_shards((targets, predictions, scores), shard_id))
    )
    for fn in predict_fns:
      for k, v in fn(targets, predictions).items():
        out[f"{task.name}/{k}"] = float(getattr(v, "value", v))
    for fn in score_fns:
      for k, v in fn(targets, scores).items():
        out[f"{task.name}/{k}"] = float(getattr(v, "value", v))
  return out
