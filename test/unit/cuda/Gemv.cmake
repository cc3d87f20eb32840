# tnlm-gpu-gemv (label "gpu"): the decode GEMV of codegen/cuda/Recurrent.cuh (rec::gemv, its
# tensor-core and CUDA-core paths) in extern "C" wrappers like the emitter's, NVRTC-compiled for
# the test device and checked against an f64 reference (GemvGpuTest.cpp). Without a driver or
# device every test exits 77 ("SKIPPED: no CUDA device").
#
# Included from test/unit/cuda/CMakeLists.txt after EmbedText.cmake.
get_filename_component(_tnlm_gv_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(_tnlm_gv_gen ${CMAKE_CURRENT_BINARY_DIR}/gemv)
tnlm_embed_text(${_tnlm_gv_root}/codegen/cuda/Recurrent.cuh ${_tnlm_gv_gen}/GemvRecurrent.inc)

add_executable(tnlm-gpu-gemv ${CMAKE_CURRENT_LIST_DIR}/GemvGpuTest.cpp
  ${CMAKE_CURRENT_LIST_DIR}/GpuMain.cpp)
target_compile_options(tnlm-gpu-gemv PRIVATE ${TNLM_WARNING_FLAGS})
target_include_directories(tnlm-gpu-gemv PRIVATE ${_tnlm_gv_gen})
target_link_libraries(tnlm-gpu-gemv PRIVATE TnlmRuntimeCuda TnlmRuntimeCore GTest::gtest
  Threads::Threads)
gtest_discover_tests(tnlm-gpu-gemv PROPERTIES LABELS "gpu" SKIP_RETURN_CODE 77)
