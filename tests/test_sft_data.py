from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgetune.errors import ConfigError, DataError
from edgetune.sft_data import (SFT_FORMATS, SftData, SftExample, load_sft, think_answer,
                               to_prompt_completion)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *records: object) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def error(path: Path, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        load_sft(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.hint, "every DataError needs a hint"
    return info.value


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi?"},
                              {"from": "gpt", "value": "Hello."}]}
MESSAGES = {"messages": [user("Hi?"), bot("Hello.")]}
COT = {"Question": "Fever and rash?", "Complex_CoT": "Consider measles.", "Response": "Measles."}


# ----------------------------------------------------------------------------- think_answer

def test_think_answer_exact_string() -> None:
    assert think_answer("  step 1\nstep 2 \n", "\n 42  ") == "<think>\nstep 1\nstep 2\n</think>\n42"
    assert think_answer("", "42") == "<think>\n\n</think>\n42"


# ----------------------------------------------------------------------------- alpaca

def test_alpaca_jsonl_with_and_without_input(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "a.jsonl", ALPACA,
                 {"instruction": " Say hi. ", "output": " hi \n"},
                 {"instruction": "Say bye.", "input": None, "output": "bye"})
    data = load_sft(path)
    assert data == SftData(path=path, format="alpaca", skipped=0, examples=[
        SftExample((user("Add the numbers.\n\n2 and 3"), bot("5")), "a.jsonl:1"),
        SftExample((user("Say hi."), bot("hi")), "a.jsonl:2"),
        SftExample((user("Say bye."), bot("bye")), "a.jsonl:3"),
    ])


def test_alpaca_input_without_instruction_becomes_the_user_message(tmp_path: Path) -> None:
    data = load_sft(jsonl(tmp_path / "a.jsonl", {"instruction": "", "input": "2+2?",
                                                 "output": "4"}))
    assert data.examples[0].messages == (user("2+2?"), bot("4"))


def test_alpaca_json_list_names_records_by_index(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", json.dumps([ALPACA, {"instruction": "x", "output": "y"}]))
    data = load_sft(path)
    assert data.format == "alpaca"
    assert [(e.messages, e.source) for e in data.examples] == [
        ((user("Add the numbers.\n\n2 and 3"), bot("5")), "a.json:[0]"),
        ((user("x"), bot("y")), "a.json:[1]"),
    ]


def test_alpaca_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", 'instruction,input,output\n'
                                     'Add the numbers.,"2 and 3",5\n'
                                     '"Say\nhi.",,hi\n')
    data = load_sft(path)
    assert data == SftData(path=path, format="alpaca", skipped=0, examples=[
        SftExample((user("Add the numbers.\n\n2 and 3"), bot("5")), "a.csv:2"),
        SftExample((user("Say\nhi."), bot("hi")), "a.csv:3"),
    ])


def test_alpaca_csv_without_input_column(tmp_path: Path) -> None:
    data = load_sft(write(tmp_path / "a.csv", "output,instruction\nParis,Capital of France?\n"))
    assert data.examples == [SftExample((user("Capital of France?"), bot("Paris")), "a.csv:2")]


def test_gsm8k_alpaca_row_keeps_marker_text_untouched(tmp_path: Path) -> None:
    output = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 42"
    data = load_sft(jsonl(tmp_path / "gsm8k.jsonl", {"instruction": "How many clips?",
                                                     "output": output}))
    assert data.examples[0].messages[-1] == bot(output)


# ----------------------------------------------------------------------------- cot

def test_cot_jsonl_builds_think_block(tmp_path: Path) -> None:
    data = load_sft(jsonl(tmp_path / "med.jsonl", COT))
    assert data.format == "cot"
    assert data.examples == [SftExample(
        (user("Fever and rash?"), bot("<think>\nConsider measles.\n</think>\nMeasles.")),
        "med.jsonl:1")]


def test_cot_lower_case_keys_from_json(tmp_path: Path) -> None:
    path = write(tmp_path / "med.json", json.dumps([{"question": " Q? ", "complex_cot": " think ",
                                                     "response": " A "}]))
    data = load_sft(path)
    assert (data.format, data.examples[0].messages) == (
        "cot", (user("Q?"), bot("<think>\nthink\n</think>\nA")))


def test_cot_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "med.csv", 'Question,Complex_CoT,Response\n'
                                       'Q?,"step 1\nstep 2",A\n')
    data = load_sft(path)
    assert (data.format, data.examples) == ("cot", [SftExample(
        (user("Q?"), bot("<think>\nstep 1\nstep 2\n</think>\nA")), "med.csv:2")])


def test_cot_empty_response_is_skipped_but_empty_thought_is_kept(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "med.jsonl",
                 {"Question": "Q1", "Complex_CoT": "t", "Response": "  "},
                 {"Question": "Q2", "Complex_CoT": "", "Response": "A2"})
    data = load_sft(path)
    assert data.skipped == 1
    assert data.examples == [SftExample((user("Q2"), bot("<think>\n\n</think>\nA2")),
                                        "med.jsonl:2")]


# ----------------------------------------------------------------------------- sharegpt / messages

def test_sharegpt_human_gpt_with_system_field(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", {**SHAREGPT, "system": " Be brief. "})
    data = load_sft(path)
    assert (data.format, data.examples) == ("sharegpt", [SftExample(
        (system("Be brief."), user("Hi?"), bot("Hello.")), "s.jsonl:1")])


def test_sharegpt_role_content_turns_and_extra_keys_dropped(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", {"conversations": [
        {"role": "system", "content": "S", "weight": 0},
        {"role": "user", "content": "Q", "name": "ann"},
        {"from": "gpt", "value": "A", "weight": 1}]})
    messages = load_sft(path).examples[0].messages
    assert messages == (system("S"), user("Q"), bot("A"))
    assert all(set(m) == {"role", "content"} for m in messages)


def test_sharegpt_multi_turn_is_kept_from_json(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "2"},
             {"from": "human", "value": "times 3?"}, {"from": "gpt", "value": "6"}]
    data = load_sft(write(tmp_path / "s.json", json.dumps([{"conversations": turns}])))
    assert data.examples == [SftExample(
        (user("1+1?"), bot("2"), user("times 3?"), bot("6")), "s.json:[0]")]


def test_messages_jsonl_and_json_data_wrapper(tmp_path: Path) -> None:
    record = {"messages": [system("S"), user("Q"), bot("A")]}
    for path in (jsonl(tmp_path / "m.jsonl", record),
                 write(tmp_path / "m.json", json.dumps({"data": [record]}))):
        data = load_sft(path)
        assert (data.format, data.examples[0].messages) == (
            "messages", (system("S"), user("Q"), bot("A")))


def test_trailing_user_turn_is_dropped(tmp_path: Path) -> None:
    data = load_sft(jsonl(tmp_path / "m.jsonl",
                          {"messages": [user("Q"), bot("A"), user("and then?")]}))
    assert data.examples[0].messages == (user("Q"), bot("A"))


def test_conversation_without_assistant_is_an_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "m.jsonl", MESSAGES, {"messages": [system("S"), user("Q")]})
    exc = error(path)
    assert exc.message == "m.jsonl:2: the conversation has no assistant message"
    assert error(jsonl(tmp_path / "e.jsonl", {"conversations": []})).message == (
        "e.jsonl:1: the conversation has no assistant message")


def test_same_role_twice_in_a_row_names_row_and_turn(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", SHAREGPT, {"conversations": [
        {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"},
        {"from": "gpt", "value": "A again"}]})
    assert error(path).message == "s.jsonl:2: conversations[2]: two 'assistant' messages in a row"


@pytest.mark.parametrize("turns, message", [
    ([bot("A"), user("Q"), bot("A")],
     "m.jsonl:1: messages[0]: the conversation starts with an assistant message"),
    ([user("Q"), system("S"), bot("A")],
     "m.jsonl:1: messages[1]: a system message after the start of the conversation"),
    ([user("Q"), {"role": "tool", "content": "x"}],
     "m.jsonl:1: messages[1]: unknown role 'tool'"),
    ([user("Q"), {"role": "assistant", "content": None}],
     "m.jsonl:1: messages[1].content must be a string, got null"),
    ([user("Q"), {"role": "assistant"}],
     "m.jsonl:1: messages[1] needs 'from' and 'value' or 'role' and 'content', found 'role'"),
    ([user("Q"), "A"], "m.jsonl:1: messages[1] must be an object, got a string"),
])
def test_broken_turns_are_errors(tmp_path: Path, turns: list, message: str) -> None:
    assert error(jsonl(tmp_path / "m.jsonl", {"messages": turns})).message == message


def test_system_in_field_and_in_turns_is_an_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "m.jsonl", {"system": "A", "messages": [system("B"), user("Q"),
                                                                    bot("R")]})
    assert error(path).message == ("m.jsonl:1: has a system message both in field 'system' "
                                   "and in messages[0]")


# ----------------------------------------------------------------------------- formats

@pytest.mark.parametrize("fmt, record", [("alpaca", ALPACA), ("sharegpt", SHAREGPT),
                                         ("messages", MESSAGES), ("cot", COT)])
def test_auto_detection_and_forced_format_agree(tmp_path: Path, fmt: str, record: dict) -> None:
    path = jsonl(tmp_path / "d.jsonl", record, record)
    auto = load_sft(path)
    assert auto.format == fmt and len(auto.examples) == 2
    assert load_sft(path, format=fmt) == auto


def test_forced_format_mismatch(tmp_path: Path) -> None:
    exc = error(jsonl(tmp_path / "d.jsonl", SHAREGPT), format="alpaca")
    assert exc.message == ("d.jsonl:1: fields 'conversations' do not fit the 'alpaca' format "
                           "(it looks like 'sharegpt')")
    assert '"instruction"' in exc.hint and "auto" in exc.hint


def test_mixed_format_file_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "mix.jsonl",
                 json.dumps(ALPACA) + "\n\n" + json.dumps(ALPACA) + "\n" + json.dumps(COT) + "\n")
    exc = error(path)
    assert exc.message == ("mix.jsonl:4: fields 'Question', 'Complex_CoT', 'Response' do not fit "
                           "the 'alpaca' format detected from mix.jsonl:1 (it looks like 'cot')")


def test_unknown_keys_error_lists_fields_and_shapes(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.jsonl", "\n" + json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    exc = error(path)
    assert exc.message == ("odd.jsonl:2: cannot tell the SFT format from the fields "
                           "'prompt', 'answer'")
    for fmt in SFT_FORMATS:
        assert f"{fmt}: {{" in exc.hint
    assert '"Complex_CoT"' in exc.hint and '"from": "human"' in exc.hint


def test_record_fitting_two_formats_asks_for_a_choice(tmp_path: Path) -> None:
    exc = error(jsonl(tmp_path / "d.jsonl", {**ALPACA, **MESSAGES}))
    assert exc.message.endswith("fit several SFT formats (alpaca, messages)")
    assert load_sft(tmp_path / "d.jsonl", format="messages").format == "messages"


def test_unknown_format_argument_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_sft(jsonl(tmp_path / "d.jsonl", ALPACA), format="chatml")
    assert info.value.message == "unknown SFT format 'chatml'"
    assert "alpaca, sharegpt, messages, cot" in (info.value.hint or "")


def test_conversation_formats_cannot_come_from_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "messages\n\"[]\"\n")
    assert error(path).message == "c.csv:2: the 'messages' format cannot be read from CSV"
    forced = error(write(tmp_path / "a.csv", "instruction,output\nq,a\n"), format="sharegpt")
    assert forced.message == f"{tmp_path / 'a.csv'}: the 'sharegpt' format cannot be read from CSV"
    assert ".jsonl" in forced.hint


def test_non_string_field_is_an_error(tmp_path: Path) -> None:
    exc = error(jsonl(tmp_path / "a.jsonl", ALPACA, {"instruction": "q", "output": 42}))
    assert exc.message == "a.jsonl:2: field 'output' must be a string, got a number"


def test_bad_json_line_and_non_object_record_are_errors(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.jsonl", json.dumps(ALPACA) + "\n{oops\n")
    assert error(bad).message.startswith("bad.jsonl:2: not valid JSON")
    assert error(jsonl(tmp_path / "list.jsonl", ["x"])).message == (
        "list.jsonl:1: expected an object, got a list")


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    assert error(tmp_path / "nope.jsonl").message.endswith("nope.jsonl: file not found")


# ----------------------------------------------------------------------------- system prompt

def test_system_prompt_is_inserted_when_missing(tmp_path: Path) -> None:
    data = load_sft(jsonl(tmp_path / "d.jsonl", ALPACA), system_prompt="  Think step by step. ")
    assert data.examples[0].messages == (system("Think step by step."),
                                         user("Add the numbers.\n\n2 and 3"), bot("5"))


def test_system_message_from_data_wins_over_system_prompt(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"messages": [system("From data."), user("Q"), bot("A")]},
                 {**MESSAGES, "system": "From field."}, MESSAGES)
    data = load_sft(path, system_prompt="Default.")
    assert [e.messages[0] for e in data.examples] == [
        system("From data."), system("From field."), system("Default.")]


def test_empty_system_message_gives_way_to_system_prompt(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"messages": [system(" "), user("Q"), bot("A")]})
    assert load_sft(path).examples[0].messages == (user("Q"), bot("A"))
    assert load_sft(path, system_prompt="Default.").examples[0].messages == (
        system("Default."), user("Q"), bot("A"))


def test_blank_system_prompt_adds_nothing(tmp_path: Path) -> None:
    data = load_sft(jsonl(tmp_path / "d.jsonl", MESSAGES), system_prompt="   ")
    assert data.examples[0].messages == (user("Hi?"), bot("Hello."))


# ----------------------------------------------------------------------------- skipping

def test_empty_user_or_assistant_records_are_skipped_and_counted(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl",
                 {"messages": [user("  "), bot("A")]},
                 {"messages": [user("Q1"), bot("A1"), user("Q2"), bot("\n")]},
                 {"messages": [user("Q"), bot("A"), user("")]},   # empty turn is dropped, kept
                 MESSAGES)
    data = load_sft(path)
    assert data.skipped == 2
    assert [e.source for e in data.examples] == ["d.jsonl:3", "d.jsonl:4"]


def test_every_record_skipped_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "instruction,output\n,a\nq,  \n")
    assert error(path).message == (f"{path}: every record has an empty user or assistant message "
                                   "(2 skipped)")


@pytest.mark.parametrize("name, text", [("e.jsonl", "\n  \n"), ("e.json", ""), ("e.json", "[]"),
                                        ("e.csv", ""), ("e.csv", "instruction,output\n")])
def test_file_without_records_is_an_error(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    exc = error(path)
    assert exc.message == f"{path}: has no records"
    assert "alpaca: {" in exc.hint


# ----------------------------------------------------------------------------- output

def test_to_prompt_completion_exact_structure(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"conversations": [
        {"from": "system", "value": "S"}, {"from": "human", "value": "Q1"},
        {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"},
        {"from": "gpt", "value": "A2"}]})
    example = load_sft(path).examples[0]
    row = to_prompt_completion(example)
    assert row == {"prompt": [system("S"), user("Q1"), bot("A1"), user("Q2")],
                   "completion": [bot("A2")]}
    assert type(row["prompt"]) is list and type(row["completion"]) is list
    assert all(type(m) is dict for m in row["prompt"] + row["completion"])
    row["completion"][0]["content"] = "changed"
    assert example.messages[-1] == bot("A2"), "the row must not alias the example's messages"


def test_module_imports_without_heavy_libraries() -> None:
    code = ("import sys, edgetune.sft_data; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
