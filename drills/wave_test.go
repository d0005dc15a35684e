package drills

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// waveReport is tokenload wave's JSON report (the fields the drill reads).
type waveReport struct {
	Joiners             map[string]int    `json:"joiners"`
	Served              map[string]int    `json:"served"`
	Left                map[string]int    `json:"left"`
	WaitP50             map[string]string `json:"waitP50"`
	WaitP99             map[string]string `json:"waitP99"`
	StatusCodes         map[string]int    `json:"statusCodes"`
	ErrorCodes          map[string]int    `json:"errorCodes"`
	PolyvCalls          int64             `json:"polyvCalls"`
	PolyvCallsMaxPerSec int64             `json:"polyvCallsMaxPerSecond"`
	PolyvBans           int64             `json:"polyvBans"`
	BudgetUsedWaiting   float64           `json:"budgetUsedWhileWaiting"`
	CallsReachingCaller float64           `json:"callsReachingAWaitingCaller"`
	CallsForLeavers     int64             `json:"callsForCallersWhoLeft"`
	Retried503          int               `json:"retried503"`
	Retried503OK        float64           `json:"retried503Succeeded"`
	HitsP99Idle         string            `json:"hitsP99Idle"`
	HitsP99Wave         string            `json:"hitsP99DuringWave"`
	HitsRatio           float64           `json:"hitsP99Ratio"`
	MaxQueued           float64           `json:"maxQueued"`
	BytesPerWaiter      *float64          `json:"heapBytesPerQueuedFetch"`
}

func TestDrillJoinWave(t *testing.T) {
	a, b, c, d := phaseN(300, 3000), phaseN(30, 300), phaseN(5, 10), phase(3*time.Second, 10*time.Second)
	dr := newDrill(t, fmt.Sprintf("A join wave: three instances with POLYV_RATE_LIMIT=50, the simulator limited to 50/s with its 5-minute ban on. "+
		"%d distinct viewers of key A, %d of key B and %d teachers of key C arrive over %v, each retrying after Retry-After (giving up after 60 s); "+
		"hits on 50 warm tokens run at 100/s beside the wave, and alone before it.", a, b, c, d))
	keys := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(keys, []byte("keys:\n  - {name: key-a, key: wave-a}\n  - {name: key-b, key: wave-b}\n  - {name: key-c, key: wave-c}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newStackWith(t, 3, nil, []string{"POLYV_RATE_LIMIT=50", "TOKENCACHE_API_KEYS=", "TOKENCACHE_API_KEYS_FILE=" + keys}, "-rate-limit", "50", "-ban", "5m", "-latency", "20ms")

	cmd := start(t, "tokenload", nil, "wave", "-json", "-target", s.targets(), "-stats", s.sim.URL, "-rate-limit", "50",
		"-key-a", "wave-a", "-key-b", "wave-b", "-key-c", "wave-c",
		"-viewers-a", fmt.Sprint(a), "-viewers-b", fmt.Sprint(b), "-teachers", fmt.Sprint(c), "-over", d.String(), "-give-up", "60s")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tokenload wave: %v\n%s", err, stderr.String())
	}
	var r waveReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("tokenload wave report: %v\n%s", err, stdout.String())
	}
	t.Logf("%s", stdout.String())

	if r.PolyvBans != 0 {
		t.Errorf("Polyv banned the fleet %d times", r.PolyvBans)
	}
	if r.PolyvCallsMaxPerSec > 50+7+5 { // the limit, the hosts' burst, and a sampling edge
		t.Errorf("%d Polyv calls in one second, limit 50", r.PolyvCallsMaxPerSec)
	}
	if r.CallsForLeavers != 0 {
		t.Errorf("%d Polyv calls for callers who had left", r.CallsForLeavers)
	}
	if r.Served["teachers"] != c {
		t.Errorf("%d of %d teachers got a token", r.Served["teachers"], c)
	}
	if p99, err := time.ParseDuration(r.WaitP99["teachers"]); err != nil || p99 > time.Second {
		t.Errorf("teachers' p99 wait %s, want well under a second", r.WaitP99["teachers"])
	}
	for code := range r.ErrorCodes {
		if code != "503 upstream_unavailable" {
			t.Errorf("error %s, want only 503 upstream_unavailable", code)
		}
	}
	if long() {
		if r.BudgetUsedWaiting < 0.9 {
			t.Errorf("budget used while fetches queued: %.0f%%, want at least 90%%", 100*r.BudgetUsedWaiting)
		}
		if r.CallsReachingCaller < 0.85 {
			t.Errorf("calls whose token reached a waiting caller: %.0f%%, want at least 85%%", 100*r.CallsReachingCaller)
		}
	}

	requests := 0
	for _, n := range r.StatusCodes {
		requests += n
	}
	dr.mu.Lock()
	dr.rows = append(dr.rows, fmt.Sprintf("| join wave | %d | %s | %s | - | - | 0 | %d |", requests, fmtMap(r.StatusCodes), fmtMap(r.ErrorCodes), r.PolyvCalls))
	dr.mu.Unlock()
	dr.note("Polyv calls: %d; most in one second: %d (limit 50); bans: %d", r.PolyvCalls, r.PolyvCallsMaxPerSec, r.PolyvBans)
	dr.note("budget used while fetches queued: %.0f%%; calls whose token reached a caller still waiting: %.0f%%; calls for callers who had left: %d",
		100*r.BudgetUsedWaiting, 100*r.CallsReachingCaller, r.CallsForLeavers)
	for _, g := range []string{"teachers", "a", "b"} {
		dr.note("%s: %d joined, %d served, %d left; wait p50 %s, p99 %s", g, r.Joiners[g], r.Served[g], r.Left[g], r.WaitP50[g], r.WaitP99[g])
	}
	dr.note("503s retried after their Retry-After: %d, of which the retry got the token: %.0f%%", r.Retried503, 100*r.Retried503OK)
	dr.note("hits on warm tokens, p99: idle %s, during the wave %s (%.2fx)", r.HitsP99Idle, r.HitsP99Wave, r.HitsRatio)
	if r.BytesPerWaiter != nil {
		dr.note("heap per queued fetch: about %.0f bytes (at %.0f fetches queued across the fleet)", *r.BytesPerWaiter, r.MaxQueued)
	}
}

// phaseN returns the short or the long count.
func phaseN(short, longer int) int {
	if long() {
		return longer
	}
	return short
}
