"""Q4_K_X: a quant whose type per tensor is chosen for this model, by measurement, at Q4_K_M's size.

llama.cpp's Q4_K_M recipe gives every model the same types by tensor name and layer position.
Here the types are chosen for the model at hand, on the creator's calibration rows (never the
held-out ones), in three measured steps:

1. **error per tensor and type**: the model is quantised once per candidate type (each tensor
   only to types its row length allows: K-quants need rows that are multiples of 256, the
   legacy types multiples of 32), with the domain imatrix, by ``llama-quantize`` itself; each
   tensor is dequantised again (gguf-py) and its error weighted by the imatrix (the mean squared
   input activation of each column), relative to the tensor's own weighted size:
   ``r = sum_j a_j sum_i (w_ij - q_ij)^2 / sum_j a_j sum_i w_ij^2``, the relative error of the
   tensor's output on the calibration activations. This is what llama.cpp's quantiser itself
   minimises inside one tensor;
2. **sensitivity per kind of tensor** (``attn_v``, ``ffn_down``, the embedding, ...): the same
   relative error costs more KLD in some kinds than in others. One probe per kind (that kind at
   its cheapest candidate type, everything else at Q8_0) and one all-Q8_0 probe are compared with
   the F16 model on the calibration tokens; a kind's sensitivity is its probe's extra KLD over
   its summed relative error. The predicted KLD of any assignment is then
   ``sum over tensors of sensitivity(kind) * r(tensor, type)``;
3. **choice under a size budget**: a greedy over each tensor's lower convex hull of (bytes,
   predicted KLD), taking the upgrades that save the most predicted KLD per byte first, which is
   the optimum of the relaxed problem (and within one upgrade of the discrete one).

The result is a plain ``--tensor-type-file`` for ``llama-quantize`` (one ``^name$=type`` line per
matrix, every matrix named), so anyone can rebuild the file bit for bit from the F16 GGUF and the
imatrix with the command in ``rebuild_command``. The search and the model ship only when the
evaluation shows the mix beats plain Q4_K_M (:func:`judge`).

Hand-written because no library does it: llama.cpp takes a recipe but does not make one, and
Unsloth's "Dynamic 2.0" recipes are chosen by hand per model and not published as a method.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgetune import llamacpp
from edgetune.errors import ConfigError, ToolchainError

MIX = "Q4_K_X"
BASE_FTYPE = "Q4_K_M"  # the type passed to llama-quantize; the recipe names every matrix anyway
RECIPE_SUFFIX = ".tensor-types.txt"
PROBE_REST = "Q8_0"  # what every other tensor gets while one kind is probed
PROBE_CHUNKS = 2  # calibration chunks the probes are compared on (n_ctx tokens each)
# Block size (elements per row a type needs) of the types a mix may use.
BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "IQ4_NL": 32,
         "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_XS": 256}
# The mix's general.file_type is Q4_K_M's (llama.cpp has no type for a mix): this key names it,
# so `edgetune eval` on the files tells it from plain Q4_K_M.
QUANT_KEY = "edgetune.quant"
_NAME_IT = ("--override-kv", f"{QUANT_KEY}=str:{MIX}")
_ROWS_PER_SLICE = 4096  # rows dequantised at once: bounds memory on a 150k-vocabulary embedding


@dataclass(frozen=True)
class Matrix:
    name: str
    row: int  # elements per row (ne[0]): decides which types fit
    kind: str  # the name without "blk.N.": tensors of one kind share a sensitivity


@dataclass
class Search:
    """What the search measured and chose; ``assignment`` is the recipe."""

    budget_bytes: int
    assignment: dict[str, str]
    options: dict[str, dict[str, tuple[int, float]]]  # tensor -> type -> (bytes, relative error)
    sensitivity: dict[str, float]  # kind -> KLD per unit of relative error
    overhead_bytes: int  # everything in the file that is not a quantised matrix
    seconds: dict[str, float] = field(default_factory=dict)

    def predicted_kld(self, assignment: Mapping[str, str] | None = None) -> float:
        chosen = self.assignment if assignment is None else assignment
        return sum(self.sensitivity[_kind(name)] * self.options[name][t][1]
                   for name, t in chosen.items())

    def size_bytes(self, assignment: Mapping[str, str] | None = None) -> int:
        chosen = self.assignment if assignment is None else assignment
        return self.overhead_bytes + sum(self.options[name][t][0] for name, t in chosen.items())

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.assignment.values():
            counts[t] = counts.get(t, 0) + 1
        return {"budget_bytes": self.budget_bytes, "size_bytes": self.size_bytes(),
                "predicted_kld": self.predicted_kld(), "types": dict(sorted(counts.items())),
                "sensitivity": self.sensitivity, "seconds": self.seconds}


def matrices(f16: Path) -> list[Matrix]:
    """The weight matrices llama-quantize quantises (2-D ``*.weight`` tensors)."""
    import gguf

    reader = gguf.GGUFReader(str(f16))
    return [Matrix(t.name, int(t.shape[0]), _kind(t.name)) for t in reader.tensors
            if len(t.shape) >= 2 and t.name.endswith(".weight")]


def allowed(matrix: Matrix, types: Iterable[str]) -> list[str]:
    """The candidate types whose blocks fit this matrix's rows (no silent fallback)."""
    return [t for t in types if matrix.row % BLOCK[t] == 0]


def search(f16: Path, imatrix: Path, calibration_tokens: Sequence[int], types: Sequence[str],
           budget_bytes: int, scratch: Path, *, n_ctx: int = 512,
           on_progress: Callable[[str, int, int], None] | None = None) -> Search:
    """Measure, then choose types for every matrix of ``f16`` so the file fits ``budget_bytes``."""
    unknown = [t for t in types if t not in BLOCK]
    if unknown:
        raise ConfigError(f"unknown mix type {', '.join(unknown)}",
                          hint=f"choose from {', '.join(BLOCK)}")
    mats = matrices(f16)
    missing = [m.name for m in mats if not allowed(m, types)]
    if missing:
        raise ConfigError(f"no mix type fits {missing[0]} (rows of {_row(mats, missing[0])})",
                          hint="add a 32-block type such as Q8_0 to the profile's mix_types")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    measured: dict[str, int] = {}
    options = measure_errors(f16, imatrix, mats, types, scratch, on_progress=on_progress,
                             overhead=measured)
    seconds["errors"] = time.monotonic() - started
    started = time.monotonic()
    sensitivity = measure_sensitivity(f16, imatrix, mats, options, calibration_tokens, scratch,
                                      n_ctx=n_ctx, on_progress=on_progress)
    seconds["sensitivity"] = time.monotonic() - started
    found = Search(budget_bytes, {}, options, sensitivity, measured[""], seconds)
    found.assignment = choose(options, sensitivity, budget_bytes - found.overhead_bytes)
    if found.size_bytes() > budget_bytes:
        cheapest = found.size_bytes(cheapest_assignment(options))
        raise ConfigError(f"no {MIX} fits {budget_bytes / 1e6:.1f} MB: even the cheapest types "
                          f"take {cheapest / 1e6:.1f} MB",
                          hint="raise --size-budget or add a smaller type to mix_types")
    return found


def measure_errors(f16: Path, imatrix: Path, mats: Sequence[Matrix], types: Sequence[str],
                   scratch: Path, *, on_progress=None,
                   overhead: dict | None = None) -> dict[str, dict[str, tuple[int, float]]]:
    """tensor -> type -> (bytes in the file, imatrix-weighted relative error), one
    llama-quantize run per type, each tensor dequantised again with gguf-py. Bytes include
    the padding GGUF puts after each tensor. ``overhead[""]``, when given, receives the bytes of
    a quantised file outside its matrices (header, metadata, norms)."""
    overhead = {} if overhead is None else overhead
    import gguf

    importance = read_imatrix(imatrix)
    source = {t.name: t for t in gguf.GGUFReader(str(f16)).tensors}
    options: dict[str, dict[str, tuple[int, float]]] = {m.name: {} for m in mats}
    for i, qtype in enumerate(types):
        if on_progress:
            on_progress(f"error at {qtype}", i, len(types))
        recipe = {m.name: qtype for m in mats if qtype in allowed(m, [qtype])}
        if not recipe:
            continue
        out = scratch / f"probe-{qtype}.gguf"
        quantise_recipe(f16, out, recipe, imatrix)
        try:
            quantised = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
            for name in recipe:
                q = quantised[name]
                error = relative_error(source[name], q, importance.get(name))
                options[name][qtype] = (_padded(int(q.n_bytes)), error)
            if "" not in overhead:  # the first quantised file: its bytes outside the matrices
                overhead[""] = out.stat().st_size - sum(
                    _padded(int(quantised[n].n_bytes)) for n in options)
        finally:
            out.unlink(missing_ok=True)
    return options


def relative_error(source, quantised, importance) -> float:
    """``sum_j a_j sum_i (w_ij - q_ij)^2 / sum_j a_j sum_i w_ij^2`` over the whole tensor, in
    slices of rows; ``a`` is the imatrix column weight (uniform where the imatrix has none, as
    for a tied embedding, which llama-imatrix does not see as a matrix product)."""
    import numpy as np
    from gguf.quants import dequantize

    row = int(source.shape[0])
    w_all = np.asarray(source.data).reshape(-1, row)  # an F16 GGUF: F16/F32 values as stored
    q_bytes = np.asarray(quantised.data).reshape(w_all.shape[0], -1)
    a = np.ones(row) if importance is None else np.asarray(importance, dtype=np.float64)
    err = sig = 0.0
    for lo in range(0, w_all.shape[0], _ROWS_PER_SLICE):
        w = np.asarray(w_all[lo:lo + _ROWS_PER_SLICE], dtype=np.float32)
        q = dequantize(q_bytes[lo:lo + _ROWS_PER_SLICE], quantised.tensor_type).reshape(w.shape)
        err += float(((w - q) ** 2).sum(axis=0, dtype=np.float64) @ a)
        sig += float((w.astype(np.float64) ** 2).sum(axis=0) @ a)
    return err / sig if sig > 0 else 0.0


def read_imatrix(path: Path) -> dict[str, list[float]]:
    """tensor name -> mean squared input activation per column, from llama-imatrix's GGUF."""
    import gguf
    import numpy as np

    sums, counts = {}, {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[:-len(".in_sum2")]] = np.asarray(t.data, dtype=np.float64)
        elif t.name.endswith(".counts"):
            counts[t.name[:-len(".counts")]] = float(np.asarray(t.data).ravel()[0])
    return {name: s / max(counts.get(name, 1.0), 1.0) for name, s in sums.items()}


def measure_sensitivity(f16: Path, imatrix: Path, mats: Sequence[Matrix],
                        options: Mapping[str, Mapping[str, tuple[int, float]]],
                        tokens: Sequence[int], scratch: Path, *, n_ctx: int = 512,
                        on_progress=None) -> dict[str, float]:
    """kind -> KLD per unit of summed relative error, from one probe per kind on ``tokens``."""
    from edgetune.fidelity import compare_many

    kinds = sorted({m.kind for m in mats})
    rest = {m.name: _rest_type(options[m.name]) for m in mats}
    probes: dict[str, Path] = {"rest": scratch / "probe-rest.gguf"}
    low: dict[str, dict[str, str]] = {}
    for i, kind in enumerate(kinds):
        if on_progress:
            on_progress(f"sensitivity of {kind}", i, len(kinds) + 1)
        low[kind] = {m.name: _loudest(options[m.name]) for m in mats if m.kind == kind}
        probes[kind] = scratch / f"probe-{kind}.gguf"
        quantise_recipe(f16, probes[kind], {**rest, **low[kind]}, imatrix)
    quantise_recipe(f16, probes["rest"], rest, imatrix)
    if on_progress:
        on_progress("sensitivity: KLD of the probes", len(kinds), len(kinds) + 1)
    # Few calibration rows: shorter chunks rather than no probe (llama-perplexity's method
    # needs two chunks).
    n_ctx = max(min(n_ctx, len(tokens) // 2), 4)
    tokens = list(tokens)[:max(PROBE_CHUNKS, 2) * n_ctx]
    try:
        kld = {name: f.kld_mean for name, f in
               compare_many(f16, probes, tokens, n_ctx=n_ctx).items()}
    finally:
        for path in probes.values():
            path.unlink(missing_ok=True)
    sensitivity = {}
    for kind in kinds:
        extra_error = sum(options[n][t][1] - options[n][rest[n]][1] for n, t in low[kind].items())
        # A kind whose probe lands below the all-Q8_0 probe (noise) still gets a small weight.
        sensitivity[kind] = max(kld[kind] - kld["rest"], 1e-3 * kld[kind]) / max(extra_error, 1e-12)
    return sensitivity


def choose(options: Mapping[str, Mapping[str, tuple[int, float]]], sensitivity: Mapping[str, float],
           budget_bytes: int) -> dict[str, str]:
    """Greedy on each tensor's lower convex hull of (bytes, predicted KLD): start every tensor
    at its cheapest type, then take upgrades in order of predicted KLD saved per extra byte while
    they fit. Hull steps of one tensor have falling slopes, so they are taken in order."""
    assignment = cheapest_assignment(options)
    steps = []  # (saving per byte, tensor, from type, to type, extra bytes)
    for name, by_type in options.items():
        points = sorted((b, sensitivity[_kind(name)] * e, t) for t, (b, e) in by_type.items())
        hull = _lower_hull(points)
        for (b0, c0, t0), (b1, c1, t1) in zip(hull, hull[1:]):
            steps.append(((c0 - c1) / (b1 - b0), name, t0, t1, b1 - b0))
    used = sum(options[n][t][0] for n, t in assignment.items())
    for _gain, name, before, after, extra in sorted(steps, key=lambda s: -s[0]):
        if assignment[name] == before and used + extra <= budget_bytes:
            assignment[name] = after
            used += extra
    return assignment


def cheapest_assignment(options: Mapping[str, Mapping[str, tuple[int, float]]]) -> dict[str, str]:
    return {name: _cheapest(by_type) for name, by_type in options.items()}


def write_recipe(assignment: Mapping[str, str], path: Path) -> Path:
    """The ``--tensor-type-file``: one ``^name$=type`` per line (llama-quantize reads regexes,
    searched in order, first match wins; anchored names match exactly one tensor). The format
    has no comments: what chose the types is in the quant's metadata, not here."""
    lines = [f"^{re.escape(name)}$={qtype.lower()}" for name, qtype in sorted(assignment.items())]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def read_recipe(path: Path) -> dict[str, str]:
    recipe = {}
    for line in path.read_text(encoding="ascii").split():
        pattern, _, qtype = line.partition("=")
        recipe[pattern.strip("^$").replace("\\.", ".")] = qtype.upper()
    return recipe


def rebuild_command(f16: str, imatrix_name: str, recipe: str, out: str) -> str:
    """The llama-quantize command that rebuilds the mix bit for bit, run in the folder that
    holds the imatrix (named bare: llama-quantize writes that argument into the file)."""
    return (f"llama-quantize --imatrix {imatrix_name} --tensor-type-file {recipe} "
            f"{' '.join(_NAME_IT)} {f16} {out} {BASE_FTYPE}")


def imatrix_name(quant: str = MIX) -> str:
    """The imatrix's file name beside a mix: a GGUF by content, not by name (apps and the Hub
    list *.gguf files as models; llama-quantize reads it by content)."""
    return f"{quant}.imatrix"


def recipe_name(quant: str = MIX) -> str:
    return f"{quant}{RECIPE_SUFFIX}"


def quantise_recipe(f16: Path, out: Path, recipe: Mapping[str, str] | Path, imatrix: Path) -> None:
    """``llama-quantize --imatrix --tensor-type-file``: every named tensor gets its type."""
    binary, env = llamacpp.tool("llama-quantize")
    if isinstance(recipe, Path):
        recipe_file = recipe
    else:
        recipe_file = write_recipe(recipe, out.with_name(out.name + RECIPE_SUFFIX))
    try:
        # llama-quantize writes the --imatrix argument into the file (quantize.imatrix.file):
        # run beside the imatrix and name it bare, so a rebuild from the bundle's recipes/
        # folder writes the same bytes.
        run = llamacpp.run_tool([binary, "--imatrix", imatrix.name, "--tensor-type-file",
                                 Path(recipe_file).resolve(), *_NAME_IT, Path(f16).resolve(),
                                 Path(out).resolve(), BASE_FTYPE], env=env, cwd=imatrix.parent)
    finally:
        if recipe_file != recipe:
            recipe_file.unlink(missing_ok=True)
    if run.returncode != 0 or not out.is_file():
        tail = " ".join((run.stderr or run.stdout).strip().splitlines()[-2:])
        raise ToolchainError(f"llama-quantize failed on a {MIX} recipe: {tail}",
                             hint="check free disk space and that the F16 GGUF loads")


def _kind(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[2:]) if parts[0] == "blk" and len(parts) > 2 else name


def _row(mats: Sequence[Matrix], name: str) -> int:
    return next(m.row for m in mats if m.name == name)


def _cheapest(by_type: Mapping[str, tuple[int, float]]) -> str:
    return min(by_type, key=lambda t: (by_type[t][0], by_type[t][1]))


def _loudest(by_type: Mapping[str, tuple[int, float]]) -> str:
    """A probe's type: the fewest bytes, and of those the largest error, so the probe's KLD stands
    well above the noise of a few thousand tokens."""
    return min(by_type, key=lambda t: (by_type[t][0], -by_type[t][1]))


def _rest_type(by_type: Mapping[str, tuple[int, float]]) -> str:
    """Q8_0 where it was measured, else the most accurate candidate: the 'everything else' of a probe."""
    return PROBE_REST if PROBE_REST in by_type else min(by_type, key=lambda t: by_type[t][1])


def _lower_hull(points: list[tuple[int, float, str]]) -> list[tuple[int, float, str]]:
    """Points sorted by bytes -> the lower convex hull that descends (more bytes, less error)."""
    hull: list[tuple[int, float, str]] = []
    for p in points:
        if hull and p[1] >= hull[-1][1]:
            continue  # more bytes for no less error: never worth it
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(a, b, c) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _padded(n: int, alignment: int = 32) -> int:
    """A tensor's bytes in a GGUF file: its data padded to the file's alignment (GGUF's default
    32, which llama-quantize keeps)."""
    return -(-n // alignment) * alignment
