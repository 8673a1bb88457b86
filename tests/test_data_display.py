"""t5x_ext.data.display: coloured HTML of MoD examples (mode badge, sentinel chips, spans)."""

import re

import numpy as np
import pytest

from t5x_ext.data import display


class _Vocab:
  """20 ids: 0 pad, 1 EOS, 2..14 words `wN`, 15..19 sentinels (<extra_id_0> = 19)."""

  vocab_size = 20
  extra_ids = 5
  eos_id = 1

  def decode(self, ids):
    return " ".join("[NLU]" if i == 2 else f"w{i}" for i in ids)

  def encode(self, text):
    return [2] if text == "[NLU]" else [3, 4]


VOCAB = _Vocab()


def test_sentinel_index_counts_down_from_the_top():
  assert display.sentinel_index(19, VOCAB) == 0
  assert display.sentinel_index(15, VOCAB) == 4
  assert display.sentinel_index(14, VOCAB) is None
  assert display.sentinel_index(5, VOCAB) is None


def test_segments_split_prefix_text_sentinels_eos_and_drop_padding():
  segs = display.segments([2, 5, 6, 19, 7, 18, 1, 0, 0], VOCAB, prefix_len=1)
  assert segs == [
    ("mode", "[NLU]"),
    ("text", "w5 w6"),
    ("sentinel", 0),
    ("text", "w7"),
    ("sentinel", 1),
    ("eos",),
  ]


def test_decode_ids_stops_at_the_vocabularys_eos_or_padding():
  from t5x_ext.data import providers

  assert providers.decode_ids(VOCAB, [5, 6, 19, 7, 1, 8]) == "w5 w6 <extra_id_0> w7"
  assert providers.decode_ids(VOCAB, np.array([18, 5, 0, 6])) == "<extra_id_1> w5"

  class OtherEos(_Vocab):
    eos_id = 3

  assert providers.decode_ids(OtherEos(), [5, 1, 19, 3, 6]) == "w5 w1 <extra_id_0>"


def test_target_span_is_shaded_with_its_sentinel_colour():
  markup = display.tokens_html([19, 5, 6, 18, 7, 1], VOCAB, shade_spans=True)
  c0, c1 = display.SPAN_COLOURS[0], display.SPAN_COLOURS[1]
  assert f'<span style="background:{c0}">w5 w6</span>' in markup
  assert f'<span style="background:{c1}">w7</span>' in markup
  assert markup.count("&#10214;") == 2  # two sentinel chips
  assert markup.endswith("&lt;/s&gt;</span>")


def test_inputs_show_mode_badge_and_plain_text():
  markup = display.tokens_html([2, 5, 19, 6], VOCAB, prefix_len=1)
  assert markup.startswith(f'<span style="background:{display.MODE_COLOURS["[NLU]"]}')
  assert ">[NLU]</span>" in markup
  # Unshaded text in the inputs: the corrupted gap is the chip, the rest is plain.
  assert " w5 " in markup and markup.endswith(" w6")


def test_text_is_html_escaped():
  class V(_Vocab):
    def decode(self, ids):
      return "<b>&"

  markup = display.tokens_html([5], V())
  assert "<b>" not in markup and "&lt;b&gt;&amp;" in markup


def test_example_html_marks_continuation_without_sentinels_and_adds_prediction():
  h = display.example_html([2, 5], [6, 7, 1], VOCAB, prediction=[6, 1], mode="[NLU]", prefix_len=1)
  assert isinstance(h, str) and h._repr_html_() == str(h)
  assert h.count(display.CONTINUATION_COLOUR) == 2  # targets and prediction
  assert ">model</td>" in h
  assert f"border-left:4px solid {display.MODE_COLOURS['[NLU]']}" in h


def test_predictions_html_uses_the_mode_prefix_length():
  examples = [{"inputs": [2, 5, 19], "targets": [19, 6, 1], "mode": "[NLU]", "denoiser": "R"}]
  h = display.predictions_html(examples, np.array([[19, 6, 1], [0, 0, 0]]), VOCAB)
  assert ">[NLU]</span>" in h and "[NLU] R" in h
  assert h.count("border-left") == 1  # padding rows beyond the examples are ignored


@pytest.fixture(scope="module")
def ul2_examples():
  import tasks  # noqa: F401 - registers pydocs_ul2_mod_v1

  return display.task_examples("pydocs_ul2_mod_v1", {"inputs": 512, "targets": 128}, seed=3)


def test_real_task_has_one_example_per_denoiser_with_its_prefix(ul2_examples):
  from t5x_ext import objectives

  assert [ex["denoiser"] for ex in ul2_examples] == list(objectives.UL2_DENOISERS)
  vocab = __import__("tasks").default_vocabulary()
  for ex in ul2_examples:
    d = ex["denoiser"]
    prefix = vocab.encode(d.mode)
    assert ex["prefix_len"] == len(prefix)
    assert list(ex["inputs"][: len(prefix)]) == prefix
    has_sentinels = any(display.sentinel_index(t, vocab) is not None for t in ex["targets"])
    assert has_sentinels == (d.kind == "span"), d.name


def test_real_task_html_has_badges_and_matching_chips():
  import tasks  # noqa: F401

  h = display.task_examples_html("pydocs_ul2_mod_v1", {"inputs": 512, "targets": 128}, seed=3)
  for mode in ("[NLU]", "[NLG]", "[S2S]"):
    assert f'font-weight:bold">{mode}</span>' in h
  # Each block's sentinel chips in the inputs reappear in its targets (and the span
  # denoisers' blocks have chips: an empty list on both sides would prove nothing).
  blocks = h.split("border-left:4px")[1:]
  with_chips = 0
  for block in blocks:
    inputs, _, targets = block.partition(">targets</td>")
    chips_in = re.findall(r"&#10214;(\d+)&#10215;", inputs)
    chips_out = re.findall(r"&#10214;(\d+)&#10215;", targets)
    assert chips_in == chips_out
    with_chips += bool(chips_in)
  assert len(blocks) >= 3 and 0 < with_chips < len(blocks), (len(blocks), with_chips)


def test_task_examples_rejects_a_task_without_denoisers():
  import tasks  # noqa: F401

  with pytest.raises(ValueError, match="pydocs_topic_classification_v1"):
    display.task_examples("pydocs_topic_classification_v1", {"inputs": 64, "targets": 4})
