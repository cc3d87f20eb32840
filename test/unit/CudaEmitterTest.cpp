//===- CudaEmitterTest.cpp - generated CUDA source → NVRTC cubin, no GPU --===//
//
// The cuda:sm_90a codegen path up to the artifact: lowering with bf16 activations, one
// deterministic source with one kernel per distinct specialization, NVRTC compiles it (no GPU
// or driver needed), every kernel the launch metadata names is in the cubin's symbol table,
// and the runtime's verifier accepts the artifact and rejects broken kernel metadata.
//
//===----------------------------------------------------------------------===//
#include "codegen/CudaEmitter.h"
#include "codegen/ArtifactWriter.h"
#include "codegen/KernelPlan.h"
#include "models/Import.h"
#include "models/ModelConfig.h"
#include "passes/Passes.h"
#include "runtime/Artifact.h"
#include "runtime/Error.h"
#include "runtime/cuda/Nvrtc.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace {

namespace mt = mlir::tnlm;

// d = 256, H = 2 (head dim 128), no LRPE: the shape the Hopper kernel takes.
const char *kConfig = R"({"vocab_size": 300, "decoder_embed_dim": 256, "decoder_layers": 2,
    "decoder_attention_heads": 2, "hidden_dim": 256, "glu_dim": 512,
    "linear_use_lrpe_list": [0, 0], "linear_act_fun": "silu", "torch_dtype": "bfloat16"})";

struct Lowered {
  mlir::MLIRContext ctx;
  mlir::OwningOpRef<mlir::ModuleOp> module;
  mt::KernelPlan plan;
  std::string diagnostic;
};

std::unique_ptr<Lowered> lower(const std::string &json, const std::string &target) {
  auto out = std::make_unique<Lowered>();
  mt::ConfigResult r = mt::parseModelConfig(json, "cuda-test.json");
  EXPECT_TRUE(r.config) << r.error;
  out->module = mt::importModel(*r.config, &out->ctx, "cuda-test.json");
  mlir::PassManager pm(&out->ctx);
  mt::InferPipelineOptions options;
  options.target = target;
  options.maxSeq = 128;
  mt::buildInferPipeline(pm, options);
  EXPECT_TRUE(mlir::succeeded(pm.run(*out->module)));
  mlir::FailureOr<mt::KernelPlan> plan =
      mt::lowerToKernelPlan(*out->module, "forward", 2, 128, target);
  EXPECT_TRUE(mlir::succeeded(plan));
  mt::planMemory(*plan);
  out->plan = std::move(*plan);
  return out;
}

mlir::FailureOr<mt::CudaProgram> emit(Lowered &l) {
  mlir::ScopedDiagnosticHandler handler(&l.ctx, [&](mlir::Diagnostic &d) {
    l.diagnostic = d.str();
    return mlir::success();
  });
  return mt::emitCudaProgram(l.plan, l.module->getLoc());
}

// keepGradWeightInputs (tnlmc's TNLM_GRAD_STREAM_WINDOW): a LinearGradWeight step's arena
// inputs stay live `window` steps past it, so the buffers of the steps after it are placed
// elsewhere; without it the planner reuses their bytes at once.
TEST(MemoryPlanner, GradWeightInputsKeptForTheWindow) {
  auto build = [](int64_t window) {
    mt::KernelPlan plan;
    plan.function = "train_step";
    plan.maxBatch = 1, plan.maxSeq = 16;
    for (int b = 0; b < 4; ++b) {
      mt::PlanBuffer buf;
      buf.cols = 8, buf.bytesPerRow = 32;
      buf.firstStep = buf.lastStep = b;
      plan.buffers.push_back(buf);
    }
    auto arena = [](int64_t index) {
      mt::PlanOperand o;
      o.index = index, o.cols = 8, o.ld = 8;
      return o;
    };
    // 0: b0 = ...; 1: b1 = dW(b0, b0); 2: b2 = ...; 3: b3 = ...(b2)
    plan.steps.resize(4);
    plan.steps[0].kind = mt::KernelKind::Silu, plan.steps[0].outputs = {arena(0)};
    plan.steps[1].kind = mt::KernelKind::LinearGradWeight;
    plan.steps[1].inputs = {arena(0), arena(0)}, plan.steps[1].outputs = {arena(1)};
    plan.steps[2].kind = mt::KernelKind::Silu, plan.steps[2].outputs = {arena(2)};
    plan.steps[3].kind = mt::KernelKind::Silu;
    plan.steps[3].inputs = {arena(2)}, plan.steps[3].outputs = {arena(3)};
    plan.buffers[0].lastStep = 1, plan.buffers[2].lastStep = 3;
    if (window > 0)
      mt::keepGradWeightInputs(plan, window);
    mt::planMemory(plan);
    return plan;
  };
  const mt::KernelPlan plain = build(0), kept = build(2), far = build(10);
  EXPECT_EQ(plain.buffers[0].lastStep, 1);
  EXPECT_EQ(plain.buffers[2].offset, plain.buffers[0].offset); // b0's bytes reused by b2
  EXPECT_EQ(kept.buffers[0].lastStep, 3);
  EXPECT_NE(kept.buffers[2].offset, kept.buffers[0].offset);
  EXPECT_GT(kept.arenaBytes, plain.arenaBytes);
  EXPECT_EQ(far.buffers[0].lastStep, 3); // not past the last step
}

// keepGatedProductInputs: a gated pair's input x stays live up to the pair's product (the
// executor's fused kernel writes the product while other tiles still read x), so the product is
// not placed over x; a product of two different buffers keeps nothing.
TEST(MemoryPlanner, GatedPairInputKeptUpToTheProduct) {
  auto build = [](bool keep, bool pair) {
    mt::KernelPlan plan;
    plan.function = "forward";
    plan.maxBatch = 1, plan.maxSeq = 16;
    auto buffer = [&](int64_t cols, int64_t first, int64_t last) {
      mt::PlanBuffer buf;
      buf.cols = cols, buf.bytesPerRow = 2 * cols;
      buf.firstStep = first, buf.lastStep = last;
      plan.buffers.push_back(buf);
    };
    buffer(8, 0, 2);  // b0: x
    buffer(16, 1, 3); // b1: [a | b]
    buffer(8, 3, 3);  // b2: p
    buffer(8, 1, 3);  // b3: a second product operand (the non-pair case)
    auto arena = [](int64_t index, int64_t col, int64_t cols, int64_t ld) {
      mt::PlanOperand o;
      o.index = index, o.colOffset = col, o.cols = cols, o.ld = ld;
      return o;
    };
    // 0: b0 = ...; 1: b1[:, 0:8] = x·W1ᵀ; 2: b1[:, 8:16] = x·W2ᵀ; 3: b2 = b1[:, 0:8] * (b1[:, 8:16]
    // or b3)
    plan.steps.resize(4);
    plan.steps[0].kind = mt::KernelKind::Silu, plan.steps[0].outputs = {arena(0, 0, 8, 8)};
    for (int h = 0; h < 2; ++h) {
      plan.steps[1 + h].kind = mt::KernelKind::Linear;
      plan.steps[1 + h].inputs = {arena(0, 0, 8, 8)};
      plan.steps[1 + h].outputs = {arena(1, 8 * h, 8, 16)};
    }
    plan.steps[3].kind = mt::KernelKind::Mul;
    plan.steps[3].inputs = {arena(1, 0, 8, 16), pair ? arena(1, 8, 8, 16) : arena(3, 0, 8, 8)};
    plan.steps[3].outputs = {arena(2, 0, 8, 8)};
    if (keep)
      mt::keepGatedProductInputs(plan);
    mt::planMemory(plan);
    return plan;
  };
  const mt::KernelPlan plain = build(false, true), kept = build(true, true),
                       other = build(true, false);
  EXPECT_EQ(plain.buffers[2].offset, plain.buffers[0].offset); // p over the dead x
  EXPECT_EQ(kept.buffers[0].lastStep, 3);
  EXPECT_NE(kept.buffers[2].offset, kept.buffers[0].offset);
  EXPECT_EQ(other.buffers[0].lastStep, 2);
}

TEST(CudaCodegen, ActivationsAreBf16AndLogitsF32) {
  auto cuda = lower(kConfig, "cuda:sm_90a");
  auto cpu = lower(kConfig, "cpu");
  for (const mt::PlanBuffer &b : cpu->plan.buffers) {
    EXPECT_EQ(b.dtype, "f32");
    EXPECT_EQ(b.bytesPerRow, b.cols * 4);
  }
  const int64_t logits = cuda->plan.outputs.front().buffer;
  for (auto [i, b] : llvm::enumerate(cuda->plan.buffers)) {
    EXPECT_EQ(b.dtype, static_cast<int64_t>(i) == logits ? "f32" : "bf16") << i;
    EXPECT_EQ(b.bytesPerRow, b.cols * mt::dtypeBytes(b.dtype)) << i;
  }
  EXPECT_LT(cuda->plan.arenaBytes, cpu->plan.arenaBytes);
  // The lm_head GEMM writes the f32 logits.
  EXPECT_EQ(cuda->plan.steps.back().outputs.front().dtype, "f32");
}

TEST(CudaCodegen, CompilesWithNvrtcAndNamesEveryKernel) {
  auto l = lower(kConfig, "cuda:sm_90a");
  mlir::FailureOr<mt::CudaProgram> program = emit(*l);
  ASSERT_TRUE(mlir::succeeded(program)) << l->diagnostic;
  mlir::FailureOr<mt::CudaProgram> again = emit(*l);
  ASSERT_TRUE(mlir::succeeded(again));
  EXPECT_EQ(program->source, again->source); // deterministic

  // Two identical layers: each specialization once (embedding, norm, SiLU, 3 attention
  // kernels, gated norm, add+norm, product, and SGLU's forward fused: the GEMM and product).
  EXPECT_EQ(program->kernels.size(), 10u);
  std::set<std::string> names;
  for (const mt::CudaKernel &k : program->kernels)
    EXPECT_TRUE(names.insert(k.name).second) << k.name << " emitted twice";
  ASSERT_EQ(program->functions[0].size(), l->plan.steps.size());

  tnlm::cuda::NvrtcOptions options;
  options.headers = mt::cudaDeviceHeaders();
  for (const mt::CudaKernel &k : program->kernels)
    if (!k.expression.empty())
      options.nameExpressions.push_back(k.expression);
  tnlm::cuda::CompiledKernels out =
      tnlm::cuda::compileCuda(program->source, program->sourceName, options);
  mt::CudaImage image;
  image.image = out.image;
  for (const mt::CudaKernel &k : program->kernels) {
    std::string symbol = k.expression.empty() ? k.name : out.loweredNames[k.expression];
    ASSERT_FALSE(symbol.empty()) << k.expression;
    // ELF string tables hold NUL-terminated names.
    EXPECT_NE(out.image.find(std::string(1, '\0') + symbol + '\0'), std::string::npos)
        << symbol << " is not in the cubin";
    image.symbols.push_back(symbol);
  }
  for (const auto &launches : program->functions[0])
    for (const mt::CudaLaunch &launch : launches)
      if (launch.kind != mt::CudaLaunchKind::Gemm) {
        ASSERT_GE(launch.kernel, 0);
        ASSERT_LT(launch.kernel, static_cast<int64_t>(program->kernels.size()));
      }

  // The artifact: accepted by the CUDA-target verifier, refused by the CPU backend.
  std::vector<uint8_t> bytes =
      mt::serializeArtifact(*l->module, {l->plan}, "cuda:sm_90a", &*program, &image);
  tnlm::Artifact a = tnlm::Artifact::fromBytes(bytes, "m.tnlm", tnlm::Target::CudaSm90a);
  ASSERT_TRUE(a.root().kernels());
  EXPECT_EQ(a.root().kernels()->names()->size(), 10u);
  EXPECT_EQ(a.root().kernels()->image()->size(), out.image.size());
  try {
    tnlm::Artifact::fromBytes(bytes, "m.tnlm", tnlm::Target::Cpu);
    ADD_FAILURE() << "the CPU backend accepted a CUDA artifact";
  } catch (const tnlm::Error &e) {
    EXPECT_NE(std::string(e.what()).find("compiled for target cuda:sm_90a"), std::string::npos)
        << e.what();
  }

  auto refused = [&](mt::CudaProgram p, mt::CudaImage im) {
    std::vector<uint8_t> b = mt::serializeArtifact(*l->module, {l->plan}, "cuda:sm_90a", &p, &im);
    try {
      tnlm::Artifact::fromBytes(b, "bad.tnlm", tnlm::Target::CudaSm90a);
    } catch (const tnlm::Error &e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  mt::CudaProgram badIndex = *program;
  badIndex.functions[0][0][0].kernel = 99;
  EXPECT_NE(refused(badIndex, image).find("launches kernel #99 of 10"), std::string::npos);
  mt::CudaImage empty = image;
  empty.image.clear();
  EXPECT_NE(refused(*program, empty).find("without a kernel image"), std::string::npos);
}

TEST(CudaCodegen, LrpeLayerRunsTwoForwardPassesBetweenItsPrologueAndEpilogue) {
  std::string lrpe = kConfig;
  lrpe.replace(lrpe.find("[0, 0]"), 6, "[0, 1]");
  auto l = lower(lrpe, "cuda:sm_90a");
  mlir::FailureOr<mt::CudaProgram> program = emit(*l);
  ASSERT_TRUE(mlir::succeeded(program)) << l->diagnostic;
  int lrpeSteps = 0;
  for (size_t i = 0; i < l->plan.steps.size(); ++i) {
    const mt::PlanStep &s = l->plan.steps[i];
    if (s.kind != mt::KernelKind::LightningAttention || s.i64Attrs[3] == 0)
      continue;
    ++lrpeSteps;
    std::vector<std::string> kinds;
    for (const mt::CudaLaunch &launch : program->functions[0][i])
      kinds.push_back(std::string(mt::launchKindName(launch.kind)) + " " +
                      program->kernels[launch.kernel].name);
    EXPECT_EQ(kinds, (std::vector<std::string>{
                         "per-row tnlm_lrpe_split_c256_silu1",
                         "lightning-state tnlm_la_sm90_state_d128",
                         "lightning-scan tnlm_la_sm90_scan_d128",
                         "lightning-main tnlm_la_sm90_main_d128",
                         "lightning-state tnlm_la_sm90_state_d128",
                         "lightning-scan tnlm_la_sm90_scan_d128",
                         "lightning-main tnlm_la_sm90_main_d128",
                         "per-row tnlm_gated_srms_norm_sum_c256",
                     }));
    // The planes share qkvu's row stride (LightningFwdArgs has one set of input strides).
    EXPECT_EQ(s.outputs[1].ld, s.inputs[0].ld);
    EXPECT_EQ(s.outputs[1].cols, 4 * s.i64Attrs[0] * s.i64Attrs[1]);
  }
  EXPECT_EQ(lrpeSteps, 1);
}

// The train functions (tnlm-train-pipeline) of a model with an LRPE layer and a plain one:
// every step has its CUDA launches, the source compiles with NVRTC and every kernel the
// launches name is in the cubin (the GPU train executor, docs/gpu-training.md, runs them).
// The train program of a 2-layer model (layer 0 LRPE) emitted and compiled with NVRTC; with
// `reference`, TNLM_LA_BWD_REFERENCE=1 (the Lightning backward's reference cores).
void checkTrainProgram(bool reference) {
  if (reference)
    setenv("TNLM_LA_BWD_REFERENCE", "1", 1);
  else
    unsetenv("TNLM_LA_BWD_REFERENCE");
  std::string lrpe = kConfig;
  lrpe.replace(lrpe.find("[0, 0]"), 6, "[1, 0]");
  mlir::MLIRContext ctx;
  mt::ConfigResult r = mt::parseModelConfig(lrpe, "cuda-train.json");
  ASSERT_TRUE(r.config) << r.error;
  mlir::OwningOpRef<mlir::ModuleOp> module = mt::importModel(*r.config, &ctx, "cuda-train.json");
  mlir::PassManager pm(&ctx);
  mt::InferPipelineOptions options;
  options.target = "cuda:sm_90a";
  options.maxSeq = 128;
  mt::buildTrainPipeline(pm, options, "none");
  ASSERT_TRUE(mlir::succeeded(pm.run(*module)));
  std::string diagnostic;
  mlir::ScopedDiagnosticHandler handler(&ctx, [&](mlir::Diagnostic &d) {
    diagnostic = d.str();
    return mlir::success();
  });
  mlir::FailureOr<std::vector<mt::KernelPlan>> plans = mt::lowerFunctions(
      *module, {"train_step", "optimizer_step", "eval_loss"}, 2, 128, "cuda:sm_90a");
  ASSERT_TRUE(mlir::succeeded(plans)) << diagnostic;
  for (mt::KernelPlan &p : *plans)
    mt::planMemory(p);
  mlir::FailureOr<mt::CudaProgram> program = mt::emitCudaProgram(*plans, module->getLoc());
  ASSERT_TRUE(mlir::succeeded(program)) << diagnostic;
  std::set<std::string> names;
  for (const mt::CudaKernel &k : program->kernels)
    EXPECT_TRUE(names.insert(k.name).second) << k.name << " emitted twice";
  // The cross entropy's gradient rows held on chip (#SMs CTAs, a rows loop, each row read
  // once), named by the vocabulary.
  EXPECT_TRUE(std::any_of(names.begin(), names.end(), [](const std::string &n) {
    return n.rfind("tnlm_cross_entropy_grad_rows_held_v", 0) == 0 && n.size() > 5 &&
           n.compare(n.size() - 5, 5, "_bf16") == 0;
  })) << "no held cross entropy rows kernel";
  std::vector<std::string> want = {
      "tnlm_loss_total",        "tnlm_loss_mean",           "tnlm_la_lrpe_grad_silu1",
      "tnlm_la_dtheta_sum",     "tnlm_embedding_grad_bf16", "tnlm_sum_squares_chunks",
      "tnlm_sum_squares_total", "tnlm_lr_schedule",         "tnlm_clip_scale",
      "tnlm_fused_adamw_bf16", // (writes the bf16 copies itself)
      "tnlm_step_increment"};
  // The fast Lightning backward (the LRPE layer's pack, the Hopper forward; the plain layer
  // reads its forward's workspace, so no pack) or the reference cores.
  const std::vector<std::string> fast = {
      "tnlm_la_grad_pack_lrpe_silu1", "tnlm_la_gate_norm_grad_o16", "tnlm_la_gate_norm_grad2_o16",
      "tnlm_la_add_rows_bf16",        "tnlm_la_sm90_main_d128",     "tnlm_la_silu_scale",
      "tnlm_la_dtheta_segments"};
  const std::vector<std::string> slow = {"tnlm_la_grad_prologue_silu1_lrpe1",
                                         "tnlm_la_fwd_simple_dk256",
                                         "tnlm_la_fwd_simple_dk128",
                                         "tnlm_la_gate_norm_grad",
                                         "tnlm_la_bwd_simple_dk256_bf16",
                                         "tnlm_la_bwd_simple_dk128_bf16",
                                         "tnlm_la_dtheta_relative"};
  want.insert(want.end(), reference ? slow.begin() : fast.begin(),
              reference ? slow.end() : fast.end());
  for (const std::string &k : want)
    EXPECT_TRUE(names.count(k)) << k << " not emitted";
  // The plain layer's forward epilogue reads O from the workspace it keeps for the backward.
  EXPECT_TRUE(names.count("tnlm_gated_norm_from_o_c256"));
  // Replaced by tnlm_fused_adamw_bf16: AdamW without the copies, and the cast pass after it;
  // the plain layer's pack by its forward's workspace.
  // The plain layer's SiLU' is a pass of its own (tnlm_la_silu_scale) unless TNLM_LA_FOLD_SILU=1
  // (tnlmc-cuda-train-summary.test); the reference backward uses it too.
  // The rows loop replaced the one-CTA-per-row cross entropy gradient.
  for (const char *k :
       {"tnlm_cast_bf16", "tnlm_adamw", "tnlm_la_grad_pack_silu1", "tnlm_cross_entropy_grad_bf16"})
    EXPECT_FALSE(names.count(k)) << k << " emitted";
  for (const std::string &k : reference ? fast : slow)
    if (k != "tnlm_la_sm90_main_d128" && k != "tnlm_la_silu_scale") { // used either way
      EXPECT_FALSE(names.count(k)) << k << " emitted";
    }
  for (size_t f = 0; f < plans->size(); ++f) {
    ASSERT_EQ(program->functions[f].size(), (*plans)[f].steps.size());
    for (size_t i = 0; i < (*plans)[f].steps.size(); ++i)
      if ((*plans)[f].steps[i].kind != mt::KernelKind::Fill) {
        EXPECT_FALSE(program->functions[f][i].empty())
            << (*plans)[f].function << " step " << i << " (" << (*plans)[f].steps[i].name
            << ") has no launch";
      }
  }
  tnlm::cuda::NvrtcOptions nvrtc;
  nvrtc.headers = mt::cudaDeviceHeaders();
  for (const mt::CudaKernel &k : program->kernels)
    if (!k.expression.empty())
      nvrtc.nameExpressions.push_back(k.expression);
  tnlm::cuda::CompiledKernels out =
      tnlm::cuda::compileCuda(program->source, program->sourceName, nvrtc);
  mt::CudaImage image;
  image.image = out.image;
  for (const mt::CudaKernel &k : program->kernels) {
    const std::string symbol = k.expression.empty() ? k.name : out.loweredNames[k.expression];
    EXPECT_NE(out.image.find(std::string(1, '\0') + symbol + '\0'), std::string::npos)
        << symbol << " is not in the cubin";
    image.symbols.push_back(symbol);
  }
  unsetenv("TNLM_LA_BWD_REFERENCE");

  // The artifact passes the CUDA-target verifier. The plain layer's backward reads its
  // forward's workspace (a third input, no workspace of its own) on the fast path only; a
  // crafted one whose workspace is not at qkvu's row stride is refused.
  auto load = [&](const std::vector<mt::KernelPlan> &ps) {
    std::vector<uint8_t> bytes =
        mt::serializeArtifact(*module, ps, "cuda:sm_90a", &*program, &image);
    try {
      tnlm::Artifact::fromBytes(bytes, "train.tnlm", tnlm::Target::CudaSm90a);
    } catch (const tnlm::Error &e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(load(*plans), "accepted");
  int fromForward = 0;
  std::vector<mt::KernelPlan> crafted = *plans;
  for (mt::PlanStep &s : crafted[0].steps)
    if (s.kind == mt::KernelKind::LightningAttentionGrad && s.i64Attrs[3] == 0) {
      fromForward += s.inputs.size() == 3 && s.outputs.size() == 1;
      if (s.inputs.size() == 3)
        s.inputs[2].ld += 8;
    }
  EXPECT_EQ(fromForward, reference ? 0 : 1);
  if (!reference) {
    EXPECT_NE(load(crafted).find("has attention shapes that do not agree with its heads"),
              std::string::npos)
        << load(crafted);
  }
  // A forward workspace read by a layer without φ (none would have written it).
  crafted = *plans;
  for (mt::PlanStep &s : crafted[0].steps)
    if (s.kind == mt::KernelKind::LightningAttentionGrad && s.inputs.size() == 3 &&
        s.i64Attrs[3] == 0)
      s.i64Attrs[4] = 0;
  if (!reference) {
    EXPECT_NE(load(crafted).find("reads a forward workspace that a SiLU layer's forward did not"),
              std::string::npos)
        << load(crafted);
  }
}

TEST(CudaCodegen, TrainFunctionsCompileWithNvrtc) { checkTrainProgram(false); }
TEST(CudaCodegen, TrainFunctionsCompileWithNvrtcReferenceBackward) { checkTrainProgram(true); }

TEST(CudaCodegen, UnsupportedAttentionShapesNameTheLayer) {
  std::string d64 = kConfig;
  d64.replace(d64.find("\"decoder_attention_heads\": 2"), 28, "\"decoder_attention_heads\": 4");
  auto m = lower(d64, "cuda:sm_90a");
  EXPECT_TRUE(mlir::failed(emit(*m)));
  EXPECT_NE(m->diagnostic.find("'model.layers.0.token_mixer.attention': head dim 64 is not"),
            std::string::npos)
      << m->diagnostic;
}

} // namespace

// CUDA @decode_step: markDecodeFusions marks every linear/gated_linear that reads the norm
// right before it, and the memory plan keeps what the fused GEMV reads (the norm step's
// operands) apart from what it writes, since the GEMV now reads them in its own step.
TEST(CudaCodegen, DecodeFusesNormsIntoGemvsWithoutAliasing) {
  // tiny-gpu's shape with an LRPE layer: head dim 128, layer 0 LRPE.
  const char *config = R"({"vocab_size": 256, "decoder_embed_dim": 256, "decoder_layers": 2,
      "decoder_attention_heads": 2, "hidden_dim": 256, "glu_dim": 512,
      "linear_use_lrpe_list": [1, 0], "linear_act_fun": "silu", "torch_dtype": "float32"})";
  mlir::MLIRContext ctx;
  mt::ConfigResult r = mt::parseModelConfig(config, "decode-test.json");
  ASSERT_TRUE(r.config) << r.error;
  mlir::OwningOpRef<mlir::ModuleOp> module = mt::importModel(*r.config, &ctx, "decode-test.json");
  mlir::PassManager pm(&ctx);
  mt::InferPipelineOptions options;
  options.target = "cuda:sm_90a";
  options.maxSeq = 256;
  mt::buildRecurrentPipeline(pm, options, 4);
  ASSERT_TRUE(mlir::succeeded(pm.run(*module)));
  mlir::FailureOr<std::vector<mt::KernelPlan>> plans =
      mt::lowerFunctions(*module, {"prefill", "decode_step"}, 4, 256, "cuda:sm_90a");
  ASSERT_TRUE(mlir::succeeded(plans));
  for (mt::KernelPlan &p : *plans)
    mt::planMemory(p);
  const mt::KernelPlan &prefill = (*plans)[0], &decode = (*plans)[1];
  for (const mt::PlanStep &s : prefill.steps)
    EXPECT_EQ(s.gemvPrologue, 0) << "only @decode_step fuses: " << s.name;
  // Per layer: qkvu (srms_norm for layer 0, add_srms_norm after), out (the gated norm), the
  // gated pair (add_srms_norm); l3 reads the gated pair's output (no norm); the LM head reads
  // the last add_srms_norm.
  std::vector<int64_t> modes;
  for (const mt::PlanStep &s : decode.steps)
    if (s.kind == mt::KernelKind::Linear || s.kind == mt::KernelKind::GatedLinear)
      modes.push_back(s.gemvPrologue);
  EXPECT_EQ(modes, (std::vector<int64_t>{1, 3, 2, 0, 2, 3, 2, 0, 2}));
  auto bytes = [&](const mt::PlanOperand &o) {
    return decode.buffers[o.index].bytes(decode.maxRows());
  };
  auto overlap = [&](const mt::PlanOperand &a, const mt::PlanOperand &b) {
    const int64_t a0 = decode.buffers[a.index].offset, b0 = decode.buffers[b.index].offset;
    return a0 < b0 + bytes(b) && b0 < a0 + bytes(a);
  };
  int fused = 0;
  for (size_t i = 1; i < decode.steps.size(); ++i) {
    const mt::PlanStep &gemv = decode.steps[i];
    if (gemv.gemvPrologue == 0)
      continue;
    ++fused;
    const mt::PlanStep &norm = decode.steps[i - 1];
    std::vector<mt::PlanOperand> read = norm.inputs;
    read.insert(read.end(), norm.outputs.begin(), norm.outputs.end());
    for (const mt::PlanOperand &out : gemv.outputs)
      for (const mt::PlanOperand &in : read)
        if (out.kind == mt::OperandKind::Arena && in.kind == mt::OperandKind::Arena &&
            !out.sameStorage(in)) {
          EXPECT_FALSE(overlap(out, in))
              << "step " << i << " (" << gemv.name << ") writes over what its prologue reads";
        }
  }
  EXPECT_EQ(fused, 7);

  // The qkvu linears (and nothing else) also carry their lightning_decode's attributes
  // (heads, dh, lrpe, silu) for the launch that runs both, and the emitted program has that
  // launch (GemvDecode, clusters of 16 CTAs for 2 heads) on exactly those two steps.
  std::vector<std::vector<int64_t>> fusions;
  for (const mt::PlanStep &s : prefill.steps)
    EXPECT_TRUE(s.decodeFusion.empty()) << "only @decode_step fuses: " << s.name;
  for (size_t i = 0; i < decode.steps.size(); ++i)
    if (!decode.steps[i].decodeFusion.empty()) {
      fusions.push_back(decode.steps[i].decodeFusion);
      ASSERT_LT(i + 1, decode.steps.size());
      EXPECT_EQ(decode.steps[i + 1].kind, mt::KernelKind::LightningDecode);
    }
  EXPECT_EQ(fusions, (std::vector<std::vector<int64_t>>{{2, 128, 1, 1}, {2, 128, 0, 1}}));
  mlir::FailureOr<mt::CudaProgram> program =
      mt::emitCudaProgram(*plans, mlir::UnknownLoc::get(&ctx));
  ASSERT_TRUE(mlir::succeeded(program));
  ASSERT_EQ(program->functions.size(), 2u);
  int gemvDecodes = 0;
  for (size_t f = 0; f < 2; ++f)
    for (size_t i = 0; i < program->functions[f].size(); ++i)
      for (const mt::CudaLaunch &l : program->functions[f][i])
        if (l.kind == mt::CudaLaunchKind::GemvDecode) {
          ++gemvDecodes;
          EXPECT_EQ(f, 1u);
          EXPECT_FALSE((*plans)[f].steps[i].decodeFusion.empty());
          EXPECT_EQ(l.cluster, 16);
        }
  EXPECT_EQ(gemvDecodes, 2);
}
