"""Which code produced a model: a digest of the core's source and its numerical libraries.

The digest is part of the key by which a finished model is adopted or reused (resumption,
and the studies of later issues), so a model trained by older code is never taken for one
of today's. It hashes each module's syntax tree with docstrings removed: a change to what
the code does changes it, a comment or docstring edit does not. Only the modules that
decide what a model learns and how it is scored are hashed (``TRAINING_CODE``); reporting,
statistics and the orchestration around the core (tasks, flows, tracking) are not, so a
better table never makes a trained model stale.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from importlib import metadata
from pathlib import Path

TRAINING_CODE: tuple[str, ...] = (
    "data/cache.py",
    "data/decoding.py",
    "data/pipeline.py",
    "data/selection.py",
    "architecture.py",
    "models.py",
    "training.py",
    "checkpoints.py",
    "recipes.py",
    "evaluation.py",
    "robustness.py",
    "probabilities.py",
)
"""Paths under ``gap_models/`` (folders or files) whose code makes a cell what it is. The
data's sources module (listing, download, network checks) is not among them: the data a
cell saw is in its key through the source's fingerprint and the cache's version."""
NUMERICAL_LIBRARIES: tuple[str, ...] = ("tensorflow-cpu", "tensorflow", "keras", "numpy")
"""Installed versions that change what training computes (those not installed are skipped)."""


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0] = ast.Pass()
    return tree


def source_digest(root: Path, parts: tuple[str, ...] = ()) -> str:
    """sha256 over every ``.py`` file under ``root`` (or only under its ``parts``): relative
    path and syntax tree, no docstrings, no comments, in sorted order."""
    digest = hashlib.sha256()
    selected = [root / part for part in parts] or [root]
    files = {p for part in selected for p in ([part] if part.is_file() else part.rglob("*.py"))}
    for path in sorted(files):
        tree = _without_docstrings(ast.parse(path.read_text(encoding="utf-8")))
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(ast.dump(tree, annotate_fields=False).encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The installed versions of ``NUMERICAL_LIBRARIES``."""
    versions = {}
    for name in NUMERICAL_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def code_version() -> str:
    """16 hex digits naming the training code and its libraries' versions (stable across
    machines and checkouts for the same code)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(source_digest(package, TRAINING_CODE).encode())
    for name, version in sorted(library_versions().items()):
        digest.update(f"{name}=={version}".encode())
    return digest.hexdigest()[:16]
