"""probe's Triton kernels. Mixers import them only on CUDA (the plain PyTorch references run elsewhere, and are
what the kernels are tested against; on a CPU the tests run them through Triton's interpreter)."""
