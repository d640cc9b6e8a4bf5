"""Tokens: which conditioning row holds which piece of which word, and the words users name.

* ``layout``: :class:`TokenLayout` (rows, words, streams, chunking, the end-token convention), ``Subject``,
  ``PromptTokens``;
* ``clip_vocab``: the text of a CLIP BPE vocabulary entry (independent of the ``transformers`` release);
* ``subjects``: the one parser and resolver of the words users write ("cat", "teddy bear", "dog#2", "5");
* ``identity``: whether a conditioning is the encoding of the prompt a layout was made for.
"""
