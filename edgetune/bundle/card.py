"""The bundle's model card (``README.md``): Hub front matter, files, evaluation, "Use it".

Drawn from the manifest and ``eval.json`` only, so it can be written again after the manifest
changes (``build.stamp_distribution``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edgetune import report
from edgetune.basemodel import is_hub_id
from edgetune.bundle.files import EVAL_CHART_FILE, EVAL_FILE, EVAL_TABLE_FILE, REPORT_FILE

# The one field of a gated repo's access form (README front matter ``extra_gated_fields``); the
# code that syncs paying followers with access requests matches requests by this name.
GATED_EMAIL_FIELD = "Email used for payment"


def eval_quants(eval_results: dict) -> dict[str, dict]:
    """``eval_results["quants"]`` (dict by quant, or list of dicts with "quant") by quant."""
    quants = eval_results.get("quants")
    if isinstance(quants, list):
        quants = {m.get("quant", "?"): m for m in quants if isinstance(m, dict)}
    items = quants.items() if isinstance(quants, dict) else ()
    return {str(q): m for q, m in items if isinstance(m, dict)}


def _cell(value: Any) -> str:
    text = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def main_artifact(artifacts: Sequence[dict]) -> dict:
    """The artifact apps use by default: the Q4_K_M one, else the first."""
    return next((a for a in artifacts if a["quant"] == "Q4_K_M"), artifacts[0])


def readable_results(eval_results: dict) -> dict:
    """``eval.json``'s results with ``quants`` by quant: what eval.md, eval.png and the card
    show."""
    return {**eval_results, "quants": eval_quants(eval_results)}


def _front_matter(manifest: dict) -> str:
    """The card's YAML front matter: Hub metadata (https://huggingface.co/docs/hub/model-cards)."""
    q = json.dumps  # a JSON string is a valid YAML scalar: safe quoting for any user text
    base, creator = manifest["base_model"], manifest["creator"]["name"]
    dist = manifest.get("distribution") or {}
    lines = [f"license: {q(base['license'])}"]
    if is_hub_id(base["name"]):  # the Hub rejects a card whose base_model is no model id
        lines += [f"base_model: {q(base['name'])}", "base_model_relation: finetune"]
    lines += [f"quantized_by: {q(creator)}", "pipeline_tag: text-generation",
              "tags:\n- gguf\n- edgetune\n- reasoning"]
    if dist.get("gated"):
        prompt = (f"Access to {manifest['name']} is for the paying followers of {creator}. "
                  f"{creator} approves each request by hand: give the email address you used "
                  "for payment.")
        lines += [f"extra_gated_prompt: {q(prompt)}",
                  f"extra_gated_fields:\n  {q(GATED_EMAIL_FIELD)}: text",
                  f"extra_gated_button_content: {q('Request access')}"]
    return "---\n" + "\n".join(lines) + "\n---"


def _use_it(manifest: dict, main: dict) -> list[str]:
    """The card's "Use it" section: from the Hub when the manifest names a repo, else files."""
    sh = "```sh\n{}\n```".format
    repo, ctx = (manifest.get("distribution") or {}).get("hf_repo"), \
        manifest["runtime"]["default_context"]
    best = f"`{main['quant']}` is the best size/quality trade-off for most phones."
    if not repo:
        return ["llama.cpp:", sh(f"llama-cli -m {main['path']} -cnv -c {ctx}"),
                "Ollama (after uploading this folder as a Hugging Face repo):",
                sh(f"ollama run hf.co/<user>/<repo>:{main['quant']}"),
                "PocketPal: copy a `.gguf` to the phone, then Models -> + -> Add Local Model. "
                + best]
    tag = f"{repo}:{main['quant']}"
    pal = (manifest["persona"].get("files") or {}).get("pocketpal")
    out = ["llama.cpp (downloads the file from the Hub):", sh(f"llama-cli -hf {tag} -cnv -c {ctx}"),
           "Ollama:", sh(f"ollama run hf.co/{tag}"),
           f"LM Studio: `lms get {repo}`, or search `{repo}` in Discover.",
           f"PocketPal: Models -> + -> Add from Hugging Face, search `{repo}` and download "
           f"`{main['path']}`." + (f" Import `{pal}` in Pals for the persona." if pal else "")
           + f" {best}",
           "edgetune (downloads one quant and verifies it with the creator's key):",
           sh(f"edgetune pull {tag} --key creator.pub")]
    if (manifest.get("distribution") or {}).get("gated"):
        out.append("This repository is gated: request access on this page first. Then llama.cpp "
                   "and edgetune need a Hugging Face access token in `HF_TOKEN`, PocketPal the "
                   "same token in its settings, and Ollama its public key "
                   "(`~/.ollama/id_ed25519.pub`) in your Hugging Face SSH keys.")
    return out


def _mix_sentence(artifacts: Sequence[dict], quants: dict) -> str:
    """One sentence, with the numbers, for a measured mix in the bundle (edgetune.mix)."""
    art = next((a for a in artifacts if a.get("recipe")), None)
    if art is None:
        return ""
    metrics = quants.get(art["quant"], {})
    verdict, recipe = metrics.get("mix") or {}, art["recipe"]
    ref = quants.get(verdict.get("reference", ""), {})
    if not ref or "kld_change" not in verdict:
        gained = "its types were chosen per tensor for this model"
    else:
        gained = (f"its types were chosen per tensor for this model on the creator's calibration "
                  f"rows (never the held-out ones): mean KLD {metrics['kld_mean']:.4f} against "
                  f"{verdict['reference']}'s {ref['kld_mean']:.4f} ({-verdict['kld_change']:.0%} "
                  f"lower) at {verdict['size_change']:+.1%} size, top-1 agreement "
                  f"{metrics['top1']:.1%} against {ref['top1']:.1%}")
    return (f"\n\n`{_cell(art['path'])}`: {gained}. `{_cell(recipe['tensor_types'])}` and "
            f"`{_cell(recipe['imatrix'])}` rebuild it bit for bit from the F16 GGUF: "
            f"`{_cell(recipe['command'])}`.")


def model_card(manifest: dict, eval_results: dict, *, report_page: bool = True) -> str:
    """``README.md`` from the manifest and the readable eval results (:func:`readable_results`),
    so a bundle's card can be written again after its manifest changes
    (``build.stamp_distribution``). ``report_page``: link ``report.html`` (older bundles have
    none)."""
    tr, artifacts = manifest["training"], manifest["artifacts"]
    name, creator = manifest["name"], manifest["creator"]
    main = main_artifact(artifacts)
    files = "\n".join(f"| `{a['path']}` | {_cell(a['quant'])} | {report.human_size(a['size'])} | "
                      f"{report.human_size(a['ram_needed_bytes'])} |" for a in artifacts)
    evaluation = (f"{report.markdown_table(eval_results)}\n"
                  f"![{report.CHART_ALT}]({EVAL_CHART_FILE})\n\n"
                  f"Full results: `{EVAL_FILE}` (this table: `{EVAL_TABLE_FILE}`)."
                  if report.ordered_quants(eval_results)
                  else f"No per-quant results were recorded; see `{EVAL_FILE}`.")
    if any("task_drop_ci95" in m for m in eval_quants(eval_results).values()):
        evaluation += ("\n\nTask accuracy is the share of held-out questions answered right "
                       "(right/asked). The drop from F16 is in points, with a 95% interval from "
                       "the questions one model got right and the other wrong: where F16 "
                       "itself scores under 10% or the interval is wider than the allowed drop, "
                       "accuracy is not judged (see \"Not judged\" under the table).")
    if report_page:
        evaluation += (f"\n\nThe whole report on one page, with the reward curve of training, "
                       f"the quality gates and every file: [`{REPORT_FILE}`]({REPORT_FILE}).")
    verify = ["## Verify", "Every file is covered by `model.sig` (OpenSSF model-signing, "
              f"ECDSA P-256). Creator key id: `{creator['key_id']}`.",
              "```sh\nedgetune verify . --key creator.pub\n"
              "model_signing verify key . --signature model.sig --public_key creator.pub\n```"]
    if (manifest.get("distribution") or {}).get("hf_repo"):
        verify.append("`edgetune pull` checks a download of some quants against the same "
                      "signature; `model_signing verify` needs every file of the repo.")
    return "\n\n".join([
        _front_matter(manifest),
        f"# {name}",
        f"{_cell(name)} is a small reasoning model by {_cell(creator['name'])}, fine-tuned "
        f"from `{manifest['base_model']['name']}` with edgetune ({tr.get('method', '?')}, "
        f"{tr.get('steps', '?')} steps on {tr.get('dataset_rows', '?')} question/answer rows). "
        f"It runs offline in llama.cpp-based apps. Greeting: "
        f"{_cell(manifest['persona']['greeting'])}",
        "## Files", "| File | Quant | Size | RAM needed |\n|---|---|---|---|\n" + files
        + _mix_sentence(artifacts, eval_quants(eval_results)),
        "## Evaluation", evaluation,
        "## Use it", *_use_it(manifest, main),
        *verify,
        "## License", f"Base model licence: {_cell(manifest['base_model']['license'])}. "
        f"Creator's terms: {_cell(manifest['license_terms'])}"]) + "\n"
