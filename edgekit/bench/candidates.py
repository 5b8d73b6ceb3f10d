"""What ``edgekit bench`` measures: bundle targets, lone artifact files and PyTorch models,
each gathered into a :class:`Candidate` with its artifact and I/O specs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import Artifact, TensorSpec, backend_for_file, known_suffixes
from ..errors import UsageError

__all__ = ["Candidate", "add_models", "artifact_from_file", "collect_candidates"]


@dataclass
class Candidate:
    """One thing to benchmark: a bundle target, a single artifact file or a PyTorch model."""

    name: str
    backend: str
    source: str
    artifact: Artifact | None = None
    bundle: Any = None
    target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    model: Any = None  # a torch.nn.Module for the PyTorch reference
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)

    @property
    def size_bytes(self) -> int | None:
        return self.artifact.size_bytes if self.artifact is not None else None


def artifact_from_file(path: str | Path) -> Artifact:
    """An :class:`Artifact` for a lone model file (a registered backend's suffix), I/O specs
    read by that backend."""
    path = Path(path).absolute()
    backend = backend_for_file(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    from ..modelfile import check_format

    check_format(path)  # empty, or bytes of another format than the suffix -> BundleError
    return backend.inspect(path)


def collect_candidates(sources: Sequence[str | Path], targets: Sequence[str] | None = None
                       ) -> list[Candidate]:
    """Bundle folders (each target, or only ``targets``) and single artifact files."""
    from ..bundle import MANIFEST, load_bundle

    if not sources:
        raise UsageError("nothing to benchmark", hint="pass a bundle folder or artifact files")
    out: list[Candidate] = []
    bundles = [Path(s) for s in sources if Path(s).is_dir() or Path(s).name == MANIFEST]
    for src in sources:
        p = Path(src)
        if p.is_dir() or p.name == MANIFEST:
            b = load_bundle(p)
            names = b.targets
            if targets:
                unknown = [t for t in targets if t not in names]
                if unknown and len(bundles) == 1:
                    from ..errors import UnknownNameError

                    raise UnknownNameError(f"target in bundle {b.root}", unknown[0], names)
                names = [t for t in names if t in targets]
            for t in names:
                entry = b.target(t)
                for rec in entry.files:
                    from ..bundle import check_record

                    check_record(b.root, rec)
                art = b.artifact(t)
                label = t if len(bundles) == 1 else f"{b.name}/{t}"
                out.append(Candidate(label, entry.backend, str(b.root), art, b, t,
                                     entry.options, (entry.profile or {}).get("threads"),
                                     inputs=list(art.inputs), outputs=list(art.outputs)))
        elif p.suffix.lower() in known_suffixes():
            art = artifact_from_file(p)
            out.append(Candidate(p.name, art.backend, str(p.absolute()), art,
                                 inputs=list(art.inputs), outputs=list(art.outputs)))
        elif not p.exists():
            raise UsageError(f"{p} does not exist", hint="pass a bundle folder or artifact files")
        else:
            raise UsageError(f"{p} is neither a bundle folder nor a "
                             f"{'/'.join(sorted(known_suffixes()))} file")
    names = [c.name for c in out]
    for i, c in enumerate(out):  # make labels unique (same file name in two folders)
        if names.count(c.name) > 1:
            c.name = f"{Path(c.source).parent.name}/{c.name}" if c.bundle is None \
                else f"{c.name}#{i}"
    if not out:
        raise UsageError("no targets selected", hint="check --target against the bundle")
    return out


def add_models(cands: list[Candidate], models: dict[str, Any]) -> None:
    """Append one candidate per PyTorch model, I/O specs taken from the first bundle (else the
    first artifact)."""
    for name, model in models.items():
        ref_c = next((c for c in cands if c.bundle is not None), cands[0] if cands else None)
        if ref_c is None:
            raise UsageError("a PyTorch model needs an artifact or bundle to take I/O specs from")
        cands.append(Candidate(name, "pytorch", "pytorch", model=model,
                               inputs=list(ref_c.inputs), outputs=list(ref_c.outputs)))
