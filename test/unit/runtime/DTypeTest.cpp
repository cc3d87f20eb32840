//===- DTypeTest.cpp - dtype names, sizes and exact fp conversions --------===//
#include "runtime/DType.h"
#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

using namespace tnlm;

namespace {

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

// Independent reference for narrowing: the value on a grid of spacing `ulp` nearest to x,
// ties to even, computed in double where x/ulp is exact (x has 24 significant bits).
double roundToGrid(double x, double ulp) { return std::nearbyint(x / ulp) * ulp; }

// Nearest bf16 value as a double (inf on overflow): 8 significant bits, fp32's exponent range.
double referenceBf16(float x) {
  if (std::isinf(x))
    return x;
  double ax = std::fabs(static_cast<double>(x));
  int e;
  std::frexp(ax, &e); // ax = m·2^e, m in [0.5, 1)
  double ulp = std::ldexp(1.0, std::max(e - 8, -133));
  double r = roundToGrid(ax, ulp);
  if (r >= std::ldexp(1.0, 128))
    r = std::numeric_limits<double>::infinity();
  return std::copysign(r, static_cast<double>(x));
}

// Nearest f16 value as a double: 11 significant bits, subnormal spacing 2^-24, inf from 65520.
double referenceF16(float x) {
  if (std::isinf(x))
    return x;
  double ax = std::fabs(static_cast<double>(x));
  int e;
  std::frexp(ax, &e);
  double ulp = std::ldexp(1.0, std::max(e - 11, -24));
  double r = roundToGrid(ax, ulp);
  if (r >= 65536.0)
    r = std::numeric_limits<double>::infinity();
  return std::copysign(r, static_cast<double>(x));
}

TEST(DType, NamesAndSizes) {
  EXPECT_STREQ(dtypeName(DType::F32), "F32");
  EXPECT_STREQ(dtypeName(DType::BF16), "BF16");
  EXPECT_STREQ(dtypeName(DType::F16), "F16");
  EXPECT_STREQ(dtypeName(DType::I32), "I32");
  EXPECT_STREQ(dtypeName(DType::I64), "I64");
  EXPECT_STREQ(dtypeName(DType::Bool), "BOOL");
  EXPECT_EQ(elementSize(DType::F64), 8u);
  EXPECT_EQ(elementSize(DType::F32), 4u);
  EXPECT_EQ(elementSize(DType::BF16), 2u);
  EXPECT_EQ(elementSize(DType::F16), 2u);
  EXPECT_EQ(elementSize(DType::I64), 8u);
  EXPECT_EQ(elementSize(DType::I32), 4u);
  EXPECT_EQ(elementSize(DType::U8), 1u);
  for (DType d : {DType::F64, DType::F32, DType::BF16, DType::F16, DType::I64, DType::I32,
                  DType::I16, DType::I8, DType::U8, DType::Bool})
    EXPECT_EQ(parseDType(dtypeName(d)), d) << dtypeName(d);
  EXPECT_FALSE(parseDType("f32"));     // names are case-sensitive in the format
  EXPECT_FALSE(parseDType("F8_E4M3")); // valid safetensors, not supported by tnlm
  EXPECT_FALSE(parseDType(""));
  EXPECT_TRUE(isFloatingPoint(DType::BF16));
  EXPECT_FALSE(isFloatingPoint(DType::I32));
}

TEST(DType, Bf16HandComputed) {
  EXPECT_EQ(f32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(f32ToBf16(-2.5f), 0xc020);
  EXPECT_EQ(f32ToBf16(0.0f), 0x0000);
  EXPECT_EQ(f32ToBf16(-0.0f), 0x8000);
  // 65504 = 0x477fe000: the dropped half 0xe000 is above the midpoint, so it rounds up to 2^16.
  EXPECT_EQ(f32ToBf16(65504.0f), 0x4780);
  // Ties to even: 1 + 2^-8 lies halfway between 0x3f80 and 0x3f81 and goes to the even one;
  // 0x3f818000 lies halfway between 0x3f81 and 0x3f82 and goes up.
  EXPECT_EQ(f32ToBf16(floatOf(0x3f808000)), 0x3f80);
  EXPECT_EQ(f32ToBf16(floatOf(0x3f818000)), 0x3f82);
  EXPECT_EQ(f32ToBf16(floatOf(0x3f808001)), 0x3f81);
  EXPECT_EQ(f32ToBf16(floatOf(0x3f807fff)), 0x3f80);
  // FLT_MAX is past the midpoint between bf16's max (0x7f7f) and 2^128: rounds to inf.
  EXPECT_EQ(f32ToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(f32ToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32ToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  // fp32 subnormals: bf16 keeps them (same exponent field); the smallest rounds to zero.
  EXPECT_EQ(f32ToBf16(floatOf(0x00000001)), 0x0000);
  EXPECT_EQ(f32ToBf16(floatOf(0x00018000)), 0x0002);
  // A NaN whose payload lies only in the dropped bits must not become inf.
  uint16_t nan = f32ToBf16(floatOf(0x7f800001));
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x007f, 0);
  EXPECT_TRUE(std::isnan(bf16ToF32(nan)));
  EXPECT_EQ(f32ToBf16(floatOf(0xffc00000)), 0xffc0); // sign of a NaN kept

  EXPECT_EQ(bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(bf16ToF32(0xc020), -2.5f);
  EXPECT_EQ(bitsOf(bf16ToF32(0x8000)), 0x80000000u);
  EXPECT_EQ(bitsOf(bf16ToF32(0x0001)), 0x00010000u);
  EXPECT_EQ(bf16ToF32(0x7f80), std::numeric_limits<float>::infinity());
}

TEST(DType, F16HandComputed) {
  EXPECT_EQ(f32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(f32ToF16(-2.5f), 0xc100); // 2.5 = 1.25·2^1: exponent 16, mantissa 0x100
  EXPECT_EQ(f32ToF16(0.0f), 0x0000);
  EXPECT_EQ(f32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(f32ToF16(65504.0f), 0x7bff); // largest finite half
  EXPECT_EQ(f32ToF16(65519.996f), 0x7bff);
  EXPECT_EQ(f32ToF16(65520.0f), 0x7c00); // tie with odd 65504: rounds to 2^16 = inf
  EXPECT_EQ(f32ToF16(1e10f), 0x7c00);
  EXPECT_EQ(f32ToF16(-1e10f), 0xfc00);
  EXPECT_EQ(f32ToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32ToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(f32ToF16(0x1p-14f), 0x0400); // smallest normal
  EXPECT_EQ(f32ToF16(0x1p-24f), 0x0001); // smallest subnormal
  EXPECT_EQ(f32ToF16(-0x1p-24f), 0x8001);
  EXPECT_EQ(f32ToF16(1023.0f * 0x1p-24f), 0x03ff); // largest subnormal
  // Ties to even in the normal range: 1 + 2^-11 is halfway between 0x3c00 and 0x3c01.
  EXPECT_EQ(f32ToF16(1.0f + 0x1p-11f), 0x3c00);
  EXPECT_EQ(f32ToF16(1.0f + 3 * 0x1p-11f), 0x3c02);
  EXPECT_EQ(f32ToF16(2049.0f), 0x6800); // halfway between 2048 and 2050
  EXPECT_EQ(f32ToF16(2051.0f), 0x6802); // halfway between 2050 and 2052
  // A tie whose rounding carries out of the mantissa into the exponent: 2047.5 -> 2048.
  EXPECT_EQ(f32ToF16(2047.5f), 0x6800);
  // Ties among the subnormals (units of 2^-24), including the carry into the first normal.
  EXPECT_EQ(f32ToF16(0x1p-25f), 0x0000);        // 0.5 ulp: to even zero
  EXPECT_EQ(f32ToF16(0x1.000002p-25f), 0x0001); // just above half
  EXPECT_EQ(f32ToF16(0x1.fffffep-26f), 0x0000); // just below half
  EXPECT_EQ(f32ToF16(3 * 0x1p-25f), 0x0002);    // 1.5 ulp: to even 2
  EXPECT_EQ(f32ToF16(5 * 0x1p-25f), 0x0002);    // 2.5 ulp: to even 2
  EXPECT_EQ(f32ToF16(1023.5f * 0x1p-24f), 0x0400);
  EXPECT_EQ(f32ToF16(floatOf(0x00000001)), 0x0000); // fp32 subnormal
  // NaN stays NaN even when its payload is below the kept bits.
  uint16_t nan = f32ToF16(floatOf(0x7f800001));
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_EQ(f32ToF16(floatOf(0xffc00000)) & 0x8000, 0x8000);

  EXPECT_EQ(f16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(f16ToF32(0xc100), -2.5f);
  EXPECT_EQ(f16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(f16ToF32(0x0001), 0x1p-24f);
  EXPECT_EQ(f16ToF32(0x03ff), 1023.0f * 0x1p-24f);
  EXPECT_EQ(f16ToF32(0x0400), 0x1p-14f);
  EXPECT_EQ(bitsOf(f16ToF32(0x8000)), 0x80000000u);
  EXPECT_EQ(f16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16ToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16ToF32(0x7c01)));
}

// Every one of the 2^16 patterns: widening is exact and narrowing returns the same bits.
TEST(DType, AllHalfPatternsRoundTrip) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    uint16_t b = static_cast<uint16_t>(h);
    float f16 = f16ToF32(b);
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f && mant != 0) {
      EXPECT_TRUE(std::isnan(f16)) << std::hex << h;
    } else {
      double mag = exp == 0      ? std::ldexp(mant, -24)
                   : exp == 0x1f ? std::numeric_limits<double>::infinity()
                                 : std::ldexp(1.0 + mant / 1024.0, static_cast<int>(exp) - 15);
      EXPECT_EQ(static_cast<double>(f16), (h & 0x8000) ? -mag : mag) << std::hex << h;
      EXPECT_EQ(f32ToF16(f16), b) << std::hex << h;
    }
    float bf = bf16ToF32(b);
    if (!std::isnan(bf)) {
      EXPECT_EQ(f32ToBf16(bf), b) << std::hex << h;
    }
  }
}

// Narrowing agrees with the independent grid-rounding reference across the fp32 range
// (about a million patterns spread over all 2^32, both signs, subnormals to inf).
TEST(DType, NarrowingMatchesReference) {
  for (uint64_t u = 0; u <= 0xffffffffull; u += 4093) {
    float x = floatOf(static_cast<uint32_t>(u));
    if (std::isnan(x))
      continue;
    ASSERT_EQ(static_cast<double>(bf16ToF32(f32ToBf16(x))), referenceBf16(x))
        << std::hex << "bf16 of 0x" << u;
    ASSERT_EQ(static_cast<double>(f16ToF32(f32ToF16(x))), referenceF16(x))
        << std::hex << "f16 of 0x" << u;
  }
}

TEST(DType, BulkConversions) {
  std::vector<float> values = {1.0f, -2.5f, 0.0f, 65504.0f, 0x1p-24f};
  size_t n = values.size();
  for (DType d : {DType::F64, DType::F32, DType::BF16, DType::F16}) {
    // One byte of offset checks that no conversion assumes an aligned buffer.
    std::vector<unsigned char> buffer(n * elementSize(d) + 1);
    fromF32(d, values.data(), buffer.data() + 1, n);
    std::vector<float> back(n);
    toF32(d, buffer.data() + 1, back.data(), n);
    for (size_t i = 0; i < n; ++i) {
      float expected = d == DType::BF16  ? bf16ToF32(f32ToBf16(values[i]))
                       : d == DType::F16 ? f16ToF32(f32ToF16(values[i]))
                                         : values[i];
      EXPECT_EQ(back[i], expected) << dtypeName(d) << " element " << i;
    }
  }

  int64_t i64[] = {-3, 0, 1 << 20};
  int32_t i32[] = {-3, 0, 1 << 20};
  int16_t i16[] = {-3, 0, 30000};
  int8_t i8[] = {-3, 0, 127};
  uint8_t u8[] = {255, 0, 7};
  uint8_t flags[] = {0, 1, 0xff};
  float out[3];
  toF32(DType::I64, i64, out, 3);
  EXPECT_EQ(out[0], -3.0f);
  EXPECT_EQ(out[2], 1048576.0f);
  toF32(DType::I32, i32, out, 3);
  EXPECT_EQ(out[2], 1048576.0f);
  toF32(DType::I16, i16, out, 3);
  EXPECT_EQ(out[2], 30000.0f);
  toF32(DType::I8, i8, out, 3);
  EXPECT_EQ(out[0], -3.0f);
  toF32(DType::U8, u8, out, 3);
  EXPECT_EQ(out[0], 255.0f);
  toF32(DType::Bool, flags, out, 3);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 1.0f);
  EXPECT_EQ(out[2], 1.0f);

  toF32(DType::F32, nullptr, nullptr, 0); // n = 0 touches nothing
  int32_t dst[1];
  try {
    fromF32(DType::I32, values.data(), dst, 1);
    FAIL() << "narrowing to I32 should throw";
  } catch (const Error &e) {
    EXPECT_NE(std::string(e.what()).find("I32"), std::string::npos) << e.what();
  }
}

} // namespace
