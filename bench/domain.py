"""Throughput of the pure domain on one core: record verifications, message encode and decode.

Run with ``.venv/bin/python bench/domain.py`` (or ``make bench``). Not a test: it prints
figures next to the targets of issue 3 and always exits 0.

* verifications/s for each record type (target ≥ 10,000/s each). The wires come from the
  golden vectors ($DMP_VECTORS_DIR, default ../shared/vectors); manifest and chunk use a
  message built here. A type whose module (or vector) is missing prints "n/a".
* full send-side encodes/s of a 1 KB message: encrypt, erasure, wrap, sign; the Argon2 KDF is
  excluded (keys are derived once) (target ≥ 300/s).
* receive-side decodes/s of the same intact message: manifest receive gate, chunk checks,
  erasure decode, AEAD, envelope (target ≥ 1,000/s).

Each figure is measured with ``time.perf_counter`` over at most ``--max-iter`` calls or
``--seconds`` seconds, whichever ends first, after one warm-up call; single process.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

VECTORS = Path(os.environ.get("DMP_VECTORS_DIR", ROOT.parent / "shared" / "vectors"))

VERIFY_TARGET = 10_000
ENCODE_TARGET = 300
DECODE_TARGET = 1_000
BODY_LEN = 1024
NOW = 1_900_000_000

Bench = Callable[[], object]


def measure(fn: Bench, *, max_iter: int, seconds: float) -> float:
    """Calls per second of ``fn``, bounded by ``max_iter`` calls and ``seconds``."""
    fn()
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while count < max_iter and now < deadline:
        fn()
        count += 1
        now = time.perf_counter()
    return count / (now - start)


def vector(name: str, section: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    first: dict[str, Any] = data[section][0]
    return first


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- the message used by the manifest, chunk, encode and decode figures -------------


def message_setup() -> dict[str, Any]:
    from dmp.domain.crypto import IdentityKeys
    from dmp.domain.message import build_message

    alice = IdentityKeys.from_x25519_private(hashlib.sha256(b"bench/alice").digest())
    bob = IdentityKeys.from_x25519_private(hashlib.sha256(b"bench/bob").digest())
    body = (b"0123456789abcdef" * (BODY_LEN // 16 + 1))[:BODY_LEN]
    msg_ids = [hashlib.sha256(b"bench/msg/%d" % i).digest()[:16] for i in range(64)]
    eph = hashlib.sha256(b"bench/eph").digest()
    nonce = hashlib.sha256(b"bench/nonce").digest()[:12]
    counter = [0]

    def encode() -> object:
        counter[0] += 1
        return build_message(
            sender=alice,
            sender_zone="alice.example",
            recipient_x25519_public=bob.x25519_public,
            body=body,
            now=NOW,
            ttl=300,
            msg_id=msg_ids[counter[0] % len(msg_ids)],
            ephemeral_private=eph,
            nonce=nonce,
            prekey=None,
            envelope_from="alice@alice.example",
        )

    out = build_message(
        sender=alice,
        sender_zone="alice.example",
        recipient_x25519_public=bob.x25519_public,
        body=body,
        now=NOW,
        ttl=300,
        msg_id=msg_ids[0],
        ephemeral_private=eph,
        nonce=nonce,
        prekey=None,
        envelope_from="alice@alice.example",
    )
    return {"alice": alice, "bob": bob, "body": body, "out": out, "encode": encode}


# -- one builder per record type ----------------------------------------------------


def identity_case(_: dict[str, Any]) -> Bench:
    from dmp.domain.identity import verify_identity

    wire = vector("identity.json", "records")["wire"]
    return lambda: verify_identity(wire)


def prekey_case(_: dict[str, Any]) -> Bench:
    from dmp.domain.prekey import verify_prekey

    rec = vector("prekey.json", "records")
    signer, now = h(rec["signer"]["ed25519_public"]), rec["verify"]["now"]
    return lambda: verify_prekey(rec["wire"], signer, now=now)


def manifest_case(msg: dict[str, Any]) -> Bench:
    from dmp.domain.manifest import verify_manifest

    wire, rid = msg["out"].manifest_wire, msg["bob"].user_id
    return lambda: verify_manifest(wire, now=NOW, recipient_id=rid)


def chunk_case(msg: dict[str, Any]) -> Bench:
    from dmp.domain.chunk import unwrap_chunk_txt

    chunk = msg["out"].chunks[0]
    return lambda: unwrap_chunk_txt(chunk.txt, chunk.sha256)


def claim_case(_: dict[str, Any]) -> Bench:
    from dmp.domain.claim import verify_claim

    rec = vector("claim.json", "records")
    return lambda: verify_claim(rec["wire"], now=rec["verify"]["now"])


def heartbeat_case(_: dict[str, Any]) -> Bench:
    from dmp.domain.heartbeat import verify_heartbeat

    rec = vector("heartbeat.json", "records")
    return lambda: verify_heartbeat(rec["wire"], now=rec["verify"]["now"])


def cluster_case(_: dict[str, Any]) -> Bench:
    from dmp.domain.cluster import verify_cluster

    rec = vector("cluster.json", "records")
    v = rec["verify"]
    spk = h(v["operator_spk"])
    return lambda: verify_cluster(
        rec["wire"], spk, now=v["now"], expected_cluster_name=v["expected_cluster_name"]
    )


def bootstrap_case(_: dict[str, Any]) -> Bench:
    from dmp.domain.bootstrap import verify_bootstrap

    rec = vector("bootstrap.json", "records")
    v = rec["verify"]
    spk = h(v["signer_spk"])
    return lambda: verify_bootstrap(
        rec["wire"], spk, now=v["now"], expected_user_domain=v["expected_user_domain"]
    )


def rotation_case(_: dict[str, Any]) -> Bench:
    from dmp.domain.rotation import verify_rotation

    rec = vector("rotation.json", "rotations")
    v = rec["verify"]
    old = h(v["expected_old_spk"])
    return lambda: verify_rotation(rec["wire"], old, v["expected_subject"], now=v["now"])


def revocation_case(_: dict[str, Any]) -> Bench:
    from dmp.domain.rotation import verify_revocation

    rec = vector("rotation.json", "revocations")
    v = rec["verify"]
    revoked = h(v["expected_revoked_spk"])
    return lambda: verify_revocation(rec["wire"], revoked, v["expected_subject"], now=v["now"])


RECORD_CASES: list[tuple[str, Callable[[dict[str, Any]], Bench]]] = [
    ("identity", identity_case),
    ("prekey", prekey_case),
    ("manifest", manifest_case),
    ("chunk unwrap", chunk_case),
    ("claim", claim_case),
    ("heartbeat", heartbeat_case),
    ("cluster", cluster_case),
    ("bootstrap", bootstrap_case),
    ("rotation", rotation_case),
    ("revocation", revocation_case),
]


def decode_case(msg: dict[str, Any]) -> Bench:
    from dmp.domain.manifest import verify_manifest
    from dmp.domain.message import open_message

    out, bob = msg["out"], msg["bob"]
    chunk_txts = {c.index: [c.txt] for c in out.chunks}

    def decode() -> object:
        manifest = verify_manifest(out.manifest_wire, now=NOW, recipient_id=bob.user_id)
        got = open_message(manifest, chunk_txts, recipient=bob, prekey_private=None, now=NOW)
        assert got.body == msg["body"]
        return got

    return decode


def line(label: str, rate: float | None, target: int, note: str = "") -> str:
    if rate is None:
        return f"  {label:<22} {'n/a':>12}   (target ≥ {target:,}/s)  {note}".rstrip()
    verdict = "ok" if rate >= target else "BELOW TARGET"
    return f"  {label:<22} {rate:>10,.0f}/s   (target ≥ {target:,}/s)  {verdict}"


def run(label: str, make: Callable[[], Bench], target: int, args: argparse.Namespace) -> None:
    try:
        fn = make()
        rate = measure(fn, max_iter=args.max_iter, seconds=args.seconds)
    except Exception as exc:  # a module or vector still missing: report, keep going
        print(line(label, None, target, f"({type(exc).__name__}: {exc})"))
        return
    print(line(label, rate, target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time cap per figure")
    parser.add_argument("--max-iter", type=int, default=50_000, help="call cap per figure")
    args = parser.parse_args()

    msg = message_setup()
    out = msg["out"]
    print(f"python {sys.version.split()[0]}, vectors {VECTORS}")
    print("record verifications (one call = parse + signature + checks)")
    for label, builder in RECORD_CASES:
        run(label, functools.partial(builder, msg), VERIFY_TARGET, args)
    print(
        f"message pipeline, {BODY_LEN}-byte body, DMPv2 envelope, "
        f"outer {len(out.outer)} B, k={out.k}, n={out.n}"
    )
    run("send-side encode", lambda: msg["encode"], ENCODE_TARGET, args)
    run("receive-side decode", lambda: decode_case(msg), DECODE_TARGET, args)


if __name__ == "__main__":
    main()
