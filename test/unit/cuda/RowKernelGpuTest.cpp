//===- RowKernelGpuTest.cpp - the row-wise CUDA templates vs the CPU kernels ----===//
//
// Every template of codegen/cuda/Elementwise.cuh (embedding, srms_norm, add_srms_norm,
// gated_srms_norm, gated_srms_norm_sum, lrpe_split with SILU false and true, silu, mul, add)
// is wrapped in an extern "C" kernel as the emitter does (codegen/CudaEmitter.cpp rowKernel:
// tnlm_<op>_c<COLS>[_silu0|1] calling tnlm::ew::<op><COLS, rowBlock(COLS)>) for COLS = 100,
// 300, 768, 1024 and 4096, NVRTC-compiled for the device against the header's text as it was
// at build time (RowKernels.cmake embeds it), launched with one CTA per row, and compared with
// the CPU backend's kernels run in f32 on the same bf16-rounded inputs. Rows run from 1 to
// 1000 (33000 for LRPE, whose positions reach 32767); most shapes use row strides larger than
// the columns, with a bf16 NaN in every gap of every operand and one guard row of NaN after
// each buffer: a kernel that reads a gap fails the comparison, and one that writes outside
// [row, cols) fails the sentinel check.
//
// References (runtime/cpu):
//   embedding, mul, add   cpu::embedding / mul / add. One IEEE fp32 operation on the same
//                         inputs gives the same fp32 value on both sides, so the GPU's bf16 must
//                         be exactly f32ToBf16 of the CPU's (bit-exact). cpu::embedding throws on
//                         ids outside [0, vocab); the template writes zero rows for them, so
//                         the reference runs on id 0 there and expects +0.
//   silu                  cpu::silu.
//   srms_norm             cpu::srmsNorm.
//   add_srms_norm         sum: bit-exact f32ToBf16(cpu::add). y: cpu::srmsNorm of that
//                         bf16-rounded sum. The template norms the stored (rounded) residual;
//                         cpu::addSrmsNorm norms the unrounded f32 sum, so it is not the
//                         reference here.
//   gated_srms_norm       cpu::srmsNorm(y), then cpu::mul(u, ·): the CPU epilogue of
//                         fusedLightningAttention (u · (y · rstd); no standalone CPU kernel).
//   gated_srms_norm_sum   cpu::add(y, y2) in f32 (never rounded, as in the template), then the
//                         same.
//   lrpe_split            cpu::lrpe with H = 1, dh = D (θ is per flat feature, so the head
//                         split does not change any value) on q = x[:, 0:D] and k = x[:, D:2D],
//                         once per run of seq rows (positions r mod seq from 0), after cpu::silu
//                         when SILU; all four planes (q cos, k cos, q sin, k sin) are checked.
//                         θ[i] = 10000^(−2i/D) rounded once to f32 (runtime/Init.cpp).
//
// Tolerance for the non-bit-exact checks: |gpu − ref| <= 2^-8·|ref| + abs.
//   The GPU computes in fp32 and rounds to bf16 once, on store. bf16 has 8 significant bits,
//   so round to nearest even is off by at most u/(1+u)·|v| with u = 2^-8, i.e. 0.996·2^-8·|v|
//   (measured on an H200: the worst |diff|/bound of every check is 0.99x, one rounding).
//   The GPU's fp32 value v differs from the CPU's f32 by a few ulp, δ <~ 1e-6 relative:
//   __expf (<= 2 + 1.17·|x| ulp, |x| <= 12 here) vs exp in SiLU; sincosf (<= 2 ulp, full range
//   reduction) vs glibc cosf/sinf of the same f32 angle in LRPE; in the norms the sum of squares
//   in fp32 (per-thread partial sums, then a shuffle tree) vs f64, and rsqrtf (<= 2 ulp) vs
//   1/sqrt in f64. Every output is a product of such factors (no cancellation: y + y2 is the
//   same fp32 add on both sides), so |gpu − ref| <= (u/(1+u) + ~δ)·|ref|, within 2^-8·|ref| for
//   δ up to u²/(1+u) ≈ 1.5e-5: ~10x the expected δ, while a second rounding, a wrong element or
//   position, or an inaccurate intrinsic fails. (Checked by mutation on an H200: __sincosf in
//   lrpe_split fails from angles of ~1000 rad on, a bf16-rounded y + y2 in gated_srms_norm_sum
//   fails, a write into a row's gap or the guard row fails.)
//   abs: norms 2^-20 (outputs have unit RMS per row, times |u| <= 2: a floor for entries near
//   zero only); LRPE 2^-20·|φ(x)| (sin and cos pass through zero, where a bound relative to the
//   result is the least robust part of the analysis); silu 0.
//
//===----------------------------------------------------------------------===//
#include "runtime/DType.h"
#include "runtime/cpu/Kernels.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/GpuTest.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace tnlm::cuda {
namespace {

using test::gpu;

// codegen/cuda/Elementwise.cuh at build time (RowKernels.cmake).
const char *const kElementwiseCuh =
#include "RowKernelsElementwise.inc"
    ;

constexpr int kCols[] = {100, 300, 768, 1024, 4096};

// The emitter's rule (codegen/CudaEmitter.cpp, rowBlock): whole warps, about 4 columns per
// thread, at most 256 threads.
unsigned rowBlock(int cols) {
  unsigned block = 32;
  while (block < 256 && block * 4 < static_cast<unsigned>(cols))
    block *= 2;
  return block;
}

std::string kernelName(const std::string &op, int cols, int silu = -1) {
  std::string name = "tnlm_" + op + "_c" + std::to_string(cols);
  if (silu >= 0)
    name += "_silu" + std::to_string(silu);
  return name;
}

struct RowSource {
  std::string text;
  std::vector<std::string> kernels;
};

// The wrappers, with the emitter's parameter lists.
RowSource rowSource() {
  struct Op {
    const char *name, *params, *args;
  };
  static const Op ops[] = {
      {"embedding",
       "const int *ids, const bf16 *table, int vocab, bf16 *y, long long ldy, float scale",
       "ids, table, vocab, y, ldy, scale"},
      {"srms_norm", "const bf16 *x, long long ldx, bf16 *y, long long ldy, float eps",
       "x, ldx, y, ldy, eps"},
      {"add_srms_norm",
       "const bf16 *a, long long lda, const bf16 *b, long long ldb, bf16 *sum, long long lds, "
       "bf16 *y, long long ldy, float eps",
       "a, lda, b, ldb, sum, lds, y, ldy, eps"},
      {"gated_srms_norm", "const bf16 *u, long long ldu, bf16 *y, long long ldy, float eps",
       "u, ldu, y, ldy, eps"},
      {"gated_srms_norm_sum",
       "const bf16 *u, long long ldu, const bf16 *y2, long long ldy2, bf16 *y, long long ldy, "
       "float eps",
       "u, ldu, y2, ldy2, y, ldy, eps"},
      {"gated_norm_from_o",
       "const bf16 *u, long long ldu, const bf16 *o, long long ldo, bf16 *y, long long ldy, "
       "float eps",
       "u, ldu, o, ldo, y, ldy, eps"},
      {"lrpe_split",
       "const bf16 *x, long long ldx, const float *theta, int seq, bf16 *w, long long ldw",
       "x, ldx, theta, seq, w, ldw"},
      {"silu", "const bf16 *x, long long ldx, bf16 *y, long long ldy", "x, ldx, y, ldy"},
      {"mul", "const bf16 *a, long long lda, const bf16 *b, long long ldb, bf16 *y, long long ldy",
       "a, lda, b, ldb, y, ldy"},
      {"add", "const bf16 *a, long long lda, const bf16 *b, long long ldb, bf16 *y, long long ldy",
       "a, lda, b, ldb, y, ldy"},
  };
  RowSource out;
  out.text = "#include \"tnlm/Elementwise.cuh\"\n\nusing bf16 = __nv_bfloat16;\n";
  for (int cols : kCols)
    for (const Op &op : ops) {
      const bool lrpe = std::string(op.name) == "lrpe_split";
      for (int silu = lrpe ? 0 : -1; silu <= (lrpe ? 1 : -1); ++silu) {
        const std::string name = kernelName(op.name, cols, silu);
        const std::string block = std::to_string(rowBlock(cols));
        std::string targs = std::to_string(cols) + ", " + block;
        if (silu >= 0)
          targs += silu ? ", true" : ", false";
        out.text += "\nextern \"C\" __global__ void __launch_bounds__(" + block + ")\n" + name +
                    "(" + op.params + ") {\n  tnlm::ew::" + op.name + "<" + targs + ">(" + op.args +
                    ");\n}\n";
        out.kernels.push_back(name);
      }
    }
  return out;
}

NvrtcOptions rowOptions(const std::string &arch) {
  NvrtcOptions options;
  options.arch = arch;
  options.headers = {{"tnlm/Elementwise.cuh", kElementwiseCuh}};
  return options;
}

/// The wrappers compiled for the test device, once.
Module &rowModule() {
  static std::unique_ptr<Module> module;
  if (!module) {
    CompiledKernels compiled =
        compileCuda(rowSource().text, "rowkernels.cu", rowOptions(test::deviceArch()));
    module = std::make_unique<Module>(gpu(), compiled.image, "rowkernels");
  }
  return *module;
}

template <typename... Args>
void launchRows(const std::string &kernel, int cols, int64_t rows, const Args &...args) {
  LaunchConfig config{{static_cast<unsigned>(rows)}, {rowBlock(cols)}, 0};
  gpu().launchWith(rowModule().kernel(kernel), config, kernel, args...);
}

//===-- Host and device matrices ---------------------------------------------===//

constexpr uint16_t kSentinel = 0xffff; // a bf16 NaN: every gap and guard row holds it

/// A bf16 matrix [rows, cols] with row stride ld as raw bits; the gaps hold kSentinel.
struct Mat {
  int64_t rows = 0, cols = 0, ld = 0;
  std::vector<uint16_t> bits;

  /// [rows, ld] in f32 (gaps NaN), the CPU kernels' operand.
  std::vector<float> f32() const {
    std::vector<float> out(bits.size());
    for (size_t i = 0; i < bits.size(); ++i)
      out[i] = bf16ToF32(bits[i]);
    return out;
  }
};

/// Uniform in [lo, hi), times 2^k per row with k uniform in [-scaleExp, scaleExp], rounded
/// to bf16.
Mat randomMat(int64_t rows, int64_t cols, int64_t ld, float lo, float hi, unsigned seed,
              int scaleExp = 0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::uniform_int_distribution<int> exps(-scaleExp, scaleExp);
  Mat m{rows, cols, ld, std::vector<uint16_t>(static_cast<size_t>(rows * ld), kSentinel)};
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = std::ldexp(1.0f, exps(rng));
    for (int64_t c = 0; c < cols; ++c)
      m.bits[r * ld + c] = f32ToBf16(scale * dist(rng));
  }
  return m;
}

/// A device copy of a matrix, followed by one guard row of kSentinel.
class DevMat {
public:
  /// An output: every element kSentinel.
  DevMat(int64_t rows, int64_t cols, int64_t ld, const char *what)
      : rows_(rows), cols_(cols), ld_(ld),
        buffer_(static_cast<size_t>((rows + 1) * ld) * sizeof(uint16_t), what) {
    gpu().fillBytes(buffer_.get(), 0xff, buffer_.size(), what);
  }
  /// An input (or an in-place operand) holding m.
  DevMat(const Mat &m, const char *what) : DevMat(m.rows, m.cols, m.ld, what) {
    gpu().copyToDevice(buffer_.get(), m.bits.data(), m.bits.size() * sizeof(uint16_t), what);
    gpu().synchronize(what);
  }

  CUdeviceptr ptr() const { return buffer_.get(); }
  long long ld() const { return ld_; }

  /// The rows and the guard row; checks that nothing outside [row, cols) was written.
  std::vector<uint16_t> download(const std::string &what, int64_t usedCols = -1) const {
    std::vector<uint16_t> out(static_cast<size_t>((rows_ + 1) * ld_));
    gpu().copyToHost(out.data(), buffer_.get(), out.size() * sizeof(uint16_t), what);
    const int64_t used = usedCols < 0 ? cols_ : usedCols;
    int64_t bad = 0;
    for (int64_t r = 0; r <= rows_; ++r)
      for (int64_t c = r < rows_ ? used : 0; c < ld_; ++c)
        if (out[r * ld_ + c] != kSentinel && bad++ < 5)
          ADD_FAILURE() << what << ": element (" << r << ", " << c << ") outside [row, " << used
                        << ") of ld " << ld_ << (r == rows_ ? " (guard row)" : "")
                        << " was written: 0x" << std::hex << out[r * ld_ + c];
    EXPECT_EQ(bad, 0) << what << ": writes outside the view";
    out.resize(static_cast<size_t>(rows_ * ld_));
    return out;
  }

private:
  int64_t rows_, cols_, ld_;
  DeviceBuffer buffer_;
};

//===-- Comparisons ------------------------------------------------------------===//

/// gpu[r, col0 + c] == f32ToBf16(ref[r, c]) for r < rows, c < cols.
void expectBits(const std::string &what, const std::vector<uint16_t> &gpuBits, int64_t ldg,
                int64_t col0, const float *ref, int64_t ldr, int64_t rows, int64_t cols) {
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const uint16_t got = gpuBits[r * ldg + col0 + c], want = f32ToBf16(ref[r * ldr + c]);
      if (got != want && bad++ < 5)
        ADD_FAILURE() << what << " (" << r << ", " << c << "): gpu " << bf16ToF32(got) << " (0x"
                      << std::hex << got << "), want " << bf16ToF32(want) << " (0x" << want
                      << std::dec << ") = bf16(" << ref[r * ldr + c] << ")";
    }
  EXPECT_EQ(bad, 0) << what << ": elements not bit-exact";
}

/// |gpu[r, col0 + c] − ref[r, c]| <= rel·|ref| + abs(r, c); prints the worst ratio of error to
/// bound.
template <typename AbsFn>
void expectNear(const std::string &what, const std::vector<uint16_t> &gpuBits, int64_t ldg,
                int64_t col0, const float *ref, int64_t ldr, int64_t rows, int64_t cols, double rel,
                AbsFn absTerm) {
  int64_t bad = 0;
  double worst = 0, worstRel = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double got = bf16ToF32(gpuBits[r * ldg + col0 + c]), want = ref[r * ldr + c];
      const double err = std::fabs(got - want), bound = rel * std::fabs(want) + absTerm(r, c);
      if (!(err <= bound)) { // NaN fails too
        if (bad++ < 5)
          ADD_FAILURE() << what << " (" << r << ", " << c << "): gpu " << got << ", want " << want
                        << ", |diff| " << err << " > " << bound;
        continue;
      }
      if (bound > 0)
        worst = std::max(worst, err / bound);
      if (want != 0)
        worstRel = std::max(worstRel, err / std::fabs(want));
    }
  EXPECT_EQ(bad, 0) << what << ": elements outside the tolerance";
  std::printf("  %-28s max |diff|/bound %.3f, max relative %.2e\n", what.c_str(), worst, worstRel);
}

constexpr double kRel = 1.0 / 256;           // 2^-8
constexpr double kNormAbs = 1.0 / (1 << 20); // 2^-20
constexpr float kEps = 1e-5f;

auto noAbs = [](int64_t, int64_t) { return 0.0; };
auto normAbs = [](int64_t, int64_t) { return kNormAbs; };

//===-- The per-row kernels ----------------------------------------------------===//

/// COLS, rows, and the padding of the row strides: operand i (1, 2, ...) has ld = cols + pad·i.
struct Shape {
  int cols;
  int64_t rows, pad;
};

std::string shapeText(const Shape &s) {
  return "c" + std::to_string(s.cols) + "_r" + std::to_string(s.rows) +
         (s.pad ? "_pad" + std::to_string(s.pad) : "");
}
std::string shapeName(const ::testing::TestParamInfo<Shape> &info) { return shapeText(info.param); }
// gtest's "# GetParam() = ..." (and so the ctest names) without the struct's padding bytes.
void PrintTo(const Shape &s, std::ostream *os) { *os << shapeText(s); }

class RowKernel : public ::testing::TestWithParam<Shape> {
protected:
  int cols() const { return GetParam().cols; }
  int64_t rows() const { return GetParam().rows; }
  int64_t ld(int i) const { return GetParam().cols + GetParam().pad * i; }
  std::string name(const char *op) const { return kernelName(op, cols()); }
};

TEST_P(RowKernel, Embedding) {
  const int vocab = 5000;
  const float scale = std::sqrt(static_cast<float>(cols()));
  Mat table = randomMat(vocab, cols(), cols(), -1, 1, 11);
  std::mt19937 rng(12);
  std::uniform_int_distribution<int> pick(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(rows()));
  for (int32_t &id : ids)
    id = pick(rng);
  // Out of range ids give zero rows: below, at and far above the vocabulary.
  const int32_t bad[] = {-1, vocab, vocab + 12345, -1000000};
  for (size_t i = 0; i < 4; ++i)
    if (rows() > 1 + 3 * static_cast<int64_t>(i))
      ids[1 + 3 * i] = bad[i];

  DevMat dTable(table, "table"), dy(rows(), cols(), ld(1), "y");
  DeviceBuffer dIds(ids.size() * sizeof(int32_t), "ids");
  gpu().copyToDevice(dIds.get(), ids.data(), ids.size() * sizeof(int32_t), "ids");
  launchRows(name("embedding"), cols(), rows(), dIds.get(), dTable.ptr(), vocab, dy.ptr(), dy.ld(),
             scale);
  std::vector<uint16_t> y = dy.download("embedding y");

  std::vector<int32_t> valid(ids);
  for (int32_t &id : valid)
    id = id >= 0 && id < vocab ? id : 0;
  std::vector<float> ref(static_cast<size_t>(rows() * cols()));
  cpu::embedding(valid.data(), rows(), table.f32().data(), vocab, cols(), scale, ref.data());
  for (int64_t r = 0; r < rows(); ++r)
    if (valid[r] != ids[r])
      std::fill(ref.begin() + r * cols(), ref.begin() + (r + 1) * cols(), 0.0f); // +0 bits
  expectBits("embedding", y, dy.ld(), 0, ref.data(), cols(), rows(), cols());
}

TEST_P(RowKernel, SrmsNorm) {
  // Rows scaled by 2^-8 ... 2^8: mean squares from ~1e-6 (near eps) to ~2e4; row 0 all zero.
  Mat x = randomMat(rows(), cols(), ld(1), -1, 1, 21, 8);
  if (rows() > 1)
    std::fill(x.bits.begin(), x.bits.begin() + cols(), 0);
  DevMat dx(x, "x"), dy(rows(), cols(), ld(2), "y");
  launchRows(name("srms_norm"), cols(), rows(), dx.ptr(), dx.ld(), dy.ptr(), dy.ld(), kEps);
  std::vector<uint16_t> y = dy.download("srms_norm y");
  dx.download("srms_norm x (input)");

  std::vector<float> ref(static_cast<size_t>(rows() * cols()));
  cpu::srmsNorm(x.f32().data(), rows(), cols(), x.ld, kEps, ref.data(), cols());
  expectNear("srms_norm", y, dy.ld(), 0, ref.data(), cols(), rows(), cols(), kRel, normAbs);
}

TEST_P(RowKernel, AddSrmsNorm) {
  for (bool inPlace : {false, true}) { // sum written over a (the residual stream in place)
    SCOPED_TRACE(inPlace ? "sum aliases a" : "separate sum");
    Mat a = randomMat(rows(), cols(), ld(1), -4, 4, 31, 4);
    Mat b = randomMat(rows(), cols(), ld(2), -1, 1, 32, 4);
    DevMat da(a, "a"), db(b, "b"), dsum(rows(), cols(), ld(3), "sum"),
        dy(rows(), cols(), ld(4), "y");
    const DevMat &s = inPlace ? da : dsum;
    launchRows(name("add_srms_norm"), cols(), rows(), da.ptr(), da.ld(), db.ptr(), db.ld(), s.ptr(),
               s.ld(), dy.ptr(), dy.ld(), kEps);
    std::vector<uint16_t> sum = s.download("add_srms_norm sum");
    std::vector<uint16_t> y = dy.download("add_srms_norm y");

    // The sum: one fp32 add, one rounding. Then the norm of the rounded sum.
    std::vector<float> refSum(static_cast<size_t>(rows() * cols()));
    cpu::add(a.f32().data(), b.f32().data(), rows(), cols(), a.ld, b.ld, refSum.data(), cols());
    expectBits("add_srms_norm sum", sum, s.ld(), 0, refSum.data(), cols(), rows(), cols());
    for (float &v : refSum)
      v = bf16ToF32(f32ToBf16(v));
    std::vector<float> ref(refSum.size());
    cpu::srmsNorm(refSum.data(), rows(), cols(), cols(), kEps, ref.data(), cols());
    expectNear("add_srms_norm y", y, dy.ld(), 0, ref.data(), cols(), rows(), cols(), kRel, normAbs);
  }
}

TEST_P(RowKernel, GatedSrmsNorm) {
  Mat u = randomMat(rows(), cols(), ld(1), -2, 2, 41);
  Mat yIn = randomMat(rows(), cols(), ld(2), -1, 1, 42, 8);
  DevMat du(u, "u"), dy(yIn, "y"); // in place in y
  launchRows(name("gated_srms_norm"), cols(), rows(), du.ptr(), du.ld(), dy.ptr(), dy.ld(), kEps);
  std::vector<uint16_t> y = dy.download("gated_srms_norm y");

  std::vector<float> ref(static_cast<size_t>(rows() * cols()));
  cpu::srmsNorm(yIn.f32().data(), rows(), cols(), yIn.ld, kEps, ref.data(), cols());
  cpu::mul(u.f32().data(), ref.data(), rows(), cols(), u.ld, cols(), ref.data(), cols());
  expectNear("gated_srms_norm", y, dy.ld(), 0, ref.data(), cols(), rows(), cols(), kRel, normAbs);
}

// The train step's epilogue reading O from the workspace (its own strided buffer): the same
// values as gated_srms_norm in place, bit for bit, O left as it was.
TEST_P(RowKernel, GatedNormFromOMatchesInPlace) {
  Mat u = randomMat(rows(), cols(), ld(1), -2, 2, 45);
  Mat oIn = randomMat(rows(), cols(), ld(3), -1, 1, 46, 8);
  Mat yIn = randomMat(rows(), cols(), ld(2), -1, 1, 47);
  DevMat du(u, "u"), dO(oIn, "o"), dy(yIn, "y"), dInPlace(oIn, "in place");
  launchRows(name("gated_norm_from_o"), cols(), rows(), du.ptr(), du.ld(), dO.ptr(), dO.ld(),
             dy.ptr(), dy.ld(), kEps);
  launchRows(name("gated_srms_norm"), cols(), rows(), du.ptr(), du.ld(), dInPlace.ptr(),
             dInPlace.ld(), kEps);
  const std::vector<uint16_t> y = dy.download("gated_norm_from_o y");
  const std::vector<uint16_t> inPlace = dInPlace.download("gated_srms_norm y");
  const std::vector<uint16_t> o = dO.download("gated_norm_from_o o");
  int64_t bad = 0;
  for (int64_t r = 0; r < rows(); ++r)
    for (int64_t c = 0; c < cols(); ++c) {
      const uint16_t got = y[size_t(r * dy.ld() + c)], want = inPlace[size_t(r * oIn.ld + c)];
      if (got != want && bad++ < 3)
        ADD_FAILURE() << "[" << r << ", " << c << "]: 0x" << std::hex << got << " vs 0x" << want
                      << std::dec;
      if (o[size_t(r * oIn.ld + c)] != oIn.bits[size_t(r * oIn.ld + c)] && bad++ < 3)
        ADD_FAILURE() << "O changed at [" << r << ", " << c << "]";
    }
  EXPECT_EQ(bad, 0);
}

TEST_P(RowKernel, GatedSrmsNormSum) {
  Mat u = randomMat(rows(), cols(), ld(1), -2, 2, 51);
  Mat y2 = randomMat(rows(), cols(), ld(2), -1, 1, 52, 6);
  Mat yIn = randomMat(rows(), cols(), ld(3), -1, 1, 53, 6);
  DevMat du(u, "u"), dy2(y2, "y2"), dy(yIn, "y"); // in place in y
  launchRows(name("gated_srms_norm_sum"), cols(), rows(), du.ptr(), du.ld(), dy2.ptr(), dy2.ld(),
             dy.ptr(), dy.ld(), kEps);
  std::vector<uint16_t> y = dy.download("gated_srms_norm_sum y");

  std::vector<float> o(static_cast<size_t>(rows() * cols())), ref(o.size());
  cpu::add(yIn.f32().data(), y2.f32().data(), rows(), cols(), yIn.ld, y2.ld, o.data(), cols());
  cpu::srmsNorm(o.data(), rows(), cols(), cols(), kEps, ref.data(), cols());
  cpu::mul(u.f32().data(), ref.data(), rows(), cols(), u.ld, cols(), ref.data(), cols());
  expectNear("gated_srms_norm_sum", y, dy.ld(), 0, ref.data(), cols(), rows(), cols(), kRel,
             normAbs);
}

TEST_P(RowKernel, Silu) {
  for (bool inPlace : {false, true}) { // the emitter's plain-layer prologue runs in place
    SCOPED_TRACE(inPlace ? "in place" : "out of place");
    Mat x = randomMat(rows(), cols(), ld(1), -12, 12, 61);
    DevMat dx(x, "x"), dOut(rows(), cols(), ld(2), "y");
    const DevMat &dy = inPlace ? dx : dOut;
    launchRows(name("silu"), cols(), rows(), dx.ptr(), dx.ld(), dy.ptr(), dy.ld());
    std::vector<uint16_t> y = dy.download("silu y");

    std::vector<float> ref(static_cast<size_t>(rows() * cols()));
    cpu::silu(x.f32().data(), rows(), cols(), x.ld, ref.data(), cols());
    expectNear("silu", y, dy.ld(), 0, ref.data(), cols(), rows(), cols(), kRel, noAbs);
  }
}

TEST_P(RowKernel, MulAndAdd) {
  Mat a = randomMat(rows(), cols(), ld(1), -3, 3, 71, 10);
  Mat b = randomMat(rows(), cols(), ld(2), -3, 3, 72, 10);
  DevMat da(a, "a"), db(b, "b");
  for (const char *op : {"mul", "add"}) {
    DevMat dy(rows(), cols(), ld(3), "y");
    launchRows(name(op), cols(), rows(), da.ptr(), da.ld(), db.ptr(), db.ld(), dy.ptr(), dy.ld());
    std::vector<uint16_t> y = dy.download(std::string(op) + " y");
    std::vector<float> ref(static_cast<size_t>(rows() * cols()));
    const bool isMul = std::string(op) == "mul";
    (isMul ? cpu::mul : cpu::add)(a.f32().data(), b.f32().data(), rows(), cols(), a.ld, b.ld,
                                  ref.data(), cols());
    expectBits(op, y, dy.ld(), 0, ref.data(), cols(), rows(), cols());
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, RowKernel,
                         ::testing::Values(Shape{100, 1, 0}, Shape{300, 257, 13},
                                           Shape{768, 1000, 0}, Shape{1024, 999, 64},
                                           Shape{4096, 37, 8}),
                         shapeName);

//===-- lrpe_split --------------------------------------------------------------===//

struct LrpeShape {
  int cols;     // D
  int64_t rows; // tokens of the call
  int seq;      // positions r mod seq
  int64_t pad;  // ldx = 2D + pad, ldw = 4D + 2·pad
  bool silu;
};

std::string lrpeText(const LrpeShape &s) {
  return "c" + std::to_string(s.cols) + "_r" + std::to_string(s.rows) + "_seq" +
         std::to_string(s.seq) + (s.pad ? "_pad" + std::to_string(s.pad) : "") +
         (s.silu ? "_silu" : "");
}
std::string lrpeName(const ::testing::TestParamInfo<LrpeShape> &info) {
  return lrpeText(info.param);
}
void PrintTo(const LrpeShape &s, std::ostream *os) { *os << lrpeText(s); }

class LrpeSplit : public ::testing::TestWithParam<LrpeShape> {};

TEST_P(LrpeSplit, MatchesCpuLrpe) {
  const LrpeShape s = GetParam();
  const int64_t D = s.cols, rows = s.rows;
  std::vector<float> theta(static_cast<size_t>(D));
  for (int64_t i = 0; i < D; ++i)
    theta[i] = static_cast<float>(std::pow(10000.0, -2.0 * static_cast<double>(i) / double(D)));
  Mat x = randomMat(rows, 2 * D, 2 * D + s.pad, -6, 6, 81 + s.silu);
  DevMat dx(x, "qk"), dw(rows, 4 * D, 4 * D + 2 * s.pad, "w");
  DeviceBuffer dTheta(theta.size() * sizeof(float), "theta");
  gpu().copyToDevice(dTheta.get(), theta.data(), theta.size() * sizeof(float), "theta");
  launchRows(kernelName("lrpe_split", s.cols, s.silu), s.cols, rows, dx.ptr(), dx.ld(),
             dTheta.get(), s.seq, dw.ptr(), dw.ld());
  std::vector<uint16_t> w = dw.download("lrpe_split w");
  dx.download("lrpe_split x (input)");

  // φ(q), φ(k) side by side, then each through cpu::lrpe run by run of seq positions:
  // refQ = [q cos | q sin], refK = [k cos | k sin].
  std::vector<float> xf = x.f32(), phi;
  const float *src = xf.data();
  int64_t lds = x.ld;
  if (s.silu) {
    phi.resize(static_cast<size_t>(rows * 2 * D));
    cpu::silu(xf.data(), rows, 2 * D, x.ld, phi.data(), 2 * D);
    src = phi.data();
    lds = 2 * D;
  }
  std::vector<float> refQ(static_cast<size_t>(rows * 2 * D)), refK(refQ.size());
  for (int64_t r0 = 0; r0 < rows; r0 += s.seq) {
    const int64_t n = std::min<int64_t>(s.seq, rows - r0);
    cpu::lrpe(src + r0 * lds, 1, n, 1, D, lds, theta.data(), 0, refQ.data() + r0 * 2 * D);
    cpu::lrpe(src + r0 * lds + D, 1, n, 1, D, lds, theta.data(), 0, refK.data() + r0 * 2 * D);
  }
  auto absOf = [src, lds, D](int64_t part) { // 2^-20·|φ(q or k)|
    return [src, lds, D, part](int64_t r, int64_t c) {
      return std::fabs(src[r * lds + part * D + c]) / double(1 << 20);
    };
  };
  const int64_t maxPos = std::min<int64_t>(rows, s.seq) - 1;
  std::printf("  positions 0..%lld, largest angle %.0f rad\n", static_cast<long long>(maxPos),
              double(maxPos) * theta[0]);
  expectNear("lrpe q cos (plane 0)", w, dw.ld(), 0, refQ.data(), 2 * D, rows, D, kRel, absOf(0));
  expectNear("lrpe k cos (plane 1)", w, dw.ld(), D, refK.data(), 2 * D, rows, D, kRel, absOf(1));
  expectNear("lrpe q sin (plane 2)", w, dw.ld(), 2 * D, refQ.data() + D, 2 * D, rows, D, kRel,
             absOf(0));
  expectNear("lrpe k sin (plane 3)", w, dw.ld(), 3 * D, refK.data() + D, 2 * D, rows, D, kRel,
             absOf(1));
}

// Positions reach 32767 (angle 32767 rad on feature 0) and wrap to 0 after it in the long
// cases; short sequences check the wrap many times.
std::vector<LrpeShape> lrpeShapes() {
  std::vector<LrpeShape> out;
  for (bool silu : {false, true})
    for (LrpeShape s :
         {LrpeShape{100, 200, 64, 3, false}, LrpeShape{300, 33000, 32768, 11, false},
          LrpeShape{768, 1000, 1000, 0, false}, LrpeShape{1024, 32868, 32768, 0, false},
          LrpeShape{4096, 17, 5, 8, false}}) {
      s.silu = silu;
      out.push_back(s);
    }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, LrpeSplit, ::testing::ValuesIn(lrpeShapes()), lrpeName);

//===-- NVRTC only (no GPU) -------------------------------------------------------===//

// The test source compiles for the Hopper target the emitter uses, and every wrapper is in
// the cubin. Needs NVRTC, not a device (the binary still skips it without one; see GpuMain).
TEST(RowKernelSource, CompilesForSm90a) {
  RowSource source = rowSource();
  CompiledKernels out = compileCuda(source.text, "rowkernels.cu", rowOptions("sm_90a"));
  EXPECT_TRUE(out.log.empty()) << out.log;
  for (const std::string &name : source.kernels) // ELF string tables hold NUL-terminated names
    EXPECT_NE(out.image.find(std::string(1, '\0') + name + '\0'), std::string::npos)
        << name << " is not in the cubin";
  // Ten operations per column count, lrpe_split twice (with and without SiLU).
  EXPECT_EQ(source.kernels.size(), std::size(kCols) * 11);
}

} // namespace
} // namespace tnlm::cuda
