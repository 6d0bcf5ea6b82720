"""``wholecall recover``: turn the intermediates (``.wcpart``) of encrypted recordings whose
worker died into normal encrypted recordings, saying what each became.

A directory is searched with its subdirectories (recordings are often ``calls/1234.wav``);
symlinks to directories are not followed. An intermediate that a running recording is
writing (its worker holds the lock, `formats.recovery`) is never touched: named
explicitly it is an error, found in a directory it is skipped with a message. A part
that cannot be recovered (no complete WAV header, wrong key, full disk) is kept, the
reason is printed, and the exit status is 1.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wholecall.cli.decrypt import KEY_ENV, _Fail, _load_aes, _load_private, _Parser, _refuse_argv_secrets, _Usage
from wholecall.formats import encrypted as cf
from wholecall.formats import recovery

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = ["recover_command"]

PROG = "wholecall recover"


@dataclass
class _Tally:
    recovered: int = 0
    skipped: int = 0
    failed: int = 0


def _parser() -> _Parser:
    p = _Parser(prog=PROG, allow_abbrev=False,
                description="Turn intermediates (.wcpart) left by a killed worker into normal encrypted "
                            "recordings, with all the audio that was written. Intermediates of recordings "
                            "still running (their worker holds a lock on them) are left alone.",
                epilog="Exit status: 0 when every intermediate was recovered or skipped as still recording "
                       "(or none was found), 1 when one failed or was named but is still recording "
                       "(it is then kept as it was), 2 on a usage error.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help=".wcpart file, or a directory to search (with its subdirectories)")
    p.add_argument("--private-key", metavar="PEM", help="RSA private key (envelope recordings)")
    p.add_argument("--key-file", metavar="FILE", help=f"AES key (aes-cbc recordings); or set {KEY_ENV}")
    p.add_argument("--no-repair", action="store_true",
                   help="keep the WAV header as the writer last left it (default: fix its sizes)")
    p.add_argument("--no-recurse", action="store_true",
                   help="search only the directories given, not their subdirectories")
    return p


def recover_command(argv: list[str]) -> int:
    """``wholecall recover``: 0 if everything found was recovered (or skipped as live), else 1; 2 on usage.

    Usage::

        wholecall recover --private-key key.pem /recordings/rec.wav.wcpart
        wholecall recover --key-file K /recordings          # every .wcpart below the directory
    """
    try:
        _refuse_argv_secrets(PROG, argv)
        args = _parser().parse_args(argv)
        key = _load_aes(args, need_iv=False)[0] if (args.key_file or os.environ.get(KEY_ENV)) else None
        private_key = _load_private(args.private_key) if args.private_key else None
        if key is None and private_key is None:
            raise _Fail(f"give --private-key PEM, or --key-file FILE / {KEY_ENV} for aes-cbc recordings")
    except _Usage as exc:
        print(exc, file=sys.stderr)
        return 2
    except _Fail as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    tally = _Tally()
    searched = False
    for path in args.paths:
        if not os.path.lexists(path):  # say so, not "its name does not end with .wcpart"
            _error(tally, f"{path}: No such file or directory")
            continue
        if not os.path.isdir(path):
            _recover_one(path, key, private_key, not args.no_repair, tally, found=False)
            continue
        searched = True
        parts = _find(path, not args.no_recurse, tally)
        if not parts:
            print(f"{path}: no {cf.PART_SUFFIX} found{'' if args.no_recurse else ' in it or below'}: "
                  f"nothing to recover")
        for part in parts:
            _recover_one(part, key, private_key, not args.no_repair, tally, found=True)
    if searched:
        print(f"{tally.recovered} recovered, {tally.skipped} skipped (still recording), {tally.failed} failed")
    return 1 if tally.failed else 0


def _find(top: str, recurse: bool, tally: _Tally) -> list[str]:
    """The intermediates in `top` (and below it, with `recurse`), sorted; unreadable
    directories are reported (and counted failed: what they hold was not looked at)."""
    found: list[str] = []

    def unreadable(exc: OSError) -> None:
        _error(tally, f"cannot search {exc.filename}: {exc.strerror}")

    for directory, subdirs, names in os.walk(top, onerror=unreadable):
        subdirs.sort()
        if not recurse:
            subdirs.clear()
        found += (os.path.join(directory, n) for n in sorted(names) if n.endswith(cf.PART_SUFFIX))
    return found


def _recover_one(part: str, key: bytes | None, private_key: RSAPrivateKey | None, repair: bool, tally: _Tally,
                 found: bool) -> None:
    try:
        done = recovery.recover(part, key=key, private_key=private_key, repair_wav=repair)
    except recovery.PartInUse as exc:
        if found:
            print(f"{part}: skipped: a running recording is writing it (its worker holds its lock)")
            tally.skipped += 1
        else:
            _error(tally, str(exc))
        return
    except (cf.CryptoFileError, OSError) as exc:
        _error(tally, _why(part, exc) + ("; the intermediate is kept as it was" if os.path.lexists(part) else ""))
        return
    tally.recovered += 1
    print(f"{part} -> {done.path}: {done.summary()}")  # not in the try: a closed stdout is not this part's failure


def _why(part: str, exc: Exception) -> str:
    """The reason, naming the file it concerns (an OSError's own file when not `part`)."""
    if isinstance(exc, OSError) and exc.strerror:
        other = exc.filename if exc.filename not in (None, part) else None
        return f"{part}: {exc.strerror}" + (f" ({other})" if other else "")
    text = str(exc)
    return text if text.startswith(part) else f"{part}: {text}"


def _error(tally: _Tally, message: str) -> None:
    tally.failed += 1
    print(f"{PROG}: error: {message}", file=sys.stderr)
