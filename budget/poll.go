package budget

import (
	"context"
	"math"
	mrand "math/rand/v2"
	"time"

	"github.com/go-redis/redis_rate/v10"
)

// level is one kind of fetch the poller asks slots for.
type level struct {
	host  bool
	over  bool
	depth int
}

func (s *Scheduler) levels() []level {
	return []level{{host: true, depth: s.depths.host}, {depth: s.depths.viewer}, {over: true, depth: s.depths.over}}
}

// countLocked is how many fetches of lv wait.
func (s *Scheduler) countLocked(lv level) int {
	if lv.host {
		return s.hosts.Len()
	}
	n := 0
	for _, kq := range s.viewers {
		if kq.over == lv.over {
			n += kq.waiting.Len()
		}
	}
	return n
}

// poll grants slots, level by level, until the queue is empty. Each round
// asks the limiter once per level that waits, for as many slots as wait, so
// Redis commands per fetch stay a small constant however many wait.
func (s *Scheduler) poll() {
	defer s.bg.Done()
	for {
		s.mu.Lock()
		if s.life.Err() != nil || s.queuedLocked() == 0 {
			s.failAllLocked(ErrClosed)
			s.polling = false
			s.updateGaugesLocked()
			s.mu.Unlock()
			return
		}
		if left := s.cool.left(); left > 0 {
			s.failAllLocked(s.refuse(unavailable(ReasonCooldown, left)))
			s.mu.Unlock()
			continue
		}
		keys := make([]string, 0, len(s.viewers))
		for _, kq := range s.viewers {
			keys = append(keys, kq.name)
		}
		s.mu.Unlock()

		fleet := s.opts.Fleet()
		if fleet {
			s.shares.refresh(s.life, keys)
		}
		wait, granted := s.round(fleet)
		s.mu.Lock()
		s.refuseLateLocked(wait)
		backlog := s.queuedLocked() > 0
		s.measurePaceLocked(granted, backlog)
		s.updateGaugesLocked()
		s.mu.Unlock()
		if !backlog {
			continue
		}
		select {
		case <-time.After(wait + mrand.N(s.interval/4+1)):
		case <-s.kick:
		case <-s.life.Done():
		}
	}
}

// round asks for slots level by level and grants them; it returns how long
// to wait before the next round, and how many slots it granted.
func (s *Scheduler) round(fleet bool) (wait time.Duration, granted int) {
	s.mu.Lock()
	for _, kq := range s.viewers {
		kq.cap, kq.over = 0, false
		if fleet {
			kq.cap, kq.over = s.shares.over(kq.name)
		}
	}
	s.mu.Unlock()
	for _, lv := range s.levels() {
		if lv.over {
			return s.roundOver(fleet, granted)
		}
		s.mu.Lock()
		n := s.countLocked(lv)
		s.mu.Unlock()
		if n == 0 {
			continue
		}
		got, retry, ok := s.takeOrLocal(fleet, lv.depth, n)
		fleet = fleet && ok
		granted += s.give(got, func() int { return s.grantLevelLocked(lv, got) })
		if got < n {
			return max(retry, s.pollGap(lv.depth)), granted
		}
	}
	return s.interval / 2, granted
}

// roundOver serves the keys over their share, each held to its cap
// fleet-wide by a limiter of its own, so that a key flooding many
// instances gets no more than one asking through a single instance.
func (s *Scheduler) roundOver(fleet bool, granted int) (time.Duration, int) {
	s.mu.Lock()
	var over []*keyQueue
	for _, kq := range s.viewers {
		if kq.over {
			over = append(over, kq)
		}
	}
	s.mu.Unlock()
	// Nothing refused: ask again soon, for fetches that came meanwhile.
	wait := s.interval / 2
	refused := false
	for _, kq := range over {
		s.mu.Lock()
		n := kq.waiting.Len()
		s.mu.Unlock()
		if n == 0 {
			continue
		}
		capped, retry, err := s.takeCap(kq.name, kq.cap, n)
		if err != nil || capped == 0 {
			// Ask again when the first capped key has a slot.
			if w := max(retry, s.interval/2); !refused || w < wait {
				wait, refused = min(w, s.pollGap(s.depths.over)), true
			}
			continue
		}
		got, retry, _ := s.takeOrLocal(fleet, s.depths.over, capped)
		granted += s.give(got, func() int { return s.grantKeyLocked(kq, got) })
		if got < capped {
			return max(retry, s.pollGap(s.depths.over)), granted
		}
	}
	return wait, granted
}

// takeOrLocal takes up to n slots at depth, of the fleet's limit, or of this
// process's when Redis is out of use or fails; ok is false if it failed.
func (s *Scheduler) takeOrLocal(fleet bool, depth, n int) (got int, retry time.Duration, ok bool) {
	got, retry, err := s.take(fleet, depth, n)
	if err != nil {
		got, retry, _ = s.local.take(s.life, depth, n)
		return got, retry, false
	}
	return got, retry, true
}

// give hands got slots out with grant, and those of fetches that left
// meanwhile to whoever waits; it returns how many were given.
func (s *Scheduler) give(got int, grant func() int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	given := grant()
	given += s.grantLocked(true, got-given)
	return given + s.grantLocked(false, got-given)
}

// pollGap is the least wait between two asks at depth: asking no more often
// than half the depth's worth of slots lets one answer grant several, and a
// slow rate is still asked every quarter second.
func (s *Scheduler) pollGap(depth int) time.Duration {
	return min(time.Duration(depth)*s.interval/2, 250*time.Millisecond)
}

// takeCap takes up to n slots of key's fair-share limiter at perSecond.
func (s *Scheduler) takeCap(key string, perSecond float64, n int) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(s.life, 2*time.Second)
	defer cancel()
	limit := redis_rate.Limit{Rate: max(1, int(math.Ceil(perSecond))), Period: time.Second, Burst: s.depths.over + 1}
	return takeWhole(ctx, s.limiter, s.opts.Prefix+":fair:"+member(key), limit, n)
}

func (s *Scheduler) take(fleet bool, depth, n int) (int, time.Duration, error) {
	if !fleet {
		return s.local.take(s.life, depth, n)
	}
	ctx, cancel := context.WithTimeout(s.life, 2*time.Second)
	defer cancel()
	return s.fleet.take(ctx, depth, n)
}
