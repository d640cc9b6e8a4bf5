"""Recording image-to-text attention of DiT models (SD3 MMDiT, Flux) through ``optimized_attention_override``.

PROTOTYPE (branch wip-dit): not wired to any node yet.

Both families run one *joint* attention per block over ``[text rows, image rows]`` (MMDiT: context then x;
Flux: txt then img, in double and single blocks alike). The override receives every call with the
host's kernel; it computes the fp32 softmax of the conditional image queries against all keys, keeps
the columns of the text rows (the share of each image patch's attention that goes to each text token:
a joint softmax, so a row sums to less than 1) and calls the kernel unchanged, so recording never
changes the image.
"""

from __future__ import annotations

import torch
from einops import rearrange


class JointAttentionRecorder:
    """Per sampler step, the text-column maps ``(B, T, h, w)`` averaged over heads and joint calls.

    ``text_rows``: rows of the conditioning (the prompt's context length); ``grid``: the image patch grid
    ``(h, w)`` (latent size / patch size). Calls whose key length is not ``text_rows + h * w`` (SD3.5-Medium's
    image-only self-attention) are passed through unrecorded.
    """

    def __init__(self, text_rows: int, grid: tuple[int, int]):
        self.text_rows, self.grid = text_rows, grid
        self.steps: list[tuple[float, torch.Tensor]] = []
        self._sum: torch.Tensor | None = None
        self._calls = 0
        self._sigma: float | None = None

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options: keep one recorder
        return self

    def __call__(self, func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        options = kwargs.get("transformer_options") or {}
        image_rows = self.grid[0] * self.grid[1]
        if k.shape[-2 if kwargs.get("skip_reshape") else 1] == self.text_rows + image_rows:
            self._observe(q, k, heads, bool(kwargs.get("skip_reshape")), options)
        return func(*args, **kwargs)

    def _observe(self, q, k, heads, heads_first: bool, options: dict) -> None:
        if not heads_first:
            q = rearrange(q, "b n (h d) -> b h n d", h=heads)
            k = rearrange(k, "b n (h d) -> b h n d", h=heads)
        cond_or_uncond = list(options.get("cond_or_uncond", [0]))
        chunk = q.shape[0] // len(cond_or_uncond)
        rows = [r for i, c in enumerate(cond_or_uncond) if c == 0 for r in range(i * chunk, (i + 1) * chunk)]
        if not rows:
            return
        q, k = q[rows].detach().float(), k[rows].detach().float()
        logits = q[:, :, self.text_rows:] @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        to_text = torch.softmax(logits, dim=-1)[..., : self.text_rows].mean(1)  # (B, image rows, T)
        sigmas = options.get("sigmas")
        sigma = float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) else float("nan")
        if sigma != self._sigma and self._sum is not None:
            self._flush()
        self._sigma = sigma
        self._sum = to_text if self._sum is None else self._sum + to_text
        self._calls += 1

    def _flush(self) -> None:
        h, w = self.grid
        maps = rearrange(self._sum / self._calls, "b (h w) t -> b t h w", h=h, w=w)
        self.steps.append((self._sigma, maps.to("cpu", torch.float16)))
        self._sum, self._calls = None, 0

    def finish(self) -> list[tuple[float, torch.Tensor]]:
        if self._sum is not None:
            self._flush()
        return self.steps
