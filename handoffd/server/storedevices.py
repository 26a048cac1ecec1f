"""The server store's devices, their certificates and each account's CRL (renewal and revocation)."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import identity
from handoffd.errors import IdentityError, StoreError
from handoffd.server.storebackend import Conn
from handoffd.server.storecore import StoreCore
from handoffd.server.storemodel import Device, Issued, check_device_name, refuse, utc

_TOUCH_INTERVAL = 60.0


class DeviceStore(StoreCore):
    """Devices, certificates and CRLs (part of ``Store``)."""

    def _load_ca(self, db: Conn, account_id: str) -> identity.AccountCA:
        row = db.execute(
            "SELECT ca_key_pem, ca_cert_pem FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        if row is None:
            raise refuse("no such account", "account-unknown", 404)
        key = serialization.load_pem_private_key(row[0], password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise StoreError("account CA key is not Ed25519", code="store-corrupt")
        return identity.AccountCA(account_id, key, identity.load_cert(row[1]))

    # ------------------------------------------------------------ CRL

    def _issue_crl(
        self, db: Conn, ca: identity.AccountCA, now: float
    ) -> x509.CertificateRevocationList:
        (number,) = db.execute(
            "SELECT crl_number FROM accounts WHERE id = ?", (ca.account_id,)
        ).fetchone()
        revoked = [
            identity.Revoked(int(serial, 16), utc(revoked_at))
            for serial, revoked_at in db.execute(
                "SELECT c.serial, d.revoked_at FROM certs c JOIN devices d ON d.id = c.device_id "
                "WHERE c.account_id = ? AND d.revoked_at IS NOT NULL AND c.not_after > ? "
                "ORDER BY c.serial",
                (ca.account_id, now - identity.CLOCK_SKEW.total_seconds()),
            )
        ]
        crl = identity.issue_crl(ca, revoked, number=int(number) + 1, now=utc(now))
        db.execute(
            "UPDATE accounts SET crl_number = ?, crl_pem = ? WHERE id = ?",
            (int(number) + 1, identity.crl_to_pem(crl), ca.account_id),
        )
        return crl

    def current_crl(self, account_id: str) -> x509.CertificateRevocationList:
        """The account's CRL; re-issued (next number) once half its lifetime has passed."""
        with self._read() as db:
            row = db.execute("SELECT crl_pem FROM accounts WHERE id = ?", (account_id,)).fetchone()
        if row is None:
            raise refuse("no such account", "account-unknown", 404)
        crl = identity.load_crl(row[0])
        now = self._clock()
        next_update = crl.next_update_utc
        if next_update is not None and next_update.timestamp() - now > (
            identity.CRL_LIFETIME.total_seconds() / 2
        ):
            return crl
        with self._tx() as db:
            return self._issue_crl(db, self._load_ca(db, account_id), now)

    def _insert_cert(
        self,
        db: Conn,
        device_id: str,
        account_id: str,
        cert: x509.Certificate,
        now: float,
    ) -> None:
        db.execute(
            "INSERT INTO certs(serial, device_id, account_id, cert_pem, issued_at, not_after) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                format(cert.serial_number, "x"),
                device_id,
                account_id,
                identity.cert_to_pem(cert),
                now,
                cert.not_valid_after_utc.timestamp(),
            ),
        )

    def renew(self, device_id: str, csr_pem: bytes) -> Issued:
        """A new certificate for a paired, unrevoked device; the CSR must be for the same key."""
        csr_device, csr, _ = checked_csr(csr_pem)
        if csr_device != device_id:
            raise refuse("CSR is for another key than this device's", "csr-wrong-key")
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT account_id, revoked_at FROM devices WHERE id = ?", (device_id,)
            ).fetchone()
            if row is None:
                raise refuse("unknown device", "device-unknown", 404)
            if row[1] is not None:
                raise refuse("device is revoked", "device-revoked", 403)
            account_id = str(row[0])
            ca = self._load_ca(db, account_id)
            cert = identity.issue_device_cert(ca, csr, now=utc(now))
            self._insert_cert(db, device_id, account_id, cert, now)
            crl = identity.load_crl(
                db.execute("SELECT crl_pem FROM accounts WHERE id = ?", (account_id,)).fetchone()[0]
            )
        return Issued(device_id, account_id, cert, ca.cert, crl)

    # ------------------------------------------------------------ devices

    _DEVICE_SELECT = (
        "SELECT d.id, d.account_id, d.name, d.platform, d.public_key, d.created_at, d.last_seen, "
        "d.revoked_at, (SELECT MAX(not_after) FROM certs c WHERE c.device_id = d.id) "
        "FROM devices d "
    )

    @staticmethod
    def _device(row: tuple[object, ...]) -> Device:
        raw = row[4]
        if not isinstance(raw, bytes):
            raise StoreError("device key is not bytes", code="store-corrupt")
        return Device(
            device_id=str(row[0]),
            account_id=str(row[1]),
            name=str(row[2]),
            platform=str(row[3]),
            public_key=Ed25519PublicKey.from_public_bytes(raw),
            created_at=float(row[5]),  # type: ignore[arg-type]
            last_seen=None if row[6] is None else float(row[6]),  # type: ignore[arg-type]
            revoked_at=None if row[7] is None else float(row[7]),  # type: ignore[arg-type]
            cert_not_after=float(row[8] or 0.0),  # type: ignore[arg-type]
        )

    def get_device(self, device_id: str) -> Device | None:
        """The device with this id, if any."""
        with self._read() as db:
            row = db.execute(self._DEVICE_SELECT + "WHERE d.id = ?", (device_id,)).fetchone()
        return None if row is None else self._device(row)

    def list_devices(self, account_id: str) -> list[Device]:
        """The account's devices, oldest first (revoked ones included)."""
        with self._read() as db:
            rows = db.execute(
                self._DEVICE_SELECT + "WHERE d.account_id = ? ORDER BY d.created_at, d.id",
                (account_id,),
            ).fetchall()
        return [self._device(r) for r in rows]

    def revoked_among(self, device_ids: Iterable[str]) -> set[str]:
        """Those of ``device_ids`` that are revoked (or gone)."""
        ids = list(device_ids)
        if not ids:
            return set()
        with self._read() as db:
            placeholders = ",".join("?" * len(ids))
            live = {
                r[0]
                for r in db.execute(
                    f"SELECT id FROM devices WHERE revoked_at IS NULL AND id IN ({placeholders})",  # noqa: S608
                    ids,
                )
            }
        return set(ids) - live

    def touch_device(self, device_id: str) -> None:
        """Record that the device was seen now (at most once a minute per device)."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE devices SET last_seen = ? WHERE id = ? "
                "AND (last_seen IS NULL OR last_seen < ?)",
                (now, device_id, now - _TOUCH_INTERVAL),
            )

    def _owned(self, db: Conn, account_id: str, device_id: str) -> tuple[object, ...]:
        row = db.execute(
            "SELECT revoked_at FROM devices WHERE id = ? AND account_id = ?",
            (device_id, account_id),
        ).fetchone()
        if row is None:
            raise refuse("no such device in this account", "device-unknown", 404)
        return tuple(row)

    def rename_device(self, account_id: str, device_id: str, name: str) -> Device:
        """Rename a device of ``account_id``."""
        name = check_device_name(name)
        with self._tx() as db:
            self._owned(db, account_id, device_id)
            db.execute("UPDATE devices SET name = ? WHERE id = ?", (name, device_id))
        device = self.get_device(device_id)
        if device is None:  # pragma: no cover - just renamed
            raise refuse("no such device in this account", "device-unknown", 404)
        return device

    def revoke_device(self, account_id: str, device_id: str) -> x509.CertificateRevocationList:
        """Revoke a device of ``account_id``: a new CRL (next number) listing all its certificates.

        Revoking a revoked device changes nothing and returns the current CRL.
        """
        now = self._clock()
        with self._tx() as db:
            (revoked_at,) = self._owned(db, account_id, device_id)
            if revoked_at is None:
                db.execute("UPDATE devices SET revoked_at = ? WHERE id = ?", (now, device_id))
                return self._issue_crl(db, self._load_ca(db, account_id), now)
        return self.current_crl(account_id)


def checked_csr(csr_pem: bytes) -> tuple[str, x509.CertificateSigningRequest, Ed25519PublicKey]:
    """Parse a CSR and check its proof of possession; return (device id, CSR, key)."""
    try:
        csr = identity.load_csr(csr_pem)
        device_id = identity.check_csr(csr)
    except IdentityError as exc:
        raise refuse(exc.message, exc.code) from None
    public_key = csr.public_key()
    if not isinstance(public_key, Ed25519PublicKey):  # pragma: no cover - check_csr ensures it
        raise refuse("CSR key is not Ed25519", "csr-bad-key")
    return device_id, csr, public_key
