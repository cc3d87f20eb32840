# tnlm-gpu-lightning (label "gpu"): the Hopper Lightning Attention forward kernels of
# codegen/cuda/LightningAttentionFwdSm90.cuh as tnlmc instantiates them
# (LightningFwdSm90Config<128, 128>: state pass, scan, main pass), NVRTC-compiled for the test
# device and launched as CudaExecutor::runLightning does, against the CPU backend's
# cpu::lightningAttention and an fp64 recurrence (LightningGpuTest.cpp). Without a driver or
# device every test exits 77 ("SKIPPED: no CUDA device").
#
# Included from test/unit/cuda/CMakeLists.txt, after find_package(GTest), find_package(Threads)
# and include(GoogleTest). Paths are taken from this file's location.
get_filename_component(_tnlm_lt_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(_tnlm_lt_gen ${CMAKE_CURRENT_BINARY_DIR}/lightning)

# The headers' text as raw string literals, embedded at build time: the test binary runs on the
# device machine without the source tree. Reconfigured (and so regenerated) when one changes.
foreach(_name LightningAttentionFwdSm90.cuh LightningAttentionFwd.cuh LightningFwdPlan.h
    LightningAttentionBwdSimple.cuh LightningAttentionGradParts.cuh MmaSync.cuh)
  string(REPLACE "." "_" _stem ${_name})
  tnlm_embed_text(${_tnlm_lt_root}/codegen/cuda/${_name} ${_tnlm_lt_gen}/Lightning_${_stem}.inc)
endforeach()

add_executable(tnlm-gpu-lightning ${CMAKE_CURRENT_LIST_DIR}/LightningGpuTest.cpp
  ${CMAKE_CURRENT_LIST_DIR}/LightningBwdGpuTest.cpp
  ${CMAKE_CURRENT_LIST_DIR}/LightningFusedGradGpuTest.cpp
  ${CMAKE_CURRENT_LIST_DIR}/LightningBwdFastGpuTest.cpp
  ${CMAKE_CURRENT_LIST_DIR}/GpuMain.cpp)
target_compile_options(tnlm-gpu-lightning PRIVATE ${TNLM_WARNING_FLAGS})
target_include_directories(tnlm-gpu-lightning PRIVATE ${_tnlm_lt_gen})
# TnlmCpuKernels: reference (a), cpu::lightningAttention (runtime/cpu/Kernels.h).
target_link_libraries(tnlm-gpu-lightning PRIVATE TnlmRuntimeCuda TnlmRuntimeCore TnlmCpuKernels
  GTest::gtest Threads::Threads)
# The f64 reference of the long cases takes every core: one test at a time.
gtest_discover_tests(tnlm-gpu-lightning PROPERTIES LABELS "gpu" SKIP_RETURN_CODE 77
  RUN_SERIAL TRUE TIMEOUT 300)
# The same wrappers compiled with NVRTC in tnlm-unit-cuda (label "unit": CI, no GPU needed).
target_sources(tnlm-unit-cuda PRIVATE ${CMAKE_CURRENT_LIST_DIR}/LightningBwdCompileTest.cpp)
target_include_directories(tnlm-unit-cuda PRIVATE ${_tnlm_lt_gen})
