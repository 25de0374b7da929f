"""`l2l predict`: segment the object one sentence refers to in one image and save an overlay (and the mask)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from l2l.errors import InputError
from l2l.utils.io import atomic_write


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment the referred object in one image; write an overlay picture (and the mask)",
        description="Run a save_pretrained checkpoint on one image and one referring expression, through the "
        "same Processor as evaluation. The overlay shows the mask, its contour and the sentence.",
        epilog='Example: l2l predict --checkpoint runs/shaperefs/best --image photo.png '
        '--text "the red circle left of the square" --out overlay.png --mask-out mask.png',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="directory written by save_pretrained")
    p.add_argument("--image", required=True, type=Path, help="input image (any format OpenCV reads)")
    p.add_argument("--text", required=True, help="the referring expression")
    p.add_argument("--out", required=True, type=Path, help="overlay picture to write (.png, .jpg)")
    p.add_argument("--mask-out", type=Path, default=None, help="also write the mask as a 0/255 PNG")
    p.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"), default=None,
                   help="optional prior box in image pixels (with-priors mode; proposal made with the checkpoint's "
                   "training proposal method)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.set_defaults(func=run)


def write_image(path: Path, rgb_or_gray: np.ndarray) -> None:
    """Encode by the file's extension, then write atomically; an unknown extension is an InputError."""
    array = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    ext = path.suffix.lower() or ".png"
    try:
        ok, buf = cv2.imencode(ext, array)
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"{path}: cannot write an image with extension {ext!r}; use .png or .jpg")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))


def run(args: argparse.Namespace) -> int:
    from l2l.evaluation import Predictor, overlay, read_image
    from l2l.priors.prior import Prior

    if not args.text.strip():
        raise InputError("--text is empty; give a sentence such as 'the red cup on the left'")
    image = read_image(args.image)  # before loading the model: a bad path fails fast
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device)
    prior = None
    if args.box:
        from l2l.priors.parse import check_against_image

        if not getattr(predictor.model.config, "use_sesm", False):
            raise InputError(f"--box: {args.checkpoint} takes no proposal (trained without SESM); drop --box")
        prior = check_against_image(Prior(sample_id="predict", box=list(args.box), confidence=1.0, provider="user"),
                                    image.shape[1], image.shape[0])
        if not prior.ok:
            raise InputError(f"--box {' '.join(f'{v:g}' for v in args.box)}: {prior.reason}; give X1 Y1 X2 Y2 in "
                             "image pixels with X1 < X2, Y1 < Y2")
    start = time.perf_counter()
    mask = predictor(image, args.text, prior=prior)
    seconds = time.perf_counter() - start
    write_image(args.out, overlay(image, mask, args.text.strip()))
    if args.mask_out is not None:
        write_image(args.mask_out, mask.astype(np.uint8) * 255)
    print(f"wrote {args.out}" + (f" and {args.mask_out}" if args.mask_out else "")
          + f": {int(mask.sum())} of {mask.size} pixels, predicted in {seconds:.3f} s", file=sys.stderr)
    return 0
