"""Two tagged suite runs row by row (refined against plain marks, or one decoder against another), on
the photos both runs measured.

TPR: watermarked with the right payload (marked and subtracted rows); for copy rows, the share of clean
photos declared ``watermarked`` (the forgery criterion), with the copy's PSNR. Reads the suite's CSVs.

    python experiments/watermark_refine/compare.py --new refine15 --old binding_v2_ml   # writes compare_<new>.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = HERE.parent / "watermark_attacks"
sys.path.insert(0, str(SUITE))

from run import read_csv  # noqa: E402


def load(tag: str) -> dict[tuple[str, str], dict]:
    return {(r["attack"], r["image"]): r for r in read_csv(SUITE / f"results_bound_{tag}.csv")}


def hit(row: dict) -> bool:
    if row["family"] == "copy" or row["family"] == "clean":
        return row["status"] == "watermarked"
    return row["status"] == "watermarked" and row["payload_ok"] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", default="refine15")
    parser.add_argument("--old", default="binding_v2_ml")
    args = parser.parse_args()
    new, old = load(args.new), load(args.old)
    images = sorted({i for _, i in new} & {i for _, i in old})
    attacks = list(dict.fromkeys(a for a, _ in new))
    lines = [
        f"# Suite rows, `{args.new}` against `{args.old}`, on the {len(images)} photos both measured",
        "",
        f"Command: `python experiments/watermark_refine/compare.py --new {args.new} --old {args.old}`; "
        "the CSVs are the suite's (`experiments/watermark_attacks/results_bound_<tag>.csv`). Marked and "
        "subtract rows: watermarked with the right payload; copy and clean rows: declared watermarked "
        "(lower is better). PSNR: of the attacked image against its reference, mean.",
        "",
        f"| attack | {args.old} | {args.new} | PSNR {args.old} | PSNR {args.new} |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for attack in attacks:
        pairs = [(old.get((attack, i)), new.get((attack, i))) for i in images]
        pairs = [(o, n) for o, n in pairs if o is not None and n is not None]
        if not pairs:
            continue

        def psnr(rows):
            vals = [float(r["psnr"]) for r in rows if r["psnr"] not in ("", "inf")]
            return f"{sum(vals) / len(vals):.1f}" if vals else ""

        a = sum(hit(o) for o, _ in pairs) / len(pairs)
        b = sum(hit(n) for _, n in pairs) / len(pairs)
        lines.append(
            f"| {attack} | {a:.2f} | {b:.2f} | {psnr([o for o, _ in pairs])} | {psnr([n for _, n in pairs])} |"
        )
    out = HERE / f"compare_{args.new}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
