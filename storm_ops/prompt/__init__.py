"""Prompt analysis: what a prompt's words mean for the losses (objects, their modifiers, spatial relations).

* ``parsed``: the data types of a parsed prompt (entities, bindings, relations);
* ``nlp``: spaCy pipelines, found and loaded lazily, and the alignment of parsed words to token rows;
* ``analysis``: the analysis itself (parse or rules), and the user's overrides applied to it;
* ``noun_phrases``: objects and SynGen's modifier sets read off the dependency parse;
* ``relations``: spatial relations read off the parse;
* ``overrides``: the bindings and relations users write, and the check of every relation set;
* ``filters``: words that are never objects (quality tags, style words) and separators.
"""
