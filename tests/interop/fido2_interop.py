#!/usr/bin/env python3
"""Drive `cardgate card-sim` with python-fido2 as an independent CTAP2 client.

The script starts the simulated card on a free UDP port, reaches it through
a CtapHidConnection subclass that moves 64-byte reports over UDP, and runs
getInfo, makeCredential with options {"uv": True} and getAssertion through
fido2.ctap2.Ctap2. python-fido2 decodes every response (Ctap2 rejects
non-canonical CBOR) and verifies the packed self attestation and the
assertion signature.

Usage: fido2_interop.py PATH_TO_CARDGATE
Prints one line per check and then "N passed, N failed"; the exit code is
0 only when every check passed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback

from fido2.attestation import Attestation, AttestationType
from fido2.cose import CoseKey
from fido2.ctap2 import Ctap2
from fido2.hid import CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor

REPORT_SIZE = 64
RP_ID = "localhost"
CHROMECARD_AAGUID = bytes.fromhex("1234567890abcdef0123456789abcdef")

# Seconds to wait for one report; the card sends KEEPALIVE every 100 ms
# while it works, so silence this long means it is gone.
READ_TIMEOUT_S = 5.0
# Seconds card-sim has to start answering INIT.
STARTUP_TIMEOUT_S = 20.0


class UdpCtapHidConnection(CtapHidConnection):
    """Moves raw 64-byte CTAPHID reports over UDP to a simulated card."""

    def __init__(self, device: tuple[str, int]):
        self.device = device
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(READ_TIMEOUT_S)

    def read_packet(self) -> bytes:
        while True:
            data, sender = self.sock.recvfrom(2048)
            if sender == self.device and len(data) == REPORT_SIZE:
                return data

    def write_packet(self, data: bytes) -> None:
        if len(data) != REPORT_SIZE:
            raise ValueError(f"report of {len(data)} bytes, expected {REPORT_SIZE}")
        self.sock.sendto(data, self.device)

    def close(self) -> None:
        self.sock.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def open_device(address: tuple[str, int]) -> CtapHidDevice:
    """Opens the card once card-sim answers INIT, retrying until it starts."""
    descriptor = HidDescriptor(
        path=f"udp:{address[0]}:{address[1]}",
        vid=0x1209,
        pid=0x0005,
        report_size_in=REPORT_SIZE,
        report_size_out=REPORT_SIZE,
        product_name="cardgate card-sim",
        serial_number=None,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        connection = UdpCtapHidConnection(address)
        connection.sock.settimeout(0.5)
        try:
            device = CtapHidDevice(descriptor, connection)
            connection.sock.settimeout(READ_TIMEOUT_S)
            return device
        except OSError:
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, condition: bool, detail: str = "") -> None:
        if condition:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}: {detail}")

    def run(self, name: str, step):
        """Runs `step` as one check: it passes unless `step` raises.

        Returns what `step` returned, or None when it raised.
        """
        try:
            value = step()
        except Exception as error:  # noqa: BLE001 - every failure is reported
            self.failed += 1
            print(f"FAIL  {name}: {type(error).__name__}: {error}")
            traceback.print_exc(file=sys.stderr)
            return None
        self.passed += 1
        print(f"ok    {name}")
        return value


def exercise(ctap: Ctap2, results: Results) -> None:
    info = ctap.info
    results.check("getInfo versions", info.versions == ["FIDO_2_0"], str(info.versions))
    results.check("getInfo aaguid", bytes(info.aaguid) == CHROMECARD_AAGUID, bytes(info.aaguid).hex())
    results.check(
        "getInfo options",
        info.options.get("uv") is True and info.options.get("rk") is False,
        str(info.options),
    )
    results.check("getInfo maxMsgSize", info.max_msg_size == 1024, str(info.max_msg_size))
    results.check("getInfo has no PIN protocols", not info.pin_uv_protocols, str(info.pin_uv_protocols))

    client_data_hash = hashlib.sha256(b"cardgate interop makeCredential").digest()
    attestation = results.run(
        "makeCredential",
        lambda: ctap.make_credential(
            client_data_hash,
            {"id": RP_ID, "name": "cardgate interop"},
            {"id": os.urandom(16), "name": "interop", "displayName": "Interop"},
            [{"type": "public-key", "alg": -7}],
            options={"uv": True},
        ),
    )
    if attestation is None:
        return
    auth_data = attestation.auth_data
    results.check("makeCredential fmt", attestation.fmt == "packed", attestation.fmt)
    results.check(
        "makeCredential rpIdHash",
        auth_data.rp_id_hash == hashlib.sha256(RP_ID.encode()).digest(),
        auth_data.rp_id_hash.hex(),
    )
    results.check("makeCredential flags UP and UV", auth_data.is_user_present() and auth_data.is_user_verified(), hex(auth_data.flags))
    credential = auth_data.credential_data
    results.check("makeCredential attested credential", credential is not None)
    if credential is None:
        return

    verifier = Attestation.for_type(attestation.fmt)()
    result = results.run(
        "attestation verify",
        lambda: verifier.verify(attestation.att_stmt, auth_data, client_data_hash),
    )
    if result is not None:
        results.check(
            "attestation is packed self attestation",
            result.attestation_type == AttestationType.SELF,
            str(result.attestation_type),
        )

    public_key = CoseKey.parse(credential.public_key)
    assertion_hash = hashlib.sha256(b"cardgate interop getAssertion").digest()
    assertion = results.run(
        "getAssertion",
        lambda: ctap.get_assertion(
            RP_ID,
            assertion_hash,
            [{"type": "public-key", "id": credential.credential_id}],
            options={"uv": True},
        ),
    )
    if assertion is None:
        return
    results.check(
        "getAssertion flags UP and UV",
        assertion.auth_data.is_user_present() and assertion.auth_data.is_user_verified(),
        hex(assertion.auth_data.flags),
    )
    results.check(
        "getAssertion sign count increased",
        assertion.auth_data.counter > auth_data.counter,
        f"{assertion.auth_data.counter} after {auth_data.counter}",
    )
    results.run("assertion signature verify", lambda: assertion.verify(assertion_hash, public_key))

    # A signature over other data must not verify with the same key.
    rejected = False
    try:
        assertion.verify(hashlib.sha256(b"other data").digest(), public_key)
    except Exception:  # noqa: BLE001 - any verification error is the expected outcome
        rejected = True
    results.check("assertion over other data is rejected", rejected)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = sys.argv[1]
    results = Results()
    port = free_udp_port()

    with tempfile.TemporaryDirectory() as state:
        card_sim = subprocess.Popen(
            [binary, "card-sim", "--listen", f"127.0.0.1:{port}", "--state", state, "--presence", "approve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            device = results.run("open CTAPHID device", lambda: open_device(("127.0.0.1", port)))
            if device is not None:
                results.check("INIT capabilities include CBOR", device.capabilities & 0x04 != 0, hex(device.capabilities))
                ctap = results.run("Ctap2 getInfo", lambda: Ctap2(device))
                if ctap is not None:
                    exercise(ctap, results)
                device.close()
        finally:
            card_sim.terminate()
            try:
                _, errors = card_sim.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                card_sim.kill()
                _, errors = card_sim.communicate()
            if results.failed:
                sys.stderr.write(errors.decode(errors="replace"))

    print(f"{results.passed} passed, {results.failed} failed")
    return 0 if results.failed == 0 and results.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
