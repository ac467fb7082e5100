"""The article's protocol, replayed on purpose: one backbone trained by each head in turn.

The article built one convolutional ``head`` object and trained ``fc``, then ``fc_dropout``,
then its "GAP" (our ``avgpool``) on top of it, so each later model started from a backbone
the earlier ones had trained: ``avgpool`` came last, with three models' training behind its
backbone. Our comparison (protocol ``fair``) gives every model a fresh backbone from the
same initial weights. Protocol ``article`` reproduces the article's chain, to ask whether
its ranking came from the protocol rather than from the heads.

A cell of protocol ``article`` (head h, seed s) is the model h after the chain up to h: the
backbone trained by each earlier head of ``ARTICLE_CHAIN`` for the run's epochs, then h on
it. Each step's backbone is cached (by the chain's identity), so the study's cells, trained
in chain order, train each model of the chain once.

Not among the training code hashed for every cell (``gap_models.provenance``): its own
digest is part of the identity of the cells that use it (``chain_code_version``), so a
change here makes stale only the replay's records.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gap_models.config import ARTICLE_CHAIN
from gap_models.models import BACKBONE_PREFIX
from gap_models.records import HEAD

BackboneWeights = dict[str, list[np.ndarray]]
"""Layer name -> weights, of the layers named ``backbone_*``."""


def chain_code_version() -> str:
    """16 hex digits of this module's code (docstrings and comments aside)."""
    from gap_models.provenance import source_digest

    return source_digest(Path(__file__).resolve().parent, ("protocols.py",))[:16]


def predecessors(head: str) -> tuple[str, ...]:
    """The heads trained before ``head`` on its backbone under the article's protocol."""
    if head not in ARTICLE_CHAIN:
        raise ValueError(
            f"protocol 'article' trains the article's chain {list(ARTICLE_CHAIN)}; {head!r} is "
            "not in it"
        )
    return ARTICLE_CHAIN[: ARTICLE_CHAIN.index(head)]


def backbone_weights(model) -> BackboneWeights:
    return {
        layer.name: [np.asarray(w) for w in layer.get_weights()]
        for layer in model.layers
        if layer.name.startswith(BACKBONE_PREFIX) and layer.get_weights()
    }


def load_backbone(model, weights: BackboneWeights) -> None:
    """Set the model's backbone layers (by name) to ``weights``."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)


def _path(cache_root: Path, key: str) -> Path:
    return cache_root / "chains" / f"{key}.npz"


def step_key(identity: dict[str, object], chain: tuple[str, ...]) -> str:
    """Names the backbone after training ``chain`` (heads in order) for one cell identity
    (data, seed, settings and code versions; its head is replaced by the chain)."""
    content = {**identity, "chain": list(chain), "protocol_code": chain_code_version()}
    content.pop(HEAD, None)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]


def step_checkpoint_key(key: str) -> str:
    """The checkpoint key of the fit of step ``key`` while a cell trains it first (removed
    once the step's backbone is saved)."""
    return f"chain-{key}"


def save_step(cache_root: Path, key: str, weights: BackboneWeights) -> None:
    """Cache a chain step's backbone, atomically."""
    path = _path(cache_root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        f"{name}/{i}": value for name, values in weights.items() for i, value in enumerate(values)
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    os.close(handle)
    try:
        np.savez(temporary, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_step(cache_root: Path, key: str) -> BackboneWeights | None:
    path = _path(cache_root, key)
    if not path.is_file():
        return None
    weights: BackboneWeights = {}
    with np.load(path) as stored:
        for name in sorted(
            stored.files, key=lambda n: (n.rsplit("/", 1)[0], int(n.rsplit("/", 1)[1]))
        ):
            weights.setdefault(name.rsplit("/", 1)[0], []).append(stored[name])
    return weights


def chain_backbone(
    head: str,
    identity: dict[str, object],
    cache_root: Path,
    train: Callable[[str, BackboneWeights | None], BackboneWeights],
    say: Callable[[str], None] = lambda message: None,
) -> BackboneWeights | None:
    """The backbone ``head`` starts from under the article's protocol: trained by each of
    its predecessors in turn (None for the chain's first head). ``train(h, start)`` trains
    a fresh model of head h from backbone ``start`` and returns its backbone; steps already
    cached are loaded, not trained again."""
    weights = None
    chain = predecessors(head)
    for length in range(1, len(chain) + 1):
        key = step_key(identity, chain[:length])
        cached = load_step(cache_root, key)
        if cached is not None:
            say(f"article protocol: backbone after {' -> '.join(chain[:length])} from the cache")
            weights = cached
            continue
        say(f"article protocol: training {chain[length - 1]} on the shared backbone first")
        weights = train(chain[length - 1], weights)
        save_step(cache_root, key, weights)
    return weights
