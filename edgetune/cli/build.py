"""`edgetune init`, `build`, `status` and `targets`: a project, its whole pipeline, where it
stands, and the device profiles it can build for. Registered on the main group in ``main``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edgetune.cli.base import echo
from edgetune.cli.options import (TRAIN_FIELDS, json_option, passphrase_for, signing_key_option,
                                  training_options)
from edgetune.stages import STAGES


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--name", default=None, help="Model name. Default: the folder's name.")
@click.option("--force", is_flag=True,
              help="Replace an existing edgetune.yaml (existing data and .gitignore are kept).")
def init(directory, name, force) -> None:
    """Start a project: a documented edgetune.yaml, example Q&A data and a .gitignore.

    The example data is a copy of the demo questions, so the project builds as it is; then
    point data.path at your own Q&A and set project.base_model.

    \b
    Examples:
      edgetune init coach-bot
      edgetune build --config coach-bot/edgetune.yaml
      edgetune init . --force          # rewrite ./edgetune.yaml
    """
    from edgetune.project import PROJECT_FILE
    from edgetune.project.init import init_project

    for item in init_project(directory, name=name, force=force):
        echo(f"{item.action:<8} {item.path}")
    here = Path(os.path.abspath(directory)) == Path.cwd()
    config = directory / PROJECT_FILE
    echo(f"Next: edit {config}, then run: "
               + ("edgetune build" if here else f"edgetune build --config {config}"))


# Where each `build` option lands in the project file ("section.key"); see edgetune.project.
_BUILD_SETTINGS = {"targets": "targets", "data": "data.path",
                   "question_field": "data.question_field", "answer_field": "data.answer_field",
                   "base_model": "project.base_model", "name": "project.name",
                   "base_model_id": "project.base_model_id",
                   "base_model_license": "project.base_model_license",
                   "creator": "project.creator", "warm_start": "method.warm_start",
                   "sft_data": "data.sft_data", "sft_steps": "data.sft_steps",
                   "answer_format": "method.answer_format",
                   **{k: f"train.{k}" for k in TRAIN_FIELDS if k != "answer_format"}}


def with_size_budget(profile, size_budget: str | None):
    """The profile with ``--size-budget`` applied (and Q4_K_X added to its quants)."""
    import dataclasses

    from edgetune.mix import MIX
    from edgetune.profiles import parse_size_budget

    if size_budget is None:
        return profile
    parse_size_budget(size_budget)  # a ConfigError that says what a size looks like
    quants = profile.quants if MIX in profile.quants else (*profile.quants, MIX)
    return dataclasses.replace(profile, quants=quants, mix_budget=size_budget)


def _build_overrides(ctx: click.Context) -> dict:
    """The options given on the command line, as project-file settings (they win over the file)."""
    from click.core import ParameterSource

    given = {name: value for name, value in ctx.params.items()
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT,
                                                       ParameterSource.DEFAULT_MAP)}
    settings = {_BUILD_SETTINGS[k]: v for k, v in given.items() if k in _BUILD_SETTINGS}
    if not given.get("name", True):
        settings.pop("project.name")  # --name "" names nothing
    if "base_bits" in given:
        settings["train.base_bits"] = int(given["base_bits"])
    if "system_prompt_file" in given:
        from edgetune.preflight import read_text

        settings["persona.system_prompt"] = read_text(given["system_prompt_file"],
                                                      "--system-prompt-file").strip()
    return settings


@click.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Project file (see `edgetune init`). Default: ./edgetune.yaml if there is "
                   "one, else the built-in demo. Options given here override it.")
@click.option("--target", "targets", multiple=True,
              help="Device profile from quant_profiles/ (or a YAML path). Default: the project "
                   "file's targets, else phone.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Q&A file (.jsonl, .json, .csv). Default: the built-in demo questions.")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True,
              help="Column with the final answer (GSM8K '#### 42' answers are understood).")
@click.option("--base-model", default=None,
              help="HF model dir or hub id, e.g. Qwen/Qwen2.5-3B-Instruct. Default: the demo model.")
@click.option("--base-model-id", default=None,
              help="The Hub id of a local --base-model folder (owner/name), named in the model "
                   "card. Default: found from the folder when it can be.")
@click.option("--base-model-license", default=None,
              help="The base model's licence (e.g. apache-2.0). Default: read from its model card.")
@click.option("--name", default=None, help="Model name, used in file names and the bundle id.")
@click.option("--creator", default=None,
              help="Your name, as the signed manifest and the model card give it.")
@click.option("--warm-start", type=click.Choice(["auto", "always", "never"]), default=None,
              help="A short SFT teaching the answer format before GRPO. Default: auto (when a "
                   "probe finds a pretrained base almost never writes it).")
@click.option("--no-warm-start", "warm_start", flag_value="never",
              help="The same as --warm-start never.")
@click.option("--system-prompt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="System prompt used in training and as the persona prompt.")
@click.option("--sft-data", type=click.Path(path_type=Path), default=None,
              help="<think>-style examples (Alpaca, ShareGPT, messages, Question/Complex_CoT/"
                   "Response) for an SFT warm start before GRPO.")
@click.option("--sft-steps", type=click.IntRange(min=1), default=60, show_default=True)
@training_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgetune-out"),
              show_default=True, help="Output directory (one folder per stage).")
@click.option("--from", "from_stage", type=click.Choice(STAGES), default=None,
              help="Redo this stage and every later one, even if up to date.")
@click.option("--to", "to_stage", type=click.Choice(STAGES), default=None,
              help="Stop after this stage.")
@signing_key_option(
    type=click.Path(path_type=Path),
    help="The creator's private key, which signs the bundle. Default: "
         "~/.edgetune/keys/edgetune.key, created if missing (passphrase from "
         "EDGETUNE_KEY_PASSPHRASE, or asked for before the build starts).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--accept-gate-failure", is_flag=True,
              help="Ship even if a quant fails the target's quality gates (recorded in the manifest).")
@click.option("--size-budget", default=None, metavar="SIZE",
              help="Size budget of Q4_K_X, the quant whose type per tensor edgetune chooses for "
                   "this model: Q4_K_M (no larger than plain Q4_K_M: the profiles' default), "
                   "ram (the largest that fits the target's RAM budget) or a size such as 1.2GB. "
                   "Adds Q4_K_X to the target's quants if it lacks it.")
@json_option()
@click.option("--verbose", is_flag=True,
              help="Also show llama.cpp's own log lines (conversion, quantisation, evaluation).")
def build(config, targets, data, question_field, answer_field, base_model, base_model_id,
          base_model_license, name, creator, warm_start, system_prompt_file, sft_data, sft_steps, out, from_stage, to_stage, private_key,
          overwrite, accept_gate_failure, size_budget, as_json, verbose, **training) -> None:
    """Run the whole pipeline: train, merge, convert, quantise, evaluate, bundle and sign.

    \b
    Examples:
      edgetune build --target phone                      # the built-in demo
      edgetune build --config coach/edgetune.yaml --steps 50   # a project file (edgetune init)
      edgetune build --data qa.jsonl --base-model Qwen/Qwen2.5-1.5B-Instruct \\
          --system-prompt-file persona.txt --name coach-bot --steps 300
      edgetune build --data qa.jsonl --sft-data cot.jsonl --answer-format r1 ...
      edgetune build ... --resume        # continue after Ctrl-C or a crash
    """
    from rich.text import Text

    from edgetune import pipeline  # pipeline.build looked up now: tests replace it
    from edgetune.cli.console import (build_events, eval_table, gate_table, print_table,
                                      stderr_console, stdout_for_results)
    from edgetune.gates import GateFailure
    from edgetune.keys import default_private_key
    from edgetune.profiles import load_profile
    from edgetune.project import PROJECT_FILE
    from edgetune.project.load import resolve_project

    console = stderr_console()
    # The options above reach the project through _build_overrides, only where they were given.
    if config is None and Path(PROJECT_FILE).is_file():
        config = Path(PROJECT_FILE)
        console.print(f"note: using ./{PROJECT_FILE} (pass --config to choose another "
                      "project file)")
    overrides = _build_overrides(click.get_current_context())
    resolved = resolve_project(config, overrides)
    profiles = [with_size_budget(load_profile(t), size_budget) for t in resolved.targets]
    project = resolved.project
    # Asked now, not when the bundle is signed after an hour of training.
    signs = to_stage in (None, STAGES[-1])
    passphrase = passphrase_for(private_key or default_private_key()) if signs else None
    per_target = len(profiles) > 1  # out/targets/<name>/: the targets share train .. convert

    results = {}
    for profile in profiles:
        try:
            with build_events(console) as events, stdout_for_results():
                result = pipeline.build(project, profile, out, key=private_key,
                                        passphrase=passphrase, overwrite=overwrite and not results,
                                        resume=training["resume"],
                                        accept_gate_failure=accept_gate_failure, events=events,
                                        per_target=per_target, from_stage=from_stage,
                                        to_stage=to_stage, verbose=verbose)
        except GateFailure as failure:
            print_table(console, gate_table(failure))
            raise
        finally:  # `edgetune status` then plans with this build's options (pipeline made .edgetune)
            remember_settings(out, config, overrides)
        results[profile.name] = result
        if result.bundle is None:  # --to
            if not as_json:
                console.print(f"Stopped after {result.stopped_after} (--to); outputs in {out}")
            continue
        if not as_json:
            print_table(console, eval_table(result.eval_report))
            label = f"Bundle ({profile.name}):" if per_target else "Bundle:"
            console.print(Text.assemble((label, "bold green"), f" {result.bundle.path}"))
            console.print(f"Verify: edgetune verify {result.bundle.path} "
                          f"--public-key {result.public_key}")
            if result.report is not None:
                console.print(f"Report: {result.report}")
    if as_json:
        def summary(r):
            if r.bundle is None:
                return {"stopped_after": r.stopped_after, "public_key": str(r.public_key)}
            return {"bundle": str(r.bundle.path), "bundle_id": r.bundle.bundle_id,
                    "key_id": r.bundle.key_id, "public_key": str(r.public_key),
                    "eval": r.eval_report}

        payload = (summary(next(iter(results.values()))) if not per_target
                   else {"targets": {name: summary(r) for name, r in results.items()}})
        echo(json.dumps(payload, indent=2))


@click.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Project file. Default: ./edgetune.yaml if there is one, else the demo.")
@click.option("--target", "targets", multiple=True,
              help="Device profile(s), as for build. Default: the project file's, else phone.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgetune-out"),
              show_default=True, help="The build's output directory.")
@signing_key_option(
    type=click.Path(path_type=Path),
    help="The creator's private key the build signs with (its .pub beside it is read). "
         "Default: ~/.edgetune/keys/edgetune.key.")
@json_option("Print the stages as JSON on stdout.")
def status(config, targets, out, private_key, as_json) -> None:
    """Show each build stage as up to date, stale (and why) or missing. Builds nothing.

    Reads the same project as `build`: the project file, and the options the last build into
    --out was given on the command line (kept in OUT/.edgetune/settings.json); --target wins.

    \b
    Examples:
      edgetune status
      edgetune status --config coach/edgetune.yaml --out coach-out --json
    """
    from edgetune import paths, stages
    from edgetune.pipeline import plan_build
    from edgetune.profiles import load_profile
    from edgetune.project import PROJECT_FILE
    from edgetune.project.load import resolve_project

    if config is None and Path(PROJECT_FILE).is_file():
        config = Path(PROJECT_FILE)
    overrides = remembered_settings(out, config)  # the last build's command-line options
    if targets:
        overrides["targets"] = list(targets)
    resolved = resolve_project(config, overrides)
    profiles = [load_profile(t) for t in resolved.targets]
    public_key = (Path(private_key) if private_key
                  else paths.keys_dir() / "edgetune.key").with_suffix(".pub")
    report = {}
    for profile in profiles:
        plans = plan_build(resolved.project, profile, out, public_key=public_key,
                           per_target=len(profiles) > 1)
        report[profile.name] = stages.states(out, plans)
    if as_json:
        echo(json.dumps({name: [{"stage": s.name, "folder": str(s.folder),
                                       "status": s.status, "why": s.why} for s in states]
                               for name, states in report.items()}, indent=2))
        return
    colour = {"up to date": "green", "stale": "yellow", "missing": "red"}
    for name, states in report.items():
        echo(f"{out} (target {name}):")
        for s in states:
            echo(f"  {s.name:<9} ", nl=False)
            echo(f"{s.status:<10}", fg=colour[s.status], nl=False)
            echo(f" {s.folder}" + (f"  ({s.why})" if s.why else ""))


@click.command()
def targets() -> None:
    """List the device profiles in quant_profiles/.

    One line each: quants built, context, RAM budget (MiB) and the decode-speed floor, which is
    measured on the build machine (not on the device).

    \b
    Example:
      edgetune targets
      edgetune build --target desktop
    """
    from edgetune.profiles import available_profiles, load_profile

    profiles = [load_profile(name) for name in available_profiles()]
    name_w = max(len(p.name) for p in profiles)
    quants_w = max(len(", ".join(p.quants)) for p in profiles)
    for name, p in zip(available_profiles(), profiles):
        floor = f"{p.min_decode_tps:g} tok/s" if p.min_decode_tps is not None else "none"
        echo(f"{name:<{name_w}}  {', '.join(p.quants):<{quants_w}}  ctx {p.context_length:<5} "
                   f"budget {p.memory_budget_mb:>6,} MiB  floor {floor:<10} {p.description}")


SETTINGS_FILE = "settings.json"  # in OUT/.edgetune/: the last build's command-line options
_PATH_SETTINGS = ("data.path", "data.sft_data")


def remember_settings(out: Path, config: Path | None, overrides: dict) -> None:
    """Keep the build's command-line options beside its stamps, once the build has made its
    state folder (never before: an existing --out must still be refused)."""
    from edgetune.artifacts import write_json_atomic
    from edgetune.stages import STATE_DIR

    state = Path(out) / STATE_DIR
    if state.is_dir():
        write_json_atomic(state / SETTINGS_FILE, {
            "config": str(Path(config).resolve()) if config else None,
            "overrides": {k: (str(Path(v).resolve()) if k in _PATH_SETTINGS else v)
                          for k, v in overrides.items()}})


def remembered_settings(out: Path, config: Path | None) -> dict:
    """The options of the last build into ``out`` with the same project file, else none."""
    from edgetune.stages import STATE_DIR

    try:
        saved = json.loads((Path(out) / STATE_DIR / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if saved.get("config") != (str(Path(config).resolve()) if config else None):
        return {}
    return {k: (Path(v) if k in _PATH_SETTINGS else v) for k, v in saved["overrides"].items()}
