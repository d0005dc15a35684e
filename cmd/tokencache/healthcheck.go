package main

import (
	"context"
	"flag"
	"io"

	"github.com/tokencache/tokencache/internal/cli"
	"github.com/tokencache/tokencache/internal/healthcheck"
)

// healthcheckCmd probes /healthz for a container healthcheck: on the admin
// listener when there is one, else on the main port, over HTTPS when that
// serves it.
func healthcheckCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	// The admin listener, when set, is where /healthz lives.
	def := getenv("TOKENCACHE_ADMIN_ADDR")
	if def == "" {
		def = getenv("TOKENCACHE_ADDR")
	}
	if def == "" {
		def = ":8080"
	}
	fs := flag.NewFlagSet("tokencache healthcheck", flag.ContinueOnError)
	addr := fs.String("addr", def, "address whose /healthz to probe (env TOKENCACHE_ADMIN_ADDR, else TOKENCACHE_ADDR)")
	if err := cli.Parse(fs, args, stdout, "usage: tokencache healthcheck [-addr host:port]"); err != nil {
		return err
	}
	// Without an admin listener, /healthz is on the main port, which
	// serves HTTPS when a certificate is configured.
	if cert := getenv("TOKENCACHE_TLS_CERT_FILE"); cert != "" && getenv("TOKENCACHE_ADMIN_ADDR") == "" {
		return healthcheck.ProbeTLS(ctx, "https://"+dialable(*addr)+"/healthz", cert)
	}
	return healthcheck.Probe(ctx, "http://"+dialable(*addr)+"/healthz")
}
