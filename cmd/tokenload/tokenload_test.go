package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/httpapi"
	"github.com/tokencache/tokencache/internal/cli"
	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

func TestParseRoleMix(t *testing.T) {
	mix, err := parseRoleMix("viewer=3, guest=1")
	if err != nil || len(mix) != 2 || mix[0].weight != 0.75 || mix[1].weight != 0.25 {
		t.Errorf("parseRoleMix() = %v, %v", mix, err)
	}
	for _, bad := range []string{"viewer", "viewer=x", "viewer=-1", "viewer=0"} {
		if _, err := parseRoleMix(bad); err == nil {
			t.Errorf("parseRoleMix(%q) accepted", bad)
		}
	}
}

func TestWorkload(t *testing.T) {
	roles, _ := parseRoleMix("viewer=0.9,teacher=0.1")
	count := func(popularity string, miss float64) (map[string]int, int, int) {
		wl, err := newWorkload(10, 100, roles, popularity, 1.2, miss, 7)
		if err != nil {
			t.Fatal(err)
		}
		seen, fresh, teachers := map[string]int{}, 0, 0
		for range 20000 {
			id := wl.next()
			if strings.HasPrefix(id.UserID, "fresh-") {
				fresh++
			}
			if id.Role == "teacher" {
				teachers++
			}
			seen[id.key()]++
		}
		return seen, fresh, teachers
	}
	uniform, fresh, teachers := count("uniform", 0.1)
	if fresh < 1700 || fresh > 2300 {
		t.Errorf("fresh users = %d of 20000 at miss ratio 0.1", fresh)
	}
	if teachers < 1400 || teachers > 2600 {
		t.Errorf("teachers = %d of 20000 at weight 0.1", teachers)
	}
	zipf, _, _ := count("zipf", 0)
	if top(zipf) < 5*top(uniform) {
		t.Errorf("zipf's most popular key got %d requests, uniform's %d: no skew", top(zipf), top(uniform))
	}
	wl, _ := newWorkload(10, 100, roles, "uniform", 0, 0, 1)
	other, _ := newWorkload(10, 100, roles, "uniform", 0, 0, 99)
	if wl.known(42) != other.known(42) || len(wl.all()) != 1000 {
		t.Error("known viewers are not stable")
	}
	if _, err := newWorkload(1, 1, roles, "pareto", 0, 0, 1); err == nil {
		t.Error("unknown popularity accepted")
	}
}

func top(m map[string]int) int {
	best := 0
	for _, n := range m {
		best = max(best, n)
	}
	return best
}

func TestParseIdentities(t *testing.T) {
	in := "# pool\n{\"channelId\":\"1\",\"userId\":\"a\",\"role\":\"viewer\",\"origin\":\"web\"}\n\n1,\"b,c\",guest\n2,d,teacher,app\n"
	ids, err := parseIdentities(strings.NewReader(in))
	if err != nil || len(ids) != 3 || ids[1].UserID != "b,c" || ids[2].Origin != "app" {
		t.Fatalf("parseIdentities() = %+v, %v", ids, err)
	}
	for _, bad := range []string{"1,a\n", "{\"channelId\":\"1\"}\n", "{bad json\n"} {
		if _, err := parseIdentities(strings.NewReader(bad)); err == nil {
			t.Errorf("parseIdentities(%q) accepted", bad)
		}
	}
	batches := groupBatches([]identity{{ChannelID: "a"}, {ChannelID: "b"}, {ChannelID: "a"}, {ChannelID: "a"}}, 2)
	if len(batches) != 3 || len(batches[0]) != 2 || batches[2][0].ChannelID != "b" {
		t.Errorf("groupBatches() = %v", batches)
	}
}

func TestChecker(t *testing.T) {
	c := newChecker()
	res := func(code uint16, body string, h http.Header) *vegeta.Result {
		return &vegeta.Result{Code: code, Body: []byte(body), Headers: h}
	}
	c.add(res(200, `{"channelId":"1","userId":"u","role":"viewer","origin":"web","token":"t1"}`, http.Header{"Cache-Status": {"tokencache; hit"}}))
	c.add(res(200, `{"channelId":"1","userId":"u","role":"viewer","origin":"web","token":"forged"}`, nil))
	c.add(res(200, `{"token":""}`, nil))
	c.add(res(503, `{"error":{"code":"upstream_unavailable","message":"m"}}`, http.Header{"Retry-After": {"1"}}))
	c.add(res(503, `{"error":{"code":"upstream_unavailable","message":"m"}}`, nil))
	c.add(res(502, `{"error":{"code":"upstream_timeout","message":"m"}}`, nil))
	c.add(res(500, `oops`, nil))
	c.add(res(0, ``, nil))
	if c.empty != 1 || c.offTable != 3 || c.transport != 1 || c.cacheStatus["hit"] != 1 {
		t.Errorf("checker = empty %d, offTable %d, transport %d, cache %v", c.empty, c.offTable, c.transport, c.cacheStatus)
	}
	wrong, _ := c.wrongTokens(map[string][]string{"1/u/viewer/web": {"t1"}})
	if wrong != 1 {
		t.Errorf("wrongTokens() = %d, want 1 (the forged one)", wrong)
	}
}

// startService serves the real API on a cache over miniredis and a simulator.
func startService(t *testing.T) (api, sim string) {
	t.Helper()
	s := polyvsim.NewTestServer(polyvsim.Options{})
	t.Cleanup(s.Close)
	client, _ := polyv.New(polyv.Options{AppID: "sim-app", AppSecret: "sim-secret", BaseURL: s.URL})
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	c, err := cache.New(rdb, client, cache.Options{RateLimit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	srv := httptest.NewServer(httpapi.New(httpapi.Options{Cache: c, APIKeys: []string{"k"}}))
	t.Cleanup(srv.Close)
	return srv.URL, s.URL
}

func TestWarmListsFailuresAndSkipsWhatIsWarm(t *testing.T) {
	api, _ := startService(t)
	dir := t.TempDir()
	input := filepath.Join(dir, "ids.csv")
	os.WriteFile(input, []byte("1,a,viewer\n1,b,king\n2,c,teacher,app\n"), 0o600)
	pool := filepath.Join(dir, "pool.jsonl")
	args := []string{"-target", api, "-key", "k", "-input", input, "-out", pool, "-quiet"}

	var stdout, stderr bytes.Buffer
	err := warmCmd(context.Background(), args, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "1 of 3") || !strings.Contains(stderr.String(), "FAILED 1/b/king/") {
		t.Fatalf("warm = %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(readFile(t, pool)), "\n")
	if len(lines) != 2 {
		t.Fatalf("pool has %d lines, want 2", len(lines))
	}
	if !strings.Contains(readFile(t, filepath.Join(dir, "pool.failures.jsonl")), `"role":"king"`) {
		t.Error("failure file lacks the failed identity")
	}

	stdout.Reset()
	_ = warmCmd(context.Background(), args, &stdout, &stderr)
	if !strings.Contains(stdout.String(), "warmed 0, failed 1, skipped 2") {
		t.Errorf("rerun: %s", stdout.String())
	}
	if n := len(strings.Split(strings.TrimSpace(readFile(t, pool)), "\n")); n != 2 {
		t.Errorf("rerun grew the pool to %d lines", n)
	}
}

func TestAttackReport(t *testing.T) {
	api, sim := startService(t)
	out := filepath.Join(t.TempDir(), "results.bin")
	var stdout, stderr bytes.Buffer
	err := attackCmd(context.Background(), []string{"-target", api, "-key", "k", "-rate", "200", "-duration", "1s",
		"-channels", "2", "-users", "20", "-miss-ratio", "0.2", "-stats", sim, "-json", "-quiet", "-output", out,
		"-server-pid", fmt.Sprint(os.Getpid())}, &stdout, &stderr) // the service runs in this process
	if err != nil {
		t.Fatalf("attack: %v\n%s", err, stderr.String())
	}
	var r attackReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if r.Requests < 150 || r.StatusCodes["200"] != int(r.Requests) {
		t.Errorf("report = %+v", r)
	}
	if r.WrongTokens == nil || *r.WrongTokens != 0 || r.EmptyTokens != 0 || r.OffTable != 0 {
		t.Errorf("checks failed: %+v", r)
	}
	if r.UpstreamSim == nil || *r.UpstreamSim != int64(r.CacheStatus["fwd=miss; stored"]) {
		t.Errorf("upstream calls %v, stored misses %d", r.UpstreamSim, r.CacheStatus["fwd=miss; stored"])
	}
	if r.Seed == 0 {
		t.Error("the report does not give the seed")
	}
	if r.ServerCPUPerRequest == nil || *r.ServerCPUPerRequest <= 0 {
		t.Errorf("server CPU per request = %v, want the CPU this process spent serving", r.ServerCPUPerRequest)
	}
	// Every fetch is explained: a made-up viewer, or a known one not warmed.
	fetched := int64(r.CacheStatus["fwd=miss; stored"] + r.CacheStatus["fwd=miss; collapsed"])
	if r.MissesNew == 0 || r.MissesKnown == 0 || r.MissesNew+r.MissesKnown != fetched {
		t.Errorf("misses: %d new + %d known, want both above 0 and summing to the %d fetched", r.MissesNew, r.MissesKnown, fetched)
	}
	if ratio := float64(r.MissesNew) / float64(r.Requests); ratio < 0.1 || ratio > 0.3 {
		t.Errorf("new viewers are %.2f of requests, want about -miss-ratio 0.2", ratio)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("results file mode %v (%v), want 0600: it holds live tokens", fi.Mode().Perm(), err)
	}
	// The results file is vegeta's own format.
	f, _ := os.Open(out)
	defer f.Close()
	dec := vegeta.NewDecoder(f)
	var first vegeta.Result
	if err := dec.Decode(&first); err != nil || first.Code != 200 {
		t.Errorf("results file: %v %+v", err, first)
	}
}

// attack -polyv asks the simulator itself, signed as tokencache signs, and
// checks that each answer is a token; a wrong secret fails the checks.
func TestAttackPolyvDirect(t *testing.T) {
	_, sim := startService(t)
	attack := func(secret string) (attackReport, error) {
		t.Setenv("POLYV_APP_ID", "sim-app")
		t.Setenv("POLYV_APP_SECRET", secret)
		var stdout, stderr bytes.Buffer
		err := attackCmd(context.Background(), []string{"-polyv", "-target", sim, "-rate", "100", "-duration", "500ms",
			"-channels", "2", "-users", "20", "-miss-ratio", "1", "-json", "-quiet"}, &stdout, &stderr)
		var r attackReport
		if jerr := json.Unmarshal(stdout.Bytes(), &r); jerr != nil {
			t.Fatalf("report: %v\n%s", jerr, stderr.String())
		}
		return r, err
	}
	r, err := attack("sim-secret")
	if err != nil || r.Requests < 40 || r.StatusCodes["200"] != int(r.Requests) || r.EmptyTokens != 0 || r.LatencyP50Ms <= 0 {
		t.Errorf("attack -polyv = %v, %+v", err, r)
	}
	if r, err := attack("wrong-secret"); err == nil || r.EmptyTokens+r.StatusCodes["200"] == 0 {
		t.Errorf("attack -polyv with a wrong secret = %v, %+v; want its checks to fail", err, r)
	}
	t.Setenv("POLYV_APP_SECRET", "")
	if err := attackCmd(context.Background(), []string{"-polyv", "-target", sim, "-duration", "100ms", "-quiet"}, io.Discard, io.Discard); err == nil {
		t.Error("attack -polyv ran without credentials")
	}
}

// warm writes a pool; attack -pool replays it: every request is a hit for a
// pooled viewer, and nothing is fetched.
func TestAttackReplaysPool(t *testing.T) {
	api, sim := startService(t)
	pool := filepath.Join(t.TempDir(), "pool.jsonl")
	var stdout, stderr bytes.Buffer
	if err := warmCmd(context.Background(), []string{"-target", api, "-key", "k", "-generate", "40", "-channels", "3", "-out", pool, "-quiet"}, &stdout, &stderr); err != nil {
		t.Fatalf("warm: %v\n%s", err, stderr.String())
	}
	ids, err := readPoolIdentities(pool)
	if err != nil || len(ids) != 40 {
		t.Fatalf("pool: %d identities, %v", len(ids), err)
	}
	pooled := map[string]bool{}
	for _, id := range ids {
		pooled[id.key()] = true
	}
	stdout.Reset()
	// Uniform picks: with zipf, 200 picks from 40 may miss a dozen (flaky).
	err = attackCmd(context.Background(), []string{"-target", api, "-key", "k", "-rate", "200", "-duration", "1s",
		"-pool", pool, "-popularity", "uniform", "-stats", sim, "-json", "-quiet"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("attack -pool: %v\n%s", err, stderr.String())
	}
	var r attackReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if r.Requests < 150 || r.CacheStatus["hit"] != int(r.Requests) || r.MissesNew != 0 || r.MissesKnown != 0 || *r.UpstreamSim != 0 {
		t.Errorf("attack -pool over a warm pool: %+v", r)
	}
	if r.DistinctKeys < 30 || r.DistinctKeys > 40 {
		t.Errorf("distinct keys %d, want most of the 40 pooled", r.DistinctKeys)
	}

	os.WriteFile(pool, []byte("not json\n"), 0o600)
	if err := attackCmd(context.Background(), []string{"-target", api, "-pool", pool, "-quiet"}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("attack -pool over a broken pool = %v", err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// An attack that cannot lie: a dead -stats is fatal before any request, a
// trailing /stats is fine, and failures above -max-error-ratio make an error.
func TestAttackCannotLie(t *testing.T) {
	api, sim := startService(t)
	attack := func(extra ...string) (attackReport, error) {
		var stdout, stderr bytes.Buffer
		args := append([]string{"-target", api, "-rate", "100", "-duration", "300ms", "-channels", "1", "-users", "5", "-json", "-quiet"}, extra...)
		err := attackCmd(context.Background(), args, &stdout, &stderr)
		var r attackReport
		_ = json.Unmarshal(stdout.Bytes(), &r)
		return r, err
	}
	if r, err := attack("-key", "k", "-stats", "http://127.0.0.1:1"); err == nil || r.Requests != 0 {
		t.Errorf("a dead -stats: %v after %d requests, want a fatal error before any", err, r.Requests)
	}
	if _, err := attack("-key", "k", "-stats", sim+"/stats"); err != nil {
		t.Errorf("-stats with a trailing /stats: %v", err)
	}
	r, err := attack("-key", "wrong", "-stats", sim)
	if err == nil || !strings.Contains(err.Error(), "-max-error-ratio 0") || len(r.Failed) == 0 {
		t.Errorf("every request 401: err %v, failed %v; want the threshold named", err, r.Failed)
	}
	if _, err := attack("-key", "wrong", "-max-error-ratio", "1"); err != nil {
		t.Errorf("with -max-error-ratio 1: %v", err)
	}
}

func TestParseIdentitiesCSVHeader(t *testing.T) {
	ids, err := parseIdentities(strings.NewReader("channelId,userId,role,origin\n100,u1,viewer,web\n100,u2,guest\n"))
	if err != nil || len(ids) != 2 || ids[0].UserID != "u1" || ids[1].Role != "guest" {
		t.Errorf("parseIdentities() = %+v, %v", ids, err)
	}
}

func us(v float64) *float64 { return &v }

func TestProcessCPUMissingProcess(t *testing.T) {
	if _, err := processCPU(-1); err == nil {
		t.Error("processCPU(-1) read a CPU time")
	}
}

func TestCompare(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, r attackReport) string {
		b, _ := json.Marshal(r)
		path := filepath.Join(dir, name+".json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return name + "=" + path
	}
	calls := int64(3)
	args := []string{"compare", "-markdown", "-sim-latency", "100ms", "-miss", "miss,peer_miss",
		write("ceiling", attackReport{Requests: 1000, Throughput: 100}),
		write("miss", attackReport{Requests: 50, Throughput: 5, LatencyP50Ms: 102.5}),
		write("peer_miss", attackReport{Requests: 40, Throughput: 4, LatencyP50Ms: 101.25, UpstreamSim: &calls})}
	var out bytes.Buffer
	if err := run(context.Background(), args, &out, &out); err != nil {
		t.Fatalf("compare: %v\n%s", err, out.String())
	}
	for _, want := range []string{"| miss | 1 | 50 | 5 | 0.05 |", "| - |", "| 3 |",
		"miss overhead: median miss latency 102.5 ms - simulator latency 100 ms = 2.5 ms",
		"peer_miss overhead: median miss latency 101.2 ms - simulator latency 100 ms = 1.2 ms"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("compare output lacks %q:\n%s", want, out.String())
		}
	}
	if err := run(context.Background(), append(args[:6:6], "-miss", "nope", args[6]), &out, &out); err == nil {
		t.Error("compare accepted -miss naming no report")
	}
	if err := run(context.Background(), append(args[:6:6], "-miss", "miss:nope", args[6], args[7]), &out, &out); err == nil {
		t.Error("compare accepted -miss naming an upstream run no report has")
	}

	// Over the upstream's own latency, measured under the same load.
	out.Reset()
	err := run(context.Background(), []string{"compare", "-sim-latency", "100ms", "-miss", "miss:upstream",
		args[6], args[7], write("upstream", attackReport{Requests: 50, Throughput: 5, LatencyP50Ms: 101.25})}, &out, &out)
	if want := "miss overhead: median miss latency 102.50 ms - the upstream's own 101.25 ms (upstream) = 1.25 ms; over its nominal 100 ms: 2.50 ms"; err != nil || !strings.Contains(out.String(), want) {
		t.Errorf("compare = %v, output lacks %q:\n%s", err, want, out.String())
	}

	// Rounds: each round's ratio is to the baseline's same round, and the
	// row shows their median. The machine ran at half speed in round 2.
	rounds := func(label string, rs ...attackReport) string {
		var paths []string
		for i, r := range rs {
			paths = append(paths, strings.TrimPrefix(write(fmt.Sprint(label, i), r), fmt.Sprint(label, i, "=")))
		}
		return label + "=" + strings.Join(paths, ",")
	}
	out.Reset()
	err = run(context.Background(), []string{"compare", "-markdown", "-miss", "m", "-sim-latency", "100ms",
		rounds("ceiling", attackReport{Throughput: 100, ServerCPUPerRequest: us(30)}, attackReport{Throughput: 50, ServerCPUPerRequest: us(60)},
			attackReport{Throughput: 100, ServerCPUPerRequest: us(30)}),
		rounds("hit", attackReport{Throughput: 90, LatencyP50: "1ms", ServerCPUPerRequest: us(40)}, attackReport{Throughput: 46, LatencyP50: "2ms", ServerCPUPerRequest: us(90)},
			attackReport{Throughput: 80, LatencyP50: "3ms", ServerCPUPerRequest: us(36)}),
		rounds("m", attackReport{LatencyP50Ms: 103}, attackReport{LatencyP50Ms: 109}, attackReport{LatencyP50Ms: 104})}, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| hit | 3 | 0 | 80 | 0.90 | 40.0 µs | 0.75 | 3ms |", "| m | 3 | 0 | 0 | 0.00 | - | - |", "m overhead: median miss latency 104.0 ms - simulator latency 100 ms = 4.0 ms"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("compare output lacks %q:\n%s", want, out.String())
		}
	}
}

// A -target without a scheme is taken as http://, and a target that is no
// URL is a usage error (exit 2), never a panic.
func TestTargetWithoutScheme(t *testing.T) {
	api, _ := startService(t)
	hostPort := strings.TrimPrefix(api, "http://")
	var stdout, stderr bytes.Buffer
	err := attackCmd(context.Background(), []string{"-target", hostPort, "-key", "k", "-rate", "50", "-duration", "200ms",
		"-channels", "1", "-users", "5", "-json", "-quiet"}, &stdout, &stderr)
	var r attackReport
	if jerr := json.Unmarshal(stdout.Bytes(), &r); err != nil || jerr != nil || r.StatusCodes["200"] == 0 {
		t.Errorf("attack -target %s: %v, statuses %v", hostPort, err, r.StatusCodes)
	}
	for _, cmd := range []func(context.Context, []string, io.Writer, io.Writer) error{attackCmd, warmCmd} {
		err := cmd(context.Background(), []string{"-target", "ht!tp://x y", "-key", "k", "-generate", "1"}, io.Discard, io.Discard)
		var usage *cli.UsageError
		if !errors.As(err, &usage) {
			t.Errorf("a target that is no URL: %v, want a usage error", err)
		}
	}
}
