"""Shared bits for the crypto tests: a WAV writer's access pattern, test audio, RSA keys, openssl."""

from __future__ import annotations

import functools
import os
import random
import struct
import subprocess
import sys
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

WAV_HEADER = 44


def wav_header(data_size: int, tag: int = 6, channels: int = 1, rate: int = 8000, bits: int = 8) -> bytes:
    """A canonical 44-byte header (fmt + data), as the team's WAV writer lays it out for G.711/PCM."""
    align = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, rate, rate * align, align, bits)
            + b"data" + struct.pack("<I", data_size))


def known_audio(n: int, seed: int = 1) -> bytes:
    """Deterministic, non-repeating bytes: any 8-byte run of it found on disk means plaintext leaked."""
    return random.Random(seed).randbytes(n)


Op = tuple[str, Any, Any]


def writer_ops(audio: bytes, chunk: int = 8000, refresh_every: int = 3, trim: int = 3000,
               tag: int = 6, bits: int = 8) -> list[Op]:
    """What a recording does to its sink: placeholder header, appends, periodic size patches,
    a silent tail cut off at the end, final sizes."""
    ops: list[Op] = [("pwrite", wav_header(0, tag=tag, bits=bits), 0)]
    end = WAV_HEADER
    for i in range(0, len(audio), chunk):
        piece = audio[i:i + chunk]
        ops.append(("pwrite", piece, end))
        end += len(piece)
        if (i // chunk) % refresh_every == refresh_every - 1:
            ops.append(("pwrite", struct.pack("<I", end - 8), 4))
            ops.append(("pwrite", struct.pack("<I", end - WAV_HEADER), 40))
    end = max(WAV_HEADER, end - trim)
    ops.append(("truncate", end, None))
    ops.append(("pwrite", struct.pack("<I", end - 8), 4))
    ops.append(("pwrite", struct.pack("<I", end - WAV_HEADER), 40))
    return ops


def apply(sink: Any, ops: list[Op]) -> None:
    for name, a, b in ops:
        if name == "pwrite":
            sink.pwrite(a, b)
        else:
            sink.truncate(a)


@functools.cache
def rsa_pems(n: int = 0, bits: int = 2048) -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of test key number `n` (generated once per session)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv, pub


def openssl_decrypt(path: str, key: bytes, iv: bytes) -> bytes:
    """Decrypt with the stock openssl CLI (test keys only: real keys never go on a command line)."""
    result = subprocess.run(["openssl", "enc", "-d", f"-aes-{8 * len(key)}-cbc", "-K", key.hex(),
                             "-iv", iv.hex(), "-in", path], capture_output=True, check=True)
    return result.stdout


def leaks(data: bytes, audio: bytes, window: int = 8) -> list[str]:
    """Signs of plaintext in `data`: WAV magic, or any `window`-byte run of `audio`."""
    found = [m.decode() for m in (b"RIFF", b"WAVE", b"fmt ") if m in data]
    runs = {audio[i:i + window] for i in range(0, len(audio) - window + 1)}
    for i in range(0, len(data) - window + 1):
        if data[i:i + window] in runs:
            found.append(f"audio run at {i}")
            break
    return found


def run_cli(*args: str, env: dict[str, str] | None = None, input: bytes | None = None,
            stdout: Any = subprocess.PIPE, timeout: float = 60) -> subprocess.CompletedProcess:
    """`wholecall ARGS` as a real process (what an operator runs), with the key variables
    taken from `env` only (never inherited from the test run)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("WHOLECALL_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "wholecall.cli", *args], env=full, input=input,
                          stdout=stdout, stderr=subprocess.PIPE, timeout=timeout)


def cbc_file(path: str, plain: bytes, key: bytes, iv: bytes) -> str:
    """Write `plain` AES-CBC encrypted (as a finished aes-cbc recording) to `path`."""
    from wholecall.formats import encrypted as cf

    enc = cf.CbcEncryptor(key, iv)
    with open(path, "wb") as f:
        f.write(enc.update(plain) + enc.finalize())
    return path
