"""Makes the certificates of the interop suite's mutual-TLS checks: a test CA, a
server certificate for oidc-provider's TLS listener (127.0.0.1), and two client
certificates (the bound one and an impostor). Fresh keys every run.

Usage: python make_certs.py OUT_DIR
Writes ca.pem, server.pem, server.key, and client-{bound,other}.{pem,key}.
"""

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
now = datetime.datetime.now(datetime.timezone.utc)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write(stem, cert, key):
    with open(f"{out}/{stem}.pem", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(f"{out}/{stem}.key", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def issue(cn, issuer_name, issuer_key, *, ca=False, server=False):
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder()
         .subject_name(name(cn)).issuer_name(issuer_name or name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = (b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256()), key


ca_cert, ca_key = issue("introspectd interop CA", None, None, ca=True)
with open(f"{out}/ca.pem", "wb") as f:
    f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
write("server", *issue("127.0.0.1", ca_cert.subject, ca_key, server=True))
# Self-signed client certificates, as RFC 8705 section 2.2 allows for binding.
for stem in ("client-bound", "client-other"):
    write(stem, *issue(f"interop {stem}", None, None))
