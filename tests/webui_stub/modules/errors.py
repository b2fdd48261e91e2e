"""Stand-in of modules/errors.py: ``report`` prints and records, and never raises (the WebUI goes on)."""

import sys
import traceback

exception_records = []


def record_exception():
    _, e, tb = sys.exc_info()
    if e is None:
        return
    if exception_records and exception_records[-1][0] is e:
        return
    exception_records.append((e, "".join(traceback.format_tb(tb))))
    if len(exception_records) > 5:
        exception_records.pop(0)


def report(message, *, exc_info=False):
    record_exception()
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), file=sys.stderr)


def display(e, task, *, full_traceback=False):
    record_exception()
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)


def print_error_explanation(message):
    print(message, file=sys.stderr)
