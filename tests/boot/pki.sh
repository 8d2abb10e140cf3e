#!/bin/sh
# Writes a working PKI folder for the boot test, as the seed guide's earlier
# chapters make it: a CA, the API server's certificate (signed by the CA, valid
# for 127.0.0.1 and the controllers' addresses), client certificates for admin
# (group system:masters), the controller manager and the scheduler, kubeconfigs
# pointing at https://127.0.0.1:6443 with the certificates embedded, the service
# account key pair and an encryption config.
#
#   tests/boot/pki.sh DIR [IP...]
set -eu
dir=${1:?usage: pki.sh DIR [IP...]}
shift
mkdir -p "$dir"
cd "$dir"

sans="IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.32.0.1"
for ip in "$@"; do sans="$sans,IP:$ip"; done

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca-key.pem
openssl req -x509 -new -key ca-key.pem -out ca.pem -days 30 -subj "/CN=Kubernetes/O=Kubernetes" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# sign NAME SUBJECT EXTENSIONS
sign() {
    key "$1-key.pem"
    openssl req -new -key "$1-key.pem" -out "$1.csr" -subj "$2"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
        -out "$1.pem" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
sign kubernetes "/CN=kubernetes/O=Kubernetes" \
    "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans"
client="keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
sign admin "/CN=admin/O=system:masters" "$client"
sign kube-controller-manager "/CN=system:kube-controller-manager/O=system:kube-controller-manager" "$client"
sign kube-scheduler "/CN=system:kube-scheduler/O=system:kube-scheduler" "$client"
sign service-account "/CN=service-accounts/O=Kubernetes" "$client"

b64() { base64 -w0 < "$1"; }
for user in admin kube-controller-manager kube-scheduler; do
    cat > "$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    certificate-authority-data: $(b64 ca.pem)
    server: https://127.0.0.1:6443
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$user.pem")
    client-key-data: $(b64 "$user-key.pem")
contexts:
- name: default
  context:
    cluster: kubernetes
    user: $user
current-context: default
EOF
done

cat > encryption-config.yaml <<EOF
kind: EncryptionConfig
apiVersion: v1
resources:
  - resources:
      - secrets
    providers:
      - aescbc:
          keys:
            - name: key1
              secret: $(head -c 32 /dev/urandom | base64 -w0)
      - identity: {}
EOF
rm -f ca.srl
