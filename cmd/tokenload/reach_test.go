package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/httpapi"
	"github.com/tokencache/tokencache/internal/cli"
	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// startServiceWithAdmin serves the API with /metrics on an admin listener
// of its own, as TOKENCACHE_ADMIN_ADDR does; the API's /metrics is 404.
func startServiceWithAdmin(t *testing.T) (api, admin string) {
	t.Helper()
	s := polyvsim.NewTestServer(polyvsim.Options{})
	t.Cleanup(s.Close)
	client, _ := polyv.New(polyv.Options{AppID: "sim-app", AppSecret: "sim-secret", BaseURL: s.URL})
	rdb := redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
	metrics := cache.NewMetrics()
	c, err := cache.New(rdb, client, cache.Options{RateLimit: 10000, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	opts := httpapi.Options{Cache: c, APIKeys: []string{"k"}, AdminElsewhere: true}
	opts.Registry = prometheus.NewRegistry()
	opts.Registry.MustRegister(metrics.Collectors()...)
	apiSrv := httptest.NewServer(httpapi.New(opts))
	adminSrv := httptest.NewServer(httpapi.NewAdmin(opts))
	t.Cleanup(apiSrv.Close)
	t.Cleanup(adminSrv.Close)
	return apiSrv.URL, adminSrv.URL
}

// attack reads the upstream call count from -metrics when the target's
// metrics are on an admin listener, and warns when it cannot read them.
func TestAttackMetricsOnAdminListener(t *testing.T) {
	api, admin := startServiceWithAdmin(t)
	run := func(extra ...string) (attackReport, string) {
		var stdout, stderr bytes.Buffer
		args := append([]string{"-target", api, "-key", "k", "-rate", "100", "-duration", "300ms",
			"-channels", "1", "-users", "5", "-miss-ratio", "0.5", "-json", "-quiet"}, extra...)
		if err := attackCmd(context.Background(), args, &stdout, &stderr); err != nil {
			t.Fatalf("attack %v: %v\n%s", extra, err, stderr.String())
		}
		var r attackReport
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		return r, stderr.String()
	}
	r, stderr := run()
	if r.UpstreamProm != nil || !strings.Contains(stderr, "-metrics") {
		t.Errorf("without -metrics: upstream calls %v, stderr %q; want none and a warning naming -metrics", r.UpstreamProm, stderr)
	}
	r, _ = run("-metrics", admin+"/metrics")
	if r.UpstreamProm == nil || *r.UpstreamProm < 1 {
		t.Errorf("with -metrics: upstream calls %v, want the count", r.UpstreamProm)
	}
}

// compare shows the upstream call count from whichever source a report has.
func TestCompareReadsEitherCallCount(t *testing.T) {
	dir := t.TempDir()
	fromMetrics := 7.0
	b, _ := json.Marshal(attackReport{Requests: 10, Throughput: 10, UpstreamProm: &fromMetrics})
	path := filepath.Join(dir, "r.json")
	os.WriteFile(path, b, 0o600)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"compare", "-markdown", "r=" + path}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| 7 |") {
		t.Errorf("compare does not show the metrics' count:\n%s", out.String())
	}
}

// warm checks the key with one request before the rest: a wrong key is one
// clear error, not one line per identity.
func TestWarmChecksTheKeyFirst(t *testing.T) {
	api, _ := startService(t)
	pool := filepath.Join(t.TempDir(), "pool.jsonl")
	var stdout, stderr bytes.Buffer
	err := warmCmd(context.Background(), []string{"-target", api, "-key", "wrong", "-generate", "500", "-out", pool, "-quiet"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "401") || strings.Count(stderr.String(), "FAILED") > 0 {
		t.Errorf("warm with a wrong key = %v\n%s", err, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(pool), "pool.failures.jsonl")); err == nil {
		t.Error("a wrong key wrote a failures file")
	}
}

// warm stopped (Ctrl-C) keeps what is done and marks nothing else failed.
func TestWarmStopsCleanly(t *testing.T) {
	api, _ := startService(t)
	pool := filepath.Join(t.TempDir(), "pool.jsonl")
	ctx, cancel := context.WithCancel(context.Background())
	// Ctrl-C once the key check and two batches are back.
	target, _ := url.Parse(api)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var bulks atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxy.ServeHTTP(w, r)
		if r.Method == http.MethodPost && bulks.Add(1) == 3 {
			cancel()
		}
	}))
	defer front.Close()
	var stdout, stderr bytes.Buffer
	err := warmCmd(ctx, []string{"-target", front.URL, "-key", "k", "-generate", "100000", "-batch", "100", "-concurrency", "1",
		"-out", pool, "-quiet"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("warm stopped = %v, want it to say it stopped", err)
	}
	if strings.Contains(stderr.String(), "FAILED") {
		t.Errorf("identities not tried were marked failed:\n%.500s", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(pool), "pool.failures.jsonl")); err == nil {
		t.Error("a stopped run wrote a failures file")
	}
	if b, _ := os.ReadFile(pool); len(b) == 0 {
		t.Error("what was warmed before the stop was not written")
	}
}

// warm says up front how long the run will take, and its progress line
// gives the rate and the time left.
func TestWarmSaysHowLong(t *testing.T) {
	api, _ := startService(t)
	pool := filepath.Join(t.TempDir(), "pool.jsonl")
	var stdout, stderr bytes.Buffer
	if err := warmCmd(context.Background(), []string{"-target", api, "-key", "k", "-generate", "50", "-out", pool}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"/s", "about"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if got := progressBar(50, 100, 50, 0, 10*time.Second); !strings.Contains(got, "5/s") || !strings.Contains(got, "left 10s") {
		t.Errorf("progressBar = %q, want the rate and the time left", got)
	}
}

// Each command's help reads cleanly: no word of a flag's text is taken for
// its argument's name; compare says what it takes, and its usage errors
// are usage errors (exit 2) as the others'.
func TestHelpReadsCleanly(t *testing.T) {
	for _, cmd := range []string{"attack", "warm", "compare", "baseline"} {
		var out bytes.Buffer
		_ = run(context.Background(), []string{cmd, "-h"}, &out, &out)
		for _, bad := range []string{"-pool tokenload", "-output vegeta", "-miss attack", "`"} {
			if strings.Contains(out.String(), bad) {
				t.Errorf("%s -h shows %q:\n%s", cmd, bad, out.String())
			}
		}
		if cmd == "compare" && !strings.Contains(out.String(), "label=report.json") {
			t.Errorf("compare -h does not say it takes label=report.json:\n%s", out.String())
		}
	}
	err := run(context.Background(), []string{"compare"}, io.Discard, io.Discard)
	if code := cli.ExitCode(err); code != 2 {
		t.Errorf("compare with no reports: exit %d (%v), want 2", code, err)
	}
}

// Before any batch after the key check has come back, the progress line
// guesses no rate: one identity in seconds would promise hours.
func TestWarmProgressGuessesNoRateEarly(t *testing.T) {
	if got := progressBar(1, 300, 1, 0, 5*time.Second); strings.Contains(got, "left") {
		t.Errorf("progressBar after the key check alone = %q, want no time left yet", got)
	}
}
