"""The `fastvae` command line: `info`, and the StyleVAE's `train`, `mix` and `eval`."""
import argparse
import json
import platform
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from .backends import cpu_description


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
    print(f"cpu     {cpu_description()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}  {torch.cuda.get_device_name(i)}")
    else:
        print("cuda    no device")
    print("\nbackends (backend, device, op):")
    for status in fastvae.backends():
        print(status)
    print("\nbackend='auto' runs (op, device):")
    for op in ("reparam_kl", "deconv_block"):
        for device in ("cpu", "cuda"):
            print(f"    {op:13s} {device:5s} {auto_choice(op, device)}")
    return 0


def auto_choice(op: str, device: str) -> str:
    """What backend='auto' runs for `op` on `device` on this install."""
    from . import _eager_deconv
    from .backends import resolve
    concrete = resolve("auto", op, torch.device(device))
    stand_in = SimpleNamespace(device=torch.device(device), dtype=torch.float32)
    if op == "deconv_block" and _eager_deconv.uses_eager("auto", concrete, stand_in):
        return (f"eager PyTorch ops ({concrete}'s fused block measured slower on CUDA: "
                "fastvae/_eager_deconv.py)")
    return concrete


def load_model(checkpoint: str, device: str, parser: argparse.ArgumentParser):
    """StyleVAE.load with errors that name --checkpoint, in eval mode on `device`."""
    from .model import StyleVAE

    if not Path(checkpoint).exists():
        parser.error(f"--checkpoint: no such file or folder: {checkpoint}")
    try:
        model = StyleVAE.load(checkpoint)
    except Exception as error:  # a wrong file, a bad run folder, a version mismatch
        parser.error(f"--checkpoint: cannot load {checkpoint}: {type(error).__name__}: {error}")
    return model.to(device).eval()


def mix(args) -> int:
    from . import mix as mixing

    return mixing.run(args, args.parser, lambda path, device: load_model(path, device,
                                                                         args.parser))


def evaluate(args) -> int:
    from .data import ImageDataset
    from .evaluate import evaluate as run_evaluation, format_table

    parser = args.parser
    if args.images is not None and not Path(args.images).exists():
        parser.error(f"IMAGE_DIR: no such file or folder: {args.images}")
    if args.pairs is not None and args.pairs < 0:
        parser.error(f"--pairs: must be >= 0, got {args.pairs}")
    if args.size is not None and args.size < 11:
        parser.error(f"--size: must be at least 11 (the SSIM window), got {args.size}")
    model = load_model(args.checkpoint, args.device, parser)
    size = args.size or model.config.image_size
    if size % model.config.content_downsample:
        parser.error(f"--size: must be a multiple of {model.config.content_downsample} (the "
                     f"model's downsampling), got {size}")
    try:
        dataset = ImageDataset(args.images, size)
    except ValueError as error:
        parser.error(f"IMAGE_DIR: {error}")
    results = run_evaluation(model, dataset, pairs=args.pairs, batch_size=args.batch_size)
    results["checkpoint"] = str(args.checkpoint)
    print(format_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and which backends are built").set_defaults(
        run=info)
    # Listed for --help only: main() hands `train` and its arguments to fastvae.train.main.
    sub.add_parser("train", help="train a StyleVAE (fastvae train --help)", add_help=False)

    from .mix import add_arguments as add_mix_arguments
    mix_parser = sub.add_parser(
        "mix", help="stylize images with a weighted, optionally masked, mix of styles",
        description="Stylize CONTENT with a mix of --style images (fastvae.mix).")
    add_mix_arguments(mix_parser)
    mix_parser.set_defaults(run=mix, parser=mix_parser)

    eval_parser = sub.add_parser(
        "eval", help="score a checkpoint: reconstruction, ELBO, style transfer vs baselines",
        description="Evaluate a StyleVAE checkpoint (fastvae.evaluate).")
    eval_parser.add_argument("images", nargs="?", metavar="IMAGE_DIR",
                             help="a folder of images (default: the scikit-image demo images)")
    eval_parser.add_argument("--checkpoint", required=True,
                             help="a StyleVAE checkpoint file or training run folder")
    eval_parser.add_argument("--size", type=int,
                             help="image side (default: the model's training size)")
    eval_parser.add_argument("--pairs", type=int,
                             help="score a fixed random subset of K content/style pairs "
                                  "(default: every ordered pair)")
    eval_parser.add_argument("--batch-size", type=int, default=16)
    eval_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    eval_parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    eval_parser.set_defaults(run=evaluate, parser=eval_parser)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # train owns its argparse, so its --help lists its options
        from .train import main as train_main
        return train_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
