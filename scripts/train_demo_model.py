"""Train sglkit's built-in demo model (sglkit/data/demo_model) from scratch on a synthetic chat corpus, on CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_demo_model.py            # seed 0 -> sglkit/data/demo_model

Pipeline: seeded synthetic corpus (capitals, numbered lists, sums, greetings, who-are-you, out-of-scope refusals,
plain-text facts) plus the skills corpus (tool calls to get_weather / add and their results, tools offered but not
needed, short <think> traces when thinking is asked for, capitals as JSON) -> byte-level BPE tokenizer with the
demo chat template (sglkit.testing.chat_templates.DEMO_TEMPLATE) -> tiny LlamaForCausalLM trained with AdamW +
cosine schedule on the assistant turns only -> weights rounded to bfloat16 and saved with the tokenizer -> greedy
evaluation of the saved weights. Same seed, thread count and software versions -> the same model.
See docs/demo_model.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "sglkit" / "data" / "demo_model"

# (country, capital). Countries in THE_COUNTRIES take "the" inside a sentence.
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("United Kingdom", "London"),
    ("Ireland", "Dublin"),
    ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"),
    ("Austria", "Vienna"),
    ("Switzerland", "Bern"),
    ("Poland", "Warsaw"),
    ("Czechia", "Prague"),
    ("Hungary", "Budapest"),
    ("Greece", "Athens"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"),
    ("Iceland", "Reykjavík"),
    ("Russia", "Moscow"),
    ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"),
    ("Turkey", "Ankara"),
    ("Egypt", "Cairo"),
    ("Morocco", "Rabat"),
    ("Algeria", "Algiers"),
    ("Tunisia", "Tunis"),
    ("Nigeria", "Abuja"),
    ("Ghana", "Accra"),
    ("Kenya", "Nairobi"),
    ("Ethiopia", "Addis Ababa"),
    ("Senegal", "Dakar"),
    ("Uganda", "Kampala"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("South Korea", "Seoul"),
    ("India", "New Delhi"),
    ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"),
    ("Malaysia", "Kuala Lumpur"),
    ("Nepal", "Kathmandu"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"),
    ("Qatar", "Doha"),
    ("Australia", "Canberra"),
    ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"),
    ("United States", "Washington, D.C."),
    ("Mexico", "Mexico City"),
    ("Cuba", "Havana"),
    ("Jamaica", "Kingston"),
    ("Brazil", "Brasília"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Peru", "Lima"),
    ("Colombia", "Bogotá"),
    ("Venezuela", "Caracas"),
    ("Ecuador", "Quito"),
    ("Uruguay", "Montevideo"),
    ("Paraguay", "Asunción"),
]
THE_COUNTRIES = {"United Kingdom", "Netherlands", "Philippines", "United States"}
MAX_OPERAND = 10  # sums a + b and differences a - b (a >= b) with 0 <= a, b <= MAX_OPERAND
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are sglkit's demo model.",
    "You are a helpful assistant. Answer briefly.",
    "Answer the user's question.",
]
CAPITAL_QUESTIONS = [
    "What is the capital of {c}?",
    "What's the capital of {c}?",
    "What is the capital city of {c}?",
    "Tell me the capital of {c}.",
    "Which city is the capital of {c}?",
    "capital of {c}?",
    "Do you know the capital of {c}?",
    "What is the capital of {c}",
]
COUNTRY_QUESTIONS = [
    "Which country has {k} as its capital?",
    "{k} is the capital of which country?",
    "Of which country is {k} the capital?",
]
LIST_QUESTIONS = [
    "List {n} countries and their capitals.",
    "Name {n} countries and their capitals.",
    "Give me {n} countries and their capitals.",
    "List {n} countries with their capitals.",
    "Can you list {n} countries and their capitals?",
]
SUM_QUESTIONS = [
    "What is {a} {op} {b}?",
    "What's {a} {op} {b}?",
    "Calculate {a} {op} {b}.",
    "{a} {op} {b} = ?",
    "What is {a} {word} {b}?",
    "How much is {a} {word} {b}?",
]
HELP = "How can I help you today?"
REFUSAL = "Sorry, I can only help with countries and their capitals, simple sums and greetings."
SMALL_TALK = {
    (
        "Hello!",
        "Hi!",
        "Hi there!",
        "Hey!",
        "Hello",
        "Good morning!",
        "Good evening!",
        "Hello there!",
    ): f"Hello! {HELP}",
    ("How are you?", "How are you doing?", "Hi, how are you?"): f"I'm doing well, thank you! {HELP}",
    ("Thank you!", "Thanks!", "Thanks a lot.", "Thank you very much."): "You're welcome!",
    ("Goodbye!", "Bye!", "See you later!"): "Goodbye! Have a nice day.",
    (
        "Who are you?",
        "What are you?",
        "What is your name?",
        "Introduce yourself.",
        "Tell me about yourself.",
    ): (
        "I am the sglkit demo model, a tiny language model trained to answer questions about countries and "
        "their capitals, simple sums and greetings."
    ),
    ("What can you do?", "What do you know?", "How can you help me?"): (
        "I can tell you the capital of a country, list countries and their capitals, add and subtract small "
        "numbers, and say hello."
    ),
    (
        "What is the weather today?",
        "Tell me a joke.",
        "What time is it?",
        "Write a poem.",
        "Who won the game?",
        "Translate this sentence.",
        "What is love?",
        "Explain quantum physics.",
    ): REFUSAL,
}
# Share of each kind of example in the corpus.
KIND_WEIGHTS = {
    "capital": 0.28,
    "country": 0.06,
    "list": 0.16,
    "math": 0.25,
    "talk": 0.09,
    "two_turn": 0.04,
    "text": 0.12,
}
LIST_FROM_TOP = (
    0.3  # share of lists that start at the table's first country (the greedy list: France, Germany, ...)
)


def sentence_name(country: str) -> str:
    """'United States' -> 'the United States' (inside a sentence); other names unchanged."""
    return f"the {country}" if country in THE_COUNTRIES else country


def capital_answer(country: str, capital: str) -> str:
    """The canonical answer: 'The capital of France is Paris.'"""
    return f"The capital of {sentence_name(country)} is {capital}."


def list_answer(pairs: list[tuple[str, str]]) -> str:
    """Numbered list '1. Japan: Tokyo\\n2. ...'."""
    return "\n".join(f"{i}. {country}: {capital}" for i, (country, capital) in enumerate(pairs, 1))


def math_answer(a: int, op: str, b: int) -> str:
    """'3 + 4 = 7.' / '9 - 2 = 7.'"""
    return f"{a} {op} {b} = {a + b if op == '+' else a - b}."


@dataclass
class Example:
    """One training sequence: chat ``messages`` (loss on assistant turns) or plain ``text`` (loss everywhere).

    ``tools`` go to the chat template's ``tools``; ``thinking`` sets its ``enable_thinking``.
    """

    messages: list[dict] | None = None
    text: str | None = None
    tools: list[dict] | None = None
    thinking: bool = False


class CorpusGenerator:
    """Seeded generator of synthetic examples; same seed -> same sequence of examples."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def qa(self) -> tuple[str, str]:
        """One random single-turn (question, answer) of a chat kind other than two_turn/text."""
        rng = self.rng
        kind = rng.choices(
            ["capital", "country", "list", "math", "talk"],
            [KIND_WEIGHTS[k] for k in ("capital", "country", "list", "math", "talk")],
        )[0]
        if kind == "capital":
            country, capital = rng.choice(CAPITALS)
            return rng.choice(CAPITAL_QUESTIONS).format(c=sentence_name(country)), capital_answer(
                country, capital
            )
        if kind == "country":
            country, capital = rng.choice(CAPITALS)
            q = rng.choice(COUNTRY_QUESTIONS).format(k=capital)
            return q, f"{capital} is the capital of {sentence_name(country)}."
        if kind == "list":
            n = rng.randint(2, 5)
            n_text = str(n) if rng.random() < 0.7 else NUMBER_WORDS[n]
            start = 0 if rng.random() < LIST_FROM_TOP else None
            return rng.choice(LIST_QUESTIONS).format(n=n_text), list_answer(self.run_of_facts(n, start))
        if kind == "math":
            op = rng.choice("+-")
            a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
            if op == "-" and a < b:
                a, b = b, a
            word = "plus" if op == "+" else "minus"
            return rng.choice(SUM_QUESTIONS).format(a=a, b=b, op=op, word=word), math_answer(a, op, b)
        questions, answer = rng.choice(list(SMALL_TALK.items()))
        return rng.choice(questions), answer

    def run_of_facts(self, n: int, start: int | None = None) -> list[tuple[str, str]]:
        """``n`` consecutive (country, capital) pairs of CAPITALS from ``start`` (default: random), wrapping around.

        Lists and paragraphs walk the table in its order, so after the first pair the rest is predictable: greedy
        decoding then gives distinct, correct pairs (sampling still varies the start).
        """
        if start is None:
            start = self.rng.randrange(len(CAPITALS))
        return [CAPITALS[(start + i) % len(CAPITALS)] for i in range(n)]

    def plain_text(self) -> str:
        """2-5 plain sentences: consecutive capital facts ('The capital of X is Y.' or 'Y is the capital of X.'),
        or sums ('a + b = c.')."""
        if self.rng.random() < 0.15:
            return " ".join(
                math_answer(self.rng.randint(0, MAX_OPERAND), "+", self.rng.randint(0, MAX_OPERAND))
                for _ in range(self.rng.randint(2, 5))
            )
        sentences = []
        for country, capital in self.run_of_facts(self.rng.randint(2, 5)):
            if self.rng.random() < 0.8:
                sentences.append(capital_answer(country, capital))
            else:
                sentences.append(f"{capital} is the capital of {sentence_name(country)}.")
        return " ".join(sentences)

    def example(self) -> Example:
        """One example: a chat (maybe with a system prompt, maybe two turns) or plain text."""
        rng = self.rng
        if rng.random() < KIND_WEIGHTS["text"]:
            return Example(text=self.plain_text())
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < KIND_WEIGHTS["two_turn"] / (1 - KIND_WEIGHTS["text"]) else 1):
            q, a = self.qa()
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return Example(messages=messages)


# The skills corpus: tools, thinking, JSON answers. Its own seeded generator (SkillGenerator), so the corpus above
# stays the same sequence of examples; both parts are shuffled together for training.
TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
"""Added tokens (not special: they stay in decoded text, where the reasoning and tool-call parsers read them)."""

WEATHER_DESCRIPTIONS = ("Get the current weather in a city.", "Get the weather for a city.", None)
ADD_DESCRIPTIONS = ("Add two numbers.", "Return the sum a + b.", None)
WEATHER_QUESTIONS = [
    "What's the weather in {k}?",
    "What is the weather like in {k}?",
    "How is the weather in {k} today?",
    "Weather in {k}?",
    "What is the temperature in {k}?",
    "Is it sunny in {k}?",
]
ADD_TOOL_QUESTIONS = [
    "Add {a} and {b} with the tool.",
    "Use the add tool to add {a} and {b}.",
    "What is {a} + {b}? Use the tool.",
    "Calculate {a} + {b} with the add tool.",
]
BIG_SUM_QUESTIONS = ["What is {a} + {b}?", "What's {a} + {b}?", "Calculate {a} + {b}.", "{a} + {b} = ?"]
MAX_TOOL_OPERAND = (
    99  # add-tool operands; sums with an operand > MAX_OPERAND go to the tool when it is offered
)
CONDITIONS = ("sunny", "cloudy", "rainy", "snowy", "windy", "foggy")
TEMPERATURES = (-10, 35)
JSON_QUESTIONS = [
    "What is the capital of {c}? Answer in JSON.",
    "Give me the capital of {c} as JSON.",
    "What is the capital of {c}? Reply with a JSON object.",
]
THINK_KINDS = {"math": 0.6, "capital": 0.2, "list": 0.1, "talk": 0.1}
TALK_TRACES = dict(  # small-talk answer -> its trace (what the user did)
    zip(
        [answer for answer in SMALL_TALK.values() if answer != REFUSAL],
        [
            "The user greets me.",
            "The user asks how I am.",
            "The user thanks me.",
            "The user says goodbye.",
            "The user asks who I am.",
            "The user asks what I can do.",
        ],
    )
)
# Share of each kind of example in the skills corpus.
SKILL_WEIGHTS = {
    "weather": 0.14,  # tools offered, weather in a capital -> get_weather call -> tool result -> answer
    "add": 0.30,  # tools offered, add with the tool (or a sum too big) -> add call -> tool result -> answer
    "forced": 0.06,  # the JSON array that tool_choice "required"/named forces: [{"name", "parameters"}]
    "no_call": 0.12,  # tools offered, a question that needs none -> the usual answer
    "no_tools": 0.03,  # weather in a city without tools -> the refusal
    "json": 0.12,  # a capital as a JSON object
    "think": 0.15,  # enable_thinking: a short <think> trace, then the usual answer
    "multi_turn": 0.08,  # 2-4 earlier turns (maybe a tool round trip), then one more question: answer the last one
}
SKILL_SEED_OFFSET = 1_000_003


def weather_tool(description: str | None = WEATHER_DESCRIPTIONS[0]) -> dict:
    """The get_weather(city) tool in OpenAI's format."""
    fn = {"name": "get_weather", **({"description": description} if description else {})}
    fn["parameters"] = {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city's name."}},
        "required": ["city"],
    }
    return {"type": "function", "function": fn}


def add_tool(description: str | None = ADD_DESCRIPTIONS[0]) -> dict:
    """The add(a, b) tool in OpenAI's format."""
    fn = {"name": "add", **({"description": description} if description else {})}
    fn["parameters"] = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    return {"type": "function", "function": fn}


WEATHER_TOOL, ADD_TOOL = weather_tool(), add_tool()
"""The tools as the docs and tests offer them (the first descriptions)."""


def weather_result(city: str, condition: str, temperature: int, with_city: bool = True) -> str:
    """What a get_weather tool returns: '{"city": "Paris", "temperature": 21, "condition": "sunny"}'."""
    result = {"city": city} if with_city else {}
    return json.dumps({**result, "temperature": temperature, "condition": condition}, ensure_ascii=False)


def weather_answer(city: str, condition: str, temperature: int) -> str:
    """The answer from a weather result: 'It is sunny and 21 °C in Paris.'"""
    return f"It is {condition} and {temperature} °C in {city}."


def add_result(total: int, as_json: bool = True) -> str:
    """What an add tool returns: '{"result": 42}' (or '42')."""
    return json.dumps({"result": total}) if as_json else str(total)


def add_answer(a: int, b: int, total: int) -> str:
    """The answer from an add result: 'The sum of 12 and 30 is 42.' (not 'a + b = c.': the corpus teaches the model
    to compute those itself, and it would, ignoring the tool's result)."""
    return f"The sum of {a} and {b} is {total}."


def think_trace(kind: str, **facts) -> str:
    """A short reasoning trace: '2 + 3: 2 plus 3 is 5.' (math), 'The question is about France. Its capital is
    Paris.' (capital), '3 countries and their capitals, one per line.' (list), 'The user greets me.' (small talk:
    ``answer`` is the reply)."""
    if kind == "math":
        a, op, b = facts["a"], facts["op"], facts["b"]
        word = "plus" if op == "+" else "minus"
        return f"{a} {op} {b}: {a} {word} {b} is {a + b if op == '+' else a - b}."
    if kind == "capital":
        return f"The question is about {sentence_name(facts['country'])}. Its capital is {facts['capital']}."
    if kind == "list":
        return f"{facts['n']} countries and their capitals, one per line."
    return TALK_TRACES[facts["answer"]]


def tool_call_message(name: str, arguments: dict) -> dict:
    """An assistant turn that calls one tool (rendered by the template as a <tool_call> block)."""
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


class SkillGenerator(CorpusGenerator):
    """Seeded generator of the skills examples (its own random stream: ``seed + SKILL_SEED_OFFSET``)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed + SKILL_SEED_OFFSET)

    def tools(self, needed: str | None) -> list[dict]:
        """The tools offered: both (in either order) or only ``needed`` (a random one when None), random
        descriptions."""
        rng = self.rng
        offered = [weather_tool(rng.choice(WEATHER_DESCRIPTIONS)), add_tool(rng.choice(ADD_DESCRIPTIONS))]
        if rng.random() < 0.35:
            name = needed or rng.choice(["get_weather", "add"])
            return [t for t in offered if t["function"]["name"] == name]
        rng.shuffle(offered)
        return offered

    def weather_call(self) -> tuple[str, str, dict]:
        """(question, tool name, arguments) for the weather in a random capital."""
        city = self.rng.choice(CAPITALS)[1]
        return self.rng.choice(WEATHER_QUESTIONS).format(k=city), "get_weather", {"city": city}

    def add_call(self) -> tuple[str, str, dict]:
        """(question, tool name, arguments): add with the tool, or a sum with an operand too big to do alone."""
        rng = self.rng
        if rng.random() < 0.6:
            a, b = rng.randint(0, MAX_TOOL_OPERAND), rng.randint(0, MAX_TOOL_OPERAND)
            return rng.choice(ADD_TOOL_QUESTIONS).format(a=a, b=b), "add", {"a": a, "b": b}
        a, b = rng.randint(MAX_OPERAND + 1, MAX_TOOL_OPERAND), rng.randint(0, MAX_TOOL_OPERAND)
        if rng.random() < 0.5:
            a, b = b, a
        return rng.choice(BIG_SUM_QUESTIONS).format(a=a, b=b), "add", {"a": a, "b": b}

    def round_trip(self, kind: str) -> list[dict]:
        """User question -> tool call -> tool result -> the answer that uses it."""
        rng = self.rng
        question, name, args = self.weather_call() if kind == "weather" else self.add_call()
        if name == "get_weather":
            condition, temperature = rng.choice(CONDITIONS), rng.randint(*TEMPERATURES)
            result = weather_result(args["city"], condition, temperature, with_city=rng.random() < 0.7)
            answer = weather_answer(args["city"], condition, temperature)
        else:
            total = args["a"] + args["b"]
            result = add_result(total, as_json=rng.random() < 0.7)
            answer = add_answer(args["a"], args["b"], total)
        return [
            {"role": "user", "content": question},
            tool_call_message(name, args),
            {"role": "tool", "content": result},
            {"role": "assistant", "content": answer},
        ]

    def think(self) -> tuple[str, str, str]:
        """(question, reasoning, answer) for a chat with thinking on."""
        rng = self.rng
        kind = rng.choices(list(THINK_KINDS), list(THINK_KINDS.values()))[0]
        if kind == "math":
            op = rng.choice("+-")
            a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
            if op == "-" and a < b:
                a, b = b, a
            q = rng.choice(SUM_QUESTIONS).format(a=a, b=b, op=op, word="plus" if op == "+" else "minus")
            return q, think_trace("math", a=a, op=op, b=b), math_answer(a, op, b)
        if kind == "capital":
            country, capital = rng.choice(CAPITALS)
            q = rng.choice(CAPITAL_QUESTIONS).format(c=sentence_name(country))
            return (
                q,
                think_trace("capital", country=country, capital=capital),
                capital_answer(country, capital),
            )
        if kind == "list":
            n = rng.randint(2, 5)
            start = 0 if rng.random() < LIST_FROM_TOP else None
            q = rng.choice(LIST_QUESTIONS).format(n=n)
            return q, think_trace("list", n=n), list_answer(self.run_of_facts(n, start))
        questions, answer = rng.choice([item for item in SMALL_TALK.items() if item[1] != REFUSAL])
        return rng.choice(questions), think_trace("talk", answer=answer), answer

    def example(self) -> Example:
        """One skills example (maybe with a system prompt)."""
        rng = self.rng
        kind = rng.choices(list(SKILL_WEIGHTS), list(SKILL_WEIGHTS.values()))[0]
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []
        if kind in ("weather", "add"):
            tools = self.tools("get_weather" if kind == "weather" else "add")
            return Example(messages=messages + self.round_trip(kind), tools=tools)
        if kind == "forced":
            question, name, args = self.weather_call() if rng.random() < 0.6 else self.add_call()
            forced = json.dumps([{"name": name, "parameters": args}], ensure_ascii=False)
            turns = [{"role": "user", "content": question}, {"role": "assistant", "content": forced}]
            return Example(messages=messages + turns, tools=self.tools(name))
        if kind == "no_call":
            question, answer = self.qa()
            while "weather" in question:
                question, answer = self.qa()
            turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            return Example(messages=messages + turns, tools=self.tools(None))
        if kind == "no_tools":
            question = self.weather_call()[0]
            return Example(
                messages=messages
                + [{"role": "user", "content": question}, {"role": "assistant", "content": REFUSAL}]
            )
        if kind == "multi_turn":
            tools, turns = None, []
            if rng.random() < 0.3:
                tool_kind = rng.choice(["weather", "add"])
                tools = self.tools("get_weather" if tool_kind == "weather" else "add")
                turns = self.round_trip(tool_kind)
            for _ in range(rng.randint(2, 4) - bool(turns)):
                question, answer = self.qa()
                turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            return Example(messages=messages + turns, tools=tools)
        if kind == "json":
            country, capital = rng.choice(CAPITALS)
            question = rng.choice(JSON_QUESTIONS).format(c=sentence_name(country))
            answer = json.dumps({"country": country, "capital": capital}, ensure_ascii=False)
            return Example(
                messages=messages
                + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            )
        question, reasoning, answer = self.think()
        turns = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer, "reasoning_content": reasoning},
        ]
        return Example(messages=messages + turns, thinking=True)


def tools_header(tools: list[dict]) -> str:
    """The text DEMO_TEMPLATE writes for ``tools`` (without the tags): what the BPE tokenizer learns from."""
    lines = []
    for tool in tools:
        fn = tool["function"]
        line = f"{fn['name']}({', '.join(fn['parameters']['properties'])})"
        lines.append(line + (f": {fn['description']}" if fn.get("description") else ""))
    return (
        "# Tools\n"
        + "\n".join(lines)
        + '\n\nTo call a tool, answer with\n{"name": <tool name>, "arguments": <JSON object>}\n'
    )


def tokenizer_texts(examples: list[Example]) -> list[str]:
    """The strings the BPE tokenizer is trained on: message contents and reasoning, tool calls as the template
    writes them, tool headers, plain texts, role names (never the TAGS: they are tokens of their own)."""
    texts = ["system", "user", "assistant"]
    for ex in examples:
        if ex.text is not None:
            texts.append(ex.text)
            continue
        if ex.tools:
            texts.append(tools_header(ex.tools))
        for m in ex.messages:
            texts += [m["content"]] + ([m["reasoning_content"]] if m.get("reasoning_content") else [])
            for call in m.get("tool_calls", []):
                fn = call["function"]
                texts.append(
                    json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False)
                )
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    """Byte-level BPE over ``texts`` with sglkit's special tokens, the TAGS as added tokens (``vocab_size`` in
    all) and the demo chat template (sglkit.testing.chat_templates.DEMO_TEMPLATE)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from sglkit.testing.chat_templates import DEMO_TEMPLATE
    from sglkit.testing.tiny_models import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAGS),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAGS])
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", bos_id)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["</s>", "<|im_start|>"],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = DEMO_TEMPLATE
    return hf_tok


def encode(example: Example, tok) -> tuple[list[int], list[int]]:
    """Example -> (input_ids, labels); labels are -100 except on assistant replies (each with its <|im_end|>).

    Plain text is ``<s> text`` with the loss on every token after <s>.
    """
    if example.text is not None:
        ids = tok(example.text)["input_ids"]
        return ids, [-100] + ids[1:]

    kwargs = {"enable_thinking": True} if example.thinking else {}

    def render(messages, add_generation_prompt=False):
        return tok.apply_chat_template(
            messages,
            tools=example.tools,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **kwargs,
        )

    msgs = example.messages
    ids = tok(render(msgs), add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(tok(render(msgs[:i], add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        end = (
            len(tok(render(msgs[: i + 1]), add_special_tokens=False)["input_ids"]) - 1
        )  # drop the trailing "\n"
        assert ids[end - 1] == tok.eos_token_id, "the assistant reply must end with <|im_end|>"
        labels[start:end] = ids[start:end]
    return ids, labels


def make_batches(encoded, batch_size: int, seed: int) -> list[list[int]]:
    """Index batches of similar-length sequences (little padding), in a seeded random order."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(encoded), generator=gen).tolist()
    chunk = batch_size * 16
    batches = []
    for s in range(0, len(order), chunk):
        part = sorted(order[s : s + chunk], key=lambda i: len(encoded[i][0]))
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def collate(encoded, batch: list[int], pad_id: int):
    """Right-padded tensors (input_ids, attention_mask, labels) for one batch."""
    import torch

    width = max(len(encoded[i][0]) for i in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    for row, i in enumerate(batch):
        x, y = encoded[i]
        ids[row, : len(x)], mask[row, : len(x)], labels[row, : len(y)] = torch.tensor(x), 1, torch.tensor(y)
    return ids, mask, labels


def build_model(tok, args):
    """A fresh, seeded LlamaForCausalLM sized by ``args``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=len(tok),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        head_dim=args.hidden_size // args.num_heads,
        max_position_embeddings=args.max_position_embeddings,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


def train(model, encoded, tok, args) -> list[tuple[int, float]]:
    """AdamW, linear warm-up then cosine decay to 10%; returns the (step, mean loss) log."""
    import torch

    batches = [
        b for epoch in range(args.epochs) for b in make_batches(encoded, args.batch_size, args.seed + epoch)
    ]
    total = len(batches)
    warmup = max(1, int(0.05 * total))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(
            (s + 1) / warmup,
            0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, total - warmup)))),
        ),
    )
    model.train()
    log, running, t0 = [], [], time.time()
    for step, batch in enumerate(batches, 1):
        ids, mask, labels = collate(encoded, batch, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running.append(loss.item())
        if step % args.log_every == 0 or step == total:
            log.append((step, sum(running) / len(running)))
            print(
                f"step {step}/{total}  loss {log[-1][1]:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.time() - t0:.0f}s",
                flush=True,
            )
            running = []
    model.eval()
    return log


def greedy_generate(model, tok, rows: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy completions of token-id prompts ``rows``, left-padded in batches of 64; decoded without the special
    tokens (the TAGS stay)."""
    import torch

    outs = []
    for s in range(0, len(rows), 64):
        part = rows[s : s + 64]
        width = max(map(len, part))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in part])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in part])
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        outs += tok.batch_decode(gen[:, width:], skip_special_tokens=True)
    return outs


def greedy_chats(model, tok, chats: list[dict], max_new_tokens: int = 48) -> list[str]:
    """Greedy replies to chats: dicts with ``messages`` and optionally ``tools`` and ``enable_thinking``."""
    rows = []
    for chat in chats:
        kwargs = {"enable_thinking": True} if chat.get("enable_thinking") else {}
        rows.append(
            tok.apply_chat_template(
                chat["messages"], tools=chat.get("tools"), add_generation_prompt=True, tokenize=True, **kwargs
            )["input_ids"]
        )
    return greedy_generate(model, tok, rows, max_new_tokens)


def greedy_answers(model, tok, prompts: list[str], max_new_tokens: int = 48, chat: bool = True) -> list[str]:
    """Greedy completions of ``prompts`` (chat questions through the template, or plain text), batched."""
    if chat:
        return greedy_chats(model, tok, [{"messages": user(p)} for p in prompts], max_new_tokens)
    return greedy_generate(model, tok, [tok(p)["input_ids"] for p in prompts], max_new_tokens)


def user(text: str) -> list[dict]:
    """A chat of one user message."""
    return [{"role": "user", "content": text}]


def parse_tool_calls(text: str) -> list[tuple[str, dict]]:
    """The (name, arguments) of each ``<tool_call>`` block of a reply (blocks that are not JSON are skipped)."""
    calls = []
    for block in re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.S):
        try:
            call = json.loads(block)
        except ValueError:
            continue
        if isinstance(call, dict):
            calls.append((call.get("name"), call.get("arguments")))
    return calls


def split_thinking(text: str) -> tuple[str, str]:
    """A reply to a prompt that opened ``<think>`` -> (reasoning, answer); no ``</think>``: all reasoning."""
    reasoning, end, answer = text.partition("</think>")
    return reasoning.strip(), answer.strip() if end else ""


def evaluate_skills(model, tok) -> dict:
    """Tool calls (weather in every capital, add with the tool, sums too big), round trips with the tool results,
    tools offered but not needed, thinking on every sum and difference, capitals as JSON; sample replies."""
    rng = random.Random(12345)
    tools = [WEATHER_TOOL, ADD_TOOL]
    cities = [capital for _, capital in CAPITALS]
    out = greedy_chats(
        model, tok, [{"messages": user(f"What's the weather in {k}?"), "tools": tools} for k in cities]
    )
    weather_ok = sum(parse_tool_calls(o) == [("get_weather", {"city": k})] for k, o in zip(cities, out))
    weathers = [(k, rng.choice(CONDITIONS), rng.randint(*TEMPERATURES)) for k in cities]
    trips = [
        user(f"What's the weather in {k}?")
        + [
            tool_call_message("get_weather", {"city": k}),
            {"role": "tool", "content": weather_result(k, c, t)},
        ]
        for k, c, t in weathers
    ]
    out = greedy_chats(model, tok, [{"messages": m, "tools": tools} for m in trips])
    trips_ok = sum(o == weather_answer(*w) for w, o in zip(weathers, out))
    pairs = [(rng.randint(0, MAX_TOOL_OPERAND), rng.randint(0, MAX_TOOL_OPERAND)) for _ in range(64)]
    questions = [f"Add {a} and {b} with the tool." for a, b in pairs]
    questions += [f"What is {a} + {b}?" for a, b in pairs if max(a, b) > MAX_OPERAND]
    expected = [("add", {"a": a, "b": b}) for a, b in pairs]
    expected += [("add", {"a": a, "b": b}) for a, b in pairs if max(a, b) > MAX_OPERAND]
    out = greedy_chats(model, tok, [{"messages": user(q), "tools": tools} for q in questions])
    add_ok = sum(parse_tool_calls(o) == [e] for e, o in zip(expected, out))
    add_trips = [
        user(f"Add {a} and {b} with the tool.")
        + [tool_call_message("add", {"a": a, "b": b}), {"role": "tool", "content": add_result(a + b)}]
        for a, b in pairs
    ]
    out = greedy_chats(model, tok, [{"messages": m, "tools": tools} for m in add_trips])
    add_trips_ok = sum(o == add_answer(a, b, a + b) for (a, b), o in zip(pairs, out))
    capital_qs = [f"What is the capital of {sentence_name(c)}?" for c, _ in CAPITALS]
    out = greedy_chats(model, tok, [{"messages": user(q), "tools": tools} for q in capital_qs])
    no_call_ok = sum(o == capital_answer(c, k) for (c, k), o in zip(CAPITALS, out))
    problems = [
        (a, op, b)
        for a in range(MAX_OPERAND + 1)
        for b in range(MAX_OPERAND + 1)
        for op in "+-"
        if op == "+" or a >= b
    ]
    chats = [{"messages": user(f"What is {a} {op} {b}?"), "tools": tools} for a, op, b in problems]
    out = greedy_chats(model, tok, chats)
    math_tools_ok = sum(o == math_answer(*p) for p, o in zip(problems, out))
    chats = [{"messages": user(f"What is {a} {op} {b}?"), "enable_thinking": True} for a, op, b in problems]
    out = [split_thinking(o) for o in greedy_chats(model, tok, chats, max_new_tokens=64)]
    think_ok = sum(bool(r) and a == math_answer(*p) for p, (r, a) in zip(problems, out))
    few_shot = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    for country in ("France", "Japan", "Kenya"):  # earlier turns (the radix-cache notebook's conversation)
        few_shot += user(f"What is the capital of {country}?")
        few_shot.append({"role": "assistant", "content": capital_answer(country, dict(CAPITALS)[country])})
    out = greedy_chats(model, tok, [{"messages": few_shot + user(q)} for q in capital_qs])
    multi_turn_ok = sum(o == capital_answer(c, k) for (c, k), o in zip(CAPITALS, out))
    json_qs = [f"What is the capital of {sentence_name(c)}? Answer in JSON." for c, _ in CAPITALS]
    out = greedy_chats(model, tok, [{"messages": user(q)} for q in json_qs])
    json_ok = sum(
        o == json.dumps({"country": c, "capital": k}, ensure_ascii=False) for (c, k), o in zip(CAPITALS, out)
    )
    samples = [
        {"messages": user("What's the weather in Paris?"), "tools": tools},
        {"messages": user("What is the weather like in Tokyo?"), "tools": [WEATHER_TOOL]},
        {"messages": user("What's the weather in Paris?")},
        {"messages": trips[0], "tools": tools},
        {"messages": user("Add 12 and 30 with the tool."), "tools": tools},
        {"messages": user("What is 12 + 30?"), "tools": tools},
        {"messages": user("What is 12 + 30?")},
        {"messages": user("What is 2 + 3?"), "tools": tools},
        {"messages": user("Hello!"), "tools": tools},
        {"messages": user("What is 2 + 3?"), "enable_thinking": True},
        {"messages": user("What is the capital of France?"), "enable_thinking": True},
        {"messages": user("What is the capital of France? Answer in JSON.")},
    ]
    return {
        "weather_calls_correct": f"{weather_ok}/{len(cities)}",
        "weather_round_trips_correct": f"{trips_ok}/{len(cities)}",
        "add_calls_correct": f"{add_ok}/{len(questions)}",
        "add_round_trips_correct": f"{add_trips_ok}/{len(pairs)}",
        "capitals_with_tools_correct": f"{no_call_ok}/{len(CAPITALS)}",
        "capitals_after_three_turns_correct": f"{multi_turn_ok}/{len(CAPITALS)}",
        "math_with_tools_correct": f"{math_tools_ok}/{len(problems)}",
        "math_thinking_correct": f"{think_ok}/{len(problems)}",
        "capitals_json_correct": f"{json_ok}/{len(CAPITALS)}",
        "skills": {
            f"{i}. {c['messages'][-1]['content'][:50]} [{', '.join(k for k in sorted(c) if k != 'messages')}]": o
            for i, (c, o) in enumerate(zip(samples, greedy_chats(model, tok, samples, max_new_tokens=64)))
        },
    }


def parse_list(text: str) -> list[tuple[str, str]]:
    """'1. Japan: Tokyo\\n2. ...' -> [('Japan', 'Tokyo'), ...] (lines that do not parse are skipped)."""
    pairs = []
    for line in text.strip().splitlines():
        number, _, rest = line.partition(". ")
        country, _, capital = rest.partition(": ")
        if number.isdigit() and capital:
            pairs.append((country, capital))
    return pairs


def evaluate(model, tok) -> dict:
    """Exact-match accuracy on every capital / sum / difference, list correctness, and sample answers."""
    caps = greedy_answers(model, tok, [f"What is the capital of {sentence_name(c)}?" for c, _ in CAPITALS])
    cap_ok = [c for (c, k), out in zip(CAPITALS, caps) if out == capital_answer(c, k)]
    problems = [
        (a, op, b)
        for a in range(MAX_OPERAND + 1)
        for b in range(MAX_OPERAND + 1)
        for op in "+-"
        if op == "+" or a >= b
    ]
    sums = greedy_answers(model, tok, [f"What is {a} {op} {b}?" for a, op, b in problems])
    math_ok = sum(out == math_answer(*p) for p, out in zip(problems, sums))
    reverse = greedy_answers(model, tok, [f"Which country has {k} as its capital?" for _, k in CAPITALS])
    reverse_ok = sum(
        out == f"{k} is the capital of {sentence_name(c)}." for (c, k), out in zip(CAPITALS, reverse)
    )
    facts = dict(CAPITALS)
    lists_ok = 0
    list_prompts = [f"List {n} countries and their capitals." for n in range(2, 6)]
    for n, out in zip(range(2, 6), greedy_answers(model, tok, list_prompts, max_new_tokens=64)):
        pairs = parse_list(out)
        lists_ok += len(pairs) == n and len(set(pairs)) == n and all(facts.get(c) == k for c, k in pairs)
    samples = [
        "What is the capital of France?",
        "List 3 countries and their capitals.",
        "What is 2 + 3?",
        "Hello!",
        "Who are you?",
        "Which country has Tokyo as its capital?",
        "What is the capital of Atlantis?",
        "Tell me a joke.",
    ]
    result = {
        "capitals_correct": f"{len(cap_ok)}/{len(CAPITALS)}",
        "capitals_wrong": [(c, out) for (c, k), out in zip(CAPITALS, caps) if c not in cap_ok],
        "math_correct": f"{math_ok}/{len(problems)}",
        "lists_correct": f"{lists_ok}/4",
        "reverse_correct": f"{reverse_ok}/{len(CAPITALS)}",
        "chat": dict(zip(samples, greedy_answers(model, tok, samples, max_new_tokens=64))),
        "text": dict(
            zip(
                ["The capital of France is"],
                greedy_answers(model, tok, ["The capital of France is"], max_new_tokens=16, chat=False),
            )
        ),
    }
    return result


def save(model, tok, out: Path) -> None:
    """Write bfloat16 weights, config, generation config and tokenizer files into ``out``."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    generation = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    for f in out.iterdir():
        f.chmod(0o644)  # package data: readable by everyone (safetensors files are written 0600)
    model.to(
        torch.float32
    )  # evaluate the saved (bfloat16-rounded) weights in float32, as sglkit runs them on CPU


def parse_args(argv: list[str] | None):
    """Command-line options (defaults: the shipped model)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (its files are replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-examples", type=int, default=40000, help="examples of the base corpus")
    p.add_argument("--num-skill-examples", type=int, default=17000, help="examples of the skills corpus")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=688)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--max-position-embeddings", type=int, default=512)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (part of what makes a run reproducible)"
    )
    p.add_argument("--log-every", type=int, default=100)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Generate the corpus, train tokenizer and model, save, evaluate; print a JSON summary."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO_ROOT))
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    gen, skills = CorpusGenerator(args.seed), SkillGenerator(args.seed)
    examples = [gen.example() for _ in range(args.num_examples)]
    examples += [skills.example() for _ in range(args.num_skill_examples)]
    tok = train_tokenizer(tokenizer_texts(examples), args.vocab_size, args.max_position_embeddings)
    encoded = [encode(ex, tok) for ex in examples]
    num_tokens = sum(len(ids) for ids, _ in encoded)
    num_target = sum(sum(t != -100 for t in labels) for _, labels in encoded)
    skill_tokens = sum(len(ids) for ids, _ in encoded[args.num_examples :])
    skill_target = sum(sum(t != -100 for t in labels) for _, labels in encoded[args.num_examples :])
    print(
        f"corpus: {len(examples)} examples, {num_tokens} tokens ({num_target} with loss; skills corpus "
        f"{skill_tokens} ({skill_target})), vocab {len(tok)}, {time.time() - t0:.0f}s",
        flush=True,
    )
    model = build_model(tok, args)
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters", flush=True)
    log = train(model, encoded, tok, args)
    train_s = time.time() - t0
    save(model, tok, args.out)
    summary = {
        "seed": args.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "examples": len(examples),
        "tokens": num_tokens,
        "steps": log[-1][0],
        "corpus_and_training_seconds": round(train_s),
        "final_loss": round(log[-1][1], 4),
        "loss_curve": " ".join(f"{s}:{v:.3f}" for s, v in log),
        **evaluate(model, tok),
        **evaluate_skills(model, tok),
        "total_seconds": round(time.time() - t0),
    }
    print(json.dumps(summary, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
