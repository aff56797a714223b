"""Building the text to embed from a pool's rows: a template, a text column, or a chat.

RDS+ (Ivison et al. 2025, arXiv 2503.01807) embeds each pool example as the
whole conversation in the Tulu chat format of Open-Instruct, the format the
model being selected for is finetuned on; :class:`TextBuilder` reproduces that
format exactly, and also builds text from a format-string template over
columns or takes one column as it is. Texts are built with Arrow compute
kernels over whole columns, never a Python loop per row; rows that would give
no usable text are refused with their id and source, never skipped silently.
"""

from __future__ import annotations

import string
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.exceptions import InputDataError, ParameterError, parameter_error

ChatFormat = Literal["tulu", "plain"]

_CHAT_FORMATS = ("tulu", "plain")
_TULU_ROLES = ("system", "user", "assistant")
# Open-Instruct's Tulu format: per message a role header, the stripped content, and an end marker.
_TULU_PREFIX = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
_TULU_SUFFIX = {"system": "\n", "user": "\n", "assistant": "</s>\n"}


class TextBuilder:
    """Turns a table of pool rows into one text per row.

    Give exactly one of ``template``, ``text_column`` and ``messages_column``.

    Parameters
    ----------
    template : str, optional
        A Python format string whose fields are plain column names, e.g.
        ``"Question: {question}\\nAnswer: {answer}"``. Literal braces are written ``{{`` and ``}}``.
        Fields with attributes, indices, conversions or format specs are refused.
    text_column : str, optional
        A string column taken as it is.
    messages_column : str, optional
        A column holding a list of ``{"role": str, "content": str}`` messages per row.
    chat_format : {"tulu", "plain"}, default "tulu"
        How messages become text (the content of every message is stripped of surrounding whitespace):

        - "tulu", as Open-Instruct's ``_concat_messages`` (the RDS+ reference), message by message::

              system:    "<|system|>\\n" + content + "\\n"
              user:      "<|user|>\\n" + content + "\\n"
              assistant: "<|assistant|>\\n" + content + "</s>\\n"

          so a user turn and its answer give ``"<|user|>\\nHi\\n<|assistant|>\\nHello!</s>\\n"``.
          Any other role is refused.
        - "plain": one ``"{role}: {content}"`` line per message, joined by ``"\\n"``; any role.

    Attributes
    ----------
    required_columns : list of str
        The columns :meth:`build` reads.
    """

    def __init__(
        self,
        template: str | None = None,
        *,
        text_column: str | None = None,
        messages_column: str | None = None,
        chat_format: ChatFormat = "tulu",
    ):
        sources = (("template", template), ("text_column", text_column), ("messages_column", messages_column))
        given = [name for name, value in sources if value is not None]
        if len(given) != 1:
            raise ParameterError(
                f"TextBuilder needs exactly one of 'template', 'text_column' and 'messages_column'; got {given or 'none'}."
            )
        if chat_format not in _CHAT_FORMATS:
            raise parameter_error("TextBuilder", "chat_format", f"one of {list(_CHAT_FORMATS)}", chat_format)
        for name, value in (("text_column", text_column), ("messages_column", messages_column)):
            if value is not None and (not isinstance(value, str) or not value):
                raise parameter_error("TextBuilder", name, "a column name", value)
        self.template = template
        self.text_column = text_column
        self.messages_column = messages_column
        self.chat_format: ChatFormat = chat_format
        if template is not None:
            self._pieces = _parse_template(template)
            self.required_columns = list(dict.fromkeys(field for _, field in self._pieces if field is not None))
        else:
            self._pieces = []
            self.required_columns = [text_column if text_column is not None else messages_column]  # type: ignore[list-item]

    def __repr__(self) -> str:
        if self.template is not None:
            return f"TextBuilder(template={self.template!r})"
        if self.text_column is not None:
            return f"TextBuilder(text_column={self.text_column!r})"
        return f"TextBuilder(messages_column={self.messages_column!r}, chat_format={self.chat_format!r})"

    def describe(self) -> dict[str, Any]:
        """The settings, JSON-able, for manifests and fingerprints."""
        if self.template is not None:
            return {"kind": "template", "template": self.template}
        if self.text_column is not None:
            return {"kind": "column", "text_column": self.text_column}
        return {"kind": "messages", "messages_column": self.messages_column, "chat_format": self.chat_format}

    def check_schema(self, schema: pa.Schema, *, where: str = "the pool", example: Any = None) -> None:
        """Refuse, before any row is read, a required column whose type can never give text.

        A text or template column must hold strings; a messages column a list of structs with string
        ``role`` and ``content`` fields. A column of type null (no value seen yet) is left to :meth:`build`.

        Parameters
        ----------
        schema : pyarrow.Schema
            The pool's column types.
        where : str
            The pool's file, for the message.
        example : callable, optional
            ``example(column)`` gives a short "row ... holds ..." phrase naming a row with a bad value, or "".
        """
        role = "the text template" if self.template is not None else ("text_column" if self.text_column is not None else "messages_column")
        for name in self.required_columns:
            if name not in schema.names:
                continue  # a missing column is named by the caller, with the pool's columns
            kind = schema.field(name).type
            if pa.types.is_null(kind):
                continue
            if self.messages_column is not None:
                problem = _messages_type_problem(kind)
                expected = "a list of {'role': str, 'content': str} messages per row"
            else:
                problem = None if _is_string_type(kind) else f"it holds {kind} values"
                expected = "strings"
            if problem is not None:
                shown = example(name) if example is not None else ""
                raise InputDataError(
                    f"Column {name!r} named by {role} of {where} must hold {expected}; {problem}{f' ({shown})' if shown else ''}."
                )

    def build(self, table: pa.Table, *, source: str = "") -> list[str]:
        """One text per row of ``table``.

        Parameters
        ----------
        table : pyarrow.Table
            Rows holding :attr:`required_columns`; an ``id`` column, if present, names bad rows in errors.
        source : str, optional
            Where the rows come from (a file), for error messages.

        Returns
        -------
        list of str
            ``table.num_rows`` texts, none empty.
        """
        where = source or "the table"
        role = "the text template" if self.template is not None else ("text_column" if self.text_column is not None else "messages_column")
        for name in self.required_columns:
            if name not in table.column_names:
                raise InputDataError(f"Column {name!r} named by {role} is not in {where}; it has columns {table.column_names}.")
        if self.template is not None:
            texts = self._from_template(table, where)
        elif self.text_column is not None:
            texts = _string_column(table, self.text_column, where)
        else:
            texts = self._from_messages(table, where)
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0)
        if pc.any(empty).as_py():
            row = _first_true(empty)
            raise InputDataError(f"The text built for {_row_name(table, row)} of {where} is empty; every row needs some text to embed.")
        return texts.to_pylist()

    def _from_template(self, table: pa.Table, where: str) -> pa.Array:
        columns = {name: _string_column(table, name, where) for name in self.required_columns}
        parts: list[Any] = []
        for literal, field in self._pieces:
            if literal:
                parts.append(literal)
            if field is not None:
                parts.append(columns[field])
        if len(parts) == 1:
            return parts[0]
        return pc.binary_join_element_wise(*parts, "")

    def _from_messages(self, table: pa.Table, where: str) -> pa.Array:
        name = str(self.messages_column)
        lists = _messages_column(table, name, where)
        owner = pc.list_parent_indices(lists).to_numpy()
        messages = lists.flatten()
        if messages.null_count:
            row = int(owner[_first_true(messages.is_null())])
            raise InputDataError(f"A message of {_row_name(table, row)} in column {name!r} of {where} is null.")
        roles, contents = messages.field("role"), messages.field("content")
        for label, values in (("role", roles), ("content", contents)):
            if values.null_count:
                row = int(owner[_first_true(values.is_null())])
                raise InputDataError(f"A message of {_row_name(table, row)} in column {name!r} of {where} has a null {label}.")
        contents = pc.utf8_trim_whitespace(contents)
        if self.chat_format == "tulu":
            known = pc.index_in(roles, value_set=pa.array(_TULU_ROLES))
            if known.null_count:
                at = _first_true(known.is_null())
                raise InputDataError(
                    f"A message of {_row_name(table, int(owner[at]))} in column {name!r} of {where} has role {roles[at].as_py()!r}; "
                    f"the tulu chat format knows only {list(_TULU_ROLES)}."
                )
            prefix = pa.array([_TULU_PREFIX[r] for r in _TULU_ROLES]).take(known)
            suffix = pa.array([_TULU_SUFFIX[r] for r in _TULU_ROLES]).take(known)
            pieces = pc.binary_join_element_wise(prefix, contents, suffix, "")
            separator = ""
        else:
            pieces = pc.binary_join_element_wise(roles, contents, ": ")
            separator = "\n"
        # Put the per-message pieces back into per-row lists, then join each row's list.
        rebuilt = pa.ListArray.from_arrays(_list_offsets(lists), pieces)
        return pc.binary_join(rebuilt, separator)


def _parse_template(template: Any) -> list[tuple[str, str | None]]:
    if not isinstance(template, str):
        raise parameter_error("TextBuilder", "template", "a format string such as '{question}\\n{answer}'", template)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise parameter_error("TextBuilder", "template", f"a valid format string ({exc})", template) from None
    pieces: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None:
            plain = field != "" and not field.isdigit() and not any(ch in field for ch in ".[]")
            if not plain or spec or conversion:
                raise parameter_error(
                    "TextBuilder", "template", "a format string whose fields are plain column names like '{question}'", template
                )
        pieces.append((literal, field))
    if not any(field is not None for _, field in pieces):
        raise parameter_error("TextBuilder", "template", "a format string naming at least one column, like '{question}'", template)
    return pieces


def _is_string_type(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _messages_type_problem(kind: pa.DataType) -> str | None:
    """Why a column of type ``kind`` cannot hold chat messages, or None if it can."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return f"it holds {kind} values, not lists"
    item = kind.value_type
    if pa.types.is_null(item):
        return None  # only empty lists seen: refused row by row when read
    if not pa.types.is_struct(item):
        return f"its messages are {item} values, not {{'role', 'content'}} objects (it holds {kind})"
    missing = [f for f in ("role", "content") if item.get_field_index(f) < 0]
    if missing:
        return f"its messages have no {' and no '.join(repr(f) for f in missing)} field (it holds {kind})"
    for f in ("role", "content"):
        field_type = item.field(f).type
        if not (_is_string_type(field_type) or pa.types.is_null(field_type)):
            return f"the {f!r} of its messages holds {field_type} values, not strings (it holds {kind})"
    return None


def _string_column(table: pa.Table, name: str, where: str) -> pa.Array:
    column = table.column(name).combine_chunks()
    if pa.types.is_dictionary(column.type) and _is_string_type(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type)):
        row = _row_name(table, 0) if table.num_rows else "any row"
        raise InputDataError(f"Column {name!r} of {where} holds {column.type} values, not strings (e.g. {row}); texts are built from strings.")
    if column.null_count:
        row = _first_true(column.is_null())
        raise InputDataError(f"Column {name!r} is null in {_row_name(table, row)} of {where}.")
    return column.cast(pa.string())


def _messages_column(table: pa.Table, name: str, where: str) -> pa.Array:
    column = table.column(name).combine_chunks()
    kind = column.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    item = kind.value_type if is_list else None
    ok = item is not None and pa.types.is_struct(item) and all(
        item.get_field_index(f) >= 0 and (pa.types.is_string(item.field(f).type) or pa.types.is_large_string(item.field(f).type))
        for f in ("role", "content")
    )
    if not ok:
        raise InputDataError(
            f"Column {name!r} of {where} must hold a list of {{'role': str, 'content': str}} messages per row; it holds {kind}."
        )
    if column.null_count:
        row = _first_true(column.is_null())
        raise InputDataError(f"Column {name!r} is null in {_row_name(table, row)} of {where}; it must hold a list of messages.")
    lengths = pc.list_value_length(column)
    if pc.any(pc.equal(lengths, 0)).as_py():
        row = _first_true(pc.equal(lengths, 0))
        raise InputDataError(f"Column {name!r} holds no messages in {_row_name(table, row)} of {where}.")
    item_type = pa.struct([("role", pa.string()), ("content", pa.string())])
    messages = pa.StructArray.from_arrays(
        [column.values.field("role").cast(pa.string()), column.values.field("content").cast(pa.string())],
        fields=list(item_type),
        mask=column.values.is_null(),
    )
    offsets = column.offsets.cast(pa.int32()) if pa.types.is_large_list(kind) else column.offsets
    return pa.ListArray.from_arrays(offsets, messages)


def _list_offsets(lists: pa.ListArray) -> pa.Array:
    """Offsets of ``lists`` rebased to start at 0, so they index its flattened values."""
    offsets = lists.offsets.to_numpy()
    return pa.array(offsets - offsets[0], type=pa.int32())


def _first_true(mask: pa.Array | pa.ChunkedArray) -> int:
    values = mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.Array) else np.asarray(mask)
    return int(np.flatnonzero(values)[0])


def _row_name(table: pa.Table, row: int) -> str:
    if "id" in table.column_names:
        return f"row id={table.column('id')[row].as_py()!r}"
    return f"row {row}"
