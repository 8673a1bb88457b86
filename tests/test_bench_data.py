"""`bench/data_throughput.py`: it runs and prints the documented JSON; its ratios pair each of
our runs with the right appendix run; and the appendix baseline is wired as the UL2 appendix
describes. (Speed itself is measured by running the benchmark, never asserted in tests.)

The baseline needs the `t5` package, which cannot be an extra (t5==0.9.4 requires
tfds-nightly, which clashes with tensorflow-datasets; it is installed with `--no-deps`). So
the wiring test replaces `t5.data.preprocessors` with a recorder that keeps the call order and
arguments (no t5 code is copied); where the real `t5` is importable, the smoke test also runs
the real baseline.
"""

import json
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  sys.path.insert(0, str(REPO / "bench"))
  import data_throughput

  yield data_throughput
  sys.path.remove(str(REPO / "bench"))


def test_data_throughput_prints_its_report():
  proc = subprocess.run(
    [sys.executable, str(REPO / "bench" / "data_throughput.py"), "--examples=500", "--rounds=1"],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  ours = report["mixture_of_denoisers"]
  assert set(ours) == {"with_eos", "with_seqio_eos", "preprocessor_only"}
  for run in ours.values():
    assert run["examples"] >= 500 and run["examples_per_s"] > 0
    # Inputs of at most 512 and targets of at most 512 tokens, EOS or not.
    assert 2 < run["mean_tokens_per_example"] <= 1024
  # With EOS every example has two more tokens than without (inputs and targets).
  assert (
    ours["with_eos"]["mean_tokens_per_example"]
    > ours["preprocessor_only"]["mean_tokens_per_example"]
  )
  base = report["appendix_t5"]
  if "skipped" in base:
    assert "t5" in base["skipped"] and "speedup" not in report
  else:
    assert set(base) == {"with_eos", "preprocessor_only"}
    assert set(report["speedup"]) == set(ours)


def test_speedups_pair_each_run_with_its_baseline(bench):
  rates = lambda x: {"examples_per_s": x, "tokens_per_s": 10 * x, "examples_per_cpu_s": x / 2}  # noqa: E731
  ours = {"with_eos": rates(40.0), "with_seqio_eos": rates(30.0), "preprocessor_only": rates(60.0)}
  appendix = {"with_eos": rates(10.0), "preprocessor_only": rates(20.0)}
  got = bench.speedups(ours, appendix)
  # Both EOS variants against the appendix with EOS; no-EOS against no-EOS.
  assert got["with_eos"] == {"examples_per_s": 4.0, "tokens_per_s": 4.0, "examples_per_cpu_s": 4.0}
  assert got["with_seqio_eos"]["examples_per_s"] == 3.0
  assert got["preprocessor_only"]["examples_per_s"] == 3.0


class _Recorder(types.ModuleType):
  """Stands in for `t5.data.preprocessors`: records calls, keeps the data flowing (each
  "denoise" returns its chunk as inputs and targets), no T5 logic."""

  def __init__(self):
    super().__init__("t5.data.preprocessors")
    self.calls = []
    for name in (
      "random_spans_noise_mask",
      "noise_span_to_unique_sentinel",
      "nonnoise_span_to_unique_sentinel",
      "random_prefix_noise_mask",
      "drop_nonnoise_tokens",
      "drop_noise_tokens",
    ):
      setattr(self, name, self._marker(name))

  @staticmethod
  def _marker(name):
    def fn(*args, **kwargs):
      raise AssertionError(f"{name} is only passed along, never called here")

    fn.__name__ = name
    return fn

  def _passthrough(self, name):
    def fn(ds, *args, **kwargs):
      self.calls.append((name, kwargs))
      return ds

    return fn

  def __getattr__(self, name):
    if name in ("select_random_chunk", "reduce_concat_tokens"):
      return self._passthrough(name)
    raise AttributeError(name)

  def random_spans_helper(self, **kwargs):
    self.calls.append(("random_spans_helper", kwargs))
    return kwargs["inputs_length"] - 20, kwargs["inputs_length"] // 4

  def split_tokens(self, ds, max_tokens_per_segment):
    self.calls.append(("split_tokens", {"max_tokens_per_segment": max_tokens_per_segment}))
    return ds.map(lambda ex: {"targets": ex["targets"][:max_tokens_per_segment]})

  def denoise(self, ds, features, **kwargs):
    mask = kwargs["noise_mask_fn"]
    kwargs = {**kwargs, "noise_mask_fn": getattr(mask, "func", mask)}
    self.calls.append(("denoise", kwargs))
    return ds.map(lambda ex: {"inputs": ex["targets"], "targets": ex["targets"]})


def test_appendix_baseline_wiring(bench, monkeypatch):
  import seqio

  import tasks
  from t5x_ext import objectives

  rec = _Recorder()
  t5 = types.ModuleType("t5")
  t5_data = types.ModuleType("t5.data")
  t5.data, t5_data.preprocessors = t5_data, rec
  monkeypatch.setitem(sys.modules, "t5", t5)
  monkeypatch.setitem(sys.modules, "t5.data", t5_data)
  monkeypatch.setitem(sys.modules, "t5.data.preprocessors", rec)

  vocab = tasks.default_vocabulary()
  docs = [np.arange(2, 300, dtype=np.int32) + i for i in range(8)]
  features = {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}
  lengths = {"inputs": 512, "targets": 512}
  ds = bench.appendix(docs, lengths, features, eos=True)
  exs = list(ds.take(200).as_numpy_iterator())

  denoisers = objectives.UL2_DENOISERS
  denoise_calls = [kw for name, kw in rec.calls if name == "denoise"]
  assert len(denoise_calls) == len(denoisers)
  for d, kw in zip(denoisers, denoise_calls, strict=True):
    if d.kind == "span":
      # T5's span corruption with the denoiser's density and mean span length.
      assert kw["noise_density"] == d.noise_density
      assert kw["noise_mask_fn"] is rec.random_spans_noise_mask
      assert kw["inputs_fn"] is rec.noise_span_to_unique_sentinel
      assert kw["targets_fn"] is rec.nonnoise_span_to_unique_sentinel
    else:  # the S-denoiser: a prefix LM split
      assert kw["noise_mask_fn"] is rec.random_prefix_noise_mask
      assert kw["inputs_fn"] is rec.drop_nonnoise_tokens
  helpers = [kw for name, kw in rec.calls if name == "random_spans_helper"]
  spans = [d for d in denoisers if d.kind == "span"]
  assert [(h["noise_density"], h["mean_noise_span_length"]) for h in helpers] == [
    (d.noise_density, d.mean_span_length) for d in spans
  ]
  # Every branch: random chunk of <= 65,536 tokens, concatenated 128 at a time, split.
  names = [name for name, _ in rec.calls]
  assert names.count("select_random_chunk") == names.count("reduce_concat_tokens") == 7
  assert all(kw["max_length"] == 65536 for name, kw in rec.calls if name == "select_random_chunk")
  # Examples start with their branch's mode prefix, mixed by the denoisers' rates, end in EOS.
  prefixes = {d.mode: vocab.encode(d.mode) for d in denoisers}
  seen = set()
  for ex in exs:
    mode = next(m for m, p in prefixes.items() if list(ex["inputs"][: len(p)]) == p)
    seen.add(mode)
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
  assert seen == {"[NLU]", "[NLG]", "[S2S]"}
