"""The real-size DiT memory benchmark's extrapolation (``scripts.benchmark --archs qwen_image,z_image,flux2... --memory``):
per block to the whole model, then affine in the image rows the model attends over, Z-Image's padded to 32 as the
host pads them. Synthetic measurements, no model."""

import pytest

from harness.tiny_dit import REAL_DITS
from scripts.benchmark import BLOCK_CONFIGS, extrapolate_real_dit, real_dit_image_rows

KEYS = ("floor_saved_mib", "ours_saved_mib", "recompute_peak_mib", "ours_peak_mib")
#: the image rows the host's models attend over at 128, 192 and 256 px (Z-Image pads 144 rows to 160)
ROWS = {"z_image": {128: 64, 192: 160, 256: 256}, "qwen_image": {128: 64, 192: 144, 256: 256},
        "flux2": {128: 64, 192: 144, 256: 256}, "krea2": {128: 64, 192: 144, 256: 256}}


def test_image_rows_are_one_per_16_pixels_and_z_image_pads_them_to_32():
    assert real_dit_image_rows("qwen_image", 192) == 144
    assert real_dit_image_rows("flux2_klein4b", 192) == 144  # Flux.2's 16 px latent, one row per latent pixel
    assert real_dit_image_rows("z_image", 192) == 160
    assert [real_dit_image_rows(a, 1024) for a in REAL_DITS] == [4096] * len(REAL_DITS)


def _rows(arch: str, base: float, per_row: float, per_block: float) -> list[dict]:
    """Bytes affine in the image rows: ``base + per_row x rows`` for the first block configuration, ``per_block x
    rows`` more for each block of any kind beyond it."""
    out = []
    first = BLOCK_CONFIGS[REAL_DITS[arch].arch][0]
    for blocks in BLOCK_CONFIGS[REAL_DITS[arch].arch]:
        extra = sum(blocks) - sum(first)
        for size in (128, 192, 256):
            n = ROWS[arch][size]
            value = base + per_row * n + extra * per_block * n
            out.append({"arch": arch, "name": REAL_DITS[arch].name, "blocks": list(blocks), "size": size,
                        **{k: value for k in KEYS}})
    return out


@pytest.mark.parametrize("arch", ["z_image", "qwen_image", "flux2", "krea2"])
def test_the_whole_model_at_1024_px_lies_on_the_line_in_image_rows(arch):
    spec = REAL_DITS[arch]
    out = extrapolate_real_dit(_rows(arch, 10.0, 0.5, 0.25), arch)
    extra = sum(spec.blocks) - sum(BLOCK_CONFIGS[spec.arch][0])
    for key in KEYS:
        assert out[key] == pytest.approx(10.0 + 0.5 * 4096 + extra * 0.25 * 4096)
        assert out[key + "_check"] == pytest.approx(0.0, abs=1e-6)  # the smallest size lies on the line
