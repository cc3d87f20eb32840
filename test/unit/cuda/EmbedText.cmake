# tnlm_embed_text(<source> <output .inc>): the text of <source> as a C++ raw string literal in
# <output>, written at configure time (the GPU test binaries run on the device machine without
# the source tree); reconfigured, and so regenerated, when <source> changes. Used by
# RowKernels.cmake, Gemv.cmake, Lightning.cmake and Backward.cmake.
function(tnlm_embed_text source output)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${source})
  file(READ ${source} _text)
  file(RELATIVE_PATH _rel ${PROJECT_SOURCE_DIR} ${source})
  file(WRITE ${output}.tmp "// Generated from ${_rel} (test/unit/cuda/EmbedText.cmake). Do not edit.\n"
    "R\"TNLM_CUH(${_text})TNLM_CUH\"\n")
  configure_file(${output}.tmp ${output} COPYONLY)
endfunction()
