"""Prompt templates render exactly what the paper's code renders, and bad ones fail at parse."""

from __future__ import annotations

import pytest

from drgrpo.models.tokenizer import build_tokenizer as build_char_tokenizer
from drgrpo.rollout import TokenRule
from drgrpo.rollout.templates import PromptTemplate, check_template
from standins import build_llama3_tokenizer, build_qwen_tokenizer


# The paper's functions, re-typed as the reference: sail-sg/understand-r1-zero,
# train_zero_math.py at commit 14046dcaa53d47b3a5e3217c63e649d8862147d9 (plain string
# concatenation there, so no brace in the question or template is ever interpreted).
def paper_qwen_math(question: str) -> str:
    return (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\n"
        + question
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


def paper_r1(question: str) -> str:
    return (
        "A conversation between User and Assistant. The User asks a question, and the Assistant "
        "solves it. The Assistant first thinks about the reasoning process in the mind and then "
        "provides the User with the answer. The reasoning process is enclosed within <think> "
        "</think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., "
        "<think> reasoning process here </think> <answer> answer here </answer>.\nUser: "
        + question
        + "\nAssistant: <think>"
    )


def paper_no(question: str) -> str:
    return question


# Braces and a format-looking field in the question must come through untouched.
QUESTIONS = [
    "What is $1+1$?",
    "Let $f(x) = \\frac{1}{x}$ and {question} be {0}. Find $f(2)$.",
    "",
]


@pytest.mark.parametrize("question", QUESTIONS)
@pytest.mark.parametrize(
    ("name", "paper"), [("qwen_math", paper_qwen_math), ("r1", paper_r1), ("none", paper_no)]
)
def test_paper_templates_render_as_the_paper(name, paper, question):
    template = PromptTemplate.parse(name)
    assert template.name == name and not template.uses_chat_template
    assert template.render(question) == paper(question)


def test_paper_name_no_is_none():
    assert PromptTemplate.parse("no") == PromptTemplate.parse("none")


def test_paper_stop_strings():
    # ZeroMathActor: r1 stops on "</answer>"; qwen_math and no unset every external stop.
    assert PromptTemplate.parse("r1").stop_strings == ("</answer>",)
    assert PromptTemplate.parse("qwen_math").stop_strings == ()
    assert PromptTemplate.parse("none").stop_strings == ()
    assert PromptTemplate.parse("{question}").stop_strings == ()


def test_qwen_math_renders_a_single_brace_pair():
    # The bug of the shipped config: the template text reached the model as "\boxed{{}}".
    text = PromptTemplate.parse("qwen_math").render("Q")
    assert "\\boxed{}." in text and "{{" not in text


def test_user_template_uses_str_format():
    template = PromptTemplate.parse(
        "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n"
    )
    assert template.name == "custom"
    assert template.render("What is {x}?") == (
        "What is {x}?\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
    )
    # The placeholder may appear more than once.
    assert PromptTemplate.parse("{question} / {question}").render("a") == "a / a"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Solve {problem}.", ["{problem}", "{question}", "{{ and }}"]),
        ("{question} \\boxed{}", ["{}", "{{ and }}", "\\boxed{{}}"]),
        ("{question} {0}", ["{0}"]),
        ("{question!r}", ["{question!r}"]),
        ("{question:>10}", ["{question:>10}"]),
        ("{question.upper}", ["{question.upper}"]),
        ("{question} }", ["Single '}'", "{{ and }}"]),
        ("{question", ["{{ and }}"]),
        ("\\boxed{{}} only", ["no {question} placeholder", "put {question} where"]),
    ],
)
def test_invalid_templates_are_rejected_naming_the_fix(text, names):
    with pytest.raises(ValueError) as error:
        PromptTemplate.parse(text)
    for name in names:
        assert name in str(error.value)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="qwen_math, r1, none, chat, or a template string"):
        PromptTemplate.parse("qwen")
    with pytest.raises(TypeError):
        PromptTemplate.parse(None)


def test_template_is_checked_when_made_directly():
    with pytest.raises(ValueError, match="placeholder"):
        PromptTemplate(name="custom", text="no field")
    check_template("{question}")  # valid: returns None


QWEN_CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
)


def test_chat_renders_a_question_as_one_user_message():
    tok = build_qwen_tokenizer()
    template = PromptTemplate.parse("chat")
    assert template.uses_chat_template and template.name == "chat"
    assert template.render("What is {1+1}?", tok) == QWEN_CHAT.format(content="What is {1+1}?")
    # Exactly the tokenizer's own rendering, generation prompt on.
    messages = [{"role": "user", "content": "hi"}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert template.render(messages, tok) == expected == QWEN_CHAT.format(content="hi")


def test_chat_with_content_template_and_message_lists():
    tok = build_qwen_tokenizer()
    template = PromptTemplate.chat("{question}\nPut the answer in \\boxed{{}}.")
    assert template.render("2+2?", tok) == QWEN_CHAT.format(
        content="2+2?\nPut the answer in \\boxed{}."
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
    ]
    assert template.render(messages, tok) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_errors_name_the_fix():
    template = PromptTemplate.parse("chat")
    with pytest.raises(ValueError, match="has no chat template.*qwen_math, r1, none"):
        template.render("q", build_char_tokenizer())
    with pytest.raises(ValueError, match="pass tokenizer="):
        template.render("q")
    with pytest.raises(TypeError, match="'role' and a 'content'"):
        template.render([{"role": "user"}], build_qwen_tokenizer())
    with pytest.raises(TypeError, match="non-empty list"):
        template.render([], build_qwen_tokenizer())
    with pytest.raises(TypeError, match="needs the 'chat' template"):
        PromptTemplate.parse("r1").render([{"role": "user", "content": "q"}])


def test_chat_prompt_ids_equal_apply_chat_template_ids():
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    template = PromptTemplate.parse("chat")
    for tok in (build_qwen_tokenizer(), build_llama3_tokenizer()):
        expected = tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        text = template.render(messages, tok)
        assert tok.encode(text, add_special_tokens=template.encode_special_tokens) == expected
    assert PromptTemplate.parse("qwen_math").encode_special_tokens  # plain text: the tokenizer's
    # own convention (a BOS for Llama 3, none for Qwen)


def test_token_rule_encodes_chat_prompts_like_apply_chat_template():
    """A chat template that writes the BOS itself (Llama 3, Gemma, Mistral, Phi-3) gets exactly
    one: chat-rendered text is encoded without the tokenizer's special tokens."""
    from drgrpo.tasks import Example

    tok = build_llama3_tokenizer()
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    expected = tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    rule = TokenRule.from_tokenizer(tok, template="chat")
    question = Example("What is 2 + 2?", "4", None, {})
    assert rule.encode_examples(tok, [question]) == [expected]
    # Chat messages in the data go through the chat template whatever the run's template.
    conversation = Example("user: What is 2 + 2?", "4", None, {}, messages=tuple(messages))
    assert TokenRule.from_tokenizer(tok).encode_examples(tok, [conversation]) == [expected]
    # The plain encoding would have doubled the BOS: the bug this guards against.
    doubled = rule.encode_prompt(tok, PromptTemplate.parse("chat").render(messages, tok))
    assert doubled[:2] == [tok.bos_token_id] * 2
