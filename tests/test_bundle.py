"""Bundles built from small fake GGUFs, signed with real keys; no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from edgetune.artifacts import Bundle
from edgetune.bundle import (
    GATED_EMAIL_FIELD,
    MANIFEST_FILE,
    BundleInfo,
    BundleModel,
    build_bundle,
    gguf_file_name,
    resign_bundle,
    schema_path,
    stamp_distribution,
    verify_bundle,
)
from edgetune.bundle.build import bundle_persona_files
from edgetune.bundle.card import model_card, readable_results
from edgetune.errors import (
    ConfigError,
    EdgetuneError,
    KeyFileError,
    ModelError,
    OutputExistsError,
    VerificationError,
)
from edgetune.signing import SIGNATURE_FILE, sign_bundle
from edgetune.keys import generate_keypair, key_id_of

QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0")
GGUFS = [f"edgetune-demo-{q}.gguf" for q in QUANTS]
PERSONA_FILES = ["Modelfile", "template", "system", "params", "personas/pocketpal-pal.json",
                 "personas/character-card-v2.json", "personas/llmfarm-chat.json"]
DOCS = ["edgetune.json", "README.md", "eval.json", "eval.md", "eval.png", "reward.png",
        "report.html"]
EXPECTED_FILES = sorted([*GGUFS, *DOCS, *PERSONA_FILES, SIGNATURE_FILE])


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


PASSPHRASE = "correct horse battery staple"
# the shape edgetune.evaluate writes (metric names included), plus a NaN
EVAL = {"context_length": 40960, "eval_ctx": 512, "bad": float("nan"),
        "quants": {q: {"file": f"m-{q}.gguf", "size_bytes": 4096 * (i + 1), "ppl": 9.5 + i,
                       "prefill_tps": 300.0 - 10 * i, "decode_tps": 40.0 - i, "threads": 4,
                       "ram_needed_bytes": 10**9, "ppl_ratio": 1.0 + i / 10}
                   for i, q in enumerate(QUANTS)}}


def _info(**changes) -> BundleInfo:
    fields = dict(
        name="edgetune-demo", bundle_id="edgetune-demo", version="1.2.0-rc.1+build.5",
        creator_name="Ada | Coach", base_model="Qwen/Qwen3-0.6B", base_model_license="apache-2.0",
        chat_template="{% for m in messages %}{{ m.content }}{% endfor %}",
        stop_strings=("<|im_end|>",), default_context=4096,
        system_prompt="You are Ada's running coach.\nThink step by step.",
        greeting='Hi! Ask me "anything" about running: pace, shoes...',
        training={"method": "grpo", "backend": "trl", "steps": 120, "dataset_rows": 48,
                  "rewards": ["format", "answer_match"], "lora_rank": 16},
        eval_results=EVAL, training_log=LOG)
    fields.update(changes)
    return BundleInfo(**fields)


# the shape of a GRPO training_log.jsonl (edgetune.training.trainer): settings, steps, a health warning
LOG = ({"step": 0, "event": "config", "method": "grpo", "backend": "trl", "device": "cpu",
        "loss_type": "dapo", "beta": 0.0},
       *({"step": s, "loss": 0.01 * s, "reward": 1.0 + 0.25 * s, "rewards/format/mean": 0.5,
          "rewards/answer_match/mean": 0.5 + 0.25 * s} for s in (1, 2, 3)),
       {"step": 3, "event": "warning", "code": "no_signal", "message": "rewards <all> equal"})


def _gguf(path: Path, seed: int, size: int = 5000) -> Path:
    path.write_bytes(b"GGUF" + hashlib.sha256(str(seed).encode()).digest() * (size // 32))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    return generate_keypair(tmp_path_factory.mktemp("keys"), "creator")


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory):
    return generate_keypair(tmp_path_factory.mktemp("other"), "other")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[BundleModel]:
    src = tmp_path_factory.mktemp("quantised")
    return [BundleModel(q, _gguf(src / f"model-{q}.gguf", i, 4000 + 1000 * i), "qwen3", 40960,
                        (i + 1) * 500_000_000) for i, q in enumerate(QUANTS)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, keys, models) -> Bundle:
    return build_bundle(tmp_path_factory.mktemp("built") / "bundle", _info(), models,
                        private_key=keys.private_key)


@pytest.fixture
def bundle(built: Bundle, tmp_path: Path) -> Path:
    """A fresh copy of the built bundle that a test may tamper with."""
    return Path(shutil.copytree(built.path, tmp_path / "bundle"))


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_FILE).read_text())


def _resign(bundle: Path, keys, manifest: dict | str) -> None:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest, indent=2)
    (bundle / MANIFEST_FILE).write_text(text)
    sign_bundle(bundle, keys.private_key)


def _fails(bundle: Path, pub: Path) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify_bundle(bundle, pub)
    return info.value


def _no_leftovers(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


# --- schema -----------------------------------------------------------------------------------

def test_schema_file_is_a_valid_draft_2020_12_schema():
    schema = json.loads(schema_path().read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["artifact"]["additionalProperties"] is False


@pytest.mark.parametrize("path, ok", [
    ("m.gguf", True), ("models/m.gguf", True), ("..m.gguf", True),
    ("../x.gguf", False), ("/etc/passwd", False), ("a/../../x.gguf", False), ("a\\b.gguf", False),
    ("./m.gguf", False), ("a//m.gguf", False), ("m.gguf\n", False), ("", False)])
def test_schema_artifact_path_pattern(built: Bundle, path: str, ok: bool):
    validator = Draft202012Validator(json.loads(schema_path().read_text()))
    manifest = _manifest(built.path)
    manifest["artifacts"][0]["path"] = path
    assert validator.is_valid(manifest) is ok


def test_schema_rejects_extra_keys_but_training_is_open(built: Bundle):
    validator = Draft202012Validator(json.loads(schema_path().read_text()))
    manifest = _manifest(built.path)
    assert validator.is_valid(manifest) and "lora_rank" in manifest["training"]
    for target in (manifest, manifest["artifacts"][1]):
        target["surprise"] = 1
        assert not validator.is_valid(manifest)
        del target["surprise"]
    manifest["artifacts"] = []
    assert not validator.is_valid(manifest)


# --- build ------------------------------------------------------------------------------------

def test_gguf_file_name_is_sanitised():
    assert gguf_file_name("edgetune-demo", "Q4_K_M") == "edgetune-demo-Q4_K_M.gguf"
    assert gguf_file_name("Ada's coach / v2", "Q8_0") == "Ada-s-coach-v2-Q8_0.gguf"
    assert gguf_file_name("../../etc", "Q4_K_M") == "etc-Q4_K_M.gguf"
    with pytest.raises(ConfigError):
        gguf_file_name("..", "Q4_K_M")


def test_layout_and_returned_artifact(built: Bundle, keys):
    assert _files(built.path) == EXPECTED_FILES
    assert stat.S_IMODE(built.path.stat().st_mode) == 0o755  # shareable, not mkdtemp's 0700
    assert stat.S_IMODE((built.path / "personas").stat().st_mode) == 0o755
    assert {stat.S_IMODE((built.path / f).stat().st_mode) for f in EXPECTED_FILES} == {0o644}
    assert built.key_id == key_id_of(keys.public_key)
    assert (built.bundle_id, built.version) == ("edgetune-demo", "1.2.0-rc.1+build.5")
    _no_leftovers(built.path.parent)


def test_persona_files_point_at_the_bundle_and_its_persona(built: Bundle):
    """Every app's persona file is listed in the manifest and uses the bundle's Q4_K_M model."""
    manifest = _manifest(built.path)
    persona = manifest["persona"]
    assert sorted(persona["files"].values()) == sorted(PERSONA_FILES)
    assert persona["files"]["pocketpal"] == "personas/pocketpal-pal.json"
    modelfile = (built.path / "Modelfile").read_text()
    q4 = next(a["path"] for a in manifest["artifacts"] if a["quant"] == "Q4_K_M")
    assert f"FROM ./{q4}\n" in modelfile and (built.path / q4).is_file()
    assert (built.path / "system").read_text() == persona["system_prompt"]
    pal = json.loads((built.path / "personas/pocketpal-pal.json").read_text())
    assert pal["systemPrompt"] == persona["system_prompt"] and pal["name"] == persona["name"]
    card = json.loads((built.path / "personas/character-card-v2.json").read_text())
    assert card["data"]["first_mes"] == persona["greeting"]


def test_manifest_content_matches_files(built: Bundle, models, keys):
    manifest = _manifest(built.path)
    Draft202012Validator(json.loads(schema_path().read_text())).validate(manifest)
    assert manifest["creator"] == {"name": "Ada | Coach", "key_id": key_id_of(keys.public_key)}
    assert [a["path"] for a in manifest["artifacts"]] == GGUFS
    for art, model in zip(manifest["artifacts"], models):
        data = model.source.read_bytes()
        assert (built.path / art["path"]).read_bytes() == data
        assert art["sha256"] == hashlib.sha256(data).hexdigest() and art["size"] == len(data)
        assert (art["quant"], art["ram_needed_bytes"]) == (model.quant, model.ram_needed_bytes)
    assert manifest["runtime"]["chat_template_sha256"] == hashlib.sha256(
        _info().chat_template.encode()).hexdigest()
    assert manifest["eval"]["quants"]["Q4_K_M"] == EVAL["quants"]["Q4_K_M"]
    assert (manifest["eval"]["eval_ctx"], manifest["eval"]["file"]) == (512, "eval.json")
    assert manifest["eval"]["bad"] is None  # NaN is not JSON
    saved = json.loads((built.path / "eval.json").read_text())
    assert saved["quants"]["Q8_0"]["ppl"] == 11.5 and saved["bad"] is None


def test_model_card_front_matter_and_sections(built: Bundle, keys):
    card = (built.path / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {"license": "apache-2.0", "base_model": "Qwen/Qwen3-0.6B",
                     "base_model_relation": "finetune", "quantized_by": "Ada | Coach",
                     "pipeline_tag": "text-generation", "tags": ["gguf", "edgetune", "reasoning"]}
    for text in ("## Files", "| `edgetune-demo-Q5_K_M.gguf` | Q5_K_M | 4.9 KiB | 953.7 MiB |",
                 "| Q8_0 | 12.0 KiB | 953.7 MiB | 11.50 | 1.2000 | - | - | - | - | - | - | 280 | 38 "
                 "| - | - | - | - |",
                 "ollama run", "PocketPal",
                 "llama-cli -m edgetune-demo-Q4_K_M.gguf", "edgetune verify . --key creator.pub",
                 key_id_of(keys.public_key), "Ada \\| Coach"):
        assert text in card
    evaluation = card.split("## Evaluation\n\n", 1)[1].split("\n## ", 1)[0]
    table = (built.path / "eval.md").read_text()
    assert evaluation.startswith(table)  # the card shows eval.md, then the chart
    assert "![Size vs KL divergence vs decode speed](eval.png)" in evaluation
    # largest quant first, as in eval.md
    assert [line.split(" | ")[0] for line in table.splitlines()[2:5]] == ["| Q8_0", "| Q5_K_M",
                                                                          "| Q4_K_M"]
    assert (built.path / "eval.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_model_card_accepts_a_list_of_quants_and_missing_results(tmp_path: Path, keys, models):
    listed = {"quants": [{"quant": "Q4_K_M", "ppl": 7.25, "prefill_tps": 99.5}]}
    bundle = build_bundle(tmp_path / "a", _info(eval_results=listed), models[:1],
                          private_key=keys.private_key).path
    row = "| Q4_K_M | - | - | 7.25 | - | - | - | - | - | - | - | 100 | - | - | - | - | - |"
    assert row in (bundle / "README.md").read_text() and row in (bundle / "eval.md").read_text()
    bundle = build_bundle(tmp_path / "b", _info(eval_results={}), models[:1],
                          private_key=keys.private_key).path
    card = (bundle / "README.md").read_text()
    assert "No per-quant results" in card and "| PPL |" not in card and "eval.png" not in card
    assert _files(bundle) == sorted([GGUFS[0], *DOCS, *PERSONA_FILES, SIGNATURE_FILE])
    assert verify_bundle(bundle, keys.public_key).files == 8 + len(PERSONA_FILES)


def test_report_page_and_reward_chart_are_signed_and_show_the_bundle(built: Bundle, keys,
                                                                    tmp_path: Path):
    from edgetune.report import html_report, reward_chart

    page = (built.path / "report.html").read_text()
    manifest = _manifest(built.path)
    listed = sorted((f, (built.path / f).stat().st_size) for f in EXPECTED_FILES
                    if f not in ("report.html", SIGNATURE_FILE))
    files = sorted([*listed, ("report.html", None), (SIGNATURE_FILE, None)])
    # exactly the page html_report draws from the manifest, eval.json and the log
    readable = {**json.loads((built.path / "eval.json").read_text()), "quants": EVAL["quants"]}
    assert page == html_report(manifest, readable, LOG, files)
    for path, size in listed:  # every other file, with its size
        assert f"<td><code>{path}</code></td>" in page and f">{size:,}</td>" in page
    assert manifest["created"] in page and "Ada | Coach" in page
    assert '<img src="reward.png"' in page and '<img src="eval.png"' in page
    assert "rewards &lt;all&gt; equal" in page  # the log's warning, escaped
    assert (built.path / "reward.png").read_bytes() == \
        reward_chart(LOG, tmp_path / "r.png").read_bytes()
    card = (built.path / "README.md").read_text()
    assert "[`report.html`](report.html)" in card
    assert verify_bundle(built.path, keys.public_key).files == len(EXPECTED_FILES) - 1


def test_hostile_names_are_escaped_in_the_report_page(tmp_path: Path, keys, models):
    hostile = '<script>alert("x")</script>'
    bundle = build_bundle(tmp_path / "b", _info(creator_name=hostile, persona_name=hostile,
                                                training_log=()), models[:1],
                          private_key=keys.private_key).path
    page = (bundle / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "No training log was recorded." in page
    assert (bundle / "reward.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert verify_bundle(bundle, keys.public_key).files == 8 + len(PERSONA_FILES)


def test_official_model_signing_cli_accepts_bundle(built: Bundle, keys):
    cli = Path(sys.executable).parent / "model_signing"
    run = subprocess.run([str(cli), "verify", "key", str(built.path), "--signature",
                          str(built.path / SIGNATURE_FILE), "--public_key", str(keys.public_key)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_refuses_existing_output_unless_overwrite(built: Bundle, tmp_path: Path, keys, models):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        build_bundle(out, _info(), models, private_key=keys.private_key)
    assert (out / "keep.txt").read_text() == "mine"
    messages: list[str] = []
    result = build_bundle(out, _info(version="2.0.0"), models[:1], private_key=keys.private_key,
                          overwrite=True, on_progress=messages.append)
    assert _files(out) == sorted([GGUFS[0], *DOCS, *PERSONA_FILES, SIGNATURE_FILE])
    assert verify_bundle(out, keys.public_key).version == result.version == "2.0.0"
    assert messages[-1] == "signing"
    _no_leftovers(tmp_path)


def test_missing_source_leaves_nothing(tmp_path: Path, keys, models):
    gone = BundleModel("Q6_K", tmp_path / "nope.gguf", "qwen3", 40960, 1)
    with pytest.raises(ModelError, match="not found"):
        build_bundle(tmp_path / "out", _info(), [*models, gone], private_key=keys.private_key)
    assert os.listdir(tmp_path) == []


def test_failure_mid_build_leaves_nothing(tmp_path: Path, keys, models):
    seen: list[str] = []

    def progress(msg: str) -> None:
        seen.append(msg)
        if msg == "signing":  # every file is already written into the scratch dir
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        build_bundle(tmp_path / "out", _info(), models, private_key=keys.private_key,
                     on_progress=progress)
    assert len(seen) == 5 and os.listdir(tmp_path) == []


def test_not_a_gguf_and_bad_settings_are_refused(tmp_path: Path, keys, models):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04not a gguf")
    with pytest.raises(ModelError, match="not a GGUF"):
        build_bundle(tmp_path / "o", _info(), [BundleModel("Q4_K_M", fake, "qwen3", 4096, 1)],
                     private_key=keys.private_key)
    for bad, field in ((_info(bundle_id="Bad ID"), "bundle_id"), (_info(version="1.0"), "version"),
                       (_info(training={"method": "grpo"}), "training")):
        with pytest.raises(ConfigError, match=field):
            build_bundle(tmp_path / "o", bad, models, private_key=keys.private_key)
    with pytest.raises(ConfigError, match="same file name"):
        build_bundle(tmp_path / "o", _info(), [models[0], models[0]], private_key=keys.private_key)
    assert os.listdir(tmp_path) == ["fake.gguf"]


def test_passphrase_key(tmp_path: Path, models):
    kp = generate_keypair(tmp_path / "k", "enc", passphrase=PASSPHRASE)
    with pytest.raises(KeyFileError) as info:
        build_bundle(tmp_path / "o", _info(), models, private_key=kp.private_key,
                     passphrase="wrong " + PASSPHRASE)
    assert PASSPHRASE not in str(info.value) + str(info.value.hint)
    assert not (tmp_path / "o").exists()
    built = build_bundle(tmp_path / "o", _info(), models, private_key=kp.private_key,
                         passphrase=PASSPHRASE)
    assert built.key_id == key_id_of(kp.public_key)
    assert verify_bundle(tmp_path / "o", kp.public_key).key_id == built.key_id


# --- verify -----------------------------------------------------------------------------------

def test_verify_passes(built: Bundle, keys):
    result = verify_bundle(built.path, keys.public_key)
    assert (result.bundle_id, result.version, result.key_id) == (
        "edgetune-demo", "1.2.0-rc.1+build.5", key_id_of(keys.public_key))
    assert result.files == len(EXPECTED_FILES) - 1
    assert result.bytes == sum((built.path / f).stat().st_size for f in EXPECTED_FILES
                               if f != SIGNATURE_FILE)


@pytest.mark.parametrize("name", [*GGUFS, *DOCS])
def test_flipped_byte_in_any_file_fails(bundle: Path, keys, name: str):
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (name, 5)


@pytest.mark.parametrize("where", ["middle", "signature"])
def test_flipped_byte_in_signature_fails(bundle: Path, keys, where: str):
    sig = bundle / SIGNATURE_FILE
    data = bytearray(sig.read_bytes())
    if where == "middle":
        pos = len(data) // 2
    else:
        value = json.loads(data)["dsseEnvelope"]["signatures"][0]["sig"]
        pos = data.index(value.encode()) + 10
    data[pos] = ord("A") if data[pos] != ord("A") else ord("B")
    sig.write_bytes(bytes(data))
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (SIGNATURE_FILE, 4)


def test_wrong_key_fails(built: Bundle, other_keys):
    err = _fails(built.path, other_keys.public_key)
    assert (err.path, err.exit_code) == (SIGNATURE_FILE, 4)


def test_signing_errors_pass_through(bundle: Path, keys):
    (bundle / "notes.txt").write_text("extra")
    assert _fails(bundle, keys.public_key).exit_code == 6
    (bundle / "notes.txt").unlink()
    (bundle / GGUFS[0]).unlink()
    os.symlink(bundle / GGUFS[1], bundle / GGUFS[0])
    assert _fails(bundle, keys.public_key).exit_code == 8


def test_missing_bundle_folder(tmp_path: Path, keys):
    with pytest.raises(EdgetuneError, match="not found"):
        verify_bundle(tmp_path / "absent", keys.public_key)


@pytest.mark.parametrize("bad", ["../x.gguf", "/etc/passwd", "sub/../../x.gguf", "..\\x.gguf"])
def test_resigned_path_escape_fails_with_10(bundle: Path, keys, bad: str):
    manifest = _manifest(bundle)
    manifest["artifacts"][1]["path"] = bad
    _resign(bundle, keys, manifest)
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (bad, 10)


def _tamper_sha(m: dict) -> None:
    m["artifacts"][0]["sha256"] = hashlib.sha256(b"other").hexdigest()


def _tamper_size(m: dict) -> None:
    m["artifacts"][0]["size"] += 1


def _unlist(m: dict) -> None:
    m["artifacts"].pop(0)


def _ghost(m: dict) -> None:
    m["artifacts"][0]["path"] = "ghost.gguf"


def _twice(m: dict) -> None:
    m["artifacts"].append(dict(m["artifacts"][0]))


@pytest.mark.parametrize("tamper", [_tamper_sha, _tamper_size, _unlist, _ghost, _twice])
def test_resigned_artifact_mismatch_fails_with_11(bundle: Path, keys, tamper):
    manifest = _manifest(bundle)
    tamper(manifest)
    _resign(bundle, keys, manifest)
    err = _fails(bundle, keys.public_key)
    assert err.exit_code == 11
    assert err.path == ("ghost.gguf" if tamper is _ghost else GGUFS[0])


@pytest.mark.parametrize("change, field", [
    (lambda m: m.pop("persona"), "persona"),
    (lambda m: m.update(schema_version="2.0"), "schema_version"),
    (lambda m: m["artifacts"][2].update(sha256="XYZ"), "artifacts[2].sha256"),
    (lambda m: m["artifacts"][0].update(path="./" + GGUFS[0]), "artifacts[0].path"),
    (lambda m: m.update(extra=True), "extra")])
def test_resigned_schema_invalid_manifest_fails_with_9(bundle: Path, keys, change, field):
    manifest = _manifest(bundle)
    change(manifest)
    _resign(bundle, keys, manifest)
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (MANIFEST_FILE, 9)
    assert field in err.message


def test_resigned_unparsable_or_missing_manifest_fails_with_9(bundle: Path, keys):
    _resign(bundle, keys, "{not json")
    assert _fails(bundle, keys.public_key).exit_code == 9
    (bundle / MANIFEST_FILE).unlink()
    sign_bundle(bundle, keys.private_key)
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (MANIFEST_FILE, 9)


def test_resigned_foreign_key_id_fails_with_4(bundle: Path, keys, other_keys):
    manifest = _manifest(bundle)
    manifest["creator"]["key_id"] = key_id_of(other_keys.public_key)
    _resign(bundle, keys, manifest)
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (MANIFEST_FILE, 4)


# --- model card metadata ----------------------------------------------------------------------

REPO = "ada/coach-GGUF"


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _card(built: Bundle, **changes) -> str:
    """The card of the built bundle's manifest with ``changes`` (dotted keys) applied."""
    manifest = _manifest(built.path)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        target = manifest
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    assert Draft202012Validator(json.loads(schema_path().read_text())).is_valid(manifest)
    results = json.loads((built.path / "eval.json").read_text())
    return model_card(manifest, readable_results(results))


def test_model_card_is_drawn_from_the_manifest_and_eval_json(built: Bundle):
    """What stamp_distribution relies on: the card comes back byte for byte from the files."""
    assert _card(built) == (built.path / "README.md").read_text()
    assert "gated" not in _manifest(built.path)["distribution"]  # as before the field existed


@pytest.mark.parametrize("base, hub", [
    ("Qwen/Qwen3-0.6B", True), ("meta-llama/Llama-3.2-1B-Instruct", True),
    ("edgetune-demo-base (built locally)", False), ("/home/ada/models/base", False),
    ("./base", False), ("../models/base", False), ("ada--x/base", False), ("ada/base.", False),
    ("ada/bäse", False), ("Qwen3-0.6B", False)])
def test_card_names_a_base_model_only_when_it_is_a_hub_id(built: Bundle, base: str, hub: bool):
    front = _front(_card(built, **{"base_model.name": base}))
    assert ("base_model" in front, "base_model_relation" in front) == (hub, hub)
    if hub:
        assert (front["base_model"], front["base_model_relation"]) == (base, "finetune")
    assert front["license"] == "apache-2.0" and front["quantized_by"] == "Ada | Coach"
    assert front["pipeline_tag"] == "text-generation"


def test_card_quotes_hostile_creator_names_as_yaml(built: Bundle):
    name = 'Ada "the coach": #1 \\ ünï\n- x: y'
    front = _front(_card(built, **{"creator.name": name, "distribution.hf_repo": REPO,
                                   "distribution.gated": True}))
    assert front["quantized_by"] == name and name in front["extra_gated_prompt"]


def test_gated_card_has_the_access_form(built: Bundle):
    open_card = _front(_card(built, **{"distribution.hf_repo": REPO}))
    assert not any(k.startswith("extra_gated") for k in open_card)
    card = _card(built, **{"distribution.hf_repo": REPO, "distribution.gated": True})
    front = _front(card)
    assert front["extra_gated_fields"] == {GATED_EMAIL_FIELD: "text"}
    assert front["extra_gated_button_content"] == "Request access"
    prompt = front["extra_gated_prompt"]
    assert "Ada | Coach" in prompt and "paying followers" in prompt and "by hand" in prompt
    assert "HF_TOKEN" in card and "PocketPal" in card
    # metadata only when the manifest says gated, whatever the repo
    assert "extra_gated_prompt" not in _front(_card(built, **{"distribution.gated": False}))


def test_card_usage_downloads_from_the_repo(built: Bundle, keys):
    card = _card(built, **{"distribution.hf_repo": REPO})
    for text in (f"llama-cli -hf {REPO}:Q4_K_M -cnv -c 4096", f"ollama run hf.co/{REPO}:Q4_K_M",
                 f"lms get {REPO}", "Add from Hugging Face", f"search `{REPO}`",
                 f"edgetune pull {REPO}:Q4_K_M --key creator.pub",
                 "edgetune verify . --key creator.pub", "model_signing verify key .",
                 key_id_of(keys.public_key)):
        assert text in card, text
    assert "<user>" not in card and "llama-cli -m" not in card and "HF_TOKEN" not in card
    local = (built.path / "README.md").read_text()  # no repo: the local files
    assert "llama-cli -m edgetune-demo-Q4_K_M.gguf" in local and "hf.co/<user>/<repo>" in local
    assert "edgetune pull" not in local and "Add Local Model" in local


def test_build_stamps_repo_and_gated(tmp_path: Path, keys, models):
    bundle = build_bundle(tmp_path / "g", _info(hf_repo=REPO, gated=True), models[:1],
                          private_key=keys.private_key).path
    assert _manifest(bundle)["distribution"] == {"hf_repo": REPO, "gated": True,
                                                 "licence_required": False,
                                                 "verify_with": "model.sig"}
    front = _front((bundle / "README.md").read_text())
    assert front["extra_gated_fields"] == {GATED_EMAIL_FIELD: "text"}
    pal = json.loads((bundle / "personas/pocketpal-pal.json").read_text())
    assert pal["defaultModel"]["id"] == f"{REPO}/{GGUFS[0]}"
    assert verify_bundle(bundle, keys.public_key).missing == ()


# --- stamp_distribution -----------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {rel: ((folder / rel).read_bytes(), (folder / rel).stat().st_mtime_ns)
            for rel in _files(folder)}


def _listed_files(bundle: Path) -> list[tuple[str, int | None]]:
    listed = [(f, (bundle / f).stat().st_size) for f in _files(bundle)
              if f not in ("report.html", SIGNATURE_FILE)]
    return sorted([*listed, ("report.html", None), (SIGNATURE_FILE, None)])


def test_stamp_distribution_sets_repo_and_resigns(bundle: Path, keys):
    from edgetune.report import html_report

    before = _snapshot(bundle)
    assert stamp_distribution(bundle, hf_repo=REPO, gated=True,
                              private_key=keys.private_key) is True
    manifest = _manifest(bundle)
    assert manifest["distribution"] == {"hf_repo": REPO, "gated": True,
                                        "licence_required": False, "verify_with": "model.sig"}
    assert verify_bundle(bundle, keys.public_key).files == len(EXPECTED_FILES) - 1
    pal_file = "personas/pocketpal-pal.json"
    pal = json.loads((bundle / pal_file).read_text())
    assert pal["defaultModel"] == {"id": f"{REPO}/edgetune-demo-Q4_K_M.gguf", "author": "ada",
                                   "name": "edgetune-demo-Q4_K_M",
                                   "filename": "edgetune-demo-Q4_K_M.gguf"}
    # the same bytes as a bundle built for the repo
    assert (bundle / pal_file).read_bytes() == \
        bundle_persona_files(_info(hf_repo=REPO), "edgetune-demo-Q4_K_M.gguf")[pal_file]
    readable = readable_results(json.loads((bundle / "eval.json").read_text()))
    card = (bundle / "README.md").read_text()
    assert card == model_card(manifest, readable)
    assert f"llama-cli -hf {REPO}:Q4_K_M" in card and "extra_gated_prompt" in card
    # report.html lists the new sizes, as if drawn for this bundle
    assert (bundle / "report.html").read_text() == \
        html_report(manifest, readable, LOG, _listed_files(bundle))
    after = _snapshot(bundle)
    changed = {rel for rel in after if after[rel][0] != before[rel][0]}
    assert changed == {MANIFEST_FILE, "README.md", pal_file, "report.html", SIGNATURE_FILE}
    assert all(after[g] == before[g] for g in GGUFS)  # not copied again
    assert {stat.S_IMODE((bundle / f).stat().st_mode) for f in EXPECTED_FILES} == {0o644}
    _no_leftovers(bundle)
    # once more with the same values: nothing is written, not even a timestamp
    assert stamp_distribution(bundle, hf_repo=REPO, gated=True,
                              private_key=keys.private_key) is False
    assert _snapshot(bundle) == after


def test_stamp_distribution_ungates_and_keeps_licence_required(bundle: Path, keys):
    manifest = _manifest(bundle)
    manifest["distribution"]["licence_required"] = True
    _resign(bundle, keys, manifest)
    assert stamp_distribution(bundle, hf_repo=REPO, gated=True, private_key=keys.private_key)
    assert stamp_distribution(bundle, hf_repo="bob/coach", gated=False,
                              private_key=keys.private_key)
    assert _manifest(bundle)["distribution"] == {"hf_repo": "bob/coach",
                                                 "licence_required": True,
                                                 "verify_with": "model.sig"}
    card = (bundle / "README.md").read_text()
    assert "extra_gated" not in card and "ollama run hf.co/bob/coach:Q4_K_M" in card
    pal = json.loads((bundle / "personas/pocketpal-pal.json").read_text())
    assert pal["defaultModel"]["id"] == "bob/coach/edgetune-demo-Q4_K_M.gguf"
    verify_bundle(bundle, keys.public_key)


@pytest.mark.parametrize("repo, gated", [("no-slash", False), ("a/b/c", False),
                                         ("ada/coach\n", False), ("ädä/coach", False),
                                         (REPO, "manual")])
def test_stamp_distribution_refuses_bad_values_and_writes_nothing(bundle: Path, keys, repo,
                                                                  gated):
    before = _snapshot(bundle)
    with pytest.raises(ConfigError):
        stamp_distribution(bundle, hf_repo=repo, gated=gated, private_key=keys.private_key)
    assert _snapshot(bundle) == before


def test_stamp_distribution_with_a_wrong_passphrase_writes_nothing(tmp_path: Path, models):
    kp = generate_keypair(tmp_path / "k", "enc", passphrase=PASSPHRASE)
    bundle = build_bundle(tmp_path / "b", _info(), models[:1], private_key=kp.private_key,
                          passphrase=PASSPHRASE).path
    before = _snapshot(bundle)
    with pytest.raises(KeyFileError):
        stamp_distribution(bundle, hf_repo=REPO, gated=False, private_key=kp.private_key,
                           passphrase="wrong")
    assert _snapshot(bundle) == before
    assert stamp_distribution(bundle, hf_repo=REPO, gated=False, private_key=kp.private_key,
                              passphrase=PASSPHRASE)
    verify_bundle(bundle, kp.public_key)


def test_crash_before_signing_is_repaired(bundle: Path, keys, tmp_path: Path):
    """Every file written but model.sig: a rerun (or edgetune sign) makes the bundle whole."""
    done = Path(shutil.copytree(bundle, tmp_path / "done"))
    stamp_distribution(done, hf_repo=REPO, gated=True, private_key=keys.private_key)
    for rel in (MANIFEST_FILE, "README.md", "personas/pocketpal-pal.json", "report.html"):
        shutil.copyfile(done / rel, bundle / rel)  # the state just before resign_bundle
    (bundle / ".README.md.x1y2.tmp").write_text("half")  # and a scratch file of a crash
    assert _fails(bundle, keys.public_key).exit_code in (5, 6)
    signed_copy = Path(shutil.copytree(bundle, tmp_path / "signed"))
    assert stamp_distribution(bundle, hf_repo=REPO, gated=True, private_key=keys.private_key)
    verify_bundle(bundle, keys.public_key)
    assert {f: (bundle / f).read_bytes() for f in _files(bundle) if f != SIGNATURE_FILE} == \
        {f: (done / f).read_bytes() for f in _files(done) if f != SIGNATURE_FILE}
    (signed_copy / ".README.md.x1y2.tmp").unlink()
    resign_bundle(signed_copy, keys.private_key)  # `edgetune sign`
    assert verify_bundle(signed_copy, keys.public_key).files == len(EXPECTED_FILES) - 1


def test_stamp_distribution_on_an_older_bundle_without_report(tmp_path: Path, keys, models):
    bundle = build_bundle(tmp_path / "b", _info(), models[:2], private_key=keys.private_key).path
    (bundle / "report.html").unlink()
    (bundle / "reward.png").unlink()
    sign_bundle(bundle, keys.private_key)
    assert stamp_distribution(bundle, hf_repo=REPO, gated=False, private_key=keys.private_key)
    card = (bundle / "README.md").read_text()
    assert "report.html" not in card and f"lms get {REPO}" in card
    verify_bundle(bundle, keys.public_key)


# --- partial verification (a download of some quants) -----------------------------------------

def _partial_fails(bundle: Path, pub: Path) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify_bundle(bundle, pub, partial=True)
    return info.value


def test_partial_verify_accepts_a_bundle_without_some_quants(bundle: Path, keys):
    full = verify_bundle(bundle, keys.public_key, partial=True)
    assert full == verify_bundle(bundle, keys.public_key)  # all present: the same result
    gone = (bundle / GGUFS[1]).stat().st_size
    (bundle / GGUFS[1]).unlink()
    err = _fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (GGUFS[1], 7)
    result = verify_bundle(bundle, keys.public_key, partial=True)
    assert result.missing == (GGUFS[1],)
    assert (result.files, result.bytes) == (full.files - 1, full.bytes - gone)
    (bundle / GGUFS[2]).unlink()
    assert verify_bundle(bundle, keys.public_key, partial=True).missing == (GGUFS[1], GGUFS[2])
    (bundle / GGUFS[0]).unlink()
    err = _partial_fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (GGUFS[0], 7)


def test_partial_verify_still_checks_every_present_file(bundle: Path, keys, other_keys):
    (bundle / GGUFS[0]).unlink()
    data = bytearray((bundle / GGUFS[2]).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / GGUFS[2]).write_bytes(bytes(data))
    err = _partial_fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (GGUFS[2], 5)
    data[len(data) // 2] ^= 0x01
    (bundle / GGUFS[2]).write_bytes(bytes(data))
    verify_bundle(bundle, keys.public_key, partial=True)
    assert _partial_fails(bundle, other_keys.public_key).exit_code == 4
    (bundle / "notes.txt").write_text("extra")
    err = _partial_fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("notes.txt", 6)
    (bundle / "notes.txt").unlink()
    shutil.copyfile(bundle / GGUFS[1], bundle / "other-Q2_K.gguf")  # an unsigned quant
    err = _partial_fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("other-Q2_K.gguf", 6)
    (bundle / "other-Q2_K.gguf").unlink()
    (bundle / "README.md").unlink()
    err = _partial_fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("README.md", 7)


@pytest.mark.parametrize("where", ["middle", "signature"])
def test_partial_verify_refuses_an_altered_signature(bundle: Path, keys, where: str):
    (bundle / GGUFS[0]).unlink()
    sig = bundle / SIGNATURE_FILE
    data = bytearray(sig.read_bytes())
    value = json.loads(data)["dsseEnvelope"]["signatures"][0]["sig"]
    pos = len(data) // 2 if where == "middle" else data.index(value.encode()) + 10
    data[pos] = ord("A") if data[pos] != ord("A") else ord("B")
    sig.write_bytes(bytes(data))
    err = _partial_fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (SIGNATURE_FILE, 4)
    sig.unlink()
    assert _partial_fails(bundle, keys.public_key).exit_code == 3


def test_partial_verify_checks_the_manifest_of_what_is_left(bundle: Path, keys):
    manifest = _manifest(bundle)
    manifest["artifacts"][2]["sha256"] = hashlib.sha256(b"other").hexdigest()
    _resign(bundle, keys, manifest)
    (bundle / GGUFS[2]).unlink()  # absent, but its manifest entry still disagrees
    err = _partial_fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == (GGUFS[2], 11)


def test_partial_verify_of_a_renamed_quant_fails(bundle: Path, keys):
    os.rename(bundle / GGUFS[0], bundle / "renamed.gguf")
    err = _partial_fails(bundle, keys.public_key)
    assert (err.path, err.exit_code) == ("renamed.gguf", 6)
