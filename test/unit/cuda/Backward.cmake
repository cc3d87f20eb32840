# The tests of codegen/cuda/Backward.cuh (BackwardGpuTest.cpp: the backward row kernels, the
# embedding backward, the sum of squares and AdamW in extern "C" wrappers, NVRTC-compiled for
# the test device and checked against the CPU backend's kernels), in tnlm-gpu-rowkernels (label
# "gpu"; one binary linking the CPU kernels instead of two: the device carry is limited).
#
# Included from test/unit/cuda/CMakeLists.txt after RowKernels.cmake.
get_filename_component(_tnlm_bw_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(_tnlm_bw_cuh ${_tnlm_bw_root}/codegen/cuda/Backward.cuh)
set(_tnlm_bw_gen ${CMAKE_CURRENT_BINARY_DIR}/backward)

# The header's text, embedded at build time.
tnlm_embed_text(${_tnlm_bw_cuh} ${_tnlm_bw_gen}/BackwardCuh.inc)

target_sources(tnlm-gpu-rowkernels PRIVATE ${CMAKE_CURRENT_LIST_DIR}/BackwardGpuTest.cpp)
target_include_directories(tnlm-gpu-rowkernels PRIVATE ${_tnlm_bw_gen})
# The same wrappers compiled with NVRTC in tnlm-unit-cuda (label "unit": CI, no GPU needed).
target_sources(tnlm-unit-cuda PRIVATE ${CMAKE_CURRENT_LIST_DIR}/BackwardCompileTest.cpp)
target_include_directories(tnlm-unit-cuda PRIVATE ${_tnlm_bw_gen})
