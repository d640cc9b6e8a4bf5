"""SynGen: linguistic binding by attention-map alignment.

Rassin et al., "Linguistic Binding in Diffusion Models: Enhancing Attribute Correspondence
through Attention Map Alignment", NeurIPS 2023, arXiv 2306.08877.

Every modifier set ``S`` (a noun ``n`` and its modifiers ``m``, from the prompt's dependency
parse) pulls the attention map of each modifier towards its noun's map (positive term) and pushes
both away from the maps of the prompt's other word pieces ``U(S)`` (negative term). Maps are the
aggregated cross-attention probabilities used as they are (no start-token removal, no softmax over
tokens, no smoothing, as in the official code); each is turned into a distribution over pixels. With
``dist`` the symmetric KL divergence (paper and official ``compute_loss.py``)::

    pos(m, n) = dist(A_m, A_n)
    neg(m, n) = 1/2 [ -mean_{u in U} dist(A_n, A_u) - mean_{u in U} dist(A_m, A_u) ]
    L         = sum_S sum_m [pos(m, n) + neg(m, n)]  +  sum_{singletons n} -mean_u dist(A_n, A_u)

which equals the paper's form ``sum_i sum_(m,n) dist(A_m, A_n) - sum_i 1/|U(S_i)| sum_(m,n)
sum_u 1/2 (dist(A_m, A_u) + dist(A_u, A_n))``. A member made of several BPE pieces uses the
largest distance over its pieces (official code).

The entropy-regularised variant (a blog post building on SynGen by Jiang, Li and Zhu, December
2024) adds, per pair, ``lambda_entropy * (H(A_m) + H(A_n))`` and
``s * gamma_entropy / 2 * mean_u H(A_u)``. Written literally (``s = +1``) minimising it makes the
unrelated maps *more concentrated*, the opposite of the blog's prose;
``unrelated_entropy="diffuse"`` (default, ``s = -1``) follows the prose, ``"literal"`` the formula.
``lambda_entropy = gamma_entropy = 0`` is plain SynGen.

Deliberate differences from the official code: the loss is computed per image of the batch (the
official loop keeps only the last image's update); maps that contain exact zeros give a large
finite divergence instead of ``inf`` (see :func:`symmetric_kl`); the index sets are used as given
(parsing, alignment and merging of overlapping sets belong to the prompt analysis), except that
an entity singleton sharing a column with a modifier set is dropped, as the official
``unify_lists`` merges it into that set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attention.shapes import check_ndim
from ..errors import StormError
from ..guidance.terms import GuidanceContext, GuidanceTerm, StepSize, StepWindow, TermResult
from ..prompt.parsed import BindingSet, PromptAnalysis
from ..tokens.layout import Subject, TokenLayout
from ..tokens.subjects import WORD

#: SynGen defaults (official pipeline): one update at steps 0..24 of 50, constant step size 20.
DEFAULT_WINDOW = StepWindow(0.0, 0.5)
DEFAULT_STEP_SIZE = StepSize(20.0, 1.0)
#: The official ``include_entities`` option (nouns also pushed away from unrelated words): off in the paper's runs.
DEFAULT_INCLUDE_ENTITIES = False
#: Signs of the unrelated-entropy term: "diffuse" follows the entropy blog post's prose, "literal" its formula.
UNRELATED_ENTROPY_MODES = ("diffuse", "literal")


# ---------------------------------------------------------------------------- distributions
def _loss_dtype(maps: torch.Tensor) -> torch.Tensor:
    return maps if maps.dtype in (torch.float32, torch.float64) else maps.float()


def pixel_distribution(maps: torch.Tensor) -> torch.Tensor:
    """Turn maps into distributions over their pixels (divide by the sum, as ``Categorical``).

    Parameters
    ----------
    maps : Tensor, shape (..., h, w)
        Non-negative maps. Not modified.

    Returns
    -------
    Tensor, shape (..., h * w)
        Sums to 1 along the last dimension; a map summing to 0 stays 0 (its sum is clamped to
        the smallest normal number instead of dividing by zero). fp16/bf16 maps are promoted to
        fp32 (the log guard below would be far too coarse at half precision).
    """
    flat = _loss_dtype(maps).flatten(-2)
    return flat / flat.sum(-1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)


def _log(p: torch.Tensor) -> torch.Tensor:
    # torch.distributions.Categorical's guard: log of p clamped to [eps, 1 - eps]. Keeps every
    # value and gradient finite; differs from the exact log only for p < eps (~1e-7 in fp32).
    eps = torch.finfo(p.dtype).eps
    return p.clamp(eps, 1.0 - eps).log()


def _sym_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    # 1/2 [KL(p||q) + KL(q||p)] = 1/2 sum (p - q)(log p - log q); exactly 0 for p == q.
    return 0.5 * ((p - q) * (_log(p) - _log(q))).sum(-1)


def symmetric_kl(map_p: torch.Tensor, map_q: torch.Tensor) -> torch.Tensor:
    """``dist(P, Q) = 1/2 (KL(P||Q) + KL(Q||P))`` between maps as pixel distributions.

    SynGen's distance (Rassin et al. 2023; official ``_symmetric_kl``). Each map is normalised
    by its sum (:func:`pixel_distribution`); logs are taken of probabilities clamped to
    ``[eps, 1 - eps]`` as ``torch.distributions.Categorical`` does in the official code, so the
    values agree with it, except that a map with exact zeros (underflow) where the other has mass
    gives a large finite value (and a finite gradient) where the official code returns ``inf``.

    Parameters
    ----------
    map_p, map_q : Tensor, shape (..., h, w)
        Non-negative maps, broadcastable against each other. Not modified.

    Returns
    -------
    Tensor, shape (...)
        Symmetric (``dist(P, Q) == dist(Q, P)``), ``>= 0``, exactly 0 when ``P == Q``.
    """
    return _sym_kl(pixel_distribution(map_p), pixel_distribution(map_q))


def entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``H(A) = -sum_i p_i log p_i`` of maps as pixel distributions (entropy variant).

    Parameters
    ----------
    maps : Tensor, shape (..., h, w)

    Returns
    -------
    Tensor, shape (...)
        Between 0 (one pixel) and ``ln(h * w)`` (uniform map).
    """
    return _entropy(pixel_distribution(maps))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * _log(p)).sum(-1)


# ---------------------------------------------------------------------------- index sets
@dataclass(frozen=True)
class SynGenSet:
    """One index set of the loss: columns of the noun, of each modifier, and the unrelated set.

    Attributes
    ----------
    name : str
        For the log ("red crown").
    noun : tuple of int
        Columns (word pieces) of the noun.
    modifiers : tuple of tuple of int
        Columns of each modifier; empty for an entity singleton (negative term only).
    unrelated : tuple of int
        ``U(S)``: every word-piece column of the prompt not in the set (start, end and padding
        columns excluded); may be empty.
    """

    name: str
    noun: tuple[int, ...]
    modifiers: tuple[tuple[int, ...], ...]
    unrelated: tuple[int, ...]

    @property
    def columns(self) -> tuple[int, ...]:
        return tuple(c for cols in (*self.modifiers, self.noun) for c in cols)


def unrelated_columns(layout: TokenLayout, columns: tuple[int, ...]) -> tuple[int, ...]:
    """``U(S)``: the word-piece columns of ``layout`` that are not in ``columns`` (the official code's
    candidates: every word piece between the start and end tokens, stop words included)."""
    inside = set(columns)
    return tuple(c for c in layout.word_positions if c not in inside)


def _check_word(layout: TokenLayout, word: Subject) -> None:
    if not word.positions:
        raise StormError(f"SynGen: the word {word.name!r} has no token columns", input_name="bindings")
    for c in word.positions:
        if not 0 <= c < layout.length:
            problem = f"is outside the prompt's {layout.length} columns"
        elif layout.pieces[c].kind != WORD:
            problem = f"is the {layout.pieces[c].kind} token, not a word of the prompt"
        else:
            continue
        raise StormError(f"SynGen: column {c} of {word.name!r} {problem}; the bindings were made for another "
                         f"prompt.\nPrompt tokens: {layout.describe()}", input_name="bindings")


def syngen_sets(layout: TokenLayout, bindings: tuple[BindingSet, ...],
                entities: tuple[Subject, ...] = ()) -> tuple[SynGenSet, ...]:
    """Index sets of the loss: one per binding (noun last), then entity singletons.

    An entity whose columns meet a binding's (or an earlier entity's) columns is dropped, as the
    official ``unify_lists`` merges it into that set. Raises :class:`StormError` for columns that
    are not word pieces of ``layout`` or a word used twice within one set.
    """
    sets: list[SynGenSet] = []
    used: set[int] = set()
    for b in bindings:
        for word in (*b.modifiers, b.noun):
            _check_word(layout, word)
        if len(set(b.columns)) != len(b.columns):
            raise StormError(f"SynGen: the binding of {b.noun.name!r} uses a token column twice",
                             input_name="bindings")
        name = " ".join(w.name for w in (*b.modifiers, b.noun))
        sets.append(SynGenSet(name, b.noun.positions, tuple(m.positions for m in b.modifiers),
                              unrelated_columns(layout, b.columns)))
        used.update(b.columns)
    for e in entities:
        _check_word(layout, e)
        if used.intersection(e.positions):
            continue
        sets.append(SynGenSet(e.name, e.positions, (), unrelated_columns(layout, e.positions)))
        used.update(e.positions)
    return tuple(sets)


# ---------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class SynGenConfig:
    """SynGen loss options (plain SynGen by default).

    Attributes
    ----------
    lambda_entropy : float
        Weight of ``H(A_m) + H(A_n)`` per pair (the entropy blog post); 0 disables it. No
        published value; H is ~4-5.5 on 16x16 maps against KLs of ~0.05-0.5, so start at 1e-3-1e-2.
    gamma_entropy : float
        Weight of the unrelated maps' entropy (same scale); 0 disables it.
    unrelated_entropy : str
        ``"diffuse"`` (default): minimising raises ``H(A_u)`` (the blog's prose);
        ``"literal"``: the blog's formula as written, which lowers it.

    Notes
    -----
    The blog does not say how multi-piece words enter ``H``; we use the largest entropy over a
    word's pieces (the most diffuse piece), mirroring the max over pieces of the distances.
    Entity singletons get no entropy terms (the blog's sums run over modifier-noun pairs only).
    """

    lambda_entropy: float = 0.0
    gamma_entropy: float = 0.0
    unrelated_entropy: str = "diffuse"

    def __post_init__(self) -> None:
        for name in ("lambda_entropy", "gamma_entropy"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise StormError(f"{name} must be a finite number >= 0, got {value}", input_name=name)
        if self.unrelated_entropy not in UNRELATED_ENTROPY_MODES:
            raise StormError(f"unknown unrelated_entropy {self.unrelated_entropy!r}; use one of "
                             f"{UNRELATED_ENTROPY_MODES}", input_name="unrelated_entropy")


@dataclass
class SynGenLoss:
    """The loss and its parts, per image (pairs and singletons in the order of the sets).

    Attributes
    ----------
    loss : Tensor, shape (B,)
    positive, negative : Tensor, shape (B, P)
        ``pos(m, n)`` and ``neg(m, n)`` of every (modifier, noun) pair.
    entropy : Tensor, shape (B, P)
        The entropy terms of every pair (zeros for plain SynGen).
    kl : Tensor, shape (B, P)
        Symmetric KL between the modifier's and the noun's word maps (pieces summed): a
        diagnostic that guidance lowers, equal to ``positive`` for single-piece words.
    entity : Tensor, shape (B, E)
        ``-mean_u dist(A_n, A_u)`` of every singleton.
    """

    loss: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor
    entity: torch.Tensor


def _mean_unrelated(member: torch.Tensor, unrelated: torch.Tensor) -> torch.Tensor:
    """``mean_u max_pieces dist(piece, u)``: member (B, a, N), unrelated (B, U, N) -> (B,)."""
    if unrelated.shape[1] == 0:
        return member.new_zeros(member.shape[0])
    return _sym_kl(member[:, :, None], unrelated[:, None]).amax(1).mean(1)


def syngen_loss(maps: torch.Tensor, sets: tuple[SynGenSet, ...],
                config: SynGenConfig = SynGenConfig()) -> SynGenLoss:
    """SynGen's loss (Rassin et al., NeurIPS 2023) with the optional entropy terms of the variant.

    Parameters
    ----------
    maps : Tensor, shape (B, T, h, w)
        Aggregated cross-attention probabilities (no other processing). Not modified; fp16/bf16
        maps are promoted to fp32.
    sets : tuple of SynGenSet
        From :func:`syngen_sets`.
    config : SynGenConfig

    Returns
    -------
    SynGenLoss
        ``loss`` of shape (B,), differentiable w.r.t. ``maps``.
    """
    check_ndim("attention maps", maps, 4, "(B, T, h, w)")
    maps = _loss_dtype(maps)
    batch = maps.shape[0]
    sign = 1.0 if config.unrelated_entropy == "literal" else -1.0
    use_entropy = config.lambda_entropy > 0 or config.gamma_entropy > 0
    total = maps.new_zeros(batch)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("positive", "negative", "entropy", "kl", "entity")}

    def dist(cols: tuple[int, ...]) -> torch.Tensor:  # shape: (B, len(cols), N)
        return pixel_distribution(maps[:, list(cols)])

    def word(cols: tuple[int, ...]) -> torch.Tensor:  # pieces summed, shape: (B, N)
        return pixel_distribution(maps[:, list(cols)].sum(1))

    for s in sets:
        noun, unrelated = dist(s.noun), dist(s.unrelated)
        noun_out = _mean_unrelated(noun, unrelated)
        if not s.modifiers:
            parts["entity"].append(-noun_out)
            total = total - noun_out
            continue
        if use_entropy:
            noun_h = _entropy(noun).amax(1)
            unrelated_h = _entropy(unrelated).mean(1) if s.unrelated else maps.new_zeros(batch)
        for mod_cols in s.modifiers:
            mod = dist(mod_cols)
            pos = _sym_kl(mod[:, :, None], noun[:, None]).flatten(1).amax(1)
            neg = 0.5 * (-noun_out - _mean_unrelated(mod, unrelated))
            ent = maps.new_zeros(batch)
            if use_entropy:
                ent = (config.lambda_entropy * (_entropy(mod).amax(1) + noun_h)
                       + sign * 0.5 * config.gamma_entropy * unrelated_h)
            total = total + pos + neg + ent
            with torch.no_grad():
                kl = _sym_kl(word(mod_cols), word(s.noun))
            for key, value in (("positive", pos), ("negative", neg), ("entropy", ent), ("kl", kl)):
                parts[key].append(value)
    stacked = {k: torch.stack(v, 1) if v else maps.new_zeros(batch, 0) for k, v in parts.items()}
    return SynGenLoss(total, **stacked)


def nothing_to_bind(notes: tuple[str, ...] | None = None) -> StormError:
    """The error of a SynGen term with no modifier-noun set; with the analysis' ``notes`` when it came from a prompt
    analysis (input ``analysis``), else about the term's ``bindings``."""
    return StormError(
        "SynGen needs at least one modifier-noun set: the prompt analysis found no modifier bound to a noun, so "
        "SynGen has nothing to bind. Write modifiers next "
        "to their nouns ('a red crown and a golden strawberry'), set the bindings in STORM Prompt Analysis "
        "('red -> crown'), or enable include_entities." + (f" Analysis notes: {'; '.join(notes)}" if notes else ""),
        input_name="bindings" if notes is None else "analysis")


class SynGenTerm(GuidanceTerm):
    """SynGen as a guidance term (paper defaults: constant step 20 on steps 0..24 of 50, no refinement).

    Parameters
    ----------
    layout : TokenLayout
        The tokenised prompt (``U(S)`` is taken from its word pieces).
    bindings : tuple of BindingSet
        Modifier sets (noun + modifiers), e.g. from the prompt analysis.
    entities : tuple of Subject, optional
        Nouns added as singletons (official ``include_entities``: negative term only).
    config : SynGenConfig
    window, step_size, weight
        See :class:`~storm_ops.guidance.terms.GuidanceTerm`. SynGen has no refinement thresholds.
    """

    name = "syngen"
    default_window = DEFAULT_WINDOW
    default_step_size = DEFAULT_STEP_SIZE
    refines = False

    def __init__(self, layout: TokenLayout, bindings: tuple[BindingSet, ...],
                 entities: tuple[Subject, ...] = (), config: SynGenConfig = SynGenConfig(), **schedule):
        super().__init__(**schedule)
        self.layout = layout
        self.bindings = tuple(bindings)
        self.entities = tuple(entities)
        self.config = config
        self.sets = syngen_sets(layout, self.bindings, self.entities)
        if not self.sets:
            raise nothing_to_bind()

    @classmethod
    def from_analysis(cls, analysis: PromptAnalysis, include_entities: bool = DEFAULT_INCLUDE_ENTITIES,
                      config: SynGenConfig = SynGenConfig(), **schedule) -> SynGenTerm:
        """The term of a prompt analysis' bindings (and its nouns with ``include_entities``)."""
        if not analysis.bindings and not include_entities:
            raise nothing_to_bind(analysis.notes)
        return cls(analysis.layout, analysis.bindings, analysis.entities if include_entities else (), config,
                   **schedule)

    def token_columns(self) -> tuple[int, ...]:
        return tuple(c for s in self.sets for c in s.columns)

    def compute(self, ctx: GuidanceContext) -> TermResult:
        if ctx.maps.shape[1] != self.layout.length:
            raise StormError(f"the attention maps have {ctx.maps.shape[1]} token columns but the prompt "
                             f"has {self.layout.length}", input_name="positive")
        parts = syngen_loss(ctx.maps, self.sets, self.config)
        metrics = {"positive": parts.positive, "negative": parts.negative, "kl": parts.kl}
        if self.config.lambda_entropy or self.config.gamma_entropy:
            metrics["entropy"] = parts.entropy
        if parts.entity.shape[1]:
            metrics["entity"] = parts.entity
        return TermResult(parts.loss, {k: v.detach() for k, v in metrics.items()})

    def describe(self) -> str:
        sets = "; ".join(s.name for s in self.sets)
        extra = ""
        if self.config.lambda_entropy or self.config.gamma_entropy:
            extra = (f"; entropy lambda {self.config.lambda_entropy:g}, gamma {self.config.gamma_entropy:g} "
                     f"({self.config.unrelated_entropy})")
        return f"{super().describe()}; sets {sets}{extra}"
