"""Session-wide test setup.

Triton picks compiled or interpreted execution when a kernel module is imported, so TRITON_INTERPRET=1 must
be set before anything imports `triton`. This root conftest loads first; on machines without CUDA it turns
the interpreter on, so the kernel tests run on the CPU. A CUDA machine compiles the kernel, as in production.
"""

import os

if "TRITON_INTERPRET" not in os.environ:
    import torch  # importing torch does not import triton

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

# Servers started by tests run float32 torch unless a test asks otherwise: `dtype auto` and `backend auto` would
# time candidates at every start (seconds each) and, on a CPU with AMX, serve bf16, so exact float32 references
# would stop matching. tests/unit/test_precision.py tests the auto choice itself, and
# tests/integration/test_server_precision.py live servers with dtype and backend auto.
os.environ.setdefault("PROMPTSERVE_DTYPE", "float32")
os.environ.setdefault("PROMPTSERVE_BACKEND", "torch")
