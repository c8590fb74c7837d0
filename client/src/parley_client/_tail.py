"""`parley tail SESSION`: print a session's history, then follow it, one line per event.

It imports the client only (grpc and protobuf), so it starts fast wherever it runs.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from parley_client._client import ParleyClient
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_client._gen.parley.v1.message_pb2 import Message, Role

_ROLES = {
    Role.ROLE_USER: "user",
    Role.ROLE_ASSISTANT: "assistant",
    Role.ROLE_SYSTEM: "system",
    Role.ROLE_TOOL: "tool",
}
_WIDTH = 160  # content beyond this is cut, with an ellipsis (--json prints it whole)


def _time(stamp: Timestamp) -> str:
    moment = datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _WIDTH else flat[: _WIDTH - 1] + "…"


def message_line(message: Message) -> str:
    """`#12 2026-11-24 23:10:01 assistant  hello`, tool calls as calls, tool results as such."""
    role = _ROLES.get(message.role, "?")
    head = f"#{message.seq} {_time(message.create_time)} {role:<9}"
    parts = [_one_line(message.content)] if message.content else []
    for call in message.tool_calls:
        parts.append(f"calls {call.name}({_one_line(call.arguments)}) [{call.id}]")
    if message.tool_call_id:
        parts.insert(0, f"result of [{message.tool_call_id}]:")
    return f"{head} {' '.join(parts)}".rstrip()


def event_lines(event: pb.WatchSessionResponse) -> list[str]:
    kind = event.WhichOneof("event")
    if kind == "messages":
        return [message_line(message) for message in event.messages.messages]
    if kind == "session":
        session = event.session
        state = f"closed {_time(session.end_time)}" if session.HasField("end_time") else "open"
        title = f" {session.title!r}" if session.title else ""
        return [f"-- session {session.id}{title}, {state}, {session.message_count} messages"]
    if kind == "deleted_message":
        gone = event.deleted_message
        return [f"-- #{gone.seq} deleted {_time(gone.delete_time)}"]
    if kind == "deleted_session":
        return ["-- session deleted"]
    return []


async def tail(
    target: str,
    session_id: str,
    *,
    after_seq: int,
    as_json: bool,
    credentials: grpc.ChannelCredentials | None,
    api_key: str,
    out: TextIO = sys.stdout,
) -> None:
    metadata = {"authorization": f"Bearer {api_key}"} if api_key else None
    async with ParleyClient(
        target, tls=credentials or False, metadata=metadata, default_timeout=None
    ) as client:
        async for event in client.watch_session(session_id, after_seq=after_seq):
            if as_json:
                printed = json_format.MessageToDict(event, preserving_proto_field_name=True)
                out.write(json.dumps(printed, ensure_ascii=False) + "\n")
            else:
                for line in event_lines(event):
                    out.write(line + "\n")
            out.flush()
