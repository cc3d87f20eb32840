//===- TnlmVjp.cpp - the vector-Jacobian products of the tnlm ops ---------===//
//
// VjpOpInterface for every differentiable op: the backward as tnlm ops (TnlmGradOps.td),
// following the gradients table of docs/model.md ("Training"). Forward values the backward
// needs are read where the forward computed them; tnlm-recompute may later clone their
// producers next to the backward to shorten their lifetimes.
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"

#include "mlir/IR/Builders.h"

using namespace mlir;
using namespace mlir::tnlm;

namespace {

RankedTensorType f32Like(Value v) {
  auto t = llvm::cast<RankedTensorType>(v.getType());
  return RankedTensorType::get(t.getShape(), Float32Type::get(v.getContext()));
}

// A zero cotangent shaped like `v` (a value with dynamic dims takes them from v itself).
Value zerosLike(OpBuilder &b, Location loc, Value v) {
  auto t = llvm::cast<RankedTensorType>(v.getType());
  return FillOp::create(b, loc, t, t.hasStaticShape() ? Value() : v, b.getF32FloatAttr(0.0f));
}

// (dx, dW) of y = x·Wᵀ.
SmallVector<Value> linearVjp(OpBuilder &b, Location loc, Value x, Value w, Value dy) {
  Value dx = LinearInputGradOp::create(b, loc, x.getType(), dy, w);
  Value dw = LinearWeightGradOp::create(b, loc, f32Like(w), dy, x);
  return {dx, dw};
}

} // namespace

SmallVector<Value> EmbeddingOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  Value dE = EmbeddingGradOp::create(b, getLoc(), f32Like(getTable()), getIds(), grads[0],
                                     getScaleAttr(), getPaddingIdxAttr());
  return {Value(), dE};
}

SmallVector<Value> SrmsNormOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  return {SrmsNormGradOp::create(b, getLoc(), getInput().getType(), getInput(), grads[0],
                                 getEpsAttr())};
}

SmallVector<Value> LinearOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  return linearVjp(b, getLoc(), getInput(), getWeight(), grads[0]);
}

SmallVector<Value> LmHeadOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  return linearVjp(b, getLoc(), getInput(), getWeight(), grads[0]);
}

SmallVector<Value> SiluOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  return {SiluGradOp::create(b, getLoc(), getInput().getType(), getInput(), grads[0])};
}

SmallVector<Value> MulOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  Value dl = MulOp::create(b, getLoc(), grads[0], getRhs());
  Value dr = MulOp::create(b, getLoc(), grads[0], getLhs());
  return {dl, dr};
}

SmallVector<Value> AddOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  return {grads[0], grads[0]};
}

SmallVector<Value> SplitOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  SmallVector<Value> parts;
  for (auto [r, g] : llvm::zip(getResults(), grads))
    parts.push_back(g ? g : zerosLike(b, getLoc(), r));
  return {ConcatOp::create(b, getLoc(), getInput().getType(), parts)};
}

SmallVector<Value> SplitHeadsOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  return {MergeHeadsOp::create(b, getLoc(), getInput().getType(), grads[0])};
}

SmallVector<Value> MergeHeadsOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  return {SplitHeadsOp::create(b, getLoc(), getInput().getType(), grads[0])};
}

SmallVector<Value> LrpeOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  auto g = LrpeGradOp::create(b, getLoc(), getInput().getType(), f32Like(getTheta()), getInput(),
                              getTheta(), grads[0], getOffset());
  SmallVector<Value> result = {g.getInputGrad(), g.getThetaGrad()};
  if (getOffset())
    result.push_back(Value());
  return result;
}

SmallVector<Value> DecayLinearAttentionOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  auto g = DecayLinearAttentionGradOp::create(b, getLoc(), getQ().getType(), getK().getType(),
                                              getV().getType(), getQ(), getK(), getV(), grads[0],
                                              getSlopesAttr());
  return {g.getQGrad(), g.getKGrad(), g.getVGrad()};
}

SmallVector<Value> LightningAttentionOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  Type thetaGrad = getTheta() ? Type(f32Like(getTheta())) : Type();
  auto g = LightningAttentionGradOp::create(b, getLoc(), getQkvu().getType(), thetaGrad, getQkvu(),
                                            getTheta(), grads[0], getOffset(), getHeadsAttr(),
                                            getHeadDimAttr(), getBlockSizeAttr(), getSlopesAttr(),
                                            getActivationAttr(), getEpsAttr());
  SmallVector<Value> result = {g.getQkvuGrad()};
  if (getTheta())
    result.push_back(g.getThetaGrad());
  if (getOffset())
    result.push_back(Value());
  return result;
}

SmallVector<Value> AddSrmsNormOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  Value dsum = grads[0], dy = grads[1];
  Value g = dy ? Value(AddSrmsNormGradOp::create(b, getLoc(), getSum().getType(), getSum(), dy,
                                                 dsum, getEpsAttr()))
               : dsum;
  return {g, g};
}

SmallVector<Value> GatedLinearOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  auto g = GatedLinearGradOp::create(b, getLoc(), getInput().getType(), f32Like(getW1()),
                                     f32Like(getW2()), getInput(), getW1(), getW2(), grads[0]);
  return {g.getInputGrad(), g.getW1Grad(), g.getW2Grad()};
}

SmallVector<Value> SgluOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  // y = h·W3ᵀ with h = (x·W1ᵀ) ⊙ (x·W2ᵀ) recomputed by one gated projection.
  Location loc = getLoc();
  auto w1 = llvm::cast<RankedTensorType>(getW1().getType());
  auto x = llvm::cast<RankedTensorType>(getInput().getType());
  SmallVector<int64_t> hShape(x.getShape().drop_back());
  hShape.push_back(w1.getDimSize(0));
  auto hType = RankedTensorType::get(hShape, x.getElementType());
  Value h = GatedLinearOp::create(b, loc, hType, getInput(), getW1(), getW2());
  SmallVector<Value> d3 = linearVjp(b, loc, h, getW3(), grads[0]);
  auto g = GatedLinearGradOp::create(b, loc, getInput().getType(), f32Like(getW1()),
                                     f32Like(getW2()), getInput(), getW1(), getW2(), d3[0]);
  return {g.getInputGrad(), g.getW1Grad(), g.getW2Grad(), d3[1]};
}

SmallVector<Value> CrossEntropyOp::buildVjp(OpBuilder &b, ArrayRef<Value> grads) {
  Value dz = CrossEntropyGradOp::create(b, getLoc(), getLogits().getType(), getLogits(),
                                        getLabels(), grads[0], getIgnoreIndexAttr());
  return {dz, Value()};
}
