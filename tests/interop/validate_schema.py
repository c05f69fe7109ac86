"""Validate JSON documents against JSON Schemas with the `jsonschema` package (the reference
Python implementation), formats checked. Input (stdin, JSON): a list of {"schema": {...},
"instance": ...}. Output: a list with, per item, the errors found (path and message).
"""

import json
import sys

from jsonschema import Draft202012Validator, FormatChecker


def main() -> None:
    out = []
    for item in json.load(sys.stdin):
        Draft202012Validator.check_schema(item["schema"])
        validator = Draft202012Validator(item["schema"], format_checker=FormatChecker())
        out.append(
            [
                {"path": "/".join(map(str, e.absolute_path)), "message": e.message}
                for e in validator.iter_errors(item["instance"])
            ]
        )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
