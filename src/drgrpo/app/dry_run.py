"""`drgrpo train --dry-run`: everything a run would use, printed, nothing trained or loaded
beyond the tokenizer and the model's config."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape

from drgrpo.config import TrainConfig
from drgrpo.objective import render_formula


def dry_run(cfg: TrainConfig, console: Console | None = None) -> dict:
    """Print the resolved config, the formula, the first rendered prompt (text and ids) and the
    memory estimate; return them."""
    from drgrpo.rollout import TokenRule
    from drgrpo.tasks import make_task
    from drgrpo.train.preflight import check_context, longest_prompt, memory_report
    from drgrpo.train.run import pick_device

    console = console or Console()
    tokenizer, model_config, generation_config = _tokenizer_and_config(cfg)
    rule = TokenRule.from_tokenizer(tokenizer, generation_config,
                                    template=cfg.rollout.prompt_template)  # fmt: skip
    task = make_task(cfg.task.name, **cfg.task.options)
    first = task.train_example(0)
    text, _ = rule.prompt_text(tokenizer, first)
    ids = rule.encode_examples(tokenizer, [first])[0]
    tokens = longest_prompt(cfg, task, rule, tokenizer)
    check_context(cfg, model_config, tokens)
    console.print_json(json.dumps(cfg.to_dict()))
    console.print(render_formula(cfg.objective, truncated=cfg.rollout.truncated))
    console.print("first prompt, as the model sees it:")
    console.print(escape(repr(text)))
    console.print(f"token ids ({len(ids)}): {ids}")
    console.print(f"stop ids: {sorted(rule.stop_ids)}   pad id: {rule.pad_id}")
    console.print(memory_report(cfg, model_config, tokens, pick_device(cfg.model.device)))
    return {"prompt_text": text, "prompt_ids": ids, "stop_ids": sorted(rule.stop_ids)}


def _tokenizer_and_config(cfg: TrainConfig):
    """(tokenizer, model config, generation config) without loading any weights."""
    if cfg.model.base is None:  # the built-in model: its tokenizer and config are made here
        from drgrpo.models import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        model = build_model(cfg.model.size, len(tokenizer))  # small: built, never trained
        return tokenizer, model.config, model.generation_config
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder = cfg.model.base
    try:
        generation = GenerationConfig.from_pretrained(folder, local_files_only=True)
    except OSError:
        generation = None
    return (AutoTokenizer.from_pretrained(folder, local_files_only=True),
            AutoConfig.from_pretrained(folder, local_files_only=True), generation)  # fmt: skip
