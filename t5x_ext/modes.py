"""The mode-switch prefixes of [UL2] Sec. 3.1.3 ("paradigm tokens"): one home for every floor.

Plain constants, no imports: the model and training side (no TensorFlow), the data side
and the commands all read them here. `t5x_ext.objectives.denoisers` re-exports them.
"""

MODE_NLU = "[NLU]"
MODE_NLG = "[NLG]"
MODE_S2S = "[S2S]"
# [CodeT5+] Sec. 3.1: the encoder input of its decoder-only causal LM (`objectives/codet5p.py`).
MODE_CLM = "[CLM]"

# Every prefix a denoiser may carry; the empty string means none (plain T5 span corruption,
# plain LM baselines).
MODES = ("", MODE_NLU, MODE_NLG, MODE_S2S, MODE_CLM)
# UL2's three prefixes, in the order of the R, X and S denoiser families.
UL2_MODES = (MODE_NLU, MODE_NLG, MODE_S2S)
# The prefix that matches each UL2 denoiser family.
FAMILY_MODES = {"R": MODE_NLU, "X": MODE_NLG, "S": MODE_S2S}
