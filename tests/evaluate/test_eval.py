"""`deploy eval` on every CPU-runnable artifact with the recipe read from the file (deploy/evaluation/run.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deploy


def _report(run) -> dict:
    assert run.exit_code == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def test_every_artifact_agrees_with_the_training_accuracy(trained, deploy_cli) -> None:
    """The PNGs of the test split through each artifact's recorded recipe give the accuracy training measured
    on the tensors (359 images: the same predictions, up to one image)."""
    ckpt, onnx_path, images, meta = trained
    expected = meta["test_accuracy"]
    for args in ((ckpt,), (onnx_path,), (ckpt, "--no-fold")):
        rep = _report(deploy_cli("eval", *args, "--data", images, "--json"))
        acc = rep["model"]["accuracy"]
        assert rep["model"]["images"] == 359 and abs(acc["top1"]["value"] - expected) <= 1 / 359 + 1e-12, (args, acc)
        low, high = acc["top1"]["low"], acc["top1"]["high"]
        assert low < acc["top1"]["value"] < high and high - low < 0.1  # Wilson, 359 images
        assert set(acc["per_class"]) == {str(c) for c in range(10)} and rep["model"]["images_per_s"] > 0
        assert rep["recipe"]["color"] == "gray" and rep["recipe"]["resize"] == [32, 32]


def test_vs_itself_agrees_fully_and_a_broken_class_is_gated(trained, deploy_cli, tmp_path) -> None:
    ckpt, onnx_path, images, _ = trained
    rep = _report(deploy_cli("eval", onnx_path, "--data", images, "--vs", ckpt, "--json"))
    c = rep["comparison"]
    assert c["agreement"]["value"] == 1.0 and c["flips"] == []
    assert c["difference"]["low"] <= 0.0 <= c["difference"]["high"] and c["mcnemar_p"] == 1.0

    broken = torch.load(ckpt, weights_only=True)
    broken["state_dict"]["fc.weight"][3] = 0.0  # class 3 can no longer win
    broken["state_dict"]["fc.bias"][3] = -100.0
    bad = tmp_path / "broken.pt"
    torch.save(broken, bad)
    run = deploy_cli("eval", bad, "--data", images, "--vs", ckpt, "--max-drop", 1)
    assert run.exit_code == 3, run.stdout + run.stderr
    line = run.one_error_line()
    assert "drops" in line and "more than --max-drop 1" in line and "A - B" in line
    run = deploy_cli("eval", bad, "--data", images, "--min-accuracy", 99.9)
    assert run.exit_code == 3 and "below --min-accuracy 99.9 %" in run.one_error_line()


def test_unlabelled_arrays_and_the_api(trained, tmp_path) -> None:
    ckpt, onnx_path, _, _ = trained
    from deploy.models.digits import load_digits

    x = load_digits()[1].x[:40].numpy()
    np.savez(tmp_path / "x.npz", x=x)
    report = deploy.evaluate(onnx_path, tmp_path / "x.npz", vs=ckpt, batch=16)
    assert report.model.accuracy is None and report.model.images == 40 and "unlabelled" in report.data
    assert report.comparison is not None and report.comparison.difference is None
    assert report.comparison.agreement.value == 1.0


def test_bad_images_are_one_line_or_skipped(trained, deploy_cli, tmp_path) -> None:
    _, onnx_path, images, _ = trained
    folder = tmp_path / "bad"
    for c in ("0", "1"):
        (folder / c).mkdir(parents=True)
        for p in sorted((images / c).iterdir())[:3]:
            (folder / c / p.name).write_bytes(p.read_bytes())
    good = sorted((folder / "0").iterdir())[0].read_bytes()
    for name, data in (("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), ("truncated.png", good[: len(good) // 2]),
                       ("empty.png", b"")):
        target = folder / "1" / name
        target.write_bytes(data)
        run = deploy_cli("eval", onnx_path, "--data", folder)
        assert run.exit_code == 2 and f"{name} is not a readable image" in run.one_error_line(), run.stderr
        rep = _report(deploy_cli("eval", onnx_path, "--data", folder, "--skip-bad", "--json"))
        assert rep["skipped"] == [f"1/{name}"] and rep["model"]["images"] == 6
        target.unlink()


@pytest.mark.parametrize("case,expected", [("empty-class", "holds no images"), ("no-recipe", "records no preprocessing"),
                                           ("labels-outside", "labels up to 10"), ("outside-link", None)])
def test_data_mistakes(case, expected, trained, deploy_cli, tmp_path) -> None:
    ckpt, onnx_path, images, _ = trained
    folder = tmp_path / "data"
    for c in range(10):
        (folder / str(c)).mkdir(parents=True)
        src = sorted((images / str(c)).iterdir())[0]
        (folder / str(c) / src.name).write_bytes(src.read_bytes())
    artifact = onnx_path
    if case == "empty-class":
        (folder / "9" / next((folder / "9").iterdir()).name).unlink()
    elif case == "no-recipe":
        import onnx

        proto = onnx.load(str(onnx_path))
        kept = [p for p in proto.metadata_props if p.key != "convdeploy.preprocess"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        artifact = tmp_path / "plain.onnx"
        onnx.save(proto, str(artifact))
    elif case == "labels-outside":
        (folder / "x").mkdir()
        (folder / "x" / "a.png").write_bytes(next((folder / "0").iterdir()).read_bytes())
    else:
        outside = tmp_path / "outside.png"
        outside.write_bytes(next((folder / "0").iterdir()).read_bytes())
        (folder / "0" / "link.png").symlink_to(outside)
    run = deploy_cli("eval", artifact, "--data", folder, "--json")
    if expected is None:
        assert _report(run)["model"]["images"] == 10  # the link leading outside the folder is not followed
    else:
        assert run.exit_code == 2 and expected in run.one_error_line(), run.stderr


def test_export_data_option_uses_the_same_evaluation(trained, deploy_cli, tmp_path) -> None:
    ckpt, _, images, meta = trained
    run = deploy_cli("export", ckpt, "-o", tmp_path / "e.onnx", "--samples", 1, "--exporter", "torchscript",
                     "--no-rewrite-diff", "--data", images)
    assert run.exit_code == 0, run.stderr
    acc = json.loads((tmp_path / "e.report.json").read_text())["accuracy"]
    assert acc["images"] == 359 and "image folder" in acc["data"]
    assert abs(acc["onnxruntime"] - meta["test_accuracy"]) <= 1 / 359 + 1e-12
    assert acc["reports"]["folded"]["top1"]["low"] < acc["folded"]
