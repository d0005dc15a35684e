// Package testcerts writes a throwaway CA, a server certificate for
// 127.0.0.1 and localhost, and a client certificate, for TLS tests.
package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Files are the paths of the PEM files written.
type Files struct {
	CA                    string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	ca                    *x509.Certificate
	caKey                 *ecdsa.PrivateKey
	dir                   string
}

// Write writes a new CA and certificates into a temporary directory.
func Write(tb testing.TB) *Files {
	tb.Helper()
	f := &Files{dir: tb.TempDir()}
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokencache test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	f.ca, _ = x509.ParseCertificate(der)
	f.caKey = key
	f.CA = f.writePEM(tb, "ca.pem", "CERTIFICATE", der)
	f.ServerCert, f.ServerKey = f.Issue(tb, "server", "server", x509.ExtKeyUsageServerAuth)
	f.ClientCert, f.ClientKey = f.Issue(tb, "client", "client", x509.ExtKeyUsageClientAuth)
	return f
}

// Issue writes a new certificate signed by the CA, named name, with common
// name cn, and returns its certificate and key files.
func (f *Files) Issue(tb testing.TB, name, cn string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	tb.Helper()
	key := newKey(tb)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca, &key.PublicKey, f.caKey)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	return f.writePEM(tb, name+".pem", "CERTIFICATE", der), f.writePEM(tb, name+"-key.pem", "EC PRIVATE KEY", keyDER)
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func (f *Files) writePEM(tb testing.TB, name, kind string, der []byte) string {
	path := filepath.Join(f.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}
