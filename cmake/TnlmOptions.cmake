# Project-wide options. Every option is documented in README.md.
option(TNLM_BUILD_COMPILER "Build the MLIR-based compiler (tnlm-opt, tnlmc). Off for device-only runtime builds." ON)
option(TNLM_BUILD_TESTS "Build unit and lit tests." ON)
set(TNLM_CUDA_ROOT "/usr/local/cuda" CACHE PATH "CUDA toolkit root; the build works without it.")
