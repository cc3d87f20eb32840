#!/usr/bin/env python3
"""Time the Hugging Face TransNormerLLM reference's train step (forward + backward).

Usage (from the repository root, on the device machine):

    python3 bench/hf_train_reference.py [--model-dir bench/hf-reference/tnl] [--config 385m]
        [--shapes 4x2048,1x8192,1x32768] [--steps 10] [--warmup 3]

The model (the unmodified HF modeling files, loaded as bench/hf_decode_reference.py does) is
built with random weights in bf16 on the GPU, in train mode (its Triton Lightning Attention
and Triton SimpleRMSNorm: use_triton=True, do_eval=False), the LM head tied by hand. Per shape
B x N: random ids, labels = ids (the model shifts them); after --warmup untimed steps each of
--steps steps is timed (synchronize, perf_counter, zero_grad + forward with labels + backward,
synchronize); the optimizer is not run (PERFORMANCE.md's anchor is fwd+bwd). One JSON line per
shape on stdout (median ms, tokens/s, peak memory), a line with "error" where a shape fails.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_decode_reference as ref  # noqa: E402  (its loader and configs)

OUT = ref.OUT


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=os.path.join(ref.REPO, "bench", "hf-reference", "tnl"))
    p.add_argument("--config", default="385m")
    p.add_argument("--shapes", default="4x2048,1x8192,1x32768")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    os.environ.setdefault("use_triton", "True")
    os.environ["do_eval"] = "False"
    import torch
    pkg, modeling = ref.load_reference(a.model_dir)
    device = torch.device("cuda")
    cfg = pkg.TransnormerConfig(**ref.config_dict(a.config))
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = pkg.TransnormerForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.to(device=device, dtype=torch.bfloat16).train()
    if getattr(cfg, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.slopes = model.model._build_slope_tensor(cfg.decoder_attention_heads).to(device)
    params = sum(t.numel() for t in {id(t): t for t in model.parameters()}.values())
    for shape in a.shapes.split(","):
        B, N = (int(x) for x in shape.split("x"))
        try:
            g = torch.Generator(device="cpu").manual_seed(0)
            ids = torch.randint(3, cfg.vocab_size, (B, N), generator=g).to(device)

            def step():
                model.zero_grad(set_to_none=True)
                out = model(input_ids=ids, labels=ids, use_cache=False)
                out.loss.backward()
                return out.loss

            steps = a.steps if N <= 8192 else max(2, a.steps // 3)
            for _ in range(a.warmup):
                step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                loss = step()
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
            med = statistics.median(times)
            OUT.write(json.dumps({
                "bench": "hf_train_reference", "config": a.config, "batch": B, "seq": N,
                "steps": steps, "median_ms": round(med, 2), "min_ms": round(min(times), 2),
                "tokens_per_s": round(B * N / med * 1e3, 1), "loss": float(loss),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "params": params, "use_triton": bool(modeling.use_triton),
                "torch": torch.__version__, "device": torch.cuda.get_device_name(device),
                "note": "fwd+bwd (zero_grad, forward with labels, backward), bf16, no optimizer"})
                + "\n")
        except Exception as e:  # noqa: BLE001
            OUT.write(json.dumps({"bench": "hf_train_reference", "batch": B, "seq": N,
                                  "error": "%s: %s" % (type(e).__name__, e)}) + "\n")
        OUT.flush()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
