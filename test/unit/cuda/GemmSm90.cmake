# codegen/cuda/GemmSm90.cuh (the Hopper GEMM of our own: TMA, wgmma, persistent tiles) compiled
# with NVRTC for sm_90a in tnlm-unit-cuda (label "unit": CI, no GPU needed), both epilogues.
# Its numbers and its checks against cuBLASLt and an fp32 loop on the GPU: bench/gemm_sm90.cu
# (scripts/device-bench-gemm).
#
# Included from test/unit/cuda/CMakeLists.txt after EmbedText.cmake and Lightning.cmake (whose
# embedded MmaSync.cuh it includes).
get_filename_component(_tnlm_gemm_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(_tnlm_gemm_gen ${CMAKE_CURRENT_BINARY_DIR}/gemm)
tnlm_embed_text(${_tnlm_gemm_root}/codegen/cuda/GemmSm90.cuh ${_tnlm_gemm_gen}/GemmSm90_cuh.inc)
target_sources(tnlm-unit-cuda PRIVATE ${CMAKE_CURRENT_LIST_DIR}/GemmSm90CompileTest.cpp)
target_include_directories(tnlm-unit-cuda PRIVATE ${_tnlm_gemm_gen})
