"""fastvae.train: a short run writes its files and the loss falls; a killed run resumed
from its checkpoint logs exactly the losses of an uninterrupted one; two DDP processes."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from fastvae import train
from fastvae.model import StyleVAE

# a tiny model on 32 px demo crops: ~0.1 s a step
TINY = ["--image-size", "32", "--base-channels", "8", "--content-channels", "4",
        "--style-dim", "8", "--batch-size", "4", "--kl-warmup-steps", "5",
        "--sample-every", "0", "--checkpoint-every", "0"]


def history(run_dir) -> dict:
    return train.load_checkpoint(os.path.join(run_dir, train.CHECKPOINT_FILE))["history"]


def test_train_writes_files_and_loss_falls(tmp_path):
    run = tmp_path / "run"
    assert train.main([str(x) for x in ["--out", run, "--steps", 30, "--lr", 3e-3,
                                         "--sample-every", 15] + TINY[:-4]]) == 0
    for name in (train.CHECKPOINT_FILE, "model.safetensors", train.SAMPLES_FILE, train.CURVE_FILE):
        assert (run / name).is_file(), name
    losses = history(run)["loss"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    model = StyleVAE.load(str(run))
    assert model.config.image_size == 32 and model.config.base_channels == 8
    grid = Image.open(run / train.SAMPLES_FILE)
    assert grid.size[0] == grid.size[1] > 5 * 32  # 4 styles + a column of contents
    ckpt = train.load_checkpoint(str(run / train.CHECKPOINT_FILE))
    assert ckpt["step"] == 30 and set(ckpt["rng"]) == {0}
    assert ckpt["optimizer"]["state"][0]["step"].item() == 30


def test_resume_continues_exactly(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train.main(["--out", str(whole), "--steps", "6"] + TINY)
    train.main(["--out", str(split), "--steps", "3"] + TINY)
    assert len(history(split)["loss"]) == 3
    train.main(["--out", str(split), "--steps", "6", "--resume"] + TINY)
    a, b = history(whole), history(split)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(torch.tensor(b[name]), torch.tensor(a[name]),
                                   rtol=1e-6, atol=1e-7, msg=name)
    wa, wb = StyleVAE.load(str(whole)).state_dict(), StyleVAE.load(str(split)).state_dict()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-6, atol=1e-7, msg=name)


def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILL a training process after its first checkpoints, resume: the same losses.

    Every run is a process of its own on one thread: float sums are ordered by the
    thread count, so runs on different counts differ in the last bits (not a resume bug).
    """
    steps = "16"
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    def command(out, *extra):
        return [sys.executable, "-m", "fastvae.train", "--out", str(out), "--steps", steps,
                "--num-threads", "1", *extra] + TINY[:-2]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(whole, "--checkpoint-every", "0"), env=env, check=True,
                   capture_output=True, timeout=240)
    proc = subprocess.Popen(command(killed, "--checkpoint-every", "2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / train.CHECKPOINT_FILE
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = train.load_checkpoint(str(checkpoint))["step"]
    assert 0 < stopped_at < int(steps), "the process was not killed mid-run"
    subprocess.run(command(killed, "--checkpoint-every", "0", "--resume"), env=env, check=True,
                   capture_output=True, timeout=240)
    a, b = history(whole), history(killed)
    for name in a:
        torch.testing.assert_close(torch.tensor(b[name]), torch.tensor(a[name]),
                                   rtol=1e-6, atol=1e-7, msg=name)


def test_resume_without_checkpoint_fails(tmp_path):
    with pytest.raises(SystemExit, match="no .*checkpoint"):
        train.main(["--out", str(tmp_path), "--steps", "1", "--resume"] + TINY)


def test_loss_curve_png(tmp_path):
    for values in ([], [1.0], [3.0, 2.0, float("nan"), 1.0, 0.5]):
        path = str(tmp_path / "curve.png")
        train.draw_loss_curve({"loss": values}, path)
        assert Image.open(path).size == (640, 360)


def test_ddp_two_processes(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    run = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "fastvae.train",
           "--out", str(run), "--steps", "3", "--checkpoint-every", "2"] + TINY[:-2]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = train.load_checkpoint(str(run / train.CHECKPOINT_FILE))
    assert ckpt["step"] == 3 and set(ckpt["rng"]) == {0, 1}
    # each rank draws its own crops from its own generator, both checkpointed
    assert not torch.equal(ckpt["rng"][0]["data"], ckpt["rng"][1]["data"])
    assert (run / "model.safetensors").is_file()
