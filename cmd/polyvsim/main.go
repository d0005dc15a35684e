// Command polyvsim serves a Polyv API simulator for demos, tests and load
// tests. It checks appId, timestamp, signature and params as Polyv does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tokencache/tokencache/internal/cli"

	"github.com/tokencache/tokencache/internal/healthcheck"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	if err != nil && !errors.Is(err, cli.ErrHelp) {
		fmt.Fprintln(os.Stderr, "polyvsim:", err)
	}
	os.Exit(cli.ExitCode(err))
}

const usage = `usage: polyvsim [flags]
       polyvsim healthcheck [-addr host:port]

Serves Polyv's get-chat-token and get-token endpoints with Polyv's checks, and
GET /stats (call counts), GET /issued (tokens issued), POST /control (change
latency, errorRate, rateLimit or illegalChannels at run time, as JSON).`

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "healthcheck" {
		fs := flag.NewFlagSet("polyvsim healthcheck", flag.ContinueOnError)
		addr := fs.String("addr", envOr(getenv, "POLYVSIM_ADDR", ":8090"), "address of the simulator to probe (env POLYVSIM_ADDR)")
		if err := cli.Parse(fs, args[1:], stdout, "usage: polyvsim healthcheck [-addr host:port]"); err != nil {
			return err
		}
		return healthcheck.Probe(ctx, "http://"+healthcheck.Dialable(*addr)+"/stats")
	}
	fs := flag.NewFlagSet("polyvsim", flag.ContinueOnError)
	appID := fs.String("app-id", envOr(getenv, "POLYV_APP_ID", "sim-app"), "appId to accept (env POLYV_APP_ID)")
	appSecret := fs.String("app-secret", envOr(getenv, "POLYV_APP_SECRET", "sim-secret"), "appSecret to verify signatures with (env POLYV_APP_SECRET)")
	addr := fs.String("addr", envOr(getenv, "POLYVSIM_ADDR", ":8090"), "listen address (env POLYVSIM_ADDR)")
	latency := fs.Duration("latency", 0, "delay before every reply")
	errorRate := fs.Float64("error-rate", 0, "fraction of calls answered with 500 fail (0..1)")
	rateLimit := fs.Int("rate-limit", 0, "calls per second before Polyv's qps error (0 = none)")
	ban := fs.Duration("ban", 0, "once -rate-limit is exceeded, refuse every call for this long; a call during the ban starts it again (0 = no ban)")
	illegal := fs.String("illegal-channels", "", "comma-separated channelIds answered with 'illegal channel id'")
	if err := cli.Parse(fs, args, stdout, usage); err != nil {
		return err
	}
	if *errorRate < 0 || *errorRate > 1 {
		return &cli.UsageError{Msg: fmt.Sprintf("-error-rate %v is not between 0 and 1", *errorRate)}
	}
	var illegalIDs []string
	if *illegal != "" {
		illegalIDs = strings.Split(*illegal, ",")
	}
	sim := polyvsim.New(polyvsim.Options{
		AppID: *appID, AppSecret: *appSecret, Latency: *latency,
		ErrorRate: *errorRate, RateLimit: *rateLimit, Ban: *ban, IllegalChannels: illegalIDs,
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
