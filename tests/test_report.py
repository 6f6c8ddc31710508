"""Eval reports (eval.md, eval.png) from the demo build's real eval.json, the reward curve
(reward.png) and the report page (report.html), and reading GGUF files for `edgetune eval`.
Real files throughout; fake GGUFs hold headers only (no weights)."""

from __future__ import annotations

import copy
import html.parser
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from edgetune.errors import ModelError
from edgetune.gguf_eval import read_gguf, render_chat
from edgetune.conversations import conversation
from edgetune.pipeline import held_out_rows
from edgetune.report import (
    html_report,
    markdown_table,
    ordered_quants,
    quant_chart,
    read_training_log,
    reward_chart,
    reward_curves,
    training_config,
    write_reports,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(demo_build) -> dict:
    out, _, _ = demo_build
    return json.loads((out / "eval" / "eval.json").read_text())


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, checking each CRC."""
    assert data.startswith(PNG_SIGNATURE)
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def _row(table: str, quant: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {quant} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


# --------------------------------------------------------------------------- markdown

def test_markdown_table_of_the_demo_build(report: dict):
    table = markdown_table(report)
    lines = table.splitlines()
    assert lines[0].startswith("| Quant | Size | RAM needed | PPL | PPL ratio | Mean KLD |")
    assert lines[0].count("|") == lines[1].count("|") == 18  # 17 columns
    # F16 first, then by size: Q8_0 (1.5 MiB) > Q5_K_M > Q4_K_M (0.9 MiB)
    assert [line.split(" | ")[0] for line in lines[2:6]] == ["| F16", "| Q8_0", "| Q5_K_M",
                                                             "| Q4_K_M"]
    q4, f16 = report["quants"]["Q4_K_M"], report["quants"]["F16"]
    cells = _row(table, "Q4_K_M")
    assert cells[1] == f"{q4['size_bytes'] / 1024:.1f} KiB, {q4['bits_per_weight']:.1f} bpw"
    assert cells[3:8] == [f"{q4['ppl']:.2f}", f"{q4['ppl_ratio']:.4f}",
                          f"{q4['kld_mean']:.6f} ± {q4['kld_se']:.6f}", f"{q4['kld_p99']:.6f}",
                          f"{q4['top1']:.1%}"]
    assert cells[8] == f"{q4['delta_p_mean']:+.3%}"
    low, high = q4["task_drop_ci95"]
    judged = q4["gate"]["checks"]["accuracy_drop"].get("why") != "cannot judge"
    assert cells[9:11] == [f"{q4['task_accuracy']:.1%} ({q4['task_correct']}/36)",
                           f"{100 * q4['task_accuracy_drop']:+.1f} pp "
                           f"[{100 * low:+.1f}, {100 * high:+.1f}]" + ("" if judged else ", not judged")]
    # measured beside other jobs: marked busy, and not judged where it missed a decode limit
    busy = " (busy)" if q4["machine_busy"] else ""
    unjudged = any(q4["gate"]["checks"][k].get("busy") for k in ("decode_tps", "decode_ratio"))
    assert cells[12] == f"{q4['decode_tps']:,.0f}{busy}" + (", not judged" if unjudged else "")
    assert cells[15:] == [f"yes ({q4['imatrix_kld_reduction']:.1%} lower KLD)", "pass"]
    assert _row(table, "Q5_K_M")[15].startswith("yes (")  # every quant below 8 bits has one
    assert _row(table, "Q8_0")[15] == "-"
    f16_cells = _row(table, "F16")
    assert f16_cells[4:9] == ["1.0000", "0.000000", "-", "100.0%", "-"]
    assert f16_cells[-1] == "reference" and f16_cells[1].startswith("2.8 MiB, 16.")
    general = report["fidelity_texts"]["general"]["tokens"]
    assert (f"Measured on {report['eval_tokens']:,} held-out tokens and {general:,} tokens of "
            "general English in chunks of 512, 36 task questions, RAM at a 2,048-token "
            "context.") in table
    assert "Target `phone`: every quant passes its gates" in table
    assert "Failed gates" not in table


def test_markdown_table_failed_gates_missing_values_and_escaping():
    report = {"target": "strict|phone", "gates_passed": False, "accepted_gate_failure": True,
              "quants": {
                  "Q4|X": {"size_bytes": 2 * 2**20, "kld_mean": float("nan"), "top1": 0.5,
                           "gate": {"passed": False, "reasons": ["top-1 agreement 0.5 < 0.9",
                                                                 "a|b"]}},
                  "Q8_0": {"size_bytes": 3 * 2**20, "gate_passed": True},
                  "F16": {"size_bytes": 6 * 2**20},
                  "Q2_K": {}}}
    table = markdown_table(report)
    assert [line.split(" | ")[0] for line in table.splitlines()[2:6]] == [
        "| F16", "| Q8_0", "| Q4\\|X", "| Q2_K"]  # missing size last
    assert _row(table, "Q4\\|X")[1:8] == ["2.0 MiB", "-", "-", "-", "-", "-", "50.0%"]
    assert _row(table, "Q4\\|X")[-1] == "**FAIL**" and _row(table, "Q8_0")[-1] == "pass"
    assert _row(table, "Q2_K")[1:] == ["-"] * 16
    assert "Target `strict\\|phone`: gates **failed** (shipped anyway: accepted by the creator)." \
        in table
    assert table.endswith("Failed gates:\n\n- Q4\\|X: top-1 agreement 0.5 < 0.9\n- Q4\\|X: a\\|b\n")
    assert markdown_table({}) == markdown_table({"quants": {}}) == \
        "No per-quant results were recorded.\n"


def test_ordered_quants_keeps_f16_first_even_when_smaller():
    quants = {"Q8_0": {"size_bytes": 9}, "F16": {"size_bytes": 1}, "Q4_0": {"size_bytes": 5}}
    assert [q for q, _ in ordered_quants({"quants": quants})] == ["F16", "Q8_0", "Q4_0"]


# --------------------------------------------------------------------------- chart

def test_chart_is_a_valid_png_without_metadata_and_byte_identical(report: dict, tmp_path: Path):
    first = quant_chart(report, tmp_path / "a.png").read_bytes()
    assert quant_chart(copy.deepcopy(report), tmp_path / "b.png").read_bytes() == first
    chunks = _png_chunks(first)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    assert struct.unpack(">II", chunks[0][1][:8]) == (750, 480)
    assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(kinds)  # no software, no timestamp
    # a fresh process (another hash seed, fresh font cache state) draws the same bytes
    code = ("import json, sys; from pathlib import Path; from edgetune.report import quant_chart; "
            "quant_chart(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))")
    (tmp_path / "r.json").write_text(json.dumps(report))
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.json"), str(tmp_path / "c.png")],
                   check=True, timeout=60)
    assert (tmp_path / "c.png").read_bytes() == first


def _red_pixels(path: Path) -> int:
    from matplotlib.image import imread

    rgb = imread(path)[..., :3]
    return int(((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.2) & (rgb[..., 2] < 0.2)).sum())


def test_chart_marks_failed_gates_in_red(report: dict, tmp_path: Path):
    failed = copy.deepcopy(report)
    failed["quants"]["Q5_K_M"]["gate"]["passed"] = False
    ok = quant_chart(report, tmp_path / "ok.png")
    bad = quant_chart(failed, tmp_path / "bad.png")
    assert ok.read_bytes() != bad.read_bytes()
    assert _red_pixels(bad) > _red_pixels(ok) + 100  # ok: only the legend's cross is red


def test_chart_of_odd_reports_still_draws(tmp_path: Path):
    odd = {"quants": {"F16": {"size_bytes": 2**20}, "Q8_0": {"size_bytes": 2**19, "kld_mean": 0.0},
                      "Q4_0": {"size_bytes": 2**18, "kld_mean": 0.02}}}  # no speeds, no gates
    for i, report in enumerate([{}, {"quants": {"F16": {"size_bytes": 1}}}, odd]):
        data = quant_chart(report, tmp_path / f"{i}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_write_reports(report: dict, tmp_path: Path):
    md, png = write_reports(tmp_path, report)
    assert (md.name, png.name) == ("eval.md", "eval.png")
    assert md.read_text() == markdown_table(report)
    assert png.read_bytes() == quant_chart(report, tmp_path / "x.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.md", "eval.png", "x.png"]


@pytest.mark.slow
def test_build_writes_the_reports_to_eval_and_to_the_bundle(demo_build, report: dict):
    out, _, _ = demo_build
    assert (out / "eval" / "eval.md").read_text() == markdown_table(report)
    bundled = json.loads((out / "bundle" / "eval.json").read_text())
    assert (out / "bundle" / "eval.md").read_text() == markdown_table(bundled)
    # rendered twice from the same results, in two places: the same bytes
    assert (out / "bundle" / "eval.png").read_bytes() == (out / "eval" / "eval.png").read_bytes()
    card = (out / "bundle" / "README.md").read_text()
    assert markdown_table(bundled) in card
    assert "![Size vs KL divergence vs decode speed](eval.png)" in card


# --------------------------------------------------------------------------- reward curve

CONFIG = {"step": 0, "event": "config", "method": "grpo", "backend": "trl", "device": "cpu",
          "loss_type": "dapo", "beta": 0.0, "cache_implementation": None}


def _log(correctness=(0.0, 0.25, 0.5, 0.5), warn_at: int | None = 3) -> list[dict]:
    """A GRPO training_log.jsonl as edgetune.training.trainer writes it (fewer metrics per step)."""
    rows = [dict(CONFIG)]
    for step, c in enumerate(correctness, 1):
        rows.append({"step": step, "loss": 0.01, "reward": 1.0 + c, "reward_std": 0.3,
                     "rewards/correctness/mean": c, "rewards/correctness/std": 0.1,
                     "rewards/xml_count/mean": 0.5, "frac_reward_zero_std": 0.5})
        if step == warn_at:
            rows.append({"step": step, "event": "warning", "code": "format_zero",
                         "message": "the <answer> tags never appear"})
    return rows


SFT_LOG = [{**CONFIG, "method": "sft"}, {"step": 1, "loss": 6.7, "mean_token_accuracy": 0.1},
           {"step": 2, "loss": 6.4, "mean_token_accuracy": 0.1}]


def test_reward_curves_and_settings_from_a_log(tmp_path: Path):
    log = _log()
    log.insert(2, {"step": 2, "reward": 9.0, "rewards/correctness/mean": 8.0})  # before a resume
    log.append({"step": 5, "reward": float("nan"), "rewards/correctness/mean": "x"})
    curves = reward_curves(log)
    assert curves.total == ((1, 1.0), (2, 1.25), (3, 1.5), (4, 1.5))  # the last value of a step
    assert list(curves.functions) == ["correctness", "xml_count"]
    assert curves.functions["correctness"] == ((1, 0.0), (2, 0.25), (3, 0.5), (4, 0.5))
    assert not reward_curves(SFT_LOG) and not reward_curves([])
    assert training_config(log)["loss_type"] == "dapo" and "event" not in training_config(log)
    path = tmp_path / "training_log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in log[:3]) + '\n[1]\n{"step": 3, "rew')
    assert read_training_log(path) == tuple(log[:3])  # a torn last line is skipped
    assert read_training_log(tmp_path / "absent.jsonl") == ()


def test_reward_chart_is_deterministic_and_reflects_the_log(tmp_path: Path):
    first = reward_chart(_log(), tmp_path / "a.png").read_bytes()
    assert reward_chart(copy.deepcopy(_log()), tmp_path / "b.png").read_bytes() == first
    chunks = _png_chunks(first)
    kinds = [kind for kind, _ in chunks]
    assert struct.unpack(">II", chunks[0][1][:8]) == (750, 480)
    assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(kinds)  # no software, no timestamp
    others = [reward_chart(log, tmp_path / f"{i}.png").read_bytes() for i, log in enumerate(
        [_log(correctness=(0.0, 0.25, 0.5, 0.75)), _log(warn_at=None), _log()[:3]])]
    assert len({first, *others}) == 4  # another reward, no warning, fewer steps: another chart


def test_reward_chart_of_a_log_without_rewards_is_labelled_and_empty(tmp_path: Path):
    from matplotlib.image import imread

    sft = reward_chart(SFT_LOG, tmp_path / "sft.png")
    none = reward_chart([], tmp_path / "none.png")
    assert sft.read_bytes() != none.read_bytes()  # each says why it is empty
    for path in (sft, none):
        assert _png_chunks(path.read_bytes())[0][0] == b"IHDR"
        rgb = imread(path)[..., :3]
        assert (rgb.max(axis=2) - rgb.min(axis=2) < 0.05).all()  # grey text only: no curve


# --------------------------------------------------------------------------- report page

class _Page(html.parser.HTMLParser):
    """The tags, attributes and tables (rows of cell texts) of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


MANIFEST = {"name": "coach", "version": "1.0.0", "bundle_id": "coach",
            "created": "2025-01-02T03:04:05Z", "creator": {"name": "Ada"},
            "base_model": {"name": "Qwen/Qwen3-0.6B", "license": "apache-2.0"},
            "training": {"method": "grpo", "backend": "trl", "steps": 4, "dataset_rows": 30,
                         "rewards": ["correctness", "xml_count"]}}
FILES = [("coach-Q4_K_M.gguf", 905664), ("eval.png", 22000), ("model.sig", None),
         ("report.html", None), ("reward.png", 30000)]


def test_report_page_holds_the_eval_table_gates_images_and_files(report: dict):
    failed = copy.deepcopy(report)
    failed["quants"]["Q4_K_M"]["gate"] = {"passed": False, "reasons": ["top-1 agreement 0.9 < 1"],
                                          "checks": {"top1": {"passed": False},
                                                     "kld_mean": {"passed": True},
                                                     "accuracy_drop": {"skipped": True}}}
    failed["gates_passed"] = False
    text = html_report(MANIFEST, failed, _log(), FILES)
    assert text == html_report(copy.deepcopy(MANIFEST), copy.deepcopy(failed), _log(), FILES)
    page = _Page(text)
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert images == ["reward.png", "eval.png"]
    # the eval table: the same cells as eval.md (markup aside)
    table = markdown_table(failed)
    expected = [line.strip("|").split(" | ") for line in table.splitlines()[:1] + [
        line for line in table.splitlines()[2:] if line.startswith("| ")]]
    expected = [[c.strip().replace("**FAIL**", "FAIL") for c in row] for row in expected]
    assert next(t for t in page.tables if t[0][0] == "Quant") == expected
    gates = next(t for t in page.tables if t[0][:2] == ["Quant", "Verdict"])
    assert [row[:2] for row in gates[1:3]] == [["Q8_0", "pass"], ["Q5_K_M", "pass"]]
    assert [row for row in gates[3:] if row[0] == "Q4_K_M"] == [
        ["Q4_K_M", "FAIL", "1 of 2 passed; skipped: accuracy_drop", "top-1 agreement 0.9 < 1"]]
    assert "Target phone: gates failed." in " ".join(text.replace("<code>", "").replace(
        "</code>", "").replace('<span class="fail">', "").replace("</span>", "").split())
    files = next(t for t in page.tables if t[0][0] == "File")
    assert files[1:] == [["coach-Q4_K_M.gguf", "884.4 KiB", "905,664"],
                         ["eval.png", "21.5 KiB", "22,000"], ["model.sig", "-", "-"],
                         ["report.html", "-", "-"], ["reward.png", "29.3 KiB", "30,000"]]
    settings = next(t for t in page.tables if t[0][0] == "method")
    assert ["loss_type", "dapo"] in settings and ["cache_implementation", "-"] in settings
    rewards = next(t for t in page.tables if t[0][0] == "Reward")
    assert rewards[1] == ["total", "1.000 (step 1)", "1.500 (step 4)", "1.500 (step 3)"]
    assert "Step 3 (format_zero): the &lt;answer&gt; tags never appear" in text.replace(
        "<code>", "").replace("</code>", "")
    assert "2025-01-02T03:04:05Z" in text


def test_report_page_escapes_hostile_text_and_loads_nothing():
    evil = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    manifest = {**MANIFEST, "name": evil, "version": evil, "creator": {"name": evil},
                "base_model": {"name": evil, "license": evil},
                "training": {**MANIFEST["training"], "rewards": [evil]}}
    eval_report = {"target": evil, "gates_passed": False,
                   "quants": {evil: {"size_bytes": 10, "gate": {"passed": False,
                                                                "reasons": [evil]}}}}
    log = [{**CONFIG, evil: evil}, {"step": 1, "reward": 1.0, f"rewards/{evil}/mean": 1.0},
           {"step": 1, "event": "warning", "code": evil, "message": evil}]
    text = html_report(manifest, eval_report, log, [(evil, 1)])
    page = _Page(text)
    assert "<script" not in text.lower() and 'onerror="' not in text
    assert {tag for tag, _ in page.tags} <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "small", "p", "code",
        "table", "tr", "th", "td", "img", "div", "span", "ul", "li", "br"}
    assert [a["src"] for tag, a in page.tags if tag == "img"] == ["reward.png", "eval.png"]
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs)
    assert "http" not in text.replace('http-equiv="Content-Security-Policy"', "")  # no URL
    assert text.count(html.escape(evil)) >= 8
    # no log, no results: the page still says what it can
    bare = html_report({}, {}, (), ())
    assert "No training log was recorded." in bare and "No per-quant results" in bare


@pytest.mark.slow
def test_build_writes_the_report_page_to_out_and_to_the_bundle(demo_build, tmp_path: Path):
    from edgetune.bundle import verify_bundle

    out, public_key, _ = demo_build
    bundle = out / "bundle"
    for name in ("report.html", "reward.png", "eval.png"):  # the bundle's own, beside it
        assert (out / name).read_bytes() == (bundle / name).read_bytes()
    log = read_training_log(out / "adapter" / "training_log.jsonl")
    assert len(reward_curves(log).total) == 6 and training_config(log)["method"] == "grpo"
    assert (bundle / "reward.png").read_bytes() == \
        reward_chart(log, tmp_path / "r.png").read_bytes()
    page = _Page((bundle / "report.html").read_text())
    files = next(t for t in page.tables if t[0][0] == "File")
    assert [row[0] for row in files[1:]] == sorted(
        p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    settings = dict(row for row in next(t for t in page.tables if t[0][0] == "method"))
    assert settings["device"] == training_config(log)["device"]
    assert verify_bundle(bundle, public_key).files == 20  # with Q4_K_X and its recipe files


# --------------------------------------------------------------------------- GGUF files

def fake_gguf(path: Path, *, file_type: int | None = 7, tokens=("<unk>", "<s>", "</s>", "a"),
              kind: str = "model", architecture: str = "llama", template: str | None =
              "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}"
              "{{ eos_token }}\n{% endfor %}") -> Path:
    """A GGUF header with a tokenizer and no tensors: enough for read_gguf."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_type(kind)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_token_list(list(tokens))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("name, file_type, quant", [
    ("m.gguf", 15, "Q4_K_M"), ("m.gguf", 1, "F16"), ("m.gguf", 32, "BF16"), ("m.gguf", 0, "F32"),
    ("coach-IQ4_XS.gguf", None, "IQ4_XS"), ("coach.Q4_K_S.gguf", None, "Q4_K_S"),
    ("coach-q8_0.gguf", None, "Q8_0"), ("coach.gguf", None, "coach"),
    ("coach-Q5_K_M.gguf", 1024, "Q5_K_M")])  # 1024: "guessed", not a real type
def test_quant_name_from_file_type_else_file_name(tmp_path: Path, name, file_type, quant):
    assert read_gguf(fake_gguf(tmp_path / name, file_type=file_type)).quant == quant


def test_read_gguf_of_the_demo_build(demo_build):
    out, _, _ = demo_build
    f16 = read_gguf(out / "gguf" / "edgetune-demo-F16.gguf")
    q4 = read_gguf(out / "quants" / "edgetune-demo-Q4_K_M.gguf")
    assert (f16.quant, q4.quant, f16.architecture) == ("F16", "Q4_K_M", "llama")
    assert f16.vocab_sha256 == q4.vocab_sha256
    assert f16.special_tokens["bos_token"] == "<s>" and "<|im_start|>" in f16.chat_template
    with pytest.raises(ModelError, match="is a GGUF imatrix, not a model"):
        read_gguf(out / "quants" / "imatrix.gguf")


def test_render_chat_uses_the_gguf_template_and_its_special_tokens(tmp_path: Path):
    model = read_gguf(fake_gguf(tmp_path / "m.gguf"))
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert render_chat(model, messages) == "<s>user: 2+2?</s>\n<s>assistant: 4</s>\n"
    failing = read_gguf(fake_gguf(tmp_path / "f.gguf", template="{{ raise_exception('no') }}"))
    with pytest.raises(ModelError, match="its chat template fails \\(no\\)"):
        render_chat(failing, messages)
    with pytest.raises(ModelError, match="has no chat template"):
        render_chat(read_gguf(fake_gguf(tmp_path / "n.gguf", template=None)), messages)


def test_read_gguf_refuses_what_it_cannot_read(tmp_path: Path):
    with pytest.raises(ModelError, match="file not found"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="is a folder, not a GGUF file"):
        read_gguf(tmp_path)
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF file"):
        read_gguf(tmp_path / "text.gguf")
    whole = fake_gguf(tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:40])
    with pytest.raises(ModelError, match="cannot read the GGUF header"):
        read_gguf(tmp_path / "cut.gguf")


def test_held_out_rows_are_builds_held_out_split():
    from edgetune.data import Columns, load_qa, split_qa
    from edgetune.demo import DEMO_DATA

    everything = load_qa(DEMO_DATA).rows
    assert held_out_rows(None) == held_out_rows(DEMO_DATA) == split_qa(everything).eval
    assert len(held_out_rows(None)) == 36
    assert held_out_rows(DEMO_DATA, Columns(), all_rows=True) == everything


@pytest.mark.slow
def test_held_out_text_through_the_gguf_template_is_what_build_evaluates(demo_build):
    """`edgetune eval` renders the chat template from the GGUF; build renders it with
    transformers from the merged model. Same text, so the same figures."""
    from edgetune.hf import load_tokenizer
    from edgetune.conversations import conversation_text
    from edgetune.project import demo_project

    out, _, _ = demo_build
    project = demo_project()
    rows = held_out_rows(None)
    tokenizer = load_tokenizer(out / "merged")
    model = read_gguf(out / "gguf" / "edgetune-demo-F16.gguf")
    for row in rows:
        assert render_chat(model, conversation(project.system_prompt, row)) == \
            conversation_text(tokenizer, project.system_prompt, row)
