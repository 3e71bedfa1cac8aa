"""Write mined features with known activations straight through the store API.

`token_features(store, words)` makes one feature per word that fires (activation 4.0,
plus a little on the next token) exactly where that word occurs: its explain and
holdout splits hold distinct windows, top windows contain the word, random ones
mostly do not.
"""

from __future__ import annotations

import random

from gloss.store import ExampleIn, ExampleSet, MinedFeature, Store, WindowIn, encode_acts

VOCAB = (
    " the a of and to in is was for on with as by at from it that this which but or "
    "river bank money loan water tree city road house music song dance paper wind"
).split()


def token_features(
    store: Store,
    words: list[str],
    *,
    ctx: int = 16,
    explain_top: int = 4,
    holdout_top: int = 3,
    random_windows: int = 2,
    validation: int = 0,
    seed: int = 0,
    source_name: str = "toy/mlp.0/neurons",
) -> tuple[int, list[int]]:
    """A source with one feature per word; returns (source_id, feature ids in word order).

    `validation` top and as many random windows go to the validation split."""
    rng = random.Random(seed)
    subject = store.get_or_create_subject("toy", "/nonexistent/toy", "r1", "toy")
    source = store.get_or_create_source(
        subject, "mlp.0", "neurons", len(words), "p" * 8, name=source_name
    )
    mined = []
    for index, word in enumerate(words):
        texts = []
        for _ in range(explain_top + holdout_top):
            tokens = [" " + rng.choice(VOCAB) for _ in range(ctx)]
            tokens[rng.randrange(1, ctx - 1)] = " " + word
            texts.append(("top", tokens))
        for _ in range(2 * random_windows):
            texts.append(("random", [" " + rng.choice(VOCAB) for _ in range(ctx)]))
        for _ in range(validation):
            tokens = [" " + rng.choice(VOCAB) for _ in range(ctx)]
            tokens[rng.randrange(1, ctx - 1)] = " " + word
            texts.append(("validation:top", tokens))
            texts.append(("validation:random", [" " + rng.choice(VOCAB) for _ in range(ctx)]))
        window_ids = store.add_windows(
            subject,
            [
                WindowIn(f"doc-{word}-{i}", 0, [hash(t) % 50000 for t in tokens], tokens)
                for i, (_, tokens) in enumerate(texts)
            ],
        )
        examples, counts = [], {"explain": 0, "validation": 0, "holdout": 0}
        for i, ((kind, tokens), window_id) in enumerate(zip(texts, window_ids, strict=True)):
            acts = [0.0] * ctx
            for j, token in enumerate(tokens):
                if token.strip() == word:
                    acts[j] = 4.0
                    if j + 1 < ctx:
                        acts[j + 1] = max(acts[j + 1], 0.5)
            if kind.startswith("validation:"):
                split, kind = kind.split(":")
            elif kind == "top":
                split = "explain" if i < explain_top else "holdout"
            else:
                split = "explain" if (i - explain_top - holdout_top) < random_windows else "holdout"
            examples.append(
                ExampleIn(window_id, split, kind, counts[split], max(acts), encode_acts(acts))
            )
            counts[split] += 1
        mined.append(MinedFeature(index, 4.0, 0.1, 0.05, ctx * len(texts), None, examples))
    store.write_mined_features(source, mined)
    ids = [f.id for f in sorted(store.features(source), key=lambda f: f.index)]
    return source, ids


def replace_example(
    store: Store, feature_id: int, split: str, rank: int, window_id: int, acts: list[float]
) -> None:
    """Point a feature's one example of `split` and `rank` at another window, with these
    activations (its max activation kept): how tests plant a window among real examples."""
    from gloss.store.models import FeatureExamples

    with store.session() as s:
        row = s.get(FeatureExamples, feature_id)
        examples = ExampleSet.unpack(row.data).rows()
        (hit,) = [i for i, e in enumerate(examples) if (e[1], e[3]) == (split, rank)]
        kept = [ExampleIn(w, sp, k, r, m, encode_acts(a)) for w, sp, k, r, m, a in examples]
        old = kept[hit]
        kept[hit] = ExampleIn(window_id, old.split, old.kind, old.rank, old.max_act,
                              encode_acts(acts))  # fmt: skip
        row.data = ExampleSet.of(kept).pack()
