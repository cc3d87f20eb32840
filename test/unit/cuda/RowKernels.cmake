# tnlm-gpu-rowkernels (label "gpu"): every row-wise template of codegen/cuda/Elementwise.cuh
# (embedding, srms_norm, add_srms_norm, gated_srms_norm, gated_srms_norm_sum, lrpe_split with
# and without SiLU, silu, mul, add) in extern "C" wrappers like the emitter's, NVRTC-compiled
# for the test device and checked against the CPU backend's kernels (RowKernelGpuTest.cpp).
# Without a driver or device every test exits 77 ("SKIPPED: no CUDA device").
#
# Included from test/unit/cuda/CMakeLists.txt, after find_package(GTest), find_package(Threads)
# and include(GoogleTest). Paths are taken from this file's location, so it does not depend on
# the including directory.
get_filename_component(_tnlm_rk_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(_tnlm_rk_cuh ${_tnlm_rk_root}/codegen/cuda/Elementwise.cuh)
set(_tnlm_rk_gen ${CMAKE_CURRENT_BINARY_DIR}/rowkernels)

# The header's text as a raw string literal, embedded at build time: the test binary runs on
# the device machine without the source tree. Reconfigured (and so regenerated) when it changes.
tnlm_embed_text(${_tnlm_rk_cuh} ${_tnlm_rk_gen}/RowKernelsElementwise.inc)

add_executable(tnlm-gpu-rowkernels ${CMAKE_CURRENT_LIST_DIR}/RowKernelGpuTest.cpp
  ${CMAKE_CURRENT_LIST_DIR}/GpuMain.cpp)
target_compile_options(tnlm-gpu-rowkernels PRIVATE ${TNLM_WARNING_FLAGS})
target_include_directories(tnlm-gpu-rowkernels PRIVATE ${_tnlm_rk_gen})
# TnlmCpuKernels: the reference (runtime/cpu/Kernels.h).
target_link_libraries(tnlm-gpu-rowkernels PRIVATE TnlmRuntimeCuda TnlmRuntimeCore TnlmCpuKernels
  GTest::gtest Threads::Threads)
gtest_discover_tests(tnlm-gpu-rowkernels PROPERTIES LABELS "gpu" SKIP_RETURN_CODE 77)
