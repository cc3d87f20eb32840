//===- DType.h - element types of runtime tensors ---------------*- C++ -*-===//
//
// The element types a checkpoint or an artifact may hold, their sizes, their safetensors
// names, and exact conversions to and from fp32. bf16 and f16 have no native C++17 type, so
// they travel as their raw 16-bit patterns (uint16_t) and are converted here bit-exactly:
// round-to-nearest-even, NaN stays NaN, f16 subnormals and infinities as IEEE 754 says.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_DTYPE_H
#define TNLM_RUNTIME_DTYPE_H

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tnlm {

enum class DType { F64, F32, BF16, F16, I64, I32, I16, I8, U8, Bool };

/// Bytes per element.
size_t elementSize(DType dtype);

/// The safetensors spelling: "F32", "BF16", "F16", "I32", "I64", ...
const char *dtypeName(DType dtype);

/// Inverse of dtypeName; nullopt for a name tnlm does not know (the caller reports it with
/// the file and tensor at fault).
std::optional<DType> parseDType(std::string_view name);

/// True for F64, F32, BF16 and F16: the types fromF32 can produce.
bool isFloatingPoint(DType dtype);

/// bf16 is the upper half of an fp32, so widening is a shift; narrowing rounds to nearest
/// even and keeps NaN a (quiet) NaN of the same sign.
float bf16ToF32(uint16_t bits);
uint16_t f32ToBf16(float value);

/// IEEE 754 binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. Narrowing rounds to
/// nearest even; values >= 65520 in magnitude become inf; results below 2^-24 underflow
/// through the subnormals to signed zero; NaN stays a quiet NaN.
float f16ToF32(uint16_t bits);
uint16_t f32ToF16(float value);

/// Converts n elements of type src at `in` (any alignment) to fp32. Integer and bool types
/// convert by value (I64 beyond 2^24 rounds, as a static_cast would).
void toF32(DType src, const void *in, float *out, size_t n);

/// Converts n fp32 values to type dst at `out` (any alignment). Only floating-point
/// destinations are supported: narrowing to an integer type has no one right rounding, so it
/// throws tnlm::Error instead of guessing.
void fromF32(DType dst, const float *in, void *out, size_t n);

} // namespace tnlm

#endif // TNLM_RUNTIME_DTYPE_H
