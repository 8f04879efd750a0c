"""Why an item scores what it does for a user, in terms a person can read.

- **Words**: integrated gradients (Captum's ``LayerIntegratedGradients``) on the language model's
  input embeddings, through the adapted backbone, pooling and the item tower, to the user's
  score. The baseline is the same text with every word replaced by padding (special tokens
  kept), so the attributions of the words sum to ``score - baseline_score`` (completeness; the
  remainder is reported as ``delta``). Token attributions are summed per word.
- **Past items** (history models): each item of the history the model reads is left out in
  turn; how much the score falls without it is what it contributed.

Attributions explain the text part of the item's score: a trained item's ID embedding (and a
knowledge model's facts) are held fixed.
"""

from __future__ import annotations

import bisect
import html
import re
from dataclasses import asdict, dataclass

import torch


@dataclass
class Explanation:
    """The attributions of one (user, item) score."""

    user: str
    item: str
    score: float
    """The raw score explained (a rating model's, before clipping to the scale)."""
    baseline_score: float
    """The score of the same item with its words replaced by padding."""
    words: list[tuple[str, float]]
    """Every word of the item's text, in order, with its attribution (sums to the score change)."""
    delta: float
    """Completeness check: sum of attributions minus (score - baseline_score); near 0."""
    history: list[tuple[str, float]] | None = None
    """History models: each past item read, with how much the score falls without it."""

    def top_words(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` words that moved the score most (either way), strongest first."""
        return sorted(self.words, key=lambda w: -abs(w[1]))[:k]

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, k: int = 5) -> str:
        """A few lines for a terminal."""
        lines = [
            f"user {self.user}, item {self.item}: score {self.score:.3f} "
            f"(without its words {self.baseline_score:.3f}; completeness delta {self.delta:+.1e})",
            "words that moved the score most:",
        ]
        lines += [f"  {a:+.3f}  {w}" for w, a in self.top_words(k)]
        if self.history:
            lines.append("past items that mattered most (score drop without each):")
            strongest = sorted(self.history, key=lambda h: -abs(h[1]))[:k]
            lines += [f"  {d:+.3f}  {item}" for item, d in strongest]
        return "\n".join(lines)

    def html(self, title: str = "") -> str:
        """A page with the item's words highlighted: green raised the score, red lowered it."""
        scale = max((abs(a) for _, a in self.words), default=0.0) or 1.0
        spans = []
        for word, a in self.words:
            colour = "0,150,0" if a >= 0 else "200,0,0"
            spans.append(
                f'<span title="{a:+.4f}" style="background: rgba({colour},{abs(a) / scale:.2f})">'
                f"{html.escape(word)}</span>"
            )
        heading = html.escape(title or f"item {self.item} for user {self.user}")
        history = ""
        if self.history:
            rows = "".join(
                f"<tr><td>{html.escape(i)}</td><td>{d:+.4f}</td></tr>" for i, d in self.history
            )
            history = f"<h2>Past items (score drop without each)</h2><table>{rows}</table>"
        return (
            f"<!doctype html><meta charset='utf-8'><title>{heading}</title>"
            f"<h1>{heading}</h1><p>score {self.score:.4f}, without its words "
            f"{self.baseline_score:.4f}</p><p style='font-size: 1.4em'>{' '.join(spans)}</p>"
            f"{history}\n"
        )


def word_spans(tokenizer, text: str, max_length: int):
    """Token ids of ``text`` as the model reads it, and each word's (start, end) and token
    positions; a word is what whitespace separates ("Sci-Fi," is one)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("explain needs a fast tokenizer (it maps tokens back to words)")
    encoded = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    spans = [(m.start(), m.end(), []) for m in re.finditer(r"\S+", text)]
    starts = [start for start, _, _ in spans]
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and encoded.token_to_word(position) is not None:
            spans[max(0, bisect.bisect_right(starts, start) - 1)][2].append(position)
    return encoded["input_ids"], [span for span in spans if span[2]]


def text_scorer(engine, user_row: int, item_row: int):
    """``score(input_ids) -> (batch,)``: the user's raw score of the item with each row of
    ``input_ids`` as its text (its ID embedding and facts kept), differentiable."""
    model, head = engine.model, engine.model.head
    device = next(model.parameters()).device
    id_row = item_row if item_row < engine.num_trained_items else -1
    facts = engine.facts_of(torch.tensor([item_row]))
    user = tuple(t.detach() for t in engine.user_vectors_of(torch.tensor([user_row])))

    def score(input_ids: torch.Tensor) -> torch.Tensor:
        n = len(input_ids)
        # one text, unpadded: every position attended (the baseline's padding too, so the
        # path from baseline to text changes only the embeddings)
        text = model.encode(input_ids, torch.ones_like(input_ids))
        index = torch.full((n,), id_row, dtype=torch.long, device=device)
        item_facts = None if facts is None else facts.expand(n, *facts.shape[1:])
        items = head.items(text, index, item_facts)
        return head.score((user[0].expand(n, -1), user[1].expand(n)), items)

    return score


def text_attributions(
    score, token_ids: list[int], special_ids: set[int], pad_id: int, layer, steps
):
    """Integrated gradients of ``score`` (:func:`text_scorer`) per token, with the score, the
    baseline score (words replaced by padding) and the completeness delta."""
    from captum.attr import LayerIntegratedGradients

    device = layer.weight.device
    ids = torch.tensor([token_ids], device=device)
    keep = torch.tensor([[t in special_ids for t in token_ids]], device=device)
    baseline = torch.where(keep, ids, torch.full_like(ids, pad_id))
    attributions, delta = LayerIntegratedGradients(score, layer).attribute(
        ids, baselines=baseline, n_steps=steps, return_convergence_delta=True
    )
    with torch.no_grad():
        full, empty = score(ids)[0].item(), score(baseline)[0].item()
    return attributions.sum(-1)[0].detach().cpu(), full, empty, float(delta[0])


def explain_pair(engine, user_id: str, item_id: str, steps: int = 32) -> Explanation:
    """The :class:`Explanation` of ``user_id``'s score of ``item_id`` (a
    :class:`~peftrec.app.engine.ModelRecommender`)."""
    model = engine.model
    with engine._lock, engine._network_lock:
        user_row = int(engine.user_rows([user_id], "explain")[0])
        item_row = int(engine.item_rows([item_id], "explain")[0])
        text = engine.item_texts[item_row]
        token_ids, spans = word_spans(engine.tokenizer, text, engine.spec.max_length)
        token_attr, score, empty, delta = text_attributions(
            text_scorer(engine, user_row, item_row),
            token_ids,
            set(engine.tokenizer.all_special_ids),
            model.pad_id,
            model.backbone.get_input_embeddings(),
            steps,
        )
        words = [(text[s:e], float(token_attr[p].sum())) for s, e, p in spans]
        history = past_item_effects(engine, user_row, item_row) if engine.traits.history else None
    return Explanation(user_id, item_id, score, empty, words, delta, history)


@torch.no_grad()
def past_item_effects(engine, user_row: int, item_row: int) -> list[tuple[str, float]]:
    """For each item of the history the model reads: the score drop when it is left out."""
    head = engine.model.head
    read = list(engine.history_of(user_row)[-head.history_length :])
    if not read:
        return []
    items = engine.item_vectors_of()
    histories = [read] + [read[:j] + read[j + 1 :] for j in range(len(read))]
    states = head.history_users(items, histories)
    item = (items[0][item_row : item_row + 1], items[1][item_row : item_row + 1])
    scores = head.score((states, states.new_zeros(len(states))), item).cpu()
    return [(engine.item_ids[r], float(scores[0] - scores[j + 1])) for j, r in enumerate(read)]
