//===- Summary.cpp - parameters, bytes and FLOPs of a model ---------------===//
#include "models/Summary.h"

#include "dialect/TnlmOps.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/Interfaces/FunctionInterfaces.h"
#include "passes/ParamTable.h"
#include "llvm/Support/FormatVariadic.h"

namespace mlir::tnlm {

std::string withThousands(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0)
      out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

namespace {

// Component of a Hugging Face parameter name (docs/model.md "Checkpoint layout").
std::string componentOf(llvm::StringRef name) {
  if (name == "model.embed_tokens.weight")
    return "embedding";
  if (name == "lm_head.weight")
    return "lm head";
  if (name.contains(".token_mixer.lrpe."))
    return "lrpe theta";
  if (name.contains(".token_mixer."))
    return "token mixer (qkvu, out)";
  if (name.contains(".channel_mixer."))
    return "channel mixer (sglu)";
  return "other";
}

int64_t elements(Value v) { return llvm::cast<RankedTensorType>(v.getType()).getNumElements(); }

} // namespace

FailureOr<ModelSummary> summarizeModel(ModuleOp module, StringRef function) {
  Operation *sym = module.lookupSymbol(function);
  auto fn = llvm::dyn_cast_or_null<FunctionOpInterface>(sym);
  if (!fn)
    return module.emitError() << "no function @" << function << " to summarize";
  ModelSummary s;
  s.function = function.str();
  for (const FunctionParams &fp : collectParams(module)) {
    if (fp.function != function)
      continue;
    std::vector<std::string> order = {"embedding",  "token mixer (qkvu, out)",
                                      "lrpe theta", "channel mixer (sglu)",
                                      "lm head",    "other"};
    std::map<std::string, int64_t> counts;
    for (const ParamInfo &p : fp.params) {
      counts[componentOf(p.name)] += p.numElements;
      s.bytesPerDType[p.dtype] += p.numElements * p.bytesPerElement;
      s.totalParams += p.numElements;
    }
    for (const std::string &name : order)
      if (counts.count(name))
        s.components.emplace_back(name, counts[name]);
    s.tiedLmHead = counts.count("embedding") && !counts.count("lm head");
  }
  fn->walk([&](Operation *op) {
    if (auto lin = llvm::dyn_cast<LinearOp>(op))
      s.projectionFlopsPerToken += 2 * elements(lin.getWeight());
    else if (auto sg = llvm::dyn_cast<SgluOp>(op))
      s.projectionFlopsPerToken +=
          2 * (elements(sg.getW1()) + elements(sg.getW2()) + elements(sg.getW3()));
    else if (auto gl = llvm::dyn_cast<GatedLinearOp>(op))
      s.projectionFlopsPerToken += 2 * (elements(gl.getW1()) + elements(gl.getW2()));
    else if (auto la = llvm::dyn_cast<LightningAttentionOp>(op))
      s.attentionFlopsPerToken += 4 * la.getHeads() * la.getKeyDim() * la.getHeadDim();
    else if (auto head = llvm::dyn_cast<LmHeadOp>(op))
      s.projectionFlopsPerToken += 2 * elements(head.getWeight());
    else if (auto att = llvm::dyn_cast<DecayLinearAttentionOp>(op)) {
      auto q = llvm::cast<RankedTensorType>(att.getQ().getType());
      auto v = llvm::cast<RankedTensorType>(att.getV().getType());
      // S += kᵀv and o = q·S: two dk×dv multiply-adds per head per token.
      s.attentionFlopsPerToken += 4 * q.getDimSize(2) * q.getDimSize(3) * v.getDimSize(3);
    }
  });
  return s;
}

void printSummary(const ModelSummary &s, ModuleOp module, llvm::raw_ostream &os) {
  if (auto cfg = module->getAttrOfType<DictionaryAttr>(TnlmDialect::getConfigAttrName())) {
    auto i = [&](const char *n) {
      auto a = cfg.getAs<IntegerAttr>(n);
      return a ? std::to_string(a.getInt()) : std::string("?");
    };
    std::string name = "?";
    if (auto n = cfg.getAs<StringAttr>("name"))
      name = n.getValue().str();
    std::string lrpe;
    if (auto flags = cfg.getAs<DenseI64ArrayAttr>("linear_use_lrpe_list"))
      for (auto [l, f] : llvm::enumerate(flags.asArrayRef()))
        if (f)
          lrpe += (lrpe.empty() ? "" : ",") + std::to_string(l);
    auto noScale = cfg.getAs<BoolAttr>("no_scale_embedding");
    os << "model " << name
       << (cfg.get("reconstructed") ? " (shape reconstructed, not released)" : "") << "\n";
    os << "  d=" << i("decoder_embed_dim") << " L=" << i("decoder_layers")
       << " H=" << i("decoder_attention_heads") << " D=" << i("hidden_dim") << " F=" << i("glu_dim")
       << " V=" << i("vocab_size") << "\n";
    os << "  lrpe layers: " << (lrpe.empty() ? "none" : lrpe)
       << "  embedding scale: " << (noScale && noScale.getValue() ? "off" : "sqrt(d)")
       << "  lm head: " << (s.tiedLmHead ? "tied to embedding" : "separate") << "\n";
  }
  os << "parameters (@" << s.function << ")\n";
  for (const auto &[name, count] : s.components)
    os << llvm::formatv("  {0,-26} {1,18}\n", name, withThousands(count));
  if (s.tiedLmHead)
    os << llvm::formatv("  {0,-26} {1,18}\n", "lm head", "tied");
  os << llvm::formatv("  {0,-26} {1,18}\n", "total", withThousands(s.totalParams));
  os << "weight bytes\n";
  for (const auto &[dtype, bytes] : s.bytesPerDType)
    os << llvm::formatv("  {0,-26} {1,18}  ({2:F2} GiB)\n", dtype, withThousands(bytes),
                        static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  os << "forward FLOPs per token\n";
  os << llvm::formatv("  {0,-26} {1,18}\n", "projections",
                      withThousands(s.projectionFlopsPerToken));
  os << llvm::formatv("  {0,-26} {1,18}\n", "attention (recurrent form)",
                      withThousands(s.attentionFlopsPerToken));
  os << llvm::formatv("  {0,-26} {1,18}\n", "total", withThousands(s.flopsPerToken()));
}

} // namespace mlir::tnlm
