package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"
)

// certCheckEvery is how often the certificate files are checked for a
// renewal; a handshake in between uses the certificate in memory.
const certCheckEvery = 2 * time.Second

// certReloader serves the certificate in a pair of files and picks up a
// renewed pair without a restart.
type certReloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	pem     []byte // the files' content behind cert
	checked time.Time
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

// load reads the pair, and keeps it if it changed and is valid.
func (r *certReloader) load() error {
	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return fmt.Errorf("TOKENCACHE_TLS_CERT_FILE: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return fmt.Errorf("TOKENCACHE_TLS_KEY_FILE: %w", err)
	}
	both := append(append([]byte{}, certPEM...), keyPEM...)
	if bytes.Equal(both, r.pem) {
		return nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("TOKENCACHE_TLS_CERT_FILE and TOKENCACHE_TLS_KEY_FILE: %w", err)
	}
	r.cert, r.pem = &cert, both
	return nil
}

// getCertificate is tls.Config.GetCertificate. A pair that fails to load
// (say, half written) keeps the certificate in force.
func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) >= certCheckEvery {
		r.checked = time.Now()
		_ = r.load()
	}
	return r.cert, nil
}

// aeadSuites are the TLS 1.2 suites served: forward secret and AEAD only,
// no CBC or SHA-1. (TLS 1.3 chooses its own, all AEAD.)
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// serverTLS returns the listener's TLS settings: TLS 1.2 or later with AEAD
// suites only, and with a client CA, client certificates required.
func serverTLS(cfg Config) (*tls.Config, error) {
	r, err := newCertReloader(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: aeadSuites, GetCertificate: r.getCertificate}
	if cfg.TLSClientCA != "" {
		pool, err := certPool(cfg.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("TOKENCACHE_TLS_CLIENT_CA_FILE: %w", err)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// certPool reads a PEM file of CA certificates.
func certPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}
