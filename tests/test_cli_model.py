"""`fastvae mix` and `fastvae eval` end to end on a tiny StyleVAE, their argument errors,
and the mixing helpers (weights, masks, colour preservation)."""
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from fastvae.cli import main
from fastvae.data import load_image
from fastvae.mix import load_mask, normalize_weights, preserve_color
from fastvae.style_stats import rgb_to_lab


def test_normalize_weights():
    assert normalize_weights(None, 4) == [0.25] * 4
    assert normalize_weights([1, 3], 2) == [0.25, 0.75]
    assert normalize_weights(None, 2, masked=True) == [1.0, 1.0]
    assert normalize_weights([1, 3], 2, masked=True) == [1 / 3, 1.0]
    with pytest.raises(ValueError, match="--weights: got 3 weights for 2 styles"):
        normalize_weights([1, 1, 1], 2)
    with pytest.raises(ValueError, match="--weights: need non-negative"):
        normalize_weights([1, -1], 2)
    with pytest.raises(ValueError, match="--weights"):
        normalize_weights([0, 0], 2)


def test_preserve_color_keeps_lightness_of_output_and_colour_of_content():
    g = torch.Generator().manual_seed(0)
    # muted colours and mid-grey lightness: the swapped colours stay in the sRGB gamut
    content = 0.45 + 0.1 * torch.rand(1, 3, 16, 16, generator=g)
    output = (0.3 + 0.4 * torch.rand(1, 1, 16, 16, generator=g)).expand(1, 3, 16, 16)
    lab = rgb_to_lab(preserve_color(output, content))
    torch.testing.assert_close(lab[:, 0], rgb_to_lab(output)[:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(lab[:, 1:], rgb_to_lab(content)[:, 1:], atol=1e-3, rtol=0)


def test_load_mask_follows_the_content_geometry(tmp_path):
    left_half = np.zeros((20, 40), np.uint8)
    left_half[:, :20] = 255
    Image.fromarray(left_half).save(tmp_path / "same_aspect.png")
    mask = load_mask(tmp_path / "same_aspect.png", (10, 20), 8, (8, 8))  # content 10x20
    assert mask.shape == (1, 1, 8, 8)
    # the centre crop of a left/right split: left half white, right half black
    assert mask[..., :, :3].min() > 0.9 and mask[..., :, 5:].max() < 0.1
    Image.fromarray(left_half).convert("RGB").save(tmp_path / "other_aspect.png")
    stretched = load_mask(tmp_path / "other_aspect.png", (30, 30), 8, (8, 8))
    assert stretched[..., :, :3].min() > 0.9 and stretched[..., :, 5:].max() < 0.1


# ---------------------------------------------------------------- end to end on a tiny model

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny untrained StyleVAE (as a file and as a run folder) and small images."""
    from fastvae.model import StyleVAE, StyleVAEConfig

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = StyleVAE(StyleVAEConfig(image_size=32, base_channels=8, content_channels=4,
                                    style_dim=8))
    model.save(str(root / "tiny.safetensors"))
    (root / "run").mkdir()
    model.save(str(root / "run" / "model.safetensors"))
    rng = np.random.RandomState(1)
    paths = {}
    for name, shape in [("content", (40, 48, 3)), ("s1", (36, 36, 3)), ("s2", (50, 30, 3))]:
        paths[name] = root / f"{name}.png"
        Image.fromarray((rng.rand(*shape) * 255).astype(np.uint8)).save(paths[name])
    left = np.zeros((40, 48), np.uint8)
    left[:, :24] = 255
    paths["m1"], paths["m2"] = root / "m1.png", root / "m2.png"
    Image.fromarray(left).save(paths["m1"])
    Image.fromarray(255 - left).save(paths["m2"])
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(folder / "a.jpg")
    Image.fromarray((rng.rand(24, 40) * 255).astype(np.uint8)).save(folder / "sub" / "b.png")
    (folder / "broken.png").write_bytes(b"not an image")
    paths.update(root=root, folder=folder, ckpt=root / "tiny.safetensors", run=root / "run")
    return {k: str(v) for k, v in paths.items()}


def test_mix_end_to_end_matches_the_model(files, tmp_path, capsys):
    from fastvae.mix import fit
    from fastvae.model import StyleVAE

    out = tmp_path / "out.png"
    assert main(["mix", files["content"], "--checkpoint", files["ckpt"], "--style", files["s1"],
                 "--style", files["s2"], "--weights", "1", "3", "--alpha", "0.8",
                 "-o", str(out)]) == 0
    got = load_image(out)
    assert got.shape == (3, 32, 36)  # short side 32, aspect kept, sides multiples of 4
    model = StyleVAE.load(files["ckpt"]).eval()
    content = fit(load_image(files["content"]), 32, 4)[None]
    styles = [fit(load_image(files[s]), 32, 4)[None] for s in ("s1", "s2")]
    want = model.mix(content, styles, weights=[0.25, 0.75], alpha=0.8)[0]
    torch.testing.assert_close(got, want, atol=1 / 255, rtol=0)  # 8-bit rounding
    assert str(out) in capsys.readouterr().out


def test_mix_with_masks_and_preserved_colour(files, tmp_path):
    from fastvae.model import StyleVAE

    out = tmp_path / "masked.png"
    args = ["mix", files["content"], "--checkpoint", files["run"], "--style", files["s1"],
            "--style", files["s2"], "--mask", files["m1"], "--mask", files["m2"],
            "--size", "16", "-o", str(out)]
    assert main(args) == 0
    got = load_image(out)
    assert got.shape == (3, 16, 16)  # 40x48 at short side 16 -> 16x19 -> 16x16
    model = StyleVAE.load(files["run"]).eval()
    content = load_image(files["content"], 16)[None]
    styles = [load_image(files[s], 16)[None] for s in ("s1", "s2")]
    masks = [load_mask(files[m], (40, 48), 16, (16, 16)) for m in ("m1", "m2")]
    want = model.mix(content, styles, weights=[1.0, 1.0], masks=masks)[0]
    torch.testing.assert_close(got, want, atol=1 / 255, rtol=0)
    assert main(args[:-2] + ["--preserve-color", "-o", str(tmp_path / "kept.png")]) == 0
    kept = rgb_to_lab(load_image(tmp_path / "kept.png")[None])
    torch.testing.assert_close(kept[:, 1:], rgb_to_lab(preserve_color(want[None], content))[:, 1:],
                               atol=1.0, rtol=0)


def test_mix_folder_writes_one_file_per_image(files, tmp_path, capsys):
    out = tmp_path / "outs"
    assert main(["mix", files["folder"], "--checkpoint", files["ckpt"], "--style", files["s1"],
                 "-o", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a.png", "sub/b.png"]
    assert load_image(out / "sub" / "b.png").shape == (3, 32, 52)
    err = capsys.readouterr().err
    assert "skipping" in err and "broken.png" in err


def test_eval_end_to_end(files, tmp_path, capsys):
    out = tmp_path / "results" / "eval.json"
    folder_images = str(tmp_path / "images")
    shutil.copytree(files["folder"], folder_images, ignore=shutil.ignore_patterns("broken*"))
    assert main(["eval", "--checkpoint", files["run"], folder_images, "--pairs", "1",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "2 images at 32x32, 1 content/style pairs" in table and "Lab colour transfer" in table
    results = json.loads(out.read_text())
    assert results["names"] == ["a.jpg", "sub/b.png"] and results["pairs"] == 1
    assert set(results["stylize"]) == {"stylevae", "content_unchanged", "lab_transfer"}
    assert results["elbo"]["bits_per_dim"] > 0


def test_eval_on_the_demo_images(files, capsys):
    from fastvae.data import demo_images

    assert main(["eval", "--checkpoint", files["ckpt"], "--size", "16", "--pairs", "2"]) == 0
    n = len(demo_images())
    assert f"{n} images at 16x16, 2 content/style pairs" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["mix", "{content}", "--style", "{root}/nope.png", "-o", "{tmp}/o.png"], "--style: no such"),
    (["mix", "{content}", "--style", "{s1}", "--weights", "1", "2", "-o", "{tmp}/o.png"],
     "--weights: got 2 weights for 1 styles"),
    (["mix", "{content}", "--style", "{s1}", "--style", "{s2}", "--mask", "{m1}",
      "-o", "{tmp}/o.png"], "--mask: got 1 masks for 2 styles"),
    (["mix", "{root}/none.png", "--style", "{s1}", "-o", "{tmp}/o.png"], "CONTENT: no such"),
    (["mix", "{content}", "--style", "{s1}", "-o", "{tmp}/o"], "-o: give an image file"),
    (["mix", "{folder}", "--style", "{s1}", "-o", "{tmp}/o.png"], "-o: CONTENT is a folder"),
    (["mix", "{content}", "--style", "{folder}/broken.png", "-o", "{tmp}/o.png"],
     "--style: cannot read"),
    (["eval", "{root}/no_such_dir"], "IMAGE_DIR: no such"),
    (["eval", "--size", "18"], "--size: must be a multiple of 4"),
])
def test_bad_arguments_name_the_argument(files, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, **files) for a in argv]
    argv[1:1] = ["--checkpoint", files["ckpt"]]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("checkpoint,message", [
    ("{root}/missing.safetensors", "--checkpoint: no such file"),
    ("{content}", "--checkpoint: cannot load"),
])
def test_bad_checkpoint(files, tmp_path, capsys, checkpoint, message):
    with pytest.raises(SystemExit):
        main(["mix", files["content"], "--checkpoint", checkpoint.format(**files),
              "--style", files["s1"], "-o", str(tmp_path / "o.png")])
    assert message in capsys.readouterr().err


def test_train_forwards_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("fastvae.train")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "fastvae.train", fake)
    assert main(["train", "--steps", "3", "--help"]) == 0
    assert seen == [["--steps", "3", "--help"]]
