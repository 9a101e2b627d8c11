"""Train a StyleVAE: `fastvae train [IMAGE_DIR] --out RUN_DIR` (one process), or
`torchrun --standalone --nproc_per_node 2 -m fastvae.train ...` (DDP: gloo on CPU,
nccl on GPU; each rank draws its own crops, rank 0 writes the files).

RUN_DIR gets checkpoint.safetensors (everything --resume needs), model.safetensors
(what StyleVAE.load reads), samples.png (content rows x style columns) and
loss_curve.png. --resume continues exactly: the crops come from a generator whose
state is checkpointed, and the reparameterization seeds from torch's generator, whose
state is checkpointed too, so a resumed run logs the losses an uninterrupted one would.
"""
import argparse
import json
import math
import os
import time
from dataclasses import asdict, fields

import torch
import torch.distributed as dist

from .model import MODEL_FILE, StyleVAE, StyleVAEConfig, config_from_json, save_safetensors

CHECKPOINT_FILE = "checkpoint.safetensors"
SAMPLES_FILE = "samples.png"
CURVE_FILE = "loss_curve.png"
SAMPLE_IMAGES = 4  # content rows and style columns of the sample grid


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module doc as written, and every option's default."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastvae train", description=__doc__,
                                formatter_class=_HelpFormatter)
    p.add_argument("images", nargs="?", metavar="IMAGE_DIR",
                   help="a folder of images; none: the scikit-image demo images")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder")
    p.add_argument("--steps", type=int, default=1000, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="images per step per process")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR/checkpoint.safetensors (model flags are then ignored)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast the forward pass")
    p.add_argument("--backend", default="auto", help="fused-op backend: auto, reference, native, triton")
    p.add_argument("--sample-every", type=int, default=250, help="steps between sample grids (0: end only)")
    p.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (0: end only)")
    p.add_argument("--num-threads", type=int, help="torch CPU threads per process")
    model = p.add_argument_group("model (StyleVAEConfig; defaults meet the README's quality bar)")
    defaults = StyleVAEConfig()
    for f in fields(StyleVAEConfig):
        if f.name == "backend":
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        if isinstance(default, bool):
            model.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            model.add_argument(flag, type=type(default), default=default,
                               help=f"StyleVAEConfig.{f.name}")
    return p


# ------------------------------------------------------------------------- distributed


def _init_distributed():
    """(rank, world_size, device); joins the process group when torchrun launched us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def _gather_bytes(state: torch.Tensor, world: int, device) -> list[torch.Tensor]:
    """Every rank's uint8 RNG state (same size on all ranks), on the CPU."""
    if world == 1:
        return [state]
    t = state.to(device)
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


# ------------------------------------------------------------------------- checkpoints


def _rng_states(data_gen: torch.Generator, device) -> dict:
    states = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def save_checkpoint(path, model, optimizer, step, history, rng_per_rank, args) -> None:
    """Model, optimizer, step, each rank's RNG states, loss history: tensors in the file,
    the rest as JSON in its metadata (safetensors: no pickle)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "state": {}}
    for idx, state in opt["state"].items():
        opt_meta["state"][str(idx)] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                opt_meta["state"][str(idx)][key] = value
    for rank, states in enumerate(rng_per_rank):
        for name, state in states.items():
            tensors[f"rng.{name}.{rank}"] = state
    for name, values in history.items():
        tensors[f"history.{name}"] = torch.tensor(values, dtype=torch.float64)
    meta = {"format": "fastvae.train/1", "step": str(step),
            "config": json.dumps(asdict(model.config)), "optimizer": json.dumps(opt_meta),
            "history": json.dumps(list(history)), "args": json.dumps(vars(args))}
    save_safetensors(tensors, path, meta)


def load_checkpoint(path) -> dict:
    from safetensors import safe_open
    with safe_open(path, framework="pt", device="cpu") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    opt_meta = json.loads(meta["optimizer"])
    opt_state = {}
    for idx, scalars in opt_meta["state"].items():
        opt_state[int(idx)] = dict(scalars)
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    rng: dict = {}
    for key, value in tensors.items():
        if key.startswith("rng."):
            _, name, rank = key.split(".")
            rng.setdefault(int(rank), {})[name] = value
    return {
        "config": config_from_json(meta["config"]),
        "model": {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
        "optimizer": {"state": opt_state, "param_groups": opt_meta["param_groups"]},
        "step": int(meta["step"]),
        "rng": rng,
        "history": {name: tensors[f"history.{name}"].tolist() for name in json.loads(meta["history"])},
    }


# ------------------------------------------------------------------------- pictures


@torch.no_grad()
def sample_grid(model: StyleVAE, images: torch.Tensor) -> torch.Tensor:
    """(3, H', W'): a blank corner, the style images along the top, the content images
    down the left, and each content stylized by each style."""
    from .data import make_grid
    was_training = model.training
    model.eval()
    n = images.shape[0]
    cells = [torch.ones_like(images[0])] + list(images)
    for i in range(n):
        content = images[i:i + 1].expand(n, -1, -1, -1)
        cells += [images[i]] + list(model.stylize(content, images).float().clamp(0, 1))
    model.train(was_training)
    return make_grid(torch.stack(cells), nrow=n + 1)


def draw_loss_curve(history: dict, path: str, size=(640, 360)) -> None:
    """The total loss per step (thin, clipped to the box) and its running mean (thick), with
    PIL. The axis is linear (the loss can be negative: it holds a likelihood term) and spans
    the running mean, so the first steps' spikes do not flatten the rest."""
    from PIL import Image, ImageDraw
    losses = [v for v in history.get("loss", []) if math.isfinite(v)]
    w, h = size
    left, right, top, bottom = 60, 15, 25, 30
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text((left, 6), f"training loss, {len(losses)} steps (running mean thick)", fill="black")
    if len(losses) >= 2:
        k = max(1, len(losses) // 50)  # running mean over ~2% of the run
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                  for i in range(len(losses))]
        lo, hi = min(smooth), max(smooth)
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        lo, hi = lo - pad, hi + pad

        def point(i, v):
            x = left + (w - left - right) * i / (len(losses) - 1)
            y = top + (h - top - bottom) * (hi - min(max(v, lo), hi)) / (hi - lo)
            return x, y

        draw.line([point(i, v) for i, v in enumerate(losses)], fill=(170, 195, 235), width=1)
        draw.line([point(i, v) for i, v in enumerate(smooth)], fill=(20, 60, 160), width=2)
        for v in (hi, (hi + lo) / 2, lo):
            draw.text((4, point(0, v)[1] - 6), f"{v:.3g}", fill="black")
        draw.text((left, h - bottom + 8), "0", fill="black")
        draw.text((w - right - 40, h - bottom + 8), str(len(losses)), fill="black")
    _write_atomically(path, img.save)


def _save_png(t: torch.Tensor, path: str) -> None:
    from .data import save_image
    _write_atomically(path, lambda tmp: save_image(t, tmp))


def _write_atomically(path: str, write) -> None:
    """write(tmp) then rename over `path`: a crash never leaves a half-written PNG."""
    tmp = path + ".tmp.png"
    write(tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------- training


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 0 or args.batch_size < 1:
        raise SystemExit("fastvae train: --steps must be >= 0 and --batch-size >= 1")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    rank, world, device = _init_distributed()
    try:
        return _train(args, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(args, rank, world, device) -> int:
    from tqdm import tqdm

    from .data import ImageDataset
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, CHECKPOINT_FILE)
    ckpt = None
    if args.resume:
        if not os.path.isfile(ckpt_path):
            raise SystemExit(f"fastvae train: --resume but no {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path)
        config = ckpt["config"]
        config.backend = args.backend
    else:
        config = StyleVAEConfig(backend=args.backend, **{
            f.name: getattr(args, f.name) for f in fields(StyleVAEConfig) if f.name != "backend"})

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = StyleVAE(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # each rank its own crops and noise; restored from the checkpoint on --resume
    data_gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    torch.manual_seed(args.seed * 1000 + rank)
    step, history = 0, {}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, history = ckpt["step"], ckpt["history"]
        if rank not in ckpt["rng"]:
            raise SystemExit(f"fastvae train: the checkpoint has no RNG state for rank {rank} "
                             f"(resume with the same number of processes)")
        states = ckpt["rng"][rank]
        torch.set_rng_state(states["torch"])
        data_gen.set_state(states["data"])
        if device.type == "cuda" and "cuda" in states:
            torch.cuda.set_rng_state(states["cuda"], device)
        for group in optimizer.param_groups:
            group["lr"] = args.lr
    dataset = ImageDataset(args.images, config.image_size)
    grid_images = dataset.all()[:SAMPLE_IMAGES].to(device)
    net = model
    if world > 1:
        # no running statistics anywhere (the random features are fixed), so no buffers
        # need broadcasting each step
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def write_files(final=False):
        rng = _rng_states(data_gen, device)
        per_rank = [{name: states for name, states in zip(rng, gathered)} for gathered in zip(
            *[_gather_bytes(state, world, device) for state in rng.values()])]
        if rank == 0:
            save_checkpoint(ckpt_path, model, optimizer, step, history, per_rank, args)
            model.save(os.path.join(args.out, MODEL_FILE))
            draw_loss_curve(history, os.path.join(args.out, CURVE_FILE))

    def write_samples():
        if rank == 0:
            _save_png(sample_grid(model, grid_images), os.path.join(args.out, SAMPLES_FILE))

    model.train()
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True,
               desc="train")
    t_last, seen = time.perf_counter(), 0
    while step < args.steps:
        x = dataset.random_crops(args.batch_size, data_gen).to(device)
        with autocast:
            terms = net(x, step)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        logged = torch.stack([v.detach().float() for v in terms.values()])
        if world > 1:  # the mean over ranks is the loss of the whole step's batch
            dist.all_reduce(logged)
            logged /= world
        for name, value in zip(terms, logged.tolist()):
            history.setdefault(name, []).append(value)
        seen += args.batch_size * world
        now = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", img_s=f"{seen / (now - t_last):.0f}")
        if args.sample_every and step % args.sample_every == 0:
            write_samples()
        if args.checkpoint_every and step % args.checkpoint_every == 0 and step < args.steps:
            write_files()
    bar.close()
    write_samples()
    write_files()
    if rank == 0 and history.get("loss"):
        first, last = history["loss"][:10], history["loss"][-10:]
        print(f"fastvae train: {step} steps, loss {sum(first) / len(first):.4f} (first 10) -> "
              f"{sum(last) / len(last):.4f} (last 10); wrote {args.out}/{CHECKPOINT_FILE}, "
              f"{MODEL_FILE}, {SAMPLES_FILE}, {CURVE_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
