package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testcerts"
	"github.com/tokencache/tokencache/internal/testwait"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// httpsClient trusts certs' CA and, with client set, shows the client
// certificate. Each request uses a new connection.
func httpsClient(t *testing.T, certs *testcerts.Files, client bool) *http.Client {
	t.Helper()
	caPEM, _ := os.ReadFile(certs.CA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tc := &tls.Config{RootCAs: pool}
	if client {
		pair, err := tls.LoadX509KeyPair(certs.ClientCert, certs.ClientKey)
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
}

func TestTLSListenerMTLSAndRenewal(t *testing.T) {
	certs := testcerts.Write(t)
	url, _, _, _ := startRun(t, []string{"-demo"}, map[string]string{
		"TOKENCACHE_ADDR": "127.0.0.1:0", "TOKENCACHE_TLS_CERT_FILE": certs.ServerCert, "TOKENCACHE_TLS_KEY_FILE": certs.ServerKey,
		"TOKENCACHE_TLS_CLIENT_CA_FILE": certs.CA,
	})
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("url = %s, want https", url)
	}
	if _, err := httpsClient(t, certs, false).Get(url + "/healthz"); err == nil {
		t.Error("a client without a certificate got through mTLS")
	}
	resp, err := httpsClient(t, certs, true).Get(url + "/healthz")
	if err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	resp.Body.Close()
	if resp.TLS.Version < tls.VersionTLS12 {
		t.Errorf("TLS version %x", resp.TLS.Version)
	}
	if plain, err := http.Get(strings.Replace(url, "https://", "http://", 1) + "/healthz"); err == nil {
		plain.Body.Close()
		if plain.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP on the TLS listener = %s, want 400", plain.Status)
		}
	}

	// A renewed certificate is picked up without a restart.
	before := resp.TLS.PeerCertificates[0].SerialNumber
	cert, key := certs.Issue(t, "renewed", "renewed", x509.ExtKeyUsageServerAuth)
	for _, f := range [][2]string{{cert, certs.ServerCert}, {key, certs.ServerKey}} {
		b, _ := os.ReadFile(f[0])
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if !testwait.Until(3*certCheckEvery, func() bool {
		var resp *http.Response
		if resp, err = httpsClient(t, certs, true).Get(url + "/healthz"); err != nil {
			return false
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.Cmp(before) != 0
	}) {
		t.Fatalf("the renewed certificate was not served: %v", err)
	}
}

func TestAdminListener(t *testing.T) {
	url, _, stderr, _ := startRun(t, []string{"-demo"}, map[string]string{"TOKENCACHE_ADDR": "127.0.0.1:0", "TOKENCACHE_ADMIN_ADDR": "127.0.0.1:0"})
	m := regexp.MustCompile(`"adminUrl":"(http://[^"]+)"`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("no adminUrl in the ready line:\n%s", stderr)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get(m[1] + path)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("admin %s = %v %v", path, resp, err)
		} else {
			resp.Body.Close()
		}
		resp, err = http.Get(url + path)
		if err != nil || resp.StatusCode != 404 {
			t.Errorf("public %s = %v %v, want 404", path, resp, err)
		} else {
			resp.Body.Close()
		}
	}
}

func TestEncryptionKeysConfig(t *testing.T) {
	base := map[string]string{"POLYV_APP_ID": "a", "POLYV_APP_SECRET": "s", "TOKENCACHE_API_KEYS": "k", "REDIS_URL": "redis://127.0.0.1:1"}
	good := "new:QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=,old:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	env := map[string]string{"TOKENCACHE_ENCRYPTION_KEYS": good}
	for k, v := range base {
		env[k] = v
	}
	cfg, err := loadConfig(nil, envFunc(env), nil)
	if err != nil || len(cfg.EncryptionKeys) != 2 || cfg.EncryptionKeys[0].ID != "new" {
		t.Fatalf("loadConfig() = %v, %v", cfg.EncryptionKeys, err)
	}
	env["TOKENCACHE_ENCRYPTION_KEYS"] = "short:c2VjcmV0LWtleQ==,nocolon"
	_, err = loadConfig(nil, envFunc(env), nil)
	if err == nil || !strings.Contains(err.Error(), `entry 1 ("short")`) || !strings.Contains(err.Error(), "entry 2: want id:base64") {
		t.Errorf("loadConfig() = %v, want both entries named", err)
	}
	if err != nil && strings.Contains(err.Error(), "c2VjcmV0LWtleQ") {
		t.Error("the error quotes a key")
	}
}

// -check-polyv refuses to start on wrong credentials; /readyz reports Polyv.
func TestCheckPolyvAndReadyz(t *testing.T) {
	sim := polyvsim.NewTestServer(polyvsim.Options{AppID: "app", AppSecret: "right-secret"})
	t.Cleanup(sim.Close)
	env := map[string]string{"TOKENCACHE_ADDR": "127.0.0.1:0", "POLYV_APP_ID": "app", "POLYV_APP_SECRET": "wrong-secret",
		"POLYV_BASE_URL": sim.URL, "TOKENCACHE_API_KEYS": "k", "TOKENCACHE_CHECK_POLYV": "true",
		"REDIS_URL": "redis://" + redistest.Start(t).Addr, "TOKENCACHE_ENCRYPTION": "off"}
	err := run(context.Background(), nil, envFunc(env), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "credentials rejected by Polyv") || strings.Contains(err.Error(), "wrong-secret") {
		t.Fatalf("run() with wrong credentials = %v, want a refusal naming the credentials", err)
	}
	env["POLYV_APP_SECRET"] = "right-secret"
	url, _, _, _ := startRun(t, nil, env)
	var ready struct{ Polyv string }
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&ready); err != nil || ready.Polyv != "ok" {
		t.Errorf("/readyz polyv = %q (%v), want ok after the check", ready.Polyv, err)
	}
}

// TLS 1.2 is served with AEAD suites only: a client offering only a CBC
// suite is refused.
func TestTLS12OnlyAEAD(t *testing.T) {
	certs := testcerts.Write(t)
	tc, err := serverTLS(Config{TLSCertFile: certs.ServerCert, TLSKeyFile: certs.ServerKey})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	dial := func(suite uint16) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA); err == nil {
		t.Error("a TLS 1.2 client offering only CBC-SHA1 was served")
	}
	if err := dial(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil {
		t.Errorf("a TLS 1.2 client offering AES-GCM: %v", err)
	}
}

// tokencache healthcheck passes against an HTTPS main port (no admin
// listener), as the container healthcheck runs it: with the server's own
// environment, trusting the server's own certificate file.
func TestHealthcheckOverTLS(t *testing.T) {
	certs := testcerts.Write(t)
	env := map[string]string{"TOKENCACHE_TLS_CERT_FILE": certs.ServerCert, "TOKENCACHE_TLS_KEY_FILE": certs.ServerKey}
	serverEnv := map[string]string{"TOKENCACHE_ADDR": "127.0.0.1:0"}
	for k, v := range env {
		serverEnv[k] = v
	}
	url, _, _, _ := startRun(t, []string{"-demo"}, serverEnv)
	env["TOKENCACHE_ADDR"] = strings.TrimPrefix(url, "https://")
	if err := run(context.Background(), []string{"healthcheck"}, envFunc(env), io.Discard, io.Discard); err != nil {
		t.Errorf("healthcheck of the HTTPS port = %v", err)
	}
	// Another server's certificate is not the one it trusts.
	other := testcerts.Write(t)
	env["TOKENCACHE_TLS_CERT_FILE"] = other.ServerCert
	if err := run(context.Background(), []string{"healthcheck"}, envFunc(env), io.Discard, io.Discard); err == nil {
		t.Error("healthcheck passed against a server whose certificate is not the configured one")
	}
}
