"""Print {message: {field: [number, type, message type]}} for the given *_pb2 modules."""

from __future__ import annotations

import importlib
import json
import sys


def describe(module_names: list[str]) -> dict:
    out: dict = {}
    for module_name in module_names:
        module = importlib.import_module(module_name)
        stack = list(module.DESCRIPTOR.message_types_by_name.values())
        while stack:
            message = stack.pop()
            out[message.full_name] = {
                f.name: [f.number, f.type, f.message_type.full_name if f.message_type else None]
                for f in message.fields
            }
            stack.extend(message.nested_types)
    return out


if __name__ == "__main__":
    print(json.dumps(describe(sys.argv[1:])))
