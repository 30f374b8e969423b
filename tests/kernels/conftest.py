"""TRITON_INTERPRET is decided in the root tests/conftest.py, before any test module can import triton.
Tests here import the kernel module inside the test functions, after that decision."""
