"""docs/configuration.md agrees with the gin files and the configurable signatures.

The reference is hand-written; these tests make it fail loudly when a gin file changes under
it: a documented macro that no longer exists (or moved, or changed its default), a
`%gin.REQUIRED` macro of a run file that is not documented, a model size whose dimensions
differ from the parsed `TransformerConfig`, a documented parameter that a function lost.
"""

import ast
import dataclasses
import importlib
import inspect
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GIN_DIR = REPO / "gin"
DOC = REPO / "docs" / "configuration.md"

_MACRO_ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*$")
_CODE = re.compile(r"`([^`]+)`")


def _strip_comment(value: str) -> str:
  # Gin comments start with '#' outside strings; the values here have no '#' in strings.
  return value.split("#", 1)[0].strip()


def gin_macros(path: pathlib.Path) -> dict[str, str]:
  """Macros assigned at the top level of one gin file -> their value text (comments cut).

  Args:
    path: a gin file.

  Returns:
    Macro name -> value text with whitespace normalised.
  """
  out = {}
  for line in path.read_text().splitlines():
    m = _MACRO_ASSIGN.match(line)
    if m:
      out[m.group(1)] = " ".join(_strip_comment(m.group(2)).split())
  return out


def _table_rows(lines: list[str]) -> list[list[str]]:
  rows = []
  for line in lines:
    if not line.startswith("|") or set(line.replace("|", "").strip()) <= set("-: "):
      continue
    rows.append([c.strip() for c in line.strip().strip("|").split("|")])
  return rows


def doc_sections() -> list[tuple[str, list[list[str]]]]:
  """(heading, table rows including the header row) for each `###`/`##` section.

  Returns:
    One entry per heading, in document order.
  """
  sections, heading, lines = [], None, []
  for line in DOC.read_text().splitlines():
    if line.startswith("#"):
      if heading is not None:
        sections.append((heading, _table_rows(lines)))
      heading, lines = line.lstrip("#").strip(), []
    else:
      lines.append(line)
  if heading is not None:
    sections.append((heading, _table_rows(lines)))
  return sections


def _code(cell: str) -> str | None:
  m = _CODE.fullmatch(cell.strip())
  return m.group(1) if m else None


def macro_tables() -> list[tuple[str, str, str]]:
  """(gin file relative to gin/, macro, documented default) from every Macro table.

  Returns:
    Triples; the default is the code text, or "required".
  """
  out = []
  for heading, rows in doc_sections():
    gin_file = _code(heading)
    if not rows or rows[0][0] != "Macro":
      continue
    assert gin_file and gin_file.endswith(".gin"), f"Macro table under {heading!r}: no gin file"
    for row in rows[1:]:
      macro = _code(row[0])
      assert macro, f"{heading}: first cell {row[0]!r} is not `MACRO`"
      default = row[1].strip()
      out.append((gin_file, macro, "required" if default == "required" else _code(default)))
  return out


def test_doc_has_macro_tables_for_every_run_file():
  documented = {f for f, _, _ in macro_tables()}
  run_files = {f"runs/{p.name}" for p in (GIN_DIR / "runs").glob("*.gin")}
  assert run_files, "no run files found"
  assert run_files <= documented, f"run files without a macro table: {run_files - documented}"


@pytest.mark.parametrize("gin_file,macro,default", macro_tables())
def test_documented_macro_exists_with_its_default(gin_file, macro, default):
  path = GIN_DIR / gin_file
  assert path.exists(), f"docs/configuration.md documents {gin_file}, which does not exist"
  macros = gin_macros(path)
  assert macro in macros, f"docs/configuration.md: {macro} is no longer assigned in {gin_file}"
  actual = macros[macro]
  if default == "required":
    assert actual == "%gin.REQUIRED", f"{gin_file}: {macro} = {actual}, documented as required"
  else:
    assert default is not None, f"{gin_file}: {macro}'s default is not in `code`"
    assert " ".join(default.split()) == actual, (
      f"{gin_file}: {macro} = {actual}, documented default {default}"
    )


def test_every_required_run_macro_is_documented():
  documented = {(f, m) for f, m, d in macro_tables() if d == "required"}
  missing = []
  for path in sorted((GIN_DIR / "runs").glob("*.gin")):
    for macro, value in gin_macros(path).items():
      if value == "%gin.REQUIRED" and (f"runs/{path.name}", macro) not in documented:
        missing.append(f"runs/{path.name}: {macro}")
  assert not missing, f"%gin.REQUIRED macros missing from docs/configuration.md: {missing}"


def test_every_gin_file_is_mentioned():
  text = DOC.read_text()
  missing = [
    str(p.relative_to(GIN_DIR))
    for p in sorted(GIN_DIR.rglob("*.gin"))
    if p.name != "architecture.gin" or "models/" not in str(p.relative_to(GIN_DIR))
    if f"`{p.relative_to(GIN_DIR)}`" not in text
  ]
  # architecture.gin files are documented through their macro tables (checked above).
  assert not missing, f"gin files not in docs/configuration.md: {missing}"


def _model_rows():
  for _heading, rows in doc_sections():
    if rows and rows[0][0] == "File" and rows[0][1].startswith("Layers"):
      return rows[1:]
  raise AssertionError("docs/configuration.md has no model size table")


@pytest.mark.parametrize("row", _model_rows(), ids=lambda r: _code(r[0]))
def test_model_table_matches_the_parsed_config(row):
  from t5x_ext.launch import flags

  gin_file = _code(row[0])
  model = flags.model_from_gin([gin_file])
  cfg = model.config
  enc, dec = (int(x) for x in row[1].split("+"))
  heads, head_dim = (int(x) for x in row[3].split("×"))
  documented = (enc, dec, int(row[2]), heads, head_dim, int(row[4]), int(row[5]))
  actual = (
    cfg.num_encoder_layers,
    cfg.num_decoder_layers,
    cfg.emb_dim,
    cfg.num_heads,
    cfg.head_dim,
    cfg.mlp_dim,
    cfg.vocab_size,
  )
  assert documented == actual, f"{gin_file}: documented {documented}, parsed {actual}"
  # Parameters: the documented figure must be the count (jax.eval_shape) rounded as written,
  # e.g. "11.1B" for 11,135M (XXL's released configuration; "11.3B" is a common misquote).
  count = _parameter_count(model)
  m = re.fullmatch(r"([0-9.]+)([MB])", row[6].strip())
  assert m, f"{gin_file}: parameters cell {row[6]!r} is not like 7.3M or 2.85B"
  number, unit = m.group(1), {"M": 1e6, "B": 1e9}[m.group(2)]
  decimals = len(number.partition(".")[2])
  assert f"{count / unit:.{decimals}f}" == number, (
    f"{gin_file}: documented {row[6]} parameters, counted {count:,}"
  )


def _parameter_count(model) -> int:
  import flax.linen as nn
  import jax
  import numpy as np

  names = (
    ("decoder_input_tokens", "decoder_target_tokens", "decoder_causal_attention")
    if model.config.decoder_only
    else ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
  )
  batch = {k: jax.ShapeDtypeStruct((2, 16), np.int32) for k in names}
  params = nn.unbox(jax.eval_shape(model.init_variables, jax.random.PRNGKey(0), batch)["params"])
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _parameter_tables():
  for heading, rows in doc_sections():
    if rows and rows[0][0] == "Parameter":
      target = _code(heading)
      for row in rows[1:]:
        yield target, _code(row[0]), row[1].strip()


def _resolve(dotted: str):
  module, _, name = dotted.rpartition(".")
  return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("target,param,default", list(_parameter_tables()))
def test_documented_parameter_matches_signature(target, param, default):
  obj = _resolve(target)
  if dataclasses.is_dataclass(obj):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    assert param in fields, f"{target} has no field {param!r}"
    has_default = fields[param].default is not dataclasses.MISSING
    value = fields[param].default
  else:
    params = inspect.signature(obj).parameters
    assert param in params, f"{target} has no parameter {param!r} (docs/configuration.md)"
    has_default = params[param].default is not inspect.Parameter.empty
    value = params[param].default
  if default == "required":
    assert not has_default, f"{target}.{param} has a default ({value!r}), documented required"
    return
  assert has_default, f"{target}.{param} is required, documented default {default}"
  text = _code(default)
  try:
    documented = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return  # a name such as DEFAULT_RULES: existence is what we can check
  assert documented == value, f"{target}.{param}: default {value!r}, documented {text}"
