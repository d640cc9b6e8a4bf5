"""How much a trained shape model's noise prediction depends on its prompt (a training health check).

For each checkpoint and a few timesteps, the relative change of the UNet's epsilon prediction on the
same random latents when the prompt changes ("a red circle" -> "a blue square") and when it is dropped
("a red circle" -> ""). A model that follows its prompt changes its prediction by several percent at
mid noise; values near 1% mean it has learned the images but not the text (what the first shape model
showed, see models/README.md).

    python -m scripts.probe_text_dependence models/storm_shapes_sd15.safetensors [more.safetensors ...]
"""

from __future__ import annotations

import sys

import torch

from harness.host import ensure_host

TIMESTEPS = (999, 800, 500, 200)


def text_dependence(path: str, batch: int = 8, seed: int = 0) -> dict[int, tuple[float, float]]:
    """``{timestep: (change red circle -> blue square, change red circle -> empty)}`` for one checkpoint."""
    from harness.tiny_models import load_trained, tiny_modules

    tiny = load_trained(path)
    modules = tiny_modules(tiny)
    unet, text = modules["unet"].float(), modules["text"].float()

    def encode(caption: str) -> torch.Tensor:
        ids = [int(t[0]) for t in tiny.clip.tokenize(caption)["l"][0]]
        return text.clip_l.encode([ids] * batch)[0].float()

    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        red, blue, empty = encode("a red circle"), encode("a blue square"), encode("")
        for t in TIMESTEPS:
            x = torch.randn(batch, 4, 16, 16, generator=g)
            tt = torch.full((batch,), float(t))
            base = unet(x, tt, context=red)
            out[t] = tuple(float((base - unet(x, tt, context=c)).norm() / base.norm()) for c in (blue, empty))
    return out


def main(argv=None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__)
        return 2
    ensure_host()
    for path in paths:
        for t, (prompt, dropped) in text_dependence(path).items():
            print(f"{path}  t={t:4d}  prompt changed {prompt * 100:5.2f}%  prompt dropped {dropped * 100:5.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
