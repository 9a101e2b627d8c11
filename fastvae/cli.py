"""The `fastvae` command line: `fastvae info` (and the model's train/mix/eval)."""
import argparse
import platform
import sys

import torch


def info(_args) -> int:
    import fastvae
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"fastvae {fastvae.__version__}")
    print(f"python  {platform.python_version()}")
    print(f"torch   {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    print(f"triton  {triton_version}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}  {torch.cuda.get_device_name(i)}")
    else:
        print("cuda    no device")
    print("\nbackends (backend, device, op):")
    for status in fastvae.backends():
        print(status)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and which backends are built").set_defaults(
        run=info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
