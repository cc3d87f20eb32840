# Finds Debian's MLIR/LLVM 22 without the user passing paths. /usr/bin/llvm-config is LLVM 14
# on Debian 12, so nothing unversioned is ever used.
set(TNLM_LLVM_PREFIX "/usr/lib/llvm-22" CACHE PATH "Prefix of the LLVM/MLIR 22 installation")
if(NOT MLIR_DIR)
  set(MLIR_DIR "${TNLM_LLVM_PREFIX}/lib/cmake/mlir")
endif()
find_package(MLIR REQUIRED CONFIG PATHS "${MLIR_DIR}" NO_DEFAULT_PATH)
if(NOT LLVM_VERSION_MAJOR EQUAL 22)
  message(FATAL_ERROR "tnlm needs MLIR/LLVM 22, found ${LLVM_PACKAGE_VERSION} at ${MLIR_DIR} "
                      "(install libmlir-22-dev mlir-22-tools: scripts/setup)")
endif()
message(STATUS "tnlm: MLIR ${LLVM_PACKAGE_VERSION} from ${MLIR_DIR}")

list(APPEND CMAKE_MODULE_PATH "${MLIR_CMAKE_DIR}" "${LLVM_CMAKE_DIR}")
include(TableGen)
include(AddLLVM)
include(AddMLIR)

# Static MLIR libraries, project-wide: tools register only what they use and stay small.
include_directories(SYSTEM ${LLVM_INCLUDE_DIRS} ${MLIR_INCLUDE_DIRS})
link_directories(${LLVM_BUILD_LIBRARY_DIR})
add_definitions(${LLVM_DEFINITIONS})
if(NOT LLVM_ENABLE_RTTI)
  set(TNLM_NO_RTTI_FLAGS -fno-rtti)
endif()

if(NOT LLVM_EXTERNAL_LIT)
  set(LLVM_EXTERNAL_LIT "${TNLM_LLVM_PREFIX}/bin/lit")
endif()
set(TNLM_LLVM_TOOLS_DIR "${TNLM_LLVM_PREFIX}/bin")
