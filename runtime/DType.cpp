//===- DType.cpp - element types and exact fp conversions -----------------===//
#include "runtime/DType.h"

#include "runtime/Error.h"

#include <cstring>
#include <string>

namespace tnlm {

namespace {

struct DTypeInfo {
  DType dtype;
  const char *name;
  size_t size;
};

// One table so that sizes, names and parsing cannot drift apart.
constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8},   {DType::F32, "F32", 4}, {DType::BF16, "BF16", 2},
    {DType::F16, "F16", 2},   {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},   {DType::I8, "I8", 1},   {DType::U8, "U8", 1},
    {DType::Bool, "BOOL", 1},
};

const DTypeInfo &info(DType dtype) {
  for (const DTypeInfo &i : kDTypes)
    if (i.dtype == dtype)
      return i;
  // Only reachable through a cast of an out-of-range integer to DType: a programming error.
  throw Error("invalid DType value " + std::to_string(static_cast<int>(dtype)));
}

uint32_t bitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float floatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Loads/stores one element at a possibly unaligned address.
template <typename T> T load(const void *base, size_t i) {
  T v;
  std::memcpy(&v, static_cast<const unsigned char *>(base) + i * sizeof(T), sizeof(T));
  return v;
}

template <typename T> void store(void *base, size_t i, T v) {
  std::memcpy(static_cast<unsigned char *>(base) + i * sizeof(T), &v, sizeof(T));
}

template <typename T> void widen(const void *in, float *out, size_t n) {
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<float>(load<T>(in, i));
}

} // namespace

size_t elementSize(DType dtype) { return info(dtype).size; }

const char *dtypeName(DType dtype) { return info(dtype).name; }

std::optional<DType> parseDType(std::string_view name) {
  for (const DTypeInfo &i : kDTypes)
    if (name == i.name)
      return i.dtype;
  return std::nullopt;
}

bool isFloatingPoint(DType dtype) {
  return dtype == DType::F64 || dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16;
}

float bf16ToF32(uint16_t bits) { return floatOf(static_cast<uint32_t>(bits) << 16); }

uint16_t f32ToBf16(float value) {
  uint32_t u = bitsOf(value);
  // Truncating a NaN could clear every mantissa bit and give inf; force the quiet bit.
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  // Round to nearest even on the 16 dropped bits: add just under half, plus one more when the
  // kept part is odd. A carry into the exponent is the correct rounding (up to inf).
  uint32_t lsb = (u >> 16) & 1u;
  return static_cast<uint16_t>((u + 0x7fffu + lsb) >> 16);
}

float f16ToF32(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exp = (bits >> 10) & 0x1fu;
  uint32_t mant = bits & 0x3ffu;
  if (exp == 0x1f) // inf or NaN: the payload moves to the top of the fp32 mantissa.
    return floatOf(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) // normal: rebias 15 -> 127.
    return floatOf(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0)
    return floatOf(sign);
  // Subnormal mant·2^-24: normalize so the leading one becomes the implicit bit. Every f16
  // subnormal is an fp32 normal, so this is exact.
  int e = -14;
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  mant &= 0x3ffu;
  return floatOf(sign | (static_cast<uint32_t>(e + 127) << 23) | (mant << 13));
}

uint16_t f32ToF16(float value) {
  uint32_t u = bitsOf(value);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) // NaN: keep the top payload bits, force quiet so it cannot become inf.
    return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  // 65520 = 0x477ff000 is the midpoint between 65504 (odd mantissa) and 2^16, so ties and
  // everything above round to inf. This also covers the fp32 inf itself.
  if (a >= 0x477ff000u)
    return static_cast<uint16_t>(sign | 0x7c00u);
  // Below 2^-25 (half the smallest subnormal) everything rounds to zero; exactly 2^-25 is a
  // tie that rounds to the even zero.
  if (a <= 0x33000000u)
    return sign;

  int exp = static_cast<int>(a >> 23) - 127;
  uint32_t h, rem, half;
  if (exp >= -14) {
    // Normal result: keep the top 10 of 23 mantissa bits. The rounding increment below goes
    // into the combined exponent|mantissa field, so a mantissa carry bumps the exponent.
    h = (static_cast<uint32_t>(exp + 15) << 10) | ((a >> 13) & 0x3ffu);
    rem = a & 0x1fffu;
    half = 0x1000u;
  } else {
    // Subnormal result in units of 2^-24: value = m24 · 2^(exp-23) = m24 >> (-exp-1), with
    // m24 the mantissa including its implicit one; the shift is 14..24 here.
    uint32_t m24 = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = static_cast<uint32_t>(-exp - 1);
    h = m24 >> shift;
    rem = m24 & ((1u << shift) - 1u);
    half = 1u << (shift - 1);
  }
  if (rem > half || (rem == half && (h & 1u)))
    ++h; // may carry into the smallest normal 0x400: still the correct encoding
  return static_cast<uint16_t>(sign | h);
}

void toF32(DType src, const void *in, float *out, size_t n) {
  switch (src) {
  case DType::F32:
    if (n)
      std::memcpy(out, in, n * sizeof(float));
    return;
  case DType::F64:
    return widen<double>(in, out, n);
  case DType::BF16:
    for (size_t i = 0; i < n; ++i)
      out[i] = bf16ToF32(load<uint16_t>(in, i));
    return;
  case DType::F16:
    for (size_t i = 0; i < n; ++i)
      out[i] = f16ToF32(load<uint16_t>(in, i));
    return;
  case DType::I64:
    return widen<int64_t>(in, out, n);
  case DType::I32:
    return widen<int32_t>(in, out, n);
  case DType::I16:
    return widen<int16_t>(in, out, n);
  case DType::I8:
    return widen<int8_t>(in, out, n);
  case DType::U8:
    return widen<uint8_t>(in, out, n);
  case DType::Bool:
    // Any nonzero byte is true; normalize so a stray 0xff does not read as 255.
    for (size_t i = 0; i < n; ++i)
      out[i] = load<uint8_t>(in, i) ? 1.0f : 0.0f;
    return;
  }
  throw Error("toF32: invalid DType value " + std::to_string(static_cast<int>(src)));
}

void fromF32(DType dst, const float *in, void *out, size_t n) {
  switch (dst) {
  case DType::F32:
    if (n)
      std::memcpy(out, in, n * sizeof(float));
    return;
  case DType::F64:
    for (size_t i = 0; i < n; ++i)
      store<double>(out, i, in[i]);
    return;
  case DType::BF16:
    for (size_t i = 0; i < n; ++i)
      store<uint16_t>(out, i, f32ToBf16(in[i]));
    return;
  case DType::F16:
    for (size_t i = 0; i < n; ++i)
      store<uint16_t>(out, i, f32ToF16(in[i]));
    return;
  default:
    throw Error(std::string("cannot convert fp32 to ") + dtypeName(dst) +
                ": only floating-point destinations are supported");
  }
}

} // namespace tnlm
