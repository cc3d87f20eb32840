# -*- Python -*-
import os

import lit.formats

config.name = "tnlm"
config.test_format = lit.formats.ShTest(not lit_config.isWindows)
config.suffixes = [".mlir", ".test"]
config.excludes = ["CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py", "Inputs", "unit"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.tnlm_obj_root, "test")

# FileCheck, not and split-file live in /usr/lib/llvm-22/bin, which is not on PATH; never
# fall back to unversioned LLVM tools (LLVM 14 on Debian 12).
config.environment["PATH"] = os.pathsep.join(
    [config.tnlm_tools_dir, config.llvm_tools_dir, config.environment.get("PATH", "")])
config.substitutions.append(("%models", os.path.join(config.tnlm_src_root, "models")))
config.substitutions.append(("%tnlm_tools", config.tnlm_tools_dir))
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "Inputs")))
if config.tnlm_have_cuda:
    config.available_features.add("cuda-toolkit")
# Whether an NVIDIA driver can be loaded here (the device machine has one; CI does not).
import ctypes
try:
    ctypes.CDLL("libcuda.so.1")
    config.available_features.add("cuda-device")
except OSError:
    config.available_features.add("no-cuda-driver")
