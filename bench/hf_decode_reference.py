#!/usr/bin/env python3
"""Time the Hugging Face TransNormerLLM reference at recurrent decode.

Usage (from the repository root):

    python3 bench/hf_decode_reference.py --model-dir bench/hf-reference/tnl \
        --config 385m --batch 1 --context 1024 --steps 50 --warmup 5 \
        [--dtype bf16] [--device cuda] [--use-triton auto|true|false]

--model-dir is a folder holding the unmodified HF modeling files
(__init__.py, configuration_transnormer.py, modeling_transnormer.py, norm.py,
utils.py, srmsnorm_triton.py, lightning_attention2.py). They are not part of
this repository (bench/hf-reference/ is git-ignored); the folder is loaded as a
Python package under a private name so their relative imports resolve. If
einops is not installed, a wheel in <model-dir>/../vendor/ is put on sys.path.

--config is "385m", "1b" (models/tnl-1b.json), a name NAME for
models/tnl-NAME.json or models/NAME.json, or a path to an HF-style config.json; keys starting
with "_" are dropped.

The model is built with random weights (torch.manual_seed(0) and the model's
own init) directly on the device in --dtype, put in eval mode, and the LM head
is tied by hand when tie_word_embeddings is set. A random prompt of --context
tokens is prefilled with use_cache=True; then each step feeds one token and
the returned past_key_values back in (what generate() does), with a greedy
argmax. After --warmup untimed steps, --steps steps are timed one by one
(synchronize, perf_counter, forward + argmax, synchronize). One JSON line goes
to stdout; everything else goes to stderr. On failure the line holds "error"
and the exit status is 1.

The reference reads environment variables when imported: use_triton picks the
Triton SimpleRMSNorm (the only Triton kernel used in eval mode; attention in
eval mode, prefill and decode alike, is plain PyTorch), do_eval=True would
switch eval mode to the training path (this script forces do_eval=False).
--use-triton auto keeps a use_triton already in the environment, and
otherwise sets True on CUDA and False on CPU.
"""
import argparse
import glob
import importlib.util
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.stdout
sys.stdout = sys.stderr  # the reference logs to stdout; keep stdout for JSON

TNL_385M = dict(
    vocab_size=64000, decoder_embed_dim=1024, decoder_layers=24,
    decoder_attention_heads=8, hidden_dim=1024, glu_dim=2816,
    linear_use_lrpe_list=[1] + [0] * 23, norm_type="simplermsnorm",
    linear_act_fun="silu", bias=False, tie_word_embeddings=True,
    no_scale_embedding=False, use_cache=True, bos_token_id=1,
    eos_token_id=2, pad_token_id=0, init_std=0.02)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def emit(obj, code=0):
    OUT.write(json.dumps(obj) + "\n")
    OUT.flush()
    sys.exit(code)


def config_dict(name):
    if name.lower() == "385m":
        return dict(TNL_385M)
    path = name
    for cand in ("tnl-%s.json" % name.lower(), "%s.json" % name):
        if not os.path.isfile(path):
            path = os.path.join(REPO, "models", cand)
    with open(path) as f:
        d = json.load(f)
    return {k: v for k, v in d.items() if not k.startswith("_")}


def load_reference(model_dir):
    try:
        import einops  # noqa: F401
    except ImportError:
        d = os.path.dirname(os.path.abspath(model_dir))
        sys.path[:0] = sorted(glob.glob(os.path.join(d, "vendor", "einops-*.whl")))
    init = os.path.join(model_dir, "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "tnl_hf_reference", init, submodule_search_locations=[model_dir])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pkg
    spec.loader.exec_module(pkg)
    return pkg, sys.modules[spec.name + ".modeling_transnormer"]


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=os.path.join(REPO, "bench", "hf-reference", "tnl"))
    p.add_argument("--config", default="385m")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "f32", "fp32"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--use-triton", default="auto", choices=["auto", "true", "false"])
    a = p.parse_args()
    if a.batch < 1 or a.context < 1 or a.steps < 1 or a.warmup < 0:
        raise ValueError("batch, context, steps must be >= 1 and warmup >= 0")

    cuda = a.device.startswith("cuda")
    if a.use_triton != "auto":
        os.environ["use_triton"] = "True" if a.use_triton == "true" else "False"
    elif "use_triton" not in os.environ:
        os.environ["use_triton"] = "True" if cuda else "False"
    os.environ["do_eval"] = "False"

    import torch
    pkg, modeling = load_reference(a.model_dir)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16,
             "f32": torch.float32, "fp32": torch.float32}[a.dtype]
    device = torch.device(a.device)
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available")

    cfg = pkg.TransnormerConfig(**config_dict(a.config))
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # as from_pretrained(torch_dtype=...) does
    try:
        with device:
            model = pkg.TransnormerForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.to(device=device, dtype=dtype).eval()
    if getattr(cfg, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight
    # slopes is a plain tensor attribute (no buffer): keep it float32 on device
    model.model.slopes = model.model._build_slope_tensor(
        cfg.decoder_attention_heads).to(device)
    params = sum(t.numel() for t in {id(t): t for t in model.parameters()}.values())

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(3, cfg.vocab_size, (a.batch, a.context), generator=g).to(device)
    times = []
    with torch.no_grad():
        out = model(input_ids=prompt, past_key_values=None, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        for i in range(a.warmup + a.steps):
            sync()
            t0 = time.perf_counter()
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            sync()
            t1 = time.perf_counter()
            past = out.past_key_values
            if i >= a.warmup:
                times.append((t1 - t0) * 1000.0)
    if not torch.isfinite(out.logits.float()).all():
        raise RuntimeError("non-finite logits in decode")
    med = statistics.median(times)
    emit({"bench": "hf_decode_reference", "config": a.config, "batch": a.batch,
          "context": a.context, "steps": a.steps, "median_ms_per_step": med,
          "tokens_per_s": a.batch * 1000.0 / med, "dtype": a.dtype,
          "torch": torch.__version__,
          "device": torch.cuda.get_device_name(device) if cuda else "cpu",
          "use_triton": bool(modeling.use_triton), "params": params,
          "state_shapes": [list(past[0].shape), list(past[-1].shape)]})


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        emit({"bench": "hf_decode_reference", "error": "%s: %s" % (type(e).__name__, e)}, 1)
