//===- Import.cpp - ModelConfig → model-level tnlm IR ---------------------===//
//
// Builds the forward pass of docs/model.md op by op:
//   x0 = scale · E[ids]
//   per layer: h = x + TokenMixer(SRMSNorm(x)); x = h + SGLU(SRMSNorm(h))
//   logits = SRMSNorm(x) · Wlmᵀ
// and @loss = mean cross-entropy(@forward(ids), labels).
//
//===----------------------------------------------------------------------===//
#include "models/Import.h"

#include "dialect/TnlmOps.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Verifier.h"

namespace mlir::tnlm {

namespace {

Type elementType(MLIRContext *ctx, ParamDType t) {
  Builder b(ctx);
  switch (t) {
  case ParamDType::F32:
    return b.getF32Type();
  case ParamDType::BF16:
    return b.getBF16Type();
  case ParamDType::F16:
    return b.getF16Type();
  }
  return b.getF32Type();
}

struct Param {
  std::string name;
  RankedTensorType type;
};

// Parameters in Hugging Face state-dict order (docs/model.md "Checkpoint layout").
std::vector<Param> parameterList(const ModelConfig &c, Type et) {
  auto t = [&](std::initializer_list<int64_t> shape) { return RankedTensorType::get(shape, et); };
  std::vector<Param> ps;
  ps.push_back({"model.embed_tokens.weight", t({c.vocabSize, c.embedDim})});
  for (int64_t l = 0; l < c.layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    ps.push_back({p + "token_mixer.qkvu_proj.weight", t({4 * c.hiddenDim, c.embedDim})});
    ps.push_back({p + "token_mixer.out_proj.weight", t({c.embedDim, c.hiddenDim})});
    if (c.hasLrpe(l))
      ps.push_back({p + "token_mixer.lrpe.theta", t({c.heads, 1, c.headDim()})});
    ps.push_back({p + "channel_mixer.l1.weight", t({c.gluDim, c.embedDim})});
    ps.push_back({p + "channel_mixer.l2.weight", t({c.gluDim, c.embedDim})});
    ps.push_back({p + "channel_mixer.l3.weight", t({c.embedDim, c.gluDim})});
  }
  if (!c.tieWordEmbeddings)
    ps.push_back({"lm_head.weight", t({c.vocabSize, c.embedDim})});
  return ps;
}

DictionaryAttr configAttr(const ModelConfig &c, Builder &b) {
  SmallVector<NamedAttribute> fields;
  auto i = [&](const char *n, int64_t v) {
    fields.push_back(b.getNamedAttr(n, b.getI64IntegerAttr(v)));
  };
  fields.push_back(b.getNamedAttr("name", b.getStringAttr(c.name)));
  i("vocab_size", c.vocabSize);
  i("decoder_embed_dim", c.embedDim);
  i("decoder_layers", c.layers);
  i("decoder_attention_heads", c.heads);
  i("hidden_dim", c.hiddenDim);
  i("glu_dim", c.gluDim);
  fields.push_back(b.getNamedAttr("no_scale_embedding", b.getBoolAttr(!c.scaleEmbedding)));
  fields.push_back(b.getNamedAttr("tie_word_embeddings", b.getBoolAttr(c.tieWordEmbeddings)));
  SmallVector<int64_t> lrpe;
  for (bool f : c.lrpe)
    lrpe.push_back(f ? 1 : 0);
  fields.push_back(b.getNamedAttr("linear_use_lrpe_list", b.getDenseI64ArrayAttr(lrpe)));
  fields.push_back(b.getNamedAttr(
      "linear_act_fun", b.getStringAttr(c.activation == Activation::Silu ? "silu" : "none")));
  fields.push_back(b.getNamedAttr("norm_type", b.getStringAttr("simplermsnorm")));
  fields.push_back(b.getNamedAttr("dtype", b.getStringAttr(dtypeName(c.dtype))));
  i("pad_token_id", c.padTokenId);
  i("bos_token_id", c.bosTokenId);
  i("eos_token_id", c.eosTokenId);
  if (c.reconstructed)
    fields.push_back(b.getNamedAttr("reconstructed", b.getUnitAttr()));
  return b.getDictionaryAttr(fields);
}

class ModelBuilder {
public:
  ModelBuilder(const ModelConfig &c, MLIRContext *ctx, Location fileLoc)
      : c(c), ctx(ctx), b(ctx), fileLoc(fileLoc), et(elementType(ctx, c.dtype)) {}

  OwningOpRef<ModuleOp> build() {
    auto module = ModuleOp::create(fileLoc);
    module->setAttr(TnlmDialect::getConfigAttrName(), configAttr(c, b));
    b.setInsertionPointToEnd(module.getBody());
    std::vector<Param> params = parameterList(c, et);
    func::FuncOp forward = buildForward(params);
    buildLoss(params, forward);
    return module;
  }

private:
  const ModelConfig &c;
  MLIRContext *ctx;
  OpBuilder b;
  Location fileLoc;
  Type et;
  llvm::StringMap<Value> paramValues;

  Location loc(const std::string &name) { return NameLoc::get(b.getStringAttr(name), fileLoc); }

  RankedTensorType act(std::initializer_list<int64_t> tail) {
    SmallVector<int64_t> shape = {ShapedType::kDynamic, ShapedType::kDynamic};
    shape.append(tail.begin(), tail.end());
    return RankedTensorType::get(shape, et);
  }

  Value param(const std::string &name) { return paramValues.lookup(name); }

  func::FuncOp makeFunc(StringRef name, ArrayRef<Type> leading, ArrayRef<Param> params,
                        Type result) {
    SmallVector<Type> inputs(leading.begin(), leading.end());
    for (const Param &p : params)
      inputs.push_back(p.type);
    auto fn = func::FuncOp::create(b, fileLoc, name, b.getFunctionType(inputs, {result}));
    for (auto [i, p] : llvm::enumerate(params))
      fn.setArgAttr(leading.size() + i, TnlmDialect::getParamAttrName(), b.getStringAttr(p.name));
    return fn;
  }

  func::FuncOp buildForward(ArrayRef<Param> params) {
    auto idsType =
        RankedTensorType::get({ShapedType::kDynamic, ShapedType::kDynamic}, b.getI32Type());
    auto logitsType = RankedTensorType::get(
        {ShapedType::kDynamic, ShapedType::kDynamic, c.vocabSize}, b.getF32Type());
    func::FuncOp fn = makeFunc("forward", {idsType}, params, logitsType);
    Block *entry = fn.addEntryBlock();
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(entry);
    for (auto [i, p] : llvm::enumerate(params))
      paramValues[p.name] = entry->getArgument(1 + i);

    Value embed = param("model.embed_tokens.weight");
    // pad_token_id as the reference's nn.Embedding(padding_idx=pad_token_id).
    Value x =
        EmbeddingOp::create(b, loc("model.embed_tokens"), act({c.embedDim}), entry->getArgument(0),
                            embed, b.getF32FloatAttr(c.embedScale()),
                            c.padTokenId >= 0 ? b.getI64IntegerAttr(c.padTokenId) : IntegerAttr());
    for (int64_t l = 0; l < c.layers; ++l)
      x = buildLayer(l, x);
    Value n = SrmsNormOp::create(b, loc("model.final_norm"), x, b.getF32FloatAttr(c.normEps));
    Value head = c.tieWordEmbeddings ? embed : param("lm_head.weight");
    Value logits = LmHeadOp::create(b, loc("lm_head"), logitsType, n, head);
    func::ReturnOp::create(b, fileLoc, logits);
    return fn;
  }

  Value norm(const std::string &where, Value x) {
    return SrmsNormOp::create(b, loc(where), x, b.getF32FloatAttr(c.normEps));
  }

  Value buildLayer(int64_t l, Value x) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int64_t D = c.hiddenDim, H = c.heads, dh = c.headDim();

    // Token mixer: gated linear attention with decay (docs/model.md "TokenMixer").
    Location tm = loc(p + "token_mixer");
    Value n1 = norm(p + "token_norm", x);
    Value qkvu = LinearOp::create(b, loc(p + "token_mixer.qkvu_proj"), act({4 * D}), n1,
                                  param(p + "token_mixer.qkvu_proj.weight"));
    auto split = SplitOp::create(b, tm, SmallVector<Type>(4, act({D})), qkvu);
    Value q = split.getResult(0), k = split.getResult(1), v = split.getResult(2),
          u = split.getResult(3);
    if (c.activation == Activation::Silu) {
      q = SiluOp::create(b, tm, q);
      k = SiluOp::create(b, tm, k);
    }
    q = SplitHeadsOp::create(b, tm, act({H, dh}), q);
    k = SplitHeadsOp::create(b, tm, act({H, dh}), k);
    v = SplitHeadsOp::create(b, tm, act({H, dh}), v);
    int64_t dk = dh;
    if (c.hasLrpe(l)) {
      Value theta = param(p + "token_mixer.lrpe.theta");
      Location lr = loc(p + "token_mixer.lrpe");
      q = LrpeOp::create(b, lr, act({H, 2 * dh}), q, theta, Value());
      k = LrpeOp::create(b, lr, act({H, 2 * dh}), k, theta, Value());
      dk = 2 * dh;
    }
    (void)dk;
    Value o =
        DecayLinearAttentionOp::create(b, loc(p + "token_mixer.attention"), act({H, dh}), q, k, v,
                                       b.getDenseF32ArrayAttr(layerDecaySlopes(H, l, c.layers)));
    o = MergeHeadsOp::create(b, tm, act({D}), o);
    o = norm(p + "token_mixer.norm", o);
    o = MulOp::create(b, tm, u, o);
    o = LinearOp::create(b, loc(p + "token_mixer.out_proj"), act({c.embedDim}), o,
                         param(p + "token_mixer.out_proj.weight"));
    Value h = AddOp::create(b, loc(p + "residual"), x, o);

    // Channel mixer: SGLU.
    Value n2 = norm(p + "channel_norm", h);
    Value m = SgluOp::create(
        b, loc(p + "channel_mixer"), act({c.embedDim}), n2, param(p + "channel_mixer.l1.weight"),
        param(p + "channel_mixer.l2.weight"), param(p + "channel_mixer.l3.weight"));
    return AddOp::create(b, loc(p + "residual"), h, m);
  }

  void buildLoss(ArrayRef<Param> params, func::FuncOp forward) {
    auto idsType =
        RankedTensorType::get({ShapedType::kDynamic, ShapedType::kDynamic}, b.getI32Type());
    auto lossType = RankedTensorType::get({}, b.getF32Type());
    func::FuncOp fn = makeFunc("loss", {idsType, idsType}, params, lossType);
    Block *entry = fn.addEntryBlock();
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(entry);
    SmallVector<Value> args = {entry->getArgument(0)};
    for (size_t i = 0; i < params.size(); ++i)
      args.push_back(entry->getArgument(2 + i));
    auto call = func::CallOp::create(b, fileLoc, forward, args);
    Value loss = CrossEntropyOp::create(b, loc("loss"), lossType, call.getResult(0),
                                        entry->getArgument(1), b.getI64IntegerAttr(-100));
    func::ReturnOp::create(b, fileLoc, loss);
  }
};

} // namespace

OwningOpRef<ModuleOp> importModel(const ModelConfig &config, MLIRContext *context,
                                  const std::string &sourcePath) {
  context->loadDialect<TnlmDialect, func::FuncDialect>();
  Location fileLoc = FileLineColLoc::get(context, sourcePath, 1, 1);
  OwningOpRef<ModuleOp> module = ModelBuilder(config, context, fileLoc).build();
  if (failed(verify(*module)))
    return nullptr;
  return module;
}

} // namespace mlir::tnlm
