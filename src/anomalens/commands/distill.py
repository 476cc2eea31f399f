"""``anomalens distill-teacher``: EfficientAD's teacher pretraining — a PDN regresses a pretrained backbone's
features on a pool of images (``anomalens.models.components.pdn.distil_teacher``) — written as a
``.safetensors`` file for ``efficientad``'s ``teacher`` parameter."""

from __future__ import annotations

import argparse

from anomalens.commands.options import add_log_arguments, device_name, image_size


def add_distill_teacher_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="pretrained network distilled from: a bundled or timm name (default efficientnet_lite0; "
                        "the paper: wide_resnet101_2 with its weights, --weights)")
    p.add_argument("--weights", default=None, help="the backbone's weights file (default: bundled / timm pretrained)")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2],
                   help="backbone levels whose features, resampled onto the PDN grid, are the target (default 1 2)")
    p.add_argument("--images", default=None,
                   help="folder of images to distil on (ImageNet, or your own pool); default: the photos bundled "
                        "with scikit-image and scikit-learn")
    p.add_argument("--size", choices=["small", "medium"], default="small", help="PDN size (default small)")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps (the paper: 60,000 at batch 16)")
    p.add_argument("--batch-size", type=int, default=8, help="random crops per step (default 8)")
    p.add_argument("--image-size", type=image_size, default=256, help="crop size in pixels: N or HxW (default 256)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4, the paper's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("-o", "--output", required=True, help="teacher file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing teacher file")
    add_log_arguments(p)
    p.set_defaults(func=run_distill_teacher)


def run_distill_teacher(args: argparse.Namespace) -> None:
    from pathlib import Path

    from anomalens.errors import ConfigError

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise ConfigError(f"{out}: the teacher file must end in .safetensors")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: exists (--overwrite replaces it)")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent}: folder not found")
    if args.steps < 1 or args.batch_size < 1:
        raise ConfigError("--steps and --batch-size must be at least 1")
    size = (args.image_size, args.image_size) if isinstance(args.image_size, int) else tuple(args.image_size)
    if min(size) < 64:
        raise ConfigError(f"--image-size must be at least 64 px, got {args.image_size}")

    from anomalens.backbones import FeatureExtractor
    from anomalens.devices import resolve_device
    from anomalens.models.components.pdn import (
        BackboneTeacher,
        distil_teacher,
        image_pool,
        save_teacher,
    )

    device = resolve_device(args.device)
    target = BackboneTeacher(FeatureExtractor(args.backbone, args.layers, args.weights), size).to(device)
    pool = image_pool(args.images, size, seed=args.seed).to(device)
    quiet = getattr(args, "quiet", False)
    every = max(1, args.steps // 10)

    def report(step: int, loss: float) -> None:
        if not quiet and (step + 1) % every == 0:
            print(f"step {step + 1}/{args.steps}: loss {loss:.4f}", flush=True)

    pdn, losses = distil_teacher(target, pool, args.size, args.steps, args.batch_size, lr=args.lr, seed=args.seed,
                                 progress=report)
    provenance = {"backbone": args.backbone, "weights": args.weights, "layers": list(args.layers),
                  "images": args.images or "scikit-image + scikit-learn photos", "pool_size": len(pool),
                  "steps": args.steps, "batch_size": args.batch_size, "image_size": list(size), "lr": args.lr,
                  "seed": args.seed, "final_loss": sum(losses[-10:]) / len(losses[-10:])}
    save_teacher(out, pdn.cpu(), provenance)
    print(f"wrote {out}: a {args.size} PDN with {pdn.out_channels} channels distilled from {args.backbone} "
          f"levels {list(args.layers)} on {len(pool)} images, {args.steps} steps, final loss {provenance['final_loss']:.4f}")
