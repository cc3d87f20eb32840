//===- TnlmOps.cpp - tnlm op verifiers ------------------------------------===//
//
// One verifier per op; each rule in an op's ODS description is checked here, with a message
// that names the operand and the dims involved.
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "dialect/TnlmVerify.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"

#include <cmath>

using namespace mlir;
using namespace mlir::tnlm;

#include "dialect/TnlmInterfaces.cpp.inc"

using namespace mlir::tnlm::verify;

LogicalResult EmbeddingOp::verify() {
  auto ids = tensorOf(getIds()), table = tensorOf(getTable()), res = tensorOf(getResult());
  if (failed(expectRank(*this, "ids", ids, 2)) || failed(expectRank(*this, "table", table, 2)) ||
      failed(expectRank(*this, "result", res, 3)))
    return failure();
  if (failed(expectSameElementType(*this, "table", table, "result", res)) ||
      failed(expectDim(*this, "batch", ids, 0, res, 0)) ||
      failed(expectDim(*this, "sequence", ids, 1, res, 1)) ||
      failed(expectDim(*this, "embedding width", table, 1, res, 2)))
    return failure();
  float scale = getScale().convertToFloat();
  if (!std::isfinite(scale) || scale <= 0.0f)
    return emitOpError() << "scale must be finite and positive, got " << scale;
  if (IntegerAttr padAttr = getPaddingIdxAttr()) {
    const int64_t pad = padAttr.getInt(), v = table.getDimSize(0);
    if (pad < 0 || (v != ShapedType::kDynamic && pad >= v))
      return emitOpError() << "padding_idx " << pad << " is outside the vocabulary [0, " << v
                           << ")";
  }
  return success();
}

LogicalResult SrmsNormOp::verify() {
  if (tensorOf(getInput()).getRank() < 1)
    return emitOpError() << "input must have rank >= 1";
  float eps = getEps().convertToFloat();
  if (!std::isfinite(eps) || eps < 0.0f)
    return emitOpError() << "eps must be finite and >= 0, got " << eps;
  return success();
}

LogicalResult LinearOp::verify() {
  auto x = tensorOf(getInput()), w = tensorOf(getWeight()), y = tensorOf(getResult());
  if (x.getRank() < 1)
    return emitOpError() << "input must have rank >= 1";
  if (failed(expectRank(*this, "weight", w, 2)) ||
      failed(expectSameElementType(*this, "input", x, "weight", w)) ||
      failed(expectSameElementType(*this, "input", x, "result", y)))
    return failure();
  if (y.getRank() != x.getRank())
    return emitOpError() << "result rank " << y.getRank() << " must equal input rank "
                         << x.getRank();
  int64_t r = x.getRank();
  if (failed(expectDim(*this, "input features vs weight dim 1", x, r - 1, w, 1)) ||
      failed(expectDim(*this, "output features vs weight dim 0", y, r - 1, w, 0)))
    return failure();
  for (int64_t i = 0; i + 1 < r; ++i)
    if (failed(expectDim(*this, "leading dim " + std::to_string(i), x, i, y, i)))
      return failure();
  return success();
}

LogicalResult SplitOp::verify() {
  auto x = tensorOf(getInput());
  size_t n = getResults().size();
  if (n < 2)
    return emitOpError() << "must produce at least 2 results, got " << n;
  auto first = tensorOf(getResults()[0]);
  for (Value r : getResults())
    if (r.getType() != first)
      return emitOpError() << "all results must have one type, got " << first << " and "
                           << r.getType();
  if (failed(expectSameElementType(*this, "input", x, "results", first)))
    return failure();
  if (x.getRank() < 1 || x.getRank() != first.getRank())
    return emitOpError() << "input and results must have the same rank >= 1";
  int64_t r = x.getRank();
  for (int64_t i = 0; i + 1 < r; ++i)
    if (failed(expectDim(*this, "leading dim " + std::to_string(i), x, i, first, i)))
      return failure();
  int64_t in = x.getDimSize(r - 1), part = first.getDimSize(r - 1);
  if (!ShapedType::isDynamic(in) && !ShapedType::isDynamic(part) &&
      in != part * static_cast<int64_t>(n))
    return emitOpError() << "last dim " << in << " must equal " << n << " x " << part;
  return success();
}

LogicalResult SplitHeadsOp::verify() {
  auto x = tensorOf(getInput()), y = tensorOf(getResult());
  if (failed(expectRank(*this, "input", x, 3)) || failed(expectRank(*this, "result", y, 4)) ||
      failed(expectSameElementType(*this, "input", x, "result", y)) ||
      failed(expectDim(*this, "batch", x, 0, y, 0)) ||
      failed(expectDim(*this, "sequence", x, 1, y, 1)))
    return failure();
  if (y.isDynamicDim(2) || y.isDynamicDim(3))
    return emitOpError() << "heads and head dim of the result must be static, got " << y;
  int64_t width = y.getDimSize(2) * y.getDimSize(3);
  if (!x.isDynamicDim(2) && x.getDimSize(2) != width)
    return emitOpError() << "width " << x.getDimSize(2)
                         << " must equal heads x head dim = " << y.getDimSize(2) << " x "
                         << y.getDimSize(3);
  return success();
}

LogicalResult MergeHeadsOp::verify() {
  auto x = tensorOf(getInput()), y = tensorOf(getResult());
  if (failed(expectRank(*this, "input", x, 4)) || failed(expectRank(*this, "result", y, 3)) ||
      failed(expectSameElementType(*this, "input", x, "result", y)) ||
      failed(expectDim(*this, "batch", x, 0, y, 0)) ||
      failed(expectDim(*this, "sequence", x, 1, y, 1)))
    return failure();
  if (x.isDynamicDim(2) || x.isDynamicDim(3))
    return emitOpError() << "heads and head dim of the input must be static, got " << x;
  int64_t width = x.getDimSize(2) * x.getDimSize(3);
  if (!y.isDynamicDim(2) && y.getDimSize(2) != width)
    return emitOpError() << "result width " << y.getDimSize(2)
                         << " must equal heads x head dim = " << width;
  return success();
}

LogicalResult LrpeOp::verify() {
  auto x = tensorOf(getInput()), th = tensorOf(getTheta()), y = tensorOf(getResult());
  if (failed(expectRank(*this, "input", x, 4)) || failed(expectRank(*this, "theta", th, 3)) ||
      failed(expectRank(*this, "result", y, 4)) ||
      failed(expectSameElementType(*this, "input", x, "theta", th)) ||
      failed(expectSameElementType(*this, "input", x, "result", y)))
    return failure();
  if (th.getDimSize(1) != 1)
    return emitOpError() << "theta must have shape [H, 1, dh], got " << th;
  if (failed(expectDim(*this, "heads of theta and input", th, 0, x, 2)) ||
      failed(expectDim(*this, "head dim of theta and input", th, 2, x, 3)) ||
      failed(expectDim(*this, "batch", x, 0, y, 0)) ||
      failed(expectDim(*this, "sequence", x, 1, y, 1)) ||
      failed(expectDim(*this, "heads", x, 2, y, 2)))
    return failure();
  int64_t dh = x.getDimSize(3);
  if (!ShapedType::isDynamic(dh) && !y.isDynamicDim(3) && y.getDimSize(3) != 2 * dh)
    return emitOpError() << "result feature dim must be 2 x " << dh << " = " << 2 * dh << ", got "
                         << y.getDimSize(3);
  return success();
}

LogicalResult DecayLinearAttentionOp::verify() {
  auto q = tensorOf(getQ()), k = tensorOf(getK()), v = tensorOf(getV()), o = tensorOf(getResult());
  if (failed(expectRank(*this, "q", q, 4)) || failed(expectRank(*this, "k", k, 4)) ||
      failed(expectRank(*this, "v", v, 4)) || failed(expectRank(*this, "result", o, 4)))
    return failure();
  if (failed(expectSameElementType(*this, "q", q, "k", k)) ||
      failed(expectSameElementType(*this, "q", q, "v", v)) ||
      failed(expectSameElementType(*this, "v", v, "result", o)))
    return failure();
  static const char *names[] = {"batch", "sequence", "heads"};
  for (int64_t i = 0; i < 3; ++i)
    if (failed(expectDim(*this, std::string(names[i]) + " of q and k", q, i, k, i)) ||
        failed(expectDim(*this, std::string(names[i]) + " of q and v", q, i, v, i)) ||
        failed(expectDim(*this, std::string(names[i]) + " of v and result", v, i, o, i)))
      return failure();
  if (failed(expectDim(*this, "feature dim dk of q and k", q, 3, k, 3)) ||
      failed(expectDim(*this, "feature dim dv of v and result", v, 3, o, 3)))
    return failure();
  ArrayRef<float> slopes = getSlopes();
  int64_t heads = q.getDimSize(2);
  if (ShapedType::isDynamic(heads))
    return emitOpError() << "the head count must be static";
  if (static_cast<int64_t>(slopes.size()) != heads)
    return emitOpError() << "has " << heads << " heads but " << slopes.size() << " decay slopes";
  for (auto [h, s] : llvm::enumerate(slopes))
    if (!std::isfinite(s) || s < 0.0f)
      return emitOpError() << "decay slope of head " << h << " must be finite and >= 0, got " << s;
  return success();
}

LogicalResult SgluOp::verify() {
  auto x = tensorOf(getInput()), w1 = tensorOf(getW1()), w2 = tensorOf(getW2()),
       w3 = tensorOf(getW3()), y = tensorOf(getResult());
  if (x.getRank() < 1)
    return emitOpError() << "input must have rank >= 1";
  if (x != y)
    return emitOpError() << "result type " << y << " must equal input type " << x;
  if (failed(expectRank(*this, "w1", w1, 2)) || failed(expectRank(*this, "w2", w2, 2)) ||
      failed(expectRank(*this, "w3", w3, 2)) ||
      failed(expectSameElementType(*this, "input", x, "w1", w1)) ||
      failed(expectSameElementType(*this, "input", x, "w2", w2)) ||
      failed(expectSameElementType(*this, "input", x, "w3", w3)))
    return failure();
  int64_t r = x.getRank();
  if (w1.getShape() != w2.getShape())
    return emitOpError() << "w1 and w2 must have one shape, got " << w1 << " and " << w2;
  if (failed(expectDim(*this, "input width vs w1 dim 1", x, r - 1, w1, 1)) ||
      failed(expectDim(*this, "w3 dim 0 vs input width", w3, 0, x, r - 1)) ||
      failed(expectDim(*this, "w3 dim 1 vs w1 dim 0 (glu width)", w3, 1, w1, 0)))
    return failure();
  return success();
}

LogicalResult LmHeadOp::verify() {
  auto x = tensorOf(getInput()), w = tensorOf(getWeight()), y = tensorOf(getResult());
  if (failed(expectRank(*this, "input", x, 3)) || failed(expectRank(*this, "weight", w, 2)) ||
      failed(expectRank(*this, "result", y, 3)) ||
      failed(expectSameElementType(*this, "input", x, "weight", w)))
    return failure();
  if (failed(expectDim(*this, "batch", x, 0, y, 0)) ||
      failed(expectDim(*this, "sequence", x, 1, y, 1)) ||
      failed(expectDim(*this, "model width vs weight dim 1", x, 2, w, 1)) ||
      failed(expectDim(*this, "vocabulary vs weight dim 0", y, 2, w, 0)))
    return failure();
  return success();
}

LogicalResult CrossEntropyOp::verify() {
  auto logits = tensorOf(getLogits()), labels = tensorOf(getLabels());
  if (failed(expectRank(*this, "logits", logits, 3)) ||
      failed(expectRank(*this, "labels", labels, 2)))
    return failure();
  if (failed(expectDim(*this, "batch", logits, 0, labels, 0)) ||
      failed(expectDim(*this, "sequence", logits, 1, labels, 1)))
    return failure();
  return success();
}

LogicalResult LightningAttentionOp::verify() {
  auto x = tensorOf(getQkvu()), y = tensorOf(getResult());
  if (failed(expectRank(*this, "qkvu", x, 3)) || failed(expectRank(*this, "result", y, 3)) ||
      failed(expectSameElementType(*this, "qkvu", x, "result", y)) ||
      failed(expectDim(*this, "batch", x, 0, y, 0)) ||
      failed(expectDim(*this, "sequence", x, 1, y, 1)))
    return failure();
  int64_t heads = getHeads(), dh = getHeadDim();
  if (heads <= 0 || dh <= 0)
    return emitOpError() << "heads and head_dim must be positive, got " << heads << " and " << dh;
  int64_t width = heads * dh;
  if (y.isDynamicDim(2) || y.getDimSize(2) != width)
    return emitOpError() << "result width must be heads x head_dim = " << width << ", got "
                         << dimStr(y.getDimSize(2));
  if (!x.isDynamicDim(2) && x.getDimSize(2) != 4 * width)
    return emitOpError() << "qkvu width must be 4 x " << width << " = " << 4 * width
                         << " (q, k, v, u), got " << x.getDimSize(2);
  ArrayRef<float> slopes = getSlopes();
  if (static_cast<int64_t>(slopes.size()) != heads)
    return emitOpError() << "has " << heads << " heads but " << slopes.size() << " decay slopes";
  for (auto [h, s] : llvm::enumerate(slopes))
    if (!std::isfinite(s) || s < 0.0f)
      return emitOpError() << "decay slope of head " << h << " must be finite and >= 0, got " << s;
  if (getBlockSizeAttr().getInt() < 0)
    return emitOpError() << "block_size must be >= 0 (0: not chosen yet), got "
                         << getBlockSizeAttr().getInt();
  if (getActivation() != "silu" && getActivation() != "none")
    return emitOpError() << "activation must be \"silu\" or \"none\", got \"" << getActivation()
                         << "\"";
  float eps = getEps().convertToFloat();
  if (!std::isfinite(eps) || eps < 0.0f)
    return emitOpError() << "eps must be finite and >= 0, got " << eps;
  if (Value theta = getTheta()) {
    auto th = tensorOf(theta);
    if (failed(expectSameElementType(*this, "qkvu", x, "theta", th)))
      return failure();
    if (th.getRank() != 3 || th.getDimSize(0) != heads || th.getDimSize(1) != 1 ||
        th.getDimSize(2) != dh)
      return emitOpError() << "theta must have shape [" << heads << ", 1, " << dh << "], got "
                           << th;
  } else if (getOffset()) {
    return emitOpError() << "a position offset needs LRPE (a theta operand)";
  }
  return success();
}

LogicalResult AddSrmsNormOp::verify() {
  if (tensorOf(getLhs()).getRank() < 1)
    return emitOpError() << "operands must have rank >= 1";
  float eps = getEps().convertToFloat();
  if (!std::isfinite(eps) || eps < 0.0f)
    return emitOpError() << "eps must be finite and >= 0, got " << eps;
  return success();
}

LogicalResult GatedLinearOp::verify() {
  auto x = tensorOf(getInput()), w1 = tensorOf(getW1()), w2 = tensorOf(getW2()),
       y = tensorOf(getResult());
  if (x.getRank() < 1)
    return emitOpError() << "input must have rank >= 1";
  if (failed(expectRank(*this, "w1", w1, 2)) || failed(expectRank(*this, "w2", w2, 2)) ||
      failed(expectSameElementType(*this, "input", x, "w1", w1)) ||
      failed(expectSameElementType(*this, "input", x, "w2", w2)) ||
      failed(expectSameElementType(*this, "input", x, "result", y)))
    return failure();
  if (w1.getShape() != w2.getShape())
    return emitOpError() << "w1 and w2 must have one shape, got " << w1 << " and " << w2;
  if (y.getRank() != x.getRank())
    return emitOpError() << "result rank " << y.getRank() << " must equal input rank "
                         << x.getRank();
  int64_t r = x.getRank();
  if (failed(expectDim(*this, "input width vs w1 dim 1", x, r - 1, w1, 1)) ||
      failed(expectDim(*this, "result width vs w1 dim 0 (glu width)", y, r - 1, w1, 0)))
    return failure();
  for (int64_t i = 0; i + 1 < r; ++i)
    if (failed(expectDim(*this, "leading dim " + std::to_string(i), x, i, y, i)))
      return failure();
  return success();
}

#define GET_OP_CLASSES
#include "dialect/TnlmOps.cpp.inc"
