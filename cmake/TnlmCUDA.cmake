# CUDA is optional: detected when present, and a build without it says so once.
set(TNLM_HAVE_CUDA OFF)
if(EXISTS "${TNLM_CUDA_ROOT}/include/cuda.h")
  set(TNLM_HAVE_CUDA ON)
  set(TNLM_CUDA_INCLUDE_DIR "${TNLM_CUDA_ROOT}/include")
  message(STATUS "tnlm: CUDA toolkit found at ${TNLM_CUDA_ROOT}")
else()
  message(STATUS "tnlm: no CUDA toolkit at ${TNLM_CUDA_ROOT}; building without the CUDA backend "
                 "(everything else is built)")
endif()
