"""Token-level scoring and generation with a litscale GPT: what every eval tool is built on.

* :func:`score_continuations` — log p(continuation | context) and whether greedy decoding reproduces it, batched.
  Our model has no padding mask, so batches are **right-padded**: every row's scored tokens come before its
  padding, and a causal model never lets a position see later ones, so padding cannot change a score.
* :func:`generate` — greedy (or sampled) decoding through ``DecodeState``: the prompt is prefilled once and each
  new token costs one one-token forward (no prefix recomputation). Rows of one batch share the prompt length
  (rows are grouped by it), because the decoding state keeps one position for the whole batch.
* :func:`extrapolation_problem` — whether a context length is beyond what the model was trained for.

Only the head rows that are needed are computed (``return_logits=False`` then ``lm_head`` on the few positions
scored), so long contexts never materialize a [T, vocab] logit matrix.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from lit_gpt.config import Config

__all__ = ["score_continuations", "generate", "sliding_window_pairs", "sliding_window_nll", "perplexity",
           "extrapolation_problem", "model_device"]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _head(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits for already-multiplied final hidden states (ModelOutput.hidden), computed in fp32 so that
    log-probabilities and argmax do not suffer from bf16 logits (only a few positions go through here)."""
    head = model.lm_head
    return F.linear(hidden.float(), head.weight.float(), None if head.bias is None else head.bias.float())


@torch.no_grad()
def score_continuations(model: torch.nn.Module, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                        max_length: int, batch_size: int = 1, pad_id: int = 0,
                        progress: Optional[Callable[[int], None]] = None) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), is_greedy)`` for each ``(context_ids, continuation_ids)`` pair.

    ``context + continuation`` longer than ``max_length + 1`` tokens loses tokens on the left (the model sees at
    most ``max_length`` inputs). An empty continuation scores ``(0.0, True)``; an empty context needs a
    continuation of at least two tokens (the first is then only context).
    """
    device = model_device(model)
    items = []
    empty: list[int] = []
    for i, (ctx, cont) in enumerate(requests):
        ctx, cont = list(ctx), list(cont)
        if not cont:  # nothing to score: log 1 = 0, trivially greedy
            empty.append(i)
            continue
        full = (ctx + cont)[-(max_length + 1):]
        if len(full) < 2:
            raise ValueError(f"request {i}: needs at least one context token before the continuation")
        n = min(len(cont), len(full) - 1)
        items.append((i, full, n))
    # longest first: the first batch shows out-of-memory at once, and rows of a batch have similar lengths
    items.sort(key=lambda it: (-len(it[1]), it[0]))
    results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
    for i in empty:
        results[i] = (0.0, True)
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start:start + max(1, batch_size)]
        width = max(len(full) - 1 for _, full, _ in chunk)
        inp = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for r, (_, full, _) in enumerate(chunk):
            inp[r, :len(full) - 1] = torch.tensor(full[:-1], dtype=torch.long)
        hidden = model(inp.to(device), return_logits=False).hidden
        for r, (i, full, n) in enumerate(chunk):
            L = len(full) - 1
            logp = F.log_softmax(_head(model, hidden[r, L - n:L]), dim=-1)
            target = torch.tensor(full[-n:], dtype=torch.long, device=logp.device)
            total = logp.gather(-1, target[:, None]).sum().item()
            greedy = bool((logp.argmax(-1) == target).all().item())
            results[i] = (total, greedy)
        if progress is not None:
            progress(len(chunk))
    return results  # type: ignore[return-value]


def sliding_window_pairs(tokens: Sequence[int], *, window: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) pairs that score every token of ``tokens[1:]`` exactly once.

    Windows of ``window`` inputs start at 0, ``stride``, 2·``stride``, ...; the first window scores every token it
    predicts, each later one only the tokens no earlier window scored, so those see at least ``window - stride``
    tokens of context. ``stride == window`` gives disjoint windows.
    """
    if window < 1 or stride < 1 or stride > window:
        raise ValueError(f"need 1 <= stride <= window, got stride {stride}, window {window}")
    n = len(tokens)
    pairs: list[tuple[list[int], list[int]]] = []
    scored_until = 0  # index of the last target already scored (tokens[0] is never a target)
    begin = 0
    while n >= 2:
        end = min(begin + window, n - 1)  # inputs tokens[begin:end], targets tokens[begin+1 : end+1]
        first_new = max(scored_until + 1, begin + 1)
        if first_new <= end:
            pairs.append((list(tokens[begin:first_new]), list(tokens[first_new:end + 1])))
            scored_until = end
        if end >= n - 1:
            break
        begin += stride
    return pairs


@torch.no_grad()
def sliding_window_nll(model: torch.nn.Module, tokens: Sequence[int], *, window: int, stride: int,
                       batch_size: int = 1) -> tuple[float, int]:
    """``(nll_sum, n_scored)`` over ``tokens[1:]`` with the windows of :func:`sliding_window_pairs`."""
    pairs = sliding_window_pairs(tokens, window=window, stride=stride)
    if not pairs:
        return 0.0, 0
    scores = score_continuations(model, pairs, max_length=window, batch_size=batch_size)
    return -sum(s for s, _ in scores), sum(len(c) for _, c in pairs)


def _sample(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float],
            generator: Optional[torch.Generator]) -> torch.Tensor:
    """logits [B, V] fp32 -> next ids [B]; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             batch_size: int = 1, eos_id: Optional[int] = None,
             stop: Optional[Callable[[int, list[int]], bool]] = None, temperature: float = 0.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
             progress: Optional[Callable[[int], None]] = None) -> list[list[int]]:
    """New token ids for each prompt (prompt not included), decoded incrementally with ``DecodeState``.

    A row stops after ``eos_id`` (kept in the output), when ``stop(prompt_index, generated_ids)`` says so, or after
    ``max_new_tokens``. Prompts are grouped by length; a group is processed in batches of ``batch_size``.
    """
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out: list[list[int]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: give at least one token (e.g. EOS)")
        groups[len(p)].append(i)
    for length in sorted(groups, reverse=True):
        idxs = groups[length]
        for s in range(0, len(idxs), max(1, batch_size)):
            rows = idxs[s:s + max(1, batch_size)]
            if max_new_tokens <= 0:
                continue
            state = model.init_state(len(rows))
            x = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)
            hidden = model(x, state=state, return_logits=False).hidden[:, -1]
            done = [False] * len(rows)
            for _step in range(max_new_tokens):
                nxt = _sample(_head(model, hidden), temperature, top_k, top_p, generator)
                ids = nxt.tolist()
                for r, i in enumerate(rows):
                    if done[r]:
                        continue
                    out[i].append(int(ids[r]))
                    if (eos_id is not None and ids[r] == eos_id) or (stop is not None and stop(i, out[i])):
                        done[r] = True
                if all(done) or _step == max_new_tokens - 1:
                    break
                hidden = model(nxt.view(-1, 1), state=state, return_logits=False).hidden[:, -1]
            if progress is not None:
                progress(len(rows))
    return out


def extrapolation_problem(config: Config, length: int) -> Optional[str]:
    """Why ``length`` tokens of context exceed what the model was trained for, or None when it is fine.

    Only RoPE attention whose span can exceed the training length is a problem (positions the model never saw,
    RoPE base 10,000). Sliding-window layers with window <= training length see only trained distances; NoPE
    and SSM layers have no positions; a raised RoPE base (``rbase``) is trained for extension.
    """
    trained = config.block_size
    if length <= trained or not config.rope:
        return None
    if config.rope_base > 10000:
        return None
    spans = [layer.window for layer in config.layer_plan()
             if layer.rope and layer.mixer in ("attention", "cross_attention")]
    if all(w is not None and w <= trained for w in spans):
        return None
    return (f"context {length} exceeds the training length {trained} of {config.name}, whose RoPE attention "
            f"(base {config.rope_base}) never saw such distances: results would measure extrapolation failure. "
            "Pass --allow_extrapolation (allow_extrapolation=True) to run anyway")


def perplexity(nll_sum: float, n: int) -> float:
    return math.exp(nll_sum / n) if n else float("nan")
