"""t5x_ext: UL2-style pretraining (Mixture-of-Denoisers) in JAX/Flax with SeqIO tasks."""

import setuptools

# Versions that install together on Python 3.11+ (checked on a fresh venv, 2026-11).
# The data side (seqio, tensorflow, tensorflow-text, tensorflow-datasets) and the model
# side (jax, flax, optax, orbax) are pinned as sets: tensorflow-text must match tensorflow
# exactly, and flax/orbax track jax closely.
INSTALL_REQUIRES = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "clu==0.0.12",
  # clu's SummaryWriter (TensorBoard events) imports tensorboard, which TF 2.21 no longer pulls in.
  "tensorboard==2.21.0",
  "seqio==0.0.20",
  "tensorflow==2.21.0",
  "tensorflow-text==2.21.1",
  "tensorflow-datasets==4.9.10",
  "gin-config==0.5.0",
  "sentencepiece==0.2.3",
  "numpy>=2.0,<3",
  "tqdm>=4.66",
  # A MODEL_DIR in a bucket: etils.epath reaches gs:// through gcsfs, so a training host needs
  # no TensorFlow for it and honours STORAGE_EMULATOR_HOST (t5x_ext/training/run_paths.py).
  "gcsfs==2026.10.1",
]

EXTRAS = {
  "test": [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "ruff>=0.6",
    # Parity tests against Transformers' PyTorch T5 (random weights, no download).
    # torch 2.13.0 has a CPU wheel for Python 3.11.
    "torch==2.13.0",
    "transformers==5.24.0",
    "safetensors>=0.4",
    # A MODEL_DIR in a bucket (tests/gcs_emulator.py): a GCS emulator, and gcsfs, through
    # which etils.epath reaches gs:// when STORAGE_EMULATOR_HOST names an emulator.
    "gcp-storage-emulator==2026.7.19",
    "gcsfs==2026.10.1",
    # tests/test_lm_eval.py runs the harness offline on local tasks.
    "lm-eval==0.4.13",
  ],
  # babel..rouge-score make `t5.data.preprocessors` importable for the UL2-appendix
  # baseline of bench/data_throughput.py; t5 itself must be installed without its
  # dependencies (they include tfds-nightly, which clashes with tensorflow-datasets):
  # `pip install --no-deps t5==0.9.4`.
  "bench": [
    "psutil>=5.9",
    "babel==2.19.0",
    "sacrebleu==2.6.0",
    "scikit-learn==1.9.1",
    "rouge-score==0.1.2",
  ],
  "notebooks": ["nbclient>=0.10", "ipykernel>=6.29", "matplotlib>=3.8", "nbformat>=5.10"],
  # The ablation runner's figure (t5x_ext.experiments.ablation_report.plot).
  "experiments": ["matplotlib>=3.8"],
  "hf": ["safetensors>=0.4"],
  # The lm-evaluation-harness model `t5x_ext` (t5x_ext/lm_eval; docs/lm_eval.md). 0.4.13
  # installs beside the test extra's torch 2.13 / transformers 5.24 on Python 3.11.
  "lm_eval": ["lm-eval==0.4.13"],
}

setuptools.setup(
  name="t5x_ext",
  version="0.1.0",
  description=__doc__,
  python_requires=">=3.11",
  # The gin files stay in the top-level gin/ where users read them; the wheel carries them
  # as t5x_ext/gin/ (package data), where t5x_ext.launch.flags looks when there is no source tree.
  packages=setuptools.find_packages(include=["t5x_ext", "t5x_ext.*", "tasks", "tasks.*"])
  + ["t5x_ext.gin"],
  package_dir={"t5x_ext.gin": "gin"},
  package_data={"tasks": ["data/*"], "t5x_ext.gin": ["*/*.gin", "*/*/*.gin"]},
  include_package_data=True,
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS,
)
