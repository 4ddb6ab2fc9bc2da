"""``python -m reparam_bridge demo [--out DIR] [--quick]``."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reparam_bridge")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="MAP fit → NUTS → ArviZ summary → trace plot PNG")
    demo.add_argument("--out", default="outputs", help="folder for the figure (default: outputs/)")
    demo.add_argument("--quick", action="store_true", help="fewer draws (for tests)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        n = 200 if args.quick else 500
        run_demo(args.out, num_warmup=n, num_samples=n, progress_bar=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
