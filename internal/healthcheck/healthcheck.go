// Package healthcheck probes a health endpoint, for container healthchecks in
// images that have no curl.
package healthcheck

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// Probe GETs url and returns an error unless it answers 200 within 2s.
func Probe(ctx context.Context, url string) error { return probe(ctx, http.DefaultClient, url) }

// ProbeTLS is Probe for an https:// url served with the certificate in
// certFile (PEM): the probe trusts that certificate alone, whatever name it
// holds, since it dials the server from beside it.
func ProbeTLS(ctx context.Context, url, certFile string) error {
	pemBytes, err := os.ReadFile(certFile)
	if err != nil {
		return err
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" {
		return fmt.Errorf("%s holds no PEM certificate", certFile)
	}
	want := block.Bytes
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The server's own certificate is pinned instead of verified
		// against roots and a name: VerifyConnection checks it.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, want) {
				return fmt.Errorf("the server's certificate is not the one in %s", certFile)
			}
			return nil
		},
	}
	return probe(ctx, &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}, url)
}

func probe(ctx context.Context, client *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// Dialable turns a listen address into one a client can dial: an empty or
// unspecified host becomes 127.0.0.1.
func Dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
