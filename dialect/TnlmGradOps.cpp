//===- TnlmGradOps.cpp - verifiers of the backward and optimizer ops ------===//
//
// Each rule in an op's ODS description (TnlmGradOps.td) is checked here. Cotangents may have
// another element type than the values they belong to (f32 logits, bf16 activations), so
// the rules are about shapes; weight gradients and optimizer state are f32 by their ODS types.
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "dialect/TnlmVerify.h"

#include <cmath>

using namespace mlir;
using namespace mlir::tnlm;
using namespace mlir::tnlm::verify;

namespace {

// `a` and `b` have compatible shapes (dynamic dims match anything).
LogicalResult expectSameShape(Operation *op, StringRef a, Value va, StringRef b, Value vb) {
  auto ta = tensorOf(va), tb = tensorOf(vb);
  if (ta.getRank() != tb.getRank())
    return op->emitOpError() << a << " and " << b << " must have one shape, got " << ta << " and "
                             << tb;
  for (int64_t i = 0; i < ta.getRank(); ++i)
    if (!compatible(ta.getDimSize(i), tb.getDimSize(i)))
      return op->emitOpError() << a << " and " << b << " must have one shape, got " << ta << " and "
                               << tb;
  return success();
}

LogicalResult expectEps(Operation *op, float eps) {
  if (!std::isfinite(eps) || eps < 0.0f)
    return op->emitOpError() << "eps must be finite and >= 0, got " << eps;
  return success();
}

LogicalResult expectSlopes(Operation *op, ArrayRef<float> slopes, int64_t heads) {
  if (static_cast<int64_t>(slopes.size()) != heads)
    return op->emitOpError() << "has " << heads << " heads but " << slopes.size()
                             << " decay slopes";
  for (auto [h, s] : llvm::enumerate(slopes))
    if (!std::isfinite(s) || s < 0.0f)
      return op->emitOpError() << "decay slope of head " << h << " must be finite and >= 0, got "
                               << s;
  return success();
}

// [out, in] of a weight; `what` names it.
LogicalResult expectMatrix(Operation *op, StringRef what, Value v) {
  return expectRank(op, what, tensorOf(v), 2);
}

} // namespace

LogicalResult LinearInputGradOp::verify() {
  auto dy = tensorOf(getGrad()), w = tensorOf(getWeight()), dx = tensorOf(getResult());
  if (dy.getRank() < 1 || dx.getRank() != dy.getRank())
    return emitOpError() << "grad and result must have one rank >= 1, got " << dy << " and " << dx;
  if (failed(expectMatrix(*this, "weight", getWeight())))
    return failure();
  int64_t r = dy.getRank();
  if (failed(expectDim(*this, "grad features vs weight dim 0", dy, r - 1, w, 0)) ||
      failed(expectDim(*this, "result features vs weight dim 1", dx, r - 1, w, 1)))
    return failure();
  for (int64_t i = 0; i + 1 < r; ++i)
    if (failed(expectDim(*this, "leading dim " + std::to_string(i), dy, i, dx, i)))
      return failure();
  return success();
}

LogicalResult LinearWeightGradOp::verify() {
  auto dy = tensorOf(getGrad()), x = tensorOf(getInput()), dw = tensorOf(getResult());
  if (dy.getRank() < 1 || dy.getRank() != x.getRank())
    return emitOpError() << "grad and input must have one rank >= 1, got " << dy << " and " << x;
  if (failed(expectRank(*this, "result", dw, 2)))
    return failure();
  int64_t r = dy.getRank();
  for (int64_t i = 0; i + 1 < r; ++i)
    if (failed(expectDim(*this, "leading dim " + std::to_string(i), dy, i, x, i)))
      return failure();
  if (failed(expectDim(*this, "result dim 0 vs grad features", dw, 0, dy, r - 1)) ||
      failed(expectDim(*this, "result dim 1 vs input features", dw, 1, x, r - 1)))
    return failure();
  if (!dw.hasStaticShape())
    return emitOpError() << "result must have a static shape, got " << dw;
  return success();
}

LogicalResult SrmsNormGradOp::verify() {
  if (failed(expectSameShape(*this, "input", getInput(), "grad", getGrad())) ||
      failed(expectSameShape(*this, "input", getInput(), "result", getResult())))
    return failure();
  return expectEps(*this, getEps().convertToFloat());
}

LogicalResult AddSrmsNormGradOp::verify() {
  if (failed(expectSameShape(*this, "sum", getSum(), "grad", getGrad())) ||
      failed(expectSameShape(*this, "sum", getSum(), "result", getResult())))
    return failure();
  if (getSumGrad() && failed(expectSameShape(*this, "sum", getSum(), "sum_grad", getSumGrad())))
    return failure();
  return expectEps(*this, getEps().convertToFloat());
}

LogicalResult SiluGradOp::verify() {
  if (failed(expectSameShape(*this, "input", getInput(), "grad", getGrad())) ||
      failed(expectSameShape(*this, "input", getInput(), "result", getResult())))
    return failure();
  return success();
}

LogicalResult LrpeGradOp::verify() {
  auto x = tensorOf(getInput()), th = tensorOf(getTheta()), dy = tensorOf(getGrad());
  if (failed(expectRank(*this, "input", x, 4)) || failed(expectRank(*this, "grad", dy, 4)))
    return failure();
  // One diagnostic for a bad theta (expectDim would add a second one).
  if (th.getRank() != 3 || th.getDimSize(1) != 1 ||
      !compatible(th.getDimSize(0), x.getDimSize(2)) ||
      !compatible(th.getDimSize(2), x.getDimSize(3)))
    return emitOpError() << "theta must be [H, 1, dh] for input " << x << ", got " << th;
  for (int64_t i = 0; i < 3; ++i)
    if (failed(expectDim(*this, "grad dim " + std::to_string(i), dy, i, x, i)))
      return failure();
  if (!x.isDynamicDim(3) && !dy.isDynamicDim(3) && dy.getDimSize(3) != 2 * x.getDimSize(3))
    return emitOpError() << "grad must have 2 x " << x.getDimSize(3) << " features, got "
                         << dy.getDimSize(3);
  if (failed(expectSameShape(*this, "input", getInput(), "input_grad", getInputGrad())) ||
      failed(expectSameShape(*this, "theta", getTheta(), "theta_grad", getThetaGrad())))
    return failure();
  return success();
}

LogicalResult DecayLinearAttentionGradOp::verify() {
  auto q = tensorOf(getQ()), k = tensorOf(getK()), v = tensorOf(getV());
  if (failed(expectRank(*this, "q", q, 4)) || failed(expectRank(*this, "k", k, 4)) ||
      failed(expectRank(*this, "v", v, 4)))
    return failure();
  if (failed(expectSameShape(*this, "q", getQ(), "k", getK())) ||
      failed(expectSameShape(*this, "v", getV(), "grad", getGrad())) ||
      failed(expectSameShape(*this, "q", getQ(), "q_grad", getQGrad())) ||
      failed(expectSameShape(*this, "k", getK(), "k_grad", getKGrad())) ||
      failed(expectSameShape(*this, "v", getV(), "v_grad", getVGrad())))
    return failure();
  for (int64_t i = 0; i < 3; ++i)
    if (failed(expectDim(*this, "q vs v dim " + std::to_string(i), q, i, v, i)))
      return failure();
  if (q.isDynamicDim(2))
    return emitOpError() << "the head dim of q must be static, got " << q;
  return expectSlopes(*this, getSlopes(), q.getDimSize(2));
}

LogicalResult LightningAttentionGradOp::verify() {
  auto x = tensorOf(getQkvu()), dy = tensorOf(getGrad()), dx = tensorOf(getQkvuGrad());
  if (failed(expectRank(*this, "qkvu", x, 3)) || failed(expectRank(*this, "grad", dy, 3)) ||
      failed(expectSameShape(*this, "qkvu", getQkvu(), "qkvu_grad", getQkvuGrad())) ||
      failed(expectDim(*this, "batch", x, 0, dy, 0)) ||
      failed(expectDim(*this, "sequence", x, 1, dy, 1)))
    return failure();
  (void)dx;
  int64_t heads = getHeads(), dh = getHeadDim();
  if (heads <= 0 || dh <= 0)
    return emitOpError() << "heads and head_dim must be positive, got " << heads << " and " << dh;
  if (dy.isDynamicDim(2) || dy.getDimSize(2) != heads * dh)
    return emitOpError() << "grad width must be heads x head_dim = " << heads * dh << ", got "
                         << dimStr(dy.getDimSize(2));
  if (!x.isDynamicDim(2) && x.getDimSize(2) != 4 * heads * dh)
    return emitOpError() << "qkvu width must be 4 x " << heads * dh << ", got " << x.getDimSize(2);
  if (failed(expectSlopes(*this, getSlopes(), heads)) ||
      failed(expectEps(*this, getEps().convertToFloat())))
    return failure();
  if (getBlockSizeAttr().getInt() < 0)
    return emitOpError() << "block_size must be >= 0, got " << getBlockSizeAttr().getInt();
  if (getActivation() != "silu" && getActivation() != "none")
    return emitOpError() << "activation must be \"silu\" or \"none\", got \"" << getActivation()
                         << "\"";
  if (Value theta = getTheta()) {
    auto th = tensorOf(theta);
    if (th.getRank() != 3 || th.getDimSize(0) != heads || th.getDimSize(1) != 1 ||
        th.getDimSize(2) != dh)
      return emitOpError() << "theta must have shape [" << heads << ", 1, " << dh << "], got "
                           << th;
    if (!getThetaGrad())
      return emitOpError() << "with theta, a theta_grad result of theta's shape is required";
    if (failed(expectSameShape(*this, "theta", theta, "theta_grad", getThetaGrad())))
      return failure();
  } else {
    if (getThetaGrad())
      return emitOpError() << "theta_grad needs a theta operand";
    if (getOffset())
      return emitOpError() << "a position offset needs LRPE (a theta operand)";
  }
  return success();
}

LogicalResult GatedLinearGradOp::verify() {
  auto x = tensorOf(getInput()), w1 = tensorOf(getW1()), dy = tensorOf(getGrad());
  if (x.getRank() < 1 || dy.getRank() != x.getRank())
    return emitOpError() << "input and grad must have one rank >= 1";
  if (failed(expectMatrix(*this, "w1", getW1())) ||
      failed(expectSameShape(*this, "w1", getW1(), "w2", getW2())) ||
      failed(expectSameShape(*this, "input", getInput(), "input_grad", getInputGrad())) ||
      failed(expectSameShape(*this, "w1", getW1(), "w1_grad", getW1Grad())) ||
      failed(expectSameShape(*this, "w2", getW2(), "w2_grad", getW2Grad())))
    return failure();
  int64_t r = x.getRank();
  if (failed(expectDim(*this, "input width vs w1 dim 1", x, r - 1, w1, 1)) ||
      failed(expectDim(*this, "grad width vs w1 dim 0", dy, r - 1, w1, 0)))
    return failure();
  for (int64_t i = 0; i + 1 < r; ++i)
    if (failed(expectDim(*this, "leading dim " + std::to_string(i), x, i, dy, i)))
      return failure();
  return success();
}

LogicalResult EmbeddingGradOp::verify() {
  auto ids = tensorOf(getIds()), dx = tensorOf(getGrad()), dE = tensorOf(getResult());
  if (failed(expectRank(*this, "ids", ids, 2)) || failed(expectRank(*this, "grad", dx, 3)) ||
      failed(expectRank(*this, "result", dE, 2)) ||
      failed(expectDim(*this, "batch", ids, 0, dx, 0)) ||
      failed(expectDim(*this, "sequence", ids, 1, dx, 1)) ||
      failed(expectDim(*this, "embedding width", dE, 1, dx, 2)))
    return failure();
  if (!dE.hasStaticShape())
    return emitOpError() << "result must have a static shape [V, d], got " << dE;
  float scale = getScale().convertToFloat();
  if (!std::isfinite(scale) || scale <= 0.0f)
    return emitOpError() << "scale must be finite and positive, got " << scale;
  if (IntegerAttr padAttr = getPaddingIdxAttr()) {
    const int64_t pad = padAttr.getInt();
    if (pad < 0 || pad >= dE.getDimSize(0))
      return emitOpError() << "padding_idx " << pad << " is outside the vocabulary [0, "
                           << dE.getDimSize(0) << ")";
  }
  return success();
}

LogicalResult CrossEntropyGradOp::verify() {
  auto logits = tensorOf(getLogits()), labels = tensorOf(getLabels());
  if (failed(expectRank(*this, "logits", logits, 3)) ||
      failed(expectRank(*this, "labels", labels, 2)) ||
      failed(expectDim(*this, "batch", logits, 0, labels, 0)) ||
      failed(expectDim(*this, "sequence", logits, 1, labels, 1)) ||
      failed(expectSameShape(*this, "logits", getLogits(), "result", getResult())))
    return failure();
  return success();
}

LogicalResult ConcatOp::verify() {
  size_t n = getInputs().size();
  if (n < 2)
    return emitOpError() << "needs at least 2 inputs, got " << n;
  auto first = tensorOf(getInputs()[0]), y = tensorOf(getResult());
  for (Value v : getInputs())
    if (v.getType() != first)
      return emitOpError() << "all inputs must have one type, got " << first << " and "
                           << v.getType();
  if (first.getRank() < 1 || y.getRank() != first.getRank())
    return emitOpError() << "inputs and result must have one rank >= 1";
  if (failed(expectSameElementType(*this, "inputs", first, "result", y)))
    return failure();
  int64_t r = first.getRank();
  for (int64_t i = 0; i + 1 < r; ++i)
    if (failed(expectDim(*this, "leading dim " + std::to_string(i), first, i, y, i)))
      return failure();
  int64_t part = first.getDimSize(r - 1), whole = y.getDimSize(r - 1);
  if (!ShapedType::isDynamic(part) && !ShapedType::isDynamic(whole) &&
      whole != part * static_cast<int64_t>(n))
    return emitOpError() << "result width " << whole << " must equal " << n << " x " << part;
  return success();
}

LogicalResult FillOp::verify() {
  auto y = llvm::cast<RankedTensorType>(getResult().getType());
  if (!std::isfinite(getValue().convertToFloat()))
    return emitOpError() << "value must be finite";
  if (Value like = getLike()) {
    auto l = llvm::cast<RankedTensorType>(like.getType());
    if (l.getRank() != y.getRank())
      return emitOpError() << "'like' must have the result's rank " << y.getRank() << ", got " << l;
    for (int64_t i = 0; i < y.getRank(); ++i)
      if (!compatible(l.getDimSize(i), y.getDimSize(i)))
        return emitOpError() << "'like' " << l << " does not fit the result " << y;
  } else if (!y.hasStaticShape()) {
    return emitOpError() << "a result with dynamic dims " << y << " needs a 'like' operand";
  }
  return success();
}

LogicalResult GlobalNormOp::verify() {
  if (getGrads().empty())
    return emitOpError() << "needs at least one gradient";
  return success();
}

LogicalResult AdamWOp::verify() {
  if (failed(expectSameShape(*this, "param", getParam(), "grad", getGrad())) ||
      failed(expectSameShape(*this, "param", getParam(), "exp_avg", getExpAvg())) ||
      failed(expectSameShape(*this, "param", getParam(), "exp_avg_sq", getExpAvgSq())) ||
      failed(expectSameShape(*this, "param", getParam(), "new_param", getNewParam())))
    return failure();
  if (getParam().getType() != getNewParam().getType())
    return emitOpError() << "new_param must have the type of param";
  if (!tensorOf(getParam()).hasStaticShape())
    return emitOpError() << "param must have a static shape";
  return success();
}
