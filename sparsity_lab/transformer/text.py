"""Real English text that ships with Python: sentences from the standard library's docstrings.

Calibration and evaluation need text that is there offline. The docstrings of a fixed list of stdlib modules
(`MODULES`: the module, its public functions and classes, their methods), read from their source files with `ast`
so that nothing patched at run time changes them, are split into sentences, filtered to
prose (6 to 40 words, a capital first, a full stop last, no code), deduplicated (case and spacing ignored) and
shuffled with a fixed seed; `split_texts` then cuts that list into disjoint calibration and evaluation sets. Each
sentence keeps the module it came from: a label for a small offline task (`evaluate.module_accuracy`). The
sentences depend on the Python version (docstrings change); results files record it.
"""

from __future__ import annotations

import ast
import importlib
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest",
    "email.message", "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.cookies", "imaplib", "inspect", "io",
    "ipaddress", "json", "logging", "lzma", "mailbox", "mimetypes", "multiprocessing", "numbers",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "poplib",
    "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile", "zoneinfo",
)
SEED = 0
MIN_WORDS, MAX_WORDS = 6, 40
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_DEFINITIONS = (*_FUNCTIONS, ast.ClassDef)
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE = re.compile(r">>>|::|\w\(|\)\.|=|\[|\]|\{|\}|`|\\|->|__|\w_\w|\.\w|\w/\w|\*|#|<|>|\$|%|@|\|")
_PROSE = re.compile(r"^[A-Z][A-Za-z ,;:'\-()]*[a-z]\.$")


@dataclass(frozen=True)
class Sentence:
    """A sentence and the stdlib module whose docstrings it came from."""

    text: str
    module: str


def _docstrings(name: str) -> list[str]:
    """The docstrings in module `name`'s source file, in source order: the module's, and those of its public
    top-level functions and classes and of those classes' public methods. Read with `ast` from the file, not from
    the live objects, so that tools which patch the standard library at run time (pytest, IPython) change nothing."""
    source = getattr(importlib.import_module(name), "__file__", None)  # frozen modules (os, codecs) have one too
    if not source or not source.endswith(".py"):
        raise ValueError(f"module {name!r} has no Python source file to read docstrings from")
    tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    nodes: list[ast.AST] = [tree]
    for node in tree.body:
        if isinstance(node, _DEFINITIONS) and not node.name.startswith("_"):
            nodes.append(node)
            if isinstance(node, ast.ClassDef):
                nodes += [n for n in node.body if isinstance(n, _FUNCTIONS) and not n.name.startswith("_")]
    return [doc for doc in (ast.get_docstring(n) for n in nodes) if doc]


def sentences_of(doc: str) -> list[str]:
    """The prose sentences of one docstring: paragraphs without code, joined, split at sentence ends, filtered."""
    found = []
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        if any(line.startswith((" ", "\t", ">>>", "...")) for line in lines):
            continue  # indented blocks are examples, signatures or tables
        for sentence in _SPLIT.split(" ".join(line.strip() for line in lines)):
            words = sentence.split()
            if (MIN_WORDS <= len(words) <= MAX_WORDS and _PROSE.match(sentence) and not _CODE.search(sentence)
                    and sentence.count("(") == sentence.count(")")):
                found.append(" ".join(words))
    return found


@lru_cache(maxsize=4)
def stdlib_sentences(modules: tuple[str, ...] = MODULES, seed: int = SEED) -> tuple[Sentence, ...]:
    """Every distinct prose sentence of the modules' docstrings (first module wins a duplicate), shuffled by `seed`."""
    seen: set[str] = set()
    out = []
    for name in modules:
        for doc in _docstrings(name):
            for text in sentences_of(doc):
                key = text.lower()
                if key not in seen:
                    seen.add(key)
                    out.append(Sentence(text, name))
    random.Random(seed).shuffle(out)
    return tuple(out)


def split_texts(n_calibration: int, n_evaluation: int, seed: int = SEED
                ) -> tuple[tuple[Sentence, ...], tuple[Sentence, ...]]:
    """Disjoint (calibration, evaluation) sentences: the first `n_evaluation` of the shuffled list evaluate, the
    next `n_calibration` calibrate (so a larger calibration set never changes the evaluation set)."""
    pool = stdlib_sentences(seed=seed)
    if n_calibration < 1 or n_evaluation < 1 or n_calibration + n_evaluation > len(pool):
        raise ValueError(f"need 1 <= n_calibration, n_evaluation and their sum <= {len(pool)} sentences, got "
                         f"{n_calibration} + {n_evaluation}")
    return pool[n_evaluation: n_evaluation + n_calibration], pool[:n_evaluation]
