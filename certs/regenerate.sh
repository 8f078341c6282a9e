#!/usr/bin/env bash
# Regenerate portcullis DEVELOPMENT certificates (see README.md). Uses openssl only.
# Keys here are public in the repo: never use them for anything but local tests.
#   bash certs/regenerate.sh           everything, with a new CA
#   bash certs/regenerate.sh clients   only the client certificates (client.*, other-ca.*,
#                                      other-client.*), signed by the existing ca.key
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

DAYS=3650
tmp="$(mktemp -d)"                 # CSRs, serial file and extension files live here
trap 'rm -rf "$tmp"' EXIT

# --- A CA: ECDSA P-256, self-signed -------------------------------------------
# usage: ca NAME CN   (writes NAME.key, NAME.crt)
ca() {
  local name="$1" cn="$2"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
  cat > "$tmp/$name.ext" <<'EOF'
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
EOF
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
  openssl x509 -req -in "$tmp/$name.csr" -signkey "$name.key" -days "$DAYS" -sha256 \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/$name.ext" -out "$name.crt"
}

# --- Client leaf for mutual TLS, P-256 PKCS#8, signed by CA <ca> ---------------
# usage: client NAME CA CN   (NAME.crt = leaf + CA chain)
client() {
  local name="$1" ca="$2" cn="$3"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
  cat > "$tmp/$name.ext" <<'EOF'
basicConstraints       = CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
EOF
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$ca.crt" -CAkey "$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -sha256 \
    -extfile "$tmp/$name.ext" -out "$tmp/$name.leaf.crt"
  cat "$tmp/$name.leaf.crt" "$ca.crt" > "$name.crt"
}

clients() {
  # Signed by the development CA: accepted by servers that trust ca.crt for clients.
  client client ca "portcullis test client"
  # A second, unrelated CA and a client it signed: refused by those servers.
  ca other-ca "portcullis other CA"
  client other-client other-ca "portcullis other client"
  chmod 644 client.key other-ca.key other-client.key
}

if [ "${1:-}" = clients ]; then
  clients
  echo "Regenerated client certificates in $(pwd)"
  exit 0
fi

# --- Development CA ------------------------------------------------------------
ca ca "portcullis development CA"

# --- Leaf: sign <name>.key's CSR with the CA; <name>.crt = leaf + CA chain -----
# usage: leaf NAME SUBJECT_ALT_NAMES   (NAME.key must already exist)
leaf() {
  local name="$1" san="$2"
  cat > "$tmp/$name.ext" <<EOF
basicConstraints       = CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
EOF
  local cn="${san#DNS:}"; cn="${cn%%,*}"   # CN = first DNS SAN
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
  openssl x509 -req -in "$tmp/$name.csr" -CA ca.crt -CAkey ca.key \
    -CAserial "$tmp/ca.srl" -CAcreateserial -days "$DAYS" -sha256 \
    -extfile "$tmp/$name.ext" -out "$tmp/$name.leaf.crt"
  cat "$tmp/$name.leaf.crt" ca.crt > "$name.crt"
}

LOCALHOST_SAN="DNS:localhost, IP:127.0.0.1, IP:::1"

# localhost: P-256, PKCS#8 ("BEGIN PRIVATE KEY")
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out localhost.key
leaf localhost "$LOCALHOST_SAN"

# example.com: second hostname for SNI tests, P-256 PKCS#8
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out example.com.key
leaf example.com "DNS:example.com, DNS:www.example.com"

# Key-format fixtures (localhost certs):
# RSA 2048, PKCS#1 ("BEGIN RSA PRIVATE KEY")
openssl genrsa -traditional -out rsa-pkcs1.key 2048
leaf rsa-pkcs1 "$LOCALHOST_SAN"

# P-256, SEC1 ("BEGIN EC PRIVATE KEY")
openssl ecparam -name prime256v1 -genkey -noout -out ec-sec1.key
leaf ec-sec1 "$LOCALHOST_SAN"

# Client certificates for mutual TLS (and one from another CA)
clients

# Keys are public fixtures; keep them readable for tests run as any user.
chmod 644 ./*.key

echo "Regenerated certificates in $(pwd)"
