"""Tests of thresher.pipeline.text: texts from templates, a column, or chat messages.

The oracles are plain Python: ``str.format`` for templates and a line-by-line
re-statement of Open-Instruct's ``_concat_messages`` for the Tulu format.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from thresher.exceptions import InputDataError, ParameterError
from thresher.pipeline.text import TextBuilder
from thresher.stores.pool import open_pool

CONVERSATIONS = [
    [{"role": "user", "content": "  What is 2+2? "}, {"role": "assistant", "content": "4\n"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": " Bye. "},
    ],
    [{"role": "user", "content": "Only a question"}],
]


def tulu_reference(messages: list[dict]) -> str:
    """Open-Instruct's ``_concat_messages`` with eos "</s>", message by message."""
    text = ""
    for message in messages:
        if message["role"] == "system":
            text += "<|system|>\n" + message["content"].strip() + "\n"
        elif message["role"] == "user":
            text += "<|user|>\n" + message["content"].strip() + "\n"
        elif message["role"] == "assistant":
            text += "<|assistant|>\n" + message["content"].strip() + "</s>\n"
        else:
            raise ValueError(message["role"])
    return text


def chat_table(conversations=CONVERSATIONS) -> pa.Table:
    return pa.table({"id": [f"f:{i}" for i in range(len(conversations))], "messages": conversations})


def test_template_matches_str_format():
    rows = [{"question": "Why?", "answer": "Because {braces} stay", "topic": "x"}, {"question": "Ünï", "answer": "ok", "topic": "y"}]
    table = pa.Table.from_pylist(rows)
    template = "Q: {question}\n{{literal}} A: {answer} ({question})"
    builder = TextBuilder(template)
    assert builder.required_columns == ["question", "answer"]
    assert builder.build(table) == [template.format(**row) for row in rows]


def test_template_works_on_chunked_and_large_string_columns():
    first = pa.table({"a": pa.array(["x", "y"], pa.large_string()), "b": ["1", "2"]})
    table = pa.concat_tables([first, first.slice(1)])
    assert table.column("a").num_chunks == 2
    assert TextBuilder("{a}-{b}").build(table) == ["x-1", "y-2", "y-2"]
    assert TextBuilder("{my col}!").build(pa.table({"my col": ["z"]})) == ["z!"]


def test_text_column_is_taken_as_is():
    table = pa.table({"text": ["  keep spaces ", "b"], "other": [1, 2]})
    builder = TextBuilder(text_column="text")
    assert builder.required_columns == ["text"]
    assert builder.build(table) == ["  keep spaces ", "b"]


def test_tulu_format_matches_open_instruct():
    builder = TextBuilder(messages_column="messages")
    assert builder.build(chat_table()) == [tulu_reference(c) for c in CONVERSATIONS]
    assert builder.build(chat_table())[0] == "<|user|>\nWhat is 2+2?\n<|assistant|>\n4</s>\n"


def test_plain_format():
    builder = TextBuilder(messages_column="messages", chat_format="plain")
    expected = ["\n".join(f"{m['role']}: {m['content'].strip()}" for m in c) for c in CONVERSATIONS]
    assert builder.build(chat_table()) == expected
    other_roles = chat_table([[{"role": "tool", "content": "42"}, {"role": "user", "content": "thanks"}]])
    assert builder.build(other_roles) == ["tool: 42\nuser: thanks"]


def test_messages_from_sliced_chunked_large_list_tables():
    table = chat_table()
    builder = TextBuilder(messages_column="messages")
    assert builder.build(table.slice(1)) == [tulu_reference(c) for c in CONVERSATIONS[1:]]
    chunked = pa.concat_tables([table.slice(2), table.slice(0, 2)])
    assert builder.build(chunked) == [tulu_reference(CONVERSATIONS[i]) for i in (2, 0, 1)]
    message = pa.struct([("role", pa.large_string()), ("content", pa.large_string()), ("name", pa.string())])
    large = pa.table({"messages": pa.array([[dict(m, name=None) for m in c] for c in CONVERSATIONS], pa.large_list(message))})
    assert builder.build(large) == [tulu_reference(c) for c in CONVERSATIONS]


def test_messages_read_from_a_jsonl_pool(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    pool = open_pool(path, partition_rows=2)
    builder = TextBuilder(messages_column="messages")
    texts = [t for k in range(pool.n_partitions) for t in builder.build(pool.read_partition(k, builder.required_columns), source=str(path))]
    assert texts == [tulu_reference(c) for c in CONVERSATIONS]


def test_describe():
    assert TextBuilder("{a}").describe() == {"kind": "template", "template": "{a}"}
    assert TextBuilder(text_column="t").describe() == {"kind": "column", "text_column": "t"}
    assert TextBuilder(messages_column="m", chat_format="plain").describe() == {"kind": "messages", "messages_column": "m", "chat_format": "plain"}
    json.dumps(TextBuilder(messages_column="m").describe())


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"template": "{a}", "text_column": "a"}, {"text_column": "a", "messages_column": "m"}, {"messages_column": "m", "chat_format": "llama"}],
)
def test_bad_settings(kwargs):
    with pytest.raises(ParameterError):
        TextBuilder(**kwargs)


@pytest.mark.parametrize("template", ["{a.b}", "{a[0]}", "{0}", "{}", "{a!r}", "{a:>10}", "no fields", "{a", 3])
def test_templates_with_other_than_plain_names_are_refused(template):
    with pytest.raises(ParameterError, match="'template' parameter of TextBuilder"):
        TextBuilder(template)


def test_missing_column_names_column_source_and_columns():
    table = pa.table({"question": ["q"], "n": [1]})
    with pytest.raises(InputDataError) as info:
        TextBuilder("{question} {answer}").build(table, source="data/a.jsonl")
    assert str(info.value) == "Column 'answer' named by the text template is not in data/a.jsonl; it has columns ['question', 'n']."
    with pytest.raises(InputDataError, match="Column 'text' named by text_column is not in the table"):
        TextBuilder(text_column="text").build(table)
    with pytest.raises(InputDataError, match="Column 'messages' named by messages_column"):
        TextBuilder(messages_column="messages").build(table)


def test_null_non_string_and_empty_values_name_the_row():
    table = pa.table({"id": ["a:0", "a:1", "a:2"], "t": ["x", None, "z"], "n": [1, 2, 3], "blank": ["x", "y", " \n\t"]})
    with pytest.raises(InputDataError, match=r"Column 't' is null in row id='a:1' of a\.jsonl"):
        TextBuilder("{t}").build(table, source="a.jsonl")
    with pytest.raises(InputDataError, match=r"Column 'n' of a\.jsonl holds int64 values, not strings \(e\.g\. row id='a:0'\)"):
        TextBuilder("{n}").build(table, source="a.jsonl")
    with pytest.raises(InputDataError, match=r"text built for row id='a:2' of a\.jsonl is empty"):
        TextBuilder(text_column="blank").build(table, source="a.jsonl")
    with pytest.raises(InputDataError, match=r"text built for row 2 of the table is empty"):
        TextBuilder(text_column="blank").build(table.drop_columns("id"))


def test_bad_messages_name_the_row():
    builder = TextBuilder(messages_column="messages")
    good = CONVERSATIONS[0]
    cases = [
        ([good, None], "Column 'messages' is null in row id='f:1'"),
        ([good, []], "Column 'messages' holds no messages in row id='f:1'"),
        ([good, [{"role": "user", "content": None}]], "A message of row id='f:1' .* has a null content"),
        ([good, [{"role": None, "content": "x"}]], "A message of row id='f:1' .* has a null role"),
        ([good, [None]], "A message of row id='f:1' .* is null"),
        ([good, good, [{"role": "tool", "content": "x"}]], "A message of row id='f:2' .* has role 'tool'; the tulu chat format"),
        ([good, [{"role": "assistant", "content": "  "}]], None),
    ]
    for conversations, message in cases:
        table = chat_table(conversations)
        if message is None:  # whitespace content alone still gives the role markers: not empty
            assert builder.build(table)[1] == "<|assistant|>\n</s>\n"
            continue
        with pytest.raises(InputDataError, match=message):
            builder.build(table, source="chat.jsonl")
    with pytest.raises(InputDataError, match=r"list of \{'role': str, 'content': str\} messages per row; it holds string"):
        builder.build(pa.table({"messages": ["user: hi"]}))
    with pytest.raises(InputDataError, match="it holds list<item: struct<role: string>>"):
        builder.build(pa.table({"messages": [[{"role": "user"}]]}))
