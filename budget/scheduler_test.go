package budget

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/testwait"
)

// A host behind any number of queued viewers, on any instance, waits for a
// Redis round trip, not for them.
func TestHostsGoFirst(t *testing.T) {
	eachBackend(t, func(t *testing.T, client func(testing.TB) redis.UniversalClient) {
		const rate = 20
		fleet := fleetOf(t, client, 3, Options{Rate: rate})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var viewers atomic.Int64
		for _, s := range fleet {
			flood(ctx, s, "web", 100, func() { viewers.Add(1) })
		}
		time.Sleep(500 * time.Millisecond) // the viewers have drained the bucket
		var worst time.Duration
		for i := range 6 {
			start := time.Now()
			if err := fleet[i%3].Wait(ctx, Request{Key: "teacher-app", Class: ClassHost}); err != nil {
				t.Fatalf("host Wait() = %v", err)
			}
			worst = max(worst, time.Since(start))
			time.Sleep(300 * time.Millisecond)
		}
		if limit := time.Second/rate + 100*time.Millisecond; worst > limit {
			t.Errorf("a host waited %v behind %d queued viewers, want at most %v", worst, 300-viewers.Load(), limit)
		}
	})
}

// A key flooding every instance leaves a second key, asking through one
// instance, half the fleet's budget within 2 s of asking.
func TestFairBetweenKeysFleetWide(t *testing.T) {
	eachBackend(t, func(t *testing.T, client func(testing.TB) redis.UniversalClient) {
		const rate = 40
		fleet := fleetOf(t, client, 3, Options{Rate: rate})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var hog, other atomic.Int64
		for _, s := range fleet {
			flood(ctx, s, "hog", 400, func() { hog.Add(1) })
		}
		time.Sleep(time.Second)
		hog0 := hog.Load()
		flood(ctx, fleet[0], "other", 400, func() { other.Add(1) })
		time.Sleep(2 * time.Second)
		h, o := hog.Load()-hog0, other.Load()
		t.Logf("in the 2 s after the other key asked: hog %d slots, other %d", h, o)
		if share := float64(o) / float64(h+o); share < 0.45 {
			t.Errorf("the other key got %.0f%% of the budget, want at least half", 100*share)
		}
		if h+o > 2*rate+int64(fleet[0].MaxBurst()) {
			t.Errorf("%d slots in 2 s, limit %d a second", h+o, rate)
		}
	})
}

// A fetch whose deadline comes before its turn is refused at once, with
// the queue's drain time.
func TestDeadlineBeyondTheQueueRefusedAtOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, client func(testing.TB) redis.UniversalClient) {
		const rate = 10
		s := fleetOf(t, client, 1, Options{Rate: rate})[0]
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var granted atomic.Int64
		flood(ctx, s, "web", 50, func() { granted.Add(1) })
		waitAllIn(t, s, &granted, 50)
		start := time.Now()
		err := s.Wait(ctx, Request{Key: "web", Deadline: until(time.Second)})
		took := time.Since(start)
		var u *UnavailableError
		if !errors.As(err, &u) || u.Reason != ReasonQueue {
			t.Fatalf("Wait() = %v, want *UnavailableError for the queue", err)
		}
		if took > 100*time.Millisecond {
			t.Errorf("refused after %v, want at once", took)
		}
		if u.RetryAfter < 4*time.Second {
			t.Errorf("RetryAfter = %v with ~50 fetches queued at %d/s, want the drain time", u.RetryAfter, rate)
		}
	})
}

// A fetch queued with time enough is refused as soon as the queue ahead
// of it grows past its deadline (hosts came), not at the deadline.
func TestLateInTheQueueRefusedEarly(t *testing.T) {
	eachBackend(t, func(t *testing.T, client func(testing.TB) redis.UniversalClient) {
		const rate = 10
		s := fleetOf(t, client, 1, Options{Rate: rate})[0]
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var granted atomic.Int64
		flood(ctx, s, "web", 5, func() { granted.Add(1) })
		waitAllIn(t, s, &granted, 5)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- s.Wait(ctx, Request{Key: "web", Deadline: until(3 * time.Second)}) }()
		testwait.Eventually(t, 5*time.Second, "the fetch to queue", func() bool { return s.Queued()+int(granted.Load()) == 6 || len(done) > 0 })
		for range 40 {
			go func() { _ = s.Wait(ctx, Request{Key: "app", Class: ClassHost}) }()
		}
		err := <-done
		var u *UnavailableError
		if !errors.As(err, &u) || time.Since(start) > 1500*time.Millisecond {
			t.Errorf("Wait() = %v after %v, want *UnavailableError well before the 3 s deadline", err, time.Since(start))
		}
	})
}

// A fetch whose caller left is out of the queue: the slot goes to the next.
func TestLeavingFreesTheTurn(t *testing.T) {
	s := fleetOf(t, backends()[0].open(t), 1, Options{Rate: 5})[0]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var granted atomic.Int64
	left, leave := context.WithCancel(ctx)
	flood(left, s, "gone", 30, func() { granted.Add(1) })
	waitAllIn(t, s, &granted, 30)
	leave()
	start := time.Now()
	if err := s.Wait(ctx, Request{Key: "web"}); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("waited %v behind fetches whose callers left", waited)
	}
}

// While fetches wait, the whole budget is spent: no slot is lost between
// the fleet's asks (redis_rate's AllowAtMost lost a quarter at 50/s).
func TestBudgetFullyUsedWhileFetchesWait(t *testing.T) {
	eachBackend(t, func(t *testing.T, client func(testing.TB) redis.UniversalClient) {
		const rate = 50
		fleet := fleetOf(t, client, 3, Options{Rate: rate})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var granted atomic.Int64
		for _, s := range fleet {
			flood(ctx, s, "web", 400, func() { granted.Add(1) })
		}
		time.Sleep(500 * time.Millisecond)
		before := granted.Load()
		time.Sleep(3 * time.Second)
		perSecond := float64(granted.Load()-before) / 3
		t.Logf("%.1f slots a second at a limit of %d", perSecond, rate)
		if perSecond < 0.9*rate {
			t.Errorf("%.1f slots a second while hundreds waited, want at least 90%% of %d", perSecond, rate)
		}
	})
}

// Close racing the first waits, which start the pollers: every wait ends
// (granted, or ErrClosed), Close returns, and the race detector finds no
// WaitGroup misuse (a poller added while Close waits).
func TestCloseRacesTheFirstWait(t *testing.T) {
	client := backends()[0].open(t)
	for range 200 {
		s := New(client(t), Options{Prefix: "t:upstream", Rate: 1})
		var wg sync.WaitGroup
		for _, r := range []Request{{Key: "a"}, {Key: "b", Rate: 1}, {Key: "c", Bulk: true}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := s.Wait(ctx, r); err != nil && !errors.Is(err, ErrClosed) {
					var u *UnavailableError
					if !errors.As(err, &u) {
						t.Errorf("Wait() = %v, want a slot, ErrClosed or a refusal", err)
					}
				}
			}()
		}
		s.Close()
		wg.Wait()
	}
}

// Queued counts the fetches waiting, and no longer those whose callers left.
func TestQueuedCountsTheWaiting(t *testing.T) {
	s := fleetOf(t, backends()[0].open(t), 1, Options{Rate: 1})[0]
	ctx, cancel := context.WithCancel(context.Background())
	var granted atomic.Int64
	flood(ctx, s, "web", 20, func() { granted.Add(1) })
	testwait.Eventually(t, 5*time.Second, "the flood to queue", func() bool { return s.Queued()+int(granted.Load()) == 20 })
	if s.Queued() < 15 {
		t.Errorf("Queued() = %d with 20 fetches asked at 1/s, want most of them", s.Queued())
	}
	cancel()
	testwait.Eventually(t, 5*time.Second, "the queue to empty", func() bool { return s.Queued() == 0 })
}
