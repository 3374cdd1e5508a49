#!/usr/bin/env python3
"""Write seed corpora for the fuzz targets from tests/data/ctap-vectors.json.

Run from the repository root or from fuzz/; files go to
fuzz/corpus/TARGET/NAME. Also written: the simulated card's makeCredential
and getAssertion responses in fuzz/seeds/*.hex (status byte first, captured
with `cardgate card make-credential -v`), and the inputs kept under
tests/data/fuzz/TARGET/ (the crashes found so far).
"""

import json
import shutil
import struct
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
REPORT_LEN = 64
CBOR_COMMAND = 0x10
CHANNEL = 0x00220002


def frames(channel: int, command: int, payload: bytes) -> bytes:
    """Encodes a CTAPHID message as concatenated 64-byte reports."""
    out = struct.pack(">IBH", channel, 0x80 | command, len(payload)) + payload[:57]
    out = out.ljust(REPORT_LEN, b"\0")
    rest = payload[57:]
    sequence = 0
    while rest:
        report = struct.pack(">IB", channel, sequence) + rest[:59]
        out += report.ljust(REPORT_LEN, b"\0")
        rest = rest[59:]
        sequence += 1
    return out


def seeds(vector: dict) -> dict[str, bytes]:
    """Returns the seed inputs of one vector, by target name."""
    found: dict[str, list[bytes]] = {"ctaphid_reassembly": [], "ctap2_response": [], "auth_data_cose": []}
    kind = vector["kind"]
    if "frames_hex" in vector:
        reports = bytes.fromhex("".join(vector["frames_hex"]))
        found["ctaphid_reassembly"].append(reports[:4] + reports)
    if kind in ("getInfo_response", "makeCredential_response", "getAssertion_response"):
        body = bytes.fromhex(vector["cbor_hex"])
        found["ctap2_response"].append(b"\0" + body)
        found["ctaphid_reassembly"].append(struct.pack(">I", CHANNEL) + frames(CHANNEL, CBOR_COMMAND, b"\0" + body))
    if "ctaphid_payload_hex" in vector:
        found["ctap2_response"].append(bytes.fromhex(vector["ctaphid_payload_hex"]))
    if kind == "makeCredential_response":
        found["auth_data_cose"].append(bytes.fromhex(vector["cbor_hex"]))
    for key in ("auth_data_hex", "credential_public_key_cose_hex", "attestation_object_hex", "auth_data_cbor_hex"):
        if key in vector:
            found["auth_data_cose"].append(bytes.fromhex(vector[key]))
    return {
        f"{target}/{vector['name']}-{index}": data
        for target, inputs in found.items()
        for index, data in enumerate(inputs)
    }


def main() -> None:
    vectors = json.loads((ROOT / "tests/data/ctap-vectors.json").read_text())
    count = 0
    for vector in vectors:
        for name, data in seeds(vector).items():
            path = FUZZ / "corpus" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            count += 1
    for source in sorted((FUZZ / "seeds").glob("*.hex")):
        response = bytes.fromhex(source.read_text().strip())
        inputs = {
            "ctap2_response": response,
            "auth_data_cose": response[1:],
            "ctaphid_reassembly": struct.pack(">I", CHANNEL) + frames(CHANNEL, CBOR_COMMAND, response),
        }
        for target, data in inputs.items():
            path = FUZZ / "corpus" / target / source.stem
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            count += 1
    regressions = ROOT / "tests/data/fuzz"
    if regressions.is_dir():
        for source in regressions.glob("*/*"):
            target = FUZZ / "corpus" / source.parent.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target / source.name)
            count += 1
    print(f"wrote {count} seed inputs under {FUZZ / 'corpus'}")


if __name__ == "__main__":
    main()
