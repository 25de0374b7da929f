"""Prior records, the resumable priors file, the simulated MLLM, the jsonl provider and `l2l priors`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from l2l.cli.main import main
from l2l.data.dataset import RESDataset
from l2l.data.refer import ReferData
from l2l.errors import DataError
from l2l.evaluation.priors_report import calibration
from l2l.priors import Prior, PriorRequest, PriorsFile, box_iou, load_priors, read_priors
from l2l.priors.jsonl import JsonlProvider
from l2l.priors.run import run_priors
from l2l.priors.simulated import SimulatedMLLM, SimulatedMLLMConfig
from tests.refer_fixtures import build_spec, write_refer


def _prior(i: int, ok: bool = True) -> Prior:
    if ok:
        return Prior(f"{i}:0", [1.0, 2.0, 30.5, 40.25], [(5.0, 6.0, 1), (1.0, 1.0, 0)], 0.75, 'say "hi"\n', "test")
    return Prior.failed(f"{i}:0", "no box in answer", "nothing", "test", 0.2)


def test_prior_json_round_trip_and_validation() -> None:
    for p in (_prior(1), _prior(2, ok=False)):
        line = p.to_json()
        assert "\n" not in line
        assert Prior.from_json(line) == p
    with pytest.raises(DataError, match="f.jsonl:3"):
        Prior.from_json('{"sample_id": "1:2", "status": "ok", "box": null}', where="f.jsonl:3")
    with pytest.raises(DataError, match="confidence"):
        Prior.from_json('{"sample_id": "1:2", "box": [0, 0, 1, 1], "confidence": 1.5}')
    with pytest.raises(DataError, match="not valid JSON"):
        Prior.from_json('{"sample_id": ')
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert box_iou(None, [0, 0, 1, 1]) == 0.0


def test_priors_file_cuts_a_torn_last_line_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PriorsFile(path) as f:
        f.append([_prior(1), _prior(2)])
    torn = _prior(3).to_json()[:25]
    with open(path, "a") as fh:
        fh.write(torn)  # a crash in the middle of a write
    assert [p.sample_id for p in read_priors(path)] == ["1:0", "2:0"]
    f = PriorsFile(path).open_for_append()
    assert f.done == {"1:0", "2:0"} and f.truncated_bytes == len(torn)
    f.append([_prior(3)])
    f.close()
    assert list(load_priors(path)) == ["1:0", "2:0", "3:0"]
    assert path.read_text().endswith("\n")


def test_priors_file_cuts_a_zero_filled_last_line_but_refuses_a_broken_middle(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes((_prior(1).to_json() + "\n").encode() + b"\x00" * 40 + b"\n")
    f = PriorsFile(path).open_for_append()
    f.close()
    assert f.done == {"1:0"} and path.read_bytes().count(b"\n") == 1
    path.write_text(_prior(1).to_json() + "\n{broken\n" + _prior(2).to_json() + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:2"):
        PriorsFile(path).open_for_append()
    with pytest.raises(DataError, match=r"p.jsonl:2"):
        read_priors(path)


def test_load_priors_refuses_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(_prior(1).to_json() + "\n" + _prior(1).to_json() + "\n")
    with pytest.raises(DataError, match="twice"):
        load_priors(path)


def _requests(refer_root: Path, data: str = "refcoco/unc/train") -> tuple[RESDataset, list[PriorRequest]]:
    ds = RESDataset(refer_root, data)
    reqs = [PriorRequest(s.sample_id, ds.image(i), s.sentence, s) for i, s in enumerate(ds.samples)]
    return ds, reqs


def test_simulated_is_deterministic_per_sample_and_named_a_simulation(refer_root: Path) -> None:
    refer = ReferData(refer_root, "refcoco", "unc")
    _, reqs = _requests(refer_root)
    sim = SimulatedMLLM(refer, SimulatedMLLMConfig(seed=3))
    forward = sim.predict(reqs)
    backward = SimulatedMLLM(refer, SimulatedMLLMConfig(seed=3)).predict(reqs[::-1])[::-1]
    assert [p.to_json() for p in forward] == [p.to_json() for p in backward]
    assert all(p.provider == "simulated-mllm" and "simulation" in json.loads(p.raw) for p in forward)
    other = SimulatedMLLM(refer, SimulatedMLLMConfig(seed=4)).predict(reqs)
    assert [p.box for p in other] != [p.box for p in forward]


def test_simulated_calibration_and_error_model(refer_root: Path) -> None:
    """Defaults: ~90% of boxes at IoU >= 0.5, confidence higher when right, positive points on the object."""
    refer = ReferData(refer_root, "refcoco", "unc")
    ds, reqs = _requests(refer_root)
    sim = SimulatedMLLM(refer)
    many = [PriorRequest(f"{r.sample_id}#{k}", r.image, r.expression, r.sample) for k in range(150) for r in reqs]
    priors = sim.predict(many)
    right = np.array([box_iou(p.box, list(r.sample.box)) >= 0.5 if p.ok else False for p, r in zip(priors, many)])
    assert 0.86 <= right.mean() <= 0.94
    conf = np.array([p.confidence for p in priors])
    assert conf[right].mean() > conf[~right].mean() + 0.2
    assert calibration(conf, right)["auroc"] > 0.8  # the confidence ranks right boxes above wrong ones
    assert calibration(np.full_like(conf, 0.5), right)["auroc"] == 0.5  # l2l_uninformative_conf's priors
    failed = [p for p in priors if not p.ok]
    assert 0.01 < len(failed) / len(priors) < 0.06 and all(p.reason == "simulated miss: no box" for p in failed)
    masks = {s.ann_id: refer.ann_mask(s.ann_id) for s in ds.samples}
    on_object = [masks[r.sample.ann_id][int(p.points[0][1]), int(p.points[0][0])]
                 for p, r in zip(priors, many) if p.ok and json.loads(p.raw)["simulation"] == "right object"]
    assert 0.8 < np.mean(on_object) < 0.97  # point_off_object_rate 0.1 (and tiny fixture objects)


def test_auroc_is_the_share_of_right_wrong_pairs_ranked_right() -> None:
    """Brute force over every (right box, wrong box) pair: the right one's confidence is higher (a tie counts 1/2)."""
    rng = np.random.default_rng(0)
    conf = rng.choice([0.2, 0.5, 0.6, 0.9], size=60)
    right = rng.random(60) < conf
    pairs = [(a > b) + 0.5 * (a == b) for a in conf[right] for b in conf[~right]]
    assert calibration(conf, right)["auroc"] == pytest.approx(np.mean(pairs))
    assert calibration(conf, np.ones(60, bool))["auroc"] is None


def test_simulated_wrong_objects_prefer_the_same_category(tmp_path: Path) -> None:
    refs, instances = build_spec()
    # image 1 gets a second person (category 1) besides the referred person (ann 11) and the cat (ann 12)
    instances["annotations"].append({"id": 13, "image_id": 1, "category_id": 1, "bbox": [30.0, 20.0, 10.0, 10.0],
                                     "segmentation": [[30.0, 20.0, 40.0, 20.0, 40.0, 30.0, 30.0, 30.0]],
                                     "area": 100.0, "iscrowd": 0})
    refer_root = write_refer(tmp_path, refs, instances)
    refer = ReferData(refer_root, "refcoco", "unc")
    ds, reqs = _requests(refer_root)
    req = next(r for r in reqs if r.sample.ann_id == 11)
    sim = SimulatedMLLM(refer, SimulatedMLLMConfig(miss_rate=0.0, wrong_object_rate=1.0, point_off_object_rate=0.0))
    priors = sim.predict([PriorRequest(f"x{k}", req.image, req.expression, req.sample) for k in range(400)])
    picked = [json.loads(p.raw)["answer_ann_id"] for p in priors]
    assert 11 not in picked
    assert 0.72 < picked.count(13) / len(picked) < 0.88
    mask13 = refer.ann_mask(13)
    assert all(mask13[int(p.points[0][1]), int(p.points[0][0])] for p, a in zip(priors, picked) if a == 13)


def test_run_resumes_and_ends_with_one_prior_per_sample(refer_root: Path, tmp_path: Path) -> None:
    ds = RESDataset(refer_root, "refcoco/unc/train")
    sim = SimulatedMLLM(ReferData(refer_root, "refcoco", "unc"))
    out = tmp_path / "priors.jsonl"
    first = run_priors(ds, sim, out, batch_size=4, limit=5, progress=False)
    assert (first.written, first.skipped) == (5, 0)
    with open(out, "a") as fh:
        fh.write('{"sample_id": "9')  # torn line
    second = run_priors(ds, sim, out, batch_size=4, progress=False)
    assert second.skipped == 5 and second.written == len(ds) - 5 and second.truncated_bytes > 0
    priors = read_priors(out)
    assert sorted(p.sample_id for p in priors) == sorted(ds.sample_ids())
    once = SimulatedMLLM(ReferData(refer_root, "refcoco", "unc"))
    assert [p.to_json() for p in priors] == [p.to_json() for p in once.predict(_requests(refer_root)[1])]


def test_jsonl_provider_serves_priors_and_fails_missing_ids(tmp_path: Path) -> None:
    path = tmp_path / "src.jsonl"
    path.write_text(_prior(1).to_json() + "\n")
    img = np.zeros((8, 8, 3), np.uint8)
    got = JsonlProvider(path).predict([PriorRequest("1:0", img, "a"), PriorRequest("7:0", img, "b")])
    assert got[0] == _prior(1)
    assert got[1].status == "failed" and got[1].reason == "not in src.jsonl"


def test_cli_run_and_report(refer_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pri.jsonl"
    args = ["priors", "run", "--root", str(refer_root), "--data", "refcoco/unc/train", "--provider", "simulated",
            "--out", str(out), "--no-progress", "--sim", "miss_rate=0.5"]
    assert main(args) == 0
    text = capsys.readouterr()
    assert "SIMULATED MLLM" in text.err and "written now: 12" in text.out and "simulated miss" in text.out
    assert main(args) == 0
    assert "already done: 12" in capsys.readouterr().out and len(read_priors(out)) == 12
    rep = tmp_path / "rep"
    assert main(["priors", "report", "--priors", str(out), "--root", str(refer_root), "--data", "refcoco/unc/train",
                 "--out", str(rep), "--methods", "box,gaussian", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "box acc@0.5" in printed and "gaussian" in printed and "SIMULATED" in printed
    report = json.loads((rep / "report.json").read_text())
    assert report["scored"] == 12 and set(report["proposals"]) == {"box", "gaussian"}
    assert sum(b["count"] for b in report["calibration"]["bins"]) == 12
    assert 0.0 <= report["proposals"]["box"]["mIoU"] <= 1.0
    assert (rep / "reliability.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra, message", [
    (["--provider", "qwen2.5-vl"], "--checkpoint"),
    (["--provider", "openai", "--model", "m"], "--base-url"),
    (["--provider", "jsonl"], "--source"),
    (["--provider", "simulated", "--sim", "bogus=1"], "bogus"),
    (["--provider", "simulated", "--sim", "miss_rate=2"], "miss_rate"),
])
def test_cli_user_errors_exit_2(refer_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                message: str) -> None:
    args = ["priors", "run", "--root", str(refer_root), "--data", "refcoco/unc/train", "--out", str(tmp_path / "x")]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_priors_from_any_provider_are_checked_against_the_image(tmp_path: Path) -> None:
    from l2l.data.dataset import DataId
    from l2l.data.shaperefs import generate

    generate(tmp_path / "data", 20, seed=0, progress=False, workers=1)
    data = RESDataset(tmp_path / "data", DataId("shaperefs", "unc", "train"))
    s = data.samples[:5]
    w = s[0].width
    rows = [  # out of the image, inverted, zero area, a NaN point on a good box, a box spilling over the border
        {"sample_id": s[0].sample_id, "box": [w + 5, 0, w + 20, 10]},
        {"sample_id": s[1].sample_id, "box": [30, 30, 10, 10]},
        {"sample_id": s[2].sample_id, "box": [10, 10, 10.5, 30]},
        {"sample_id": s[3].sample_id, "box": [5, 5, 20, 20], "points": [[float("nan"), 3, 1], [8, 9, 1]]},
        {"sample_id": s[4].sample_id, "box": [-10, -10, 20, 20]},
    ]
    src = tmp_path / "given.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "checked.jsonl"
    summary = run_priors(data, JsonlProvider(src), out, limit=5, progress=False)
    got = load_priors(out)
    reasons = [got[x.sample_id].reason for x in s[:3]]
    assert [got[x.sample_id].status for x in s] == ["failed", "failed", "failed", "ok", "ok"]
    assert "outside" in reasons[0] and "inverted" in reasons[1] and "degenerate" in reasons[2]
    assert got[s[3].sample_id].points == [(8.0, 9.0, 1)]
    assert got[s[4].sample_id].box == [0.0, 0.0, 20.0, 20.0]
    assert summary.ok == 2 and sum(summary.failed.values()) == 3
