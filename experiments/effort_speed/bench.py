"""Inference images/s: the merged Effort model vs the untouched base model, measured side by side.

Effort's residual is folded into plain weights after training, so a tuned detector should cost
exactly what its backbone costs. This script builds the backbone twice (same weights), applies Effort
to one copy, nudges the residuals (as training would), merges them, and times both models in
interleaved rounds in one process (the unmerged, parametrized model is timed too, for reference).

    python experiments/effort_speed/bench.py --backbone effnet-lite0 --image-size 224 --batch-size 16
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from detector.backbones import create_backbone
from detector.effort import apply_effort, merge_effort
from detector.training.model import resolve_targets


def timed(model: torch.nn.Module, batch: torch.Tensor, iters: int) -> float:
    """Images per second over ``iters`` forward passes (after the caller's warm-up)."""
    if batch.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(iters):
            model(batch)
    if batch.device.type == "cuda":
        torch.cuda.synchronize()
    return iters * batch.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--targets", default="auto", help="comma list of Effort targets (default auto)")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5, help="forward passes per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    base = create_backbone(args.backbone).to(device).eval()
    targets = resolve_targets(base.model, args.targets.split(","))

    def tuned() -> torch.nn.Module:
        """A copy of ``base`` with Effort applied and its residuals moved off their initial values (as
        training would), identically each call. (Parametrized modules cannot be deep-copied.)"""
        model = copy.deepcopy(base)
        wrapped = apply_effort(model.model, targets, rank=args.rank)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for target in wrapped:
                for part in target.residual.parts:
                    part.S_res.mul_(1.5)
                    noise = torch.randn(part.U_res.shape, generator=generator).to(part.U_res)
                    part.U_res.add_(0.01 * noise)
        return model.eval(), wrapped

    unmerged, wrapped = tuned()
    merged, _ = tuned()
    merge_effort(merged.model)
    batch = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    with torch.inference_mode():
        diff = (merged(batch) - unmerged(batch)).abs().max().item()
    models = {"base": base, "effort-merged": merged, "effort-unmerged": unmerged}
    for model in models.values():  # warm-up
        timed(model, batch, 1)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            rates[name].append(timed(model, batch, args.iters))
    median = {name: sorted(r)[len(r) // 2] for name, r in rates.items()}
    matrices = sum(len(t.residual.parts) for t in wrapped)
    print(
        f"backbone {args.backbone} on {device} ({torch.get_num_threads()} threads), batch {args.batch_size} x "
        f"{args.image_size}px, Effort targets {targets} ({matrices} matrices, k={args.rank}); "
        f"max |merged - unmerged| = {diff:.2e}"
    )
    print(f"{'model':<18}{'images/s (median)':>20}{'ratio to base':>16}")
    for name, rate in median.items():
        print(f"{name:<18}{rate:>20.1f}{rate / median['base']:>16.3f}")
    ratio = median["effort-merged"] / median["base"]
    print(f"merged/base ratio {ratio:.3f} (target >= 0.95): {'PASS' if ratio >= 0.95 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
