// Command polyvsim serves a Polyv API simulator for demos, tests and load
// tests. It checks appId, timestamp, signature and params as Polyv does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tokencache/tokencache/internal/healthcheck"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "polyvsim:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheck.Probe(ctx, "http://127.0.0.1"+envOr(getenv, "POLYVSIM_ADDR", ":8090")+"/stats")
	}
	fs := flag.NewFlagSet("polyvsim", flag.ContinueOnError)
	appID := fs.String("app-id", envOr(getenv, "POLYV_APP_ID", "sim-app"), "appId to accept (env POLYV_APP_ID)")
	appSecret := fs.String("app-secret", envOr(getenv, "POLYV_APP_SECRET", "sim-secret"), "appSecret to verify signatures with (env POLYV_APP_SECRET)")
	addr := fs.String("addr", envOr(getenv, "POLYVSIM_ADDR", ":8090"), "listen address (env POLYVSIM_ADDR)")
	latency := fs.Duration("latency", 0, "delay before every reply")
	errorRate := fs.Float64("error-rate", 0, "fraction of calls answered with 500 fail (0..1)")
	rateLimit := fs.Int("rate-limit", 0, "calls per second before Polyv's qps error (0 = none)")
	illegal := fs.String("illegal-channels", "", "comma-separated channelIds answered with 'illegal channel id'")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *errorRate < 0 || *errorRate > 1 {
		return fmt.Errorf("-error-rate %v is not between 0 and 1", *errorRate)
	}
	var illegalIDs []string
	if *illegal != "" {
		illegalIDs = strings.Split(*illegal, ",")
	}
	sim := polyvsim.New(polyvsim.Options{
		AppID: *appID, AppSecret: *appSecret, Latency: *latency,
		ErrorRate: *errorRate, RateLimit: *rateLimit, IllegalChannels: illegalIDs,
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
	slog.Info("polyvsim listening", "addr", ln.Addr().String(), "appId", *appID, "latency", *latency, "errorRate", *errorRate, "rateLimit", *rateLimit)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}
