"""PyTorch twin of the Caffe VGG-16 JCDL training benchmark (run_h200.sh).

The same training step as bench/gpu/vgg16_jcdl_b32.prototxt with
bench/gpu/solver_b32.prototxt:

- torchvision's VGG-16 layout (13 convolutions, fc6, fc7 with ReLU and
  dropout 0.5, the last layer with K outputs), batch 32, 3 x 224 x 224;
- the JCDL losses on the logits z and the distribution label p:
  0.8 * KL(p || softmax z) (summed over K, averaged over the batch, as
  SoftmaxWithKLLoss normalises) + 0.2 * the softmax log-loss of the dominant
  emotion argmax p (ties: lowest index, as torch.argmax and Caffe agree);
- SGD as Caffe's solver: lr 1e-4, momentum 0.9, weight decay 0.005 on
  weights and biases (decay_mult 1, as the original); biases at twice the
  rate, the last layer at 10x / 20x;
- generated data, made once on the GPU: images of constant value 1, labels
  the uniform distribution 1/K (as the Caffe net's constant DummyData).

Variants (each on a fresh model after warm-up, timed with CUDA events over
--iters steps): ``fp32`` — PyTorch's defaults (cuDNN may use TF32 for
convolutions, matmuls stay fp32, cudnn.benchmark off); ``fp32_benchmark`` —
the same with cudnn.benchmark on; ``bf16_channels_last`` — bf16 autocast
and channels-last memory, what a user after speed would pick. The first is
the one compared with Caffe.

Writes one JSON object (stdout, or --json FILE). Needs torch and
torchvision with a CUDA GPU.
"""
import argparse
import json
import sys
import time

LAMBDA = 0.8
VARIANTS = ("fp32", "fp32_benchmark", "bf16_channels_last")


def build_model(classes, device):
    import torch
    import torchvision
    torch.manual_seed(1)
    model = torchvision.models.vgg16(weights=None, num_classes=classes)
    return model.to(device)


def sgd(model, base_lr=1e-4, momentum=0.9, weight_decay=0.005):
    """Caffe's lr_mult / decay_mult of the JCDL prototxt as parameter
    groups: weights 1x, biases 2x, all decayed; the last layer (my_fc8)
    10x / 20x."""
    import torch
    last = model.classifier[-1]
    groups = {"w": [], "b": [], "last_w": [last.weight], "last_b": [last.bias]}
    for name, p in model.named_parameters():
        if p is last.weight or p is last.bias:
            continue
        groups["b" if name.endswith("bias") else "w"].append(p)
    return torch.optim.SGD([
        {"params": groups["w"], "lr": base_lr, "weight_decay": weight_decay},
        {"params": groups["b"], "lr": 2 * base_lr,
         "weight_decay": weight_decay},
        {"params": groups["last_w"], "lr": 10 * base_lr,
         "weight_decay": weight_decay},
        {"params": groups["last_b"], "lr": 20 * base_lr,
         "weight_decay": weight_decay},
    ], lr=base_lr, momentum=momentum)


def jcdl_loss(logits, p, lam=LAMBDA):
    """lam * KL(p || softmax z) + (1 - lam) * CE(z, argmax p), both
    averaged over the batch."""
    import torch.nn.functional as F
    logq = F.log_softmax(logits.float(), dim=1)
    kl = F.kl_div(logq, p, reduction="batchmean")
    dominant = F.nll_loss(logq, p.argmax(dim=1))
    return lam * kl + (1.0 - lam) * dominant


def precision_settings():
    """What PyTorch will do with fp32 matmuls and convolutions now."""
    import torch
    s = {"cudnn_benchmark": torch.backends.cudnn.benchmark,
         "float32_matmul_precision": torch.get_float32_matmul_precision()}
    for key, get in (
            ("cudnn_allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
            ("matmul_allow_tf32",
             lambda: torch.backends.cuda.matmul.allow_tf32),
            ("cudnn_conv_fp32_precision",
             lambda: torch.backends.cudnn.conv.fp32_precision),
            ("matmul_fp32_precision",
             lambda: torch.backends.cuda.matmul.fp32_precision)):
        try:
            s[key] = get()
        except Exception:  # an API this version lacks or refuses
            pass
    return s


def run_variant(name, batch, classes, warmup, iters, device="cuda"):
    import torch
    device = torch.device(device)
    cuda = device.type == "cuda"
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = name == "fp32_benchmark"
    try:
        model = build_model(classes, device)
        channels_last = name == "bf16_channels_last"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = sgd(model)
        x = torch.ones(batch, 3, 224, 224, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        p = torch.full((batch, classes), 1.0 / classes, device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            if name == "bf16_channels_last":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    logits = model(x)
            else:
                logits = model(x)
            loss = jcdl_loss(logits, p)
            loss.backward()
            opt.step()
            return loss

        settings = precision_settings()
        t0 = time.perf_counter()
        for _ in range(warmup):
            loss = step()
        if cuda:
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t0
        if cuda:  # CUDA events around the timed steps
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                loss = step()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end) / iters
        else:  # --device cpu: a check of this script, not a benchmark
            t1 = time.perf_counter()
            for _ in range(iters):
                loss = step()
            ms = 1000.0 * (time.perf_counter() - t1) / iters
        return {"ms_per_iter": round(ms, 4),
                "img_per_s": round(batch * 1000.0 / ms, 2),
                "final_loss": float(loss), "warmup_s": round(warmup_s, 2),
                "settings": settings,
                "autocast": "bf16" if name == "bf16_channels_last" else None,
                "channels_last": channels_last}
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
        if cuda:
            torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--json", help="write the result here (default stdout)")
    ap.add_argument("--device", default="cuda",
                    help="cuda (default), or cpu to check this script on a "
                         "machine without a GPU (with a small --batch)")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}")

    try:
        import torch
        import torchvision
    except ImportError as e:
        print(f"torch_twin.py: {e} (torch and torchvision are needed)",
              file=sys.stderr)
        return 1
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("torch_twin.py: no CUDA device", file=sys.stderr)
        return 1
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else args.device,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "batch": args.batch, "classes": args.classes,
        "input": [3, 224, 224], "warmup": args.warmup, "iters": args.iters,
        "model": "torchvision.models.vgg16(num_classes=K), train mode "
                 "(dropout 0.5)",
        "loss": f"{LAMBDA} * KL(p||softmax z) + {1 - LAMBDA:.1f} * "
                "CE(z, argmax p)",
        "optimizer": "SGD lr 1e-4 momentum 0.9 weight_decay 0.005 "
                     "(biases 2x lr, all decayed; last layer 10x / 20x)",
        "data": "constant images (1.0), uniform labels (1/K), on the GPU",
        "variants": {},
    }
    for name in names:
        try:
            result["variants"][name] = run_variant(
                name, args.batch, args.classes, args.warmup, args.iters,
                args.device)
        except Exception as e:  # keep the others
            result["variants"][name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"torch_twin: {name}: {result['variants'][name]}",
              file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
