"""Kernel benchmark, launch tuning, CUDA profile and compile checks (GPU tools; import the kernels, imported by nothing below)."""
