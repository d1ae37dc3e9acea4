"""Triton kernels of glm47, each with a plain torch reference."""
