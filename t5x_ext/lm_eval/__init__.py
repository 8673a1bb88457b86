"""Side door: this project's models in EleutherAI's lm-evaluation-harness (pip `lm-eval`).

Importing this package registers the harness model `t5x_ext` (`T5xExtLM`, in `model.py`;
the request layouts are in `layout.py`). The harness (0.4.13) finds models only in modules
that are imported, so the command line is

  python -m t5x_ext.lm_eval --model t5x_ext --model_args checkpoint=DIR,mode_prefix=[S2S] \
    --tasks boolq ...

which takes every argument of `lm_eval` (docs/lm_eval.md). From Python: `import
t5x_ext.lm_eval` and then `lm_eval.simple_evaluate(model="t5x_ext", model_args=...)`, or
pass a `T5xExtLM(...)` as the model. The library never imports this package.
"""

from t5x_ext.lm_eval.model import MODEL_NAME, T5xExtLM

__all__ = ["MODEL_NAME", "T5xExtLM"]
