package drills

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testwait"
)

// tokenCall sends one chat-token request for user to node and returns the
// token ("" for no token).
func tokenCall(method, node, user string) (string, error) {
	req, _ := http.NewRequest(method, node+"/v1/channels/100/chat-token?role=viewer&userId="+user, nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct{ Token string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if method == http.MethodDelete && resp.StatusCode != http.StatusNoContent {
		return "", fmt.Errorf("DELETE: %s", resp.Status)
	}
	return body.Token, nil
}

// deleteRounds deletes a token 10 times on the first instance, each time
// right after disturb, and returns the longest time the second went on
// serving it. The token is the second instance's: it holds it in its local
// cache, whether it read it from Redis or, with its circuit open after an
// earlier round, fetched it on its own.
func deleteRounds(s *stack, disturb func() error) (time.Duration, error) {
	var slowest time.Duration
	for i := range 10 {
		user := fmt.Sprint("deleted-", i)
		old, err := tokenCall(http.MethodGet, s.nodes[1].URL, user)
		if err == nil && old == "" {
			err = fmt.Errorf("round %d: the other instance served no token", i)
		}
		if err != nil {
			return 0, err
		}
		if err := disturb(); err != nil {
			return 0, err
		}
		if _, err := tokenCall(http.MethodDelete, s.nodes[0].URL, user); err != nil {
			return 0, err
		}
		deleted := time.Now()
		var tok string
		gone := testwait.Until(2*time.Second, func() bool {
			tok, err = tokenCall(http.MethodGet, s.nodes[1].URL, user)
			return err != nil || tok != old
		})
		if err != nil {
			return 0, err
		}
		if !gone {
			return 0, fmt.Errorf("round %d: the other instance serves the deleted token 2 s after DELETE", i)
		}
		slowest = max(slowest, time.Since(deleted))
	}
	return slowest, nil
}

func TestDrillPubSubKilled(t *testing.T) {
	dr := newDrill(t, "Under load, the instances' pub/sub connections are killed (`CLIENT KILL TYPE pubsub`) right before each of 10 deletes. An instance drops its local cache whenever it subscribes again. Bound: 2 s after a DELETE returns 204, no instance serves the deleted token.")
	s := newStack(t, 2, "-latency", "10ms")
	admin := s.redis.Client(t)
	deletesUnderLoad(t, dr, s, "pub/sub killed before each of 10 deletes", phase(4*time.Second, 10*time.Second), func() error {
		return admin.Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err()
	})
}

// deletesUnderLoad runs deleteRounds beside a load of 200 requests/s for d,
// and records the phase: every request answered 200, every deleted token gone
// within 2 s.
func deletesUnderLoad(t *testing.T, dr *drill, s *stack, name string, d time.Duration, disturb func() error) {
	t.Helper()
	type outcome struct {
		slowest time.Duration
		err     error
	}
	rounds := make(chan outcome, 1)
	go func() {
		slowest, err := deleteRounds(s, disturb)
		rounds <- outcome{slowest, err}
	}()
	r := attack(t, s, s.targets(), "-rate", "200", "-duration", d.String(), "-miss-ratio", "0.1")
	o := <-rounds
	if o.err != nil {
		t.Fatal(o.err)
	}
	only200(t, name, r)
	dr.record(name, r, fmt.Sprintf("(deleted token gone everywhere within %v)", o.slowest.Round(time.Millisecond)))
}

func TestDrillRedisConnectionsSilenced(t *testing.T) {
	dr := newDrill(t, "Under load, every open Redis connection of the second instance goes silent (a proxy drops what they carry, with no error, as when the Redis host it reached vanished) right before each of 10 deletes on the first. Its commands time out and go to new connections; its subscription, silent too, is replaced once nothing, not even a pong, has come for 1.2 s. Bound: every request answered 200, and 2 s after a DELETE returns 204, the second instance no longer serves the deleted token.")
	s := &stack{redis: redistest.Start(t), sim: startSim(t, "-latency", "10ms")}
	proxy := redistest.StartProxy(t, s.redis.Addr)
	s.nodes = []*proc{startTokencache(t, s.redis.Addr, s.sim.URL), startTokencache(t, proxy.Addr, s.sim.URL)}
	deletesUnderLoad(t, dr, s, "connections silenced before each of 10 deletes", phase(8*time.Second, 20*time.Second), func() error {
		proxy.SilenceOpen()
		return nil
	})
}

func TestDrillRedisStalled(t *testing.T) {
	dr := newDrill(t, "Redis stalls for 2 s (`DEBUG SLEEP 2`) three times under load. Redis commands end by their 300 ms timeout or the caller's deadline; warm keys are served from the local cache and new keys are fetched by the instance alone. Bound: every request answered 200.")
	s := newStackWith(t, 2, []string{"--enable-debug-command", "local"}, nil, "-latency", "10ms")
	phaseAll200(dr, s, "warm-up", s.targets(), "-duration", "1s")
	admin := s.redis.Client(t)
	d := phase(4*time.Second, 10*time.Second)
	stalls := make(chan struct{})
	go func() {
		defer close(stalls)
		for range 3 {
			time.Sleep(d / 4)
			_ = admin.Do(context.Background(), "DEBUG", "SLEEP", "2").Err()
		}
	}()
	r := attack(t, s, s.targets(), "-rate", "200", "-duration", d.String(), "-miss-ratio", "0.1", "-timeout", "5s")
	<-stalls
	only200(t, "Redis stalled", r)
	dr.record("Redis stalls 2 s, three times", r, "")
	phaseAll200(dr, s, "after the stalls", s.targets(), "-duration", "1s", "-miss-ratio", "0.1")
}

func TestDrillRefreshWave(t *testing.T) {
	dr := newDrill(t, "TTL 4 s and refresh-after 1 s, so every token is refreshed or expires during the run; Polyv fails every call for 3 s in the middle. Stale tokens are served while refreshes fail, misses get 502, and once Polyv recovers every key is fetched again at once: a failed refresh never blocks its key.")
	s := newStackWith(t, 2, nil, []string{"TOKENCACHE_TTL=4s", "TOKENCACHE_REFRESH_AFTER=1s"}, "-latency", "10ms")
	phaseAll200(dr, s, "warm-up", s.targets(), "-duration", "2s")

	s.sim.control(t, `{"errorRate":1}`)
	failing := attack(t, s, s.targets(), "-rate", "200", "-duration", "3s", "-miss-ratio", "0.1")
	allowOnly(t, "Polyv failing", failing, "502")
	if failing.StatusCodes["200"] == 0 {
		t.Errorf("statuses %v: no stale token served while Polyv failed", failing.StatusCodes)
	}
	dr.record("Polyv fails every call; refreshes fail", failing, "")

	s.sim.control(t, `{"errorRate":0}`)
	phaseAll200(dr, s, "Polyv recovered: every key fetched again", s.targets(), "-duration", phase(3*time.Second, 10*time.Second).String(), "-miss-ratio", "0.1")
}
