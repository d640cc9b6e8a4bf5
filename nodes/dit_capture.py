"""Recording the image-to-text attention of DiT models (SD3's MMDiT, Flux, ...) into a :class:`MapRecorder`.

These families run one *joint* attention per block over ``[text rows, image rows]`` (MMDiT: context then
x, Esser et al. 2024 eq. 6; Flux.1/Flux.2/Chroma: txt then img, in double and single blocks alike; Qwen-Image's
dual-stream blocks; Z-Image's single-stream blocks over text and image each padded to 32 rows; Krea 2's single-stream
blocks, after a text-fusion adapter whose text-only calls are let through). The host calls
``transformer_options["optimized_attention_override"]`` with every attention call and its kernel; the
tap hands the image queries and the text keys of each joint call to the recorder, which takes their
softmax over the text rows only: the image-to-text attention a cross-attention layer would have, with
one column per conditioning row, so every map consumer (heatmaps, losses) reads DiT maps like UNet maps.
Then it calls the kernel (or an override installed before it) unchanged, so recording never changes
the image.
"""

from __future__ import annotations

import contextlib

from einops import rearrange

from .architecture import JOINT, CrossAttentionLayer, ModelInfo
from .attention_capture import GRAD_PASS_FLAG, MapRecorder, StopForward, install_patches


class JointAttentionTap:
    """The ``optimized_attention_override`` that feeds ``recorder``. ``clone()`` deep-copies ``model_options``
    on some hosts; :meth:`__deepcopy__` keeps this one object, whose per-call state the wrapper sets.

    :meth:`begin_call` must run before every model call (the MODEL's UNet function wrapper): it gives the
    text row count and the latent size, and restarts the block count. A call whose key length is not
    ``text rows + image rows`` (SD3.5's image-only self-attention, Z-Image's text-only and image-only refiner
    blocks) passes through unrecorded. With ``pad_rows_to`` (Z-Image: 32) the model pads its text rows and its image
    rows each to a multiple of it (learned pad rows, attended unmasked): the image rows start after the padded text
    rows, and the pad rows are neither text nor image.
    """

    def __init__(self, recorder: MapRecorder, patch_size: int, previous=None, pad_rows_to: int = 1):
        self.recorder, self.patch_size, self.previous = recorder, patch_size, previous
        self.pad_rows_to = pad_rows_to
        self._text_rows: int | None = None
        self._latent_shape: tuple[int, ...] | None = None
        self._block = 0
        #: while a block runs with per-block recomputation (:mod:`.block_checkpoint`): the list its joint calls'
        #: image queries and text keys go to instead of the recorder, and (not in a replay) their keys and options
        self._capture: list | None = None
        self._pending: list = []
        self._replay = False
        self._flushable: list = []

    def __deepcopy__(self, memo):
        return self

    def begin_call(self, text_rows: int | None, latent_shape) -> None:
        """A model call starts: ``text_rows`` of conditioning (None: nothing to record) on ``latent_shape``."""
        self._text_rows = None if text_rows is None else int(text_rows)
        self._latent_shape, self._block = tuple(latent_shape), 0

    def _padded(self, rows: int) -> int:
        return -(-rows // self.pad_rows_to) * self.pad_rows_to

    def _image_rows(self) -> int:
        return image_rows(self._latent_shape, self.patch_size)

    def __call__(self, func, *args, **kwargs):
        if self._text_rows is not None and len(args) >= 2:
            self._observe(args, kwargs)
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _observe(self, args, kwargs) -> None:
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        heads_first = bool(kwargs.get("skip_reshape"))  # Flux: (B, H, L, d); MMDiT: (B, L, H * d)
        length = k.shape[-2] if heads_first else k.shape[1]
        t, image = self._text_rows, self._image_rows()
        start = self._padded(t)
        if heads is None or length != start + self._padded(image):
            return
        if heads_first:
            q_img = rearrange(q[:, :, start:start + image], "b h n d -> b n (h d)")
            k_txt = rearrange(k[:, :, :t], "b h n d -> b n (h d)")
        else:
            q_img, k_txt = q[:, start:start + image], k[:, :t]
        if self._capture is not None:  # a recomputed block: handed to the recorder after the block (flush)
            self._capture += [q_img, k_txt]
            if self._replay:
                return
        options = kwargs.get("transformer_options") or {}
        extra = {"cond_or_uncond": options.get("cond_or_uncond", [0]), "sigmas": options.get("sigmas"),
                 "n_heads": heads, "original_shape": self._latent_shape,
                 GRAD_PASS_FLAG: options.get(GRAD_PASS_FLAG, False)}
        key = (JOINT, self._block)
        self._block += 1
        if self._capture is not None:
            self._pending.append((key, extra))
            return
        if self.recorder.observe(key, q_img, k_txt, extra):
            raise StopForward

    # -- per-block recomputation (nodes.block_checkpoint) --------------------------------------------
    def call_state(self) -> tuple:
        """What :meth:`begin_call` set, for a replay of a block in backward."""
        return self._text_rows, self._latent_shape

    @contextlib.contextmanager
    def capture(self, replay: bool, state: tuple):
        """While a block runs under :func:`~storm_ops.guidance.recompute.recompute_in_backward`: its joint calls'
        image queries and text keys go to the yielded list (two per call). In the forward (``replay`` False) they
        are counted as blocks and handed to the recorder afterwards by :meth:`flush`; in the block's replay in
        backward (with ``state``, the model call's :meth:`call_state`) they are only collected again."""
        previous = self._capture, self._pending, self._replay, self.call_state()
        self._capture, self._replay = [], replay
        if replay:
            self._text_rows, self._latent_shape = state
        else:
            self._pending = []
        try:
            yield self._capture
        finally:
            self._capture, pending, self._replay = previous[0], self._pending, previous[2]
            if replay:
                self._text_rows, self._latent_shape = previous[3]
            else:
                self._pending, self._flushable = previous[1], pending

    def flush(self, tensors: list) -> None:
        """Hand the calls of the block that just ran (:meth:`capture`) to the recorder, with their differentiable
        queries and keys ``tensors``; raises :class:`StopForward` when the recorder has every layer."""
        pending, self._flushable = self._flushable, []
        stop = False
        for i, (key, extra) in enumerate(pending):
            stop = self.recorder.observe(key, tensors[2 * i], tensors[2 * i + 1], extra) or stop
        if stop:
            raise StopForward


def install_joint_tap(model_options: dict, recorder: MapRecorder, patch_size: int,
                      pad_rows_to: int = 1) -> JointAttentionTap:
    """Install a :class:`JointAttentionTap` for ``recorder`` in ``model_options`` (already a private copy),
    chained to the override that was there."""
    transformer_options = model_options.setdefault("transformer_options", {})
    tap = JointAttentionTap(recorder, patch_size, transformer_options.get("optimized_attention_override"), pad_rows_to)
    transformer_options["optimized_attention_override"] = tap
    return tap


def image_rows(latent_shape, patch_size: int) -> int:
    """The image rows of a joint attention on a latent of ``latent_shape`` (``(..., h, w)``): one per patch."""
    p = patch_size
    return -(-latent_shape[-2] // p) * -(-latent_shape[-1] // p)


def context_rows(args: dict) -> int | None:
    """The text rows of a model call (the UNet function wrapper's ``args``)."""
    context = args.get("c", {}).get("c_crossattn")
    return None if context is None else int(context.shape[1])


def install_recording(model_options: dict, recorder: MapRecorder, layers: tuple[CrossAttentionLayer, ...],
                      model: ModelInfo) -> dict:
    """Make ``model_options`` (a private copy) feed ``recorder`` from ``layers``: ``attn2`` patches on a
    UNet; on a DiT the joint-attention tap, told each model call's text rows and latent size by a model
    function wrapper (chained to the one that was there)."""
    if not model.is_dit:
        return install_patches(model_options, recorder, layers)
    tap = install_joint_tap(model_options, recorder, 2 ** layers[0].level, model.pad_rows_to)
    install_call_wrapper(model_options, tap.begin_call)
    return model_options


def install_call_wrapper(model_options: dict, begin_call) -> None:
    """A model function wrapper (chained to the one that was there) that calls ``begin_call(text rows,
    latent shape)`` before every model call, for an attention override that must know them."""
    previous = model_options.get("model_function_wrapper")

    def storm_joint_call(apply_model, args):
        begin_call(context_rows(args), args["input"].shape)
        if previous is not None:
            return previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    model_options["model_function_wrapper"] = storm_joint_call
