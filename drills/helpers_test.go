// Package drills runs fault drills against real processes: redis-server, the
// Polyv simulator and several tokencache instances, driven by tokenload. Each
// drill injects one fault and checks that no request gets a wrong or empty
// token, that every error is in the API's error table, that Polyv calls stay
// within the coalescing bound, and that the service recovers.
//
// go test ./drills runs the short form (CI). DRILLS_LONG=1 runs longer phases,
// and DRILLS_REPORT=path writes the results as Markdown (make drills).
package drills

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testwait"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drills-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/tokencache", "../cmd/polyvsim", "../cmd/tokenload")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	writeReport()
	os.RemoveAll(dir)
	os.Exit(code)
}

// long reports whether the long form runs (make drills).
func long() bool { return os.Getenv("DRILLS_LONG") != "" }

// phase returns the short or the long duration.
func phase(short, longer time.Duration) time.Duration {
	if long() {
		return longer
	}
	return short
}

// proc is a started process.
type proc struct {
	URL    string
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	killed sync.Once
}

// kill stops the process at once, as a crash would; it is safe to call twice.
func (p *proc) kill() {
	p.killed.Do(func() {
		if p.cmd.Process != nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func start(t *testing.T, name string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	var err error
	up := testwait.Until(10*time.Second, func() bool {
		var resp *http.Response
		if resp, err = http.Get(url); err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if !up {
		t.Fatalf("%s did not come up: %v", url, err)
	}
}

// startSim starts the Polyv simulator process.
func startSim(t *testing.T, args ...string) *proc {
	t.Helper()
	addr := freeAddr(t)
	cmd := start(t, "polyvsim", nil, append([]string{"-addr", addr, "-app-id", "drill-app", "-app-secret", "drill-secret"}, args...)...)
	p := &proc{URL: "http://" + addr, cmd: cmd, logs: &bytes.Buffer{}}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.kill)
	waitHTTP(t, p.URL+"/stats")
	return p
}

// control changes the simulator's fault knobs.
func (p *proc) control(t *testing.T, body string) {
	t.Helper()
	resp, err := http.Post(p.URL+"/control", "application/json", strings.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("control %s: %v %v", body, err, resp)
	}
	resp.Body.Close()
}

// simStats reads the simulator's counts.
func (p *proc) simStats(t *testing.T) (calls, issued int64) {
	t.Helper()
	var st struct {
		Calls  map[string]int64 `json:"calls"`
		Issued int64            `json:"issued"`
	}
	getJSON(t, p.URL+"/stats", &st)
	return st.Calls["get-chat-token"], st.Issued
}

const apiKey = "drill-key"

// drillEncryptionKey seals the drills' tokens; a drill's own
// TOKENCACHE_ENCRYPTION_KEYS replaces it.
const drillEncryptionKey = "drill:ZHJpbGwta2V5LW9mLTMyLWJ5dGVzLWV4YWN0bHktISE="

// startTokencache starts one instance on redisAddr and the simulator.
func startTokencache(t *testing.T, redisAddr, simURL string, env ...string) *proc {
	t.Helper()
	addr := freeAddr(t)
	base := []string{
		"TOKENCACHE_ADDR=" + addr, "POLYV_APP_ID=drill-app", "POLYV_APP_SECRET=drill-secret", "POLYV_BASE_URL=" + simURL,
		"REDIS_URL=redis://" + redisAddr, "TOKENCACHE_API_KEYS=" + apiKey, "POLYV_RATE_LIMIT=1000", "POLYV_TIMEOUT=2s",
		"TOKENCACHE_LOG_LEVEL=warn", "TOKENCACHE_ENCRYPTION_KEYS=" + drillEncryptionKey,
	}
	cmd := start(t, "tokencache", append(base, env...))
	p := &proc{URL: "http://" + addr, cmd: cmd, logs: &bytes.Buffer{}}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.kill)
	waitHTTP(t, p.URL+"/healthz")
	return p
}

// stack is one drill's processes: Redis, the simulator and n instances.
type stack struct {
	redis *redistest.Server
	sim   *proc
	nodes []*proc
}

func newStack(t *testing.T, n int, simArgs ...string) *stack {
	t.Helper()
	return newStackWith(t, n, nil, nil, simArgs...)
}

// newStackWith is newStack with redis-server arguments and instance
// environment.
func newStackWith(t *testing.T, n int, redisArgs, env []string, simArgs ...string) *stack {
	t.Helper()
	s := &stack{redis: redistest.Start(t, redisArgs...), sim: startSim(t, simArgs...)}
	for range n {
		s.nodes = append(s.nodes, startTokencache(t, s.redis.Addr, s.sim.URL, env...))
	}
	return s
}

func (s *stack) targets() string {
	urls := make([]string, len(s.nodes))
	for i, n := range s.nodes {
		urls[i] = n.URL
	}
	return strings.Join(urls, ",")
}

// report is tokenload's JSON report (the fields the drills read).
type report struct {
	Requests     uint64         `json:"requests"`
	StatusCodes  map[string]int `json:"statusCodes"`
	CacheStatus  map[string]int `json:"cacheStatus"`
	ErrorCodes   map[string]int `json:"errorCodes"`
	Transport    int            `json:"transportErrors"`
	UpstreamSim  *int64         `json:"upstreamCallsSimulator"`
	EmptyTokens  int            `json:"emptyTokens"`
	WrongTokens  *int           `json:"wrongTokens"`
	WrongEg      []string       `json:"wrongTokenExamples"`
	OffTable     int            `json:"errorsOffTable"`
	OffTableEg   []string       `json:"errorsOffTableExamples"`
	DistinctKeys int            `json:"distinctKeys"`
	LatencyP50   string         `json:"latencyP50"`
	LatencyP99   string         `json:"latencyP99"`
}

// attack runs tokenload against targets and checks the invariants every
// drill shares: no wrong or empty token, no error off the table.
func attack(t *testing.T, s *stack, targets string, args ...string) report {
	t.Helper()
	base := []string{"attack", "-json", "-quiet", "-target", targets, "-key", apiKey, "-stats", s.sim.URL,
		"-channels", "2", "-users", "50", "-popularity", "uniform", "-timeout", "30s", "-max-error-ratio", "1"}
	cmd := start(t, "tokenload", nil, append(base, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tokenload: %v\n%s", err, stderr.String())
	}
	var r report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("tokenload report: %v\n%s", err, stdout.String())
	}
	if r.Requests == 0 {
		t.Fatal("tokenload sent no requests")
	}
	if r.EmptyTokens != 0 {
		t.Errorf("%d responses had an empty token", r.EmptyTokens)
	}
	if r.WrongTokens == nil || *r.WrongTokens != 0 {
		t.Errorf("tokens Polyv never issued for their key: %v %v", r.WrongTokens, r.WrongEg)
	}
	if r.OffTable != 0 {
		t.Errorf("%d errors off the error table, e.g. %v", r.OffTable, r.OffTableEg)
	}
	return r
}

// only200 fails unless every answer was 200.
func only200(t *testing.T, what string, r report) {
	t.Helper()
	if r.StatusCodes["200"] != int(r.Requests) {
		t.Errorf("%s: statuses %v, want all 200", what, r.StatusCodes)
	}
}

// allowOnly fails if a status other than 200 and the given ones appears.
func allowOnly(t *testing.T, what string, r report, statuses ...string) {
	t.Helper()
	for code := range r.StatusCodes {
		if code != "200" && !slices.Contains(statuses, code) {
			t.Errorf("%s: unexpected status %s in %v", what, code, r.StatusCodes)
		}
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// drill is one drill's section of the Markdown report: what it does, and
// one line per phase.
type drill struct {
	t     *testing.T
	about string

	mu    sync.Mutex
	rows  []string
	notes []string // lines after the table
}

// note adds a line under the drill's table.
func (d *drill) note(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.notes = append(d.notes, fmt.Sprintf(format, args...))
}

// drills are the sections of the report, in the order the drills started.
var (
	drillsMu sync.Mutex
	drills   []*drill
)

// newDrill starts t's section of the report, described by about.
func newDrill(t *testing.T, about string) *drill {
	d := &drill{t: t, about: about}
	drillsMu.Lock()
	drills = append(drills, d)
	drillsMu.Unlock()
	return d
}

// record adds one phase's line.
func (d *drill) record(phase string, r report, note string) {
	sim := "-"
	if r.UpstreamSim != nil {
		sim = fmt.Sprint(*r.UpstreamSim)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rows = append(d.rows, fmt.Sprintf("| %s | %d | %s | %s | %s | %s | %d | %s |",
		phase, r.Requests, fmtMap(r.StatusCodes), fmtMap(r.ErrorCodes), r.LatencyP50, r.LatencyP99, r.Transport, sim+" "+note))
}

func fmtMap(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	if len(keys) == 0 {
		return "-"
	}
	return strings.Join(keys, ", ")
}

// writeReport writes DRILLS_REPORT, if set.
func writeReport() {
	path := os.Getenv("DRILLS_REPORT")
	if path == "" {
		return
	}
	var b strings.Builder
	b.WriteString("# Fault drills\n\nWritten by `make drills` (`DRILLS_LONG=1 DRILLS_REPORT=docs/drills.md go test -count=1 -v ./drills`).\n")
	b.WriteString("Each drill starts redis-server, the Polyv simulator and tokencache instances as real processes, drives them with\n")
	b.WriteString("`tokenload attack`, and injects one fault. Every phase checked: no wrong or empty token (each token is one the\n")
	b.WriteString("simulator issued for that very key), every error in the API's error table, Polyv calls within the coalescing\n")
	b.WriteString("bound, and recovery once the fault ends. CI runs the same drills in a short form on every change.\n\n")
	fmt.Fprintf(&b, "Run on %s, %d vCPU.\n", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU())
	sorted := slices.SortedFunc(slices.Values(drills), func(a, b *drill) int { return strings.Compare(a.t.Name(), b.t.Name()) })
	for _, d := range sorted {
		fmt.Fprintf(&b, "\n## %s\n\n%s\n\n", strings.TrimPrefix(d.t.Name(), "TestDrill"), d.about)
		b.WriteString("| phase | requests | statuses | error codes | p50 | p99 | transport errors | Polyv calls |\n")
		b.WriteString("| --- | ---: | --- | --- | ---: | ---: | ---: | --- |\n")
		for _, line := range d.rows {
			b.WriteString(line + "\n")
		}
		if len(d.notes) > 0 {
			b.WriteString("\n")
			for _, line := range d.notes {
				b.WriteString("- " + line + "\n")
			}
		}
	}
	_ = os.WriteFile(path, []byte(b.String()), 0o644)
}
