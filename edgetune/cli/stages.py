"""`edgetune train` and `edgetune eval`: one stage of the pipeline on its own (a LoRA adapter;
GGUF files on disk against a target). Registered on the main group in ``main``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgetune.cli.base import echo
from edgetune.cli.options import json_option, train_config, training_options


@click.command("eval")
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
@json_option("Print eval.json on stdout (progress and errors go to stderr).")
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
    from rich.text import Text

    from edgetune.cli.console import (build_events, eval_table, gate_table, print_table,
                                      stderr_console, stdout_for_results)
    from edgetune.data import Columns
    from edgetune.gates import GateFailure
    from edgetune.gguf_eval import evaluate_ggufs
    from edgetune.pipeline import held_out_rows
    from edgetune.project import demo_project
    from edgetune.profiles import load_profile

    from edgetune.preflight import check_output, read_text

    if all_rows and data is None:
        raise click.UsageError("--all-rows needs --data (the demo's rows include training rows)")
    check_output(out)  # before the evaluation, not when the report is written after it
    profile = load_profile(target)
    rows = held_out_rows(data, Columns(question=question_field, answer=answer_field),
                         all_rows=all_rows)
    system_prompt = (read_text(system_prompt_file, "--system-prompt-file").strip()
                     if system_prompt_file else demo_project().system_prompt)
    failure, console = None, stderr_console()
    try:
        with build_events(console) as events, stdout_for_results():
            report = evaluate_ggufs(f16, quants, out, profile, rows=rows,
                                    system_prompt=system_prompt, answer_format=answer_format,
                                    overwrite=overwrite, accept_gate_failure=accept_gate_failure,
                                    events=events)
        path = report.path / report.file
    except GateFailure as exc:
        failure, path = exc, out / "eval.json"
    if as_json:
        echo(path.read_text(), nl=False)
    else:
        print_table(console, eval_table(json.loads(path.read_text())))
        console.print(Text.assemble(("Report:", "bold green"),
                                    f" {path} (table: eval.md, chart: eval.png)"),
                      soft_wrap=True)  # a path to copy, never wrapped
    if failure is not None:
        print_table(console, gate_table(failure))
        failure.hint = ("see the tables above and eval.md; choose another --target, or pass "
                        "--accept-gate-failure to exit 0 anyway (recorded in eval.json)")
        raise failure

@click.command("train")
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
@training_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgetune-adapter"),
              show_default=True, help="Where the adapter goes (checkpoints: OUT.checkpoints).")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter and its checkpoints.")
@json_option()
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

    from rich.text import Text

    from edgetune.cli.console import build_events, stderr_console, stdout_for_results
    from edgetune.data import Columns, load_qa, split_qa
    from edgetune.events import step_detail
    from edgetune.project import demo_project
    from edgetune.training.config import TrainConfig
    from edgetune.training.trainer import train

    from edgetune.preflight import check_output, read_text

    check_output(out)  # before training, not when the adapter is saved after it
    if base_model is not None and Path(base_model).expanduser().is_dir():
        from edgetune.basemodel import check_complete

        check_complete(Path(base_model).expanduser())  # no model_type, no weights: now
    demo = demo_project()
    system_prompt = (read_text(system_prompt_file, "--system-prompt-file").strip()
                     if system_prompt_file else demo.system_prompt if data is None else "")
    base_cfg = demo.train if data is None else TrainConfig()
    if method == "sft" and training.get("answer_format") is None:
        base_cfg = dataclasses.replace(base_cfg, answer_format="r1")
    config = dataclasses.replace(train_config(base_cfg, training), method=method,
                                 system_prompt=system_prompt)
    if method == "sft":
        if data is None:
            raise click.UsageError("--method sft needs --data (reasoning examples to imitate)")
        from edgetune.sft_data import load_sft

        rows = load_sft(data, format=sft_format, system_prompt=system_prompt).examples
    else:
        loaded = load_qa(data or demo.data, Columns(question=question_field, answer=answer_field))
        for dropped in loaded.dropped:
            echo(f"note: {dropped}", err=True)
        rows = split_qa(loaded.rows, eval_fraction=demo.eval_fraction).train
    from edgetune.training.backends import preload_backend

    preload_backend(config.backend, base_model, config)  # Unsloth loads before transformers
    console = stderr_console()
    with build_events(console) as events, stdout_for_results():
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
        echo(json.dumps({"adapter": str(adapter.path), "method": adapter.method,
                               "backend": adapter.backend, "steps": adapter.steps,
                               "effective_config": adapter.effective_config}))
    else:
        console.print(Text.assemble(("Adapter:", "bold green"),
                                    f" {adapter.path}  (log: {adapter.path / adapter.log_file})"))

