"""Tiny models whose weights the host keeps quantized (fp8 "scaled", nvfp4, mxfp8, int8), loaded the host's way.

Two file formats:

* ``scaled_fp8``: the "scaled fp8" checkpoints ComfyUI has shipped since 2024 (Flux, SD3.5): each linear
  weight in float8_e4m3fn with a ``scale_weight``, and a ``scaled_fp8`` marker. 0.3.64 runs them through
  ``comfy.ops.scaled_fp8_ops``; 0.33 converts them on load (``comfy.utils.convert_old_quants``) to
* the per-layer format of 0.33 and later: each quantized layer's packed weight, its scales and a
  ``comfy_quant`` JSON entry naming the format, written here with the host's own quantizer
  (``QuantizedTensor.from_float`` and its ``state_dict``) and run through ``comfy.ops.mixed_precision_ops``.

:func:`load_quantized` loads a tiny model's diffusion weights in either format as
``comfy.sd.load_diffusion_model_state_dict`` does after detecting the model, with the tiny model's own
``model_config`` (the host's detection knows only real sizes).

On a device without fp8/nvfp4/mxfp8 compute (every CPU) the host emulates those formats by dequantizing
each weight before its matmul; ``native=True`` builds the layers as on a GPU that computes the format
natively (``disabled=set()``), so the CPU takes the host's quantized-input path (``QuantLinearFunc`` when
the input needs a gradient), which is what guidance meets on such a GPU.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .host import ensure_host

#: int8 with ConvRot (comfy-kitchen: each weight row rotated by group-wise Hadamard matrices before per-row int8
#: quantization, the activations rotated alike at run time; Krea 2 Turbo's released file): the host's
#: ``int8_tensorwise`` layer format with ``convrot`` in its ``comfy_quant`` entry. Groups of 16 (a power of 4, as the
#: Hadamard construction needs) so the tiny models' widths divide; the released files use 256
INT8_CONVROT = "int8_tensorwise_convrot"
CONVROT_GROUP = 16
#: what each format needs of a weight's shape (rows, columns multiple of), for the layers it quantizes
_BLOCK = {"nvfp4": (16, 16), "mxfp8": (32, 32), INT8_CONVROT: (1, CONVROT_GROUP)}


#: the release "scaled fp8" file format (every host)
SCALED_FP8 = "scaled_fp8"
#: the float8_e4m3fn maximum
_FP8_MAX = 448.0


def _per_layer_formats() -> tuple[str, ...]:
    try:
        from comfy.quant_ops import QUANT_ALGOS
    except ImportError:  # 0.3.64: scaled fp8 only
        return ()
    return tuple(QUANT_ALGOS)


def cpu_formats() -> tuple[str, ...]:
    """The formats this host loads whose quantizer runs on the CPU at the tiny widths: ``scaled_fp8``, the
    host's per-layer formats (``comfy.quant_ops.QUANT_ALGOS``) but convrot_w4a4 and asym_w4a8_int8, which need
    layer widths of 256 and more, and int8 with ConvRot (:data:`INT8_CONVROT`) where the host reads it."""
    ensure_host()
    per_layer = [f for f in _per_layer_formats() if f in ("float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8",
                                                           "int8_tensorwise")]
    return (SCALED_FP8, *per_layer, *((INT8_CONVROT,) if _host_reads_convrot() else ()))


def _host_reads_convrot() -> bool:
    """Whether the host's int8 layout has ConvRot parameters (comfy-kitchen 0.2.31 with ComfyUI 0.33 reads them off
    an int8 layer's ``comfy_quant`` entry)."""
    import dataclasses

    if "int8_tensorwise" not in _per_layer_formats():
        return False
    from comfy.quant_ops import QUANT_ALGOS, get_layout_class

    params = get_layout_class(QUANT_ALGOS["int8_tensorwise"]["comfy_tensor_layout"]).Params
    return "convrot" in {f.name for f in dataclasses.fields(params)}


def scaled_fp8_state_dict(net: torch.nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """``net``'s state dict as a release "scaled fp8" file: every ``Linear`` weight ``w`` stored as
    ``w / s`` in float8_e4m3fn with ``scale_weight = s = max|w| / 448``."""
    linears = {name + ".weight" for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    out: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        if key in linears:
            weight = value.detach().float()
            scale = (weight.abs().max() / _FP8_MAX).clamp(min=1e-12)
            out[key] = (weight / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value.detach().clone()
    out["scaled_fp8"] = torch.tensor([], dtype=torch.float8_e4m3fn)
    return out, len(linears)


def quantized_state_dict(net: torch.nn.Module, fmt: str) -> tuple[dict[str, torch.Tensor], int]:
    """``net``'s state dict with every eligible ``Linear`` weight in the host's ``fmt`` layout; returns it and
    how many layers were quantized."""
    ensure_host()
    from comfy.quant_ops import QUANT_ALGOS, QuantizedTensor

    rows, cols = _BLOCK.get(fmt, (1, 1))
    options, entry = {}, {"format": fmt}
    if fmt == INT8_CONVROT:  # the int8 format with ConvRot's parameters in its entry; per-row scales, as released
        convrot = {"convrot": True, "convrot_groupsize": CONVROT_GROUP}
        fmt = "int8_tensorwise"
        options, entry = {**convrot, "per_channel": True, "is_weight": True}, {"format": fmt, **convrot}
    layout = QUANT_ALGOS[fmt]["comfy_tensor_layout"]
    linears = {name + ".weight" for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    out: dict[str, torch.Tensor] = {}
    count = 0
    for key, value in net.state_dict().items():
        if key in linears and value.shape[0] % rows == 0 and value.shape[1] % cols == 0:
            prefix = key[: -len("weight")]
            out.update(QuantizedTensor.from_float(value.detach().float().clone(), layout, **options).state_dict(key))
            out[prefix + "comfy_quant"] = torch.tensor(list(json.dumps(entry).encode()), dtype=torch.uint8)
            count += 1
        else:
            out[key] = value.detach().clone()
    return out, count


def load_quantized(model: Any, fmt: str, *, native: bool = False) -> tuple[Any, int]:
    """A new ``ModelPatcher`` of ``model``'s diffusion model (a tiny ``ModelPatcher``) with its ``Linear``
    weights stored in ``fmt`` and run through the host's ``mixed_precision_ops``; and the number of layers
    quantized. Build it inside ``torch.inference_mode()`` as a loader node runs."""
    ensure_host()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import comfy.utils

    base = model.model
    if fmt == SCALED_FP8:
        sd, count = scaled_fp8_state_dict(base.diffusion_model)
    else:
        sd, count = quantized_state_dict(base.diffusion_model, fmt)
    config = type(base.model_config)(dict(base.model_config.unet_config))
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    if fmt == SCALED_FP8 and not _per_layer_formats():  # 0.3.64: model_detection reads the marker
        config.scaled_fp8 = sd.pop("scaled_fp8").dtype
        config.optimizations["fp8"] = True
        config.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
        if native:
            raise ValueError("ComfyUI 0.3.64 has no native quantized path to build on the CPU")
        net = config.get_model({}, "", device=offload_device)
        net.load_model_weights(sd, "")
        return comfy.model_patcher.ModelPatcher(net, load_device=load_device, offload_device=offload_device), count
    if fmt == SCALED_FP8:  # 0.33 and later convert the release files on load
        sd, _ = comfy.utils.convert_old_quants(sd, "", metadata={})
    config.quant_config = comfy.utils.detect_layer_quantization(sd, "")
    if config.quant_config is None:
        raise ValueError(f"no layer of the model could be stored as {fmt}")
    manual_cast = mm.unet_manual_cast(None, load_device, config.supported_inference_dtypes)
    config.set_inference_dtype(torch.float32, manual_cast, device=load_device)
    if native:
        config.custom_operations = comfy.ops.mixed_precision_ops(config.quant_config, torch.float32, disabled=set())
    net = config.get_model({}, "", device=offload_device)
    net.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(net, load_device=load_device, offload_device=offload_device), count
