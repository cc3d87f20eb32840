//===- TnlmRecurrentOps.cpp - verifiers of the recurrent inference ops ----===//
#include "dialect/TnlmOps.h"
#include "dialect/TnlmVerify.h"

#include <cmath>

using namespace mlir;
using namespace mlir::tnlm;
using namespace mlir::tnlm::verify;

namespace {

// The attributes and operands shared by lightning_prefill and lightning_decode.
template <typename Op> LogicalResult verifyRecurrentMixer(Op op, bool decode) {
  auto x = tensorOf(op.getQkvu()), y = tensorOf(op.getResult()), s = tensorOf(op.getState());
  if (failed(expectRank(op, "qkvu", x, 3)) || failed(expectRank(op, "result", y, 3)) ||
      failed(expectSameElementType(op, "qkvu", x, "result", y)) ||
      failed(expectDim(op, "batch", x, 0, y, 0)) || failed(expectDim(op, "sequence", x, 1, y, 1)))
    return failure();
  if (decode && !x.isDynamicDim(1) && x.getDimSize(1) != 1)
    return op.emitOpError() << "decodes one token per slot: qkvu must be [B, 1, 4·D], got " << x;
  int64_t heads = op.getHeads(), dh = op.getHeadDim();
  if (heads <= 0 || dh <= 0)
    return op.emitOpError() << "heads and head_dim must be positive, got " << heads << " and "
                            << dh;
  const int64_t D = heads * dh, dk = op.getKeyDim();
  if (y.isDynamicDim(2) || y.getDimSize(2) != D)
    return op.emitOpError() << "result width must be heads x head_dim = " << D;
  if (!x.isDynamicDim(2) && x.getDimSize(2) != 4 * D)
    return op.emitOpError() << "qkvu width must be 4 x " << D << " (q, k, v, u), got "
                            << x.getDimSize(2);
  if (s != tensorOf(op.getNewState()))
    return op.emitOpError() << "state and new_state must have one type";
  if (s.getRank() != 4 || !s.hasStaticShape() || s.getDimSize(1) != heads ||
      s.getDimSize(2) != dk || s.getDimSize(3) != dh)
    return op.emitOpError() << "state must be a static [B, " << heads << ", " << dk << ", " << dh
                            << "] f32 tensor, got " << s;
  if (failed(expectDim(op, "state slots vs batch", s, 0, x, 0)))
    return failure();
  auto slots = tensorOf(decode ? op->getOperand(2) : op->getOperand(2));
  if (failed(expectDim(op, "slot vector vs batch", slots, 0, x, 0)))
    return failure();
  ArrayRef<float> slopes = op.getSlopes();
  if (static_cast<int64_t>(slopes.size()) != heads)
    return op.emitOpError() << "has " << heads << " heads but " << slopes.size() << " decay slopes";
  for (auto [h, v] : llvm::enumerate(slopes))
    if (!std::isfinite(v) || v < 0.0f)
      return op.emitOpError() << "decay slope of head " << h << " must be finite and >= 0";
  if (op.getActivation() != "silu" && op.getActivation() != "none")
    return op.emitOpError() << "activation must be \"silu\" or \"none\", got \""
                            << op.getActivation() << "\"";
  float eps = op.getEps().convertToFloat();
  if (!std::isfinite(eps) || eps < 0.0f)
    return op.emitOpError() << "eps must be finite and >= 0, got " << eps;
  if (Value theta = op.getTheta()) {
    auto th = tensorOf(theta);
    if (th.getRank() != 3 || th.getDimSize(0) != heads || th.getDimSize(1) != 1 ||
        th.getDimSize(2) != dh)
      return op.emitOpError() << "theta must have shape [" << heads << ", 1, " << dh << "], got "
                              << th;
  }
  return success();
}

} // namespace

LogicalResult LightningPrefillOp::verify() {
  if (getBlockSizeAttr().getInt() < 0)
    return emitOpError() << "block_size must be >= 0 (0: not chosen yet)";
  return verifyRecurrentMixer(*this, /*decode=*/false);
}

LogicalResult LightningDecodeOp::verify() { return verifyRecurrentMixer(*this, /*decode=*/true); }

LogicalResult GatherLastOp::verify() {
  auto x = tensorOf(getInput()), y = tensorOf(getResult()), l = tensorOf(getLengths());
  if (failed(expectRank(*this, "input", x, 3)) || failed(expectRank(*this, "result", y, 3)) ||
      failed(expectSameElementType(*this, "input", x, "result", y)) ||
      failed(expectDim(*this, "batch", x, 0, y, 0)) ||
      failed(expectDim(*this, "lengths vs batch", l, 0, x, 0)) ||
      failed(expectDim(*this, "width", x, 2, y, 2)))
    return failure();
  if (!y.isDynamicDim(1) && y.getDimSize(1) != 1)
    return emitOpError() << "result must be [B, 1, d], got " << y;
  return success();
}
