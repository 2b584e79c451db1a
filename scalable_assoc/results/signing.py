"""Signatures over a summary-statistics sidecar, so a consortium can tell a cohort's export from an edited one.

The sidecar lists the SHA-256 of every file it exports; anyone can edit a file
and rewrite its checksum, so the checksums alone only catch damage. A signature
over the sidecar (and so, through the checksums, over every file it lists)
catches editing too. Two kinds of key, told apart by the key file itself:

* a shared secret (any other file: its bytes, surrounding whitespace removed, at
  least :data:`MIN_SECRET_BYTES`): HMAC-SHA256, the same file signs and verifies;
  ``openssl rand -hex 32 > consortium.key``;
* an Ed25519 key pair in PEM (``-----BEGIN PRIVATE KEY-----`` / ``PUBLIC KEY``):
  the cohort signs with its private key, everyone verifies with its public key;
  ``scalable-assoc keygen --out DIR`` or ``openssl genpkey -algorithm ed25519``.

What is signed is the sidecar's canonical content: the JSON without its
``signature`` field, serialised with sorted keys and no whitespace. The
``signature`` field records the algorithm, a fingerprint of the key and the
signature (base64).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from scalable_assoc.errors import DataError, UserInputError

#: Field of the sidecar holding the signature block.
SIGNATURE_FIELD = "signature"
HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"
#: A shared secret shorter than this is refused (``openssl rand -hex 32`` gives 64).
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class SigningKey:
    """A key that signs sidecars: a shared secret (HMAC-SHA256) or an Ed25519 private key. Read by :func:`load_signing_key`."""

    path: Path
    algorithm: str
    fingerprint: str
    secret: bytes | None = None
    private_key: Ed25519PrivateKey | None = None


@dataclass(frozen=True)
class VerifyKey:
    """A key that checks signatures: a shared secret or an Ed25519 public key. Read by :func:`load_verify_key`."""

    path: Path
    algorithm: str
    fingerprint: str
    secret: bytes | None = None
    public_key: Ed25519PublicKey | None = None


def _read(path: Path, option: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{option} {path}: no such key file")
    return path.read_bytes()


def _is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def _secret(data: bytes, path: Path, option: str) -> bytes:
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise UserInputError(
            f"{option} {path}: a shared secret of {len(secret)} bytes is too short to sign with (at least {MIN_SECRET_BYTES}); "
            f"write a random one with 'openssl rand -hex 32 > {path}' and share it with the consortium, or give an Ed25519 key in PEM"
        )
    return secret


def _secret_fingerprint(secret: bytes) -> str:
    # Keyed, so the fingerprint is not a plain hash of the secret.
    return hmac.new(secret, b"scalable_assoc key fingerprint", hashlib.sha256).hexdigest()[:16]


def _public_fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _wrong_type(path: Path, option: str, key: object) -> UserInputError:
    kind = type(key).__name__.lstrip("_").removesuffix("PrivateKey").removesuffix("PublicKey") or "another"
    return UserInputError(
        f"{option} {path}: a {kind} key; only Ed25519 keys are supported (write a pair with 'scalable-assoc keygen --out DIR' "
        "or 'openssl genpkey -algorithm ed25519 -out key.pem'), or use a shared secret file"
    )


def load_signing_key(path: Path, option: str = "--sign-key") -> SigningKey:
    """The key in ``path``: an Ed25519 private key (PEM) or a shared secret; clear errors naming ``option`` and the file."""
    path = Path(path)
    data = _read(path, option)
    if not _is_pem(data):
        secret = _secret(data, path, option)
        return SigningKey(path, HMAC_SHA256, _secret_fingerprint(secret), secret=secret)
    if b"-----BEGIN PUBLIC KEY" in data:
        raise UserInputError(
            f"{option} {path}: a public key cannot sign; sign with the private key (key.pem) and verify with the public one (key.pub.pem)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UserInputError(
            f"{option} {path}: the private key is protected by a passphrase; write an unprotected copy readable only by you "
            f"('openssl pkey -in {path} -out key.pem' and 'chmod 600 key.pem')"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise UserInputError(f"{option} {path}: not a readable PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong_type(path, option, key)
    return SigningKey(path, ED25519, _public_fingerprint(key.public_key()), private_key=key)


def load_verify_key(path: Path, option: str = "--verify-key") -> VerifyKey:
    """The key in ``path``: an Ed25519 public key (PEM; a private key is accepted for its public half) or a shared secret."""
    path = Path(path)
    data = _read(path, option)
    if not _is_pem(data):
        secret = _secret(data, path, option)
        return VerifyKey(path, HMAC_SHA256, _secret_fingerprint(secret), secret=secret)
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise _wrong_type(path, option, private)
            public: object = private.public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except TypeError:
        raise UserInputError(f"{option} {path}: the key is protected by a passphrase; verify with the public key (key.pub.pem)") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise UserInputError(f"{option} {path}: not a readable PEM public key ({error})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise _wrong_type(path, option, public)
    return VerifyKey(path, ED25519, _public_fingerprint(public), public_key=public)


def canonical_content(sidecar: dict[str, Any]) -> bytes:
    """What is signed: the sidecar as written to JSON, without its signature, with sorted keys and no whitespace."""
    content = {key: value for key, value in sidecar.items() if key != SIGNATURE_FIELD}
    # Through JSON once, so values are what a reader of the file gets (tuples as lists, paths as text).
    content = json.loads(json.dumps(content, default=str))
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_sidecar(sidecar: dict[str, Any], key: SigningKey) -> dict[str, str]:
    """The signature block of ``sidecar`` (store it under :data:`SIGNATURE_FIELD`)."""
    content = canonical_content(sidecar)
    if key.algorithm == HMAC_SHA256 and key.secret is not None:
        value = hmac.new(key.secret, content, hashlib.sha256).digest()
    elif key.algorithm == ED25519 and key.private_key is not None:
        value = key.private_key.sign(content)
    else:
        raise ValueError(f"signing key of unknown kind {key.algorithm!r}")
    return {"algorithm": key.algorithm, "key_fingerprint": key.fingerprint, "value": base64.b64encode(value).decode("ascii")}


def verify_sidecar(sidecar: dict[str, Any], keys: VerifyKey | Sequence[VerifyKey], where: Path, sidecar_name: str) -> None:
    """Refuse (:class:`DataError` naming ``where``) a sidecar that is unsigned, signed with none of ``keys``, or changed since signing.

    With several keys (one public key per cohort) the one whose fingerprint the signature names is used.
    """
    keys = [keys] if isinstance(keys, VerifyKey) else list(keys)
    given = "--verify-key " + ", ".join(f"{k.path} ({k.algorithm}, fingerprint {k.fingerprint})" for k in keys)
    block = sidecar.get(SIGNATURE_FIELD)
    if not isinstance(block, dict) or not {"algorithm", "key_fingerprint", "value"} <= set(block):
        raise DataError(
            f"{where}: its sidecar {sidecar_name} is not signed, and {given} asks for signed files; "
            "ask the cohort to export again with 'scalable-assoc sumstats RUN_DIR ... --sign-key KEY'"
        )
    matching = [k for k in keys if block["algorithm"] == k.algorithm and block["key_fingerprint"] == k.fingerprint]
    if not matching:
        raise DataError(
            f"{where}: its sidecar {sidecar_name} is signed with another key ({block['algorithm']}, fingerprint "
            f"{block['key_fingerprint']}) "
            f"than {given}; verify with the key this cohort signs with, or ask it to export again with the consortium's key"
        )
    key = matching[0]
    try:
        value = base64.b64decode(str(block["value"]), validate=True)
    except ValueError:
        value = b""
    content = canonical_content(sidecar)
    if key.algorithm == HMAC_SHA256 and key.secret is not None:
        valid = hmac.compare_digest(value, hmac.new(key.secret, content, hashlib.sha256).digest())
    elif key.algorithm == ED25519 and key.public_key is not None:
        try:
            key.public_key.verify(value, content)
            valid = True
        except InvalidSignature:
            valid = False
    else:
        raise ValueError(f"verify key of unknown kind {key.algorithm!r}")
    if not valid:
        raise DataError(
            f"{where}: the signature in its sidecar {sidecar_name} does not match its content: the sidecar (and so the checksums "
            "of the files it lists) was changed after the cohort signed it; do not use this file, ask the cohort for its export again"
        )


def write_key_pair(folder: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair, ``folder/key.pem`` (private, readable by the owner only) and ``folder/key.pub.pem``.

    Refuses to overwrite an existing key.

    Parameters
    ----------
    folder
        Where to write the two files (created if missing).

    Returns
    -------
    tuple of Path
        The private key (sign exports with it: :func:`export_sumstats` ``sign_key``)
        and the public key (give it to the consortium: :func:`open_cohorts` ``verify_keys``).

    Examples
    --------
    >>> from scalable_assoc import write_key_pair
    >>> private, public = write_key_pair(tmp / "keys")
    >>> private.name, public.name
    ('key.pem', 'key.pub.pem')
    """
    folder = Path(folder)
    private_path, public_path = folder / "key.pem", folder / "key.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise UserInputError(f"--out {folder}: {path.name} exists already; choose another folder or move the old key away")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.touch(mode=0o600)
    private_path.chmod(0o600)
    private_path.write_bytes(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path
