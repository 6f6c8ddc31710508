"""The ``edgetune`` command: a thin Click layer over the pipeline's stage functions.

Heavy libraries (torch, transformers, llama_cpp) load inside commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgetune import __version__
from edgetune.cli.base import ErrorGroup
from edgetune.stages import STAGES


class _Cli(ErrorGroup, click.Group):
    """The main group: EdgetuneError becomes ``Error:`` / ``Hint:`` lines (cli_base.ErrorGroup)."""


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="edgetune")
def cli() -> None:
    """Turn your own Q&A into a small, signed reasoning model that runs offline on a phone.

    \b
    Quick start (built-in demo, no config):
      edgetune build --target phone
    Set EDGETUNE_DEBUG=1 to see tracebacks.
    """


def _training_options(fn):
    """GRPO/SFT settings shared by `build` and `train` (defaults: see TrainConfig)."""
    options = [
        click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps."),
        click.option("--backend", type=click.Choice(["auto", "trl", "unsloth"]), default="auto",
                     show_default=True,
                     help="auto: Unsloth on an NVIDIA GPU when installed, else TRL + PEFT."),
        click.option("--base-bits", type=click.Choice(["4", "16"]), default=None,
                     help="Load the base in 4 or 16 bit (GPU). Default: 16 if it fits, else 4."),
        click.option("--num-generations", type=click.IntRange(min=2), default=None,
                     help="GRPO completions per prompt."),
        click.option("--prompts-per-step", type=click.IntRange(min=1), default=None,
                     help="GRPO prompts per micro-batch."),
        click.option("--gradient-accumulation-steps", type=click.IntRange(min=1), default=None),
        click.option("--max-completion-length", type=click.IntRange(min=8), default=None,
                     help="GRPO: longest completion in tokens."),
        click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None),
        click.option("--lora-r", type=click.IntRange(min=1), default=None, help="LoRA rank."),
        click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="GRPO sampling temperature."),
        click.option("--answer-format", type=click.Choice(["reasoning", "think", "r1"]), default=None,
                     help="What the rewards expect: <reasoning>..</reasoning><answer>..</answer> "
                          "(default), <think>..</think><answer>..</answer>, or r1: <think>..</think> "
                          "then the plain answer (default after SFT on <think> data)."),
        click.option("--checkpoint-every", type=click.IntRange(min=0), default=None,
                     help="Save a resumable checkpoint every N steps (0: only on Ctrl-C)."),
        click.option("--resume", is_flag=True,
                     help="Continue an interrupted run from its last checkpoint."),
        click.option("--gpus", type=click.IntRange(min=1), default=None,
                     help="Train on N GPUs of this machine through accelerate (data parallel; "
                          "DeepSpeed ZeRO-3 when the base does not fit one GPU). Default: 1."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


_TRAIN_FIELDS = ("steps", "backend", "num_generations", "prompts_per_step",
                 "gradient_accumulation_steps", "max_completion_length", "learning_rate", "lora_r",
                 "temperature", "answer_format", "checkpoint_every", "gpus")


def _train_config(base, options: dict):
    """Command-line values over ``base``; options left unset keep the base's values."""
    import dataclasses

    changes = {k: options[k] for k in _TRAIN_FIELDS if options.get(k) is not None}
    if options.get("base_bits") is not None:
        changes["base_bits"] = int(options["base_bits"])
    return dataclasses.replace(base, **changes)


@cli.command()
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
    from edgetune.project import PROJECT_FILE, init_project

    for item in init_project(directory, name=name, force=force):
        click.echo(f"{item.action:<8} {item.path}")
    here = Path(os.path.abspath(directory)) == Path.cwd()
    config = directory / PROJECT_FILE
    click.echo(f"Next: edit {config}, then run: "
               + ("edgetune build" if here else f"edgetune build --config {config}"))


# Where each `build` option lands in the project file ("section.key"); see edgetune.project.
_BUILD_SETTINGS = {"targets": "targets", "data": "data.path",
                   "question_field": "data.question_field", "answer_field": "data.answer_field",
                   "base_model": "project.base_model", "name": "project.name",
                   "sft_data": "data.sft_data", "sft_steps": "data.sft_steps",
                   "answer_format": "method.answer_format",
                   **{k: f"train.{k}" for k in _TRAIN_FIELDS if k != "answer_format"}}


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
        settings["persona.system_prompt"] = given["system_prompt_file"].read_text().strip()
    return settings


@cli.command()
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
@click.option("--name", default=None, help="Model name, used in file names and the bundle id.")
@click.option("--system-prompt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="System prompt used in training and as the persona prompt.")
@click.option("--sft-data", type=click.Path(path_type=Path), default=None,
              help="<think>-style examples (Alpaca, ShareGPT, messages, Question/Complex_CoT/"
                   "Response) for an SFT warm start before GRPO.")
@click.option("--sft-steps", type=click.IntRange(min=1), default=60, show_default=True)
@_training_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgetune-out"),
              show_default=True, help="Output directory (one folder per stage).")
@click.option("--from", "from_stage", type=click.Choice(STAGES), default=None,
              help="Redo this stage and every later one, even if up to date.")
@click.option("--to", "to_stage", type=click.Choice(STAGES), default=None,
              help="Stop after this stage.")
@click.option("--key", type=click.Path(path_type=Path), default=None,
              help="Private signing key. Default: ~/.edgetune/keys/edgetune.key, created if missing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--accept-gate-failure", is_flag=True,
              help="Ship even if a quant fails the target's quality gates (recorded in the manifest).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def build(config, targets, data, question_field, answer_field, base_model, name,
          system_prompt_file, sft_data, sft_steps, out, from_stage, to_stage, key, overwrite,
          accept_gate_failure, as_json, **training) -> None:
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
    from rich.markup import escape

    from edgetune.cli.console import RichEvents, console, eval_table
    from edgetune.pipeline import build as run_build
    from edgetune.profiles import load_profile
    from edgetune.project import PROJECT_FILE, resolve_project

    # The options above reach the project through _build_overrides, only where they were given.
    if config is None and Path(PROJECT_FILE).is_file():
        config = Path(PROJECT_FILE)
        console.print(f"[yellow]note:[/] using ./{PROJECT_FILE} (pass --config to choose another "
                      "project file)")
    resolved = resolve_project(config, _build_overrides(click.get_current_context()))
    profiles = [load_profile(t) for t in resolved.targets]
    project = resolved.project
    passphrase = os.environ.get("EDGETUNE_KEY_PASSPHRASE") or None
    per_target = len(profiles) > 1  # out/targets/<name>/: the targets share train .. convert

    from edgetune.gates import GateFailure

    results = {}
    for profile in profiles:
        try:
            with RichEvents() as events, _stdout_for_results():
                result = run_build(project, profile, out, key=key, passphrase=passphrase,
                                   overwrite=overwrite and not results, resume=training["resume"],
                                   accept_gate_failure=accept_gate_failure, events=events,
                                   per_target=per_target, from_stage=from_stage,
                                   to_stage=to_stage)
        except GateFailure as failure:
            from edgetune.cli.console import gate_table

            console.print(gate_table(failure))
            raise
        results[profile.name] = result
        if result.bundle is None:  # --to
            if not as_json:
                console.print(f"Stopped after {result.stopped_after} (--to); outputs in {out}")
            continue
        if not as_json:
            console.print(eval_table(result.eval_report))
            label = f"Bundle ({escape(profile.name)}):" if per_target else "Bundle:"
            console.print(f"[bold green]{label}[/] {result.bundle.path}")
            console.print(f"Verify: edgetune verify {result.bundle.path} --key {result.public_key}")
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
        click.echo(json.dumps(payload, indent=2))


@cli.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Project file. Default: ./edgetune.yaml if there is one, else the demo.")
@click.option("--target", "targets", multiple=True,
              help="Device profile(s), as for build. Default: the project file's, else phone.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgetune-out"),
              show_default=True, help="The build's output directory.")
@click.option("--key", type=click.Path(path_type=Path), default=None,
              help="The signing key the build uses. Default: ~/.edgetune/keys/edgetune.key.")
@click.option("--json", "as_json", is_flag=True, help="Print the stages as JSON on stdout.")
def status(config, targets, out, key, as_json) -> None:
    """Show each build stage as up to date, stale (and why) or missing. Builds nothing.

    Reads the same project as `build` (the project file and --target); options that `build`
    was given on the command line are not known here, so keep them in edgetune.yaml.

    \b
    Examples:
      edgetune status
      edgetune status --config coach/edgetune.yaml --out coach-out --json
    """
    from edgetune import paths, stages
    from edgetune.pipeline import plan_build
    from edgetune.profiles import load_profile
    from edgetune.project import PROJECT_FILE, resolve_project

    if config is None and Path(PROJECT_FILE).is_file():
        config = Path(PROJECT_FILE)
    resolved = resolve_project(config, {"targets": list(targets)} if targets else {})
    profiles = [load_profile(t) for t in resolved.targets]
    public_key = (Path(key) if key else paths.keys_dir() / "edgetune.key").with_suffix(".pub")
    report = {}
    for profile in profiles:
        plans = plan_build(resolved.project, profile, out, public_key=public_key,
                           per_target=len(profiles) > 1)
        report[profile.name] = stages.states(out, plans)
    if as_json:
        click.echo(json.dumps({name: [{"stage": s.name, "folder": str(s.folder),
                                       "status": s.status, "why": s.why} for s in states]
                               for name, states in report.items()}, indent=2))
        return
    colour = {"up to date": "green", "stale": "yellow", "missing": "red"}
    for name, states in report.items():
        click.echo(f"{out} (target {name}):")
        for s in states:
            text = click.style(f"{s.status:<10}", fg=colour[s.status])
            click.echo(f"  {s.name:<9} {text} {s.folder}" + (f"  ({s.why})" if s.why else ""))


@cli.command("eval")
@click.argument("f16", type=click.Path(path_type=Path))
@click.argument("quants", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--target", default="phone", show_default=True,
              help="Device profile whose gates, context and eval_context apply.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Q&A file (.jsonl, .json, .csv); its held-out rows, split as `build` splits "
                   "them, are the eval text. Default: the built-in demo's held-out questions.")
@click.option("--all-rows", is_flag=True,
              help="Evaluate on every row of --data (a file kept out of training).")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--system-prompt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="System prompt of the held-out conversations. Default: the "
                                 "demo's, as in `build`.")
@click.option("--answer-format", type=click.Choice(["reasoning", "think", "r1"]),
              default="reasoning", show_default=True,
              help="The answer layout task accuracy expects (as trained).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgetune-eval"),
              show_default=True, help="Folder for eval.json, eval.md and eval.png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("--accept-gate-failure", is_flag=True,
              help="Exit 0 even if a quant fails the target's gates (recorded in eval.json).")
@click.option("--json", "as_json", is_flag=True,
              help="Print eval.json on stdout (progress and errors go to stderr).")
def eval_cmd(f16, quants, target, data, all_rows, question_field, answer_field, system_prompt_file,
             answer_format, out, overwrite, accept_gate_failure, as_json) -> None:
    """Evaluate GGUF files on disk: every quant against the F16 GGUF, gated by a target.

    The same measurements as `build`'s evaluate stage (KL divergence, top-1, perplexity, task
    accuracy, speed, RAM), written to --out as eval.json, a Markdown table (eval.md) and a chart
    (eval.png). Quant names come from each GGUF's file type. Exits 1 when a quant fails the
    target's gates, after writing the report.

    \b
    Examples:
      edgetune eval edgetune-out/gguf/edgetune-demo-F16.gguf \\
          edgetune-out/quants/edgetune-demo-Q4_K_M.gguf edgetune-out/quants/edgetune-demo-Q8_0.gguf
      edgetune eval coach-F16.gguf coach-Q4_K_M.gguf coach-Q8_0.gguf --data qa.jsonl \\
          --system-prompt-file persona.txt --target phone-4gb --out coach-eval
      edgetune eval F16.gguf Q4_K_M.gguf --data held-out.jsonl --all-rows --json
    """
    from edgetune.cli.console import RichEvents, console, eval_table, gate_table
    from edgetune.data import Columns
    from edgetune.gates import GateFailure
    from edgetune.gguf_eval import evaluate_ggufs
    from edgetune.pipeline import held_out_rows
    from edgetune.project import demo_project
    from edgetune.profiles import load_profile

    if all_rows and data is None:
        raise click.UsageError("--all-rows needs --data (the demo's rows include training rows)")
    profile = load_profile(target)
    rows = held_out_rows(data, Columns(question=question_field, answer=answer_field),
                         all_rows=all_rows)
    system_prompt = (system_prompt_file.read_text().strip() if system_prompt_file
                     else demo_project().system_prompt)
    failure = None
    try:
        with RichEvents() as events, _stdout_for_results():
            report = evaluate_ggufs(f16, quants, out, profile, rows=rows,
                                    system_prompt=system_prompt, answer_format=answer_format,
                                    overwrite=overwrite, accept_gate_failure=accept_gate_failure,
                                    events=events)
        path = report.path / report.file
    except GateFailure as exc:
        failure, path = exc, out / "eval.json"
    if as_json:
        click.echo(path.read_text(), nl=False)
    else:
        console.print(eval_table(json.loads(path.read_text())))
        console.print(f"[bold green]Report:[/] {path} (table: eval.md, chart: eval.png)",
                      soft_wrap=True)  # a path to copy, never wrapped
    if failure is not None:
        console.print(gate_table(failure))
        failure.hint = ("see the tables above and eval.md; choose another --target, or pass "
                        "--accept-gate-failure to exit 0 anyway (recorded in eval.json)")
        raise failure


@cli.command("train")
@click.option("--method", type=click.Choice(["grpo", "sft"]), default="grpo", show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="GRPO: Q&A file (default: the demo questions). SFT: <think>-style examples.")
@click.option("--format", "sft_format", type=click.Choice(["auto", "alpaca", "sharegpt", "messages", "cot"]),
              default="auto", show_default=True, help="SFT data layout.")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--base-model", default=None, help="HF model dir or hub id. Default: the demo model.")
@click.option("--init-adapter", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Continue training this adapter (e.g. GRPO after SFT).")
@click.option("--system-prompt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None)
@_training_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgetune-adapter"),
              show_default=True, help="Where the adapter goes (checkpoints: OUT.checkpoints).")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter and its checkpoints.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def train_cmd(method, data, sft_format, question_field, answer_field, base_model, init_adapter,
              system_prompt_file, out, overwrite, as_json, **training) -> None:
    """Train a LoRA adapter: GRPO on Q&A, or an SFT warm start on reasoning examples.

    Ctrl-C saves a checkpoint; run the same command with --resume to continue.

    \b
    Examples:
      edgetune train --steps 20                              # GRPO on the demo
      edgetune train --method sft --data medical-o1.jsonl --base-model Qwen/Qwen2.5-1.5B-Instruct \\
          --out sft --steps 200
      edgetune train --data qa.jsonl --base-model Qwen/Qwen2.5-1.5B-Instruct --init-adapter sft \\
          --answer-format r1 --out grpo --steps 300
    """
    import dataclasses

    from edgetune.cli.console import RichEvents, console
    from edgetune.data import Columns, load_qa, split_qa
    from edgetune.events import step_detail
    from edgetune.project import demo_project
    from edgetune.training.config import TrainConfig
    from edgetune.training.trainer import train

    demo = demo_project()
    system_prompt = system_prompt_file.read_text().strip() if system_prompt_file else (
        demo.system_prompt if data is None else "")
    base_cfg = demo.train if data is None else TrainConfig()
    if method == "sft" and training.get("answer_format") is None:
        base_cfg = dataclasses.replace(base_cfg, answer_format="r1")
    config = dataclasses.replace(_train_config(base_cfg, training), method=method,
                                 system_prompt=system_prompt)
    if method == "sft":
        if data is None:
            raise click.UsageError("--method sft needs --data (reasoning examples to imitate)")
        from edgetune.sft_data import load_sft

        rows = load_sft(data, format=sft_format, system_prompt=system_prompt).examples
    else:
        loaded = load_qa(data or demo.data, Columns(question=question_field, answer=answer_field))
        rows = split_qa(loaded.rows, eval_fraction=demo.eval_fraction).train
    from edgetune.training.backends import preload_backend

    preload_backend(config.backend, base_model, config)  # Unsloth loads before transformers
    with RichEvents() as events, _stdout_for_results():
        if base_model is None:
            from edgetune.pipeline import build_demo_base

            base_model = build_demo_base(events)
        events.stage(method, f"{method.upper()}, {config.steps} steps, {len(rows)} rows")
        adapter = train(base_model, rows, config, out, init_adapter=init_adapter,
                        resume=training["resume"], overwrite=overwrite,
                        on_step=lambda s: events.progress(method, s.step, s.total, step_detail(s)),
                        on_note=events.note)
        events.stage_done(method, str(adapter.path))
    if as_json:
        click.echo(json.dumps({"adapter": str(adapter.path), "method": adapter.method,
                               "backend": adapter.backend, "steps": adapter.steps,
                               "effective_config": adapter.effective_config}))
    else:
        console.print(f"[bold green]Adapter:[/] {adapter.path}  (log: {adapter.path / adapter.log_file})")


def _stdout_for_results():
    """Send whatever libraries print while a stage runs (Unsloth prints its banner and notices
    with print()) to stderr, so stdout carries only our results and `--json` stays parseable."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


@cli.command()
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
        click.echo(f"{name:<{name_w}}  {', '.join(p.quants):<{quants_w}}  ctx {p.context_length:<5} "
                   f"budget {p.memory_budget_mb:>6,} MiB  floor {floor:<10} {p.description}")


from edgetune.cli.bundle import keys, license_group, sign, verify  # noqa: E402  (after cli)
from edgetune.cli.chat import chat, compare  # noqa: E402
from edgetune.cli.followers import followers  # noqa: E402
from edgetune.cli.hub import publish, pull  # noqa: E402

for _command in (keys, verify, sign, license_group, chat, compare, publish, followers, pull):
    cli.add_command(_command)


def main() -> None:
    # Library progress bars and advisories would interleave with our own live view.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    cli(prog_name="edgetune")


if __name__ == "__main__":
    main()
