"""The generated input test suite: no downloads, deterministic for a seed.

Classes (content):
  prose         English-like sentences from a fixed word list (the in-distribution reference)
  code          Python-like functions, loops and calls
  numbers       arithmetic with correct results: "417 + 38 = 455; 12 * 7 = 84;"
  repetitive    one short phrase repeated
  multilingual  UTF-8 text in Greek, Cyrillic, Arabic, Devanagari, CJK, Hangul, emoji (multi-byte)
  random_bytes  uniform random token ids (bytes 0..255 for the byte tokenizer)
  ood           tokens the reference (prose) never contains, relative to the reference's token set
Noise (applied to prose): substitution (each token replaced with probability r by a random token),
deletion (each dropped with probability r), insertion (after each token, a random token inserted
with probability r). A mask says which tokens of the result are original.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

CLASSES = ("prose", "code", "numbers", "repetitive", "multilingual", "random_bytes", "ood")
NOISE_KINDS = ("substitute", "delete", "insert")

_WORDS = (
    "the a model learns from data and every layer adds its part to what the next one sees while attention "
    "weights decide which earlier tokens matter for the prediction of this word in a long sentence about "
    "rivers mountains cities markets history science music people who write read think build measure "
    "small large quickly slowly often never because although when where after before during"
).split()
_CODE = [
    "def {f}({a}, {b}):\n    return {a} {op} {b}\n",
    "for {a} in range({n}):\n    {b} = {b} {op} {a}\n",
    "if {a} > {n}:\n    print({a})\nelse:\n    {a} += 1\n",
    "class {F}:\n    def __init__(self, {a}):\n        self.{a} = {a}\n",
    "{a} = [{b} * {n} for {b} in {f}({n})]\n",
]
_MULTI = [
    "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο. ",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. ",
    "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر. ",
    "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले। ",
    "我能吞下玻璃而不伤身体。天地玄黄，宇宙洪荒。 ",
    "다람쥐 헌 쳇바퀴에 타고파. 키스의 고유조건은 입술끼리 만나야 하고. ",
    "いろはにほへと ちりぬるを わかよたれそ つねならむ。 ",
    "🚀🌍✨ naïve café façade — “quotes” ½ ∑ ∞ ≠ ≤ ",
]
_AMBIGUOUS = [
    ("We walked along the river until we reached the muddy", "She went to deposit her salary at the", " bank"),
    ("The baseball player swung his wooden", "At dusk a small furry animal flew out of the cave: a", " bat"),
    ("The flowers bloom early every year in the", "The old mattress creaked because of a broken", " spring"),
    ("On the building site the operator moved the heavy steel with a", "In the marsh we watched a tall grey", " crane"),
    ("The singer could not hold the right", "The footballers ran out onto the wet", " pitch"),
    ("He opened a savings account to earn some", "The story did not hold the children's", " interest"),
]

_SPAN_TAIL = " that everyone talked about all week."  # continues the span: its meaning carries on


@dataclass
class SuiteInput:
    cls: str
    length: int  # tokens
    tokens: list[int]
    info: dict = field(default_factory=dict)


def _prose(rng: random.Random, n_chars: int) -> str:
    out, size = [], 0
    while size < n_chars:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 14))]
        s = " ".join(words).capitalize() + rng.choice([". ", ". ", "! ", "? ", ", "])
        out.append(s)
        size += len(s)
    return "".join(out)


def _code(rng: random.Random, n_chars: int) -> str:
    names = ["x", "y", "total", "count", "item", "value", "acc", "idx"]
    out, size = [], 0
    while size < n_chars:
        tpl = rng.choice(_CODE)
        a, b = rng.sample(names, 2)
        s = tpl.format(f=rng.choice(["compute", "merge", "scale", "step"]), F=rng.choice(["Layer", "Cache", "Model"]),
                       a=a, b=b, op=rng.choice(["+", "-", "*", "//"]), n=rng.randint(2, 99))
        out.append(s)
        size += len(s)
    return "".join(out)


def _numbers(rng: random.Random, n_chars: int) -> str:
    out, size = [], 0
    while size < n_chars:
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        op = rng.choice(["+", "-", "*"])
        r = a + b if op == "+" else a - b if op == "-" else a * b
        s = f"{a} {op} {b} = {r}; "
        out.append(s)
        size += len(s)
    return "".join(out)


def _repetitive(rng: random.Random, n_chars: int) -> str:
    unit = rng.choice(["the cat sat on the mat. ", "abc ", "0123456789", "la la la "])
    return unit * (n_chars // len(unit) + 1)


def _multilingual(rng: random.Random, n_chars: int) -> str:
    out, size = [], 0
    while size < n_chars:
        s = rng.choice(_MULTI)
        out.append(s)
        size += len(s.encode("utf-8"))
    return "".join(out)


TEXT_GENERATORS = {"prose": _prose, "code": _code, "numbers": _numbers, "repetitive": _repetitive,
                   "multilingual": _multilingual}


def token_space(tokenizer, vocab: int) -> int:
    """Ids random tokens are drawn from: the 256 bytes for the byte tokenizer, else the whole vocabulary."""
    tv = getattr(tokenizer, "vocab_size", vocab)
    return min(256, vocab) if tv <= 259 else min(tv, vocab)


def encode_to_length(tokenizer, text_fn, length: int, rng: random.Random) -> list[int]:
    """Tokens of generated text, exactly `length` of them (text grows until it encodes that long)."""
    n_chars = max(16, length)
    while True:
        ids = tokenizer.encode(text_fn(rng, n_chars))
        if len(ids) >= length:
            return ids[:length]
        n_chars *= 2


def make_input(cls: str, length: int, tokenizer, vocab: int, seed: int = 0,
               reference: set[int] | None = None) -> SuiteInput:
    rng = random.Random(f"{cls}:{length}:{seed}")
    space = token_space(tokenizer, vocab)
    if cls in TEXT_GENERATORS:
        return SuiteInput(cls, length, encode_to_length(tokenizer, TEXT_GENERATORS[cls], length, rng))
    if cls == "random_bytes":
        return SuiteInput(cls, length, [rng.randrange(space) for _ in range(length)])
    if cls == "ood":
        ref = reference if reference is not None else reference_tokens(tokenizer, vocab, seed)
        pool = [t for t in range(space) if t not in ref]
        if not pool:
            raise ValueError("ood: the reference uses every token id; there is nothing out of its distribution")
        return SuiteInput(cls, length, [rng.choice(pool) for _ in range(length)],
                          {"ood_pool_size": len(pool), "reference_size": len(ref)})
    raise ValueError(f"input class '{cls}' is unknown; available: {', '.join(CLASSES)}")


def reference_tokens(tokenizer, vocab: int, seed: int = 0, n: int = 4096) -> set[int]:
    """The token ids of a long prose sample: the in-distribution reference for `ood` and novelty."""
    return set(encode_to_length(tokenizer, _prose, n, random.Random(f"reference:{seed}")))


def novel_fraction(tokens: list[int], reference: set[int]) -> float:
    """Share of tokens that never occur in the reference."""
    return sum(t not in reference for t in tokens) / len(tokens) if tokens else 0.0


def default_lengths(max_len: int, min_len: int = 16) -> list[int]:
    """min_len, 4x, 16x, ... and max_len itself."""
    out, n = [], min_len
    while n < max_len:
        out.append(n)
        n *= 4
    return out + [max_len]


def suite(tokenizer, vocab: int, lengths: list[int], classes: list[str] | tuple[str, ...] = CLASSES,
          samples: int = 1, seed: int = 0) -> list[SuiteInput]:
    ref = reference_tokens(tokenizer, vocab, seed)
    out = []
    for cls in classes:
        for length in lengths:
            for s in range(samples):
                item = make_input(cls, length, tokenizer, vocab, seed * 1000 + s, ref)
                item.info["novel_token_frac"] = novel_fraction(item.tokens, ref)
                out.append(item)
    return out


def add_noise(tokens: list[int], kind: str, rate: float, space: int, seed: int = 0) -> tuple[list[int], list[bool]]:
    """(noisy tokens, original mask). Random tokens are drawn uniformly from range(space)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    rng = random.Random(f"{kind}:{rate}:{seed}")
    out: list[int] = []
    orig: list[bool] = []
    for t in tokens:
        if kind == "substitute":
            if rng.random() < rate:
                new = rng.randrange(space - 1) if space > 1 else t
                out.append(new + (new >= t) if space > 1 else t)  # never the same token
                orig.append(False)
            else:
                out.append(t)
                orig.append(True)
        elif kind == "delete":
            if rng.random() >= rate:
                out.append(t)
                orig.append(True)
        elif kind == "insert":
            out.append(t)
            orig.append(True)
            if rng.random() < rate:
                out.append(rng.randrange(space))
                orig.append(False)
        else:
            raise ValueError(f"noise kind '{kind}' is unknown; available: {', '.join(NOISE_KINDS)}")
    if not out:  # deleting everything leaves nothing to score: keep the first token
        out, orig = tokens[:1], [True]
    return out, orig


def ambiguity_pairs(tokenizer) -> list[tuple[list[int], list[int], list[int], str]]:
    """(context A, context B, shared span, label): the same span after two contexts that give it
    different meanings."""
    return [(tokenizer.encode(a), tokenizer.encode(b), tokenizer.encode(span + _SPAN_TAIL), span.strip())
            for a, b, span in _AMBIGUOUS]


__all__ = [
    "CLASSES", "NOISE_KINDS", "SuiteInput", "suite", "make_input", "add_noise", "reference_tokens",
    "novel_fraction", "default_lengths", "ambiguity_pairs", "token_space", "encode_to_length",
]
