"""Phonebook long-context retrieval: find one person's number in a book of "First Last: NNNNNNNNNN" lines.

Prompt (SPEC §8)::

    Ada Quinn: 7304918275          <- the book: one line per person, unique names and numbers, first digit 6-9
    Bo Vance: 6120037461
    ...
    <blank line>
    Cy Ward: 9817726354            <- two few-shot lines repeated from the book
    Di Young: 8003519246
    Ada Quinn:                     <- the query; the answer is " 7304918275"

Lengths are prompt lengths in tokens of the model's tokenizer. Context lengths are split into ``num_buckets``
buckets between ``min_len`` and ``max_len`` (log-spaced by default); each batch of ``batch_size`` samples gets
one target length inside its bucket, and every prompt of the batch has exactly that many tokens: the book is
grown line by line up to the target and the remaining gap (shorter than one line) is filled with EOS tokens
*before* the text (a document boundary, as between packed training documents). Prompts of one batch therefore
have equal length, which our padding-free model needs for batched decoding.

Scoring: greedy decoding of up to ``answer_tokens`` tokens; a sample is correct when the generated text starts
(after spaces) with exactly the 10 answer digits. Everything is a function of ``seed`` (and the batch size,
which sets how many samples share one length).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from lit_gpt.eval.common import agg_pyplot, save_figure

__all__ = ["FIRST_NAMES", "LAST_NAMES", "PhonebookSample", "bucket_edges", "make_sample", "make_samples",
           "score_answer", "run_phonebook", "plot_phonebook"]

FIRST_NAMES = (
    "James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard Susan Joseph "
    "Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Betty Mark Margaret Donald Sandra Steven "
    "Ashley Paul Kimberly Andrew Emily Joshua Donna Kenneth Michelle Kevin Dorothy Brian Carol George Amanda "
    "Timothy Melissa Ronald Deborah Edward Stephanie Jason Rebecca Jeffrey Sharon Ryan Laura Jacob Cynthia Gary "
    "Kathleen Nicholas Amy Eric Angela Jonathan Shirley Stephen Anna Larry Brenda Justin Pamela Scott Emma "
    "Brandon Nicole Benjamin Helen Samuel Samantha Gregory Katherine Alexander Christine Frank Debra Patrick "
    "Rachel Raymond Carolyn Jack Janet Dennis Catherine Jerry Maria Tyler Heather Aaron Diane Jose Ruth Adam Julie "
    "Nathan Olivia Henry Joyce Douglas Virginia Zachary Victoria Peter Kelly Kyle Lauren Ethan Christina Walter "
    "Joan Noah Evelyn Jeremy Judith Christian Megan Keith Andrea Roger Cheryl Terry Hannah Gerald Jacqueline "
    "Harold Martha Sean Gloria Austin Teresa Carl Ann Arthur Sara Lawrence Madison Dylan Frances Jesse Kathryn "
    "Jordan Janice Bryan Jean Billy Abigail Joe Alice Bruce Julia Gabriel Judy Logan Sophia Albert Grace Willie "
    "Denise Alan Amber Juan Doris Wayne Marilyn Elijah Danielle Randy Beverly Roy Isabella Vincent Theresa Ralph "
    "Diana Eugene Natalie Russell Brittany Bobby Charlotte Mason Marie Philip Kayla Louis Alexis"
).split()
LAST_NAMES = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
    "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis "
    "Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera "
    "Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart "
    "Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim "
    "Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo "
    "Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell Coleman Butler "
    "Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson Alexander Hamilton Graham Reynolds "
    "Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar Stevens Murray Ford "
    "Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman "
    "Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon "
    "Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice "
    "Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant Dunn Kelley Spencer "
    "Hawkins Arnold Pierce Vazquez Hansen Peters Santos Hart Bradley Knight Elliott Cunningham Duncan Armstrong"
).split()
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "x")


def _syllable_name(rng: random.Random) -> str:
    """A pronounceable made-up name, for books larger than the built-in lists can fill."""
    n = rng.choice((2, 2, 3))
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n)).capitalize()


def _number(rng: random.Random) -> str:
    return str(rng.randint(6, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(9))


@dataclass
class PhonebookSample:
    index: int
    bucket: int
    target_len: int  # tokens of the prompt (EOS fill included)
    n_entries: int
    query_position: int  # index of the queried line in the book
    name: str
    answer: str  # the 10 digits
    text: str  # the prompt text (without the EOS fill)
    n_fill: int  # EOS tokens placed before the text
    prompt_ids: list[int] = field(repr=False, default_factory=list)

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("prompt_ids")
        d.pop("text")
        return d


def bucket_edges(min_len: int, max_len: int, num_buckets: int, spacing: str = "log") -> list[int]:
    if min_len < 16 or max_len < min_len:
        raise ValueError(f"need 16 <= min_eval_len <= max_eval_len, got {min_len}, {max_len}")
    if num_buckets < 1:
        raise ValueError("num_buckets must be >= 1")
    if spacing == "log":
        edges = [round(min_len * (max_len / min_len) ** (k / num_buckets)) for k in range(num_buckets + 1)]
    elif spacing == "linear":
        edges = [round(min_len + (max_len - min_len) * k / num_buckets) for k in range(num_buckets + 1)]
    else:
        raise ValueError(f"bucket spacing must be log or linear, got {spacing!r}")
    edges[0], edges[-1] = min_len, max_len
    return edges


class _Book:
    """Draws unique names and numbers for one sample."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.names: set[str] = set()
        self.numbers: set[str] = set()

    def entry(self) -> tuple[str, str]:
        rng = self.rng
        for attempt in range(1000):
            if attempt < 50:
                name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
            else:
                name = f"{_syllable_name(rng)} {_syllable_name(rng)}"
            if name not in self.names:
                break
        else:
            raise RuntimeError("could not draw a unique name")
        number = _number(rng)
        while number in self.numbers:
            number = _number(rng)
        self.names.add(name)
        self.numbers.add(number)
        return name, number


def _render(lines: list[tuple[str, str]], shots: list[int], query: int) -> str:
    book = "\n".join(f"{n}: {d}" for n, d in lines)
    fewshot = "\n".join(f"{lines[i][0]}: {lines[i][1]}" for i in shots)
    return f"{book}\n\n{fewshot}\n{lines[query][0]}:"


def make_sample(tokenizer: Any, target_len: int, seed: int, index: int, bucket: int = 0) -> PhonebookSample:
    """One prompt of exactly ``target_len`` tokens (EOS fill before the text closes the last gap)."""
    rng = random.Random(f"phonebook/{seed}/{index}")
    book = _Book(rng)
    lines = [book.entry() for _ in range(3)]
    line_tokens = max(1, len(tokenizer.encode(f"{lines[0][0]}: {lines[0][1]}\n")))
    # grow an estimate in one go, then correct against the exact token count
    overhead = 3 * line_tokens + 4
    n_est = max(3, (target_len - overhead) // line_tokens)
    lines += [book.entry() for _ in range(n_est - len(lines))]

    def layout(n: int) -> tuple[str, list[int], list[int], int]:
        sub = lines[:n]
        picks = random.Random(f"phonebook/{seed}/{index}/{n}").sample(range(n), 3)
        query, shots = picks[0], sorted(picks[1:])
        text = _render(sub, shots, query)
        return text, tokenizer.encode(text), shots, query

    def ensure(n: int) -> None:
        while len(lines) < n:
            lines.append(book.entry())

    n = len(lines)
    text, ids, shots, query = layout(n)
    for _ in range(64):  # coarse: jump by the measured tokens per line until within two lines of the target
        per_line = max(1.0, len(ids) / n)
        gap = target_len - len(ids)
        if gap < 0:
            step = min(-1, math.floor(gap / per_line))
        elif gap >= 2 * per_line:
            step = max(1, int(gap / per_line) - 1)
        else:
            break
        if n <= 3 and step < 0:
            break
        n = max(3, n + step)
        ensure(n)
        text, ids, shots, query = layout(n)
    while len(ids) > target_len:  # fine: one line at a time
        if n <= 3:
            raise ValueError(f"target length {target_len} is too short for a phonebook prompt ({len(ids)} tokens "
                             "with three entries)")
        n -= 1
        text, ids, shots, query = layout(n)
    while True:
        ensure(n + 1)
        text2, ids2, shots2, query2 = layout(n + 1)
        if len(ids2) > target_len:
            break
        n, text, ids, shots, query = n + 1, text2, ids2, shots2, query2
    fill = target_len - len(ids)
    name, answer = lines[query]
    return PhonebookSample(index=index, bucket=bucket, target_len=target_len, n_entries=n, query_position=query,
                           name=name, answer=answer, text=text, n_fill=fill,
                           prompt_ids=[tokenizer.eos_id] * fill + ids)


def make_samples(tokenizer: Any, *, min_len: int, max_len: int, num_samples: int, num_buckets: int,
                 batch_size: int = 1, seed: int = 0, spacing: str = "log") -> list[PhonebookSample]:
    """``num_samples`` split over the buckets as evenly as possible; one target length per batch."""
    edges = bucket_edges(min_len, max_len, num_buckets, spacing)
    per_bucket = [num_samples // num_buckets + (1 if b < num_samples % num_buckets else 0) for b in range(num_buckets)]
    samples: list[PhonebookSample] = []
    for b in range(num_buckets):
        lo, hi = edges[b], edges[b + 1]
        for start in range(0, per_bucket[b], max(1, batch_size)):
            rng = random.Random(f"phonebook/{seed}/len/{b}/{start}")
            target = rng.randint(lo, hi - 1 if b < num_buckets - 1 else hi) if hi > lo else lo
            for _ in range(min(batch_size, per_bucket[b] - start)):
                samples.append(make_sample(tokenizer, target, seed, len(samples), b))
    return samples


_ANSWER = re.compile(r"\s*(\d+)")


def score_answer(generated: str, answer: str) -> bool:
    """Exact match: the generation starts (after spaces) with the 10 digits and no further digit."""
    m = _ANSWER.match(generated)
    return bool(m) and m.group(1)[:len(answer)] == answer and (len(m.group(1)) == len(answer))


def run_phonebook(model: Any, tokenizer: Any, *, min_len: int, max_len: int, num_samples: int, num_buckets: int,
                  batch_size: int = 1, seed: int = 0, spacing: str = "log", answer_tokens: Optional[int] = None,
                  log: Any = print) -> dict[str, Any]:
    from lit_gpt.eval.scoring import generate

    t0 = time.time()
    samples = make_samples(tokenizer, min_len=min_len, max_len=max_len, num_samples=num_samples,
                           num_buckets=num_buckets, batch_size=batch_size, seed=seed, spacing=spacing)
    if answer_tokens is None:
        answer_tokens = len(tokenizer.encode(" 9876543210")) + 2
    log(f"phonebook: {len(samples)} prompts built in {time.time() - t0:.1f}s; decoding {answer_tokens} tokens each")

    def stop(i: int, gen: list[int]) -> bool:
        text = tokenizer.decode(gen)
        return "\n" in text or len(re.sub(r"\D", "", text)) > 10

    records = []
    done = 0
    for start in range(0, len(samples), max(1, batch_size)):
        batch = samples[start:start + max(1, batch_size)]
        outs = generate(model, [s.prompt_ids for s in batch], max_new_tokens=answer_tokens, batch_size=len(batch),
                        eos_id=tokenizer.eos_id, stop=lambda i, g: stop(i, g))
        for s, gen in zip(batch, outs):
            text = tokenizer.decode(gen)
            rec = s.record()
            rec.update(prompt_len=len(s.prompt_ids), generated=text, correct=score_answer(text, s.answer))
            records.append(rec)
        done += len(batch)
        if log is not None and (done == len(samples) or start // max(1, batch_size) % 10 == 0):
            acc = sum(r["correct"] for r in records) / len(records)
            log(f"phonebook: {done}/{len(samples)} done, running accuracy {acc:.3f}")
    edges = bucket_edges(min_len, max_len, num_buckets, spacing)
    buckets = []
    for b in range(num_buckets):
        rs = [r for r in records if r["bucket"] == b]
        buckets.append({"bucket": b, "lo": edges[b], "hi": edges[b + 1], "n": len(rs),
                        "correct": sum(r["correct"] for r in rs),
                        "accuracy": (sum(r["correct"] for r in rs) / len(rs)) if rs else None,
                        "mean_len": (sum(r["prompt_len"] for r in rs) / len(rs)) if rs else None})
    return {"kind": "phonebook", "seed": seed, "num_samples": len(records), "min_eval_len": min_len,
            "max_eval_len": max_len, "num_buckets": num_buckets, "bucket_spacing": spacing,
            "eval_batch_size": batch_size, "answer_tokens": answer_tokens,
            "accuracy": sum(r["correct"] for r in records) / max(1, len(records)), "buckets": buckets,
            "elapsed_s": round(time.time() - t0, 2), "samples": records}


def plot_phonebook(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    plt = agg_pyplot()
    bs = [b for b in result["buckets"] if b["n"]]
    xs = [b["mean_len"] for b in bs]
    ys = [b["accuracy"] for b in bs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o")
    if result.get("bucket_spacing") == "log" and xs and max(xs) / max(1, min(xs)) > 4:
        ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title(title or "Phonebook retrieval")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
