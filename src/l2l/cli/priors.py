"""`l2l priors run|report`: MLLM priors for every sentence of a split, and how good they are."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from l2l.cli.common import group_help, positive_int
from l2l.data.dataset import DataId, RESDataset
from l2l.errors import ConfigError
from l2l.priors.base import PROVIDER_NAMES, PriorProvider
from l2l.utils.io import atomic_write_json

RUN_EXAMPLES = """Examples:
  # synthetic data: the simulated MLLM (ground truth + calibrated errors), resumable
  l2l priors run --root data --data shaperefs/unc/train --provider simulated --out priors/shaperefs_train.jsonl
  # Qwen2.5-VL in process from a local checkpoint
  l2l priors run --root data --data refcoco/unc/train --provider qwen2.5-vl \\
      --checkpoint ckpt/Qwen2.5-VL-7B-Instruct --batch-size 16 --out priors/refcoco_train.jsonl
  # a vLLM server (`vllm serve Qwen/Qwen2.5-VL-7B-Instruct`), key from $OPENAI_API_KEY
  l2l priors run --root data --data refcoco/unc/train --provider openai --base-url http://gpu1:8000/v1 \\
      --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 32 --out priors/refcoco_train.jsonl
Rerunning the same command resumes: sample ids already in --out are skipped."""

REPORT_EXAMPLE = """Example:
  l2l priors report --priors priors/shaperefs_val.jsonl --root data --data shaperefs/unc/val --out reports/val"""


def register(subparsers: argparse._SubParsersAction) -> None:
    priors = subparsers.add_parser(
        "priors", help="MLLM priors (box, points, confidence) per sentence: run providers, report quality",
        description="Stage 0 of L2L: ground every sentence with a multimodal model (or the simulated one).",
        epilog="Example: l2l priors run --root data --data shaperefs/unc/train --provider simulated "
               "--out priors.jsonl", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = priors.add_subparsers(dest="priors_command", metavar="<priors command>")

    run = sub.add_parser(
        "run", help="write one prior per sentence to a JSONL file (resumable)",
        description="Run a prior provider over dataset samples and append one prior per line to --out.",
        epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--root", required=True, type=Path, help="data root (refer layout)")
    run.add_argument("--data", required=True, help="dataset id dataset/splitBy/split, e.g. refcoco/unc/train")
    run.add_argument("--provider", required=True, choices=PROVIDER_NAMES, help="where priors come from")
    run.add_argument("--out", required=True, type=Path, help="priors JSONL file (appended to; resumed)")
    run.add_argument("--split-file", type=Path, help="label-ratio split file; with it --subset defaults to "
                     "unlabelled (the sentences that need priors)")
    run.add_argument("--subset", choices=("all", "labelled", "unlabelled"),
                     help="which samples (default: all, or unlabelled with --split-file)")
    run.add_argument("--batch-size", type=int, help="requests per batch (default: the provider's)")
    run.add_argument("--limit", type=positive_int, help="only the first N samples (a quick trial)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--retry-failed", action="store_true",
                     help="also ask again for priors whose model answer failed (transport failures always are)")
    g = run.add_argument_group("qwen2.5-vl / qwen2-vl")
    g.add_argument("--checkpoint", type=Path, help="local transformers checkpoint directory")
    g.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    g.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float16, float32")
    g.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit (default 128)")
    g.add_argument("--prompt", help="prompt template containing {expression} (default: per model family)")
    g = run.add_argument_group("openai (any OpenAI-compatible chat-completions server)")
    g.add_argument("--base-url", help="server URL up to /v1, e.g. http://localhost:8000/v1")
    g.add_argument("--model", help="model name the server serves")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--answer-format", default="qwen2.5-vl", choices=("qwen2.5-vl", "qwen2-vl", "pixels"),
                   help="coordinate frame of the served model's answers (default qwen2.5-vl)")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    g.add_argument("--max-retries", type=int, default=5, help="retries on 429/5xx/timeouts (default 5)")
    g = run.add_argument_group("jsonl")
    g.add_argument("--source", type=Path, help="precomputed priors JSONL to take priors from")
    g = run.add_argument_group("simulated (SIMULATED MLLM for synthetic data: reads ground truth)")
    g.add_argument("--sim", action="append", default=[], metavar="KEY=VALUE",
                   help="override a SimulatedMLLMConfig field, e.g. --sim miss_rate=0.05 --sim seed=1")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser(
        "report", help="box accuracy, proposal mIoU and confidence calibration against ground truth",
        description="Score priors against the masks of a dataset split; print tables, write JSON and a "
                    "reliability plot (PNG).", epilog=REPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("--priors", required=True, type=Path, help="priors JSONL file")
    report.add_argument("--root", required=True, type=Path, help="data root (refer layout)")
    report.add_argument("--data", required=True, help="dataset id with masks, e.g. shaperefs/unc/val")
    report.add_argument("--out", type=Path, help="folder for report.json and reliability.png "
                        "(default: <priors file stem>_report next to it)")
    report.add_argument("--methods", default="box,gaussian,grabcut",
                        help="proposal methods to score, comma separated; '' for none (default box,gaussian,grabcut)")
    report.add_argument("--sam-checkpoint", type=Path, help="local SAM checkpoint (needed for method sam)")
    report.add_argument("--bins", type=int, default=10, help="confidence bins (default 10)")
    report.add_argument("--limit", type=positive_int, help="score only the first N samples with priors")
    report.add_argument("--no-progress", action="store_true", help="no progress bar")
    report.set_defaults(func=_cmd_report)

    priors.set_defaults(func=lambda args: group_help(priors))


def _sim_config(pairs: list[str]):
    from l2l.priors.simulated import SimulatedMLLMConfig

    cfg = SimulatedMLLMConfig()
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"--sim {pair!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = type(getattr(cfg, key))
        try:
            setattr(cfg, key, kind(value))
        except ValueError:
            raise ConfigError(f"--sim {pair!r}: {key} must be a {kind.__name__}") from None
    return cfg


def build_provider(args: argparse.Namespace, data_id: DataId) -> PriorProvider:
    """The provider named by --provider, with its options checked."""
    name = args.provider
    if name in ("qwen2.5-vl", "qwen2-vl"):
        if args.checkpoint is None:
            raise ConfigError(f"--provider {name} needs --checkpoint PATH (a local transformers checkpoint)")
        from l2l.priors.qwen import QwenVLProvider

        return QwenVLProvider(args.checkpoint, family=name, device=args.device, dtype=args.dtype,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size or 8,
                              prompt=args.prompt)
    if name == "openai":
        if not args.base_url or not args.model:
            raise ConfigError("--provider openai needs --base-url and --model")
        from l2l.priors.openai import OpenAIProvider

        return OpenAIProvider(args.base_url, args.model, api_key_env=args.api_key_env,
                              answer_format=args.answer_format, prompt=args.prompt, concurrency=args.concurrency,
                              timeout=args.timeout, max_retries=args.max_retries, max_tokens=args.max_new_tokens)
    if name == "jsonl":
        if args.source is None:
            raise ConfigError("--provider jsonl needs --source FILE")
        from l2l.priors.jsonl import JsonlProvider

        return JsonlProvider(args.source)
    from l2l.data.refer import ReferData
    from l2l.priors.simulated import SimulatedMLLM

    return SimulatedMLLM(ReferData(args.root, data_id.dataset, data_id.split_by), _sim_config(args.sim))


def _cmd_run(args: argparse.Namespace) -> int:
    from l2l.priors.run import run_priors

    data_id = DataId.parse(args.data)
    if args.sim and args.provider != "simulated":
        raise ConfigError("--sim applies to --provider simulated only")
    subset = args.subset or ("unlabelled" if args.split_file else "all")
    dataset = RESDataset(args.root, data_id, args.split_file if subset != "all" else None, subset=subset)
    provider = build_provider(args, data_id)
    if provider.name == "simulated-mllm":
        print("provider: SIMULATED MLLM (ground truth + calibrated error model; synthetic benchmark only)",
              file=sys.stderr)
    summary = run_priors(dataset, provider, args.out, batch_size=args.batch_size, limit=args.limit,
                         progress=not args.no_progress, retry_failed=args.retry_failed)
    print(f"priors [{provider.name}] {data_id} ({subset}) -> {args.out}")
    print("\n".join(summary.lines()))
    if summary.all_transport_failed:
        print(f"error: every request failed for a transport reason (is {provider.name} reachable?); "
              "rerun when it is: those samples are asked again", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from l2l.evaluation.priors_report import format_report, priors_report, reliability_plot
    from l2l.priors.store import load_priors

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    sam = None
    if "sam" in methods:
        if args.sam_checkpoint is None:
            raise ConfigError("proposal method sam needs --sam-checkpoint PATH")
        from l2l.proposals.sam import SamProposer

        sam = SamProposer.from_pretrained(args.sam_checkpoint)
    priors = load_priors(args.priors)
    dataset = RESDataset(args.root, args.data, subset="all")
    report = priors_report(priors, dataset, methods, sam=sam, bins=args.bins, limit=args.limit,
                           progress=not args.no_progress)
    out = args.out or args.priors.with_name(args.priors.stem + "_report")
    atomic_write_json(out / "report.json", report)
    reliability_plot(report, out / "reliability.png")
    print(format_report(report))
    print(f"\nwrote {out / 'report.json'} and {out / 'reliability.png'}")
    return 0
