// Command tokencache serves Polyv chat tokens from a Redis-backed cache. See
// the README for its configuration; -demo runs it with no Polyv account and no
// Redis.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tokencache/tokencache/internal/cli"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/httpapi"
	"github.com/tokencache/tokencache/internal/healthcheck"
	"github.com/tokencache/tokencache/internal/redisconn"
	"github.com/tokencache/tokencache/polyv"
)

// defaultGCPercent is the server's GOGC unless the environment sets one: its
// live heap is tens of MB, so collecting at 4× it instead of 2× costs little
// memory and gives the hit path about 5 % more throughput (bench-http).
const defaultGCPercent = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, cli.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tokencache:", err)
	}
	os.Exit(cli.ExitCode(err))
}

// bulkTimeout bounds a bulk request; the server's write timeout leaves room for it.
const bulkTimeout = httpapi.DefaultBulkTimeout

// run starts the server and blocks until ctx ends, then shuts down gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheckCmd(ctx, args[1:], getenv, stdout)
	}
	cfg, err := loadConfig(args, getenv, stdout)
	var usageErr *cli.UsageError
	if errors.Is(err, cli.ErrHelp) || errors.As(err, &usageErr) {
		return err
	}
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	log := newLogger(cfg, stderr)
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	routeRedisLog.Do(func() { redis.SetLogger(redisLogger{log}) })

	a, err := build(ctx, &cfg, log)
	defer a.close()
	if err != nil {
		return err
	}
	return a.serve(ctx, cfg, log, stdout)
}

// app is the service built from its configuration, ready to serve.
type app struct {
	servers []*http.Server
	addrs   []string // each server's listen address
	tls     bool     // the first serves HTTPS
	cleanup []func() // run in reverse order by close
}

// close releases what build made, last made first.
func (a *app) close() {
	for i := len(a.cleanup) - 1; i >= 0; i-- {
		a.cleanup[i]()
	}
}

// build wires the service: the demo's stand-ins with -demo, Redis, the
// Polyv client, metrics, the cache, the keys' reloader and the HTTP servers.
// On an error, what it made so far is in the app, for close.
func build(ctx context.Context, cfg *Config, log *slog.Logger) (*app, error) {
	a := &app{}

	if cfg.Demo {
		closeSim, err := startDemo(cfg)
		if err != nil {
			return a, err
		}
		a.cleanup = append(a.cleanup, closeSim)
	}

	rdb, embedded, err := openRedis(*cfg)
	if err != nil {
		return a, err
	}
	a.cleanup = append(a.cleanup, func() { _ = rdb.Close() })
	if embedded != nil {
		a.cleanup = append(a.cleanup, embedded.Close)
		log.Warn("-demo: using an embedded in-memory Redis, which suits one instance only; tokens are lost on restart", "embeddedRedis", embedded.Addr())
	}
	if cfg.Auth == "none" {
		log.Warn("TOKENCACHE_AUTH=none: the API accepts requests without an API key")
	}
	if cfg.Encryption == "off" {
		log.Warn("TOKENCACHE_ENCRYPTION=off: Redis holds tokens and userIds in clear, and whoever can write Redis can have any token served for any user; set TOKENCACHE_ENCRYPTION_KEYS to seal them")
	}

	client, err := polyv.New(polyv.Options{
		AppID: cfg.AppID, AppSecret: cfg.AppSecret, BaseURL: cfg.BaseURL,
		SignMethod: polyv.SignMethod(cfg.SignMethod), Timeout: cfg.PolyvTimeout,
	})
	if err != nil {
		return a, err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := cache.NewMetrics()
	reg.MustRegister(metrics.Collectors()...)

	auditor := httpapi.NewAuditor(log, auditKey(cfg.AppSecret))
	opts := cfg.cacheOptions()
	opts.Metrics, opts.OnFetch = metrics, auditor.Fetch
	opts.OnCircuitChange = func(from, to string) {
		switch to {
		case "open":
			log.Warn("Redis circuit open: serving from the local cache and Polyv until Redis answers", "from", from)
		case "closed":
			log.Info("Redis circuit closed: using Redis again", "from", from)
		}
	}
	opts.OnCooldown = func(left time.Duration) {
		if left > 0 {
			log.Warn("Polyv rate-limited the fleet: no Polyv calls until the cool-down ends, then one probe; misses get 503", "cooldown", left.String())
			return
		}
		log.Info("Polyv cool-down over: the probe was answered, calls resume")
	}
	tc, err := cache.New(rdb, client, opts)
	if err != nil {
		return a, err
	}
	a.cleanup = append(a.cleanup, func() { _ = tc.Close() })
	if cfg.CheckPolyv {
		if err := checkPolyv(ctx, client, tc, log); err != nil {
			return a, err
		}
	}

	keys := httpapi.NewKeys(cfg.Keys)
	// SIGHUP is always caught, so that a reload habit (systemd's
	// ExecReload, a script) never takes the service down.
	reloadCtx, stopReload := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); reloadKeys(reloadCtx, *cfg, keys, log) }()
	a.cleanup = append(a.cleanup, func() { stopReload(); <-done })
	apiOpts := httpapi.Options{
		Cache: tc, Keys: keys, Auditor: auditor, AuthDisabled: cfg.Auth == "none", EmbeddedRedis: embedded != nil, EncryptionOff: len(cfg.EncryptionKeys) == 0,
		Logger: log, Registry: reg, BulkTimeout: bulkTimeout, AdminElsewhere: cfg.AdminAddr != "", Pprof: cfg.Pprof, AccessLog: cfg.AccessLog,
	}
	var tlsConfig *tls.Config
	if cfg.TLSCertFile != "" {
		if tlsConfig, err = serverTLS(*cfg); err != nil {
			return a, err
		}
	}
	a.servers = []*http.Server{newServer(httpapi.New(apiOpts), tlsConfig, log)}
	a.addrs = []string{cfg.Addr}
	a.tls = tlsConfig != nil
	if cfg.AdminAddr != "" {
		a.servers = append(a.servers, newServer(httpapi.NewAdmin(apiOpts), nil, log))
		a.addrs = append(a.addrs, cfg.AdminAddr)
	}
	return a, nil
}

// serve listens on every address, serves until ctx ends, then shuts the
// servers down within the grace period.
func (a *app) serve(ctx context.Context, cfg Config, log *slog.Logger, stdout io.Writer) error {
	// Listen on every address before serving any, so that a bind error is
	// reported at once.
	listeners := make([]net.Listener, len(a.addrs))
	for i, addr := range a.addrs {
		var err error
		if listeners[i], err = net.Listen("tcp", addr); err != nil {
			for _, l := range listeners[:i] {
				_ = l.Close()
			}
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
	}
	serveErr := make(chan error, len(a.servers))
	for i, srv := range a.servers {
		ln := listeners[i]
		if srv.TLSConfig != nil {
			ln = tls.NewListener(ln, srv.TLSConfig)
		}
		go func() { serveErr <- srv.Serve(ln) }()
	}

	scheme := "http://"
	if a.tls {
		scheme = "https://"
	}
	url := scheme + dialable(listeners[0].Addr().String())
	readyAttrs := []any{"url", url, "config", cfg}
	if cfg.AdminAddr != "" {
		readyAttrs = append(readyAttrs, "adminUrl", "http://"+dialable(listeners[1].Addr().String()))
	}
	log.Info("ready", readyAttrs...)
	if cfg.Demo {
		fmt.Fprintf(stdout, "tokencache demo is up (Polyv simulator and embedded Redis). Try:\n\n")
		key := "<one of your API keys>"
		if len(cfg.APIKeys) > 0 {
			key = cfg.APIKeys[0]
		}
		fmt.Fprintf(stdout, "curl -sS -H 'Authorization: Bearer %s' '%s/v1/channels/2094979/chat-token?userId=1b448be323&role=viewer&origin=web'\n\n", key, url)
		fmt.Fprintf(stdout, "The Polyv simulator answers at %s: give tokenload -stats %s to count its calls.\n\n", cfg.BaseURL, cfg.BaseURL)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", cfg.ShutdownPeriod.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownPeriod)
	defer cancel()
	for _, srv := range a.servers {
		if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	log.Info("stopped")
	return nil
}

// checkPolyv signs one get-token call for a channel that does not exist:
// Polyv's "illegal channel" answer proves the credentials, signature and
// clock are right. Only a credential error stops the start; Polyv being
// unreachable is logged and left to /readyz.
func checkPolyv(ctx context.Context, client *polyv.Client, tc *cache.Cache, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := client.ChannelToken(ctx, "tokencache-check")
	tc.RecordPolyvCheck(err)
	switch polyv.Classify(err) {
	case polyv.KindNone, polyv.KindRejected:
		log.Info("Polyv accepted the credentials")
		return nil
	case polyv.KindMisconfigured:
		return fmt.Errorf("credentials rejected by Polyv (appId, secret, signature or clock): check POLYV_APP_ID, POLYV_APP_SECRET and the server clock (%w)", err)
	}
	log.Warn("Polyv could not be checked at start", "error", err.Error())
	return nil
}

// routeRedisLog sets go-redis's logger, a global, once per process.
var routeRedisLog sync.Once

// redisLogger routes go-redis's own messages (dial failures, pool and
// pub/sub trouble) into the service's structured log, at warn.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client: "+fmt.Sprintf(format, v...), "component", "go-redis")
}

// newServer returns an HTTP server of h with timeouts on every phase.
func newServer(h http.Handler, tlsConfig *tls.Config, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      bulkTimeout + 10*time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel) // validated
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// openRedis connects to REDIS_URL; without one (only -demo allows that) it
// starts the demo's embedded Redis.
func openRedis(cfg Config) (redis.UniversalClient, *miniredis.Miniredis, error) {
	if cfg.RedisURL == "" {
		return startEmbeddedRedis()
	}
	rdb, err := redisconn.Open(redisconn.Options{URL: cfg.RedisURL, Cluster: cfg.RedisCluster,
		TLSCAFile: cfg.RedisTLSCA, TLSCertFile: cfg.RedisTLSCert, TLSKeyFile: cfg.RedisTLSKey})
	return rdb, nil, err
}

// keysCheckEvery is how often the keys file is checked for a change, so that
// a mounted Kubernetes Secret, which changes without a signal, is picked up.
var keysCheckEvery = 3 * time.Second

// keysSettle is how far apart the two reads of a keys file are, which must
// agree for it to be taken: a file being written is not.
const keysSettle = 100 * time.Millisecond

// reloadKeys reloads the API keys file on SIGHUP and whenever its content
// changes, until ctx ends. A file that cannot be read (a removed file
// included), changes while read, or does not parse keeps the keys in force,
// and is loud: an ERROR line, the reload error counter, and /readyz's config
// reports the keys stale until a reload succeeds; each failed check counts. Without a keys file,
// SIGHUP is logged and ignored.
func reloadKeys(ctx context.Context, cfg Config, keys *httpapi.Keys, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if cfg.APIKeysFile == "" {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP ignored: there is no keys file to reload (TOKENCACHE_API_KEYS_FILE is not set)")
			}
		}
	}
	last, _ := os.ReadFile(cfg.APIKeysFile)
	failed := "" // the last failure's reason, logged once
	tick := time.NewTicker(keysCheckEvery)
	defer tick.Stop()
	for {
		signalled := false
		select {
		case <-ctx.Done():
			return
		case <-hup:
			signalled = true
		case <-tick.C:
		}
		b, err := os.ReadFile(cfg.APIKeysFile)
		if err == nil && failed == "" && !signalled && bytes.Equal(b, last) {
			continue
		}
		var next *httpapi.KeySet
		if err == nil {
			b, err = readSettled(cfg.APIKeysFile, keysSettle)
		}
		if err == nil {
			next, err = httpapi.ParseKeysFile(b)
		}
		if err == nil {
			next, err = httpapi.KeysFromList(cfg.APIKeys).Join(next)
		}
		if err != nil {
			reason := strings.ReplaceAll(err.Error(), "\n", "; ")
			keys.MarkStale(reason)
			if reason != failed || signalled {
				failed = reason
				log.Error("API keys file not reloaded; the keys in force stay, and /readyz reports them stale", "file", cfg.APIKeysFile, "error", reason)
			}
			continue
		}
		last, failed = b, ""
		keys.Store(next)
		log.Info("API keys reloaded", "file", cfg.APIKeysFile, "keys", next.Len())
	}
}

// readSettled reads path twice, wait apart, and returns its content only if
// both reads agree.
func readSettled(path string, wait time.Duration) ([]byte, error) {
	first, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	time.Sleep(wait)
	second, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(first, second) {
		return nil, fmt.Errorf("%s changed while it was read (being written?): tried again at the next check", path)
	}
	return second, nil
}

// auditKey derives the key that hashes userIds in the audit trail from the
// Polyv secret: the same across the fleet, and secret.
func auditKey(secret polyv.Secret) []byte {
	m := hmac.New(sha256.New, []byte(secret.Reveal()))
	m.Write([]byte("tokencache audit user hash v1"))
	return m.Sum(nil)
}

// dialable turns a listen address into one a client can dial.
func dialable(addr string) string { return healthcheck.Dialable(addr) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
