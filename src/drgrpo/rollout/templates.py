"""Prompt templates: a question (or a chat) in, the prompt text the model continues out.

    qwen_math | r1 | none   the paper's three (Liu et al. 2025, sail-sg/understand-r1-zero)
    "...{question}..."      a user template, rendered with str.format: `{{` and `}}` are literal
                            braces, so "\\boxed{{}}" renders as "\\boxed{}"
    chat                    the tokenizer's own chat template (`apply_chat_template`, generation
                            prompt on) over a list of {role, content} messages, or a question
                            wrapped as one user message

Templates are checked when parsed, so a bad one fails when the config is made, not at step 1.
The text is turned into ids by `drgrpo.rollout.prompts.TokenRule` (the one text <-> token rule).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The paper's templates, as format strings (literal braces doubled). The text is copied from
# sail-sg/understand-r1-zero, train_zero_math.py at commit
# 14046dcaa53d47b3a5e3217c63e649d8862147d9: `apply_qwen_math_template`, `apply_r1_template` and
# `apply_no_template` (named "no" in its TEMPLATE_FACTORY; "none" here, "no" accepted).
PAPER_TEMPLATES: dict[str, str] = {
    "qwen_math": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{{}}.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "r1": (
        "A conversation between User and Assistant. The User asks a question, and the Assistant "
        "solves it. The Assistant first thinks about the reasoning process in the mind and then "
        "provides the User with the answer. The reasoning process is enclosed within <think> "
        "</think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., "
        "<think> reasoning process here </think> <answer> answer here </answer>.\nUser: "
        "{question}\nAssistant: <think>"
    ),
    "none": "{question}",
}
PAPER_STOP_STRINGS: dict[str, tuple[str, ...]] = {"r1": ("</answer>",)}
"""Text that ends a response besides the stop ids: ZeroMathActor (same file and commit) stops r1
rollouts on "</answer>", kept in the output, and unsets every external stop for qwen_math and
no ("Qwen models ... can themselves stop generation")."""
ALIASES = {"no": "none"}
CHAT = "chat"
PLACEHOLDERS = frozenset({"question"})
"""The fields a user template may use."""
_BRACES_FIX = (
    "The only placeholder is {question}; write literal braces doubled, {{ and }} "
    "(e.g. \\boxed{{}}, which renders as \\boxed{})"
)


@dataclass(frozen=True)
class PromptTemplate:
    """One way of turning a question into prompt text. Make it with `parse` (or `chat`)."""

    name: str
    """qwen_math | r1 | none | chat | custom."""
    text: str
    """The format string (for `chat`: the user message's content, "{question}" by default)."""
    uses_chat_template: bool = False
    """True: the rendered text is the tokenizer's chat template applied to the messages."""

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end a rollout in the paper's setup for this template (kept in the
        response); () for all but r1."""
        return PAPER_STOP_STRINGS.get(self.name, ())

    @property
    def encode_special_tokens(self) -> bool:
        """The `add_special_tokens` to encode the rendered text with. False for chat: a chat
        template writes its own special tokens, the BOS included (Llama, Gemma, Mistral, Phi-3),
        and `apply_chat_template(tokenize=True)` encodes without adding any; True otherwise (the
        tokenizer's own convention, as vLLM and `tokenizer(prompt)` apply to a prompt string)."""
        return not self.uses_chat_template

    def __post_init__(self) -> None:
        check_template(self.text)

    @classmethod
    def parse(cls, spec: str) -> PromptTemplate:
        """A template from a config value: a paper template's name, "chat", or a format string
        with a `{question}` placeholder."""
        if not isinstance(spec, str):
            raise TypeError(f"a prompt template is a string, got {type(spec).__name__}")
        name = ALIASES.get(spec.strip(), spec.strip())
        if name in PAPER_TEMPLATES:
            return cls(name=name, text=PAPER_TEMPLATES[name])
        if name == CHAT:
            return cls.chat()
        if "{" not in spec and "}" not in spec:
            raise ValueError(
                f"unknown prompt template {spec!r}: use one of {_names()}, or a template string "
                "with a {question} placeholder (e.g. '{question}\\nAnswer:')"
            )
        return cls(name="custom", text=spec)

    @classmethod
    def chat(cls, content: str = "{question}") -> PromptTemplate:
        """The tokenizer's chat template; a question becomes one user message whose content is
        `content` rendered (so a user message can carry an instruction around the question)."""
        return cls(name=CHAT, text=content, uses_chat_template=True)

    def render(self, question: str | Sequence[Mapping[str, str]], tokenizer=None) -> str:
        """The prompt text for `question`: a string, or (chat template only) a list of
        {"role", "content"} messages, rendered as they are."""
        if not self.uses_chat_template:
            if not isinstance(question, str):
                raise TypeError(
                    f"template {self.name!r} renders a question string; a list of chat "
                    "messages needs the 'chat' template (the tokenizer's chat template)"
                )
            # str.format substitutes the question as is: braces inside it stay literal.
            return self.text.format(question=question)
        if isinstance(question, str):
            messages = [{"role": "user", "content": self.text.format(question=question)}]
        else:
            messages = _check_messages(question)
        return _apply_chat_template(tokenizer, messages)


def check_template(text: str) -> None:
    """Raise a ValueError naming the fix unless `text` is a format string whose only fields are
    `{question}` (at least once), with literal braces written `{{` and `}}`."""
    if not isinstance(text, str):
        raise TypeError(f"a prompt template is a string, got {type(text).__name__}")
    try:
        fields = [
            (field, spec, conversion)
            for _, field, spec, conversion in string.Formatter().parse(text)
            if field is not None
        ]
    except ValueError as error:  # a lone "{" or "}"
        raise ValueError(f"prompt template {text!r}: {error}. " + _BRACES_FIX) from None
    for field, spec, conversion in fields:
        if field not in PLACEHOLDERS or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "")
            shown += (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"prompt template {text!r} has the placeholder {shown}. " + _BRACES_FIX
            )
    if not fields:
        raise ValueError(
            f"prompt template {text!r} has no {{question}} placeholder, so the question would "
            "never reach the model: put {question} where the question goes"
        )


def _check_messages(messages) -> list[dict[str, str]]:
    if isinstance(messages, Mapping) or not isinstance(messages, Sequence) or not messages:
        raise TypeError("chat messages are a non-empty list of {'role': ..., 'content': ...}")
    checked = []
    for i, message in enumerate(messages):
        if (
            not isinstance(message, Mapping)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise TypeError(
                f"chat message {i} is {message!r}: each needs a 'role' and a 'content' string"
            )
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


def _apply_chat_template(tokenizer, messages: list[dict[str, str]]) -> str:
    if tokenizer is None:
        raise ValueError("the 'chat' template renders with a tokenizer: pass tokenizer=")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} has no chat template, so 'chat' prompts "
            f"cannot be rendered: use one of {_names(chat=False)} or a template string with "
            "{question}, or set tokenizer.chat_template (a jinja string) and save the tokenizer"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _names(chat: bool = True) -> str:
    return ", ".join([*PAPER_TEMPLATES, *([CHAT] if chat else [])])
