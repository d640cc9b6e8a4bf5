"""Interpolated attention of AID / PAID on projected ``q, k, v``.

Implements the inner and outer interpolated attention and their fusion with self-attention
from He et al., "AID: Attention Interpolation of Text-to-Image Diffusion" (PAID), NeurIPS 2024,
arXiv 2403.17924. Schedules, warm-up and noise/condition interpolation are in
:mod:`storm_ops.aid.schedule`.

Layout is ComfyUI's attention replace-patch contract (a replace patch gets the projected
``q, k, v`` of a layer and returns the output before ``to_out``): ``q`` is
``(B, Nq, Hd * d)``, ``k, v`` are ``(B, Nk, Hd * d)``, the head count is an argument and the
result is the pre-``to_out`` output ``(B, Nq, Hd * d)``. ``B`` counts the frames of the call;
endpoint keys/values may have batch 1 and are then shared by every frame. With ``A`` and ``B``
the endpoints and ``t`` a frame's coefficient:

* inner: ``Attn(Q_t, (1-t) K_A + t K_B, (1-t) V_A + t V_B)``
* outer: ``(1-t) Attn(Q_t, K_A, V_A) + t Attn(Q_t, K_B, V_B)``
* fused (the AID default, "fusion with self-attention"): the frame's own keys/values are
  prepended on the token axis in every branch, ``Attn(Q_t, [K_t; K_A], [V_t; V_A])``; inner
  uses ``[K_t; K_hat]``. For self-attention ``K_t`` comes from the frame's hidden states, for
  cross-attention from the frame's own condition (AID: the lerp of the endpoint conditions,
  PAID: the guide prompt).

At ``t = 0`` (``1``) every form reduces to attention over A's (B's) key set; with fusion and a
frame that *is* the endpoint the key set is duplicated, which leaves softmax attention unchanged,
so endpoint frames equal plain generation.

Conditions of different token lengths (``77 * k``: long prompts, mixed encoders) are tiled to
their least common multiple before they are combined, exactly as ComfyUI tiles the conditions
it batches together (when a cond and an uncond differ in length, ``comfy/conds.py`` repeats both
to the least common multiple). Repeating a whole key/value set does not change softmax attention,
so this is invisible at the endpoints and makes the result independent of whether the host
batched the conditions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import ShapeError, StormError

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``attn_fn(q, k, v, heads) -> out`` in the layout above (ComfyUI's ``optimized_attention``)."""

INTERPOLATION_MODES = ("inner", "outer")
#: The AID default: outer interpolation fused with the frame's own keys/values (official "fused outer").
DEFAULT_MODE = "outer"
DEFAULT_FUSED = True

MAX_TOKEN_REPEAT = 16
"""Largest ``lcm / shortest length`` accepted when tiling key sets to a common length."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head attention ``softmax(q k^T / sqrt(d)) v`` per head, computed in float32.

    Parameters
    ----------
    q : Tensor, shape (B, Nq, Hd * d)
        Projected queries.
    k : Tensor, shape (B or 1, Nk, Hd * d)
        Projected keys; batch 1 is shared by all queries' batch items.
    v : Tensor, shape (B or 1, Nk, Hd * dv)
        Projected values.
    heads : int
        Number of heads ``Hd``.

    Returns
    -------
    Tensor, shape (B, Nq, Hd * dv), dtype and device of ``q``.
    """
    _check_qkv(q, k, v, heads, "k", "v")
    return _attend(q, k, v, heads, None).to(q.dtype)


def interpolated_attention(
    q: torch.Tensor,
    k_a: torch.Tensor,
    v_a: torch.Tensor,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    t: float | Sequence[float] | torch.Tensor,
    heads: int,
    *,
    mode: str = "outer",
    k_self: torch.Tensor | None = None,
    v_self: torch.Tensor | None = None,
    attn_fn: AttentionFn | None = None,
    max_token_repeat: int = MAX_TOKEN_REPEAT,
) -> torch.Tensor:
    """Interpolated attention of AID / PAID (He et al., NeurIPS 2024, arXiv 2403.17924).

    Parameters
    ----------
    q : Tensor, shape (B, Nq, Hd * d)
        Queries of the ``B`` frames (from each frame's own hidden states).
    k_a, v_a : Tensor, shape (B or 1, Na, Hd * d)
        Keys/values of endpoint A (self-attention: A's hidden states; cross-attention: A's
        condition). Batch 1 is shared by all frames.
    k_b, v_b : Tensor, shape (B or 1, Nb, Hd * d)
        Keys/values of endpoint B.
    t : float, sequence or Tensor, shape () or (B,)
        Interpolation coefficient in ``[0, 1]``, one per frame or one for all.
    heads : int
        Number of heads ``Hd``.
    mode : {"outer", "inner"}
        ``"outer"`` mixes the two attention outputs, ``"inner"`` attends to the mixed keys/values
        (then ``Na`` and ``Nb`` are tiled to a common length, see the module docstring).
    k_self, v_self : Tensor, shape (B, Ns, Hd * d), optional
        The frames' own keys/values. Given: fused attention (the AID default), prepended on the
        token axis in every branch. Pass both or neither.
    attn_fn : callable, optional
        ``attn_fn(q, k, v, heads)`` replacing the float32 kernel (e.g. the host's
        ``optimized_attention``). It receives tensors in ``q``'s dtype with batch ``B``.
    max_token_repeat : int
        Refuse key sets whose common (lcm) length exceeds this many times the shortest one.

    Returns
    -------
    Tensor, shape (B, Nq, Hd * dv), dtype and device of ``q``.
    Mixing is done in float32.
    """
    if mode not in INTERPOLATION_MODES:
        raise StormError(f"unknown interpolation mode {mode!r}; use one of {INTERPOLATION_MODES}",
                         input_name="mode")
    if (k_self is None) != (v_self is None):
        raise StormError("fused attention needs both the frames' own keys and values (k_self and v_self)",
                         input_name="k_self" if k_self is None else "v_self")
    _check_qkv(q, k_a, v_a, heads, "k_a", "v_a")
    _check_qkv(q, k_b, v_b, heads, "k_b", "v_b")
    if k_self is not None and v_self is not None:
        _check_qkv(q, k_self, v_self, heads, "k_self", "v_self")
        if k_self.shape[0] != q.shape[0]:
            raise ShapeError(f"k_self has batch {k_self.shape[0]}, expected one row per frame ({q.shape[0]})",
                             input_name="k_self")
    if max_token_repeat < 1:
        raise StormError(f"max_token_repeat must be at least 1, got {max_token_repeat}",
                         input_name="max_token_repeat")
    coef = as_coefficients(t, q.shape[0], q.device)  # shape: (B,)

    out = _interpolate(q, k_a, v_a, k_b, v_b, coef, heads, mode, k_self, v_self, attn_fn, max_token_repeat)
    return out.to(q.dtype)


def as_coefficients(t: float | Sequence[float] | torch.Tensor, batch: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Validate interpolation coefficients and broadcast them to one per frame.

    Parameters
    ----------
    t : float, sequence or Tensor, shape (), (1,) or (batch,)
        Values in ``[0, 1]``. They are checked on the CPU: a CUDA tensor costs a device sync,
        so attention patches should keep their coefficients on the CPU.
    batch : int
        Number of frames.
    device : torch.device, optional
        Device of the result.

    Returns
    -------
    Tensor, shape (batch,), float32.
    """
    coef = torch.as_tensor(t, dtype=torch.float32) if not isinstance(t, torch.Tensor) else t.float()
    if coef.dim() > 1 or (coef.dim() == 1 and coef.shape[0] not in (1, batch)):
        raise ShapeError(f"t must be a number or have one value per frame ({batch}), got shape "
                         f"{tuple(coef.shape)}", input_name="t")
    values = coef.detach().cpu()
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()) or bool((values > 1).any()):
        raise StormError(f"interpolation coefficients must lie in [0, 1], got {values.tolist()}",
                         input_name="t")
    return coef.to(device).reshape(-1).expand(batch)


def match_token_lengths(tensors: Sequence[torch.Tensor], names: Sequence[str] | None = None,
                        max_repeat: int = MAX_TOKEN_REPEAT) -> list[torch.Tensor]:
    """Tile key/value sets (or conditions) along the token axis to their least common multiple.

    This is what ComfyUI does when it batches conditions of different lengths (77 vs 154
    tokens -> both 154). Repeating a whole key set leaves softmax attention unchanged.

    Parameters
    ----------
    tensors : sequence of Tensor, shape (B_i, T_i, C)
    names : sequence of str, optional
        Input names for error messages.
    max_repeat : int
        Largest accepted ``lcm / min(T_i)``.

    Returns
    -------
    list of Tensor, shape (B_i, L, C) with ``L = lcm(T_i)``; inputs already of length ``L``
    are returned as they are.
    """
    names = list(names) if names is not None else [f"tensor {i}" for i in range(len(tensors))]
    lengths = [x.shape[1] for x in tensors]
    if min(lengths) < 1:
        bad = names[lengths.index(min(lengths))]
        raise ShapeError(f"{bad} has no tokens", input_name=bad)
    common = math.lcm(*lengths)
    if common // min(lengths) > max_repeat:
        desc = ", ".join(f"{n}: {n_tok}" for n, n_tok in zip(names, lengths, strict=True))
        longest = names[lengths.index(max(lengths))]
        raise ShapeError(
            f"token lengths differ too much to be combined ({desc}; their common length {common} is more than "
            f"{max_repeat}x the shortest). Use prompts of similar length (same number of 77-token chunks)",
            input_name=longest,
        )
    return [x if x.shape[1] == common else x.repeat(1, common // x.shape[1], 1) for x in tensors]


def frame_chunks(n_frames: int, chunk_size: int) -> list[slice]:
    """Consecutive slices of at most ``chunk_size`` frames covering ``range(n_frames)``.

    Each chunk is processed with the endpoints' keys/values (batch 1), not with the endpoint
    frames themselves, so memory grows with ``chunk_size``, not with the sequence length.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise StormError(f"chunk_size must be a positive integer, got {chunk_size!r}", input_name="chunk_size")
    if n_frames < 0:
        raise StormError(f"the number of frames cannot be negative, got {n_frames}", input_name="frames")
    return [slice(i, min(i + chunk_size, n_frames)) for i in range(0, n_frames, chunk_size)]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, k_name: str, v_name: str) -> None:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise StormError(f"heads must be a positive integer, got {heads!r}", input_name="heads")
    for name, x in (("q", q), (k_name, k), (v_name, v)):
        if x.dim() != 3:
            raise ShapeError(f"{name}: expected a 3-d tensor (B, N, heads * dim_head), got shape {tuple(x.shape)}",
                             input_name=name)
    if q.shape[-1] % heads:
        raise ShapeError(f"q has {q.shape[-1]} channels, not divisible by {heads} heads", input_name="q")
    if k.shape[-1] != q.shape[-1]:
        raise ShapeError(f"{k_name} has {k.shape[-1]} channels, q has {q.shape[-1]}", input_name=k_name)
    if v.shape[-1] % heads:
        raise ShapeError(f"{v_name} has {v.shape[-1]} channels, not divisible by {heads} heads", input_name=v_name)
    for name, x in ((k_name, k), (v_name, v)):
        if x.shape[0] not in (1, q.shape[0]):
            raise ShapeError(f"{name} has batch {x.shape[0]}; expected 1 (shared) or {q.shape[0]} (one per frame)",
                             input_name=name)
    if k.shape[:2] != v.shape[:2]:
        raise ShapeError(f"{k_name} {tuple(k.shape)} and {v_name} {tuple(v.shape)} differ in batch or tokens",
                         input_name=v_name)
    if k.shape[1] < 1:
        raise ShapeError(f"{k_name} has no tokens", input_name=k_name)


def _split_heads(x: torch.Tensor, heads: int, batch: int) -> torch.Tensor:
    """(B or 1, N, Hd * d) -> float32 (B, Hd, N, d); the cast happens before any broadcast."""
    return rearrange(x.float(), "b n (h d) -> b h n d", h=heads).expand(batch, -1, -1, -1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
            attn_fn: AttentionFn | None) -> torch.Tensor:
    """Softmax attention, float32 result ``(B, Nq, Hd * dv)``; ``k, v`` may have batch 1."""
    batch = q.shape[0]
    if attn_fn is not None:
        k, v = (x.to(q.dtype).expand(batch, -1, -1).contiguous() for x in (k, v))
        return attn_fn(q, k, v, heads).float()
    out = F.scaled_dot_product_attention(
        _split_heads(q, heads, batch), _split_heads(k, heads, batch), _split_heads(v, heads, batch)
    )  # shape: (B, Hd, Nq, dv); default scale 1/sqrt(d)
    return rearrange(out, "b h n d -> b n (h d)")


def _interpolate(q, k_a, v_a, k_b, v_b, coef, heads, mode, k_self, v_self, attn_fn, max_repeat) -> torch.Tensor:
    """The mixing of :func:`interpolated_attention` (arguments checked); float32 result."""
    batch = q.shape[0]
    work = torch.float32 if attn_fn is None else q.dtype
    fused = k_self is not None
    if mode == "inner" or fused:
        names = ["k_a", "k_b"] + (["k_self"] if fused else [])
        keys = match_token_lengths([k_a, k_b] + ([k_self] if fused else []), names, max_repeat)
        values = match_token_lengths([v_a, v_b] + ([v_self] if fused else []), names, max_repeat)
        k_a, k_b, v_a, v_b = keys[0], keys[1], values[0], values[1]
        if fused:
            k_self, v_self = keys[2], values[2]
    w = coef.to(q.device)[:, None, None]  # shape: (B, 1, 1)

    def with_self(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not fused:
            return k, v
        k = torch.cat([k_self.to(work), k.to(work).expand(batch, -1, -1)], 1)
        v = torch.cat([v_self.to(work), v.to(work).expand(batch, -1, -1)], 1)
        return k, v

    if mode == "inner":
        k_hat = torch.lerp(k_a.float(), k_b.float(), w).to(work)  # shape: (B, L, Hd * d)
        v_hat = torch.lerp(v_a.float(), v_b.float(), w).to(work)
        return _attend(q, *with_self(k_hat, v_hat), heads, attn_fn)
    out_a = _attend(q, *with_self(k_a, v_a), heads, attn_fn)
    out_b = _attend(q, *with_self(k_b, v_b), heads, attn_fn)
    return torch.lerp(out_a, out_b, w)
