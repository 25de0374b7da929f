"""Predictor and `l2l predict` on a tiny random model saved to a temporary directory."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from l2l.cli.main import main
from l2l.errors import CheckpointError, InputError
from l2l.evaluation import Predictor, overlay
from l2l.model import ModelConfig, RESModel
from l2l.model.modeling import trained_proposal_method
from l2l.priors.prior import Prior


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    rgb = cv2.resize(skdata.chelsea(), (90, 60))
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_predictor_mask_at_original_size_matches_logits(checkpoint: Path, photo: Path) -> None:
    predictor = Predictor.from_pretrained(checkpoint)
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    mask = predictor(image, "the cat on the left")
    assert mask.dtype == np.bool_ and mask.shape == (60, 90)
    assert np.array_equal(predictor(str(photo), "the cat on the left"), mask)  # a path gives the same mask
    logits = predictor.logits(image, "the cat on the left")
    assert logits.shape == (1, 60, 90)
    assert np.array_equal(mask, (logits[0] > 0).numpy())
    # a prior map changes the input of the SESM path, and grayscale/RGBA inputs are accepted
    with_prior = predictor(image, "the cat on the left", prior=np.ones((60, 90), np.float32))
    assert with_prior.shape == (60, 90)
    assert predictor(image[:, :, 0], "cat").shape == (60, 90)
    assert predictor(np.dstack([image, np.full((60, 90), 255, np.uint8)]), "cat").shape == (60, 90)


def test_predictor_uses_the_training_proposal_and_no_proposal_for_a_failed_prior(tmp_path: Path, photo: Path) -> None:
    torch.manual_seed(0)
    model = RESModel(ModelConfig(vision="tiny", text="tiny", image_size=64, dim=16, decoder_dim=16))
    with torch.no_grad():
        model.prior_out_scale.fill_(3.0)  # make the proposal visible in the output
    plain = model.save_pretrained(tmp_path / "plain")
    grab = model.save_pretrained(tmp_path / "grab", card={"method": "supervised", "proposal": "grabcut"})
    assert trained_proposal_method(plain) == "gaussian" and trained_proposal_method(grab) == "grabcut"
    assert Predictor.from_pretrained(grab).proposal_method == "grabcut"
    assert Predictor.from_pretrained(grab, proposal_method="box").proposal_method == "box"
    predictor = Predictor.from_pretrained(grab)
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    failed = Prior.failed("x", "no box in the answer")
    none = predictor.logits(image, "the cat")
    assert torch.equal(predictor.logits(image, "the cat", prior=failed), none)
    assert not torch.equal(predictor.logits(image, "the cat", prior=Prior("x", [10, 5, 60, 50], [], 0.9)), none)


def test_predictor_bad_inputs(checkpoint: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_pretrained(checkpoint)
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(InputError, match="empty"):
        predictor(image, "   ")
    with pytest.raises(InputError, match="uint8"):
        predictor(image.astype(np.float32), "cat")
    with pytest.raises(InputError, match="not found"):
        predictor(tmp_path / "missing.png", "cat")
    with pytest.raises(CheckpointError, match="missing config.json"):
        Predictor.from_pretrained(tmp_path)


def test_overlay_draws_mask_contour_and_caption() -> None:
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:40] = True
    out = overlay(image, mask, "the grey square in the middle of a rather long sentence")
    assert out.dtype == np.uint8 and out.shape[1] == 60 and out.shape[0] > 40
    body = out[out.shape[0] - 40 :]
    assert np.array_equal(body[0, 0], image[0, 0])  # outside the mask untouched
    assert not np.array_equal(body[20, 30], image[20, 30])  # inside tinted
    assert body[10, 20:40, 0].min() == 255  # contour in the mask colour
    band = out[: out.shape[0] - 40]
    assert band.max() > 200  # white (anti-aliased) caption text
    with pytest.raises(InputError, match="differ in size"):
        overlay(image, mask[:10], "x")


def test_cli_predict_writes_files(checkpoint: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, mask_out = tmp_path / "o" / "overlay.png", tmp_path / "o" / "mask.png"
    code = main(["predict", "--checkpoint", str(checkpoint), "--image", str(photo), "--text", "the cat",
                 "--out", str(out), "--mask-out", str(mask_out), "--box", "10", "5", "60", "50"])
    assert code == 0
    overlay_img, mask_img = cv2.imread(str(out)), cv2.imread(str(mask_out), cv2.IMREAD_UNCHANGED)
    assert overlay_img.shape[1] == 90 and overlay_img.shape[0] > 60
    assert mask_img.shape == (60, 90) and set(np.unique(mask_img)) <= {0, 255}
    assert "predicted in" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["unreadable", "missing", "empty_text", "no_weights", "bad_ext"])
def test_cli_predict_bad_input_exit_2(
    case: str, checkpoint: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image, text, ckpt, out = photo, "the cat", checkpoint, tmp_path / "o.png"
    if case == "unreadable":
        image = tmp_path / "broken.png"
        image.write_bytes(b"not an image")
    elif case == "missing":
        image = tmp_path / "nope.jpg"
    elif case == "empty_text":
        text = "  "
    elif case == "no_weights":
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir()
        (ckpt / "config.json").write_text((checkpoint / "config.json").read_text())
    else:
        out = tmp_path / "o.xyz"
    code = main(["predict", "--checkpoint", str(ckpt), "--image", str(image), "--text", text, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    expected = {"unreadable": "broken.png", "missing": "nope.jpg", "empty_text": "empty",
                "no_weights": "model.safetensors", "bad_ext": ".xyz"}[case]
    assert expected in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["box_nan", "box_inverted", "box_outside", "cuda_missing", "device_garbage",
                                  "box_without_sesm", "out_parent_is_file"])
def test_cli_predict_more_bad_input_exit_2(case: str, checkpoint: Path, photo: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    args = ["predict", "--checkpoint", str(checkpoint), "--image", str(photo), "--text", "the cat",
            "--out", str(tmp_path / "o.png")]
    extra = {"box_nan": ["--box", "nan", "1", "20", "20"], "box_inverted": ["--box", "50", "40", "10", "5"],
             "box_outside": ["--box", "200", "100", "300", "150"], "device_garbage": ["--device", "gpu9"],
             "cuda_missing": ["--device", "cuda"]}.get(case, [])
    expected = {"box_nan": "malformed", "box_inverted": "inverted", "box_outside": "outside",
                "device_garbage": "gpu9", "cuda_missing": "CUDA", "box_without_sesm": "SESM",
                "out_parent_is_file": "blocker"}[case]
    if case == "cuda_missing" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if case == "box_without_sesm":
        model = RESModel(ModelConfig(vision="tiny", text="tiny", image_size=64, dim=16, decoder_dim=16,
                                     use_sesm=False))
        args[2] = str(model.save_pretrained(tmp_path / "nosesm"))
        extra = ["--box", "10", "5", "60", "50"]
    if case == "out_parent_is_file":
        (tmp_path / "blocker").write_text("x")
        args[-1] = str(tmp_path / "blocker" / "o.png")
    code = main([*args, *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err
