"""docs/your_own_model.md runs as written: each `## ` section's ```python blocks, in order, in one
fresh Python process (as a user pasting them into a new session would: none of this suite's
float64 default), so the page cannot drift from the code. The page's claims are the asserts in
its snippets; a failing one fails here with the block it is in.

The whole page is slow (one test per section); the default suite runs the linen MLP section's
training and LIB blocks (deterministic, no gradient-trained decomposition).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "your_own_model.md"
METHODS = ("train", "APD", "L3D", "LIB")   # the blocks of every section, in this order

# exec each block in one namespace; report each block's wall time (the page's "time it took")
DRIVER = """
import json, sys, time
name, blocks = json.loads(sys.stdin.read())
ns = {"__name__": "__main__"}
for i, code in enumerate(blocks):
  t = time.perf_counter()
  exec(compile(code, f"<{name}: block {i}>", "exec"), ns)
  print(f"BLOCK {i} {time.perf_counter() - t:.1f}s", flush=True)
"""


def sections(text: str) -> dict[str, list[str]]:
  """{`## ` heading: [the code of its ```python blocks, in order]}."""
  out, current = {}, None
  for part in re.split(r"^(## .*)$", text, flags=re.M):
    if part.startswith("## "):
      current = part[3:].strip()
      out[current] = []
    elif current is not None:
      out[current] = re.findall(r"^```python\n(.*?)^```$", part, flags=re.M | re.S)
  return {k: v for k, v in out.items() if v}


SECTIONS = sections(PAGE.read_text())


def run_blocks(name: str, blocks: list[str], timeout: int) -> str:
  env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if "PYTHONPATH" in env
                                                     else []))
  proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps([name, blocks]),
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
  assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
  print(proc.stdout)
  return proc.stdout


def test_page_has_the_five_models_each_with_every_method():
  assert len(SECTIONS) == 5, list(SECTIONS)
  for name, blocks in SECTIONS.items():
    assert len(blocks) == len(METHODS), (name, len(blocks))
    for method, code in zip(METHODS[1:], blocks[1:]):
      assert f"{method.lower()}." in code, (name, method)   # e.g. apd.init, lib.build_bases


def test_linen_mlp_training_and_lib_blocks_run():
  name, blocks = next(iter(SECTIONS.items()))
  out = run_blocks(name, [blocks[0], blocks[3]], timeout=300)
  assert out.count("BLOCK") == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SECTIONS))
def test_section_runs_as_written(name):
  out = run_blocks(name, SECTIONS[name], timeout=900)
  assert out.count("BLOCK") == len(SECTIONS[name])
