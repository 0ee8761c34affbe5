"""`drgrpo eval`: a model folder, or a run folder with the run's own task, template and rewards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model folder, or a run folder (its final model, task, template, rewards)",
    )
    p.add_argument("model_dir", help="a local Hugging Face model folder, or a drgrpo run folder")
    p.add_argument(
        "--task", help="arithmetic | countdown | math (default: the run's, or arithmetic)"
    )
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="task knob, repeatable, e.g. --task-option k_max=4")  # fmt: skip
    p.add_argument("--template", help="prompt template (default: the run's, or none)")
    p.add_argument("--num-prompts", type=int, default=1024, help="held-out prompts")
    p.add_argument("--num-samples", type=int, default=4, help="sampled completions per prompt")
    p.add_argument("--ks", help="k values of pass@k, e.g. 1,4,8 (default: 1, 4, num-samples)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for 95%% intervals (0 = none)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, help="response cap (default: the run's, or 48)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from drgrpo.config import EvalConfig, RolloutConfig, parse_assignment
    from drgrpo.eval import evaluate_model
    from drgrpo.tasks import make_task

    model_dir, saved = _resolve(Path(args.model_dir))
    task_cfg = saved.get("task", {}) if saved else {}
    options = dict(task_cfg.get("options", {})) if not args.task else {}
    options.update(parse_assignment(i, "--task-option", "key=value") for i in args.task_option)
    name = args.task or task_cfg.get("name", "arithmetic")
    rollout = (saved or {}).get("rollout", {})
    template = args.template or rollout.get("prompt_template", "none")
    max_new = args.max_new_tokens or rollout.get("max_new_tokens", 48)
    RolloutConfig(max_new_tokens=max_new, prompt_template=template)  # validates both
    n = args.num_samples
    ks = _ks(args.ks, n)
    spec = EvalConfig(num_prompts=args.num_prompts, num_samples=n, ks=ks,
                      temperature=args.temperature, bootstrap=args.bootstrap)  # fmt: skip
    task = make_task(name, **options)  # bad data or rewards fail here, before the model loads
    model, tokenizer = _load(model_dir, args.device)
    result = evaluate_model(
        model, tokenizer, task, task.heldout(spec.num_prompts),
        reward_timeout_s=rollout.get("reward_timeout_s", 1.0), template=template,
        num_samples=n, ks=spec.ks, max_new_tokens=max_new, temperature=spec.temperature,
        greedy=True, seed=args.seed, bootstrap=spec.bootstrap,
    )  # fmt: skip
    header = {"model": str(model_dir), "task": name, "task_options": options,
              "template": template, "max_new_tokens": max_new,
              "temperature": spec.temperature, "seed": args.seed}  # fmt: skip
    if args.json:
        print(json.dumps({**header, **result}))
    else:
        from rich.console import Console

        from drgrpo.app.tables import format_eval_table

        Console().print(format_eval_table(result))
    return 0


def _resolve(path: Path) -> tuple[Path, dict | None]:
    """(the model folder, the run's saved config or None). A run folder evaluates its final
    model (or, before the run has finished, its newest checkpoint's)."""
    saved_path = path / "config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if not saved or "objective" not in saved:
        return path, None  # a plain model folder
    if (path / "final" / "config.json").is_file():
        return path / "final", saved
    from drgrpo.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(path, missing_ok=True)
    if ckpt is None:
        raise ValueError(f"run folder {path} has neither final/ nor a complete checkpoint yet")
    return ckpt / "model", saved


def _ks(text: str | None, n: int) -> tuple[int, ...]:
    if text is None:
        return tuple(sorted({1, 4, n} & set(range(1, n + 1))))
    try:
        return tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise ValueError(f"--ks {text!r}: give comma-separated integers, e.g. 1,4,8") from None


def _load(model_dir: Path, device: str):
    import torch

    from drgrpo.models import load_policy

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    try:
        model, tokenizer = load_policy(model_dir, device=device)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    return model.eval(), tokenizer
