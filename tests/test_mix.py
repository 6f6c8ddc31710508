"""Q4_K_X (edgetune.mix): the choice under a budget, the recipe file, and a search on a real
llama.cpp quantiser whose recipe rebuilds the file byte for byte."""

from __future__ import annotations

import hashlib
import itertools
import shlex

import pytest

from edgetune import llamacpp, mix
from edgetune.artifacts import MergedModel
from edgetune.convert import convert
from edgetune.errors import ConfigError
from edgetune.fidelity import chat_tokens
from edgetune.imatrix import compute_imatrix, quantise_with_imatrix
from edgetune.profiles import parse_size_budget
from tests.conftest import chat_samples


def _options():
    # tensor -> type -> (bytes, relative error); "a" is cheap to fix, "b" expensive, "c" is an
    # embedding of another kind whose errors cost ten times more KLD.
    return {
        "blk.0.a.weight": {"Q4_0": (100, 0.010), "Q5_0": (120, 0.003), "Q8_0": (200, 0.0001)},
        "blk.0.b.weight": {"Q4_0": (100, 0.010), "Q5_0": (120, 0.009), "Q8_0": (200, 0.0001)},
        "token_embd.weight": {"Q4_0": (50, 0.010), "Q5_0": (60, 0.004), "Q8_0": (100, 0.0001)},
    }


SENSITIVITY = {"a.weight": 1.0, "b.weight": 1.0, "token_embd.weight": 10.0}


def _cost(options, assignment):
    return sum(SENSITIVITY[mix._kind(n)] * options[n][t][1] for n, t in assignment.items())


@pytest.mark.parametrize("budget", [250, 270, 300, 330, 400, 500])
def test_choose_fits_the_budget_and_matches_the_exhaustive_optimum(budget):
    options = _options()
    chosen = mix.choose(options, SENSITIVITY, budget)
    assert sum(options[n][t][0] for n, t in chosen.items()) <= budget
    best = min((dict(zip(options, combo)) for combo in itertools.product(*map(list, options.values()))
                if sum(options[n][t][0] for n, t in zip(options, combo)) <= budget),
               key=lambda a: _cost(options, a))
    assert _cost(options, chosen) == pytest.approx(_cost(options, best))


def test_choose_spends_on_the_sensitive_tensor_first():
    chosen = mix.choose(_options(), SENSITIVITY, 320)
    assert chosen["token_embd.weight"] == "Q8_0"  # 10x the KLD per unit of error
    assert chosen["blk.0.a.weight"] == "Q5_0"  # 0.007 saved for 20 bytes
    assert chosen["blk.0.b.weight"] == "Q4_0"  # 0.001 for 20 bytes: not worth it


def test_recipe_file_round_trips_and_names_each_tensor_exactly(tmp_path):
    assignment = {"blk.1.attn_q.weight": "Q5_0", "blk.11.attn_q.weight": "Q4_K",
                  "token_embd.weight": "Q8_0"}
    path = mix.write_recipe(assignment, tmp_path / "r.txt")
    lines = path.read_text().split()
    assert r"^blk\.1\.attn_q\.weight$=q5_0" in lines and len(lines) == 3
    assert mix.read_recipe(path) == assignment


def test_size_budget_spellings():
    assert parse_size_budget("1.2GB") == 1_200_000_000
    assert parse_size_budget("800 MiB") == 800 * 2**20
    assert parse_size_budget("q4_k_m") == "Q4_K_M" and parse_size_budget("RAM") == "ram"
    with pytest.raises(ConfigError, match="not a size"):
        parse_size_budget("big")


@pytest.fixture(scope="module")
def searched(tiny_model_factory, tmp_path_factory):
    """A search on a tiny llama (256-wide rows), with plain Q4_K_M's size as the budget."""
    from edgetune import hf

    folder = tiny_model_factory("llama")
    out = tmp_path_factory.mktemp("mix")
    texts = chat_samples(hf.load_tokenizer(folder), n=24)
    f16 = convert(MergedModel(path=folder), out / "gguf", name="tiny", parity_texts=texts).gguf
    imatrix = compute_imatrix(f16, texts, out / "imatrix.gguf", n_ctx=128)
    q4 = out / "q4km.gguf"
    quantise_with_imatrix(f16, q4, "Q4_K_M", imatrix)
    tokens = chat_tokens(f16, texts)
    work = out / "work"
    work.mkdir()
    found = mix.search(f16, imatrix, tokens, mix_types(), q4.stat().st_size, work, n_ctx=64)
    return found, f16, imatrix, q4, out


def mix_types():
    from edgetune.profiles import DEFAULT_MIX_TYPES

    return DEFAULT_MIX_TYPES


def test_search_fits_the_budget_with_types_that_fit_the_rows(searched):
    found, f16, _imatrix, q4, out = searched
    mats = {m.name: m for m in mix.matrices(f16)}
    assert set(found.assignment) == set(mats)
    for name, qtype in found.assignment.items():
        assert mats[name].row % mix.BLOCK[qtype] == 0, (name, qtype)  # no silent fallback
    assert found.size_bytes() <= q4.stat().st_size
    assert set(found.sensitivity) == {m.kind for m in mats.values()}
    assert all(s > 0 for s in found.sensitivity.values())
    assert not list((out / "work").iterdir())  # probes cleaned up


def test_predicted_size_is_the_real_size_and_the_recipe_rebuilds_byte_for_byte(searched, tmp_path):
    """The recipe + the F16 + the imatrix, through the command written in the manifest, give
    the same file again: the same bytes."""
    import subprocess

    found, f16, imatrix, _q4, _out = searched
    recipe = mix.write_recipe(found.assignment, tmp_path / mix.recipe_name())
    first = tmp_path / "first.gguf"
    mix.quantise_recipe(f16, first, recipe, imatrix)
    assert first.stat().st_size == found.size_bytes()
    from edgetune.gguf_eval import read_gguf

    assert read_gguf(first).quant == mix.MIX  # named in the file: its file_type is Q4_K_M's
    elsewhere = tmp_path / "elsewhere"  # another folder, as a reader of the bundle has
    elsewhere.mkdir()
    for src, name in ((f16, f16.name), (imatrix, imatrix.name), (recipe, recipe.name)):
        (elsewhere / name).symlink_to(src)
    binary, env = llamacpp.tool("llama-quantize")
    command = mix.rebuild_command(f16.name, imatrix.name, recipe.name, "again.gguf")
    args = shlex.split(command)
    assert args[0] == "llama-quantize"
    run = subprocess.run([str(binary), *args[1:]], cwd=elsewhere, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-500:]

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert digest(elsewhere / "again.gguf") == digest(first)


def test_unknown_mix_type_is_a_clear_error(searched, tmp_path):
    _found, f16, imatrix, _q4, _out = searched
    with pytest.raises(ConfigError, match="unknown mix type Q9_9"):
        mix.search(f16, imatrix, [], ("Q4_0", "Q9_9"), 10**9, tmp_path)


def test_rows_that_are_not_multiples_of_256_get_only_types_that_fit():
    """A 576-wide row (SmolLM2) cannot hold a K-quant: llama.cpp would silently fall back, so
    the search never offers one there; 1536-wide rows can."""
    narrow, wide = mix.Matrix("blk.0.attn_q.weight", 576, "attn_q.weight"), \
        mix.Matrix("blk.0.ffn_down.weight", 1536, "ffn_down.weight")
    assert mix.allowed(narrow, mix_types()) == ["Q4_0", "Q5_0", "Q8_0"]
    assert mix.allowed(wide, mix_types()) == list(mix_types())
    assert mix.allowed(narrow, ("Q4_K", "Q6_K")) == []


def test_the_bundles_recipe_rebuilds_the_shipped_gguf_byte_for_byte(demo_build, tmp_path):
    """The demo build's bundle (phone target) ships Q4_K_X (it beats Q4_K_M on the demo) with
    its recipe; the manifest's command, run as written on a copy of the bundle with the build's
    F16 GGUF, gives the shipped file's sha256."""
    import json
    import shutil
    import subprocess

    out, _pub, _result = demo_build
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bundle)
    manifest = json.loads((bundle / "edgetune.json").read_text())
    verdict = json.loads((bundle / "eval.json").read_text())["quants"][mix.MIX]["mix"]
    assert verdict["ships"], verdict["why"]
    art = next(a for a in manifest["artifacts"] if a["quant"] == mix.MIX)
    recipe = art["recipe"]
    assert (bundle / recipe["tensor_types"]).is_file() and (bundle / recipe["imatrix"]).is_file()
    (bundle / art["path"]).unlink()  # rebuilt from nothing but the recipe, the imatrix and F16
    (bundle / "MODEL-F16.gguf").symlink_to(next((out / "gguf").glob("*-F16.gguf")))
    binary, env = llamacpp.tool("llama-quantize")
    folder, _, command = recipe["command"].partition(" && ")
    assert folder == "cd recipes" and command.startswith("llama-quantize ")
    run = subprocess.run([str(binary), *shlex.split(command)[1:]], cwd=bundle / "recipes",
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-500:]
    assert hashlib.sha256((bundle / art["path"]).read_bytes()).hexdigest() == art["sha256"]
    readme = (bundle / "README.md").read_text()
    assert f"{-verdict['kld_change']:.0%} lower" in readme  # the card's one sentence
