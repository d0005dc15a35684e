package drills

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/testwait"
)

func TestDrillRedisKilled(t *testing.T) {
	dr := newDrill(t, "redis-server is killed mid-run and restarted empty. Instances go on from their local caches and Polyv (per-process coalescing, local rate limit), then use Redis again by themselves. Bound: Polyv calls ≤ keys × (instances + 1).")
	s := newStack(t, 2, "-latency", "20ms")
	d := phase(2*time.Second, 10*time.Second)
	before := attack(t, s, s.targets(), "-rate", "200", "-duration", d.String())
	only200(t, "before", before)
	dr.record("before", before, "")

	s.redis.Kill()
	during := attack(t, s, s.targets(), "-rate", "200", "-duration", d.String(), "-miss-ratio", "0.1")
	only200(t, "Redis down", during)
	dr.record("Redis down", during, "")

	s.redis.Restart(t)
	for _, n := range s.nodes {
		testwait.Eventually(t, 20*time.Second, "readyz to see Redis again", func() bool {
			var r struct{ Redis, RedisCircuit string }
			getJSON(t, n.URL+"/readyz", &r)
			return r.Redis == "ok" && r.RedisCircuit == "closed"
		})
	}
	after := attack(t, s, s.targets(), "-rate", "200", "-duration", d.String(), "-miss-ratio", "0.1")
	only200(t, "after restart", after)
	dr.record("after restart", after, "")

	// Tokens fetched after the restart are stored in Redis again.
	keys, err := s.redis.Client(t).Keys(t.Context(), "tc:v1:*").Result()
	if err != nil || len(keys) == 0 {
		t.Errorf("nothing stored in the restarted Redis: %v", err)
	}
	_, issued := s.sim.simStats(t)
	keysSeen := before.DistinctKeys + during.DistinctKeys + after.DistinctKeys
	if bound := int64(keysSeen * (len(s.nodes) + 1)); issued > bound {
		t.Errorf("Polyv issued %d tokens for at most %d keys; bound %d", issued, keysSeen, bound)
	}
}

func TestDrillPolyv5xx(t *testing.T) {
	dr := newDrill(t, "The simulator answers 30% of calls with 500 fail. The client retries, so most misses still succeed; the rest get 502 upstream_error. Bound: Polyv issues at most one token per key (a stored token is never fetched again).")
	s := newStack(t, 2, "-latency", "10ms")
	d := phase(2*time.Second, 10*time.Second)
	s.sim.control(t, `{"errorRate":0.3}`)
	faulty := attack(t, s, s.targets(), "-rate", "200", "-duration", d.String(), "-miss-ratio", "0.5")
	allowOnly(t, "30% 5xx", faulty, "502")
	for code := range faulty.ErrorCodes {
		if code != "502 upstream_error" {
			t.Errorf("error %s, want only 502 upstream_error", code)
		}
	}
	dr.record("30% of Polyv calls fail", faulty, "")
	_, issued := s.sim.simStats(t)
	if issued > int64(faulty.DistinctKeys) {
		t.Errorf("Polyv issued %d tokens for %d keys: a key was fetched twice", issued, faulty.DistinctKeys)
	}

	s.sim.control(t, `{"errorRate":0}`)
	phaseAll200(dr, s, "fault lifted", s.targets(), "-duration", d.String(), "-miss-ratio", "0.2")
}

func TestDrillPolyvSlow(t *testing.T) {
	dr := newDrill(t, "The simulator answers after 10 s. Warm keys keep being served; misses get 504 upstream_timeout after the attempts (POLYV_TIMEOUT=2s) run out. Bound: at most 3 attempts per new key.")
	s := newStack(t, 2)
	phaseAll200(dr, s, "warm-up", s.targets(), "-duration", "1s")

	s.sim.control(t, `{"latency":"10s"}`)
	callsBefore, _ := s.sim.simStats(t)
	slow := attack(t, s, s.targets(), "-rate", "100", "-duration", phase(2*time.Second, 10*time.Second).String(), "-miss-ratio", "0.2")
	allowOnly(t, "Polyv slow", slow, "504")
	if slow.StatusCodes["504"] == 0 || slow.StatusCodes["200"] == 0 {
		t.Errorf("statuses %v, want hits served and misses timed out", slow.StatusCodes)
	}
	for code := range slow.ErrorCodes {
		if code != "504 upstream_timeout" {
			t.Errorf("error %s, want only 504 upstream_timeout", code)
		}
	}
	// Let detached fills finish before counting.
	time.Sleep(2 * time.Second)
	calls, _ := s.sim.simStats(t)
	if fresh := slow.StatusCodes["504"]; calls-callsBefore > int64(3*fresh) {
		t.Errorf("%d Polyv calls for %d new keys, bound %d", calls-callsBefore, fresh, 3*fresh)
	}
	dr.record("Polyv answers after 10 s", slow, "")

	s.sim.control(t, `{"latency":"0s"}`)
	phaseAll200(dr, s, "fault lifted", s.targets(), "-duration", "1s", "-miss-ratio", "0.2")
}

func TestDrillPolyvRateLimited(t *testing.T) {
	dr := newDrill(t, "The simulator answers with Polyv's qps error. The fleet cools down (POLYV_COOLDOWN=1s here): warm keys keep being served; misses get 503 upstream_unavailable with Retry-After at once, and Polyv gets no call but one probe per cool-down; nothing is stored, so misses succeed once the limit lifts and a probe is answered.")
	s := newStackWith(t, 2, nil, []string{"POLYV_COOLDOWN=1s"})
	phaseAll200(dr, s, "warm-up", s.targets(), "-duration", "1s")

	s.sim.control(t, `{"rateLimit":1}`)
	callsBefore, _ := s.sim.simStats(t)
	d := phase(2*time.Second, 10*time.Second)
	limited := attack(t, s, s.targets(), "-rate", "200", "-duration", d.String(), "-miss-ratio", "0.2")
	allowOnly(t, "Polyv rate limit", limited, "503")
	if limited.StatusCodes["503"] == 0 {
		t.Errorf("statuses %v, want 503s", limited.StatusCodes)
	}
	for code := range limited.ErrorCodes {
		if code != "503 upstream_unavailable" {
			t.Errorf("error %s, want only 503 upstream_unavailable", code)
		}
	}
	// The simulator lets 1 call a second through, so a probe may be
	// answered and end the cool-down; the calls then in flight are refused
	// and start the next. So about the rate Polyv allows, not a call per
	// miss (40 a second here).
	calls, _ := s.sim.simStats(t)
	if made, bound := calls-callsBefore, 3*int64(d/time.Second)+4; made > bound {
		t.Errorf("%d Polyv calls while Polyv refused all but 1 a second, want at most %d", made, bound)
	}
	dr.record("Polyv answers qps exceeded", limited, fmt.Sprintf("%d Polyv calls in %v", calls-callsBefore, d))

	s.sim.control(t, `{"rateLimit":0}`)
	time.Sleep(4 * time.Second) // the longest cool-down the phase can have reached, then its probe
	phaseAll200(dr, s, "fault lifted", s.targets(), "-duration", "1s", "-miss-ratio", "0.2")
}

func TestDrillInstanceKilled(t *testing.T) {
	dr := newDrill(t, "One of two instances is killed mid-run. Its requests fail at the transport level (a load balancer would route away); the other instance answers everything. Bound: one Polyv call per key, as the fleet shares Redis.")
	s := newStack(t, 2, "-latency", "20ms")
	d := phase(3*time.Second, 10*time.Second)
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		time.Sleep(d / 3)
		s.nodes[0].kill()
	}()
	defer func() { <-killed }()
	r := attack(t, s, s.targets(), "-rate", "200", "-duration", d.String(), "-miss-ratio", "0.1", "-timeout", "5s")
	allowOnly(t, "instance killed", r, "0") // 0: transport errors from the dead instance
	if r.Transport == 0 {
		t.Error("no transport errors: the instance was not killed mid-run")
	}
	dr.record("one of two instances killed", r, "")
	_, issued := s.sim.simStats(t)
	if issued > int64(r.DistinctKeys)+int64(r.Transport) {
		t.Errorf("Polyv issued %d tokens for %d keys", issued, r.DistinctKeys)
	}

	phaseAll200(dr, s, "survivor alone", s.nodes[1].URL, "-duration", "1s")
}

func TestDrillColdStampede(t *testing.T) {
	dr := newDrill(t, "2000 first requests for 50 keys arrive at once (one per worker, 2000 workers) across 3 instances, with Polyv at 1 s. Bound: exactly 50 Polyv calls.")
	s := newStack(t, 3, "-latency", "1s")
	// Rate 0: each of the 2000 workers sends one request as soon as it
	// starts; Polyv's 1 s latency outlasts the 500 ms attack, so none sends a
	// second, and a slow machine still has half a second to start them all.
	r := attack(t, s, s.targets(), "-channels", "1", "-users", "50", "-rate", "0", "-duration", "500ms",
		"-workers", "2000", "-max-workers", "2000")
	only200(t, "stampede", r)
	if r.Requests < 1900 {
		t.Errorf("only %d requests sent", r.Requests)
	}
	_, issued := s.sim.simStats(t)
	if issued != 50 {
		t.Errorf("Polyv issued %d tokens for 50 keys, want exactly 50", issued)
	}
	dr.record("2000 first requests, 50 keys, 3 instances", r, "(exactly 50 required)")
	if !strings.Contains(fmtMap(r.CacheStatus), "collapsed") {
		t.Errorf("no collapsed requests: %v", r.CacheStatus)
	}
}

// phaseAll200 runs one attack at 200/s that must be answered 200 throughout,
// and records it.
func phaseAll200(d *drill, s *stack, name, targets string, args ...string) {
	d.t.Helper()
	r := attack(d.t, s, targets, append([]string{"-rate", "200"}, args...)...)
	only200(d.t, name, r)
	d.record(name, r, "")
}
