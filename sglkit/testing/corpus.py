"""Test fixtures: the fixed, in-code training corpus of the tiny byte-level BPE tokenizer.

The corpus is generated deterministically (a seeded ``random.Random`` over fixed word lists), so the
tokenizer trained on it is identical on every machine. It mixes plain English, numbers, lists, greetings,
code-ish text, punctuation and a few non-ASCII words (accents, CJK, an emoji) so that some characters
span several byte-level tokens.
"""

from __future__ import annotations

import random

__all__ = ["build_corpus"]

_CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Brazil", "Brasília"),
    ("Australia", "Canberra"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("India", "New Delhi"),
    ("China", "Beijing"),
    ("Kenya", "Nairobi"),
    ("Mexico", "Mexico City"),
    ("Switzerland", "Bern"),
    ("Norway", "Oslo"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Turkey", "Ankara"),
]
_CITIES = [
    "Zürich",
    "São Paulo",
    "Kraków",
    "Reykjavík",
    "Montréal",
    "Málaga",
    "Genève",
    "東京",
    "日本",
    "北京",
]
_NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Zoë", "José"]
_ADJECTIVES = [
    "quick",
    "lazy",
    "bright",
    "quiet",
    "large",
    "small",
    "famous",
    "old",
    "new",
    "naïve",
    "happy",
    "busy",
]
_NOUNS = ["river", "mountain", "city", "garden", "library", "market", "station", "bridge", "museum", "harbor"]
_VERBS = ["visited", "painted", "described", "remembered", "counted", "watched", "built", "crossed", "found"]
_GREETINGS = [
    "Hello",
    "Hi",
    "Good morning",
    "Good evening",
    "Welcome",
    "Hey there",
    "Greetings",
    "Bonjour",
    "Hola",
]
_QUESTIONS = [
    "What is the capital of {country}?",
    "Can you list three facts about {country}?",
    "How many people live in {capital}?",
    "Where is {city} located?",
    "Why is the {noun} so {adj}?",
    "Could you help me write a short story?",
    "What time is it in {city}?",
]
_CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range({n}):\n    print(i * {m})\n",
    "x = [{n}, {m}, {k}]\nprint(sum(x))\n",
    'import json\ndata = json.loads(\'{{"key": "value", "count": {n}}}\')\n',
    "if value > {n}:\n    result = True\nelse:\n    result = False\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "SELECT name, capital FROM countries WHERE population > {n};",
    "while count < {m}:\n    count += 1  # increment\n",
]


def _sentence(rng: random.Random) -> str:
    """One random line from one of several templates."""
    country, capital = rng.choice(_CAPITALS)
    city, name = rng.choice(_CITIES), rng.choice(_NAMES)
    adj, noun, verb = rng.choice(_ADJECTIVES), rng.choice(_NOUNS), rng.choice(_VERBS)
    n, m, k = rng.randint(0, 100), rng.randint(2, 2024), rng.randint(0, 9)
    kind = rng.randrange(10)
    if kind == 0:
        return f"The capital of {country} is {capital}."
    if kind == 1:
        return f"{rng.choice(_GREETINGS)}, {name}! How are you today?"
    if kind == 2:
        return f"{name} {verb} the {adj} {noun} in {city} on day {n}."
    if kind == 3:
        return rng.choice(_QUESTIONS).format(country=country, capital=capital, city=city, noun=noun, adj=adj)
    if kind == 4:
        items = rng.sample(_CAPITALS, 3)
        lines = [f"{i + 1}. Country: {c}\n   Capital: {cap}" for i, (c, cap) in enumerate(items)]
        return "Here are 3 countries and their capitals:\n\n" + "\n\n".join(lines)
    if kind == 5:
        return rng.choice(_CODE).format(n=n, m=m, k=k)
    if kind == 6:
        return f"In {m}, about {n}.{k}% of the {noun}s were {adj}; the rest ({100 - n}%) were not!"
    if kind == 7:
        return f"- {noun}: {n}\n- {adj}: {m}\n- total = {n + m}"
    if kind == 8:
        return f'{name} said: "I love {city} 🙂 and the {adj} café near the {noun}."'
    return f"Sure! The answer is {n * m}. Is there anything else I can help you with, {name}?"


def build_corpus(num_lines: int = 3000, seed: int = 1234) -> list[str]:
    """Return ``num_lines`` deterministic training lines for the tiny tokenizer."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(num_lines)]
