#!/bin/bash
# Makes a throwaway PKI for the TLS tests with certtool and psktool.
#
#   make-pki.sh DIR               the whole PKI (below)
#   make-pki.sh DIR aia URL [NAME]
#                                 DIR/NAME/ (default aia/): a server
#                                 certificate signed by the intermediate
#                                 CA, naming URL as its caIssuers (AIA),
#                                 served without the intermediate
#
# Every directory below DIR has the layout that nbdkit
# --tls-certificates, qemu's tls-creds-x509 dir= and nbdfs
# --tls-certificates read (ca-cert.pem, server-cert.pem, server-key.pem,
# client-cert.pem, client-key.pem):
#
#   server/       server for localhost and 127.0.0.1, signed by the CA;
#                 client certificate and key signed by the CA too
#   client/       the client's view: the CA, a client cert and key
#   client-nocert/  the CA only (no client certificate)
#   client-other/ an unrelated CA only (the wrong CA)
#   expired/      server certificate that expired in 2020
#   wrongname/    server certificate for wrong.example only
#   int/          server certificate signed by the intermediate CA,
#                 without the intermediate and without AIA
#   http/         the CA plus the files an HTTPS test server serves
#   ca-cert.pem, ca-key.pem, int-cert.pem, int-key.pem,
#   other-ca-cert.pem, int.der, int.p7c, int.pem (intermediate in DER,
#   PKCS#7 and PEM), other-int.der (an intermediate of the other CA)
#   psk/keys.psk  alice's key (the qemu psk dir= layout)
#   psk/wrong.psk a different key for alice
#
# ECDSA keys keep it fast: the whole PKI takes well under a second.

set -euo pipefail

dir=$1
mode=${2:-all}
mkdir -p "$dir"
cd "$dir"

key() {
  certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 \
    --no-text --outfile "$1" 2>/dev/null
  chmod 600 "$1"
}

# cert OUT KEY TEMPLATE-TEXT [SIGNER-CERT SIGNER-KEY]
cert() {
  local out=$1 k=$2 tmpl
  tmpl=$(mktemp "$PWD/tmpl.XXXXXX")
  printf '%s\n' "$3" >"$tmpl"
  if (($# >= 5)); then
    certtool --generate-certificate --load-privkey "$k" \
      --load-ca-certificate "$4" --load-ca-privkey "$5" \
      --template "$tmpl" --no-text --outfile "$out" 2>/dev/null
  else
    certtool --generate-self-signed --load-privkey "$k" \
      --template "$tmpl" --no-text --outfile "$out" 2>/dev/null
  fi
  rm -f "$tmpl"
}

server_tmpl() {
  printf 'cn = "%s"\n' "$1"
  shift
  printf '%s\n' "$@" tls_www_server signing_key encryption_key \
    'expiration_days = 30'
}

ca_tmpl='cn = "nbdfs test CA"
ca
cert_signing_key
crl_signing_key
expiration_days = 30'

if [[ $mode == aia ]]; then
  url=$3
  name=${4:-aia}
  mkdir -p "$name"
  cp ca-cert.pem "$name/"
  key "$name/server-key.pem"
  cert "$name/server-cert.pem" "$name/server-key.pem" \
    "$(server_tmpl localhost 'dns_name = "localhost"' \
      'ip_address = "127.0.0.1"' "ca_issuers_uri = \"$url\"")" \
    int-cert.pem int-key.pem
  exit 0
fi

# The CA, its intermediate, and an unrelated CA.
key ca-key.pem
cert ca-cert.pem ca-key.pem "$ca_tmpl"
key int-key.pem
cert int-cert.pem int-key.pem \
  "$(printf '%s\n' 'cn = "nbdfs test intermediate CA"' ca cert_signing_key \
    'expiration_days = 30')" ca-cert.pem ca-key.pem
key other-ca-key.pem
cert other-ca-cert.pem other-ca-key.pem \
  "$(printf '%s\n' 'cn = "unrelated CA"' ca cert_signing_key \
    'expiration_days = 30')"
key other-int-key.pem
cert other-int-cert.pem other-int-key.pem \
  "$(printf '%s\n' 'cn = "nbdfs test intermediate CA"' ca \
    cert_signing_key 'expiration_days = 30')" \
  other-ca-cert.pem other-ca-key.pem

# The intermediate as AIA servers publish it.
certtool --certificate-info --infile int-cert.pem --outder \
  --outfile int.der 2>/dev/null
certtool --certificate-info --infile other-int-cert.pem --outder \
  --outfile other-int.der 2>/dev/null
certtool --p7-generate --load-certificate int-cert.pem --outder \
  --outfile int.p7c 2>/dev/null
cp int-cert.pem int.pem

client_tmpl='cn = "nbdfs test client"
tls_www_client
signing_key
encryption_key
expiration_days = 30'

mkdir -p server client client-nocert client-other expired wrongname int \
  http psk

# server/: everything a server needs, and a client cert for it to trust.
cp ca-cert.pem server/
key server/server-key.pem
cert server/server-cert.pem server/server-key.pem \
  "$(server_tmpl localhost 'dns_name = "localhost"' \
    'ip_address = "127.0.0.1"')" ca-cert.pem ca-key.pem
key server/client-key.pem
cert server/client-cert.pem server/client-key.pem "$client_tmpl" \
  ca-cert.pem ca-key.pem

cp ca-cert.pem server/client-cert.pem server/client-key.pem client/
cp ca-cert.pem client-nocert/
cp other-ca-cert.pem client-other/ca-cert.pem

cp ca-cert.pem expired/
key expired/server-key.pem
cert expired/server-cert.pem expired/server-key.pem \
  "$(printf '%s\n' 'cn = "localhost"' 'dns_name = "localhost"' \
    'ip_address = "127.0.0.1"' tls_www_server signing_key \
    encryption_key 'activation_date = "2019-01-01 00:00:00"' \
    'expiration_date = "2020-01-01 00:00:00"')" ca-cert.pem ca-key.pem

cp ca-cert.pem wrongname/
key wrongname/server-key.pem
cert wrongname/server-cert.pem wrongname/server-key.pem \
  "$(server_tmpl wrong.example 'dns_name = "wrong.example"')" \
  ca-cert.pem ca-key.pem

cp ca-cert.pem int/
key int/server-key.pem
cert int/server-cert.pem int/server-key.pem \
  "$(server_tmpl localhost 'dns_name = "localhost"' \
    'ip_address = "127.0.0.1"')" int-cert.pem int-key.pem

# http/: what the HTTPS test server serves, and its own certificate.
cp ca-cert.pem int.der int.p7c int.pem other-int.der http/
cp server/server-cert.pem server/server-key.pem http/
head -c 2097152 /dev/zero | tr '\0' 'A' >http/big.pem

psktool -u alice -p psk/keys.psk >/dev/null
psktool -u alice -p psk/wrong.psk >/dev/null
chmod 600 psk/keys.psk psk/wrong.psk
