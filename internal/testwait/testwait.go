// Package testwait is the one polling wait the tests share, for a state
// that comes in its own time (a message delivered, a server ready). Waits on
// the code's own work use its hooks instead (cache's settle, for one).
package testwait

import (
	"testing"
	"time"
)

// pollEvery is short against every bound the tests wait out.
const pollEvery = 10 * time.Millisecond

// Until polls cond until it holds (true) or within has passed (false), for a
// caller with its own failure message.
func Until(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery)
	}
	return true
}

// Eventually fails tb when cond does not hold within the given time.
func Eventually(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Until(within, cond) {
		tb.Fatalf("timed out after %v waiting for %s", within, what)
	}
}
