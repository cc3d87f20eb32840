// Lightning Attention forward: the launch arguments and the segment plan, shared by the device
// templates (LightningAttentionFwd.cuh, compiled by NVRTC or nvcc) and the host runtime
// (runtime/cuda/CudaExecutor.cpp, plain C++): no CUDA headers, no standard library.
// The arguments are a template over the element type so that the host fills the same layout
// with its own 16-bit type (the kernels take LightningFwdArgs = LightningFwdArgsT<bf16> by
// value; every member is a pointer, an int or a long long, so the layout does not depend
// on T).
#pragma once

namespace tnlm {
namespace la {

template <class T> struct LightningFwdArgsT {
  const T *q;          // [B, N, H, DK] with strides in_sb / in_sn / in_sh (elements)
  const T *k;          // same strides as q
  const T *v;          // same strides as q (last dim DV)
  T *o;                // [B, N, H, DV] with strides out_sb / out_sn / out_sh
  const float *slopes; // [H] decay rates s_h (λ_h = exp(-s_h)), s_h > 0
  float *piece_states; // workspace [B*H][pieces_per_bh][DK][DV] fp32 (nullptr if none)
  float *final_state;  // optional [B*H][DK][DV] fp32: state after the last token
  int B, N, H;
  long long in_sb, in_sn, in_sh;
  long long out_sb, out_sn, out_sh;
  int seg_len;       // tokens per segment, multiple of C
  int num_segs;      // ceil(N / seg_len)
  int piece_len;     // tokens per state piece, divides seg_len, multiple of C
  int pieces_per_bh; // (num_segs - 1) * seg_len / piece_len
  // Optional (the Hopper main kernel only; nullptr: none): o = φ'(oscale) ⊙ o on the way out,
  // φ = SiLU, oscale [B, N, H, DV] at these strides (the Lightning backward's dq, dk scaled by
  // the SiLU's slope at the pre-activation q, k: the separate la_silu_scale pass folded into
  // the stores, the same per-element arithmetic). Appended last: kernels compiled before it
  // read the fields above only.
  const T *oscale;
  long long os_sb, os_sn, os_sh;
  // Non-zero (the Hopper main kernel only): piece_states hold the transposed states [DV][DK]
  // (another pass's, whose K and V are this pass's V and K: the Lightning backward's dv pass
  // reads the dk pass's instead of a state pass and scan of its own). Appended last, as
  // oscale (artifact format 6).
  int state_t;
};

// The segment split (LightningAttentionFwd.cuh, "Sequence segments").
struct LightningFwdPlan {
  int seg_len = 0, num_segs = 1, piece_len = 0, pieces_per_bh = 0;
  unsigned long long workspace_bytes = 0; // piece states
};

// Chooses segments so that B·H·segments ≈ the number of SMs (one CTA per SM), and state
// pieces so that pass 1 has about one CTA per SM too: pieces double only while
// 2·B·H·(segs − 1)·k ≤ #SMs, so B·H·pieces_per_bh ≤ #SMs always (a workspace of #SMs states
// covers every call). force_* > 0 overrides the choice (force_pieces = pieces per segment).
inline LightningFwdPlan plan_lightning_fwd(int B, int H, int N, int DK, int DV, int C, int num_sms,
                                           int force_segs = 0, int force_pieces = 0) {
  LightningFwdPlan p;
  const int BH = B * H;
  const int chunks = (N + C - 1) / C;
  int segs = force_segs > 0 ? force_segs : (BH >= num_sms ? 1 : num_sms / BH);
  if (segs < 1)
    segs = 1;
  if (segs > chunks)
    segs = chunks;
  const int seg_chunks = (chunks + segs - 1) / segs;
  p.seg_len = seg_chunks * C;
  p.num_segs = (N + p.seg_len - 1) / p.seg_len;
  if (p.num_segs <= 1) {
    p.num_segs = 1;
    p.piece_len = p.seg_len;
    return p;
  }
  int k = 1;
  if (force_pieces > 0) {
    k = force_pieces;
    while (seg_chunks % k != 0)
      --k;
  } else {
    while (2 * BH * (p.num_segs - 1) * k <= num_sms && seg_chunks % (2 * k) == 0)
      k *= 2;
  }
  p.piece_len = p.seg_len / k;
  p.pieces_per_bh = (p.num_segs - 1) * k;
  p.workspace_bytes = static_cast<unsigned long long>(BH) * p.pieces_per_bh * DK * DV * 4;
  return p;
}

} // namespace la
// The extern "C" names tnlmc gives the GEMMs of our own with an epilogue (codegen/cuda/
// GemmSm90.cuh; codegen/CudaEmitter.cpp emits them, runtime/cuda/CudaExecutor.cpp runs them):
// SGLU's fused forward (kGatedProduct), its product's backward fused into the dgrad of the
// linear after it (kMulGrad), and a train step's qkvu GEMM with Lightning Attention's φ(q),
// φ(k) in its epilogue (kSiluPrefix; it takes one more int, the prefix's columns).
constexpr const char *kSgluFusedKernel = "tnlm_gemm_sglu_sm90";
constexpr const char *kMulGradFusedKernel = "tnlm_gemm_mulgrad_sm90";
constexpr const char *kSiluFusedKernel = "tnlm_gemm_silu_sm90";
// Their launch: threads and dynamic shared memory of GemmSm90Config (SGLU's forward) and of
// GemmSm90PingpongConfig<> (the product's backward, φ) (the emitted kernels static_assert them
// against the templates').
constexpr unsigned kGemmSm90Threads = 384, kGemmSm90Smem = 214080;
constexpr unsigned kGemmSm90PingpongSmem = 230496;
} // namespace tnlm
