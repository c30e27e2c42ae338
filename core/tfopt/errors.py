"""One exception type for every user-facing failure: the CLI prints its message on one line.

Another library's text (ONNX Runtime's, the ONNX checker's, protobuf's) reaches the user
quoted in a tfopt sentence through :func:`first_line`, which keeps what it says and drops
what it does not (error codes, the model's path again, C++ source locations and signatures,
"This is an invalid model."). The whole text is remembered: ``tfopt -v`` prints it
(:func:`quoted_details`), and :func:`fit_line` shortens the quotes further when a line
would be longer than the terminal line the CLI allows.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

QUOTE_LIMIT = 120  # characters of another library's text quoted by first_line
MIN_QUOTE = 40  # fit_line shortens a quote to no fewer characters than this
ELLIPSIS = "..."

# ONNX Runtime: "[ONNXRuntimeError] : 1 : FAIL : " (nested ones too), its model path, its
# source locations ("/onnxruntime_src/.../graph.cc:1357 ", "matmul_helper.h:164 "), C++
# signatures ("void onnxruntime::BroadcastIterator::Init(ptrdiff_t, ptrdiff_t) "), and
# ORT_ENFORCE's condition ("axis == 1 || axis == largest was false.").
_REWRITES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*", ""),
        (r"Load model from .+? failed:\s*", ""),
        (r"This is an invalid model\.\s*", ""),
        (r"(?:[\w.+-]*/)*[\w.+-]+\.(?:cc|cpp|cu|h|hpp):\d+\s+(?:[A-Za-z_]\w*\s+)?", ""),  # and the function's name
        (r"(?:[\w<>]+(?:::[\w<>]+)*[*&]*\s+)?(?:[\w~]+::)+[\w~]+\([^()]*\)\s*(?:const\s*)?", ""),
        (r"(?:^|(?<=\s))[^.:;()]*? was false\.\s*", ""),
        (r"Non-zero status code returned while running (\w+) node\. Name:''\s*Status Message:\s*", r"\1 node: "),
        (r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)'\s*Status Message:\s*", r"\1 node '\2': "),
        (r"Node \(\) Op \((\w+)\)\s*(?:\[\w+\])?\s*", r"\1 node: "),
        (r"Node \(([^)]*)\) Op \((\w+)\)\s*(?:\[\w+\])?\s*", r"\2 node '\1': "),
        (r'In Node, \("", ([\w.]+), "[^"]*", -?\d+\) : .*? , Error\s*', r"\1 node: "),
        (r'In Node, \("([^"]*)", ([\w.]+), "[^"]*", -?\d+\) : .*? , Error\s*', r"\2 node '\1': "),
        (r"\bof node \(\)", "of a node"),
        (r"\bin node \(\)", "in a node"),
        (r"(?:Type Error|Fatal error|Error):\s*", ""),
        (r"\btensor\((\w+)\)", r"\1"),
        (r"Type \((\w+)\) of output arg \(([^)]*)\) of (?:a node|node \([^)]*\)) does not match expected type \((\w+)\)\.?",
         r"'\2' is declared \1 but computed as \3"),
        (r"Type parameter \((\w+)\) of Optype \((\w+)\) bound to different types \((\w+) and (\w+) in (?:a node|node \(([^)]*)\))\.?",
         r"\2 node '\5': its inputs mix \3 and \4"),
        (r"Type '(\w+)' of input parameter \(([^)]*)\) of operator \((\w+)\) in (?:a node|node \(([^)]*)\)) is invalid\.?",
         r"\3 node '\4': input '\2' cannot be \1"),
        (r"([\w.]+):(\w+)\(-?\d+\) is not a registered function/op", r"\2 of domain '\1' is not a registered operator"),
        (r"(\w+) node '': ", r"\1 node: "),
        (r"Attempting to broadcast an axis by a dimension other than 1\. (\d+) by (\d+)", r"dimensions \1 and \2 do not broadcast"),
        (r"\s*==> Context: Bad node spec for node\..*$", ""),
        (r"Nodes in a graph must be topologically sorted, however input", "nodes out of order: input"),
        (r"of node: name: (\S*) OpType: (\w+)", r"of node '\1' (\2)"),
    )
)

_LOCK = threading.Lock()
_QUOTED: "OrderedDict[str, str]" = OrderedDict()  # summary -> the whole text, newest last
_REMEMBERED = 64


def summarize(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Another library's message in one line of at most ``limit`` characters, in the user's terms."""
    line = " ".join(str(text).split())
    for pattern, replacement in _REWRITES:
        line = pattern.sub(replacement, line)
    line = " ".join(line.split()).strip(" :;,")
    return shorten(line, limit)


def shorten(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters, ``...`` marking the cut."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - len(ELLIPSIS), 1)]
    space = cut.rfind(" ")
    if space >= len(cut) // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + ELLIPSIS


def first_line(exc: BaseException, limit: int = QUOTE_LIMIT) -> str:
    """An exception as one short line (at most ``limit`` characters): what TfoptError messages quote.

    Lines are joined, not cut at the first newline: the ONNX checker and ONNX Runtime put
    the node's name on the lines after their sentence. ONNX Runtime's boilerplate is dropped
    (:func:`summarize`); the whole text is kept for ``tfopt -v`` (:func:`quoted_details`).
    """
    whole = str(exc).strip()
    line = summarize(whole, limit) or type(exc).__name__
    if " ".join(whole.split()) != line:
        with _LOCK:
            _QUOTED.pop(line, None)
            _QUOTED[line] = whole
            while len(_QUOTED) > _REMEMBERED:
                _QUOTED.popitem(last=False)
    return line


def quoted_details(message: str) -> list[str]:
    """The whole texts behind the quotes :func:`first_line` made that ``message`` holds (for ``tfopt -v``)."""
    with _LOCK:
        items = list(_QUOTED.items())
    return [whole for line, whole in items if line and line in message]


def fit_line(message: str, width: int) -> str:
    """``message`` in at most ``width`` characters where shortening its quotes can do it.

    Only the quotes :func:`first_line` made are shortened (longest first, to no fewer than
    :data:`MIN_QUOTE` characters); tfopt's own words and the paths the user gave are kept.
    """
    if len(message) <= width:
        return message
    with _LOCK:
        quotes = sorted({line for line in _QUOTED if line and line in message}, key=len, reverse=True)
    for quote in quotes:
        excess = len(message) - width
        if excess <= 0:
            break
        if len(quote) <= MIN_QUOTE:
            continue
        shorter = shorten(quote, max(MIN_QUOTE, len(quote) - excess))
        message = message.replace(quote, shorter)
    return message


class TfoptError(Exception):
    """A bad input or a failed stage, explained in one line (no traceback for users)."""


class VerificationFailed(TfoptError):
    """The optimized model does not match the source within tolerance (the report is kept)."""


class FusionIncomplete(TfoptError):
    """The run verified, but a fusion it should have made did not happen (the report is kept)."""
