//===- ArtifactWriter.cpp - kernel plan → model.tnlm ----------------------===//
#include "codegen/ArtifactWriter.h"

#include "dialect/TnlmDialect.h"
#include "runtime/schema/tnlm_generated.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace fb = flatbuffers;
namespace sc = tnlm::schema;

namespace mlir::tnlm {

namespace {

sc::DType dtypeOf(const std::string &name) {
  if (name == "bf16")
    return sc::DType_BF16;
  if (name == "f16")
    return sc::DType_F16;
  if (name == "i32")
    return sc::DType_I32;
  return sc::DType_F32;
}

sc::KernelKind kindOf(KernelKind k) {
  switch (k) {
  case KernelKind::Embedding:
    return sc::KernelKind_Embedding;
  case KernelKind::SrmsNorm:
    return sc::KernelKind_SrmsNorm;
  case KernelKind::Linear:
    return sc::KernelKind_Linear;
  case KernelKind::Silu:
    return sc::KernelKind_Silu;
  case KernelKind::Mul:
    return sc::KernelKind_Mul;
  case KernelKind::Add:
    return sc::KernelKind_Add;
  case KernelKind::Lrpe:
    return sc::KernelKind_Lrpe;
  case KernelKind::DecayAttention:
    return sc::KernelKind_DecayAttention;
  case KernelKind::CrossEntropy:
    return sc::KernelKind_CrossEntropy;
  case KernelKind::LightningAttention:
    return sc::KernelKind_LightningAttention;
  case KernelKind::AddSrmsNorm:
    return sc::KernelKind_AddSrmsNorm;
  case KernelKind::GatedLinear:
    return sc::KernelKind_GatedLinear;
  case KernelKind::LinearGradInput:
    return sc::KernelKind_LinearGradInput;
  case KernelKind::LinearGradWeight:
    return sc::KernelKind_LinearGradWeight;
  case KernelKind::SrmsNormGrad:
    return sc::KernelKind_SrmsNormGrad;
  case KernelKind::AddSrmsNormGrad:
    return sc::KernelKind_AddSrmsNormGrad;
  case KernelKind::SiluGrad:
    return sc::KernelKind_SiluGrad;
  case KernelKind::LrpeGrad:
    return sc::KernelKind_LrpeGrad;
  case KernelKind::DecayAttentionGrad:
    return sc::KernelKind_DecayAttentionGrad;
  case KernelKind::LightningAttentionGrad:
    return sc::KernelKind_LightningAttentionGrad;
  case KernelKind::GatedLinearGrad:
    return sc::KernelKind_GatedLinearGrad;
  case KernelKind::EmbeddingGrad:
    return sc::KernelKind_EmbeddingGrad;
  case KernelKind::CrossEntropyGrad:
    return sc::KernelKind_CrossEntropyGrad;
  case KernelKind::Concat:
    return sc::KernelKind_Concat;
  case KernelKind::Fill:
    return sc::KernelKind_Fill;
  case KernelKind::GlobalNorm:
    return sc::KernelKind_GlobalNorm;
  case KernelKind::LrSchedule:
    return sc::KernelKind_LrSchedule;
  case KernelKind::ClipScale:
    return sc::KernelKind_ClipScale;
  case KernelKind::AdamW:
    return sc::KernelKind_AdamW;
  case KernelKind::Increment:
    return sc::KernelKind_Increment;
  case KernelKind::LightningPrefill:
    return sc::KernelKind_LightningPrefill;
  case KernelKind::LightningDecode:
    return sc::KernelKind_LightningDecode;
  case KernelKind::GatherLast:
    return sc::KernelKind_GatherLast;
  case KernelKind::LmHeadLoss:
    return sc::KernelKind_LmHeadLoss;
  }
  return sc::KernelKind_Linear;
}

fb::Offset<sc::ModelConfig> writeConfig(fb::FlatBufferBuilder &b, ModuleOp module) {
  auto cfg = module->getAttrOfType<DictionaryAttr>(TnlmDialect::getConfigAttrName());
  auto i = [&](const char *n, int64_t dflt) {
    auto a = cfg ? cfg.getAs<IntegerAttr>(n) : IntegerAttr();
    return a ? a.getInt() : dflt;
  };
  auto flag = [&](const char *n, bool dflt) {
    auto a = cfg ? cfg.getAs<BoolAttr>(n) : BoolAttr();
    return a ? a.getValue() : dflt;
  };
  std::vector<uint8_t> lrpe;
  if (cfg)
    if (auto flags = cfg.getAs<DenseI64ArrayAttr>("linear_use_lrpe_list"))
      for (int64_t f : flags.asArrayRef())
        lrpe.push_back(f != 0);
  std::string name = "model";
  bool silu = true;
  if (cfg) {
    if (auto n = cfg.getAs<StringAttr>("name"))
      name = n.str();
    if (auto a = cfg.getAs<StringAttr>("linear_act_fun"))
      silu = a.getValue() == "silu";
  }
  int64_t d = i("decoder_embed_dim", 0);
  float scale = flag("no_scale_embedding", false) ? 1.0f : std::sqrt(static_cast<float>(d));
  auto nameOff = b.CreateString(name);
  auto lrpeOff = b.CreateVector(lrpe);
  return sc::CreateModelConfig(b, nameOff, i("vocab_size", 0), d, i("decoder_layers", 0),
                               i("decoder_attention_heads", 0), i("hidden_dim", d), i("glu_dim", 0),
                               scale, flag("tie_word_embeddings", true), lrpeOff, silu, 1e-6f,
                               i("pad_token_id", 0), i("bos_token_id", 1), i("eos_token_id", 2));
}

fb::Offset<sc::Operand> writeOperand(fb::FlatBufferBuilder &b, const KernelPlan &plan,
                                     const PlanOperand &o) {
  sc::OperandKind kind = sc::OperandKind_Arena;
  uint64_t offset = 0;
  switch (o.kind) {
  case OperandKind::Arena:
    kind = sc::OperandKind_Arena;
    offset = static_cast<uint64_t>(plan.buffers[o.index].offset);
    break;
  case OperandKind::Param:
    kind = sc::OperandKind_Param;
    offset = static_cast<uint64_t>(o.index);
    break;
  case OperandKind::Input:
    kind = sc::OperandKind_Input;
    offset = static_cast<uint64_t>(o.index);
    break;
  case OperandKind::State:
    kind = sc::OperandKind_State;
    offset = static_cast<uint64_t>(o.index);
    break;
  }
  return sc::CreateOperand(b, kind, offset, o.colOffset, o.cols, o.ld, dtypeOf(o.dtype), o.rows);
}

fb::Offset<sc::Function> writeFunction(fb::FlatBufferBuilder &b, const KernelPlan &plan,
                                       const std::vector<std::vector<CudaLaunch>> *program) {
  std::vector<fb::Offset<sc::Step>> steps;
  for (auto [i, s] : llvm::enumerate(plan.steps)) {
    std::vector<fb::Offset<sc::Operand>> ins, outs;
    for (const PlanOperand &o : s.inputs)
      ins.push_back(writeOperand(b, plan, o));
    for (const PlanOperand &o : s.outputs)
      outs.push_back(writeOperand(b, plan, o));
    std::vector<fb::Offset<sc::KernelLaunch>> launches;
    if (program)
      for (const CudaLaunch &l : (*program)[i])
        launches.push_back(sc::CreateKernelLaunch(
            b, static_cast<sc::LaunchKind>(l.kind), static_cast<int32_t>(l.kernel),
            static_cast<int32_t>(l.block), static_cast<int32_t>(l.sharedMem), l.gemmN, l.gemmK,
            static_cast<int8_t>(l.prologue), static_cast<int32_t>(l.maxRows),
            static_cast<int32_t>(l.stages), static_cast<int32_t>(l.cluster)));
    steps.push_back(sc::CreateStepDirect(b, kindOf(s.kind), s.name.c_str(), &ins, &outs,
                                         &s.f32Attrs, &s.i64Attrs, &s.slopes,
                                         program ? &launches : nullptr));
  }
  std::vector<fb::Offset<sc::FunctionIO>> ins, outs;
  for (auto [i, io] : llvm::enumerate(plan.inputs))
    ins.push_back(sc::CreateFunctionIODirect(b, io.name.c_str(), dtypeOf(io.dtype), &io.shape,
                                             sc::OperandKind_Input, i));
  for (const PlanIO &io : plan.outputs)
    outs.push_back(sc::CreateFunctionIODirect(
        b, io.name.c_str(), dtypeOf(io.dtype), &io.shape, sc::OperandKind_Arena,
        static_cast<uint64_t>(plan.buffers[io.buffer].offset)));
  return sc::CreateFunctionDirect(b, plan.function.c_str(), &ins, &outs, &steps,
                                  static_cast<uint64_t>(plan.arenaBytes));
}

} // namespace

std::vector<uint8_t> serializeArtifact(ModuleOp module, const std::vector<KernelPlan> &plans,
                                       StringRef target, const CudaProgram *program,
                                       const CudaImage *image) {
  fb::FlatBufferBuilder b(1 << 16);
  auto config = writeConfig(b, module);
  std::vector<fb::Offset<sc::Param>> params;
  for (const PlanParam &p : plans.front().params)
    params.push_back(sc::CreateParamDirect(b, p.name.c_str(), dtypeOf(p.dtype), &p.shape));
  std::vector<fb::Offset<sc::Function>> functions;
  for (auto [i, plan] : llvm::enumerate(plans))
    functions.push_back(writeFunction(
        b, plan, program && i < program->functions.size() ? &program->functions[i] : nullptr));
  std::vector<fb::Offset<sc::StateBuffer>> state;
  for (const PlanState &st : plans.front().state) {
    sc::StateKind kind = st.kind == "adam_m"      ? sc::StateKind_AdamExpAvg
                         : st.kind == "adam_v"    ? sc::StateKind_AdamExpAvgSq
                         : st.kind == "step"      ? sc::StateKind_StepCounter
                         : st.kind == "recurrent" ? sc::StateKind_RecurrentState
                                                  : sc::StateKind_Gradient;
    int32_t param = -1;
    for (auto [i, p] : llvm::enumerate(plans.front().params))
      if (p.name == st.param)
        param = static_cast<int32_t>(i);
    state.push_back(
        sc::CreateStateBufferDirect(b, st.name.c_str(), kind, dtypeOf(st.dtype), &st.shape, param));
  }
  bool train = llvm::any_of(plans, [](const KernelPlan &p) { return p.function == "train_step"; });
  bool recurrent =
      llvm::any_of(plans, [](const KernelPlan &p) { return p.function == "decode_step"; });
  fb::Offset<sc::Kernels> kernels = 0;
  if (program && image) {
    auto bytes =
        b.CreateVector(reinterpret_cast<const uint8_t *>(image->image.data()), image->image.size());
    auto arch = b.CreateString(program->arch);
    auto names = b.CreateVectorOfStrings(image->symbols);
    kernels = sc::CreateKernels(b, bytes, image->ptx ? sc::ImageKind_Ptx : sc::ImageKind_Cubin,
                                arch, names);
  }
  auto root = sc::CreateArtifactDirect(
      b, sc::FormatVersion_Current, target == "cpu" ? sc::Target_CPU : sc::Target_CUDA_SM90A,
      "tnlmc 0.1", config, plans.front().maxBatch, plans.front().maxSeq, &params, &functions,
      kernels, train || recurrent ? &state : nullptr,
      train       ? sc::Mode_Train
      : recurrent ? sc::Mode_Recurrent
                  : sc::Mode_Infer);
  // Size-prefixed: the loader can tell a truncated file from a complete one.
  sc::FinishSizePrefixedArtifactBuffer(b, root);
  return std::vector<uint8_t>(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
}

std::string writeFileAtomically(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::string tmp = path + ".tmp";
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    return "cannot open '" + tmp + "' for writing: " + std::strerror(errno);
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    return "cannot write '" + tmp + "': " + std::strerror(errno);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    return "cannot rename '" + tmp + "' to '" + path + "': " + err;
  }
  return "";
}

} // namespace mlir::tnlm
