package drills

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/testwait"
)

// TestDrillKeyRotation rolls a whole encryption-key rotation across two
// instances, as the README's steps run it, under traffic and deletes: it
// must cost no Polyv call, and a deleted token must be gone from both
// instances within 2 s at every step.
func TestDrillKeyRotation(t *testing.T) {
	dr := newDrill(t, "Two instances on one Redis roll a whole encryption-key rotation, one instance at a time: old, then old,new, then new,old, then new. After each restart tokenload sends traffic over 20 known viewers (each asked for 10 times over in the warm-up), and a token is read on the other instance, deleted on the restarted one, and checked gone from both 2 s later. Bound: Polyv calls for the viewers' first tokens and, per delete, the token's first fetch and its refetch; the rotation itself costs none.")
	key := func(id string, b byte) string {
		return id + ":" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32))
	}
	oldKey, newKey := key("old", 1), key("new", 2)
	stages := []string{oldKey, oldKey + "," + newKey, newKey + "," + oldKey, newKey}
	env := func(keys string) []string { return []string{"TOKENCACHE_ENCRYPTION_KEYS=" + keys} }
	s := newStackWith(t, 2, nil, env(stages[0]), "-latency", "5ms")
	d := phase(time.Second, 3*time.Second).String()
	r := attack(t, s, s.targets(), "-rate", "200", "-duration", d, "-users", "10")
	only200(t, "before the rotation", r)
	dr.record("keys old (warm-up)", r, "")
	before, _ := s.sim.simStats(t)

	deletes, slowest := 0, time.Duration(0)
	for stage := 1; stage < len(stages); stage++ {
		for i := range s.nodes {
			s.nodes[i].kill()
			s.nodes[i] = startTokencache(t, s.redis.Addr, s.sim.URL, env(stages[stage])...)
			ids := strings.Join(keyIDs(stages[stage]), ",")
			callsBefore, _ := s.sim.simStats(t)
			r := attack(t, s, s.targets(), "-rate", "200", "-duration", d, "-users", "10")
			only200(t, "keys "+ids, r)
			callsAfter, _ := s.sim.simStats(t)
			dr.record(fmt.Sprintf("instance %d restarted with keys %s", i, ids), r, fmt.Sprintf("(%d during the phase)", callsAfter-callsBefore))

			took, err := deleteOnBoth(s, i, fmt.Sprintf("rotation-%d-%d", stage, i))
			if err != nil {
				t.Fatalf("keys %s: %v", ids, err)
			}
			deletes++
			slowest = max(slowest, took)
		}
	}
	after, _ := s.sim.simStats(t)
	extra := after - before - int64(2*deletes)
	dr.note("Polyv calls after the warm-up: %d, of which %d for the %d deletes (a first fetch and a refetch each); calls the rotation made: **%d**", after-before, 2*deletes, deletes, extra)
	dr.note("deletes checked on both instances: %d; deleted tokens served 2 s after their DELETE: **0**; slowest to be gone from both: %v", deletes, slowest.Round(time.Millisecond))
	if extra != 0 {
		t.Errorf("the rotation made %d Polyv calls beyond the deletes' (%d after the warm-up, %d deletes)", extra, after-before, deletes)
	}
}

// keyIDs are the ids of a TOKENCACHE_ENCRYPTION_KEYS value.
func keyIDs(keys string) []string {
	var ids []string
	for _, k := range strings.Split(keys, ",") {
		id, _, _ := strings.Cut(k, ":")
		ids = append(ids, id)
	}
	return ids
}

// deleteOnBoth reads user's token on the instance other than i, deletes it
// on instance i, and returns how long the token took to be gone from both.
func deleteOnBoth(s *stack, i int, user string) (time.Duration, error) {
	other := s.nodes[1-i].URL
	old, err := tokenCall(http.MethodGet, other, user)
	if err == nil && old == "" {
		err = fmt.Errorf("%s: no token served", user)
	}
	if err != nil {
		return 0, err
	}
	if _, err := tokenCall(http.MethodDelete, s.nodes[i].URL, user); err != nil {
		return 0, err
	}
	deleted := time.Now()
	for _, n := range s.nodes {
		var tok string
		var err error
		gone := testwait.Until(time.Until(deleted.Add(2*time.Second)), func() bool {
			tok, err = tokenCall(http.MethodGet, n.URL, user)
			return err != nil || tok != old && tok != ""
		})
		if err != nil {
			return 0, err
		}
		if !gone {
			return 0, fmt.Errorf("%s: %s serves the deleted token 2 s after DELETE", user, n.URL)
		}
	}
	return time.Since(deleted), nil
}
