"""``wholecall decrypt``: turning encrypted recordings back into WAV files (and the key loading
``wholecall recover``, `cli.recover`, shares).

Keys are read from files or environment variables, never from argv: a command
line is visible to every user through ``ps`` and often lands in shell history
and audit logs. Options that look like a key on the command line (``--key``,
``--iv``, ``-K``) are refused with a pointer to the safe ways. Error messages
name files and reasons, never key material.

Plaintext is output only once the whole input has been decrypted and, for an
envelope, its tag has been verified: a tampered file never yields an output
(`cli.output`: a temp file renamed into place, or for stdout, a FIFO or a device
a memfd copied out).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from wholecall.cli.output import TargetError, deliver
from wholecall.formats import encrypted as cf
from wholecall.formats import wav
from wholecall.formats.source import Source

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = ["decrypt_command"]

T = TypeVar("T")

KEY_ENV = "WHOLECALL_KEY"
IV_ENV = "WHOLECALL_IV"
PASSPHRASE_ENV = "WHOLECALL_PASSPHRASE"

_ARGV_SECRETS = ("--key", "--iv", "-K", "-iv", "--passphrase")


class _Fail(Exception):
    """A failure to report as ``wholecall <cmd>: error: <message>`` with exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would sys.exit(); the CLI owner wants an exit code back.
        self.print_usage(sys.stderr)
        raise _Usage(f"{self.prog}: error: {message}")


class _Usage(Exception):
    pass


def _refuse_argv_secrets(prog: str, argv: list[str]) -> None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in _ARGV_SECRETS:
            raise _Usage(f"{prog}: error: {name} is not accepted: a key on the command line is visible in ps; "
                         f"use --key-file/--iv-file or the {KEY_ENV}/{IV_ENV} environment variables")


def _read_secret_file(path: str, what: str) -> bytes:
    try:
        return cf.read_secret_file(path, what)
    except cf.CryptoFileError as exc:
        raise _Fail(str(exc)) from None


def _aes_value(raw: bytes) -> str | bytes:
    """A key/IV file holds hex text (as ``openssl rand -hex``) or raw bytes (as ``openssl rand``).

    Hex text is taken as ``WHOLECALL_KEY`` takes it (an optional ``0x``), and may be wrapped
    over lines (``xxd -p`` breaks every 60 digits): whitespace anywhere is dropped. Anything
    else is raw bytes, passed on untouched (a raw key may hold bytes that look like spaces).
    """
    text = b"".join(raw.split())
    if text[:2].lower() == b"0x":
        text = text[2:]
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        return text.decode()
    return raw


def _load_aes(args: argparse.Namespace, need_iv: bool) -> tuple[bytes | None, bytes | None]:
    key_src: str | bytes | None = None
    if args.key_file:
        key_src = _aes_value(_read_secret_file(args.key_file, "key"))
    elif os.environ.get(KEY_ENV):
        key_src = os.environ[KEY_ENV]
    iv_src: str | bytes | None = None
    if getattr(args, "iv_file", None):
        iv_src = _aes_value(_read_secret_file(args.iv_file, "iv"))
    elif os.environ.get(IV_ENV):
        iv_src = os.environ[IV_ENV]
    try:
        key = cf.parse_aes_key(key_src) if key_src is not None else None
        iv = cf.parse_iv(iv_src) if iv_src is not None else None
    except cf.CryptoFileError as exc:
        raise _Fail(str(exc)) from None
    if key is None:
        raise _Fail(f"no AES key: give --key-file FILE or set {KEY_ENV} (hex), or --private-key for an envelope")
    if need_iv and iv is None:
        raise _Fail(f"no IV: give --iv-file FILE or set {IV_ENV} (hex)")
    return key, iv


def _load_private(path: str) -> RSAPrivateKey:
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        return cf.load_private_key(_read_secret_file(path, "private key"),
                                   passphrase.encode() if passphrase else None)
    except cf.CryptoFileError as exc:
        hint = f" (set {PASSPHRASE_ENV})" if "passphrase" in str(exc) else ""
        raise _Fail(f"{path}: {exc}{hint}") from None


def _decrypt_parser() -> _Parser:
    p = _Parser(prog="wholecall decrypt", allow_abbrev=False,
                description="Decrypt an encrypted recording to a WAV file. The output is written only if the "
                            "whole input decrypts (and, for an envelope, authenticates).",
                epilog=f"AES key and IV: files with hex text (an optional 0x, line breaks allowed, as xxd -p "
                       f"writes) or raw bytes, or the {KEY_ENV} / {IV_ENV} "
                       f"environment variables (hex). A passphrase-protected private key reads its "
                       f"passphrase from {PASSPHRASE_ENV}. Keys are never accepted on the command line.")
    p.add_argument("input", metavar="IN",
                   help="encrypted recording (aes-cbc, envelope, or a .wcpart intermediate); - reads stdin "
                        "(a pipe works: the input is read once, in order)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="plain WAV to write (default: IN without its .enc suffix); - writes stdout. A FIFO or "
                        "device (/dev/null) is written into, never replaced")
    p.add_argument("--private-key", metavar="PEM", help="RSA private key for an envelope recording")
    p.add_argument("--key-file", metavar="FILE", help="AES key for an aes-cbc recording")
    p.add_argument("--iv-file", metavar="FILE", help="IV for an aes-cbc recording")
    p.add_argument("--force", action="store_true", help="replace OUT if it is an existing regular file")
    p.add_argument("--check", action="store_true",
                   help="only check that IN decrypts to a valid WAV; write nothing (exit 0 if valid)")
    p.add_argument("--no-wav-check", action="store_true",
                   help="write the output even if it is not a valid RIFF/WAVE file")
    return p


def decrypt_command(argv: list[str]) -> int:
    """``wholecall decrypt``: 0 on success, 1 on failure (message on stderr), 2 on a usage error.

    Usage::

        wholecall decrypt --private-key key.pem rec.wav.enc [-o rec.wav]
        wholecall decrypt --key-file K --iv-file I rec.wav -o plain.wav
        WHOLECALL_KEY=<hex> WHOLECALL_IV=<hex> wholecall decrypt rec.wav -o plain.wav
    """
    prog = "wholecall decrypt"
    try:
        _refuse_argv_secrets(prog, argv)
        args = _decrypt_parser().parse_args(argv)
        return _decrypt(args)
    except _Usage as exc:
        print(exc, file=sys.stderr)
        return 2
    except (_Fail, cf.CryptoFileError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def _decrypt(args: argparse.Namespace) -> int:
    name = "stdin" if args.input == "-" else args.input
    fd = 0 if args.input == "-" else _open_in(args.input)
    try:
        src = _reading(name, lambda: Source(fd))  # fstat: a closed stdin fails here
        kind = cf.sniff(_reading(name, lambda: src.peek(8)))
        key = iv = private_key = None
        if kind == cf.SCHEME_ENVELOPE or (kind == "part" and args.private_key):
            if not args.private_key:
                raise _Fail(f"{name} is an envelope recording: give --private-key PEM")
            private_key = _load_private(args.private_key)
        elif kind == "part":
            key, _ = _load_aes(args, need_iv=False)
        else:
            if args.private_key:
                raise _Fail(f"{name} is not an envelope recording (no WCALLENV header): "
                            f"for aes-cbc give the AES key and IV")
            key, iv = _load_aes(args, need_iv=True)
        if kind == "part":
            print(f"wholecall decrypt: warning: {name} is an unfinished intermediate (its worker was killed); "
                  f"it is not authenticated and its WAV sizes may be stale. 'wholecall recover' makes a normal "
                  f"recording of it.", file=sys.stderr)
        plain = _read_all(name, cf.iter_decrypt(src, key=key, iv=iv, private_key=private_key, allow_part=True))
        checker = wav.WavChecker()
        if args.check:
            for data in plain:
                checker.feed(data)
            problem = checker.result()
            if problem:
                raise _Fail(f"{name} decrypts but is not a valid WAV: {problem}")
            print(f"{name}: ok ({checker.length} bytes of WAV)")
            return 0
        out = args.output or _default_output(args.input)
        check_wav = not args.no_wav_check and kind != "part"

        def fed() -> Iterator[bytes]:
            for data in plain:
                checker.feed(data)
                yield data

        def verify() -> None:
            problem = checker.result() if check_wav else None
            if problem:
                raise _Fail(f"the decrypted data is not a valid WAV ({problem}): wrong IV, wrong file, "
                            f"or not a recording; nothing written (--no-wav-check writes it anyway)")

        try:
            deliver(out, fed(), verify, args.force)
        except TargetError as exc:
            raise _Fail(str(exc)) from None
    finally:
        if fd != 0:
            os.close(fd)
    return 0


def _reading(name: str, read: Callable[[], T]) -> T:
    """`read()`, with an OSError named as the input's."""
    try:
        return read()
    except OSError as exc:
        raise _Fail(f"cannot read {name}: {exc.strerror}") from None


def _read_all(name: str, plain: Iterator[bytes]) -> Iterator[bytes]:
    """`plain`, with a failure to read the input named as such (not as the output's)."""
    try:
        yield from plain
    except OSError as exc:
        raise _Fail(f"cannot read {name}: {exc.strerror}") from None


def _open_in(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Fail(f"cannot read {path}: {exc.strerror}") from None


def _default_output(path: str) -> str:
    if path == "-":
        raise _Fail("reading stdin: give the output with -o OUT (- for stdout)")
    if path.endswith(".enc"):
        return path[:-4]
    raise _Fail(f"{path} does not end in .enc: give the output name with -o OUT")
